"""Whole-model helpers: state_dict entries round-trip and load with strict=True; dtypes, 0-d restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecqx.coding import (
    CodedTensor,
    decode_levels,
    decode_state_dict,
    encode_state_dict,
    quantize_tensor,
    step_size,
)


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(128, 10))
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    m[1].num_batches_tracked.fill_(123)
    return m


def test_state_dict_round_trip_loads_strictly():
    model = _model()
    sd = model.state_dict()
    q = {name: quantize_tensor(t, -28) for name, t in sd.items() if name.endswith("weight") and t.dim() > 1}
    data = encode_state_dict(sd, quantized=q, nonweight_qp=-75)
    out = decode_state_dict(data)
    assert list(out) == list(sd)
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(128, 10))
    fresh.load_state_dict(out, strict=True)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        if name in q:
            assert torch.equal(out[name], q[name].dequantize())  # lossless from the levels
        elif t.is_floating_point():
            assert torch.allclose(out[name], t, atol=step_size(-75) / 2 + 1e-12, rtol=0)
        else:
            assert torch.equal(out[name], t)
    assert int(out["1.num_batches_tracked"]) == 123 and out["1.num_batches_tracked"].dim() == 0
    # parallel coding of the tensors changes nothing
    assert encode_state_dict(sd, quantized=q, nonweight_qp=-75, workers=3) == data
    parallel = decode_state_dict(data, workers=3)
    for name in sd:
        assert torch.equal(parallel[name], out[name]) and parallel[name].dtype == out[name].dtype


def test_nonweight_qp_used_for_unquantized_floats():
    sd = {"b": torch.linspace(-0.3, 0.3, 64)}  # large enough that the coded unit beats raw float32
    d = decode_levels(encode_state_dict(sd, nonweight_qp=-40))
    assert d["b"].qp == -40


def test_dtypes_are_restored():
    # float values are multiples of Δ(-75) = 5·2^-21, so the fine-qp coding is exact here
    sd = {"h": torch.tensor([0.15625, -1.25], dtype=torch.float16),
          "d": torch.tensor([1.25], dtype=torch.float64), "i8": torch.tensor([-3, 4], dtype=torch.int8),
          "flag": torch.tensor([True, False]),
          "scalar": torch.tensor(2.5)}
    out = decode_state_dict(encode_state_dict(sd))
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        assert torch.equal(out[name], t)


def test_quantized_entries_keep_codebook_and_dq():
    w = torch.tensor([[-4, 0, 4], [4, 4, 0]], dtype=torch.int32)
    sd = {"w": torch.zeros(2, 3), "v": torch.zeros(4, 4)}
    q = {"w": CodedTensor(w, -20, codebook=torch.tensor([-4, 0, 4], dtype=torch.int32)),
         "v": quantize_tensor(torch.randn(4, 4), -20, dq=True)}
    out = decode_state_dict(encode_state_dict(sd, quantized=q))
    assert torch.equal(out["w"], q["w"].dequantize())
    assert torch.equal(out["v"], q["v"].dequantize())


def test_state_dict_errors():
    with pytest.raises(KeyError, match="not in the state_dict"):
        encode_state_dict({"a": torch.ones(2)}, quantized={"b": quantize_tensor(torch.ones(2), -8)})
    with pytest.raises(ValueError, match="shape"):
        encode_state_dict({"a": torch.ones(2, 2)}, quantized={"a": quantize_tensor(torch.ones(4), -8)})
    with pytest.raises(TypeError, match="complex64"):
        encode_state_dict({"c": torch.ones(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="topology unit"):
        encode_state_dict({"a": torch.ones(2)}, topology_unit=False)
    with pytest.raises(ValueError, match="non-empty"):
        encode_state_dict({})


def test_names_order_and_empty_entries_are_restored():
    from ecqx.coding import hls

    sd = {"b": torch.tensor([1, 2], dtype=torch.int64), "e": torch.zeros(0, 3, dtype=torch.float16),
          "a": torch.tensor(1.5), "z": torch.zeros(2, 0, dtype=torch.int8)}
    data = encode_state_dict(sd)
    meta = hls.read_state_dict_metadata(hls.parse_stream(data).topology_data)
    assert (meta.count, meta.last) == (2, "a") and [e.name for e in meta.empty] == ["e", "z"]
    out = decode_state_dict(data)
    assert list(out) == list(sd)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape and torch.equal(out[name], t), name


def test_decode_state_dict_reads_paths_and_bytes_like(tmp_path):
    import pathlib

    sd = {"w": torch.tensor([0.5, -0.25]), "n": torch.tensor(3)}
    data = encode_state_dict(sd)
    path = tmp_path / "m.nnc"
    path.write_bytes(data)
    for source in (data, bytearray(data), memoryview(data), str(path), path, pathlib.PurePath(path)):
        out = decode_state_dict(source)
        assert list(out) == ["w", "n"] and torch.equal(out["w"], sd["w"]) and out["n"].dtype == torch.int64
    with pytest.raises(FileNotFoundError):
        decode_state_dict(str(tmp_path / "missing.nnc"))
    with pytest.raises(TypeError, match="bytes or a file path"):
        decode_state_dict(12)


def test_load_nnc_loads_strictly_into_a_module(tmp_path):
    from ecqx.coding import load_nnc

    model = _model()
    path = tmp_path / "m.nnc"
    path.write_bytes(encode_state_dict(model.state_dict()))
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(128, 10))
    assert load_nnc(fresh, path) is fresh
    for name, t in decode_state_dict(path).items():
        assert torch.equal(fresh.state_dict()[name], t), name
    assert int(fresh[1].num_batches_tracked) == 123
    with pytest.raises(RuntimeError, match="Missing key"):
        load_nnc(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(128, 10), nn.Linear(2, 2)),
                 path.read_bytes())
    partial = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_nnc(partial, path)
    load_nnc(partial, path.read_bytes(), strict=False)
    assert torch.equal(partial[0].bias, decode_state_dict(path)["0.bias"])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        load_nnc({}, path)


def test_dtype_names_agree_between_writer_and_reader():
    from ecqx.coding import hls, model

    assert set(model._FLOAT_DTYPES) == hls.FLOAT_DTYPE_NAMES
    assert set(model._INT_DTYPES) == hls.INT_DTYPE_NAMES
    assert all(t.is_floating_point for t in model._FLOAT_DTYPES.values())
    assert not any(t.is_floating_point for t in model._INT_DTYPES.values())
