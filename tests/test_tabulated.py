"""Tabulated SchNet filters: the compiled op against its pure-torch twin, the interpolation's order, and the
tabulated model against the SchNet it is built from (energies, forces, virials, padded lists, parameter updates)."""

import pytest
import torch
from test_schnet import energy_forces, random_molecule, small_schnet

import boltzgrad as bg
from boltzgrad import _reference
from boltzgrad.models.schnet import SchNet, TabulatedSchNet
from boltzgrad.ops import tabulated as tab
from boltzgrad.ops.tabulated import tabulated_cfconv

compiled = pytest.mark.skipif(not tab._HAS_OPS, reason="compiled ops not built (BOLTZGRAD_NO_EXT or no compiler)")


def random_case(seed=0, dtype=torch.float64, P=40, N=9, K=20, G=30, h=0.1):
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, N, (P,), generator=g)
    j = torch.randint(0, N, (P,), generator=g)
    j[:3] = i[:3]  # atoms with their own periodic images
    d = torch.rand(P, generator=g, dtype=torch.float64) * (G * h * 1.1)  # some beyond the table
    d[3] = G * h  # exactly at its end: zero filter
    d[4] = 0.0
    c = torch.randn(G, 4, K, generator=g, dtype=torch.float64)
    x = torch.randn(N, K, generator=g, dtype=torch.float64)
    return d.to(dtype), c.to(dtype), x.to(dtype), i, j, h


@compiled
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_op_equals_the_pure_torch_twin_forward_and_backward(dtype):
    d, c, x, i, j, h = random_case(dtype=dtype)
    # float32: the same sums in another order
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    d1, x1 = d.clone().requires_grad_(True), x.clone().requires_grad_(True)
    d2, x2 = d.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out1 = torch.ops.boltzgrad.tabulated_cfconv(d1, c, x1, i, j, h)
    out2 = _reference.tabulated_cfconv(d2, c, x2, i, j, h)
    torch.testing.assert_close(out1, out2, **tol)
    g = torch.randn(out1.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    gd1, gx1 = torch.autograd.grad(out1, (d1, x1), g)
    gd2, gx2 = torch.autograd.grad(out2, (d2, x2), g)
    torch.testing.assert_close(gx1, gx2, **tol)
    torch.testing.assert_close(gd1, gd2, **tol)
    assert gd1[3] == 0 and (d > c.shape[0] * h).any()  # beyond the table: no force


@compiled
def test_op_gradcheck_float64():
    d, c, x, i, j, h = random_case(seed=1, P=12, N=5, K=6, G=8, h=0.5)
    d = (0.01 + d % 3.9).requires_grad_(True)  # inside the table [0, 4), away from its ends
    x = x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d_, x_: tabulated_cfconv(d_, c, x_, i, j, h), (d, x))


@compiled
def test_second_derivative_raises_clearly():
    d, c, x, i, j, h = random_case(seed=2)
    d = d.requires_grad_(True)
    out = tabulated_cfconv(d, c, x, i, j, h)
    with pytest.raises(RuntimeError, match="first derivatives"):
        torch.autograd.grad(out.pow(2).sum(), d, create_graph=True)


def test_bad_arguments_name_themselves():
    d, c, x, i, j, h = random_case()
    with pytest.raises(ValueError, match="coefficients"):
        tabulated_cfconv(d, c[:, :3], x, i, j, h)
    with pytest.raises(ValueError, match="dtype"):
        tabulated_cfconv(d.float(), c, x, i, j, h)
    with pytest.raises(ValueError, match="spacing"):
        tabulated_cfconv(d, c, x, i, j, 0.0)
    with pytest.raises(ValueError, match="i and j"):
        tabulated_cfconv(d, c, x, i[:-1], j, h)
    with pytest.raises(TypeError, match="SchNet"):
        TabulatedSchNet(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="spacing"):
        small_schnet().tabulated(-0.1)


def test_interpolation_error_falls_as_the_fourth_power_of_the_spacing():
    model = small_schnet(seed=3)
    r = torch.linspace(0.0, model.cutoff * 0.999, 2001, dtype=torch.float64)
    exact, _ = model.interactions[0].filter_value_slope(model.rbf, model.cutoff, r)
    errors = []
    for spacing in (0.2, 0.1, 0.05):
        tm = model.tabulated(spacing)
        c = tm.tables()[0]
        x = torch.zeros(r.numel() + 1, c.shape[2], dtype=torch.float64)
        x[-1] = 1.0  # the filter of pair (p, last atom) lands in row p
        idx = torch.arange(r.numel())
        w = _reference.tabulated_cfconv(r, c, x, idx, torch.full_like(idx, r.numel()), tm.spacing)[:-1]
        errors.append(float((w - exact).abs().max()))
    assert errors[0] > 0
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 10.0 < coarse / fine < 24.0, errors  # 16 for a cubic Hermite interpolant


def test_tabulated_model_equals_the_schnet_in_float64():
    model = small_schnet(seed=4)
    pos, species = random_molecule(12, seed=5, spread=2.5)
    e0, f0 = energy_forces(model, pos, species)
    e1, f1 = energy_forces(model.tabulated(0.002), pos, species)
    torch.testing.assert_close(e1, e0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(f1, f0, rtol=1e-7, atol=1e-8)


def test_tabulated_float32_error_is_within_float32_rounding():
    # the tabulated float32 model's distance from the float64 SchNet is no larger than the float32 SchNet's own
    m64 = small_schnet(seed=6)
    m32 = small_schnet(seed=6, dtype=torch.float32)
    pos, species = random_molecule(14, seed=6, spread=2.5)
    e64, f64 = energy_forces(m64, pos, species)
    e32, f32 = energy_forces(m32, pos.float(), species)
    et, ft = energy_forces(m32.tabulated(), pos.float(), species)
    rounding_e = float((e32.double() - e64).abs().max())
    rounding_f = float((f32.double() - f64).abs().max())
    assert rounding_f > 0
    assert float((et.double() - e64).abs().max()) <= 4 * rounding_e + 1e-6
    assert float((ft.double() - f64).abs().max()) <= 4 * rounding_f


def test_periodic_virial_and_padded_lists_match():
    model = small_schnet(seed=7, cutoff=4.0)
    tm = model.tabulated(0.002)
    g = torch.Generator().manual_seed(0)
    cell = torch.tensor([[[5.1, 0.0, 0.0], [0.3, 5.4, 0.0], [-0.2, 0.4, 5.0]]], dtype=torch.float64)
    pos = torch.rand(10, 3, generator=g, dtype=torch.float64) @ cell[0]
    species = torch.randint(1, 9, (10,), generator=g)
    ref = bg.models.energy_forces_virial(model, pos, species, cell=cell, pbc=True)
    got = bg.models.energy_forces_virial(tm, pos, species, cell=cell, pbc=True)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
    pairs = bg.neighbor_list(pos, 4.0, cell=cell, pbc=True, max_pairs=400)
    assert int(pairs.num_pairs) < 400
    padded = bg.models.energy_and_forces(tm, pos, species, cell=cell, pbc=True, pairs=pairs)
    torch.testing.assert_close(padded[0], ref[0], rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(padded[1], ref[1], rtol=1e-7, atol=1e-8)


def test_tables_follow_parameter_updates_and_filters_get_no_gradient():
    model = small_schnet(seed=8)
    tm = model.tabulated(0.002)
    pos, species = random_molecule(10, seed=9)
    before = tm.tables()
    assert tm.tables() is before  # cached while nothing changed
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    e = model(pos, species)["energy"].sum()
    e.backward()
    opt.step()
    after = tm.tables()
    assert after is not before
    torch.testing.assert_close(energy_forces(tm, pos, species)[1], energy_forces(model, pos, species)[1],
                               rtol=1e-7, atol=1e-8)
    model.zero_grad()
    tm(pos, species)["energy"].sum().backward()
    assert model.interactions[0].filter1.weight.grad is None
    assert model.interactions[0].in2f.weight.grad is not None
    assert isinstance(tm.model, SchNet) and tm.cutoff == model.cutoff


def test_runs_in_the_simulator_like_the_schnet():
    # 100 NVE steps on a rugged float64 landscape: the tabulated model follows the SchNet's trajectory and
    # conserves energy as well
    model = small_schnet(seed=10, cutoff=3.5)
    model.scale.fill_(300.0)
    mols = [random_molecule(6, seed=s, spread=1.8) for s in (11, 12)]
    pos = torch.cat([m[0] for m in mols]) * 1.3
    species = torch.cat([m[1] for m in mols])
    batch = torch.arange(2).repeat_interleave(6)
    masses = torch.tensor([1.008, 12.011, 15.999, 14.007, 1.008, 1.008] * 2, dtype=torch.float64)
    vel = bg.md.maxwell_boltzmann(masses, 0.05, batch=batch, generator=torch.Generator().manual_seed(0))
    state = bg.md.State(pos, vel, masses, species, batch=batch)
    ends = []
    for m in (model, model.tabulated(0.002)):
        sim = bg.md.Simulator(m, bg.md.VelocityVerlet(0.1))
        first = sim.run(state, 1)
        last = sim.run(first, 100)
        drift = last.energy + bg.md.kinetic_energy(last.velocities, masses, batch, 2) \
            - first.energy - bg.md.kinetic_energy(first.velocities, masses, batch, 2)
        assert float(drift.abs().max()) < 2e-3
        ends.append(last.positions)
    assert (ends[0] - pos).abs().max() > 0.01
    torch.testing.assert_close(ends[1], ends[0], rtol=0, atol=1e-6)


def test_filter_slope_is_the_derivative_of_the_filter():
    model = small_schnet(seed=11)
    block = model.interactions[1]
    r = torch.linspace(0.05, model.cutoff - 0.05, 50, dtype=torch.float64, requires_grad=True)
    value, slope = block.filter_value_slope(model.rbf, model.cutoff, r)
    w = block.filter2(bg.models.schnet.shifted_softplus(block.filter1(model.rbf(r))))
    w = w * bg.models.schnet.cosine_cutoff(r, model.cutoff)[:, None]
    torch.testing.assert_close(value, w.detach(), rtol=1e-12, atol=1e-12)
    jac = torch.stack([torch.autograd.grad(w[:, k].sum(), r, retain_graph=True)[0] for k in range(w.shape[1])], 1)
    torch.testing.assert_close(slope, jac, rtol=1e-10, atol=1e-12)
