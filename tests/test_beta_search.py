"""ECQx's grouped β search (per-weight thresholds, then trials on per-tensor bounds) against the lock-step
oracle (every trial over every weight, tests/beta_search_oracle.py): the same final β bit for bit, on
adversarial cost summaries and relevances — ties, r = 0 and r = 1, zero, tiny, huge and infinite costs,
weights exactly indifferent between zero and their best other cluster, all-zero relevance."""

from __future__ import annotations

import math

import pytest
import torch
from beta_search_oracle import lock_step_beta_search

import ecqx.grouped
from ecqx.assign import RELEVANCE_EPS, _CostSummary
from ecqx.grid import uniform_grid
from ecqx.layout import FlatLayout

SHAPES = [(37, 11), (4, 3, 3), (300,), (6,), (1, 129)]


def _costs(n: int, kind: str, generator: torch.Generator):
    """(zero cost, below, above) float32 of one tensor."""
    zero = torch.exp(torch.randn(n, generator=generator) * 2).float()
    spread = torch.exp(torch.randn(n, generator=generator) * 0.7)
    below = (zero * 2 * spread).float()
    above = (zero * 2 * torch.exp(torch.randn(n, generator=generator) * 0.7)).float()
    pick = torch.randint(0, 8, (n,), generator=generator)
    if kind == "ties":  # few distinct weights, each repeated many times
        rows = torch.randint(0, 4, (n,), generator=generator)
        zero, below, above = zero[rows], below[rows], above[rows]
    elif kind == "edges":
        zero = torch.where(pick == 0, 0.0, zero)
        below = torch.where(pick == 1, 2 * zero, below)  # ln room = 0
        above = torch.where(pick == 2, below, above)  # both sides equally cheap
        below = torch.where(pick == 3, math.inf, below)  # no cluster below zero
        zero = torch.where(pick == 4, zero * 1e30, zero)
        zero = torch.where(pick == 5, zero * 1e-38, zero)
        below = torch.where(pick == 6, torch.nextafter(2 * zero, torch.tensor(math.inf)), below)
    elif kind == "indifferent":  # zero costs almost what the best other cluster costs: the two tests differ
        offset = torch.randint(-3, 4, (n,), generator=generator).float() * 2.0 ** -23
        below = (2 * zero * (1 + offset)).float()
        above = torch.where(pick < 4, below, above)
    return zero, below, above


def _relevance(n: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "heavy":
        return torch.randn(n, generator=generator).abs() ** 4
    if kind == "ties":
        return torch.randint(0, 3, (n,), generator=generator).float()
    if kind == "sparse":  # mostly r = 0, a few r = 1
        return (torch.rand(n, generator=generator) < 0.05).float()
    if kind == "near_one":  # r ≈ 1 everywhere: β₀ large
        return 1.0 - torch.rand(n, generator=generator) * 1e-3
    if kind == "tiny":
        return torch.rand(n, generator=generator) * 1e-30
    return torch.rand(n, generator=generator)


def _search_both(layout, zero, below, above, relevance, zeros, p):
    summary = _CostSummary(zero, below, torch.zeros_like(zero, dtype=torch.int64), above,
                           torch.zeros_like(zero, dtype=torch.int64))
    r, informative = ecqx.grouped.normalised_relevance(layout, relevance)
    s_ecq = zeros / layout.numel_float64
    searching = informative & (s_ecq > p)
    log_r = torch.log(r + RELEVANCE_EPS)
    new = ecqx.grouped._beta_search(layout, summary, r, log_r, searching, zeros, s_ecq, p)[:, 0]
    old = lock_step_beta_search(layout, summary, r, searching, s_ecq, p)
    return new, old, searching


@pytest.fixture(autouse=True)
def all_trials(monkeypatch):
    monkeypatch.setattr(ecqx.grouped, "STOP_WHEN_DONE_ON_CPU", False)


@pytest.mark.parametrize("relevance_kind", ["heavy", "ties", "sparse", "near_one", "tiny", "uniform"])
@pytest.mark.parametrize("cost_kind", ["random", "ties", "edges", "indifferent"])
def test_beta_equals_the_lock_step_search(cost_kind, relevance_kind):
    layout = FlatLayout([(math.prod(s),) for s in SHAPES], block=64)
    searched = 0
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        parts = [_costs(math.prod(shape), cost_kind, generator) for shape in SHAPES]
        zero, below, above = (layout.flatten([part[i] for part in parts]) for i in range(3))
        relevance = layout.flatten([_relevance(math.prod(s), relevance_kind, generator) for s in SHAPES])
        zeros = torch.tensor([int(torch.randint(0, n + 1, (), generator=generator)) for n in layout.numels])
        zeros[0] = layout.numels[0]  # every weight zero under ECQ
        for p in (0.0, 0.05, 0.1, 0.3):
            new, old, searching = _search_both(layout, zero, below, above, relevance, zeros, p)
            assert torch.equal(new[searching], old[searching]), (seed, p, new, old)
            searched += int(searching.sum())
    assert searched > 0


def test_all_zero_and_constant_relevance_are_not_searched():
    layout = FlatLayout([(math.prod(s),) for s in SHAPES[:3]], block=64)
    generator = torch.Generator().manual_seed(0)
    parts = [_costs(math.prod(shape), "random", generator) for shape in SHAPES[:3]]
    zero, below, above = (layout.flatten([part[i] for part in parts]) for i in range(3))
    relevance = layout.flatten([torch.zeros(layout.numels[0]), torch.full((layout.numels[1],), 3.0),
                                torch.rand(layout.numels[2])])
    zeros = torch.tensor([n // 2 for n in layout.numels])
    new, old, searching = _search_both(layout, zero, below, above, relevance, zeros, 0.1)
    assert searching.tolist() == [False, False, True]
    assert torch.equal(new[searching], old[searching])


def _thresholds(log_r, room, zero_cost, limit, block=64):
    layout = FlatLayout([(log_r.numel(),)], block=block)
    flat = [layout.flatten([x]) for x in (log_r, room, zero_cost, limit)]
    found = ecqx.grouped._zero_thresholds(layout, *flat)
    return found.view(2, -1)[:, : log_r.numel()]


def test_thresholds_are_where_each_test_starts_to_hold():
    """At the threshold's float32 β the reference's test holds, one pattern below it does not."""
    generator = torch.Generator().manual_seed(1)
    n = 4000
    zero, below, above = _costs(n, "edges", generator)
    r = _relevance(n, "heavy", generator)
    r = torch.where(torch.arange(n) % 7 == 0, 0.0, r / r.max())
    r[:3] = 1.0
    log_r = torch.log(r + RELEVANCE_EPS)
    room = torch.log(torch.minimum(below, above) / (2.0 * zero))
    limit = torch.minimum(below, torch.nextafter(above, torch.tensor(math.inf)))
    found = _thresholds(log_r, room, zero, limit)
    first, never = ecqx.grouped._DOMAIN_FIRST, ecqx.grouped._NEVER

    def holds(bits):
        beta = bits.to(torch.int32).view(torch.float32)
        trial = beta * log_r
        exact = zero * (2.0 * torch.exp(trial))
        return torch.stack([trial[0] < room, ((exact < below) & (exact <= above))[1]])

    inside = found < never
    assert bool(holds(found)[inside].all())
    above_first = found > first
    assert not bool(holds(found - 1)[above_first].any())
    # a weight that never holds does not hold at the last pattern searched either
    assert not bool(holds(torch.full_like(found, never - 1))[~inside].any())
    assert bool(inside.any()) and bool((~inside).any()) and bool(above_first.any())


@pytest.mark.parametrize("relevance_kind", ["heavy", "ties", "sparse", "tiny"])
def test_group_assign_paths_agree_with_adversarial_relevances(monkeypatch, relevance_kind):
    generator = torch.Generator().manual_seed(2)
    tensors = [torch.randn(shape, generator=generator) * 0.1 for shape in SHAPES]
    tensors[1] = torch.round(tensors[1] * 20) / 20  # ties, weights on grid values
    grids = [uniform_grid(t, 4) for t in tensors]
    layout = FlatLayout([t.shape for t in tensors], block=64)
    relevance = layout.flatten([_relevance(t.numel(), relevance_kind, generator).view(t.shape)
                                for t in tensors])
    centroids = torch.stack([g.values() for g in grids])
    zero_index = torch.tensor([g.zero_index for g in grids])
    results = {}
    for path in ("grouped", "per_tensor"):
        monkeypatch.setattr(ecqx.grouped, "PATH", path)
        results[path] = ecqx.grouped.group_assign(layout.flatten(tensors), layout, centroids, zero_index,
                                                  torch.full((len(tensors),), 0.3, dtype=torch.float64),
                                                  relevance=relevance, p=0.05)
    grouped, per_tensor = results["grouped"], results["per_tensor"]
    for a, b in zip(layout.views(grouped.indices), layout.views(per_tensor.indices), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(grouped.zero_fraction, per_tensor.zero_fraction)
    assert torch.equal(grouped.relevance_flips, per_tensor.relevance_flips)
