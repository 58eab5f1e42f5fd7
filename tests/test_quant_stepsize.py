"""NNC step sizes Δ(qp, qp_density) and snapping (spec nnc-bitstream.md §12.1)."""

import math

import numpy as np
import pytest
import torch

from ecqx.stepsize import nnc_step_size, snap_step, snap_to_density


@pytest.mark.parametrize(
    ("qp", "expected"),
    # the spec's own table for qp_density 2
    [(0, 1.0), (5, 2.5), (-16, 0.0625), (-20, 0.03125), (-32, 0.00390625), (-38, 0.00146484375),
     (-75, 2.384185791015625e-06)],
)
def test_step_size_matches_spec_table(qp, expected):
    assert nnc_step_size(qp, 2) == expected


def test_step_size_by_hand_for_other_densities():
    # qp_density 0: Δ = 2^qp; qp_density 3, qp = -13: k = 8, mul = 8 + (-13 & 7) = 11, shift = -2 -> 11·2^-5
    assert nnc_step_size(-3, 0) == 0.125
    assert nnc_step_size(-13, 3) == 11 / 32
    assert nnc_step_size(7 * 128 + 5, 7) == (133 / 128) * 2 ** 7


@pytest.mark.parametrize("density", range(0, 8))
def test_snap_is_nearest_representable(density):
    rng = np.random.default_rng(density)
    for step in np.exp(rng.uniform(-10, 2, size=40)):
        qp, delta = snap_to_density(float(step), density)
        assert delta == nnc_step_size(qp, density)
        neighbours = [nnc_step_size(q, density) for q in (qp - 1, qp + 1)]
        assert all(abs(delta - step) <= abs(n - step) for n in neighbours)
        assert abs(delta - step) <= step / 2 ** (density + 1) * 1.0001


def test_snap_step_picks_coarsest_density_within_tolerance():
    qp, density, delta = snap_step(0.0625)  # exactly representable at density 2
    assert (qp, density, delta) == (-16, 2, 0.0625)
    qp, density, delta = snap_step(0.24406450281824785, rtol=0.01)
    assert abs(delta - 0.24406450281824785) <= 0.01 * 0.24406450281824785
    for coarser in range(2, density):
        _, coarse_delta = snap_to_density(0.24406450281824785, coarser)
        assert abs(coarse_delta - 0.24406450281824785) > 0.01 * 0.24406450281824785
    assert density in range(2, 8) and delta == nnc_step_size(qp, density)


def test_levels_times_snapped_step_are_exact_in_float32():
    _, density, delta = snap_step(0.0317, rtol=0.0)
    levels = torch.arange(-2 ** 12, 2 ** 12, dtype=torch.int32)
    products32 = levels.to(torch.float32) * torch.tensor(delta, dtype=torch.float32)
    products64 = levels.to(torch.float64) * delta
    assert density == 7
    assert torch.equal(products32.to(torch.float64), products64)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="qp_density must be an integer in 0..7"):
        nnc_step_size(0, 8)
    with pytest.raises(ValueError, match="no finite non-zero float32"):
        nnc_step_size(-300, 0)
    with pytest.raises(TypeError, match="qp must be an integer"):
        nnc_step_size(1.5, 2)
    with pytest.raises(ValueError, match="positive finite"):
        snap_step(0.0)
    with pytest.raises(ValueError, match="positive finite"):
        snap_step(math.inf)
    with pytest.raises(ValueError, match="rtol"):
        snap_step(0.1, rtol=-1)


def _finite_qp_range(density):
    """qps with a finite non-zero float32 step: Δ(-149·2^d) = 2^-149, Δ(128·2^d - 1) = (2 - 2^-d)·2^127."""
    k = 1 << density
    return range(-149 * k, 128 * k)


@pytest.mark.parametrize("density", range(0, 8))
def test_step_size_agrees_with_codec_package_for_every_qp(density):
    from ecqx.coding import step_size

    qps = _finite_qp_range(density)
    for qp in qps:
        assert nnc_step_size(qp, density) == step_size(qp, density), qp
    for qp in (qps.start - 1, qps.stop, qps.start - 10**6, qps.stop + 10**6):
        with pytest.raises(ValueError, match="no finite non-zero float32 step size"):
            nnc_step_size(qp, density)
        with pytest.raises(ValueError, match="no finite non-zero float32 step size"):
            step_size(qp, density)


def _decision_points(lower, upper):
    """Steps where a nearest-step choice between the neighbours lower < upper can change: both steps, the
    linear and the geometric midpoint, and the floats next to each midpoint."""
    points = [lower, upper]
    for middle in ((lower + upper) / 2, math.sqrt(lower * upper)):
        points += [math.nextafter(middle, 0.0), middle, math.nextafter(middle, math.inf)]
    return points


@pytest.mark.parametrize("density", range(0, 8))
def test_snap_step_agrees_with_codec_package(density):
    from ecqx.coding import snap_step as codec_snap_step

    k = 1 << density
    # every step of the octaves below and above 1 (every mantissa of this density), and qps spread over the
    # range of normal float32 steps (other octaves scale those by powers of two)
    qps = sorted(set(range(-k, k)) | set(range(-126 * k, 127 * k - 1, 4 * k + 1)))
    for qp in qps:
        lower, upper = nnc_step_size(qp, density), nnc_step_size(qp + 1, density)
        for step in _decision_points(lower, upper):
            assert codec_snap_step(step, density) == snap_to_density(step, density), (qp, step)
        middle = (lower + upper) / 2  # equally far from both: the smaller qp
        assert snap_to_density(middle, density) == (qp, lower)
        assert snap_to_density(math.nextafter(middle, math.inf), density) == (qp + 1, upper)
