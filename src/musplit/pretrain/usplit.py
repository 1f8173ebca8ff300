"""PCMC as a label-free pre-training objective for µSplit (docs/pretraining.md, "µSplit
pre-training").

* :class:`PretextHead` -- the light decoder over the bottom-up features (docs/pretraining.md,
"Pretext models").
* :class:`UsplitPretext` -- a µSplit network (LadderVAE or U-Net) with that head (``scope
  "encoder"``) or run whole and deterministically with a 3-channel head (``scope "network"``).
* :class:`UsplitPretextData` -- batches of masked LC stacks and their targets. The mask is drawn
  in frame coordinates and applied to the full-resolution frame **before** the LC pyramid is
  built, so no context level sees masked content (docs/pretraining.md, "Objectives"); the fill is
  the frame minimum (black after normalisation). Targets are the colormap
  of the frame-level min-max normalised input, cropped to the primary patch and computed before
  masking.
* :func:`load_pretrained_encoder` -- the strict transfer (docs/pretraining.md, "Encoder transfer"),
now in :mod:`musplit.checkpoints.transfer` (with :func:`encoder_keys`,
  :data:`HEAD_PREFIX` and :func:`write_report`) and re-exported here.

The training loop itself is :func:`musplit.pretrain.train.pretrain` with
``PretrainConfig(model="usplit_encoder", ...)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from musplit.checkpoints.transfer import (  # noqa: F401 - re-exported (moved there)
    _UNET_ENCODER,
    HEAD_PREFIX,
    _source_state,
    encoder_keys,
    load_pretrained_encoder,
    write_report,
)
from musplit.config.model import ModelConfig
from musplit.data.context import ContextStack, apply_d4
from musplit.errors import InputError
from musplit.kinds import LADDER_KINDS
from musplit.models import build
from musplit.models.blocks import centre_crop
from musplit.models.protocol import params_of
from musplit.pretrain.colormap import minmax_normalize
from musplit.pretrain.masks import make_mask
from musplit.pretrain.objectives import (
    ProjectionHead,
    edge_loss,
    get_objective,
    make_target,
    nt_xent,
    reconstruction_loss,
)

__all__ = [
    "HEAD_PREFIX",
    "PretextHead",
    "UsplitPretext",
    "UsplitPretextData",
    "bottom_up_features",
    "encoder_keys",
    "load_pretrained_encoder",
    "pretext_loss",
    "write_report",
]

# -- the bottom-up features ------------------------------------------------------------------
def bottom_up_features(net: nn.Module, x: Tensor) -> tuple[list[Tensor], tuple[int, int]]:
    """Bottom-up features of a µSplit network, finest first: the first input block's output
    (pixel spacing 1), then one per level (spacing 2, 4, ...); and the input size."""
    kind = net.config.kind
    if kind == "unet":
        return net.encode(x), tuple(x.shape[-2:])
    captured: list[Tensor] = []
    hook = net.encoder.stem.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        state = net.encode(x)
    finally:
        hook.remove()
    return [captured[0], *state.bu_values], state.size


# -- the pretext head (docs/pretraining.md, "Pretext models")
# ----------------------------------------
class _Level(nn.Module):
    def __init__(self, coarse: int, fine: int, width: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(coarse, width, 3, stride=2, padding=1, output_padding=1)
        self.convs = nn.Sequential(
            nn.Conv2d(width + fine, width, 3, padding=1), nn.ELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ELU(),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        # Keep the centre that lands on the finer level after the x2 upsampling: a no-op where
        # levels halve, a crop where LC levels keep the full spatial size (Regular/Deep-LC).
        size = skip.shape[-2:]
        x = centre_crop(x, (-(-size[0] // 2), -(-size[1] // 2)))
        x = centre_crop(self.up(x), tuple(size))
        return self.convs(torch.cat([x, skip], dim=1))


class PretextHead(nn.Module):
    """Light decoder over the bottom-up features (docs/pretraining.md, "Pretext models").

    From the top level down: x2 transposed-conv upsampling (after a centre crop where LC
    levels keep the full size), concatenation with the level's bottom-up feature,
    2 x (Conv3x3, ``width`` channels, ELU); the last step reaches the first input block's
    output at full resolution. Then Conv1x1 -> ``out_channels`` (+ sigmoid for colour and gray
    targets; edge targets stay logits), cropped to the primary patch.

    Parameters
    ----------
    channels : list of int
        Channels of the features, finest (input block) first.
    width : int
    out_channels : int
    sigmoid : bool
    """

    def __init__(self, channels: list[int], width: int = 64, out_channels: int = 3,
                 sigmoid: bool = True):
        super().__init__()
        coarse = [channels[-1]] + [width] * (len(channels) - 2)
        self.levels = nn.ModuleList(
            _Level(c, f, width) for c, f in zip(coarse, reversed(channels[:-1]), strict=True))
        self.out = nn.Conv2d(width, out_channels, 1)
        self.sigmoid = sigmoid

    def forward(self, feats: list[Tensor], size: tuple[int, int]) -> Tensor:
        x = feats[-1]
        for level, skip in zip(self.levels, reversed(feats[:-1]), strict=True):
            x = level(x, skip)
        y = centre_crop(self.out(x), size)
        return torch.sigmoid(y) if self.sigmoid else y


class UsplitPretext(nn.Module):
    """A µSplit network set up for a pretext task (docs/pretraining.md, "µSplit pre-training" to
    "Pretext head").

    Parameters
    ----------
    model_config : ModelConfig
        The µSplit network (LadderVAE or U-Net) whose weights are pre-trained.
    objective : str
        Registry name (:mod:`musplit.pretrain.objectives`).
    scope : {"encoder", "network"}
    head_width : int
    projection : sequence of int
        SimCLR projection widths.

    Attributes
    ----------
    net : nn.Module
        The µSplit network; its state-dict keys are the transfer keys (``net.`` stripped).
    pretext_head : nn.Module
        Everything that is discarded after pre-training.
    """

    def __init__(self, model_config: ModelConfig, objective: str, scope: str = "encoder",
                 head_width: int = 64, projection=(256, 128, 64)):
        super().__init__()
        obj = get_objective(objective)
        if obj.loss is None:
            raise InputError("objective 'random' has nothing to pre-train")
        self.objective, self.scope = obj, scope
        self.net = build(model_config)
        out, sigmoid = max(obj.channels, 1), obj.target in ("pcolor", "gray")
        if scope == "network":
            if obj.loss == "ntxent":
                raise InputError("scope 'network' needs a dense objective, not simclr")
            ladder = model_config.kind in LADDER_KINDS
            width = model_config.filters if ladder else self.net.head.in_channels
            # The output head is swapped for a pretext one, kept outside ``net`` so that the
            # network's own head stays at its initialisation (docs/pretraining.md, "µSplit
            # pre-training": swapped afterwards).
            k = 3 if ladder else 1
            self.pretext_head = nn.Conv2d(width, out, k, padding=k // 2)
            self.sigmoid = sigmoid
            return
        if scope != "encoder":
            raise InputError(f"scope must be 'encoder' or 'network', got {scope!r}")
        channels = self._feature_channels(model_config)
        if obj.loss == "ntxent":
            self.pretext_head = ProjectionHead(channels[-1], tuple(projection))
        else:
            self.pretext_head = PretextHead(channels, head_width, out, sigmoid)

    def _feature_channels(self, cfg: ModelConfig) -> list[int]:
        p = cfg.patch
        x = torch.zeros(1, cfg.scales, p, p)
        was = self.net.training
        self.net.eval()
        with torch.no_grad():
            feats, _ = bottom_up_features(self.net, x)
        self.net.train(was)
        return [f.shape[1] for f in feats]

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, S, P, P)`` -> the pretext output: ``(B, C, P, P)`` (dense objectives) or
        ``(B, D)`` L2-normalised embeddings (SimCLR)."""
        if self.scope == "network":
            return self._network(x)
        feats, size = bottom_up_features(self.net, x)
        if self.objective.loss == "ntxent":
            return self.pretext_head(feats[-1].mean(dim=(-2, -1)))
        return self.pretext_head(feats, size)

    def _network(self, x: Tensor) -> Tensor:
        net = self.net
        head = net.head
        # Deterministic whole-network pass (posterior means, no KL: the HAE mode), with the
        # pretext head in place of the likelihood head for the duration of the call.
        net.head = self.pretext_head
        try:
            if net.config.kind in LADDER_KINDS:
                stochastic, net.stochastic = net.stochastic, False
                try:
                    y = net.decode(net.encode(x), compute_kl=False).params
                finally:
                    net.stochastic = stochastic
            else:
                y = params_of(net(x))[:, : self.pretext_head.out_channels]
        finally:
            net.head = head
        return torch.sigmoid(y) if self.sigmoid else y

    def transfer_state(self) -> dict[str, Tensor]:
        """The transferred weights in the µSplit network's own key names (docs/pretraining.md,
        "Encoder transfer")."""
        sd = self.net.state_dict()
        return {k: sd[k].detach().clone() for k in encoder_keys(self.net, self.scope)}

    def checkpoint_state(self) -> dict[str, Tensor]:
        """Transfer weights plus the pretext head under :data:`HEAD_PREFIX`."""
        out = self.transfer_state()
        for k, v in self.pretext_head.state_dict().items():
            out[HEAD_PREFIX + k] = v.detach().clone()
        return out

    def key_map(self) -> dict[str, str]:
        """Pretext-module key -> µSplit network key of every transferred tensor."""
        return {f"net.{k}": k for k in encoder_keys(self.net, self.scope)}


# -- data (docs/pretraining.md, "Objectives") -------------------------------------------
class UsplitPretextData:
    """Random pre-training batches of masked LC stacks and their targets.

    Parameters
    ----------
    images : ndarray, shape (N, H, W)
        Superimposed input frames (unlabelled), any real dtype (cast to float32).
    config : PretrainConfig
        ``model="usplit_encoder"``; patch and scales come from ``config.usplit``.

    Notes
    -----
    Input normalisation follows musplit training: clip at the ``clip_quantile`` of all pixels,
    then ``(x - mean) / std`` of the clipped frames, after the LC padding. Each sample's mask is
    drawn for the whole frame (anchored at pixel (0, 0)) and applied before the pyramid, on a
    window that covers the LC extent plus the halving filters' reach, so only the patch's own
    context is filtered (identical to filtering the whole masked frame).
    """

    def __init__(self, images: np.ndarray, config):
        arr = np.asarray(images)
        if arr.ndim != 3:
            raise InputError(f"pre-training images must be (N, H, W), got shape {arr.shape}")
        if arr.dtype.kind not in "fiu":
            raise InputError(f"pre-training images must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise InputError("pre-training images contain NaN or Inf pixels")
        mc = config.usplit
        self.config, self.patch, self.scales = config, int(mc.patch), int(mc.scales)
        n, h, w = arr.shape
        if h < self.patch or w < self.patch:
            raise InputError(f"frames of {h}x{w} are smaller than the patch size {self.patch}")
        self.clip = float(np.quantile(arr, config.clip_quantile))
        self.frames = np.minimum(arr, np.float32(self.clip))
        self.mean = float(self.frames.mean(dtype=np.float64))
        self.std = float(self.frames.std(dtype=np.float64))
        if self.std <= 0:
            raise InputError("pre-training images are constant: their standard deviation is 0")
        norm = config.pretext.norm
        pct = norm.percentiles
        if pct is None:
            self.lo = self.frames.min(axis=(1, 2))
            self.hi = self.frames.max(axis=(1, 2))
        else:
            q = np.percentile(self.frames, pct, axis=(1, 2))
            self.lo, self.hi = q[0].astype(np.float32), q[1].astype(np.float32)
        self.n, self.height, self.width = n, h, w
        self.objective = get_objective(config.pretext.objective)

    # -- geometry ------------------------------------------------------------------------
    def _window(self, corner: np.ndarray) -> tuple[int, int, int, int]:
        """Full-resolution rows/cols ``[r0, r1) x [c0, c1)`` that the LC stack of ``corner``
        depends on, clamped to the frame (a clamped side is the frame's own border, where the
        padding rule applies exactly as for the whole frame)."""
        p, s = self.patch, self.scales
        half = (p << (s - 1)) // 2
        reach = 4 * (1 << (s - 1)) + 2
        lo = corner + p // 2 - half - reach
        hi = corner + p // 2 + half + reach
        r0, c0 = max(0, int(lo[0])), max(0, int(lo[1]))
        r1, c1 = min(self.height, int(hi[0])), min(self.width, int(hi[1]))
        return r0, r1, c0, c1

    def stack(self, frame: np.ndarray, corner: np.ndarray) -> np.ndarray:
        """Un-normalised LC stack ``(S, P, P)`` of ``frame (H, W)`` at ``corner``."""
        r0, r1, c0, c1 = self._window(corner)
        cs = ContextStack(frame[None, r0:r1, c0:c1], self.patch, self.scales, self.config.pad)
        rel = np.array([[corner[0] - r0, corner[1] - c0]])
        return cs.crops(np.zeros(1, dtype=np.int64), rel)[0]

    # -- batches -------------------------------------------------------------------------
    def _norm01(self, x: np.ndarray, i: int) -> np.ndarray:
        if self.config.pretext.norm.scope == "image":
            pct = self.config.pretext.norm.percentiles
            return minmax_normalize(x, pct)
        lo, hi = float(self.lo[i]), float(self.hi[i])
        if hi <= lo:
            return np.zeros_like(x, dtype=np.float32)
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)

    def sample(self, batch: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """One batch: ``x (B, S, P, P)`` normalised masked input, ``target (B, C, P, P)``,
        ``mask (B, P, P)`` (True = masked pixel of the primary patch), ``u (B, P, P)`` the
        unmasked [0, 1] primary patch.

        SimCLR batches instead hold two views ``x`` and ``x2`` of the same locations.
        """
        cfg, p = self.config, self.patch
        frames = rng.integers(0, self.n, batch)
        corners = np.stack([rng.integers(0, self.height - p + 1, batch),
                            rng.integers(0, self.width - p + 1, batch)], axis=1)
        if self.objective.loss == "ntxent":
            return self._simclr(frames, corners, rng)
        d4 = cfg.augmentation == "d4"
        mask_cfg = cfg.pretext.mask
        shared = None
        if mask_cfg.kind == "padded" and not mask_cfg.per_sample:
            shared = make_mask(mask_cfg, self.height, self.width, batch=1, rng=rng)[0]
        xs, us, ms = [], [], []
        for b in range(batch):
            i, c = int(frames[b]), corners[b]
            frame = self.frames[i]
            if shared is not None:
                m = shared
            else:
                m = make_mask(mask_cfg, self.height, self.width, batch=1, rng=rng)[0]
            fill = np.float32(self.lo[i])  # frame minimum: black after normalisation
            if cfg.mask_lc and m.any():
                x = self.stack(np.where(m, fill, frame), c)
            else:
                x = self.stack(frame, c)
            mp = m[c[0] : c[0] + p, c[1] : c[1] + p]
            if not cfg.mask_lc:
                x[0] = np.where(mp, fill, x[0])
            u = self._norm01(frame[c[0] : c[0] + p, c[1] : c[1] + p], i)
            if d4:
                t = int(rng.integers(0, 8))
                x, u, mp = apply_d4(x, t), apply_d4(u, t), apply_d4(mp, t)
            xs.append(x)
            us.append(u)
            ms.append(mp)
        x = (np.stack(xs) - np.float32(self.mean)) / np.float32(self.std)
        u = torch.from_numpy(np.ascontiguousarray(np.stack(us), dtype=np.float32))
        out = {"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), "u": u,
               "mask": torch.from_numpy(np.ascontiguousarray(np.stack(ms)))}
        cm = cfg.pretext.colormap
        out["target"] = make_target(cfg.pretext.objective, u,
                                    cm.name if cm else "nipy_spectral",
                                    cm.quantize if cm else True)
        return out

    def _simclr(self, frames, corners, rng) -> dict[str, Tensor]:
        """Two views per location (docs/pretraining.md, "Objectives"): ±8 px shift, D4,
        contrast and brightness."""
        views = []
        for _ in range(2):
            xs = []
            for b in range(len(frames)):
                i = int(frames[b])
                shift = rng.integers(-8, 9, 2)
                c = np.clip(corners[b] + shift, 0, [self.height - self.patch,
                                                    self.width - self.patch])
                x = self.stack(self.frames[i], c)
                lo, hi = float(self.lo[i]), float(self.hi[i])
                span = hi - lo if hi > lo else 1.0
                u = (x - lo) / span
                f, d = rng.uniform(0.7, 1.3), rng.uniform(-0.3, 0.3)
                m = u[0].mean()
                u = np.clip((u - m) * f + m + d, 0.0, 1.0)
                x = u * span + lo
                if self.config.augmentation == "d4":
                    x = apply_d4(x, int(rng.integers(0, 8)))
                xs.append(x)
            x = (np.stack(xs) - np.float32(self.mean)) / np.float32(self.std)
            views.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return {"x": views[0], "x2": views[1]}


def pretext_loss(module: UsplitPretext, batch: dict, config) -> Tensor:
    """The loss of one batch for ``module`` (dense objectives and SimCLR)."""
    obj = module.objective
    if obj.loss == "ntxent":
        pt = config.pretext
        return nt_xent(module(batch["x"]), module(batch["x2"]), pt.temperature,
                       intra_view_negatives=pt.intra_view_negatives)
    pred = module(batch["x"])
    if obj.loss == "bce":
        return edge_loss(pred, batch["target"])
    return reconstruction_loss(pred, batch["target"], batch["mask"], config.pretext.loss_region)
