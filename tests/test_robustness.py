"""Robustness of ``ecqx.coding`` against hostile input.

Decoding: a seeded corpus of several thousand damaged streams (truncation at every length of a few streams,
bit flips, byte edits, random bytes, empty input, crafted headers with oversized dimension and size fields)
goes through ``decode``, ``decode_levels``, ``inspect_stream`` and ``decode_state_dict`` in a child process
with a capped address space and a timeout, so a crash, hang or huge allocation fails this test instead of
killing pytest. Every stream must either decode to a valid result or raise ``BitstreamError`` (a ValueError)
with a message; streams that are certainly invalid (cut inside a unit, absurd headers) must be rejected.

Encoding: non-integer, non-CPU, non-contiguous, out-of-range and inconsistent inputs give clear errors.
"""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_vectors import GOLDEN
from mutation_corpus import build_corpus, crafted_streams

HERE = Path(__file__).resolve().parent
EXTRA_MEMORY_MB = 1024
CORPUS_TIMEOUT_S = 600

# crafted streams that no reader may accept (oversized/absurd fields, unsupported units)
MUST_REJECT_CRAFTED = {
    "dims-product-overflow", "dims-count-huge", "entry-points-many", "scan-order-15", "payload-type-raw-huge",
    "payload-type-31", "name-unterminated", "unit-size-huge", "unit-size-short-huge", "unit-size-zero",
    "unit-size-one", "unit-size-header-only", "unit-type-qnt", "unit-type-agg", "unit-type-63",
    "partial-data-counter", "ndu-before-mps", "profile-7", "mps-no-quant-method", "mps-all-flags",
    "tpl-onnx", "duplicate-name",
}


@pytest.fixture(scope="module")
def codec():
    import ecqx.coding as coding

    coding.load_native()
    return coding


def _unit_boundaries(data: bytes) -> set[int]:
    """Offsets where an NNR unit ends (a stream cut there is a shorter but complete stream)."""
    ends, pos = {0}, 0
    while pos < len(data):
        if data[pos] & 0x80:
            size = int.from_bytes(data[pos:pos + 4], "big") & 0x7FFFFFFF
        else:
            size = int.from_bytes(data[pos:pos + 2], "big")
        pos += size
        ends.add(pos)
    return ends


def _seed_streams(codec) -> list[bytes]:
    """Valid streams covering the syntax: our encoder's (DQ, block scans, PT_INT, codebook, long unit,
    state_dict metadata) plus the spec's golden vectors (NNCodec's bytes)."""
    rs = np.random.RandomState(2026)

    def levels(shape, scale=5, density=0.5):
        return torch.from_numpy((np.round(rs.randn(*shape) * scale) * (rs.rand(*shape) < density))
                                .astype(np.int32))

    w = levels((40, 12))
    w[3] = 0
    seeds = [
        codec.encode({"conv.weight": codec.CodedTensor(levels((8, 3, 3, 3)), -30, 2, None, False),
                      "fc.weight": codec.CodedTensor(w, -26, 2, None, False),
                      "fc.bias": torch.from_numpy(rs.randint(-99, 99, size=(7,)).astype(np.int32))},
                     scan_order=1),
        codec.encode({"w": codec.quantize_tensor(torch.from_numpy(rs.randn(70, 20).astype(np.float32)), -28,
                                                 dq=True)}, scan_order=2),
        codec.encode({"cb": codec.CodedTensor(torch.from_numpy(rs.choice([-4, 0, 3, 9], size=(30, 10))
                                                               .astype(np.int32)), -24, 2,
                                              torch.tensor([-4, 0, 3, 9], dtype=torch.int32), False)}),
        codec.encode_state_dict({"lin.weight": torch.from_numpy(rs.randn(6, 5).astype(np.float32)),
                                 "lin.bias": torch.zeros(6), "bn.num_batches_tracked": torch.tensor(3)}),
        codec.encode({"big": codec.CodedTensor(levels((200, 190), scale=400, density=0.9), -40, 2, None,
                                               False)}, profile=0, param_opt=False),
    ]
    seeds += [v.data for v in GOLDEN]
    return seeds


def _run_corpus(corpus: list[tuple[str, bytes]], tmp_path: Path) -> dict:
    corpus_path, result_path = tmp_path / "corpus.pkl", tmp_path / "result.json"
    progress_path = tmp_path / "progress"
    with open(corpus_path, "wb") as f:
        pickle.dump(corpus, f)
    cmd = [sys.executable, str(HERE / "robustness_worker.py"), str(corpus_path), str(result_path),
           str(progress_path), str(EXTRA_MEMORY_MB)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CORPUS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        last = progress_path.read_text().splitlines()[-1:] if progress_path.exists() else []
        pytest.fail(f"decoding the corpus hung (> {CORPUS_TIMEOUT_S} s); last stream started: {last}")
    if proc.returncode != 0:
        last = progress_path.read_text().splitlines()[-1:] if progress_path.exists() else []
        pytest.fail(f"the decoder process died (exit {proc.returncode}) on stream {last}:\n"
                    f"{proc.stderr[-3000:]}")
    return json.loads(result_path.read_text())


def test_mutated_streams_decode_or_raise_bitstream_error(codec, tmp_path):
    seeds = _seed_streams(codec)
    corpus = build_corpus(seeds, seed=20261125, truncate_seeds=4)
    assert len(corpus) > 3000
    labels = [label for label, _ in corpus]
    assert len(set(labels)) == len(labels)
    # the unmodified seeds are part of the run: they must decode
    corpus += [(f"valid-{i}", data) for i, data in enumerate(seeds)]
    result = _run_corpus(corpus, tmp_path)
    outcomes, failures = result["outcomes"], result["failures"]
    assert not failures, f"{len(failures)} streams gave something other than a valid result or a " \
                         f"BitstreamError; first ones: {failures[:5]}"
    assert all(outcomes[f"valid-{i}"] == "ok" for i in range(len(seeds)))

    must_reject = ["empty"] + [f"crafted-{name}" for name in MUST_REJECT_CRAFTED]
    must_reject += [label for label, _ in corpus if label.startswith("crafted-dims-")
                    and label not in ("crafted-dims-zero", "crafted-dims-zero-1d", "crafted-dims-count-1000")]
    for idx, data in enumerate(seeds[:4]):
        complete = _unit_boundaries(data)
        must_reject += [f"seed{idx}-trunc-{n}" for n in range(len(data)) if n not in complete]
    accepted = [label for label in must_reject if outcomes[label] != "rejected"]
    assert not accepted, f"invalid streams were accepted: {accepted[:10]}"
    counts = {k: sum(v == k for v in outcomes.values()) for k in ("ok", "rejected")}
    assert counts["rejected"] > 2000 and counts["ok"] > 50, counts


def test_crafted_labels_are_known():
    names = {name for name, _ in crafted_streams(random.Random(0))}
    assert MUST_REJECT_CRAFTED <= names


def test_huge_dimensions_rejected_before_allocation(codec):
    from mutation_corpus import PREFIX, ndu_header, unit

    data = PREFIX + unit(ndu_header(b"w", [2**40, 2**40]) + bytes(16))
    with pytest.raises(codec.BitstreamError, match="dimension"):
        codec.decode(data)
    data = PREFIX + unit(ndu_header(b"w", [2**22]) + bytes(16))  # 16 MiB of int32 from a 16-byte payload
    with pytest.raises(codec.BitstreamError):
        codec.decode(data)


def test_bitstream_error_is_a_value_error(codec):
    assert issubclass(codec.BitstreamError, ValueError)
    with pytest.raises(ValueError):
        codec.decode(b"")
    with pytest.raises(codec.BitstreamError, match=r"\S"):
        codec.decode(GOLDEN[1].data[:-3])


# ------------------------------------------------------------------------------------------------ encoding
def _desc(codec, levels, qp=-20, qp_density=2, codebook=None, dq=False):
    return codec.CodedTensor(levels, qp, qp_density, codebook, dq)


def test_encode_rejects_float_levels(codec):
    with pytest.raises((TypeError, ValueError), match="w"):
        codec.encode({"w": _desc(codec, torch.randn(4, 4))})
    with pytest.raises((TypeError, ValueError), match="w"):
        codec.encode({"w": torch.randn(4, 4)})  # raw floats are no integer tensor


def test_encode_rejects_non_cpu_tensor(codec):
    """Non-CPU tensors are copied explicitly; one without data (meta device) gets a clear error."""
    meta = torch.empty(4, 4, dtype=torch.int32, device="meta")
    with pytest.raises((TypeError, ValueError), match="w"):
        codec.encode({"w": _desc(codec, meta)})
    with pytest.raises((TypeError, ValueError), match="w"):
        codec.encode({"w": meta})


def test_encode_non_contiguous_is_copied_or_rejected(codec):
    base = torch.arange(-30, 30, dtype=torch.int32).reshape(6, 10)
    view = base.t()
    assert not view.is_contiguous()
    try:
        data = codec.encode({"w": _desc(codec, view)})
    except (TypeError, ValueError) as exc:
        assert "contiguous" in str(exc)
        return
    assert data == codec.encode({"w": _desc(codec, view.contiguous())})
    assert torch.equal(codec.decode_levels(data)["w"].levels, view.contiguous())


@pytest.mark.parametrize("bad", [2**31, -(2**31) - 1, 2**40])
def test_encode_rejects_levels_outside_int32(codec, bad):
    levels = torch.tensor([[1, 2], [3, bad]], dtype=torch.int64)
    with pytest.raises(ValueError, match="w"):
        codec.encode({"w": _desc(codec, levels)})
    with pytest.raises(ValueError, match="w"):
        codec.encode({"w": levels})


def test_encode_rejects_int32_min_level(codec):
    """−2^31 has no magnitude representation in NNC's binarization (spec §7.1)."""
    levels = torch.tensor([0, -(2**31), 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="2147483648"):
        codec.encode({"w": _desc(codec, levels)})


@pytest.mark.parametrize("qp,qp_density", [(1000, 2), (-3000, 2), (0, 8), (0, -1)])
def test_encode_rejects_bad_qp(codec, qp, qp_density):
    with pytest.raises(ValueError, match="qp"):
        codec.encode({"w": _desc(codec, torch.ones(3, 3, dtype=torch.int32), qp, qp_density)})


@pytest.mark.parametrize("codebook,levels,what", [
    ([3, 1, 5], [1, 3, 5], "increasing"),
    ([1, 1, 5], [1, 5, 5], "increasing"),
    ([1, 3, 5], [1, 4, 5], "4"),
    ([], [0, 0, 0], "codebook"),
])
def test_encode_rejects_inconsistent_codebook(codec, codebook, levels, what):
    cb = torch.tensor(codebook, dtype=torch.int32)
    with pytest.raises(ValueError, match=what):
        codec.encode({"w": _desc(codec, torch.tensor([levels], dtype=torch.int32), codebook=cb)})


def test_encode_rejects_float_codebook(codec):
    with pytest.raises((TypeError, ValueError), match="codebook"):
        codec.encode({"w": _desc(codec, torch.tensor([[1, 2]], dtype=torch.int32),
                                 codebook=torch.tensor([1.0, 2.0]))})


@pytest.mark.parametrize("options,key", [
    (dict(profile=2), "profile"), (dict(scan_order=5), "scan_order"),
    (dict(cabac_unary_length_minus1=256), "cabac_unary_length_minus1"),
])
def test_encode_rejects_bad_options(codec, options, key):
    with pytest.raises(ValueError, match=key):
        codec.encode({"w": torch.ones(3, 3, dtype=torch.int32)}, **options)


@pytest.mark.parametrize("name", ["a\x00b", 7, None])
def test_encode_rejects_bad_names(codec, name):
    with pytest.raises((TypeError, ValueError)):
        codec.encode({name: torch.ones(3, dtype=torch.int32)})


def test_encode_rejects_empty_mapping(codec):
    with pytest.raises(ValueError, match="empty"):
        codec.encode({})


def test_encode_rejects_qp_span_one_stream_cannot_carry(codec):
    ones = torch.ones(3, 3, dtype=torch.int32)
    # qp_density 2: the per-tensor qp delta is 8 bits, so one stream carries at most 256 consecutive qp values
    with pytest.raises(ValueError, match="qp"):
        codec.encode({"a": _desc(codec, ones, -300), "b": _desc(codec, ones, 100)})


def test_max_elements_bounds_row_skipped_zero_bomb(codec):
    """All-zero rows cost a fraction of a bit with row skipping, so the width of a row-skipped tensor cannot
    be bounded by the payload size; the decoder's element limit is what bounds the allocation."""
    from mutation_corpus import PREFIX, ndu_header, unit

    from ecqx.coding import hls

    small = codec.encode({"w": torch.zeros(64, 16, dtype=torch.int32)}, row_skipping=True)
    payload = hls.parse_stream(small).ndus[0].payload
    bomb = PREFIX + unit(ndu_header(b"w", [64, 2**16], payload_type=0) + payload)  # 4 Mi zeros, ~40 bytes
    assert len(bomb) < 64
    assert codec.decode_levels(bomb)["w"].levels.shape == (64, 2**16)  # legitimately decodable
    with pytest.raises(codec.BitstreamError, match="limit"):
        codec.decode_levels(bomb, max_elements=2**20)
    with pytest.raises(codec.BitstreamError, match="limit"):
        codec.decode(bomb, max_elements=2**20)
