"""Helpers of ``benchmarks/bench_updates.py``: distortion sums, SNR, byte interpolation against hand values,
and the offline coding of a short synthetic update sequence (two senders) against NNCodec 2.1.3."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import bench_updates as bench  # noqa: E402

from ecqx.coding import UpdateEncoder  # noqa: E402
from ecqx.updates import UpdateQuantizer  # noqa: E402


def test_distortion_sums_and_snr_by_hand():
    difference = {"w": torch.tensor([[1.0, 2.0], [0.0, -2.0]]), "b": torch.tensor([3.0]),
                  "n": torch.tensor([5], dtype=torch.int64)}
    reconstruction = {"w": torch.tensor([[1.0, 1.0], [0.0, -2.0]]), "n": torch.tensor([5])}  # "b" missing: 0
    sums = bench.distortion_sums(difference, reconstruction)
    assert sums["weights"] == {"signal": 9.0, "error": 1.0, "count": 4}
    assert sums["all"] == {"signal": 9.0 + 9.0 + 25.0, "error": 1.0 + 9.0, "count": 6}
    stats = bench.summarize(sums)
    assert stats["weights"]["mse"] == pytest.approx(0.25)
    assert stats["weights"]["snr_db"] == pytest.approx(10 * math.log10(9.0))
    assert stats["all"]["snr_db"] == pytest.approx(10 * math.log10(4.3))
    total = bench.add_sums(None, sums)
    bench.add_sums(total, sums)
    assert total["all"]["count"] == 12 and sums["all"]["count"] == 6  # copies, not aliases
    assert bench.summarize(total)["all"]["snr_db"] == pytest.approx(stats["all"]["snr_db"])


def test_snr_edge_cases():
    assert bench.snr_db(4.0, 0.0) is None
    assert bench.snr_db(0.0, 1.0) == -math.inf
    assert bench.snr_db(100.0, 1.0) == pytest.approx(20.0)


def test_interpolate_bytes():
    assert bench.interpolate_bytes((100, 20.0), (140, 22.0), 21.0) == pytest.approx(120.0)
    assert bench.interpolate_bytes((100, 20.0), (140, 22.0), 20.0) == pytest.approx(100.0)
    assert bench.interpolate_bytes((100, 20.0), (140, 20.0), 21.0) == 100.0
    assert bench.interpolate_bytes((100, None), (140, 22.0), 21.0) == 100.0


@pytest.mark.interop
def test_code_all_matches_nncodec_on_a_short_sequence():
    """Two senders, three ECQ updates each: NNCodec codes our levels to identical bytes, the matched point
    is at least as distorted as ours and one qp step finer is not."""
    config = SimpleNamespace(qp_density=2, tca=True, row_skipping=True)
    gen = torch.Generator().manual_seed(0)
    shapes = {"fc.weight": (32, 16), "fc.bias": (32,), "conv.weight": (8, 2, 3, 3)}
    records = []
    for sender in (0, 1):
        current = {k: torch.zeros(s) for k, s in shapes.items()}
        quantizer = UpdateQuantizer(current, bits=4, lam=0.05, nonweight_bits=8)
        encoder = UpdateEncoder(qp_density=2, tca=True, row_skipping=True, device_id=sender)
        for rnd in (1, 2, 3):
            current = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in current.items()}
            current["fc.weight"][::4] = 0
            difference = quantizer.residual(current)
            update = quantizer.quantize(current)
            records.append(SimpleNamespace(direction="up", round=rnd, sender=sender, difference=difference,
                                           update=update, data=encoder.encode(update)))
    rows = bench.code_all(records, config, repeat=1)
    assert [r["nncodec_same_levels"]["identical"] for r in rows] == [True] * 6
    for row in rows:
        ours, matched = row["ours"], row["nncodec_matched"]
        assert matched["distortion"]["all"]["error"] >= ours["distortion"]["all"]["error"]
        assert matched["finer"]["distortion"]["all"]["error"] < ours["distortion"]["all"]["error"]
        assert min(matched["bytes"], matched["finer"]["bytes"]) <= matched["bytes_at_equal_distortion"]
        assert matched["bytes_at_equal_distortion"] <= max(matched["bytes"], matched["finer"]["bytes"])
    tables = bench.tables(rows, clients=2)
    assert tables["per_direction"]["up"]["ours"]["bytes"] == sum(len(r.data) for r in records)
    assert tables["communication_ratios"]["nncodec_same_levels"] == 1.0
    lines = bench._bytes_table({"tables": tables, "config": {"clients": 2}})
    assert any(line.startswith("| total | up | 6 | ") for line in lines)
