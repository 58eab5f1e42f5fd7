"""Entropy-constrained assignment of a whole group of tensors at once, without host synchronisation.

The same maths as :mod:`ecqx.assign` (spec ecqx-ec2t.md §1, §2.3, §3.5) — and the same results, bit for bit —
computed for all tensors of a :class:`~ecqx.layout.FlatLayout` together: per-tensor quantities (cluster
counts, pmf, information content, λ_max, λ, penalties, sparsities, the ECQx β) are ``[T]`` or ``[T, K]``
device tensors, per-element quantities are flat buffers, and every loop runs over weight chunks or β trials,
never over tensors. Nothing here calls ``.item()``: a training step stays on the device.

The grid of tensor ``t`` is row ``t`` of ``centroids`` (``[T, K]`` float32, ascending) with its zero cluster
at ``zero_index[t]``.

ECQx's β search (spec §3.5) is the reference's sequential search for every tensor at once: per-weight
thresholds (the smallest β at which each of the reference's two zero tests holds) are found once, sorted
per tensor, and turn every trial's decision into a comparison of β with two per-tensor bounds
(:func:`_beta_search`), so the trials cost ``[T]``-sized operations and the outcome equals the per-tensor
search's bit for bit.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

from ecqx._checks import check_choice
from ecqx.assign import (
    BETA_EVALUATIONS,
    EMPTY_CLUSTER_RULES,
    RELEVANCE_EPS,
    _argmin_with_zero_cost,
    _CostSummary,
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
#: on the CPU, end the β search's trials once every tensor's search has stopped (same result, fewer trials);
#: accelerators always run all trials, since asking whether they are done would wait for the device.
STOP_WHEN_DONE_ON_CPU = True
#: ECQx threshold search (:func:`_zero_thresholds`): 2**_RADIX_BITS − 1 candidates per weight, test and round;
#: the domain is every float32 β in [2**-64, 2**64), 2**30 consecutive bit patterns, so 6 rounds
_RADIX_BITS = 5
_DOMAIN_BITS = 30
_DOMAIN_SIZE = 1 << _DOMAIN_BITS
_DOMAIN_FIRST = 63 << 23  # bit pattern of 2**-64
#: the domain's last pattern, never evaluated: a weight that no β of the domain makes zero
_NEVER = _DOMAIN_FIRST + _DOMAIN_SIZE - 1
_PATTERN_MASK = (1 << 31) - 1
#: elements of one ``[2, chunk, block, candidates]`` tensor of the threshold search (128 MiB of float32)
SEARCH_CHUNK_ELEMENTS = 1 << 25
_PHASE_STEPS = (0.1, 0.5, 0.75)
_CONSTANTS: dict = {}
_LAYOUT_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
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
    values, weights = layout.rows(centroids), layout.blocks(w)
    if part.stop - part.start < layout.num_blocks:
        values, weights = values[part], weights[part]
    return (weights[:, :, None] - values[:, None, :]).square_()


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
    zero_column = zero_index[:, None]
    # [2, blocks, 1, K]: the penalties of the clusters below zero, then above it, inf elsewhere
    sides = torch.stack([torch.where(position < zero_column, penalty, math.inf),
                         torch.where(position > zero_column, penalty, math.inf)])
    side_rows = sides.index_select(1, layout.block_owner)[:, :, None, :]
    # the zero centroid is 0 (ecqx.assign.ec_assign requires it), so its distance is w²
    zero_cost = layout.blocks(w).square().add_(layout.rows(penalty.gather(1, zero_column)))
    costs, indices = [], []
    for part in _chunks(layout, 2 * k):
        rows = side_rows if part.stop - part.start == layout.num_blocks else side_rows[:, part]
        # a side without finite clusters keeps index 0 and an infinite cost, as the per-tensor path
        cost, index = (_distances(w, layout, centroids, part) + rows).min(dim=3)
        costs.append(cost)
        indices.append(index)
    cost = costs[0] if len(costs) == 1 else torch.cat(costs, dim=1)
    index = indices[0] if len(indices) == 1 else torch.cat(indices, dim=1)
    below_cost, above_cost = cost.view(2, -1).unbind()
    below_index, above_index = index.view(2, -1).unbind()
    return _CostSummary(zero_cost.view(-1), below_cost, below_index, above_cost, above_index)


def _fraction(layout: FlatLayout, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of true elements per tensor (``mask``: flat or ``[blocks, block]``)."""
    return layout.count_true(mask.reshape(-1)) / layout.numel_float64


def normalised_relevance(layout: FlatLayout, relevance: torch.Tensor):
    """``(r, informative)``: r = |R| / (max|R| + 1e-12) per tensor; ``informative[t]`` false where R is
    constant (the padding reads its tensor's maximum)."""
    # detach and a same-dtype .to() are still one dispatched operation each; skip them where they do nothing
    magnitude = (relevance.detach() if relevance.requires_grad else relevance).abs()
    if magnitude.dtype != torch.float32:
        magnitude = magnitude.to(torch.float32)
    low, high = layout.amin(magnitude), layout.amax(magnitude)
    r = magnitude / layout.gather(high + RELEVANCE_EPS)
    return r, low != high


def _layout_tables(layout: FlatLayout):
    """Per layout (built once), for :func:`_beta_search`: ``[T, 2]`` int64 offsets that turn its two ranks
    (first + 1, zeros_ecq) into the flat positions of the order statistics first and zeros_ecq + 1, and the
    values from which those ranks lie past the tensor's end; the sort key offset of every block
    (``owner << 31``, ``[1, blocks, 1, 1]``: one sort then orders each tensor's thresholds separately); the
    valid elements as ``[blocks, block, 1]``."""
    tables = _LAYOUT_TABLES.get(layout)
    if tables is None:
        offsets = torch.tensor(layout.offsets, dtype=torch.int64, device=layout.device)[:, None]
        numel = layout.numel_tensor[:, None]
        owner_keys = (layout.block_owner << 31)[None, :, None, None]
        valid = layout.blocks(layout.valid)[:, :, None]
        shift = torch.tensor([[-2, 0]], device=layout.device)
        tables = (offsets + shift, numel - shift, owner_keys, valid)
        _LAYOUT_TABLES[layout] = tables
    return tables


def _search_constants(device: torch.device):
    """Per device (built once): the candidate offsets of every radix round, the log-domain row selector of
    the threshold search, the β factors of the three search phases and a few constants."""
    key = str(device)
    if key not in _CONSTANTS:
        candidates = (1 << _RADIX_BITS) - 1
        # candidate j of a round is low + before + j·width (before: the rounds' earlier candidates·widths);
        # low starts one domain size higher so that it ends on the answer
        offsets, before, width = [], -_DOMAIN_SIZE, _DOMAIN_SIZE
        for _ in range(_DOMAIN_BITS // _RADIX_BITS):
            width >>= _RADIX_BITS
            steps = torch.arange(1, candidates + 1, dtype=torch.int32) * width + before
            offsets.append((steps.to(device), width))
            before += candidates * width
        log_domain = torch.tensor([True, False], device=device).view(2, 1, 1, 1)
        # the reference's factors 1 + step·sign(s_ECQ − s_x), indexed by the trial's decision (up, stop, down)
        factors = [
            torch.tensor([1.0 + step * d for d in (1, 0, -1)], dtype=torch.float64, device=device)
            for step in _PHASE_STEPS
        ]
        infinity = torch.tensor(math.inf, dtype=torch.float64, device=device)
        probes = torch.arange(-1, 3, dtype=torch.float64, device=device)
        _CONSTANTS[key] = (offsets, log_domain, factors, infinity, infinity.to(torch.float32), probes)
    return _CONSTANTS[key]


def _zero_thresholds(
    layout: FlatLayout, log_r: torch.Tensor, room: torch.Tensor, zero_cost: torch.Tensor, limit: torch.Tensor
) -> torch.Tensor:
    """``[2, blocks, block, 1]`` int32: per weight, the smallest float32 β of the search domain (as its bit
    pattern) from which the log-domain test (row 0: β·ln r < ln room) and the exact comparison (row 1:
    zero cost·2·exp(β·ln r) < limit) put the weight into the zero cluster; :data:`_NEVER` where no β does.

    Radix search over the ordered bit patterns of positive float32 β, ``2**_RADIX_BITS − 1`` candidates per
    weight, test and round, each evaluated with the reference's float32 expressions. Both tests are
    monotone in β: ln r ≤ 0 (r ≤ 1, and float32 ``log`` is ≤ 0 there), so β·ln r falls as β grows
    (correctly rounded multiplication is monotone), and the exact test relies on float32 ``exp`` being
    non-decreasing (true of torch's CPU kernels on every float32 in [−104, 0], checked exhaustively; not a
    documented guarantee of every device's exp). So the candidates that pass are the highest ones, and their
    number says where the answer lies.
    """
    offsets, log_domain = _search_constants(log_r.device)[:2]
    candidates = (1 << _RADIX_BITS) - 1
    shape = (layout.num_blocks, layout.block, 1)
    slope, cost = log_r.view(shape), zero_cost.view(shape)
    bound = torch.stack([room, limit]).view(2, *shape)
    size = max(1, SEARCH_CHUNK_ELEMENTS // (2 * candidates * layout.block))
    parts = []
    for start in range(0, layout.num_blocks, size):
        part = slice(start, min(start + size, layout.num_blocks))
        if size < layout.num_blocks:
            chunk_slope, chunk_cost, chunk_bound = slope[part], cost[part], bound[:, part]
        else:
            chunk_slope, chunk_cost, chunk_bound = slope, cost, bound
        low = torch.full(chunk_bound.shape, _DOMAIN_FIRST - 1 + _DOMAIN_SIZE, dtype=torch.int32,
                         device=log_r.device)
        for steps, width in offsets:
            trial = (low + steps).view(torch.float32) * chunk_slope
            exact = torch.exp(trial).mul_(2.0).mul_(chunk_cost)
            passed = torch.where(log_domain, trial, exact) < chunk_bound
            low.sub_(passed.sum(dim=-1, keepdim=True, dtype=torch.int32), alpha=width)
        parts.append(low)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _float64_bound(bits: torch.Tensor, infinity: torch.Tensor) -> torch.Tensor:
    """The smallest float64 β whose float32 rounding is at least the float32 with (positive) bit pattern
    ``bits``: halfway to the float32 below, or just above it where that halfway point rounds down (ties go
    to the even pattern, as every float64 → float32 conversion here)."""
    high = bits.view(torch.float32)
    middle = (high.double() + (bits - 1).view(torch.float32).double()) * 0.5  # exact in float64
    return torch.where(middle.to(torch.float32) == high, middle, torch.nextafter(middle, infinity))


def _beta_search(
    layout: FlatLayout,
    s: _CostSummary,
    r: torch.Tensor,
    log_r: torch.Tensor,
    searching: torch.Tensor,
    zeros_ecq: torch.Tensor,
    s_ecq: torch.Tensor,
    p: float,
) -> torch.Tensor:
    """The reference's sequential β search for every tensor (spec §3.5): the final β, float64 ``[T, 1]``.

    The reference's decision at a trial β depends only on β's float32 rounding b: it counts the weights the
    log-domain test makes zero at b; if that count is inside the band [s_ECQ − p, s_ECQ] it counts the
    exact comparison's zeros at b and stops if that count is inside too; otherwise β moves up or down by
    the count it used. Both counts grow with b (:func:`_zero_thresholds`), so the decision is "up" below
    some b = U, "stop" on [U, V) and "down" from V: U and V follow from each tensor's sorted per-weight
    thresholds (order statistics at the band's ends), and every trial is then a comparison of β with two
    float64 bounds and one multiplication, ``[T]`` values, instead of passes over all weights.

    Every β a trial evaluates lies in [2**-51, 2**55] (β₀ = ln 0.5 / ln mean r with a finite, non-constant
    relevance, times at most 50 factors in [0.25, 1.75], capped at 1), inside the threshold search's
    domain [2**-64, 2**64).
    """
    _, _, factors, infinity, infinity32, probes = _search_constants(r.device)
    before_first, past_last, owner_keys, valid = _layout_tables(layout)
    n = layout.numel_float64[:, None]
    beta0 = math.log(0.5) / torch.log(layout.sum(torch.where(layout.valid, r.double(), 0.0))[:, None] / n)
    # the band in zero counts: [first, zeros_ecq], where a count c is admissible iff s_ECQ − p ≤ c / n ≤ s_ECQ
    # in float64 as the reference evaluates it (c / n grows strictly with c); first is the smallest
    # admissible one of the four counts base − 1 … base + 2 around base = ⌊(s_ECQ − p)·n⌋
    band_low = (s_ecq - p)[:, None]
    base = (band_low * n).floor_()
    first = base + ((base + probes) / n < band_low).sum(dim=1, keepdim=True)  # first + 1
    # [T, 2] int64: the ranks first and zeros_ecq + 1, each minus 2 and 0 (see _layout_tables)
    ranks = torch.cat([first, zeros_ecq[:, None]], dim=1).to(torch.int64)
    room = torch.log(torch.minimum(s.below_cost, s.above_cost) / (2.0 * s.zero_cost))
    # exact zero ⇔ cost < below and cost ≤ above ⇔ cost < min(below, the float32 after above)
    limit = torch.minimum(s.below_cost, torch.nextafter(s.above_cost, infinity32))
    thresholds = torch.where(valid, _zero_thresholds(layout, log_r, room, s.zero_cost, limit), _NEVER)
    # each tensor's thresholds in ascending order, tensors one after the other
    ordered = (owner_keys + thresholds).view(2, -1).sort(dim=1).values
    statistics = ordered[:, (before_first + ranks).clamp_(max=layout.size - 1)] & _PATTERN_MASK
    log_domain, exact = torch.where(ranks >= past_last, _NEVER, statistics).to(torch.int32).unbind()
    # [T, 2]: U = max(a₁, min(e₁, a₂)), V = max(a₁, min(e₂, a₂)) with a the log-domain and e the exact
    # test's order statistics at the band's ends (a₁: the first b with a count ≥ first, a₂: the first b with
    # a count > zeros_ecq); below a₁ and from a₂ on the log-domain count decides, in between the exact one;
    # a₁ ≤ a₂, so this is e clamped to [a₁, a₂]
    low_end, high_end = log_domain.split(1, dim=1)
    decision = torch.clamp(exact, low_end, high_end)
    bounds = _float64_bound(decision, infinity)
    beta = beta0
    stopped_first = None
    for iteration in range(BETA_EVALUATIONS - 1):
        direction = torch.searchsorted(bounds, beta, right=True)  # 0: up, 1: stop, 2: down
        if stopped_first is None:
            stopped_first = direction == 1
        phase = 0 if iteration < 20 else 1 if iteration < 40 else 2
        # a stopped search stays where it is: factor 1, and β ≤ 1 after the first trial
        beta = (beta * factors[phase].take(direction)).clamp_(max=1.0)
        on_cpu = STOP_WHEN_DONE_ON_CPU and beta.device.type == "cpu"
        if on_cpu and bool(((direction == 1) | ~searching).all()):
            break  # on the CPU reading a value costs no device synchronisation; later trials change nothing
    # a search that stops at its first trial keeps β₀ even above 1
    return torch.where(stopped_first, beta0, beta)


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
    zeros_ecq = layout.count_true(indices == zero_element)
    s_ecq = zeros_ecq / layout.numel_float64
    r, informative = normalised_relevance(layout, relevance)
    searching = informative & (s_ecq > p)
    log_r = torch.log(r + RELEVANCE_EPS)
    beta = _beta_search(layout, summary, r, log_r, searching, zeros_ecq, s_ecq, p)
    # the reference's zero cost with relevance, zero cost · 2·exp(β·ln r)
    trial = layout.rows(beta.to(torch.float32)) * layout.blocks(log_r)
    zero_cost = summary.zero_cost * (2.0 * torch.exp(trial.view(-1)))
    relevant = _argmin_with_zero_cost(summary, zero_cost, zero_element)
    relevant = torch.where(layout.gather(searching), relevant, indices)
    # per tensor: weights the relevance moved, and zeros
    counted = torch.stack([relevant != indices, relevant == zero_element], dim=1) & layout.valid[:, None]
    counts = layout.per_tensor(layout.blocks(counted).sum(dim=1, dtype=torch.int32))
    flips, zeros = counts.to(torch.int64).unbind(1)
    return GroupAssignment(relevant, lam, zeros / layout.numel_float64, flips)


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
