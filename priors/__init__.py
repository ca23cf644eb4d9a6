"""Prior plugins: base densities over z ∈ R^N for the flow (docs/maths.md §3–§6)."""

from priors.base import DiscretePrior, Prior
from priors.bernoulli import BernoulliPrior
from priors.gaussian import GaussianPrior
from priors.multicov import MultiCovPrior
from priors.plugins import discover_priors
from priors.rbm import RBMPrior
from priors.samplers import BlockGibbs, ParallelTempering, Sampler

__all__ = [
    "BernoulliPrior",
    "BlockGibbs",
    "DiscretePrior",
    "GaussianPrior",
    "MultiCovPrior",
    "ParallelTempering",
    "Prior",
    "RBMPrior",
    "Sampler",
    "discover_priors",
]
