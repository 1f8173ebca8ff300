"""Tests for the SinosoidalCritters generator (spec/usplit.md section 6, Appendix A check 9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musplit.data.synthetic import (
    CHANNEL_PAIRINGS,
    CONNECTOR_FREQUENCY,
    FREQUENCY_RANGES,
    critter_centreline,
    generate_critters,
    rasterise_centreline,
    render_centrelines,
    thickness_kernel,
)
from musplit.errors import ConfigError, InputError

SIZE = 128
A = 8.0
SQRT2 = math.sqrt(2.0)


# ---------------------------------------------------------------------------------------------
# Slow, obviously-correct references
# ---------------------------------------------------------------------------------------------


def brute_render(mask, half: int = 10, parity: bool = False) -> np.ndarray:
    """M * K by adding one shifted copy of the mask per window offset (spec 6.5)."""
    mask = np.asarray(mask, dtype=np.float64)
    n_rows, n_cols = mask.shape
    out = np.zeros_like(mask)
    offsets = range(-half, max(half, 1)) if parity else range(-half, half + 1)
    for dy in offsets:
        for dx in offsets:
            if abs(dy) >= n_rows or abs(dx) >= n_cols:
                continue  # lands entirely outside the image
            weight = 1.0 if dy == dx == 0 else SQRT2 / math.hypot(dy, dx)
            shifted = np.zeros_like(mask)  # a centreline pixel q contributes at q + d
            shifted[max(0, dy) : n_rows + min(0, dy), max(0, dx) : n_cols + min(0, dx)] = mask[
                max(0, -dy) : n_rows - max(0, dy), max(0, -dx) : n_cols - max(0, dx)
            ]
            if parity and (dy, dx) != (0, 0):
                shifted[0, :] = 0.0
                shifted[:, 0] = 0.0
            out += weight * shifted
    return out


def reference_frame(info, frame: int, size: int, parity: bool = False) -> np.ndarray:
    """Re-draw one frame from its per-curve table with a per-sample loop (spec 6.3-6.5)."""
    image = np.zeros((size, size, 2))
    for i in np.flatnonzero(info["frame"] == frame):
        e, c = int(info["edge_length"][i]), int(info["connector_length"][i])
        w1, w2 = info["w1"][i], info["w2"][i]
        if c:
            freqs, lengths = [w1, CONNECTOR_FREQUENCY, w2], [e, c, e]
        else:
            freqs, lengths = [w1, w2], [e, e]
        y = critter_centreline(freqs, lengths, A, generator_parity=parity)
        x = 0.1 * np.arange(y.size)
        if info["mirrored"][i]:
            x = x.max() - x
        y = y - y.min() + info["v_offset"][i]
        x = x + info["h_shift"][i]
        mask = np.zeros((size, size), dtype=bool)
        for xs, ys in zip(x, y, strict=True):
            col, row = int(xs), int(ys)  # int() truncates towards zero
            if 0 <= col < size and 0 <= row < size:
                mask[row, col] = True
        image[..., info["channel"][i]] += brute_render(mask, parity=parity)
    return image


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


def test_shape_dtype_and_values():
    frames = generate_critters(3, size=SIZE, seed=1)
    assert frames.shape == (3, SIZE, SIZE, 2)
    assert frames.dtype == np.float32
    assert np.isfinite(frames).all()
    assert frames.min() >= 0.0
    per_image = frames.transpose(0, 3, 1, 2).reshape(6, -1)
    assert (per_image == 0.0).any(axis=1).all()  # background is exactly 0
    assert (per_image.max(axis=1) >= 1.0).all()  # K(0, 0) = 1 on every centreline pixel


def test_same_seed_same_array_other_seed_differs():
    a = generate_critters(2, size=SIZE, seed=5)
    np.testing.assert_array_equal(a, generate_critters(2, size=SIZE, seed=5))
    assert not np.array_equal(a, generate_critters(2, size=SIZE, seed=6))


def test_frame_does_not_depend_on_n_frames_or_workers():
    four = generate_critters(4, size=SIZE, seed=2)
    np.testing.assert_array_equal(generate_critters(2, size=SIZE, seed=2), four[:2])
    np.testing.assert_array_equal(generate_critters(4, size=SIZE, seed=2, workers=2), four)
    assert not np.array_equal(four[0], four[1])


def test_recipe_statistics():
    n_frames, k = 40, 5
    _, info = generate_critters(n_frames, size=SIZE, seed=11, return_info=True)
    n = n_frames * 2 * k
    assert all(len(col) == n for col in info.values())
    for ch in (0, 1):
        sel = info["channel"] == ch
        pairs = list(zip(info["range1"][sel].tolist(), info["range2"][sel].tolist(), strict=True))
        # Only the channel's own pairings occur, and both of them about half of the time.
        assert set(pairs) == set(CHANNEL_PAIRINGS[ch])
        for pair in CHANNEL_PAIRINGS[ch]:
            assert 70 <= pairs.count(pair) <= 130  # expectation 100, sd 7
        # Every range occurs about equally often in both channels (expectation 100).
        for r in range(4):
            uses = np.count_nonzero(info["range1"][sel] == r) + np.count_nonzero(
                info["range2"][sel] == r
            )
            assert 70 <= uses <= 130
    # Channel 1's pairings never appear in channel 2 and vice versa.
    other = {(0, 3), (1, 2)}
    ch0 = info["channel"] == 0
    assert not other & set(
        zip(info["range1"][ch0].tolist(), info["range2"][ch0].tolist(), strict=True)
    )

    ranges = np.asarray(FREQUENCY_RANGES)
    for key, rkey in (("w1", "range1"), ("w2", "range2")):
        lo, hi = ranges[info[rkey], 0], ranges[info[rkey], 1]
        assert ((info[key] >= lo) & (info[key] < hi)).all()
    assert (info["w1"] < info["w2"]).all()

    assert 0.4 <= info["mirrored"].mean() <= 0.6  # expectation 0.5, sd 0.025
    h = info["h_shift"]
    assert (np.abs(h) <= 0.3 * SIZE).all()
    assert 0.4 <= (h > 0).mean() <= 0.6
    assert np.abs(h).max() > 0.25 * SIZE  # the whole range is used

    # One curve per vertical bucket of the 0.9 W band, at least 2A from the bucket borders.
    band, bucket = 0.9 * SIZE, 0.9 * SIZE / k
    v = info["v_offset"].reshape(n_frames, 2, k)
    lower = np.arange(k) * bucket + A
    assert (v >= lower - 1e-9).all() and (v <= lower + bucket - 2 * A + 1e-9).all()
    assert (np.diff(v, axis=-1) >= 2 * A - 1e-9).all()
    assert v.max() < band


@pytest.mark.parametrize(
    ("connector", "parity"), [(25, False), (0, False), (13, False), (25, True), (0, True)]
)
def test_connector_length_honoured(connector, parity):
    _, info = generate_critters(
        6, size=SIZE, connector=connector, seed=3, generator_parity=parity, return_info=True
    )
    span = SIZE + np.abs(info["h_shift"])  # D = W + |h|
    if parity and connector:
        expected = np.floor(0.1 * span).astype(int)  # the reference law (6.3)
        assert expected.min() >= 12 and expected.max() <= 16  # 12-16 px at W = 128
    else:
        expected = np.full(span.shape, connector)
    np.testing.assert_array_equal(info["connector_length"], expected)
    np.testing.assert_array_equal(info["edge_length"], np.floor((span - expected) / 2).astype(int))


def test_n0_and_n25_share_draws_but_differ():
    n0, info0 = generate_critters(1, size=SIZE, connector=0, seed=4, return_info=True)
    n25, info25 = generate_critters(1, size=SIZE, connector=25, seed=4, return_info=True)
    for key in ("w1", "w2", "h_shift", "v_offset", "mirrored"):
        np.testing.assert_array_equal(info0[key], info25[key])
    assert not np.array_equal(n0, n25)


@pytest.mark.parametrize(("connector", "parity"), [(25, False), (0, False), (25, True)])
def test_frame_equals_per_curve_reference_rendering(connector, parity):
    """Each curve contributes M * K with M binary; curves add (6.5). Per-sample adding would
    make the centreline about ten times brighter and fail this comparison."""
    size = 96
    frames, info = generate_critters(
        2,
        size=size,
        connector=connector,
        seed=7,
        curves_per_channel=2,
        generator_parity=parity,
        return_info=True,
    )
    for f in range(2):
        np.testing.assert_allclose(
            frames[f], reference_frame(info, f, size, parity=parity), rtol=1e-6, atol=1e-5
        )


def test_parity_generation_only_removes_contributions():
    """Same draws (N0: same connector law), so parity rendering differs only in the window and
    the row/column 0 rule, both of which remove contributions."""
    clean = generate_critters(3, size=SIZE, connector=0, seed=9)
    parity = generate_critters(3, size=SIZE, connector=0, seed=9, generator_parity=True)
    assert (parity <= clean + 1e-5).all()
    assert (parity < clean - 0.05).any()
    # Only centre terms (integer curve counts) are left in row 0 and column 0.
    for edge in (parity[:, 0, :, :], parity[:, :, 0, :]):
        np.testing.assert_array_equal(edge, np.round(edge))
    clean_col0 = clean[:, :, 0, :]
    assert (clean_col0 != np.round(clean_col0)).any()


# ---------------------------------------------------------------------------------------------
# Centreline geometry (6.3)
# ---------------------------------------------------------------------------------------------


def test_centreline_n0_is_c1_at_the_join():
    w1, w2, e = 0.061, 2 * math.pi / 10.2, 130  # w2 in R3, period 102 samples
    y = critter_centreline([w1, w2], [e, e], A)
    assert y.size == 2 * (10 * e - 1)
    j = 10 * e - 1  # first sample of the right segment, at the left's last sample
    np.testing.assert_allclose(y[:j], A * np.sin(w1 * 0.1 * np.arange(j)), atol=1e-12)
    np.testing.assert_allclose(y[j], A * np.sin(w1 * 0.1 * j), atol=1e-9)  # C0
    step = 0.1
    left = (3 * y[j] - 4 * y[j - 1] + y[j - 2]) / (2 * step)  # one-sided, second order
    right = (-3 * y[j] + 4 * y[j + 1] - y[j + 2]) / (2 * step)
    assert abs(left - right) < 0.05  # C1 (a kink would be of order A * w2 = 5)
    # Right segment is the w2 wave: period 2 pi / w2.
    period = 102
    np.testing.assert_allclose(y[j + period : j + 3 * period], y[j : j + 2 * period], atol=0.05)


def test_centreline_n25_connector_is_a_slow_ramp():
    w1, w2, e, c = 0.055, 0.31, 120, 25
    y = critter_centreline([w1, CONNECTOR_FREQUENCY, w2], [e, c, e], A)
    assert y.size == 10 * (2 * e + c) - 3  # e + c + e px at 10 samples per px
    start = 10 * e - 1
    ramp = y[start : start + 10 * c]
    slope = np.diff(ramp) / 0.1
    assert np.abs(slope).max() <= A * CONNECTOR_FREQUENCY + 1e-9
    assert np.ptp(ramp) <= A * CONNECTOR_FREQUENCY * c + 1e-9  # about 2 px over 25 px
    # No jumps anywhere: consecutive samples differ by at most the steepest wave's step.
    assert np.abs(np.diff(y)).max() <= 0.1 * A * w2 + 1e-9
    # The wave segments around it are not flat.
    assert np.abs(np.diff(y[:start]) / 0.1).max() > 0.9 * A * w1
    assert np.abs(np.diff(y[start + 10 * c :]) / 0.1).max() > 0.9 * A * w2


def test_centreline_rejects_bad_segments():
    with pytest.raises(InputError):
        critter_centreline([0.06, 0.6], [10])
    with pytest.raises(InputError):
        critter_centreline([0.06, 0.6], [10, 0])
    with pytest.raises(InputError):
        critter_centreline([0.06, -0.6], [10, 10])


# ---------------------------------------------------------------------------------------------
# Rasterisation and rendering (6.4-6.5)
# ---------------------------------------------------------------------------------------------


def test_single_pixel_renders_the_kernel():
    mask = np.zeros((41, 41), dtype=bool)
    mask[20, 20] = True
    out = render_centrelines(mask)
    dy, dx = np.mgrid[-20:21, -20:21]
    inside = (np.abs(dy) <= 10) & (np.abs(dx) <= 10)
    dist = np.hypot(dy, dx)
    expected = np.where(dist == 0, 1.0, SQRT2 / np.where(dist == 0, 1.0, dist))
    np.testing.assert_allclose(out[inside], expected[inside], rtol=1e-6)
    assert out[20, 20] == pytest.approx(1.0)
    assert out[20, 23] == pytest.approx(SQRT2 / 3)
    assert (out[~inside] == 0.0).all()  # exactly zero outside the window
    np.testing.assert_allclose(out[10:31, 10:31], thickness_kernel(), rtol=1e-6)


def test_flat_line_profile_does_not_scale_with_sampling_density():
    size, row = 64, 30
    profiles = []
    for step in (0.1, 0.01):  # 10 and 100 samples per pixel
        x = np.arange(0.0, size, step)
        mask = rasterise_centreline(x, np.full(x.shape, row + 0.5), size)
        assert mask.sum() == size and mask[row].all()
        profiles.append(render_centrelines(mask)[:, size // 2])
    np.testing.assert_array_equal(profiles[0], profiles[1])
    prof = profiles[0]
    dxs = np.arange(-10, 11)
    assert prof[row] == pytest.approx(1 + 2 * SQRT2 * sum(1 / k for k in range(1, 11)), rel=1e-6)
    for d in range(1, 11):
        expected = sum(SQRT2 / math.hypot(d, dx) for dx in dxs)
        assert prof[row + d] == pytest.approx(expected, rel=1e-6)
        assert prof[row - d] == pytest.approx(expected, rel=1e-6)
    assert (prof[row + 11 :] == 0.0).all() and (prof[: row - 10] == 0.0).all()


def test_rasterise_truncates_and_clips():
    mask = rasterise_centreline([-0.5, -1.5, 3.99, 7.2, 2.0], [1.2, 1.0, 2.7, 1.0, 8.0], 8)
    expected = np.zeros((8, 8), dtype=bool)
    expected[1, 0] = True  # trunc(-0.5) = 0 is kept, trunc(-1.5) = -1 is not
    expected[2, 3] = True
    expected[1, 7] = True
    np.testing.assert_array_equal(mask, expected)  # row 8 is outside


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 28),
    cols=st.integers(1, 28),
    half=st.sampled_from([0, 1, 3, 10]),
    parity=st.booleans(),
    seed=st.integers(0, 2**16),
    density=st.floats(0.0, 0.3),
)
def test_render_matches_brute_force(rows, cols, half, parity, seed, density):
    rng = np.random.default_rng(seed)
    counts = (rng.random((rows, cols)) < density) * rng.integers(1, 4, (rows, cols))
    out = render_centrelines(counts, thickness=2 * half + 1, generator_parity=parity)
    ref = brute_render(counts, half=half, parity=parity)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out == 0.0, ref == 0.0)


def test_render_batches_and_adds_curves():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 20, 24)) < 0.05
    together = render_centrelines(masks.sum(axis=0))
    apart = sum(render_centrelines(m) for m in masks)
    np.testing.assert_allclose(together, apart, rtol=1e-6, atol=1e-6)
    batch = render_centrelines(masks)
    assert batch.shape == (3, 20, 24) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[1], render_centrelines(masks[1]), rtol=1e-6)


def test_parity_rendering_quirks():
    mask = np.zeros((32, 32), dtype=bool)
    mask[15, 15] = True
    clean = render_centrelines(mask)
    parity = render_centrelines(mask, generator_parity=True)
    nz_rows = np.flatnonzero(parity.any(axis=1))
    nz_cols = np.flatnonzero(parity.any(axis=0))
    assert (nz_rows.min(), nz_rows.max()) == (5, 24)  # window [-10, 9]
    assert (nz_cols.min(), nz_cols.max()) == (5, 24)
    assert np.flatnonzero(clean.any(axis=1)).tolist() == list(range(5, 26))  # [-10, 10]

    edge = np.zeros((32, 32), dtype=bool)
    edge[0, 5] = edge[6, 0] = edge[3, 3] = True
    clean = render_centrelines(edge)
    parity = render_centrelines(edge, generator_parity=True)
    # Row 0 and column 0 hold only the centre terms in parity mode.
    np.testing.assert_array_equal(parity[0], edge[0].astype(np.float32))
    np.testing.assert_array_equal(parity[:, 0], edge[:, 0].astype(np.float32))
    assert (clean[0, 6:15] > 0).all() and (clean[1:, 0] > 0).any()


def test_render_rejects_non_integer_input():
    with pytest.raises(InputError):
        render_centrelines(np.ones((4, 4)))
    with pytest.raises(InputError):
        render_centrelines(-np.ones((4, 4), dtype=int))
    with pytest.raises(InputError):
        render_centrelines(np.ones(4, dtype=bool))


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_frames": -1},
        {"size": 8},
        {"connector": -1},
        {"connector": SIZE - 1},
        {"seed": -3},
        {"thickness": 20},
        {"amplitude": 0.0},
        {"curves_per_channel": 0},
        {"n_frames": 1.5},
    ],
)
def test_invalid_arguments(kwargs):
    args = {"n_frames": 1, "size": SIZE} | kwargs
    with pytest.raises(ConfigError):
        generate_critters(**args)


def test_zero_frames():
    frames, info = generate_critters(0, size=SIZE, return_info=True)
    assert frames.shape == (0, SIZE, SIZE, 2) and frames.dtype == np.float32
    assert set(info) >= {"frame", "channel", "range1", "range2", "w1", "w2", "h_shift"}
    assert all(len(col) == 0 for col in info.values())


@pytest.mark.parametrize("pairing", ["shared-low", "shared-high"])
def test_easier_pairings(pairing):
    """The variant pairings draw each channel's curves from its own two pairings only; the
    shared segment range occurs in both channels, the other identifies the channel."""
    from musplit.data.synthetic import PAIRINGS

    _, info = generate_critters(20, size=SIZE, seed=3, pairing=pairing, return_info=True)
    shared = 0 if pairing == "shared-low" else 1  # index of the shared segment in the pair
    ident = 1 - shared
    for ch in (0, 1):
        sel = info["channel"] == ch
        pairs = set(zip(info["range1"][sel].tolist(), info["range2"][sel].tolist(), strict=True))
        assert pairs == set(PAIRINGS[pairing][ch])
        identifying = {p[ident] for p in pairs}
        other = {p[ident] for p in PAIRINGS[pairing][1 - ch]}
        assert len(identifying) == 1 and not identifying & other
        assert {p[shared] for p in pairs} == {p[shared] for p in PAIRINGS[pairing][1 - ch]}
    paper = generate_critters(2, size=SIZE, seed=3)
    assert not np.array_equal(generate_critters(2, size=SIZE, seed=3, pairing=pairing), paper)
    with pytest.raises(ConfigError, match="pairing"):
        generate_critters(1, size=SIZE, pairing="xor")
