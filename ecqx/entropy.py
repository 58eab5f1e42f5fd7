"""Cluster pmf, information content, λ_max and the per-layer size decay (spec ecqx-ec2t.md §1-§4, §7).

All functions work on small per-cluster vectors (length K = number of grid levels) and return float64 values;
nothing here loops over weights.

Two conventions exist where the reference code and the written method disagree (spec §7 P3/P4):

* pmf with the 50 % zero floor — ``clean``: non-zero probabilities scaled by 0.5/(1 − P_z) so the pmf sums
  to 1;
  ``faithful``: the reference's sequential in-place update, clusters visited in ascending level order, the
  correction (0.5 − P_z) re-read after the zero cluster itself was updated in the middle of the loop (the sum
  of the non-zero probabilities in the denominator is taken once, before the loop). Closed form, no loop.
* λ_max — ``thesis`` (clean, and EC2T in both modes): λ_side = (w_ext² − (w_ext − c_side)²)/(I_side − I_z),
  λ_max = min over the sides; ``coded`` (faithful ECQ/ECQx): λ_side = ((c_side − w_ext)² − (0 − w_ext))² /
  (I_side − I_z), λ_max = max over the sides. c_side is the outermost centroid used by the nearest-level
  pre-assignment on that side, w_ext the extreme weight on that side; a side without a used non-zero cluster
  or with I_side ≤ I_z does not take part; no side at all gives λ_max = 0.
"""

from __future__ import annotations

import math

import torch

from ecqx._checks import check_choice

ZERO_FLOOR = 0.5
SUSTAIN = 0.05
LAMBDA_RULES = ("thesis", "coded")
PMF_MODES = ("clean", "faithful")


def cluster_counts(indices: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Number of weights assigned to each of ``num_clusters`` clusters (int64, via ``bincount``)."""
    return torch.bincount(indices.flatten(), minlength=num_clusters)[:num_clusters]


def cluster_pmf(counts: torch.Tensor, zero_index: int, mode: str = "clean",
                floor: float = ZERO_FLOOR) -> torch.Tensor:
    """Cluster probabilities from counts, with the zero cluster raised to at least ``floor`` (module docs)."""
    check_choice("pmf mode", mode, PMF_MODES)
    counts = counts.to(torch.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("cluster counts must not all be zero")
    pmf = counts / total
    p_zero = pmf[zero_index].item()
    rest = 1.0 - p_zero
    if p_zero >= floor or rest <= 0:
        return pmf
    if mode == "clean":
        pmf = pmf * (floor / rest)
    else:
        deficit_before = floor - p_zero
        p_zero_updated = p_zero - p_zero / rest * deficit_before
        deficit_after = floor - p_zero_updated
        factors = torch.ones_like(pmf)
        factors[:zero_index] = 1.0 - deficit_before / rest
        factors[zero_index + 1:] = 1.0 - deficit_after / rest
        pmf = pmf * factors
    pmf[zero_index] = floor
    return pmf


def information_content(pmf: torch.Tensor) -> torch.Tensor:
    """−log2 P per cluster in bits (float64); +inf for a cluster of probability 0 (it can never be chosen)."""
    return -torch.log2(pmf.to(torch.float64))


def _side_lambda(w_ext: float, centroid: float, info_side: float, info_zero: float,
                 rule: str) -> float | None:
    denominator = info_side - info_zero
    if not denominator > 0 or not math.isfinite(denominator):
        return None
    if rule == "thesis":
        return (w_ext ** 2 - (w_ext - centroid) ** 2) / denominator
    return ((centroid - w_ext) ** 2 - (0.0 - w_ext)) ** 2 / denominator


def lambda_max(w_min: float, w_max: float, centroids: torch.Tensor, used: torch.Tensor, info: torch.Tensor,
               zero_index: int, rule: str = "thesis") -> float:
    """λ at which the extreme weight of a side would flip to zero (module docstring); clamped at 0."""
    check_choice("lambda rule", rule, LAMBDA_RULES)
    used_below = torch.nonzero(used[:zero_index]).flatten()
    used_above = torch.nonzero(used[zero_index + 1:]).flatten() + zero_index + 1
    info_zero = info[zero_index].item()
    sides = []
    if used_below.numel():
        low = int(used_below[0])
        sides.append(_side_lambda(w_min, centroids[low].item(), info[low].item(), info_zero, rule))
    if used_above.numel():
        high = int(used_above[-1])
        sides.append(_side_lambda(w_max, centroids[high].item(), info[high].item(), info_zero, rule))
    sides = [s for s in sides if s is not None]
    if not sides:
        return 0.0
    value = min(sides) if rule == "thesis" else max(sides)
    return max(value, 0.0)


def size_decay(num_weights: int, max_num_weights: int, sustain: float = SUSTAIN) -> float:
    """δ_l = (N_l / N_max + ς) / (1 + ς): larger layers get a larger λ (spec §1)."""
    if num_weights <= 0 or max_num_weights < num_weights:
        raise ValueError(f"need 0 < num_weights <= max_num_weights, got {num_weights} and {max_num_weights}")
    if sustain < 0:
        raise ValueError(f"sustain must be >= 0, got {sustain!r}")
    return (num_weights / max_num_weights + sustain) / (1.0 + sustain)
