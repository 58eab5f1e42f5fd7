"""Grids: percentile step, 5-vote orientation, unsigned branch, NNC snapping (spec ecqx-ec2t.md §2.2)."""

import numpy as np
import pytest
import torch

from ecqx.grid import Grid, percentile_abs, positive_side_heavier, snap_grid, uniform_grid, uniform_levels
from ecqx.stepsize import nnc_step_size
from ecqx.targets import select_targets


@pytest.fixture(scope="module")
def resnet20(shared_dir):
    return torch.load(shared_dir / "models" / "resnet20.pt", map_location="cpu")


def test_percentile_matches_numpy_linear_interpolation():
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 1000, 4321):
        values = rng.standard_normal(n).astype(np.float32)
        for pct in (0.0, 50.0, 99.9, 100.0):
            expected = np.percentile(np.abs(values).astype(np.float64), pct)
            assert percentile_abs(torch.from_numpy(values), pct) == pytest.approx(expected, rel=1e-12)


def test_orientation_votes_by_hand():
    # positives: larger extreme, larger mean, fewer values, larger sum, larger std -> 4 of 5 votes positive
    w = torch.tensor([3.0, 1.0, -0.5, -0.5, -0.6])
    assert positive_side_heavier(w)
    assert not positive_side_heavier(-w)
    # exact tie on every vote -> all votes negative
    assert not positive_side_heavier(torch.tensor([1.0, -1.0, 2.0, -2.0]))


def test_uniform_levels():
    assert uniform_levels(4, True, True) == tuple(range(-7, 9))
    assert uniform_levels(4, True, False) == tuple(range(-8, 8))
    assert uniform_levels(2, False, True) == (0, 1, 2, 3)
    assert uniform_levels(8, True, True)[0] == -127


def test_unsigned_branch_and_hand_step():
    w = torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0])
    grid = uniform_grid(w, bits=2, mode="faithful", percentile=100.0)
    assert grid.levels == (0, 1, 2, 3)
    assert grid.step == pytest.approx(3.0 / 3)
    signed = uniform_grid(w, bits=2, mode="faithful", percentile=100.0, unsigned=False)
    assert signed.levels == (-1, 0, 1, 2) and signed.step == pytest.approx(3.0)


def test_clean_grid_is_snapped_and_exact():
    torch.manual_seed(0)
    w = torch.randn(300, 20)
    grid = uniform_grid(w, bits=4, mode="clean")
    assert grid.snapped and grid.step == nnc_step_size(grid.qp, grid.qp_density)
    assert abs(grid.step - grid.raw_step) <= 0.01 * grid.raw_step
    exact = torch.tensor(grid.levels, dtype=torch.float64) * grid.step
    assert torch.equal(grid.values().to(torch.float64), exact)


def test_faithful_grid_unsnapped_until_export():
    w = torch.randn(50, 50, generator=torch.Generator().manual_seed(3))
    grid = uniform_grid(w, bits=3, mode="faithful")
    assert not grid.snapped and grid.qp is None
    snapped = snap_grid(grid)
    assert snapped.levels == grid.levels and snapped.raw_step == grid.raw_step
    assert snapped.step == nnc_step_size(snapped.qp, snapped.qp_density)


def test_resnet20_steps_and_orientation_match_reference(resnet20):
    """Spec §2.2/§9: conv1 Δ = 0.24406 with grid −7…+8, layer3.2.conv2 Δ = 0.02863, Δ ∈ [0.0286, 0.2626]."""
    grids = {n: uniform_grid(resnet20[n], 4, "faithful") for n in select_targets(resnet20)}
    assert grids["conv1.weight"].step == pytest.approx(0.24406, abs=5e-6)
    assert grids["conv1.weight"].levels == tuple(range(-7, 9))
    assert grids["layer3.2.conv2.weight"].step == pytest.approx(0.02863, abs=5e-6)
    assert grids["linear.weight"].step == pytest.approx(0.2626, abs=5e-5)
    steps = [g.step for g in grids.values()]
    assert min(steps) == grids["layer3.2.conv2.weight"].step and max(steps) == grids["linear.weight"].step
    positive = sum(g.levels[-1] == 8 for g in grids.values())
    assert (positive, len(grids) - positive) == (10, 10)


def test_grid_round_trips_through_dict():
    grid = uniform_grid(torch.randn(40, generator=torch.Generator().manual_seed(5)), 5)
    assert Grid.from_dict(grid.to_dict()) == grid


def test_bad_inputs():
    w = torch.randn(10)
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        uniform_grid(w, bits=1)
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        uniform_grid(w, bits=9)
    with pytest.raises(ValueError, match="mode must be one of"):
        uniform_grid(w, mode="exact")
    with pytest.raises(TypeError, match="floating-point"):
        uniform_grid(torch.arange(10))
    with pytest.raises(ValueError, match="all-zero"):
        uniform_grid(torch.zeros(5))
    with pytest.raises(ValueError, match="containing 0"):
        Grid(levels=(1, 2), step=0.5)
    with pytest.raises(ValueError, match="is not Δ"):
        Grid(levels=(0, 1), step=0.3, qp=-8, qp_density=2)
