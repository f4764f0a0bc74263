import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.cluster import Icosahedron
from ase.md.verlet import VelocityVerlet as AseVelocityVerlet

import boltzgrad as bg
from boltzgrad.md import units

torch.set_num_threads(1)

ARGON = dict(epsilon=0.0104, sigma=3.4)
M_AR = 39.948

# ----------------------------------------------------------------------------- systems


def cluster_state(n_replicas, temperature, seed=0, dtype=torch.float64):
    """Ar13 icosahedra (non-periodic), slightly perturbed, Maxwell-Boltzmann velocities."""
    atoms = Icosahedron("Ar", 2, latticeconstant=5.26)
    n = len(atoms)
    g = torch.Generator().manual_seed(seed)
    pos = torch.tensor(atoms.positions, dtype=dtype).repeat(n_replicas, 1)
    pos = pos + 0.02 * torch.randn(pos.shape, generator=g, dtype=dtype)
    batch = torch.arange(n_replicas).repeat_interleave(n)
    masses = torch.full((n * n_replicas,), M_AR, dtype=dtype)
    v = bg.md.maxwell_boltzmann(masses, units.kT(temperature), batch=batch, generator=g)
    return bg.md.State(pos, v, masses, torch.full((n * n_replicas,), 18), batch=batch)


def argon_state(n_replicas, temperature, a=5.3, rep=2, seed=0, lattice=None):
    """Periodic fcc argon boxes (32 atoms for rep=2); ``lattice`` gives each replica its own constant."""
    lattice = [a] * n_replicas if lattice is None else lattice
    g = torch.Generator().manual_seed(seed)
    pos, cells = [], []
    for a_r in lattice:
        at = bulk("Ar", "fcc", a=a_r, cubic=True).repeat(rep)
        pos.append(torch.tensor(at.positions) + 0.05 * torch.randn(len(at), 3, generator=g, dtype=torch.float64))
        cells.append(torch.tensor(at.cell.array))
    n = pos[0].shape[0]
    batch = torch.arange(len(lattice)).repeat_interleave(n)
    masses = torch.full((n * len(lattice),), M_AR, dtype=torch.float64)
    v = bg.md.maxwell_boltzmann(masses, units.kT(temperature), batch=batch, generator=g)
    return bg.md.State(torch.cat(pos), v, masses, torch.full((n * len(lattice),), 18), batch=batch,
                       cell=torch.stack(cells), pbc=True)


BONDS = [[0, 1], [1, 2], [1, 3], [3, 4], [4, 5], [4, 6], [6, 7]]
BOND_K = [1.0, 2.0, 0.7, 1.5, 3.0, 1.2, 0.9]  # eV/Å²


def harmonic_state(n_replicas, kT, seed=0):
    """A tree of 8 atoms joined by zero-length harmonic bonds: each bond vector is Gaussian with <d_x²> = kT/k."""
    n = 8
    g = torch.Generator().manual_seed(seed)
    masses = torch.tensor([12.0, 1.0, 16.0, 12.0, 1.0, 14.0, 12.0, 1.0], dtype=torch.float64).repeat(n_replicas)
    batch = torch.arange(n_replicas).repeat_interleave(n)
    pos = 0.15 * torch.randn(n * n_replicas, 3, generator=g, dtype=torch.float64)
    v = bg.md.maxwell_boltzmann(masses, kT, batch=batch, generator=g)
    state = bg.md.State(pos, v, masses, torch.ones(n * n_replicas, dtype=torch.int64), batch=batch)
    return state, bg.models.Harmonic(BONDS, k=BOND_K)


def block_mean(x, n_blocks=10):
    """Mean of samples x [T, R, ...] and its standard error from block averages over time and replicas.

    Blocks are contiguous stretches of the trajectory of each replica, long compared with the correlation
    time, so block means are independent; replicas are independent by construction."""
    t = x.shape[0] // n_blocks * n_blocks
    blocks = x[x.shape[0] - t:].reshape(n_blocks, t // n_blocks, *x.shape[1:]).mean(1)
    blocks = blocks.reshape(-1)
    return blocks.mean().item(), (blocks.std() / math.sqrt(blocks.numel())).item()


def record(sim, state, n_steps, every, fields):
    buf = bg.md.TrajectoryBuffer(n_steps // every + 1, fields=fields)
    state = sim.run(state, n_steps, every=every, callback=buf)
    return state, buf


# ----------------------------------------------------------------------------- units and state


def test_units_match_ase_codata_2018():
    from ase.units import create_units

    u = create_units("2018")
    assert units.ASE_TIME == pytest.approx(1.0 / u["fs"], rel=1e-14)
    assert units.ACCELERATION == pytest.approx(u["fs"] ** 2, rel=1e-14)
    assert units.BAR == pytest.approx(u["bar"], rel=1e-14)
    assert units.KB == pytest.approx(u["kB"], rel=1e-9)


def test_maxwell_boltzmann_statistics_com_and_exact_temperature():
    g = torch.Generator().manual_seed(0)
    n = 20000
    masses = torch.tensor([1.0, 16.0], dtype=torch.float64).repeat(n // 2)
    kT = 0.05
    v = bg.md.maxwell_boltzmann(masses, kT, generator=g, remove_com=False)
    for m in (1.0, 16.0):
        var = v[masses == m].var().item()
        # the sample variance of 3n/2 Gaussian draws has relative standard error sqrt(2/(3n/2)) ~ 0.012
        assert var == pytest.approx(kT / m * units.ACCELERATION, rel=0.05)
    # per-replica temperatures, centre of mass removed, exact rescaling
    batch = torch.arange(4).repeat_interleave(10)
    masses = torch.rand(40, generator=g, dtype=torch.float64) * 20 + 1
    kTs = torch.tensor([0.01, 0.02, 0.03, 0.04], dtype=torch.float64)
    v = bg.md.maxwell_boltzmann(masses, kTs, batch=batch, generator=g, exact=True)
    p = torch.zeros(4, 3, dtype=torch.float64).index_add(0, batch, masses[:, None] * v)
    assert p.abs().max() < 1e-13
    state = bg.md.State(torch.randn(40, 3, dtype=torch.float64), v, masses, torch.ones(40, dtype=torch.int64),
                        batch=batch)
    torch.testing.assert_close(state.kT(), kTs, rtol=1e-12, atol=0)


def test_bad_input_raises_clear_value_errors():
    pos = torch.zeros(4, 3, dtype=torch.float64)
    pos[:, 0] = torch.arange(4.0) * 3
    v = torch.zeros(4, 3, dtype=torch.float64)
    m = torch.full((4,), 12.0, dtype=torch.float64)
    z = torch.ones(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="velocities must have shape"):
        bg.md.State(pos, torch.zeros(3, 3, dtype=torch.float64), m, z)
    with pytest.raises(ValueError, match="masses must have shape"):
        bg.md.State(pos, v, m[:3], z)
    with pytest.raises(ValueError, match="masses must be finite and > 0"):
        bg.md.State(pos, v, torch.tensor([12.0, -1.0, 12.0, 12.0], dtype=torch.float64), z)
    with pytest.raises(ValueError, match="species must have shape"):
        bg.md.State(pos, v, m, z[:2])
    bad = pos.clone()
    bad[2, 1] = math.nan
    with pytest.raises(ValueError, match="positions has 1 non-finite"):
        bg.md.State(bad, v, m, z)
    with pytest.raises(ValueError, match="batch must be sorted"):
        bg.md.State(pos, v, m, z, batch=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"replica 1 of R = 2 .* has no atoms"):
        bg.md.State(pos, v, m, z, cell=torch.eye(3, dtype=torch.float64).repeat(2, 1, 1), pbc=True)
    with pytest.raises(ValueError, match=r"pbc has 3 replicas but cell says R = 2"):
        bg.md.State(pos, v, m, z, cell=torch.eye(3, dtype=torch.float64).repeat(2, 1, 1),
                    pbc=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        bg.md.VelocityVerlet(0.0)
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        bg.md.Langevin(-1.0, 0.025, 0.01)
    with pytest.raises(ValueError, match="kT must be >= 0"):
        bg.md.Langevin(1.0, -0.025, 0.01)
    with pytest.raises(ValueError, match="kT must be > 0"):
        bg.md.NoseHoover(1.0, torch.tensor([0.025, -0.01]), 20.0)
    with pytest.raises(ValueError, match="friction"):
        bg.md.Langevin(1.0, 0.025, 0.0)
    with pytest.raises(ValueError, match="tau"):
        bg.md.NoseHoover(1.0, 0.025, -5.0)
    with pytest.raises(ValueError, match="chain"):
        bg.md.NoseHoover(1.0, 0.025, 20.0, chain=0)
    with pytest.raises(ValueError, match="compressibility"):
        bg.md.BerendsenNPT(1.0, 0.025, 0.0, 20.0, 1000.0, -1.0)
    with pytest.raises(ValueError, match="kT must be >= 0"):
        bg.md.maxwell_boltzmann(m, -1.0)
    state = bg.md.State(pos, v, m, z)
    sim = bg.md.Simulator(bg.models.LennardJones(0.01, 3.4, 8.0), bg.md.Langevin(1.0, torch.tensor([0.1, 0.2]), 0.01))
    with pytest.raises(ValueError, match=r"kT must be a float or a tensor of shape \[R\] = \[1\]"):
        sim.run(state, 1)
    sim = bg.md.Simulator(bg.models.LennardJones(0.01, 3.4, 8.0), bg.md.VelocityVerlet(1.0))
    with pytest.raises(ValueError, match="n_steps"):
        sim.run(state, -1)
    with pytest.raises(ValueError, match="every"):
        sim.run(state, 1, every=0)
    with pytest.raises(ValueError, match="periodic"):
        bg.md.Simulator(bg.models.LennardJones(0.01, 3.4, 8.0),
                        bg.md.BerendsenNPT(1.0, 0.025, 0.0, 20.0, 1000.0, 1.0)).run(state, 1)


# ----------------------------------------------------------------------------- NVE


def nve_energy_series(model, state, dt, t_total, every_fs=10.0):
    sim = bg.md.Simulator(model, bg.md.VelocityVerlet(dt))
    n = int(round(t_total / dt))
    _, buf = record(sim, state, n, int(round(every_fs / dt)), ("energy", "kinetic_energy"))
    e = buf.stack("energy") + buf.stack("kinetic_energy")
    return e, buf.stack("kinetic_energy").mean(0)


def nve_check(model, state, dts, t_total):
    """Energy fluctuation (RMS about the mean, per replica, in units of <K>) and drift at each dt."""
    out = []
    for dt in dts:
        e, k_mean = nve_energy_series(model, state, dt, t_total)
        rms = ((e - e.mean(0)).pow(2).mean(0).sqrt() / k_mean).mean().item()
        tenth = max(e.shape[0] // 10, 1)
        drift = ((e[-tenth:].mean(0) - e[:tenth].mean(0)).abs() / k_mean).max().item()
        out.append((rms, drift))
    return out


def test_nve_lennard_jones_conserves_energy_and_error_scales_as_dt_squared():
    model = bg.models.LennardJones(**ARGON, cutoff=10.2)  # the cluster stays inside the cutoff: smooth
    state = cluster_state(4, 20.0)
    (rms1, drift1), (rms2, drift2) = nve_check(model, state, (10.0, 5.0), 3000.0)
    # measured 1.1e-4 and 2.7e-5 of the mean kinetic energy
    assert drift1 < 5e-4 and drift2 < 1.2e-4
    # velocity Verlet conserves a shadow energy within O(dt²) of the true one: halving dt divides by 4
    assert 3.2 < rms1 / rms2 < 4.8


def test_nve_pair_mlp_conserves_energy_and_error_scales_as_dt_squared():
    torch.manual_seed(0)
    mlp = bg.models.PairMLP(cutoff=6.0, hidden=(16, 16)).double()
    with torch.no_grad():
        mlp.mlp[-1].weight.mul_(0.01)
    model = bg.models.Sum(bg.models.LennardJones(**ARGON, cutoff=10.2), mlp)
    state = cluster_state(4, 20.0, seed=1)
    (rms1, drift1), (rms2, drift2) = nve_check(model, state, (10.0, 5.0), 3000.0)
    # measured 3.1e-3 and 8.0e-4 of the mean kinetic energy (fluctuation, no systematic drift)
    assert drift1 < 1e-2 and drift2 < 2.5e-3
    assert 3.2 < rms1 / rms2 < 4.8


@pytest.mark.slow
def test_nve_drift_over_ten_thousand_steps():
    torch.manual_seed(0)
    mlp = bg.models.PairMLP(cutoff=6.0, hidden=(16, 16)).double()
    with torch.no_grad():
        mlp.mlp[-1].weight.mul_(0.01)
    for model in (bg.models.LennardJones(**ARGON, cutoff=10.2),
                  bg.models.Sum(bg.models.LennardJones(**ARGON, cutoff=10.2), mlp)):
        e, k_mean = nve_energy_series(model, cluster_state(4, 20.0, seed=2), 5.0, 50000.0)
        drift = ((e[-100:].mean(0) - e[:100].mean(0)).abs() / k_mean).max().item()
        assert drift < 1e-3


# ----------------------------------------------------------------------------- ASE agreement


def test_velocity_verlet_matches_ase_to_1e_10_over_100_steps():
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(2)
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    n = len(atoms)
    masses = torch.full((n,), M_AR, dtype=torch.float64)
    v0 = bg.md.maxwell_boltzmann(masses, units.kT(80.0), generator=torch.Generator().manual_seed(1))
    dt = 4.0
    state = bg.md.State(torch.tensor(atoms.positions), v0, masses, torch.tensor(atoms.numbers), cell=atoms.cell.array,
                        pbc=True)
    sim = bg.md.Simulator(bg.models.LennardJones(**ARGON, cutoff=7.0), bg.md.VelocityVerlet(dt), wrap_every=None)
    frames = []
    sim.run(state, 100, every=10, callback=lambda s, step: frames.append(
        (s.positions.clone(), s.velocities.clone(), s.energy.clone())))

    atoms.set_masses(np.full(n, M_AR))
    atoms.set_velocities(v0.numpy() * units.ASE_TIME)  # Å/fs -> Å per ASE time unit
    atoms.calc = AseLJ(sigma=ARGON["sigma"], epsilon=ARGON["epsilon"], rc=7.0, smooth=False)
    dyn = AseVelocityVerlet(atoms, timestep=dt / units.ASE_TIME)
    for k in range(10):
        dyn.run(10)
        pos, vel, energy = frames[k]
        np.testing.assert_allclose(pos.numpy(), atoms.positions, rtol=0, atol=1e-10)
        np.testing.assert_allclose(vel.numpy(), atoms.get_velocities() / units.ASE_TIME, rtol=0, atol=1e-10)
        assert energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    # the atoms moved: the comparison is not trivial
    assert np.abs(atoms.positions - frames[0][0].numpy()).max() > 0.05


# ----------------------------------------------------------------------------- NVT


def check_canonical_kinetic_energy(k, n_dof, kT, n_sigma=4.0, power=(0.01, 0.05)):
    """Mean and variance of K [T, R] against n_dof kT / 2 and n_dof kT² / 2 (K is Gamma(n_dof/2, kT)).

    Tolerance: n_sigma block-averaging standard errors plus a small allowance for the O(dt²) bias of the
    integrators (0.5% of the mean, 2% of the variance); ``power`` bounds the relative standard errors so that
    the check can detect wrong ensembles (a single Nosé-Hoover chain on a harmonic system doubles var K)."""
    mean, err = block_mean(k)
    assert abs(mean - 0.5 * n_dof * kT) < n_sigma * err + 0.005 * 0.5 * n_dof * kT, (mean, err, 0.5 * n_dof * kT)
    var, err_v = block_mean((k - k.mean()) ** 2)
    exact = 0.5 * n_dof * kT**2
    assert abs(var - exact) < n_sigma * err_v + 0.02 * exact, (var, err_v, exact)
    assert err < power[0] * 0.5 * n_dof * kT and err_v < power[1] * exact  # the check has statistical power


def check_bond_variances(buf, kT, n_rep, n_sigma=4.0, power=0.01):
    p = buf.stack("positions").reshape(-1, n_rep, 8, 3)
    bonds = torch.tensor(BONDS)
    d = p[:, :, bonds[:, 1]] - p[:, :, bonds[:, 0]]
    x2 = (d**2).mean(-1) * torch.tensor(BOND_K, dtype=torch.float64) / kT  # k <d_x²> / kT, should be 1
    mean, err = block_mean(x2)
    assert abs(mean - 1.0) < n_sigma * err + 0.01, (mean, err)
    assert err < power


def equilibrate_and_record(sim, state, size, every, fields):
    state = sim.run(state, size[0])
    return record(sim, state, size[1], every, fields)[1]


# (equilibration steps, production steps, power: largest allowed relative standard errors of <K>, var K)
FAST = pytest.param((500, 2500, 0.02, 0.1), id="fast")
LONG = pytest.param((1000, 6000, 0.01, 0.05), id="long", marks=pytest.mark.slow)


@pytest.mark.parametrize("size", [FAST, LONG])
@pytest.mark.parametrize("thermostat", ["langevin", "nose_hoover_massive"])
def test_nvt_harmonic_kinetic_energy_and_configurational_average(thermostat, size):
    kT, n_rep = 0.025, 32
    state, model = harmonic_state(n_rep, kT)
    if thermostat == "langevin":
        integrator = bg.md.Langevin(1.0, kT, 0.02, generator=torch.Generator().manual_seed(3))
    else:
        integrator = bg.md.NoseHoover(1.0, kT, 40.0, chain=3, massive=True)
    n_dof = 24  # 8 atoms; neither thermostat conserves the centre-of-mass momentum
    buf = equilibrate_and_record(bg.md.Simulator(model, integrator), state, size, 10, ("positions", "kinetic_energy"))
    check_canonical_kinetic_energy(buf.stack("kinetic_energy"), n_dof, kT, power=size[2:])
    check_bond_variances(buf, kT, n_rep, power=size[2])


def test_langevin_per_replica_temperatures():
    kTs = torch.tensor([0.01, 0.03], dtype=torch.float64)
    state, model = harmonic_state(2, 0.02)
    state = bg.md.State(torch.cat([state.positions] * 8), torch.cat([state.velocities] * 8),
                        torch.cat([state.masses] * 8), torch.cat([state.species] * 8),
                        batch=torch.arange(16).repeat_interleave(8))
    kT_r = kTs.repeat(8)
    sim = bg.md.Simulator(model, bg.md.Langevin(1.0, kT_r, 0.05, generator=torch.Generator().manual_seed(0)))
    state = sim.run(state, 300)
    state, buf = record(sim, state, 3000, 10, ("kinetic_energy",))
    k = buf.stack("kinetic_energy")
    for r in range(2):
        mean, err = block_mean(k[:, r::2])
        assert abs(mean - 12 * kTs[r].item()) < 4 * err + 0.01 * 12 * kTs[r].item()


LJ_FAST = pytest.param((200, 1500, 0.02, 0.1), id="fast")
LJ_LONG = pytest.param((400, 3000, 0.01, 0.05), id="long", marks=pytest.mark.slow)


@pytest.mark.parametrize("size", [LJ_FAST, LJ_LONG])
@pytest.mark.parametrize("thermostat", ["langevin", "nose_hoover"])
def test_nvt_lennard_jones_kinetic_energy(thermostat, size):
    temperature = 60.0
    kT = units.kT(temperature)
    state = argon_state(8, temperature)
    model = bg.models.LennardJones(**ARGON, cutoff=5.2)
    if thermostat == "langevin":
        integrator = bg.md.Langevin(5.0, kT, 0.01, generator=torch.Generator().manual_seed(4))
        n_dof = 3 * 32
    else:
        integrator = bg.md.NoseHoover(5.0, kT, 100.0, chain=3)
        n_dof = 3 * 32 - 3  # the chain conserves the (zero) centre-of-mass momentum
    buf = equilibrate_and_record(bg.md.Simulator(model, integrator, skin=1.0), state, size, 5, ("kinetic_energy",))
    check_canonical_kinetic_energy(buf.stack("kinetic_energy"), n_dof, kT, power=size[2:])


def test_nose_hoover_conserves_its_extended_energy():
    kT = units.kT(40.0)
    state = cluster_state(4, 40.0)
    integrator = bg.md.NoseHoover(5.0, kT, 50.0, chain=3)
    sim = bg.md.Simulator(bg.models.LennardJones(**ARGON, cutoff=10.2), integrator)
    values, kinetic = [], []

    def cb(s, step):
        values.append(integrator.conserved_energy(s))
        kinetic.append(s.kinetic_energy())

    sim.run(state, 1000, every=10, callback=cb)
    h = torch.stack(values)
    k = torch.stack(kinetic)
    assert ((h - h[0]).abs().max(0).values / k.mean(0)).max() < 5e-3  # measured 2.2e-3
    # and it is not trivially constant because nothing happens: the kinetic energy fluctuates
    assert (k.std(0) / k.mean(0)).min() > 0.05


# ----------------------------------------------------------------------------- NPT


def test_berendsen_npt_relaxes_to_the_same_density_from_both_sides():
    temperature, target = 40.0, 1.0 * units.BAR
    state = argon_state(3, temperature, lattice=[5.05, 5.3, 5.6])
    model = bg.models.LennardJones(**ARGON, cutoff=8.0)
    integrator = bg.md.BerendsenNPT(5.0, units.kT(temperature), target, tau_t=100.0, tau_p=500.0,
                                    compressibility=1e-4 / units.BAR)
    sim = bg.md.Simulator(model, integrator, skin=1.0)
    v0 = state.volume()
    state = sim.run(state, 1500)
    pressures, volumes = [], []

    def cb(s, step):
        pressures.append(integrator.pressure_of(s))
        volumes.append(s.volume())

    state = sim.run(state, 500, every=5, callback=cb)
    vol = torch.stack(volumes).mean(0)
    p = torch.stack(pressures)
    # all three replicas, started 15% compressed to 17% expanded in volume, reach the same density
    assert (vol.max() - vol.min()) / vol.mean() < 0.01, vol
    assert ((vol - v0).abs() / v0)[[0, 2]].min() > 0.05
    # at the target pressure within the pressure fluctuations of a 32-atom box (~100 bar)
    assert (p.mean(0) - target).abs().max() < 150 * units.BAR, p.mean(0) / units.BAR
    # cell and positions scale together: fractional coordinates stay in a sensible range
    frac = torch.linalg.solve(state.cell[state.batch].transpose(1, 2), state.positions.unsqueeze(-1))
    assert frac.abs().max() < 2.0


def test_berendsen_safeguards_limit_volume_and_velocity_changes():
    state = argon_state(1, 40.0, lattice=[4.6])  # strongly compressed: huge pressure
    state.velocities = state.velocities * 3.0  # far too hot
    integrator = bg.md.BerendsenNPT(5.0, units.kT(40.0), 0.0, tau_t=1.0, tau_p=1.0, compressibility=1.0,
                                    max_velocity_scale=0.1, max_volume_change=0.01)
    sim = bg.md.Simulator(bg.models.LennardJones(**ARGON, cutoff=6.0), integrator)
    s1 = sim.run(state, 1)
    assert s1.volume().item() / state.volume().item() == pytest.approx(1.01, rel=1e-12)


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("integrator", ["nve", "nose_hoover"])
def test_exploding_replica_is_frozen_and_others_are_unaffected(integrator):
    def make(n_rep, explode):
        s = cluster_state(n_rep, 30.0, seed=5)
        if explode is not None:
            pos = s.positions.clone()
            lo = 13 * explode
            pos[lo + 1] = pos[lo] + torch.tensor([0.4, 0.0, 0.0], dtype=torch.float64)  # overlapping atoms
            s = s.replace(positions=pos)
        return s

    def integ():
        if integrator == "nve":
            return bg.md.VelocityVerlet(5.0)
        return bg.md.NoseHoover(5.0, units.kT(30.0), 50.0)

    model = bg.models.LennardJones(**ARGON, cutoff=10.2)
    full = make(3, explode=1)
    sim = bg.md.Simulator(model, integ())
    end = sim.run(full, 200)
    assert end.frozen.tolist() == [False, True, False]
    assert end.frozen_step[1].item() == 1 and end.frozen_step[0].item() == -1
    assert bool(torch.isfinite(end.positions).all() & torch.isfinite(end.velocities).all())
    # the frozen replica keeps its last finite state (here: the start) and does not move any more
    torch.testing.assert_close(end.positions[13:26], full.positions[13:26], rtol=0, atol=0)
    # the same batch without the bad replica gives the others the same trajectories
    ref_state = make(3, explode=None)
    keep = torch.cat([torch.arange(0, 13), torch.arange(26, 39)])
    ref_state = bg.md.State(ref_state.positions[keep], ref_state.velocities[keep], ref_state.masses[keep],
                            ref_state.species[keep], batch=torch.arange(2).repeat_interleave(13))
    ref = bg.md.Simulator(model, integ()).run(ref_state, 200)
    torch.testing.assert_close(end.positions[keep], ref.positions, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(end.velocities[keep], ref.velocities, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(end.energy[[0, 2]], ref.energy, rtol=1e-12, atol=1e-12)
    assert not bool(ref.frozen.any())


def test_non_finite_forces_freeze_only_their_replica():
    class Spiky(torch.nn.Module):
        """LJ whose energy becomes NaN in replica 0 once its first atom moved past x = 0.05 Å."""

        def __init__(self):
            super().__init__()
            self.lj = bg.models.LennardJones(**ARGON, cutoff=10.2)

        def forward(self, positions, species, *, batch=None, cell=None, pbc=False):
            out = self.lj(positions, species, batch=batch)
            first = torch.arange(out["energy"].shape[0]) == 0
            bad = first & (positions.detach()[0, 0] > 0.05)
            e = out["energy"] + torch.where(bad, math.nan, 0.0).to(positions.dtype)
            return {"energy": e, "atom_energies": out["atom_energies"]}

    state = cluster_state(2, 30.0, seed=6)
    pos = state.positions.clone()
    pos[0] = pos[0] - pos[0, 0] * torch.tensor([1.0, 0, 0], dtype=torch.float64)
    vel = state.velocities.clone()
    vel[0, 0] = 0.01
    state = state.replace(positions=pos, velocities=vel)
    end = bg.md.Simulator(Spiky(), bg.md.VelocityVerlet(2.0)).run(state, 50)
    assert end.frozen.tolist() == [True, False]
    assert 1 <= end.frozen_step[0].item() <= 10
    assert bool(torch.isfinite(end.energy).all())


# ----------------------------------------------------------------------------- wrapping and recording


def test_wrapping_keeps_unwrapped_trajectory():
    state = argon_state(2, 300.0, a=5.6)
    model = bg.models.LennardJones(**ARGON, cutoff=6.0)
    a = bg.md.Simulator(model, bg.md.VelocityVerlet(5.0), wrap_every=1).run(state, 200)
    b = bg.md.Simulator(model, bg.md.VelocityVerlet(5.0), wrap_every=None).run(state, 200)
    torch.testing.assert_close(a.unwrapped_positions(), b.positions, rtol=0, atol=1e-9)
    frac = torch.linalg.solve(a.cell[a.batch].transpose(1, 2), a.positions.unsqueeze(-1)).squeeze(-1)
    assert bool(((frac >= -1e-12) & (frac < 1 + 1e-12)).all())
    assert int(a.image.abs().sum()) > 0  # some atoms did cross the boundary
    torch.testing.assert_close(a.energy, b.energy, rtol=1e-10, atol=1e-10)


def test_ring_buffer_callback_and_extxyz(tmp_path):
    from ase.io import read

    state = cluster_state(2, 30.0)
    sim = bg.md.Simulator(bg.models.LennardJones(**ARGON, cutoff=10.2), bg.md.VelocityVerlet(5.0), buffer_size=3)
    steps = []
    end = sim.run(state, 20, every=4, callback=lambda s, step: steps.append(step))
    assert steps == [4, 8, 12, 16, 20]
    end = sim.run(end, 20, every=4)  # no callback: the simulator's ring buffer keeps the last 3 frames
    buf = sim.trajectory
    assert len(buf) == 3 and buf.steps.tolist() == [32, 36, 40]
    torch.testing.assert_close(buf.stack("positions")[-1], end.positions)
    path = tmp_path / "traj.extxyz"
    bg.md.write_extxyz(path, buf, replica=1)
    frames = read(path, index=":")
    assert len(frames) == 3 and len(frames[0]) == 13
    np.testing.assert_allclose(frames[-1].positions, end.positions[13:].numpy(), atol=1e-8)
    assert frames[-1].get_potential_energy() == pytest.approx(end.energy[1].item(), abs=1e-8)
    assert not list(tmp_path.glob("*.tmp"))
    bg.md.write_extxyz(tmp_path / "all.extxyz", [state, end])
    assert len(read(tmp_path / "all.extxyz", index=":")) == 4


def test_state_from_and_to_ase_atoms():
    from ase.build import molecule

    water, methane = molecule("H2O"), molecule("CH4")
    water.set_velocities(np.random.default_rng(0).normal(scale=0.01, size=(3, 3)))
    state = bg.md.State.from_atoms([water, methane], dtype=torch.float64)
    assert state.n_replicas == 2 and state.batch.tolist() == [0, 0, 0, 1, 1, 1, 1, 1] and state.cell is None
    assert state.species.tolist() == [8, 1, 1, 6, 1, 1, 1, 1]
    torch.testing.assert_close(state.masses[:3], torch.tensor(water.get_masses()))
    torch.testing.assert_close(state.velocities[:3], torch.tensor(water.get_velocities()) / units.ASE_TIME)
    back = state.to_atoms()
    assert [len(a) for a in back] == [3, 5] and [a.info["replica"] for a in back] == [0, 1]
    np.testing.assert_allclose(back[0].get_velocities(), water.get_velocities(), atol=1e-12)
    np.testing.assert_allclose(back[1].positions, methane.positions, atol=1e-12)

    crystal = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    state = bg.md.State.from_atoms(crystal, temperature=80.0, generator=torch.Generator().manual_seed(0))
    assert state.positions.dtype == torch.get_default_dtype() and state.cell.shape == (1, 3, 3)
    assert bool(state.pbc.all()) and 40.0 < float(state.temperature()) < 120.0
    end = bg.md.Simulator(bg.models.LennardJones(**ARGON, cutoff=8.0), bg.md.VelocityVerlet(2.0)).run(state, 3)
    atoms = end.to_atoms(0)
    assert atoms.info["step"] == 3 and atoms.pbc.all()
    np.testing.assert_allclose(atoms.cell.array, crystal.cell.array, rtol=1e-6)
    assert atoms.get_potential_energy() == pytest.approx(float(end.energy[0]), rel=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), end.forces.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="replica"):
        end.to_atoms(1)
    with pytest.raises(TypeError, match="ase.Atoms"):
        bg.md.State.from_atoms([])


def test_float32_run_and_models_without_pairs():
    state = cluster_state(2, 30.0, dtype=torch.float32)
    end = bg.md.Simulator(bg.models.LennardJones(**ARGON, cutoff=10.2), bg.md.VelocityVerlet(5.0)).run(state, 50)
    assert end.positions.dtype == torch.float32 and not bool(end.frozen.any())

    class NoPairs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lj = bg.models.LennardJones(**ARGON, cutoff=10.2)

        def forward(self, positions, species, *, batch=None, cell=None, pbc=False):
            return self.lj(positions, species, batch=batch, cell=cell, pbc=pbc)

    s64 = cluster_state(2, 30.0)
    a = bg.md.Simulator(NoPairs(), bg.md.VelocityVerlet(5.0)).run(s64, 30)
    b = bg.md.Simulator(bg.models.LennardJones(**ARGON, cutoff=10.2), bg.md.VelocityVerlet(5.0)).run(s64, 30)
    torch.testing.assert_close(a.positions, b.positions, rtol=1e-12, atol=1e-12)


def test_atoms_helper_roundtrip():
    # states built from ASE atoms objects keep species and cell
    at = Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]], cell=[10, 10, 10], pbc=True)
    s = bg.md.State(torch.tensor(at.positions), torch.zeros(2, 3, dtype=torch.float64),
                    torch.tensor(at.get_masses()), torch.tensor(at.numbers), cell=at.cell.array, pbc=True)
    assert s.cell.shape == (1, 3, 3) and s.pbc.shape == (1, 3) and s.species.tolist() == [18, 18]
    assert s.volume().item() == pytest.approx(1000.0)


def test_verlet_pairs_cover_every_pair_within_the_cutoff_and_match_neighbor_list_runs():
    """The default candidate list holds every pair within the cutoff at every step (a superset of
    bg.neighbor_list), searches rarely, searches again when batch or cell change, and gives the same
    trajectory as a run on bg.NeighborList."""
    state = argon_state(2, 80.0)
    cutoff = 5.2
    vp = bg.md.VerletPairs(cutoff, skin=0.6)
    sim = bg.md.Simulator(bg.models.LennardJones(**ARGON, cutoff=cutoff), bg.md.VelocityVerlet(5.0),
                          neighbor_list=vp)
    assert bg.md.Simulator(bg.models.LennardJones(**ARGON, cutoff=cutoff), bg.md.VelocityVerlet(5.0)
                           ).neighbor_list.cutoff == cutoff  # the default is such a list at the model's cutoff

    def check(s, step):
        cand = vp(s.positions, batch=s.batch, cell=s.cell, pbc=s.pbc)
        exact = bg.neighbor_list(s.positions, cutoff, batch=s.batch, cell=s.cell, pbc=True)
        key = lambda i, j, sh: set(zip(i.tolist(), j.tolist(), map(tuple, sh.tolist()), strict=True))  # noqa: E731
        assert key(exact.i, exact.j, exact.shifts) <= key(cand.i, cand.j, cand.shifts)
        assert len(cand) > len(exact)  # the skin adds candidates: the superset check is not trivial

    end = sim.run(state, 200, every=10, callback=check)
    assert 1 < vp.n_builds < 100  # re-used between searches, searched again as atoms moved
    ref = bg.md.Simulator(bg.models.LennardJones(**ARGON, cutoff=cutoff), bg.md.VelocityVerlet(5.0),
                          neighbor_list=bg.NeighborList(cutoff, skin=0.6)).run(state, 200)
    torch.testing.assert_close(end.positions, ref.positions, rtol=1e-10, atol=1e-10)
    assert (end.positions - state.positions).abs().max() > 0.5
    # a changed cell or batch forces a new search even without motion (the final wrap into the box moved
    # some atoms by a box vector: the first call may search)
    vp(end.positions, batch=end.batch, cell=end.cell, pbc=True)
    n = vp.n_builds
    vp(end.positions, batch=end.batch, cell=end.cell, pbc=True)
    assert vp.n_builds == n
    vp(end.positions, batch=end.batch, cell=end.cell * 1.01, pbc=True)
    assert vp.n_builds == n + 1
    vp(end.positions, batch=torch.zeros_like(end.batch), cell=end.cell[:1] * 1.01, pbc=True)
    assert vp.n_builds == n + 2
    with pytest.raises(ValueError, match="skin"):
        bg.md.VerletPairs(3.0, skin=-1.0)
    # one system without batch: every pair within the cutoff is among the candidates
    one = bg.md.VerletPairs(cutoff, skin=0.6)(state.positions[:32], cell=state.cell[:1], pbc=True)
    exact = bg.neighbor_list(state.positions[:32], cutoff, cell=state.cell[:1], pbc=True)
    as_set = lambda p: set(zip(p.i.tolist(), p.j.tolist(), map(tuple, p.shifts.tolist()), strict=True))  # noqa: E731
    assert as_set(exact) < as_set(one)


def _three_replica_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([2, 3, 1])
    batch = torch.repeat_interleave(torch.arange(3), sizes)
    n = int(sizes.sum())
    pos = torch.randn(n, 3, generator=g, dtype=torch.float64) * 2
    vel = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.01
    cell = torch.eye(3, dtype=torch.float64).expand(3, 3, 3) * torch.tensor([8.0, 9.0, 10.0]).view(3, 1, 1)
    st = bg.md.State(pos, vel, torch.full((n,), 12.0, dtype=torch.float64), torch.ones(n, dtype=torch.int64),
                     batch=batch, cell=cell.clone(), pbc=True)
    st.energy = torch.randn(3, generator=g, dtype=torch.float64)
    st.forces = torch.randn(n, 3, generator=g, dtype=torch.float64)
    st.set_aux("chain_atoms", torch.randn(n, 2, generator=g, dtype=torch.float64), "atom")
    st.set_aux("chain_replicas", torch.randn(3, 2, generator=g, dtype=torch.float64), "replica")
    st.set_aux("table", torch.arange(3.0), "global")  # leading dimension R, but global: never indexed
    return st


def test_state_fields_declare_their_scope_and_select_keeps_rows_of_each_scope():
    st = _three_replica_state()
    assert st.scope("positions") == "atom" and st.scope("energy") == "replica" and st.scope("step") == "global"
    assert st.scope("chain_atoms") == "atom" and st.scope("table") == "global"
    sub = st.select(torch.tensor([True, False, True]))
    rows = torch.tensor([0, 1, 5])
    assert sub.n_replicas == 2 and sub.batch.tolist() == [0, 0, 1]
    for name in ("positions", "velocities", "masses", "species", "image", "forces"):
        assert torch.equal(getattr(sub, name), getattr(st, name)[rows])
    for name in ("energy", "cell", "pbc", "frozen", "frozen_step"):
        assert torch.equal(getattr(sub, name), getattr(st, name)[[0, 2]])
    assert torch.equal(sub.aux["chain_atoms"], st.aux["chain_atoms"][rows])
    assert torch.equal(sub.aux["chain_replicas"], st.aux["chain_replicas"][[0, 2]])
    assert torch.equal(sub.aux["table"], st.aux["table"])
    with pytest.raises(ValueError, match=r"keep must be a bool tensor of shape \[R\] = \[3\]"):
        st.select(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="leading dimension 6"):
        st.set_aux("bad", torch.zeros(3, 2), "atom")
    with pytest.raises(ValueError, match="scope must be one of"):
        st.set_aux("bad", torch.zeros(3, 2), "molecule")


def test_state_merge_takes_masked_replicas_from_the_other_state_and_keeps_the_system():
    a, b = _three_replica_state(0), _three_replica_state(1)
    b.set_aux("only_in_b", torch.ones(3, 1, dtype=torch.float64), "replica")
    mask = torch.tensor([False, True, False])
    m = a.merge(b, mask)
    atoms = mask[a.batch]
    for name in ("positions", "velocities", "forces"):
        want = torch.where(atoms[:, None], getattr(b, name), getattr(a, name))
        assert torch.equal(getattr(m, name), want)
    assert torch.equal(m.energy, torch.where(mask, b.energy, a.energy))
    assert torch.equal(m.aux["chain_atoms"], torch.where(atoms[:, None], b.aux["chain_atoms"], a.aux["chain_atoms"]))
    assert torch.equal(m.aux["chain_replicas"][1], b.aux["chain_replicas"][1])
    assert torch.equal(m.aux["table"], a.aux["table"])  # global entries are not merged
    assert m.aux["only_in_b"][:, 0].tolist() == [0.0, 1.0, 0.0]  # a's replicas start from zero
    assert m.masses is a.masses and m.batch is a.batch  # the system itself is not copied
    assert torch.equal(a.positions, _three_replica_state(0).positions)  # inputs untouched
    with pytest.raises(ValueError, match="same system"):
        a.merge(a.select(torch.tensor([True, True, False])), mask)


def test_state_round_trips_through_a_dict_and_rejects_a_wrong_shape():
    st = _three_replica_state()
    st.step = 17
    back = bg.md.State.from_dict(st.to_dict())
    for name in bg.md.state.FIELD_SCOPES:
        v, w = getattr(st, name), getattr(back, name)
        assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w
    assert back.aux_scopes == {"chain_atoms": "atom", "chain_replicas": "replica", "table": "global"}
    d = st.to_dict()
    d["energy"] = d["energy"][:2]
    with pytest.raises(ValueError, match="'energy' .per replica. must have leading dimension 3"):
        bg.md.State.from_dict(d)
    with pytest.raises(ValueError, match="missing fields \\['positions'\\]"):
        bg.md.State.from_dict({k: v for k, v in st.to_dict().items() if k != "positions"})


def test_counter_based_noise_is_normal_and_uncorrelated_across_its_coordinates():
    from scipy import stats

    from boltzgrad.md.random import counter_normal

    idx = torch.arange(200_000)
    z = counter_normal(0, 1, torch.zeros_like(idx), 5, idx)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1) < 0.01
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    for other in (counter_normal(0, 1, torch.zeros_like(idx), 6, idx),  # next step
                  counter_normal(0, 1, torch.ones_like(idx), 5, idx),  # another replica
                  counter_normal(1, 1, torch.zeros_like(idx), 5, idx),  # another seed
                  counter_normal(0, 2, torch.zeros_like(idx), 5, idx),  # another stream
                  counter_normal(0, 1, torch.zeros_like(idx), 5 + 2**32, idx)):  # the step's high word
        assert abs(float(torch.corrcoef(torch.stack([z, other]))[0, 1])) < 0.015  # 6.7 sigma for 2e5 pairs
    assert torch.equal(z, counter_normal(0, 1, torch.zeros_like(idx), 5, idx))  # a function of its coordinates


def test_a_replica_with_counter_noise_follows_the_same_trajectory_alone_or_in_a_batch():
    """Langevin noise and initial velocities keyed by replica id: replica 1 of a batch of three, run alone
    (with its id), takes the same steps."""
    cluster = Icosahedron("Ar", 2)
    lj = bg.models.LennardJones(sigma=3.4, epsilon=0.0104, cutoff=8.5).double()
    n = len(cluster)
    pos0 = torch.tensor(cluster.positions, dtype=torch.float64)
    pos = torch.cat([pos0 + 0.01 * k for k in range(3)])
    batch = torch.arange(3).repeat_interleave(n)
    masses = torch.full((3 * n,), 39.95, dtype=torch.float64)
    z = torch.full((3 * n,), 18, dtype=torch.int64)
    kT = units.kT(40.0)
    v = bg.md.maxwell_boltzmann(masses, kT, batch=batch, seed=7)
    full = bg.md.State(pos, v, masses, z, batch=batch)
    sim = bg.md.Simulator(lj, bg.md.Langevin(2.0, kT, 0.01, seed=3))
    end = sim.run(full, 25)

    alone = full.select(torch.tensor([False, True, False]))
    assert alone.replica_id.tolist() == [1]
    v1 = bg.md.maxwell_boltzmann(masses[:n], kT, seed=7, replica_id=torch.tensor([1]))
    assert torch.equal(v1, v[n:2 * n])  # the initial velocities, drawn alone, are the batch's
    end1 = bg.md.Simulator(lj, bg.md.Langevin(2.0, kT, 0.01, seed=3)).run(alone, 25)
    assert torch.allclose(end1.positions, end.positions[n:2 * n], rtol=0, atol=1e-12)
    assert not torch.allclose(end.positions[:n] - pos[:n], end.positions[n:2 * n] - pos[n:2 * n])
    with pytest.raises(ValueError, match="not both"):
        bg.md.Langevin(1.0, kT, 0.01, seed=1, generator=torch.Generator())
