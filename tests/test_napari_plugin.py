"""The napari plugin driven for real (issue 19, item 1): the Split widget on offscreen Qt
(pytest-qt) with a napari viewer, set up and clicked, its worker waited for, the resulting
layers checked.
Collected only where napari is installed (``pip install -e '.[napari]'``; tests/conftest.py).

The viewer is napari's ``ViewerModel``: the layer list, the events and sample data the widget uses,
without the OpenGL canvas, which this machine (and CI) cannot create offscreen. The widget only
talks to the model, so what is tested is what a user's viewer gets."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Image

from musplit.napari_plugin.predict_widget import PredictWidget
from musplit.napari_plugin.sample_data import critters
from musplit.splitter import Splitter
from musplit.training import train
from tests.test_training import tiny_config


@pytest.fixture
def make_napari_viewer(qtbot):
    return ViewerModel


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train(tiny_config(max_steps=2), tmp_path_factory.mktemp("run"), progress=False)


def _widget(viewer, qtbot, ckpt):
    w = PredictWidget(viewer)
    qtbot.addWidget(w)
    w.checkpoint.setText(str(ckpt))
    return w


def _split(w, qtbot, timeout=120_000):
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)


def test_split_widget_adds_one_layer_per_structure_with_the_input_s_scale(
        make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
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
    assert [w.display_name for w in pm.contributions.widgets] == ["Split (predict)"]
    assert {s.key for s in pm.contributions.sample_data} == {"critters", "partseg"}
