"""ECQ assignment behaviour: λ = 0 is nearest level, large Λ prunes, monotone, exact values, chunking."""

import math
import sys

import numpy as np
import pytest
import torch

import ecqx
import ecqx.grouped
from ecqx.assign import (
    PENALTY_LIMIT,
    assign,
    capped_lambda,
    ec_assign,
    levels_of,
    nearest_indices,
    values_of,
)
from ecqx.ec2t import ec2t_assign
from ecqx.grid import Grid, uniform_grid
from ecqx.layout import FlatLayout
from ecqx.quantized import export_levels


@pytest.fixture(scope="module")
def weights():
    return torch.randn(96, 64, generator=torch.Generator().manual_seed(11)) * 0.1


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_lambda_zero_is_nearest_level(weights, mode):
    grid = uniform_grid(weights, 4, mode)
    result = assign(weights, grid, lam=0.0, mode=mode)
    # independent nearest-level rounding with numpy in float64, clipped to the grid
    w = weights.numpy().astype(np.float64)
    expected = np.clip(np.rint(w / grid.step), grid.levels[0], grid.levels[-1]).astype(np.int32)
    assert np.array_equal(levels_of(result, grid).numpy(), expected)


def test_large_lambda_gives_almost_all_zeros(weights):
    grid = uniform_grid(weights, 4)
    assert assign(weights, grid, lam=1e4).zero_fraction > 0.99


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_zero_fraction_monotone_in_lambda(weights, mode):
    grid = uniform_grid(weights, 4, mode)
    lams = (0, 0.01, 0.05, 0.1, 0.3, 1, 3)
    fractions = [assign(weights, grid, lam, mode=mode).zero_fraction for lam in lams]
    assert fractions == sorted(fractions)
    assert fractions[-1] > fractions[0]


def test_assignment_idempotent_at_lambda_zero_and_deterministic(weights):
    grid = uniform_grid(weights, 3)
    first = assign(weights, grid, 0.0)
    again = assign(values_of(first, grid), grid, 0.0)
    assert torch.equal(first.indices, again.indices)
    a, b = assign(weights, grid, 0.1), assign(weights.clone(), grid, 0.1)
    assert torch.equal(a.indices, b.indices) and a.lam == b.lam


def test_entropy_cost_by_hand():
    """Every weight takes argmin (w − c)² + λ·I_c with λ and I recomputed by hand from the pmf."""
    grid = Grid(levels=(-2, -1, 0, 1), step=1.0)
    w = torch.tensor([-1.4, -0.6, -0.4, 0.1, 0.2, 0.45, 0.55, 0.7, 0.9, 1.3])
    # nearest: [-1, -1, 0, 0, 0, 0, 1, 1, 1, 1] -> counts (0, 2, 4, 4)/10; P_z = 0.4 -> clean floor:
    # P = (0, 1/6, 0.5, 1/3); I = (inf, log2 6, 1, log2 3)
    # thesis λ_max: n side c=-1: (1.96 - 0.16)/(log2 6 - 1); p side c=1: (1.69 - 0.09)/(log2 3 - 1)
    lam_n = 1.8 / (np.log2(6) - 1)
    lam_p = 1.6 / (np.log2(3) - 1)
    result = assign(w, grid, lam=0.5, decay=1.0, mode="clean")
    assert result.lam_max == pytest.approx(min(lam_n, lam_p))
    lam = 0.5 * min(lam_n, lam_p)
    info = np.array([np.inf, np.log2(6), 1.0, np.log2(3)])
    centroids = np.array([-2.0, -1.0, 0.0, 1.0])
    cost = (w.numpy()[None, :].astype(np.float64) - centroids[:, None]) ** 2 + lam * info[:, None]
    assert result.indices.tolist() == cost.argmin(axis=0).tolist()


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_quantized_values_are_level_times_nnc_step(weights, mode):
    grid = uniform_grid(weights, 4, mode)
    result = assign(weights, grid, 0.05, mode=mode)
    q = export_levels(levels_of(result, grid), grid)
    exact = q.levels.to(torch.float64) * q.step
    assert torch.equal(q.dequantize().to(torch.float64), exact)
    if mode == "clean":
        assert torch.equal(q.dequantize(), values_of(result, grid))
        assert q.max_export_change == 0.0
    else:
        bound = max(abs(v) for v in grid.levels) * abs(q.step - grid.step)
        assert 0 < q.max_export_change <= bound * (1 + 1e-6)


def test_chunked_path_equals_single_chunk(weights):
    grid = uniform_grid(weights, 4)
    relevance = torch.rand(weights.shape, generator=torch.Generator().manual_seed(2)) ** 4
    whole = assign(weights, grid, 0.1, relevance=relevance)
    chunked = assign(weights, grid, 0.1, relevance=relevance, chunk_size=97)
    assert torch.equal(whole.indices, chunked.indices)
    assert torch.equal(nearest_indices(weights, grid.values(), 5), nearest_indices(weights, grid.values()))


def test_bad_inputs(weights):
    grid = uniform_grid(weights, 4)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        assign(weights, grid, -1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        assign(weights, grid, 0.1, mode="paper")
    with pytest.raises(TypeError, match="grid must be"):
        assign(weights, [0, 1], 0.1)
    with pytest.raises(ValueError, match="relevance shape"):
        assign(weights, grid, 0.1, relevance=torch.ones(3))
    with pytest.raises(ValueError, match="zero centroid"):
        ec_assign(weights, torch.tensor([-1.0, 0.5, 1.0]), 1, 0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        assign(weights, grid, 0.1, chunk_size=0)
    with pytest.raises(ValueError, match="weights contains NaN or infinite"):
        assign(torch.tensor([0.1, float("nan")]), grid, 0.1)
    with pytest.raises(ValueError, match="relevance contains NaN or infinite"):
        assign(weights, grid, 0.1, relevance=torch.full_like(weights, float("inf")))
    with pytest.raises(ValueError, match="weights contains NaN or infinite"):
        uniform_grid(torch.tensor([0.1, float("inf"), -0.2]))


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_uniform_nearest_shortcut_equals_full_argmin(weights, mode):
    grid = uniform_grid(weights, 4, mode)
    values = grid.values()
    step = grid.step
    midpoints = (torch.arange(-9, 9, dtype=torch.float64) + 0.5) * step
    probes = torch.cat([weights.flatten(), midpoints.float(), torch.tensor([-50 * step, 50 * step]),
                        values, torch.nextafter(values, torch.full_like(values, 1e9))])
    brute = (probes[None, :] - values[:, None]).square().argmin(dim=0)
    assert torch.equal(nearest_indices(probes, values), brute)


def _dense_reference(w, centroids, zero_index, lam_layer, pmf_mode, empty_clusters="forbid"):
    """Dense K×N argmin of (w − c)² + λ·I with the pmf of the nearest-level pre-assignment."""
    from ecqx.entropy import cluster_counts, cluster_pmf, information_content

    nearest = (w[None, :] - centroids[:, None]).square().argmin(dim=0)
    counts = cluster_counts(nearest, centroids.numel())
    if empty_clusters == "count_one":
        counts = counts.clamp(min=1)
    info = information_content(cluster_pmf(counts, zero_index, pmf_mode))
    penalty = torch.zeros_like(info) if lam_layer == 0 else lam_layer * info
    cost = (w[None, :] - centroids[:, None]).square() + penalty.float()[:, None]
    return cost.argmin(dim=0)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("mode", ["clean", "faithful"])
@pytest.mark.parametrize("lam", [0.0, 0.05, 0.5, 20.0])
def test_envelope_assignment_equals_dense_argmin(bits, mode, lam):
    generator = torch.Generator().manual_seed(bits)
    w = torch.cat([torch.randn(3000, generator=generator) * 0.05,
                   torch.randn(50, generator=generator) * 0.3])  # heavy tail: far clusters used
    grid = uniform_grid(w, bits, mode)
    result = assign(w, grid, lam, 0.8, mode)
    expected = _dense_reference(w, grid.values(), grid.zero_index, result.lam, mode)
    assert torch.equal(result.indices, expected)


def test_envelope_on_ternary_grid_with_empty_cluster():
    w = torch.tensor([0.01, -0.02, 0.9, 0.4, 0.03, 1.2, 0.6, -0.04])  # the negative cluster stays empty
    values = torch.tensor([-1.0, 0.0, 1.0])
    for gamma in (0.0, 0.1, 1.0):
        result = ec_assign(w, values, 1, gamma, empty_clusters="count_one")
        assert torch.equal(result.indices, _dense_reference(w, values, 1, result.lam, "clean", "count_one"))
    forbid = ec_assign(w, values, 1, 0.5)  # ECQ rule: an empty cluster has I = inf and is never chosen
    assert not bool((forbid.indices == 0).any())


@pytest.mark.parametrize("bits", [2, 4])
def test_envelope_path_forced_on_narrow_grids(monkeypatch, bits):
    import sys

    monkeypatch.setattr(sys.modules["ecqx.assign"], "ENVELOPE_MIN_CLUSTERS", 1)
    generator = torch.Generator().manual_seed(40 + bits)
    w = torch.cat([torch.randn(3000, generator=generator) * 0.05, torch.randn(50, generator=generator) * 0.3])
    for mode in ("clean", "faithful"):
        grid = uniform_grid(w, bits, mode)
        for lam in (0.0, 0.05, 0.5, 20.0):
            result = assign(w, grid, lam, 0.8, mode)
            expected = _dense_reference(w, grid.values(), grid.zero_index, result.lam, mode)
            assert torch.equal(result.indices, expected)


# ---------------------------------------------------------------------------------- very large Λ
HUGE_LAMBDAS = (1e30, 1e40, 1e42, 1e60, 1e300, sys.float_info.max)


@pytest.mark.parametrize("mode", ["clean", "faithful"])
@pytest.mark.parametrize("lam", HUGE_LAMBDAS)
def test_very_large_lambda_sets_every_weight_to_zero(weights, mode, lam):
    """λ·I_c beyond float32 used to make every cost inf, and the tie rule then picked the lowest level."""
    grid = uniform_grid(weights, 4, mode)
    result = assign(weights, grid, lam, 0.7, mode)
    assert bool((levels_of(result, grid) == 0).all())
    assert result.zero_fraction == 1.0 and math.isfinite(result.lam) and result.lam > 0


@pytest.mark.parametrize("lam", HUGE_LAMBDAS)
def test_very_large_gamma_makes_ec2t_all_zero(weights, lam):
    values = torch.tensor([-0.05, 0.0, 0.04])
    result = ec2t_assign(weights, values, lam)
    assert bool((result.indices == 1).all())


def test_very_large_lambda_with_relevance_keeps_the_ecq_zeros_within_p(weights):
    grid = uniform_grid(weights, 4)
    relevance = torch.rand(weights.shape, generator=torch.Generator().manual_seed(3))
    result = assign(weights, grid, 1e42, relevance=relevance, p=0.1)
    assert result.zero_fraction_ecq == 1.0 and 0.9 <= result.zero_fraction <= 1.0


@pytest.mark.parametrize("lam", [1e40, 1e42, 1e300])
def test_oneshot_quantize_with_very_large_lambda_gives_zero_levels(lam):
    generator = torch.Generator().manual_seed(5)
    state = {"conv.weight": torch.randn(8, 4, 3, 3, generator=generator) * 0.2,
             "mid.weight": torch.randn(16, 8, 3, 3, generator=generator) * 0.1,
             "fc.weight": torch.randn(10, 32, generator=generator),
             "fc.bias": torch.randn(10, generator=generator)}
    for method in ("ecq", "ec2t"):
        quantized = ecqx.quantize(state, method=method, lam=lam)
        assert quantized and all(not bool(q.levels.any()) for q in quantized.values())


@pytest.mark.parametrize("path", ["grouped", "per_tensor"])
def test_group_assignment_with_very_large_lambda_is_all_zero(monkeypatch, weights, path):
    monkeypatch.setattr(ecqx.grouped, "PATH", path)
    tensors = [weights, weights[:17, :5] * 3.0]
    grids = [uniform_grid(t, 4) for t in tensors]
    layout = FlatLayout([t.shape for t in tensors])
    centroids = torch.stack([g.values() for g in grids])
    zero_index = torch.tensor([g.zero_index for g in grids])
    for lam in (1e42, sys.float_info.max):
        result = ecqx.grouped.group_assign(layout.flatten(tensors), layout, centroids, zero_index,
                                           torch.tensor([lam, lam], dtype=torch.float64))
        for view, zero in zip(layout.views(result.indices), zero_index.tolist(), strict=True):
            assert bool((view == zero).all())
        assert bool(torch.isfinite(result.lam).all())


def test_capped_lambda_changes_only_overflowing_penalties():
    info = torch.tensor([[1.5, 1.0, math.inf, 3.0], [2.0, 1.0, 4.0, math.inf], [0.0, math.inf, 0.0, 0.0]],
                        dtype=torch.float64)
    lam = torch.tensor([0.123456789, 1e40, math.inf], dtype=torch.float64)
    capped = capped_lambda(lam, info)
    assert capped[0].item() == lam[0].item()  # below the limit: exactly the same λ
    assert capped[1].item() * 4.0 == pytest.approx(PENALTY_LIMIT)
    assert capped[2].item() == math.inf  # no finite positive information: λ does not matter
    penalty = (capped[:2, None] * info[:2]).to(torch.float32)
    assert bool(torch.isfinite(penalty[torch.isfinite(info[:2])]).all())
