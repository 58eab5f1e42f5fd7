"""AddressSanitizer + UBSan run of the C++ DeepCABAC core on a seeded corpus of damaged payloads.

The core (every unit of ``coding/csrc`` but the binding, no torch headers) is compiled together with the
standalone driver ``tests/sanitizer_driver.cpp`` using ``-fsanitize=address,undefined
-fno-sanitize-recover=all``. Seed payloads come from NNCodec 2.1.3's own encoder (known tensor parameters),
then go through the same mutation operators as the Python robustness corpus (truncation at every length, bit
flips, byte edits, random bytes) and through parameter mutations (a valid payload decoded with wrong geometry,
scan order, DQ flag, N, profile, codebook). Round-trip records (encode + decode of given levels, extreme
magnitudes included) exercise the encoder too, and trellis records the dependent quantizer (valid weights,
whose levels must survive a round trip, and inputs it must reject: NaN, infinite, or too large for int32
levels). Any sanitizer report aborts the driver and fails the test.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mutation_corpus import bit_flips, byte_edits, truncations

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "coding" / "csrc"
DRIVER = Path(__file__).resolve().parent / "sanitizer_driver.cpp"
SANITIZE_FLAGS = ["-std=c++17", "-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=all"]


def _record(mode: int, rows: int, width: int, data: bytes, *, scan_order=0, dq=0, num_gtx=11, profile=1,
            cb_size=0, cb_zero=0, has_qp=0, qp_bits=8, row_skip=1, param_opt=1, qp_delta=0) -> bytes:
    head = struct.pack("<Bqq11iQ", mode, rows, width, scan_order, dq, num_gtx, profile, cb_size, cb_zero,
                       has_qp, qp_bits, row_skip, param_opt, qp_delta, len(data))
    return head + data


def _seed_payloads(oracle) -> list[tuple[dict, bytes]]:
    """(decode parameters, NNCodec payload) pairs covering the coder's tools."""
    rs = np.random.RandomState(99)

    def sparse(shape, scale=6):
        v = np.round(rs.randn(*shape) * scale) * (rs.rand(*shape) < 0.5)
        return v.astype(np.int32)

    seeds = []
    settings = [
        ((40, 12), dict(dq=0, scan_order=0, profile=1, row_skipping=True)),
        ((40, 12), dict(dq=1, scan_order=1, profile=1, row_skipping=True)),
        ((130, 70), dict(dq=1, scan_order=1, profile=1, row_skipping=True)),
        ((70, 33), dict(dq=0, scan_order=2, profile=0, row_skipping=False)),
        ((57,), dict(dq=1, scan_order=0, profile=1, row_skipping=False)),
        ((9, 3, 3, 3), dict(dq=0, scan_order=0, profile=1, row_skipping=True, N1=0)),
        ((20, 20), dict(dq=0, scan_order=0, profile=1, row_skipping=False, N1=30)),
    ]
    for shape, kw in settings:
        levels = sparse(shape)
        if len(shape) > 1:
            levels[::4] = 0
        payload = oracle.encode_payload(levels, qp_delta=-20, **kw)
        width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        params = dict(rows=shape[0], width=width, scan_order=kw["scan_order"], dq=kw["dq"],
                      num_gtx=kw.get("N1", 10) + 1, profile=kw["profile"], has_qp=1, qp_bits=8)
        seeds.append((params, payload))
    big = rs.randint(-(2**20), 2**20, size=(12, 9)).astype(np.int32)
    big[0, 0] = 2**31 - 1
    big[1, 1] = -(2**31 - 1)
    seeds.append((dict(rows=12, width=9, profile=1), oracle.encode_payload(big, row_skipping=False)))
    return seeds


def _param_variants(params: dict) -> list[dict]:
    rows, width = params["rows"], params["width"]
    variants = [
        dict(params, rows=rows * width, width=1),
        dict(params, rows=rows + 7, width=width),
        dict(params, rows=max(1, rows // 2), width=width + 3),
        dict(params, dq=1 - params.get("dq", 0)),
        dict(params, profile=1 - params.get("profile", 1)),
        dict(params, num_gtx=1), dict(params, num_gtx=256),
        dict(params, num_gtx=0), dict(params, num_gtx=257),
        dict(params, cb_size=1), dict(params, cb_size=4, cb_zero=0), dict(params, cb_size=4, cb_zero=3),
        dict(params, cb_size=3, cb_zero=7), dict(params, cb_size=-1),
        dict(params, has_qp=1 - params.get("has_qp", 0)), dict(params, qp_bits=13), dict(params, qp_bits=40),
        dict(params, qp_bits=-3), dict(params, profile=5), dict(params, rows=2**23, width=2),
    ]
    variants += [dict(params, scan_order=s) for s in (0, 1, 2, 3, 4, 5, 15, -1)]
    return variants


def _roundtrip_records(rs: np.random.RandomState) -> list[bytes]:
    records = []
    extremes = np.array([2**31 - 1, -(2**31 - 1), 0, 1, -1, 2**30, -(2**30), 13, -14], dtype=np.int32)
    for shape in [(1, 1), (7, 1), (1, 9), (17, 33), (65, 3)]:
        for scan_order in (0, 1, 4):
            for dq in (0, 1):
                for profile in (0, 1):
                    n = shape[0] * shape[1]
                    levels = rs.choice(extremes, size=n).astype(np.int32) * (rs.rand(n) < 0.6)
                    qp_delta = int(rs.randint(-128, 128))
                    records.append(_record(1, shape[0], shape[1], levels.astype("<i4").tobytes(),
                                           scan_order=scan_order, dq=dq, profile=profile, has_qp=1,
                                           qp_delta=qp_delta, param_opt=int(rs.rand() < 0.5)))
    bad = np.array([-(2**31), 5, 0], dtype=np.int32)  # -2^31 cannot be coded (spec §7.1)
    records.append(_record(1, 3, 1, bad.astype("<i4").tobytes()))
    return records


def _block_records(rs: np.random.RandomState) -> tuple[list[bytes], int]:
    """NNR_PT_BLOCK codewords (a weight and its 1-D companions, as the PT_BLOCK coder writes them), with and
    without TCA/HDSP, DQ, codebook bounds, scans and qp deltas; the driver round-trips each and decodes
    damaged copies. Returns the records and how many there are."""
    records = []
    for i, (rows, width) in enumerate([(6, 4), (40, 27), (9, 1), (33, 70), (1, 5)]):
        for scan_order, dq, tca, hdsp, cb in [(0, 0, 0, 0, 0), (1, 1, 1, 0, 0), (2, 0, 1, 1, 0),
                                               (0, 0, 1, 1, 7), (4, 1, 0, 1, 0), (3, 0, 0, 0, 5)]:
            shapes = [(rows, width), (rows, 1), (rows, 1)]
            body = struct.pack("<BBI", tca, hdsp, len(shapes))
            for r, w in shapes:
                n = r * w
                if cb:  # coded codebook indices lie in [-zero, cb - 1 - zero]; zero = 2 here
                    levels = rs.randint(-2, cb - 2, size=n) * (rs.rand(n) < 0.6)
                else:
                    levels = np.round(rs.randn(n) * 5) * (rs.rand(n) < 0.5)
                    if i == 1:  # extreme magnitudes (40×27 and 40×1 tensors)
                        levels[:2] = [2**31 - 1, -(2**31 - 1)]
                body += struct.pack("<qq", r, w) + levels.astype("<i4").tobytes()
            records.append(_record(3, 0, 0, body, scan_order=scan_order, dq=dq, profile=1, cb_size=cb,
                                   cb_zero=2 if cb else 0, has_qp=1, qp_bits=8, row_skip=int(rs.rand() < 0.5),
                                   param_opt=int(rs.rand() < 0.7), qp_delta=int(rs.randint(-128, 128))))
    return records, len(records)


def _trellis_record(rows: int, width: int, scan_order: int, qscale: float, weights: np.ndarray) -> bytes:
    data = struct.pack("<d", qscale) + np.ascontiguousarray(weights, dtype="<f4").tobytes()
    return _record(2, rows, width, data, scan_order=scan_order)


def _trellis_records(rs: np.random.RandomState) -> tuple[list[bytes], int, int]:
    """(records, how many the trellis must accept, how many it must reject)."""
    good = []
    for (rows, width), scan_order in [((1, 1), 0), ((7, 1), 0), ((1, 9), 2), ((17, 33), 1), ((65, 3), 4),
                                      ((40, 70), 2)]:
        for scale in (0.01, 1.0, 300.0):
            w = (rs.randn(rows * width) * scale).astype(np.float32)
            w[rs.rand(rows * width) < 0.3] = 0
            good.append(_trellis_record(rows, width, scan_order, 64.0, w))
    near_limit = np.array([2.0**31 - 128, -(2.0**31 - 128), 0.3, -7.5], dtype=np.float32)  # |qscale·w| < 2^31
    good.append(_trellis_record(2, 2, 0, 1.0, near_limit))
    bad = []
    for value, qscale in [(np.nan, 64.0), (np.inf, 64.0), (-np.inf, 64.0), (1e30, 64.0), (2.0**32, 1.0),
                          (1.0, np.nan), (1.0, np.inf), (1.0, 0.0), (1.0, -3.0), (3e38, 1e300)]:
        w = (rs.randn(6 * 5) * 0.1).astype(np.float32)
        w[17] = value
        bad.append(_trellis_record(6, 5, 1, qscale, w))
    return good + bad, len(good), len(bad)


def _build_corpus(oracle) -> tuple[list[bytes], int, int, int]:
    rng = random.Random(4242)
    rs = np.random.RandomState(4242)
    records: list[bytes] = []
    for idx, (params, payload) in enumerate(_seed_payloads(oracle)):
        kw = {k: v for k, v in params.items() if k not in ("rows", "width")}
        rows, width = params["rows"], params["width"]
        records.append(_record(0, rows, width, payload, **kw))
        mutated = list(bit_flips(payload, rng, 200)) + list(bit_flips(payload, rng, 60, 8))
        mutated += list(byte_edits(payload, rng, 120))
        if idx < 4:
            mutated += list(truncations(payload))
        records += [_record(0, rows, width, data, **kw) for _, data in mutated]
        for variant in _param_variants(params):
            vkw = {k: v for k, v in variant.items() if k not in ("rows", "width")}
            records.append(_record(0, variant["rows"], variant["width"], payload, **vkw))
    for i in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        rows, width = rng.choice([(1, 1), (5, 1), (16, 16), (100, 7), (3, 333)])
        records.append(_record(0, rows, width, data, scan_order=rng.randrange(5), dq=i % 2,
                               has_qp=(i // 2) % 2, profile=(i // 4) % 2, num_gtx=rng.choice([1, 11, 31])))
    records += _roundtrip_records(rs)
    blocks, block_count = _block_records(rs)
    records += blocks
    trellis, trellis_ok, trellis_rejected = _trellis_records(rs)
    return records + trellis, trellis_ok, trellis_rejected, block_count


@pytest.fixture(scope="module")
def sanitized_driver(tmp_path_factory) -> Path:
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    assert compiler, "a C++17 compiler (g++) is required for the sanitizer test"
    assert (CSRC / "nnc_core.h").is_file(), "C++ core header coding/csrc/nnc_core.h not found"
    # every translation unit of the core; the binding (torch headers) is not part of it
    sources = sorted(str(p) for p in CSRC.glob("*.cpp") if p.name != "binding.cpp")
    assert sources, "no C++ core sources in coding/csrc"
    exe = tmp_path_factory.mktemp("asan") / "nnc_sanitizer_driver"
    cmd = [compiler, *SANITIZE_FLAGS, f"-I{CSRC}", *sources, str(DRIVER), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sanitizer build failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}"
    return exe


def test_core_survives_mutated_payloads_under_asan_ubsan(sanitized_driver, oracle, tmp_path):
    records, trellis_ok, trellis_rejected, block_count = _build_corpus(oracle)
    assert len(records) > 3000
    corpus = tmp_path / "corpus.bin"
    corpus.write_bytes(b"".join(records))
    env = dict(os.environ,
               ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:allocator_may_return_null=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    proc = subprocess.run([str(sanitized_driver), str(corpus)], capture_output=True, text=True, timeout=600,
                          env=env)
    report = proc.stderr[-6000:]
    assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, report
    assert proc.returncode == 0, f"driver exit {proc.returncode}\n{proc.stdout}\n{report}"
    counts = dict(item.split("=") for item in proc.stdout.split())
    counts = {k: int(v) for k, v in counts.items()}
    assert counts["records"] == len(records)
    assert counts["other_errors"] == 0 and counts["mismatches"] == 0, report
    # the corpus really exercised both outcomes
    assert counts["ok"] > 100 and counts["bitstream_errors"] > 100, counts
    # every payload the encoder accepted decodes again
    assert counts["roundtrip_rejected"] == 0, report
    # the trellis quantized every valid input (levels that survive a round trip), rejected every invalid one
    assert counts["trellis_ok"] == trellis_ok and counts["trellis_rejected"] == trellis_rejected, counts
    # every block record was encoded and round-tripped (no skips, no usage errors)
    assert counts["blocks"] == block_count, counts
    # "overruns" (a damaged payload that decodes only by reading past its end) are legal for the core: its
    # caller compares the consumed byte count with the NNC unit size (asserted in tests/test_robustness.py)
