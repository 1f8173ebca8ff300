"""The *Split* widget: a trained checkpoint splits an image layer into one layer per structure
(docs/napari.md, "Split widget").

Prediction runs in a worker thread (napari's ``thread_worker`` machinery), so the viewer stays
responsive; a progress bar follows the tiles and Cancel stops at the next batch. The settings
are the CLI's (``musplit predict``): padding, grid, samples and precision, each defaulting to the
checkpoint's. Errors are one-line napari notifications, as the CLI prints them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from musplit.errors import InputError, MusplitError
from musplit.napari_plugin._common import Failed, failure_message, run_controls

#: Colours of the structure layers, in channel order (additive blending shows the overlay).
COLOURS = ("magenta", "green", "cyan", "yellow")


class Cancelled(Exception):
    """Raised inside the prediction when the user pressed Cancel."""


def prediction_layers(pred, source: Image, std: bool) -> list[tuple]:
    """napari layer tuples of a :class:`~musplit.predict.Prediction` of ``source``'s data: one
    image layer per structure (named after the model's channels, the input's scale and
    translate) and, with ``std``, one uncertainty layer with the structures on its first axis."""
    squeeze = source.data.ndim == 2
    mean = pred.mean[0] if squeeze else pred.mean  # (H, W, C) or (N, H, W, C)
    names = list(pred.channel_names) or [f"ch{c}" for c in range(mean.shape[-1])]
    common = {"scale": tuple(source.scale), "translate": tuple(source.translate)}
    layers = []
    for c, name in enumerate(names):
        layers.append((np.ascontiguousarray(mean[..., c]), {
            "name": name, "colormap": COLOURS[c % len(COLOURS)], "blending": "additive",
            "metadata": {"musplit": {"source": source.name, "channel": c}}, **common},
            "image"))
    if std and pred.std is not None:
        s = pred.std[0] if squeeze else pred.std
        layers.append((np.ascontiguousarray(np.moveaxis(s, -1, 0)), {
            "name": f"{source.name} uncertainty (std)", "colormap": "inferno",
            "visible": False, "scale": (1.0, *source.scale),
            "translate": (0.0, *source.translate),
            "metadata": {"musplit": {"source": source.name, "axis 0": names}}}, "image"))
    return layers


def check_layer_data(layer: Image) -> np.ndarray:
    """The layer's pixels as a float32 (H, W) or (N, H, W) array, or one clear InputError."""
    if layer.rgb:
        raise InputError(f"layer '{layer.name}' is RGB: split a single-channel fluorescence "
                         "image (the superimposed acquisition)")
    data = np.asarray(layer.data)
    if data.ndim not in (2, 3):
        raise InputError(f"layer '{layer.name}' has {data.ndim} dimensions {data.shape}: the "
                         "Split widget takes a 2-D image or a stack of 2-D frames")
    if not np.issubdtype(data.dtype, np.number):
        raise InputError(f"layer '{layer.name}' holds {data.dtype}, not numbers")
    return data


class PredictWidget(QWidget):
    """Choose a checkpoint and an image layer, then *Split*."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.result_layers: list = []
        self._cancel = threading.Event()
        self._done = self._total = 0

        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("best.ckpt of a musplit training run")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.checkpoint)
        row.addWidget(browse)
        self.layer = QComboBox()
        self.padding = QComboBox()
        self.padding.addItems(["inner", "outer", "none"])
        self.grid = _default_spin(0, 4096, "model's default")
        self.samples = _default_spin(0, 1000, "checkpoint's default")
        self.precision = QComboBox()
        self.precision.addItems(["checkpoint's default", "fp32", "bf16"])
        self.brightness = QComboBox()  # musplit predict --brightness
        self.brightness.addItems(["check", "match", "off"])
        self.brightness.setToolTip("check: refuse an image far dimmer or brighter than the "
                                   "training mixes; match: rescale it to them; off: split as is")
        self.std = QCheckBox("add an uncertainty layer (std of the samples)")
        self.std.setChecked(True)
        (self.run_button, self.cancel_button, buttons, self.progress,
         self.status) = run_controls("Split", "Cancel", self.start, self.cancel)

        form = QFormLayout(self)
        form.addRow("checkpoint", row)
        form.addRow("image layer", self.layer)
        form.addRow("padding", self.padding)
        form.addRow("grid (px)", self.grid)
        form.addRow("samples", self.samples)
        form.addRow("precision", self.precision)
        form.addRow("brightness", self.brightness)
        form.addRow(self.std)
        form.addRow(buttons)
        form.addRow(self.progress)
        form.addRow(self.status)

        self._timer = QTimer(self)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.reordered):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    # -- state --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    def _refresh_layers(self, *_):
        current = self.layer.currentText()
        names = [lay.name for lay in self.viewer.layers if isinstance(lay, Image)]
        self.layer.clear()
        self.layer.addItems(names)
        if current in names:
            self.layer.setCurrentText(current)

    def _browse(self):
        path, _ = QFileDialog.getOpenFileName(self, "musplit checkpoint", "",
                                              "checkpoints (*.ckpt)")
        if path:
            self.checkpoint.setText(path)

    def settings(self) -> dict:
        """What :meth:`musplit.splitter.Splitter.predict` gets (None: the checkpoint's)."""
        prec = self.precision.currentText()
        return {"padding": self.padding.currentText(), "grid": self.grid.value() or None,
                "samples": self.samples.value() or None,
                "precision": None if prec.startswith("checkpoint") else prec,
                "brightness": self.brightness.currentText()}

    # -- running ------------------------------------------------------------------------------
    def start(self):
        if self.running:
            return
        try:
            path = Path(self.checkpoint.text().strip())
            if not self.checkpoint.text().strip():
                raise InputError("choose a checkpoint (a best.ckpt of a musplit training run)")
            name = self.layer.currentText()
            if not name:
                raise InputError("no image layer to split: open an image first")
            layer = self.viewer.layers[name]
            data = check_layer_data(layer)
        except MusplitError as e:
            self.status.setText(str(e))
            show_error(str(e))
            return
        self._cancel.clear()
        self._done, self._total = 0, 0
        self.progress.setValue(0)
        self.status.setText(f"splitting '{layer.name}' …")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.worker = create_worker(self._predict, path, data, self.settings(),
                                    _start_thread=False)
        self.worker.returned.connect(lambda pred: self._add(pred, layer))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self._timer.start()
        self.worker.start()

    def cancel(self):
        self._cancel.set()
        self.status.setText("cancelling at the next batch …")

    def _predict(self, path: Path, data: np.ndarray, settings: dict):
        from musplit.splitter import Splitter  # torch: only when a prediction runs

        def progress(done: int, total: int) -> None:
            self._done, self._total = done, total
            if self._cancel.is_set():
                raise Cancelled

        try:
            splitter = Splitter.load(path)
            return splitter.predict(data, progress=progress, **settings)
        except Cancelled:
            return None
        except MusplitError as e:  # a user mistake: a notification, not a worker error
            return Failed(str(e))

    def _show_progress(self):
        if self._total:
            self.progress.setMaximum(self._total)
            self.progress.setValue(self._done)

    def _add(self, pred, layer):
        if pred is None:
            self.status.setText("cancelled: nothing was added")
            return
        if isinstance(pred, Failed):
            self._failed(MusplitError(pred.message))
            return
        self._show_progress()
        self.result_layers = [self.viewer.add_layer(Image(d, **kw)) for d, kw, _ in
                              prediction_layers(pred, layer, self.std.isChecked())]
        names = ", ".join(pred.channel_names)
        self.status.setText(f"split '{layer.name}' into {names}")
        show_info(f"musplit: split '{layer.name}' into {names}")

    def _failed(self, exc: Exception):
        msg = failure_message(exc, "prediction")
        self.status.setText(msg)
        show_error(msg)

    def _finished(self):
        self._timer.stop()
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)


def _default_spin(lo: int, hi: int, default: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSpecialValueText(default)  # shown at 0: the checkpoint's / model's value
    box.setValue(0)
    return box
