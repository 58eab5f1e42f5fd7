"""Byte identity with NNCodec 2.1.3 for large integer tensors (NNR_PT_INT, spec §12.7, §14.5a).

Integer tensors are coded losslessly without qp and without DQ; everything else (ecoIdx choice of spec §8.2,
row skipping of §10, scans, the Exp-Golomb remainder of §7.1) is the same machinery as for quantized float
tensors, so for the same integers and settings our bytes must equal NNCodec's, and each decoder must return
the other's integers exactly.

The matrices are sized like transformer weights (384×384, 1000×384) and filled with Laplacian integers of
several spreads, up to one whose remainders need 20+ Exp-Golomb prefix bins.

Settings matter: ``row_skip_enabled_flag`` is part of the stream. ``nnc.compress`` defaults to
``row_skipping=False``; NNCodec's tensor/nn APIs and our ``encode`` default to ``True``. A tensor without
zero rows then costs the flag + one adaptively coded row-skip flag per row more (≈ 4 bytes for 384 rows,
≈ 42 bytes for 30522 rows) — a difference of settings, not of the coder, pinned down by the tests below.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.interop

INT32_MAX = 2**31 - 1
# (shape, Laplace scale, fraction of zeroed rows): narrow to wide spreads, square and non-square
CASES = [((384, 384), 2.0, 0.0), ((384, 384), 20.0, 0.0), ((384, 384), 300.0, 0.05),
         ((384, 384), 1.0e6, 0.0), ((1000, 384), 20.0, 0.02), ((384, 1000), 60.0, 0.0)]


@pytest.fixture(scope="module")
def codec():
    import ecqx.coding as coding

    coding.load_native()
    return coding


def _laplace_ints(shape, scale: float, zero_rows: float) -> np.ndarray:
    rs = np.random.RandomState(zlib.crc32(repr((shape, scale, zero_rows)).encode()))
    x = np.round(rs.laplace(0.0, scale, size=shape))
    x = np.clip(x, -INT32_MAX, INT32_MAX).astype(np.int32)
    if zero_rows:
        x[rs.rand(shape[0]) < zero_rows] = 0
    return x


def _check_both_decoders(codec, oracle, data: bytes, expected: dict[str, np.ndarray]) -> None:
    theirs = oracle.decode_values(data)
    ours = codec.decode(data)
    assert list(theirs) == list(expected) == list(ours)
    for name, arr in expected.items():
        assert theirs[name].dtype == np.int32
        np.testing.assert_array_equal(theirs[name], arr)
        assert ours[name].dtype == torch.int32
        np.testing.assert_array_equal(ours[name].numpy(), arr)
        assert codec.decode_levels(data)[name].qp is None  # PT_INT: no qp


@pytest.mark.parametrize("shape,scale,zero_rows", CASES, ids=lambda v: str(v).replace(" ", ""))
@pytest.mark.parametrize("row_skipping", [True, False])
def test_large_int_tensor_bytes_equal_nncodec_coder(codec, oracle, shape, scale, zero_rows, row_skipping):
    ints = {"w": _laplace_ints(shape, scale, zero_rows)}
    theirs = oracle.encode_int(ints, row_skipping=row_skipping)
    mine = codec.encode({"w": torch.from_numpy(ints["w"])}, row_skipping=row_skipping)
    assert len(mine) == len(theirs), (len(mine), len(theirs))
    assert mine == theirs
    _check_both_decoders(codec, oracle, mine, ints)


@pytest.mark.parametrize("scan_order,N1,param_opt", [(1, 10, True), (2, 3, True), (4, 30, False)])
def test_large_int_tensor_block_scans_and_unary_lengths(codec, oracle, scan_order, N1, param_opt):
    ints = {"w": _laplace_ints((1000, 384), 40.0, 0.03)}
    theirs = oracle.encode_int(ints, row_skipping=True, scan_order=scan_order, N1=N1, param_opt=param_opt)
    mine = codec.encode({"w": torch.from_numpy(ints["w"])}, row_skipping=True, scan_order=scan_order,
                        cabac_unary_length_minus1=N1, param_opt=param_opt)
    assert mine == theirs
    _check_both_decoders(codec, oracle, mine, ints)


def test_nnc_compress_defaults_equal_ours_without_row_skipping(codec, oracle):
    """``nnc.compress`` on a dict of int32 matrices (its defaults: row skipping off) is byte-identical to
    ours with ``row_skipping=False``; with our default (on) each tensor without zero rows carries the
    row-skip flags and is larger by exactly what NNCodec itself writes with row skipping on."""
    ints = {"attn.q": _laplace_ints((384, 384), 12.0, 0.0),
            "ffn.in": _laplace_ints((1000, 384), 12.0, 0.0),
            "token_type": _laplace_ints((2, 384), 12.0, 0.0)}
    theirs = oracle.compress_default(ints)
    tensors = {k: torch.from_numpy(v) for k, v in ints.items()}
    assert codec.encode(tensors, row_skipping=False) == theirs
    _check_both_decoders(codec, oracle, theirs, ints)
    with_flags = codec.encode(tensors)
    assert with_flags == oracle.compress_default(ints, row_skipping=True)
    _check_both_decoders(codec, oracle, with_flags, ints)
    # row_skip_enabled_flag (1 bypass bin) + 384 / 1000 / 2 context-coded row flags: a few bytes per tensor
    per_tensor = [len(codec.encode({k: v})) - len(codec.encode({k: v}, row_skipping=False))
                  for k, v in tensors.items()]
    assert 2 <= per_tensor[0] <= per_tensor[1] <= 16 and per_tensor[2] <= 1, per_tensor


def test_nncodec_tensor_api_equals_our_default(codec, oracle, tmp_path):
    """NNCodec's single-tensor API (row skipping and param_opt on, integer dtype → PT_INT) writes exactly
    our default stream for the same integers."""
    from nncodec import tensor as nnc_tensor

    ints = _laplace_ints((384, 384), 25.0, 0.01)
    with oracle._quiet():
        theirs = bytes(nnc_tensor.encode(torch.from_numpy(ints), args={"results": str(tmp_path),
                                                                      "tensor_id": "w"}))
    mine = codec.encode({"w": torch.from_numpy(ints)})
    assert mine == theirs
    _check_both_decoders(codec, oracle, mine, {"w": ints})
