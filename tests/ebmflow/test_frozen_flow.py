"""scripts/frozen_flow.py on a tiny RBM-Flow run of the bundled digits: the prior trains and the flow
does not, the rows it scores, and that it writes nothing it was not asked to."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from priors import ParallelTempering
from scripts.compare_samplers import build, restore
from scripts.frozen_flow import BURN_IN, burnt_in_tempering, endless, main, train_prior
from tests.ebmflow.helpers import TINY, fit_run


def snapshot(run: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


def test_the_prior_trains_by_the_runs_optimiser_and_the_flow_stays(tmp_path: Path) -> None:
    """Plain SGD on the prior (rate 0.5) and Adam on the rest: every prior parameter moves by exactly
    −0.5 × its gradient of the bits/dim loss, no flow or dequantizer state changes."""
    run = fit_run(tmp_path, TINY["model"]["prior"])
    model, data = build(run)
    model = restore(model, run)
    model.prior_optimizer_factory = lambda params: torch.optim.SGD(params, lr=0.5)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("prior.")}
    before = {name: p.detach().clone() for name, p in model.prior.named_parameters()}
    data.setup("fit")
    steps, gradients = [], {}

    def after_step(step: int) -> None:
        steps.append(step)
        gradients.update({name: p.grad.clone() for name, p in model.prior.named_parameters()})

    train_prior(model, endless(data.train_dataloader()), 1, after_step)
    assert steps == [1]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    for name, p in model.prior.named_parameters():
        assert gradients[name].abs().sum() > 0
        torch.testing.assert_close(p.detach(), before[name] - 0.5 * gradients[name])


def test_rows_for_every_readout_and_nothing_written_in_the_run(tmp_path: Path) -> None:
    run = fit_run(tmp_path, TINY["model"]["prior"])
    files = snapshot(run)
    out = tmp_path / "rows.jsonl"
    options = ["--steps", "2", "--every", "1", "--average", "0.5", "--control-seeds", "1"]
    main([str(run), *options, "--feature", "digits", "--samples", "20", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["step"], r["readout"], r["seed"]) for r in rows] == [
        (0, "live", 0),
        (0, "average 0.5", 0),
        (0, "live", 1),
        (1, "live", 0),
        (1, "average 0.5", 0),
        (2, "live", 0),
        (2, "average 0.5", 0),
    ]
    scores = [{k: v for k, v in r.items() if k not in ("readout", "seed")} for r in rows]
    assert scores[1] == scores[0]  # the average starts at the live parameters
    assert scores[2] != scores[0]  # another seed, other samples
    assert snapshot(run) == files


def test_an_existing_out_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = fit_run(tmp_path, TINY["model"]["prior"])
    (out := tmp_path / "rows.jsonl").write_text("mine\n")
    with pytest.raises(SystemExit) as exit:
        main([str(run), "--out", str(out)])
    assert exit.value.code == 2
    assert f"{out} exists" in capsys.readouterr().err
    assert out.read_text() == "mine\n"
    # a folder that does not exist: refused at once, not after the run's work
    with pytest.raises(SystemExit) as exit:
        main([str(run), "--out", str(tmp_path / "missing" / "rows.jsonl")])
    assert exit.value.code == 2
    assert f"{tmp_path / 'missing'} does not exist" in capsys.readouterr().err


def test_training_against_tempering_burns_its_ladder_in_and_advances_it_each_step(tmp_path: Path) -> None:
    """--train-tempering's sampler: as many chains per replica as the run's, BURN_IN sweeps run before
    training (their swap counts cleared), then ``sweeps`` sweeps per prior step, its β = 1 replica the
    negative phase; the ladder keeps its ends (β 1 and 0.1)."""
    run = fit_run(tmp_path, TINY["model"]["prior"])
    model, data = build(run)
    model = restore(model, run)
    sampler = burnt_in_tempering(model.prior, 3, 7)
    assert isinstance(sampler, ParallelTempering) and sampler.states.shape == (3, 8, 52)
    assert int(sampler.sweeps_done) == 7 * -(-BURN_IN // 7)
    assert sampler.swaps_offered.sum() == 0
    assert sampler.betas[0] == 1 and sampler.betas[-1] == pytest.approx(0.1)
    model.prior.sampler = sampler
    data.setup("fit")
    train_prior(model, endless(data.train_dataloader()), 2, lambda step: None)
    assert int(sampler.sweeps_done) == 7 * -(-BURN_IN // 7) + 2 * 7
    assert torch.all(sampler.swaps_offered > 0)


def test_equilibrium_rows_come_from_tempering_and_training_against_it_leaves_step_0_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--equilibrium scores tempering's samples (other rows than the generation sampler's, each with its
    ladder's smallest swap acceptance); --train-tempering changes training, not the step-0 rows."""
    run = fit_run(tmp_path, TINY["model"]["prior"])
    files = snapshot(run)
    common = [
        "--steps",
        "1",
        "--every",
        "1",
        "--control-seeds",
        "0",
        "--feature",
        "digits",
        "--samples",
        "20",
    ]

    def rows(name: str, *options: str) -> list[dict]:
        main([str(run), *common, *options, "--out", str(out := tmp_path / f"{name}.jsonl")])
        return [json.loads(line) for line in out.read_text().splitlines()]

    plain = rows("plain")
    equilibrium = rows("equilibrium", "--equilibrium", "3", "4")
    capsys.readouterr()
    both = rows("both", "--equilibrium", "3", "4", "--train-tempering", "2", "5")
    assert "step 1: training ladder's smallest swap acceptance" in capsys.readouterr().out
    assert "smallest_swap_acceptance" not in plain[0]
    assert all(0 <= row["smallest_swap_acceptance"] <= 1 for row in equilibrium + both)
    assert equilibrium[0]["fid"] != plain[0]["fid"]
    assert both[0] == equilibrium[0]
    assert both[1]["fid"] != equilibrium[1]["fid"]  # trained against another negative phase
    assert snapshot(run) == files


@pytest.mark.parametrize("option", ["--equilibrium", "--train-tempering"])
def test_a_ladder_of_one_replica_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: str
) -> None:
    with pytest.raises(SystemExit) as exit:  # before the run is read
        main([str(tmp_path), option, "1", "5"])
    assert exit.value.code == 2
    assert f"{option} takes REPLICAS >= 2 and SWEEPS >= 1, got [1, 5]" in capsys.readouterr().err


def test_the_burn_in_leaves_the_training_stream_where_a_plain_run_starts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--train-tempering's burn-in draws from its own seed: training (batches, dequantization noise,
    restarts) starts from the same random state as without it, so the two runs differ by their negative
    phase alone."""
    run = fit_run(tmp_path, TINY["model"]["prior"])
    states = []

    def recording(*args, **kwargs) -> None:
        states.append(torch.random.get_rng_state())
        train_prior(*args, **kwargs)

    monkeypatch.setattr("scripts.frozen_flow.train_prior", recording)
    common = [str(run), "--steps", "0", "--control-seeds", "0", "--feature", "digits", "--samples", "10"]
    main(common)
    main([*common, "--train-tempering", "2", "5"])
    assert len(states) == 2 and torch.equal(states[0], states[1])


def test_training_on_a_ladder_whose_step_offers_no_swap_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--train-tempering 2 1: one sweep a step, and a sweep offers the one pair (0, 1) only every other
    time (after the 500 burn-in sweeps: steps 1 and 3). Step 2 has no rate to report, and says so
    instead of failing on the minimum of none."""
    run = fit_run(tmp_path, TINY["model"]["prior"])
    options = ["--steps", "3", "--every", "1", "--control-seeds", "0", "--feature", "digits"]
    options += ["--samples", "20", "--train-tempering", "2", "1", "--out", str(tmp_path / "rows.jsonl")]
    main([str(run), *options])
    said = [line for line in capsys.readouterr().out.splitlines() if "training ladder's" in line]
    assert [line.split(" (")[-1] for line in said] == [f"{n} of 1 pairs offered swaps)" for n in (1, 0, 1)]
    assert said[1] == "step 2: training ladder's smallest swap acceptance nan (0 of 1 pairs offered swaps)"


def test_centering_trains_by_the_centered_gradient_and_leaves_step_0_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--centering: the prior trains with offsets set by its first step's codes, where the run had none;
    the step-0 rows are those of a plain run (the model is the same), the later rows are not."""
    run = fit_run(tmp_path, TINY["model"]["prior"])
    offsets = []

    def recording(model, *args, **kwargs) -> None:
        train_prior(model, *args, **kwargs)
        offsets.append(dict(model.prior.named_buffers()).get("offsets"))

    monkeypatch.setattr("scripts.frozen_flow.train_prior", recording)
    rows = {}
    for name, extra in (("plain", []), ("centered", ["--centering", "0.5"])):
        out = tmp_path / f"{name}.jsonl"
        options = ["--steps", "2", "--every", "2", "--control-seeds", "0", "--feature", "digits"]
        main([str(run), *options, "--samples", "20", "--out", str(out), *extra])
        rows[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert offsets[0] is None and torch.isfinite(offsets[1]).all() and offsets[1].abs().sum() > 0
    assert [r["step"] for r in rows["centered"]] == [0, 2]
    assert rows["centered"][0] == rows["plain"][0]
    assert rows["centered"][1] != rows["plain"][1]


def test_a_centering_rate_out_of_range_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit:  # before the run is read
        main([str(tmp_path), "--centering", "0"])
    assert exit.value.code == 2
    assert "--centering takes a rate in (0, 1], got 0.0" in capsys.readouterr().err
