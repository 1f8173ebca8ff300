"""Fused elementwise CPU kernels, compiled on first use (see ``kernels.c``).

A training step of the LadderVAE spends about a third of its time on CPU in elementwise work
around the convolutions: BatchNorm-apply, ELU, the gate ``ELU(a) * sigmoid(g)`` and their
gradients, each a separate pass over 32-128 MB activations in eager PyTorch. The C functions in
``kernels.c`` do each chain in one pass. They are compiled once per machine with the system's
C compiler (``cc``, or ``$CC``) into a cache folder, and called through :mod:`ctypes`, so no
PyTorch headers or build step are needed and compiling takes about a second.

Everything degrades gracefully: without a compiler, on a failed build, or with
``MUSPLIT_NATIVE=0`` in the environment, :func:`load` returns None and the models use their
eager PyTorch code, which computes the same functions (to float32 rounding).

The cache folder is ``$MUSPLIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/musplit``, else
``~/.cache/musplit``. The library's file name holds a hash of the source, the compiler command
and this CPU's model and flags, so a home folder shared between machines never loads a build
for another CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

from musplit.files import move_into_place, temp_path

log = logging.getLogger("musplit")

__all__ = ["available", "bn_elu", "bn_bwd_apply", "elu_bwd_bn_sums", "gate_bwd", "gate_fwd",
           "load", "supports"]

SOURCE = Path(__file__).with_name("kernels.c")
#: Compiler flags. -march=native is safe because the build is cached per CPU (see module doc).
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
#: Below this many elements a kernel runs on one thread (thread start-up would dominate).
SERIAL_BELOW = 1 << 15

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False

_i64, _int, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "musplit_kernels_version": ([], _int),
    "musplit_bn_elu_fwd": ([_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _int, _int], None),
    "musplit_elu_bwd_bn_sums": ([_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _int,
                                 _int], _int),
    "musplit_bn_bwd_apply": ([_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _int,
                              _int], None),
    "musplit_gate_fwd": ([_ptr, _ptr, _i64, _i64, _i64, _int, _int], None),
    "musplit_gate_bwd": ([_ptr, _ptr, _ptr, _i64, _i64, _i64, _int, _int], None),
}
KERNELS_VERSION = 2


def _disabled() -> bool:
    return os.environ.get("MUSPLIT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """Where compiled kernels are kept (see the module docstring)."""
    if os.environ.get("MUSPLIT_CACHE_DIR"):
        return Path(os.environ["MUSPLIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "musplit"


def _cpu_signature() -> str:
    """The CPU's model and feature flags (Linux), else the platform's description."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.platform() + platform.processor()
    keep = [line for line in text.splitlines()
            if line.split(":")[0].strip() in ("model name", "flags", "vendor_id")]
    return "\n".join(sorted(set(keep)))


def _compiler() -> str | None:
    cc = os.environ.get("CC", "").strip()
    if cc:
        return shutil.which(cc.split()[0]) and cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    return None


def _build(cc: str, openmp: bool, out: Path) -> bool:
    """Compile to a temporary name beside ``out`` and rename it there: no half-written file."""
    flags = FLAGS + (["-fopenmp"] if openmp else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out, "build")
    try:
        proc = subprocess.run([*cc.split(), *flags, str(SOURCE), "-o", str(tmp)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log.debug("musplit.native: %s failed: %s", cc, proc.stderr.strip()[-2000:])
            return False
        move_into_place(tmp, out)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("musplit.native: compiling failed: %s", exc)
        return False
    finally:
        tmp.unlink(missing_ok=True)  # a failed build may leave a partial output


def _library_path(cc: str, openmp: bool, folder: Path) -> Path:
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), cc.encode(), " ".join(FLAGS).encode(), bytes([openmp]),
                 _cpu_signature().encode(), platform.machine().encode()):
        key.update(part)
        key.update(b"\0")
    return folder / f"kernels-{key.hexdigest()[:20]}.so"


def _open(path: Path) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(path))
        for name, (args, res) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        if lib.musplit_kernels_version() != KERNELS_VERSION:
            return None
        return lib
    except (OSError, AttributeError) as exc:
        log.debug("musplit.native: cannot load %s: %s", path, exc)
        return None


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None where that is not possible."""
    global _lib, _tried
    if _disabled():
        return None
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        cc = _compiler()
        if cc is None:
            log.debug("musplit.native: no C compiler found; using eager PyTorch")
        else:
            # A compiler without OpenMP still gives single-threaded kernels; a cache folder
            # that cannot be written falls back to one in the temporary folder.
            uid = os.getuid() if hasattr(os, "getuid") else "user"
            folders = (cache_dir(), Path(tempfile.gettempdir()) / f"musplit-{uid}")
            for folder, openmp in ((f, o) for f in folders for o in (True, False)):
                try:
                    path = _library_path(cc, openmp, folder)
                    if path.exists() or _build(cc, openmp, path):
                        _lib = _open(path)
                except OSError as exc:
                    log.debug("musplit.native: %s", exc)
                if _lib is not None:
                    break
        _tried = True
        return _lib


def available() -> bool:
    """Whether the fused kernels can be used in this process."""
    return load() is not None


def reset() -> None:
    """Forget the loaded library so that the next :func:`load` looks again (tests)."""
    global _lib, _tried
    with _lock:
        _lib, _tried = None, False


# -- the calls ------------------------------------------------------------------------------
def _layout(t: Tensor) -> int | None:
    """1 for channels_last, 0 for contiguous NCHW, None for anything else."""
    if t.dim() != 4:
        return None
    if t.is_contiguous(memory_format=torch.channels_last):
        # A tensor with 1x1 spatial size or one channel is both; treat it as NCHW then.
        return 0 if t.is_contiguous() else 1
    return 0 if t.is_contiguous() else None


def supports(*tensors: Tensor) -> bool:
    """True if the kernels can take these float32 CPU tensors as they are laid out.

    All 4-d tensors among them must share one layout (channels_last or contiguous NCHW). False
    while ``torch.jit.trace`` records a graph: a ctypes call cannot be part of one (the
    BioImage Model Zoo export, docs/bmz.md, traces the eager route).
    """
    if torch.jit.is_tracing() or load() is None:
        return False
    layouts = set()
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu":
            return False
        if t.dim() == 4:
            layouts.add(_layout(t))
    return None not in layouts and len(layouts) <= 1


def _geometry(t: Tensor) -> tuple[int, int, int]:
    """``(rows, len, channels_last)`` of a 4-d tensor ``(N, C, H, W)`` in its layout."""
    n, c, h, w = t.shape
    cl = _layout(t)
    return (n * h * w, c, 1) if cl == 1 else (n * c, h * w, 0)


def _threads(t: Tensor) -> int:
    return 1 if t.numel() < SERIAL_BELOW else torch.get_num_threads()


def _p(t: Tensor) -> int:
    return t.data_ptr()


def bn_elu(x: Tensor, scale: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """``ELU(x * scale[c] + shift[c])`` in one pass; ``out`` may be ``x``."""
    lib = load()
    out = torch.empty_like(x) if out is None else out
    rows, length, cl = _geometry(x)
    scale, shift = scale.float().contiguous(), shift.float().contiguous()
    lib.musplit_bn_elu_fwd(_p(x), _p(out), _p(scale), _p(shift), rows, length, x.shape[1], cl,
                           _threads(x))
    return out


def elu_bwd_bn_sums(a: Tensor, g: Tensor, x: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
    """Turn ``g = dL/da`` into ``dL/dz`` in place (``a = ELU(z)``) and return BN's sums.

    Returns ``(sum dL/dz, sum dL/dz * (x - mean))`` per channel, in float64.
    """
    lib = load()
    c = x.shape[1]
    sums = torch.zeros(2, c, dtype=torch.float64)
    mean = mean.float().contiguous()
    rows, length, cl = _geometry(x)
    status = lib.musplit_elu_bwd_bn_sums(_p(a), _p(g), _p(x), _p(mean), _p(sums[0]),
                                         _p(sums[1]), rows, length, c, cl, _threads(x))
    if status != 0:
        raise MemoryError("musplit.native: out of memory for the BatchNorm gradient sums")
    return sums[0], sums[1]


def bn_bwd_apply(gz: Tensor, x: Tensor, a: Tensor, b: Tensor, d: Tensor, mean: Tensor,
                 out: Tensor | None = None) -> Tensor:
    """``a[c] gz + b[c] (x - mean[c]) + d[c]``; ``out`` may be ``gz``."""
    lib = load()
    out = torch.empty_like(x) if out is None else out
    rows, length, cl = _geometry(x)
    a, b, d, mean = (t.float().contiguous() for t in (a, b, d, mean))
    lib.musplit_bn_bwd_apply(_p(gz), _p(x), _p(out), _p(a), _p(b), _p(d), _p(mean), rows,
                             length, x.shape[1], cl, _threads(x))
    return out


def _gate_geometry(y: Tensor) -> tuple[int, int, int, int]:
    n, c2, h, w = y.shape
    half = c2 // 2
    cl = _layout(y)
    if cl == 1:
        return n * h * w, half, half, 1
    return n * half, h * w, half, 0


def gate_fwd(y: Tensor) -> Tensor:
    """``ELU(a) * sigmoid(g)`` for ``[a, g] = y`` split along channels, in ``y``'s layout."""
    lib = load()
    n, c2, h, w = y.shape
    fmt = torch.channels_last if _layout(y) == 1 else torch.contiguous_format
    out = torch.empty((n, c2 // 2, h, w), dtype=y.dtype, memory_format=fmt)
    rows, length, half, cl = _gate_geometry(y)
    lib.musplit_gate_fwd(_p(y), _p(out), rows, length, half, cl, _threads(out))
    return out


def gate_bwd(y: Tensor, grad_out: Tensor) -> Tensor:
    """The gradient w.r.t. ``y`` of :func:`gate_fwd`, given ``grad_out`` in ``y``'s layout."""
    lib = load()
    grad = torch.empty_like(y)
    rows, length, half, cl = _gate_geometry(y)
    lib.musplit_gate_bwd(_p(y), _p(grad_out), _p(grad), rows, length, half, cl,
                         _threads(grad_out))
    return grad
