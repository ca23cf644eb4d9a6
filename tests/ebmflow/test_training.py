"""Real Trainer runs on the digits: exact resume, non-finite losses, the reported bits/dim."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback, ModelCheckpoint
from torch.optim.lr_scheduler import ExponentialLR, LinearLR, ReduceLROnPlateau, StepLR

from ebmflow.data import DigitsDataModule
from ebmflow.module import EBMFlow, NonFiniteLossError
from flows import UniformDequantizer, VariationalDequantizer
from priors import GaussianPrior
from tests.ebmflow.helpers import tiny_model, trainer


def momentum_sgd(params):
    return torch.optim.SGD(params, lr=1e-2, momentum=0.9)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"prior_optimizer": momentum_sgd},
        # LinearLR sets the rate when built, and its steps depend on its count: resumed, it must be built
        # before the optimiser's state is restored and restored itself
        {"prior_optimizer": momentum_sgd, "prior_lr_scheduler": lambda o: LinearLR(o, 0.2, total_iters=30)},
    ],
    ids=["one optimiser", "prior optimiser", "prior schedule"],
)
def test_resume_continues_exactly_from_every_checkpoint(
    tmp_path: Path, options: dict, device: torch.device
) -> None:
    """26 steps straight (20 batches an epoch, validation every 10), saving the checkpoints the configs
    write (after a validation mid-epoch, after the validation that ends an epoch) and others (mid-epoch,
    at the end of an epoch's last batch before its validation); resuming from each to step 26 gives the
    same parameters, ActNorm state, PCD chains, optimiser effect and log Z as the straight run."""
    data = dict(batch_size=64, hflip=True)
    checkpoints = tmp_path / "ck"
    L.seed_everything(0)
    straight = tiny_model(**options)
    after_validation = ModelCheckpoint(checkpoints, monitor="val/bpd_uniform", save_top_k=-1)
    every_5_steps = ModelCheckpoint(checkpoints, filename="{step}", every_n_train_steps=5, save_top_k=-1)
    trainer(
        tmp_path / "a",
        accelerator=device.type,
        max_steps=26,
        val_check_interval=10,
        callbacks=[after_validation, every_5_steps],
    ).fit(straight, DigitsDataModule(**data))
    expected = straight.state_dict()
    cases = {
        "epoch=0-step=10.ckpt": set(),  # after a validation mid-epoch
        "epoch=0-step=20.ckpt": set(),  # after the validation that ends epoch 0
        "step=15.ckpt": set(),  # mid-epoch, no validation
        # at the end of epoch 0's last batch, before its validation: Lightning resumes without that
        # validation, so the RBM's exact log Z (it only labels train/objective) is refreshed one
        # validation later, at the last step's (step 26) as in the straight run
        "step=20.ckpt": set(),
    }
    for name, differing in cases.items():
        L.seed_everything(123)  # the resumed run must not depend on the new process's seed
        resumed = tiny_model(**options)
        trainer(tmp_path / name, accelerator=device.type, max_steps=26, val_check_interval=10).fit(
            resumed, DigitsDataModule(**data), ckpt_path=checkpoints / name, weights_only=True
        )
        assert resumed.current_epoch == straight.current_epoch, name
        if "prior_lr_scheduler" in options:
            assert resumed.prior_scheduler.state_dict() == straight.prior_scheduler.state_dict(), name
        unequal = {
            key for key, value in resumed.state_dict().items() if not torch.equal(value, expected[key])
        }
        assert unequal == differing, name


@pytest.mark.parametrize(("max_steps", "expected"), [(7, [3, 6, 7]), (6, [3, 6])])
def test_the_last_step_is_validated_and_checkpointed(
    tmp_path: Path, max_steps: int, expected: list[int]
) -> None:
    """A fit that stops at max_steps between two validations validates its last step too, so the
    checkpoint written after a validation holds the model training ended with (before, with validation
    counted in steps as cpu_small.yaml counts it, the steps after the last validation were in no
    checkpoint, and testing last.ckpt tested an older model); one that stops at a validation validates
    once."""
    validated: list[int] = []
    record = LambdaCallback(on_validation_end=lambda trainer, *_: validated.append(trainer.global_step))
    last = ModelCheckpoint(tmp_path / "ck", filename="last", enable_version_counter=False)
    options = dict(max_steps=max_steps, val_check_interval=3, check_val_every_n_epoch=None)
    trainer(tmp_path, **options, callbacks=[last, record]).fit(tiny_model(), DigitsDataModule(batch_size=64))
    assert validated == expected
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)["global_step"] == max_steps


def test_training_steps_on_every_device(tmp_path: Path, device: torch.device) -> None:
    """Three real steps on each available device (bf16-mixed too on CUDA): everything moved there,
    every parameter finite and updated, ActNorm initialised, the PCD chains advanced."""
    for precision in ["32-true"] + (["bf16-mixed"] if device.type == "cuda" else []):
        L.seed_everything(0)
        model = tiny_model()
        before = {key: value.clone() for key, value in model.state_dict().items()}
        trained_on: set[str] = set()  # (Lightning moves the module back to the CPU when a GPU fit ends)
        record = LambdaCallback(
            on_train_batch_end=lambda _, module, *__, seen=trained_on: seen.add(module.device.type)
        )
        run = trainer(
            tmp_path / precision,
            accelerator=device.type,
            max_steps=3,
            precision=precision,
            callbacks=[record],
        )
        run.fit(model, DigitsDataModule(batch_size=64))
        assert trained_on == {device.type}
        after = model.state_dict()
        for name, parameter in model.named_parameters():
            assert torch.isfinite(parameter).all(), name
            if parameter.numel() > 1:  # (a 1x1 LU factor of one channel is a constant 1)
                assert not torch.equal(parameter.cpu(), before[name]), name
        assert bool(after["flow.layers.1.initialized"])
        assert not torch.equal(after["prior.sampler.chains"].cpu(), before["prior.sampler.chains"])


class FaultyPrior(GaussianPrior):
    """N(0, I) whose training loss goes wrong at the training calls ``calls`` (counted from 1):
    "loss" makes the loss NaN; "gradient" keeps the loss finite and makes its gradient NaN."""

    def __init__(self, dim: int, fault: str, calls: range) -> None:
        super().__init__(dim)
        self.fault, self.faulty_calls, self.calls = fault, calls, 0

    def _loss(self, z):
        self.calls += 1
        loss = super()._loss(z)
        if self.calls not in self.faulty_calls:
            return loss
        if self.fault == "loss":
            return loss * float("nan")
        return loss + torch.sqrt((z * 0).sum())  # sqrt at 0: adds 0, its gradient is inf · 0 = NaN


def exploding(dim: int = 64) -> FaultyPrior:
    """A NaN loss from the third training call on."""
    return FaultyPrior(dim, "loss", range(3, 10**6))


def test_nonfinite_loss_stops_before_the_update(tmp_path: Path) -> None:
    model = tiny_model(exploding())
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=1
    )
    with pytest.raises(NonFiniteLossError, match=r"global step 2, epoch 0: non-finite prior loss"):
        trainer(tmp_path, max_steps=10, callbacks=[checkpoint]).fit(model, DigitsDataModule(batch_size=64))
    for parameter in model.parameters():
        assert torch.isfinite(parameter).all()
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_nonfinite_loss_can_skip_batches(tmp_path: Path) -> None:
    model = tiny_model(exploding(), nonfinite="skip")
    trainer(tmp_path, max_epochs=1, limit_train_batches=6).fit(model, DigitsDataModule(batch_size=64))
    assert model.skipped_batches == 4  # calls 3..6 of the one epoch of 6 batches
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skipping_stops_past_its_limit(tmp_path: Path) -> None:
    model = tiny_model(exploding(), nonfinite="skip", max_skipped=3)
    with pytest.raises(NonFiniteLossError, match=r"global step 5, .*3 batches skipped already"):
        trainer(tmp_path, max_epochs=1, limit_train_batches=10).fit(model, DigitsDataModule(batch_size=64))
    assert model.skipped_batches == 3  # calls 3, 4, 5 skipped; the 6th would be the 4th


class NaNWhenEvaluated(GaussianPrior):
    """N(0, I) in training, NaN densities in evaluation: a model whose validation diverged."""

    def _log_prob(self, z):
        log_p = super()._log_prob(z)
        return log_p if self.training else log_p * float("nan")


@pytest.mark.parametrize("nonfinite", ["stop", "skip"])
def test_nonfinite_gradients_never_reach_the_parameters(tmp_path: Path, nonfinite: str) -> None:
    L.seed_everything(0)
    model = tiny_model(FaultyPrior(64, "gradient", range(2, 3)), nonfinite=nonfinite)
    run = trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    if nonfinite == "stop":
        with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at global step 1, .*flow"):
            run.fit(model, DigitsDataModule(batch_size=64))
    else:
        run.fit(model, DigitsDataModule(batch_size=64))
        assert model.skipped_batches == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_nonfinite_validation_stops_before_any_checkpoint_of_it(tmp_path: Path) -> None:
    model = tiny_model(NaNWhenEvaluated(64))
    checkpoint = ModelCheckpoint(tmp_path / "ck", monitor="val/bpd_uniform", save_last=True)
    with pytest.raises(NonFiniteLossError, match="non-finite validation bits/dim at step 2:"):
        trainer(tmp_path, max_steps=2, val_check_interval=2, callbacks=[checkpoint]).fit(
            model, DigitsDataModule(batch_size=64)
        )
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").iterdir())


def test_log_likelihood_composes_the_data_path() -> None:
    """log P(x) ≥ log p_Z(f(y)) + log|det ∂f/∂y| − log q(u|x) − D log 256, term by term."""
    torch.manual_seed(0)
    model = tiny_model(GaussianPrior(64), dequantizer=VariationalDequantizer((1, 8, 8), filters=8, blocks=1))
    model.eval()
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    torch.manual_seed(1)
    got = model.log_likelihood(images, model.dequantizer)
    torch.manual_seed(1)
    y, log_q = model.dequantizer(images)
    z, logdet = model.flow(y)
    log_pz = -0.5 * (z.flatten(1).square().sum(1) + 64 * math.log(2 * math.pi))
    assert torch.allclose(got, log_pz + logdet - log_q - 64 * math.log(256), atol=1e-4)
    assert torch.allclose(model.bits_per_dim(got), -got / (64 * math.log(2)))


def test_reported_metrics(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model(
        dequantizer=VariationalDequantizer((1, 8, 8), filters=8, blocks=1), importance_samples=8
    )
    run = trainer(tmp_path, max_steps=20, limit_test_batches=2)
    run.fit(model, DigitsDataModule(batch_size=64))
    (metrics,) = run.test(model, DigitsDataModule(batch_size=64), verbose=False)
    assert metrics["test/log_z_exact"] == 1.0
    for key in ("test/bpd_uniform", "test/bpd_variational", "test/bpd_importance_8"):
        assert math.isfinite(metrics[key]) and 0 < metrics[key] < 16, key
    # importance weighting tightens the variational bound
    assert metrics["test/bpd_importance_8"] < metrics["test/bpd_variational"]


def test_uniform_is_the_default_dequantizer() -> None:
    assert isinstance(tiny_model().dequantizer, UniformDequantizer)


def test_scheduler_and_weight_averaging_plug_in(tmp_path: Path) -> None:
    """A warm-up schedule (Flow++) from the module's lr_scheduler and EMA weights from Lightning's
    callback both act on a real fit."""

    def warmup(optimizer):
        return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=4)

    L.seed_everything(0)
    plain = tiny_model(GaussianPrior(64), lr_scheduler=warmup)
    run = trainer(tmp_path / "a", max_steps=3)
    run.fit(plain, DigitsDataModule(batch_size=64))
    assert run.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * (0.1 + 0.9 * 3 / 4))

    L.seed_everything(0)
    averaged = tiny_model(GaussianPrior(64), lr_scheduler=warmup)
    ema = L.pytorch.callbacks.EMAWeightAveraging(decay=0.5)
    trainer(tmp_path / "b", max_steps=3, callbacks=[ema]).fit(averaged, DigitsDataModule(batch_size=64))
    differs = [not torch.equal(a, b) for a, b in zip(plain.parameters(), averaged.parameters(), strict=True)]
    assert any(differs)


def test_prior_learning_rate_applies_to_the_prior_alone(tmp_path: Path) -> None:
    """With plain SGD one step moves each parameter by -lr * grad: the prior's at prior_lr, the rest at
    the optimiser's rate."""

    class BeforeStep(L.Callback):  # after ActNorm's data-dependent initialisation and the backward pass
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.params = {name: p.detach().clone() for name, p in pl_module.named_parameters()}
            self.grads = {name: p.grad.clone() for name, p in pl_module.named_parameters()}

    model = tiny_model(optimizer=lambda params: torch.optim.SGD(params, lr=0.1), prior_lr=1e-3)
    before = BeforeStep()
    trainer(tmp_path, max_steps=1, callbacks=[before]).fit(model, DigitsDataModule(batch_size=64))
    prior = {f"prior.{name}" for name, _ in model.prior.named_parameters()}
    assert prior and len(prior) < len(before.params)
    moved = {name for name, grad in before.grads.items() if grad.abs().max() > 1e-3}
    assert moved & prior and moved - prior  # the check below is not vacuous for either group
    for name, p in model.named_parameters():
        lr = 1e-3 if name in prior else 0.1
        torch.testing.assert_close(
            p.detach(), before.params[name] - lr * before.grads[name], rtol=0, atol=1e-7
        )
    with pytest.raises(ValueError, match="prior_lr must be positive"):
        tiny_model(prior_lr=0.0)


def test_prior_optimizer_steps_the_prior_by_its_own_rule(tmp_path: Path) -> None:
    """Adam for the flow, SGD with momentum for the prior: after two batches each parameter is where
    its own rule puts it, and the run counts one global step per batch."""

    class Record(L.Callback):
        def __init__(self) -> None:
            self.params, self.grads = [], []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.params.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})
            self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters()})

    def sgd(params):
        return torch.optim.SGD(params, lr=0.5, momentum=0.9)

    model = tiny_model(optimizer=lambda params: torch.optim.Adam(params, lr=1e-2), prior_optimizer=sgd)
    record = Record()
    run = trainer(tmp_path, max_steps=2, callbacks=[record])
    run.fit(model, DigitsDataModule(batch_size=64))
    assert run.global_step == 2
    prior = {f"prior.{name}" for name, _ in model.prior.named_parameters()}
    (p0, p1), (g1, g2) = record.params, record.grads
    assert any(g1[name].abs().max() > 1e-3 for name in prior)
    for name, p in model.named_parameters():
        if name in prior:  # SGD with momentum: buffer b1 = g1, then b2 = 0.9 b1 + g2
            torch.testing.assert_close(p1[name], p0[name] - 0.5 * g1[name], rtol=0, atol=1e-6)
            torch.testing.assert_close(
                p.detach(), p1[name] - 0.5 * (0.9 * g1[name] + g2[name]), rtol=0, atol=1e-6
            )
        else:  # Adam's first step moves by lr · g / (|g| + eps)
            step = 1e-2 * g1[name] / (g1[name].abs() + 1e-8)
            torch.testing.assert_close(p1[name], p0[name] - step, rtol=0, atol=1e-6)


def test_the_prior_schedule_sets_the_prior_rate_alone_at_every_step(tmp_path: Path) -> None:
    """Adam for the flow, plain SGD for the prior halving its rate every step: the prior's k-th update
    is lr · 0.5^k times its gradient, the flow's rate never changes, and train/prior_lr logs the rate
    the next step will use."""

    class Record(L.Callback):
        def __init__(self) -> None:
            self.params, self.grads, self.rates = [], [], []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.params.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})
            self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters()})
            self.rates.append([group["lr"] for group in optimizer.param_groups])

    model = tiny_model(
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        prior_optimizer=lambda params: torch.optim.SGD(params, lr=0.4),
        prior_lr_scheduler=lambda optimizer: ExponentialLR(optimizer, gamma=0.5),
    )
    record = Record()
    run = trainer(tmp_path, max_steps=3, callbacks=[record], log_every_n_steps=1)
    run.fit(model, DigitsDataModule(batch_size=64))
    assert record.rates == [[1e-2, 0.4], [1e-2, 0.2], [1e-2, 0.1]]
    assert run.callback_metrics["train/prior_lr"].item() == pytest.approx(0.05, abs=1e-7)
    final = dict(model.named_parameters())
    for name, _ in model.prior.named_parameters():
        name = f"prior.{name}"
        for k, rate in enumerate([0.4, 0.2, 0.1]):
            after = record.params[k + 1][name] if k < 2 else final[name].detach()
            expected = record.params[k][name] - rate * record.grads[k][name]
            torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)


def test_prior_schedule_settings_that_cannot_work_fail_before_training(tmp_path: Path) -> None:
    """A schedule without the prior's own optimiser, beside the global one, or for a prior without
    parameters fails at once and names the fix; so does resuming a checkpoint whose schedule setting
    differs from the run's, before any step."""
    schedule = dict(prior_lr_scheduler=lambda optimizer: ExponentialLR(optimizer, gamma=0.5))
    with pytest.raises(ValueError, match=r"--model\.prior_optimizer"):
        tiny_model(**schedule)
    with pytest.raises(ValueError, match="only one"):
        tiny_model(
            prior_optimizer=momentum_sgd,
            lr_scheduler=lambda optimizer: LinearLR(optimizer, 0.5, total_iters=2),
            **schedule,
        )
    plateau = tiny_model(prior_optimizer=momentum_sgd, prior_lr_scheduler=ReduceLROnPlateau)
    with pytest.raises(ValueError, match="not ReduceLROnPlateau"):
        trainer(tmp_path / "plateau", max_steps=1).fit(plateau, DigitsDataModule(batch_size=64))
    assert plateau.global_step == 0
    model = tiny_model(prior=GaussianPrior(64), prior_optimizer=momentum_sgd, **schedule)
    with pytest.raises(ValueError, match="GaussianPrior has no parameters"):
        trainer(tmp_path / "gaussian", max_steps=1).fit(model, DigitsDataModule(batch_size=64))

    checkpoints = {}
    for name, options in {"plain": {}, "scheduled": schedule}.items():
        last = ModelCheckpoint(tmp_path / name, filename="last", enable_version_counter=False)
        trainer(tmp_path / name, max_steps=2, callbacks=[last]).fit(
            tiny_model(prior_optimizer=momentum_sgd, **options), DigitsDataModule(batch_size=64)
        )
        checkpoints[name] = tmp_path / name / "last.ckpt"
    for saved, options in [("plain", schedule), ("scheduled", {})]:
        steps: list[int] = []
        record = LambdaCallback(
            on_train_batch_start=lambda trainer, *_, seen=steps: seen.append(trainer.global_step)
        )
        wording = {
            "plain": "had no prior learning-rate schedule and this run has one",
            "scheduled": "had one prior learning-rate schedule and this run has none",
        }[saved]
        with pytest.raises(ValueError, match=f"{wording}: resume with the same --model"):
            trainer(tmp_path / f"resume-{saved}", max_steps=4, callbacks=[record]).fit(
                tiny_model(prior_optimizer=momentum_sgd, **options),
                DigitsDataModule(batch_size=64),
                ckpt_path=checkpoints[saved],
                weights_only=True,
            )
        assert steps == []  # stopped before its first step


def test_a_fit_from_loaded_weights_starts_its_own_schedule(tmp_path: Path) -> None:
    """Weights loaded from a scheduled run (EBMFlow.load_from_checkpoint) and fitted afresh, without
    --ckpt_path: the schedule starts from its beginning (StepLR(3) halves the rate at the fourth step,
    not where the saved run had counted to), and a fit without a schedule starts too."""
    last = ModelCheckpoint(tmp_path / "saved", filename="last", enable_version_counter=False)

    def step_lr(optimizer):
        return StepLR(optimizer, step_size=3, gamma=0.5)

    def sgd(params):
        return torch.optim.SGD(params, lr=0.4)

    trainer(tmp_path / "saved", max_steps=2, callbacks=[last]).fit(
        tiny_model(prior_optimizer=sgd, prior_lr_scheduler=step_lr), DigitsDataModule(batch_size=64)
    )
    for schedule, expected in [(step_lr, [0.4, 0.4, 0.4, 0.2]), (None, [0.4] * 4)]:
        fresh = tiny_model()
        model = EBMFlow.load_from_checkpoint(
            tmp_path / "saved" / "last.ckpt",
            flow=fresh.flow,
            prior=fresh.prior,
            prior_optimizer=sgd,
            prior_lr_scheduler=schedule,
        )
        rates: list[float] = []
        record = LambdaCallback(
            on_before_optimizer_step=lambda trainer, module, optimizer, seen=rates: seen.append(
                optimizer.param_groups[-1]["lr"]
            )
        )
        trainer(tmp_path / f"fresh-{schedule is None}", max_steps=4, callbacks=[record]).fit(
            model, DigitsDataModule(batch_size=64)
        )
        assert rates == expected
