"""Coding of the float tensors a state_dict does not quantize (BN, biases, excluded layers), all-zero and
empty tensors, and errors that name the tensor (encode_state_dict, quantize_tensor, ecqx.quantize)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

import ecqx
from ecqx.coding import decode_levels, decode_state_dict, encode_state_dict, quantize_tensor, step_size
from ecqx.coding.hls import NduHeader, PayloadType, parse_stream, write_ndu
from ecqx.coding.model import DEFAULT_NONWEIGHT_BITS
from ecqx.coding.quant import relative_qp


def _bn_model(channels: int = 16) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, channels, 3), nn.BatchNorm2d(channels), nn.ReLU(), nn.Flatten(),
                          nn.Linear(channels * 16, 10))
    model[1].running_mean.uniform_(-2, 2)
    model[1].running_var.uniform_(1e-3, 9)  # a wide range, as in trained networks
    model[1].weight.data.uniform_(0.1, 1.5)
    model[1].bias.data.uniform_(-1, 1)
    model[1].num_batches_tracked.fill_(7)
    return model


def _nonweight_names(state: dict, quantized: dict) -> list[str]:
    return [n for n, t in state.items() if t.is_floating_point() and n not in quantized]


def _raw_unit_bytes(name: str, tensor: torch.Tensor, index: int) -> int:
    header = NduHeader(name=name, payload_type=PayloadType.NNR_PT_RAW_FLOAT, dims=tuple(tensor.shape) or (1,),
                       parameter_id=index)
    return len(write_ndu(header, 1, tensor.numpy().astype("<f4").tobytes()))


# ------------------------------------------------------------------------------------------ relative_qp
@pytest.mark.parametrize("qp_density", [0, 2, 5])
@pytest.mark.parametrize("max_abs", [1e-20, 3e-4, 1.0, 0.7, 123.4, 3e30])
@pytest.mark.parametrize("bits", [1, 8, 10, 16])
def test_relative_qp_is_the_largest_step_within_the_bound(qp_density, max_abs, bits):
    qp = relative_qp(max_abs, bits, qp_density)
    target = max_abs * 2.0**-bits
    assert step_size(qp, qp_density) <= target < step_size(qp + 1, qp_density)


def test_relative_qp_without_a_step():
    assert relative_qp(0.0, 10) is None  # all zeros: any step
    assert relative_qp(1e-44, 10) is None  # finer than the smallest float32 step
    with pytest.raises(ValueError, match="bits"):
        relative_qp(1.0, 31)
    with pytest.raises(ValueError, match="max_abs"):
        relative_qp(float("nan"), 8)


# ------------------------------------------------------------------------------------------ auto steps
@pytest.mark.parametrize("bits", [6, DEFAULT_NONWEIGHT_BITS, 14])
def test_auto_step_bounds_the_relative_error_of_every_tensor(bits):
    state = _bn_model().state_dict()
    quantized = {name: quantize_tensor(state[name], -30) for name in ("0.weight", "4.weight")}
    data = encode_state_dict(state, quantized, nonweight_bits=bits)
    out, levels = decode_state_dict(data), decode_levels(data)
    for name in _nonweight_names(state, quantized):
        peak = float(state[name].abs().max())
        err = float((out[name] - state[name]).abs().max())
        assert err <= peak * 2.0 ** -(bits + 1), name
        if levels[name].payload_type == PayloadType.NNR_PT_FLOAT:
            assert levels[name].qp == relative_qp(peak, bits, 2), name
        else:
            assert err == 0.0, name  # raw float32: exact
    for name, q in quantized.items():
        assert torch.equal(out[name], q.dequantize())


def test_auto_is_the_default_and_much_smaller_than_the_fixed_fine_qp():
    state = _bn_model(64).state_dict()
    quantized = {name: quantize_tensor(state[name], -30) for name in ("0.weight", "4.weight")}
    auto, fixed = decode_levels(encode_state_dict(state, quantized)), decode_levels(
        encode_state_dict(state, quantized, nonweight_qp=-75, raw_float=False))
    names = _nonweight_names(state, quantized)
    float32 = 4 * sum(state[n].numel() for n in names)
    auto_bytes = sum(auto[n].unit_bytes for n in names)
    assert auto_bytes < 0.75 * float32  # headers (tensor names) included
    assert auto_bytes < 0.75 * sum(fixed[n].unit_bytes for n in names)
    assert {auto[n].payload_type for n in names} == {PayloadType.NNR_PT_FLOAT}


@pytest.mark.parametrize("nonweight_qp", ["auto", -75, -20])
def test_no_nonweight_unit_is_larger_than_its_raw_float_unit(nonweight_qp):
    state = _bn_model().state_dict()
    state["tiny"] = torch.tensor([0.3])
    state["wide"] = torch.tensor([1e-7, 3.0e4, -2.5e3, 0.5])  # a fine fixed step gives huge levels here
    data = encode_state_dict(state, nonweight_qp=nonweight_qp)
    levels, out = decode_levels(data), decode_state_dict(data)
    raw_units = 0
    for index, (name, tensor) in enumerate(state.items()):
        if not tensor.is_floating_point():
            continue
        assert levels[name].unit_bytes <= _raw_unit_bytes(name, tensor.float(), index), name
        if levels[name].payload_type == PayloadType.NNR_PT_RAW_FLOAT:
            raw_units += 1
            assert torch.equal(out[name], tensor), name
    if nonweight_qp == -75:
        assert raw_units > 0  # the fine fixed step costs more than 32 bits per value somewhere


def test_fixed_qp_keeps_its_qp_and_values():
    state = {"b": torch.linspace(-0.3, 0.3, 64), "c": torch.linspace(0, 5, 40)}
    for raw_float in (True, False):
        data = encode_state_dict(state, nonweight_qp=-40, raw_float=raw_float)
        levels, out = decode_levels(data), decode_state_dict(data)
        for name, tensor in state.items():
            assert levels[name].qp == -40
            assert torch.equal(out[name], quantize_tensor(tensor, -40).dequantize())


def test_nonweight_units_take_the_cheaper_unary_length():
    state = {"w": torch.randn(12, 9), "b": torch.randn(300)}
    quantized = {"w": quantize_tensor(state["w"], -12)}
    for nonweight_qp in ("auto", -60):
        stream = parse_stream(encode_state_dict(state, quantized, nonweight_qp=nonweight_qp,
                                                cabac_unary_length_minus1=10))
        headers = {n.header.name: n.header for n in stream.ndus}
        assert headers["w"].cabac_unary_length_minus1 == 10  # quantized tensors: the stream's setting
        assert headers["b"].cabac_unary_length_minus1 == 0  # large levels: one greater-than flag is cheaper


def test_raw_float_false_writes_no_raw_units():
    state = _bn_model().state_dict()
    state["tiny"] = torch.tensor([0.3])
    data = encode_state_dict(state, nonweight_qp=-75, raw_float=False)
    kinds = {t.payload_type for t in decode_levels(data).values()}
    assert PayloadType.NNR_PT_RAW_FLOAT not in kinds
    out = decode_state_dict(data)
    assert torch.allclose(out["tiny"], state["tiny"], atol=step_size(-75) / 2, rtol=0)


def test_auto_bytes_do_not_depend_on_workers():
    state = _bn_model().state_dict()
    assert encode_state_dict(state, workers=3) == encode_state_dict(state)


def test_values_beyond_the_stream_qp_range_stay_exact_or_are_logged(caplog):
    """One stream carries qps within 2^(6 + qp_density) of each other: a tensor of tiny values next to
    quantized weights needs a finer step than that; it is stored raw, or (raw_float=False) coded with the
    finest step the stream can signal."""
    weight = torch.randn(8, 8)
    state = {"w": weight, "tiny": torch.tensor([3e-30, -1e-30, 2e-30, 0.0] * 4), "big": torch.randn(16) * 1e6}
    quantized = {"w": quantize_tensor(weight, -30)}
    data = encode_state_dict(state, quantized)
    levels, out = decode_levels(data), decode_state_dict(data)
    assert levels["tiny"].payload_type == PayloadType.NNR_PT_RAW_FLOAT
    assert torch.equal(out["tiny"], state["tiny"])
    peak = float(state["big"].abs().max())
    assert float((out["big"] - state["big"]).abs().max()) <= peak * 2.0 ** -(DEFAULT_NONWEIGHT_BITS + 1)
    with caplog.at_level(logging.WARNING, logger="ecqx.coding.model"):
        strict = encode_state_dict(state, quantized, raw_float=False)
    assert "'tiny'" in caplog.text
    levels = decode_levels(strict)
    assert levels["tiny"].payload_type == PayloadType.NNR_PT_FLOAT
    assert max(t.qp for t in levels.values() if t.qp is not None) - min(
        t.qp for t in levels.values() if t.qp is not None) < 2 ** (6 + 2)
    state["big"] = state["big"] * 1e14  # levels beyond int32 at the coarsest step the stream can signal
    with pytest.raises(ValueError, match="'big'.*raw_float=True"):
        encode_state_dict(state, quantized, raw_float=False)
    assert torch.equal(decode_state_dict(encode_state_dict(state, quantized))["big"], state["big"])


def test_nonweight_options_are_checked():
    state = {"b": torch.ones(3)}
    for bad in ("fine", 1.5, True, None):
        with pytest.raises(ValueError, match="nonweight_qp"):
            encode_state_dict(state, nonweight_qp=bad)
    for bad in (0, 25, 2.0, True):
        with pytest.raises(ValueError, match="nonweight_bits"):
            encode_state_dict(state, nonweight_bits=bad)
    with pytest.raises(TypeError, match="raw_float"):
        encode_state_dict(state, raw_float="yes")


# ------------------------------------------------------------------------------------------ interop
def test_nncodec_decodes_auto_streams_without_raw_units():
    from nncodec_oracle import decode_values

    state = _bn_model().state_dict()
    quantized = {"0.weight": quantize_tensor(state["0.weight"], -30, dq=True),
                 "4.weight": quantize_tensor(state["4.weight"], -28)}
    for options in ({}, {"raw_float": False}, {"nonweight_qp": -75, "raw_float": False}):
        data = encode_state_dict(state, quantized, **options)
        assert PayloadType.NNR_PT_RAW_FLOAT not in {t.payload_type for t in decode_levels(data).values()}
        theirs, ours = decode_values(data), decode_state_dict(data)
        for name, tensor in state.items():
            their = torch.from_numpy(np.asarray(theirs[name])).reshape(tensor.shape).to(tensor.dtype)
            assert torch.equal(their, ours[name]), name


def test_nncodec_reads_our_raw_float_unit():
    """NNCodec 2.1.3 (numpy < 2) reads a raw float unit only as the last unit of a stream (after one, its
    reader's stream position becomes a float); there it must agree with our decoder bit for bit."""
    from nncodec_oracle import decode_values

    state = {"w": torch.randn(6, 5), "raw": torch.tensor([1e-7, 3.0e4, -2.5e3, 0.5, -0.0, 7.25])}
    data = encode_state_dict(state, {"w": quantize_tensor(state["w"], -20)}, nonweight_qp=-75)
    assert decode_levels(data)["raw"].payload_type == PayloadType.NNR_PT_RAW_FLOAT
    theirs = decode_values(data)
    assert np.asarray(theirs["raw"]).tobytes() == state["raw"].numpy().tobytes()
    assert torch.equal(decode_state_dict(data)["raw"], state["raw"])


# ------------------------------------------------------------------------------------------ all-zero, empty
def test_all_zero_tensors_are_coded_as_zeros():
    state = {"w": torch.zeros(4, 6), "b": torch.zeros(6), "s": torch.zeros(()), "v": torch.randn(5)}
    quantized = {"w": quantize_tensor(state["w"], -16)}
    for nonweight_qp in ("auto", -75):
        data = encode_state_dict(state, quantized, nonweight_qp=nonweight_qp, raw_float=False)
        out, levels = decode_state_dict(data), decode_levels(data)
        for name in ("w", "b", "s"):
            assert levels[name].payload_type == PayloadType.NNR_PT_FLOAT
            assert torch.equal(out[name], state[name]) and out[name].shape == state[name].shape


def test_all_zero_weight_through_quantize_encode_decode():
    model = _bn_model()
    with torch.no_grad():
        model[0].weight.zero_()
    state = model.state_dict()
    quantized = ecqx.quantize(state, method="ecq", bits=4, lam=0.05)
    assert set(quantized) == {"0.weight", "4.weight"}
    assert not bool(quantized["0.weight"].levels.any()) and quantized["4.weight"].levels.any()
    out = decode_state_dict(encode_state_dict(state, quantized))
    assert torch.equal(out["0.weight"], torch.zeros_like(state["0.weight"]))
    assert torch.equal(out["4.weight"], quantized["4.weight"].dequantize())
    _bn_model().load_state_dict(out, strict=True)


def test_empty_tensors_are_restored_by_shape_and_dtype():
    state = {"a": torch.randn(3), "empty_w": torch.zeros(0, 4), "b": torch.randn(2, 3),
             "empty_i": torch.zeros(5, 0, dtype=torch.int64), "empty_h": torch.zeros(0, dtype=torch.float16),
             "z": torch.zeros(7)}
    quantized = ecqx.quantize(state)  # the empty ≥ 2-D tensor is skipped, not an error
    assert "empty_w" not in quantized
    out = decode_state_dict(encode_state_dict(state, quantized))
    assert list(out) == list(state)
    for name, tensor in state.items():
        assert out[name].shape == tensor.shape and out[name].dtype == tensor.dtype, name
    assert {n.header.name for n in parse_stream(encode_state_dict(state)).ndus} == {"a", "b", "z"}


def test_only_empty_tensors_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        encode_state_dict({"e": torch.zeros(0, 3)})


# ------------------------------------------------------------------------------------------ named errors
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_errors_name_the_tensor(bad):
    state = {"ok": torch.ones(4), "layer.bias": torch.tensor([1.0, bad, 2.0])}
    for options in ({}, {"nonweight_qp": -75}):
        with pytest.raises(ValueError, match=r"'layer\.bias'.*NaN or infinite"):
            encode_state_dict(state, **options)
    with pytest.raises(ValueError, match=r"'huge'.*float32 range"):
        encode_state_dict({"huge": torch.tensor([1e300, 1.0], dtype=torch.float64)})


def test_quantize_errors_name_the_tensor():
    state = {"a.weight": torch.randn(4, 4), "b.weight": torch.randn(4, 4)}
    state["b.weight"][1, 2] = math.nan
    with pytest.raises(ValueError, match=r"'b\.weight'.*NaN"):
        ecqx.quantize(state)
