"""Sample data for napari: small SinosoidalCritters frames and, with ``musplit[examples]``, the
PartSegData confocal stack (docs/napari.md, "Sample data")."""

from __future__ import annotations

import numpy as np


def critters(frames: int = 4, size: int = 256, seed: int = 0) -> list[tuple]:
    """The superimposed image of a few critters frames, and the two true channels (hidden)."""
    from musplit.data.synthetic import generate_critters

    data = generate_critters(frames, size=size, connector=0, seed=seed, pairing="shared-low")
    mix = data.mean(axis=-1)
    layers = [(mix, {"name": "critters mix", "colormap": "gray"}, "image")]
    for c, colour in enumerate(("magenta", "green")):
        layers.append((data[..., c], {"name": f"critters ch{c + 1} (truth)", "colormap": colour,
                                      "blending": "additive", "visible": False}, "image"))
    return layers


def partseg_stack() -> list[tuple]:
    """The four channels of PartSegData's ``stack.tif`` (1024 x 1024, pixel size in µm) and
    the sum of channels 0 and 3, the image ``musplit demo --real`` splits."""
    from musplit.data.io import open_image
    from musplit.demo_real import partseg_stack as stack_path

    src = open_image(stack_path())  # not installed: one line that says how to get it
    try:
        data = src.read()[0]  # (H, W, 4)
        names = src.channel_names or [f"ch{c}" for c in range(data.shape[-1])]
        scale = tuple(src.pixel_size) if src.pixel_size else (1.0, 1.0)
    finally:
        src.close()
    layers = [(data[..., 0] + data[..., 3], {"name": f"{names[0]} + {names[3]}", "scale": scale,
                                             "colormap": "gray"}, "image")]
    for c in range(data.shape[-1]):
        layers.append((np.ascontiguousarray(data[..., c]), {
            "name": names[c], "scale": scale, "visible": False, "blending": "additive"}, "image"))
    return layers
