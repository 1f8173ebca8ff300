"""Tiled prediction (spec/usplit.md 8, Appendix A.7): coverage, stitching, MMSE, units, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from musplit.config import Config
from musplit.data.context import lateral_context
from musplit.data.dataset import tile_corners
from musplit.data.normalize import NormStats
from musplit.errors import ConfigError, InputError
from musplit.models import build
from musplit.predict import (
    Prediction,
    default_grid,
    make_tiling,
    predict_image,
    predict_to_zarr,
)

P = 16
TINY = dict(kind="hvae", lc="lean", filters=8, z_dims=[4, 4], scales=2, patch=P, dropout=0.0)


def config(scales: int = 2, pad: str = "reflect", alignment: str = "exact", **model) -> Config:
    m = {**TINY, "scales": scales, **model}
    return Config.validated({"model": m, "data": {"patch": P, "pad": pad,
                                                  "lc_alignment": alignment}})


def stats(clip=1e6, m_in=0.0, s_in=1.0, m_t=(0.0, 0.0), s_t=(1.0, 1.0)) -> NormStats:
    return NormStats(clip_max=clip, input_mean=m_in, input_std=s_in, target_mean=list(m_t),
                     target_std=list(s_t), alpha=[0.5, 0.5])


def image(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 10, shape).astype(np.float32)


# -- stand-in models ---------------------------------------------------------------------------
class Identity(nn.Module):
    """Scale 0 of its input as the mean of every channel (or scale ``lc`` for channel 1, to
    exercise the lateral context), constant log-variance (spec Appendix A.7)."""

    def __init__(self, channels: int = 2, logvar: float = 0.5, lc: int | None = None):
        super().__init__()
        self.c, self.logvar, self.lc = channels, logvar, lc

    def forward(self, x):
        mu = x[:, :1].expand(-1, self.c, -1, -1)
        if self.lc is not None:
            mu = torch.cat([x[:, :1], x[:, self.lc : self.lc + 1]], 1)
        return (torch.cat([mu, torch.full_like(mu, self.logvar)], 1), None)


class PatchIds(nn.Module):
    """Writes each patch's running number over the whole patch: who wrote which pixel."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def forward(self, x):
        b, _, h, w = x.shape
        ids = torch.arange(self.count, self.count + b, dtype=torch.float32)
        self.count += b
        mu = ids[:, None, None, None].expand(b, 2, h, w)
        return torch.cat([mu, torch.zeros_like(mu)], 1)


class _State:
    def __init__(self, x, k=1):
        self.x, self.k = x, k

    def repeat(self, k):
        return _State(self.x, k)


class Sequence(nn.Module):
    """encode/decode model whose sample j is ``mu = x0 + j**2``, ``l = log(1 + j)``: the MMSE
    statistics are known in closed form, however the samples are chunked."""

    stochastic = True

    def __init__(self):
        super().__init__()
        self.j = 0

    def encode(self, x):
        self.j = 0  # sample numbers restart for every batch of patches
        return _State(x)

    def decode(self, state, *, noise=None, compute_kl=False, sample_mode=None):
        x0 = state.x[:, :1]
        out = []
        for j in range(self.j, self.j + state.k):
            mu = (x0 + j**2).expand(-1, 2, -1, -1)
            out.append(torch.cat([mu, torch.full_like(mu, float(np.log1p(j)))], 1))
        self.j += state.k
        return (torch.cat(out, 0), None)

    def forward(self, x):
        return self.decode(self.encode(x))


# -- coverage ----------------------------------------------------------------------------------
@pytest.mark.parametrize("padding,grid", [("inner", 8), ("inner", 6), ("none", None),
                                          ("outer", 8)])
@pytest.mark.parametrize("shape", [(2, 203, 317), (1, 10, 7)])
def test_every_pixel_written_exactly_once(padding, grid, shape):
    cfg = config()
    model = PatchIds()
    pred = predict_image(model, cfg, stats(), image(*shape), padding=padding, grid=grid,
                         normalized=True, batch_size=37, aleatoric=False)
    t = make_tiling(cfg, padding, grid)
    n, h, w = shape
    rows, cols = -(-h // t.grid), -(-w // t.grid)
    y, x = np.mgrid[0:h, 0:w]
    first = pred.mean.min()  # outer padding probes the model once before the tiles
    expected = first + np.arange(n)[:, None, None] * rows * cols + (y // t.grid) * cols \
        + x // t.grid
    assert model.count - first == n * rows * cols  # one patch per tile, no more
    for ch in range(2):
        np.testing.assert_array_equal(pred.mean[..., ch], expected)


@pytest.mark.parametrize("pad", ["reflect", "zeros"])
@pytest.mark.parametrize("padding,grid", [("inner", 8), ("inner", 16), ("inner", 2),
                                          ("outer", 8), ("none", None)])
def test_identity_model_reproduces_input(pad, padding, grid):
    cfg = config(pad=pad)
    img = image(2, 45, 38)
    img[0, 3, 4] = 50.0  # above the clip
    st = stats(clip=20.0, m_in=3.0, s_in=2.0, m_t=(3.0, 3.0), s_t=(2.0, 2.0))
    pred = predict_image(Identity(), cfg, st, img, padding=padding, grid=grid, batch_size=16)
    clipped = np.minimum(img, 20.0)
    for ch in range(2):
        np.testing.assert_allclose(pred.mean[..., ch], clipped, rtol=1e-6, atol=1e-5)
    norm = predict_image(Identity(), cfg, st, img, padding=padding, grid=grid, normalized=True)
    np.testing.assert_allclose(norm.mean[..., 1], (clipped - 3.0) / 2.0, rtol=1e-6, atol=1e-6)
    assert pred.mean.dtype == np.float32 and pred.mean.flags.c_contiguous
    assert pred.std is None and pred.meta["units"] == "intensity"


def test_small_frame_and_2d_input():
    cfg = config()
    img = image(5, 3)
    pred = predict_image(Identity(), cfg, stats(), img, grid=4)
    assert pred.mean.shape == (1, 5, 3, 2)
    np.testing.assert_allclose(pred.mean[0, ..., 0], img, rtol=1e-6)


@pytest.mark.parametrize("blend", ["linear", "cosine"])
def test_blending_is_a_weighted_average(blend):
    img = image(1, 40, 29)
    pred = predict_image(Identity(), config(), stats(), img, grid=4, blend=blend)
    assert pred.meta["blend"] == blend and pred.meta["blend_width"] == 3
    np.testing.assert_allclose(pred.mean[0, ..., 0], img[0], rtol=1e-5, atol=1e-5)


def test_lateral_context_matches_training_construction():
    # Channel 1 is the coarsest LC scale: tile (r, c) must hold the centre of the LC crop of its
    # patch exactly as training builds it (ContextStack, pad mode, normalisation).
    cfg = config(scales=3, z_dims=[4, 4])
    img = image(1, 40, 48)
    st = stats(m_in=1.0, s_in=2.0)
    pred = predict_image(Identity(lc=2), cfg, st, img, grid=8, normalized=True)
    corners = tile_corners(40, 48, P, 8)
    x = (lateral_context(img[0], corners, P, 3, "reflect") - 1.0) / 2.0
    cols = 48 // 8
    for i, (r, c) in enumerate(corners):
        r0, c0 = r + 4, c + 4
        np.testing.assert_allclose(pred.mean[0, r0 : r0 + 8, c0 : c0 + 8, 1],
                                   x[i, 2, 4:12, 4:12], rtol=1e-6, atol=1e-6)
        assert i // cols == (r0 // 8)


def test_paper_geometry_leaves_remainder_zero():
    img = image(1, 45, 38) + 1.0
    pred = predict_image(Identity(), config(), stats(), img, grid=8, paper_geometry=True)
    assert pred.meta["paper_geometry"] is True
    np.testing.assert_allclose(pred.mean[0, :40, :32, 0], img[0, :40, :32], rtol=1e-6)
    assert np.all(pred.mean[0, 40:] == 0) and np.all(pred.mean[0, :, 32:] == 0)
    assert np.all(pred.aleatoric_std[0, 40:] == 0)
    tiny = predict_image(Identity(), config(), stats(), image(1, 5, 5), grid=8,
                         paper_geometry=True)
    assert np.all(tiny.mean == 0)


# -- MMSE --------------------------------------------------------------------------------------
def test_encoder_once_equals_independent_full_passes():
    cfg = config()
    torch.manual_seed(0)
    model = build(cfg.model)
    st = stats(m_in=5.0, s_in=3.0)
    img = image(1, 32, 32)
    n = 4
    pred = predict_image(model, cfg, st, img, padding="none", samples=n, sample_batch=1,
                         seed=7, normalized=True)
    corners = tile_corners(32, 32, P, P)
    x = torch.from_numpy((lateral_context(img[0], corners, P, 2, "reflect") - 5.0) / 3.0)
    gen = torch.Generator().manual_seed(7)
    model.eval()
    with torch.no_grad():
        passes = torch.stack([model(x, noise=gen).params for _ in range(n)]).numpy()
    mu = passes[:, :, :2]  # (n, 4 tiles, C, P, P)
    frame = mu.reshape(n, 2, 2, 2, P, P).transpose(0, 1, 4, 2, 5, 3).reshape(n, 32, 32, 2)
    np.testing.assert_allclose(pred.mean[0], frame.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred.std[0], frame.std(0), rtol=1e-4, atol=1e-5)
    var = np.exp(passes[:, :, 2:]).mean(0)
    alea = np.sqrt(var).reshape(2, 2, 2, P, P).transpose(0, 3, 1, 4, 2).reshape(32, 32, 2)
    np.testing.assert_allclose(pred.aleatoric_std[0], alea, rtol=1e-5)


def test_sampling_is_seeded_and_mean_mode_is_deterministic():
    cfg = config()
    torch.manual_seed(0)
    model = build(cfg.model).train()
    img = image(1, 24, 20)
    a = predict_image(model, cfg, stats(), img, grid=8, samples=3, seed=1)
    b = predict_image(model, cfg, stats(), img, grid=8, samples=3, seed=1)
    c = predict_image(model, cfg, stats(), img, grid=8, samples=3, seed=2)
    assert model.training  # the caller's mode is restored
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    assert not np.array_equal(a.mean, c.mean)
    assert a.std.min() > 0
    d = predict_image(model, cfg, stats(), img, grid=8, samples=3, sample_mode="mean")
    assert d.std.shape == d.mean.shape and np.all(d.std == 0)
    hae = build(config(kind="hae").model)
    e = predict_image(hae, config(kind="hae"), stats(), img, grid=8, samples=2, keep_samples=2)
    assert np.all(e.std == 0)
    np.testing.assert_array_equal(e.samples[0], e.samples[1])
    np.testing.assert_array_equal(e.samples[0], e.mean)


def test_channels_last_is_only_a_layout():
    cfg = config()
    torch.manual_seed(0)
    model = build(cfg.model)
    img = image(1, 24, 20)
    a = predict_image(model, cfg, stats(), img, grid=8, sample_mode="mean")
    assert all(p.is_contiguous() for p in model.parameters())  # converted back
    b = predict_image(model, cfg, stats(), img, grid=8, sample_mode="mean", channels_last=False)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5, atol=1e-5)
    c = predict_image(model, cfg, stats(), img, grid=8, sample_mode="mean", amp="bf16")
    assert c.mean.dtype == np.float32
    np.testing.assert_allclose(c.mean, a.mean, atol=0.1 * np.abs(a.mean).max())


@pytest.mark.parametrize("sample_batch", [1, 3, None])
def test_running_statistics_and_units(sample_batch):
    # Sample j has mu = x0 + j^2 and l = log(1 + j) (normalised units), whatever the chunking.
    n = 7
    j = np.arange(n, dtype=np.float64)
    st = stats(clip=1e6, m_in=0.0, s_in=1.0, m_t=(10.0, -1.0), s_t=(2.0, 0.5))
    img = image(1, 21, 17)
    kw = dict(grid=8, samples=n, sample_batch=sample_batch, keep_samples=2, batch_size=4)
    norm = predict_image(Sequence(), config(), st, img, normalized=True, **kw)
    np.testing.assert_allclose(norm.mean[0, ..., 0], img[0] + (j**2).mean(), rtol=1e-5)
    np.testing.assert_allclose(norm.std, np.full(norm.std.shape, (j**2).std()), rtol=1e-5)
    np.testing.assert_allclose(norm.aleatoric_std, np.sqrt((1 + j).mean()), rtol=1e-6)
    np.testing.assert_allclose(norm.samples[1, 0, ..., 0], img[0] + 1.0, rtol=1e-6)
    units = predict_image(Sequence(), config(), st, img, **kw)
    for k, (m, s) in enumerate([(10.0, 2.0), (-1.0, 0.5)]):
        np.testing.assert_allclose(units.mean[..., k], norm.mean[..., k] * s + m, rtol=1e-5)
        np.testing.assert_allclose(units.std[..., k], norm.std[..., k] * s, rtol=1e-5)
        np.testing.assert_allclose(units.aleatoric_std[..., k], norm.aleatoric_std[..., k] * s,
                                   rtol=1e-6)
        np.testing.assert_allclose(units.samples[0, ..., k], img * s + m, rtol=1e-5)
    np.testing.assert_allclose(units.total_std ** 2, units.std**2 + units.aleatoric_std**2,
                               rtol=1e-5)


# -- files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pred.ome.tif", "pred.zarr"])
def test_save_and_load_round_trip(tmp_path, name):
    pred = predict_image(Sequence(), config(), stats(m_t=(1.0, 2.0), s_t=(3.0, 4.0)),
                         image(2, 12, 9), grid=8, samples=3, channel_names=["actin", "tub"])
    out = pred.save(tmp_path / name, aleatoric=True)
    assert out == tmp_path / name
    stem = name.split(".")[0]
    sib = tmp_path / name.replace(stem, stem + "_std")
    assert sib.exists() and (tmp_path / name.replace(stem, stem + "_aleatoric_std")).exists()
    back = Prediction.load(out)
    assert back.channel_names == ["actin", "tub"]
    np.testing.assert_array_equal(back.mean, pred.mean)
    np.testing.assert_array_equal(back.std, pred.std)
    np.testing.assert_array_equal(back.aleatoric_std, pred.aleatoric_std)
    assert back.meta["grid"] == 8 and back.meta["samples"] == 3
    assert back.meta["stats"]["target_std"] == [3.0, 4.0]
    # Existing outputs are refused before anything is written.
    with pytest.raises(InputError, match="already exists"):
        pred.save(out)
    other = tmp_path / f"b{name[4:]}"
    _sib = tmp_path / f"b_std{name[4:]}"
    _sib.mkdir() if name.endswith(".zarr") else _sib.write_bytes(b"x")
    with pytest.raises(InputError, match="already exists"):
        pred.save(other)
    assert not other.exists()
    pred.save(out, overwrite=True)
    with pytest.raises(InputError, match="input"):
        pred.save(tmp_path / f"c{name[4:]}", protect=[tmp_path / f"c{name[4:]}"])


def test_predict_to_zarr_equals_in_memory(tmp_path):
    for pad, alignment in [("reflect", "exact"), ("zeros", "exact"), ("reflect", "floor")]:
        cfg = config(scales=3, z_dims=[4, 4], pad=pad, alignment=alignment)
        img = image(2, 150, 170)
        model = Identity(lc=2)
        ref = predict_image(model, cfg, stats(), img, grid=8, normalized=True)
        out = tmp_path / f"{pad}-{alignment}.zarr"
        predict_to_zarr(model, cfg, stats(), img, out, grid=8, block=32, normalized=True,
                        aleatoric=True, batch_size=50)
        back = Prediction.load(out)
        np.testing.assert_allclose(back.mean, ref.mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(back.aleatoric_std, ref.aleatoric_std, rtol=1e-6)
        assert back.channel_names == ["channel_0", "channel_1"]
        assert back.meta["block"] == 32
    with pytest.raises(InputError, match="already exists"):
        predict_to_zarr(model, cfg, stats(), img, out, grid=8, block=32)
    paper = predict_to_zarr(Identity(), config(), stats(), img[:1, :45, :38] + 1,
                            tmp_path / "paper.zarr", grid=8, paper_geometry=True, block=16)
    m = Prediction.load(paper).mean
    assert np.all(m[0, 40:] == 0) and np.all(m[0, :, 32:] == 0) and np.all(m[0, :40, :32] > 0)
    seq = predict_to_zarr(Sequence(), config(), stats(), img[:1, :30, :20],
                          tmp_path / "seq.zarr", grid=8, samples=3, block=16)
    back = Prediction.load(seq)
    np.testing.assert_allclose(back.std, np.std([0.0, 1.0, 4.0]), rtol=1e-5)


# -- geometry defaults and bad input -----------------------------------------------------------
def test_default_grid_and_tiling():
    assert default_grid(Config.validated({"model": {"lc": "lean"}})) == 32
    assert default_grid(Config.validated({"model": {"lc": "deep"}})) == 64
    cfg = Config.validated({"model": {"lc": "lean"}, "predict": {"grid": 16}})
    assert make_tiling(cfg).grid == 16
    t = make_tiling(cfg, "outer", 16)
    assert (t.patch, t.grid, t.margin) == (112, 64, 24)
    assert make_tiling(cfg, "none").grid == 64
    assert make_tiling(cfg, "none", 16).grid == 64  # a config's grid does not break "none"


def test_outer_padding_refused_by_a_model_that_cannot_take_it():
    class Fixed(Identity):
        def forward(self, x):
            if x.shape[-1] != P:
                raise RuntimeError("size mismatch")
            return super().forward(x)

    with pytest.raises(InputError, match="cannot take 24x24"):
        predict_image(Fixed(), config(), stats(), image(1, 20, 20), padding="outer", grid=8)


@pytest.mark.parametrize("kwargs,match", [
    (dict(image=np.full((1, 20, 20), np.nan, np.float32)), "NaN"),
    (dict(image=np.zeros((1, 2, 20, 20), np.float32)), "shape"),
    (dict(image=np.zeros((20, 20), bool)), "dtype"),
    (dict(grid=7), "grid 7"),
    (dict(grid=18), "grid 18"),
    (dict(grid=0), "grid"),
    (dict(samples=0), "samples"),
    (dict(batch_size=0), "batch_size"),
    (dict(padding="sideways"), "padding"),
    (dict(channel_names=["a"]), "channel names"),
    (dict(paper_geometry=True, blend="linear"), "blend"),
    (dict(blend="linear", blend_width=9, grid=8), "blend_width"),
    (dict(input_scale=-1.0), "input_scale"),
    (dict(keep_samples=3, samples=2), "keep_samples"),
    (dict(sample_mode="median"), "sample_mode"),
    (dict(amp="fp8"), "amp"),
])
def test_bad_input_is_one_clear_error(kwargs, match):
    kw = dict(image=image(1, 20, 20))
    kw.update(kwargs)
    img = kw.pop("image")
    with pytest.raises(InputError, match=match):
        predict_image(Identity(), config(), stats(), img, **kw)


def test_mismatched_statistics_and_model_output():
    with pytest.raises(ConfigError, match="statistics"):
        predict_image(Identity(), config(), None, image(1, 20, 20))
    with pytest.raises(ConfigError, match="model returned"):
        predict_image(Identity(channels=3), config(), stats(), image(1, 20, 20))


def test_progress_bar_and_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    predict_image(Identity(), config(), stats(), image(1, 20, 20), progress=True)
    assert torch.equal(torch.rand(1), expected)


def test_reduced_precision_is_checked_against_the_hardware(monkeypatch, caplog):
    from musplit import predict as mp

    assert mp.fast_precision(None) and mp.fast_precision("fp32")
    assert mp.fast_precision("fp16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # before Ampere
    assert not mp.fast_precision("bf16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert mp.fast_precision("bf16", "cuda")
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported",
                 "_is_amx_fp16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert not mp.fast_precision("bf16") and not mp.fast_precision("fp16")
    with caplog.at_level("WARNING", logger="musplit"):
        out = predict_image(Identity(), config(), stats(), image(1, 20, 20), grid=8, amp="bf16")
    assert "emulated" in caplog.text and out.meta["precision"] == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert mp.fast_precision("bf16") and not mp.fast_precision("fp16")
    with pytest.raises(InputError, match="amp"):
        predict_image(Identity(), config(), stats(), image(1, 20, 20), grid=8, amp="int8")


def test_predict_to_zarr_memory_is_set_by_the_block_not_the_frame(tmp_path):
    """Ecosystem PRED-2: predicting a frame read lazily from disk into Zarr needs memory set
    by the block, not by the frame. tracemalloc sees every NumPy allocation (the pipeline's
    buffers, the decoded chunks); a frame with 4x the pixels must not raise the streamed peak,
    while the in-memory path (the control) grows with the frame."""
    import tracemalloc

    from musplit.data.io import write_zarr

    cfg = config(scales=3, pad="zeros")
    kw = dict(padding="none", batch_size=64)
    # module imports (zarr, tifffile) and first-call caches happen here, not while tracing
    predict_to_zarr(Identity(lc=2), cfg, stats(), image(1, 64, 64), tmp_path / "w.zarr",
                    block=128, **kw)

    def peak(fn, *args, **kwargs):
        tracemalloc.start()
        try:
            out = fn(Identity(lc=2), cfg, stats(), *args, **kwargs, **kw)
            return tracemalloc.get_traced_memory()[1], out
        finally:
            tracemalloc.stop()

    streamed, in_memory = {}, {}
    for side in (768, 1536):
        img = image(1, side, side)
        src = write_zarr(tmp_path / f"in{side}.zarr", img[..., None], "SYXC",
                         chunks=(1, 256, 256, 1))
        streamed[side], path = peak(predict_to_zarr, src, tmp_path / f"s{side}.zarr",
                                    block=128)
        in_memory[side], ref = peak(predict_image, img)
        np.testing.assert_allclose(Prediction.load(path).mean, ref.mean, rtol=1e-6)
        assert in_memory[side] > 2 * img.nbytes  # the whole mean and aleatoric std
    assert in_memory[1536] > 3.5 * in_memory[768]
    assert streamed[1536] < 1.25 * streamed[768]
    assert streamed[1536] < in_memory[1536] / 8


# -- issue 15: what the input's file says is kept in the outputs -------------------------------
def _named_checkpoint(path):
    """A tiny deterministic (HAE) checkpoint whose channels are named nucleus and actin."""
    from musplit.checkpoint import save_checkpoint

    cfg = Config.validated({
        "model": {"kind": "hae", "lc": "lean", "filters": 8, "z_dims": [4, 4], "scales": 2,
                  "patch": P, "dropout": 0.0},
        "data": {"patch": P, "scales": 2, "pad": "reflect"},
        "predict": {"grid": 8, "batch_size": 16}})
    torch.manual_seed(0)
    model = build(cfg.model).eval()
    st = stats(clip=5000.0, m_in=500.0, s_in=300.0, m_t=(500.0, 500.0), s_t=(300.0, 300.0))
    return save_checkpoint(path, state_dict=model.state_dict(),
                           config=cfg.model_dump(mode="json"), stats=st.to_dict(),
                           extra={"channel_names": ["nucleus", "actin"]})


@pytest.mark.parametrize("out_name", ["pred.ome.tif", "pred.zarr"])
def test_cli_predict_keeps_pixel_size_names_and_float32_units(tmp_path, capsys, out_name):
    import tifffile

    from musplit.cli import main
    from musplit.data.io import open_image
    from musplit.splitter import Splitter

    ckpt = _named_checkpoint(tmp_path / "m.ckpt")
    raw = np.random.default_rng(4).integers(0, 1200, (2, 40, 36)).astype(np.uint16)
    inp = tmp_path / "in.ome.tif"
    tifffile.imwrite(inp, raw, ome=True, photometric="minisblack",
                     metadata={"axes": "TYX", "PhysicalSizeX": 0.0775, "PhysicalSizeY": 0.0775,
                               "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    out = tmp_path / out_name
    code = main(["predict", str(ckpt), str(inp), "--out", str(out), "--samples", "2", "--std"])
    assert code == 0, capsys.readouterr().err
    for path in (out, out.with_name(out_name.replace("pred", "pred_std"))):  # mean and std
        src = open_image(path)
        assert src.pixel_size == pytest.approx((0.0775, 0.0775)), path
        assert src.channel_names == ["nucleus", "actin"] and src.dtype == np.float32
        assert src.canonical_shape == (2, 40, 36, 2)
    back = Prediction.load(out)
    assert back.pixel_size == pytest.approx((0.0775, 0.0775))
    # Integer input: float32 output in the input's intensity units, equal to predicting the
    # same values given as float32 (the HAE is deterministic).
    ref = Splitter.load(ckpt).predict(raw.astype(np.float32), samples=1)
    assert back.mean.dtype == np.float32
    np.testing.assert_allclose(back.mean, ref.mean, rtol=1e-4, atol=1e-2)
    assert 0 < back.mean.mean() < 5000  # intensity units, not normalised ones


def test_splitter_takes_the_pixel_size_of_an_image_source(tmp_path):
    from musplit.data.io import open_image, write_tiff
    from musplit.splitter import Splitter

    s = Splitter.load(_named_checkpoint(tmp_path / "m.ckpt"))
    img = (np.random.default_rng(5).random((1, 24, 20)) * 1000).astype(np.uint16)
    path = write_tiff(tmp_path / "in.ome.tif", img[..., None], pixel_size=(0.2, 0.1))
    src = open_image(path)
    pred = s.predict(src)
    assert pred.pixel_size == pytest.approx((0.2, 0.1))
    np.testing.assert_allclose(pred.mean, s.predict(img.astype(np.float32)).mean, rtol=1e-5)
    assert s.predict(img, pixel_size=(0.3, 0.3)).pixel_size == (0.3, 0.3)
    assert s.predict(img).pixel_size is None
    z = s.predict_to_zarr(src, tmp_path / "o.zarr")
    assert open_image(z).pixel_size == pytest.approx((0.2, 0.1))
    z2 = s.predict_to_zarr(img.astype(np.float32), tmp_path / "o2.zarr", pixel_size=(0.5, 0.5))
    assert open_image(z2).pixel_size == pytest.approx((0.5, 0.5))
    with pytest.raises(InputError, match="pixel_size"):
        s.predict(img, pixel_size=(0, 1))


@pytest.mark.parametrize("input_is_sum", [False, True])
def test_consistent_prediction_adds_up_to_the_input(input_is_sum):
    # A random-weight HVAE is far from consistent; conditioned on the mix its channels add up
    # to the (clipped) input exactly, and the surer channel keeps its prediction.
    torch.manual_seed(0)
    cfg = config()
    st = NormStats(clip_max=[8.0, 9.0], input_mean=5.0, input_std=3.0, target_mean=[2.0, 4.0],
                   target_std=[1.5, 2.5], alpha=[0.5, 0.5], input_is_sum=input_is_sum)
    model = build(cfg.model).eval()
    img = image(2, 40, 36, seed=3)
    free = predict_image(model, cfg, st, img, samples=3, seed=1)
    w = np.ones(2) if input_is_sum else np.array([0.5, 0.5])
    clip = 17.0 if input_is_sum else 9.0
    gap = np.abs((free.mean * w).sum(-1) - np.minimum(img, clip))
    assert gap.mean() > 0.1
    cfg_c = cfg.updated({"predict": {"consistent": True}})
    cons = predict_image(model, cfg_c, st, img, samples=3, seed=1)
    np.testing.assert_allclose((cons.mean * w).sum(-1), np.minimum(img, clip), atol=1e-3)
    assert cons.meta["consistent"] is True and free.meta["consistent"] is False
    # the correction is the Gaussian conditional: each channel moves by b_c v_c / sum b^2 v
    assert np.all(cons.aleatoric_std <= free.aleatoric_std + 1e-5)


class _SureOfChannel0(nn.Module):
    """Channel 0 predicted at 0 with tiny variance, channel 1 at 0 with a large one."""

    def forward(self, x):
        b, _, h, w = x.shape
        mu = torch.zeros(b, 2, h, w)
        ell = torch.stack([torch.full((b, h, w), -8.0), torch.full((b, h, w), 2.0)], 1)
        return (torch.cat([mu, ell], 1), None)


def test_consistent_prediction_gives_the_residual_to_the_unsure_channel():
    cfg = config().updated({"predict": {"consistent": True}})
    st = stats()
    img = image(1, 32, 32)
    pred = predict_image(_SureOfChannel0(), cfg, st, img)
    np.testing.assert_allclose(pred.mean[..., 0], 0.0, atol=1e-3)
    np.testing.assert_allclose(pred.mean[..., 1], 2 * img, rtol=1e-4, atol=1e-3)


# -- brightness: an image at another global scale than the training mixes -----------------------
def _bright_stats(q999=10.0, input_is_sum=False, q99=None):
    st = stats(m_in=5.0, s_in=3.0, m_t=(2.0, 4.0), s_t=(1.5, 2.5))
    st.input_is_sum = input_is_sum
    st.extra = {"input_q999": q999} if q99 is None else {"input_q99": q99, "input_q999": q999}
    return st


def test_compute_stats_records_the_training_brightness():
    from musplit.data.normalize import compute_stats

    t = np.random.default_rng(0).uniform(0, 10, (3, 32, 32, 2)).astype(np.float32)
    mean_mix = compute_stats(t, quantile=1.0)
    sum_mix = compute_stats(t, quantile=1.0, input_is_sum=True)
    assert mean_mix.extra["input_q999"] == pytest.approx(np.quantile(t.mean(-1), 0.999), rel=1e-3)
    assert sum_mix.extra["input_q999"] == pytest.approx(np.quantile(t.sum(-1), 0.999), rel=1e-3)
    assert sum_mix.extra["input_q99"] == pytest.approx(np.quantile(t.sum(-1), 0.99), rel=1e-3)
    assert NormStats.from_dict(sum_mix.to_dict()).extra == sum_mix.extra


def test_an_image_at_another_brightness_is_refused_with_the_reason():
    cfg = config()
    img = image(1, 32, 32)  # 99.9th percentile ~10, as the training mixes
    predict_image(Identity(), cfg, _bright_stats(), img)  # within 2x: predicted as it is
    with pytest.raises(InputError, match=r"2\.99x brighter than the mixes.*--brightness match"):
        predict_image(Identity(), cfg, _bright_stats(), img * 3)
    with pytest.raises(InputError, match=r"[34]\.\d\dx dimmer"):
        predict_image(Identity(), cfg, _bright_stats(), img / 4)
    # the classic mistake: trained on the mean of 2 channels, given their sum
    with pytest.raises(InputError, match="trained on the mean of its 2 channels.*sum"):
        predict_image(Identity(), cfg, _bright_stats(), img * 2.05)
    # a model trained on sums gets no such hint
    with pytest.raises(InputError) as e:
        predict_image(Identity(), cfg, _bright_stats(input_is_sum=True), img * 2.05)
    assert "mean of its" not in str(e.value)
    # an empty image, "off", and an old checkpoint without the record go on
    predict_image(Identity(), cfg, _bright_stats(), np.zeros((1, 32, 32), np.float32))
    predict_image(Identity(), cfg, _bright_stats(), img * 3, brightness="off")
    predict_image(Identity(), cfg, stats(), img * 3)


def test_sparse_foci_elsewhere_are_content_not_brightness():
    # Training mixes with a few bright foci: their 99.9th percentile is set by the foci, the
    # 99th by the cells. An image of the same sample with fewer foci has a much lower 99.9th
    # percentile but the same 99th: it is predicted, not refused. Scaled 10x, both move beyond
    # 2x (the 99.9th to 2.5x): refused. Scaled 6x, only the 99th does: predicted.
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 10, (1, 64, 64)).astype(np.float32)
    st = _bright_stats(q999=40.0, q99=np.quantile(img, 0.99))
    predict_image(Identity(), config(), st, img)
    with pytest.raises(InputError, match=r"99th percentile .* 99\.9th percentile"):
        predict_image(Identity(), config(), st, img * 10)
    predict_image(Identity(), config(), st, img * 6)


def test_the_brightness_sample_covers_the_frame():
    from musplit.predict import _sample_pixels

    frames = np.zeros((1, 600, 600), np.float32)
    frames[0, 300:303, 450:453] = 1.0  # one small focus, away from any fixed window grid
    whole = _sample_pixels(lambda i, ys, xs: frames[i, ys, xs], 1, 600, 600)
    assert whole.size == 600 * 600 and whole.max() == 1.0
    # a frame beyond the budget is sampled by evenly spread windows, within the budget
    part = _sample_pixels(lambda i, ys, xs: frames[i, ys, xs], 1, 600, 600, budget=100_000)
    assert 50_000 <= part.size <= 100_000


def test_brightness_match_rescales_and_returns_the_image_units():
    # A linear model (the identity): matching divides the input by 3 and multiplies the
    # channels back, so the output equals the unmatched prediction of the bright image.
    cfg = config()
    img = image(1, 32, 32) * 3
    st = stats()
    st.extra = {"input_q999": 10.0}
    off = predict_image(Identity(), cfg, st, img, brightness="off")
    cfg_m = cfg.updated({"predict": {"brightness": "match"}})
    matched = predict_image(Identity(), cfg_m, st, img)
    f = matched.meta["brightness_factor"]
    assert f == pytest.approx(1 / 3, rel=0.05)
    np.testing.assert_allclose(matched.mean, off.mean, rtol=1e-4, atol=1e-4)
    assert off.meta["brightness_factor"] == 1.0


def test_brightness_check_in_the_streaming_path(tmp_path):
    cfg = config()
    with pytest.raises(InputError, match="brighter"):
        predict_to_zarr(Identity(), cfg, _bright_stats(), image(1, 32, 32) * 3,
                        tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
    out = predict_to_zarr(Identity(), cfg, _bright_stats(), image(1, 32, 32) * 3,
                          tmp_path / "o.zarr", brightness="match")
    assert out.exists()
