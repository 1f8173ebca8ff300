"""The process and its machine: OpenMP and threads, allocator tuning, memory that is left.

:func:`prefer_passive_openmp` runs when ``musplit`` is imported: it asks the OpenMP runtime that
PyTorch loads afterwards to let idle threads sleep instead of spinning (see its docstring and
docs/performance.md for the measurements). :func:`apply_threads` sets the number of CPU threads
(``MUSPLIT_THREADS`` overrides it) and :func:`cpu_settings` says what a run uses, for the run log.

:func:`tune_allocator` makes CPU training and prediction faster; it is called by the
``musplit`` command line (set ``MUSPLIT_TUNE_MALLOC=0`` to turn it off). Python users who train
or predict on a CPU can call it once at the start of their program; it changes how this
process allocates memory and nothing else. :func:`available_memory` tells how much memory is
left, :func:`in_memory_prediction_bytes` how much a prediction held in memory needs and
:func:`prediction_file_bytes` how much disk its files take, so that work that cannot fit is
refused before it starts.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("musplit")

#: What :func:`prefer_passive_openmp` found or did, for :func:`cpu_settings`.
_openmp_note: str | None = None


def prefer_passive_openmp() -> str:
    """Let OpenMP threads sleep at barriers (``OMP_WAIT_POLICY=PASSIVE``); say what holds.

    PyTorch's CPU kernels run on an OpenMP thread pool. With the default wait policy a thread
    that reaches the end of a parallel region spins for a while before it sleeps, so that the
    next region starts without a wake-up. That is free on an idle machine and ruinous on a busy
    one: when another program holds one of the cores, the spinning threads take the CPU time
    the lagging thread needs, at every one of the thousands of parallel regions of a training
    step. Measured on 2 cores with other work running (docs/performance.md): a ``cpu-small``
    training step took 13-14 s with spinning threads and 3.0-4.5 s with sleeping ones.

    The variable is read once, when the OpenMP runtime is loaded (with ``import torch``), so
    this only acts when musplit is imported first; ``musplit`` commands always are. It never
    overrides an ``OMP_WAIT_POLICY`` the user set, and ``MUSPLIT_OPENMP=default`` leaves the
    runtime's own default in place. Returns the note :func:`cpu_settings` reports.
    """
    global _openmp_note
    if _openmp_note is not None:
        return _openmp_note
    user = os.environ.get("OMP_WAIT_POLICY")
    if user:
        _openmp_note = f"OpenMP wait policy {user.lower()} (OMP_WAIT_POLICY)"
    elif os.environ.get("MUSPLIT_OPENMP", "").strip().lower() == "default":
        _openmp_note = "OpenMP wait policy: the runtime's default (MUSPLIT_OPENMP=default)"
    elif "torch" in sys.modules:
        _openmp_note = ("OpenMP wait policy: the runtime's default (spinning), because torch "
                        "was imported before musplit; set OMP_WAIT_POLICY=PASSIVE to change it")
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        _openmp_note = "OpenMP wait policy passive"
    return _openmp_note


def default_threads() -> int:
    """CPU threads for training and prediction: ``MUSPLIT_THREADS`` when set, else the count
    PyTorch uses now (its default is one per physical core, or ``OMP_NUM_THREADS``; a program's
    own ``torch.set_num_threads`` is kept), capped at the cores this process may run on (its
    CPU affinity, which a container or ``taskset`` narrows)."""
    raw = os.environ.get("MUSPLIT_THREADS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            from musplit.errors import ConfigError

            raise ConfigError(f"MUSPLIT_THREADS must be a whole number of threads >= 1, "
                              f"not '{raw}'")
        return n
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores))


def apply_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads to ``threads`` (default :func:`default_threads`); return
    the number in use."""
    import torch

    n = default_threads() if threads is None else int(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def cpu_settings() -> str:
    """One line for the run log: threads and the OpenMP wait policy in use."""
    import torch

    n = torch.get_num_threads()
    return f"{n} CPU thread{'s' if n != 1 else ''}, {prefer_passive_openmp()}"

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_tuned: bool | None = None


def tune_allocator(trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc keep freed memory for reuse; return whether it took effect.

    A training step of µSplit allocates activations of 32-128 MB. They are above glibc's largest
    mmap threshold, so by default each one is a fresh ``mmap`` whose pages the kernel faults in
    and zeroes on first touch, and which is unmapped again when freed. On a virtual machine
    that page handling costs about as much as the arithmetic around it. Switching mmap off
    and raising the trim threshold lets the heap recycle those blocks: bench/train_step.py
    measured 1.3-1.7× faster steps for a peak memory about 10 % higher.

    The call is a no-op (returning False) on systems without glibc, and when the environment
    variable ``MUSPLIT_TUNE_MALLOC`` is ``0``. Calling it again does nothing more.

    Parameters
    ----------
    trim_threshold : int
        Bytes of free memory at the top of the heap that glibc keeps rather than returning to
        the system (default 1 GiB).
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("MUSPLIT_TUNE_MALLOC", "1").strip() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: leave it alone
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    log.debug("glibc malloc tuned for reuse: %s", _tuned)
    return _tuned


def available_memory() -> int | None:
    """Bytes of memory this process can still use, or None where that cannot be told.

    Linux: ``MemAvailable`` of /proc/meminfo, lowered to what the cgroup (a container's limit)
    has left. Elsewhere None: callers then skip memory checks rather than guess.
    """
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        avail = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                used = int(f.read().strip())
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def in_memory_prediction_bytes(n_frames: int, height: int, width: int, *, n_read: int,
                               n_channels: int, with_samples: bool, scales: int) -> int:
    """Bytes a prediction held in memory needs, about.

    The in-memory path keeps the input (``n_read`` channels read), the mixed input, the output
    arrays (mean and aleatoric std per channel, plus the samples' std when ``with_samples``) of
    every frame, and the lateral-context stack of the frame being tiled (about ``scales + 3``
    frame copies), all float32. Streaming to Zarr keeps one block at a time instead.
    """
    px = n_frames * height * width
    outputs = 2 * n_channels + (n_channels if with_samples else 0)
    return 4 * px * (n_read + 1 + outputs) + 4 * height * width * (scales + 3)


def prediction_file_bytes(n_frames: int, height: int, width: int, *, n_channels: int,
                          n_files: int = 1) -> int:
    """Bytes of disk the files of a prediction take, about: ``n_files`` float32 images of
    ``n_frames x height x width x n_channels`` (the mean, and the std when it is written), plus
    64 KiB of metadata each. Compression (Zarr) only makes them smaller."""
    return n_files * (4 * n_frames * height * width * n_channels + (64 << 10))


def fast_precision(amp: str | None, device="cpu") -> bool:
    """Whether autocast to ``amp`` runs on hardware made for it on ``device``.

    Always True for fp32 (``None``). On a CPU, bf16 needs AVX512-BF16 or AMX and fp16 needs
    AMX-FP16; elsewhere PyTorch emulates them, usually slower than fp32. On CUDA, fp16 is
    always native and bf16 from Ampere on; other devices are assumed to have what they offer.
    """
    import torch

    device = torch.device(device)
    if amp in (None, "fp32"):
        return True
    if device.type == "cuda":
        return amp == "fp16" or bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return True
    cpu = torch.cpu

    def has(name: str) -> bool:
        fn = getattr(cpu, name, None)
        try:
            return bool(fn()) if callable(fn) else False
        except Exception:  # a probe that fails means: not known to be there
            return False

    if amp == "bf16":
        return has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")
    return has("_is_amx_fp16_supported")


__all__ = ["apply_threads", "available_memory", "cpu_settings", "default_threads", "fast_precision",
           "in_memory_prediction_bytes", "prediction_file_bytes", "prefer_passive_openmp",
           "tune_allocator"]
