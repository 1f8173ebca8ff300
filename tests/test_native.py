"""The compiled elementwise kernels (musplit.native) and the layers that use them."""

from __future__ import annotations

import shutil
import tempfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from musplit import native
from musplit.models.blocks import Conv2d, ResBlock, _GateFn, bn_elu_conv, conv2d

CL = torch.channels_last


@pytest.fixture(scope="module")
def lib():
    lib = native.load()
    assert lib is not None, (
        f"the native kernels did not build; a C compiler was found at {shutil.which('cc')}")
    return lib


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A native module state that forgets any loaded library, with its own cache folder."""
    monkeypatch.setenv("MUSPLIT_CACHE_DIR", str(tmp_path / "cache"))
    native.reset()
    yield tmp_path / "cache"
    native.reset()


def _fmt(channels_last: bool):
    return CL if channels_last else torch.contiguous_format


def _extreme(shape, seed=0):
    """Normal values with some huge, tiny, exactly zero and boundary ones mixed in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    flat = x.view(-1)
    specials = torch.tensor([0.0, -0.0, -1e-30, 1e-30, -1e-6, 1e-6, -87.0, -88.0, -100.0, -1e4,
                             88.0, 100.0, 1e4, -0.34657, 0.34657, -20.0])
    n = min(flat.numel(), specials.numel())
    flat[:n] = specials[:n]
    return x


# -- building and loading --------------------------------------------------------------------
def test_load_builds_once_into_the_cache_folder_and_reuses_it(fresh_native, monkeypatch):
    assert native.load() is not None
    built = sorted(fresh_native.glob("kernels-*.so"))
    assert len(built) == 1
    # The temporary name was renamed away: the library is all the folder holds.
    assert [p.name for p in fresh_native.iterdir()] == [built[0].name]
    mtime = built[0].stat().st_mtime_ns
    native.reset()

    def no_build(*args, **kwargs):
        raise AssertionError("the cached library should have been used")

    monkeypatch.setattr(native, "_build", no_build)
    assert native.load() is not None
    assert built[0].stat().st_mtime_ns == mtime


def test_disabled_by_environment(fresh_native, monkeypatch):
    monkeypatch.setenv("MUSPLIT_NATIVE", "0")
    assert native.load() is None
    assert not native.available()
    assert not native.supports(torch.zeros(2, 3, 4, 5))
    assert not fresh_native.exists()  # nothing was compiled


@pytest.mark.parametrize("cc", ["no-such-compiler-musplit", "false"])
def test_missing_or_failing_compiler_falls_back_quietly(fresh_native, monkeypatch, cc):
    monkeypatch.setenv("CC", cc)
    monkeypatch.setattr(tempfile, "tempdir", str(fresh_native.parent))
    assert native.load() is None
    assert not list(fresh_native.parent.rglob("*.so"))
    assert not [p for p in fresh_native.parent.rglob("*") if p.is_file()]  # no temporary


def test_unwritable_cache_folder_falls_back_to_the_temporary_folder(fresh_native, monkeypatch):
    blocker = fresh_native.parent / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MUSPLIT_CACHE_DIR", str(blocker / "cache"))
    tmp = fresh_native.parent / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert native.load() is not None
    assert len(list(tmp.rglob("kernels-*.so"))) == 1
    assert blocker.read_text() == "not a folder"


def test_supports_needs_float32_cpu_tensors_in_one_layout(lib):
    x = torch.randn(2, 3, 4, 5)
    assert native.supports(x)
    assert native.supports(x.contiguous(memory_format=CL))
    assert not native.supports(x.double())
    assert not native.supports(x.transpose(2, 3))  # neither layout
    assert not native.supports(x, x.contiguous(memory_format=CL))  # mixed layouts
    assert native.supports(x, torch.randn(3))  # 1-d tensors carry no layout


# -- the kernels against float64 references ---------------------------------------------------
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 3, 7), (4, 64, 32, 32), (1, 1, 1, 1)])
def test_bn_elu_matches_float64(lib, channels_last, shape):
    x = _extreme(shape).contiguous(memory_format=_fmt(channels_last))
    scale = torch.rand(shape[1]) + 0.5
    shift = torch.randn(shape[1])
    out = native.bn_elu(x, scale, shift)
    ref = F.elu(x.double() * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1))
    assert out.is_contiguous(memory_format=_fmt(channels_last))
    # float32 rounding of x * scale + shift, then a few ulp from expm1
    torch.testing.assert_close(out.double(), ref, rtol=4e-7, atol=2e-7)
    # in place gives the same values
    y = x.clone(memory_format=_fmt(channels_last))
    assert native.bn_elu(y, scale, shift, out=y) is y
    assert torch.equal(y, out)


def test_elu_is_accurate_near_zero_and_saturates(lib):
    z = torch.tensor([-1e-7, -1e-4, -0.01, -0.3, -0.7, -1.0, -5.0, -30.0, -87.5, -200.0, 0.0,
                      1e-7, 3.0, float("inf"), float("-inf")]).view(1, -1, 1, 1)
    out = native.bn_elu(z.contiguous(), torch.ones(z.shape[1]), torch.zeros(z.shape[1]))
    ref = F.elu(z.double())
    torch.testing.assert_close(out.double(), ref, rtol=3e-7, atol=1e-30)
    nan = native.bn_elu(torch.full((1, 1, 1, 3), float("nan")), torch.ones(1), torch.zeros(1))
    assert torch.isnan(nan).all()


@pytest.mark.parametrize("channels_last", [True, False])
def test_elu_backward_and_bn_sums_match_float64(lib, channels_last):
    fmt = _fmt(channels_last)
    shape = (3, 6, 9, 11)
    x = _extreme(shape, seed=1).clamp(-50, 50).contiguous(memory_format=fmt)
    mean = x.mean(dim=(0, 2, 3))
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    a = native.bn_elu(x, scale, shift)
    g = torch.randn(shape).contiguous(memory_format=fmt)
    g_ref = g.double() * torch.where(a > 0, 1.0, a.double() + 1.0)
    sum_g, sum_gx = native.elu_bwd_bn_sums(a, g, x, mean)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-7, atol=1e-7)  # now dL/dz
    assert sum_g.dtype == torch.float64
    torch.testing.assert_close(sum_g, g_ref.sum(dim=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    xc = x.double() - mean.double().view(1, -1, 1, 1)
    torch.testing.assert_close(sum_gx, (g_ref * xc).sum(dim=(0, 2, 3)), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_bn_bwd_apply_matches_float64_and_works_in_place(lib, channels_last):
    fmt = _fmt(channels_last)
    gz = torch.randn(2, 4, 5, 6).contiguous(memory_format=fmt)
    x = torch.randn(2, 4, 5, 6).contiguous(memory_format=fmt)
    a, b, d, mean = (torch.randn(4) for _ in range(4))
    v = lambda t: t.double().view(1, -1, 1, 1)  # noqa: E731
    ref = v(a) * gz.double() + v(b) * (x.double() - v(mean)) + v(d)
    out = native.bn_bwd_apply(gz, x, a, b, d, mean)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    same = native.bn_bwd_apply(gz, x, a, b, d, mean, out=gz)
    assert same is gz
    assert torch.equal(gz, out)


def _gate_ref(y):
    a, g = y.double().chunk(2, dim=1)
    return F.elu(a) * torch.sigmoid(g)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (8, 128, 32, 32)])
def test_gate_forward_and_backward_match_float64(lib, channels_last, shape):
    fmt = _fmt(channels_last)
    y = _extreme(shape, seed=2).contiguous(memory_format=fmt)
    out = native.gate_fwd(y)
    assert out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out.double(), _gate_ref(y), rtol=1e-6, atol=1e-7)
    go = torch.randn(out.shape).contiguous(memory_format=fmt)
    yd = y.double().requires_grad_()
    (_gate_ref(yd) * go.double()).sum().backward()
    grad = native.gate_bwd(y, go)
    assert grad.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(grad.double(), yd.grad, rtol=1e-5, atol=1e-6)


def test_large_tensors_use_threads_and_agree_with_one_thread(lib):
    x = torch.randn(16, 64, 32, 32).contiguous(memory_format=CL)
    assert x.numel() >= native.SERIAL_BELOW
    scale, shift = torch.rand(64) + 0.5, torch.randn(64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        many = native.bn_elu(x, scale, shift)
        s_many = native.elu_bwd_bn_sums(many, torch.ones_like(x), x, x.mean(dim=(0, 2, 3)))
        torch.set_num_threads(1)
        one = native.bn_elu(x, scale, shift)
        s_one = native.elu_bwd_bn_sums(one, torch.ones_like(x), x, x.mean(dim=(0, 2, 3)))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(many, one)  # elementwise: the split between threads cannot matter
    torch.testing.assert_close(s_many, s_one, rtol=1e-12, atol=1e-9)


# -- the layers: native against eager PyTorch ------------------------------------------------
def _bn_conv(seed=0, channels=8, momentum=0.1):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    conv = Conv2d(channels, channels, 3, padding=1)
    return bn, conv


def _run_bn_elu_conv(bn, conv, x, grad):
    x = x.clone().requires_grad_()
    y = bn_elu_conv(x, bn, conv)
    y.backward(grad)
    grads = [x.grad] + [p.grad.clone() for p in (*bn.parameters(), *conv.parameters())]
    return y.detach(), grads


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_elu_conv_native_matches_eager(lib, monkeypatch, channels_last, momentum):
    fmt = _fmt(channels_last)
    x = (torch.randn(4, 8, 12, 12) * 2 + 0.5).contiguous(memory_format=fmt)
    grad = torch.randn(4, 8, 12, 12).contiguous(memory_format=fmt)
    results = {}
    for mode in ("native", "eager"):
        bn, conv = _bn_conv(momentum=momentum)
        bn, conv = bn.to(memory_format=fmt), conv.to(memory_format=fmt)
        if mode == "eager":
            monkeypatch.setattr(native, "supports", lambda *t: False)
        for _ in range(2):  # the running statistics accumulate over two batches
            y, grads = _run_bn_elu_conv(bn, conv, x, grad)
        results[mode] = (y, grads, bn.running_mean.clone(), bn.running_var.clone(),
                         bn.num_batches_tracked.clone())
    (y_n, g_n, m_n, v_n, t_n), (y_e, g_e, m_e, v_e, t_e) = results["native"], results["eager"]
    torch.testing.assert_close(y_n, y_e, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_n, g_e, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m_n, m_e, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(v_n, v_e, rtol=1e-5, atol=1e-6)
    assert int(t_n) == int(t_e) == 2


def test_bn_elu_conv_native_path_is_taken(lib, monkeypatch):
    """Guard against the fast path silently never running: count the kernel calls."""
    calls = []
    real = native.bn_elu
    monkeypatch.setattr(native, "bn_elu", lambda *a, **k: calls.append(1) or real(*a, **k))
    bn, conv = _bn_conv()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    bn_elu_conv(x, bn, conv).sum().backward()
    assert len(calls) == 2  # forward and the recomputation in backward
    bn.eval()
    with torch.no_grad():
        out = bn_elu_conv(x.detach(), bn, conv)
    assert len(calls) == 3  # prediction uses it too
    eager = conv(F.elu(bn(x.detach())))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)


def test_gate_fn_native_matches_eager(lib, monkeypatch):
    y = torch.randn(3, 16, 7, 9).contiguous(memory_format=CL)
    go = torch.randn(3, 8, 7, 9).contiguous(memory_format=CL)
    outs = {}
    for mode in ("native", "eager"):
        if mode == "eager":
            monkeypatch.setattr(native, "supports", lambda *t: False)
        yy = y.clone().requires_grad_()
        out = _GateFn.apply(yy)
        out.backward(go)
        outs[mode] = (out.detach(), yy.grad)
    torch.testing.assert_close(outs["native"][0], outs["eager"][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs["native"][1], outs["eager"][1], rtol=1e-5, atol=1e-6)


def test_resblock_training_step_native_matches_eager(lib, monkeypatch):
    x = torch.randn(4, 16, 16, 16).contiguous(memory_format=CL)
    grads = {}
    for mode in ("native", "eager"):
        if mode == "eager":
            monkeypatch.setattr(native, "supports", lambda *t: False)
        torch.manual_seed(3)
        block = ResBlock(16, gated=True, dropout=0.0).to(memory_format=CL).train()
        xx = x.clone().requires_grad_()
        block(xx).square().mean().backward()
        grads[mode] = [xx.grad] + [p.grad for p in block.parameters()]
    for a, b in zip(grads["native"], grads["eager"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# -- the convolution with a summed bias gradient ---------------------------------------------
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (5, 1, 2)])
def test_conv2d_gradients_equal_the_stock_convolution(channels_last, kernel, stride, padding):
    fmt = _fmt(channels_last)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.randn(6, 4, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ours = conv2d(xs[0], w, b, stride, padding)
    assert ours.grad_fn.name() == "_ConvFnBackward"
    ref = F.conv2d(xs[1], w, b, stride, padding)
    assert torch.equal(ours, ref)
    go = torch.randn_like(ref)
    g_ours = torch.autograd.grad(ours, (xs[0], w, b), go)
    g_ref = torch.autograd.grad(ref, (xs[1], w, b), go)
    for a, r in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: conv2d(*t, stride, padding),
                                    (xs[0][:1, :, :5, :5], w, b))


def test_conv2d_module_keeps_nn_conv2d_names_and_plain_paths():
    conv = Conv2d(3, 5, 3, padding=1)
    assert isinstance(conv, nn.Conv2d)
    assert list(conv.state_dict()) == ["weight", "bias"]
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    assert conv(x).grad_fn.name() == "_ConvFnBackward"
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    nobias = Conv2d(3, 5, 3, padding=1, bias=False)
    assert nobias(x).grad_fn.name() != "_ConvFnBackward"  # nothing to gain without a bias
    same = Conv2d(3, 5, 3, padding="same")
    assert same(x).grad_fn.name() != "_ConvFnBackward"  # string padding: the stock path
