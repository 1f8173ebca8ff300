"""Data layer: synthetic data, file I/O, normalisation, lateral context, datasets, splits.

Public names are imported lazily so that ``import musplit.data`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "generate_critters": "musplit.data.synthetic",
    "lateral_context": "musplit.data.context",
    "pyramid": "musplit.data.context",
    "ContextStack": "musplit.data.context",
    "open_image": "musplit.data.io",
    "load_image": "musplit.data.io",
    "load_channel_files": "musplit.data.io",
    "write_tiff": "musplit.data.io",
    "write_zarr": "musplit.data.io",
    "NormStats": "musplit.data.normalize",
    "compute_stats": "musplit.data.normalize",
    "Split": "musplit.data.splits",
    "default_split": "musplit.data.splits",
    "hagen_split": "musplit.data.splits",
    "TrainPatches": "musplit.data.dataset",
    "GridPatches": "musplit.data.dataset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'musplit.data' has no attribute '{name}'")


def __dir__():
    return __all__
