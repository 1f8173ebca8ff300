"""Screenshots of the napari widgets after a real run, for the README and docs/napari.md.

Opens a real napari viewer, trains a small model on the plugin's critters sample with the
*Train* widget docked in it, splits the superimposed sample with the *Split* widget, and saves the
whole window each time, canvas included (``docs/images/napari_train.png``,
``docs/images/napari_split.png``). Needs an X display; headless, under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py --steps 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _wait(app, done, timeout: float) -> None:
    t0 = time.time()
    while not done():
        app.processEvents()
        time.sleep(0.05)
        if time.time() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")
    for _ in range(5):
        app.processEvents()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=HERE / "images")
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from musplit.napari_plugin.predict_widget import PredictWidget
    from musplit.napari_plugin.sample_data import critters
    from musplit.napari_plugin.train_widget import TrainWidget

    viewer = napari.Viewer(title="musplit in napari")
    viewer.window.resize(1500, 900)
    app = QApplication.instance()
    layers = critters(frames=6, size=128)
    for data, kw, _ in layers:
        viewer.add_image(data, **{**kw, "visible": True})
    with tempfile.TemporaryDirectory() as tmp:
        train = TrainWidget(viewer)
        train_dock = viewer.window.add_dock_widget(train, name="musplit: Train")
        train.select([kw["name"] for _, kw, _ in layers[1:]])
        train.steps.setValue(args.steps)
        train.out.setText(str(Path(tmp) / "run"))
        train.train_button.click()
        _wait(app, lambda: not train.running, 3600)
        if train.best is None:
            print(train.status.text(), file=sys.stderr)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        for lay in viewer.layers:  # the truth and the live preview side by side
            lay.visible = lay.name.startswith(("critters ch1", "preview"))
        viewer.grid.enabled = True
        viewer.reset_view()
        _wait(app, lambda: True, 1)
        viewer.screenshot(str(args.out / "napari_train.png"), canvas_only=False, flash=False)

        viewer.window.remove_dock_widget(train_dock)
        split = PredictWidget(viewer)
        viewer.window.add_dock_widget(split, name="musplit: Split")
        split.checkpoint.setText(str(train.best))
        split.layer.setCurrentText("critters mix")
        split.samples.setValue(3)
        split.run_button.click()
        _wait(app, lambda: not split.running, 600)
        shown = [lay for lay in split.result_layers if "uncertainty" not in lay.name]
        for lay in viewer.layers:  # the mix and the structures it was split into
            lay.visible = lay.name == "critters mix" or lay in shown
        viewer.reset_view()
        _wait(app, lambda: True, 1)
        viewer.screenshot(str(args.out / "napari_split.png"), canvas_only=False, flash=False)
        print(train.status.text())
        print(split.status.text())
        print("layers:", ", ".join(lay.name for lay in viewer.layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
