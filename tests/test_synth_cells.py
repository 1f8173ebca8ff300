"""Synthetic cells with exact instance masks (spec/pcmc.md §11, §15 item 12) and CTC reading."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from musplit.errors import InputError
from musplit.pretrain import synth
from musplit.pretrain.config import SynthDatasetConfig, SynthPresetConfig


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_six_presets_with_spec_numbers():
    assert list(synth.PRESETS) == ["sim_nuclei", "dense_small_nuclei", "hetero_lowsnr_nuclei",
                                   "large_elongated_cells", "single_cell_filopodia",
                                   "cyto_halo_cells"]
    p = synth.PRESETS["sim_nuclei"]
    assert p.cells == (8, 30) and p.axis_long == (14, 28) and p.sigma_psf == 1.5
    assert synth.PRESETS["dense_small_nuclei"].gap == 0
    assert synth.PRESETS["single_cell_filopodia"].extra_cell_p == 0.2
    assert all(isinstance(v, SynthPresetConfig) and v.size == 384
               for v in synth.PRESETS.values())


def test_generate_is_deterministic_and_typed():
    a_img, a_lab = synth.generate("sim_nuclei", 2, seed=7, size=128)
    b_img, b_lab = synth.generate("sim_nuclei", 2, seed=7, size=128)
    assert a_img.dtype == np.float32 and a_lab.dtype == np.int32
    assert a_img.shape == a_lab.shape == (2, 128, 128)
    assert _digest(a_img, a_lab) == _digest(b_img, b_lab)
    c_img, _ = synth.generate("sim_nuclei", 2, seed=8, size=128)
    assert _digest(c_img) != _digest(a_img)
    # frames are independent: frame 1 alone equals frame 1 of the pair
    one_img, one_lab = synth.generate("sim_nuclei", 1, seed=7, size=128, start=1)
    assert np.array_equal(one_img[0], a_img[1]) and np.array_equal(one_lab[0], a_lab[1])
    # detector counts: integers with offset 100
    assert np.array_equal(a_img, np.round(a_img)) and a_img.min() >= 0


@pytest.mark.parametrize("name", list(synth.PRESETS))
def test_labels_are_exact_and_within_preset_ranges(name):
    cfg = synth.PRESETS[name]
    lo, hi = cfg.cells[0], cfg.cells[1] + (1 if cfg.extra_cell_p > 0 else 0)
    for fr in synth.generate_frames(name, 2, seed=3, namespace="detect-train"):
        lab = fr.labels
        assert lab.dtype == np.uint16 and fr.image.dtype == np.uint16
        # label > 0 <=> object support; every labelled pixel carries signal
        assert np.array_equal(lab > 0, fr.objects > 0)
        ids = np.unique(lab[lab > 0])
        assert np.array_equal(ids, np.arange(1, len(fr.cells) + 1))
        assert lo <= len(ids) <= hi
        objs = ndi.find_objects(lab)
        for cell, sl in zip(fr.cells, objs, strict=True):
            x, y, w, h = cell["box"]
            assert (sl[0].start, sl[1].start, sl[0].stop - sl[0].start,
                    sl[1].stop - sl[1].start) == (y, x, h, w)
            assert cell["area"] == int((lab == cell["id"]).sum())
            if cell["fully_visible"]:
                assert min(w, h) >= cfg.min_box
            assert cell["area"] >= cfg.min_area
        if cfg.gap > 0:
            # different instances never touch (4-neighbourhood) when the preset keeps a gap
            for a, b in ((lab[1:], lab[:-1]), (lab[:, 1:], lab[:, :-1])):
                both = (a > 0) & (b > 0)
                assert np.all(a[both] == b[both])


def test_semi_axes_within_preset_range():
    cfg = synth.PRESETS["sim_nuclei"]
    fr = next(synth.generate_frames("sim_nuclei", 1, seed=0))
    for c in fr.cells:
        if c["fully_visible"]:
            x, y, w, h = c["box"]
            # a star-convex cell with semi-axes in [14, 28] and eps 0.06 fits these bounds
            assert 2 * cfg.axis_long[0] / 1.4 * 0.9 - 2 <= min(w, h)
            assert max(w, h) <= 2 * cfg.axis_long[1] * 1.1 + 2


def test_namespaces_are_disjoint():
    seen = {}
    for ns in ("pretrain", "detect-train", "detect-val", "detect-test"):
        img, _ = synth.generate("dense_small_nuclei", 3, seed=0, size=64, namespace=ns)
        for f in img:
            d = _digest(f)
            assert d not in seen, f"frame shared between {seen.get(d)} and {ns}"
            seen[d] = ns
    with pytest.raises(InputError):
        synth.generate("sim_nuclei", 1, seed=0, namespace="test")


def test_unknown_preset_and_bad_overrides():
    with pytest.raises(InputError, match="unknown synthetic preset"):
        synth.generate("nope", 1, 0)
    with pytest.raises(InputError):
        synth.generate("sim_nuclei", 1, 0, size=16)
    with pytest.raises(InputError):
        synth.preset_config("sim_nuclei", overrides={"cells": (5, 2)})
    cfg = synth.preset_config("sim_nuclei", overrides={"cells": (2, 2)})
    assert cfg.cells == (2, 2)


def test_brightness_reference_is_nominal_not_per_frame():
    # the same cell brightness gives the same photon scale in any frame: the reference is i_ref
    cfg = synth.preset_config("sim_nuclei", 64, overrides={
        "sigma_b": 0.0, "n_peak": (500, 500), "sigma_read": 0.0, "cells": (1, 1),
        "background_noise": 0.0})
    f1 = synth.render_frame(cfg, synth.frame_rng(0, "pretrain", "sim_nuclei", 0))
    bright = cfg.model_copy(update={"brightness": 2.0})
    f2 = synth.render_frame(bright, synth.frame_rng(0, "pretrain", "sim_nuclei", 0))
    bg = 500 * cfg.background
    r = (f2.clean.max() - bg) / (f1.clean.max() - bg)
    assert r == pytest.approx(2.0, rel=1e-4)


def test_write_and_verify_dataset(tmp_path):
    cfg = SynthDatasetConfig(preset="cyto_halo_cells", namespace="detect-test", frames=2,
                             seed=1, size=64)
    man = synth.write_dataset(tmp_path / "ds", cfg)
    data = json.loads(man.read_text())
    assert data["generator_version"] == synth.GENERATOR_VERSION
    assert len(data["files"]) == 4
    img = tifffile.imread(tmp_path / "ds" / "images" / "000001.tif")
    lab = tifffile.imread(tmp_path / "ds" / "labels" / "000001.tif")
    ref_img, ref_lab = synth.generate("cyto_halo_cells", 2, 1, size=64, namespace="detect-test")
    assert img.dtype == np.uint16 and np.array_equal(img, ref_img[1])
    assert np.array_equal(lab, ref_lab[1])
    meta = json.loads((tmp_path / "ds" / "meta" / "000001.json").read_text())
    assert len(meta["cells"]) == len(np.unique(lab)) - 1
    assert synth.verify_dataset(tmp_path / "ds") == []
    with pytest.raises(InputError, match="exists"):
        synth.write_dataset(tmp_path / "ds", cfg)
    tifffile.imwrite(tmp_path / "ds" / "labels" / "000000.tif", np.zeros((64, 64), np.uint16))
    problems = synth.verify_dataset(tmp_path / "ds")
    assert problems == ["labels/000000.tif: file checksum differs from the manifest"]
    with pytest.raises(InputError):
        synth.verify_dataset(tmp_path)


def test_uint8_option():
    fr = next(synth.generate_frames("sim_nuclei", 1, 0, size=64, dtype="uint8"))
    assert fr.image.dtype == np.uint8 and fr.image.max() == 255


# -- Cell Tracking Challenge layout --------------------------------------------------------
def _ctc(root, seq="01", frames=(0, 1, 2), masks=(0, 2), kind="GT", shape=(32, 40)):
    (root / seq).mkdir(parents=True, exist_ok=True)
    seg = root / f"{seq}_{kind}" / "SEG"
    seg.mkdir(parents=True, exist_ok=True)
    for t in frames:
        tifffile.imwrite(root / seq / f"t{t:03d}.tif", np.full(shape, 10 + t, np.uint16))
    for t in masks:
        lab = np.zeros(shape, np.uint16)
        lab[2:6, 3:9] = t + 1
        tifffile.imwrite(seg / f"man_seg{t:03d}.tif", lab)


def test_read_ctc_pairs_by_frame_number(tmp_path):
    _ctc(tmp_path)
    images, labels = synth.read_ctc(tmp_path)
    assert images.shape == labels.shape == (2, 32, 40)
    assert images.dtype == np.float32 and labels.dtype == np.int32
    # frame t002 is paired with man_seg002, not with the second image in sort order
    assert images[1, 0, 0] == 12 and labels[1, 3, 4] == 3
    # a sequence folder works too, and ST masks are found when there is no GT
    _ctc(tmp_path / "b", kind="ST", masks=(1,))
    img_b, lab_b = synth.read_ctc(tmp_path / "b" / "01")
    assert img_b[0, 0, 0] == 11 and lab_b[0].max() == 2
    img_r, lab_r = synth.read_ctc(tmp_path, size=16)
    assert img_r.shape == (2, 16, 16) and set(np.unique(lab_r[1])) <= {0, 3}


def test_read_ctc_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        synth.read_ctc(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no sequence folders"):
        synth.read_ctc(tmp_path / "empty")
    _ctc(tmp_path / "a", frames=(0,), masks=(0, 1))
    with pytest.raises(InputError, match="no matching image t001.tif"):
        synth.read_ctc(tmp_path / "a")
    _ctc(tmp_path / "c", frames=(0,), masks=())
    tifffile.imwrite(tmp_path / "c" / "01_GT" / "SEG" / "man_seg000.tif",
                     np.zeros((8, 8), np.uint16))
    with pytest.raises(InputError, match="shape"):
        synth.read_ctc(tmp_path / "c")
    (tmp_path / "d" / "01").mkdir(parents=True)
    (tmp_path / "d" / "01_GT" / "SEG").mkdir(parents=True)
    with pytest.raises(InputError, match="no mask files"):
        synth.read_ctc(tmp_path / "d")
