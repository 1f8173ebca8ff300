"""The µSplit LadderVAE: HVAE / HAE with Vanilla, Lean-, Regular- or Deep-LC (docs/method.md,
"LadderVAE").

Readable top to bottom: what the model returns (:class:`LadderOutput`, :class:`EncoderState`),
its structure -- :class:`Encoder` (the bottom-up pass with its lateral-context inputs,
docs/method.md, "Lateral Contextualisation"), the :class:`DecoderLevel` modules of the top-down
pass (docs/method.md, "Top-down pass and stochastic layer"), the likelihood :class:`Head` -- and
then :class:`LadderVAE` itself: construction, :meth:`~LadderVAE.forward` (bottom-up then top-down),
:meth:`~LadderVAE.encode`, :meth:`~LadderVAE.decode` and, last, sampling.

The bottom-up pass can be run once and the top-down pass many times
(:meth:`LadderVAE.encode`, :meth:`LadderVAE.decode`, :meth:`LadderVAE.sample_many`), which is how
MMSE prediction avoids paying the encoder N times (docs/method.md, "Reference defects avoided" item
4).

Shapes: the input is ``(B, S, H, W)``, scale 0 the primary patch and scale ``s`` the LC input at
resolution ``2^s`` centred on it; the output's first element is ``(B, 2C, H, W)``: ``C`` means then
``C`` log-variances of the Gaussian likelihood, in normalised target units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musplit.config.model import ModelConfig
from musplit.errors import InputError
from musplit.kinds import LADDER_KINDS
from musplit.models.blocks import (
    Conv2d,
    Merge,
    ResBlock,
    Stem,
    StochasticLayer,
    centre_crop,
    centre_pad,
    fit_prior,
)

__all__ = ["EncoderState", "LadderOutput", "LadderVAE", "Noise"]

#: Latent noise for the top-down pass: None (fresh draws from the global RNG), a
#: ``torch.Generator`` (draws from it, top level first), or one tensor per level indexed by level
#: (``noise[i]`` has shape ``(B, Z_i, H_i, W_i)``; an entry may be None for a fresh draw).
Noise = torch.Generator | Sequence[Tensor | None] | None


class LadderOutput(NamedTuple):
    """What :meth:`LadderVAE.forward` returns.

    Attributes
    ----------
    params : Tensor, shape (B, 2C, H, W)
        Likelihood parameters: channels ``[0, C)`` means, ``[C, 2C)`` log-variances (bounded
        below, docs/method.md, "Likelihood head"), normalised target units.
    kl : Tensor of shape (B, L), or None
        Per-sample KL of each level summed over its latent elements, level 0 (bottom) first, in
        nats. None when not computed (eval mode by default) and always for the HAE, which has
        no KL term.
    kl_elements : tuple of int
        ``Z_i * H_i * W_i`` per level: the element counts the reference normalisation divides
        by (docs/data.md, "Normalisation").
    """

    params: Tensor
    kl: Tensor | None
    kl_elements: tuple[int, ...]

    @property
    def mean(self) -> Tensor:
        """``(B, C, H, W)`` predicted means."""
        return self.params[:, : self.params.shape[1] // 2]

    @property
    def logvar(self) -> Tensor:
        """``(B, C, H, W)`` predicted log-variances."""
        return self.params[:, self.params.shape[1] // 2 :]


@dataclass(frozen=True)
class EncoderState:
    """Result of the bottom-up pass, reusable by any number of top-down passes.

    Attributes
    ----------
    bu_values : tuple of Tensor
        The value handed to each top-down level, level 0 first, ``(B, F, H_i, W_i)``.
    size : tuple of int
        ``(H, W)`` of the input, to which the output is cropped back.
    padded : tuple of int
        ``(H', W')`` after the centre zero-padding of Vanilla/Lean-LC (equal to ``size`` otherwise).
    """

    bu_values: tuple[Tensor, ...]
    size: tuple[int, int]
    padded: tuple[int, int]

    def repeat(self, n: int) -> EncoderState:
        """The same state with the batch repeated ``n`` times (sample-major), for batched MMSE."""
        return EncoderState(tuple(v.repeat(n, 1, 1, 1) for v in self.bu_values), self.size,
                            self.padded)


# -- bottom-up pass ------------------------------------------------------------------------
class EncoderLevel(nn.Module):
    """One bottom-up level: stride-2 ``down`` conv, gated ``res`` (+ ``extra`` blocks), and
    the LC merge ``lc_merge`` where the level has one (docs/method.md, "LadderVAE")."""

    def __init__(self, cfg: ModelConfig, *, lc_merge: bool):
        super().__init__()
        f, kw = cfg.filters, {"batchnorm": cfg.batchnorm, "dropout": cfg.dropout}
        self.down = Conv2d(f, f, 3, stride=2, padding=1)
        self.res = ResBlock(f, gated=cfg.gated, **kw)
        self.extra = nn.ModuleList(
            ResBlock(f, gated=cfg.gated, **kw) for _ in range(cfg.blocks_per_level - 1)
        )
        self.lc_merge = Merge(f, **kw) if lc_merge else None

    def same_size(self, x: Tensor) -> Tensor:
        for block in self.extra:
            x = block(x)
        return x


class Encoder(nn.Module):
    """The bottom-up pass: primary ``stem``, ``lc_stems`` and ``levels`` (docs/method.md, "Lateral
    Contextualisation" to "Bottom-up levels")."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        kw = {"batchnorm": cfg.batchnorm, "dropout": cfg.dropout}
        levels, scales = cfg.levels, cfg.scales
        self.scales = scales
        self.retain_spatial = cfg.lc in ("regular", "deep")
        self.stem = Stem(cfg.filters, kernel=3, **kw)
        self.lc_stems = nn.ModuleList(Stem(cfg.filters, kernel=5, **kw) for _ in range(scales - 1))
        # The reference creates an LC merge at every level once LC is on, also where no LC input
        # arrives (Deep-LC levels 4-7): kept by default for parameter counts and keys
        # (docs/method.md, "LadderVAE").
        self.levels = nn.ModuleList(
            EncoderLevel(cfg, lc_merge=scales > 1 and (i + 1 < scales or
                                                        cfg.parity_unused_modules))
            for i in range(levels)
        )
        # Paper latent scaling (docs/method.md, "Deep-LC latent scaling"): BU level l (1-based)
        # output times 1/sqrt(l), L > 4.
        paper = cfg.latent_scaling == "paper" and levels > 4
        self.bu_scale = [1 / math.sqrt(i + 1) if paper else 1.0 for i in range(levels)]

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x (B, S, H, W)`` to the list of ``bu_value`` per level, level 0 first."""
        h = self.stem(x[:, :1])
        size = x.shape[-2:]
        bu_values = []
        for i, level in enumerate(self.levels):
            h = level.same_size(level.res(level.down(h)))
            if i + 1 < self.scales:
                # LC input i+1 has the resolution of h and is centred on the same point: pad h
                # to its size and merge (docs/method.md, "LadderVAE" step 2). With several
                # blocks per level the LC feature also passes the level's same-size blocks (shared,
                # as the reference).
                e = level.same_size(self.lc_stems[i](x[:, i + 1 : i + 2]))
                h = level.lc_merge(h, e, pad_a=True)
            if self.bu_scale[i] != 1.0:
                h = h * self.bu_scale[i]
            if self.retain_spatial or self.scales == 1:
                bu_values.append(h)
            else:  # Lean-LC: the top-down pass sees the centre P/2^(i+1) of the full h
                bu_values.append(centre_crop(h, (size[0] >> (i + 1), size[1] >> (i + 1))))
        return bu_values


# -- top-down pass -------------------------------------------------------------------------
class DecoderLevel(nn.Module):
    """One top-down level (docs/method.md, "Top-down pass and stochastic layer"): prior, posterior
    merge ``q_merge``, ``stochastic``, ``skip_merge``, transposed-conv ``up`` and gated ``up_res``
    (+ ``extra`` blocks).

    The top level has the learned ``top_prior`` ``(1, 2Z, h, w)`` (zero-initialised) instead of
    ``prior_conv``, ``q_merge`` and ``skip_merge``.
    """

    def __init__(self, cfg: ModelConfig, z_dim: int, *, top: bool, top_size: int):
        super().__init__()
        f, kw = cfg.filters, {"batchnorm": cfg.batchnorm, "dropout": cfg.dropout}
        self.top = top
        if top:
            self.top_prior = nn.Parameter(torch.zeros(1, 2 * z_dim, top_size, top_size))
        else:
            self.top_prior = None
            self.q_merge = Merge(f, **kw)
            self.skip_merge = Merge(f, **kw)
        self.stochastic = StochasticLayer(f, z_dim, top=top)
        self.up = nn.ConvTranspose2d(f, f, 3, stride=2, padding=1, output_padding=1)
        self.up_res = ResBlock(f, gated=cfg.gated, **kw)
        self.extra = nn.ModuleList(
            ResBlock(f, gated=cfg.gated, **kw) for _ in range(cfg.blocks_per_level - 1)
        )


class Decoder(nn.Module):
    """Top-down ``levels``, the ``final`` block (+ ``final_extra``)."""

    def __init__(self, cfg: ModelConfig, top_size: int):
        super().__init__()
        kw = {"batchnorm": cfg.batchnorm, "dropout": cfg.dropout}
        n = cfg.levels
        self.levels = nn.ModuleList(
            DecoderLevel(cfg, z, top=i == n - 1, top_size=top_size)
            for i, z in enumerate(cfg.z_dims)
        )
        self.final = ResBlock(cfg.filters, gated=cfg.gated, **kw)
        self.final_extra = nn.ModuleList(
            ResBlock(cfg.filters, gated=cfg.gated, **kw) for _ in range(cfg.blocks_per_level - 1)
        )


class Head(nn.Module):
    """Likelihood head: Conv3x3 ``F -> 2C``, log-variance bounded below (docs/method.md,
    "Likelihood head")."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.conv = Conv2d(cfg.filters, 2 * cfg.out_channels, 3, padding=1)
        self.bound = cfg.logvar_bound
        self.logvar_min = cfg.logvar_min

    def forward(self, x: Tensor) -> Tensor:
        mu, ell = self.conv(x).chunk(2, dim=1)
        if self.bound == "hard":  # parity: zero gradient below the bound
            ell = ell.clamp(min=self.logvar_min)
        else:
            ell = F.softplus(ell - self.logvar_min).add_(self.logvar_min)
        return torch.cat([mu, ell], dim=1)


# -- the model -----------------------------------------------------------------------------
class LadderVAE(nn.Module):
    """µSplit hierarchical VAE (``kind="hvae"``) or autoencoder (``kind="hae"``).

    Parameters
    ----------
    config : ModelConfig
        ``kind`` in :data:`~musplit.kinds.LADDER_KINDS`; ``lc`` in {"none", "lean", "regular",
        "deep"}.

    Notes
    -----
    With the paper's settings the parameter counts are 2,991,748 (Vanilla), 3,657,604
    (Lean-LC), 4,702,084 (Regular-LC) and 7,177,604 (Deep-LC), docs/method.md, "Lateral
    Contextualisation".

    Sampling: in training mode z is always sampled from the posterior. In eval mode
    ``sample_mode`` decides: "sample" (parity: still sampled) or "mean" (``z = μ_q``,
    deterministic). The HAE always uses ``z = μ_q``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.kind not in LADDER_KINDS:
            raise ValueError(f"LadderVAE builds kind 'hvae' or 'hae', not {config.kind!r}")
        self.config = config
        self.stochastic = config.kind == "hvae"
        self.levels = config.levels
        self.scales = config.scales
        self.out_channels = config.out_channels
        self.sample_mode = config.sample_mode
        self.retain_spatial = config.lc in ("regular", "deep")
        self.encoder = Encoder(config)
        self.decoder = Decoder(config, self.top_prior_size(config))
        self.head = Head(config)
        # Reference latent scaling (docs/method.md, "Deep-LC latent scaling"): the posterior input
        # of level i is multiplied by sqrt(2(i+1)) when L > 4.
        ref = config.latent_scaling == "reference" and self.levels > 4
        self.q_scale = [math.sqrt(2 * (i + 1)) if ref else 1.0 for i in range(self.levels)]

    @staticmethod
    def top_prior_size(config: ModelConfig) -> int:
        """Side of the learned top prior: ``P/2^(L+1-S)`` (Regular/Deep) or ``P/2^L``."""
        if config.lc in ("regular", "deep"):
            return config.patch >> (config.levels + 1 - config.scales)
        return config.patch >> config.levels

    @property
    def is_stochastic(self) -> bool:
        """True for the HVAE (latents are sampled), False for the HAE (:mod:`musplit.models.
        protocol`). ``stochastic`` is the same flag under its older name."""
        return bool(self.stochastic)

    # -- the whole pass -------------------------------------------------------------------
    def forward(self, x: Tensor, *, noise: Noise = None, sample_mode: str | None = None,
                compute_kl: bool | None = None, kl_estimator: str = "mc") -> LadderOutput:
        """Bottom-up then top-down pass.

        Parameters
        ----------
        x : Tensor, shape (B, S, H, W)
            Normalised LC stack.
        noise, sample_mode, compute_kl, kl_estimator
            See :meth:`decode`.

        Returns
        -------
        LadderOutput
            ``params (B, 2C, H, W)`` first, then ``kl (B, L)`` or None, then ``kl_elements``.
        """
        return self.decode(self.encode(x), noise=noise, sample_mode=sample_mode,
                           compute_kl=compute_kl, kl_estimator=kl_estimator)

    # -- bottom-up ------------------------------------------------------------------------
    def _pad_multiple(self) -> int:
        # Vanilla/Lean-LC halve the padded input L times; Regular/Deep-LC never pad.
        return 1 if self.retain_spatial else 2**self.levels

    def encode(self, x: Tensor) -> EncoderState:
        """Run the bottom-up pass once.

        Parameters
        ----------
        x : Tensor, shape (B, S, H, W)
            Normalised input; scale 0 the primary patch, scale ``s`` the LC input.

        Returns
        -------
        EncoderState
        """
        if x.ndim != 4 or x.shape[1] != self.scales:
            raise InputError(
                f"model input must have shape (B, {self.scales}, H, W) ({self.scales} LC "
                f"scale(s)), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        m = self._pad_multiple()
        padded = (-(-h // m) * m, -(-w // m) * m)
        if self.retain_spatial:
            need = 2 ** (self.levels + 1 - self.scales)
            if h % need or w % need or h % 2 or w % 2:
                raise InputError(
                    f"{self.config.lc}-LC input sides must be even multiples of {need}, "
                    f"got {h}x{w}"
                )
        x = centre_pad(x, padded)
        return EncoderState(tuple(self.encoder(x)), (h, w), padded)

    # -- top-down -------------------------------------------------------------------------
    def decode(self, state: EncoderState, *, noise: Noise = None, sample_mode: str | None = None,
               compute_kl: bool | None = None, kl_estimator: str = "mc") -> LadderOutput:
        """Run the top-down pass on an encoder state.

        Parameters
        ----------
        state : EncoderState
            From :meth:`encode`.
        noise : None, torch.Generator or sequence of Tensor
            Latent noise, see :data:`Noise`; unused when ``z = μ_q``.
        sample_mode : {"sample", "mean"}, optional
            Overrides ``config.sample_mode`` in eval mode (training always samples).
        compute_kl : bool, optional
            Compute the per-level KL; default: in training mode. Never for the HAE.
        kl_estimator : {"mc", "analytic"}
            One-sample Monte-Carlo KL (parity) or the closed form.

        Returns
        -------
        LadderOutput
        """
        mode = sample_mode or self.sample_mode
        if mode not in ("sample", "mean"):
            raise ValueError(f"sample_mode must be 'sample' or 'mean', got {mode!r}")
        if kl_estimator not in ("mc", "analytic"):
            raise ValueError(f"kl_estimator must be 'mc' or 'analytic', got {kl_estimator!r}")
        sample = self.is_stochastic and (self.training or mode == "sample")
        with_kl = self.is_stochastic and (self.training if compute_kl is None else compute_kl)
        analytic = kl_estimator == "analytic"
        crop_to = (state.padded[0] // 2, state.padded[1] // 2)

        t = None
        kls: list[Tensor | None] = [None] * self.levels
        elements = [0] * self.levels
        for i in reversed(range(self.levels)):
            level = self.decoder.levels[i]
            bu = state.bu_values[i]
            u = bu if level.top else level.q_merge(bu, t)
            if self.q_scale[i] != 1.0:
                u = u * self.q_scale[i]
            stoch = level.stochastic
            if self.is_stochastic and (sample or with_kl):
                prior = None
                if with_kl:
                    prior = (fit_prior(level.top_prior, u.shape[-2:]) if level.top
                             else stoch.prior_conv(t))
                eps = self._noise(noise, i, (u.shape[0], stoch.z_dim, *u.shape[-2:]), u) \
                    if sample else None
                y, kls[i] = stoch(u, prior, eps, kl=with_kl, analytic=analytic)
            else:
                # z = μ_q (HAE, or HVAE in "mean" mode without KL): the unused half of PostConv
                # and PriorConv are not evaluated.
                y = stoch.out_conv(stoch.posterior_mean(u))
            elements[i] = stoch.z_dim * u.shape[-2] * u.shape[-1]
            if not level.top:
                y = level.skip_merge(y, t)
            if self.retain_spatial:  # 64x64 latents are cropped to P/2 (docs/method.md,
                # "Top-down levels" step 6)
                y = centre_crop(y, crop_to)
            t = level.up_res(level.up(y))
            for block in level.extra:
                t = block(t)

        t = self.decoder.final(t)
        for block in self.decoder.final_extra:
            t = block(t)
        params = centre_crop(self.head(t), state.size)
        kl = torch.stack(kls, dim=1) if with_kl else None
        return LadderOutput(params, kl, tuple(elements))

    # -- sampling -------------------------------------------------------------------------
    def sample_many(self, x: Tensor, n: int, *, noise: Noise = None, batch: int = 1
                    ) -> Tensor:
        """``n`` posterior samples of the likelihood parameters from one bottom-up pass.

        Parameters
        ----------
        x : Tensor, shape (B, S, H, W)
        n : int
            Number of top-down passes.
        noise : None or torch.Generator
            Source of latent noise (tensors per level are not accepted here).
        batch : int
            Top-down passes run together (the encoder state is repeated ``batch`` times along
            the batch axis); 1 runs them one after the other.

        Returns
        -------
        Tensor, shape (n, B, 2C, H, W)
        """
        if n < 1 or batch < 1:
            raise ValueError(f"n and batch must be >= 1, got n={n}, batch={batch}")
        if noise is not None and not isinstance(noise, torch.Generator):
            raise ValueError("sample_many takes noise=None or a torch.Generator")
        state = self.encode(x)
        b = x.shape[0]
        out = []
        done = 0
        while done < n:
            k = min(batch, n - done)
            s = state if k == 1 else state.repeat(k)
            params = self.decode(s, noise=noise, compute_kl=False).params
            out.append(params.reshape(k, b, *params.shape[1:]))
            done += k
        return torch.cat(out, dim=0)

    @staticmethod
    def _noise(noise: Noise, level: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
        # Drawn in float32 (float64 for float64 models) whatever autocast does, so that a
        # generator gives the same latents in every precision.
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        if isinstance(noise, torch.Generator):
            return torch.empty(shape, device=like.device, dtype=dtype).normal_(generator=noise)
        given = None if noise is None else noise[level]
        if given is None:
            return torch.randn(shape, device=like.device, dtype=dtype)
        if tuple(given.shape) != tuple(shape):
            raise ValueError(
                f"noise for level {level} must have shape {tuple(shape)}, got {tuple(given.shape)}"
            )
        return given.to(device=like.device, dtype=dtype)
