"""Golden vectors of spec nnc-bitstream.md §1/§15.2 (validated there against NNCodec 2.1.3): our encoder
reproduces the bytes, our decoder the integers and the float values listed in the spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from golden_vectors import GOLDEN

from ecqx.coding import CodedTensor, PayloadType, decode, decode_levels, encode


def _input(v):
    levels = torch.from_numpy(v.levels.copy())
    if v.qp is None:
        return levels
    return CodedTensor(levels, v.qp, 2, dq=bool(v.dq))


@pytest.mark.parametrize("v", GOLDEN, ids=lambda v: v.name)
def test_encoder_reproduces_golden_bytes(v):
    data = encode({v.tensor: _input(v)}, profile=v.profile, scan_order=v.scan_order,
                  row_skipping=v.row_skipping, param_opt=v.param_opt)
    assert data.hex() == v.data.hex()


@pytest.mark.parametrize("v", GOLDEN, ids=lambda v: v.name)
def test_decoder_reproduces_golden_levels(v):
    d = decode_levels(v.data)[v.tensor]
    assert np.array_equal(d.levels.numpy(), v.levels)
    assert d.qp == v.qp
    assert d.dq == bool(v.dq)
    assert d.shape == v.levels.shape
    assert d.payload_type == (PayloadType.NNR_PT_INT if v.qp is None else PayloadType.NNR_PT_FLOAT)


def test_v1_float_values_from_the_spec():
    v1 = next(v for v in GOLDEN if v.name == "V1")
    out = decode(v1.data)["w"]
    expected = torch.tensor([[0.0625, 0, 0, -0.125], [0, 0, 0, 0], [0.1875, -0.0625, 0, 0.875]])
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_v3_dq_float_values_from_the_spec():
    v3 = next(v for v in GOLDEN if v.name == "V3")
    out = decode(v3.data)["w"]
    expected = torch.tensor([[0.0625, 0, 0, -0.09375], [0, 0, 0, 0], [0.125, -0.0625, 0, 0.875]])
    assert torch.equal(out, expected)


def test_v4_int_tensor_is_int32():
    v4 = next(v for v in GOLDEN if v.name == "V4")
    out = decode(v4.data)["i"]
    assert out.dtype == torch.int32
    assert out.tolist() == [5, -3, 0, 0, 1000]


def test_v5_entry_point_from_the_spec():
    # §15.2 V5: one entry point, D = 46, value8 = 242, DQ state 0
    from ecqx.coding.hls import parse_stream

    v5 = next(v for v in GOLDEN if v.name == "V5")
    assert parse_stream(v5.data).ndus[0].header.entry_points == [(46, 242, 0)]
