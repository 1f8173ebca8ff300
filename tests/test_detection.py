"""Detection targets, loss, decoding and evaluation (spec/pcmc.md §9, §15 items 6-8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from musplit.errors import CheckpointError, InputError
from musplit.pretrain import detection as det
from musplit.pretrain.config import (
    CCFViTConfig,
    CellCentroidFormerConfig,
    DetectionConfig,
    ViTConfig,
)
from musplit.pretrain.models import PcolorMAE, encoder_state_dict

torch.set_num_threads(1)

TINY_VIT = ViTConfig(image_size=64, patch_size=8, dim=64, depth=2, heads=4, dim_head=16,
                     mlp_dim=128)
TINY_CCF = CCFViTConfig(vit=TINY_VIT, neck_dim=32, mvit_patch=4, mvit_mlp_dim=64)


def rect_labels(shape, boxes):
    """Label image with filled rectangles (x, y, w, h), ids 1..K."""
    lab = np.zeros(shape, np.int32)
    for i, (x, y, w, h) in enumerate(boxes, 1):
        lab[y:y + h, x:x + w] = i
    return lab


def disc_labels(shape, centres, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = i
    return lab


# -- §9.2 targets (§15 item 6) -------------------------------------------------------------
def test_boxes_are_xywh_with_plus_one_widths():
    lab = rect_labels((40, 50), [(3, 5, 10, 4), (20, 1, 1, 1)])
    lab[30:32, 40:45] = 1  # a second component of instance 1: one box over both
    boxes, ids = det.boxes_from_labels(lab)
    assert ids.tolist() == [1, 2]
    assert boxes.tolist() == [[3, 5, 42, 27], [20, 1, 1, 1]]
    with pytest.raises(InputError):
        det.boxes_from_labels(lab.astype(np.float32))


def test_heatmap_peaks_for_large_and_tiny_cells():
    lab = disc_labels((100, 100), [(50, 50)], 15)  # 31 px box
    boxes, _ = det.boxes_from_labels(lab)
    hm = det.centroid_heatmap(boxes, (100, 100))
    assert hm.max() == pytest.approx(0.97, abs=0.01)
    # the peak sits at the box centre (x + w//2, y + h//2)
    assert hm[50, 50] == hm.max()
    tiny = det.centroid_heatmap(np.array([[40, 40, 3, 3]]), (100, 100))
    assert tiny.max() == pytest.approx(0.75)
    # a 3 px cell never passes the strict 0.75 decoding threshold (defect 12)
    assert det.decode(tiny, np.zeros((2, 100, 100)), 0.75)["boxes"].shape == (0, 4)


def test_heatmap_blur_stays_inside_its_window_and_cells_sum():
    boxes = np.array([[20, 30, 12, 9]])
    hm = det.centroid_heatmap(boxes, (80, 80))
    x, y, w, h = boxes[0]
    outside = np.ones_like(hm, bool)
    outside[y - h:y + 2 * h, x - w:x + 2 * w] = False
    assert hm[outside].max() == 0 and hm.max() > 0.8
    two = det.centroid_heatmap(np.array([[20, 30, 12, 9], [22, 31, 12, 9]]), (80, 80))
    assert two.max() > 1.0  # overlapping cells sum


def test_block3_size_maps():
    boxes = np.array([[10, 20, 15, 9]])
    sizes, mask = det.size_maps(boxes, (64, 64), "block3")
    cx, cy = 10 + 7, 20 + 4
    expect = np.zeros((64, 64), bool)
    expect[cy - 1:cy + 2, cx - 1:cx + 2] = True
    assert np.array_equal(mask, expect)
    assert np.all(sizes[0][expect] == 9) and np.all(sizes[1][expect] == 15)
    assert sizes[:, ~expect].max() == 0
    rel, _ = det.size_maps(boxes, (64, 64), "block3", relative=True, image_size=64)
    assert rel[0, cy, cx] == pytest.approx(9 / 64) and rel[1, cy, cx] == pytest.approx(15 / 64)


def test_central_half_size_maps_and_overwrite_order():
    boxes = np.array([[8, 4, 20, 13]])
    sizes, mask = det.size_maps(boxes, (48, 64), "central_half")
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    assert (rows[0], rows[-1]) == (4 + 13 // 4, 4 + (3 * 13) // 4)
    assert (cols[0], cols[-1]) == (8 + 20 // 4, 8 + (3 * 20) // 4)
    assert sizes[0, rows[0], cols[0]] == pytest.approx(13 / 48)
    assert sizes[1, rows[0], cols[0]] == pytest.approx(20 / 64)
    # ascending ids: the later box overwrites the earlier one where blocks overlap
    s2, _ = det.size_maps(np.array([[10, 10, 10, 10], [11, 11, 12, 12]]), (40, 40), "block3")
    assert s2[0, 16, 16] == 12


# -- §9.5 decoding (§15 item 7) ------------------------------------------------------------
@pytest.mark.parametrize("scheme,relative", [("block3", False), ("block3", True),
                                             ("central_half", True)])
def test_decode_round_trip_of_separated_cells(scheme, relative):
    rng = np.random.default_rng(0)
    boxes = []
    for gy in range(4):
        for gx in range(4):
            w, h = rng.integers(8, 28, size=2)
            boxes.append((gx * 48 + 6, gy * 48 + 6, int(w), int(h)))
    lab = rect_labels((192, 192), boxes)
    tg = det.make_targets(lab, scheme, relative, 192)
    scale = (192, 192) if relative else (1, 1)
    out = det.decode(tg["heatmap"][0], tg["sizes"], 0.75, 3, scale)
    assert len(out["boxes"]) == len(boxes)
    ious = det._iou_xywh(np.asarray(boxes, float), out["boxes"]).max(1)
    assert ious.min() >= 0.9


def test_decode_nms_threshold_scores_and_clipping():
    hm = np.zeros((20, 20), np.float32)
    hm[5, 5] = 0.9
    hm[5, 6] = 0.8  # suppressed by NMS (not a 3x3 maximum)
    hm[12, 12] = hm[12, 13] = 0.85  # a tie: both kept, one component, centroid truncated
    hm[18, 2] = 0.75  # not strictly above 0.75
    sizes = np.zeros((2, 20, 20), np.float32)
    sizes[:, 5, 5] = (4, 6)
    sizes[:, 12, 12] = (6, 30)
    out = det.decode(hm, sizes, 0.75, 3)
    order = np.argsort(out["boxes"][:, 1])
    b, s = out["boxes"][order], out["scores"][order]
    assert len(b) == 2
    assert b[0].tolist() == [2, 3, 6, 4] and s[0] == pytest.approx(0.9)
    assert b[1].tolist() == [0, 9, 20, 6]  # x = 12 - 15 = -3 clipped to 0, x + w to 20
    assert s[1] == pytest.approx(0.85)
    ref = det.decode(hm, sizes, 0.75, 3, clip=False, constant_score=True)
    assert np.all(ref["scores"] == 1.0)
    assert sorted(ref["boxes"][:, 0].tolist()) == [-3, 2]
    no_nms = det.decode(hm, sizes, 0.75, 0)
    assert len(no_nms["boxes"]) == 2  # (5,5)+(5,6) form one component without NMS


# -- §9.6 evaluation (§15 item 8) ----------------------------------------------------------
def test_ground_truth_as_predictions_scores_one():
    rng = np.random.default_rng(1)
    gts = [np.column_stack([rng.integers(0, 200, (n, 2)), rng.integers(8, 40, (n, 2))])
           for n in (3, 7, 1)]
    preds = [{"boxes": g, "scores": rng.random(len(g))} for g in gts]
    res = det.evaluate_boxes(preds, gts)
    assert res["map"] == 1.0 and res["map_50"] == 1.0 and res["mar_1000"] == 1.0


def test_shifted_box_gives_known_map():
    g = np.array([[10, 10, 20, 20]])
    p = {"boxes": np.array([[12, 10, 20, 20]]), "scores": np.array([0.9])}
    # IoU = 360 / 440 = 0.818: passes 7 of the 10 thresholds 0.50 ... 0.95
    res = det.evaluate_boxes([p], [g])
    assert res["map"] == pytest.approx(0.7)
    assert res["map_50"] == pytest.approx(1.0) and res["map_75"] == pytest.approx(1.0)


def test_real_scores_rank_detections():
    g = np.array([[0, 0, 10, 10], [50, 50, 10, 10]])
    tp = [[0, 0, 10, 10], [50, 50, 10, 10]]
    fp = [[100, 100, 10, 10]]
    good = {"boxes": np.array(tp + fp), "scores": np.array([0.9, 0.8, 0.1])}
    bad = {"boxes": np.array(tp + fp), "scores": np.array([0.5, 0.4, 0.95])}
    assert det.evaluate_boxes([good], [g])["map"] == pytest.approx(1.0)
    assert det.evaluate_boxes([bad], [g])["map"] < 0.8


def test_many_cells_are_not_truncated_in_clean_mode():
    xs, ys = np.meshgrid(np.arange(15) * 20, np.arange(10) * 20)
    g = np.column_stack([xs.ravel(), ys.ravel(), np.full(150, 12), np.full(150, 12)])
    p = {"boxes": g, "scores": np.linspace(1, 0.5, 150)}
    assert det.evaluate_boxes([p], [g], [10, 100, 1000])["map"] == 1.0
    ref = det.evaluate_boxes([p], [g], [1, 10, 100])
    assert ref["mar_100"] == pytest.approx(100 / 150) and ref["map"] < 0.7
    with pytest.raises(InputError):
        det.evaluate_boxes([p], [g, g])


def test_f1_greedy_matching():
    g = np.array([[0, 0, 10, 10], [30, 0, 10, 10]])
    p = {"boxes": np.array([[0, 0, 10, 10], [1, 0, 10, 10], [60, 0, 5, 5]]),
         "scores": np.array([0.9, 0.8, 0.7])}
    f = det.f1_at_iou([p], [g])
    assert f["tp"] == 1 and f["f1"] == pytest.approx(2 / 5)


class OracleDetector(nn.Module):
    """Returns given maps batch by batch (the decoder is tested, not a network)."""

    def __init__(self, heat, sizes):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.heat, self.sizes, self.i = heat, sizes, 0

    def forward(self, x):
        b = x.shape[0]
        out = {"heatmap": torch.as_tensor(self.heat[self.i:self.i + b])[:, None],
               "sizes": torch.as_tensor(self.sizes[self.i:self.i + b])}
        self.i += b
        return out


def _oracle(labels, cfg):
    tg = [det.make_targets(lab, cfg.scheme, cfg.relative_sizes, cfg.image_size)
          for lab in labels]
    return OracleDetector(np.stack([t["heatmap"][0] for t in tg]),
                          np.stack([t["sizes"] for t in tg]))


def test_target_maps_as_predictions_clean_and_reference():
    from musplit.pretrain import synth

    imgs, _ = synth.generate("sim_nuclei", 3, 0, size=64, namespace="detect-test")
    labs = np.stack([disc_labels((64, 64), [(16, 16), (16, 46), (46, 20)], 9),
                     disc_labels((64, 64), [(20, 30)], 12),
                     disc_labels((64, 64), [(30, 12), (30, 44)], 8)])
    labs[0][44:47, 44:47] = 9  # a 3 px cell: clean GT counts it, reference GT loses it
    cfg = DetectionConfig(vit=TINY_CCF)
    clean = det.evaluate_detector(_oracle(labs, cfg), imgs, labs, cfg=cfg)
    ref = det.evaluate_detector(_oracle(labs, cfg), imgs, labs, reference_mode=True, cfg=cfg)
    assert clean["mode"] == "clean" and clean["n_gt"] == 7
    assert clean["max_dets"] == [10, 100, 1000] and ref["max_dets"] == [1, 10, 100]
    assert ref["mode"] == "reference" and ref["n_gt"] == 6  # the tiny cell silently vanishes
    assert ref["map"] == pytest.approx(1.0) and ref["map_50"] == pytest.approx(1.0)
    # at the 0.75 decoding threshold the tiny cell (peak 0.75) is a miss ...
    assert clean["recall_50"] == pytest.approx(6 / 7)
    # ... but clean-mode candidates (> 0.3) with peak scores still find it
    assert clean["map_50"] == pytest.approx(1.0)
    assert clean["heatmap_iou"] == pytest.approx(1.0)
    # without the tiny cell the clean floor of §12.6 holds
    labs[0][44:47, 44:47] = 0
    clean2 = det.evaluate_detector(_oracle(labs, cfg), imgs, labs, cfg=cfg)
    assert clean2["map_50"] == 1.0 and clean2["map"] >= 0.9


def test_reference_scores_are_constant():
    from musplit.pretrain import synth

    cfg = DetectionConfig(vit=TINY_CCF, mode="reference")
    _, labs = synth.generate("sim_nuclei", 2, 1, size=64)
    tg = det.make_targets(labs[0], "block3", False, 64)
    noisy = tg["heatmap"][0] * 0.9 + 0.05
    preds = det.predict(OracleDetector(noisy[None], tg["sizes"][None]),
                        np.zeros((1, 64, 64), np.float32) + np.eye(64)[None], cfg)
    assert len(preds[0]["scores"]) and np.all(preds[0]["scores"] == 1.0)


# -- config --------------------------------------------------------------------------------
def test_detection_config_modes_and_schemes():
    ref = DetectionConfig(mode="reference")
    assert (ref.threshold, ref.nms_kernel, ref.candidate_threshold) == (0.75, 3, 0.75)
    with pytest.raises(ValueError, match="forces nms_kernel"):
        DetectionConfig(mode="reference", nms_kernel=0)
    clean = ref.with_mode("clean")
    assert clean.candidate_threshold == 0.3 and clean.max_dets_resolved == [10, 100, 1000]
    assert DetectionConfig().scheme == "block3"
    assert DetectionConfig(model="ccf_cnn").scheme == "central_half"
    assert DetectionConfig(model="ccf_cnn", size_scheme="block3").scheme == "block3"
    assert DetectionConfig(model="ccf_cnn").relative_sizes
    with pytest.raises(ValueError):
        DetectionConfig(model="ccf_cnn", vit=TINY_CCF)


# -- §9.3 loss -----------------------------------------------------------------------------
def test_loss_zero_for_perfect_prediction_and_reference_dilution():
    lab = rect_labels((32, 32), [(4, 4, 10, 12)])
    t = {k: torch.as_tensor(v)[None] for k, v in det.make_targets(lab).items() if k != "boxes"}
    cfg = DetectionConfig()
    perfect = {"heatmap": t["heatmap"], "sizes": t["sizes"] + 5 * (1 - t["mask"])}
    assert float(det.detection_loss(perfect, t, cfg)["loss"]) == 0.0
    pred = {"heatmap": t["heatmap"], "sizes": torch.zeros_like(t["sizes"])}
    parts = det.detection_loss(pred, t, cfg)
    # 9 pixels with errors 12 and 10 (Huber delta 1: |e| - 0.5), mean over 32 x 32 pixels
    expect = 9 * (11.5 + 9.5) / (32 * 32)
    assert float(parts["size"]) == pytest.approx(expect)
    assert float(parts["loss"]) == pytest.approx(0.5 * expect)
    masked = det.detection_loss(pred, t, cfg.model_copy(update={"size_loss_norm": "mask"}))
    assert float(masked["size"]) == pytest.approx(9 * (11.5 + 9.5) / 9)


# -- §9.4 fine-tuning ----------------------------------------------------------------------
def test_label_subsets_are_nested_and_seeded():
    a = det.label_subset(400, 0.01, 3)
    b = det.label_subset(400, 0.1, 3)
    c = det.label_subset(400, 1.0, 3)
    assert len(a) == 4 and len(b) == 40 and len(c) == 400
    assert set(a) <= set(b) <= set(c)
    assert not np.array_equal(det.label_subset(400, 0.1, 4), b)
    with pytest.raises(InputError):
        det.label_subset(10, 0.0, 0)


def test_train_detector_tiny_vit_with_pretrained_encoder(tmp_path):
    from musplit.pretrain import synth

    imgs, labs = synth.generate("sim_nuclei", 6, 0, size=64, namespace="detect-train")
    torch.manual_seed(5)
    mae = PcolorMAE(vit=TINY_VIT, decoder_dim=64, decoder_depth=1, decoder_heads=4,
                    decoder_dim_head=16, decoder_mlp_dim=128)
    state = encoder_state_dict(mae)
    cfg = DetectionConfig(vit=TINY_CCF, steps=20, batch=3, lr=1e-3, backbone_frozen=True)
    model, log = det.train_detector(imgs, labs, cfg, encoder_state=state, label_fraction=0.5)
    assert len(log["loss"]) == 20 and log["subset"] == det.label_subset(6, 0.5, 0).tolist()
    assert log["load_report"]["missing"] == [] and log["load_report"]["scope"] == "encoder"
    assert np.mean(log["loss"][-5:]) < np.mean(log["loss"][:5])
    assert log["lr"][0] == pytest.approx(1e-3) and log["lr"][-1] < 1e-4
    # frozen backbone: the pre-trained encoder is unchanged
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, state[k]), k
    res = det.evaluate_detector(model, imgs, labs)
    assert 0.0 <= res["map"] <= 1.0 and res["mode"] == "clean"
    # checkpoint round trip, and --init from a saved pretext checkpoint
    path = det.save_detector(tmp_path / "d.ckpt", model, cfg, extra={"log": "x"})
    again, cfg2, extra = det.load_detector(path)
    assert cfg2 == cfg and extra["log"] == "x"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x)["heatmap"], model(x)["heatmap"])
    torch.save({"state_dict": mae.state_dict()}, tmp_path / "mae.pt")
    assert det.read_encoder_state(tmp_path / "mae.pt").keys() == mae.state_dict().keys()
    with pytest.raises(CheckpointError):
        det.load_detector(tmp_path / "mae.pt")
    with pytest.raises(CheckpointError):
        det.read_encoder_state(tmp_path / "none.pt")


def test_train_detector_tiny_cnn_from_pretext_model():
    from musplit.pretrain import synth
    from musplit.pretrain.models import CellCentroidFormer

    imgs, labs = synth.generate("cyto_halo_cells", 4, 0, size=64, namespace="detect-train")
    cnn = CellCentroidFormerConfig(image_size=64, width_mult=0.25, depth_mult=0.25,
                                   neck_dims=(32, 16), head_filters=(16, 16, 16))
    pre = CellCentroidFormer(cnn, pretext=True)
    cfg = DetectionConfig(model="ccf_cnn", cnn=cnn, steps=3, batch=2)
    model, log = det.train_detector(imgs, labs, cfg, encoder_state=pre.state_dict())
    assert log["load_report"]["scope"] == "all"
    assert len(log["load_report"]["skipped"]) == 4
    assert model(torch.rand(1, 3, 64, 64))["sizes"].shape == (1, 2, 64, 64)


def test_aux_pcolor_multitask_fine_tuning():
    from musplit.pretrain import synth
    from musplit.pretrain.colormap import pcolor

    imgs, labs = synth.generate("sim_nuclei", 2, 0, size=64)
    ccf = TINY_CCF.model_copy(update={"aux_pcolor": True, "aux_depth": 1})
    cfg = DetectionConfig(vit=ccf, steps=2, batch=2)
    data = det._DetectionData(det.normalize_images(imgs), labs, cfg, pcolor=True)
    x, tg = data[(1, 5)]  # rotated and flipped: the target follows the transformed input
    assert torch.equal(tg["pcolor"], torch.as_tensor(pcolor(x[0].numpy())))
    lab_t = np.rot90(labs[1], 1)[:, ::-1]
    assert torch.equal(tg["heatmap"][0], torch.as_tensor(
        det.centroid_heatmap(det.boxes_from_labels(np.ascontiguousarray(lab_t))[0], (64, 64))))
    model, log = det.train_detector(imgs, labs, cfg)
    with torch.no_grad():
        out = model(x[None])
    assert out["pcolor"].shape == (1, 3, 64, 64)
    parts = det.detection_loss(out, {k: v[None] for k, v in tg.items()}, cfg)
    assert float(parts["loss"]) == pytest.approx(
        float(parts["heatmap"] + 0.5 * parts["size"] + parts["pcolor"]), rel=1e-5)
