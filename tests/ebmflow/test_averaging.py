"""PriorAveraging in real Trainer runs on the digits: the average it keeps, what validation, test and
checkpoints see, and resuming from its checkpoints."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback, ModelCheckpoint

from ebmflow.callbacks import PriorAveraging
from ebmflow.callbacks.averaging import LIVE_PRIOR_KEY
from ebmflow.data import DigitsDataModule
from tests.ebmflow.helpers import tiny_model, trainer

DECAY = 0.6


def prior_state(module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.prior.named_parameters()}


def test_validation_and_test_see_the_average_and_training_the_live_prior(tmp_path: Path) -> None:
    """The average is the recursion a ← d·a + (1−d)·θ over every step's parameters, from those training
    starts with; validation sees it, training goes on from the live parameters, and a checkpoint's
    state_dict (what `ebmflow test` loads) holds the average, which a later validate of that checkpoint
    sees, also in the fit's own process (not the fit's last average)."""
    live, seen, validated = [], {}, []

    def on_validation_epoch_end(trainer: L.Trainer, module: L.LightningModule) -> None:
        seen.setdefault(trainer.global_step, prior_state(module))
        validated.append(prior_state(module))

    record = LambdaCallback(
        on_train_start=lambda trainer, module: live.append(prior_state(module)),
        on_train_batch_end=lambda trainer, module, *args: live.append(prior_state(module)),
        on_validation_epoch_end=on_validation_epoch_end,
        on_test_start=lambda trainer, module: seen.setdefault("test", prior_state(module)),
    )
    L.seed_everything(0)
    model = tiny_model()
    checkpoints = ModelCheckpoint(tmp_path / "ck", filename="{step}", every_n_train_steps=3, save_top_k=-1)
    run = trainer(
        tmp_path, max_steps=6, val_check_interval=3, callbacks=[PriorAveraging(DECAY), record, checkpoints]
    )
    run.fit(model, DigitsDataModule(batch_size=64))
    assert len(live) == 7

    expected = {name: value.clone() for name, value in live[0].items()}
    averages = [None]
    for step in live[1:]:
        expected = {name: DECAY * expected[name] + (1 - DECAY) * step[name] for name in expected}
        averages.append(expected)
    for step in (3, 6):
        for name, value in seen[step].items():
            torch.testing.assert_close(value, averages[step][name])
            assert not torch.allclose(value, live[step][name])  # the average, not the live prior
    for name, value in prior_state(model).items():  # training ended on the live parameters
        assert torch.equal(value, live[6][name])

    checkpoint = torch.load(tmp_path / "ck" / "step=3.ckpt", weights_only=False)
    for name in live[3]:
        torch.testing.assert_close(checkpoint["state_dict"][f"prior.{name}"], averages[3][name])
        assert torch.equal(checkpoint[LIVE_PRIOR_KEY][name], live[3][name])
    run.validate(model, DigitsDataModule(batch_size=64), ckpt_path=tmp_path / "ck" / "step=3.ckpt")
    for name, value in validated[-1].items():
        torch.testing.assert_close(value, averages[3][name])

    tested = tiny_model()
    trainer(tmp_path / "t", callbacks=[PriorAveraging(DECAY), record]).test(
        tested, DigitsDataModule(batch_size=64), ckpt_path=tmp_path / "ck" / "step=6.ckpt", weights_only=False
    )
    for name, value in seen["test"].items():
        torch.testing.assert_close(value, averages[6][name])


def test_a_test_or_predict_after_the_fit_in_its_process_sees_the_average(tmp_path: Path) -> None:
    """Without a checkpoint, trainer.test and trainer.predict after trainer.fit evaluate the fit's last
    average, as its last validation did, and the live prior is back in place afterwards. Given a
    weights-only checkpoint (for which Lightning calls no callback) the test evaluates what it holds."""
    seen = {"validate": [], "test": [], "predict": []}
    record = LambdaCallback(
        on_validation_epoch_end=lambda trainer, module: seen["validate"].append(prior_state(module)),
        on_test_start=lambda trainer, module: seen["test"].append(prior_state(module)),
        on_predict_start=lambda trainer, module: seen["predict"].append(prior_state(module)),
    )
    L.seed_everything(0)
    model, data = tiny_model(), DigitsDataModule(batch_size=64)
    run = trainer(tmp_path, max_steps=3, val_check_interval=3, callbacks=[PriorAveraging(DECAY), record])
    run.fit(model, data)
    live = prior_state(model)
    run.test(model, data)
    run.predict(model, data)
    run.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)  # the live prior
    run.test(model, data, ckpt_path=tmp_path / "weights.ckpt", weights_only=False)
    (average,) = seen["validate"]
    for name, value in live.items():
        assert not torch.allclose(average[name], value)  # the average, not the live prior
        assert torch.equal(seen["test"][0][name], average[name])
        assert torch.equal(seen["predict"][0][name], average[name])
        assert torch.equal(seen["test"][1][name], value)
        assert torch.equal(model.prior.state_dict()[name], value)


@pytest.mark.parametrize("name", ["epoch=0-step=10.ckpt", "step=15.ckpt"])
def test_resume_continues_the_live_prior_and_its_average_exactly(tmp_path: Path, name: str) -> None:
    """Resumed from a checkpoint written after a validation (step 10) or mid-epoch (step 15), a run
    ends where the straight run ends: the same live parameters and the same average."""
    data = dict(batch_size=64)
    L.seed_everything(0)
    straight = tiny_model()
    averaging = PriorAveraging(DECAY)
    after_validation = ModelCheckpoint(tmp_path / "ck", monitor="val/bpd_uniform", save_top_k=-1)
    mid_epoch = ModelCheckpoint(tmp_path / "ck", filename="{step}", every_n_train_steps=15, save_top_k=-1)
    callbacks = [averaging, after_validation, mid_epoch]
    trainer(tmp_path / "a", max_steps=18, val_check_interval=10, callbacks=callbacks).fit(
        straight, DigitsDataModule(**data)
    )
    L.seed_everything(123)
    resumed = tiny_model()
    resumed_averaging = PriorAveraging(DECAY)
    trainer(tmp_path / "b", max_steps=18, val_check_interval=10, callbacks=[resumed_averaging]).fit(
        resumed, DigitsDataModule(**data), ckpt_path=tmp_path / "ck" / name, weights_only=False
    )
    expected = straight.state_dict()
    assert [key for key, value in resumed.state_dict().items() if not torch.equal(value, expected[key])] == []
    for key, value in resumed_averaging.average.items():
        assert torch.equal(value, averaging.average[key]), key


def test_resuming_an_averaged_checkpoint_without_the_callback_stops(tmp_path: Path) -> None:
    L.seed_everything(0)
    checkpoints = ModelCheckpoint(tmp_path / "ck", filename="{step}", every_n_train_steps=2)
    trainer(tmp_path / "a", max_steps=2, callbacks=[PriorAveraging(), checkpoints]).fit(
        tiny_model(), DigitsDataModule(batch_size=64)
    )
    with pytest.raises(ValueError, match="PriorAveraging"):
        trainer(tmp_path / "b", max_steps=4).fit(
            tiny_model(),
            DigitsDataModule(batch_size=64),
            ckpt_path=tmp_path / "ck" / "step=2.ckpt",
            weights_only=False,
        )


def test_weights_only_checkpoints_are_refused_before_training(tmp_path: Path) -> None:
    """Lightning calls no callback when it writes a weights-only checkpoint, which would then hold the
    live prior as if it were the average."""
    weights_only = ModelCheckpoint(tmp_path / "ck", save_weights_only=True)
    model = tiny_model()
    before = prior_state(model)
    with pytest.raises(ValueError, match="save_weights_only"):
        trainer(tmp_path, max_steps=2, callbacks=[PriorAveraging(), weights_only]).fit(
            model, DigitsDataModule(batch_size=64)
        )
    assert all(torch.equal(p, before[name]) for name, p in prior_state(model).items())
    assert not (tmp_path / "ck").exists()


def test_a_second_prior_averaging_is_refused_before_training(tmp_path: Path) -> None:
    """Two copies (conf/prior_averaging.yaml and --trainer.callbacks+=...) would each keep the other's
    parameters as the live ones: after a validation training would go on from an average."""
    model = tiny_model()
    before = prior_state(model)
    with pytest.raises(ValueError, match="PriorAveraging is given 2 times"):
        trainer(tmp_path, max_steps=2, callbacks=[PriorAveraging(), PriorAveraging(0.9)]).fit(
            model, DigitsDataModule(batch_size=64)
        )
    assert all(torch.equal(p, before[name]) for name, p in prior_state(model).items())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_the_open_interval_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="decay"):
        PriorAveraging(decay)
