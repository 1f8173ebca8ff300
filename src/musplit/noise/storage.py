"""Noise-model files: one small, self-describing ``.npz`` per channel (docs/noise_models.md,
"Files").

Written with :func:`numpy.savez` through :func:`musplit.files.atomic_write` and read with
``allow_pickle=False``. The four fields the reference tools share keep their names
(``trained_weight``, ``min_signal``, ``max_signal``, ``min_sigma``), so those tools read musplit
files; ``min_sigma`` is a floor on the **variance**, as in the reference files. Reference files
(``weight`` instead of ``trained_weight``, no musplit fields) load too.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from musplit.errors import InputError
from musplit.files import atomic_write, refuse_existing
from musplit.noise.gmm import GaussianMixtureNoiseModel, MultiChannelNoiseModel

__all__ = ["FORMAT", "FORMAT_VERSION", "load_noise_model", "load_noise_models",
           "save_noise_model"]

#: The ``format`` field of a musplit noise-model file.
FORMAT = "musplit-gmm-noise-model"
#: The ``format_version`` written; files of a newer version are refused.
FORMAT_VERSION = 1


def save_noise_model(model: GaussianMixtureNoiseModel, path: str | os.PathLike, *,
                     overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` (``.npz``), atomically; an existing file is refused unless
    ``overwrite``."""
    out = Path(path).expanduser()
    if out.suffix != ".npz":
        raise InputError(f"{out}: a noise model is saved as a .npz file")
    if out.is_dir():
        raise InputError(f"{out} is a directory; refusing to replace it with a noise model")
    refuse_existing([out], overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "trained_weight": model.weight.detach().cpu().numpy(),
        "min_signal": np.array(model.min_signal, dtype=np.float64),
        "max_signal": np.array(model.max_signal, dtype=np.float64),
        "min_sigma": np.array(model.min_variance, dtype=np.float64),
        "n_gaussian": np.array(model.n_gaussian, dtype=np.int64),
        "n_coeff": np.array(model.n_coeff, dtype=np.int64),
        "channel_name": np.array("" if model.channel_name is None else str(model.channel_name)),
    }
    if model.observation_range is not None:
        fields["observation_range"] = np.array(model.observation_range, dtype=np.float64)
    with atomic_write(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **fields)
    return out


def _scalar(fields, key: str, path: Path) -> float:
    v = np.asarray(fields[key])
    if v.size != 1 or v.dtype.kind not in "fiu":
        raise InputError(f"{path}: '{key}' must be one number, got shape {v.shape} dtype "
                         f"{v.dtype}")
    return float(v.reshape(()))


def _read_fields(path: Path) -> dict[str, np.ndarray]:
    """Every member of the ``.npz`` file (no pickled objects)."""
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise InputError(f"{path}: a single array, not a noise-model .npz file")
        with z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not a readable noise-model .npz file ({e})") from None


def load_noise_model(path: str | os.PathLike) -> GaussianMixtureNoiseModel:
    """Read a noise model written by :func:`save_noise_model` or by the reference tools; any
    problem (unreadable, missing key, wrong shape, NaN) is one :class:`InputError` line naming
    the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such noise-model file")
    fields = _read_fields(path)
    wkey = next((k for k in ("trained_weight", "weight") if k in fields), None)
    missing = [k for k in ("min_signal", "max_signal", "min_sigma") if k not in fields]
    if wkey is None:
        missing.insert(0, "trained_weight (or weight)")
    if missing:
        raise InputError(f"{path}: not a noise-model file: missing {', '.join(missing)}")
    version = int(_scalar(fields, "format_version", path)) if "format_version" in fields else 0
    if version > FORMAT_VERSION:
        raise InputError(f"{path}: noise-model format version {version} is newer than this "
                         f"musplit reads ({FORMAT_VERSION}); upgrade musplit")
    w = np.asarray(fields[wkey])
    if w.dtype.kind != "f" or w.ndim != 2 or w.shape[0] == 0 or w.shape[0] % 3 or not w.shape[1]:
        raise InputError(f"{path}: '{wkey}' must be a float array of shape (3K, D), got shape "
                         f"{w.shape} dtype {w.dtype}")
    if not np.isfinite(w).all():
        raise InputError(f"{path}: '{wkey}' holds NaN or Inf")
    for key, expect in (("n_gaussian", w.shape[0] // 3), ("n_coeff", w.shape[1])):
        if key in fields and int(_scalar(fields, key, path)) != expect:
            raise InputError(f"{path}: '{key}' is {int(_scalar(fields, key, path))} but the "
                             f"weights have shape {w.shape}")
    name = str(fields["channel_name"]) if "channel_name" in fields else ""
    obs_range = None
    if "observation_range" in fields:
        r = np.asarray(fields["observation_range"], dtype=np.float64)
        if r.shape != (2,) or not np.isfinite(r).all():
            raise InputError(f"{path}: 'observation_range' must be two finite numbers")
        obs_range = (float(r[0]), float(r[1]))
    try:
        model = GaussianMixtureNoiseModel(
            w, _scalar(fields, "min_signal", path), _scalar(fields, "max_signal", path),
            _scalar(fields, "min_sigma", path), channel_name=name or None,
            observation_range=obs_range)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    model.file_format_version = version
    return model


def load_noise_models(paths: Sequence[str | os.PathLike],
                      n_channels: int | None = None) -> MultiChannelNoiseModel:
    """One file per channel, in channel order; the count must equal ``n_channels`` if given."""
    paths = list(paths)
    if n_channels is not None and len(paths) != n_channels:
        raise InputError(f"{len(paths)} noise-model file(s) for {n_channels} channel(s): give "
                         "one file per channel")
    return MultiChannelNoiseModel([load_noise_model(p) for p in paths], n_channels)
