"""LadderVAE architecture, sampling modes and the fused stochastic layer (spec 2, App. A.1-A.3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import musplit.models.blocks as blocks
from musplit.config import ModelConfig
from musplit.errors import ConfigError, InputError
from musplit.losses import split_elbo
from musplit.models import LadderVAE, build, count_parameters
from musplit.models.blocks import GaussianLatent, _GateFn, gaussian_latent, stable_variance

LCS = ["none", "lean", "regular", "deep"]
KINDS = ["hvae", "hae"]
PAPER_COUNTS = {"none": 2_991_748, "lean": 3_657_604, "regular": 4_702_084, "deep": 7_177_604}


def tiny(kind="hvae", lc="lean", patch=64, **kw) -> ModelConfig:
    levels = 8 if lc == "deep" else 4
    kw.setdefault("z_dims", [4] * levels)
    return ModelConfig(kind=kind, lc=lc, filters=8, patch=patch, **kw)


def lc_input(cfg: ModelConfig, size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.scales, size, size, generator=g)


@pytest.fixture(autouse=True)
def _seed():
    # (one torch thread per test comes from conftest.py)
    torch.manual_seed(0)


# -- parity of the architecture (Appendix A.1, A.2) -----------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lc", LCS)
def test_paper_parameter_counts(lc, kind):
    model = build(ModelConfig(kind=kind, lc=lc))
    assert count_parameters(model) == PAPER_COUNTS[lc]


def test_deep_lc_without_unused_merges():
    model = build(ModelConfig(lc="deep", parity_unused_modules=False))
    assert count_parameters(model) == 6_814_852
    assert model.encoder.levels[4].lc_merge is None
    assert model.encoder.levels[3].lc_merge is not None


@pytest.mark.parametrize("lc,side", [("none", 4), ("lean", 4), ("regular", 64), ("deep", 4)])
def test_top_prior_shape(lc, side):
    model = build(ModelConfig(lc=lc))
    top = model.decoder.levels[-1].top_prior
    assert tuple(top.shape) == (1, 256, side, side)
    assert torch.count_nonzero(top) == 0  # zero-initialised: N(0, 1 + 1e-6)
    assert all(level.top_prior is None for level in model.decoder.levels[:-1])


def test_component_parameter_counts():
    """The per-component breakdown of spec 2.8."""
    model = build(ModelConfig(lc="lean"))

    def n(module):
        return count_parameters(module)

    assert n(model.encoder.levels[0].res) == 82_432
    assert n(model.encoder.stem.res) == 74_112
    assert n(model.encoder.levels[0].lc_merge) == 90_688
    assert n(model.decoder.levels[0].stochastic.post_conv) == 147_712
    assert n(model.decoder.levels[0].stochastic.out_conv) == 73_792
    assert n(model.decoder.levels[0].up) == 36_928
    assert n(model.encoder.stem) == 74_752
    assert n(model.encoder.lc_stems[0]) == 75_776
    assert n(model.decoder.levels[0]) == 669_952
    assert n(model.decoder.levels[3]) == 340_864 + 256 * 4 * 4
    assert n(model.decoder.final) == 82_432
    assert n(model.head) == 2_308


# Latent sides per level at P = 64 (spec 2.9).
LATENT_SIDES = {
    "none": [32, 16, 8, 4],
    "lean": [32, 16, 8, 4],
    "regular": [64, 64, 64, 64],
    "deep": [64, 64, 64, 64, 32, 16, 8, 4],
}
# Bottom-up value sides handed to each top-down level (spec 2.4).
BU_SIDES = LATENT_SIDES


@pytest.mark.parametrize("lc", LCS)
def test_bottom_up_and_latent_shapes(lc):
    cfg = tiny(lc=lc)
    model = build(cfg).eval()
    x = lc_input(cfg, 64)
    with torch.no_grad():
        state = model.encode(x)
        out = model(x)
    assert [tuple(v.shape) for v in state.bu_values] == [(2, 8, s, s) for s in BU_SIDES[lc]]
    assert out.kl_elements == tuple(4 * s * s for s in LATENT_SIDES[lc])
    assert tuple(out.params.shape) == (2, 4, 64, 64)


def test_lean_bottom_up_keeps_full_size_upwards():
    """Lean-LC crops only what the top-down pass sees; 64x64 still goes up (spec 2.4)."""
    cfg = tiny(lc="lean")
    model = build(cfg).eval()
    seen = []
    handle = model.encoder.levels[1].down.register_forward_hook(
        lambda mod, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    with torch.no_grad():
        model.encode(lc_input(cfg, 64))
    handle.remove()
    assert seen == [(64, 64)]


# -- forward and backward of every combination ----------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lc", LCS)
@pytest.mark.parametrize("size", [32, 64, 128])
def test_forward_backward(kind, lc, size):
    cfg = tiny(kind=kind, lc=lc, patch=size)
    model = build(cfg).train()
    x = lc_input(cfg, size)
    target = torch.randn(2, 2, size, size)
    out = model(x)
    params = out[0]
    assert tuple(params.shape) == (2, 4, size, size)
    assert params[:, 2:].min() >= cfg.logvar_min
    if kind == "hvae":
        assert tuple(out.kl.shape) == (2, cfg.levels)
    else:
        assert out.kl is None
    loss, logs = split_elbo(params, target, out.kl, out.kl_elements)
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    # The HAE never uses the prior or the second half of PostConv; Deep-LC's unused merges
    # never run (spec 2.4, 2.6).
    for name in no_grad:
        assert (kind == "hae" and ("prior" in name)) or ".lc_merge." in name, name
    if kind == "hvae":
        assert not any("prior" in n for n in no_grad)
    if lc == "deep":
        assert any(n.startswith("encoder.levels.4.lc_merge") for n in no_grad)


@pytest.mark.parametrize("lc", ["none", "lean"])
def test_vanilla_and_lean_pad_odd_sizes(lc):
    """Inputs that are not multiples of 2^L are centre zero-padded and cropped back."""
    cfg = tiny(lc=lc)
    model = build(cfg).eval()
    x = lc_input(cfg, 64)[..., 2:62, 3:61]
    with torch.no_grad():
        out = model(x, sample_mode="mean")
    assert tuple(out.params.shape) == (2, 4, 60, 58)
    assert torch.isfinite(out.params).all()


def test_regular_rejects_sizes_it_cannot_take():
    cfg = tiny(lc="regular", scales=3)  # levels 2, 3 halve: sides must be multiples of 4
    model = build(cfg).eval()
    with pytest.raises(InputError, match="even multiples"):
        model(lc_input(cfg, 64)[..., :62, :62])


def test_wrong_number_of_scales_is_an_input_error():
    model = build(tiny(lc="lean"))
    with pytest.raises(InputError, match=r"\(B, 5, H, W\)"):
        model(torch.zeros(2, 3, 64, 64))


def test_build_refuses_what_is_not_a_model_config():
    with pytest.raises(ConfigError, match="ModelConfig"):
        build({"kind": "unet"})


def test_more_output_channels_and_blocks():
    cfg = tiny(lc="regular", scales=3, out_channels=3, blocks_per_level=2, gated=False,
               batchnorm=False, dropout=0.0)
    model = build(cfg).train()
    out = model(lc_input(cfg, 32))
    assert tuple(out.params.shape) == (2, 6, 32, 32)
    loss, _ = split_elbo(out.params, torch.zeros(2, 3, 32, 32), out.kl, out.kl_elements)
    loss.backward()
    assert model.encoder.levels[0].res.gate is None
    assert len(model.decoder.levels[0].extra) == 1


@pytest.mark.parametrize("bound,expected", [("soft", -5.0 + math.log1p(math.exp(-3.0))),
                                             ("hard", -5.0)])
def test_logvar_bound(bound, expected):
    cfg = tiny(lc="none", logvar_bound=bound)
    model = build(cfg).eval()
    with torch.no_grad():
        model.head.conv.weight.zero_()
        model.head.conv.bias[2:] = -8.0  # raw log-variance 3 below the bound
        ell = model(lc_input(cfg, 32), sample_mode="mean").logvar
    assert torch.allclose(ell, torch.full_like(ell, expected))


# -- sampling modes and the encoder-once API (issue 3 item 5) ------------------------------
def test_hae_has_no_kl_and_is_deterministic_in_eval():
    cfg = tiny(kind="hae", lc="lean")
    model = build(cfg)
    x = lc_input(cfg, 64)
    model.train()
    out = model(x)
    assert out.kl is None
    target = torch.randn(2, 2, 64, 64)
    loss, logs = split_elbo(out.params, target, out.kl, out.kl_elements)
    assert logs["rate"] == 0 and torch.equal(loss.detach(), logs["distortion"])
    model.eval()
    with torch.no_grad():
        a, b = model(x).params, model(x).params
    assert torch.equal(a, b)


def test_hvae_eval_samples_by_default_and_mean_mode_is_deterministic():
    cfg = tiny(lc="lean")
    model = build(cfg).eval()
    x = lc_input(cfg, 64)
    with torch.no_grad():
        s1, s2 = model(x).params, model(x).params
        m1, m2 = model(x, sample_mode="mean").params, model(x, sample_mode="mean").params
        zeros = [torch.zeros(2, 4, s, s) for s in LATENT_SIDES["lean"]]
        m0 = model(x, noise=zeros).params
    assert not torch.equal(s1, s2)
    assert torch.equal(m1, m2)
    assert torch.allclose(m0, m1, atol=1e-6)  # mean mode == zero noise
    assert build(tiny(lc="lean", sample_mode="mean")).sample_mode == "mean"


def test_sample_many_equals_full_passes_with_the_same_noise():
    cfg = tiny(lc="regular", scales=3, z_dims=[4, 4, 4])
    model = build(cfg).eval()
    x = lc_input(cfg, 32)
    with torch.no_grad():
        g1 = torch.Generator().manual_seed(7)
        full = torch.stack([model(x, noise=g1).params for _ in range(3)])
        g2 = torch.Generator().manual_seed(7)
        once = model.sample_many(x, 3, noise=g2)
        batched = model.sample_many(x, 5, batch=2)
    assert once.shape == (3, 2, 4, 32, 32)
    assert torch.equal(full, once)
    assert not torch.equal(full[0], full[1])
    assert batched.shape == (5, 2, 4, 32, 32)


def test_encode_decode_with_injected_noise_tensors():
    cfg = tiny(lc="none")
    model = build(cfg).eval()
    x = lc_input(cfg, 32)
    noise = [torch.randn(2, 4, s, s) for s in (16, 8, 4, 2)]
    with torch.no_grad():
        state = model.encode(x)
        a = model.decode(state, noise=noise).params
        b = model(x, noise=noise).params
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="shape"):
        model.decode(state, noise=[torch.zeros(1)] * 4)


def test_kl_only_when_asked_in_eval_and_closed_form_option():
    cfg = tiny(lc="none")
    model = build(cfg).eval()
    x = lc_input(cfg, 32)
    with torch.no_grad():
        assert model(x).kl is None
        g = torch.Generator().manual_seed(1)
        mc = model(x, compute_kl=True, noise=g).kl
        an = model(x, compute_kl=True, kl_estimator="analytic").kl
    assert mc.shape == an.shape == (2, 4)
    assert (an >= -1e-4).all()  # a closed-form KL is never negative
    with pytest.raises(ValueError):
        model(x, kl_estimator="exact")


def test_channels_last_gives_the_same_output():
    cfg = tiny(lc="regular", scales=3, z_dims=[4, 4, 4])
    model = build(cfg).eval()
    x = lc_input(cfg, 32)
    with torch.no_grad():
        a = model(x, sample_mode="mean").params
        model.to(memory_format=torch.channels_last)
        b = model(x.contiguous(memory_format=torch.channels_last), sample_mode="mean").params
    assert torch.allclose(a, b, atol=1e-5)


def test_bf16_autocast_trains():
    cfg = tiny(lc="lean")
    model = build(cfg).train()
    x = lc_input(cfg, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss, _ = split_elbo(out.params, torch.zeros(2, 2, 32, 32), out.kl, out.kl_elements)
    loss.backward()
    assert out.kl.dtype == torch.float32 and torch.isfinite(loss)
    assert model.decoder.levels[0].stochastic.post_conv.weight.grad is not None


# -- latent scaling (spec 2.10) -------------------------------------------------------------
def test_reference_latent_scaling_rescales_postconv_weights():
    """Parity scaling multiplies the posterior input of level i by sqrt(2(i+1)) when L > 4,
    which equals scaling PostConv's weight (not its bias) in an unscaled model."""
    ref_cfg = tiny(lc="deep", scales=3, z_dims=[4] * 5)
    ref = build(ref_cfg).eval()
    plain = build(ref_cfg.model_copy(update={"latent_scaling": "none"})).eval()
    sd = ref.state_dict()
    for i in range(5):
        sd[f"decoder.levels.{i}.stochastic.post_conv.weight"] = (
            sd[f"decoder.levels.{i}.stochastic.post_conv.weight"] * math.sqrt(2 * (i + 1)))
    plain.load_state_dict(sd)
    x = lc_input(ref_cfg, 32)
    with torch.no_grad():
        a = ref(x, sample_mode="mean").params
        b = plain(x, sample_mode="mean").params
        c = build(ref_cfg.model_copy(update={"latent_scaling": "paper"}))
        c.load_state_dict(ref.state_dict())
        d = c.eval()(x, sample_mode="mean").params
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, d, atol=1e-3)
    assert ref.q_scale == pytest.approx([math.sqrt(2 * (i + 1)) for i in range(5)])


def test_no_latent_scaling_up_to_four_levels():
    model = build(tiny(lc="regular"))
    assert model.q_scale == [1.0] * 4 and model.encoder.bu_scale == [1.0] * 4


# -- the stochastic layer (spec 2.6, Appendix A.3) -----------------------------------------
def test_stable_variance_values():
    var = stable_variance(torch.tensor([-3.0, 0.0, 2.0, 25.0], dtype=torch.float64))
    expected = torch.tensor([math.exp(-3), 1.0, 3.0, 21.0], dtype=torch.float64) + 1e-6
    assert torch.allclose(var, expected, rtol=0, atol=1e-12)


def _reference_latent(q, p, eps, analytic):
    """Obviously-correct version with distribution objects (what the fused layer replaces)."""
    z_dim = q.shape[1] // 2
    mu_q, ell_q = q[:, :z_dim], q[:, z_dim:].clamp(max=20)
    mu_p, ell_p = p[:, :z_dim], p[:, z_dim:].clamp(max=20)

    def var(ell):
        return torch.where(ell > 0, 1 + ell, torch.exp(ell.clamp(max=0))) + 1e-6

    qd = torch.distributions.Normal(mu_q, var(ell_q).sqrt())
    pd = torch.distributions.Normal(mu_p, var(ell_p).sqrt())
    z = mu_q + qd.scale * eps
    kl = torch.distributions.kl_divergence(qd, pd) if analytic else qd.log_prob(z) - pd.log_prob(z)
    return z, kl.sum(dim=(1, 2, 3))


@pytest.mark.parametrize("analytic", [False, True])
@pytest.mark.parametrize("prior_batch", [3, 1])
@pytest.mark.parametrize("chunk", [1 << 20, 40])
def test_fused_latent_matches_distributions(analytic, prior_batch, chunk, monkeypatch):
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(3)
    q = (3 * torch.randn(3, 8, 4, 5, generator=g, dtype=torch.float64))
    q[0, 5, 0, 0] = 25.0  # above the clip
    q = q.contiguous(memory_format=torch.channels_last).requires_grad_()
    p = (3 * torch.randn(prior_batch, 8, 4, 5, generator=g, dtype=torch.float64)).requires_grad_()
    eps = torch.randn(3, 4, 4, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, 4, 4, 5, generator=g, dtype=torch.float64)
    wk = torch.randn(3, generator=g, dtype=torch.float64)

    z1, k1 = GaussianLatent.apply(q, p, eps, analytic, 20.0)
    z2, k2 = _reference_latent(q, p, eps, analytic)
    assert torch.allclose(z1, z2, atol=1e-12) and torch.allclose(k1, k2, atol=1e-9)
    g1 = torch.autograd.grad((z1 * w).sum() + (k1 * wk).sum(), (q, p))
    g2 = torch.autograd.grad((z2 * w).sum() + (k2 * wk).sum(), (q, p))
    for a, b in zip(g1, g2, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-9)
    assert torch.autograd.gradcheck(lambda q, p: GaussianLatent.apply(q, p, eps, analytic, 20.0),
                                    (q, p))


def test_monte_carlo_kl_averages_to_closed_form():
    n = 200_000
    q = torch.tensor([0.3, -0.7, 0.5, -1.2], dtype=torch.float64).view(1, 4, 1, 1)
    p = torch.tensor([-0.2, 0.4, -0.3, 1.5], dtype=torch.float64).view(1, 4, 1, 1)
    eps = torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)
    _, mc = gaussian_latent(q.expand(n, -1, -1, -1), p, eps, kl=True)
    _, closed = gaussian_latent(q, p, torch.zeros(1, 2, 1, 1, dtype=torch.float64), kl=True,
                                analytic=True)
    stderr = mc.std() / math.sqrt(n)
    assert abs(mc.mean() - closed[0]) < 4 * stderr
    assert stderr < 0.01


def test_posterior_mean_without_kl_and_missing_prior():
    q = torch.randn(2, 6, 3, 3)
    z, kl = gaussian_latent(q, None, None, kl=False)
    assert kl is None and torch.equal(z, q[:, :3])
    with pytest.raises(ValueError, match="prior"):
        gaussian_latent(q, None, torch.zeros(2, 3, 3, 3), kl=True)


def test_gate_function_gradients(monkeypatch):
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", 30)
    y = torch.randn(4, 6, 3, 4, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    a, g = y.detach().chunk(2, dim=1)
    assert torch.allclose(_GateFn.apply(y), F.elu(a) * torch.sigmoid(g))
    assert torch.autograd.gradcheck(_GateFn.apply, (y,))


def test_ladder_vae_rejects_other_kinds():
    with pytest.raises(ValueError):
        LadderVAE(ModelConfig(kind="unet", lc="none"))


def test_config_refuses_patches_the_variant_cannot_take():
    with pytest.raises(ValueError, match="divisible by 2\\^2"):
        ModelConfig(lc="regular", scales=3, patch=66)
    with pytest.raises(ValueError, match="divisible by 2\\^4"):
        ModelConfig(lc="deep", patch=40)
    assert ModelConfig(lc="regular", patch=62).patch == 62  # S = L+1: never halved


def _unfused_resblock(block, x):
    h = block.drop1(block.conv1(F.elu(block.bn1(x))))
    h = block.drop2(block.conv2(F.elu(block.bn2(h))))
    return (block.gate(h) if block.gate is not None else h) + x


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("gated", [False, True])
def test_fused_bn_elu_conv_matches_the_modules(channels_last, gated, momentum):
    import copy

    from musplit.models.blocks import ResBlock

    torch.manual_seed(0)
    fused = ResBlock(6, gated=gated, dropout=0.0).double().train()
    fused.bn1.momentum = fused.bn2.momentum = momentum
    fused(torch.randn(4, 6, 10, 10, dtype=torch.float64))  # running statistics move first
    plain = copy.deepcopy(fused)
    x = torch.randn(4, 6, 10, 10, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fused(x1), _unfused_resblock(plain, x2)
    assert torch.equal(y1, y2)  # the forward pass is the same arithmetic
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
    for (name, p1), (_, p2) in zip(fused.named_parameters(), plain.named_parameters(), strict=True):
        assert torch.allclose(p1.grad, p2.grad, rtol=1e-10, atol=1e-12), name
    for (name, b1), (_, b2) in zip(fused.named_buffers(), plain.named_buffers(), strict=True):
        assert torch.equal(b1, b2), name  # running statistics and num_batches_tracked


def test_fused_bn_elu_conv_gradcheck_and_memory():
    from musplit.models.blocks import _BNELUConvFn, bn_elu_conv

    torch.manual_seed(1)
    bn = nn.BatchNorm2d(3).double()
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: _BNELUConvFn.apply(*t, bn, conv),
        (x, bn.weight, bn.bias, conv.weight, conv.bias))
    # Only the input (plus per-channel statistics and weights) is kept for backward.
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        bn_elu_conv(x, bn, conv)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()
    # In evaluation mode and without gradients the plain modules run (running statistics).
    bn.eval()
    with torch.no_grad():
        out = bn_elu_conv(x, bn, conv)
    assert torch.equal(out, conv(F.elu(bn(x))))
