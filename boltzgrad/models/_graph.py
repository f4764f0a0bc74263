"""Graph inputs shared by the adapters of message-passing packages (MACE, NequIP): element lookup and the full
directed edge list built from a boltzgrad neighbour list."""

from __future__ import annotations

import torch


def element_table(atomic_numbers) -> torch.Tensor:
    """``table [max_z + 1]`` int64: the index of each atomic number in ``atomic_numbers``, -1 for the others."""
    z = torch.as_tensor(atomic_numbers).detach().cpu().to(torch.int64).reshape(-1)
    table = torch.full((int(z.max()) + 1,), -1, dtype=torch.int64)
    table[z] = torch.arange(z.numel())
    return table


def element_index(table: torch.Tensor, species: torch.Tensor, model: str) -> torch.Tensor:
    """``table[species]``; ValueError naming the atomic numbers that ``model`` (a name for the message) lacks."""
    if species.dtype != torch.int64:
        raise ValueError(f"species must be int64 atomic numbers, got dtype {species.dtype}")
    table = table.to(species.device)
    n = species.numel()
    if n and (int(species.min()) < 0 or int(species.max()) >= table.numel() or bool((table[species] < 0).any())):
        known = torch.nonzero(table >= 0).reshape(-1).tolist()
        raise ValueError(f"species has atomic numbers {sorted(set(species.tolist()) - set(known))} outside the "
                         f"{model}'s elements {known}")
    return table[species]


def directed_edges(pos: torch.Tensor, cutoff: float, batch: torch.Tensor, cell: torch.Tensor | None, pbc,
                   pairs=None):
    """Every pair within ``cutoff`` in both directions, as message-passing packages take them.

    Args:
        pos: [n_atoms, 3] positions (the model's dtype). batch: [n_atoms] int64. cell: [R, 3, 3] or None.
        pbc: [R, 3] bool. cutoff: Å.
        pairs: a half ``bg.Pairs`` with cutoff >= ``cutoff`` (e.g. a Verlet list with a skin; only its indices
            and shifts are used), or None to build one with ``bg.neighbor_list``.

    Returns:
        ``(sender [E], receiver [E], unit_shifts [E, 3], shifts [E, 3])``: the edge vector is
        ``pos[receiver] - pos[sender] + shifts`` with ``shifts = unit_shifts @ cell`` (differentiable w.r.t.
        ``cell``; zeros without a cell), ``unit_shifts`` in the dtype of ``pos``.
    """
    if pairs is None:
        from ..neighbors import neighbor_list

        with torch.no_grad():
            pairs = neighbor_list(pos.detach(), cutoff, batch=batch, cell=None if cell is None else cell.detach(),
                                  pbc=pbc)
    i, j, unit = pairs.i, pairs.j, pairs.shifts
    if pairs.num_pairs is not None:
        keep = pairs.mask
        i, j, unit = i[keep], j[keep], unit[keep]
    sender, receiver = torch.cat([i, j]), torch.cat([j, i])
    unit = torch.cat([unit, -unit]).to(pos.dtype)
    if cell is not None and unit.numel():
        shifts = torch.bmm(unit.unsqueeze(1), cell[batch[sender]]).squeeze(1)
    else:
        shifts = torch.zeros_like(unit)
    with torch.no_grad():  # drop the list entries beyond the cutoff (a Verlet list has a skin)
        vec = pos[receiver] - pos[sender] + shifts
        inside = (vec * vec).sum(1) < cutoff * cutoff
    if not bool(inside.all()):
        sender, receiver, unit, shifts = sender[inside], receiver[inside], unit[inside], shifts[inside]
    return sender, receiver, unit, shifts
