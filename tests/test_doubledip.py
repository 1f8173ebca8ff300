"""Double-DIP, the unsupervised baseline (spec 10.5, 9.6)."""

import json

import numpy as np
import pytest
import tifffile
import torch
from scipy.ndimage import gaussian_filter

from musplit.cli import main
from musplit.data.io import open_image
from musplit.doubledip import (
    SkipGenerator,
    _dihedral,
    exclusion_loss,
    match_layers,
    random_crops,
    separate,
)
from musplit.errors import InputError


def two_structures(n: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth, slowly varying structure and a few thin vertical filaments, (n, n, 2)."""
    rng = np.random.default_rng(seed)
    _, xx = np.mgrid[:n, :n].astype(np.float64)
    smooth = gaussian_filter(rng.random((n, n)), 12)
    lines = sum(np.exp(-((xx - c) ** 2) / 2) for c in rng.uniform(4, n - 4, 4))
    out = np.stack([smooth, lines], axis=-1)
    out -= out.min(axis=(0, 1))
    return out / out.max(axis=(0, 1))


def slow_exclusion(g1, g2, levels=3):
    """Spec 10.5 step 3, term by term."""
    gx, gy = [], []
    for level in range(levels):
        if level:
            g1, g2 = torch.nn.functional.avg_pool2d(g1, 2), torch.nn.functional.avg_pool2d(g2, 2)
        for store, (d1, d2) in ((gx, (g1[..., 1:, :] - g1[..., :-1, :],
                                      g2[..., 1:, :] - g2[..., :-1, :])),
                                (gy, (g1[..., 1:] - g1[..., :-1], g2[..., 1:] - g2[..., :-1]))):
            s1, s2 = torch.sigmoid(d1) * 2 - 1, torch.sigmoid(d2) * 2 - 1
            store.append(torch.mean(s1**2 * s2**2) ** 0.25)
    return (sum(gx) / levels + sum(gy) / levels) / 2


def test_exclusion_loss():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 1, 32, 32, generator=g), torch.rand(1, 1, 32, 32, generator=g)
    torch.testing.assert_close(exclusion_loss(a, b), slow_exclusion(a, b))
    torch.testing.assert_close(exclusion_loss(a, b), exclusion_loss(b, a))
    assert exclusion_loss(a, torch.full_like(b, 0.3)) == 0  # nothing in common with a constant
    # horizontal and vertical stripes have no gradient direction in common
    y = torch.arange(32.0)
    rows, cols = torch.sin(y)[:, None].expand(32, 32), torch.sin(y)[None, :].expand(32, 32)
    assert exclusion_loss(rows[None, None], cols[None, None]) == 0
    assert exclusion_loss(rows[None, None], rows[None, None]) > 0.1


def test_generator_and_transforms():
    torch.manual_seed(0)
    net = SkipGenerator()
    out = net(torch.rand(1, 3, 96, 128) * 0.1)
    assert out.shape == (1, 1, 96, 128) and 0 < out.min() and out.max() < 1
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    seen = {tuple(_dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(seen) == 8 and torch.equal(_dihedral(x, 0), x)


def test_separate_is_seeded_and_leaves_the_global_rng_alone():
    x = two_structures(96).mean(axis=-1)
    state = torch.random.get_rng_state()
    a = separate(x, iterations=5, seed=5, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)
    b = separate(x, iterations=5, seed=5, device="cpu")
    c = separate(x, iterations=5, seed=6, device="cpu")
    np.testing.assert_array_equal(a.layers, b.layers)
    assert not np.array_equal(a.layers, c.layers)
    assert a.layers.shape == (96, 96, 2) and a.alpha == 0.5
    # step 2 saw a transformed crop; steps 0, 1, 3 and the last did not and are candidates
    assert len(a.history) == 4 and a.step != 2 and a.psnr == max(a.history)
    # the layers are in the crop's units: their alpha-mix is the reconstruction
    assert x.min() <= a.layers.min() and a.layers.max() <= x.min() + 2 * np.ptp(x)
    learned = separate(x, iterations=3, seed=5, device="cpu", mix="learned", lr=0.05)
    assert learned.alpha != 0.5


@pytest.mark.parametrize("crop,match", [
    (np.zeros((96, 96)), "constant"),
    (np.ones((100, 96)), "multiples of 32"),
    (np.ones((64, 64)), "at least 96"),
    (np.ones((96, 96, 2)), "2-D"),
])
def test_separate_refuses_bad_crops(crop, match):
    with pytest.raises(InputError, match=match):
        separate(crop, iterations=1)


def test_double_dip_pulls_one_structure_out_of_the_mix():
    """A fixed seed and a few hundred iterations (about 10 s) pull one structure out of its mix
    with the other: the recovered layer follows that structure more closely than the mix does,
    and tells the two apart, following its own structure far more than the other, where the
    mix follows both equally (correlations 0.74 and 0.75). Neither a mean PSNR nor a fixed
    correlation margin is a stable criterion at 200 iterations: the result moves with the
    seed and with the CPU's vector instructions (measured own/other correlations 0.82/0.20
    and 0.80/0.32 for seeds 0 and 1 on an AVX2 machine, 0.88-0.94 for the own structure on
    another)."""
    t = two_structures(96, seed=0)
    x = t.mean(axis=-1)
    res = separate(x, iterations=200, lr=0.01, seed=0, device="cpu")
    layers, _ = match_layers(t, res.layers)

    def corr(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    k = max(range(2), key=lambda j: corr(layers[..., j], t[..., j]))
    own, other = corr(layers[..., k], t[..., k]), corr(layers[..., k], t[..., 1 - k])
    mix_own, mix_other = corr(x, t[..., k]), corr(x, t[..., 1 - k])
    assert abs(mix_own - mix_other) < 0.05  # the mix favours neither structure
    assert own > mix_own, (own, mix_own)
    assert own - other > 0.3, (own, other)


def test_match_layers_resolves_the_order():
    t = two_structures(96)
    layers, perm = match_layers(t, t[..., ::-1] * 3 + 1)
    assert perm == [1, 0]
    np.testing.assert_allclose(layers, t * 3 + 1)


def test_random_crops():
    c = random_crops(3, 200, 150, 96, per_frame=2, seed=1)
    assert c.shape == (6, 3) and c[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert (c[:, 1] <= 200 - 96).all() and (c[:, 2] <= 150 - 96).all() and (c >= 0).all()
    np.testing.assert_array_equal(c, random_crops(3, 200, 150, 96, per_frame=2, seed=1))
    with pytest.raises(InputError, match="--crop 128"):
        random_crops(1, 150, 130, 256)


def test_cli_double_dip(tmp_path, capsys):
    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    stack = np.stack([two_structures(96, s) for s in range(2)]).astype(np.float32)
    stack = np.pad(stack, ((0, 0), (0, 0), (0, 20), (0, 0)))  # 2 frames of 96 x 116
    src = tmp_path / "pair.tif"
    tifffile.imwrite(src, stack, metadata={"axes": "QYXC"})  # frames, y, x, channels
    before = src.read_bytes()
    out = tmp_path / "dd.tif"
    metrics = tmp_path / "dd.json"
    code, text, err = run("double-dip", src, "--axes", "SYXC", "--mix-channels", "0,1",
                          "--crop", "96", "--iterations", "2", "--out", out,
                          "--metrics", metrics)
    assert code == 0, err
    pred = open_image(out).read()
    assert pred.shape == (2, 96, 96, 2) and np.isfinite(pred).all()
    assert "RI-PSNR" in text
    assert json.loads(metrics.read_text())["frames"] == 2
    assert src.read_bytes() == before

    # one superimposed channel, no ground truth
    mix = tmp_path / "mix.tif"
    tifffile.imwrite(mix, stack.mean(-1), metadata={"axes": "QYX"})
    code, _, err = run("double-dip", mix, "--axes", "SYX", "--crop", "96", "--iterations",
                       "1", "--frames", "1", "--out", tmp_path / "one.tif")
    assert code == 0, err
    assert open_image(tmp_path / "one.tif").read().shape == (1, 96, 96, 2)

    for args, words in [
        (["--out", out], "already exists"),  # never overwritten without --overwrite
        (["--out", mix, "--overwrite"], "refusing to write"),  # never the input
        (["--out", tmp_path / "x.tif", "--crop", "100"], "multiple of 32"),
        (["--out", tmp_path / "x.tif", "--crop", "128"], "does not fit"),
        (["--out", tmp_path / "x.tif", "--frames", "5"], "out of range"),
    ]:
        code, _, err = run("double-dip", mix, "--axes", "SYX", "--iterations", "1",
                           "--crop", "96", *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run("double-dip", src, "--axes", "SYXC", "--out", tmp_path / "y.tif")
    assert code == 2 and "2 channels" in err
