"""The paper's four configs (a base per dataset and an overlay per prior) build, their parameter counts
match within 0.1 % (Table 2), every shipped combination prints a config that builds the same run, and
every config that checkpoints leaves the final state in last.ckpt."""

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from ebmflow.callbacks import ChainHealth
from ebmflow.cli import EBMFlowCLI, make_cli
from ebmflow.command import main
from flows import count_parameters
from priors import ParallelTempering

CONF = Path(__file__).resolve().parents[2] / "conf"
PRIORS = ("gaussian", "bernoulli", "multicov", "rbm")


def build(*paths: Path) -> EBMFlowCLI:
    return make_cli([arg for path in paths for arg in ("--config", str(path))], run=False)


DATASETS = ("cifar10", "fashion_mnist")


def paper(dataset: str, prior: str) -> tuple[Path, Path]:
    """A dataset's base config and a prior's overlay, as the README composes them."""
    return CONF / f"{dataset}.yaml", CONF / dataset / f"{prior}.yaml"


@pytest.mark.parametrize("dataset", DATASETS)
def test_ablation_parameter_counts_match(dataset: str) -> None:
    counts = {name: count_parameters(build(*paper(dataset, name)).model) for name in PRIORS}
    reference = counts["gaussian"]
    for name, count in counts.items():
        assert abs(count - reference) / reference < 1e-3, (name, counts)
    assert counts["rbm"] != counts["gaussian"]  # the flows really differ in size


def test_demo_config_builds_and_logs_training_health() -> None:
    cli = build(CONF / "demo.yaml")
    assert cli.model.prior.log_partition_is_exact
    kinds = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"ChainHealth", "SampleQuality"} <= kinds  # health/chain_lag and val/coverage_* in the demo


def test_rbm_configs_train_the_prior_by_sgd_with_many_chains() -> None:
    """The healthy defaults (README, RBM-Flow training health) in the paper and CPU configs."""
    for paths in (
        paper("cifar10", "rbm"),
        (*paper("fashion_mnist", "rbm"), CONF / "fashion_mnist" / "cpu_small.yaml"),
    ):
        model = build(*paths).model
        optimizer = model.configure_optimizers()
        kinds = [type(o).__name__ for o in optimizer.optimizers]
        assert kinds == ["Adam", "SGD"] and optimizer.optimizers[1].param_groups[0]["momentum"] == 0.9
        assert model.prior.sampler.num_chains == 100 and model.prior.sampler.steps == 50


def test_centering_is_one_flag_on_the_rbm_configs_and_off_by_default() -> None:
    paths = (*paper("fashion_mnist", "rbm"), CONF / "fashion_mnist" / "cpu_small.yaml")
    assert build(*paths).model.prior.centering is None
    args = [arg for path in paths for arg in ("--config", str(path))]
    prior = make_cli([*args, "--model.prior.init_args.centering", "0.01"], run=False).model.prior
    assert prior.centering == 0.01 and torch.isnan(prior.offsets).all()


def test_cpu_variant_composes_after_each_prior() -> None:
    for name in PRIORS:
        cli = build(*paper("fashion_mnist", name), CONF / "fashion_mnist" / "cpu_small.yaml")
        assert cli.model.flow.in_shape == (1, 28, 28) and cli.model.prior.dim == 784
        assert type(cli.model.prior).__name__.lower().startswith(name)
        assert count_parameters(cli.model.flow) < 1_000_000
        kinds = [type(c).__name__ for c in cli.trainer.callbacks]
        assert {"SampleQuality", "CodeNMI", "LogPartitionEstimate", "SampleGrids"} <= set(kinds)
        assert kinds.count("ModelCheckpoint") == 2  # the base config's, which cpu_small.yaml adds to


ORDERS = {
    "documented": ("fashion_mnist", "rbm", "rbm_restart", "cpu_small", "prior_averaging"),
    "averaging before cpu_small": ("fashion_mnist", "rbm", "rbm_restart", "prior_averaging", "cpu_small"),
    "averaging first": ("prior_averaging", "fashion_mnist", "rbm", "cpu_small", "rbm_restart"),
}
FILES = {
    "fashion_mnist": CONF / "fashion_mnist.yaml",
    "prior_averaging": CONF / "prior_averaging.yaml",
    **{name: CONF / "fashion_mnist" / f"{name}.yaml" for name in ("rbm", "rbm_restart", "cpu_small")},
}


@pytest.mark.parametrize("order", ORDERS)
def test_the_opt_in_rbm_overlays_compose_in_any_order(order: str) -> None:
    """rbm_restart.yaml and prior_averaging.yaml give the README's averaged-prior runs' setting, wherever
    the callback's file comes (a config whose callback list replaced the earlier ones would drop it)."""
    cli = build(*(FILES[name] for name in ORDERS[order]))
    sgd = cli.model.configure_optimizers().optimizers[1]
    assert sgd.param_groups[0]["lr"] == 0.03 and sgd.param_groups[0]["momentum"] == 0.9
    assert cli.model.prior.sampler.restart == 0.2 and cli.model.prior.sampler.num_chains == 100
    averaging = [c for c in cli.trainer.callbacks if type(c).__name__ == "PriorAveraging"]
    assert len(averaging) == 1 and averaging[0].decay == 0.99
    kinds = [type(c).__name__ for c in cli.trainer.callbacks]
    assert kinds.count("ModelCheckpoint") == 2 and {"SampleQuality", "ChainHealth"} <= set(kinds)


def test_the_tempering_overlay_trains_against_an_adaptive_ladder_and_validates_as_before() -> None:
    """rbm_tempering.yaml (round 13): tempering replaces rbm.yaml's Gibbs sampler in training, with its
    own arguments (5 sweeps, not rbm.yaml's 50), and validation still samples 50 Gibbs sweeps."""
    cli = build(*paper("fashion_mnist", "rbm"), CONF / "fashion_mnist" / "rbm_tempering.yaml")
    sampler, generation = cli.model.prior.sampler, cli.model.prior.generation_sampler
    assert type(sampler).__name__ == "ParallelTempering" and sampler.adaptive
    assert (sampler.steps, sampler.num_chains, len(sampler.betas)) == (5, 100, 20)
    assert type(generation).__name__ == "BlockGibbs" and (generation.steps, generation.restart) == (50, 0)
    sgd = cli.model.configure_optimizers().optimizers[1]
    assert sgd.param_groups[0]["lr"] == 0.003 and sgd.param_groups[0]["momentum"] == 0.9


def test_the_decay_overlay_starts_the_prior_fast_and_ends_it_ten_times_slower_after_3000_steps() -> None:
    """rbm_decay.yaml (round 14) after rbm_tempering.yaml: the prior's SGD starts at 0.03, not
    rbm_tempering's 0.003, and its own schedule brings it to within 0.1 % of 0.003 at step 3,000; the
    flow's Adam keeps its rate."""
    cli = build(
        *paper("fashion_mnist", "rbm"),
        *(CONF / "fashion_mnist" / f"{name}.yaml" for name in ("rbm_tempering", "rbm_decay", "cpu_small")),
    )
    adam, sgd = cli.model.configure_optimizers().optimizers
    assert sgd.param_groups[0]["lr"] == 0.03 and sgd.param_groups[0]["momentum"] == 0.9
    for _ in range(3000):
        sgd.step()  # (no gradients: nothing moves) then the schedule, in training's order
        cli.model.prior_scheduler.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.03 * 0.999233**3000, rel=1e-9)
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.003, rel=1e-3)
    assert adam.param_groups[0]["lr"] == 0.001


def test_the_ladder_samples_overlay_generates_from_the_training_ladder() -> None:
    """rbm_ladder_samples.yaml (round 15) after rbm_tempering.yaml: no separate generation sampler, and
    the training ladder samples 50 sweeps from copies of its chains; its training arguments are kept."""
    cli = build(
        *paper("fashion_mnist", "rbm"),
        *(CONF / "fashion_mnist" / f"{name}.yaml" for name in ("rbm_tempering", "rbm_ladder_samples")),
    )
    prior = cli.model.prior
    assert prior.generation_sampler is None
    assert type(prior.sampler).__name__ == "ParallelTempering" and prior.sampler.adaptive
    assert (prior.sampler.sample_start, prior.sampler.sample_steps) == ("persistent", 50)
    assert (prior.sampler.steps, prior.sampler.num_chains, len(prior.sampler.betas)) == (5, 100, 20)


@pytest.mark.parametrize("before", [(), ("rbm_tempering",), ("rbm_tempering", "rbm_ladder_samples")])
def test_the_equilibrium_samples_overlay_generates_by_fresh_tempering(before: tuple[str, ...]) -> None:
    """rbm_equilibrium_samples.yaml (round 17) after rbm.yaml and its overlays: validation samples by a
    tempering ladder from fair coins, whatever generation setting came before, ChainHealth reads that
    ladder as its reference, and the training sampler is the one those files chose."""
    overlays = (*before, "rbm_equilibrium_samples")
    cli = build(
        *paper("fashion_mnist", "rbm"), *(CONF / "fashion_mnist" / f"{name}.yaml" for name in overlays)
    )
    without = build(
        *paper("fashion_mnist", "rbm"), *(CONF / "fashion_mnist" / f"{name}.yaml" for name in before)
    )
    generation = cli.model.prior.generation_sampler
    assert isinstance(generation, ParallelTempering) and generation.sample_start == "fair_coins"
    assert not generation.adaptive and ChainHealth().reference_for(cli.model.prior) is generation
    # it is ChainHealth's reference now, so no weaker than the default one: as many sweeps, as many
    # replicas or more, over the same range of β
    default = ChainHealth().default_reference
    assert generation.sample_steps >= default.sample_steps and len(generation.betas) >= len(default.betas)
    assert (generation.betas[0], generation.betas[-1]) == (default.betas[0], default.betas[-1])

    def settings(sampler) -> dict:  # its arguments, and its ladder; of the random chains, their shapes
        stored = {k: v for k, v in vars(sampler).items() if not k.startswith("_")}
        buffers = {k: v.tolist() if k == "betas" else v.shape for k, v in sampler.state_dict().items()}
        return {"type": type(sampler)} | stored | buffers

    assert settings(cli.model.prior.sampler) == settings(without.model.prior.sampler)


def test_a_sampler_from_outside_the_project_is_reachable_by_class_path(
    tiny_config: Path, tmp_path: Path
) -> None:
    """The prior's two samplers come from YAML; an external (NumPy, stateless) sampler trains the RBM."""
    overlay = tmp_path / "samplers.yaml"
    overlay.write_text(
        "model:\n  prior:\n    init_args:\n      n_visible: 12\n"
        "      sampler:\n        class_path: tests.priors.external_sampler.EnumerationSampler\n"
        "        init_args: {chains: 32}\n"
        "      generation_sampler:\n        class_path: priors.ParallelTempering\n"
        "        init_args: {steps: 5, chains: 4, replicas: 3}\n"
    )
    cli = build(tiny_config, overlay)
    prior = cli.model.prior
    assert type(prior.sampler).__name__ == "EnumerationSampler" and prior.sampler.chains == 32
    assert prior.generation_sampler.states.shape == (3, 4, 12)
    before = prior.bias.detach().clone()
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 4 and not torch.equal(prior.bias.detach(), before)
    assert cli.model.sample(3).shape == (3, 1, 8, 8)


COMBINATIONS = [
    (CONF / "demo.yaml",),
    *[paper(dataset, name) for dataset in DATASETS for name in PRIORS],
    *[(*paper("fashion_mnist", name), CONF / "fashion_mnist" / "cpu_small.yaml") for name in PRIORS],
    (*paper("cifar10", "rbm"), CONF / "wandb.yaml"),
    (
        *paper("fashion_mnist", "rbm"),
        *(CONF / "fashion_mnist" / f"{name}.yaml" for name in ("rbm_restart", "cpu_small")),
    ),
    (
        *paper("fashion_mnist", "rbm"),
        CONF / "fashion_mnist" / "rbm_restart.yaml",
        CONF / "prior_averaging.yaml",
    ),
    (
        *paper("fashion_mnist", "rbm"),
        *(CONF / "fashion_mnist" / f"{name}.yaml" for name in ("rbm_tempering", "cpu_small")),
        CONF / "prior_averaging.yaml",
    ),
    (
        *paper("fashion_mnist", "rbm"),
        *(CONF / "fashion_mnist" / f"{name}.yaml" for name in ("rbm_tempering", "rbm_decay", "cpu_small")),
        CONF / "prior_averaging.yaml",
    ),
    (
        *paper("fashion_mnist", "rbm"),
        *(
            CONF / "fashion_mnist" / f"{name}.yaml"
            for name in ("rbm_tempering", "rbm_decay", "rbm_ladder_samples", "cpu_small")
        ),
        CONF / "prior_averaging.yaml",
    ),
    (
        *paper("fashion_mnist", "rbm"),
        *(CONF / "fashion_mnist" / f"{name}.yaml" for name in ("rbm_tempering", "rbm_decay", "cpu_small")),
        CONF / "prior_averaging.yaml",
        CONF / "fashion_mnist" / "rbm_equilibrium_samples.yaml",
    ),
]


@pytest.mark.parametrize("paths", COMBINATIONS, ids=lambda ps: "+".join(p.stem for p in ps))
def test_print_config_round_trips(paths: tuple[Path, ...], tmp_path: Path, capsys) -> None:
    """What --print_config prints is a config that builds the same run."""
    flags = [arg for path in paths for arg in ("--config", str(path))]
    with pytest.raises(SystemExit) as printed:
        main(["fit", *flags, "--print_config"])
    assert printed.value.code == 0
    text = capsys.readouterr().out
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit):  # printing what was printed changes nothing
        main(["fit", "--config", str(path), "--print_config"])
    assert capsys.readouterr().out == text
    config = yaml.safe_load(text)
    for argument in ("ckpt_path", "weights_only"):  # fit's own arguments; the rest is the run
        config.pop(argument)
    path.write_text(yaml.safe_dump(config))

    def summary(cli: EBMFlowCLI) -> tuple:
        model, trainer = cli.model, cli.trainer
        built = model.configure_optimizers()
        optimizer = built["optimizer"] if isinstance(built, dict) else built
        return (
            repr(optimizer),
            [(group["lr"], group.get("momentum")) for group in optimizer.param_groups],
            model.prior_scheduler.state_dict() if model.prior_scheduler is not None else None,
            type(model.prior).__name__,
            [  # an RBM's two samplers (None for other priors)
                (type(s).__name__, getattr(s, "steps", None), getattr(s, "sample_start", None))
                for s in (getattr(model.prior, name, None) for name in ("sampler", "generation_sampler"))
            ],
            count_parameters(model),
            model.flow.in_shape,
            model.prior.dim,
            trainer.max_steps,
            trainer.max_epochs,
            sorted(type(c).__name__ for c in trainer.callbacks),
            type(trainer.logger).__name__,
            trainer.log_dir,
            type(cli.datamodule).__name__,
            cli.datamodule.batch_size,
        )

    assert summary(make_cli(["--config", str(path)], run=False)) == summary(build(*paths))


class Worsening(L.LightningModule):
    """A model whose validation bits/dim get worse at every validation, as a run's last ones may."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, _):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, _):
        self.log("val/bpd_uniform", float(self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


SHIPPED = sorted(CONF.rglob("*.yaml"))


@pytest.mark.parametrize("config", SHIPPED, ids=lambda path: path.relative_to(CONF).as_posix())
def test_no_shipped_config_replaces_the_callbacks_given_before_it(config: Path) -> None:
    assert "callbacks" not in (yaml.safe_load(config.read_text()).get("trainer") or {})


CHECKPOINTING = sorted(path for path in CONF.rglob("*.yaml") if "ModelCheckpoint" in path.read_text())


def test_every_config_with_checkpoints_is_checked_below() -> None:
    assert {path.relative_to(CONF).as_posix() for path in CHECKPOINTING} >= {
        "demo.yaml",
        "cifar10.yaml",
        "fashion_mnist.yaml",
    }


@pytest.mark.parametrize("config", CHECKPOINTING, ids=lambda path: path.relative_to(CONF).as_posix())
def test_last_ckpt_is_the_final_state_when_the_last_validation_is_not_the_best(
    config: Path, tmp_path: Path
) -> None:
    """`ebmflow test --ckpt_path .../last.ckpt` and resuming must see the state training ended in; a
    ModelCheckpoint that monitors a metric writes last.ckpt only when it saves a better checkpoint."""
    listed = yaml.safe_load(config.read_text())["trainer"]["callbacks+"]
    callbacks = [
        ModelCheckpoint(dirpath=tmp_path, **entry.get("init_args", {}))
        for entry in listed
        if entry["class_path"] == "lightning.pytorch.callbacks.ModelCheckpoint"
    ]
    data = DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=1)
    run = L.Trainer(
        max_steps=6,
        val_check_interval=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=tmp_path,
    )
    run.fit(Worsening(), data, data)
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 6
    best = [c for c in callbacks if c.monitor == "val/bpd_uniform"]
    assert len(best) == 1 and Path(best[0].best_model_path).name == "epoch=0-step=2.ckpt"
