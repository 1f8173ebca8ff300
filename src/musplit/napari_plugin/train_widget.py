"""The *Train* widget: train a splitting model on target layers, watching it learn (docs/napari.md,
"Train widget").

Two to four layers, each one structure imaged on its own (or one layer whose first axis holds
the channels), are written to ``<output>/targets.tif`` (so the run folder holds its data) and
trained with a preset, an LC variant and a number of steps, as ``musplit train`` would. Training
runs in a worker thread; the widget draws the loss and validation PSNR as they come and, at
every validation, splits a crop of the superimposed image with the current model into preview
layers. Cancel stops after the current step and keeps the last checkpoint.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
    QWidget,
)

from musplit.errors import InputError, MusplitError
from musplit.kinds import MAX_CHANNELS, MIN_CHANNELS
from musplit.napari_plugin._common import Failed, failure_message, run_controls
from musplit.napari_plugin.predict_widget import COLOURS

#: The presets the widget offers (musplit train --preset), CPU-sized first.
PRESETS = ("cpu-small", "cpu-real")
LC_VARIANTS = ("lean", "none", "regular", "deep")


@dataclass
class Live:
    """What the training thread reports and the widget draws (plain values, read by a timer)."""

    steps: int = 0
    done: int = 0
    loss: list = field(default_factory=list)  # (step, loss)
    psnr: list = field(default_factory=list)  # (step, val_psnr dB)
    preview: np.ndarray | None = None  # (h, w, C) of the latest validation
    preview_step: int = -1
    cancel: threading.Event = field(default_factory=threading.Event)


class LiveCallback(L.Callback):
    """Reports loss, validation PSNR and a preview split to :class:`Live`; stops on Cancel."""

    def __init__(self, live: Live, crop: np.ndarray):
        self.live, self.crop = live, crop  # crop: (h, w, C) targets

    def on_train_batch_end(self, trainer, pl_module, *args):
        step = int(trainer.global_step)
        loss = trainer.callback_metrics.get("loss")
        if loss is not None:
            self.live.loss.append((step, float(loss)))
        self.live.done = step
        if self.live.cancel.is_set():
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        step = int(trainer.global_step)
        psnr = trainer.callback_metrics.get("val_psnr")
        if psnr is not None and np.isfinite(float(psnr)):
            self.live.psnr.append((step, float(psnr)))
        from musplit.splitter import Splitter

        was_training = pl_module.model.training
        try:
            splitter = Splitter(pl_module.model, pl_module.config, pl_module.stats)
            stats = pl_module.stats
            image = (self.crop.sum(-1) if stats.input_is_sum else stats.mix(self.crop))
            pred = splitter.predict(image[None], samples=1, brightness="off")
            self.live.preview, self.live.preview_step = pred.mean[0], step
        finally:
            pl_module.model.train(was_training)


def stack_targets(layers: list[Image], channels: str = "") -> tuple[np.ndarray, list[str]]:
    """(N, H, W, C) float32 targets and their names from the chosen layers (2 to 4 layers of
    one shape; or one layer whose first axis is the channel axis, with ``channels`` choosing)."""
    if not layers:
        raise InputError("choose the target layers: two to four structures, each imaged alone")
    for lay in layers:
        if lay.rgb:
            raise InputError(f"layer '{lay.name}' is RGB, not a fluorescence channel")
    if len(layers) == 1:
        lay = layers[0]
        data = np.asarray(lay.data, dtype=np.float32)
        if data.ndim not in (3, 4):
            raise InputError(f"one layer '{lay.name}' of shape {data.shape}: choose two or more "
                             "target layers, or one layer whose first axis holds the channels")
        picks = [int(c) for c in channels.replace(" ", "").split(",") if c] or list(
            range(data.shape[0]))
        if any(not 0 <= c < data.shape[0] for c in picks):
            raise InputError(f"channels {channels} do not exist in '{lay.name}' (axis 0 has "
                             f"{data.shape[0]})")
        arr = np.moveaxis(data[picks], 0, -1)
        names = [f"{lay.name} ch{c}" for c in picks]
    else:
        shapes = {np.shape(lay.data) for lay in layers}
        if len(shapes) > 1:
            raise InputError("the target layers differ in shape ("
                             + ", ".join(f"{lay.name} {np.shape(lay.data)}" for lay in layers)
                             + "): they must be the same field of view")
        arr = np.stack([np.asarray(lay.data, dtype=np.float32) for lay in layers], axis=-1)
        names = [lay.name for lay in layers]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise InputError(f"target layers of {arr.ndim - 1} dimensions: 2-D images or stacks "
                         "of 2-D frames")
    if not MIN_CHANNELS <= arr.shape[-1] <= MAX_CHANNELS:
        raise InputError(f"{arr.shape[-1]} target channel(s): musplit splits {MIN_CHANNELS} "
                         f"to {MAX_CHANNELS} structures")
    if not np.isfinite(arr).all():
        raise InputError("the target layers hold NaN or infinite pixels")
    return arr, names


class TrainWidget(QWidget):
    """Pick target layers, a preset, an LC variant, steps and an output folder, then *Train*."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.live = Live()
        self.best: Path | None = None
        self.preview_layers: list = []

        self.targets = QListWidget()
        self.targets.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.targets.setMaximumHeight(90)
        self.channels = QLineEdit()
        self.channels.setPlaceholderText("one multichannel layer: e.g. 0,1,2 (default: all)")
        self.preset = QComboBox()
        self.preset.addItems(PRESETS)
        self.lc = QComboBox()
        self.lc.addItems(LC_VARIANTS)
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(500)
        self.out = QLineEdit("runs/napari")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.out)
        row.addWidget(browse)
        (self.train_button, self.cancel_button, buttons, self.progress,
         self.status) = run_controls("Train", "Cancel (keeps the last checkpoint)", self.start,
                                     self.cancel)
        self.figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)

        form = QFormLayout(self)
        form.addRow("target layers", self.targets)
        form.addRow("channels", self.channels)
        form.addRow("preset", self.preset)
        form.addRow("LC variant", self.lc)
        form.addRow("steps", self.steps)
        form.addRow("output folder", row)
        form.addRow(buttons)
        form.addRow(self.progress)
        form.addRow(self.canvas)
        form.addRow(self.status)

        self._timer = QTimer(self)
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._show_live)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()
        self._draw()

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _refresh_layers(self, *_):
        chosen = {i.text() for i in self.targets.selectedItems()}
        self.targets.clear()
        for lay in self.viewer.layers:
            if isinstance(lay, Image) and not _is_preview(lay) and lay not in self.preview_layers:
                self.targets.addItem(lay.name)
                if lay.name in chosen:
                    self.targets.item(self.targets.count() - 1).setSelected(True)

    def select(self, names: list[str]) -> None:
        """Select target layers by name (what a click in the list does)."""
        for i in range(self.targets.count()):
            item = self.targets.item(i)
            item.setSelected(item.text() in names)

    def _browse(self):
        path = QFileDialog.getExistingDirectory(self, "output folder")
        if path:
            self.out.setText(path)

    # -- running ------------------------------------------------------------------------------
    def start(self):
        if self.running:
            return
        try:
            names = [i.text() for i in self.targets.selectedItems()]
            layers = [self.viewer.layers[n] for n in names]
            targets, channel_names = stack_targets(layers, self.channels.text())
            out = Path(self.out.text().strip() or "runs/napari")
            if (out / "last.ckpt").exists():
                raise InputError(f"{out} already holds a trained model: choose another output "
                                 "folder")
        except MusplitError as e:
            self.status.setText(str(e))
            show_error(str(e))
            return
        self.live = Live(steps=self.steps.value())
        h, w = targets.shape[1:3]
        size = min(h, w, 256)
        top, left = (h - size) // 2, (w - size) // 2
        crop = targets[0, top:top + size, left:left + size]
        self.status.setText(f"training on {', '.join(channel_names)} …")
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setMaximum(self.steps.value())
        self.progress.setValue(0)
        self.worker = create_worker(
            self._train, targets, channel_names, out, self.preset.currentText(),
            self.lc.currentText(), self.steps.value(), LiveCallback(self.live, crop),
            _start_thread=False)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self._timer.start()
        self.worker.start()

    def cancel(self):
        self.live.cancel.set()
        self.status.setText("stopping after this step …")

    @staticmethod
    def _train(targets, names, out: Path, preset_name: str, lc: str, steps: int, callback):
        from musplit.config import preset
        from musplit.data.io import write_tiff
        from musplit.training import LAST, train

        try:
            out.mkdir(parents=True, exist_ok=True)
            data = write_tiff(out / "targets.tif", targets, axes="SYXC", channel_names=names,
                              overwrite=True)
            patch = 64 if min(targets.shape[1:3]) >= 64 else 32
            cfg = preset(preset_name, name="napari",
                         data={"path": str(data), "patch": patch},
                         model={"lc": lc, "patch": patch},
                         train={"max_steps": steps,
                                "val_every_steps": max(1, min(steps // 5, 200))})
            best = train(cfg, out, progress=False, callbacks=[callback])
            return best if best.exists() else out / LAST
        except MusplitError as e:
            return Failed(str(e))

    def _show_live(self):
        live = self.live
        self.progress.setValue(min(live.done, self.progress.maximum()))
        self._draw()
        if live.preview is not None and live.preview_step >= 0:
            self._show_preview(live.preview, live.preview_step)
            live.preview_step = -1  # shown

    def _draw(self):
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        if self.live.loss:
            s, v = zip(*self.live.loss, strict=True)
            ax.plot(s, v, color="tab:blue", lw=1)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8, color="tab:blue")
        ax.tick_params(labelsize=7)
        ax2 = ax.twinx()
        if self.live.psnr:
            s, v = zip(*self.live.psnr, strict=True)
            ax2.plot(s, v, "o-", color="tab:orange", ms=3)
        ax2.set_ylabel("validation PSNR (dB)", fontsize=8, color="tab:orange")
        ax2.tick_params(labelsize=7)
        self.canvas.draw_idle()

    def _show_preview(self, mean: np.ndarray, step: int):
        names = [i.text() for i in self.targets.selectedItems()] or [
            f"ch{c}" for c in range(mean.shape[-1])]
        if len(names) != mean.shape[-1]:
            names = [f"ch{c}" for c in range(mean.shape[-1])]
        if not self.preview_layers:
            for c in range(mean.shape[-1]):
                self.preview_layers.append(self.viewer.add_image(
                    mean[..., c], name=f"preview {names[c]}", blending="additive",
                    colormap=COLOURS[c % len(COLOURS)], metadata={PREVIEW: True}))
        else:
            for c, lay in enumerate(self.preview_layers):
                lay.data = mean[..., c]
        for lay in self.preview_layers:
            lay.metadata["preview at step"] = step

    def _done(self, result):
        self._show_live()
        if isinstance(result, Failed):
            self._failed(MusplitError(result.message))
            return
        self.best = Path(result)
        stopped = self.live.cancel.is_set()
        msg = (f"{'stopped' if stopped else 'trained'} at step {self.live.done}: "
               f"checkpoint {self.best}")
        self.status.setText(msg)
        show_info(f"musplit: {msg}")

    def _failed(self, exc: Exception):
        msg = failure_message(exc, "training")
        self.status.setText(msg)
        show_error(msg)

    def _finished(self):
        self._timer.stop()
        self.worker = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)


#: Metadata key of the preview layers (never offered as training targets).
PREVIEW = "musplit preview"


def _is_preview(layer) -> bool:
    return bool(layer.metadata.get(PREVIEW))
