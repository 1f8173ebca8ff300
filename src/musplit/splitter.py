"""The one-object facade: a trained model with its config and normalisation statistics."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# The package, not its functions: predict_image / predict_to_zarr are looked up on it at call
# time, so a patched ``musplit.predict.predict_image`` is the one called.
import musplit.predict as _predict
from musplit.checkpoints.format import load_checkpoint
from musplit.checkpoints.strict import compare_state, mismatch_report
from musplit.config import Config
from musplit.data.io import ImageSource
from musplit.data.normalize import NormStats
from musplit.errors import CheckpointError, ConfigError, InputError
from musplit.models import build
from musplit.predict.calibrated import check_calibration


class Splitter:
    """A trained musplit model, ready to split images.

    Attributes
    ----------
    model : torch.nn.Module
        The network, in eval mode.
    config : Config
        The full configuration it was trained (or imported) with.
    stats : NormStats or None
        Normalisation statistics carried by the checkpoint.
    """

    def __init__(self, model: torch.nn.Module, config: Config, stats: NormStats | None,
                 extra: dict | None = None):
        self.model = model.eval()
        self.config = config
        self.stats = stats
        self.extra = dict(extra or {})

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, map_location: str | torch.device = "cpu"
             ) -> Splitter:
        """Open a musplit checkpoint (weights-only, strict).

        Raises
        ------
        CheckpointError
            If the file is missing, unsafe, not a musplit checkpoint, or its weights do not
            match the model its config describes.
        """
        path = Path(checkpoint)
        payload = load_checkpoint(path)
        try:
            config = Config.validated(payload["config"], source=f"config in {path}")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        model = build(config.model)
        state = payload["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):
            raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
        mismatch = compare_state(model.state_dict(), state)
        if mismatch:
            raise CheckpointError(
                f"checkpoint {path} does not match its model ({mismatch_report(mismatch)})")
        model.load_state_dict(state, strict=True)
        stats = NormStats.from_dict(payload["stats"]) if payload.get("stats") else None
        extra = payload.get("extra")
        if isinstance(extra, dict) and extra.get("calibration") is not None:
            n = stats.n_channels if stats is not None else config.model.out_channels
            check_calibration(extra["calibration"], n, f"checkpoint {path}")
        model.to(map_location)
        return cls(model, config, stats, extra)

    @property
    def calibration(self) -> dict | None:
        """The stored uncertainty calibration (``Calibration.to_dict()``, written by
        ``musplit calibrate`` / :func:`musplit.calibration.save_calibrated`), or None.
        ``musplit.calibration.Calibration.from_dict`` makes it an object again."""
        cal = self.extra.get("calibration")
        return dict(cal) if cal is not None else None

    def predict(self, image, padding: str | None = None, grid: int | None = None,
                 samples: int | None = None, batch_size: int | None = None, *, seed: int = 0,
                 precision: str | None = None, normalized: bool = False,
                 progress: bool = False, pixel_size: tuple[float, float] | None = None,
                 input_scale: float = 1.0, brightness: str | None = None,
                 strict_range: bool = False, raw_std: bool = False,
                 sample_mode: str | None = None):
        """Split ``image`` into its channels by tiled prediction (docs/tiling.md).

        Parameters
        ----------
        image : ndarray, shape (H, W) or (N, H, W), or ImageSource
            The superimposed input in intensity units, on the scale of the channel average the
            model was trained on (docs/method.md, "Superposition model"); integer pixels give
            float32 output in the same units. An :class:`~musplit.data.io.ImageSource`
            (:func:`musplit.data.io.open_image`) must have one channel; it is read whole.
        padding : {"inner", "outer", "none"}, optional
            Tiling scheme; default from the config ("inner").
        grid : int, optional
            Tile size G; default per variant (:func:`musplit.predict.default_grid`).
        samples : int, optional
            Posterior samples for the MMSE estimate; > 1 also gives a per-pixel std.
        batch_size : int, optional
            Patches per forward pass.
        precision : {"fp32", "bf16", "fp16"}, optional
            Network arithmetic; default from the config ("fp32", parity). bf16 is about 1.6x
            faster for models of the paper's width on CPUs with AVX512-BF16 or AMX and on
            recent GPUs (BENCHMARKS.md gives the accuracy it costs).
        pixel_size : (float, float), optional
            ``(y, x)`` in micrometres, kept in the prediction and its saved files; default: the
            ImageSource's, when ``image`` is one.
        input_scale : float
            Multiplies the image first (another gain or exposure than the training mixes).
        brightness : {"check", "match", "off"}, optional
            What to do with an image more than 2x brighter or dimmer than the training mixes:
            refuse it with the reason, rescale it (channels returned in the image's units) or
            nothing; default ``config.predict.brightness`` ("check").
        strict_range : bool
            Refuse an image outside the training range instead of warning
            (:func:`musplit.predict.brightness.check_range`).
        raw_std : bool
            Return the raw posterior-sample std even when the model carries a calibration
            (:attr:`calibration`); by default a calibrated model returns the calibrated std
            (docs/microsplit.md, "Calibration in musplit").

        Returns
        -------
        musplit.predict.Prediction
            ``.mean`` (N, H, W, C) and ``.std`` (or None) in input intensity units;
            ``.std_calibrated`` says which std it is.
        """
        self._need_stats()
        if isinstance(image, ImageSource):
            if image.n_channels != 1:
                raise InputError(f"{image.name} has {image.n_channels} channels "
                                 f"({image.axes_note}); musplit predicts from one superimposed "
                                 "channel (read it first, or open it with other axes)")
            if pixel_size is None:
                pixel_size = image.pixel_size
            image = image.read()[..., 0]
        return _predict.predict_image(
            self.model, self.config, self.stats, image,
            **self._options(padding, grid, samples, batch_size, precision), seed=seed,
            normalized=normalized, progress=progress, pixel_size=pixel_size,
            input_scale=input_scale, brightness=brightness, strict_range=strict_range,
            sample_mode=sample_mode, **self._calibration(raw_std),
        )

    def predict_to_zarr(self, source, out_path: str | os.PathLike, *,
                        padding: str | None = None, grid: int | None = None,
                        samples: int | None = None, batch_size: int | None = None,
                        seed: int = 0, precision: str | None = None, std: bool = True,
                        axes: str | None = None, channel: int | str | None = None,
                        block: int = 2048, overwrite: bool = False, progress: bool = False,
                        protect=(), pixel_size: tuple[float, float] | None = None,
                        input_scale: float = 1.0, brightness: str | None = None,
                        strict_range: bool = False, raw_std: bool = False,
                        sample_mode: str | None = None) -> Path:
        """Split an image larger than memory, block by block, into OME-Zarr.

        ``source`` is a file (TIFF, Zarr, ... read lazily) or an array; memory is bounded by
        ``block``, not by the image (:func:`musplit.predict.predict_to_zarr`). The other
        arguments are as for :meth:`predict`; ``std`` writes ``<stem>_std.zarr`` when
        ``samples > 1`` (calibrated unless ``raw_std``, as for :meth:`predict`); ``protect``
        lists files that must never be written to (a file ``source`` always is);
        ``pixel_size`` (``(y, x)`` µm) goes into the stores' OME-Zarr scale, by default the
        source's.

        Returns
        -------
        Path
            The mean's store.
        """
        self._need_stats()
        return _predict.predict_to_zarr(
            self.model, self.config, self.stats, source, out_path,
            **self._options(padding, grid, samples, batch_size, precision), seed=seed,
            progress=progress, std=std, axes=axes, channel=channel, block=block,
            overwrite=overwrite, protect=protect, pixel_size=pixel_size,
            input_scale=input_scale, brightness=brightness, strict_range=strict_range,
            sample_mode=sample_mode, **self._calibration(raw_std),
        )

    def _calibration(self, raw_std: bool) -> dict:
        """The ``calibration`` argument of a prediction: none asked or none stored gives no
        argument at all, so calls look as they did before calibration existed."""
        if not isinstance(raw_std, bool):
            raise InputError(f"raw_std must be True or False, got {raw_std!r}")
        cal = None if raw_std else self.calibration
        return {} if cal is None else {"calibration": cal}

    def _options(self, padding, grid, samples, batch_size, precision) -> dict:
        """The tiling, sampling and precision arguments, defaults from ``config.predict``."""
        pc = self.config.predict
        return {"padding": padding or pc.padding, "grid": grid if grid is not None else pc.grid,
                "samples": samples or pc.samples, "batch_size": batch_size or pc.batch_size,
                "amp": precision or pc.precision, "channel_names": self._names()}

    def _need_stats(self) -> None:
        if self.stats is None:
            raise CheckpointError("this model carries no normalisation statistics; import it "
                                  "again with --stats-from (musplit import-official)")

    def _names(self) -> list[str] | None:
        return self.extra.get("channel_names") or self.config.data.channel_names

