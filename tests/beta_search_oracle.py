"""Test oracle: ECQx's β search over a group of tensors, the reference's sequential trials in lock step.

Every trial evaluates, for all tensors at once and over every weight, the log-domain zero count and the exact
cost comparison (spec ecqx-ec2t.md §3.5, ``ecqx.assign._beta_search`` per tensor); a tensor whose search has
ended keeps its β. :func:`ecqx.grouped._beta_search` must return the same β bit for bit
(tests/test_beta_search.py).
"""

from __future__ import annotations

import math

import torch

from ecqx.assign import BETA_EVALUATIONS, RELEVANCE_EPS, _CostSummary
from ecqx.layout import FlatLayout


def lock_step_beta_search(
    layout: FlatLayout,
    s: _CostSummary,
    r: torch.Tensor,
    searching: torch.Tensor,
    s_ecq: torch.Tensor,
    p: float,
) -> torch.Tensor:
    """Final β per tensor (float64 ``[T]``) after the reference's trials (the 51st only decides to stop)."""
    n = layout.numel_float64
    mean_r = layout.sum(torch.where(layout.valid, r.double(), 0.0)) / n
    beta = (math.log(0.5) / torch.log(mean_r))[:, None]
    log_r = torch.log(r + RELEVANCE_EPS)
    log_room = torch.log(torch.minimum(s.below_cost, s.above_cost) / (2.0 * s.zero_cost))
    band_low, band_high = (s_ecq - p)[:, None], s_ecq[:, None]
    n_column = n[:, None]
    done = (~searching)[:, None]
    # padding: no zero in either test, so the per-block counts need no mask
    log_room = layout.blocks(torch.where(layout.valid, log_room, -math.inf))
    below = layout.blocks(torch.where(layout.valid, s.below_cost, -math.inf))
    log_r, zero_cost, above = layout.blocks(log_r), layout.blocks(s.zero_cost), layout.blocks(s.above_cost)
    for iteration in range(BETA_EVALUATIONS - 1):
        trial = log_r * layout.rows(beta.to(torch.float32))
        exact_cost = zero_cost * (2.0 * torch.exp(trial))
        approx_zero = trial < log_room
        exact_zero = (exact_cost < below) & (exact_cost <= above)
        counts = torch.stack(
            [approx_zero.sum(dim=1, dtype=torch.int32), exact_zero.sum(dim=1, dtype=torch.int32)], 1
        )
        fraction = layout.per_tensor(counts) / n_column
        approx_admissible, exact_admissible = ((band_low <= fraction) & (fraction <= band_high)).split(
            1, dim=1
        )
        approx_fraction, exact_fraction = fraction.split(1, dim=1)
        done = done | (approx_admissible & exact_admissible)
        used = torch.where(approx_admissible, exact_fraction, approx_fraction)
        step = 0.1 if iteration < 20 else 0.5 if iteration < 40 else 0.75
        factor = torch.sign(band_high - used).mul_(step).add_(1.0)
        beta = torch.where(done, beta, (beta * factor).clamp_(max=1.0))
    return beta[:, 0]
