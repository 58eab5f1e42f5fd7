"""Seeded corpus of damaged NNC streams for the robustness and sanitizer tests.

Every generator is deterministic for a given seed. Mutation operators: truncation at every length, single and
multiple bit flips, byte replacement, byte insertion/deletion, random bytes (bare or behind a valid prefix),
empty input, and hand-crafted headers with oversized or absurd fields (dimension values, dimension counts,
unit sizes, unterminated names, unknown unit/payload types).
"""

from __future__ import annotations

import random
from collections.abc import Iterator


class BitWriter:
    """Minimal MSB-first writer for crafting NNC headers (spec §2.1 descriptors)."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> BitWriter:
        self.bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))
        return self

    def ue(self, k: int, value: int) -> BitWriter:
        while value >= (1 << k):
            self.bits.append(0)
            value -= 1 << k
            k += 1
        self.bits.append(1)
        return self.u(k, value) if k else self

    def st(self, text: bytes, terminate: bool = True) -> BitWriter:
        assert len(self.bits) % 8 == 0, "st() must start byte aligned"
        for byte in text + (b"\x00" if terminate else b""):
            self.u(8, byte)
        return self

    def align(self) -> BitWriter:
        self.bits.append(1)
        while len(self.bits) % 8:
            self.bits.append(0)
        return self

    def tobytes(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))


def unit(body: bytes, size: int | None = None) -> bytes:
    """Prefix an NNR unit body (header + payload) with its nnr_unit_size field (short form when it fits)."""
    total = len(body) + 2 if size is None else size
    if total < 32768:
        return bytes([(total >> 8) & 0x7F, total & 0xFF]) + body
    total = len(body) + 4 if size is None else size
    return (0x80000000 | total).to_bytes(4, "big") + body


START_P1 = bytes.fromhex("00040201")
MPS_QD2 = bytes.fromhex("0008068100400080")
TPL = bytes.fromhex("00060e000000")
PREFIX = START_P1 + MPS_QD2 + TPL


def ndu_header(name: bytes, dims: list[int], *, payload_type: int = 1, dq: int = 0, scan_order: int = 0,
               entry_points: list[tuple[int, int]] | None = None, count: int | None = None,
               n_minus1: int = 10, terminate_name: bool = True) -> bytes:
    """Profile-1 NDU header bytes (no size field) with arbitrary, possibly absurd, field values."""
    w = BitWriter().u(6, 5).u(1, 1).u(1, 0)
    w.u(5, payload_type).u(1, 0).u(1, 0).u(1, 1)
    w.st(name, terminate=terminate_name)
    w.u(1, 1).ue(1, 0).ue(5, 0).ue(4, 0)
    if payload_type in (1, 3):
        w.u(1, 0)
    if payload_type in (0, 1, 3):
        w.u(1, dq)
    w.u(1, 1).u(1, 1).u(4, 0)
    w.ue(1, len(dims) if count is None else count)
    for d in dims:
        w.ue(7, d)
    w.u(8, n_minus1)
    if len(dims) > 1:
        w.ue(1, 0).u(4, scan_order)
        for j, (value8, delta) in enumerate(entry_points or []):
            w.u(8, value8)
            if dq:
                w.u(3, 0)
            w.ue(11, delta) if j == 0 else w.ue(7, delta)
    w.align()
    return w.tobytes()


def crafted_streams(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Headers with oversized or inconsistent fields, each followed by a short plausible payload."""
    payload = bytes(rng.randrange(256) for _ in range(12))
    big = [2**20, 2**24, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**64 + 5]
    for d in big:
        yield f"dims-1d-{d}", PREFIX + unit(ndu_header(b"w", [d]) + payload)
        yield f"dims-2d-{d}", PREFIX + unit(ndu_header(b"w", [d, d]) + payload)
        yield f"dims-4d-{d}", PREFIX + unit(ndu_header(b"w", [3, d, 3, 3]) + payload)
        yield f"dims-int-{d}", PREFIX + unit(ndu_header(b"i", [d, 7], payload_type=0) + payload)
    yield "dims-zero", PREFIX + unit(ndu_header(b"w", [0, 5]) + payload)
    yield "dims-zero-1d", PREFIX + unit(ndu_header(b"w", [0]) + payload)
    yield "dims-product-overflow", PREFIX + unit(ndu_header(b"w", [2**16] * 5) + payload)
    yield "dims-count-0", PREFIX + unit(ndu_header(b"w", []) + payload)
    yield "dims-count-huge", PREFIX + unit(ndu_header(b"w", [2, 2], count=2**40) + payload)
    yield "dims-count-1000", PREFIX + unit(ndu_header(b"w", [1] * 1000) + payload)
    yield "entry-points-many", PREFIX + unit(
        ndu_header(b"w", [2**30, 4], scan_order=1, entry_points=[(7, 3)] * 40) + payload)
    yield "entry-points-huge-delta", PREFIX + unit(
        ndu_header(b"w", [20, 4], scan_order=1, entry_points=[(255, 2**40)]) + payload)
    yield "scan-order-15", PREFIX + unit(ndu_header(b"w", [9, 9], scan_order=15) + payload)
    yield "gtx-256", PREFIX + unit(ndu_header(b"w", [9, 9], n_minus1=255) + payload)
    yield "payload-type-raw-huge", PREFIX + unit(ndu_header(b"w", [2**30], payload_type=2) + payload)
    yield "payload-type-31", PREFIX + unit(ndu_header(b"w", [4], payload_type=31) + payload)
    yield "payload-type-block", PREFIX + unit(ndu_header(b"w", [4], payload_type=3) + payload)
    yield "name-unterminated", PREFIX + unit(ndu_header(b"w" * 40, [4], terminate_name=False))
    yield "name-not-utf8", PREFIX + unit(ndu_header(b"\xff\xfe", [4]) + payload)
    yield "unit-size-huge", PREFIX + unit(ndu_header(b"w", [4]) + payload, size=2**31 - 1)
    yield "unit-size-short-huge", PREFIX + bytes([0x7F, 0xFF]) + ndu_header(b"w", [4]) + payload
    yield "unit-size-zero", PREFIX + unit(ndu_header(b"w", [4]) + payload, size=0)
    yield "unit-size-one", PREFIX + unit(ndu_header(b"w", [4]) + payload, size=1)
    yield "unit-size-header-only", PREFIX + unit(ndu_header(b"w", [4]) + payload, size=4)
    yield "unit-type-qnt", PREFIX + unit(bytes([4 << 2 | 2]) + payload)
    yield "unit-type-agg", PREFIX + unit(bytes([6 << 2 | 2]) + payload)
    yield "unit-type-63", PREFIX + unit(bytes([63 << 2 | 2]) + payload)
    yield "partial-data-counter", PREFIX + unit(bytes([5 << 2 | 3, 0]) + payload)
    yield "ndu-before-mps", START_P1 + unit(ndu_header(b"w", [4]) + payload)
    yield "ndu-without-start", MPS_QD2 + unit(ndu_header(b"w", [4]) + payload)
    yield "two-mps", PREFIX + MPS_QD2 + unit(ndu_header(b"w", [4]) + payload)
    yield "profile-7", bytes.fromhex("00040207") + MPS_QD2 + unit(ndu_header(b"w", [4]) + payload)
    yield "mps-no-quant-method", START_P1 + bytes.fromhex("0008068000400080") + unit(
        ndu_header(b"w", [4]) + payload)
    yield "mps-all-flags", START_P1 + unit(bytes([0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]))
    yield "tpl-onnx", START_P1 + MPS_QD2 + bytes.fromhex("00060e020000")
    yield "duplicate-name", PREFIX + unit(ndu_header(b"w", [4], payload_type=0) + payload) * 2


def truncations(data: bytes) -> Iterator[tuple[str, bytes]]:
    for n in range(len(data)):
        yield f"trunc-{n}", data[:n]


def bit_flips(data: bytes, rng: random.Random, count: int, max_bits: int = 1) -> Iterator[tuple[str, bytes]]:
    for i in range(count):
        buf = bytearray(data)
        for _ in range(rng.randint(1, max_bits)):
            pos = rng.randrange(len(buf) * 8)
            buf[pos >> 3] ^= 0x80 >> (pos & 7)
        yield f"flip{max_bits}-{i}", bytes(buf)


def byte_edits(data: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    specials = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE]
    for i in range(count):
        buf = bytearray(data)
        op = i % 4
        pos = rng.randrange(len(buf))
        if op == 0:
            buf[pos] = rng.randrange(256)
        elif op == 1:
            buf[pos] = specials[rng.randrange(len(specials))]
        elif op == 2:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        else:
            del buf[pos:pos + rng.randint(1, 4)]
        yield f"edit{op}-{i}", bytes(buf)


def random_streams(rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    for i in range(count):
        body = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        yield f"random-{i}", body
        yield f"random-after-prefix-{i}", PREFIX + body


def build_corpus(seeds: list[bytes], seed: int = 20261125, *, flips_per_seed: int = 150,
                 edits_per_seed: int = 100, randoms: int = 200, truncate_seeds: int = 4
                 ) -> list[tuple[str, bytes]]:
    """All mutations of ``seeds`` plus random and crafted streams, labelled for failure reports."""
    rng = random.Random(seed)
    corpus: list[tuple[str, bytes]] = [("empty", b""), ("one-zero-byte", b"\x00")]
    for idx, data in enumerate(seeds):
        tag = f"seed{idx}"
        if idx < truncate_seeds:
            corpus += [(f"{tag}-{label}", d) for label, d in truncations(data)]
        corpus += [(f"{tag}-{label}", d) for label, d in bit_flips(data, rng, flips_per_seed)]
        corpus += [(f"{tag}-{label}", d) for label, d in bit_flips(data, rng, flips_per_seed // 3, 8)]
        corpus += [(f"{tag}-{label}", d) for label, d in byte_edits(data, rng, edits_per_seed)]
    corpus += list(random_streams(rng, randoms))
    corpus += [(f"crafted-{label}", d) for label, d in crafted_streams(rng)]
    return corpus
