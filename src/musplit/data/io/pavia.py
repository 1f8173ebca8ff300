"""The PaviaATN file (µSplit's Act/Tub/... dataset): its channel map and reader."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from musplit.data.io.readers import open_image
from musplit.errors import InputError

logger = logging.getLogger(__name__)

#: Channel map of the PaviaATN file (docs/data.md, "Real datasets").
PAVIA_ATN_CHANNELS = {"nucleus": 0, "cell_cycle": 1, "actin": 2, "tubulin": 3}


def load_pavia_atn(
    path: str | os.PathLike, channels: Sequence[int | str] | None = (2, 3), axes: str | None = None
) -> np.ndarray:
    """Read the PaviaATN file (docs/data.md, "Real datasets") as float32
    ``(N, H, W, len(channels))``.

    Parameters
    ----------
    path : path-like
        ``OptiMEM100x014.tif``: one TIFF, ``(N, 2720, 2720, 4)`` with channels last; N (61 in
        the released file) is read from the file.
    channels : sequence of int or str, optional
        Channel indices or names from :data:`PAVIA_ATN_CHANNELS` (0 nucleus, 1 cell-cycle
        marker, 2 actin, 3 tubulin); the default ``(2, 3)`` is Act vs Tub. None reads all four.
    axes : str, optional
        Override for files whose metadata disagree with the channels-last layout.

    Notes
    -----
    All 61 frames of two channels take 3.6 GB as float32; :func:`open_image` reads lazily.
    """
    source = open_image(path, axes)
    try:
        if source.n_channels != 4:
            raise InputError(
                f"{path} does not look like the PaviaATN file: expected 4 channels, found shape "
                f"{source.shape} with axes {source.axes} ({source.n_channels} channel(s))"
            )
        if (source.height, source.width) != (2720, 2720):
            logger.warning(
                "%s: frames are %dx%d, not the 2720x2720 of PaviaATN",
                path,
                source.height,
                source.width,
            )
        chans = None
        if channels is not None:
            chans = [PAVIA_ATN_CHANNELS.get(c, c) if isinstance(c, str) else c for c in channels]
            unknown = [c for c in chans if isinstance(c, str)]
            if unknown:
                raise InputError(
                    f"channel {unknown[0]!r} does not exist in {path} (PaviaATN channels: "
                    f"{', '.join(PAVIA_ATN_CHANNELS)})"
                )
        return source.read(channels=chans)
    finally:
        source.close()
