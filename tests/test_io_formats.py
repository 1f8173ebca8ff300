"""Real microscope files as users have them (issue 15, part 1): every TIFF compression tifffile
decodes with imagecodecs, missing codecs and damaged data told apart, pixel types and byte
orders, ImageJ hyperstacks with Z and T, OME-TIFF series and pyramid levels, and per-channel
statistics."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import tifffile._imagecodecs
import tifffile.tifffile

from musplit.data.io import channel_statistics, open_channel_files, open_image
from musplit.errors import InputError

RNG = np.random.default_rng(15)


def frames(n=3, h=12, w=10, dtype=np.uint16, top=1000):
    """A small (N, H, W) image with distinct-ish values."""
    return (RNG.random((n, h, w)) * top).astype(dtype)


def imwrite(path, data, **kw):
    kw.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, data, **kw)
    return path


def one_line_error(fn) -> str:
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---- compressions ---------------------------------------------------------------------------

LOSSLESS = [
    ("lzw", {}),
    ("zlib", {}),
    ("adobe_deflate", {}),
    ("deflate", {}),
    ("zstd", {}),
    ("packbits", {}),
    ("lzma", {}),
    ("jpeg", {"lossless": True}),
    ("jpeg2000", {}),
    ("jpegxl", {}),
    ("jpegxr", {}),
    ("png", {}),
    ("lerc", {}),
]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("compression,args", LOSSLESS, ids=[c for c, _ in LOSSLESS])
def test_every_lossless_compression_reads_exactly(tmp_path, compression, args, dtype):
    a = frames(dtype=dtype, top=250)
    plain = imwrite(tmp_path / "plain.tif", a)
    packed = imwrite(tmp_path / "packed.tif", a, compression=compression, compressionargs=args)
    src = open_image(packed)
    assert src.lazy and type(src._data).__name__ == "_TiffPages"  # page by page, not memmap
    out = src.read()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, open_image(plain).read())
    np.testing.assert_array_equal(src.read(frames=[2])[0, ..., 0], a[2])


def test_lossy_jpeg_reads_what_tifffile_decodes(tmp_path):
    a = frames(dtype=np.uint8, top=250)
    path = imwrite(tmp_path / "j.tif", a, compression="jpeg")
    out = open_image(path).read()[..., 0]
    np.testing.assert_array_equal(out, tifffile.imread(path))
    assert np.abs(out - a).max() < 30  # lossy, but the same image


@pytest.mark.parametrize(
    "dtype,compression,predictor",
    [(np.uint16, "lzw", "horizontal"), (np.float32, "zlib", "floatingpoint")],
)
def test_compression_with_predictor(tmp_path, dtype, compression, predictor):
    a = frames(dtype=dtype)
    path = imwrite(tmp_path / "p.tif", a, compression=compression, predictor=predictor)
    np.testing.assert_array_equal(open_image(path).read()[..., 0], a.astype(np.float32))


@pytest.fixture
def no_imagecodecs(monkeypatch):
    """tifffile as it is without the imagecodecs package: only its pure-Python fallbacks."""
    monkeypatch.setattr(tifffile.tifffile, "imagecodecs", tifffile._imagecodecs)
    monkeypatch.setattr(
        tifffile.TIFF, "DECOMPRESSORS", tifffile.tifffile.CompressionCodec(encode=False)
    )


def test_missing_codec_is_named_when_opening(tmp_path, no_imagecodecs):
    path = imwrite(tmp_path / "lzw.tif", frames(), compression="lzw")
    msg = one_line_error(lambda: open_image(path))
    assert str(path) in msg and "LZW" in msg and "pip install imagecodecs" in msg
    assert "damaged" not in msg


def test_missing_codec_is_named_when_reading(tmp_path, monkeypatch):
    path = imwrite(tmp_path / "zstd.tif", frames(), compression="zstd")
    src = open_image(path)  # the codec is there when the file is opened ...
    monkeypatch.setattr(tifffile.tifffile, "imagecodecs", tifffile._imagecodecs)
    monkeypatch.setattr(
        tifffile.TIFF, "DECOMPRESSORS", tifffile.tifffile.CompressionCodec(encode=False)
    )
    msg = one_line_error(src.read)  # ... and gone when its pixels are read
    assert "ZSTD" in msg and "pip install imagecodecs" in msg and "damaged" not in msg


def test_unknown_compression_code_is_not_called_damage(tmp_path):
    path = imwrite(tmp_path / "odd.tif", frames(), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            page.tags["Compression"].overwrite(65535)
    msg = one_line_error(lambda: open_image(path))
    assert "unknown compression (TIFF code 65535)" in msg and "imagecodecs" in msg
    assert "damaged" not in msg


@pytest.mark.parametrize("compression", ["lzw", "zlib", "packbits"])
def test_damaged_strip_data_is_one_clear_error(tmp_path, compression):
    a = frames(4, 32, 32)
    path = imwrite(tmp_path / "d.tif", a, compression=compression)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[1]
        start = page.dataoffsets[0] + page.databytecounts[0] // 4
        n = max(8, page.databytecounts[0] // 2)
    data = bytearray(path.read_bytes())
    data[start : start + n] = b"\xff" * n
    path.write_bytes(bytes(data))
    src = open_image(path)
    np.testing.assert_array_equal(src.read(frames=[0])[0, ..., 0], a[0])  # undamaged frame
    msg = one_line_error(lambda: src.read(frames=[1]))
    assert str(path) in msg and "damaged file?" in msg and "imagecodecs" not in msg


# ---- pixel types and byte order -------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["contiguous", "zlib"])
@pytest.mark.parametrize("byteorder", ["<", ">"], ids=["little", "big"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32", "float64"])
def test_pixel_types_and_byte_orders(tmp_path, dtype, byteorder, compression):
    a = (RNG.random((3, 8, 9)) * 200 - (100 if dtype[0] in "if" else 0)).astype(dtype)
    path = imwrite(tmp_path / "t.tif", a, byteorder=byteorder, compression=compression)
    src = open_image(path)
    assert src.dtype == np.dtype(dtype)  # native byte order, whatever the file's
    assert type(src._data).__name__ == ("_Memmap" if compression is None else "_TiffPages")
    out = src.read()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], a.astype(np.float32))


# ---- ImageJ hyperstacks with Z and T --------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_imagej_hyperstack_z_planes_are_frames(tmp_path, caplog, compression):
    t, z, c = 2, 3, 2
    tzcyx = frames(t * z * c, 12, 10).reshape(t, z, c, 12, 10)
    path = imwrite(tmp_path / "hs.tif", tzcyx, imagej=True, compression=compression,
                   metadata={"axes": "TZCYX"})  # fmt: skip
    with caplog.at_level("INFO", logger="musplit.data.io"):
        src = open_image(path)
    assert "Z planes are read as separate 2-D frames" in caplog.text
    assert src.axes == "TZCYX" and src.canonical_shape == (t * z, 12, 10, c)
    expected = tzcyx.reshape(t * z, c, 12, 10).transpose(0, 2, 3, 1)  # T major, then Z
    np.testing.assert_array_equal(src.read(), expected)
    np.testing.assert_array_equal(src.read(frames=[4], channels=[1])[0, ..., 0], tzcyx[1, 1, 1])


# ---- OME-TIFF series and pyramid levels -----------------------------------------------------


def _two_series(path):
    a = frames(2, 32, 40)
    b = frames(3, 16, 20)
    with tifffile.TiffWriter(path, ome=True) as w:
        w.write(a, photometric="minisblack",
                metadata={"axes": "TYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        w.write(b, photometric="minisblack",
                metadata={"axes": "CYX", "Channel": {"Name": ["x", "y", "z"]},
                          "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})  # fmt: skip
    return a, b


def test_multi_series_ome_tiff(tmp_path, caplog):
    path = tmp_path / "multi.ome.tif"
    a, b = _two_series(path)
    with caplog.at_level("INFO", logger="musplit.data.io"):
        first = open_image(path)
    assert "holds 2 image series; reading series 0" in caplog.text
    assert (first.series_index, first.n_series, first.level) == (0, 2, 0)
    assert first.canonical_shape == (2, 32, 40, 1) and first.pixel_size == pytest.approx((0.5,) * 2)
    np.testing.assert_array_equal(first.read()[..., 0], a)
    second = open_image(path, series=1)
    assert second.series_index == 1 and second.channel_names == ["x", "y", "z"]
    assert second.pixel_size == pytest.approx((0.25, 0.25))
    np.testing.assert_array_equal(second.read()[0], b.transpose(1, 2, 0))
    msg = one_line_error(lambda: open_image(path, series=3))
    assert msg == f"series 3 does not exist in {path} (it has 2 series: 0..1)"


def test_reduced_and_thumbnail_series_are_skipped_by_default(tmp_path):
    big = frames(1, 64, 64)[0]
    marked = tmp_path / "marked.ome.tif"
    with tifffile.TiffWriter(marked, ome=True) as w:
        w.write(big[::8, ::8], photometric="minisblack", subfiletype=1)  # reduced-resolution
        w.write(big, photometric="minisblack")
    small = tmp_path / "small.tif"  # not marked: a single plane 8x smaller than the image
    with tifffile.TiffWriter(small) as w:
        w.write(big[::8, ::8], photometric="minisblack")
        w.write(big, photometric="minisblack")
    for path in (marked, small):
        src = open_image(path)
        assert src.series_index == 1 and src.canonical_shape == (1, 64, 64, 1), path
        np.testing.assert_array_equal(src.read()[0, ..., 0], big)
        assert open_image(path, series=0).canonical_shape == (1, 8, 8, 1)


def test_pyramidal_ome_tiff_levels(tmp_path):
    img = frames(2, 64, 64)
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as w:
        w.write(img, subifds=2, photometric="minisblack",
                metadata={"axes": "CYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1})  # fmt: skip
        w.write(img[:, ::2, ::2], subfiletype=1, photometric="minisblack")
        w.write(img[:, ::4, ::4], subfiletype=1, photometric="minisblack")
    full = open_image(path)
    assert (full.level, full.n_levels, full.canonical_shape) == (0, 3, (1, 64, 64, 2))
    for level, step in ((1, 2), (2, 4)):
        src = open_image(path, level=level)
        assert src.level == level and src.canonical_shape == (1, 64 // step, 64 // step, 2)
        assert src.pixel_size == pytest.approx((0.1 * step, 0.1 * step))
        np.testing.assert_array_equal(src.read()[0], img[:, ::step, ::step].transpose(1, 2, 0))
    msg = one_line_error(lambda: open_image(path, level=3))
    assert "level 3 does not exist" in msg and "3 levels: 0..2" in msg


def test_series_is_for_tiff_only(tmp_path):
    np.save(tmp_path / "a.npy", frames())
    msg = one_line_error(lambda: open_image(tmp_path / "a.npy", series=0))
    assert "series=0" in msg and "TIFF" in msg and "a.npy" in msg
    assert "TIFF" in one_line_error(lambda: open_image(frames(), series=1))
    assert open_image(frames()).series_index is None
    assert "non-negative" in one_line_error(lambda: open_image(frames(), series=-1))
    # passed through to every file of a one-file-per-channel source
    for name in ("p.ome.tif", "q.ome.tif"):
        _two_series(tmp_path / name)
    src = open_channel_files([tmp_path / "p.ome.tif", tmp_path / "q.ome.tif"], series=0)
    assert src.series_index == 0 and src.canonical_shape == (2, 32, 40, 2)


# ---- per-channel statistics -----------------------------------------------------------------


def test_channel_statistics_integer_image(tmp_path):
    a = np.arange(2 * 10 * 10 * 2, dtype=np.uint16).reshape(2, 10, 10, 2) * 100
    a[0, 1, :5, 0] = 65535  # 5 saturated pixels of 200 in channel 0 (its one 0 is kept)
    a[1, :2, :, 1] = 0  # 20 zeros in channel 1
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, a.transpose(0, 3, 1, 2), ome=True, photometric="minisblack",
                     metadata={"axes": "TCYX", "Channel": {"Name": ["act", "tub"]}})  # fmt: skip
    rows = channel_statistics(open_image(path))
    assert [r["name"] for r in rows] == ["act", "tub"]
    act, tub = rows
    assert act["saturation"] == 65535 and act["saturated"] == pytest.approx(5 / 200)
    assert act["max"] == 65535 and act["min"] == 0 and act["zeros"] == pytest.approx(1 / 200)
    assert tub["zeros"] == pytest.approx(20 / 200) and tub["saturated"] == 0
    v = a[..., 0].astype(np.float64).ravel()
    assert act["median"] == pytest.approx(np.median(v))
    assert act["p99_9"] == pytest.approx(np.percentile(v, 99.9))
    assert not act["sampled"] and act["pixels"] == 200 and act["frames"] == 2


def test_channel_statistics_float_saturation_rule():
    rng = np.random.default_rng(0)
    plateau = rng.random((1, 100, 100)).astype(np.float32)
    plateau[0, :5] = 2.0  # 5 % of the pixels at the maximum: clipped
    rows = channel_statistics(plateau)
    assert rows[0]["saturation"] == 2.0 and rows[0]["saturated"] == pytest.approx(0.05)
    plain = rng.random((1, 100, 100)).astype(np.float32)  # one pixel at its maximum
    assert channel_statistics(plain)[0]["saturation"] is None
    assert channel_statistics(plain)[0]["saturated"] == 0
    holes = plain.copy()
    holes[0, 0, :100] = np.nan
    stats = channel_statistics(holes)[0]
    assert stats["non_finite"] == pytest.approx(0.01) and np.isfinite(stats["max"])


def test_channel_statistics_samples_large_images(monkeypatch):
    from musplit.data.io import ImageSource

    img = np.random.default_rng(1).random((40, 16, 16)).astype(np.float32)
    src = open_image(img)
    read = []
    real = ImageSource.read

    def spy(self, frames=None, *args, **kw):
        read.append(list(frames))
        return real(self, frames, *args, **kw)

    monkeypatch.setattr(ImageSource, "read", spy)
    rows = channel_statistics(src, max_pixels=5 * 256)
    assert rows[0]["sampled"] and rows[0]["frames"] == 5 and rows[0]["pixels"] == 5 * 256
    assert sorted(sum(read, [])) == [0, 10, 20, 29, 39]  # evenly spaced, a frame at a time
    big = open_image(np.random.default_rng(2).random((1, 64, 64)).astype(np.float32))
    band = channel_statistics(big, max_pixels=512)[0]  # one frame larger than the budget
    assert band["sampled"] and band["pixels"] == 512 and band["frames"] == 1
    assert len(read) == 5 + 8  # eight bands of one row, each read on its own


def test_channel_statistics_of_a_compressed_frame_decode_it_once(tmp_path, monkeypatch):
    a = frames(1, 64, 64)
    path = imwrite(tmp_path / "big.tif", a, compression="zlib")
    keys = []
    real = tifffile.TiffFile.asarray
    monkeypatch.setattr(tifffile.TiffFile, "asarray",
                        lambda self, *x, **k: keys.append(k["key"]) or real(self, *x, **k))
    stats = channel_statistics(open_image(path), max_pixels=512)[0]
    assert keys == [[0]] and stats["pixels"] == 512 and stats["sampled"]
    assert stats["max"] == a[0, 28:36].max()  # the central eight rows
