"""The centered gradient of an RBM (Montavon & Müller 2012; Melchior, Fischer & Wiskott 2016), as a
transformation of the plain gradient (docs/maths.md §4, "Centering").

With offsets μ = (μ_v, μ_h), the centered RBM writes the same model as

    log p̃(s) = (s_v − μ_v)ᵀ W (s_h − μ_h) + b_vᵀ(s_v − μ_v) + b_hᵀ(s_h − μ_h),
    so that  h_v = b_v − W μ_h,  h_h = b_h − Wᵀ μ_v.

A gradient step in the centered parameters (W, b_v, b_h), mapped back to (W, h_v, h_h), is a step along

    G'_W = G_W − μ_v G_hᵀ − G_v μ_hᵀ,   G'_v = G_v − G'_W μ_h,   G'_h = G_h − G'_Wᵀ μ_v

where G is the plain gradient. The model is the same whatever the offsets; only the update changes.
With W = V below the spectral cap (priors/precision.py) this is exact; at the cap the weight's step is
the cap's Jacobian applied to G'_W. It is better conditioned when the units' means are far from zero,
and with μ at the data's means the weight's update no longer carries the means' product, which the
biases learn on their own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["centered_gradient"]


class _CenteredGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: Tensor, bias: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(offsets)
        return weight.clone(), bias.clone()

    @staticmethod
    def backward(ctx: Any, grad_weight: Tensor, grad_bias: Tensor) -> tuple[Tensor, Tensor, None]:
        (offsets,) = ctx.saved_tensors
        n_v = grad_weight.shape[0]
        mu_v, mu_h = offsets[:n_v].to(grad_weight.dtype), offsets[n_v:].to(grad_weight.dtype)
        g_v, g_h = grad_bias[:n_v], grad_bias[n_v:]
        g_w = grad_weight - torch.outer(mu_v, g_h) - torch.outer(g_v, mu_h)
        return g_w, torch.cat([g_v - g_w @ mu_h, g_h - g_w.T @ mu_v]), None


def centered_gradient(weight: Tensor, bias: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """(W, h) unchanged, whose gradients become the centered gradient for ``offsets``.

    Args:
        weight: W, (n_v, n_h).
        bias: h = (h_v, h_h), (n_v + n_h,).
        offsets: μ = (μ_v, μ_h), (n_v + n_h,); no gradient reaches them.
    """
    if bias.shape != offsets.shape or bias.shape[0] != sum(weight.shape):
        raise ValueError(
            f"bias {tuple(bias.shape)} and offsets {tuple(offsets.shape)} must both have n_v + n_h = "
            f"{sum(weight.shape)} entries for a weight of shape {tuple(weight.shape)}"
        )
    return _CenteredGradient.apply(weight, bias, offsets.detach())
