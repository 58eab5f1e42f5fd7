"""pmf with the zero floor, information content, λ_max and size decay against hand-computed values."""

import math

import pytest
import torch

from ecqx.entropy import cluster_counts, cluster_pmf, information_content, lambda_max, size_decay

COUNTS = torch.tensor([2, 2, 4, 2])  # clusters (-2, -1, 0, +1)Δ, zero index 2, P_z = 0.4 < 0.5


def test_clean_pmf_renormalises():
    pmf = cluster_pmf(COUNTS, zero_index=2, mode="clean")
    assert pmf.tolist() == pytest.approx([1 / 6, 1 / 6, 0.5, 1 / 6])
    assert pmf.sum().item() == pytest.approx(1.0)


def test_faithful_pmf_reproduces_sequential_update():
    # by hand: S = 0.6; negatives 0.2 - 0.2/0.6*0.1 = 1/6; zero 0.4 - 0.4/0.6*0.1 = 1/3,
    # then the positive cluster uses the updated deficit 0.5 - 1/3: 0.2 - 0.2/0.6*(1/6) = 13/90
    pmf = cluster_pmf(COUNTS, zero_index=2, mode="faithful")
    assert pmf.tolist() == pytest.approx([1 / 6, 1 / 6, 0.5, 13 / 90])
    assert pmf.sum().item() == pytest.approx(0.5 + 1 / 3 + 13 / 90)


def test_pmf_untouched_when_zero_already_dominant():
    counts = torch.tensor([1, 6, 3])
    for mode in ("clean", "faithful"):
        assert cluster_pmf(counts, 1, mode).tolist() == pytest.approx([0.1, 0.6, 0.3])


def test_information_content_and_empty_cluster():
    info = information_content(torch.tensor([0.5, 0.25, 0.125, 0.0], dtype=torch.float64))
    assert info[:3].tolist() == [1.0, 2.0, 3.0]
    assert math.isinf(info[3].item())


def test_counts_by_bincount():
    assert cluster_counts(torch.tensor([0, 2, 2, 3]), 5).tolist() == [1, 0, 2, 1, 0]


def test_lambda_max_rules_by_hand():
    centroids = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    info = torch.tensor([3.0, 1.0, 3.0, 2.0], dtype=torch.float64)
    used = torch.tensor([True, True, True, True])
    # thesis: λn = (1.69 - 0.09)/2 = 0.8, λp = (4.84 - 0.04)/1 = 4.8, min = 0.8
    assert lambda_max(-1.3, 2.2, centroids, used, info, 1, "thesis") == pytest.approx(0.8)
    # coded: λn = (0.09 - 1.3)^2/2 = 0.73205, λp = (0.04 + 2.2)^2/1 = 5.0176, max = 5.0176
    assert lambda_max(-1.3, 2.2, centroids, used, info, 1, "coded") == pytest.approx(5.0176)
    # the outermost *used* centroid counts: without cluster 3, λp = (4.84 - 1.44)/2 = 1.7
    used_no_top = torch.tensor([False, True, True, False])
    assert lambda_max(-1.3, 2.2, centroids, used_no_top, info, 1, "thesis") == pytest.approx(1.7)
    assert lambda_max(-1.3, 2.2, centroids, torch.tensor([False, True, False, False]), info, 1) == 0.0


def test_size_decay():
    assert size_decay(50, 100) == pytest.approx(0.55 / 1.05)
    assert size_decay(100, 100) == 1.0
    with pytest.raises(ValueError, match="num_weights"):
        size_decay(200, 100)


def test_bad_modes():
    with pytest.raises(ValueError, match="pmf mode must be one of"):
        cluster_pmf(COUNTS, 2, "exact")
    with pytest.raises(ValueError, match="lambda rule must be one of"):
        lambda_max(-1.0, 1.0, torch.zeros(3), torch.ones(3, dtype=torch.bool), torch.ones(3), 1, "paper")
