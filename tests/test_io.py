"""Tests for musplit.data.io: every format and layout round-trips; bad input is refused with one
line that names the file; inputs are never modified; reads are lazy."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from musplit.data.io import (
    ImageSource,
    ZarrWriter,
    check_image_size,
    load_channel_files,
    load_image,
    load_pavia_atn,
    open_channel_files,
    open_image,
    parse_axes,
    write_tiff,
    write_zarr,
)
from musplit.errors import InputError

RNG = np.random.default_rng(0)


def stack(n=3, h=12, w=10, c=2, dtype=np.float32):
    """A small (N, H, W, C) image with distinct values everywhere."""
    return (RNG.random((n, h, w, c)) * 1000).astype(dtype)


def imwrite(path, data, **kw):
    """tifffile.imwrite with grey pages (tifffile stores 3 or 4 small planes as RGB otherwise)."""
    kw.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, data, **kw)


def digest(path: Path) -> str:
    """Hash of a file or of every file under a directory, to prove inputs stay untouched."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def refuses(path, fn, *words):
    """Assert ``fn()`` raises a one-line InputError naming ``path`` and containing ``words``,
    and that ``path`` is unchanged by the attempt."""
    before = digest(Path(path)) if Path(path).exists() else None
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg, msg
    for word in words:
        assert word in msg, msg
    if before is not None:
        assert digest(Path(path)) == before
    return msg


# ---- axes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "axes,ndim", [("YX", 2), ("yx", 2), ("SYX", 3), ("SYXC", 4), ("STCYX", 5), ("SCZYX", 5)]
)
def test_parse_axes_accepts(axes, ndim):
    assert parse_axes(axes, ndim) == axes.upper()


@pytest.mark.parametrize(
    "axes,ndim,words",
    [
        ("SYXQ", 4, "'Q'"),
        ("SYYX", 4, "repeat 'Y'"),
        ("SYC", 3, "both Y and X"),
        ("SYX", 4, "3 letters but the image has shape (1, 2, 3, 4)"),
        ("", 2, "non-empty"),
    ],
)
def test_parse_axes_refuses(axes, ndim, words):
    shape = (1, 2, 3, 4)[:ndim]
    refuses("img.tif", lambda: parse_axes(axes, ndim, "img.tif", shape=shape), words)


def to_axes(canon, axes):
    """Lay a canonical (N, H, W, C) array out as ``axes`` (missing S or C: index 0)."""
    arr, cur = canon, "SYXC"
    target = axes.replace("T", "S")
    for a in "SC":
        if a not in target:
            arr = arr.take(0, axis=cur.index(a))
            cur = cur.replace(a, "")
    if "Z" in target:
        arr, cur = arr[..., None], cur + "Z"
    return arr.transpose([cur.index(a) for a in target])


@pytest.mark.parametrize(
    "axes,shape",
    [
        ("CYX", (2, 12, 10)),
        ("SCYX", (3, 2, 12, 10)),
        ("YXS", (12, 10, 3)),
        ("XYSC", (10, 12, 3, 2)),
        ("TYXC", (3, 12, 10, 2)),
        ("SZYXC", (3, 1, 12, 10, 2)),
    ],
)
def test_axes_permutations_canonicalise(axes, shape):
    ref = stack(3, 12, 10, 2)
    canon = ref[:1] if "S" not in axes and "T" not in axes else ref
    canon = canon if "C" in axes else canon[..., :1]
    arr = to_axes(ref, axes)
    assert arr.shape == shape
    source = open_image(arr, axes)
    assert source.canonical_shape == canon.shape
    np.testing.assert_array_equal(source.read(), canon)


def test_sample_and_time_axes_merge():
    arr = stack(6, 8, 9, 1)[..., 0].reshape(2, 3, 8, 9)  # S=2, T=3
    src = open_image(arr, "STYX")
    assert src.canonical_shape == (6, 8, 9, 1)
    np.testing.assert_array_equal(src.read(frames=[4, 1])[..., 0], arr.reshape(6, 8, 9)[[4, 1]])


def test_z_longer_than_one_is_read_as_frames(caplog):
    # Was a refusal ("3-D stacks are not supported"); Z planes are now separate 2-D frames.
    arr = stack(4, 8, 8, 1)[..., 0]
    with caplog.at_level("INFO", logger="musplit.data.io"):
        src = open_image(arr, "ZYX")
    assert "Z planes are read as separate 2-D frames" in caplog.text
    assert src.canonical_shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(src.read()[..., 0], arr)
    tz = stack(6, 8, 8, 1)[..., 0].reshape(2, 3, 8, 8)  # T=2, Z=3: T major
    np.testing.assert_array_equal(open_image(tz, "TZYX").read(frames=[4])[0, ..., 0], tz[1, 1])


def test_guessed_axes_and_ambiguous_shapes():
    assert open_image(np.zeros((8, 9))).axes == "YX"
    assert open_image(np.zeros((3, 8, 9))).axes == "SYX"
    assert open_image(np.zeros((3, 16, 17, 4))).axes == "SYXC"
    assert open_image(np.zeros((3, 8, 9))).axes_origin == "guessed"
    refuses("the input array", lambda: open_image(np.zeros((16, 17, 3))), "YXC", "axes")
    refuses("the input array", lambda: open_image(np.zeros((3, 4, 16, 17))), "axes")
    refuses("the input array", lambda: open_image(np.zeros((2, 3, 4, 16, 17))), "axes")


# ---- TIFF -----------------------------------------------------------------------------------


def test_plain_tiff_3d_and_4d(tmp_path):
    a3 = stack(4, 12, 10, 1)[..., 0]
    a4 = stack(3, 12, 10, 4)
    imwrite(tmp_path / "a3.tif", a3, photometric="minisblack")
    imwrite(tmp_path / "a4.tiff", a4, photometric="minisblack")  # pages of (W, C)
    imwrite(tmp_path / "rgba.tif", a4, photometric="rgb")  # samples per pixel
    s3, s4 = open_image(tmp_path / "a3.tif"), open_image(tmp_path / "a4.tiff")
    assert (s3.axes, s4.axes) == ("SYX", "SYXC")
    assert s3.lazy and s4.lazy
    rgba = open_image(tmp_path / "rgba.tif")
    assert (rgba.axes, rgba.axes_origin) == ("SYXC", "metadata")
    np.testing.assert_array_equal(rgba.read(), a4)
    np.testing.assert_array_equal(s3.read()[..., 0], a3)
    np.testing.assert_array_equal(s4.read(channels=[3, 1]), a4[..., [3, 1]])
    np.testing.assert_array_equal(s4.frame(2, channels=0), a4[2, :, :, :1])


def test_imagej_hyperstack_axes_and_labels(tmp_path):
    tcyx = stack(3, 12, 10, 2).transpose(0, 3, 1, 2).copy()
    path = tmp_path / "ij.tif"
    imwrite(path, tcyx, imagej=True, metadata={"axes": "TCYX", "Labels": ["a", "b"] * 3})
    src = open_image(path)
    assert (src.axes, src.axes_origin, src.channel_names) == ("TCYX", "metadata", ["a", "b"])
    np.testing.assert_array_equal(src.read(channels="b")[..., 0], tcyx[:, 1])


def test_ome_tiff_axes_names_pixel_size(tmp_path):
    tcyx = stack(3, 12, 10, 2).transpose(0, 3, 1, 2).copy()
    path = tmp_path / "x.ome.tif"
    md = {
        "axes": "TCYX",
        "Channel": {"Name": ["act", "tub"]},
        "PhysicalSizeX": 0.2,
        "PhysicalSizeY": 300,
        "PhysicalSizeYUnit": "nm",
    }
    imwrite(path, tcyx, ome=True, metadata=md)
    src = open_image(path)
    assert src.axes == "TCYX" and src.channel_names == ["act", "tub"]
    assert src.pixel_size == pytest.approx((0.3, 0.2))
    np.testing.assert_array_equal(src.read(), tcyx.transpose(0, 2, 3, 1))
    # Given axes override metadata; names recorded for other axes are then dropped.
    assert open_image(path, "SCYX").channel_names is None


def test_bigtiff(tmp_path):
    a = stack(3, 12, 10, 1)[..., 0]
    imwrite(tmp_path / "b.tif", a, bigtiff=True)
    np.testing.assert_array_equal(load_image(tmp_path / "b.tif")[..., 0], a)


def test_memmapped_tiff_reads_only_the_requested_frames(tmp_path):
    a = stack(6, 12, 10, 1)[..., 0]
    a[5, 3, 4] = np.nan  # a read that touched frame 5 would fail the finite check
    path = tmp_path / "m.tif"
    imwrite(path, a)
    before = digest(path)
    src = open_image(path)
    assert src.lazy and type(src._data).__name__ == "_Memmap"
    np.testing.assert_array_equal(src.read(frames=[2])[0, ..., 0], a[2])
    np.testing.assert_array_equal(src.read(frames=slice(0, 5))[..., 0], a[:5])
    refuses(path, lambda: src.read(frames=[1, 5]), "1 non-finite")
    refuses(path, src.read, "1 non-finite")
    assert digest(path) == before  # read-only maps: reading never writes


def test_compressed_tiff_reads_pages_lazily(tmp_path, monkeypatch):
    a = stack(5, 12, 10, 1)[..., 0]
    path = tmp_path / "z.tif"
    imwrite(path, a, compression="zlib")
    keys = []
    real = tifffile.TiffFile.asarray

    def spy(self, *args, **kw):
        keys.append(kw.get("key"))
        return real(self, *args, **kw)

    monkeypatch.setattr(tifffile.TiffFile, "asarray", spy)
    src = open_image(path)
    assert keys == []  # opening read no pixels
    np.testing.assert_array_equal(src.read(frames=[3])[0, ..., 0], a[3])
    assert keys == [[3]]
    np.testing.assert_array_equal(src.read(frames=[4, 0, 1])[..., 0], a[[4, 0, 1]])
    # Read back in worker processes: the source pickles without an open handle.
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.read(frames=[2])[0, ..., 0], a[2])


def test_compressed_multichannel_hyperstack_selects_pages(tmp_path, monkeypatch):
    tcyx = stack(3, 12, 10, 3).transpose(0, 3, 1, 2).copy()
    path = tmp_path / "ijz.tif"
    imwrite(path, tcyx, imagej=True, compression="zlib", metadata={"axes": "TCYX"})
    keys = []
    real = tifffile.TiffFile.asarray
    monkeypatch.setattr(
        tifffile.TiffFile,
        "asarray",
        lambda self, *a, **k: keys.append(k["key"]) or real(self, *a, **k),
    )
    src = open_image(path)
    np.testing.assert_array_equal(
        src.read(frames=[2], channels=[0, 1]), tcyx[[2]][:, :2].transpose(0, 2, 3, 1)
    )
    assert keys == [[6, 7]]  # pages t*C + c of frame 2, channels 0..1


def test_memmap_source_pickles_without_data(tmp_path):
    a = stack(4, 12, 10, 1)[..., 0]
    np.save(tmp_path / "a.npy", a)
    src = open_image(tmp_path / "a.npy")
    blob = pickle.dumps(src)
    assert len(blob) < a.nbytes
    np.testing.assert_array_equal(pickle.loads(blob).read()[..., 0], a)


# ---- Zarr -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_arrays(tmp_path, fmt):
    a = stack(4, 12, 10, 2)
    path = tmp_path / f"v{fmt}.zarr"
    z = zarr.create_array(
        path, shape=a.shape, chunks=(1, 6, 5, 2), dtype="float32", zarr_format=fmt
    )
    z[:] = a
    src = open_image(path)
    assert src.axes == "SYXC" and src.axes_origin == "guessed" and src.lazy
    np.testing.assert_array_equal(src.read(frames=[3, 1], channels=[1]), a[[3, 1]][..., [1]])
    np.testing.assert_array_equal(src.read(region=(slice(2, 7), slice(1, 9))), a[:, 2:7, 1:9])


def test_zarr_v3_dimension_names_give_axes(tmp_path):
    cyx = stack(1, 12, 10, 3)[0].transpose(2, 0, 1)
    z = zarr.create_array(
        tmp_path / "d.zarr", shape=cyx.shape, dtype="float32", dimension_names=["c", "y", "x"]
    )
    z[:] = cyx
    src = open_image(tmp_path / "d.zarr")
    assert (src.axes, src.axes_origin, src.canonical_shape) == ("CYX", "metadata", (1, 12, 10, 3))


def test_zarr_reads_only_needed_chunks(tmp_path):
    a = stack(4, 16, 16, 1)
    path = tmp_path / "c.zarr"
    z = zarr.create_array(path, shape=a.shape, chunks=(1, 16, 16, 1), dtype="float32")
    z[:] = a
    chunk = path / "c" / "3" / "0" / "0" / "0"
    chunk.write_bytes(b"garbage")  # frame 3 can no longer be decoded
    src = open_image(path)
    np.testing.assert_array_equal(src.read(frames=[0, 1, 2]), a[:3])
    refuses(path, lambda: src.read(frames=[3]), "could not be read")


def _write_ome_zarr(path, tcyx, fmt, names=("nuc", "act")):
    """An OME-Zarr image with two levels, written with zarr directly (not with our writer)."""
    group = zarr.open_group(path, mode="w", zarr_format=fmt)
    axes = [
        {"name": "t", "type": "time"},
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1, 1, 0.1 * 2**i, 0.1 * 2**i]}
            ],
        }
        for i in range(2)
    ]
    multiscales = [{"axes": axes, "datasets": datasets, "name": "img"}]
    omero = {"channels": [{"label": n} for n in names]}
    if fmt == 2:
        group.attrs.update({"multiscales": [{**multiscales[0], "version": "0.4"}], "omero": omero})
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales, "omero": omero}
    for i in range(2):
        level = tcyx[:, :, :: 2**i, :: 2**i]
        group.create_array(str(i), shape=level.shape, dtype=level.dtype, chunks=(1, 1, 8, 8))[:] = (
            level
        )


@pytest.mark.parametrize("fmt", [2, 3])
def test_ome_zarr_multiscale_levels(tmp_path, fmt):
    tcyx = stack(3, 12, 10, 2).transpose(0, 3, 1, 2).copy()
    path = tmp_path / f"ome{fmt}.zarr"
    _write_ome_zarr(path, tcyx, fmt)
    src = open_image(path)
    assert (src.axes, src.axes_origin, src.channel_names) == ("TCYX", "metadata", ["nuc", "act"])
    assert src.pixel_size == pytest.approx((0.1, 0.1))
    np.testing.assert_array_equal(src.read(), tcyx.transpose(0, 2, 3, 1))
    low = open_image(path, level=1)
    assert low.canonical_shape == (3, 6, 5, 2) and low.pixel_size == pytest.approx((0.2, 0.2))
    np.testing.assert_array_equal(low.read(channels="act")[..., 0], tcyx[:, 1, ::2, ::2])
    refuses(path, lambda: open_image(path, level=2), "level 2 does not exist", "2 levels: 0..1")


def test_zarr_group_one_array_per_channel(tmp_path):
    a = stack(3, 12, 10, 2)
    path = tmp_path / "g.zarr"
    group = zarr.open_group(path, mode="w")
    for name, c in (("mito", 1), ("actin", 0)):
        group.create_array(name, shape=a.shape[:3], dtype="float32")[:] = a[..., c]
    src = open_image(path, "SYX")
    assert src.channel_names == ["actin", "mito"]  # natural name order
    np.testing.assert_array_equal(src.read(), a)
    picked = open_image(path, key=["mito", "actin"])
    np.testing.assert_array_equal(picked.read(channels="mito")[..., 0], a[..., 1])
    np.testing.assert_array_equal(open_image(path, key="mito").read()[..., 0], a[..., 1])
    refuses(path, lambda: open_image(path, key="dna"), "no array or group 'dna'", "actin, mito")
    group.create_array("small", shape=(3, 6, 10), dtype="float32")
    refuses(path, lambda: open_image(path), "differ in shape", "small")


def test_zarr_group_without_arrays(tmp_path):
    path = tmp_path / "e.zarr"
    zarr.open_group(path, mode="w").create_group("inner")
    refuses(path, lambda: open_image(path), "contains no arrays", "key=")


# ---- NumPy ----------------------------------------------------------------------------------


def test_npy_is_memory_mapped(tmp_path):
    a = stack(3, 12, 10, 2).astype(np.uint16)
    np.save(tmp_path / "a.npy", a)
    src = open_image(tmp_path / "a.npy", "SYXC")
    assert src.lazy and src.dtype == np.uint16
    out = src.read(frames=[1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, a[[1]].astype(np.float32))


def test_npz_members(tmp_path, monkeypatch):
    a, b = stack(3, 12, 10, 2), stack(2, 12, 10, 1)[..., 0]
    path = tmp_path / "d.npz"
    np.savez_compressed(path, image=a, other=b)
    with monkeypatch.context() as m:  # opening reads the header only
        m.setattr(np, "load", lambda *a, **k: pytest.fail("data read while opening"))
        assert open_image(path, key="image").canonical_shape == a.shape
    np.testing.assert_array_equal(load_image(path, key="image"), a)
    np.testing.assert_array_equal(load_image(path, key="other")[..., 0], b)
    refuses(path, lambda: open_image(path), "holds 2 arrays", "key=")
    refuses(path, lambda: open_image(path, key="nope"), "no array 'nope'", "image, other")


def test_arrays_in_memory_and_dtypes():
    ints = (RNG.random((2, 8, 8)) * 60000).astype(np.uint16)
    out = load_image(ints)
    assert out.dtype == np.float32 and out.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(out[..., 0], ints)
    refuses("the input array", lambda: open_image(np.zeros((8, 8), bool)), "boolean")
    refuses("the input array", lambda: open_image(np.zeros((8, 8), complex)), "complex")
    with pytest.raises(InputError, match="a file path or a numpy array, got list"):
        open_image([[1, 2]])


# ---- layouts: one file per channel, PaviaATN ------------------------------------------------


def test_one_file_per_channel(tmp_path):
    a = stack(4, 12, 10, 2)
    paths = [tmp_path / "actin.tif", tmp_path / "mito.tif"]
    for c, p in enumerate(paths):
        imwrite(p, a[..., c])
    out = load_channel_files(paths)
    np.testing.assert_array_equal(out, a)
    src = open_channel_files(paths)
    assert src.channel_names == ["actin", "mito"] and src.canonical_shape == (4, 12, 10, 2)
    np.testing.assert_array_equal(src.read(frames=[3], channels=[1]), a[[3]][..., [1]])


def test_one_file_per_channel_refuses_mismatch(tmp_path):
    imwrite(tmp_path / "a.tif", stack(4, 12, 10, 1)[..., 0])
    imwrite(tmp_path / "b.tif", stack(4, 12, 9, 1)[..., 0])
    imwrite(tmp_path / "c.tif", stack(4, 12, 10, 3))
    refuses(
        tmp_path / "b.tif",
        lambda: load_channel_files([tmp_path / "a.tif", tmp_path / "b.tif"]),
        "differ in shape",
    )
    refuses(
        tmp_path / "c.tif",
        lambda: load_channel_files([tmp_path / "a.tif", tmp_path / "c.tif"]),
        "3 channels",
    )


def test_nan_in_one_channel_file_names_that_file(tmp_path):
    a = stack(2, 8, 8, 2)
    a[1, 0, 0, 1] = np.inf
    for c, n in enumerate("ab"):
        imwrite(tmp_path / f"{n}.tif", a[..., c])
    src = open_channel_files([tmp_path / "a.tif", tmp_path / "b.tif"])
    src.read(channels=[0])
    refuses(tmp_path / "b.tif", src.read, "1 non-finite")


def test_pavia_atn_layout(tmp_path):
    a = stack(3, 16, 16, 4).astype(np.uint16)
    path = tmp_path / "OptiMEM100x014.tif"
    imwrite(path, a)
    np.testing.assert_array_equal(load_pavia_atn(path), a[..., [2, 3]].astype(np.float32))
    np.testing.assert_array_equal(load_pavia_atn(path, ("actin", "nucleus")), a[..., [2, 0]])
    assert load_pavia_atn(path, None).shape == (3, 16, 16, 4)
    imwrite(tmp_path / "three.tif", a[..., :3])
    refuses(tmp_path / "three.tif", lambda: load_pavia_atn(tmp_path / "three.tif"), "4 channels")


# ---- bad input ------------------------------------------------------------------------------


def test_missing_unknown_empty(tmp_path):
    refuses(tmp_path / "none.tif", lambda: open_image(tmp_path / "none.tif"), "does not exist")
    (tmp_path / "x.png").write_bytes(b"\x89PNG....")
    refuses(tmp_path / "x.png", lambda: open_image(tmp_path / "x.png"), "unknown file type '.png'")
    for name in ("e.tif", "e.npy", "e.npz"):
        (tmp_path / name).write_bytes(b"")
        refuses(tmp_path / name, lambda n=name: open_image(tmp_path / n), "empty (0 bytes)")
    (tmp_path / "dir.zarr").mkdir()
    refuses(tmp_path / "dir.zarr", lambda: open_image(tmp_path / "dir.zarr"), "not a Zarr store")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all" * 10)
    refuses(tmp_path / "junk.tif", lambda: open_image(tmp_path / "junk.tif"), "not a readable TIFF")
    (tmp_path / "junk.npy").write_bytes(b"not a npy at all" * 10)
    refuses(tmp_path / "junk.npy", lambda: open_image(tmp_path / "junk.npy"), "not a readable .npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all" * 10)
    refuses(tmp_path / "junk.npz", lambda: open_image(tmp_path / "junk.npz"), "not a readable .npz")


@pytest.mark.parametrize(
    "kw",
    [{}, {"compression": "zlib"}, {"imagej": True}, {"ome": True}, {"bigtiff": True}],
    ids=["plain", "zlib", "imagej", "ome", "bigtiff"],
)
def test_truncated_tiff_is_refused(tmp_path, kw):
    a = stack(6, 16, 16, 1)[..., 0]
    full, cut = tmp_path / "full.tif", tmp_path / "cut.tif"
    imwrite(full, a, **kw)
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    def open_and_read():
        open_image(cut).read()

    refuses(cut, open_and_read, "trunc")


def test_axes_channels_frames_out_of_range(tmp_path):
    path = tmp_path / "four.tif"
    imwrite(path, stack(3, 12, 10, 4))
    src = open_image(path)
    msg = refuses(path, lambda: src.read(channels=[5]), "channel 5 does not exist")
    assert msg == f"channel 5 does not exist in {path} (it has 4 channels: 0..3)"
    refuses(path, lambda: src.read(frames=[3]), "frame 3 does not exist", "3 frames: 0..2")
    refuses(path, lambda: src.read(frames=[-1]), "frame -1 does not exist")
    refuses(path, lambda: open_image(path, "SYX"), "3 letters", "(3, 12, 10, 4)")
    refuses(path, lambda: open_image(path, "SYXW"), "'W'")
    refuses(path, lambda: src.read(channels="dna"), "channel 'dna' does not exist")
    refuses(path, lambda: open_image(path, key="a"), "key=")
    refuses(path, lambda: open_image(path, level=1), "level 1 does not exist")


def test_check_image_size():
    check_image_size(64, 80, 64)
    with pytest.raises(
        InputError, match=r"^image 60x80 in a\.tif is smaller than the patch size 64$"
    ):
        check_image_size(60, 80, 64, "a.tif")


# ---- writers --------------------------------------------------------------------------------


@pytest.mark.parametrize("imagej", [False, True], ids=["ome", "imagej"])
def test_write_tiff_round_trip(tmp_path, imagej):
    a = stack(3, 12, 10, 2)
    path = write_tiff(
        tmp_path / "out.ome.tif",
        a,
        channel_names=["act", "tub"],
        imagej=imagej,
        pixel_size=(0.25, 0.5),
    )
    src = open_image(path)
    assert src.channel_names == ["act", "tub"]
    assert src.pixel_size == pytest.approx((0.25, 0.5))
    np.testing.assert_array_equal(src.read(), a)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej == imagej and tif.is_ome == (not imagej)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ome.tif"]  # no temp left


def test_write_tiff_other_axes_and_single_frame(tmp_path):
    cyx = stack(1, 12, 10, 3)[0].transpose(2, 0, 1)
    path = write_tiff(tmp_path / "one.tif", cyx, axes="CYX", channel_names=["a", "b", "c"])
    src = open_image(path)
    assert src.canonical_shape == (1, 12, 10, 3) and src.channel_names == ["a", "b", "c"]
    np.testing.assert_array_equal(src.read()[0], cyx.transpose(1, 2, 0))
    refuses(tmp_path / "x.png", lambda: write_tiff(tmp_path / "x.png", cyx, axes="CYX"), ".tif")


@pytest.mark.parametrize("ome", [True, False], ids=["ome-zarr", "plain"])
def test_write_zarr_round_trip(tmp_path, ome):
    a = stack(3, 12, 10, 2)
    path = write_zarr(
        tmp_path / "out.zarr",
        a,
        channel_names=["nuc", "act"],
        ome=ome,
        pixel_size=(0.1, 0.1),
        chunks=(1, 5, 5, 1),
    )
    src = open_image(path)
    assert src.axes_origin == "metadata" and src.channel_names == ["nuc", "act"]
    assert src.pixel_size == pytest.approx((0.1, 0.1))
    np.testing.assert_array_equal(src.read(), a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_written_ome_zarr_follows_ngff_0_5(tmp_path):
    a = stack(2, 12, 10, 2)
    path = write_zarr(tmp_path / "o.zarr", a, channel_names=["nuc", "act"])
    meta = json.loads((path / "zarr.json").read_text())
    ome = meta["attributes"]["ome"]
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group" and ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [(x["name"], x["type"]) for x in ms["axes"]] == [
        ("t", "time"),
        ("c", "channel"),
        ("y", "space"),
        ("x", "space"),
    ]
    assert ms["datasets"][0]["path"] == "0"
    assert [c["label"] for c in ome["omero"]["channels"]] == ["nuc", "act"]
    window = ome["omero"]["channels"][1]["window"]
    assert window["min"] == pytest.approx(a[..., 1].min()) and window["max"] == pytest.approx(
        a[..., 1].max()
    )
    arr = json.loads((path / "0" / "zarr.json").read_text())
    assert arr["shape"] == [2, 2, 12, 10] and arr["dimension_names"] == ["t", "c", "y", "x"]


def test_zarr_writer_streams_blocks_and_aborts(tmp_path):
    a = stack(4, 12, 10, 2)
    with ZarrWriter.create(tmp_path / "s.zarr", a.shape, chunks=(1, 6, 5, 1)) as w:
        for i in range(4):
            for y in (0, 6):
                w.write(
                    (slice(i, i + 1), slice(y, y + 6), slice(None), slice(None)),
                    a[i : i + 1, y : y + 6],
                )
        assert not (tmp_path / "s.zarr").exists()  # nothing at the final path until close
    np.testing.assert_array_equal(load_image(tmp_path / "s.zarr"), a)
    # Axes other than SYXC: regions and blocks follow the writer's axes.
    cyx = a[0].transpose(2, 0, 1)
    with ZarrWriter.create(tmp_path / "c.zarr", cyx.shape, axes="CYX") as w:
        w.write((slice(1, 2), slice(None), slice(None)), cyx[1:2])
        w.write((slice(0, 1), slice(None), slice(None)), cyx[0:1])
    np.testing.assert_array_equal(load_image(tmp_path / "c.zarr")[0], a[0])
    with pytest.raises(RuntimeError), ZarrWriter.create(tmp_path / "x.zarr", a.shape) as w:
        w.write(None, a)
        raise RuntimeError("crash during prediction")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr", "s.zarr"]


def test_writers_refuse_existing_and_protected_outputs(tmp_path):
    a = stack(2, 8, 8, 1)
    inp = tmp_path / "in.tif"
    imwrite(inp, a[..., 0])
    refuses(inp, lambda: write_tiff(inp, a), "already exists")
    refuses(inp, lambda: write_tiff(inp, a, overwrite=True, protect=[inp]), "refusing to write")
    zin = write_zarr(tmp_path / "in.zarr", a)
    refuses(zin, lambda: write_zarr(zin, a), "already exists")
    refuses(zin, lambda: write_zarr(zin, a, overwrite=True, protect=[zin]), "refusing")
    refuses(zin / "sub.tif", lambda: write_tiff(zin / "sub.tif", a, protect=[zin]), "refusing")
    plain_dir = tmp_path / "folder"
    plain_dir.mkdir()
    refuses(plain_dir, lambda: write_zarr(plain_dir, a, overwrite=True), "not a Zarr store")
    refuses(
        tmp_path / "n.tif",
        lambda: write_tiff(tmp_path / "n.tif", a, channel_names=["a", "b"]),
        "2 channel names given for 1 channel",
    )
    (tmp_path / "d.tif").mkdir()
    refuses(
        tmp_path / "d.tif", lambda: write_tiff(tmp_path / "d.tif", a, overwrite=True), "directory"
    )


def test_overwrite_replaces_only_after_a_complete_write(tmp_path, monkeypatch):
    a = stack(2, 8, 8, 1)
    out = write_tiff(tmp_path / "o.tif", a)
    before = digest(out)

    def crash(path, data, **kw):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", crash)
    with pytest.raises(OSError, match="disk full"):
        write_tiff(out, a * 2, overwrite=True)
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]
    monkeypatch.undo()
    write_tiff(out, a * 2, overwrite=True)
    np.testing.assert_array_equal(load_image(out), a * 2)
    z = write_zarr(tmp_path / "z.zarr", a)
    write_zarr(z, a + 1, overwrite=True)
    np.testing.assert_array_equal(load_image(z), a + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif", "z.zarr"]


def test_image_source_type_and_repr(tmp_path):
    src = open_image(np.zeros((2, 8, 8), np.float32))
    assert isinstance(src, ImageSource) and open_image(src) is src
    assert "canonical=(2, 8, 8, 1)" in repr(src) and len(src) == 2
    assert src.nbytes_float32 == 2 * 8 * 8 * 4
