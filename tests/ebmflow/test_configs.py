"""The paper's four configs build, and their parameter counts match within 0.1 % (Table 2)."""

from pathlib import Path

import pytest

from ebmflow.cli import EBMFlowCLI, EBMFlowTrainer
from ebmflow.data import ImageDataModule
from ebmflow.module import EBMFlow
from flows import count_parameters

CONF = Path(__file__).resolve().parents[2] / "conf"
PRIORS = ("gaussian", "bernoulli", "multicov", "rbm")


def build(path: Path) -> EBMFlow:
    cli = EBMFlowCLI(
        EBMFlow,
        ImageDataModule,
        trainer_class=EBMFlowTrainer,
        subclass_mode_data=True,
        run=False,
        args=["--config", str(path)],
    )
    return cli.model


@pytest.mark.parametrize("folder", [CONF, CONF / "fashion_mnist"])
def test_ablation_parameter_counts_match(folder: Path) -> None:
    counts = {name: count_parameters(build(folder / f"{name}.yaml")) for name in PRIORS}
    reference = counts["gaussian"]
    for name, count in counts.items():
        assert abs(count - reference) / reference < 1e-3, (name, counts)
    assert counts["rbm"] != counts["gaussian"]  # the flows really differ in size


def test_demo_config_builds() -> None:
    model = build(CONF / "demo.yaml")
    assert model.prior.log_partition_is_exact
