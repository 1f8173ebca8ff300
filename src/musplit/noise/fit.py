"""Fitting a noise model to (noisy observation, clean signal) pixel pairs (docs/noise_models.md,
"Fitting"), and the bootstrap signal estimate for data without a calibration series
(docs/noise_models.md, "Bootstrap signal estimate").

The defaults are sized for a CPU: a fit takes seconds on one thread (the reference procedure,
2000 Adam steps on minibatches of 250,000 pairs, is ``iterations=2000, batch_size=250_000``).
Three changes to the reference procedure make short fits land close and make them independent
of the intensity unit: the weights start from the data (:func:`initial_weights`), the mean
coefficients step at ``lr`` times the typical noise std, and the rate decays along a cosine.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from musplit.errors import InputError
from musplit.noise.checks import FitReport, check_finite
from musplit.noise.gmm import GaussianMixtureNoiseModel

__all__ = [
    "BOOTSTRAP_METHODS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_ITERATIONS",
    "DEFAULT_MAX_PAIRS",
    "bootstrap_signal",
    "fit_noise_model",
    "fit_noise_model_bootstrap",
    "initial_weights",
    "sample_pairs",
]

log = logging.getLogger(__name__)

#: Adam steps of a fit (the reference: 2000).
DEFAULT_ITERATIONS = 400
#: Pixel pairs per step (the reference: 250,000).
DEFAULT_BATCH_SIZE = 20_000
#: At most this many pixel pairs are drawn from the calibration data (at random, once).
DEFAULT_MAX_PAIRS = 1_000_000
#: How :func:`bootstrap_signal` estimates the clean signal.
BOOTSTRAP_METHODS = ("gaussian", "mean")
#: Pairs on which the final NLL of :class:`FitReport` is computed.
_NLL_PAIRS = 200_000


def _frames(a, what: str) -> np.ndarray:
    """``(N, P)`` view of a stack of frames; a 2-D array is one frame."""
    a = check_finite(a, what)
    if a.ndim < 2:
        raise InputError(f"{what} must be a frame (H, W) or a stack of frames (N, ...), got "
                         f"shape {a.shape}")
    return a.reshape(1, -1) if a.ndim == 2 else a.reshape(a.shape[0], -1)


def sample_pairs(noisy, clean, max_pairs: int | None = DEFAULT_MAX_PAIRS,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Pixel pairs (observation, signal) of a calibration set.

    ``noisy`` holds N_noisy frames and ``clean`` N_clean frames of the same shape, N_noisy a
    multiple of N_clean: noisy frame ``i`` pairs with clean frame ``i // (N_noisy / N_clean)``
    (one clean average of a static series: N_clean = 1). When there are more than
    ``max_pairs`` pairs, about ``max_pairs`` of them are drawn at random.

    Returns
    -------
    observation, signal : ndarray, float32, 1-D
    n_pairs : int
        How many pairs the data hold in all.
    """
    noisy_shape = np.shape(noisy)
    clean_shape = np.shape(clean)
    obs = _frames(noisy, "the noisy data")
    sig = _frames(clean, "the clean signal")
    if obs.shape[1] != sig.shape[1]:
        raise InputError(f"the noisy frames {noisy_shape} and the clean frames {clean_shape} "
                         "differ in frame shape")
    n_obs, n_sig = obs.shape[0], sig.shape[0]
    if n_obs % n_sig:
        raise InputError(f"{n_obs} noisy frames cannot pair with {n_sig} clean frames: the "
                         "noisy count must be a multiple of the clean count")
    rep, n_pix = n_obs // n_sig, obs.shape[1]
    n_pairs = n_obs * n_pix
    if max_pairs is None or n_pairs <= max_pairs:
        o = obs.reshape(-1)
        s = np.repeat(sig, rep, axis=0).reshape(-1) if rep > 1 else sig.reshape(-1)
    else:
        rng = np.random.default_rng(seed)
        idx = np.unique(rng.integers(0, n_pairs, size=int(max_pairs)))  # sorted: cheap reads
        frame, pix = np.divmod(idx, n_pix)
        o, s = obs[frame, pix], sig[frame // rep, pix]
    return (np.asarray(o, dtype=np.float32), np.asarray(s, dtype=np.float32), n_pairs)


def initial_weights(obs: np.ndarray, sig: np.ndarray, n_gaussian: int, n_coeff: int,
                    s_min: float, s_max: float, floor: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Starting weights from the data (docs/noise_models.md, "Fitting"): every component's
    variance on the straight line through the mean squared residual ``(x - s)²`` of the
    lowest and of the highest tenth of the signals, jittered; mean offsets of a quarter of the
    typical noise std; equal weights. In the data's units, so a fit starts equally close on
    raw and on normalised intensities."""
    k, d = n_gaussian, n_coeff
    sn = (sig.astype(np.float64) - s_min) / (s_max - s_min)
    r2 = (obs.astype(np.float64) - sig) ** 2
    v_mean = max(float(r2.mean()), floor, 1e-30)
    order = np.argsort(sn, kind="stable")
    tenth = max(1, sn.size // 10)
    lo, hi = order[:tenth], order[-tenth:]
    x_lo, x_hi = float(sn[lo].mean()), float(sn[hi].mean())
    v_lo, v_hi = float(r2[lo].mean()), float(r2[hi].mean())
    tiny = 1e-3 * v_mean
    slope = max((v_hi - v_lo) / (x_hi - x_lo), tiny) if x_hi > x_lo else tiny
    intercept = max(v_lo - slope * x_lo, tiny)
    w = torch.zeros(3 * k, d, dtype=torch.float32)
    w[:k, 0] = 0.25 * math.sqrt(v_mean) * torch.randn(k, generator=generator)
    log_var = torch.full((d,), math.log(tiny))
    log_var[0] = math.log(intercept)
    if d >= 2:
        log_var[1] = math.log(slope)
    else:
        log_var[0] = math.log(max(float(r2.mean()), tiny))
    w[k:2 * k] = log_var + 0.1 * torch.randn(k, d, generator=generator)
    w[2 * k:, 0] = 0.1 * torch.randn(k, generator=generator)
    return w


class _Adam:
    """Adam (Kingma & Ba) over a few tensors, each with its own learning rate; written out
    because ``torch.optim`` loads the compiler stack (seconds) on first use."""

    def __init__(self, params, lrs, betas=(0.9, 0.999), eps=1e-8) -> None:
        self.params, self.lrs, self.betas, self.eps, self.t = params, lrs, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        """One update from the parameters' gradients, which it then clears."""
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v, lr in zip(self.params, self.m, self.v, self.lrs, strict=True):
            g = p.grad
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.sub_(lr * lr_scale * (m / c1) / ((v / c2).sqrt() + self.eps))
            p.grad = None


def _diverged(it: int, what: str) -> InputError:
    return InputError(f"noise-model fit diverged at iteration {it}: the {what} became NaN or Inf "
                      "(try a larger min_variance, a smaller learning rate, or check the data)")


def fit_noise_model(noisy, clean, *, n_gaussian: int = 3, n_coeff: int = 2,
                    min_variance: float | None = None, lower_clip: float = 0.0,
                    upper_clip: float = 100.0, iterations: int = DEFAULT_ITERATIONS,
                    batch_size: int = DEFAULT_BATCH_SIZE,
                    max_pairs: int | None = DEFAULT_MAX_PAIRS, lr: float = 0.1, seed: int = 0,
                    n_bins: int = 32, channel_name: str | None = None,
                    progress: bool = False, threads: int | None = 1
                    ) -> GaussianMixtureNoiseModel:
    """Fit p(x | s) by minimising the mean negative log-likelihood of pixel pairs with Adam.

    Parameters
    ----------
    noisy, clean : array-like
        Raw noisy frames and a clean estimate, paired as in :func:`sample_pairs` (one channel;
        same units, no normalisation).
    n_gaussian, n_coeff : int
        K components; D polynomial coefficients (2: linear in the signal).
    min_variance : float, optional
        Floor of the component variances, in squared intensity units. Default:
        ``(0.001 * (s_max - s_min))**2``, a standard deviation of 0.1 % of the signal range.
    lower_clip, upper_clip : float
        Percentiles of the signal: pairs whose signal lies outside ``[P_lo, P_hi]`` are left
        out (inclusive bounds).
    iterations, batch_size, lr : int, int, float
        Adam steps, pairs per step (reshuffled after each pass), learning rate.
    max_pairs : int, optional
        Draw at most about this many pairs from the data (None: all).
    seed : int
        Seeds the pair sampling, the initial weights and the shuffles.
    n_bins : int
        Equal-width signal bins whose emptiness the report counts.
    channel_name : str, optional
        Recorded in the model (and its file).
    progress : bool
        Show a progress bar (tqdm).
    threads : int, optional
        torch intra-op threads during the fit, restored afterwards (None: leave as set).
        Minibatches of this size gain little from more threads and lose much when the cores
        are shared: on a busy two-core machine two threads made a fit ten times slower.

    Returns
    -------
    GaussianMixtureNoiseModel
        Frozen; ``model.fit_report`` is the :class:`FitReport`.
    """
    if not 0 <= lower_clip < upper_clip <= 100:
        raise InputError(f"percentile clip must satisfy 0 <= lower < upper <= 100, got "
                         f"{lower_clip}, {upper_clip}")
    if iterations < 1 or batch_size < 1 or not lr > 0:
        raise InputError("iterations and batch_size must be >= 1 and lr > 0")
    if n_gaussian < 1 or n_coeff < 1:
        raise InputError(f"n_gaussian and n_coeff must be >= 1, got {n_gaussian}, {n_coeff}")
    obs, sig, n_pairs = sample_pairs(noisy, clean, max_pairs, seed)
    lo, hi = np.percentile(sig, [lower_clip, upper_clip])
    keep = (sig >= lo) & (sig <= hi)
    obs, sig = obs[keep], sig[keep]
    n_clipped = int(keep.size - keep.sum())
    if obs.size < 2:
        raise InputError(f"only {obs.size} pixel pair(s) left after the percentile clip "
                         f"[{lower_clip}, {upper_clip}]")
    s_min, s_max = float(sig.min()), float(sig.max())
    if not s_max > s_min:
        raise InputError(f"the clean signal is constant ({s_min:.6g}): a noise model needs "
                         "signals over a range of intensities")
    floor = (1e-3 * (s_max - s_min)) ** 2 if min_variance is None else float(min_variance)
    counts, _ = np.histogram(sig, bins=n_bins, range=(s_min, s_max))
    empty = tuple(int(i) for i in np.flatnonzero(counts == 0))
    if empty:
        log.warning("noise-model fit: %d of %d signal bins over [%.6g, %.6g] hold no pixel; the "
                    "model interpolates there", len(empty), n_bins, s_min, s_max)

    gen = torch.Generator().manual_seed(seed)
    w0 = initial_weights(obs, sig, n_gaussian, n_coeff, s_min, s_max, floor, gen)
    model = GaussianMixtureNoiseModel(w0, s_min, s_max, floor, channel_name=channel_name,
                                      observation_range=(float(obs.min()), float(obs.max())))
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    try:
        _optimise(model, w0, obs, sig, floor, iterations, batch_size, lr, gen, progress)
    finally:
        torch.set_num_threads(before)
    x_all, s_all = torch.from_numpy(obs), torch.from_numpy(sig)
    n = x_all.numel()
    model.freeze()
    with torch.no_grad():
        idx = torch.randperm(n, generator=gen)[:_NLL_PAIRS]
        nll = float(-model.log_likelihood(x_all[idx], s_all[idx]).mean())
    model.reset_clamp_counts()  # the report's evaluation is not the user's
    model.fit_report = FitReport(n_pairs=n_pairs, n_used=n, n_clipped=n_clipped, n_bins=n_bins,
                                 empty_bins=empty, signal_range=(s_min, s_max),
                                 observation_range=model.observation_range,
                                 iterations=iterations, nll=nll)
    return model


def _optimise(model, w0, obs, sig, floor, iterations, batch_size, lr, gen, progress) -> None:
    """Adam on the mean NLL of minibatches; the result goes into ``model.weight``."""
    n_gaussian = model.n_gaussian
    x_all, s_all = torch.from_numpy(obs), torch.from_numpy(sig)
    n = x_all.numel()
    batch = min(batch_size, n)
    # The mean rows are intensities: they step in units of the typical noise std, the log-
    # variance and logit rows in their own (unitless) scale, so one lr suits any intensity unit.
    noise_std = math.sqrt(max(float(np.mean((obs.astype(np.float64) - sig) ** 2)), floor, 1e-30))
    means = w0[:n_gaussian].clone().requires_grad_(True)
    rest = w0[n_gaussian:].clone().requires_grad_(True)
    adam = _Adam([means, rest], [lr * noise_std, lr])
    model.count_clamped = False
    from tqdm.auto import tqdm

    bar = tqdm(range(iterations), desc="noise model", unit="it", disable=not progress,
               leave=False)
    pos, order = n, None
    for it in bar:
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        b = order[pos:pos + batch]
        pos += batch
        weight = torch.cat([means, rest])
        loss = -model.log_likelihood(x_all[b], s_all[b], weight=weight).mean()
        if not torch.isfinite(loss):
            raise _diverged(it, "loss")
        loss.backward()
        # Cosine decay to zero: Adam at a constant lr of 0.1 leaves the log-variance
        # jittering by several percent at the end of a short fit.
        adam.step(0.5 * (1.0 + math.cos(math.pi * it / iterations)))
        if not (bool(torch.isfinite(means).all()) and bool(torch.isfinite(rest).all())):
            raise _diverged(it, "weights")
        if progress and it % 20 == 0:
            bar.set_postfix(nll=f"{loss.item():.4f}")
    bar.close()
    with torch.no_grad():
        model.weight.copy_(torch.cat([means, rest]))
    model.count_clamped = True


def bootstrap_signal(noisy, method: str = "gaussian", sigma: float = 2.0) -> np.ndarray:
    """A clean-signal estimate made from the noisy data alone (docs/noise_models.md,
    "Bootstrap signal estimate").

    ``"gaussian"``: each frame smoothed by a Gaussian of standard deviation ``sigma`` pixels
    (same shape as ``noisy``). ``"mean"``: the average of a static series, one frame
    (``noisy`` must be several frames of the same unchanging field of view).
    ``noisy`` is ``(H, W)``, ``(N, H, W)`` or ``(N, H, W, 1)``.
    """
    if method not in BOOTSTRAP_METHODS:
        raise InputError(f"bootstrap method must be one of {', '.join(BOOTSTRAP_METHODS)}, got "
                         f"{method!r}")
    a = check_finite(noisy, "the noisy data").astype(np.float32, copy=False)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"bootstrap needs one channel of frames (N, H, W), got shape {a.shape}")
    if method == "mean":
        if a.shape[0] < 2:
            raise InputError("bootstrap 'mean' averages a static series: it needs at least 2 "
                             f"frames, got {a.shape[0]}")
        return a.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    if not sigma > 0:
        raise InputError(f"bootstrap sigma must be > 0 pixels, got {sigma}")
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(a, sigma=(0.0, sigma, sigma), mode="reflect")


def fit_noise_model_bootstrap(noisy, *, method: str = "gaussian", sigma: float = 2.0,
                              **kw) -> GaussianMixtureNoiseModel:
    """:func:`fit_noise_model` with the signal from :func:`bootstrap_signal` of ``noisy``."""
    return fit_noise_model(noisy, bootstrap_signal(noisy, method, sigma), **kw)
