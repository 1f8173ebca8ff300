"""The pretext objectives, one registry for detection and decomposition pre-training
(docs/pretraining.md, "Pretext models"; docs/pretraining.md, "Objectives"; docs/pretraining.md,
"µSplit pre-training").

=============  =========================  ==================================  ================
objective      target                     loss                                default region
=============  =========================  ==================================  ================
pcolor         cmap(u), 3 channels        MSE                                 all (CNN, µSplit),
                                                                              masked (ViT)
masked_gray    (u, u, u), PCMC's masks    MSE                                 as pcolor
mae            (u, u, u), MAE masks       MSE                                 masked
edge           binary Canny map, 1 ch.    BCE with logits, per-sample         all
                                          pos_weight = #0 / #1
simclr         --                         NT-Xent, tau = 0.1                  --
random         no pre-training            --                                  --
=============  =========================  ==================================  ================

Targets are computed from the *unmasked* normalised image ``u`` (after augmentation in clean
mode). Everything here is a plain function of tensors; the training loop
(:mod:`musplit.pretrain.train`) and the µSplit harness (:mod:`musplit.pretrain.usplit`) pick the
pieces by objective name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musplit.errors import InputError
from musplit.pretrain.colormap import pcolor

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ProjectionHead",
    "default_mask",
    "edge_loss",
    "edge_pos_weight",
    "edge_target",
    "get_objective",
    "make_target",
    "nt_xent",
    "reconstruction_loss",
]


@dataclass(frozen=True)
class Objective:
    """What one pretext objective regresses and how.

    Attributes
    ----------
    name : str
    target : {"pcolor", "gray", "edge"} or None
        The dense target (None for SimCLR and random init).
    loss : {"mse", "bce", "ntxent"} or None
    channels : int
        Channels of the dense target (3 for colour and gray, 1 for edges, 0 otherwise).
    masked : bool
        Whether the objective masks its input by default.
    region : {"all", "masked"}
        Default loss region for pixel-space masks (the ViT always scores masked tokens).
    """

    name: str
    target: str | None
    loss: str | None
    channels: int
    masked: bool
    region: str


OBJECTIVES: dict[str, Objective] = {
    "pcolor": Objective("pcolor", "pcolor", "mse", 3, True, "all"),
    "masked_gray": Objective("masked_gray", "gray", "mse", 3, True, "all"),
    "mae": Objective("mae", "gray", "mse", 3, True, "masked"),
    "edge": Objective("edge", "edge", "bce", 1, False, "all"),
    "simclr": Objective("simclr", None, "ntxent", 0, False, "all"),
    "random": Objective("random", None, None, 0, False, "all"),
}


def get_objective(name: str) -> Objective:
    """The registry entry of ``name``; :class:`InputError` for an unknown name."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise InputError(f"unknown objective {name!r}; choose one of: "
                         f"{', '.join(OBJECTIVES)}") from None


def default_mask(objective: str, model: str) -> dict:
    """The default :class:`MaskConfig` data of an objective on a model (docs/pretraining.md,
    "Masks").

    ``model`` is ``ccf_vit`` (token masks), ``ccf_cnn`` (pixel masks at 384 px) or
    ``usplit_encoder`` (pixel masks on 64-px patches).
    """
    obj = get_objective(objective)
    if not obj.masked:
        return {"kind": "none"}
    if model == "ccf_vit":
        return {"kind": "tokens", "ratio": 0.75 if objective == "mae" else 0.33}
    if model == "ccf_cnn":
        if objective == "mae":
            return {"kind": "blocks", "block": 24, "ratio": 0.75}
        return {"kind": "padded", "patch": 12, "p": 0.5}
    if model == "usplit_encoder":
        if objective == "mae":
            return {"kind": "blocks", "block": 8, "ratio": 0.75}
        return {"kind": "padded", "patch": 6, "p": 0.5}
    raise InputError(f"unknown model {model!r}")


# -- dense targets -------------------------------------------------------------------------
def make_target(objective: str, u: Tensor, colormap: str = "nipy_spectral",
                quantize: bool = True) -> Tensor:
    """The dense target of ``objective`` for normalised images ``u (B, H, W)`` in [0, 1].

    Returns ``(B, 3, H, W)`` (pcolor: ``cmap(u)``; masked_gray and mae: ``(u, u, u)``) or
    ``(B, 1, H, W)`` (edge), float32, on ``u``'s device.
    """
    obj = get_objective(objective)
    if obj.target == "pcolor":
        return pcolor(u, colormap, quantize=quantize)
    if obj.target == "gray":
        return pcolor(u, "gray")
    if obj.target == "edge":
        return edge_target(u)
    raise InputError(f"objective {objective!r} has no dense target")


def edge_target(u, *, low: float = 30.0, high: float = 100.0):
    """Binary edge maps of normalised images, with scikit-image.

    Per image: ``u8 = round(255 u)``, bilateral filter (7 x 7 window, sigma_colour 50 and
    sigma_space 50 in 8-bit units), Canny with hysteresis thresholds ``low``/``high`` on the
    8-bit gradient magnitude (Sobel, no extra smoothing), binarised.

    Notes
    -----
    The reference uses OpenCV, which is not a musplit dependency. scikit-image's bilateral
    filter, and its Canny (L2 gradient magnitude where OpenCV's default is L1), give similar but
    not identical edges; results record the backend as ``skimage``.

    Parameters
    ----------
    u : numpy.ndarray or torch.Tensor, float, shape (B, H, W) or (H, W)

    Returns
    -------
    Same type as ``u``, float32 in {0, 1}, shape (B, 1, H, W) (or (1, H, W) for one image).
    """
    from skimage.feature import canny
    from skimage.restoration import denoise_bilateral

    is_torch = isinstance(u, torch.Tensor)
    arr = u.detach().cpu().numpy() if is_torch else np.asarray(u)
    if arr.dtype.kind != "f":
        raise InputError(f"edge targets need float images in [0, 1], got dtype {arr.dtype}")
    single = arr.ndim == 2
    arr = arr[None] if single else arr
    out = np.zeros((arr.shape[0], 1) + arr.shape[1:], dtype=np.float32)
    for b, img in enumerate(arr):
        u8 = np.round(255.0 * np.clip(img.astype(np.float64), 0, 1))
        if u8.max() == u8.min():
            continue  # a flat image has no edges
        smooth = denoise_bilateral(u8 / 255.0, win_size=7, sigma_color=50 / 255.0,
                                   sigma_spatial=50.0, mode="reflect")
        out[b, 0] = canny(smooth * 255.0, sigma=0.0, low_threshold=low, high_threshold=high)
    out = out[0] if single else out
    return torch.from_numpy(out).to(u.device) if is_torch else out


def edge_pos_weight(target: Tensor) -> Tensor:
    """Per-sample ``#0 / #1`` of binary targets ``(B, ...)``; 1 where a sample has no edges."""
    flat = target.reshape(target.shape[0], -1).float()
    pos = flat.sum(dim=1)
    neg = flat.shape[1] - pos
    return torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))


def edge_loss(logits: Tensor, target: Tensor) -> Tensor:
    """BCE with logits, each sample weighted by its own pos_weight; mean over
    pixels and samples."""
    w = edge_pos_weight(target).view(-1, *([1] * (target.ndim - 1)))
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=w)


# -- losses --------------------------------------------------------------------------------
def reconstruction_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None,
                        region: str = "all") -> Tensor:
    """MSE between ``pred`` and ``target`` ``(B, C, H, W)``.

    ``region="masked"`` averages over the masked pixels only (``mask (B, H, W)`` bool, all
    channels); with no masked pixel in the batch it returns 0 (with a gradient path).
    """
    if region == "all" or mask is None:
        return F.mse_loss(pred.float(), target.float())
    if region != "masked":
        raise InputError(f"loss region must be 'all' or 'masked', got {region!r}")
    m = mask[:, None].to(pred.dtype).expand_as(pred)
    err = (pred.float() - target.float()).square() * m
    return err.sum() / m.sum().clamp(min=1)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1, *,
            intra_view_negatives: bool = False) -> Tensor:
    """NT-Xent of two batches of L2-normalised embeddings ``(B, D)``.

    Default (the reference): logits ``z1 z2^T / tau`` (B x B, cross-view only, ``B - 1``
    negatives per anchor), cross-entropy with diagonal targets in both directions, averaged.
    ``intra_view_negatives=True``: the original SimCLR loss over all ``2B - 2`` negatives.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise InputError(f"NT-Xent needs two (B, D) batches of equal shape, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    labels = torch.arange(b, device=z1.device)
    if not intra_view_negatives:
        logits = z1.float() @ z2.float().T / temperature
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    z = torch.cat([z1, z2]).float()
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device),
                                float("-inf"))
    targets = torch.cat([labels + b, labels])
    return F.cross_entropy(logits, targets)


class ProjectionHead(nn.Module):
    """SimCLR projection: Dense 256 -> 128 -> 64, ReLU after every layer including
    the last (as the reference), then L2 normalisation.

    Parameters
    ----------
    in_features : int
    dims : sequence of int
    """

    def __init__(self, in_features: int, dims=(256, 128, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for d in dims:
            layers += [nn.Linear(prev, d), nn.ReLU()]
            prev = d
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.mlp(x), dim=-1)
