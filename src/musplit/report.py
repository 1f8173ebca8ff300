"""Moved to :mod:`musplit.figures` (this module only ever drew figures); this name keeps old
imports working."""

from musplit.figures import _pyplot, plot_context_stack, plot_prediction, save_figure

__all__ = ["_pyplot", "plot_context_stack", "plot_prediction", "save_figure"]
