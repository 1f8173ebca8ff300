"""The prediction engine: batches of lateral-context stacks through the model, MMSE tiles out.

:class:`_Prepared` and :func:`_as_frames` present the input as scaled, clipped float32 frames,
read one at a time. :class:`_Engine` runs batches of normalised LC stacks through the network
and keeps, per pixel of each tile, a running mean and sum of squared deviations over the
posterior samples (docs/tiling.md, "MMSE and uncertainty"): the bottom-up pass runs once per
patch and the top-down pass ``K`` times, so memory does not grow with ``K``. The helpers below
it set up a call: eval and inference mode, memory layout, reduced precision, the outer-padding
probe. What the engine asks of a model beyond ``model(x)`` is in :mod:`musplit.models.protocol`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from musplit.data.context import ContextStack
from musplit.data.normalize import NormStats
from musplit.data.tiling import Tiling
from musplit.errors import ConfigError, InputError, MusplitError
from musplit.models.protocol import can_encode, can_sample_many, is_deterministic, sample_mode_of
from musplit.runtime import fast_precision  # noqa: F401  (musplit.predict exports it)

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
class _Prepared:
    """Lazy ``(N, H, W)`` view of the input: frame ``i`` scaled and clipped, float32.

    :class:`ContextStack` reads frames through this one at a time, so the input is never copied
    as a whole (``input_scale``: docs/method.md, "Superposition model"; clip before the pyramid:
    docs/data.md, "Normalisation").
    """

    def __init__(self, frames, clip: float, scale: float):
        self._frames, self._clip, self._scale = frames, np.float32(clip), np.float32(scale)
        self.shape = tuple(int(v) for v in frames.shape)

    def __getitem__(self, i: int) -> np.ndarray:
        f = self._frames[int(i)]
        f = np.array(f, dtype=np.float32)  # a copy: the caller's array is never modified
        if not np.isfinite(f).all():
            raise InputError(f"input frame {i} contains {int(np.sum(~np.isfinite(f)))} NaN or "
                             "Inf pixels; clean the image first")
        if self._scale != 1:
            f *= self._scale
        np.minimum(f, self._clip, out=f)
        return f


def _as_frames(image) -> Any:
    """``(N, H, W)`` array-like from ``(H, W)`` or ``(N, H, W)``; checks dtype and values."""
    shape = tuple(getattr(image, "shape", ()))
    if not shape and not isinstance(image, (list, tuple)):
        raise InputError(f"image must be an array of shape (H, W) or (N, H, W), got "
                         f"{type(image).__name__}")
    if not shape or isinstance(image, (list, tuple)):
        image = np.asarray(image)
        shape = image.shape
    if len(shape) not in (2, 3):
        raise InputError(
            f"image must have shape (H, W) or (N, H, W) (one superimposed channel), got "
            f"{shape}; select the channel first"
        )
    if any(s < 1 for s in shape):
        raise InputError(f"image is empty: shape {shape}")
    dtype = np.dtype(getattr(image, "dtype", np.float32))
    if dtype.kind not in "fiu":
        raise InputError(f"image must be real-valued numbers, got dtype {dtype}")
    if len(shape) == 2:
        image = image[None] if isinstance(image, np.ndarray) else _AddAxis(image)
    if isinstance(image, np.ndarray):  # in memory: check all values now, frame by frame
        for i in range(image.shape[0]):
            bad = image.dtype.kind == "f" and not np.isfinite(image[i]).all()
            if bad:
                n = int(np.sum(~np.isfinite(image[i])))
                raise InputError(f"input frame {i} contains {n} NaN or Inf pixels; clean the "
                                 "image first")
    return image


class _AddAxis:
    """``(H, W)`` array-like seen as ``(1, H, W)`` (zarr arrays, memory maps)."""

    def __init__(self, a):
        self._a, self.shape, self.dtype = a, (1, *a.shape), getattr(a, "dtype", None)

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        if int(idx[0]) != 0:
            raise IndexError(idx[0])
        return self._a[idx[1:]] if len(idx) > 1 else self._a[...]


# ---------------------------------------------------------------------------------------------
# The engine: batches of patches -> MMSE tiles
# ---------------------------------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _first(out) -> torch.Tensor:
    """The likelihood parameters: the output itself or its first element (docs/design.md, "Public
    API")."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    params = getattr(out, "params", None)
    if isinstance(params, torch.Tensor):
        return params
    raise ConfigError(f"the model returned {type(out).__name__}; expected a tensor "
                      "(B, 2C, H, W) or a tuple whose first element is one")


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg
                                            or "can't allocate memory" in msg)


@dataclass
class _TileBatch:
    """One batch of tiles, channels last, float32 numpy: ``(K, g, g, C)`` each."""

    mean: np.ndarray
    std: np.ndarray | None
    aleatoric: np.ndarray | None
    samples: np.ndarray | None  # (K, g, g, keep*C), sample-major channels


class _Engine:
    """Runs batches of LC stacks through a model and returns MMSE tiles (docs/tiling.md,
    "MMSE and uncertainty")."""

    def __init__(self, model: nn.Module, stats: NormStats, tiling: Tiling, *, samples: int,
                 seed: int, sample_mode: str | None, sample_batch: int | None,
                 batch_size: int, keep_samples: int, aleatoric: bool, normalized: bool,
                 amp: str | None, channels_last: bool = False, consistent: bool = False,
                 out_scale: float = 1.0):
        self.model, self.stats, self.tiling = model, stats, tiling
        self.out_scale = float(out_scale)  # intensity outputs times this (brightness="match")
        self.consistent = bool(consistent)
        self.n_channels = stats.n_channels
        self.samples, self.keep_samples = samples, keep_samples
        self.batch_size, self.sample_batch = batch_size, sample_batch
        self.sample_mode, self.aleatoric, self.normalized = sample_mode, aleatoric, normalized
        self.channels_last = channels_last
        self.device = _device_of(model)
        # Noise for the latents: one generator on the model's device, seeded once, consumed
        # batch after batch (same seed, same hardware -> same output: docs/tiling.md,
        # "Reproducibility").
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.has_encoder = can_encode(model)
        self.has_sample_many = can_sample_many(model)
        mode = sample_mode_of(model, sample_mode, "sample")
        # A deterministic model: one pass is every sample.
        self.deterministic = is_deterministic(model, mode)
        if sample_mode not in (None, "sample", "mean"):
            raise InputError(f"sample_mode must be 'sample', 'mean' or None, got {sample_mode!r}")
        self.amp = None
        if amp == "fp32":
            amp = None
        if amp is not None:
            if amp not in AMP_DTYPES:
                raise InputError(f"amp must be one of {tuple(AMP_DTYPES)} or None, got {amp!r}")
            self.amp = AMP_DTYPES[amp]
            if not fast_precision(amp, self.device):
                need = ("a GPU of the Ampere generation or later" if self.device.type == "cuda"
                        else "AVX512-BF16 or AMX" if amp == "bf16" else "AMX-FP16")
                log.warning("%s is emulated on this %s (it needs %s): expect it to be slower "
                            "than fp32", amp, self.device.type.upper(), need)
        m = np.float32(stats.input_mean)
        s = np.float32(stats.input_std)
        self._in_mean, self._in_std = m, s

    # -- model calls ---------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _draws(self, x: torch.Tensor, n: int) -> Iterable[torch.Tensor]:
        """Yield ``(k, B, 2C, H, W)`` float32 chunks of posterior samples, ``n`` in total.

        The encoder runs once for all ``n`` (docs/tiling.md, "MMSE and uncertainty"): the
        encoder state is repeated ``k`` times along the batch axis and decoded; ``k`` is at most
        ``sample_batch`` (default: as many as keep the decoder batch within ``batch_size``).
        """
        b = x.shape[0]
        k_max = self.sample_batch or max(1, self.batch_size // max(b, 1))
        k_max = min(k_max, n)
        if self.has_encoder:
            with self._autocast():
                state = self.model.encode(x)
            kwargs = {"noise": self.generator, "compute_kl": False}
            if self.sample_mode is not None:
                kwargs["sample_mode"] = self.sample_mode
            done = 0
            while done < n:
                k = min(k_max, n - done)
                with self._autocast():
                    out = self.model.decode(state if k == 1 else state.repeat(k), **kwargs)
                p = _first(out).float()
                yield p.reshape(k, b, *p.shape[1:])
                done += k
        elif self.has_sample_many:
            done = 0
            while done < n:
                k = min(k_max, n - done)
                with self._autocast():
                    p = self.model.sample_many(x, k, noise=self.generator, batch=k)
                yield p.float()
                done += k
        else:
            for _ in range(n):
                with self._autocast():
                    p = _first(self.model(x))
                yield p.float()[None]

    def _consistent(self, mu: torch.Tensor, ell: torch.Tensor, x0: torch.Tensor):
        """Condition each sample's Gaussian on the observed mix (``predict.consistent``).

        In intensity units the input is ``sum_c w_c t_c`` (``w`` = alpha, or 1 for a summed
        input), so in normalised units ``sum_c b_c y_c = r0`` with ``b_c = w_c s_c`` and
        ``r0 = s_in x + m_in - sum_c w_c m_c``. For independent Gaussians ``y_c ~ N(mu_c, v_c)``
        the conditional mean is ``mu_c + b_c v_c (r0 - sum_k b_k mu_k) / sum_k b_k^2 v_k`` and
        the conditional variance ``v_c - (b_c v_c)^2 / sum_k b_k^2 v_k``: the residual goes to
        the channels the model is least sure of, and the channels add up to the input.
        """
        st = self.stats
        w = np.ones(self.n_channels) if st.input_is_sum else np.asarray(st.alpha, dtype=float)
        b = torch.tensor(w * np.asarray(st.target_std), dtype=mu.dtype, device=mu.device)
        m = float(np.dot(w, st.target_mean))
        b = b.view(1, 1, -1, 1, 1)
        v = torch.exp(ell)
        r0 = x0.to(mu.dtype) * float(self._in_std) + (float(self._in_mean) - m)  # (B, g, g)
        resid = r0[None] - (b * mu).sum(2)  # (k, B, g, g)
        denom = (b * b * v).sum(2).clamp_min(1e-12)
        gain = b * v / denom[:, :, None]
        mu = mu + gain * resid[:, :, None]
        v = (v - gain * b * v).clamp_min(1e-12 * v)
        return mu, torch.log(v)

    def tiles(self, x_np: np.ndarray) -> _TileBatch:
        """MMSE tiles of one batch of normalised LC stacks ``(B, S, P, P)``."""
        c, t = self.n_channels, self.tiling
        lo, hi = t.offset, t.offset + t.keep
        x = torch.from_numpy(x_np).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n_total = 1 if self.deterministic else self.samples
        n = 0
        mean = m2 = alea = None
        kept: list[torch.Tensor] = []
        try:
            for p in self._draws(x, n_total):
                if p.shape[2] != 2 * c or p.shape[-2:] != x.shape[-2:]:
                    raise ConfigError(
                        f"the model returned {tuple(p.shape[1:])} per sample for input "
                        f"{tuple(x.shape)}; expected ({x.shape[0]}, {2 * c}, {x.shape[-2]}, "
                        f"{x.shape[-1]}) (means and log-variances of {c} channels)"
                    )
                p = p[..., lo:hi, lo:hi]  # only the kept region enters the statistics
                mu, ell = p[:, :, :c], p[:, :, c:]
                if self.consistent:
                    mu, ell = self._consistent(mu, ell, x[:, 0, lo:hi, lo:hi])
                k = mu.shape[0]
                # Chan's parallel update of (count, mean, M2): exact Welford when k == 1.
                bm = mu.mean(0) if k > 1 else mu[0]
                bm2 = (mu - bm).square_().sum(0) if k > 1 else None
                if mean is None:
                    mean, m2 = bm, bm2
                else:
                    delta = bm - mean
                    tot = n + k
                    mean = mean + delta * (k / tot)
                    inc = delta.square_().mul_(n * k / tot)
                    m2 = inc if m2 is None else m2 + inc
                    if bm2 is not None:
                        m2 = m2 + bm2
                if self.aleatoric:
                    e = torch.exp(ell).sum(0) if k > 1 else torch.exp(ell[0])
                    alea = e if alea is None else alea + e
                if n < self.keep_samples:
                    kept.append(mu[: self.keep_samples - n])
                n += k
        except MusplitError:
            raise
        except Exception as e:
            if _is_oom(e):
                raise MusplitError(
                    f"out of memory on {self.device} predicting {x.shape[0]} patches of "
                    f"{x.shape[-1]}x{x.shape[-1]}: use a smaller batch_size (e.g. "
                    f"{max(1, x.shape[0] // 2)}), a larger grid, or sample_batch=1"
                ) from None
            raise

        def hwc(v: torch.Tensor) -> np.ndarray:  # (B, C, g, g) -> (B, g, g, C) numpy
            return v.permute(0, 2, 3, 1).contiguous().cpu().numpy()

        std = None
        if self.samples > 1:
            std = torch.zeros_like(mean) if m2 is None else m2.div_(n).sqrt_()
        out = _TileBatch(hwc(mean), None if std is None else hwc(std),
                         None if alea is None else hwc(alea.div_(n).sqrt_()), None)
        if kept:
            ks = torch.cat(kept, 0)  # (k, B, C, g, g)
            if self.deterministic:  # one pass stands for every kept sample
                ks = ks.expand(self.keep_samples, *ks.shape[1:])
            ks = ks.permute(1, 3, 4, 0, 2).reshape(ks.shape[1], *ks.shape[-2:], -1)
            out.samples = ks.contiguous().cpu().numpy()
        if not self.normalized:  # back to intensity units, per batch: no full-size temporary
            st = self.stats
            out.mean = st.denormalize_target(out.mean, axis=-1)
            if out.std is not None:
                out.std = st.denormalize_std(out.std, axis=-1)
            if out.aleatoric is not None:
                out.aleatoric = st.denormalize_std(out.aleatoric, axis=-1)
            if out.samples is not None:
                s = out.samples.reshape(*out.samples.shape[:3], -1, c)
                out.samples = st.denormalize_target(s, axis=-1).reshape(out.samples.shape)
            if self.out_scale != 1:
                f = np.float32(self.out_scale)
                for name in ("mean", "std", "aleatoric", "samples"):
                    v = getattr(out, name)
                    if v is not None:
                        v *= f
        return out

    def run(self, stack: ContextStack, frame_idx: np.ndarray, corners: np.ndarray,
            sink: Callable[[np.ndarray, np.ndarray, _TileBatch], None], bar=None) -> None:
        """Predict the patches ``corners`` of ``frame_idx`` (stack coordinates), batch by
        batch; ``sink(frames, corners, tiles)`` places each batch before the next is built."""
        for a in range(0, len(corners), self.batch_size):
            f, c = frame_idx[a : a + self.batch_size], corners[a : a + self.batch_size]
            x = stack.crops(f, c)  # (B, S, P, P) in intensity units, padded as in training
            # Normalise after the padding, which happened in intensity units (docs/data.md,
            # "Input formation", "Padding modes").
            x -= self._in_mean
            x /= self._in_std
            sink(f, c, self.tiles(x))
            if bar is not None:
                bar.update(1)


# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Setting up a call
# ---------------------------------------------------------------------------------------------
def _probe(model: nn.Module, tiling: Tiling, scales: int, device: torch.device) -> None:
    """Outer padding runs the network at a size it was not trained at (docs/method.md,
    "LadderVAE"): check once, on one zero patch, that it can, and say so clearly if not."""
    x = torch.zeros(1, scales, tiling.patch, tiling.patch, device=device)
    try:
        p = _first(model(x))
    except (InputError, ValueError, RuntimeError) as e:
        if _is_oom(e):
            raise
        raise InputError(
            f"this model cannot take {tiling.patch}x{tiling.patch} patches (outer padding with "
            f"margin {tiling.margin}): {str(e).splitlines()[0]}; use padding='inner' or 'none'"
        ) from None
    if p.shape[-2:] != x.shape[-2:]:
        raise InputError(f"the model maps {tiling.patch}x{tiling.patch} patches to "
                         f"{tuple(p.shape[-2:])}; outer padding needs the same size back")


@contextlib.contextmanager
def _eval_mode(model: nn.Module, device: torch.device, seed: int):
    """Eval mode and inference mode for the call; the caller's training flag and global RNG
    state (seeded here for models that draw from it) are restored afterwards."""
    was_training = model.training
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(int(seed))
            model.eval()
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _memory_format(model: nn.Module, channels_last: bool):
    """Run the model in channels-last layout (about 1.7x faster convolutions on CPU here, and
    what cuDNN prefers), converting back afterwards if it was not channels-last before."""
    conv = next((p for p in model.parameters() if p.ndim == 4), None)
    if not channels_last or conv is None or \
            conv.is_contiguous(memory_format=torch.channels_last):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


