"""The napari plugin driven for real (issue 19, item 1): both widgets docked in a real napari
viewer (napari's ``make_napari_viewer``, OpenGL canvas included, on a virtual X display started by
pytest-xvfb), values set, buttons clicked with pytest-qt, the worker waited for, and the resulting
layers checked.
Collected only where napari is installed (``pip install -e '.[napari]'``; tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image

from musplit.napari_plugin.predict_widget import PredictWidget
from musplit.napari_plugin.sample_data import critters
from musplit.splitter import Splitter
from musplit.training import train
from tests.test_training import tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train(tiny_config(max_steps=2), tmp_path_factory.mktemp("run"), progress=False)


def _widget(viewer, qtbot, ckpt):
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w, name="Split")
    w.checkpoint.setText(str(ckpt))
    return w


def _split(w, qtbot, timeout=120_000):
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)


def test_split_widget_adds_one_layer_per_structure_with_the_input_s_scale(
        make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    mix = (rng.random((2, 64, 64)) * 50).astype(np.float32)
    viewer.add_image(mix, name="mix", scale=(1, 0.2, 0.2), translate=(0, 5, 7))
    w = _widget(viewer, qtbot, checkpoint)
    assert w.layer.currentText() == "mix"
    w.samples.setValue(3)
    _split(w, qtbot)
    assert w.progress.value() == w.progress.maximum() > 0
    names = [lay.name for lay in viewer.layers]
    assert names == ["mix", "ch1", "ch2", "mix uncertainty (std)"]
    expected = Splitter.load(checkpoint).predict(mix, samples=3, seed=0)
    for c, name in enumerate(("ch1", "ch2")):
        layer = viewer.layers[name]
        assert tuple(layer.scale) == (1, 0.2, 0.2) and tuple(layer.translate) == (0, 5, 7)
        np.testing.assert_allclose(layer.data, expected.mean[..., c], rtol=1e-5, atol=1e-5)
    std = viewer.layers["mix uncertainty (std)"]
    assert std.data.shape == (2, 2, 64, 64) and not std.visible
    assert tuple(std.scale) == (1, 1, 0.2, 0.2)
    assert "split 'mix' into ch1, ch2" in w.status.text()
    # and the canvas draws them: a structure alone on screen is an image, an empty canvas is flat
    for lay in viewer.layers:
        lay.visible = False
    blank = viewer.screenshot(canvas_only=True, flash=False)
    viewer.layers["ch1"].visible = True
    viewer.reset_view()
    drawn = viewer.screenshot(canvas_only=True, flash=False)
    assert blank[..., :3].std() == 0 and drawn[..., :3].std() > 5


def test_a_2d_layer_gives_2d_layers_and_no_std_without_samples(make_napari_viewer, qtbot,
                                                               checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).random((48, 80)).astype(np.float32) * 20,
                     name="frame")
    w = _widget(viewer, qtbot, checkpoint)
    w.samples.setValue(1)
    _split(w, qtbot)
    added = [lay for lay in viewer.layers if lay.name != "frame"]
    assert [lay.name for lay in added] == ["ch1", "ch2"]
    assert all(lay.data.shape == (48, 80) for lay in added)


def test_cancel_stops_the_prediction_and_adds_nothing(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(2).random((4, 256, 256), np.float32) * 50,
                     name="big")
    w = _widget(viewer, qtbot, checkpoint)
    w.run_button.click()
    w.cancel_button.click()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert [lay.name for lay in viewer.layers] == ["big"]
    assert w.status.text() == "cancelled: nothing was added"
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()


@pytest.mark.parametrize("setup,needle", [
    ("missing", "does not exist"),
    ("rgb", "is RGB"),
    ("no-layer", "no image layer"),
    ("dim", "dimmer than the mixes the model was trained on"),
])
def test_mistakes_are_one_line_in_the_widget_never_a_traceback(make_napari_viewer, qtbot,
                                                               checkpoint, tmp_path, setup,
                                                               needle, monkeypatch):
    shown = []
    monkeypatch.setattr("musplit.napari_plugin.predict_widget.show_error", shown.append)
    viewer = make_napari_viewer()
    if setup == "rgb":
        viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo", rgb=True)
    elif setup in ("missing", "dim"):
        viewer.add_image(np.random.default_rng(3).random((64, 64), np.float32), name="img")
    w = _widget(viewer, qtbot, tmp_path / "nope.ckpt" if setup == "missing" else checkpoint)
    _split(w, qtbot)
    assert len(shown) == 1 and needle in shown[0] and "\n" not in shown[0], shown
    assert all(not lay.name.startswith("ch") for lay in viewer.layers)
    assert w.status.text() == shown[0] and w.run_button.isEnabled()
    if setup == "dim":  # the CLI's answer works here too
        shown.clear()
        w.brightness.setCurrentText("match")
        _split(w, qtbot)
        assert not shown and [lay.name for lay in viewer.layers][1:3] == ["ch1", "ch2"]


def test_sample_data_through_the_plugin_manifest(make_napari_viewer):
    from npe2 import PluginManager

    PluginManager.instance().discover(include_npe1=False)  # as napari does when it starts
    viewer = make_napari_viewer()
    viewer.open_sample("musplit", "critters")
    names = [lay.name for lay in viewer.layers]
    assert names == ["critters mix", "critters ch1 (truth)", "critters ch2 (truth)"]
    mix, a, b = (viewer.layers[n].data for n in names)
    np.testing.assert_allclose(mix, (a + b) / 2, rtol=1e-6)
    assert all(isinstance(lay, Image) for lay in viewer.layers)
    assert len(critters(frames=2, size=64)) == 3


def test_the_manifest_is_valid_and_names_the_widget():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("musplit")
    pm.validate_imports()
    assert [w.display_name for w in pm.contributions.widgets] == ["Split (predict)", "Train"]
    assert {s.key for s in pm.contributions.sample_data} == {"critters", "partseg"}


# -- the Train widget -------------------------------------------------------------------------
def _targets(viewer, frames=6, size=64):
    layers = critters(frames=frames, size=size)
    for data, kw, _ in layers[1:]:
        viewer.add_image(data, **{**kw, "visible": True})
    return [kw["name"] for _, kw, _ in layers[1:]]


def test_train_widget_trains_draws_the_curve_and_previews_the_split(make_napari_viewer, qtbot,
                                                                    tmp_path, monkeypatch):
    from musplit.napari_plugin.train_widget import TrainWidget

    viewer = make_napari_viewer()
    names = _targets(viewer)
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.select(names)
    w.steps.setValue(10)
    w.out.setText(str(tmp_path / "run"))
    w.train_button.click()
    qtbot.waitUntil(lambda: not w.running, timeout=300_000)
    assert w.best is not None and w.best.is_file(), w.status.text()
    assert w.status.text().startswith("trained at step 10: checkpoint")
    assert len(w.live.loss) == 10 and all(np.isfinite(v) for _, v in w.live.loss)
    assert w.live.psnr and w.live.psnr[-1][0] == 10
    assert [lay.name for lay in w.preview_layers] == [f"preview {n}" for n in names]
    assert w.preview_layers[0].data.shape == (64, 64)
    offered = [w.targets.item(i).text() for i in range(w.targets.count())]
    assert offered == names  # previews are never offered as training targets
    assert w.progress.value() == 10
    split = Splitter.load(w.best)
    assert split.config.train.max_steps == 10 and split.config.model.out_channels == 2
    assert (tmp_path / "run" / "targets.tif").is_file()  # the run folder holds its data
    # the widget refuses to train over it
    shown = []
    monkeypatch.setattr("musplit.napari_plugin.train_widget.show_error", shown.append)
    w.train_button.click()
    assert len(shown) == 1 and "already holds a trained model" in shown[0]


def test_train_widget_cancel_keeps_the_last_checkpoint(make_napari_viewer, qtbot, tmp_path):
    from musplit.checkpoints.format import load_checkpoint
    from musplit.napari_plugin.train_widget import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.select(_targets(viewer))
    w.steps.setValue(10_000)
    w.out.setText(str(tmp_path / "run"))
    w.train_button.click()
    qtbot.waitUntil(lambda: w.live.done >= 2, timeout=300_000)
    w.cancel_button.click()
    qtbot.waitUntil(lambda: not w.running, timeout=300_000)
    step = load_checkpoint(tmp_path / "run" / "last.ckpt")["extra"]["global_step"]
    assert 2 <= step < 10_000 and w.status.text().startswith(f"stopped at step {step}")


@pytest.mark.parametrize("case,needle", [
    ("none", "choose the target layers"),
    ("one", "choose two or more target layers"),
    ("shapes", "differ in shape"),
])
def test_train_widget_mistakes_are_one_line(make_napari_viewer, qtbot, tmp_path, case, needle,
                                            monkeypatch):
    from musplit.napari_plugin.train_widget import TrainWidget

    shown = []
    monkeypatch.setattr("musplit.napari_plugin.train_widget.show_error", shown.append)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="a")
    viewer.add_image(np.zeros((64, 80), np.float32), name="b")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.select({"none": [], "one": ["a"], "shapes": ["a", "b"]}[case])
    w.out.setText(str(tmp_path / "run"))
    w.train_button.click()
    assert not w.running and len(shown) == 1 and needle in shown[0] and "\n" not in shown[0]
    assert not (tmp_path / "run").exists()


# -- a .zarr prediction read by the OME-Zarr tools (issue 19, item 3) ---------------------------
@pytest.fixture(scope="module")
def zarr_prediction(checkpoint, tmp_path_factory):
    """``musplit predict`` from the command line: a 2-frame OME-TIFF with a 0.2 µm pixel size
    in, an OME-Zarr out."""
    import tifffile

    from musplit.cli import main

    d = tmp_path_factory.mktemp("zarr")
    mix = (np.random.default_rng(4).random((2, 64, 64)) * 50).astype(np.float32)
    tifffile.imwrite(d / "mix.ome.tif", mix, metadata={"axes": "TYX", "PhysicalSizeX": 0.2,
                                                       "PhysicalSizeY": 0.2})
    assert main(["predict", str(checkpoint), str(d / "mix.ome.tif"), "--out", str(d / "split.zarr"),
                 "--samples", "2"]) == 0
    return d / "split.zarr", mix


def test_ome_zarr_reads_the_prediction_s_axes_channel_names_and_scale(zarr_prediction):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    path, mix = zarr_prediction
    loc = parse_url(str(path))
    assert loc is not None and loc.version == "0.5"
    (image,) = [n for n in Reader(loc)() if n.load(Multiscales)]
    md = image.metadata
    assert [a["name"] for a in md["axes"]] == ["t", "c", "y", "x"]
    assert md["channel_names"] == ["ch1", "ch2"]
    assert md["coordinateTransformations"][0] == [
        {"type": "scale", "scale": pytest.approx([1, 1, 0.2, 0.2])}]
    level0 = np.asarray(image.data[0])
    assert level0.shape == (2, 2, 64, 64) and np.isfinite(level0).all()


def test_napari_s_ome_zarr_reader_opens_one_layer_per_structure(make_napari_viewer,
                                                                zarr_prediction):
    path, _ = zarr_prediction
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-ome-zarr")
    assert [lay.name.split(": ")[-1] for lay in layers] == ["ch1", "ch2"]
    for lay in layers:
        assert tuple(lay.scale) == pytest.approx((1, 0.2, 0.2))
        assert np.asarray(lay.data).shape == (2, 64, 64)
