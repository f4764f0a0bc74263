"""Boltzmann estimators against closed forms, quadrature and the explicit Jacobian.

Statistical tolerances are standard errors estimated from the samples themselves (delta method),
times a fixed factor of 4-5; the seeds are fixed.
"""

import math

import numpy as np
import pytest
import torch

import boltzgrad as bg
from boltzgrad.estimators import (
    Neighborhoods,
    local_energies,
    molecule_neighborhoods,
    unflatten_like,
    whole_system_neighborhoods,
)

Z = 4.0  # tolerance in standard errors


def _grad(loss, params):
    gs = torch.autograd.grad(loss, params, retain_graph=True)
    return torch.cat([g.reshape(-1) for g in gs])


# --------------------------------------------------------------------------- harmonic oscillator


def harmonic_samples(m, dim, kT, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, dim, generator=g, dtype=torch.float64) * math.sqrt(kT / k)


def estimator_se(obs, dudtheta, beta, diff, jac):
    """Conservative standard error of 2 (Obar - t) J_hat per parameter: both error sources added.

    obs [M, K], dudtheta [M, P], diff [K] = Obar - t, jac [K, P] = the estimate of J.
    """
    m = obs.shape[0]
    oc = obs - obs.mean(0)
    gc = dudtheta - dudtheta.mean(0)
    sd_o = obs.std(0)  # [K]
    sd_prod = (oc[:, :, None] * gc[:, None, :]).std(0)  # [K, P]
    se = (2 * jac.abs() * sd_o[:, None]).sum(0) / math.sqrt(m)
    se = se + (2 * diff.abs()[:, None] * beta * sd_prod).sum(0) / math.sqrt(m)
    return se


@pytest.mark.parametrize("dim", [1, 3])
def test_harmonic_oscillator_gradient_matches_closed_form(dim):
    kT, k0, target, m = 0.7, 1.3, 0.2 * dim, 100000
    x = harmonic_samples(m, dim, kT, k0, seed=dim)
    k = torch.tensor(k0, dtype=torch.float64, requires_grad=True)
    energies = 0.5 * k * (x * x).sum(1)
    obs = (x * x).sum(1, keepdim=True)
    loss = bg.boltzmann_loss(energies, obs, torch.tensor([target], dtype=torch.float64), kT)
    # value is ||Obar - target||^2 exactly
    assert loss.item() == pytest.approx((obs.mean() - target).item() ** 2, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, k)
    mean_exact = dim * kT / k0
    jac_exact = -dim * kT / k0**2
    grad_exact = 2 * (mean_exact - target) * jac_exact
    beta = 1 / kT
    jac_hat = -beta * torch.cov(torch.stack([obs[:, 0], 0.5 * obs[:, 0]]))[0, 1]
    se = estimator_se(obs, 0.5 * obs, beta, obs.mean(0) - target, jac_hat.reshape(1, 1)).item()
    assert abs(grad.item() - grad_exact) < Z * se, (grad.item(), grad_exact, se)
    # the statistical error is small compared with the gradient: a wrong factor or sign would fail
    assert Z * se < 0.25 * abs(grad_exact)


def test_double_well_gradient_matches_quadrature():
    """U = a (x^2 - 1)^2 + b x, O = [x, x^2]; exact <O>(a, b) and its derivatives by quadrature."""
    kT, a0, b0, m = 0.5, 1.0, 0.3, 100000
    target = np.array([0.0, 0.5])
    grid = np.linspace(-3.5, 3.5, 400001)

    def density(a, b):
        u = a * (grid**2 - 1) ** 2 + b * grid
        p = np.exp(-(u - u.min()) / kT)
        return p / np.trapezoid(p, grid)

    def mean_obs(a, b):
        p = density(a, b)
        return np.array([np.trapezoid(p * grid, grid), np.trapezoid(p * grid**2, grid)])

    # exact sampling by inverting the cumulative distribution on the fine grid
    p = density(a0, b0)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    u = np.random.default_rng(7).random(m)
    x = torch.tensor(np.interp(u, cdf, grid), dtype=torch.float64)

    h = 1e-4
    jac_exact = np.stack([(mean_obs(a0 + h, b0) - mean_obs(a0 - h, b0)) / (2 * h),
                          (mean_obs(a0, b0 + h) - mean_obs(a0, b0 - h)) / (2 * h)], axis=1)  # [K=2, P=2]
    grad_exact = 2 * (mean_obs(a0, b0) - target) @ jac_exact

    theta = torch.tensor([a0, b0], dtype=torch.float64, requires_grad=True)
    energies = theta[0] * (x * x - 1) ** 2 + theta[1] * x
    obs = torch.stack([x, x * x], dim=1)
    loss = bg.boltzmann_loss(energies, obs, torch.tensor(target), kT)
    (grad,) = torch.autograd.grad(loss, theta)

    dudtheta = torch.stack([(x * x - 1) ** 2, x], dim=1)
    beta = 1 / kT
    jac_hat = -beta * bg.ops.covariance(obs, dudtheta)
    se = estimator_se(obs, dudtheta, beta, obs.mean(0) - torch.tensor(target), jac_hat).numpy()
    err = np.abs(grad.numpy() - grad_exact)
    assert np.all(err < Z * se), (grad.numpy(), grad_exact, se)
    assert np.all(Z * se < 0.25 * np.abs(grad_exact))


def test_unbiased_and_split_removes_the_product_bias():
    """1-D oscillator, O = x^2, dU/dk = x^2 / 2: E[(Obar - mu) J_hat] = -beta/2 * mu_3(x^2)/M exactly.

    mu_3(x^2) = 8 s^6 with s^2 = kT/k, so the same-sample estimator has mean
    2 (mu - t) J - 8 beta s^6 / M, while split halves give 2 (mu - t) J.
    """
    kT, k0, target, m, n_sets = 1.0, 1.0, 0.5, 8, 4000
    s2 = kT / k0
    exact = 2 * (s2 - target) * (-kT / k0**2)
    bias = -8 * (1 / kT) * s2**3 / m
    x = harmonic_samples(m * n_sets, 1, kT, k0, seed=11).reshape(n_sets, m)
    k = torch.tensor(k0, dtype=torch.float64, requires_grad=True)
    same, split = [], []
    for xs in x:
        obs = (xs * xs)[:, None]
        same.append(torch.autograd.grad(bg.boltzmann_loss(0.5 * k * xs * xs, obs, [target], kT), k)[0].item())
        split.append(torch.autograd.grad(bg.boltzmann_loss(0.5 * k * xs * xs, obs, [target], kT, split=True),
                                         k)[0].item())
    same, split = np.array(same), np.array(split)
    se_same = same.std(ddof=1) / math.sqrt(n_sets)
    se_split = split.std(ddof=1) / math.sqrt(n_sets)
    assert abs(same.mean() - (exact + bias)) < Z * se_same, (same.mean(), exact + bias, se_same)
    assert abs(split.mean() - exact) < Z * se_split, (split.mean(), exact, se_split)
    # the bias is resolved: the same-sample mean is far from the exact gradient
    assert abs(same.mean() - exact) > 2 * Z * se_same


def test_split_mask_and_component_weights_match_hand_formula():
    g = torch.Generator().manual_seed(3)
    m, k_obs, p = 30, 4, 3
    feats = torch.randn(m, p, generator=g, dtype=torch.float64)
    obs = torch.randn(m, k_obs, generator=g, dtype=torch.float64) + feats[:, :1]
    target = torch.randn(k_obs, generator=g, dtype=torch.float64)
    lam = torch.rand(k_obs, generator=g, dtype=torch.float64)
    mask = torch.rand(m, generator=g) < 0.5
    theta = torch.randn(p, dtype=torch.float64, requires_grad=True)
    kT = 0.3
    loss = bg.boltzmann_loss(feats @ theta, obs, target, kT, split=mask, component_weights=lam)
    grad = _grad(loss, [theta])
    assert loss.item() == pytest.approx((lam * (obs.mean(0) - target) ** 2).sum().item(), rel=1e-12)

    def half(a, b):  # 2 (lam (Obar_b - t))^T J_a, J_a = -beta Cov_a(O, dU/dtheta = feats)
        jac = -bg.ops.covariance(obs[a], feats[a]) / kT
        return 2 * (lam * (obs[b].mean(0) - target)) @ jac

    expected = 0.5 * (half(mask, ~mask) + half(~mask, mask))
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- neural potential: weighted vs explicit


class TinyPairMLP(torch.nn.Module):
    """Sum over atom pairs of an MLP of the distance; per-atom energies split each pair half-half."""

    def __init__(self, n_atoms, hidden=16):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        i, j = torch.triu_indices(n_atoms, n_atoms, 1)
        self.register_buffer("i", i)
        self.register_buffer("j", j)

    def pair_energies(self, x):  # x [..., N, 3]
        d = (x[..., self.i, :] - x[..., self.j, :]).pow(2).sum(-1).sqrt()
        return self.net(d[..., None]).squeeze(-1)

    def forward(self, x):  # [..., N, 3] -> [...]
        return self.pair_energies(x).sum(-1)

    def atom_energies(self, x):  # [..., N, 3] -> [..., N]
        e = 0.5 * self.pair_energies(x)
        out = torch.zeros(*x.shape[:-1], dtype=x.dtype)
        return out.index_add(-1, self.i, e).index_add(-1, self.j, e)


def make_neural_case(m=23, n=5, seed=0):
    torch.manual_seed(seed)
    model = TinyPairMLP(n).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(m, n, 3, generator=g, dtype=torch.float64) * 1.2
    d = (x[:, model.i] - x[:, model.j]).norm(dim=-1)
    obs = torch.stack([d.mean(1), (d * d).mean(1), d.min(1).values, (d < 1.5).double().mean(1),
                       torch.exp(-d).sum(1)], dim=1)
    target = obs.mean(0) + torch.randn(obs.shape[1], generator=g, dtype=torch.float64) * obs.std(0)
    return model, x, obs, target


def energy_of_one(model):
    return lambda p, x: torch.func.functional_call(model, p, (x,))


@pytest.mark.parametrize("with_weights", [False, True])
def test_weighted_backward_equals_explicit_jacobian(with_weights):
    model, x, obs, target = make_neural_case()
    kT = 0.4
    params = list(model.parameters())
    w = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64) \
        if with_weights else None
    lam = torch.tensor([1.0, 0.5, 2.0, 3.0, 0.1], dtype=torch.float64)
    grad_weighted = _grad(bg.boltzmann_loss(model(x), obs, target, kT, weights=w, component_weights=lam), params)

    est = bg.BoltzmannEstimator(kT)
    jac = est.jacobian(model, energy_of_one(model), obs, samples=x, batch_size=7, weights=w)
    assert jac.shape == (obs.shape[1], sum(p.numel() for p in params))
    grad_explicit = est.gradient_from_jacobian(jac, obs, target, weights=w, component_weights=lam)
    torch.testing.assert_close(grad_weighted, grad_explicit, rtol=1e-8, atol=1e-8 * grad_explicit.abs().max().item())
    assert grad_explicit.abs().max() > 1e-6


def test_streamed_jacobian_equals_one_shot_covariance():
    model, x, obs, _ = make_neural_case(m=17)
    kT = 0.25
    params = list(model.parameters())
    per_sample = torch.stack([_grad(model(xm), params) for xm in x])  # [M, P] by plain autograd, one at a time
    one_shot = -bg.ops.covariance(obs, per_sample) / kT
    est = bg.BoltzmannEstimator(kT)
    streamed = est.jacobian(model, energy_of_one(model), obs, samples=x, batch_size=4)
    torch.testing.assert_close(streamed, one_shot, rtol=1e-10, atol=1e-12)
    # per-sample gradients passed in directly, as a tensor and as an iterable of minibatches
    torch.testing.assert_close(est.jacobian(None, per_sample, obs, batch_size=5), one_shot, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(est.jacobian(None, iter(per_sample.split(6)), obs), one_shot, rtol=1e-10, atol=1e-12)
    # and the named pieces line up with the parameters
    pieces = unflatten_like(streamed[0], model)
    assert list(pieces) == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("split", [False, True])
def test_chunked_backward_equals_one_shot(split):
    model, x, obs, target = make_neural_case(m=26)
    kT = 0.5
    params = list(model.parameters())
    loss = bg.boltzmann_loss(model(x), obs, target, kT, split=split)
    one_shot = _grad(loss, params)
    model.zero_grad()
    value = bg.BoltzmannEstimator(kT).backward(model, x, obs, target, chunk_size=4, split=split)
    chunked = torch.cat([p.grad.reshape(-1) for p in params])
    assert value.item() == pytest.approx(loss.item(), rel=1e-14)
    torch.testing.assert_close(chunked, one_shot, rtol=1e-12, atol=1e-14)


def test_composes_with_other_losses_and_optimizers():
    model, x, obs, target = make_neural_case(m=12)
    params = list(model.parameters())
    obs_loss = bg.boltzmann_loss(model(x), obs, target, 0.3)
    other = (model(x[:3]) ** 2).mean()
    g_sum = _grad(obs_loss + 10.0 * other, params)
    g_parts = _grad(bg.boltzmann_loss(model(x), obs, target, 0.3), params) + 10.0 * _grad((model(x[:3]) ** 2).mean(),
                                                                                       params)
    torch.testing.assert_close(g_sum, g_parts, rtol=1e-12, atol=1e-14)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    (bg.boltzmann_loss(model(x), obs, target, 0.3) + 10.0 * (model(x[:3]) ** 2).mean()).backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_multiple_observable_blocks_concatenate():
    model, x, obs, target = make_neural_case(m=15)
    params = list(model.parameters())
    g_cat = _grad(bg.boltzmann_loss(model(x), obs, target, 0.3), params)
    g_blocks = _grad(bg.boltzmann_loss(model(x), [obs[:, :2], obs[:, 2:]], [target[:2], target[2:]], 0.3), params)
    torch.testing.assert_close(g_cat, g_blocks, rtol=1e-14, atol=1e-16)


# --------------------------------------------------------------------------- localized estimator


def test_local_equals_global_for_whole_system_neighborhoods():
    model, x, obs, target = make_neural_case(m=11, n=6)
    kT = 0.6
    params = list(model.parameters())
    g_global = _grad(bg.boltzmann_loss(model(x), obs, target, kT), params)
    m, n = x.shape[:2]
    batch = torch.arange(m).repeat_interleave(n)
    atom_e = model.atom_energies(x).reshape(-1)
    hoods = whole_system_neighborhoods(m * n, batch=batch)
    torch.testing.assert_close(local_energies(atom_e, hoods), model(x), rtol=1e-12, atol=1e-12)
    g_local = _grad(bg.local_boltzmann_loss(atom_e, hoods, obs, target, kT), params)
    torch.testing.assert_close(g_local, g_global, rtol=1e-12, atol=1e-14)


def test_local_molecules_match_explicit_local_covariance():
    model, x, _, _ = make_neural_case(m=6, n=6)
    kT = 0.35
    params = list(model.parameters())
    m, n = x.shape[:2]
    batch = torch.arange(m).repeat_interleave(n)
    molecule = torch.arange(n).repeat(m) // 3  # two 3-atom molecules per frame
    hoods = molecule_neighborhoods(molecule, batch=batch)
    assert hoods.n == 2 * m
    flat = x.reshape(-1, 3)
    # local observable: mean intramolecular distance of each molecule
    local_obs = torch.zeros(hoods.n, dtype=torch.float64)
    for s in range(hoods.n):
        a = flat[hoods.atom[hoods.hood == s]]
        local_obs[s] = torch.pdist(a).mean()
    target = torch.tensor([local_obs.mean().item() + 0.3], dtype=torch.float64)
    atom_e = model.atom_energies(x).reshape(-1)
    g_local = _grad(bg.local_boltzmann_loss(atom_e, hoods, local_obs, target, kT), params)
    u_n = local_energies(atom_e, hoods)
    per_hood = torch.stack([_grad(u_n[s], params) for s in range(hoods.n)])
    jac = -bg.ops.covariance(local_obs[:, None], per_hood) / kT
    expected = 2 * (local_obs.mean() - target) @ jac
    torch.testing.assert_close(g_local, expected, rtol=1e-10, atol=1e-12)
    # the padded-index and (atom, hood) forms are the same neighbourhoods
    padded = torch.stack([hoods.atom[hoods.hood == s] for s in range(hoods.n)])
    g_padded = _grad(bg.local_boltzmann_loss(model.atom_energies(x).reshape(-1), padded, local_obs, target, kT), params)
    torch.testing.assert_close(g_padded, g_local, rtol=1e-12, atol=1e-14)


def test_radius_neighborhoods_match_brute_force():
    pytest.importorskip("boltzgrad.neighbors")
    from boltzgrad.estimators import radius_neighborhoods

    g = torch.Generator().manual_seed(2)
    pos = torch.rand(30, 3, generator=g, dtype=torch.float64) * 6.0
    cell = torch.eye(3, dtype=torch.float64)[None] * 6.0
    hoods = radius_neighborhoods(pos, 2.0, cell=cell, pbc=True)
    d = pos[:, None] - pos[None]
    d = d - 6.0 * torch.round(d / 6.0)
    close = d.norm(dim=-1) < 2.0  # includes the centre itself (distance 0)
    got = torch.zeros(30, 30, dtype=torch.bool)
    got[hoods.hood, hoods.atom] = True
    assert torch.equal(got, close)
    assert hoods.atom.shape[0] == int(close.sum())  # no duplicates


# --------------------------------------------------------------------------- reweighting


def test_reweight_reproduces_other_temperature_and_ess():
    kT_from, kT_to, k0, m, dim = 1.0, 0.8, 2.0, 200000, 1
    x = harmonic_samples(m, dim, kT_from, k0, seed=21)
    energies = 0.5 * k0 * (x * x).sum(1)
    w, ess = bg.reweight(energies, kT_from, kT_to)
    assert w.shape == (m,) and w.sum().item() == pytest.approx(1.0, rel=1e-12)
    obs = (x * x).sum(1)
    mean_w = (w * obs).sum()
    se = torch.sqrt((w * w * (obs - mean_w) ** 2).sum()).item()
    assert abs(mean_w.item() - dim * kT_to / k0) < Z * se
    # ESS: its definition, and its large-M limit for Gaussians, (sqrt(2r - 1) / r)^dim with r = kT_from / kT_to
    raw = torch.exp(-(1 / kT_to - 1 / kT_from) * energies)
    assert ess.item() == pytest.approx((raw.sum() ** 2 / (raw * raw).sum()).item(), rel=1e-10)
    r = kT_from / kT_to
    limit = (math.sqrt(2 * r - 1) / r) ** dim
    a, b = raw.mean().item(), (raw * raw).mean().item()
    cov = torch.cov(torch.stack([raw, raw * raw])).numpy() / m
    grad = np.array([2 * a / b, -(a * a) / (b * b)])
    se_ratio = math.sqrt(grad @ cov @ grad)
    assert abs(ess.item() / m - limit) < Z * se_ratio
    assert ess.item() < 0.99 * m


def test_reweighted_gradient_targets_the_other_temperature():
    kT_from, kT_to, k0, target, m = 1.0, 0.8, 1.5, 0.2, 100000
    x = harmonic_samples(m, 1, kT_from, k0, seed=4)[:, 0]
    k = torch.tensor(k0, dtype=torch.float64, requires_grad=True)
    energies = 0.5 * k * x * x
    w, _ = bg.reweight(energies, kT_from, kT_to)
    obs = (x * x)[:, None]
    (grad,) = torch.autograd.grad(bg.boltzmann_loss(energies, obs, [target], kT_to, weights=w), k)
    exact = 2 * (kT_to / k0 - target) * (-kT_to / k0**2)
    # bootstrap-free error estimate: the same estimator on 20 disjoint subsets
    subs = []
    for xs in x.reshape(20, -1):
        e = 0.5 * k * xs * xs
        ws, _ = bg.reweight(e, kT_from, kT_to)
        subs.append(torch.autograd.grad(bg.boltzmann_loss(e, (xs * xs)[:, None], [target], kT_to, weights=ws),
                                        k)[0].item())
    se = np.std(subs, ddof=1) / math.sqrt(20)
    assert abs(grad.item() - exact) < Z * se, (grad.item(), exact, se)
    assert Z * se < 0.1 * abs(exact)


# --------------------------------------------------------------------------- input checks


def test_bad_input_names_the_argument():
    e = torch.zeros(5, dtype=torch.float64)
    o = torch.zeros(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="energies"):
        bg.boltzmann_loss(e[:, None], o, torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="observables"):
        bg.boltzmann_loss(e, o[:4], torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="target"):
        bg.boltzmann_loss(e, o, torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="kT"):
        bg.boltzmann_loss(e, o, torch.zeros(3), -1.0)
    with pytest.raises(ValueError, match="weights"):
        bg.boltzmann_loss(e, o, torch.zeros(3), 1.0, weights=torch.ones(4))
    with pytest.raises(ValueError, match="split"):
        bg.boltzmann_loss(e[:3], o[:3], torch.zeros(3), 1.0, split=True)
    with pytest.raises(ValueError, match="neighborhoods"):
        bg.local_boltzmann_loss(e, Neighborhoods(torch.tensor([0, 7]), torch.tensor([0, 0]), 1), o[:1],
                                torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="observables"):
        bg.boltzmann_loss(e, torch.full((5, 3), float("nan")), torch.zeros(3), 1.0)
