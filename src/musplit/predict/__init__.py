"""Tiled prediction: tiles, lateral context, MMSE over samples, stitching (docs/tiling.md).

A frame is predicted with patches of size ``P_eval``; only the central region of each patch (the
**tile**, ``G x G``) is kept, and tiles form a non-overlapping grid of stride ``G``. The three
padding schemes (``"inner"``, ``"outer"``, ``"none"``) are tabled in :mod:`musplit.data.tiling`
(docs/tiling.md, "Inner padding").

By default (docs/tiling.md, "Covering the frame") ``ceil(H/G) x ceil(W/G)`` tiles are predicted,
so **every pixel is predicted exactly once**, frames smaller than a patch included; off-frame
context comes from the training padding mode, on the fly. ``paper_geometry=True`` reproduces the
reference instead (docs/tiling.md, "Reference tiling"): ``floor(H/G) x floor(W/G)`` tiles, the
remainder left 0.

Each patch's input is built exactly as in training: the image is clipped at the training clip
value, its lateral-context (LC) stack is cut around the patch centre with the configured padding
mode and alignment (:class:`~musplit.data.context.ContextStack`, padding in intensity units),
then normalised with the training input statistics (docs/data.md, "Normalisation",
"Lateral context", "Padding modes").

MMSE (docs/tiling.md, "MMSE and uncertainty"): for ``samples = K`` the bottom-up pass runs once
per patch and the top-down pass ``K`` times; per pixel a running mean and sum of squared
deviations (Welford/Chan) are kept, so memory does not grow with ``K``. The std is the sample
std with ``ddof = 0``. The aleatoric std is ``sqrt(mean_K exp(l))`` (the model's predicted
variance averaged over samples). All are returned in input intensity units (mean
``mu*s_k + m_k``, stds ``std*s_k``; docs/method.md, "Predicted quantities"), or in normalised target
units with ``normalized=True`` (what the metrics of docs/evaluation.md use).

Everything is batched: LC crops of ``batch_size`` patches are one gather, the network runs on the
batch under :func:`torch.inference_mode`, and each batch's tiles are placed into the output
canvas by one fancy-indexed assignment before the next batch is built, so the patches of a frame
are never all in memory. :func:`predict_to_zarr` streams frames larger than memory block by
block into OME-Zarr (docs/tiling.md, "Streaming to Zarr").

The package, one job a module:

* :mod:`musplit.predict.result`: :class:`Prediction` and its files;
* :mod:`musplit.data.tiling`: the tile geometry (:func:`make_tiling`, :class:`Tiling`);
* :mod:`musplit.predict.brightness`: the input clip and the brightness check;
* :mod:`musplit.predict.engine`: batches of LC stacks through the model, MMSE tiles out;
* :mod:`musplit.predict.stitch`: tiles into the output arrays;
* :mod:`musplit.predict.calibrated`: a stored calibration applied to the std;
* :mod:`musplit.predict.run`: :func:`predict_image` and :func:`predict_to_zarr`;
* :mod:`musplit.predict.distributed`: :func:`predict_many`, many images block by block in one
  process or as Dask tasks (docs/distributed.md), loaded on first use (it is the only module
  that may import ``dask.distributed``).

Every name the module ``musplit.predict`` had before the split is re-exported here, private
ones included, so that imports written before it still work. Code that calls
:func:`predict_image` or :func:`predict_to_zarr` through this package
(``musplit.predict.predict_image(...)``, as :class:`musplit.Splitter` does) sees a patched
attribute.
"""

from __future__ import annotations

from musplit.data.tiling import (  # noqa: F401
    BLENDS,
    PADDINGS,
    Tiling,
    _block_halo,
    _is_int,
    default_grid,
    make_tiling,
)
from musplit.predict.brightness import (  # noqa: F401
    BRIGHTNESS_MODES,
    BRIGHTNESS_TOLERANCE,
    _sample_pixels,
    brightness_factor,
    input_clip,
)
from musplit.predict.engine import (  # noqa: F401
    AMP_DTYPES,
    _AddAxis,
    _as_frames,
    _device_of,
    _Engine,
    _eval_mode,
    _first,
    _is_oom,
    _memory_format,
    _Prepared,
    _probe,
    _TileBatch,
    fast_precision,
)
from musplit.predict.result import (  # noqa: F401
    Prediction,
    _file_kind,
    _jsonable,
    _read_meta,
    _set_zarr_meta,
    _sibling,
    refuse_existing,
)
from musplit.predict.run import _progress, predict_image, predict_to_zarr  # noqa: F401
from musplit.predict.settings import (  # noqa: F401
    _channel_names,
    _check_common,
    _pixel_size,
    _settings,
)
from musplit.predict.stitch import _Canvas  # noqa: F401

__all__ = [
    "BLENDS",
    "PADDINGS",
    "Prediction",
    "Tiling",
    "default_grid",
    "make_tiling",
    "plan_many",
    "predict_image",
    "predict_many",
    "predict_to_zarr",
]


def __getattr__(name: str):
    # musplit.predict.distributed imports musplit.splitter, which imports this package: it is
    # loaded when first asked for, not with the package.
    if name in ("predict_many", "plan_many"):
        from musplit.predict import distributed

        return getattr(distributed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

