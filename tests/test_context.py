"""Lateral context: exactness against the slow, obviously-correct window route (spec 5.5-5.7)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.transform import resize

from musplit.data.context import ContextStack, apply_d4, halve, lateral_context, pyramid
from musplit.errors import InputError


# -- slow references, written from the spec's words ------------------------------------------
def skimage_halve(x: np.ndarray) -> np.ndarray:
    """The spec's halving step: skimage resize at factor 2 with its defaults (float64)."""
    x = x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2]
    return resize(x, (x.shape[0] // 2, x.shape[1] // 2), order=1, anti_aliasing=True,
                  mode="reflect")


def padded_cut(image: np.ndarray, top: int, left: int, size: int, pad: str) -> np.ndarray:
    """``size x size`` full-resolution window at (top, left) of the image extended by ``pad``."""
    h, w = image.shape
    before = (max(0, -top), max(0, -left))
    after = (max(0, top + size - h), max(0, left + size - w))
    mode = "reflect" if pad == "reflect" else "constant"
    big = np.pad(image.astype(np.float64), list(zip(before, after, strict=True)), mode=mode)
    r, c = top + before[0], left + before[1]
    return big[r : r + size, c : c + size]


def window_route(image, corner, patch, scales, pad) -> np.ndarray:
    """Spec 5.6 normative construction: pad once, halve S-1 times, take the centres."""
    margin = 2**scales
    side = patch * 2 ** (scales - 1) + 2 * margin
    centre = np.asarray(corner) + patch // 2
    top, left = centre - side // 2
    level = padded_cut(image, int(top), int(left), side, pad)
    out = []
    for s in range(scales):
        if s:
            level = skimage_halve(level)
        a = (level.shape[0] - patch) // 2
        out.append(level[a : a + patch, a : a + patch])
    return np.stack(out)


def floor_route(image, corner, patch, scales, pad) -> np.ndarray:
    """The reference rule (spec 5.6): c_s = floor(c_{s-1}/2) on the whole-frame pyramid."""
    level = image.astype(np.float64)
    c = np.asarray(corner) + patch // 2
    out = []
    for s in range(scales):
        if s:
            level = skimage_halve(level)
            c = c // 2
        out.append(padded_cut(level, int(c[0]) - patch // 2, int(c[1]) - patch // 2, patch, pad))
    return np.stack(out)


def rand_image(h, w, seed):
    return np.random.default_rng(seed).random((h, w)).astype(np.float32)


# -- exact lateral context -------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(40, 90),
    w=st.integers(40, 90),
    patch=st.sampled_from([8, 16]),
    scales=st.integers(1, 4),
    pad=st.sampled_from(["reflect", "zeros"]),
    seed=st.integers(0, 2**31),
    corners=st.lists(st.tuples(st.integers(-400, 400), st.integers(-400, 400)), min_size=1,
                     max_size=3),
    near=st.lists(st.tuples(st.integers(-20, 20), st.integers(-20, 20)), min_size=1, max_size=3),
)
def test_exact_matches_window_route(h, w, patch, scales, pad, seed, corners, near):
    image = rand_image(h, w, seed)
    # Corners anywhere (far outside included) plus corners near the four frame corners.
    anchors = [(0, 0), (h - patch, 0), (0, w - patch), (h - patch, w - patch)]
    extra = [(a[0] + d[0], a[1] + d[1]) for a, d in zip(anchors, near, strict=False)]
    cs = np.array(list(corners) + extra)
    got = lateral_context(image, cs, patch, scales, pad)
    assert got.shape == (len(cs), scales, patch, patch) and got.dtype == np.float32
    for k, c in enumerate(cs):
        np.testing.assert_allclose(got[k], window_route(image, c, patch, scales, pad), atol=2e-6)


@pytest.mark.parametrize("shape", [(1, 9), (2, 2), (3, 5), (7, 1)])
@pytest.mark.parametrize("pad", ["reflect", "zeros"])
def test_exact_on_frames_smaller_than_the_patch(shape, pad):
    # Tiled prediction must work on frames smaller than one patch (spec 8.3).
    image = rand_image(*shape, seed=3)
    cs = np.array([[0, 0], [-5, 3], [-40, -40], [17, -2]])
    got = lateral_context(image, cs, 8, 4, pad)
    for k, c in enumerate(cs):
        np.testing.assert_allclose(got[k], window_route(image, c, 8, 4, pad), atol=2e-6)


def test_scale0_is_the_padded_primary_crop_and_zeros_far_away_are_zero():
    image = rand_image(50, 60, seed=1)
    cs = np.array([[3, 7], [-10, 55], [500, -500]])
    for pad in ("reflect", "zeros"):
        got = lateral_context(image, cs, 16, 3, pad)
        for k, c in enumerate(cs):
            np.testing.assert_array_equal(got[k, 0], padded_cut(image, *c, 16, pad))
    far = lateral_context(image, [[500, -500]], 16, 3, "zeros")
    assert not far.any()


def test_reflect_context_is_periodic_and_preserves_constants():
    # NumPy reflect is periodic with period 2(n-1); the context of shifted corners must agree.
    image = rand_image(41, 37, seed=2)
    c = np.array([[5, -9]])
    shifted = c + [[2 * 40 * 3, -2 * 36 * 5]]
    np.testing.assert_allclose(
        lateral_context(image, shifted, 8, 4), lateral_context(image, c, 8, 4), atol=1e-6
    )
    flat = lateral_context(np.full((30, 30), 2.5, np.float32), [[-100, 7]], 8, 4)
    np.testing.assert_allclose(flat, 2.5, atol=1e-5)


# -- the pyramid and its relation to the exact crops -----------------------------------------
@pytest.mark.parametrize("shape", [(64, 64), (90, 67), (33, 48)])
def test_pyramid_matches_skimage(shape):
    image = rand_image(*shape, seed=4) * 1000  # intensity-like values
    levels = pyramid(image, 4)
    ref = image.astype(np.float64)
    for s, lev in enumerate(levels):
        if s:
            ref = skimage_halve(ref)
        assert lev.dtype == np.float32 and lev.shape == (shape[0] >> s, shape[1] >> s)
        np.testing.assert_allclose(lev, ref, rtol=1e-4, atol=1e-4 * 1000)
    stack = np.stack([image, image[::-1]])
    np.testing.assert_allclose(halve(stack)[1], halve(image[::-1]), atol=1e-5)


def test_exact_equals_pyramid_crop_for_aligned_corners_inside():
    # Spec 5.6: centre divisible by 2**(S-1) and window inside the frame -> whole-frame pyramid.
    patch, scales = 8, 4
    image = rand_image(176, 168, seed=5)
    levels = pyramid(image, scales)
    margin = patch * 2 ** (scales - 2) + 2**scales  # half-side of the normative window
    centres = [(c0, c1) for c0 in range(margin, 176 - margin + 1, 8)
               for c1 in range(margin, 168 - margin + 1, 16)]
    cs = np.array(centres) - patch // 2
    got = lateral_context(image, cs, patch, scales, "reflect")
    for k, (c0, c1) in enumerate(centres):
        for s in range(scales):
            a, b = c0 // 2**s - patch // 2, c1 // 2**s - patch // 2
            np.testing.assert_allclose(got[k, s], levels[s][a : a + patch, b : b + patch],
                                       atol=2e-6)
    assert len(centres) > 10


@pytest.mark.parametrize("pad", ["reflect", "zeros"])
def test_floor_alignment_reproduces_the_reference_rule(pad):
    image = rand_image(72, 80, seed=6)
    rng = np.random.default_rng(0)
    cs = np.concatenate([rng.integers(-30, 90, (12, 2)), [[0, 0], [64, 72], [-200, 150]]])
    got = lateral_context(image, cs, 8, 4, pad, alignment="floor")
    for k, c in enumerate(cs):
        np.testing.assert_allclose(got[k], floor_route(image, c, 8, 4, pad), atol=2e-6)


def test_floor_offsets_versus_exact():
    # The reference's crop at scale s sits (c mod 2**s) full-res px up-left of the true centre.
    patch, scales = 8, 4
    image = rand_image(200, 200, seed=7)
    c = np.array([[93, 101]])  # centre (97, 105): not divisible by 2, 4 or 8
    floor = lateral_context(image, c, patch, scales, alignment="floor")
    exact = lateral_context(image, c, patch, scales)
    for s in range(1, scales):
        shift = (c + patch // 2) % 2**s
        aligned = lateral_context(image, c - shift, patch, scales)
        np.testing.assert_allclose(floor[0, s], aligned[0, s], atol=2e-6)
        assert np.abs(floor[0, s] - exact[0, s]).max() > 1e-3  # the drift is real


# -- the precomputed stack -------------------------------------------------------------------
@pytest.mark.parametrize("alignment", ["exact", "floor"])
@pytest.mark.parametrize("pad", ["reflect", "zeros"])
def test_stack_matches_per_frame_calls_and_lru_cache(pad, alignment):
    rng = np.random.default_rng(8)
    frames = rng.random((5, 48, 56)).astype(np.float32)
    fidx = rng.integers(0, 5, 40)
    cs = rng.integers(-60, 100, (40, 2))
    eager = ContextStack(frames, 8, 4, pad, alignment)
    lazy = ContextStack(frames, 8, 4, pad, alignment, cache_frames=2)
    want = np.stack([lateral_context(frames[f], c[None], 8, 4, pad, alignment=alignment)[0]
                     for f, c in zip(fidx, cs, strict=True)])
    np.testing.assert_array_equal(eager.crops(fidx, cs), want)
    np.testing.assert_array_equal(lazy.crops(fidx, cs), want)  # 5 frames through 2 slots
    np.testing.assert_array_equal(lazy.crops(fidx[:3], cs[:3]), want[:3])
    assert lazy.nbytes * 5 == eager.nbytes * 2


def test_stack_transform_is_apply_d4_of_the_crop():
    frames = np.random.default_rng(9).random((2, 40, 40)).astype(np.float32)
    stack = ContextStack(frames, 8, 3, "zeros")
    fidx, cs = np.array([0, 1] * 4), np.array([[3, -2], [30, 31]] * 4)
    t = np.arange(8)
    plain, aug = stack.crops(fidx, cs), stack.crops(fidx, cs, transform=t)
    for k in range(8):
        np.testing.assert_array_equal(aug[k], apply_d4(plain[k], t[k]))
    assert len({apply_d4(plain[0, 0], i).tobytes() for i in range(8)}) == 8  # 8 distinct maps


def test_apply_d4_inverse_and_group():
    x = np.arange(2 * 5 * 5).reshape(2, 5, 5)
    rots = [np.rot90(x, k, axes=(-2, -1)) for k in range(4)]
    group = rots + [np.flip(r, -1) for r in rots]
    got = [apply_d4(x, t) for t in range(8)]
    assert {g.tobytes() for g in got} == {g.tobytes() for g in group}
    for t in range(8):
        np.testing.assert_array_equal(apply_d4(apply_d4(x, t), t, inverse=True), x)


@pytest.mark.parametrize(
    "kwargs",
    [dict(patch=7), dict(patch=0), dict(scales=0), dict(pad="edge"), dict(alignment="round")],
)
def test_bad_arguments_raise_input_error(kwargs):
    args = dict(patch=8, scales=3, pad="reflect", alignment="exact") | kwargs
    with pytest.raises(InputError):
        lateral_context(np.zeros((20, 20)), [[0, 0]], args.pop("patch"), args.pop("scales"),
                        args.pop("pad"), **args)


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="2-D"):
        lateral_context(np.zeros((2, 20, 20)), [[0, 0]], 8, 3)
    with pytest.raises(InputError, match="integers"):
        lateral_context(np.zeros((20, 20)), [[0.5, 0]], 8, 3)
    with pytest.raises(InputError, match="shape"):
        lateral_context(np.zeros((20, 20)), [[0, 0, 0]], 8, 3)
    with pytest.raises(InputError, match="NaN"):
        lateral_context(np.full((20, 20), np.nan), [[0, 0]], 8, 3)
    with pytest.raises(InputError, match="level"):
        ContextStack(np.zeros((1, 6, 40)), 8, 4, alignment="floor")
