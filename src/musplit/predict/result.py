"""The result of a prediction: :class:`Prediction`, and its OME-TIFF / OME-Zarr files.

:meth:`Prediction.save` writes the mean and its uncertainty as sibling files that carry axes,
channel names, pixel size and the settings that made them; :meth:`Prediction.load` reads them
back. The file helpers here (output kind, sibling names, refusing existing outputs, the
settings stored in a file) are shared with :func:`musplit.predict.predict_to_zarr` and the CLI.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import zarr

from musplit.data.io import _check_output, open_image, write_tiff, write_zarr
from musplit.errors import InputError
from musplit.files import refuse_existing
from musplit.files import sibling as _sibling

__all__ = ["Prediction", "refuse_existing"]


@dataclass
class Prediction:
    """A split image with its uncertainty and the settings that made it (docs/design.md, "Public
    API").

    Attributes
    ----------
    mean : ndarray, float32, shape (N, H, W, C)
        MMSE estimate per target channel, in input intensity units (or normalised units when
        ``meta["units"] == "normalised"``).
    std : ndarray, float32, shape (N, H, W, C), or None
        Per-pixel sample standard deviation over the ``samples`` posterior samples (``ddof=0``),
        same units as ``mean``; None when ``samples == 1``. With a calibrated model it is the
        calibrated std ``max(a_k std + b_k, 0)``, the predicted error (:attr:`std_calibrated`;
        docs/microsplit.md, "Calibration in musplit").
    aleatoric_std : ndarray, float32, shape (N, H, W, C), or None
        ``s_k * sqrt(mean_K exp(l_k))``: the std of the model's Gaussian likelihood averaged over
        samples (docs/tiling.md, "MMSE and uncertainty"), same units. The total predictive
        variance is ``std**2 + aleatoric_std**2`` (:attr:`total_std`).
    samples : ndarray, float32, shape (K_keep, N, H, W, C), or None
        The first ``keep_samples`` individual samples' means, when asked for.
    channel_names : list of str
        One name per channel, in target order.
    axes : str
        Axes of ``mean``, ``std`` and ``aleatoric_std``: ``"SYXC"``.
    meta : dict
        Tiling (``padding``, ``grid``, ``eval_patch``, ``margin``, ``blend``,
        ``paper_geometry``), ``samples``, ``seed``, ``sample_mode``, ``units``, ``std_ddof``,
        ``std_calibrated`` and, when True, ``std_calibration`` (the scales and offsets applied),
        the normalisation statistics (``stats``), ``patch``, ``scales``, ``pad``,
        ``lc_alignment``, ``input_scale``, ``clip``, ``musplit_version``, timing.
    pixel_size : (float, float) or None
        ``(y, x)`` pixel size in micrometres, the input's (None when it records none): saved
        in the OME-TIFF / OME-Zarr metadata and restored by :meth:`load`.
    """

    mean: np.ndarray
    std: np.ndarray | None = None
    aleatoric_std: np.ndarray | None = None
    samples: np.ndarray | None = None
    channel_names: list[str] = field(default_factory=list)
    axes: str = "SYXC"
    meta: dict = field(default_factory=dict)
    pixel_size: tuple[float, float] | None = None

    def __repr__(self) -> str:
        parts = [f"mean={tuple(self.mean.shape)}"]
        for name in ("std", "aleatoric_std", "samples"):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name}={tuple(v.shape)}")
        keys = ("padding", "grid", "samples", "units")
        settings = ", ".join(f"{k}={self.meta[k]!r}" for k in keys if k in self.meta)
        return f"Prediction({', '.join(parts)}, channels={self.channel_names}, {settings})"

    @property
    def std_calibrated(self) -> bool:
        """Whether :attr:`std` is the calibrated std (False for the raw posterior-sample std,
        and for files written before calibration existed)."""
        return bool(self.meta.get("std_calibrated", False))

    @property
    def total_std(self) -> np.ndarray | None:
        """``sqrt(std**2 + aleatoric_std**2)`` (docs/tiling.md, "MMSE and uncertainty"), or
        whichever of the two exists. A calibrated :attr:`std` is already fitted to the whole
        error, so it is returned as it is."""
        if self.aleatoric_std is None or (self.std is not None and self.std_calibrated):
            return self.std
        if self.std is None:
            return self.aleatoric_std
        return np.sqrt(np.square(self.std) + np.square(self.aleatoric_std))

    # -- files -----------------------------------------------------------------------------
    def save(
        self,
        path: str | os.PathLike,
        overwrite: bool = False,
        protect: Iterable[str | os.PathLike] = (),
        *,
        std: bool = True,
        aleatoric: bool = False,
    ) -> Path:
        """Write the prediction as an ImageJ hyperstack (``.tif``/``.tiff``), OME-TIFF
        (``.ome.tif``/``.ome.tiff``) or OME-Zarr (``.zarr``).

        A ``.tif`` opens in Fiji (File > Open, no Bio-Formats needed) as a hyperstack of frames
        and named channels with the pixel size in µm; an ``.ome.tif`` carries the same in
        OME-XML, for Bio-Formats, OMERO and QuPath (docs/tiling.md, "Output files").

        The mean goes to ``path``; the std (when there is one and ``std=True``) to a sibling
        ``<stem>_std<suffix>``, the aleatoric std (``aleatoric=True``) to
        ``<stem>_aleatoric_std<suffix>``. Each file carries axes, channel names, the pixel size
        (:attr:`pixel_size`) and :attr:`meta` (JSON in the ImageJ ``Info`` property or the OME
        ``Description`` of a TIFF, ``attrs["musplit"]`` in a Zarr), so :meth:`load` restores
        everything. Every output is
        checked before anything is written, and each is written atomically.

        Parameters
        ----------
        path : path-like
            ``.tif``/``.tiff`` (ImageJ), ``.ome.tif``/``.ome.tiff`` (OME-TIFF) or ``.zarr``.
        overwrite : bool
            Replace existing outputs (refused otherwise, with :class:`InputError`).
        protect : iterable of path-like
            Inputs that must never be written to.
        std, aleatoric : bool
            Which uncertainty files to write.

        Returns
        -------
        Path
            The mean's path.
        """
        kind = _file_kind(path)
        arrays = {"": self.mean}
        if std and self.std is not None:
            arrays["_std"] = self.std
        if aleatoric and self.aleatoric_std is not None:
            arrays["_aleatoric_std"] = self.aleatoric_std
        targets = {tag: _sibling(path, tag) for tag in arrays}
        # Refuse before writing anything: no half-saved prediction (mean written, std refused).
        refuse_existing(targets.values(), overwrite)
        for out in targets.values():
            _check_output(out, True, protect, kind)
        names = list(self.channel_names) or None
        for tag, arr in arrays.items():
            meta = {**_jsonable(self.meta), "quantity": tag.lstrip("_") or "mean",
                    "channel_names": names}
            if kind == "tiff" and _is_ome(path):
                write_tiff(targets[tag], arr, self.axes, names, overwrite,
                           metadata={"Description": json.dumps(meta)}, protect=protect,
                           pixel_size=self.pixel_size)
            elif kind == "tiff":  # what Fiji opens as a hyperstack without Bio-Formats
                write_tiff(targets[tag], arr, self.axes, names, overwrite, imagej=True,
                           metadata={"Info": json.dumps(meta)}, protect=protect,
                           pixel_size=self.pixel_size)
            else:
                write_zarr(targets[tag], arr, self.axes, names, overwrite, protect=protect,
                           pixel_size=self.pixel_size)
                _set_zarr_meta(targets[tag], meta)
        return targets[""]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Prediction:
        """Read a prediction written by :meth:`save` (mean, and std/aleatoric std if present).

        Parameters
        ----------
        path : path-like
            The mean's file (``.tif``/``.tiff``/``.zarr``).

        Returns
        -------
        Prediction
        """
        kind = _file_kind(path)
        src = open_image(path)
        mean = src.read()
        meta = _read_meta(Path(path), kind)
        names = src.channel_names or meta.get("channel_names") or []
        extra = {}
        for tag in ("_std", "_aleatoric_std"):
            p = _sibling(path, tag)
            extra[tag] = open_image(p).read() if p.exists() else None
        meta.pop("quantity", None)
        meta.pop("channel_names", None)
        return cls(mean, extra["_std"], extra["_aleatoric_std"], None, list(names), "SYXC", meta,
                   src.pixel_size)


def _file_kind(path) -> str:
    name = str(path).lower().rstrip("/\\")
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".zarr"):
        return "zarr"
    raise InputError(f"{path}: a prediction is saved as .tif/.tiff or .zarr")


def _jsonable(obj):
    """Plain JSON types (numpy scalars and tuples converted)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item")
                                 else list(o) if isinstance(o, (tuple, set)) else str(o)))


def _set_zarr_meta(path: Path, meta: dict) -> None:
    # The writer moved the finished store into place already; adding one attribute afterwards
    # cannot leave the image itself half-written.
    node = zarr.open(str(path), mode="r+")
    node.attrs["musplit"] = meta


def _is_ome(path) -> bool:
    return str(path).lower().rstrip("/\\").endswith((".ome.tif", ".ome.tiff"))


def _read_meta(path: Path, kind: str) -> dict:
    if kind == "zarr":
        return dict(zarr.open(str(path), mode="r").attrs.get("musplit", {}))
    with tifffile.TiffFile(path) as tf:
        xml = tf.ome_metadata
        info = (tf.imagej_metadata or {}).get("Info") if tf.is_imagej else None
    if info:
        try:
            return json.loads(info)
        except json.JSONDecodeError:
            return {}
    if not xml:
        return {}
    for el in ET.fromstring(xml).iter():
        if el.tag.endswith("Description") and el.text:
            try:
                return json.loads(el.text)
            except json.JSONDecodeError:
                return {}
    return {}
