"""Entropy-constrained assignment of a whole group of tensors at once, without host synchronisation.

The same maths as :mod:`ecqx.assign` (spec ecqx-ec2t.md §1, §2.3, §3.5) — and the same results, bit for bit —
computed for all tensors of a :class:`~ecqx.layout.FlatLayout` together: per-tensor quantities (cluster
counts, pmf, information content, λ_max, λ, penalties, sparsities, the ECQx β) are ``[T]`` or ``[T, K]``
device tensors, per-element quantities are flat buffers, and every loop runs over weight chunks or β trials,
never over tensors. Nothing here calls ``.item()``: a training step stays on the device.

The grid of tensor ``t`` is row ``t`` of ``centroids`` (``[T, K]`` float32, ascending) with its zero cluster
at ``zero_index[t]``.

ECQx's β search (spec §3.5) is the reference's sequential search run for every tensor in lock step: the trials
are evaluated for all tensors, and a tensor whose search has ended keeps its β, so the outcome equals the
per-tensor search that stops at its first admissible trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ecqx._checks import check_choice
from ecqx.assign import (
    BETA_EVALUATIONS,
    EMPTY_CLUSTER_RULES,
    RELEVANCE_EPS,
    _argmin_with_zero_cost,
    _CostSummary,
    _zero_cost_with_relevance,
    capped_lambda,
    ec_assign,
)
from ecqx.entropy import LAMBDA_RULES, PMF_MODES, ZERO_FLOOR
from ecqx.layout import FlatLayout


@dataclass
class GroupAssignment:
    """Result of one group assignment: flat cluster indices and per-tensor statistics (device tensors)."""

    indices: torch.Tensor
    lam: torch.Tensor
    zero_fraction: torch.Tensor
    relevance_flips: torch.Tensor


#: elements of one ``[chunk, K]`` cost matrix (64 MiB of float32); the weights are processed in chunks of
#: ``CHUNK_ELEMENTS // K``: the number of operations grows with the model size, not with its tensor count.
CHUNK_ELEMENTS = 1 << 24
#: on the CPU, end the lock-step β search once every tensor's search has ended (same result, fewer trials);
#: accelerators always run all trials, since asking whether they are done would wait for the device.
STOP_WHEN_DONE_ON_CPU = True
PATHS = ("auto", "grouped", "per_tensor")
#: which implementation :func:`group_assign` runs: ``"grouped"`` (all tensors at once, fixed operation count,
#: no host synchronisation: what accelerators need), ``"per_tensor"`` (:func:`ecqx.assign.ec_assign` per
#: tensor, with its data-dependent early exits) or ``"auto"``: per tensor on the CPU, where reading a value
#: waits for nothing and large tensors are assigned faster that way, grouped everywhere else. Both give the
#: same results bit for bit (tests/test_group_state.py runs both).
PATH = "auto"


def _chunks(layout: FlatLayout, k: int):
    """Slices of whole blocks, ``CHUNK_ELEMENTS // k`` weights at a time."""
    size = max(1, CHUNK_ELEMENTS // (k * layout.block))
    for start in range(0, layout.num_blocks, size):
        yield slice(start, min(start + size, layout.num_blocks))


def _distances(w: torch.Tensor, layout: FlatLayout, centroids: torch.Tensor, part: slice) -> torch.Tensor:
    """``[blocks, block, K]`` float32 (w − value_c)² of the blocks in ``part`` (the per-tensor arithmetic)."""
    values = layout.rows(centroids)[part]
    return (layout.blocks(w)[part][:, :, None] - values[:, None, :]).square_()


def nearest_uniform(w: torch.Tensor, layout: FlatLayout, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest cluster of every weight on equally spaced grids (first index on ties), O(N).

    Only the two clusters around (w − c_0)/Δ are compared, as :func:`ecqx.assign.nearest_indices` does; the
    inverse spacing is rounded to float32 exactly as a Python scalar multiplying a float32 tensor is.
    """
    k = centroids.shape[1]
    spacing = centroids[:, -1].double() - centroids[:, 0].double()
    inverse = torch.where(spacing > 0, (k - 1) / spacing, 0.0).to(torch.float32)
    first = layout.rows(centroids[:, 0])[:, None]
    scaled = (layout.blocks(w) - first) * layout.rows(inverse)[:, None]
    low = scaled.floor_().clamp_(0, k - 2).to(torch.int64).view(-1)
    high_value = layout.take(centroids, low + 1)
    low_value = layout.take(centroids, low)
    take_high = (w - high_value).square_() < (w - low_value).square_()
    return low.add_(take_high)


def nearest_dense(w: torch.Tensor, layout: FlatLayout, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest cluster of every weight by comparing all K clusters (first index on ties)."""
    out = layout.blocks(torch.empty(layout.size, dtype=torch.int64, device=w.device))
    for part in _chunks(layout, centroids.shape[1]):
        out[part] = _distances(w, layout, centroids, part).argmin(dim=2)
    return out.view(-1)


def cluster_pmf_rows(counts: torch.Tensor, zero_index: torch.Tensor, mode: str) -> torch.Tensor:
    """Row-wise :func:`ecqx.entropy.cluster_pmf` (50 % zero floor, clean or faithful update), float64."""
    check_choice("pmf mode", mode, PMF_MODES)
    counts = counts.to(torch.float64)
    pmf = counts / counts.sum(dim=1, keepdim=True)
    rows = torch.arange(pmf.shape[0], device=pmf.device)
    p_zero = pmf[rows, zero_index]
    rest = 1.0 - p_zero
    raise_zero = (p_zero < ZERO_FLOOR) & (rest > 0)
    k = torch.arange(pmf.shape[1], device=pmf.device)
    if mode == "clean":
        floored = pmf * (ZERO_FLOOR / rest)[:, None]
    else:
        deficit_before = ZERO_FLOOR - p_zero
        p_zero_updated = p_zero - p_zero / rest * deficit_before
        deficit_after = ZERO_FLOOR - p_zero_updated
        below = (1.0 - deficit_before / rest)[:, None]
        above = (1.0 - deficit_after / rest)[:, None]
        zero_column = zero_index[:, None]
        factors = torch.where(k < zero_column, below, torch.where(k > zero_column, above, 1.0))
        floored = pmf * factors
    floored = torch.where(k == zero_index[:, None], ZERO_FLOOR, floored)
    return torch.where(raise_zero[:, None], floored, pmf)


def _side_lambda(
    w_ext: torch.Tensor,
    centroid: torch.Tensor,
    info_side: torch.Tensor,
    info_zero: torch.Tensor,
    present: torch.Tensor,
    rule: str,
) -> torch.Tensor:
    """λ of one side per tensor, NaN where the side takes no part (see :func:`ecqx.entropy.lambda_max`)."""
    denominator = info_side - info_zero
    valid = present & (denominator > 0) & torch.isfinite(denominator)
    if rule == "thesis":
        value = (w_ext.square() - (w_ext - centroid).square()) / denominator
    else:
        value = ((centroid - w_ext).square() - (0.0 - w_ext)).square() / denominator
    return torch.where(valid, value, math.nan)


def lambda_max_rows(
    w_min: torch.Tensor,
    w_max: torch.Tensor,
    centroids: torch.Tensor,
    used: torch.Tensor,
    info: torch.Tensor,
    zero_index: torch.Tensor,
    rule: str,
) -> torch.Tensor:
    """Row-wise :func:`ecqx.entropy.lambda_max` (float64 ``[T]``)."""
    check_choice("lambda rule", rule, LAMBDA_RULES)
    t, k = used.shape
    rows = torch.arange(t, device=used.device)
    position = torch.arange(k, device=used.device)
    zero_column = zero_index[:, None]
    below = used & (position < zero_column)
    above = used & (position > zero_column)
    low = torch.where(below, position, k).amin(dim=1).clamp_(max=k - 1)
    high = torch.where(above, position, -1).amax(dim=1).clamp_(min=0)
    c = centroids.double()
    info_zero = info[rows, zero_index]
    sides = torch.stack(
        [
            _side_lambda(w_min.double(), c[rows, low], info[rows, low], info_zero, below.any(dim=1), rule),
            _side_lambda(w_max.double(), c[rows, high], info[rows, high], info_zero, above.any(dim=1), rule),
        ]
    )
    if rule == "thesis":
        value = torch.where(torch.isnan(sides), math.inf, sides).amin(dim=0)
    else:
        value = torch.where(torch.isnan(sides), -math.inf, sides).amax(dim=0)
    value = torch.where(torch.isnan(sides).all(dim=0), 0.0, value)
    return value.clamp(min=0.0)


def entropy_penalty(
    w: torch.Tensor,
    layout: FlatLayout,
    centroids: torch.Tensor,
    zero_index: torch.Tensor,
    lam_decay: torch.Tensor,
    pmf_mode: str,
    lambda_rule: str,
    empty_clusters: str,
    nearest: torch.Tensor,
):
    """``(penalty [T, K] float32, λ [T])`` from the nearest-level pre-assignment ``nearest``.

    ``lam_decay`` is Λ·δ_l per tensor (float64); penalty = λ·I_c, zero everywhere where λ = 0.
    """
    check_choice("empty_clusters", empty_clusters, EMPTY_CLUSTER_RULES)
    k = centroids.shape[1]
    counts = layout.count(nearest, k)
    used = counts > 0
    if empty_clusters == "count_one":
        counts = counts.clamp(min=1)
    info = -torch.log2(cluster_pmf_rows(counts, zero_index, pmf_mode))
    lam_max = lambda_max_rows(layout.amin(w), layout.amax(w), centroids, used, info, zero_index, lambda_rule)
    lam = capped_lambda(lam_decay * lam_max, info)
    lam_column = lam[:, None]
    penalty = torch.where(lam_column == 0, 0.0, lam_column * info).to(torch.float32)
    return penalty, lam


def argmin_cost(
    w: torch.Tensor, layout: FlatLayout, centroids: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """argmin_c (w − value_c)² + penalty_c per weight, first index on ties (the per-tensor float32 math)."""
    out = layout.blocks(torch.empty(layout.size, dtype=torch.int64, device=w.device))
    penalty_rows = layout.rows(penalty)[:, None, :]
    for part in _chunks(layout, centroids.shape[1]):
        out[part] = _distances(w, layout, centroids, part).add_(penalty_rows[part]).argmin(dim=2)
    return out.view(-1)


def _summarise(
    w: torch.Tensor,
    layout: FlatLayout,
    centroids: torch.Tensor,
    penalty: torch.Tensor,
    zero_index: torch.Tensor,
) -> _CostSummary:
    """Per weight: the zero cluster's cost and the cheapest cluster below and above zero (as ecqx.assign)."""
    k = centroids.shape[1]
    position = torch.arange(k, device=w.device)
    below_penalty = torch.where(position < zero_index[:, None], penalty, math.inf)
    above_penalty = torch.where(position > zero_index[:, None], penalty, math.inf)
    blocks = layout.blocks
    zero_cost, below_cost, above_cost = (blocks(torch.empty_like(w)) for _ in range(3))
    below_index, above_index = (
        blocks(torch.empty(layout.size, dtype=torch.int64, device=w.device)) for _ in range(2)
    )
    rows = {
        name: layout.rows(table)[:, None, :]
        for name, table in (("all", penalty), ("below", below_penalty), ("above", above_penalty))
    }
    zero_column = layout.rows(zero_index)[:, None, None].expand(-1, layout.block, 1)
    for part in _chunks(layout, k):
        distance = _distances(w, layout, centroids, part)
        zero_cost[part] = (distance + rows["all"][part]).gather(2, zero_column[part])[:, :, 0]
        # a side without finite clusters keeps index 0 and an infinite cost, as the per-tensor path
        below_cost[part], below_index[part] = (distance + rows["below"][part]).min(dim=2)
        above_cost[part], above_index[part] = (distance + rows["above"][part]).min(dim=2)
    zero_cost, below_cost, above_cost = zero_cost.view(-1), below_cost.view(-1), above_cost.view(-1)
    below_index, above_index = below_index.view(-1), above_index.view(-1)
    return _CostSummary(zero_cost, below_cost, below_index, above_cost, above_index)


def _fraction(layout: FlatLayout, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of true elements per tensor (``mask``: flat or ``[blocks, block]``)."""
    return layout.count_true(mask.reshape(-1)) / layout.numel_float64


def normalised_relevance(layout: FlatLayout, relevance: torch.Tensor):
    """``(r, informative)``: r = |R| / (max|R| + 1e-12) per tensor; ``informative[t]`` false where R is
    constant (the padding reads its tensor's maximum)."""
    magnitude = relevance.detach().abs().to(torch.float32)
    low, high = layout.amin(magnitude), layout.amax(magnitude)
    r = magnitude / layout.gather(high + RELEVANCE_EPS)
    return r, low != high


def _beta_search(
    layout: FlatLayout,
    s: _CostSummary,
    r: torch.Tensor,
    searching: torch.Tensor,
    s_ecq: torch.Tensor,
    p: float,
):
    """All tensors' β searches in lock step (module docstring); returns the final β per tensor (float64).

    Each trial counts, per tensor, the zeros of the log-domain test and of the exact cost comparison (dense
    per-block sums); the reference consults the exact count only when the log-domain count is admissible.
    The 51st trial of the reference only decides to stop, so 50 trials give the same β.
    """
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
        if STOP_WHEN_DONE_ON_CPU and beta.device.type == "cpu" and bool(done.all()):
            break  # on the CPU reading a value costs no device synchronisation; later trials change nothing
    return beta[:, 0]


def group_assign(
    w: torch.Tensor,
    layout: FlatLayout,
    centroids: torch.Tensor,
    zero_index: torch.Tensor,
    lam_decay: torch.Tensor,
    pmf_mode: str = "clean",
    lambda_rule: str = "thesis",
    empty_clusters: str = "forbid",
    uniform: bool = True,
    relevance: torch.Tensor | None = None,
    p: float = 0.1,
) -> GroupAssignment:
    """Entropy-constrained assignment of every tensor of ``layout`` (ECQ, ECQx with ``relevance``, EC2T).

    Same arguments and results as :func:`ecqx.assign.ec_assign` applied to each tensor: ``w`` is the flat
    float32 buffer, ``uniform`` says the grids are equally spaced (the O(N) nearest-level pre-assignment).
    Which implementation runs is :data:`PATH`'s choice.
    """
    if _per_tensor(w.device):
        return _assign_per_tensor(
            w, layout, centroids, zero_index, lam_decay, pmf_mode, lambda_rule, empty_clusters, relevance, p
        )
    nearest = (nearest_uniform if uniform else nearest_dense)(w, layout, centroids)
    penalty, lam = entropy_penalty(
        w, layout, centroids, zero_index, lam_decay, pmf_mode, lambda_rule, empty_clusters, nearest
    )
    flips = torch.zeros_like(layout.numel_tensor)
    if relevance is None:
        indices = argmin_cost(w, layout, centroids, penalty)
        s_ecq = _fraction(layout, layout.blocks(indices) == layout.rows(zero_index)[:, None])
        return GroupAssignment(indices, lam, s_ecq, flips)
    zero_element = layout.gather(zero_index)
    summary = _summarise(w, layout, centroids, penalty, zero_index)
    indices = _argmin_with_zero_cost(summary, summary.zero_cost, zero_element)
    s_ecq = _fraction(layout, indices == zero_element)
    r, informative = normalised_relevance(layout, relevance)
    searching = informative & (s_ecq > p)
    beta = _beta_search(layout, summary, r, searching, s_ecq, p)
    zero_cost = _zero_cost_with_relevance(summary, torch.log(r + RELEVANCE_EPS), layout.gather(beta.float()))
    relevant = _argmin_with_zero_cost(summary, zero_cost, zero_element)
    relevant = torch.where(layout.gather(searching), relevant, indices)
    flips = layout.count_true(relevant != indices)
    return GroupAssignment(relevant, lam, _fraction(layout, relevant == zero_element), flips)


def _per_tensor(device: torch.device) -> bool:
    check_choice("ecqx.grouped.PATH", PATH, PATHS)
    return PATH == "per_tensor" or (PATH == "auto" and device.type == "cpu")


def _assign_per_tensor(
    w, layout, centroids, zero_index, lam_decay, pmf_mode, lambda_rule, empty_clusters, relevance, p
) -> GroupAssignment:
    """:func:`ecqx.assign.ec_assign` on each tensor's view (reads λ, sparsities and β on the host)."""
    indices = torch.zeros(layout.size, dtype=torch.int64, device=w.device)
    relevances = [None] * layout.num_tensors if relevance is None else layout.views(relevance)
    results = []
    for t, (weights, out, rel) in enumerate(
        zip(layout.views(w), layout.views(indices), relevances, strict=True)
    ):
        result = ec_assign(
            weights,
            centroids[t],
            int(zero_index[t]),
            float(lam_decay[t]),
            1.0,
            pmf_mode=pmf_mode,
            lambda_rule=lambda_rule,
            empty_clusters=empty_clusters,
            relevance=rel,
            p=p,
        )
        out.copy_(result.indices)
        results.append(result)

    def column(name, dtype):
        return torch.tensor([getattr(r, name) for r in results], dtype=dtype, device=w.device)

    return GroupAssignment(
        indices,
        column("lam", torch.float64),
        column("zero_fraction", torch.float64),
        column("relevance_flips", torch.int64),
    )


__all__ = [
    "PATH",
    "GroupAssignment",
    "group_assign",
    "nearest_uniform",
    "nearest_dense",
    "cluster_pmf_rows",
    "lambda_max_rows",
    "entropy_penalty",
    "argmin_cost",
    "normalised_relevance",
]
