"""CombinedOptimizer: two optimisers stepped, scheduled and checkpointed as one."""

import copy

import pytest
import torch

from ebmflow.optim import CombinedOptimizer


def pair(seed: int = 0):
    torch.manual_seed(seed)
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))
    combined = CombinedOptimizer([torch.optim.Adam([a], lr=0.1), torch.optim.SGD([b], lr=0.5, momentum=0.9)])
    return a, b, combined


def step(a, b, combined) -> None:
    combined.zero_grad()
    ((a**2).sum() + (b**3).sum()).backward()
    combined.step()


def test_each_parameter_follows_its_own_rule_and_the_closure_runs_once() -> None:
    a, b, combined = pair()
    a0, b0 = a.detach().clone(), b.detach().clone()
    calls = []

    def closure():
        calls.append(1)
        combined.zero_grad()
        loss = (a**2).sum() + (b**3).sum()
        loss.backward()
        return loss

    combined.step(closure)
    assert len(calls) == 1
    torch.testing.assert_close(a.detach(), a0 - 0.1 * torch.sign(a0), rtol=0, atol=1e-6)  # Adam's first step
    torch.testing.assert_close(b.detach(), b0 - 0.5 * 3 * b0**2)  # SGD: momentum buffer = first gradient


def test_a_scheduler_acts_on_both_and_state_round_trips() -> None:
    a, b, combined = pair()
    scheduler = torch.optim.lr_scheduler.LambdaLR(combined, lambda epoch: 0.5**epoch)
    step(a, b, combined)
    scheduler.step()
    assert [g["lr"] for g in combined.param_groups] == [0.05, 0.25]
    step(a, b, combined)

    a2, b2, restored = pair()
    with torch.no_grad():
        a2.copy_(a)
        b2.copy_(b)
    restored_scheduler = torch.optim.lr_scheduler.LambdaLR(restored, lambda epoch: 0.5**epoch)
    restored.load_state_dict(copy.deepcopy(combined.state_dict()))  # as a checkpoint would hold it
    restored_scheduler.load_state_dict(scheduler.state_dict())
    assert [g["lr"] for g in restored.param_groups] == [0.05, 0.25]
    for optimizer, schedule, x, y in ((combined, scheduler, a, b), (restored, restored_scheduler, a2, b2)):
        schedule.step()  # the restored schedule must reach the restored optimisers' groups
        step(x, y, optimizer)
    assert [g["lr"] for o in restored.optimizers for g in o.param_groups] == [0.025, 0.125]
    assert torch.equal(a, a2) and torch.equal(b, b2)  # moments and momentum came back exactly
    assert len(combined.state) == 2  # both optimisers' per-parameter states are visible as one
    assert dict(combined.state.items()) == {
        a: combined.optimizers[0].state[a],
        b: combined.optimizers[1].state[b],
    }
    assert len(combined.optimizers[0].state) == 1  # reading the merged view added nothing to a child
    combined.state_dict()  # and each child can still be saved


def test_mismatched_state_and_shared_parameters_fail_clearly() -> None:
    a, _, combined = pair()
    single = CombinedOptimizer([torch.optim.SGD([a], lr=0.1)])
    with pytest.raises(ValueError, match="prior_optimizer"):
        single.load_state_dict(combined.state_dict())
    with pytest.raises(ValueError, match="two of the combined"):
        CombinedOptimizer([torch.optim.SGD([a], lr=0.1), torch.optim.SGD([a], lr=0.1)])
