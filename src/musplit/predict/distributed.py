"""Prediction of many images, block by block, in one process or as Dask tasks (docs/distributed.md).

:func:`predict_many` splits every image of a call into the blocks of the streaming path
(:func:`musplit.predict.predict_to_zarr`: 2048² output blocks, each read with the halo its
lateral context needs) and predicts each block as one task: in this process, on a
``dask.distributed`` ``LocalCluster`` of this machine, or on an existing cluster (a scheduler
address; dask-jobqueue starts one on SLURM or PBS). A task is :func:`_run_block`, a function of
the checkpoint path, the input path and the block only: its process loads the model once
(:func:`_worker_splitter`), reads its block lazily, predicts it with the one block
implementation of :mod:`musplit.predict.run` (noise seeded by ``(seed, frame, block origin)``,
so the result does not depend on the worker or the order) and writes whole chunks of its own
region straight into the output store (no two tasks write the same chunk), then records the
block as done with a small marker file. Memory per worker is set by the block, not the image.

The outputs of one call live in one folder: ``<name>.zarr`` (and ``<name>_std.zarr``) per
input. While the call runs they are written under ``<folder>/.musplit-predict/`` together with
the run's record (``run.json``: model, inputs, settings) and the markers; an image's stores get
their OME-Zarr display windows and settings once all its blocks are done and are then moved to
their final names, so nothing half-written ever carries a final name. A call that was stopped or
lost a worker is finished with ``resume=True``: only blocks without a marker are predicted, and
the result is the same, bit for bit, as an uninterrupted run.

``dask.distributed`` is imported only when a cluster is used: a single image, or several in one
process, never load it.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import logging
import math
import os
import resource
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musplit.data.io import TIFF_SUFFIXES, ZARR_MARKERS, open_image
from musplit.data.io.axes import frames_instead
from musplit.data.io.zarr_writer import create_ome_store, finish_ome_store, write_ome_region
from musplit.errors import InputError, MusplitError
from musplit.files import atomic_write, check_output, check_writable, move_into_place
from musplit.predict.run import (
    Block,
    _open_source,
    _plan_stream,
    _predict_blocks,
    _Stream,
    _stream_engine,
)

log = logging.getLogger(__name__)

__all__ = ["RunPlan", "find_images", "plan_many", "predict_many"]

#: The hidden folder of a call's unfinished outputs, its record and its block markers.
WORK = ".musplit-predict"
#: Suffixes of the image files a folder given as input is searched for (and ``.zarr`` stores).
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".npy", ".zarr")
_NAME_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", *TIFF_SUFFIXES, ".npy", ".zarr")
_RECORD_VERSION = 1
#: Environment variables a LocalCluster's workers get from musplit, not from this process.
_SPAWN_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")


# ---------------------------------------------------------------------------------------------
# Inputs and names
# ---------------------------------------------------------------------------------------------
def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in ZARR_MARKERS)


def find_images(items: Iterable[str | os.PathLike]) -> list[Path]:
    """The image files named by ``items``: files and Zarr stores as given, the images a folder
    holds (its TIFF, ``.npy`` and Zarr entries, sorted by name; not its sub-folders), and the
    paths a glob pattern (``*``, ``?``, ``[...]``) matches. Each image once, in order.

    Raises
    ------
    InputError
        An item that does not exist, a folder that holds no image, a pattern that matches
        nothing, or no item at all.
    """
    found: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir() and not _is_zarr(p):
            inside = sorted(q for q in p.iterdir() if not q.name.startswith(".")
                            and q.name.lower().endswith(IMAGE_SUFFIXES)
                            and (q.is_file() or _is_zarr(q)))
            if not inside:
                raise InputError(f"{p} is a folder with no images in it (musplit looks for "
                                 f"{', '.join(IMAGE_SUFFIXES)})")
            found += inside
        elif p.exists():
            found.append(p)
        elif glob.has_magic(str(item)):
            hits = sorted(Path(h) for h in glob.glob(str(p)))
            if not hits:
                raise InputError(f"no file matches {item}")
            found += [h for h in hits if h.is_file() or _is_zarr(h)]
        else:
            raise InputError(f"{p} does not exist")
    if not found:
        raise InputError("no input image given")
    seen: set[Path] = set()
    out = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def output_name(path: Path) -> str:
    """The name of an image's outputs: its file name without the image suffix
    (``a.ome.tif`` -> ``a``)."""
    name = path.name.rstrip("/\\")
    low = name.lower()
    for suffix in _NAME_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------------
# What a task needs: plain data, pickled into every Dask task
# ---------------------------------------------------------------------------------------------
@dataclass
class _Image:
    """One input of a call: where it is read from, its streaming plan, its stores."""

    path: str
    name: str
    plan: _Stream
    work: dict[str, str]  # quantity -> store under the work folder
    final: dict[str, str]  # quantity -> final store
    pixel_size: tuple[float, float] | None = None


@dataclass
class _Job:
    """The settings every task of a call shares."""

    checkpoint: str
    checkpoint_key: tuple  # (size, mtime_ns): a changed file is loaded again
    axes: str | None
    series: int | None
    level: int
    done: str  # folder of the block markers
    torch_threads: int | None = None

    def marker(self, img: _Image, blk: Block) -> Path:
        """The block's marker: ``done/<image>/<frame>-<y>-<x>.json`` (its output origin)."""
        oy, ox, _, _ = img.plan.region(blk)
        return Path(self.done) / img.name / f"{blk[0]}-{oy.start}-{ox.start}.json"


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _worker_splitter(path: str, key: tuple):
    """The model of ``path``, loaded once per process (``key`` changes when the file does)."""
    from musplit.splitter import Splitter

    return Splitter.load(path)


@functools.lru_cache(maxsize=4)
def _worker_reader(path: str, axes: str | None, series: int | None, level: int):
    """``read(frame, rows, cols)`` of the superimposed input at ``path``, opened once per
    process; nothing is read until a block asks for its region."""
    src = open_image(path, axes=axes, series=series, level=level, stack_of="frames")
    read, _, _ = _open_source(src, None, None, None)
    return read


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_block(job: _Job, img: _Image, blk: Block) -> dict:
    """Predict the block ``blk`` of the image ``img``, write it into its stores, record it.

    A pure function of its arguments and the files they name (any process can run it, any
    number of times: a block already recorded returns its record without work). The record,
    written after the data, holds the per-channel value range of what was written (the stores'
    display windows are set from it at the end), the seconds it took (``load_seconds``: the
    model and input opened, once per process) and the process's peak memory.
    """
    marker = job.marker(img, blk)
    if marker.exists():
        with contextlib.suppress(OSError, ValueError):
            return json.loads(marker.read_text())
    t_load = time.perf_counter()
    splitter = _worker_splitter(job.checkpoint, job.checkpoint_key)
    read = _worker_reader(img.path, job.axes, job.series, job.level)
    if job.torch_threads:
        import torch

        if torch.get_num_threads() != job.torch_threads:
            torch.set_num_threads(job.torch_threads)
    t0 = time.perf_counter()
    plan = img.plan
    engine = _stream_engine(splitter.model, splitter.config, splitter.stats, plan)
    out: dict[str, np.ndarray] = {}
    _predict_blocks(splitter.model, splitter.config, engine, plan, read, [blk],
                    lambda _, arrays: out.update(arrays), progress=False)
    oy, ox, _, _ = plan.region(blk)
    ranges = {}
    for k, store in img.work.items():
        lo, hi = write_ome_region(store, blk[0], oy, ox, out[k][0])
        ranges[k] = [[_num(v) for v in lo], [_num(v) for v in hi]]
    rec = {"image": img.name, "block": [int(v) for v in blk], "ranges": ranges,
           "tiles": _tiles(plan, blk),
           "seconds": round(time.perf_counter() - t0, 4),
           "load_seconds": round(t0 - t_load, 4), "pid": os.getpid(),
           "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
           "peak_rss_mib": round(_peak_rss_mib(), 1)}
    marker.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(marker) as tmp:
        tmp.write_text(json.dumps(rec))
    return rec


def _tiles(plan: _Stream, blk: Block) -> int:
    oy, ox, _, _ = plan.region(blk)
    g = plan.tiling.grid
    return math.ceil((oy.stop - oy.start) / g) * math.ceil((ox.stop - ox.start) / g)


def _num(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    """What a call of :func:`predict_many` would do: per image its shape, blocks and output
    bytes, and the expected time from a per-tile rate.

    Attributes
    ----------
    images : list of dict
        ``name``, ``shape`` ``(N, H, W)``, ``blocks``, ``tiles``, ``output_bytes`` per input.
    block : int
        Output block side in pixels; ``halo`` the input read beyond it on each side.
    """

    images: list[dict]
    block: int
    halo: int
    tile: int
    n_channels: int
    files_per_image: int

    @property
    def blocks(self) -> int:
        return sum(i["blocks"] for i in self.images)

    @property
    def tiles(self) -> int:
        return sum(i["tiles"] for i in self.images)

    @property
    def output_bytes(self) -> int:
        return sum(i["output_bytes"] for i in self.images)

    def seconds(self, seconds_per_tile: float, workers: int = 1) -> float:
        """Expected wall time on ``workers`` workers that each predict ``1/seconds_per_tile``
        tiles a second (blocks are independent; the last block's worker sets the end)."""
        per_block = [math.ceil(i["tiles"] / max(i["blocks"], 1)) for i in self.images
                     for _ in range(i["blocks"])]
        total = sum(per_block) * seconds_per_tile
        longest = max(per_block, default=0) * seconds_per_tile
        return max(total / max(workers, 1), longest)

    def summary(self, seconds_per_tile: float | None = None,
                workers: Sequence[int] = (1, 2)) -> str:
        gib = self.output_bytes / 2**30
        lines = [f"{len(self.images)} image(s), {self.blocks} block(s) of up to "
                 f"{self.block}x{self.block} px (+{self.halo} px of context each side) = "
                 f"{self.blocks} task(s), {self.tiles} tiles of {self.tile} px; output "
                 f"{gib:.2f} GiB float32 in {len(self.images) * self.files_per_image} "
                 "OME-Zarr store(s)"]
        if seconds_per_tile:
            for n in workers:
                s = self.seconds(seconds_per_tile, n)
                lines.append(f"expected with {n} worker(s) at {1 / seconds_per_tile:.1f} "
                             f"tiles/s each: {_duration(s)}")
        return "\n".join(lines)


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _settings(splitter, padding, grid, samples, batch_size, precision) -> dict:
    return splitter._options(padding, grid, samples, batch_size, precision)


def _open_inputs(paths: Sequence[Path], axes, series, level) -> list:
    """Open every input lazily; refuse a call whose images differ in channel count, or whose
    images are not one superimposed channel (one line naming the files)."""
    sources = [open_image(p, axes=axes, series=series, level=level, stack_of="frames")
               for p in paths]
    counts = {s.n_channels for s in sources}
    if len(counts) > 1:
        by = {}
        for p, s in zip(paths, sources, strict=True):
            by.setdefault(s.n_channels, p)
        shown = ", ".join(f"{p.name} has {n}" for n, p in sorted(by.items()))
        raise InputError(f"the images of one call must have the same number of channels: "
                         f"{shown}; predict them in separate calls")
    src = sources[0]
    if src.n_channels != 1:
        alt = frames_instead(src.axes)
        other = f" (or --axes {alt} if they are frames)" if alt else ""
        raise InputError(f"{paths[0]} has {src.n_channels} channels ({src.axes_note}); "
                         "musplit predicts from one superimposed channel: predict a file of "
                         f"the mixed channel{other}")
    return sources


def _plan_images(splitter, paths, sources, out_dir: Path, work: Path, *, options: dict,
                 seed, std, raw_std, input_scale, brightness, strict_range, sample_mode,
                 block, measure: bool = True) -> list[_Image]:
    """The streaming plan of every input (its brightness measured unless not ``measure``,
    its settings checked)."""
    cal = splitter._calibration(raw_std)
    images = []
    names: dict[str, Path] = {}
    for path, src in zip(paths, sources, strict=True):
        name = output_name(path)
        if name in names:
            raise InputError(f"{names[name]} and {path} would both be written to "
                             f"{out_dir / (name + '.zarr')}: rename one of them")
        names[name] = path
        read, shape, pixel_size = _open_source(src, None, None, None)
        try:
            plan = _plan_stream(
                splitter.model, splitter.config, splitter.stats, read, shape,
                padding=options["padding"], grid=options["grid"], samples=options["samples"],
                batch_size=options["batch_size"], seed=seed,
                channel_names=options["channel_names"],
                normalized=False, paper_geometry=False, sample_mode=sample_mode,
                sample_batch=None, aleatoric=False, input_scale=input_scale,
                amp=options["amp"], channels_last=True, block=block, brightness=brightness,
                strict_range=strict_range,
                calibration=cal.get("calibration"), measure=measure)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
        kinds = [k for k in plan.widths if k != "std" or std]
        tag = {k: "" if k == "mean" else f"_{k}" for k in kinds}
        images.append(_Image(
            path=str(path), name=name, plan=plan,
            work={k: str(work / f"{name}{tag[k]}.zarr") for k in kinds},
            final={k: str(out_dir / f"{name}{tag[k]}.zarr") for k in kinds},
            pixel_size=pixel_size))
    return images


def plan_many(checkpoint, inputs, *, block: int = 2048, axes=None, series=None, level=0,
              padding=None, grid=None, samples=None, batch_size=None, precision=None,
              std: bool = False) -> RunPlan:
    """The :class:`RunPlan` of predicting ``inputs`` (nothing is predicted or written; the
    images are only opened for their shapes)."""
    from musplit.splitter import Splitter

    paths = find_images(inputs)
    splitter = Splitter.load(checkpoint)
    splitter._need_stats()
    sources = _open_inputs(paths, axes, series, level)
    options = _settings(splitter, padding, grid, samples, batch_size, precision)
    images = _plan_images(splitter, paths, sources, Path("."), Path("."), options=options,
                          seed=0, std=std, raw_std=False, input_scale=1.0, brightness="off",
                          strict_range=False, sample_mode=None, block=block, measure=False)
    rows = []
    for img in images:
        p = img.plan
        blocks = p.blocks()
        r, c = p.grid_shape
        n, h, w = p.shape
        rows.append({"name": img.name, "shape": [n, h, w], "blocks": len(blocks),
                     "tiles": n * r * c,
                     "output_bytes": 4 * n * h * w * p.n_channels * len(img.work)})
    first = images[0].plan
    return RunPlan(rows, first.block, first.halo, first.tiling.grid, first.n_channels,
                   len(images[0].work))


def measure_tile_rate(checkpoint, inputs, *, block: int = 2048, axes=None, series=None,
                      level=0, padding=None, grid=None, samples=None, batch_size=None,
                      precision=None) -> float:
    """Seconds per tile of this process, measured on the first (full) block of the first input
    (predicted in memory, written nowhere): the rate :meth:`RunPlan.seconds` takes."""
    from musplit.splitter import Splitter

    paths = find_images(inputs)[:1]
    splitter = Splitter.load(checkpoint)
    sources = _open_inputs(paths, axes, series, level)
    options = _settings(splitter, padding, grid, samples, batch_size, precision)
    img = _plan_images(splitter, paths, sources, Path("."), Path("."), options=options, seed=0,
                       std=False, raw_std=True, input_scale=1.0, brightness="off",
                       strict_range=False, sample_mode=None, block=block, measure=False)[0]
    read, _, _ = _open_source(sources[0], None, None, None)
    blk = img.plan.blocks()[0]
    engine = _stream_engine(splitter.model, splitter.config, splitter.stats, img.plan)
    tiles = _tiles(img.plan, blk)
    t0 = time.perf_counter()
    _predict_blocks(splitter.model, splitter.config, engine, img.plan, read, [blk],
                    lambda *_: None, progress=False)
    return (time.perf_counter() - t0) / max(tiles, 1)


# ---------------------------------------------------------------------------------------------
# The output folder and the run's record
# ---------------------------------------------------------------------------------------------
def _file_key(path: Path) -> dict:
    """What identifies an input between a run and its resumption: size and modification time
    (of a Zarr store: of its metadata file)."""
    p = Path(path)
    meta = next((p / m for m in ZARR_MARKERS if (p / m).exists()), p) if p.is_dir() else p
    st = meta.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _record(checkpoint: Path, images: list[_Image], settings: dict) -> dict:
    """The run's identity (``run.json``): a resumed run must match it exactly."""
    return {
        "version": _RECORD_VERSION,
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": _sha256(checkpoint)},
        "settings": settings,
        "images": [{"input": _file_key(Path(i.path)), "name": i.name,
                    "outputs": sorted(i.final), "shape": list(i.plan.shape),
                    "block": i.plan.block, "brightness_factor": i.plan.factor}
                   for i in images],
    }


def _first_difference(old: dict, new: dict, where: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            d = _first_difference(old.get(k), new.get(k), f"{where}.{k}" if where else k)
            if d:
                return d
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            d = _first_difference(a, b, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if old == new else f"{where}: {old!r} then, {new!r} now"


def _prepare_out_dir(out_dir: Path, images: list[_Image], inputs: Sequence[Path], *,
                     overwrite: bool, resume: bool) -> None:
    """Check the output folder before any work.

    It must be a folder that takes new files (or not exist yet). Without ``resume`` it must
    hold nothing but hidden files, unless ``overwrite`` (then the outputs of this call replace
    those of the same name; other files stay); an unfinished run in it is refused (finish it
    with ``resume``, or start again with ``overwrite``). The outputs never replace an input.
    """
    if resume and overwrite:
        raise InputError("--resume finishes the run in --out and --overwrite starts it again: "
                         "give one of them")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    if out_dir.name.lower().endswith((".zarr", *TIFF_SUFFIXES)):
        raise InputError(f"--out {out_dir}: several images are written into a folder, one "
                         f"<name>.zarr each; give a folder name without {Path(out_dir).suffix}")
    check_writable(out_dir, folder=True)
    work = out_dir / WORK
    if out_dir.is_dir():  # (a folder that does not exist yet holds no input)
        for img in images:
            for final in img.final.values():
                check_output(final, True, inputs, "zarr")  # never onto an input
    if resume:
        if not (work / "run.json").exists():
            raise InputError(f"--resume: {out_dir} holds no interrupted prediction "
                             f"({WORK}/run.json); run without --resume")
        return
    if work.exists() and not overwrite:
        raise InputError(f"{out_dir} holds an interrupted prediction ({WORK}): --resume to "
                         "finish it, or --overwrite to start again")
    if not out_dir.is_dir():
        return
    held = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    if held and not overwrite:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise InputError(f"--out {out_dir} already holds {shown}: choose an empty folder, or "
                         "--overwrite to replace the outputs of the same name")
    for img in images:
        for final in img.final.values():
            check_output(final, overwrite, inputs, "zarr")


# ---------------------------------------------------------------------------------------------
# Executors: this process, or a Dask cluster
# ---------------------------------------------------------------------------------------------
def _local(job: _Job, images: list[_Image], pending: list[tuple[int, Block]],
           done: Callable[[int, Block, dict], None]) -> None:
    for i, blk in pending:
        done(i, blk, _run_block(job, images[i], blk))


@contextlib.contextmanager
def _client(workers: int | None, scheduler: str | None, say: Callable[[str], None],
            threads: int | None = None):
    """A ``dask.distributed`` client: of a new ``LocalCluster`` on 127.0.0.1 (``workers``
    processes, one task at a time each, torch on ``threads`` threads), or of the scheduler at
    ``scheduler``."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a required dependency
        raise MusplitError("Dask prediction needs dask.distributed: pip install "
                           "'dask[distributed]'") from None
    # Dask's own INFO lines (workers registering, keys cancelled) are not the user's news;
    # its warnings and errors still show. The level is restored afterwards.
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(max(logging.WARNING, level))
    saved_env: dict[str, str | None] = {}
    cluster = client = None
    try:
        if scheduler is not None:
            try:
                client = Client(scheduler, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise InputError(f"cannot reach the Dask scheduler at {scheduler}: "
                                 f"{reason}") from None
        else:
            # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
            # adaptive mmap threshold: every large tensor is then mapped and unmapped anew,
            # and a network runs up to 2.5x slower (docs/distributed.md, "Worker settings").
            # A nanny also sets its variables in this process's environment, which every
            # worker (re)started later inherits: they are kept out of it while the cluster
            # runs, and put back afterwards.
            spawn = "distributed.nanny.pre-spawn-environ"
            for k in _SPAWN_VARIABLES:
                saved_env[k] = os.environ.pop(k, None)
            with dask.config.set({f"{spawn}.MALLOC_TRIM_THRESHOLD_": None,
                                  f"{spawn}.OMP_NUM_THREADS": threads or 1}):
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                       processes=True, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0",
                                       silence_logs=logging.ERROR)
            client = Client(cluster, set_as_default=False)
        info = client.scheduler_info()
        n = len(info.get("workers", {}))
        where = scheduler or f"a LocalCluster of {workers} worker process(es) on 127.0.0.1"
        say(f"Dask: {where}, {n} worker(s) now; dashboard "
            + (client.dashboard_link if "dashboard" in info.get("services", {}) else
               "not served (pip install bokeh to get one)"))
        yield client
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        quiet.setLevel(level)


def _on_dask(client, job: _Job, images: list[_Image], pending: list[tuple[int, Block]],
             done: Callable[[int, Block, dict], None]) -> None:
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    futures = {}
    for i, blk in pending:
        key = f"musplit-block-{images[i].name}-{'-'.join(map(str, blk))}-{token}"
        fut = client.submit(_run_block, job, images[i], blk, key=key, pure=False)
        futures[fut] = (i, blk)
    try:
        for fut in as_completed(futures, loop=client.loop):
            try:
                rec = fut.result()
            except Exception as e:
                if type(e).__name__ == "KilledWorker":
                    i, blk = futures[fut]
                    raise MusplitError(
                        f"Dask workers died predicting block {blk} of {images[i].path} "
                        "again and again (out of memory? a smaller --block-size needs less); "
                        "the blocks done so far are kept: rerun with --resume") from None
                raise
            done(*futures[fut], rec)
    finally:
        client.cancel(list(futures))


# ---------------------------------------------------------------------------------------------
# The call
# ---------------------------------------------------------------------------------------------
def predict_many(checkpoint: str | os.PathLike, inputs: Iterable[str | os.PathLike],
                 out_dir: str | os.PathLike, *, workers: int | None = None,
                 scheduler: str | None = None, resume: bool = False, overwrite: bool = False,
                 block: int = 2048, axes: str | None = None, series: int | None = None,
                 level: int = 0, padding: str | None = None, grid: int | None = None,
                 samples: int | None = None, batch_size: int | None = None, seed: int = 0,
                 precision: str | None = None, std: bool = False, raw_std: bool = False,
                 input_scale: float = 1.0, brightness: str | None = None,
                 strict_range: bool = False, sample_mode: str | None = None,
                 progress: bool | Callable[[int, int], None] = False,
                 say: Callable[[str], None] | None = None) -> list[Path]:
    """Split many images (or a few huge ones) block by block into OME-Zarr stores in
    ``out_dir``, in this process or on Dask (docs/distributed.md).

    Parameters
    ----------
    checkpoint : path-like
        The trained model; every worker loads it once.
    inputs : iterable of path-like
        Image files, Zarr / OME-Zarr stores, folders of images or glob patterns
        (:func:`find_images`); each must be one superimposed channel, read lazily.
    out_dir : path-like
        The folder of the outputs: ``<name>.zarr`` per input (``<name>_std.zarr`` with
        ``std`` and ``samples > 1``), ``name`` the input's file name without its suffix.
    workers : int, optional
        Predict on a new ``dask.distributed.LocalCluster`` of this many worker processes
        (one thread each; torch uses ``cpus // workers`` threads in each).
    scheduler : str, optional
        Predict on the existing Dask cluster whose scheduler is at this address
        (``tcp://host:8786``). Neither: in this process.
    resume : bool
        Finish the interrupted call whose unfinished outputs are in ``out_dir``: only blocks
        it did not record as done are predicted. Model, inputs and settings must be the same.
    overwrite : bool
        Write into an ``out_dir`` that holds other files, replacing outputs of the same name
        (and starting an interrupted call again).
    block : int
        Output block side in pixels, as for :func:`musplit.predict.predict_to_zarr`: one
        task per block; a worker's memory grows with ``(block + 2 halo)² · scales``.
    axes, series, level
        How the inputs are read (:func:`musplit.data.io.open_image`).
    padding, grid, samples, batch_size, seed, precision, std, raw_std, input_scale,
    brightness, strict_range, sample_mode
        As for :meth:`musplit.Splitter.predict_to_zarr` (defaults from the model's config).
    progress : bool or callable
        A tqdm bar over blocks, or ``progress(done, total)`` after each block (an exception
        it raises stops the call; what was done is kept for ``resume``).
    say : callable, optional
        Takes the call's status lines (cluster and dashboard, resumption, each finished
        image); default: the log at INFO.

    Returns
    -------
    list of Path
        The mean's store of each input, in input order.

    Raises
    ------
    InputError
        No image, images of different channel counts, an output folder that holds other
        results (without ``overwrite``) or an interrupted run (without ``resume``), a scheduler
        that cannot be reached, and every error of the single-image prediction (naming the
        image). Nothing is written under a final name before an image is complete.
    """
    say = say or log.info
    if workers is not None and scheduler is not None:
        raise InputError("--workers starts a cluster on this machine and --scheduler uses an "
                         "existing one: give one of them")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir).expanduser()
    checkpoint = Path(checkpoint).expanduser()
    paths = find_images(inputs)
    splitter = _worker_splitter(str(checkpoint.resolve()), _stat_key(checkpoint))
    splitter._need_stats()
    sources = _open_inputs(paths, axes, series, level)
    options = _settings(splitter, padding, grid, samples, batch_size, precision)
    work = out_dir / WORK
    images = _plan_images(splitter, paths, sources, out_dir, work, options=options, seed=seed,
                          std=std, raw_std=raw_std, input_scale=input_scale,
                          brightness=brightness, strict_range=strict_range,
                          sample_mode=sample_mode, block=block)
    _prepare_out_dir(out_dir, images, paths, overwrite=overwrite, resume=resume)
    settings = {**options, "seed": int(seed), "std": bool(std),
                "raw_std": bool(raw_std), "input_scale": float(input_scale),
                "brightness": brightness, "strict_range": bool(strict_range),
                "sample_mode": sample_mode, "axes": axes, "series": series,
                "level": int(level)}
    record = _record(checkpoint, images, settings)
    threads = None
    if workers is not None:
        threads = max(1, len(os.sched_getaffinity(0)) // workers) \
            if hasattr(os, "sched_getaffinity") else max(1, (os.cpu_count() or 1) // workers)
    job = _Job(str(checkpoint.resolve()), _stat_key(checkpoint), axes, series, int(level),
               str(work / "done"), threads)
    splitter_meta = [img.plan.meta(splitter.config, splitter.stats, splitter.model,
                                   std="std" in img.work) for img in images]

    if resume:
        diff = _first_difference(json.loads((work / "run.json").read_text()), record)
        if diff:
            raise InputError(f"--resume: the interrupted run in {out_dir} differs from this "
                             f"call ({diff}); rerun it with the same model, inputs and "
                             "options, or --overwrite to start again")
    cluster = (_client(workers, scheduler, say, threads)
               if workers is not None or scheduler is not None else contextlib.nullcontext())
    with cluster as client:  # connect (or refuse the address) before anything is written
        if not resume:
            if work.exists():
                shutil.rmtree(work)
            (work / "done").mkdir(parents=True)
            for img in images:
                n, h, w = img.plan.shape
                for store in img.work.values():
                    create_ome_store(store, (n, h, w, img.plan.n_channels), img.plan.chunks,
                                     img.plan.names, name=img.name,
                                     pixel_size=img.pixel_size)
            with atomic_write(work / "run.json") as tmp:
                tmp.write_text(json.dumps(record, indent=1))
        return _run(job, images, splitter_meta, out_dir, client, progress, say, resume)


def _processes(records: Iterable[dict]) -> list[dict]:
    """Per process that predicted blocks of an image: its id, blocks, tiles, seconds and peak
    resident memory (what sizes ``block`` for a worker's memory)."""
    by: dict[int, dict] = {}
    for r in records:
        p = by.setdefault(r["pid"], {"pid": r["pid"], "blocks": 0, "tiles": 0,
                                     "seconds": 0.0, "peak_rss_mib": 0.0})
        p["blocks"] += 1
        p["tiles"] += r["tiles"]
        p["seconds"] = round(p["seconds"] + r["seconds"], 4)
        p["peak_rss_mib"] = max(p["peak_rss_mib"], r["peak_rss_mib"])
    return sorted(by.values(), key=lambda p: p["pid"])


def _stat_key(path: Path) -> tuple:
    try:
        st = Path(path).stat()
    except OSError:
        from musplit.errors import CheckpointError

        raise CheckpointError(f"checkpoint {path} does not exist") from None
    return (st.st_size, st.st_mtime_ns)


def _run(job: _Job, images: list[_Image], metas: list[dict], out_dir: Path, client, progress,
         say, resume: bool) -> list[Path]:
    """Predict every block not recorded as done, finish each image when its last block is."""
    from musplit.predict.result import _jsonable, _set_zarr_meta

    work = out_dir / WORK
    blocks = [[b for b in img.plan.blocks()] for img in images]
    records: list[dict] = [{} for _ in images]
    finished = [False] * len(images)
    pending: list[tuple[int, Block]] = []
    for i, img in enumerate(images):
        if (Path(job.done) / f"{img.name}.finished").exists():
            finished[i] = True
            continue
        for blk in blocks[i]:
            m = job.marker(img, blk)
            rec = None
            if m.exists():
                with contextlib.suppress(OSError, ValueError):
                    rec = json.loads(m.read_text())
            if rec is None:
                pending.append((i, blk))
            else:
                records[i][tuple(blk)] = rec
    total = sum(len(b) for b in blocks)
    already = total - len(pending)
    resumed = [len(r) for r in records]  # blocks an earlier call predicted
    if resume:
        say(f"resuming {out_dir}: {already} of {total} block(s) already done, "
            f"{len(pending)} to predict")
    left = [len(blocks[i]) - len(records[i]) if not finished[i] else 0
            for i in range(len(images))]
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=already, unit="block", desc="predict")
        plain = say

        def say(line: str) -> None:  # a line of its own, the bar redrawn below it
            with tqdm.external_write_mode(file=sys.stderr):
                plain(line)
    elif callable(progress):
        progress(already, total)
    n_done = [already]
    warned: list[int] = []
    t0 = time.perf_counter()

    def finish(i: int) -> None:
        img = images[i]
        for k, store in img.work.items():
            lo = np.full(img.plan.n_channels, np.inf)
            hi = np.full(img.plan.n_channels, -np.inf)
            for rec in records[i].values():
                a, b = rec["ranges"][k]
                lo = np.fmin(lo, np.array([np.nan if v is None else v for v in a]))
                hi = np.fmax(hi, np.array([np.nan if v is None else v for v in b]))
            if Path(store).exists():
                finish_ome_store(store, lo, hi, img.plan.names)
                meta = {**metas[i], "quantity": k, "seconds": round(
                    sum(r["seconds"] for r in records[i].values()), 3),
                    "blocks": len(records[i]), "blocks_resumed": resumed[i],
                    "processes": _processes(records[i].values())}
                _set_zarr_meta(Path(store), _jsonable(meta))
                move_into_place(Path(store), Path(img.final[k]))
        (Path(job.done) / f"{img.name}.finished").write_text("")
        finished[i] = True
        say(f"image {sum(finished)}/{len(images)} done: {img.path} -> {img.final['mean']} "
            f"({len(blocks[i])} block(s))")

    def done(i: int, blk: Block, rec: dict) -> None:
        if rec.get("malloc_trim") and not warned:
            warned.append(rec["pid"])
            say(f"note: a worker runs with MALLOC_TRIM_THRESHOLD_={rec['malloc_trim']} "
                "(Dask's default), which makes torch up to 2.5x slower; "
                "docs/distributed.md, \"Worker settings\" says how to unset it")
        records[i][tuple(blk)] = rec
        left[i] -= 1
        n_done[0] += 1
        if left[i] == 0:
            finish(i)
        if bar is not None:  # after finish(): the count includes the image just completed
            bar.update(1)
            bar.set_postfix_str(f"images {sum(finished)}/{len(images)}")
        if callable(progress):
            progress(n_done[0], total)

    try:
        for i in range(len(images)):  # images whose blocks were all done before a stop
            if not finished[i] and left[i] == 0:
                finish(i)
        if pending:
            if client is None:
                _local(job, images, pending, done)
            else:
                _on_dask(client, job, images, pending, done)
    except MusplitError:  # a bad input or setting: a resumed run would stop there again
        raise
    except BaseException:
        recorded = sum(1 for _ in Path(job.done).glob("*/*.json"))
        say(f"stopped: {recorded} of {total} block(s) are recorded in {work}; rerun with "
            "--resume to finish")
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    say(f"predicted {len(pending)} block(s) of {len(images)} image(s) in {seconds:.1f} s")
    shutil.rmtree(work, ignore_errors=True)
    return [Path(img.final["mean"]) for img in images]
