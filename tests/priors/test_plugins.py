"""Prior plugins: entry-point discovery and selection by short name or full class path."""

import sys
import textwrap
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

from priors import GaussianPrior, Prior, RBMPrior, discover_priors

PLUGIN = textwrap.dedent(
    '''
    import torch
    from priors import Prior


    class LaplacePrior(Prior):
        """A prior that only this test's package ships."""

        def __init__(self, dim: int, scale: float = 1.0) -> None:
            super().__init__(dim)
            self.scale = scale

        def _log_prob(self, z):
            return -(z.abs() / self.scale).sum(1) - self.dim * torch.log(torch.tensor(2 * self.scale))

        def _sample(self, n, temperature):
            return torch.distributions.Laplace(0.0, self.scale * temperature).sample((n, self.dim))
    '''
)


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real distribution on sys.path declaring an ``ebmflow.priors`` entry point."""
    (tmp_path / "laplace_plugin.py").write_text(PLUGIN)
    info = tmp_path / "laplace_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: laplace-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ebmflow.priors]\nLaplacePrior = laplace_plugin:LaplacePrior\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("laplace_plugin", None)


def test_builtins_are_registered() -> None:
    found = discover_priors()
    assert {"GaussianPrior", "MultiCovPrior", "BernoulliPrior", "RBMPrior"} <= set(found)
    assert found["RBMPrior"] is RBMPrior


def test_plugin_resolves_by_short_name(installed_plugin: None) -> None:
    found = discover_priors()
    assert issubclass(found["LaplacePrior"], Prior)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Prior, "prior")
    cfg = parser.parse_args(["--prior=LaplacePrior", "--prior.dim=3", "--prior.scale=2.0"])
    prior = parser.instantiate(cfg).prior
    assert type(prior).__name__ == "LaplacePrior" and prior.scale == 2.0 and prior.dim == 3


def test_prior_by_full_class_path() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Prior, "prior")
    cfg = parser.parse_args(
        ['--prior={"class_path": "priors.gaussian.GaussianPrior", "init_args": {"dim": 5}}']
    )
    prior = parser.instantiate(cfg).prior
    assert isinstance(prior, GaussianPrior) and prior.dim == 5


def test_bad_entry_point_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "not_a_prior.py").write_text("class Thing:\n    pass\n")
    info = tmp_path / "not_a_prior-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: not-a-prior\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ebmflow.priors]\nThing = not_a_prior:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match="Thing = not_a_prior:Thing"):
        discover_priors()
