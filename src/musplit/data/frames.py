"""The two layouts of target data: one ``(N, H, W, T)`` array, or a list of ``(H_i, W_i, T)``
frames of different sizes (one large frame, a few tiles, ...).

Kept free of torch, so :mod:`musplit.data.sources` can use it cheaply.
"""

from __future__ import annotations

from musplit.errors import InputError


def frame_shapes(targets) -> list[tuple[int, int]]:
    """``(H, W)`` of every frame of ``targets``: an ``(N, H, W, T)`` array, or a list of
    ``(H_i, W_i, T)`` frames of different sizes (one large frame, a few tiles, ...)."""
    if isinstance(targets, (list, tuple)):
        if not targets:
            raise InputError("no frames given")
        shapes = [tuple(getattr(f, "shape", ())) for f in targets]
        if any(len(s) != 3 for s in shapes):
            raise InputError(f"frames must have shape (H, W, T), got {shapes[0]}")
        if len({s[2] for s in shapes}) != 1:
            counts = sorted({s[2] for s in shapes})
            raise InputError(f"frames have different channel counts: {counts}")
        return [(int(s[0]), int(s[1])) for s in shapes]
    shape = tuple(getattr(targets, "shape", ()))
    if len(shape) != 4:
        raise InputError(f"targets must have shape (N, H, W, T), got {shape}")
    return [(int(shape[1]), int(shape[2]))] * int(shape[0])


def n_channels(targets) -> int:
    """Number of target channels ``T`` of either layout."""
    if isinstance(targets, (list, tuple)):
        return int(targets[0].shape[-1])
    return int(targets.shape[-1])
