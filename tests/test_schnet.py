import math

import pytest
import torch

import boltzgrad as bg
from boltzgrad.models.schnet import SchNet, cosine_cutoff, fit_species_shift_scale


def small_schnet(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    args = dict(n_features=16, n_filters=16, n_interactions=2, n_rbf=12, cutoff=4.0, max_z=10)
    args.update(kw)
    model = SchNet(**args).to(dtype)
    # non-trivial per-species readout so species mix-ups would show
    model.shift[:] = torch.linspace(-3.0, 2.0, model.max_z + 1, dtype=dtype)
    model.scale[:] = torch.linspace(0.5, 1.5, model.max_z + 1, dtype=dtype)
    return model


def random_molecule(n=9, seed=0, dtype=torch.float64, spread=2.2):
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * spread
    species = torch.tensor([1, 6, 8, 7, 1, 1, 6, 1, 8, 1, 6, 7, 1, 1][:n], dtype=torch.int64)
    if n > 14:
        species = torch.randint(1, 9, (n,), generator=g)
    return pos.to(dtype), species


def energy_forces(model, pos, species, **kw):
    pos = pos.detach().requires_grad_(True)
    e = model(pos, species, **kw)["energy"]
    (g,) = torch.autograd.grad(e.sum(), pos)
    return e.detach(), -g


def random_rotation(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def test_paper_size_parameter_count():
    model = SchNet()  # 64 features/filters, 6 interactions, 25 Gaussians, 5 Å
    n = sum(p.numel() for p in model.parameters())
    # embedding 101*64; per block: filter 25*64+64 + 64*64+64, in2f 64*64, f2out and dense 2*(64*64+64);
    # readout 64*32+32 + 32+1
    block = (25 * 64 + 64) + (64 * 64 + 64) + 64 * 64 + 2 * (64 * 64 + 64)
    assert n == 101 * 64 + 6 * block + (64 * 32 + 32) + 33
    assert 110_000 < n < 130_000
    assert model.cutoff == 5.0


def test_invariances_and_force_equivariance():
    model = small_schnet()
    pos, species = random_molecule(10)
    e0, f0 = energy_forces(model, pos, species)
    rot = random_rotation(3)
    shift = torch.tensor([1.5, -7.0, 0.25], dtype=torch.float64)
    e1, f1 = energy_forces(model, pos @ rot.T + shift, species)
    torch.testing.assert_close(e1, e0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f1, f0 @ rot.T, rtol=1e-10, atol=1e-10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    e2, f2 = energy_forces(model, pos[perm], species[perm])
    torch.testing.assert_close(e2, e0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f2, f0[perm], rtol=1e-10, atol=1e-10)
    out = model(pos, species)
    torch.testing.assert_close(out["atom_energies"][perm], model(pos[perm], species[perm])["atom_energies"])
    # a different species assignment gives a different energy (the model is not blind to species)
    assert abs(float(model(pos, species.flip(0))["energy"].detach() - e0)) > 1e-6


def test_forces_match_finite_differences():
    model = small_schnet(seed=1)
    pos, species = random_molecule(7, seed=2)
    _, f = energy_forces(model, pos, species)
    assert f.abs().max() > 1e-3
    h = 1e-5
    fd = torch.zeros_like(pos)
    for a in range(pos.shape[0]):
        for k in range(3):
            dp = torch.zeros_like(pos)
            dp[a, k] = h
            ep = model(pos + dp, species)["energy"].item()
            em = model(pos - dp, species)["energy"].item()
            fd[a, k] = -(ep - em) / (2 * h)
    torch.testing.assert_close(f, fd, rtol=1e-6, atol=1e-8)


def test_energy_is_smooth_at_the_cutoff():
    model = small_schnet(seed=2, cutoff=3.0)
    species = torch.tensor([6, 8], dtype=torch.int64)
    far = model(torch.tensor([[0.0, 0, 0], [10.0, 0, 0]], dtype=torch.float64), species)["energy"]
    for d in (3.0 - 1e-6, 3.0 + 1e-6):
        e = model(torch.tensor([[0.0, 0, 0], [d, 0, 0]], dtype=torch.float64), species)["energy"]
        torch.testing.assert_close(e, far, rtol=0, atol=1e-9)
    d = torch.linspace(0.1, 3.5, 50, dtype=torch.float64)
    fc = cosine_cutoff(d, 3.0)
    assert torch.all(fc[d >= 3.0] == 0) and torch.all(fc[d < 3.0] > 0)


def test_batch_of_replicas_equals_separate_calls():
    model = small_schnet(seed=3)
    mols = [random_molecule(n, seed=s) for n, s in [(5, 0), (9, 1), (3, 2), (12, 3)]]
    pos = torch.cat([m[0] for m in mols])
    species = torch.cat([m[1] for m in mols])
    batch = torch.cat([torch.full((m[0].shape[0],), r, dtype=torch.int64) for r, m in enumerate(mols)])
    out = model(pos, species, batch=batch)
    _, f = energy_forces(model, pos, species, batch=batch)
    assert out["energy"].shape == (4,) and out["atom_energies"].shape == (pos.shape[0],)
    start = 0
    for r, (p, s) in enumerate(mols):
        single = model(p, s)
        e_r, f_r = energy_forces(model, p, s)
        n = p.shape[0]
        torch.testing.assert_close(out["energy"][r : r + 1], single["energy"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["atom_energies"][start : start + n], single["atom_energies"])
        torch.testing.assert_close(f[start : start + n], f_r, rtol=1e-10, atol=1e-12)
        start += n
    torch.testing.assert_close(out["energy"].sum(), out["atom_energies"].sum())


def test_periodic_equals_open_in_a_large_box():
    model = small_schnet(seed=4)
    pos, species = random_molecule(9, seed=5)
    cell = torch.eye(3, dtype=torch.float64)[None] * 20.0  # > 2 * (extent + cutoff)
    e0, f0 = energy_forces(model, pos, species)
    # atoms placed across the box boundary: the periodic list must reconnect them
    e1, f1 = energy_forces(model, pos + 0.3, species, cell=cell, pbc=True)
    torch.testing.assert_close(e1, e0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f1, f0, rtol=1e-10, atol=1e-12)


def test_small_periodic_box_equals_supercell():
    # a box smaller than twice the cutoff (atoms see their own images): the energy per cell must
    # equal that of an explicit 2x2x2 supercell divided by 8, forces those of the replicated atoms
    model = small_schnet(seed=5, cutoff=4.0)
    g = torch.Generator().manual_seed(0)
    cell = torch.tensor([[3.3, 0.0, 0.0], [0.4, 3.6, 0.0], [-0.3, 0.2, 3.4]], dtype=torch.float64)
    frac = torch.rand(4, 3, generator=g, dtype=torch.float64)
    pos = frac @ cell
    species = torch.tensor([1, 6, 8, 6], dtype=torch.int64)
    e1, f1 = energy_forces(model, pos, species, cell=cell[None], pbc=True)
    shifts = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.float64)
    sup_pos = (pos[None] + (shifts @ cell)[:, None]).reshape(-1, 3)
    sup_species = species.repeat(8)
    e8, f8 = energy_forces(model, sup_pos, sup_species, cell=(2 * cell)[None], pbc=True)
    torch.testing.assert_close(e8 / 8, e1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f8[:4], f1, rtol=1e-8, atol=1e-10)


def test_verlet_list_and_padded_pairs_give_the_same_energies():
    model = small_schnet(seed=6)
    pos, species = random_molecule(12, seed=7, spread=3.0)
    e0, f0 = energy_forces(model, pos, species)
    skin_model = small_schnet(seed=6, neighbor_list=bg.NeighborList(4.0, skin=1.0))
    e1, f1 = energy_forces(skin_model, pos, species)
    torch.testing.assert_close(e1, e0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f1, f0, rtol=1e-10, atol=1e-12)
    p = pos.detach().requires_grad_(True)
    # a padded list built from detached positions (as a simulator would): only indices and shifts are used
    pairs = bg.neighbor_list(pos.detach(), 4.0, max_pairs=200)
    assert int(pairs.num_pairs) < 200
    e2 = model(p, species, pairs=pairs)["energy"]
    (g,) = torch.autograd.grad(e2.sum(), p)
    torch.testing.assert_close(e2.detach(), e0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(-g, f0, rtol=1e-10, atol=1e-12)


def test_second_derivatives_for_force_training():
    model = small_schnet(seed=7, n_features=8, n_filters=8, n_rbf=6)
    pos, species = random_molecule(5, seed=8)

    def forces(p):
        e = model(p, species)["energy"]
        (g,) = torch.autograd.grad(e.sum(), p, create_graph=True)
        return -g

    assert torch.autograd.gradcheck(forces, (pos.clone().requires_grad_(True),))
    # d(force loss)/d(parameter) against finite differences in one parameter
    target = torch.randn(pos.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = model.interactions[0].filter1.weight

    def force_loss():
        p = pos.clone().requires_grad_(True)
        return (forces(p) - target).pow(2).sum()

    (gw,) = torch.autograd.grad(force_loss(), w)
    h = 1e-6
    w0 = w.detach().clone()
    with torch.no_grad():
        w[0, 0] += h
    lp = force_loss().item()
    with torch.no_grad():
        w[0, 0] -= 2 * h
    lm = force_loss().item()
    with torch.no_grad():
        w.copy_(w0)
    assert abs(gw[0, 0].item()) > 1e-6
    assert math.isclose(gw[0, 0].item(), (lp - lm) / (2 * h), rel_tol=1e-5, abs_tol=1e-9)


def test_per_sample_parameter_gradients_with_torch_func():
    model = small_schnet(seed=8)
    mols = [random_molecule(n, seed=s) for n, s in [(4, 0), (6, 1)]]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def energy(p, pos, species):
        return torch.func.functional_call(model, (p,), (pos, species))["energy"].sum()

    for pos, species in mols:
        g_func = torch.func.grad(energy)(params, pos, species)
        model.zero_grad()
        model(pos, species)["energy"].sum().backward()
        for k, v in model.named_parameters():
            torch.testing.assert_close(g_func[k], v.grad)


def test_float32_model_agrees_with_float64():
    m64 = small_schnet(seed=9)
    m32 = small_schnet(seed=9, dtype=torch.float32)
    pos, species = random_molecule(10, seed=3)
    e64, f64 = energy_forces(m64, pos, species)
    e32, f32 = energy_forces(m32, pos.float(), species)
    assert e32.dtype == torch.float32
    torch.testing.assert_close(e32.double(), e64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f32.double(), f64, rtol=1e-4, atol=1e-4)


def test_fit_species_shift_scale_recovers_reference_energies():
    g = torch.Generator().manual_seed(0)
    ref = {1: -13.6, 6: -1029.0, 8: -2041.0}
    zs = torch.tensor(list(ref))
    species, batch, energy = [], [], []
    for s in range(30):
        n = int(torch.randint(2, 8, (1,), generator=g))
        z = zs[torch.randint(0, 3, (n,), generator=g)]
        species.append(z)
        batch.append(torch.full((n,), s))
        energy.append(sum(ref[int(a)] for a in z) + 0.01 * float(torch.randn(1, generator=g)))
    species, batch = torch.cat(species), torch.cat(batch)
    forces = torch.randn(species.shape[0], 3, generator=g, dtype=torch.float64) * 0.7
    forces[species == 1] *= 0.5
    shift, scale = fit_species_shift_scale(torch.tensor(energy), species, batch, forces, max_z=10)
    for z, e in ref.items():
        assert abs(shift[z].item() - e) < 0.02
    assert shift[2].item() == 0.0
    rms_h = forces[species == 1].pow(2).mean().sqrt().item()
    rms_o = forces[species == 8].pow(2).mean().sqrt().item()
    assert math.isclose(scale[1].item(), rms_h, rel_tol=1e-12) and math.isclose(scale[8].item(), rms_o, rel_tol=1e-12)
    assert scale[1] < scale[8]
    model = small_schnet()
    model.fit_shift_scale(torch.tensor(energy), species, batch, forces)
    torch.testing.assert_close(model.shift[6], shift[6].to(model.shift.dtype))


def test_fit_shift_of_one_molecule_reproduces_the_mean_energy():
    species = torch.tensor([6, 1, 1, 1, 1] * 3)
    batch = torch.arange(3).repeat_interleave(5)
    energy = torch.tensor([-40.0, -41.0, -42.5], dtype=torch.float64)
    shift, scale = fit_species_shift_scale(energy, species, batch, None, max_z=10)
    torch.testing.assert_close(shift[6] + 4 * shift[1], energy.mean())
    torch.testing.assert_close(scale[6], ((energy - energy.mean()) / 5).std())


def test_bad_inputs_raise_naming_the_argument():
    model = small_schnet()
    pos, species = random_molecule(4)
    with pytest.raises(ValueError, match="species"):
        model(pos, torch.tensor([1, 6, 11, 1]))
    with pytest.raises(ValueError, match="species"):
        model(pos, species.to(torch.int32))
    with pytest.raises(ValueError, match="positions"):
        model(pos[:, :2], species)
    with pytest.raises(ValueError, match="batch"):
        model(pos, species, batch=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="cutoff"):
        SchNet(cutoff=0.0)
    with pytest.raises(ValueError, match="forces"):
        fit_species_shift_scale(torch.zeros(1), species, torch.zeros(4, dtype=torch.int64), torch.zeros(3, 3))


def test_runs_in_the_md_simulator_with_its_verlet_list():
    model = small_schnet(seed=10, cutoff=3.5)
    model.scale.fill_(300.0)  # a rugged landscape: the dynamics exchange eV between potential and kinetic energy
    mols = [random_molecule(6, seed=s, spread=1.8) for s in (11, 12)]
    pos = torch.cat([m[0] for m in mols]) * 1.3
    species = torch.cat([m[1] for m in mols])
    batch = torch.arange(2).repeat_interleave(6)
    masses = torch.tensor([1.008, 12.011, 15.999, 14.007, 1.008, 1.008] * 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    vel = bg.md.maxwell_boltzmann(masses, 0.05, batch=batch, generator=g)
    state = bg.md.State(pos, vel, masses, species, batch=batch)
    sim = bg.md.Simulator(model, bg.md.VelocityVerlet(0.1))
    assert isinstance(sim.neighbor_list, bg.md.VerletPairs) and sim.neighbor_list.cutoff == 3.5

    def total(s):
        return s.energy + bg.md.kinetic_energy(s.velocities, masses, batch, 2)

    first = sim.run(state, 1)
    last = sim.run(first, 100)
    assert (last.positions - pos).abs().max() > 0.01
    assert not bool(last.frozen.any())
    ke0 = bg.md.kinetic_energy(first.velocities, masses, batch, 2)
    ke1 = bg.md.kinetic_energy(last.velocities, masses, batch, 2)
    assert float((ke1 - ke0).abs().min()) > 0.5  # eV exchanged with the potential energy
    assert float((total(last) - total(first)).abs().max()) < 2e-3  # conserved (measured 1e-4 eV)


def test_vmap_per_sample_gradients_with_a_shared_pair_list():
    model = small_schnet(seed=11)
    pos, species = random_molecule(6, seed=4)
    g = torch.Generator().manual_seed(1)
    samples = pos[None] + 0.2 * torch.randn(5, 6, 3, generator=g, dtype=torch.float64)
    # one list for all samples, with a skin so that it holds every pair within the cutoff of each sample
    pairs = bg.neighbor_list(pos, 4.0 + 1.5, max_pairs=20)
    assert int(pairs.num_pairs) < 20  # padding present: it must be masked
    params = {k: v.detach() for k, v in model.named_parameters()}

    def energy(p, x):
        return torch.func.functional_call(model, (p,), (x, species), {"pairs": pairs})["energy"].sum()

    per_sample = torch.func.vmap(torch.func.grad(energy), in_dims=(None, 0))(params, samples)
    for s in range(samples.shape[0]):
        model.zero_grad()
        model(samples[s], species)["energy"].sum().backward()  # own neighbour list, no shared one
        for k, v in model.named_parameters():
            torch.testing.assert_close(per_sample[k][s], v.grad, rtol=1e-9, atol=1e-12)


def test_gaussian_rbf_has_no_denormals_and_equals_the_plain_gaussians():
    from boltzgrad.models.schnet import GaussianRBF

    rbf = GaussianRBF(0.0, 5.0, 20)
    d = torch.linspace(0.0, 6.0, 5001)
    out = rbf(d)
    # float32 would hold the tails between e^-87 and e^-103 as denormals (slow on x86); they are 0 here
    assert not ((out != 0) & (out.abs() < torch.finfo(torch.float32).tiny)).any()
    d64 = torch.linspace(0.0, 6.0, 5001, dtype=torch.float64)
    plain = torch.exp(rbf.coeff * (d64[:, None] - rbf.centers.double()) ** 2)
    assert ((plain > 0) & (plain < torch.finfo(torch.float32).tiny)).any()  # the plain formula does make them
    torch.testing.assert_close(rbf(d64), plain, rtol=1e-14, atol=2e-22)
    torch.testing.assert_close(out, plain.float(), rtol=1e-4, atol=2e-22)  # float32 rounding of d, amplified by exp
    x = torch.tensor([0.3, 1.7, 2.2, 4.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rbf, (x,))
    assert torch.autograd.gradgradcheck(rbf, (x,))


def test_energies_and_forces_equal_those_of_the_plain_gaussians():
    from boltzgrad.models import schnet as schnet_module

    model = small_schnet(n_rbf=25)
    pos, species = random_molecule(12, spread=3.0)
    e_new, f_new = energy_forces(model, pos, species)

    def plain_forward(self, distances):
        diff = distances[:, None] - self.centers.to(distances.dtype)
        return torch.exp(self.coeff * diff * diff)

    original = schnet_module.GaussianRBF.forward
    schnet_module.GaussianRBF.forward = plain_forward
    try:
        e_old, f_old = energy_forces(model, pos, species)
    finally:
        schnet_module.GaussianRBF.forward = original
    torch.testing.assert_close(e_new, e_old, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(f_new, f_old, rtol=1e-13, atol=1e-13)


def test_fused_convolution_equals_gathers_and_scatters_to_second_order():
    from boltzgrad.models import schnet as schnet_module

    model = small_schnet(n_interactions=3)
    pos, species = random_molecule(12, spread=3.0)
    batch = torch.zeros(12, dtype=torch.int64)
    cell = torch.eye(3, dtype=torch.float64)[None] * 3.5  # periodic: pairs with images, and of atoms with themselves
    pairs = bg.neighbor_list(pos, 4.0, batch=batch, cell=cell, pbc=True)
    assert bool((pairs.i == pairs.j).any())

    def unfused(w, x, i, j):
        return schnet_module._segment_sum(w * x[j], i, x.shape[0]) + schnet_module._segment_sum(w * x[i], j,
                                                                                                x.shape[0])

    def run():
        model.zero_grad()
        p = pos.clone().requires_grad_(True)
        e = model(p, species, batch=batch, cell=cell, pbc=True)["energy"]
        (f,) = torch.autograd.grad(e.sum(), p, create_graph=True)
        (f ** 2).sum().backward()  # force training: a second derivative w.r.t. the parameters
        grads = [torch.zeros_like(q) if q.grad is None else q.grad.clone() for q in model.parameters()]
        return e.detach(), f.detach(), grads

    fused = run()
    original = schnet_module._convolve
    schnet_module._convolve = unfused
    try:
        plain = run()
    finally:
        schnet_module._convolve = original
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused[1], plain[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(fused[2], plain[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert any(float(g.abs().max()) > 0 for g in fused[2])
