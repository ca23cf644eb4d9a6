"""The ``ebmflow`` command: LightningCLI with ``fit``, ``validate``, ``test``, ``predict``, ``sample``
and ``encode``.

    ebmflow fit --config conf/rbm.yaml
    ebmflow test --config conf/rbm.yaml --ckpt_path runs/rbm/checkpoints/last.ckpt
    ebmflow sample --config conf/rbm.yaml --ckpt_path ... --num_samples 64 --out samples/
    ebmflow encode --config conf/rbm.yaml --ckpt_path ... --out codes.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from torchvision.utils import save_image

from ebmflow import report
from ebmflow.checkpoints import CheckpointError, read_checkpoint
from ebmflow.data import ImageDataModule
from ebmflow.loggers import CSVLogger
from ebmflow.module import EBMFlow
from priors import DiscretePrior, discover_priors

__all__ = ["EBMFlowCLI", "EBMFlowTrainer", "main", "make_cli"]


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
        out: str = "samples",
    ) -> Path:
        """Draw images from a trained model: a PNG grid, an .npz of uint8 images and, for discrete priors,
        the paper's Fig. 3 grid (each column shares one discrete sample s).

        Args:
            ckpt_path: checkpoint to load.
            num_samples: number of images.
            temperature: scale of the prior's Gaussian noise.
            columns: columns of the grids (Fig. 3 uses num_samples // columns rows).
            out: output folder.
        """
        model = _load_for_inference(model, ckpt_path, self.strategy.root_device)
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        images = torch.cat([model.sample(len(c), temperature) for c in torch.arange(num_samples).split(256)])
        np.savez_compressed(folder / "samples.npz", images=images.cpu().numpy())
        save_image(images.float() / 255, folder / "samples.png", nrow=columns)
        written = [folder / "samples.png", folder / "samples.npz"]
        if isinstance(model.prior, DiscretePrior):
            grid = model.sample_columns(columns, max(num_samples // columns, 1), temperature)
            save_image(grid.flatten(0, 1).float() / 255, folder / "discrete_columns.png", nrow=columns)
            written.append(folder / "discrete_columns.png")
        print("wrote " + ", ".join(str(p) for p in written))
        return folder

    def encode(
        self,
        model: EBMFlow,
        ckpt_path: str,
        datamodule: ImageDataModule,
        split: str = "test",
        out: str = "codes.npz",
    ) -> Path:
        """Exact discrete codes of every image of a split: p(s_i = +1 | z), the most likely s, the labels.

        Args:
            ckpt_path: checkpoint to load.
            split: "train", "val" or "test".
            out: the .npz file to write (arrays: probabilities, codes, labels), or a folder to write
                codes.npz into; ".npz" is added to a name without it.
        """
        model = _load_for_inference(model, ckpt_path, self.strategy.root_device)
        loader = torch.utils.data.DataLoader(datamodule.split(split), batch_size=256)
        probabilities, labels = [], []
        for images, targets in loader:
            probabilities.append(model.encode(images.to(model.device)).cpu())
            labels.append(targets)
        p = torch.cat(probabilities)
        path = Path(out)
        if path.is_dir() or out.endswith(("/", "\\")):
            path = path / "codes.npz"  # a folder: the default file name inside it
        elif path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")  # what np.savez would write
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            probabilities=p.numpy().astype(np.float32),
            codes=np.where(p.numpy() > 0.5, 1, -1).astype(np.int8),
            labels=torch.cat(labels).numpy(),
        )
        print(f"wrote {path}: {len(p)} codes of {p.shape[1]} spins")
        return path


def _load_for_inference(model: EBMFlow, ckpt_path: str, device: torch.device) -> EBMFlow:
    checkpoint = read_checkpoint(ckpt_path)
    model.on_load_checkpoint(checkpoint)
    missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt_path} does not match this config (missing {missing[:5]}, unexpected {unexpected[:5]}): "
            "pass the --config the checkpoint was trained with"
        )
    return model.to(device).eval()


class LoggedConfig(SaveConfigCallback):
    """Writes config.yaml into the run directory, as LightningCLI does, and also hands the whole config
    to the run's logger (W&B shows it beside the metrics, so an ablation's runs can be compared)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.logger is not None:
            config = self.parser.dump(self.config, skip_none=False, format="yaml")
            trainer.logger.log_hyperparams({"config": yaml.safe_load(config)})


class EBMFlowCLI(LightningCLI):
    """LightningCLI for EBMFlow: any ImageDataModule, priors by short name (entry points included)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            **LightningCLI.subcommands(),
            "sample": {"model", "datamodule"},
            "encode": {"model", "datamodule"},
        }

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint here first (for its hyperparameters): check it before that.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is not None and path not in ("last", "best", "hpc", "registry"):
            read_checkpoint(path)
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        # The configs' CSV logger continues metrics.csv (so test and resume add to it); a fresh fit
        # must not add a second run's rows to an earlier run's log.
        logger = self.trainer.logger
        if isinstance(logger, CSVLogger) and self.config.fit.get("ckpt_path") is None:
            metrics = Path(logger.log_dir) / "metrics.csv"
            if metrics.is_file():
                raise FileExistsError(
                    f"{metrics} holds an earlier run's log. Resume that run with --ckpt_path "
                    "<its checkpoints>/last.ckpt, or start this one elsewhere (--trainer.default_root_dir "
                    "and --trainer.logger.init_args.save_dir), or remove the old run directory."
                )


DESCRIPTION = (
    "Flow++ with energy-based priors (RBM-Flow, D-Flow). "
    "Tables and curves of finished runs: ebmflow report RUN_DIR [RUN_DIR ...] --out DIR"
)


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["report"]:
        report.main(argv[1:])
        return
    # Sharp mixture components drive exp() into the subnormal range, where CPU arithmetic is up to
    # ~40x slower; flushing subnormals to zero changes nothing at the precision the flow works in.
    torch.set_flush_denormal(True)
    try:
        make_cli(args)
    except CheckpointError as error:
        sys.exit(f"error: {error}")


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
        parser_kwargs={"description": DESCRIPTION},
        args=args,
        run=run,
    )
