import math

import pytest
import torch

from vididi.ssl.losses import byol, byol_tau, nt_xent, vicreg

# ---------------------------------------------------------------- references written with loops


def rows(z: torch.Tensor) -> list[list[float]]:
    return z.detach().double().tolist()


def cosine(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def ref_nt_xent(z1, z2, temperature):
    z = rows(z1) + rows(z2)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        positive = (i + n) % n2
        denominator = sum(math.exp(cosine(z[i], z[j]) / temperature) for j in range(n2) if j != i)
        total += -(cosine(z[i], z[positive]) / temperature - math.log(denominator))
    return total / n2


def ref_vicreg(z1, z2, sim_w, var_w, cov_w, eps):
    a, b = rows(z1), rows(z2)
    n, d = len(a), len(a[0])
    invariance = sum((a[i][k] - b[i][k]) ** 2 for i in range(n) for k in range(d)) / (n * d)

    def column_stats(z):
        means = [sum(z[i][k] for i in range(n)) / n for k in range(d)]
        cov = [[sum((z[i][p] - means[p]) * (z[i][q] - means[q]) for i in range(n)) / (n - 1) for q in range(d)] for p in range(d)]
        return cov

    def var_term(z):
        cov = column_stats(z)
        return sum(max(0.0, 1.0 - math.sqrt(cov[k][k] + eps)) for k in range(d)) / d

    def cov_term(z):
        cov = column_stats(z)
        return sum(cov[p][q] ** 2 for p in range(d) for q in range(d) if p != q) / d

    variance = (var_term(a) + var_term(b)) / 2
    covariance = cov_term(a) + cov_term(b)
    return sim_w * invariance + var_w * variance + cov_w * covariance, invariance, variance, covariance


def ref_byol(p, z):
    ps, zs = rows(p), rows(z)
    return sum(2 - 2 * cosine(u, v) for u, v in zip(ps, zs)) / len(ps)


# ---------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_loop_reference(temperature):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert nt_xent(z1, z2, temperature).item() == pytest.approx(ref_nt_xent(z1, z2, temperature), rel=1e-5)


def test_nt_xent_identical_orthogonal_views_reach_the_analytic_value():
    # N mutually orthogonal instances, both views identical: every row has cos 1 with its positive and
    # cos 0 with the 2N - 2 others, so loss = log(1 + (2N - 2) exp(-1/t)).
    n, t = 6, 0.1
    z = torch.eye(8)[:n] * torch.arange(1, n + 1).float()[:, None]  # lengths do not matter
    analytic = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    assert nt_xent(z.double(), z.double(), t).item() == pytest.approx(analytic, rel=1e-9)
    assert nt_xent(z, z.clone(), t).item() == pytest.approx(analytic, abs=1e-6)  # float32 log-softmax
    g = torch.Generator().manual_seed(1)
    random_views = nt_xent(torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g), t).item()
    assert random_views > analytic + 1.0


def test_nt_xent_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.2), (z1, z2))


# ---------------------------------------------------------------- VICReg


def test_vicreg_matches_loop_reference():
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(6, 5, generator=g) * 0.7
    z2 = z1 + 0.3 * torch.randn(6, 5, generator=g)
    loss, terms = vicreg(z1, z2, sim_weight=3.0, var_weight=5.0, cov_weight=2.0, eps=1e-4)
    ref_loss, inv, var, cov = ref_vicreg(z1, z2, 3.0, 5.0, 2.0, 1e-4)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert terms["invariance"].item() == pytest.approx(inv, rel=1e-5)
    assert terms["variance"].item() == pytest.approx(var, rel=1e-5)
    assert terms["covariance"].item() == pytest.approx(cov, rel=1e-5)
    assert var > 0 and cov > 0  # the reference case exercises every term
    default_loss, _ = vicreg(z1, z2)
    assert default_loss.item() == pytest.approx(ref_vicreg(z1, z2, 25, 25, 1, 1e-4)[0], rel=1e-5)


def test_vicreg_variance_is_zero_when_every_dim_has_std_at_least_one():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(10, 4, generator=g)
    z = (z - z.mean(0)) / z.std(0) * torch.tensor([1.0, 1.5, 2.0, 10.0])  # unbiased std exactly >= 1
    _, terms = vicreg(z, z.flip(0))
    assert terms["variance"].item() == 0.0
    # ... and positive when one dimension shrinks
    _, terms = vicreg(z * torch.tensor([1.0, 1.0, 1.0, 0.01]), z)
    assert terms["variance"].item() == pytest.approx((1 - math.sqrt(0.01**2 * 100 + 1e-4)) / 4 / 2, rel=1e-4)


def test_vicreg_covariance_is_zero_for_decorrelated_dims():
    # columns 1..3 of a 4x4 Hadamard matrix: centred and mutually orthogonal -> zero covariance
    h = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])
    z = h[:, 1:] * torch.tensor([0.5, 2.0, 3.0])
    loss, terms = vicreg(z, z)
    assert terms["covariance"].item() == 0.0
    assert terms["invariance"].item() == 0.0
    # two correlated columns: 2 * c^2 / D per branch, c = cov of the duplicated column
    z_corr = torch.cat([z, z[:, :1]], dim=1)
    c = (0.5**2) * 4 / 3
    _, terms = vicreg(z_corr, z_corr)
    assert terms["covariance"].item() == pytest.approx(2 * (2 * c**2 / 4), rel=1e-6)


# ---------------------------------------------------------------- BYOL


def test_byol_matches_loop_reference_and_is_zero_for_parallel_vectors():
    g = torch.Generator().manual_seed(6)
    p, z = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert byol(p, z).item() == pytest.approx(ref_byol(p, z), rel=1e-5)
    assert byol(3.7 * z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert byol(-z, z).item() == pytest.approx(4.0, rel=1e-6)


def test_byol_gradient_does_not_reach_the_target():
    g = torch.Generator().manual_seed(7)
    p = torch.randn(4, 6, generator=g, requires_grad=True)
    z = torch.randn(4, 6, generator=g, requires_grad=True)
    byol(p, z).backward()
    assert z.grad is None
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_byol_tau_schedule_hand_values():
    assert byol_tau(0, 100) == pytest.approx(0.99)
    assert byol_tau(50, 100) == pytest.approx(0.995)
    assert byol_tau(100, 100) == pytest.approx(1.0)
    assert byol_tau(250, 100) == pytest.approx(1.0)
    # cos(pi/4) = sqrt(2)/2: tau = 1 - 0.01 * (1 + sqrt(2)/2) / 2
    assert byol_tau(25, 100) == pytest.approx(1 - 0.01 * (1 + math.sqrt(2) / 2) / 2)
    assert byol_tau(10, 10, base=0.9, final=0.95) == pytest.approx(0.95)


# ---------------------------------------------------------------- precision and checks


def test_losses_run_in_float32_for_bf16_inputs_and_under_autocast():
    g = torch.Generator().manual_seed(8)
    z1 = torch.randn(8, 16, generator=g).bfloat16()
    z2 = torch.randn(8, 16, generator=g).bfloat16()
    reference = nt_xent(z1.float(), z2.float())
    out = nt_xent(z1, z2)
    assert out.dtype == torch.float32
    assert out.item() == reference.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert nt_xent(z1.float(), z2.float()).item() == pytest.approx(reference.item(), rel=1e-6)
        loss, _ = vicreg(z1.float(), z2.float())
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(vicreg(z1.float(), z2.float())[0].item(), rel=1e-6)
    assert byol(z1, z2).dtype == torch.float32


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 5)), "same shape"),
        (lambda: nt_xent(torch.randn(4), torch.randn(4)), r"\(N, D\)"),
        (lambda: nt_xent(torch.randn(1, 3), torch.randn(1, 3)), "at least 2"),
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0), "temperature"),
        (lambda: vicreg(torch.randn(1, 3), torch.randn(1, 3)), "at least 2"),
        (lambda: byol(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3)), "floating point"),
        (lambda: byol_tau(1, 0), "total_steps"),
    ],
)
def test_bad_inputs_raise_readable_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
