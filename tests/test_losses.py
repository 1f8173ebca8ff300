"""The split ELBO and its normalisations (spec 3, Appendix A.4) and the non-finite guard."""

from __future__ import annotations

import math

import pytest
import torch

from musplit.losses import (
    NonFiniteGuard,
    gaussian_nll,
    is_finite,
    kl_annealing_beta,
    split_elbo,
)

LOG_2PI = math.log(2 * math.pi)


@pytest.fixture
def toy():
    """B=2, T=2, 2x3 pixels; two latent levels of 3 and 5 elements."""
    g = torch.Generator().manual_seed(0)
    params = torch.randn(2, 4, 2, 3, generator=g, dtype=torch.float64)
    target = torch.randn(2, 2, 2, 3, generator=g, dtype=torch.float64)
    kl = torch.tensor([[3.0, -1.0], [6.0, 10.0]], dtype=torch.float64)
    return params, target, kl, (3, 5)


def hand_nll(params, target):
    """Per-element NLL written out element by element."""
    total, n = 0.0, 0
    b, t, h, w = target.shape
    for i in range(b):
        for k in range(t):
            for y in range(h):
                for x in range(w):
                    mu, ell = params[i, k, y, x].item(), params[i, t + k, y, x].item()
                    v = target[i, k, y, x].item()
                    total += 0.5 * ((v - mu) ** 2 / math.exp(ell) + ell + LOG_2PI)
                    n += 1
    return total, n


def test_gaussian_nll_elementwise(toy):
    params, target, _, _ = toy
    nll = gaussian_nll(params, target)
    assert nll.shape == target.shape
    mu, ell = params[0, 1, 1, 2].item(), params[0, 3, 1, 2].item()
    y = target[0, 1, 1, 2].item()
    assert nll[0, 1, 1, 2].item() == pytest.approx(0.5 * ((y - mu) ** 2 / math.exp(ell) + ell
                                                          + LOG_2PI))


def test_reference_normalisation_by_hand(toy):
    """NLL = mean over B·T·H·W; KL = mean over levels of per-element batch means (A.4)."""
    params, target, kl, elements = toy
    loss, logs = split_elbo(params, target, kl, elements)
    total, n = hand_nll(params, target)
    nll = total / n
    # level 0: (3/3 + 6/3) / 2 = 1.5; level 1: (-1/5 + 10/5) / 2 = 0.9; mean = 1.2
    assert logs["distortion"].item() == pytest.approx(nll)
    assert logs["rate"].item() == pytest.approx(1.2)
    assert loss.item() == pytest.approx(nll + 1.2)
    assert logs["kl_level_0"].item() == pytest.approx(1.5)
    assert logs["kl_level_1"].item() == pytest.approx(0.9)
    assert logs["kl_nats"].item() == pytest.approx((2.0 + 16.0) / 2)


def test_elbo_normalisation_by_hand(toy):
    params, target, kl, elements = toy
    loss, logs = split_elbo(params, target, kl, elements, normalisation="elbo")
    total, n = hand_nll(params, target)
    assert n == 24
    assert loss.item() == pytest.approx((total + 18.0) / n)
    assert logs["rate"].item() == pytest.approx(18.0 / 24)


def test_free_bits_and_beta(toy):
    params, target, kl, elements = toy
    # λ = 0.5 nats per element: per-element means [[1, -0.2], [2, 2]] -> [[1, .5], [2, 2]]
    _, logs = split_elbo(params, target, kl, elements, free_bits=0.5)
    assert logs["rate"].item() == pytest.approx((1 + 0.5 + 2 + 2) / 4)
    # ELBO mode: per-level sums raised to λ·n = [1.5, 2.5] -> [[3, 2.5], [6, 10]]
    _, logs = split_elbo(params, target, kl, elements, free_bits=0.5, normalisation="elbo")
    assert logs["rate"].item() == pytest.approx(21.5 / 24)
    loss, logs = split_elbo(params, target, kl, elements, beta=0.25)
    assert loss.item() == pytest.approx(logs["distortion"].item() + 0.25 * 1.2)


def test_no_kl_is_the_nll_only(toy):
    params, target, _, _ = toy
    loss, logs = split_elbo(params, target, None, None, free_bits=3.0)
    assert logs["rate"].item() == 0.0
    assert loss.item() == pytest.approx(hand_nll(params, target)[0] / 24)
    assert "kl_nats" not in logs


def test_channel_weights(toy):
    params, target, _, _ = toy
    nll = gaussian_nll(params, target)
    _, logs = split_elbo(params, target, channel_weights=[3.0, 1.0])
    expected = (3 * nll[:, 0].mean() + nll[:, 1].mean()) / 4
    assert logs["distortion"].item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="channel weights"):
        split_elbo(params, target, channel_weights=[1.0])


def test_bad_arguments(toy):
    params, target, kl, elements = toy
    with pytest.raises(ValueError, match="normalisation"):
        split_elbo(params, target, kl, elements, normalisation="mean")
    with pytest.raises(ValueError, match="kl_elements"):
        split_elbo(params, target, kl, None)
    with pytest.raises(ValueError, match="do not match"):
        split_elbo(params[:, :3], target)
    with pytest.raises(ValueError, match="free_bits"):
        split_elbo(params, target, kl, elements, free_bits=-1)


def test_loss_gradient_flows(toy):
    params, target, kl, elements = toy
    params = params.clone().requires_grad_()
    kl = kl.clone().requires_grad_()
    loss, logs = split_elbo(params, target, kl, elements)
    loss.backward()
    assert params.grad is not None and kl.grad is not None
    # d rate / d KL_bi = 1 / (B · L · n_i)
    assert kl.grad[0, 1].item() == pytest.approx(1 / (2 * 2 * 5))
    assert not logs["loss"].requires_grad


def test_kl_annealing_schedule():
    assert kl_annealing_beta(0) == pytest.approx(0.1)
    assert kl_annealing_beta(4) == pytest.approx(0.5)
    assert kl_annealing_beta(9) == 1.0 and kl_annealing_beta(50) == 1.0
    assert kl_annealing_beta(3, start=5) == 0.0
    with pytest.raises(ValueError):
        kl_annealing_beta(1, duration=0)


def test_non_finite_loss_skips_the_step_and_counts():
    guard = NonFiniteGuard()
    ok = torch.tensor(1.5)
    assert guard(ok) is ok
    assert guard(torch.tensor(float("nan"))) is None
    assert guard(torch.tensor(float("inf"))) is None
    assert guard.skipped == 2
    parity = NonFiniteGuard(nan_only=True)
    inf = torch.tensor(float("inf"))
    assert parity(inf) is inf and parity.skipped == 0
    assert parity(torch.tensor(float("nan"))) is None and parity.skipped == 1
    assert is_finite(torch.tensor(0.0)) and not is_finite(torch.tensor(-float("inf")))


def test_nan_from_a_model_is_caught():
    """A NaN prediction makes the split ELBO NaN, which the guard refuses."""
    params = torch.zeros(1, 4, 2, 2)
    params[0, 0, 0, 0] = float("nan")
    loss, _ = split_elbo(params, torch.zeros(1, 2, 2, 2))
    guard = NonFiniteGuard()
    assert guard(loss) is None and guard.skipped == 1


def test_beta_nll_value_and_gradients(toy):
    """β-NLL: the loss is mean(σ^(2β)·NLL) with σ held constant; β = 1 gives the means the
    squared-error gradient, the log-variances the NLL gradient times σ²; logs keep the NLL."""
    params, target, _, _ = toy
    t = target.shape[1]
    for beta in (0.5, 1.0):
        p = params.clone().requires_grad_()
        loss, logs = split_elbo(p, target, nll_beta=beta)
        nll = gaussian_nll(params, target)
        weight = torch.exp(beta * params[:, t:])
        assert loss.item() == pytest.approx((nll * weight).mean().item())
        assert logs["distortion"].item() == pytest.approx(nll.mean().item())
        loss.backward()
        n = target.numel()
        mu, ell = params[:, :t], params[:, t:]
        grad_mu = (mu - target) * torch.exp((beta - 1) * ell) / n
        torch.testing.assert_close(p.grad[:, :t], grad_mu)
        grad_ell = 0.5 * (1 - (target - mu).square() * torch.exp(-ell)) * weight / n
        torch.testing.assert_close(p.grad[:, t:], grad_ell)
    # β = 1: the mean gradient is exactly the one of 0.5·MSE.
    p = params.clone().requires_grad_()
    split_elbo(p, target, nll_beta=1.0)[0].backward()
    q = params[:, :t].clone().requires_grad_()
    (0.5 * (q - target).square().mean()).backward()
    torch.testing.assert_close(p.grad[:, :t], q.grad)
    with pytest.raises(ValueError, match="nll_beta"):
        split_elbo(params, target, nll_beta=1.5)
