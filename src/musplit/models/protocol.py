"""The one contract between the splitting models and the code that trains and applies them.

Every model that :func:`musplit.models.build` returns is a :class:`SplittingModel`: called on a
normalised lateral-context stack ``x (B, S, P, P)`` (scale 0 the primary patch), it returns the
likelihood parameters ``(B, 2C, P, P)`` (``[0:C]`` means, ``[C:2C]`` log-variances, normalised
units), either as a tensor or as the first element of a tuple (a named tuple with ``params``,
and ``aux`` for deep supervision, for musplit's own models). See docs/design.md, "Public API".

Besides that, a model may offer capabilities, which callers must test through the functions
here and nowhere else:

=========================  ===================================================================
capability                 how a model declares it
=========================  ===================================================================
:func:`encoder_of`         ``encode(x) -> state`` and ``decode(state, noise=..., sample_mode=...,
                           compute_kl=...)`` with ``state.repeat(n)`` (the LadderVAE): run the
                           encoder once and the decoder for every sample (:class:`Encodes`).
:func:`can_sample_many`    ``sample_many(x, n, noise=..., batch=...) -> (n, B, 2C, H, W)``
                           (:class:`SamplesMany`).
:func:`is_stochastic`      a bool ``is_stochastic``: False when every forward pass gives the
                           same output (an HAE, the U-Nets, BRAVE-NET). Models that do not say
                           are taken to be stochastic.
:func:`predicts_variance`  a bool ``predicts_variance``; False when the log-variance half of the
                           output is a constant (the supervised baselines).
``sample_mode``            ``"sample"`` or ``"mean"``: what a stochastic model draws in eval mode.
=========================  ===================================================================

``is_stochastic`` is the contract. The older attribute ``stochastic`` still works as a bool on
the models (``LadderVAE.stochastic``, ``UNet.stochastic = False``) and is read when a model has
no ``is_stochastic``; it is *not* the submodule ``DecoderLevel.stochastic`` (the
:class:`~musplit.models.blocks.StochasticLayer` of a decoder level, whose state-dict keys
``decoder.levels.{i}.stochastic.*`` stay as they are), and a non-bool ``stochastic`` is never
taken for a declaration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = [
    "Encodes",
    "SamplesMany",
    "SplittingModel",
    "aux_of",
    "can_encode",
    "can_sample_many",
    "declares_stochastic",
    "encoder_of",
    "is_deterministic",
    "is_stochastic",
    "params_of",
    "predicts_variance",
    "sample_mode_of",
]


@runtime_checkable
class SplittingModel(Protocol):
    """What every splitting model provides: ``model(x)`` with the likelihood parameters first."""

    def __call__(self, x: Tensor, /) -> Any:
        """``x (B, S, P, P)`` -> ``(B, 2C, P, P)``, or a tuple whose first element it is."""
        ...


@runtime_checkable
class Encodes(Protocol):
    """A model whose bottom-up pass can run once for many top-down passes (the LadderVAE)."""

    def encode(self, x: Tensor) -> Any: ...

    def decode(self, state: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class SamplesMany(Protocol):
    """A model that draws ``n`` samples of its output at once."""

    def sample_many(self, x: Tensor, n: int, **kwargs: Any) -> Tensor: ...


# -- outputs -------------------------------------------------------------------------------
def params_of(output: Any) -> Tensor:
    """The likelihood parameters ``(B, 2C, H, W)`` of a model output (a tensor, or a tuple or
    list whose first element is one, or an object with a tensor ``params``)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    params = getattr(output, "params", None)
    if isinstance(params, Tensor):
        return params
    raise TypeError(f"the model returned {type(output).__name__}; expected a tensor "
                    "(B, 2C, H, W) or a tuple whose first element is one")


def aux_of(output: Any) -> tuple[Tensor, ...]:
    """The auxiliary (deep-supervision) outputs of a model output; empty for most models."""
    return tuple(getattr(output, "aux", ()))


# -- capabilities --------------------------------------------------------------------------
def can_encode(model: Any) -> bool:
    """True if ``model`` has callable ``encode`` and ``decode`` (:class:`Encodes`)."""
    return callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))


def encoder_of(model: Any) -> Callable[[Tensor], Any] | None:
    """``model.encode`` where the model also decodes (:class:`Encodes`), else None.

    A U-Net's ``encode`` (its bottom-up features, no ``decode``) is not an encoder in this sense.
    """
    return model.encode if can_encode(model) else None


def can_sample_many(model: Any) -> bool:
    """True if ``model`` has a callable ``sample_many`` (:class:`SamplesMany`)."""
    return callable(getattr(model, "sample_many", None))


def declares_stochastic(model: Any) -> bool:
    """True if ``model`` says whether it is stochastic (``is_stochastic``, or a bool
    ``stochastic``): it then follows the ``sample_mode`` convention of the LadderVAE."""
    return isinstance(getattr(model, "is_stochastic", None), bool) or \
        isinstance(getattr(model, "stochastic", None), bool)


def is_stochastic(model: Any) -> bool:
    """False only where ``model`` declares that all its forward passes are the same."""
    flag = getattr(model, "is_stochastic", None)
    if isinstance(flag, bool):
        return flag
    flag = getattr(model, "stochastic", None)
    return flag if isinstance(flag, bool) else True


def sample_mode_of(model: Any, sample_mode: str | None = None,
                   default: str | None = "sample") -> str | None:
    """``sample_mode`` if given, else the model's own ``sample_mode``, else ``default``."""
    return sample_mode or getattr(model, "sample_mode", default)


def is_deterministic(model: Any, sample_mode: str | None = None) -> bool:
    """True if one eval-mode pass of ``model`` gives every sample: it is not stochastic, or it
    declares itself (see :func:`declares_stochastic`) and draws posterior means (``"mean"``)."""
    return not is_stochastic(model) or (
        declares_stochastic(model) and sample_mode_of(model, sample_mode) == "mean")


def predicts_variance(model: Any) -> bool:
    """False where ``model`` declares that its log-variance output is a constant."""
    return getattr(model, "predicts_variance", True) is not False
