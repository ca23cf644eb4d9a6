"""The paper's four configs build, and their parameter counts match within 0.1 % (Table 2)."""

from pathlib import Path

import pytest

from ebmflow.cli import EBMFlowCLI, EBMFlowTrainer
from ebmflow.data import ImageDataModule
from ebmflow.module import EBMFlow
from flows import count_parameters

CONF = Path(__file__).resolve().parents[2] / "conf"
PRIORS = ("gaussian", "bernoulli", "multicov", "rbm")


def build(*paths: Path) -> EBMFlowCLI:
    args = [arg for path in paths for arg in ("--config", str(path))]
    return EBMFlowCLI(
        EBMFlow, ImageDataModule, trainer_class=EBMFlowTrainer, subclass_mode_data=True, run=False, args=args
    )


@pytest.mark.parametrize("folder", [CONF, CONF / "fashion_mnist"])
def test_ablation_parameter_counts_match(folder: Path) -> None:
    counts = {name: count_parameters(build(folder / f"{name}.yaml").model) for name in PRIORS}
    reference = counts["gaussian"]
    for name, count in counts.items():
        assert abs(count - reference) / reference < 1e-3, (name, counts)
    assert counts["rbm"] != counts["gaussian"]  # the flows really differ in size


def test_demo_config_builds() -> None:
    assert build(CONF / "demo.yaml").model.prior.log_partition_is_exact


def test_cpu_variant_composes_after_each_prior() -> None:
    for name in PRIORS:
        cli = build(CONF / "fashion_mnist" / f"{name}.yaml", CONF / "fashion_mnist" / "cpu_small.yaml")
        assert cli.model.flow.in_shape == (1, 28, 28) and cli.model.prior.dim == 784
        assert type(cli.model.prior).__name__.lower().startswith(name)
        assert count_parameters(cli.model.flow) < 1_000_000
        kinds = {type(c).__name__ for c in cli.trainer.callbacks}
        assert {"SampleQuality", "CodeNMI", "LogPartitionEstimate", "SampleGrids"} <= kinds
