"""Moved to :mod:`musplit.cli.detect` (commands) and :mod:`musplit.cli.detect_data` (dataset
folders); this name keeps old imports working."""

from musplit.cli.detect import detect, synth
from musplit.cli.detect_data import TIFF_SUFFIXES, read_pairs

__all__ = ["TIFF_SUFFIXES", "detect", "read_pairs", "synth"]
