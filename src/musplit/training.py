"""Training with Lightning (docs/method.md, "Training recipe" and "Non-finite steps";
docs/evaluation.md, "Validation PSNR").

``train(config, out_dir)`` runs a whole training: it loads the data the config names, computes
the normalisation statistics on the training split, builds the patch datasets and the model,
and trains with Adamax, ReduceLROnPlateau and early stopping on the validation PSNR. The run
folder holds ``config.yaml``, ``split.json``, ``logs/metrics.csv`` (the whole history of the
run, kept across resumes: musplit.training_logs), the musplit checkpoints ``best.ckpt``
(highest ``val_psnr``) and ``last.ckpt`` (both self-describing, weights-only loadable) and
``resume.ckpt`` (the trainer state, for ``--resume``). Progress is shown in steps over the whole
run (musplit.training_progress); a resume is checked before anything is written
(musplit.training_resume).

Data-parallel training (docs/training.md, "Several GPUs or a SLURM cluster") is Lightning's: with
``train.strategy: ddp`` every process trains on its own share of the patches (:class:`PatchData`),
the gradients are averaged by Lightning's DDP strategy, the validation sums of all processes are
reduced before ``val_psnr`` is computed, and only the first process (global rank 0) writes the
run folder.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import Dataset, DistributedSampler

from musplit import __version__
from musplit.checkpoints.format import _atomic_write, save_checkpoint
from musplit.checkpoints.transfer import load_pretrained_encoder, write_report
from musplit.config import Config
from musplit.data.dataset import GridPatches, TrainPatches, make_loader
from musplit.data.mixing import assumed_weights
from musplit.data.normalize import NormStats, compute_stats
from musplit.data.sources import load_targets
from musplit.data.splits import save_split
from musplit.errors import ConfigError, InputError, MusplitError
from musplit.kinds import LADDER_KINDS
from musplit.losses import (
    NonFiniteGuard,
    deep_supervision_mse,
    gaussian_nll,
    is_finite,
    kl_annealing_beta,
    split_elbo,
)
from musplit.losses.denoisplit import (
    NOISE_MODEL_LOSSES,
    RestrictedKL,
    check_noise_model_data,
    denoisplit_loss,
    noise_model_nll,
    training_noise_models,
)
from musplit.models import build
from musplit.models.protocol import aux_of, params_of
from musplit.runtime import apply_threads, cpu_settings, fast_precision
from musplit.training_logs import (
    HistoryCSVLogger,
    check_logger,
    make_loggers,
    set_aside_rows_after,
)
from musplit.training_progress import StepProgress
from musplit.training_resume import (
    LOG_ROWS_KEY,
    check_resume,
    logged_rows,
    nothing_left,
    open_resume,
)

log = logging.getLogger(__name__)

BEST, LAST, RESUME = "best.ckpt", "last.ckpt", "resume.ckpt"


class TrainingDiverged(MusplitError):
    """Training produced a non-finite loss too many steps in a row."""


def writes_run_folder() -> bool:
    """Whether this process is the one that writes the run folder.

    A data-parallel run starts the same command once per process: Lightning's launcher starts
    the other processes of a machine with ``LOCAL_RANK`` set (and ``NODE_RANK`` on the other
    machines), srun starts every task with ``SLURM_PROCID``, torchrun with ``RANK``. Before the
    trainer exists, Lightning's ``rank_zero_only.rank`` holds the rank these give; only global
    rank 0 on node 0 (every process of a one-process run) checks, clears and writes the run
    folder and prints. Inside the trainer, ``trainer.is_global_zero`` says the same.
    """
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return int(getattr(rank_zero_only, "rank", 0)) == 0 and int(node) == 0


class SplitModule(L.LightningModule):
    """LightningModule around a musplit model: split-ELBO training, ``val_psnr`` validation.

    Parameters
    ----------
    config : Config
        The full run configuration (model, training settings).
    stats : NormStats
        Normalisation statistics of the training data (stored in checkpoints).
    noise_models : (MultiChannelNoiseModel, list of dict), optional
        The frozen noise models of a ``denoisplit`` loss and their records
        (:func:`musplit.losses.denoisplit.training_noise_models`); default: read from
        ``config.train.noise_models`` when the loss needs them (docs/microsplit.md, "Training
        with noise models").
    """

    def __init__(self, config: Config, stats: NormStats, noise_models=None):
        super().__init__()
        self.config = config
        self.stats = stats
        self.model = build(config.model)
        if config.train.loss in NOISE_MODEL_LOSSES and noise_models is None:
            noise_models = training_noise_models(config.train.noise_models,
                                                 config.model.out_channels)
        self.noise_model, self.noise_model_records = noise_models or (None, None)
        self._restricted_kl = (RestrictedKL(self.model) if self.noise_model is not None
                               and RestrictedKL.needed(self.model) else None)
        self.guard = NonFiniteGuard()
        self.probabilistic = config.model.kind in LADDER_KINDS
        self._val: dict[str, torch.Tensor] | None = None
        self._skip_step = False  # a data-parallel step that every process skips
        self._consecutive_bad = 0
        self.max_consecutive_nonfinite = 25
        self.skipped_validations = 0

    def forward(self, x):
        return self.model(x)

    # -- training ------------------------------------------------------------------------
    def _loss(self, x, y):
        tc = self.config.train
        if self.probabilistic:
            if self.noise_model is not None:
                return self._noise_model_loss(x, y)
            out = self.model(x, kl_estimator=tc.kl_estimator)
            beta = kl_annealing_beta(self.current_epoch) if tc.kl_annealing else 1.0
            return split_elbo(out.params, y, out.kl, out.kl_elements,
                              normalisation=tc.loss_normalisation, beta=beta,
                              free_bits=tc.free_bits, nll_beta=tc.nll_beta)
        out = self.model(x)
        return deep_supervision_mse(params_of(out)[:, : y.shape[1]], y, aux_of(out))

    def _noise_model_loss(self, x, y):
        """The ``denoisplit`` / ``denoisplit_usplit`` loss (musplit.losses.denoisplit)."""
        tc, rec = self.config.train, self._restricted_kl
        if rec is None:
            out, kl_r = self.model(x, kl_estimator=tc.kl_estimator), None
        else:
            with rec.recording(tuple(x.shape[-2:])):
                out = self.model(x, kl_estimator=tc.kl_estimator)
            kl_r = None if out.kl is None else rec.restricted(out.kl)
        beta = kl_annealing_beta(self.current_epoch) if tc.kl_annealing else 1.0
        return denoisplit_loss(
            out.params, y, self.noise_model, self.stats.target_mean, self.stats.target_std,
            out.kl, out.kl_elements, kl_restricted=kl_r, loss=tc.loss,
            usplit_weight=tc.usplit_weight, denoisplit_weight=tc.denoisplit_weight, beta=beta,
            kl_floor=tc.denoisplit_free_nats, normalisation=tc.loss_normalisation,
            free_bits=tc.free_bits, nll_beta=tc.nll_beta)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, logs = self._loss(x, y)
        self.log("loss", logs["loss"], prog_bar=True, on_step=True, on_epoch=False)
        for k in ("distortion", "rate", "kl_nats", "aux_mse", "nm_nll", "kl_ds", "nm_outside",
                  "usplit_loss", "denoisplit_loss"):
            if k in logs:
                self.log(f"train_{k}", logs[k], on_step=True, on_epoch=False)
        kept, skipped = self._keep(loss)
        self.log("skipped_steps", float(self.guard.skipped), on_step=True, on_epoch=False)
        if skipped:
            self._consecutive_bad += 1
            if self._consecutive_bad >= self.max_consecutive_nonfinite:
                # Stop rather than keep saving a model that no longer learns (issue 4).
                raise TrainingDiverged(
                    f"training diverged: {self._consecutive_bad} consecutive steps had a "
                    f"non-finite loss (at step {self.global_step}); the last good model is in "
                    "best.ckpt/last.ckpt. Try a lower learning rate or bf16/fp32 precision."
                )
        else:
            self._consecutive_bad = 0
        return kept

    def _world_size(self) -> int:
        return 1 if self._trainer is None else int(self.trainer.world_size)

    def _keep(self, loss):
        """``(loss to backpropagate or None, whether the step is skipped)``: a non-finite loss
        skips the optimiser step (:class:`~musplit.losses.NonFiniteGuard`).

        In a data-parallel run the processes decide together: one non-finite loss skips the
        step everywhere, so that no NaN reaches the averaged gradients, every process keeps
        the same weights and the skip count is the same. Lightning cannot skip one step of a
        data-parallel run (``training_step`` returning None); the step backpropagates a zero
        loss that reaches every trainable weight (so that DDP's gradient averaging completes)
        and :meth:`on_before_optimizer_step` drops the zero gradients, which leaves the weights
        and the optimiser's state as they were, as a skipped step of a one-process run does.
        """
        if self._world_size() == 1:
            kept = self.guard(loss)
            return kept, kept is None
        bad = not is_finite(loss.detach(), nan_only=self.guard.nan_only)
        if not self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            return loss, False
        if bad:
            self.guard(loss)  # counts and says so
        else:
            self.guard.skipped += 1
            log.warning("non-finite loss in another process: optimiser step skipped (%d so "
                        "far)", self.guard.skipped)
        self._skip_step = True
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.sum() for p in trainable]).sum() * 0.0, True

    def on_before_optimizer_step(self, optimizer):
        if self._skip_step:  # see _keep: no gradient, no update
            for p in self.parameters():
                p.grad = None
            self._skip_step = False

    def on_fit_start(self):
        if self._world_size() > 1:
            # Every process was seeded alike (the same initial weights, which DDP also
            # broadcasts); from here each draws its own latent samples and dropout masks.
            seq = np.random.SeedSequence([self.config.train.seed, self.trainer.global_rank])
            torch.manual_seed(int(seq.generate_state(1, np.uint64)[0] % 2**63))

    # -- validation (docs/evaluation.md, "Validation PSNR") ----------------------------------------
    def on_validation_epoch_start(self):
        c = self.config.model.out_channels
        dev = self.device
        self._val = {
            "max": torch.full((c,), -math.inf, device=dev),
            "min": torch.full((c,), math.inf, device=dev),
            "mse_sum": torch.zeros(c, dtype=torch.float64, device=dev),
            "count": torch.zeros(c, dtype=torch.float64, device=dev),
            "nll_sum": torch.zeros((), dtype=torch.float64, device=dev),
            "nll_n": torch.zeros((), dtype=torch.float64, device=dev),
        }
        if self.noise_model is not None:
            self._val["nm_sum"] = torch.zeros((), dtype=torch.float64, device=dev)
            self._val["nm_n"] = torch.zeros((), dtype=torch.float64, device=dev)

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        if len(batch) > 2:  # a data-parallel run: padding entries (see PatchData) count nothing
            real = batch[2]
            if not bool(real.any()):
                return
            x, y = x[real], y[real]
        params = params_of(self.model(x))
        c = y.shape[1]
        mu = params[:, :c].float()
        y = y.float()
        v = self._val
        v["max"] = torch.maximum(v["max"], y.amax(dim=(0, 2, 3)))
        v["min"] = torch.minimum(v["min"], y.amin(dim=(0, 2, 3)))
        mse = (mu - y).square().mean(dim=(2, 3)).double()  # (B, C) per-patch MSE
        ok = torch.isfinite(mse)
        v["mse_sum"] += torch.where(ok, mse, 0).sum(0)
        v["count"] += ok.sum(0)
        if self.noise_model is not None:
            nm, _ = noise_model_nll(mu, y, self.noise_model, self.stats.target_mean,
                                    self.stats.target_std)
            v["nm_sum"] += nm.double().sum()
            v["nm_n"] += nm.numel()
        # The pure denoisplit loss does not train the log-variances: no Gaussian val_loss.
        if self.probabilistic and params.shape[1] == 2 * c and \
                self.config.train.loss != "denoisplit":
            nll = gaussian_nll(params, y)
            v["nll_sum"] += nll.double().sum()
            v["nll_n"] += nll.numel()

    def _reduced(self, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The validation sums of every process together (a data-parallel run validates a
        share of the grid in each): the same values, hence the same ``val_psnr``, in all."""
        if self._world_size() == 1:
            return v
        reduce = self.trainer.strategy.reduce  # Lightning's all-reduce, in place
        return {k: reduce(t, reduce_op="max" if k == "max" else "min" if k == "min" else "sum")
                for k, t in v.items()}

    def on_validation_epoch_end(self):
        v = self._reduced(self._val)
        mse = v["mse_sum"] / v["count"].clamp(min=1)
        psnr = 20 * torch.log10((v["max"] - v["min"]).double() / mse.sqrt())
        # A channel whose PSNR cannot be computed (a constant target in the validation region,
        # no finite patch) is skipped and counted, never passed on as -inf/NaN.
        ok = torch.isfinite(psnr) & (v["count"] > 0) & (v["max"] > v["min"])
        skipped = int((~ok).sum())
        if ok.any():
            self.log("val_psnr", psnr[ok].mean().float(), prog_bar=True)
        for k in range(psnr.numel()):
            if ok[k]:
                self.log(f"val_psnr_ch{k}", psnr[k].float())
        self.log("val_skipped_channels", float(skipped))
        if skipped and not self.trainer.sanity_checking:
            self.skipped_validations += 1
            if self.skipped_validations == 1 and self.trainer.is_global_zero:
                bad = [k for k in range(psnr.numel()) if not ok[k]]
                log.warning(
                    "validation: the PSNR of channel%s %s cannot be computed (constant or empty "
                    "target in the validation data) and is left out of val_psnr%s; counted as "
                    "val_skipped_channels in logs/metrics.csv",
                    "s" if len(bad) > 1 else "", ", ".join(str(b) for b in bad),
                    "" if ok.any() else " (no channel left: this validation selects nothing)")
        if v["nll_n"] > 0:
            self.log("val_loss", (v["nll_sum"] / v["nll_n"]).float())
        if "nm_n" in v and v["nm_n"] > 0:
            self.log("val_nm_nll", (v["nm_sum"] / v["nm_n"]).float())
        self._val = None

    # -- optimisation (docs/method.md, "Training recipe") ------------------------------------------
    def configure_optimizers(self):
        tc = self.config.train
        # The noise models' weights are frozen: only the network's parameters are optimised.
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adamax(params, lr=tc.lr, betas=(0.9, 0.999), eps=1e-8)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=0.5, patience=tc.lr_patience, min_lr=1e-12,
            threshold=1e-4, threshold_mode="rel",
        )
        every = tc.val_every_steps
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": sched,
                "monitor": "val_psnr",
                "interval": "step" if every else "epoch",
                "frequency": every or 1,
                "strict": False,
            },
        }

    def on_save_checkpoint(self, checkpoint):
        # The Lightning resume file is self-describing too (plain data only).
        checkpoint["musplit"] = {
            "musplit_version": __version__,
            "config": self.config.model_dump(mode="json"),
            "stats": self.stats.to_dict(),
            "skipped_steps": self.guard.skipped,
        }
        if self.noise_model_records is not None:
            checkpoint["musplit"]["noise_models"] = self.noise_model_records

    def on_load_checkpoint(self, checkpoint):
        self.guard.skipped = int(checkpoint.get("musplit", {}).get("skipped_steps", 0))


class MusplitCheckpoints(Callback):
    """Write ``best.ckpt`` / ``last.ckpt`` (musplit format) and ``resume.ckpt`` (trainer state)
    after every validation, each atomically (temporary name, then rename). The logs are
    written out before each ``resume.ckpt``, which records how many rows they hold.

    In a data-parallel run every process runs these hooks (the best ``val_psnr``, reduced
    over all processes, is the same in each, and Lightning's ``save_checkpoint`` waits for
    every process); only global rank 0 writes."""

    def __init__(self, run_dir: Path, extra: dict, csv_log: HistoryCSVLogger | None = None):
        self.run_dir = Path(run_dir)
        self.extra = extra
        self.best = -math.inf
        self.csv_log = csv_log

    def _save(self, trainer, module: SplitModule, name: str, val_psnr: float | None):
        extra = dict(self.extra, global_step=int(trainer.global_step),
                     epoch=int(trainer.current_epoch), val_psnr=val_psnr,
                     skipped_steps=module.guard.skipped)
        save_checkpoint(self.run_dir / name, state_dict=module.model.state_dict(),
                        config=module.config.model_dump(mode="json"),
                        stats=module.stats.to_dict(), extra=extra)

    def _save_resume(self, trainer):
        for logger in trainer.loggers:  # the history up to this state is on disk with it
            logger.save()  # (rank 0 only: Lightning's rank_zero_only)
        if trainer.is_global_zero:
            _atomic_write(self.run_dir / RESUME, trainer.save_checkpoint)
        else:  # writes nothing in this process, but every process must call it
            trainer.save_checkpoint(self.run_dir / RESUME)

    def state_dict(self):
        return {"best": self.best}

    def on_save_checkpoint(self, trainer, module, checkpoint):
        if self.csv_log is not None and trainer.is_global_zero:
            checkpoint[LOG_ROWS_KEY] = self.csv_log.rows_written

    def load_state_dict(self, state_dict):
        self.best = float(state_dict.get("best", -math.inf))

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        v = trainer.callback_metrics.get("val_psnr")
        val = float(v) if v is not None else None
        writer = trainer.is_global_zero
        if val is not None and math.isfinite(val) and val > self.best:
            self.best = val
            if writer:
                self._save(trainer, module, BEST, val)
        if writer:
            self._save(trainer, module, LAST, val)
        self._save_resume(trainer)

    def on_train_end(self, trainer, module):
        writer = trainer.is_global_zero
        if writer:
            self._save(trainer, module, LAST, None)
        self._save_resume(trainer)
        if writer and not (self.run_dir / BEST).exists():  # no validation ran: last is the
            self._save(trainer, module, BEST, None)  # best we have


class StopReport(Callback):
    """Say in one line why a run ended before ``max_steps`` (early stopping, epoch limit)."""

    def __init__(self, early: EarlyStopping, checkpoints: MusplitCheckpoints,
                 max_steps: int | None, max_epochs: int | None):
        self.early, self.checkpoints = early, checkpoints
        self.max_steps, self.max_epochs = max_steps, max_epochs
        self.message: str | None = None

    def on_train_end(self, trainer, module):
        step = int(trainer.global_step)
        if not trainer.is_global_zero or self.max_steps is None or step >= self.max_steps:
            return
        best = self.checkpoints.best
        best_txt = f"best val_psnr {best:.2f} dB" if math.isfinite(best) else "no finite val_psnr"
        if self.early.stopped_epoch > 0 or self.early.wait_count >= self.early.patience:
            why = (f"val_psnr did not improve for {self.early.patience} validations "
                   f"({best_txt}); raise train.early_stopping_patience to train longer")
        elif self.max_epochs is not None and trainer.current_epoch >= self.max_epochs:
            why = f"the epoch limit was reached (max_epochs={self.max_epochs}, {best_txt})"
        else:
            why = f"the trainer stopped ({best_txt})"
        self.message = f"training stopped early at step {step} of {self.max_steps}: {why}"
        log.warning("%s", self.message)


class _TrainShard(DistributedSampler):
    """One process's share of the training samples of a data-parallel run: torch's
    DistributedSampler (one seeded permutation per epoch, cut into one slice per process, the
    last padded so that every process runs the same number of steps). Each epoch it also
    restarts the dataset's patch stream, keyed by ``(seed, epoch, rank)``
    (:meth:`TrainPatches.set_epoch <musplit.data.patches.TrainPatches.set_epoch>`)."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)


class _ValShard(DistributedSampler):
    """One process's share of the validation grid: patches ``rank, rank + W, ...`` in order,
    then index -1 (padding, counted nowhere) up to the length of the longest share, so that
    every process runs the same number of batches (DDP synchronises the BatchNorm statistics
    at each forward) and every patch is counted exactly once."""

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self):
        own = list(range(self.rank, len(self.dataset), self.num_replicas))
        return iter(own + [-1] * (self.num_samples - len(own)))


class _Padded(Dataset):
    """A validation dataset that also takes index -1 (:class:`_ValShard`'s padding): batches
    ``(inputs, targets, real)``, ``real`` (B,) bool False for the padding entries."""

    def __init__(self, dataset: GridPatches):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        real = idx >= 0
        x, y = self.dataset.__getitems__(np.where(real, idx, 0))
        return x, y, torch.from_numpy(real)


class PatchData(L.LightningDataModule):
    """The loaders of a run, made once the trainer knows its processes.

    One process: random training patches and the whole validation grid. A data-parallel run
    of ``W`` processes: process ``r`` trains on its slice of a seeded permutation of the
    samples (:class:`_TrainShard`) with its own patch stream, keyed by ``(seed, epoch, r)``
    (:meth:`TrainPatches.set_rank <musplit.data.patches.TrainPatches.set_rank>`), so that the
    processes draw distinct patches, reproducibly from the seed; and it validates every
    ``W``-th patch of the grid (:class:`_ValShard`), the sums of all processes being reduced
    before ``val_psnr`` is computed (:meth:`SplitModule.on_validation_epoch_end`).
    ``batch_size`` is per process: a step averages the gradients of ``W * batch_size``
    patches.
    """

    def __init__(self, train_ds: TrainPatches, val_ds: GridPatches, *, batch_size: int,
                 val_batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.train_ds, self.val_ds = train_ds, val_ds
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.seed = num_workers, seed

    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (1, 0) if t is None else (int(t.world_size), int(t.global_rank))

    def train_dataloader(self):
        world, rank = self._world()
        if world == 1:
            return make_loader(self.train_ds, self.batch_size, num_workers=self.num_workers,
                               seed=self.seed)
        self.train_ds.set_rank(rank, world)
        sampler = _TrainShard(self.train_ds, num_replicas=world, rank=rank, shuffle=True,
                              seed=self.seed)
        return make_loader(self.train_ds, self.batch_size, shuffle=False, sampler=sampler,
                           num_workers=self.num_workers, seed=self.seed)

    def val_dataloader(self):
        world, rank = self._world()
        if world == 1:
            return make_loader(self.val_ds, self.val_batch_size, num_workers=self.num_workers)
        return make_loader(_Padded(self.val_ds), self.val_batch_size, shuffle=False,
                           sampler=_ValShard(self.val_ds, world, rank),
                           num_workers=self.num_workers)


def _quiet_lightning() -> None:
    """Hide Lightning messages that are expected in musplit runs and would only confuse."""
    for pattern in (
        r".*dataloader is not resumable.*",
        r".*`training_step` returned `None`.*",  # our non-finite guard, counted and logged
        r".*Experiment logs directory.*exists and is not empty.*",
        r".*ReduceLROnPlateau conditioned on metric.*",  # before the first validation
        r".*isinstance\(treespec, LeafSpec\).*",
        r".*does not have many workers.*",
        r".*Early stopping conditioned on metric.*",  # a validation with no computable channel
        # The validation sums are reduced over the processes before the metrics are
        # computed (SplitModule._reduced): every process logs the same values.
        r".*when logging on epoch level in distributed setting.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch",
                 "lightning.fabric", "lightning.pytorch.trainer.connectors.checkpoint_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _seed_everything(seed: int) -> None:
    L.seed_everything(seed, workers=True, verbose=False)


def prepare_data(config: Config, run_dir: Path | None = None):
    """Load targets, split and statistics for a config; save the split into ``run_dir``."""
    data = load_targets(config.data)
    if not data.split.has_val:
        raise ConfigError(f"{data.source}: the split holds out nothing for validation "
                          f"({len(data.shapes)} frames); use data.split 'default' or 'spatial'")
    d = config.data
    # A range-trained run assumes the midpoints of its ranges (musplit.data.mixing): they mix
    # the validation input and whatever prediction mixes with the training weights.
    alpha = assumed_weights(d.alpha, d.alpha_range, d.alpha_ranges)
    stats = compute_stats(data.targets, data.split.train, quantile=d.clip_quantile,
                          alpha=alpha, channelwise_quantile=d.channelwise_quantile,
                          input_is_sum=d.input_is_sum, exclude=data.split.held_out)
    if run_dir is not None:
        save_split(data.split, Path(run_dir) / "split.json")
    return data, stats


def make_datasets(config: Config, data, stats: NormStats):
    """Training patches and the validation grid for a config."""
    d = config.data
    common = dict(patch=d.patch, scales=d.scales, pad=d.pad, alignment=d.lc_alignment)
    split = data.split
    train_ds = TrainPatches(data.targets, stats, split.train, augment=d.augment,
                            alpha_range=d.alpha_range, alpha_ranges=d.alpha_ranges,
                            seed=config.train.seed,
                            exclude=split.held_out, **common)
    if split.val_regions:
        val_ds = GridPatches(data.targets, stats, split.val, regions=split.val_regions, **common)
    else:
        val_ds = GridPatches(data.targets, stats, split.val, **common)
    return train_ds, val_ds


def _set_aside_interrupted_rows(run_dir: Path, state: dict) -> None:
    """Rows the interrupted run logged after its last ``resume.ckpt`` are trained again: move
    them out of ``logs/metrics.csv`` (into a file beside it), saying so."""
    rows = logged_rows(state)
    if rows is None:
        return
    step = int(state.get("global_step", 0))
    moved = set_aside_rows_after(run_dir, rows, step)
    if moved is not None:
        log.warning("logs/metrics.csv: the rows the interrupted run logged after step %d (its "
                    "last resume.ckpt) are trained again; they were moved to %s", step, moved)


def _where(config: Config, **given) -> Config:
    """``config`` with the ``accelerator``, ``devices``, ``strategy`` and ``num_nodes`` given to
    :func:`train` (None: the config's own)."""
    over = {k: v for k, v in given.items() if v is not None}
    return config.updated({"train": over}) if over else config


#: Lightning's precision names as the run log spells them.
_PRECISION_WORDS = {"32": "fp32", "bf16-mixed": "bf16 autocast", "16-mixed": "fp16 autocast"}


def training_precision(tc) -> tuple[str, str]:
    """The precision a run trains in and the run log's note on why: ``(lightning, note)``.

    ``auto`` is bf16 autocast on hardware with bf16 arithmetic (a CPU with AVX512-BF16 or AMX,
    a CUDA GPU from Ampere on; measured to reach the fp32 validation PSNR at the same steps,
    docs/performance.md) and fp32 elsewhere. An explicit ``bf16-mixed`` on a CPU without bf16
    instructions, where PyTorch emulates it several times slower than fp32, falls back to fp32
    with a note, unless ``MUSPLIT_EMULATED_BF16=1`` (for accuracy comparisons).
    """
    gpu = tc.accelerator in ("gpu", "cuda") or (tc.accelerator == "auto"
                                                 and torch.cuda.is_available())
    device, where = ("cuda", "this GPU") if gpu else ("cpu", "this CPU")
    lacks = ("has no bf16 arithmetic (before Ampere)" if gpu else
             "has no bf16 instructions (AVX512-BF16 or AMX)")
    if tc.precision == "auto":
        if fast_precision("bf16", device):
            return "bf16-mixed", f"bf16 autocast (auto: {where} has bf16 arithmetic)"
        return "32", f"fp32 (auto: {where} {lacks})"
    if tc.precision == "bf16-mixed" and not fast_precision("bf16", device) and \
            os.environ.get("MUSPLIT_EMULATED_BF16", "").strip() not in ("1", "yes", "true"):
        return "32", (f"fp32: bf16 was asked for, but {where} {lacks}, where it is emulated "
                      "several times slower (MUSPLIT_EMULATED_BF16=1 keeps bf16)")
    return tc.precision, f"{_PRECISION_WORDS[tc.precision]} (train.precision)"


def _trainer(tc, **kwargs) -> L.Trainer:
    """Lightning's Trainer; a device setting it refuses is one line naming the settings."""
    try:
        return L.Trainer(accelerator=tc.accelerator, devices=tc.devices, strategy=tc.strategy,
                         num_nodes=tc.num_nodes, **kwargs)
    except (MisconfigurationException, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"train.accelerator {tc.accelerator!r}, devices {tc.devices!r}, strategy "
            f"{tc.strategy!r}, num_nodes {tc.num_nodes} (--accelerator, --devices, --strategy, "
            f"--num-nodes): {first}") from None


def unused_weights_error(error: BaseException, strategy: str) -> ConfigError | None:
    """The one-line error for DDP's refusal of weights that take no part in the loss (the
    HAE's priors, for one: it has no KL), or None for any other error."""
    if not (isinstance(error, RuntimeError) and "find_unused_parameters" in str(error)):
        return None
    return ConfigError(
        f"train.strategy {strategy!r}: some of the model's weights take no part in the loss "
        "(the HAE's priors, a lateral-context branch beyond model.scales), which DDP refuses; "
        "use --strategy ddp_find_unused_parameters_true")


def train(config: Config, out_dir: str | os.PathLike | None = None, *, resume: bool = False,
          devices: int | str | None = None, strategy: str | None = None,
          accelerator: str | None = None, num_nodes: int | None = None,
          progress: bool = True, overwrite: bool = False,
          callbacks: list[Callback] | None = None, echo=None, logger: str = "csv") -> Path:
    """Train a model as ``config`` describes; return the path of the best checkpoint.

    Parameters
    ----------
    config : Config
    out_dir : path-like, optional
        The run folder (default ``runs/<config.name>``).
    resume : bool
        Continue a run from ``out_dir/resume.ckpt`` up to ``config.train.max_steps`` /
        ``max_epochs`` (larger ones than the run had train it longer). ``config`` may differ
        from the run's only in the settings :data:`musplit.config.resume.RESUMABLE` lists;
        the file is checked before anything is written, and a run already at its limit is left
        as it is.
    devices, strategy, accelerator, num_nodes
        Where to train, as Lightning's Trainer takes them (default: ``config.train``'s, which
        they replace): e.g. ``devices=4, strategy="ddp"`` for data-parallel training on four
        GPUs, one process each with ``train.batch_size`` patches (docs/training.md, "Several
        GPUs or a SLURM cluster"). In a data-parallel run every process calls this function
        (Lightning's launcher or srun starts them); only global rank 0 writes the run folder
        (:func:`writes_run_folder`).
    overwrite : bool
        Allow training into a folder that already holds checkpoints (without ``resume``).
    progress : bool
        Show progress in steps over the whole run (a bar on a terminal, plain lines in a log
        file); a :class:`~lightning.pytorch.callbacks.ProgressBar` in ``callbacks`` replaces it.
    callbacks : list of lightning Callback, optional
        Extra callbacks.
    echo : callable, optional
        Called with lines the user should see (the data and the split used).
    logger : {"csv", "tensorboard"}
        ``logs/metrics.csv`` is always written; ``"tensorboard"`` adds a TensorBoard log in
        ``logs/tensorboard`` (needs the tensorboard package).
    """
    config = _where(config, accelerator=accelerator, devices=devices, strategy=strategy,
                    num_nodes=num_nodes)
    tc = config.train
    if tc.max_steps is None and tc.max_epochs is None:
        raise ConfigError("give train.max_steps or train.max_epochs (--max-steps/--max-epochs)")
    check_logger(logger)
    run_dir = Path(out_dir or Path("runs") / config.name)
    # The other processes of a data-parallel run read the run folder, never write it: rank 0
    # checks it, and its writes may be under way while they start.
    writer = writes_run_folder()
    if not writer:
        echo = None
    resume_path = run_dir / RESUME
    state = None
    if resume:
        if not resume_path.is_file():
            raise MusplitError(f"nothing to resume: {resume_path} does not exist")
        state = open_resume(resume_path)  # before anything in the run folder is written
        check_resume(state, config, resume_path)
        done = nothing_left(state, config, run_dir)
        if done is not None:
            log.warning("%s", done)
            return run_dir / BEST
    elif writer and (run_dir / LAST).exists() and not overwrite:
        raise MusplitError(f"{run_dir} already holds a trained model: choose another --out, "
                           "or --resume to continue it")
    noise = None
    if tc.loss in NOISE_MODEL_LOSSES:  # read (or, resuming, restored) before anything is written
        stored = state["musplit"].get("noise_models") if state is not None else None
        noise = training_noise_models(tc.noise_models, config.model.out_channels, stored=stored)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.to_yaml(run_dir / "config.yaml")
    _quiet_lightning()
    _seed_everything(tc.seed)
    threads = apply_threads()
    precision, precision_note = training_precision(tc)
    runtime_line = f"runtime: {cpu_settings()}; precision {precision_note}"
    log.info("%s", runtime_line)
    if echo is not None:
        echo(runtime_line)
    t0 = time.time()
    data, stats = prepare_data(config, run_dir if writer else None)
    if noise is not None and len(noise[0]) != stats.n_channels:
        raise InputError(f"{len(noise[0])} noise model(s) (--noise-models) for the "
                         f"{stats.n_channels} target channels of {data.source}: give one "
                         "noise-model file per channel")
    if stats.n_channels != config.model.out_channels:  # a file's channels, counted on reading
        try:
            config = config.with_channels(stats.n_channels)
        except ConfigError as e:
            raise ConfigError(f"{data.source}: {e}") from None
        if writer:
            config.to_yaml(run_dir / "config.yaml")
    if noise is not None:
        check_noise_model_data(noise[0], data.targets, data.split.train,
                               clip_quantile=config.data.clip_quantile)
    train_ds, val_ds = make_datasets(config, data, stats)
    log.info("data ready in %.1f s: %d training patches per epoch, %d validation patches",
             time.time() - t0, len(train_ds), len(val_ds))
    loaders = PatchData(train_ds, val_ds, batch_size=tc.batch_size,
                        val_batch_size=max(tc.batch_size, 64), num_workers=tc.num_workers,
                        seed=tc.seed)

    module = SplitModule(config, stats, noise_models=noise)
    if tc.init_from and not resume:  # resume restores the trained weights instead
        report = load_pretrained_encoder(module.model, tc.init_from)
        if writer:
            write_report(report, run_dir / "init_report.json")
    description = data.split.describe(data.shapes)
    log.info("%s: %s", data.source, description)
    if echo is not None:
        names = ", ".join(data.channel_names) if data.channel_names else ""
        echo(f"data: {data.source}; {stats.n_channels} structures to split"
             + (f" ({names})" if names else "") + f"; {description}")
    extra = {"split": data.split.to_dict(), "split_description": description,
             "channel_names": data.channel_names, "data_source": data.source,
             "precision": precision, "runtime": runtime_line, "threads": threads}
    if noise is not None:  # self-contained checkpoints (docs/microsplit.md, "Training with noise
        # models")
        extra["noise_models"] = noise[1]
    loggers = make_loggers(run_dir, logger)
    checkpoints = MusplitCheckpoints(run_dir, extra, csv_log=loggers[0])
    # check_finite=False: a non-finite metric never stops a run (skipped channels are left out
    # of val_psnr; a validation with no computable channel logs none); strict=False: a
    # validation without val_psnr is not an error.
    early = EarlyStopping(monitor="val_psnr", mode="max", patience=tc.early_stopping_patience,
                          min_delta=1e-6, check_on_train_epoch_end=False, check_finite=False,
                          strict=False)
    callbacks = [checkpoints, early, StopReport(early, checkpoints, tc.max_steps, tc.max_epochs),
                 *(callbacks or [])]
    if progress and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(StepProgress())
    every = tc.val_every_steps
    processes = (tc.devices if isinstance(tc.devices, int) and tc.devices > 0 else 1) * \
        tc.num_nodes
    steps_per_epoch = math.ceil(len(train_ds) / (tc.batch_size * processes))
    # Validation every N steps (across epochs) when asked, otherwise once per epoch.
    val_kwargs = {"val_check_interval": every, "check_val_every_n_epoch": None} if every else {}
    trainer = _trainer(
        tc,
        precision=precision,
        max_steps=tc.max_steps if tc.max_steps is not None else -1,
        max_epochs=tc.max_epochs if tc.max_epochs is not None else -1,
        gradient_clip_val=tc.grad_clip_norm, gradient_clip_algorithm="norm",
        callbacks=callbacks,
        logger=loggers,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, every or steps_per_epoch)),
        default_root_dir=run_dir,
        **val_kwargs,
    )
    if state is not None and writer:
        _set_aside_interrupted_rows(run_dir, state)
    try:
        trainer.fit(module, datamodule=loaders, ckpt_path=resume_path if resume else None,
                    weights_only=True)
    except RuntimeError as e:
        refused = unused_weights_error(e, tc.strategy)
        if refused is None:
            raise
        raise refused from None
    best = run_dir / BEST
    log.info("training done in %.1f s; best checkpoint %s", time.time() - t0, best)
    return best
