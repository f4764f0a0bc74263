"""SchNet energies + forces on the CPU: against its peers, in GFLOP/s against sgemm, and on three pair lists.

Questions:
  1. What does one energies + forces evaluation of boltzgrad's SchNet cost for a StABlE batch (128 aspirin-sized
     replicas x 21 atoms, the model of ``configs/aspirin_schnet.yaml``: 32 features, 32 filters, 3 interactions,
     20 Gaussians, 5 Å) and for a small one (8 replicas), in a fresh process (its first calls) and warm, and what
     does the same model with the same weights cost in PyTorch Geometric (``torch_geometric.nn.models.SchNet``)
     and in SchNetPack (``schnetpack.representation.SchNet`` with the same readout)? A peer that is not
     installed is skipped with the reason printed; both get boltzgrad's neighbour list as a full (directed)
     list, so only the model differs. ``--model default`` runs ``bg.models.SchNet()`` (64/64/6/25) instead.
  2. Which fraction of this machine's single-thread sgemm rate does that reach? The rate is measured in the same
     run, interleaved with the model calls: ``torch.mm`` of two 1024 x 1024 float32 matrices, and for reference
     the model's own dense shape ([n_pairs, filters] x [filters, filters]). GFLOP/s of a model = the matmul
     FLOPs it must do (counted analytically by ``matmul_flops``: every dense layer on atoms and on pairs, forward,
     plus the input gradients needed for the forces) / its time. The count is boltzgrad's (filters on the half
     list); the peers evaluate filters on the full list, twice those FLOPs, and are rated with the same count.
     ``boltzgrad, tabulated filters`` is the same model as ``SchNet.tabulated()`` (filter networks replaced by
     cubic Hermite tables at 0.005 Å, fused with the convolution: ``boltzgrad.ops.tabulated``), the route for MD
     and evaluation. It skips the pair-level matmuls, so its GFLOP/s is an effective rate: the exact model's
     FLOP count over its time, i.e. the rate the exact model would need to be as fast; the matmul FLOPs it
     does execute (atom-wise layers only) are printed with the sizes.
  3. (``--pair-lists``) How much does it save to feed the paper-size model (64/64/6/25) boltzgrad's neighbour
     lists instead of a dense all-pairs list? Methods (one model, the same weights; only the pair list differs):
       * ``neighbor_list``: the model's default, ``bg.neighbor_list`` (half list) searched at every call;
       * ``verlet``: a ``bg.NeighborList`` (skin 0.5 Å) handed to the model as ``pairs=``, as the MD simulator
         does: between rebuilds only the stored candidates are re-filtered (atoms here move 0.01 Å per step);
       * ``dense``: every pair ``i < j`` of each replica, precomputed once (210 per replica), handed as
         ``pairs=``; the model then filters them by the cutoff itself.
  4. (``--variants``) What do the fused continuous-filter convolution (``boltzgrad.ops.cfconv``) and the
     Gaussian tails set to 0 below e^-50 bring? boltzgrad's model against the same weights with the convolution as
     gathers, products and scatters, then also with the plain ``exp`` Gaussians (float32 denormal tails), with
     and without ``torch.set_flush_denormal(True)``; interleaved, ratios per repeat.
  5. (``--softplus-state``) ``F.softplus`` of a [19692, 64] float32 tensor in fresh processes (alternating), with
     boltzgrad's process settings (``boltzgrad/_process.py``: torch's constant pages prefaulted, glibc malloc
     thresholds), with either or both turned off, and with both off after one small ``pow``; CPU time and page
     faults of its first and later calls.

Agreement of energies and forces with a float64 evaluation of boltzgrad's model is checked before anything is
timed (a peer that disagrees is reported and not timed). Times are CPU time of the process
(``time.process_time``, which counts the kernel's time for page faults too; on a shared machine it counts the work,
not the wait for a core), one thread. Warm: the methods and the sgemm are interleaved within each repeat, min and
median over repeats. Fresh: each method runs in new processes (alternating), its first call and the median of
calls 2-6 are timed, with the page faults of those calls; boltzgrad runs there with its process settings
(``import boltzgrad``) and with either or both turned off (``BOLTZGRAD_PREFAULT=0``, ``BOLTZGRAD_MALLOC=0``).

    python benchmarks/bench_schnet.py                   # questions 1-2, tables appended to benchmarks/RESULTS.md
    python benchmarks/bench_schnet.py --model default   # the same with bg.models.SchNet() (64/64/6/25)
    python benchmarks/bench_schnet.py --pair-lists      # question 3
    python benchmarks/bench_schnet.py --variants        # question 4 (printed only)
    python benchmarks/bench_schnet.py --softplus-state  # question 5 (printed only)
    python benchmarks/bench_schnet.py --quick           # fewer repeats, no file written
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import boltzgrad as bg
from boltzgrad.models import SchNet, energy_and_forces

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import append_section  # noqa: E402

R, N = 128, 21
TABULATED = "boltzgrad, tabulated filters"
ASPIRIN = [6] * 9 + [8] * 4 + [1] * 8  # C9H8O4
CLOCK = time.process_time


def molecule_like(seed=0) -> np.ndarray:
    """21 positions (Å) in a flat ellipsoid of aspirin's size, no two atoms closer than 1.1 Å."""
    rng = np.random.default_rng(seed)
    pts: list[np.ndarray] = []
    while len(pts) < N:
        p = rng.uniform(-1, 1, 3) * np.array([4.0, 3.2, 1.4])
        if (p / np.array([4.0, 3.2, 1.4])) @ (p / np.array([4.0, 3.2, 1.4])) > 1.0:
            continue
        if all(np.linalg.norm(p - q) > 1.1 for q in pts):
            pts.append(p)
    return np.array(pts)


def make_inputs(dtype=torch.float32, n_replicas=R):
    rng = np.random.default_rng(1)
    base = molecule_like()
    pos = np.concatenate([base + rng.normal(0, 0.1, base.shape) for _ in range(n_replicas)])
    species = torch.tensor(ASPIRIN * n_replicas, dtype=torch.int64)
    batch = torch.arange(n_replicas).repeat_interleave(N)
    return torch.tensor(pos, dtype=dtype), species, batch


def dense_pairs(positions, batch):
    """All pairs i < j of each replica (the list without any search)."""
    i, j = torch.triu_indices(N, N, 1)
    offs = (torch.arange(R) * N)[:, None]
    i, j = (i[None] + offs).reshape(-1), (j[None] + offs).reshape(-1)
    vectors = positions[j] - positions[i]
    return bg.Pairs(i, j, torch.zeros(i.shape[0], 3, dtype=torch.int64), vectors, vectors.norm(dim=1))


CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "aspirin_schnet.yaml")
SIZES = {"paper": R, "small": 8}  # replicas of the 21-atom molecule
PEERS = ("pyg", "schnetpack")


def make_model(kind: str) -> SchNet:
    """``config``: the SchNet of configs/aspirin_schnet.yaml (fresh weights, seed 0); ``default``: SchNet()."""
    torch.manual_seed(0)
    if kind == "default":
        return SchNet()
    import yaml

    with open(CONFIG) as f:
        spec = yaml.safe_load(f)["model"]
    keys = ("n_features", "n_filters", "n_interactions", "n_rbf", "cutoff")
    return SchNet(**{k: spec[k] for k in keys})


def dims(model: SchNet) -> dict:
    block = model.interactions[0]
    return dict(F=model.embedding.embedding_dim, K=block.filter2.out_features, G=block.filter1.in_features,
                I=len(model.interactions), H=model.readout1.out_features)


def matmul_flops(model: SchNet, n_atoms: int, n_pairs: int) -> tuple[int, int]:
    """(forward, backward) matmul FLOPs (2 per multiply-add) of energies + forces; n_pairs: the half list.

    Forward, per interaction: the filter network on pairs (G x K and K x K), in2f, f2out and dense on atoms
    (F x K, K x F, F x F); then the readout (F x H, H x 1). The forces need the input gradient of each of these
    layers, the same FLOPs, except in2f of the first interaction (its input, the embedding, does not depend on
    the positions); no weight gradients.
    """
    d = dims(model)
    pair = 2 * n_pairs * (d["G"] * d["K"] + d["K"] * d["K"])
    atom = 2 * n_atoms * (d["F"] * d["K"] + d["K"] * d["F"] + d["F"] * d["F"])
    readout = 2 * n_atoms * (d["F"] * d["H"] + d["H"])
    forward = d["I"] * (pair + atom) + readout
    backward = forward - (2 * n_atoms * d["F"] * d["K"] if d["I"] else 0)
    return forward, backward


def full_list(model: SchNet, pos: torch.Tensor, batch: torch.Tensor):
    """boltzgrad's half list within the cutoff as both directions (what the peers take)."""
    with torch.no_grad():
        pairs = bg.neighbor_list(pos.detach(), model.cutoff, batch=batch)
    return torch.cat([pairs.i, pairs.j]), torch.cat([pairs.j, pairs.i])


def _energy_forces(energy_fn, pos):
    pos = pos.detach().requires_grad_(True)
    energy = energy_fn(pos)
    (grad,) = torch.autograd.grad(energy.sum(), pos)
    return energy.detach(), -grad


def pyg_method(model: SchNet):
    """``(run, None)`` with the same weights in PyG's SchNet, or ``(None, why not)``."""
    try:
        from torch_geometric.nn.models import SchNet as PygSchNet
    except ImportError as e:
        return None, f"torch_geometric is not installed ({e})"
    d = dims(model)

    def graph(pos, batch):
        src, dst = full_list(model, pos, batch)
        return torch.stack([src, dst]), (pos[dst] - pos[src]).norm(dim=-1)

    net = PygSchNet(hidden_channels=d["F"], num_filters=d["K"], num_interactions=d["I"], num_gaussians=d["G"],
                    cutoff=model.cutoff, interaction_graph=graph, readout="add")
    if net.lin1.out_features != d["H"]:
        return None, f"PyG's readout has {net.lin1.out_features} hidden units, boltzgrad's {d['H']}"
    with torch.no_grad():
        net.embedding.weight.copy_(model.embedding.weight[: net.embedding.num_embeddings])
        for ours, theirs in zip(model.interactions, net.interactions, strict=True):
            for a, b in ((ours.filter1, theirs.mlp[0]), (ours.filter2, theirs.mlp[2]), (ours.f2out, theirs.conv.lin2),
                         (ours.dense, theirs.lin)):
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
            theirs.conv.lin1.weight.copy_(ours.in2f.weight)
        for a, b in ((model.readout1, net.lin1), (model.readout2, net.lin2)):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)

    def run(pos, species, batch):
        return _energy_forces(lambda p: net(species, p, batch).reshape(-1), pos)

    return run, None


def schnetpack_method(model: SchNet):
    """``(run, None)`` with the same weights in SchNetPack's SchNet (+ the same readout), or ``(None, why not)``."""
    try:
        import schnetpack as spk
        from schnetpack import properties
    except ImportError as e:
        return None, f"schnetpack is not installed ({e})"
    d = dims(model)
    rep = spk.representation.SchNet(n_atom_basis=d["F"], n_interactions=d["I"],
                                    radial_basis=spk.nn.GaussianRBF(n_rbf=d["G"], cutoff=model.cutoff),
                                    cutoff_fn=spk.nn.CosineCutoff(model.cutoff), n_filters=d["K"])
    readout = torch.nn.Sequential(spk.nn.Dense(d["F"], d["H"], activation=spk.nn.shifted_softplus),
                                  spk.nn.Dense(d["H"], 1))
    with torch.no_grad():
        rep.embedding.weight.copy_(model.embedding.weight[: rep.embedding.num_embeddings])
        for ours, theirs in zip(model.interactions, rep.interactions, strict=True):
            for a, b in ((ours.filter1, theirs.filter_network[0]), (ours.filter2, theirs.filter_network[1]),
                         (ours.f2out, theirs.f2out[0]), (ours.dense, theirs.f2out[1])):
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
            theirs.in2f.weight.copy_(ours.in2f.weight)
        for a, b in ((model.readout1, readout[0]), (model.readout2, readout[1])):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)

    def run(pos, species, batch):
        idx_i, idx_j = full_list(model, pos, batch)
        n_rep = int(batch.max()) + 1

        def energy(p):
            inputs = {properties.Z: species, properties.Rij: p[idx_j] - p[idx_i], properties.idx_i: idx_i,
                      properties.idx_j: idx_j}
            y = readout(rep(inputs)["scalar_representation"]).squeeze(-1)
            return y.new_zeros(n_rep).index_add(0, batch, y)

        return _energy_forces(energy, pos)

    return run, None


def methods_for(model: SchNet) -> tuple[dict, dict]:
    """``({name: run(pos, species, batch) -> (energy, forces)}, {peer: why it is skipped})``."""
    tabulated = model.tabulated()
    runs = {"boltzgrad": lambda pos, species, batch: energy_and_forces(model, pos, species, batch=batch),
            TABULATED: lambda pos, species, batch: energy_and_forces(tabulated, pos, species, batch=batch)}
    skipped = {}
    for name, make in (("pyg", pyg_method), ("schnetpack", schnetpack_method)):
        try:
            run, why = make(model)
        except Exception as e:  # a peer whose API moved: say so, time the others
            run, why = None, f"could not be built: {type(e).__name__}: {e}"
        if run is None:
            skipped[name] = why
        else:
            runs[name] = run
    return runs, skipped


def check_agreement(model: SchNet, runs: dict, pos, species, batch, skipped: dict) -> dict:
    """Max relative errors against boltzgrad's model in float64; a peer beyond the bounds moves to ``skipped``."""
    e64, f64 = energy_and_forces(model.double(), pos.double(), species, batch=batch)
    model.float()
    errors = {}
    for name in list(runs):
        e, f = runs[name](pos, species, batch)
        err_e = float((e.double() - e64).abs().max() / e64.abs().max())
        err_f = float((f.double() - f64).abs().max() / f64.abs().max())
        if err_e > 1e-5 or err_f > 1e-4:
            if name == "boltzgrad":
                raise SystemExit(f"boltzgrad's float32 model disagrees with float64: {err_e:.2e}, {err_f:.2e}")
            skipped[name] = f"disagrees with boltzgrad (energy {err_e:.1e}, forces {err_f:.1e}): not timed"
            del runs[name]
        else:
            errors[name] = (err_e, err_f)
    return errors


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child(args) -> None:
    """One fresh process: the first ``args.calls`` calls of one method; prints JSON."""
    torch.set_num_threads(1)
    model = make_model(args.model)
    pos, species, batch = make_inputs(n_replicas=args.replicas)
    runs, skipped = methods_for(model)
    if args.child not in runs:
        print(json.dumps({"skipped": skipped.get(args.child, "unknown method")}))
        return
    run = runs[args.child]
    times, faults = [], []
    for _ in range(args.calls):
        f0, t0 = _minflt(), CLOCK()
        run(pos, species, batch)
        times.append(CLOCK() - t0)
        faults.append(_minflt() - f0)
    print(json.dumps({"times": times, "faults": faults}))


# boltzgrad's process settings (boltzgrad/_process.py) turned off, one or both
OFF = {"BOLTZGRAD_PREFAULT=0": {"BOLTZGRAD_PREFAULT": "0"}, "BOLTZGRAD_MALLOC=0": {"BOLTZGRAD_MALLOC": "0"},
       "both =0": {"BOLTZGRAD_PREFAULT": "0", "BOLTZGRAD_MALLOC": "0"}}


def _clean_env() -> dict:
    ours = ("MALLOC_", "BOLTZGRAD_MALLOC", "BOLTZGRAD_PREFAULT")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)}


def fresh(args, names: list[str], n_replicas: int, processes: int) -> dict:
    """``{label: [result per process]}``, the labels' processes alternating."""
    variants = [(n, n, {}) for n in names]
    variants[1:1] = [(f"boltzgrad, {k}", "boltzgrad", v) for k, v in OFF.items()]
    out = {label: [] for label, _, _ in variants}
    base_env = _clean_env()
    for _ in range(processes):
        for label, name, extra in variants:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--replicas", str(n_replicas),
                   "--model", args.model, "--calls", "6"]
            env = dict(base_env, OMP_NUM_THREADS="1", **extra)
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                raise SystemExit(f"{label}: the fresh process failed:\n{res.stderr[-2000:]}")
            out[label].append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def warm(runs: dict, pos, species, batch, model: SchNet, n_pairs: int, repeats: int) -> dict:
    """Interleaved warm timings (s) of each method and of the two sgemm shapes, first repeat dropped."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1024, 1024, generator=g), torch.randn(1024, 1024, generator=g)
    k = dims(model)["K"]
    pa, pb = torch.randn(n_pairs, k, generator=g), torch.randn(k, k, generator=g)
    tasks = dict(runs)
    tasks["sgemm 1024^3"] = lambda *_: torch.mm(a, b)
    tasks[f"sgemm {n_pairs}x{k}x{k}"] = lambda *_: [torch.mm(pa, pb) for _ in range(10)]
    times = {name: [] for name in tasks}
    for _ in range(repeats + 1):
        for name, fn in tasks.items():
            t0 = CLOCK()
            fn(pos, species, batch)
            times[name].append(CLOCK() - t0)
    times[f"sgemm {n_pairs}x{k}x{k}"] = [t / 10 for t in times[f"sgemm {n_pairs}x{k}x{k}"]]
    return {name: t[1:] for name, t in times.items()}


def _ms(values) -> str:
    return f"{1e3 * min(values):.1f} / {1e3 * statistics.median(values):.1f}"


def peers_and_sgemm(args) -> None:
    """Questions 1 and 2."""
    repeats, processes = (3, 1) if args.quick else (args.repeats, args.processes)
    model = make_model(args.model)
    d = dims(model)
    n_params = sum(p.numel() for p in model.parameters())
    sections = []
    for size, n_rep in SIZES.items():
        pos, species, batch = make_inputs(n_replicas=n_rep)
        n_atoms, n_pairs = pos.shape[0], len(bg.neighbor_list(pos, model.cutoff, batch=batch))
        runs, skipped = methods_for(model)
        errors = check_agreement(model, runs, pos, species, batch, skipped)
        for name, why in skipped.items():
            print(f"[{size}] {name}: skipped: {why}")
        for name, (ee, ef) in errors.items():
            print(f"[{size}] {name}: agreement with float64, max rel. error energy {ee:.1e}, forces {ef:.1e}")
        fwd, bwd = matmul_flops(model, n_atoms, n_pairs)
        flops = fwd + bwd
        executed = sum(matmul_flops(model, n_atoms, 0))
        t = warm(runs, pos, species, batch, model, n_pairs, repeats)
        sg_name = "sgemm 1024^3"
        sg_rate = 2 * 1024**3 / statistics.median(t[sg_name]) / 1e9
        rows = []
        for name, ts in t.items():
            if name.startswith("sgemm"):
                m, kk = (1024, 1024) if name == sg_name else (n_pairs, d["K"])
                gf = 2 * m * kk * (1024 if name == sg_name else d["K"]) / statistics.median(ts) / 1e9
                rows.append(f"| {name} | {_ms(ts)} | {gf:.1f} | {100 * gf / sg_rate:.0f}% |")
            else:
                gf = flops / statistics.median(ts) / 1e9
                rows.append(f"| {name} | {_ms(ts)} | {gf:.2f} | {100 * gf / sg_rate:.1f}% |")
        warm_table = ("| method (warm) | ms, min / median | GFLOP/s (median) | of sgemm 1024^3 |\n|---|---|---|---|\n"
                      + "\n".join(rows))
        fr = fresh(args, list(runs), n_rep, processes)
        frows = []
        for label, results in fr.items():
            if results and "skipped" in results[0]:
                continue
            first = [r["times"][0] for r in results]
            rest = [statistics.median(r["times"][1:]) for r in results]
            faults = [statistics.median(r["faults"][1:]) for r in results]
            frows.append(f"| {label} | {_ms(first)} | {_ms(rest)} | {min(faults):.0f} / {statistics.median(faults):.0f}"
                         f" |")
        fresh_table = ("| method (fresh process) | first call, ms (min / median) | calls 2-6, median ms (min / median)"
                       " | page faults per call 2-6 (min / median) |\n|---|---|---|---|\n" + "\n".join(frows))
        info = (f"[{size}] {n_rep} replicas x {N} atoms ({n_atoms}), {n_pairs} pairs (half list); SchNet "
                f"{d['F']}/{d['K']}/{d['I']}/{d['G']} ({n_params} parameters), float32; matmul FLOPs per call "
                f"{fwd / 1e6:.0f} M forward + {bwd / 1e6:.0f} M backward ({executed / 1e6:.0f} M executed with "
                f"tabulated filters); sgemm 1024^3 {sg_rate:.1f} GFLOP/s")
        skip = "".join(f"; {n} skipped: {w}" for n, w in skipped.items())
        print(info + skip)
        print(warm_table)
        print(fresh_table)
        sections.append(f"{info}{skip}.\n\n{warm_table}\n\n{fresh_table}\n")
    if not args.quick:
        cmd = "python benchmarks/bench_schnet.py" + (" --model default" if args.model == "default" else "")
        append_section(
            f"\n## SchNet energies + forces against peers and sgemm, {args.model} model ({time.strftime('%Y-%m-%d')})"
            f"\n\nCommand: `OMP_NUM_THREADS=1 {cmd}` (1 thread, {platform.processor() or platform.machine()}, torch "
            f"{torch.__version__}; CPU time; warm: {repeats} interleaved repeats; fresh: {processes} processes per "
            f"method, alternating).\n\n" + "\n".join(sections)
        )


def pair_lists(args) -> None:
    """The model on three pair lists (question 3)."""
    repeats = 3 if args.quick else 15

    torch.manual_seed(0)
    model = SchNet()
    n_params = sum(p.numel() for p in model.parameters())
    pos, species, batch = make_inputs()
    n_pairs = len(bg.neighbor_list(pos, model.cutoff, batch=batch))
    verlet = bg.NeighborList(model.cutoff, skin=0.5)

    def run(method, p):
        if method == "neighbor_list":
            return energy_and_forces(model, p, species, batch=batch)
        if method == "verlet":
            return energy_and_forces(model, p, species, batch=batch, pairs=verlet(p.detach(), batch=batch))
        return energy_and_forces(model, p, species, batch=batch, pairs=dense_pairs(p.detach(), batch))

    methods = ["neighbor_list", "verlet", "dense"]
    # agreement with float64 before timing
    e64, f64 = energy_and_forces(model.double(), pos.double(), species, batch=batch)
    model.float()
    for m in methods:
        e, f = run(m, pos)
        err_e = float((e.double() - e64).abs().max() / e64.abs().max())
        err_f = float((f.double() - f64).abs().max() / f64.abs().max())
        if err_e > 1e-5 or err_f > 1e-4:
            raise SystemExit(f"{m} disagrees with the float64 evaluation: energy {err_e:.2e}, forces {err_f:.2e}")
        print(f"{m}: agreement with float64, max rel. error energy {err_e:.1e}, forces {err_f:.1e}")

    times = {m: [] for m in methods}
    step = torch.Generator().manual_seed(2)
    p = pos.clone()
    for _ in range(repeats + 1):
        # small MD-like moves: the Verlet list is reused, the others search again
        p = p + 0.01 * torch.randn(p.shape, generator=step)
        for m in methods:
            t0 = CLOCK()
            run(m, p)
            times[m].append(CLOCK() - t0)
    med = {m: 1e3 * statistics.median(t[1:]) for m, t in times.items()}  # first call: warm-up
    rows = [f"| {m} | {med[m]:.1f} | {med['dense'] / med[m]:.2f}x |" for m in methods]
    table = ("| pair list | forward + forces, ms per step | speed-up vs dense |\n|---|---|---|\n" + "\n".join(rows))
    info = (f"SchNet {n_params} parameters, float32, {R} replicas x {N} atoms, {n_pairs} pairs within "
            f"{model.cutoff} Å (of {R * N * (N - 1) // 2}); Verlet list rebuilt {verlet.n_builds} times in "
            f"{repeats + 2} calls")
    print(info)
    print(table)
    if not args.quick:
        cmd = "python benchmarks/bench_schnet.py --pair-lists"
        cmd += f" --threads {args.threads}" if args.threads != 1 else ""
        append_section(
            f"\n## SchNet energies + forces, 128 x 21 atoms ({time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `{cmd}` ({args.threads} thread(s), {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}; CPU-time medians of {repeats} steps). {info}.\n\n" + table + "\n"
        )


_SOFTPLUS_CHILD = """
import json, resource, sys, time, torch
import torch.nn.functional as F
import boltzgrad
torch.set_num_threads(1)
x = torch.randn(19692, 64)
if sys.argv[1] == "pow":
    (torch.rand(100, 64) + 0.5).pow(1.7)
times, faults = [], []
for _ in range(20):
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    F.softplus(x)
    times.append(time.process_time() - t0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"times": times, "faults": faults}))
"""


def softplus_state(args) -> None:
    """Question 5: F.softplus of [19692, 64] float32 in fresh processes, with and without the malloc settings."""
    setups = {"import boltzgrad": ({}, "-")}
    setups.update({k: (v, "-") for k, v in OFF.items()})
    setups["both =0, one [100, 64] pow first"] = (OFF["both =0"], "pow")
    base_env = _clean_env()
    res = {name: [] for name in setups}
    for _ in range(2 if args.quick else args.processes):
        for name, (extra, arg) in setups.items():
            out = subprocess.run([sys.executable, "-c", _SOFTPLUS_CHILD, arg], env=dict(base_env, OMP_NUM_THREADS="1",
                                 **extra), capture_output=True, text=True, timeout=300, check=True)
            res[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for name, runs in res.items():
        early = [statistics.median(r["times"][:5]) for r in runs]
        late = [statistics.median(r["times"][10:]) for r in runs]
        f_early = [statistics.median(r["faults"][:5]) for r in runs]
        f_late = [statistics.median(r["faults"][10:]) for r in runs]
        rows.append(f"| {name} | {_ms(early)} | {_ms(late)} | {statistics.median(f_early):.0f} | "
                    f"{statistics.median(f_late):.0f} |")
    print("| fresh process | calls 1-5, median ms (min / median over processes) | calls 11-20 | page faults per "
          "call 1-5 (median) | calls 11-20 |\n|---|---|---|---|---|\n" + "\n".join(rows))


def variants(args) -> None:
    """Question 4: boltzgrad's model against itself without the fused cfconv, with the plain Gaussians, and with
    denormals flushed."""
    from boltzgrad.models import schnet as schnet_module

    repeats = 3 if args.quick else args.repeats
    model = make_model(args.model)
    pos, species, batch = make_inputs()
    ours_rbf, ours_conv = schnet_module.GaussianRBF.forward, schnet_module._convolve

    def plain_rbf(self, distances):  # exp of every exponent: float32 keeps tails between e^-87 and e^-103 as denormals
        diff = distances[:, None] - self.centers.to(distances.dtype)
        return torch.exp(self.coeff * diff * diff)

    def unfused(w, x, i, j):  # gather, product and scatter per direction, through [P, K] temporaries
        return schnet_module._segment_sum(w * x[j], i, x.shape[0]) + schnet_module._segment_sum(w * x[i], j, x.shape[0])

    setups = {"boltzgrad": (ours_rbf, ours_conv, False),
              "unfused cfconv": (ours_rbf, unfused, False),
              "unfused cfconv, plain Gaussians (as before)": (plain_rbf, unfused, False),
              "unfused cfconv, plain Gaussians, torch.set_flush_denormal(True)": (plain_rbf, unfused, True)}

    def use(name):
        rbf, conv, flush = setups[name]
        schnet_module.GaussianRBF.forward, schnet_module._convolve = rbf, conv
        torch.set_flush_denormal(flush)

    results, times = {}, {name: [] for name in setups}
    for name in setups:
        use(name)
        results[name] = energy_and_forces(model, pos, species, batch=batch)
    for _ in range(repeats + 1):
        for name in setups:
            use(name)
            t0 = CLOCK()
            energy_and_forces(model, pos, species, batch=batch)
            times[name].append(CLOCK() - t0)
    use("boltzgrad")
    torch.set_flush_denormal(False)
    ref = times["boltzgrad"][1:]
    e0, f0 = results["boltzgrad"]
    rows = []
    for name, ts in times.items():
        ratio = [t / r for t, r in zip(ts[1:], ref, strict=True)]
        e, f = results[name]
        rows.append(f"| {name} | {_ms(ts[1:])} | {min(ratio):.2f} / {statistics.median(ratio):.2f} | "
                    f"{float((e - e0).abs().max()):.1e} / {float((f - f0).abs().max()):.1e} |")
    d = dims(model)
    print(f"SchNet {d['F']}/{d['K']}/{d['I']}/{d['G']}, {R} x {N} atoms, float32, warm, {repeats} interleaved repeats")
    print("| variant | ms, min / median | time / boltzgrad's, min / median (pairwise) | max abs. difference energy "
          "(eV) / forces (eV/Å) |\n|---|---|---|---|\n" + "\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", choices=("config", "default"), default="config")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--processes", type=int, default=3, help="fresh processes per method and size")
    ap.add_argument("--pair-lists", action="store_true", help="question 3 only")
    ap.add_argument("--variants", action="store_true", help="question 4 only (printed, not written)")
    ap.add_argument("--softplus-state", action="store_true", help="question 5 only (printed, not written)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--replicas", type=int, default=R, help=argparse.SUPPRESS)
    ap.add_argument("--calls", type=int, default=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
    elif args.pair_lists:
        pair_lists(args)
    elif args.variants:
        variants(args)
    elif args.softplus_state:
        softplus_state(args)
    else:
        peers_and_sgemm(args)


if __name__ == "__main__":
    main()
