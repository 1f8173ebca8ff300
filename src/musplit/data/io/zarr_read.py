"""Opening Zarr stores (v2 / v3 arrays, OME-Zarr 0.4 / 0.5 multiscales, one array per channel).

Axes come from ``dimension_names``, ``_ARRAY_DIMENSIONS`` or the NGFF ``axes``; channel names
from ``omero`` labels; pixel sizes from the level's scale transformation.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import zarr

from musplit.data.io.axes import _TO_MICROMETRE, _axes_from_names, _resolve_axes
from musplit.data.io.failures import _one_line
from musplit.data.io.source import ImageSource, _ChannelStack
from musplit.errors import InputError

logger = logging.getLogger(__name__)

def _open_zarr(path: Path, axes: str | None, level: int, key: Any) -> ImageSource:
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds on damaged stores
        raise InputError(f"{path} is not a readable Zarr store ({_one_line(exc)})") from None
    return _zarr_node_source(node, path, str(path), axes, level, key)


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _ome_attrs(attrs: dict) -> dict:
    """The OME-NGFF attributes: under "ome" in 0.5 (Zarr v3), at the top in 0.4 (Zarr v2)."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def _zarr_node_source(
    node: Any, path: Path | None, name: str, axes: str | None, level: int, key: Any
) -> ImageSource:
    if key is not None:
        if not isinstance(node, zarr.Group):
            raise InputError(f"key={key!r} was given but {name} is a single array")
        keys = [key] if isinstance(key, str) else list(key)
        members = sorted(node.array_keys(), key=_natural_key) + sorted(node.group_keys())
        for k in keys:
            if not isinstance(k, str) or k not in node:
                raise InputError(
                    f"{name} has no array or group {k!r} (it has: {', '.join(members) or 'none'})"
                )
        if isinstance(key, str):
            return _zarr_node_source(node[key], path, f"{name}/{key}", axes, level, None)
        parts = [_zarr_node_source(node[k], path, f"{name}/{k}", axes, level, None) for k in keys]
        return _ChannelStack(parts, name, [str(k) for k in keys])

    if isinstance(node, zarr.Array):
        if level:
            raise InputError(f"level {level} does not exist in {name} (a plain array has 1 level)")
        attrs = dict(node.attrs)
        meta = _axes_from_names(getattr(node.metadata, "dimension_names", None)) or (
            _axes_from_names(attrs.get("_ARRAY_DIMENSIONS"))
        )
        found, origin = _resolve_axes(axes, meta, node.shape, name)
        names = attrs.get("channel_names") if origin == "metadata" else None
        size = attrs.get("pixel_size_um")
        pixel = tuple(float(v) for v in size) if isinstance(size, list) and len(size) == 2 else None
        return ImageSource(
            node,
            found,
            path=path,
            name=name,
            axes_origin=origin,
            channel_names=names,
            pixel_size=pixel,
            lazy=True,
        )

    attrs = dict(node.attrs)
    ome = _ome_attrs(attrs)
    multiscales = ome.get("multiscales")
    if isinstance(multiscales, list) and multiscales:
        return _ome_zarr_source(node, multiscales[0], ome, path, name, axes, level)
    arrays = sorted(node.array_keys(), key=_natural_key)
    if not arrays:
        groups = sorted(node.group_keys())
        more = f"; it has groups {', '.join(groups)}: pass key= to choose one" if groups else ""
        raise InputError(f"{name} contains no arrays{more}")
    if level:
        raise InputError(f"level {level} does not exist in {name} (it has no pyramid)")
    if len(arrays) == 1:
        return _zarr_node_source(node[arrays[0]], path, f"{name}/{arrays[0]}", axes, 0, None)
    parts = [_zarr_node_source(node[k], path, f"{name}/{k}", axes, 0, None) for k in arrays]
    return _ChannelStack(parts, name, arrays)


def _ome_zarr_source(
    group: Any, ms: dict, ome: dict, path: Path | None, name: str, axes: str | None, level: int
) -> ImageSource:
    datasets = ms.get("datasets") or []
    if level >= len(datasets):
        n = len(datasets)
        raise InputError(
            f"level {level} does not exist in {name} (it has {n} level{'s' if n != 1 else ''}: "
            f"0..{n - 1})"
        )
    ds = datasets[level]
    try:
        arr = group[ds["path"]]
    except (KeyError, TypeError):
        raise InputError(f"{name}: multiscales level {level} names a missing array") from None
    if not isinstance(arr, zarr.Array):
        raise InputError(f"{name}: multiscales level {level} is not an array")
    meta_axes = _axes_from_names(ms.get("axes"))
    if meta_axes is None and "axes" in ms:
        logger.warning("%s: cannot interpret OME-Zarr axes %s", name, ms.get("axes"))
    found, origin = _resolve_axes(axes, meta_axes, arr.shape, name)
    names = None
    omero = ome.get("omero") or {}
    if origin == "metadata" and isinstance(omero, dict):
        labels = [c.get("label") for c in omero.get("channels", []) if isinstance(c, dict)]
        names = [str(x) for x in labels] if labels and all(labels) else None
    pixel = None
    if origin == "metadata":
        for t in ds.get("coordinateTransformations", []):
            if t.get("type") == "scale" and len(t.get("scale", [])) == len(found):
                units = [a.get("unit") if isinstance(a, dict) else None for a in ms["axes"]]
                iy, ix = found.index("Y"), found.index("X")
                fy = _TO_MICROMETRE.get(units[iy] or "micrometer")
                fx = _TO_MICROMETRE.get(units[ix] or "micrometer")
                if fy and fx:
                    pixel = (float(t["scale"][iy]) * fy, float(t["scale"][ix]) * fx)
    return ImageSource(
        arr,
        found,
        path=path,
        name=f"{name} (level {level})" if level else name,
        axes_origin=origin,
        channel_names=names,
        pixel_size=pixel,
        lazy=True,
        level=level,
        n_levels=len(datasets),
    )
