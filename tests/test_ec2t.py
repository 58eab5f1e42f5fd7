"""EC2T: magnitude gradients vs autograd, 0.675·std floor, λ_max min rule, frozen phase, exact codebook."""

import numpy as np
import pytest
import torch
from tensor_state_oracle import TensorState

from ecqx.ec2t import (
    NEGATIVE,
    POSITIVE,
    ZERO,
    clamp_magnitudes,
    ec2t_assign,
    ec2t_gradients,
    frozen_values,
    init_magnitudes,
    magnitude_floor,
    ternary_grid,
    ternary_step,
)
from ecqx.quantized import export_levels


@pytest.fixture()
def weights():
    return torch.randn(40, 30, generator=torch.Generator().manual_seed(4)) * 0.2


def test_magnitude_gradients_match_autograd(weights):
    indices = torch.randint(0, 3, weights.shape, generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(weights.shape, generator=torch.Generator().manual_seed(2))
    w_n = torch.tensor(0.3, requires_grad=True)
    w_p = torch.tensor(0.25, requires_grad=True)
    ternary = torch.where(indices == POSITIVE, w_p, torch.where(indices == NEGATIVE, -w_n, torch.zeros(())))
    (upstream * ternary).sum().backward()
    shadow_grad, grad_n, grad_p = ec2t_gradients(upstream, indices, 0.3, 0.25, mode="clean")
    torch.testing.assert_close(grad_n, w_n.grad)
    torch.testing.assert_close(grad_p, w_p.grad)
    _, faithful_n, faithful_p = ec2t_gradients(upstream, indices, 0.3, 0.25, mode="faithful")
    torch.testing.assert_close(faithful_n, -w_n.grad)  # the reference's sign (spec P9)
    torch.testing.assert_close(faithful_p, w_p.grad)
    scale = torch.where(indices == POSITIVE, 0.25, torch.where(indices == NEGATIVE, 0.3, 1.0))
    expected_shadow = upstream * scale
    torch.testing.assert_close(shadow_grad, expected_shadow)


def test_magnitude_gradient_matches_finite_difference(weights):
    indices = ec2t_assign(weights, torch.tensor([-0.3, 0.0, 0.25]), 0.0).indices
    target = torch.randn(weights.shape, generator=torch.Generator().manual_seed(3))

    def loss(w_n, w_p):
        values = torch.tensor([-w_n, 0.0, w_p], dtype=torch.float64)
        return 0.5 * ((values[indices] - target.double()) ** 2).sum().item()

    values = torch.tensor([-0.3, 0.0, 0.25])
    upstream = values[indices] - target  # dL/dT
    _, grad_n, grad_p = ec2t_gradients(upstream, indices, 0.3, 0.25, "clean")
    h = 1e-4
    assert grad_n.item() == pytest.approx((loss(0.3 + h, 0.25) - loss(0.3 - h, 0.25)) / (2 * h), rel=1e-3)
    assert grad_p.item() == pytest.approx((loss(0.3, 0.25 + h) - loss(0.3, 0.25 - h)) / (2 * h), rel=1e-3)


def test_floor_is_respected(weights):
    floor = 0.675 * float(np.std(weights.numpy().astype(np.float64), ddof=1))
    assert magnitude_floor(weights) == pytest.approx(floor, rel=1e-5)
    w_n, w_p = torch.tensor(0.01), torch.tensor(0.5)
    clamp_magnitudes(w_n, w_p, weights)
    assert w_n.item() == pytest.approx(floor, rel=1e-5) and w_p.item() == 0.5
    qp, density, step = ternary_step(0.01, 0.5)
    grid = ternary_grid(0.01, 0.5, qp, density, step, floor=floor)
    assert -grid.levels[0] * step >= floor and grid.levels[-1] * step >= floor


def test_init_and_grid_codebook(weights):
    w_n, w_p = init_magnitudes(weights, 0.3)
    assert w_n == pytest.approx(0.3 * abs(weights.min().item()))
    assert w_p == pytest.approx(0.3 * weights.max().item())
    qp, density, step = ternary_step(w_n, w_p)
    grid = ternary_grid(w_n, w_p, qp, density, step)
    assert grid.levels[1] == 0 and not grid.is_contiguous
    assert abs(-grid.levels[0] * step - w_n) <= step / 2 and abs(grid.levels[2] * step - w_p) <= step / 2
    with pytest.raises(ValueError, match="both signs"):
        init_magnitudes(weights.abs())


def test_lambda_uses_thesis_formula_with_min_rule():
    w = torch.tensor([-1.0, -0.9, -0.2, -0.1, 0.0, 0.1, 0.15, 0.3, 0.8, 1.2])
    values = torch.tensor([-1.0, 0.0, 1.0])
    result = ec2t_assign(w, values, gamma=1.0)
    # nearest: n = {-1, -0.9}, 0 = {-0.2 … 0.3}, p = {0.8, 1.2}: P = (0.2, 0.6, 0.2), no floor needed
    info_side, info_zero = -np.log2(0.2), -np.log2(0.6)
    lam_n = (1.0 - 0.0) / (info_side - info_zero)
    lam_p = (1.44 - 0.04) / (info_side - info_zero)
    assert result.lam_max == pytest.approx(min(lam_n, lam_p))


def test_empty_cluster_counts_one():
    w = torch.tensor([0.05, -0.02, 0.9, 0.01])
    result = ec2t_assign(w, torch.tensor([-1.0, 0.0, 1.0]), gamma=0.0)
    assert result.indices.tolist() == [ZERO, ZERO, POSITIVE, ZERO]
    # with λ > 0 the empty negative cluster still has a finite cost (count 1) and λ_max stays finite
    assert np.isfinite(ec2t_assign(w, torch.tensor([-1.0, 0.0, 1.0]), gamma=0.5).lam_max)


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_state_frozen_phase_keeps_assignment(weights, mode):
    state = TensorState.for_ec2t(weights, gamma=0.15, mode=mode)
    first = state.requantize(weights)
    kept = state.indices.clone()
    state.freeze()
    with torch.no_grad():
        state.w_p.add_(0.05)
    moved = weights + 0.3 * torch.randn(weights.shape, generator=torch.Generator().manual_seed(9))
    second = state.requantize(moved)
    assert torch.equal(state.indices, kept)
    assert torch.equal(second == 0, first == 0)
    assert second.max().item() > first.max().item()
    torch.testing.assert_close(second, frozen_values(kept, state.ternary_values()))


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_state_export_is_codebook_times_step(weights, mode):
    state = TensorState.for_ec2t(weights, gamma=0.15, mode=mode)
    trained = state.requantize(weights)
    q = state.export()
    assert q.codebook is not None and q.codebook.dtype == torch.int32 and q.codebook.tolist()[1] == 0
    assert set(q.levels.unique().tolist()) <= set(q.codebook.tolist())
    exact = q.levels.double() * q.step
    assert torch.equal(q.dequantize().double(), exact)
    # both modes train on the snapped grid (faithful mode changes only the pmf/λ/gradient-sign rules)
    assert torch.equal(q.dequantize(), trained) and q.max_export_change == 0


def test_state_gradients_accumulate_on_magnitudes(weights):
    state = TensorState.for_ec2t(weights, gamma=0.15)
    quantized = state.requantize(weights)
    upstream = torch.ones_like(weights)
    shadow_grad = state.shadow_gradient(upstream, quantized)
    assert state.w_p.grad.item() == pytest.approx(float((state.indices == POSITIVE).sum()))
    assert state.w_n.grad.item() == pytest.approx(-float((state.indices == NEGATIVE).sum()))
    assert shadow_grad.shape == weights.shape


def test_export_levels_rejects_nothing_silently():
    qp, density, step = ternary_step(0.2, 0.3)
    grid = ternary_grid(0.2, 0.3, qp, density, step)
    levels = grid.level_tensor()[torch.tensor([0, 1, 2, 1])]
    q = export_levels(levels, grid)
    assert q.codebook.tolist() == list(grid.levels)
