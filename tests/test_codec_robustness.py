"""Hostile input: truncated, bit-flipped, random and forged streams raise BitstreamError (a ValueError), never
crash or hang. A small seeded corpus here; the large mutation corpus and sanitizer builds live elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecqx.coding import BitstreamError, CodedTensor, decode_levels, encode, load_native


def _stream(scan_order=2, dq=True):
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.integers(-40, 40, (40, 30)).astype(np.int32))
    w[3:7] = 0
    from ecqx.coding import quantize_tensor

    q = quantize_tensor(w.float() * 0.01, -30, dq=dq, scan_order=scan_order)
    return encode({"w": q, "i": torch.tensor([1, -5, 2**30], dtype=torch.int32),
                   "c": CodedTensor(torch.tensor([[1, 3], [3, 3]], dtype=torch.int32), -9,
                                    codebook=torch.tensor([1, 3], dtype=torch.int32))}, scan_order=scan_order)


def _decode_or_error(data):
    try:
        decode_levels(data)
    except BitstreamError as exc:
        assert str(exc)
        return True
    return False


@pytest.mark.parametrize("scan_order,dq", [(0, False), (2, True)])
def test_every_truncation_is_rejected(scan_order, dq):
    data = _stream(scan_order, dq)
    # cuts at the end of an NDU leave a shorter valid stream (units are simply concatenated)
    ndu_ends, pos = set(), 0
    while pos < len(data):
        size = int.from_bytes(data[pos:pos + 2], "big")
        pos += size
        if data[pos - size + 2] >> 2 == 5:
            ndu_ends.add(pos)
    for cut in range(len(data)):
        if cut in ndu_ends:
            assert len(decode_levels(data[:cut])) < 3
        else:
            assert _decode_or_error(data[:cut]), f"truncation at {cut} bytes was accepted"


def test_bit_flips_raise_or_decode():
    data = _stream()
    rng = np.random.default_rng(1)
    errors = 0
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, len(mutated)))
            mutated[pos] ^= 1 << int(rng.integers(0, 8))
        errors += _decode_or_error(bytes(mutated))
    assert errors > 150  # most flips are detected (size checks, terminating bin, entry points)


def test_random_bytes_are_rejected():
    rng = np.random.default_rng(2)
    for n in (1, 2, 5, 17, 100, 1000):
        for _ in range(20):
            assert _decode_or_error(rng.integers(0, 256, n, dtype=np.uint8).tobytes())


def test_payload_garbage_behind_valid_headers():
    data = bytearray(_stream(0, False))
    tail = len(data) - 40
    rng = np.random.default_rng(3)
    for _ in range(50):
        mutated = bytearray(data)
        mutated[tail:] = rng.integers(0, 256, len(data) - tail, dtype=np.uint8).tobytes()
        _decode_or_error(bytes(mutated))  # must not crash or hang; either outcome is allowed


def test_native_decoder_never_reads_past_the_payload():
    native = load_native()
    out = torch.empty(1000, dtype=torch.int32)
    for payload in (b"", b"\x00", b"\xff" * 3, b"\x80\x00"):
        with pytest.raises(ValueError):
            native.decode_payload(payload, out, 1, 1000, 0, False, 11, 1, 0, 0, True, 8)
