"""Entropy-constrained assignment of shadow weights to a grid: ECQ, and ECQx with weight relevances.

Per tensor (spec ecqx-ec2t.md §1, §2.3, §3.5):

1. nearest-level pre-assignment → cluster pmf with the 50 % zero floor → information content I_c;
2. λ = Λ · δ_l · λ_max (Λ = ``lam``, δ_l = :func:`ecqx.entropy.size_decay`, λ_max by the mode's rule);
3. cost C[i, c] = (w_i − value_c)² + λ · I_c, assignment = argmin_c (first index on ties);
4. ECQx: the zero-cluster cost is multiplied by 2·(r + 1e-12)^β with r = |R| / (max|R| + 1e-12) and β found by
   the reference's search, keeping the zero fraction inside [s_ECQ − p, s_ECQ].

Implementation: one pass stores, per weight, the zero-cluster cost and the cheapest cluster below and above
zero; the final argmin and every β trial of ECQx are then O(N) comparisons. The cheapest cluster of a side is
a dense argmin over ``chunk_size`` weights at a time (memory O(chunk·K)) for up to 32 clusters; for wider
grids (6–8 bit) it comes from the lower envelope of the cost lines (up to the common w² every cost is a line
in w): K×K tensor ops, one ``bucketize`` per weight and an exact float32 re-check of the envelope neighbours,
O(N log K) and the same result as the dense argmin (first index on ties). The nearest-level pre-assignment is
O(N) on uniform grids. Works on any device; no Python loop over weights or clusters.

Entry points: :func:`assign` (a :class:`~ecqx.grid.Grid` and a mode) for the callbacks, :func:`ec_assign`
(raw centroid values and explicit rules) for EC2T and experiments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ecqx._checks import check_choice, check_float_tensor, check_mode, check_nonnegative
from ecqx.entropy import cluster_counts, cluster_pmf, information_content, lambda_max
from ecqx.grid import Grid

DEFAULT_CHUNK = 1 << 16
DEFAULT_P = 0.1
BETA_EVALUATIONS = 51
RELEVANCE_EPS = 1e-12
#: segments with at least this many clusters use the lower-envelope search instead of a dense argmin
ENVELOPE_MIN_CLUSTERS = 33
#: largest entropy penalty λ·I_c kept (float32 costs): adding the distortion and ECQx's zero-cost factor
#: 2·r^β ≤ 2 must not overflow, else every cost is inf and the tie rule picks the lowest cluster
PENALTY_LIMIT = float(torch.finfo(torch.float32).max) / 8
# as a 0-d tensor (usable with tensors on any device), so that limit / top is one division
_PENALTY_LIMIT_TENSOR = torch.tensor(PENALTY_LIMIT, dtype=torch.float64)
EMPTY_CLUSTER_RULES = ("forbid", "count_one")


@dataclass
class Assignment:
    """Result of one assignment: cluster indices (int64, weights' shape) and per-layer statistics."""

    indices: torch.Tensor
    lam: float
    lam_max: float
    zero_fraction: float
    zero_fraction_ecq: float
    beta: float | None = None
    relevance_flips: int = 0


@dataclass
class _CostSummary:
    zero_cost: torch.Tensor
    below_cost: torch.Tensor
    below_index: torch.Tensor
    above_cost: torch.Tensor
    above_index: torch.Tensor


def _chunks(n: int, chunk_size: int):
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def nearest_indices(weights: torch.Tensor, centroids: torch.Tensor,
                    chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Index of the nearest centroid for every weight (flattened; first index on ties).

    Same result as ``argmin_k (w − c_k)²`` in float32; for equally spaced centroids it only compares the two
    centroids around w/Δ (O(N) instead of O(N·K)).
    """
    w = weights.detach().flatten().to(torch.float32)
    c = centroids.to(device=w.device, dtype=torch.float32)
    if _equally_spaced(c):
        return _nearest_on_uniform_grid(w, c)
    out = torch.empty(w.numel(), dtype=torch.int64, device=w.device)
    for part in _chunks(w.numel(), chunk_size):
        out[part] = (w[part].unsqueeze(0) - c.unsqueeze(1)).square().argmin(dim=0)
    return out


def _equally_spaced(c: torch.Tensor) -> bool:
    if c.numel() < 3:
        return False
    gaps = c[1:].double() - c[:-1].double()
    return bool(torch.allclose(gaps, gaps[0].expand_as(gaps), rtol=1e-6, atol=0.0)) and gaps[0].item() > 0


def _nearest_on_uniform_grid(w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # the float estimate of floor((w − c_0)/Δ) can be off by one only next to an integer, where the
    # nearest centroid is then still one of the two compared candidates
    inverse_step = (c.numel() - 1) / (c[-1].double() - c[0].double()).item()
    low = ((w - c[0]) * inverse_step).floor_().clamp_(0, c.numel() - 2).to(torch.int64)
    take_high = (w - c.index_select(0, low + 1)).square_() < (w - c.index_select(0, low)).square_()
    return low.add_(take_high)


def _lower_envelope(centroids: torch.Tensor, penalty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clusters on the lower envelope of the costs, and the weight values where the envelope switches.

    Up to the common w², cluster k costs the line −2·c_k·w + (c_k² + penalty_k); line k is the cheapest for w
    in [max_{j<k} x_jk, min_{j>k} x_kj] with x_jk the crossing of lines j and k (K×K tensor ops, K ≤ 256).
    """
    intercept = centroids.square() + penalty
    finite = torch.isfinite(penalty)
    crossing = (intercept[None, :] - intercept[:, None]) / (2.0 * (centroids[None, :] - centroids[:, None]))
    later = torch.ones_like(crossing, dtype=torch.bool).triu(1) & finite[:, None] & finite[None, :]
    left = torch.where(later, crossing, -math.inf).amax(dim=0)
    right = torch.where(later, crossing, math.inf).amin(dim=1)
    lines = torch.nonzero(finite & (left < right)).flatten()
    return lines, right[lines[:-1]]


def _dense_best_in_segment(w: torch.Tensor, centroids: torch.Tensor, penalty: torch.Tensor, start: int,
                           stop: int, chunk_size: int):
    """Cheapest cluster in ``start:stop`` by a dense argmin over ``chunk_size`` weights at a time."""
    c = centroids[start:stop].to(device=w.device, dtype=torch.float32)
    p = penalty[start:stop].to(device=w.device, dtype=torch.float32)
    best_cost = torch.empty_like(w)
    best_index = torch.empty(w.shape, dtype=torch.int64, device=w.device)
    for part in _chunks(w.numel(), chunk_size):
        cost = w[part].unsqueeze(0) - c.unsqueeze(1)
        best_cost[part], best_index[part] = cost.square_().add_(p.unsqueeze(1)).min(dim=0)
    return best_cost, best_index.add_(start)


def _best_in_segment(w: torch.Tensor, centroids: torch.Tensor, penalty: torch.Tensor, start: int, stop: int,
                     chunk_size: int = DEFAULT_CHUNK):
    """Cheapest cluster in ``start:stop`` per weight (first index on ties) and its cost.

    Few clusters: dense argmin. Many clusters (≥ ``ENVELOPE_MIN_CLUSTERS``): O(N log K) through the lower
    envelope; its pick and the two envelope neighbours are compared with the exact float32 cost, so weights
    next to a switching point get the same answer as the dense argmin.
    """
    if stop <= start or not bool(torch.isfinite(penalty[start:stop]).any()):
        return torch.full_like(w, math.inf), torch.zeros(w.shape, dtype=torch.int64, device=w.device)
    if stop - start < ENVELOPE_MIN_CLUSTERS:
        return _dense_best_in_segment(w, centroids, penalty, start, stop, chunk_size)
    lines, bounds = _lower_envelope(centroids[start:stop].double(), penalty[start:stop].double())
    lines = (lines + start).to(w.device)
    position = torch.bucketize(w, bounds.to(device=w.device, dtype=w.dtype))
    c32 = centroids.to(device=w.device, dtype=torch.float32)
    p32 = penalty.to(device=w.device, dtype=torch.float32)
    best_cost, best_index = None, None
    for shift in (-1, 0, 1):  # envelope neighbours, in ascending cluster order
        candidate = lines.index_select(0, (position + shift).clamp_(0, lines.numel() - 1))
        cost = (w - c32.index_select(0, candidate)).square_().add_(p32.index_select(0, candidate))
        if best_cost is None:
            best_cost, best_index = cost, candidate
            continue
        better = cost < best_cost
        best_cost = torch.where(better, cost, best_cost)
        best_index = torch.where(better, candidate, best_index)
    return best_cost, best_index


def _summarise_costs(w: torch.Tensor, centroids: torch.Tensor, penalty: torch.Tensor, zero_index: int,
                     chunk_size: int) -> _CostSummary:
    zero_cost = (w - centroids[zero_index]).square() + penalty[zero_index]
    below_cost, below_index = _best_in_segment(w, centroids, penalty, 0, zero_index, chunk_size)
    above_cost, above_index = _best_in_segment(w, centroids, penalty, zero_index + 1, centroids.numel(),
                                               chunk_size)
    return _CostSummary(zero_cost, below_cost, below_index, above_cost, above_index)


def _argmin_with_zero_cost(s: _CostSummary, zero_cost: torch.Tensor, zero_index) -> torch.Tensor:
    """Same result as argmin over all clusters (first index wins ties: below < zero < above)."""
    take_below = s.below_cost <= torch.minimum(zero_cost, s.above_cost)
    take_zero = ~take_below & (zero_cost <= s.above_cost)
    out = torch.where(take_below, s.below_index, s.above_index)
    return torch.where(take_zero, zero_index, out)  # zero_index: an int, or one per weight


def _zero_fraction(indices: torch.Tensor, zero_index: int) -> float:
    return (indices == zero_index).double().mean().item()


def _normalised_relevance(relevance: torch.Tensor) -> torch.Tensor | None:
    """r = |R| / (max|R| + 1e-12); None when R carries no ranking (all equal, e.g. uniform or all zero)."""
    magnitude = relevance.detach().flatten().abs().to(torch.float32)
    if bool((magnitude == magnitude[0]).all()):
        return None
    return magnitude / (magnitude.max() + RELEVANCE_EPS)


def _zero_cost_with_relevance(s: _CostSummary, log_r: torch.Tensor, beta) -> torch.Tensor:
    return s.zero_cost * (2.0 * torch.exp(beta * log_r))


def _exact_zero_fraction(s: _CostSummary, log_r: torch.Tensor, beta: float) -> float:
    zero_cost = _zero_cost_with_relevance(s, log_r, beta)
    is_zero = (zero_cost < s.below_cost) & (zero_cost <= s.above_cost)
    return is_zero.sum().item() / is_zero.numel()


def _beta_search(s: _CostSummary, r: torch.Tensor, zero_index: int, s_ecq: float, p: float):
    """The reference's β search (spec §3.5): first β with sparsity in [s_ECQ − p, s_ECQ], ≤ 51 trials.

    Trials count zeros in the log domain (zero wins iff β·ln r < ln(min(other costs) / (2·zero cost)), three
    cheap ops per trial); an admissible trial is confirmed with the exact cost comparison before it is kept.
    """
    beta = math.log(0.5) / math.log(r.double().mean().item())
    log_r = torch.log(r + RELEVANCE_EPS)
    log_room = torch.log(torch.minimum(s.below_cost, s.above_cost) / (2.0 * s.zero_cost))
    admissible = lambda fraction: s_ecq - p <= fraction <= s_ecq  # noqa: E731
    for iteration in range(BETA_EVALUATIONS):
        s_x = (beta * log_r < log_room).sum().item() / log_r.numel()
        if admissible(s_x):
            s_x = _exact_zero_fraction(s, log_r, beta)
        if admissible(s_x) or iteration == BETA_EVALUATIONS - 1:
            break
        step = 0.1 if iteration < 20 else 0.5 if iteration < 40 else 0.75
        direction = (s_ecq > s_x) - (s_ecq < s_x)
        beta = min(1.0, beta * (1.0 + step * direction))
    return _argmin_with_zero_cost(s, _zero_cost_with_relevance(s, log_r, beta), zero_index), beta


def capped_lambda(lam: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
    """λ per row of ``info`` (information contents, last dimension = clusters), lowered where a finite
    penalty λ·I_c would exceed :data:`PENALTY_LIMIT` to the λ that puts the largest one at the limit.

    The order of the penalties is kept, so a Λ too large for float32 acts as the largest one that fits:
    the zero cluster (the smallest information content) wins wherever the other penalties dominate.
    """
    # infinite information contents (empty clusters) never receive a finite penalty; a top of 0 gives an
    # infinite bound, which leaves λ as it is
    top = torch.nan_to_num(info, posinf=0.0).amax(dim=-1)
    return torch.minimum(lam, torch.div(_PENALTY_LIMIT_TENSOR, top))


def _entropy_penalty(w: torch.Tensor, centroids: torch.Tensor, zero_index: int, lam: float, decay: float,
                     pmf_mode: str, lambda_rule: str, empty_clusters: str, chunk_size: int):
    nearest = nearest_indices(w, centroids, chunk_size)
    counts = cluster_counts(nearest, centroids.numel())
    used = counts > 0
    if empty_clusters == "count_one":
        counts = counts.clamp(min=1)
    info = information_content(cluster_pmf(counts, zero_index, pmf_mode))
    lam_max = lambda_max(w.min().item(), w.max().item(), centroids.double().cpu(), used.cpu(), info.cpu(),
                         zero_index, lambda_rule)
    lam_layer = capped_lambda(torch.tensor(lam * decay * lam_max, dtype=torch.float64), info.cpu()).item()
    penalty = torch.zeros_like(info) if lam_layer == 0 else lam_layer * info
    return penalty.to(device=w.device, dtype=torch.float32), lam_layer, lam_max


def ec_assign(weights: torch.Tensor, centroids: torch.Tensor, zero_index: int, lam: float, decay: float = 1.0,
              pmf_mode: str = "clean", lambda_rule: str = "thesis", empty_clusters: str = "forbid",
              relevance: torch.Tensor | None = None, p: float = DEFAULT_P,
              chunk_size: int = DEFAULT_CHUNK) -> Assignment:
    """Entropy-constrained assignment to arbitrary sorted centroid values (see module docstring).

    ``lam`` is the global Λ (γ), ``decay`` the layer's δ_l; ``empty_clusters`` is ``"forbid"`` (P = 0, never
    chosen; ECQ/ECQx) or ``"count_one"`` (EC2T); ``relevance`` (shape of ``weights``) switches on ECQx.
    """
    check_float_tensor("weights", weights)
    check_nonnegative("lam", lam)
    check_nonnegative("decay", decay)
    check_nonnegative("p", p)
    check_choice("empty_clusters", empty_clusters, EMPTY_CLUSTER_RULES)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    if relevance is not None:
        check_float_tensor("relevance", relevance)
        if tuple(relevance.shape) != tuple(weights.shape):
            raise ValueError(f"relevance shape {tuple(relevance.shape)} != weights shape "
                             f"{tuple(weights.shape)}")
    w = weights.detach().flatten().to(torch.float32)
    c = centroids.to(device=w.device, dtype=torch.float32)
    if not 0 <= zero_index < c.numel() or c[zero_index].item() != 0.0:
        raise ValueError(f"centroids[{zero_index}] must be the zero centroid, centroids are {c.tolist()}")
    penalty, lam_layer, lam_max_value = _entropy_penalty(w, c, zero_index, lam, decay, pmf_mode, lambda_rule,
                                                         empty_clusters, chunk_size)
    summary = _summarise_costs(w, c, penalty, zero_index, chunk_size)
    indices = _argmin_with_zero_cost(summary, summary.zero_cost, zero_index)
    s_ecq = _zero_fraction(indices, zero_index)
    result = Assignment(indices.view(weights.shape), lam_layer, lam_max_value, s_ecq, s_ecq)
    r = None if relevance is None else _normalised_relevance(relevance.to(w.device))
    if r is None or s_ecq <= p:
        return result
    relevance_indices, beta = _beta_search(summary, r, zero_index, s_ecq, p)
    result.relevance_flips = int((relevance_indices != indices).sum().item())
    result.indices = relevance_indices.view(weights.shape)
    result.zero_fraction = _zero_fraction(relevance_indices, zero_index)
    result.beta = beta
    return result


def assign(weights: torch.Tensor, grid: Grid, lam: float, decay: float = 1.0, mode: str = "clean",
           relevance: torch.Tensor | None = None, p: float = DEFAULT_P,
           chunk_size: int = DEFAULT_CHUNK) -> Assignment:
    """ECQ (``relevance=None``) or ECQx assignment of ``weights`` onto ``grid``.

    ``mode="clean"``: renormalised pmf and the thesis λ_max (min rule); ``"faithful"``: the reference's pmf
    update and λ_max expression (max rule). Use :func:`levels_of` / :func:`values_of` on the result.
    """
    check_mode(mode)
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be an ecqx.grid.Grid, got {type(grid).__name__}")
    return ec_assign(weights, grid.values(weights.device), grid.zero_index, lam, decay, pmf_mode=mode,
                     lambda_rule="thesis" if mode == "clean" else "coded", relevance=relevance, p=p,
                     chunk_size=chunk_size)


def levels_of(assignment: Assignment, grid: Grid) -> torch.Tensor:
    """Integer levels (int32, multiples of ``grid.step``) of an assignment."""
    return grid.level_tensor(assignment.indices.device)[assignment.indices]


def values_of(assignment: Assignment, grid: Grid) -> torch.Tensor:
    """Quantized float32 weights of an assignment: exactly ``float32(level) * step`` on a snapped grid."""
    return grid.values(assignment.indices.device)[assignment.indices]
