"""Faithful vs clean mode on the shipped ResNet-20 (4 bit, Λ = 0.05, initial pass; spec §2, §3.6, §7).

Reference numbers come from the spec's own measurements (S6), not from this code.
"""

import logging

import numpy as np
import pytest
import torch

from ecqx.assign import assign, ec_assign, nearest_indices
from ecqx.entropy import cluster_counts, cluster_pmf, size_decay
from ecqx.grid import uniform_grid
from ecqx.oneshot import quantize
from ecqx.targets import select_targets

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def resnet20(shared_dir):
    return torch.load(shared_dir / "models" / "resnet20.pt", map_location="cpu")


@pytest.fixture(scope="module")
def layers(resnet20):
    names = select_targets(resnet20)
    n_max = max(resnet20[n].numel() for n in names)
    return {n: (resnet20[n], size_decay(resnet20[n].numel(), n_max)) for n in names}


def _zero_fraction(layers, lam, mode):
    zeros = total = 0
    for weight, decay in layers.values():
        result = assign(weight, uniform_grid(weight, 4, mode), lam, decay, mode)
        zeros += int(result.zero_fraction * weight.numel() + 0.5)
        total += weight.numel()
    return zeros / total


def test_targets_of_resnet20(layers):
    assert len(layers) == 20
    assert sum(w.numel() for w, _ in layers.values()) == 268_336


def test_faithful_pmf_sums_within_measured_range(layers):
    """Spec §2.3: the reference's pmf sums to 0.958–0.998 on ResNet-20 (the clean one to 1)."""
    for weight, _ in layers.values():
        grid = uniform_grid(weight, 4, "faithful")
        counts = cluster_counts(nearest_indices(weight, grid.values()), len(grid.levels))
        total = cluster_pmf(counts, grid.zero_index, "faithful").sum().item()
        floor_applied = counts[grid.zero_index].item() < 0.5 * counts.sum().item()
        assert 0.9575 <= total <= 0.9985 if floor_applied else total == pytest.approx(1.0)
        assert cluster_pmf(counts, grid.zero_index, "clean").sum().item() == pytest.approx(1.0)


def test_faithful_lambda_max_of_layer2_0_conv2(layers):
    """Spec §2.3: coded λ_max of layer2.0.conv2 is 0.162 (intended formula on the same side: 0.090)."""
    weight, decay = layers["layer2.0.conv2.weight"]
    grid = uniform_grid(weight, 4, "faithful")
    assert assign(weight, grid, 0.05, decay, "faithful").lam_max == pytest.approx(0.162, abs=5e-4)


def test_faithful_linear_sparsity(layers):
    """Spec §3.6: the ECQ sparsity of ``linear`` after the initial pass is 20.6 %."""
    weight, decay = layers["linear.weight"]
    assert assign(weight, uniform_grid(weight, 4, "faithful"), 0.05, decay, "faithful").zero_fraction == \
        pytest.approx(0.206, abs=5e-4)


def test_lambda_zero_matches_independent_rounding(layers, resnet20):
    zeros = total = 0
    for weight, _ in layers.values():
        step = uniform_grid(weight, 4, "faithful").step
        zeros += int((np.abs(weight.numpy().astype(np.float64) / step) < 0.5).sum())
        total += weight.numel()
    assert _zero_fraction(layers, 0.0, "faithful") == pytest.approx(zeros / total)
    assert 0.2 < zeros / total < 0.3  # spec: "roughly a quarter of the weights at Λ = 0"


def test_faithful_sweep_monotone_and_report(layers):
    sweep = {lam: _zero_fraction(layers, lam, "faithful") for lam in (0.0, 0.02, 0.05, 0.1, 0.2)}
    clean = _zero_fraction(layers, 0.05, "clean")
    log.info("ResNet-20 4 bit zero fraction, faithful: %s; clean at 0.05: %.4f", sweep, clean)
    assert list(sweep.values()) == sorted(sweep.values())
    assert 0.7 < sweep[0.2] < 0.8  # spec: "about three quarters at Λ = 0.2"
    assert clean < sweep[0.05]  # thesis λ_max (min rule) and normalised pmf prune less


def test_clean_differs_from_faithful_by_formula_choice_only(layers):
    """Same grid levels; step = snapped reference step; assignment = the shared core with the clean rules."""
    for weight, decay in layers.values():
        faithful_grid, clean_grid = uniform_grid(weight, 4, "faithful"), uniform_grid(weight, 4, "clean")
        assert clean_grid.levels == faithful_grid.levels and clean_grid.raw_step == faithful_grid.step
        for mode, pmf_mode, rule in (("clean", "clean", "thesis"), ("faithful", "faithful", "coded")):
            via_mode = assign(weight, faithful_grid, 0.05, decay, mode)
            via_rules = ec_assign(weight, faithful_grid.values(), faithful_grid.zero_index, 0.05, decay,
                                  pmf_mode=pmf_mode, lambda_rule=rule)
            assert torch.equal(via_mode.indices, via_rules.indices)


def test_faithful_export_reports_snapping_change(resnet20):
    q = quantize(resnet20, "ecq", 4, 0.05, "faithful")
    clean = quantize(resnet20, "ecq", 4, 0.05, "clean")
    assert all(t.max_export_change > 0 for t in q.values())
    assert all(t.max_export_change == 0 for t in clean.values())
    for name, t in q.items():
        grid = uniform_grid(resnet20[name], 4, "faithful")
        assert t.max_export_change <= 8 * abs(t.step - grid.step) + 1e-6  # + float32 rounding
