"""The paper's supervised baselines (spec 10.1-10.4): architecture, config, context transfer."""

from __future__ import annotations

import pytest
import torch

from musplit.config import ModelConfig
from musplit.losses import deep_supervision_mse
from musplit.models import build, count_parameters
from musplit.models.context_transfer import (
    ContextTransfer,
    _scan,
    _shift_to_target,
    directional_scan,
)

#: Parameter counts of the reference implementation with the paper's settings (issue 5).
REFERENCE_COUNTS = [
    ({"kind": "unet"}, 17_298_594),
    ({"kind": "unet", "lc": "regular"}, 31_252_834),
    ({"kind": "bravenet"}, 3_513_802),
]


def tiny(kind: str, **kw) -> ModelConfig:
    """Width 4, two or three levels, patch 32: the CPU test size."""
    kw.setdefault("filters", 4)
    kw.setdefault("patch", 32)
    kw.setdefault("depth", 3)
    return ModelConfig(kind=kind, **kw)


TINY = {
    "unet": lambda: tiny("unet"),
    "unet-lc": lambda: tiny("unet", lc="regular", scales=3),
    "ca_unet": lambda: tiny("ca_unet"),
    "bravenet": lambda: tiny("bravenet"),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- the reference settings -----------------------------------------------------------------
@pytest.mark.parametrize("kw,count", REFERENCE_COUNTS)
def test_reference_parameter_counts(kw, count):
    assert count_parameters(build(ModelConfig(**kw))) == count


def test_reference_settings_are_the_defaults():
    unet = ModelConfig(kind="unet")
    assert (unet.lc, unet.filters, unet.depth, unet.scales, unet.dropout) == ("none", 32, 5, 1, 0)
    assert ModelConfig(kind="unet", lc="regular").scales == 5
    brave = ModelConfig(kind="bravenet")
    assert (brave.filters, brave.depth, brave.scales, brave.dropout) == (32, 4, 2, 0.1)
    assert brave.output_dropout is False
    # the LadderVAE defaults are untouched
    hvae = ModelConfig()
    assert (hvae.lc, hvae.filters, hvae.dropout, hvae.depth) == ("lean", 64, 0.1, None)


def test_context_aware_unet_adds_gates_and_projections_to_the_unet():
    """Spec 10.3: a (4, H, W) gate and a 1x1 conv 4C -> C on each of the 5 skips."""
    n = count_parameters(build(ModelConfig(kind="ca_unet")))
    skips = [(32, 64), (64, 32), (128, 16), (256, 8), (512, 4)]  # (channels, side)
    extra = sum(4 * s * s + 4 * c * c + c for c, s in skips)
    assert n == 17_298_594 + extra == 18_718_146


def test_unet_channel_plan():
    """Spec 10.1: Down_1..Down_4 double the width to 512, the bottleneck keeps 512."""
    m = build(ModelConfig(kind="unet"))
    assert [d.conv.conv2.out_channels for d in m.downs] == [64, 128, 256, 512, 512]
    assert [(u.conv.conv1.in_channels, u.conv.conv2.out_channels) for u in m.ups] == [
        (1024, 256), (512, 128), (256, 64), (128, 32), (64, 32)]
    assert m.head.in_channels == 32 and m.head.out_channels == 2


# -- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"kind": "unet", "z_dims": [4, 4]}, "z_dims applies to the LadderVAE"),
    ({"kind": "unet", "lc": "lean"}, "takes lc in"),
    ({"kind": "ca_unet", "lc": "regular"}, "takes lc in"),
    ({"kind": "bravenet", "scales": 3}, "exactly 2 scales"),
    ({"kind": "bravenet", "patch": 36}, "not divisible by 2\\^3"),
    ({"kind": "unet", "lc": "regular", "scales": 6}, "scales <= depth"),
    ({"kind": "unet", "dropout": 0.1}, "no dropout"),
    ({"kind": "unet", "output_dropout": True}, "'bravenet' only"),
    ({"kind": "unet", "gated": False}, "gated applies to the LadderVAE"),
    ({"kind": "unet", "patch": 16}, "smaller than 2\\^depth"),
    ({"kind": "hvae", "depth": 3}, "depth applies to the baselines"),
])
def test_settings_a_kind_does_not_use_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kw)


def test_a_baseline_config_round_trips_through_its_dump():
    cfg = ModelConfig(kind="unet", lc="regular", filters=8, depth=4, scales=3)
    assert ModelConfig.model_validate(cfg.model_dump(mode="json")) == cfg


# -- forward and backward on CPU -------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_backward_reaches_every_parameter(name):
    cfg = TINY[name]()
    model = build(cfg).train()
    assert model.stochastic is False and model.predicts_variance is False
    x = torch.randn(3, cfg.scales, 32, 32)
    out = model(x)
    assert out.params.shape == (3, 4, 32, 32)
    assert torch.count_nonzero(out.params[:, 2:]) == 0  # unit variance: log-variance 0
    y = torch.randn(3, 2, 32, 32)
    loss, logs = deep_supervision_mse(out.mean, y, out.aux)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    model.eval()
    with torch.no_grad():
        a, b = model(x).params, model(x).params
    assert torch.equal(a, b)  # deterministic in eval mode: one pass stands for all samples


@pytest.mark.parametrize("name", ["unet", "unet-lc", "ca_unet", "bravenet"])
def test_other_input_sizes(name):
    """Outer padding feeds larger patches; the U-Nets take any size >= 2^depth."""
    cfg = TINY[name]()
    model = build(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(1, cfg.scales, 48, 48)).params.shape == (1, 4, 48, 48)
    if name == "unet":
        with torch.no_grad():
            assert model(torch.randn(1, 1, 21, 37)).params.shape == (1, 4, 21, 37)


def test_unet_trains_at_a_large_patch_without_lc():
    """Table 1 trains the plain U-Net at P = 256 (and 512)."""
    cfg = ModelConfig(kind="unet", filters=2, depth=5, patch=256)
    model = build(cfg)
    out = model(torch.randn(2, 1, 256, 256))
    out.params.sum().backward()
    assert out.params.shape == (2, 4, 256, 256)


def test_wrong_inputs_are_input_errors():
    from musplit.errors import InputError

    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        build(TINY["unet-lc"]())(torch.zeros(1, 1, 32, 32))
    with pytest.raises(InputError, match="multiples of 4"):
        build(TINY["bravenet"]())(torch.zeros(1, 2, 30, 30))
    with pytest.raises(InputError, match="at least 8"):
        build(TINY["unet"]())(torch.zeros(1, 1, 6, 6))


def test_regular_lc_merges_are_pixel_aligned_and_keep_the_patch_size():
    """Spec 10.2: Down_i's output (P/2) is centre-padded to the LC feature's P x P and the
    merged map stays P x P, so the decoder sees full-size skips at the LC levels."""
    cfg = tiny("unet", lc="regular", scales=3, depth=3)
    model = build(cfg).eval()
    seen = []
    for m in model.lc_merges:
        m.register_forward_hook(lambda mod, inp, out: seen.append(
            (tuple(inp[0].shape[-2:]), tuple(inp[1].shape[-2:]), tuple(out.shape[-2:]))))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen == [((16, 16), (32, 32), (32, 32))] * 2


def test_bravenet_deep_supervision_and_output_dropout():
    cfg = tiny("bravenet", depth=4)
    model = build(cfg).train()
    out = model(torch.randn(2, 2, 32, 32))
    assert len(out.aux) == 2 and all(a.shape == (2, 2, 32, 32) for a in out.aux)
    # off by default: no exactly-zero output pixels; the reference quirk zeroes ~10% of them
    assert torch.count_nonzero(out.params[:, :2]) == out.params[:, :2].numel()
    quirky = build(tiny("bravenet", depth=4, output_dropout=True)).train()
    zeros = (quirky(torch.randn(2, 2, 32, 32)).params[:, :2] == 0).float().mean()
    assert 0.03 < zeros < 0.2
    quirky.eval()
    assert torch.count_nonzero(quirky(torch.randn(1, 2, 32, 32)).params[:, :2]) == 2 * 32 * 32


def test_deep_supervision_loss_is_the_reference_average():
    y = torch.zeros(1, 2, 4, 4)
    main, aux = torch.ones(1, 2, 4, 4), (torch.full((1, 2, 4, 4), 2.0), torch.full((1, 2, 4, 4),
                                                                                   3.0))
    loss, logs = deep_supervision_mse(main, y, aux)
    assert loss.item() == pytest.approx((1 + (4 + 9) / 2) / 2)
    assert logs["distortion"].item() == 1
    assert deep_supervision_mse(main, y)[0].item() == 1


# -- context transfer (spec 10.3) ------------------------------------------------------------
def slow_sweep(x, w, dim, reverse):
    """The reference's row/column loop, written plainly: the obviously-correct version."""
    out = x.clone()
    n = x.shape[dim]
    for i in (range(n - 2, -1, -1) if reverse else range(1, n)):
        p = i + 1 if reverse else i - 1
        if dim == -2:
            out[:, :, i] = torch.relu(w[p] * out[:, :, p].clone() + out[:, :, i].clone())
        else:
            out[:, :, :, i] = torch.relu(w[:, p] * out[:, :, :, p].clone()
                                         + out[:, :, :, i].clone())
    return out


@pytest.mark.parametrize("size", [(1, 4), (2, 3), (7, 5), (10, 3), (13, 29)])
@pytest.mark.parametrize("dim", [-2, -1])
@pytest.mark.parametrize("reverse", [False, True])
def test_sweep_equals_the_loop_with_gradients(size, dim, reverse):
    g = torch.Generator().manual_seed(sum(size))
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.rand(*size, dtype=torch.float64, generator=g, requires_grad=True)
    fast = directional_scan(x, w, dim=dim, reverse=reverse)
    slow = slow_sweep(x, w, dim, reverse)
    torch.testing.assert_close(fast, slow)
    grad = torch.randn(fast.shape, dtype=torch.float64, generator=g)
    gf = torch.autograd.grad(fast, (x, w), grad)
    gs = torch.autograd.grad(slow, (x, w), grad, allow_unused=True)
    torch.testing.assert_close(gf[0], gs[0])
    torch.testing.assert_close(gf[1], torch.zeros_like(w) if gs[1] is None else gs[1])


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 6, 50])
@pytest.mark.parametrize("relu", [True, False])
def test_every_chunk_size_gives_the_same_scan(chunk, relu):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 11, 6, dtype=torch.float64, generator=g)
    a = _shift_to_target(torch.rand(11, 6, dtype=torch.float64, generator=g), -2, True)
    full = torch.rand(2, 3, 11, 6, dtype=torch.float64, generator=g)  # full-size coefficients
    for coef in (a, full):
        ref = _scan(x, coef, -2, True, relu, chunk=11)  # sequential
        torch.testing.assert_close(_scan(x, coef, -2, True, relu, chunk=chunk), ref)
        torch.testing.assert_close(_scan(x, coef, -1, False, relu, chunk=chunk),
                                   _scan(x, coef, -1, False, relu, chunk=6))


def test_context_transfer_module_matches_the_reference_formula():
    torch.manual_seed(3)
    ct = ContextTransfer(3, (6, 5))
    with torch.no_grad():
        ct.gate.normal_()
    x = torch.randn(2, 3, 6, 5)
    w = torch.sigmoid(ct.gate)
    cat = torch.cat([slow_sweep(x, w[2], -1, False), slow_sweep(x, w[3], -1, True),
                     slow_sweep(x, w[0], -2, False), slow_sweep(x, w[1], -2, True)], dim=1)
    torch.testing.assert_close(ct(x), torch.relu(ct.proj(cat)))
    assert ContextTransfer(3, (6, 5)).gate.abs().sum() == 0  # initialised to 0 (sigmoid 1/2)
    # other sizes: the gate is centre-cropped / edge-padded, the output keeps the input's size
    assert ct(torch.randn(1, 3, 9, 4)).shape == (1, 3, 9, 4)
