"""Double-DIP (Gandelsman, Shocher and Irani, CVPR 2019): the unsupervised baseline.

The recipe and its evaluation are in docs/evaluation.md ("Double-DIP").

Double-DIP has no training data. For each image crop it fits two deep-image-prior generators
``G1``, ``G2`` (each a small "skip" encoder-decoder fed its own fixed noise) so that their
mixture reproduces the crop, while an exclusion loss keeps their gradients apart:

    loss = L1(2 (α G1 + (1 - α) G2), x) + 0.01 · L_excl(G1, G2)

with ``x`` the crop min-max scaled to [0, 1]. ``α`` is Double-DIP's mixing mask ``m``. Layers
that add up, as superimposed fluorescence channels do, call for a uniform mask, as in
Double-DIP's transparency separation: ``α = 1/2`` fixed (``mix="fixed"``, the recipe of
docs/evaluation.md, where the reconstruction is ``G1 + G2``), or one value fitted per crop
together with the generators (``mix="learned"``). The recipe follows the Double-DIP authors'
public separation code (the paper does not state its settings): Adam at 5e-4 for 8000
iterations, the 8 dihedral transforms of crop and noise in turn on every second iteration, a
perturbation of the noise inputs growing to std 0.001 over the first 1000 iterations (none at
the last), and the iterate with the best reconstruction PSNR kept (among the iterations that
saw the crop untransformed).

The paper ran it on random crops of the test images (the crop size was lost; 256 by default).
Its outputs have no channel identity, so evaluation picks, per crop, the order of the two layers
that maximises the summed range-invariant PSNR (docs/evaluation.md, "Double-DIP",
:func:`match_layers`). It shows what supervision buys: in the paper's Table 1 it is 4-9 dB
below every supervised method.

Entry points: :func:`separate` (one crop), :func:`separate_crops` (random crops of a stack),
:func:`split_crops` (those crops, their layers put in the order of the ground truth when there
is one: the pipeline of ``musplit double-dip INPUT --out OUT`` and of bench/compare_methods.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import permutations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from musplit.errors import InputError
from musplit.metrics import range_invariant_psnr

log = logging.getLogger(__name__)

__all__ = [
    "CropSplit",
    "DoubleDipResult",
    "SkipGenerator",
    "exclusion_loss",
    "match_layers",
    "random_crops",
    "separate",
    "separate_crops",
    "split_crops",
]

#: Spatial halvings of the generators: crop sides must be multiples of 2^5 = 32, and at least
#: 96 so that the 5x5 reflection padding fits the deepest (side / 32) feature maps.
LEVELS = 5
MULTIPLE = 2**LEVELS
MIN_CROP = 3 * MULTIPLE


# -- the generator -------------------------------------------------------------------------
def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    """Conv with bias and reflection padding ("same" size at stride 1, halving at stride 2)."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, padding_mode="reflect")


def _unit(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, k, stride), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2, inplace=True))


class _Level(nn.Module):
    """One level of the skip generator: down, the deeper levels, bilinear up, optional skip,
    concatenation ``[skip, deeper]``, BN, then ``k x k`` and 1x1 conv units."""

    def __init__(self, cin: int, down: int, up: int, skip: int, inner: _Level | None, k: int):
        super().__init__()
        self.skip = _unit(cin, skip, 1) if skip else None
        self.down = nn.Sequential(_unit(cin, down, k, 2), _unit(down, down, k))
        self.inner = inner
        deeper = inner.out_channels if inner is not None else down
        self.bn = nn.BatchNorm2d(skip + deeper)
        self.up = nn.Sequential(_unit(skip + deeper, up, k), _unit(up, up, 1))
        self.out_channels = up

    def forward(self, x: Tensor) -> Tensor:
        d = self.down(x)
        if self.inner is not None:
            d = self.inner(d)
        d = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
        if self.skip is not None:
            d = torch.cat([self.skip(x), d], dim=1)
        return self.up(self.bn(d))


class SkipGenerator(nn.Module):
    """The deep-image-prior "skip" network of Double-DIP (docs/evaluation.md, "Double-DIP").

    Parameters
    ----------
    in_channels : int
        Channels of the noise input (3).
    down, up, skip : sequence of int
        Widths per level, outermost first: (8, 16, 32, 64, 128) down and up, skip widths
        (0, 0, 0, 4, 4).
    kernel : int
        Filter size (5).

    Notes
    -----
    ``(B, in, H, W) -> (B, 1, H, W)`` in (0, 1) (sigmoid); H and W multiples of
    ``2^len(down)``. LeakyReLU(0.2), BatchNorm, reflection padding, bilinear upsampling.
    """

    def __init__(self, in_channels: int = 3, down: Sequence[int] = (8, 16, 32, 64, 128),
                 up: Sequence[int] = (8, 16, 32, 64, 128), skip: Sequence[int] = (0, 0, 0, 4, 4),
                 kernel: int = 5):
        super().__init__()
        if not len(down) == len(up) == len(skip):
            raise ValueError("down, up and skip need one width per level")
        inner = None
        ins = [in_channels, *down[:-1]]
        for i in reversed(range(len(down))):
            inner = _Level(ins[i], down[i], up[i], skip[i], inner, kernel)
        self.body = inner
        self.out = nn.Conv2d(up[0], 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.out(self.body(z)))


# -- the loss ------------------------------------------------------------------------------
def exclusion_loss(g1: Tensor, g2: Tensor, levels: int = 3) -> Tensor:
    """Exclusion loss of Double-DIP (docs/evaluation.md, "Double-DIP"): the two layers'
    gradients apart.

    For each of ``levels`` scales (2x2 average pooling between them) and each direction,
    forward differences ``d1``, ``d2`` are squashed by ``s(d) = 2 sigmoid(d) - 1`` and the term
    is ``mean(s(d1)^2 s(d2)^2)^(1/4)``; the result is the mean over scales, averaged over the
    two directions.

    Parameters
    ----------
    g1, g2 : Tensor, shape (B, 1, H, W)

    Returns
    -------
    Tensor, scalar
    """
    terms = {"x": [], "y": []}
    for level in range(levels):
        if level:
            g1, g2 = F.avg_pool2d(g1, 2), F.avg_pool2d(g2, 2)
        for axis, dim in (("x", -2), ("y", -1)):
            s1 = 2 * torch.sigmoid(torch.diff(g1, dim=dim)) - 1
            s2 = 2 * torch.sigmoid(torch.diff(g2, dim=dim)) - 1
            terms[axis].append((s1.square() * s2.square()).mean().pow(0.25))
    return (torch.stack(terms["x"]).mean() + torch.stack(terms["y"]).mean()) / 2


# -- helpers -------------------------------------------------------------------------------
def _dihedral(x: Tensor, k: int) -> Tensor:
    """The ``k``-th of the 8 dihedral transforms of the last two axes (0 = identity)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def _noise_std(step: int, iterations: int) -> float:
    """Input-noise perturbation of the recipe (docs/evaluation.md, "Double-DIP")."""
    if step == iterations - 1:
        return 0.0
    if step < 1000:
        return 0.001 * (step // 100)
    return 0.001


def _transform(step: int, iterations: int) -> int:
    """Identity on odd steps and the last; otherwise transforms 0..7 in turn."""
    if step % 2 == 1 or step == iterations - 1:
        return 0
    return (step // 2) % 8


def _psnr01(a: Tensor, b: Tensor) -> float:
    mse = float(torch.mean((a - b) ** 2))
    return math.inf if mse == 0 else -10 * math.log10(mse)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- fitting -------------------------------------------------------------------------------
@dataclass
class DoubleDipResult:
    """The two layers Double-DIP found in one crop.

    Attributes
    ----------
    layers : ndarray, float32, shape (H, W, 2)
        ``c_k = lo + 2 (hi - lo) G_k`` in the crop's intensity units (``lo``, ``hi`` its min
        and max), so that ``α c_1 + (1 - α) c_2`` reproduces the crop where the fit does.
        The order of the layers is arbitrary (see :func:`match_layers`).
    alpha : float
        The mixing weight (the uniform mask): 1/2, or the fitted value.
    psnr : float
        PSNR (dB, range 1) of the kept reconstruction against the scaled crop.
    step : int
        The iteration the kept layers come from.
    history : list of float
        Reconstruction PSNR at the evaluated iterations.
    """

    layers: np.ndarray
    alpha: float
    psnr: float
    step: int
    history: list[float] = field(default_factory=list)


def separate(crop, *, iterations: int = 8000, lr: float = 5e-4, mix: str = "fixed",
             alpha: float = 0.5, exclusion_weight: float = 0.01, seed: int = 0,
             device: str | torch.device | None = None,
             callback: Callable[[int], None] | None = None) -> DoubleDipResult:
    """Fit Double-DIP to one crop of a superimposed image.

    Parameters
    ----------
    crop : array_like, shape (H, W)
        The superimposed crop, intensity units; sides multiples of 32, at least 96; not constant.
    iterations : int
        Adam steps (8000 in the recipe).
    lr : float
        Adam learning rate.
    mix : {"fixed", "learned"}
        The uniform mixing mask: ``alpha`` throughout, or fitted per crop starting from it.
    alpha : float
        Mixing weight of the first layer, in (0, 1); 1/2 for the channel average.
    exclusion_weight : float
        Weight of :func:`exclusion_loss`.
    seed : int
        Seeds the generators' weights, their noise inputs and the perturbations; the global
        RNG state is left as it was.
    device : str or torch.device, optional
        Default: a CUDA device when there is one, else the CPU.
    callback : callable, optional
        Called with the iteration index after every iteration (progress bars).

    Returns
    -------
    DoubleDipResult
    """
    x = np.asarray(crop, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"Double-DIP takes one 2-D crop, got shape {x.shape}")
    if x.shape[0] % MULTIPLE or x.shape[1] % MULTIPLE or min(x.shape) < MIN_CROP:
        raise InputError(f"crop sides must be multiples of {MULTIPLE} and at least {MIN_CROP} "
                         f"(the generators halve them {LEVELS} times), got "
                         f"{x.shape[0]}x{x.shape[1]}")
    if not np.isfinite(x).all():
        raise InputError("the crop contains NaN or Inf")
    if mix not in ("fixed", "learned"):
        raise InputError(f"mix must be 'fixed' or 'learned', got {mix!r}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    if iterations < 1:
        raise InputError(f"iterations must be >= 1, got {iterations}")
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        raise InputError("the crop is constant: there is nothing to separate")
    dev = torch.device(device) if device is not None else _default_device()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        gen = torch.Generator(device=dev).manual_seed(seed)
        return _fit(torch.from_numpy((x - lo) / (hi - lo)).float().to(dev), lo, hi,
                    iterations=iterations, lr=lr, mix=mix, alpha=alpha,
                    exclusion_weight=exclusion_weight, gen=gen, callback=callback)


def _fit(target: Tensor, lo: float, hi: float, *, iterations: int, lr: float, mix: str,
         alpha: float, exclusion_weight: float, gen: torch.Generator,
         callback: Callable[[int], None] | None) -> DoubleDipResult:
    dev = target.device
    h, w = target.shape
    nets = [SkipGenerator().to(dev) for _ in range(2)]
    noise = [torch.rand(1, 3, h, w, generator=gen, device=dev).mul_(0.1) for _ in range(2)]
    logit = torch.tensor(math.log(alpha / (1 - alpha)), device=dev,
                         requires_grad=mix == "learned")
    params = [p for net in nets for p in net.parameters()]
    if mix == "learned":
        params.append(logit)
    opt = torch.optim.Adam(params, lr=lr)
    x = target[None, None]
    best = None
    history = []
    for step in range(iterations):
        k = _transform(step, iterations)
        std = _noise_std(step, iterations)
        outs = []
        for net, z in zip(nets, noise, strict=True):
            z = _dihedral(z, k) if k else z
            if std:
                z = z + torch.randn(z.shape, generator=gen, device=dev) * std
            outs.append(net(z))
        a = torch.sigmoid(logit)
        recon = 2 * (a * outs[0] + (1 - a) * outs[1])
        xt = _dihedral(x, k) if k else x
        loss = F.l1_loss(recon, xt) + exclusion_weight * exclusion_loss(outs[0], outs[1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k == 0:  # the outputs are in the crop's orientation: a candidate to keep
            q = _psnr01(recon.detach(), x)
            history.append(q)
            if best is None or q > best[0]:
                best = (q, step, outs[0].detach().clone(), outs[1].detach().clone(),
                        float(a.detach()))
        if callback is not None:
            callback(step)
    q, step, g1, g2, a = best
    layers = torch.stack([g1[0, 0], g2[0, 0]], dim=-1).double().cpu().numpy()
    layers = (lo + 2 * (hi - lo) * layers).astype(np.float32)
    return DoubleDipResult(layers, a, q, step, history)


# -- crops and evaluation ------------------------------------------------------------------
def random_crops(n_frames: int, height: int, width: int, crop: int, per_frame: int = 1,
                 seed: int = 0) -> np.ndarray:
    """Random crop positions, ``per_frame`` in every frame (docs/evaluation.md, "Double-DIP").

    Returns
    -------
    ndarray, int64, shape (n_frames * per_frame, 3)
        ``(frame, top, left)``, frame-major; corners uniform in ``[0, H - crop]``,
        ``[0, W - crop]``.
    """
    if crop > height or crop > width:
        fit = min(height, width) // MULTIPLE * MULTIPLE
        hint = f"use --crop {fit} or smaller" if fit else "the frames are too small"
        raise InputError(f"crop {crop} does not fit {height}x{width} frames ({hint})")
    rng = np.random.default_rng(seed)
    frames = np.repeat(np.arange(n_frames), per_frame)
    tops = rng.integers(0, height - crop + 1, size=frames.size)
    lefts = rng.integers(0, width - crop + 1, size=frames.size)
    return np.stack([frames, tops, lefts], axis=1).astype(np.int64)


def separate_crops(frames, corners: np.ndarray, crop: int, *, seed: int = 0,
                   progress: bool = False, **kwargs) -> list[DoubleDipResult]:
    """Run :func:`separate` on each crop ``(frame, top, left)`` of ``frames (N, H, W)``.

    Crop ``i`` is fitted with seed ``seed + i``. ``kwargs`` go to :func:`separate`; with
    ``progress`` a bar counts iterations over all crops.
    """
    iterations = int(kwargs.get("iterations", 8000))
    bar = None
    if progress:
        bar = tqdm(total=iterations * len(corners), unit="it", desc="double-dip")
    results = []
    try:
        for i, (f, top, left) in enumerate(np.asarray(corners)):
            x = np.asarray(frames[int(f)], dtype=np.float32)[top : top + crop, left : left + crop]

            def tick(step: int, _bar=bar) -> None:
                if _bar is not None and (step % 10 == 9 or step == iterations - 1):
                    _bar.update(step % 10 + 1)

            results.append(separate(x, seed=seed + i, callback=tick if bar else None,
                                    **kwargs))
            log.info("crop %d (frame %d, %d, %d): reconstruction PSNR %.2f dB at step %d",
                     i, f, top, left, results[-1].psnr, results[-1].step)
    finally:
        if bar is not None:
            bar.close()
    return results


def match_layers(target: np.ndarray, layers: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Order Double-DIP's layers like the target channels (docs/evaluation.md, "Double-DIP").

    Parameters
    ----------
    target : ndarray, shape (H, W, C)
    layers : ndarray, shape (H, W, C)

    Returns
    -------
    ordered : ndarray, shape (H, W, C)
        ``layers[..., perm]``, the permutation maximising the summed range-invariant PSNR.
    perm : list of int
    """
    c = target.shape[-1]
    if layers.shape != target.shape:
        raise InputError(f"layers {layers.shape} and target {target.shape} differ in shape")
    score = {}
    best, best_perm = -math.inf, list(range(c))
    for perm in permutations(range(c)):
        total = 0.0
        for k, j in enumerate(perm):
            if (k, j) not in score:
                score[k, j] = range_invariant_psnr(target[..., k], layers[..., j])
            total += score[k, j]
        if total > best:
            best, best_perm = total, list(perm)
    return layers[..., best_perm], best_perm


@dataclass
class CropSplit:
    """What :func:`split_crops` found.

    Attributes
    ----------
    layers : ndarray, float32, shape (n_crops, crop, crop, 2)
        The two layers of every crop; in the order of the target channels when targets were
        given (:func:`match_layers`), else in Double-DIP's arbitrary order.
    results : list of DoubleDipResult
        One per crop, as :func:`separate` returned it (layers in Double-DIP's order).
    targets : ndarray, shape (n_crops, crop, crop, C), optional
        The ground-truth crops, when targets were given.
    perms : list of list of int, optional
        Per crop, the permutation that ordered its layers, when targets were given.
    """

    layers: np.ndarray
    results: list[DoubleDipResult]
    targets: np.ndarray | None = None
    perms: list[list[int]] | None = None


def split_crops(frames, corners: np.ndarray, crop: int, *, targets=None, seed: int = 0,
                progress: bool = False, **kwargs) -> CropSplit:
    """Double-DIP on each crop ``(frame, top, left)`` of ``frames (N, H, W)``, the layers put
    in the order of ``targets`` when given.

    Parameters
    ----------
    frames : array_like, shape (N, H, W)
        The superimposed frames.
    corners : ndarray, int, shape (K, 3)
        Crop positions ``(frame, top, left)`` (:func:`random_crops`).
    crop : int
        Crop side.
    targets : array_like, shape (N, H, W, C), optional
        The separate channels (ground truth) of ``frames``: each crop's layers are ordered
        like them (:func:`match_layers`, docs/evaluation.md, "Double-DIP").
    seed, progress, kwargs
        As :func:`separate_crops` (crop ``i`` is fitted with seed ``seed + i``).

    Returns
    -------
    CropSplit
    """
    results = separate_crops(frames, corners, crop, seed=seed, progress=progress, **kwargs)
    layers = np.stack([r.layers for r in results])
    if targets is None:
        return CropSplit(layers, results)
    gt = np.stack([targets[f, t : t + crop, lf : lf + crop] for f, t, lf in corners])
    ordered = [match_layers(gt[i], layers[i]) for i in range(len(layers))]
    return CropSplit(np.stack([o[0] for o in ordered]), results, gt, [o[1] for o in ordered])
