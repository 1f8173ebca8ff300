"""Fiji-ready prediction files (issue 19, item 3): a ``.tif`` is an ImageJ hyperstack with
named channels and the input's pixel size (what Fiji's own TIFF reader shows without
Bio-Formats), an ``.ome.tif`` is OME-TIFF, and both load back into a :class:`Prediction`."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from musplit.predict import Prediction


def _prediction(n=2, c=3, std=True):
    rng = np.random.default_rng(0)
    mean = rng.random((n, 40, 48, c), dtype=np.float32)
    return Prediction(mean, mean / 10 if std else None, None, None,
                      ["filaments", "blobs", "puncta"][:c], "SYXC",
                      {"model": "run/best.ckpt", "samples": 3}, (0.1625, 0.1625))


def test_a_tif_prediction_is_an_imagej_hyperstack_fiji_opens_with_names_and_pixel_size(
        tmp_path):
    pred = _prediction()
    out = pred.save(tmp_path / "split.tif")
    for path in (out, tmp_path / "split_std.tif"):
        with tifffile.TiffFile(path) as tf:
            assert tf.is_imagej and not tf.is_ome
            ij = tf.imagej_metadata
            assert ij["hyperstack"] and ij["channels"] == 3 and ij["frames"] == 2
            assert ij["Labels"][:3] == ["filaments", "blobs", "puncta"]
            assert ij["unit"] == "um"
            page = tf.pages[0]
            xres = page.tags["XResolution"].value
            assert xres[1] / xres[0] == pytest.approx(0.1625, rel=1e-6)  # µm per pixel
            assert tf.series[0].axes == "TCYX" and tf.series[0].shape == (2, 3, 40, 48)
    back = Prediction.load(out)
    np.testing.assert_array_equal(back.mean, pred.mean)
    np.testing.assert_allclose(back.std, pred.std)
    assert back.channel_names == ["filaments", "blobs", "puncta"]
    assert back.pixel_size == pytest.approx((0.1625, 0.1625))
    assert back.meta == {"model": "run/best.ckpt", "samples": 3}


def test_an_ome_tif_prediction_is_ome_tiff_with_the_same_content(tmp_path):
    pred = _prediction(std=False)
    out = pred.save(tmp_path / "split.ome.tif")
    with tifffile.TiffFile(out) as tf:
        assert tf.is_ome and not tf.is_imagej
        xml = tf.ome_metadata
        assert all(f'Name="{n}"' in xml for n in pred.channel_names)
        assert 'PhysicalSizeX="0.1625"' in xml
    back = Prediction.load(out)
    np.testing.assert_array_equal(back.mean, pred.mean)
    assert back.channel_names == pred.channel_names and back.meta == pred.meta
    assert back.pixel_size == pytest.approx((0.1625, 0.1625))


def test_a_zarr_prediction_is_ome_zarr_with_axes_names_and_scale(tmp_path):
    import zarr

    pred = _prediction(std=False)
    out = pred.save(tmp_path / "split.zarr")
    attrs = dict(zarr.open(str(out), mode="r").attrs)
    ome = attrs["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["t", "c", "y", "x"]
    assert [a["type"] for a in ms["axes"]] == ["time", "channel", "space", "space"]
    assert ms["axes"][2]["unit"] == ms["axes"][3]["unit"] == "micrometer"
    level0 = ms["datasets"][0]
    (scale,) = level0["coordinateTransformations"]
    assert scale["type"] == "scale" and scale["scale"] == pytest.approx([1, 1, 0.1625, 0.1625])
    assert [c["label"] for c in ome["omero"]["channels"]] == pred.channel_names
    arr = zarr.open(str(out), mode="r")[level0["path"]]
    assert arr.shape == (2, 3, 40, 48)
    np.testing.assert_array_equal(np.moveaxis(arr[:], 1, -1), pred.mean)
