"""musplit: split superimposed fluorescence microscopy images (µSplit, ICCV 2023).

Public names: ``musplit.Splitter`` (load a trained model and predict), ``musplit.train``
(train from a config), and the subpackages ``musplit.config``, ``musplit.data``,
``musplit.models``, ``musplit.metrics``.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Before anything imports torch: OpenMP threads that sleep rather than spin when idle, so that a
# busy machine slows musplit in proportion to the CPU it takes (musplit.runtime).
from musplit.runtime import prefer_passive_openmp as _prefer_passive_openmp  # noqa: E402

_prefer_passive_openmp()

__all__ = ["Splitter", "train", "__version__"]


def __getattr__(name: str):
    # Imported lazily: `import musplit` stays cheap (no torch/lightning until needed).
    if name == "Splitter":
        from musplit.splitter import Splitter

        return Splitter
    if name == "train":
        from musplit.training import train

        return train
    raise AttributeError(f"module 'musplit' has no attribute '{name}'")
