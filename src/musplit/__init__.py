"""musplit: split superimposed fluorescence microscopy images (µSplit, ICCV 2023)."""

__version__ = "0.1.0"
