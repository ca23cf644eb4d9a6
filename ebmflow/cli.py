"""The ``ebmflow`` command's Lightning side (ebmflow/command.py dispatches to it): LightningCLI with
``fit``, ``validate``, ``test``, ``predict``, ``sample`` and ``encode``.

    ebmflow fit --config conf/cifar10.yaml --config conf/cifar10/rbm.yaml
    ebmflow test ... --ckpt_path runs/cifar10/rbm/checkpoints/last.ckpt
    ebmflow sample ... --ckpt_path ... --num_samples 64 --out samples/
    ebmflow encode ... --ckpt_path ... --out codes.npz
"""

from __future__ import annotations

import math
import os
import sys
import zipfile
from argparse import ArgumentError
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from tqdm import tqdm

from ebmflow.checkpoints import check_compatible, read_checkpoint
from ebmflow.data import ImageDataModule
from ebmflow.lightning_seams import SPECIAL_CKPT_PATHS, IgnoreCheckpointHyperparameters
from ebmflow.loggers import CSVLogger
from ebmflow.module import EBMFlow, NonFiniteLossError
from ebmflow.prediction import PredictionWriter
from ebmflow.rundir import (
    AtomicCheckpointIO,
    RunDirectoryBusy,
    RunLock,
    atomic_save_image,
    atomic_write,
    refuse_existing,
    unused_name,
)
from priors import DiscretePrior, discover_priors

__all__ = ["EBMFlowCLI", "EBMFlowTrainer", "make_cli", "run"]


class EBMFlowTrainer(L.Trainer):
    """Lightning's Trainer plus the two commands that only read a trained model."""

    def sample(
        self,
        model: EBMFlow,
        ckpt_path: str,
        datamodule: ImageDataModule | None = None,
        num_samples: int = 64,
        temperature: float = 1.0,
        columns: int = 8,
        batch_size: int = 256,
        out: str = "samples",
    ) -> Path:
        """Draw images from a trained model: every image into an .npz (uint8, written batch by batch:
        memory stays flat in ``num_samples``), a near-square PNG grid of the first ones and, for
        discrete priors, the paper's Fig. 3 grid (each column shares one discrete sample s). The flow
        runs in ``--trainer.precision`` (bf16-mixed: faster, images within a few levels of fp32's).

        Args:
            ckpt_path: checkpoint to load.
            num_samples: number of images.
            temperature: scale of the prior's Gaussian noise.
            columns: columns of the Fig. 3 grid (as many rows, at most ``num_samples // columns``).
            batch_size: images drawn at once.
            out: output folder (refused when it already holds these files: nothing is replaced).
        """
        if num_samples < 1 or columns < 1 or batch_size < 1:
            raise ValueError(
                f"--num_samples, --columns and --batch_size must be >= 1, got {num_samples}, {columns}, "
                f"{batch_size}"
            )
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"--out {folder} is a file: give sample a folder to write into")
        refuse_existing([folder / name for name in SAMPLE_FILES], "--out")
        model = _load_for_inference(model, ckpt_path, self.strategy.root_device)
        shape = (num_samples, *model.flow.in_shape)
        # --trainer.precision applies to the flow as in training (bf16-mixed: the conditioners in bf16);
        # the prior's sampler always runs in full precision.
        precision = self.precision_plugin.forward_context

        def draw(n: int) -> torch.Tensor:
            with precision():
                return model.sample(n, temperature).cpu()

        batches = (draw(n) for n in _chunks(num_samples, batch_size))
        with tqdm(total=num_samples, desc="sampling", unit="img") as bar:
            shown = write_npz(
                folder / "samples.npz", "images", shape, np.uint8, batches, bar.update, GRID_MAX
            )
        atomic_save_image(shown.float() / 255, folder / "samples.png", nrow=math.ceil(math.sqrt(len(shown))))
        written = [folder / "samples.png", folder / "samples.npz"]
        if isinstance(model.prior, DiscretePrior):
            rows = max(min(num_samples // columns, columns), 1)
            with precision():
                grid = model.sample_columns(columns, rows, temperature)
            atomic_save_image(grid.flatten(0, 1).float() / 255, folder / "discrete_columns.png", nrow=columns)
            written.append(folder / "discrete_columns.png")
        print("wrote " + ", ".join(str(p) for p in written))
        return folder

    def encode(
        self,
        model: EBMFlow,
        ckpt_path: str,
        datamodule: ImageDataModule,
        split: Literal["train", "val", "test"] = "test",
        out: str = "codes.npz",
    ) -> Path:
        """Exact discrete codes of every image of a split: p(s_i = +1 | z), the most likely s, the labels.

        Args:
            ckpt_path: checkpoint to load.
            split: "train", "val" or "test".
            out: the .npz file to write (arrays: probabilities, codes, labels), or a folder to write
                codes.npz into; ".npz" is added to a name without it. A file that exists is refused.
        """
        path = Path(out)
        if path.is_dir() or out.endswith(("/", "\\")):
            path = path / "codes.npz"  # a folder: the default file name inside it
        elif path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")  # what np.savez would write
        refuse_existing([path], "--out")
        model = _load_for_inference(model, ckpt_path, self.strategy.root_device)
        loader = torch.utils.data.DataLoader(datamodule.split(split), batch_size=256)
        probabilities, labels = [], []
        for images, targets in tqdm(loader, desc=f"encoding {split}", unit="batch"):
            probabilities.append(model.encode(images.to(model.device)).cpu())
            labels.append(targets)
        p = torch.cat(probabilities)
        arrays = {
            "probabilities": p.numpy().astype(np.float32),
            "codes": np.where(p.numpy() > 0.5, 1, -1).astype(np.int8),
            "labels": torch.cat(labels).numpy(),
        }
        atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))
        print(f"wrote {path}: {len(p)} codes of {p.shape[1]} spins")
        return path


GRID_MAX = 256  # images in samples.png (all of them go to samples.npz)
SAMPLE_FILES = ("samples.npz", "samples.png", "discrete_columns.png")  # what `ebmflow sample` writes


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def write_npz(path: Path, name: str, shape: tuple[int, ...], dtype, batches, progress, keep: int) -> Tensor:
    """Stream ``batches`` (tensors along the first axis of ``shape``) into the array ``name`` of a
    compressed .npz, written atomically; returns the first ``keep`` rows. Memory: one batch."""
    kept = []

    def write(handle) -> None:
        with (
            zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive,
            archive.open(f"{name}.npy", "w", force_zip64=True) as member,
        ):
            header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_2_0(member, header)
            done = 0
            for batch in batches:
                member.write(np.ascontiguousarray(batch.numpy(), dtype=dtype).tobytes())
                if done < keep:
                    kept.append(batch[: keep - done])
                done += len(batch)
                progress(len(batch))

    atomic_write(path, write)
    return torch.cat(kept)


def _load_for_inference(model: EBMFlow, ckpt_path: str, device: torch.device) -> EBMFlow:
    checkpoint = read_checkpoint(ckpt_path)
    check_compatible(checkpoint, model, ckpt_path)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()


class LoggedConfig(SaveConfigCallback):
    """Writes the command's config into the run directory and hands it to the run's loggers (W&B shows
    it beside the metrics). The first ``fit`` writes ``config.yaml``; every later command writes its own
    ``config.<command>.yaml`` (``-2``, ``-3``… when that exists), so the training config is never
    replaced."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        folder = Path(trainer.log_dir)  # called on every rank: it broadcasts
        if trainer.is_global_zero:
            command = TrainerFn(stage).value
            path = folder / "config.yaml"
            if command != "fit" or path.exists():
                path = unused_name(folder, f"config.{command}", ".yaml")
            text = self.parser.dump(self.config, skip_none=False, format="yaml")
            atomic_write(path, lambda handle: handle.write(text.encode()))
            for logger in trainer.loggers:
                logger.log_hyperparams({"config": yaml.safe_load(text)})
        self.already_saved = True


def _data_shape(data: ImageDataModule) -> list[int]:
    return list(data.shape)


def _data_dim(data: ImageDataModule) -> int:
    return math.prod(data.shape)


def csv_loggers(trainer: L.Trainer) -> list[CSVLogger]:
    """The run's CSV logs, wherever they stand among its loggers (W&B and CSV together, in any order)."""
    return [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]


class EBMFlowCLI(IgnoreCheckpointHyperparameters):
    """LightningCLI for EBMFlow: any ImageDataModule, priors by short name (entry points included), one
    run directory per run (``--trainer.default_root_dir``: the logger's ``save_dir`` and the checkpoints
    follow it), owned by one command at a time, checked before anything is written into it."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            **LightningCLI.subcommands(),
            "sample": {"model", "datamodule"},
            "encode": {"model", "datamodule"},
        }

    def add_arguments_to_parser(self, parser) -> None:
        # The data decide the shapes: the flow's in_shape and the prior's dim follow --data (a config
        # names the dataset once). The variational dequantizer's in_shape stays explicit (it may be null).
        parser.link_arguments("data", "model.flow.init_args.in_shape", _data_shape, apply_on="instantiate")
        parser.link_arguments("data", "model.prior.init_args.dim", _data_dim, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer")
        root = trainer.get("default_root_dir") if trainer is not None else None
        loggers = trainer.get("logger") if trainer is not None else None
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if root is not None and init_args is not None and init_args.get("save_dir", "") is None:
                init_args["save_dir"] = root  # one place names the run

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = config.get("trainer", {}).get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    def _own_run_directory(self, ckpt_path: str | None) -> None:
        """Lock the run directory (rank 0; the lock dies with the process; the CSV log's too, if a first
        logger of another kind logs elsewhere), then check the checkpoint against the model, before the
        command writes anything. A run directory whose CSV log exists
        takes its own checkpoints only: another run's would add its numbers (or, resumed, its training)
        to this run's log, and `ebmflow report` would show them as this run's."""
        special = ckpt_path is None or ckpt_path in SPECIAL_CKPT_PATHS
        if not special:
            checkpoint = os.path.realpath(ckpt_path)
            for logger in csv_loggers(self.trainer):
                run_dir = os.path.realpath(logger.save_dir)
                if logger.metrics_file.is_file() and not checkpoint.startswith(run_dir + os.sep):
                    raise ValueError(
                        f"checkpoint {ckpt_path} is not one of {run_dir}'s, whose metrics.csv holds that "
                        "run's log: give --trainer.default_root_dir the checkpoint's run directory, or a "
                        "new one"
                    )
        if rank_zero_only.rank == 0:
            # the log directory and every CSV log's, where a first logger of another kind puts them apart
            folders = [self.trainer.log_dir, *(logger.save_dir for logger in csv_loggers(self.trainer))]
            self.run_locks = []
            try:
                for folder in dict.fromkeys(os.path.realpath(folder) for folder in folders):
                    self.run_locks.append(RunLock.acquire(folder))
            except RunDirectoryBusy:
                self._release_run_directory()
                raise
        if not special:
            check_compatible(read_checkpoint(ckpt_path), self.model, ckpt_path)

    def _release_run_directory(self) -> None:
        for lock in getattr(self, "run_locks", []):
            lock.release()
        self.run_locks = []

    def before_fit(self) -> None:
        self._own_run_directory(self.config.fit.get("ckpt_path"))
        # The configs' CSV logger continues metrics.csv (so test and resume add to it); a fresh fit
        # must not add a second run's rows to an earlier run's log.
        if self.config.fit.get("ckpt_path") is not None:
            return
        for logger in csv_loggers(self.trainer):
            if logger.metrics_file.is_file():
                raise FileExistsError(
                    f"{logger.metrics_file} holds an earlier run's log. Resume that run with --ckpt_path "
                    "<its checkpoints>/last.ckpt, or start this one elsewhere (--trainer.default_root_dir), "
                    "or move the old run directory away."
                )

    def before_validate(self) -> None:
        self._own_run_directory(self.config.validate.get("ckpt_path"))

    def before_test(self) -> None:
        self._own_run_directory(self.config.test.get("ckpt_path"))

    def before_predict(self) -> None:
        self._own_run_directory(self.config.predict.get("ckpt_path"))
        if not any(isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())  # <run>/predictions.npz

    def after_predict(self) -> None:
        self._release_run_directory()

    def after_fit(self) -> None:
        self._release_run_directory()

    def after_validate(self) -> None:
        self._release_run_directory()

    def after_test(self) -> None:
        self._release_run_directory()


# Expected user mistakes (a bad value, a missing or damaged file, a busy run directory): one "error:"
# line and exit status 2, as the parser's own errors; --debug or EBMFLOW_DEBUG=1 shows the traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, RunDirectoryBusy)

DESCRIPTION = (
    "Flow++ with energy-based priors (RBM-Flow, D-Flow). "
    "Tables and curves of finished runs: ebmflow report RUN_DIR [RUN_DIR ...] --out DIR. "
    "Mistakes end in one error line; --debug (or EBMFLOW_DEBUG=1) shows the traceback."
)


def run(args: list[str] | None = None, debug: bool = False) -> None:
    """Run one subcommand (``args``; None: sys.argv). Expected mistakes end in one "error:" line and
    exit status 2, a diverged run in exit status 1; ``debug`` raises instead, with the traceback."""
    # Sharp mixture components drive exp() into the subnormal range, where CPU arithmetic is up to
    # ~40x slower; flushing subnormals to zero changes nothing at the precision the flow works in.
    # Scoped to the command: a caller's process (a notebook, the tests) gets its own setting back.
    torch.set_flush_denormal(True)
    try:
        make_cli(args)
    except (*USER_ERRORS, ArgumentError, NonFiniteLossError) as error:
        if debug:
            raise
        hint = " (--help lists the options)" if isinstance(error, ArgumentError) else ""
        print(f"error: {' '.join(str(error).split())}{hint}", file=sys.stderr)
        sys.exit(1 if isinstance(error, NonFiniteLossError) else 2)
    finally:
        torch.set_flush_denormal(False)


def make_cli(args: list[str] | None = None, run: bool = True) -> EBMFlowCLI:
    """The ``ebmflow`` command's LightningCLI, with its config saving and prior discovery; ``run=False``
    parses ``args`` and builds the model, data and trainer without running a subcommand."""
    discover_priors()
    return EBMFlowCLI(
        EBMFlow,
        ImageDataModule,
        trainer_class=EBMFlowTrainer,
        subclass_mode_data=True,
        save_config_callback=LoggedConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION, "exit_on_error": False},  # run() prints one line
        args=args,
        run=run,
    )
