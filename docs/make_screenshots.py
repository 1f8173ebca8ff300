"""Screenshots of the napari widgets after a real run, for the README and docs/napari.md.

Trains a small model on the plugin's critters sample with the *Train* widget, splits the
superimposed sample with it in the *Split* widget, and saves what each widget shows
(``docs/images/napari_train.png``, ``docs/images/napari_split.png``). Runs headless:

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/make_screenshots.py --steps 150
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

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
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=HERE / "images")
    args = ap.parse_args(argv)

    from napari.components import ViewerModel
    from qtpy.QtWidgets import QApplication

    from musplit.napari_plugin.predict_widget import PredictWidget
    from musplit.napari_plugin.sample_data import critters
    from musplit.napari_plugin.train_widget import TrainWidget

    app = QApplication.instance() or QApplication(sys.argv)
    viewer = ViewerModel()
    layers = critters(frames=6, size=128)
    for data, kw, _ in layers:
        viewer.add_image(data, **{**kw, "visible": True})
    with tempfile.TemporaryDirectory() as tmp:
        train = TrainWidget(viewer)
        train.resize(420, 560)
        train.show()
        train.select([kw["name"] for _, kw, _ in layers[1:]])
        train.steps.setValue(args.steps)
        train.out.setText(str(Path(tmp) / "run"))
        train.train_button.click()
        _wait(app, lambda: not train.running, 3600)
        if train.best is None:
            print(train.status.text(), file=sys.stderr)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        train.grab().save(str(args.out / "napari_train.png"))

        split = PredictWidget(viewer)
        split.resize(420, 360)
        split.show()
        split.checkpoint.setText(str(train.best))
        split.layer.setCurrentText("critters mix")
        split.samples.setValue(3)
        split.run_button.click()
        _wait(app, lambda: not split.running, 600)
        split.grab().save(str(args.out / "napari_split.png"))
        print(train.status.text())
        print(split.status.text())
        print("layers:", ", ".join(lay.name for lay in viewer.layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
