"""scripts/frozen_flow.py on a tiny RBM-Flow run of the bundled digits: the prior trains and the flow
does not, the rows it scores, and that it writes nothing it was not asked to."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from scripts.compare_samplers import build, restore
from scripts.frozen_flow import endless, main, train_prior
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
