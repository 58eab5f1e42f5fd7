"""Encoder byte identity with the spec's reference model (nncproto.write_stream, itself validated byte-exact
against NNCodec 2.1.3), quantizer identity (quant.py) and round trips of every coding option."""

from __future__ import annotations

import importlib
import itertools
import zlib

import numpy as np
import pytest
import torch

from ecqx.coding import CodedTensor, decode, decode_levels, encode, quantize_tensor, step_size


@pytest.fixture(scope="module")
def ref_quant(reference_model):
    return importlib.import_module("quant")  # nnc-reference-model/quant.py (path set by reference_model)


def _data(rng, shape, kind):
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "sparse":
        x[rng.random(shape) < 0.9] = 0
    elif kind == "zero_rows" and len(shape) > 1:
        x[::3] = 0
        x[1:4] = 0
    elif kind == "heavy":
        x = (rng.standard_cauchy(shape) * 0.5).astype(np.float32)
    return x


SHAPES = [(7,), (5, 3), (33, 17), (70, 9), (17, 3, 3, 3), (20, 70), (1, 40), (40, 1)]
KINDS = ["gauss", "sparse", "zero_rows", "heavy"]


def _cases():
    rng = np.random.default_rng(1234)
    for i, (shape, kind) in enumerate(itertools.product(SHAPES, KINDS)):
        degenerate = len(shape) > 1 and (shape[0] == 1 or shape[1] == 1)
        yield pytest.param(shape, kind, dict(
            qp=int(rng.choice([-40, -32, -25])), dq=bool(i % 2), profile=int(rng.integers(0, 2)),
            scan_order=0 if degenerate else int(rng.integers(0, 5)), param_opt=bool(rng.integers(0, 2)),
            row_skipping=bool(rng.integers(0, 2)), n1=int(rng.choice([0, 3, 10, 30]))),
            id=f"{shape}-{kind}")


@pytest.mark.parametrize("shape,kind,opt", list(_cases()))
def test_bytes_equal_reference_model(reference_model, ref_quant, shape, kind, opt):
    rng = np.random.default_rng(zlib.crc32(repr((shape, kind)).encode()))
    x = _data(rng, shape, kind)
    so = opt["scan_order"] if len(shape) > 1 else 0
    if opt["dq"]:
        levels = ref_quant.tcq(x, opt["qp"], 2, so).astype(np.int32)
    else:
        levels = ref_quant.urq(x, opt["qp"], 2).astype(np.int32)
    ours_q = quantize_tensor(torch.from_numpy(x), opt["qp"], dq=opt["dq"], scan_order=so)
    assert np.array_equal(ours_q.levels.numpy(), levels), "quantizer differs from NNCodec's (model)"
    expected = reference_model.write_stream(
        [dict(name="w", levels=levels, qp=opt["qp"], dq=int(opt["dq"]))], qp_density=2, N=opt["n1"] + 1,
        profile=opt["profile"], param_opt=opt["param_opt"], row_skip_en=int(opt["row_skipping"]),
        scan_order=opt["scan_order"])
    data = encode({"w": ours_q}, profile=opt["profile"], scan_order=opt["scan_order"],
                  row_skipping=opt["row_skipping"], param_opt=opt["param_opt"],
                  cabac_unary_length_minus1=opt["n1"])
    assert data == expected
    model_levels = reference_model.read_stream(data)["w"]["levels"]
    assert np.array_equal(decode_levels(data)["w"].levels.numpy(), model_levels)


def test_decode_returns_levels_times_step_in_float32():
    levels = torch.tensor([[3, -7, 0], [1000, 1, -1]], dtype=torch.int32)
    out = decode(encode({"w": CodedTensor(levels, -38)}))["w"]
    step = np.float32(step_size(-38))
    assert step == np.float32(0.00146484375)
    assert np.array_equal(out.numpy(), levels.numpy().astype(np.float32) * step)


@pytest.mark.parametrize("qp,expected", [(0, 1.0), (5, 2.5), (-16, 0.0625), (-20, 0.03125), (-32, 0.00390625),
                                         (-38, 0.00146484375), (-75, 2.384185791015625e-06)])
def test_step_size_values_from_spec(qp, expected):
    assert step_size(qp, 2) == expected


def test_uniform_quantizer_rounds_half_away_from_zero():
    # Δ = 1 at qp 0: 0.5 -> 1, -0.5 -> -1, 1.5 -> 2, 2.5 -> 3 (not banker's rounding)
    q = quantize_tensor(torch.tensor([0.5, -0.5, 1.5, 2.5, -2.5, 0.49]), 0)
    assert q.levels.tolist() == [1, -1, 2, 3, -3, 0]


def test_quantizer_overflow_falls_back_to_coarser_qp():
    x = torch.tensor([1.0e6, -3.0, 0.5])
    q = quantize_tensor(x, -75)  # 1e6 / 2.4e-6 overflows int32
    assert q.qp > -75
    assert int(q.levels.abs().max()) <= 2**31 - 1
    assert torch.allclose(q.dequantize(), x, rtol=1e-6, atol=q.step)


def test_multi_tensor_stream_mixed_qp_and_types():
    rng = np.random.default_rng(5)

    def ints(lo, hi, shape):
        return torch.from_numpy(rng.integers(lo, hi, shape).astype(np.int32))

    tensors = {
        "conv.weight": CodedTensor(ints(-9, 10, (8, 3, 3, 3)), -30),
        "conv.bias": CodedTensor(ints(-900, 900, (8,)), -75),
        "fc.weight": CodedTensor(ints(-3, 4, (10, 72)), -30, dq=False),
        "steps": torch.tensor([7, 0, -2**31 + 1, 2**31 - 1], dtype=torch.int32),
    }
    out = decode_levels(encode(tensors, scan_order=2))
    assert list(out) == list(tensors)
    for name, t in tensors.items():
        levels = t.levels if isinstance(t, CodedTensor) else t
        assert torch.equal(out[name].levels, levels)
        if isinstance(t, CodedTensor):
            assert out[name].qp == t.qp


def test_qp_density_unified_exactly():
    a = CodedTensor(torch.tensor([1, -2, 3], dtype=torch.int32), -9, qp_density=1)
    b = CodedTensor(torch.tensor([4, 5], dtype=torch.int32), -100, qp_density=4)
    out = decode_levels(encode({"a": a, "b": b}))
    assert out["a"].qp_density == 4 and out["a"].qp == -9 * 8
    assert out["a"].step == a.step
    assert torch.equal(out["a"].dequantize(), a.dequantize())
    assert torch.equal(out["b"].dequantize(), b.dequantize())


def test_qp_far_from_zero_uses_a_shifted_base():
    a = CodedTensor(torch.tensor([1, 2], dtype=torch.int32), -300)
    b = CodedTensor(torch.tensor([3], dtype=torch.int32), -200)
    out = decode_levels(encode({"a": a, "b": b}))
    assert (out["a"].qp, out["b"].qp) == (-300, -200)
    with pytest.raises(ValueError, match="span more than"):
        encode({"a": a, "c": CodedTensor(torch.tensor([1], dtype=torch.int32), 0)})


def test_long_unit_size_field():
    rng = np.random.default_rng(9)
    levels = torch.from_numpy(rng.integers(-2**20, 2**20, (300, 400)).astype(np.int32))
    data = encode({"big": levels})
    assert len(data) > 32768
    assert torch.equal(decode(data)["big"], levels)


@pytest.mark.parametrize("profile", [0, 1])
@pytest.mark.parametrize("values,codebook", [
    ([[-3, 0, 5], [5, 5, -3]], [-3, 0, 5]),
    ([[7, 7], [7, 7]], [7]),                      # size-1 codebook: nothing coded
    ([[-9, -4, -4, -1]], [-9, -4, -1]),           # all negative
    ([[2, 40, 2, 2, 1000]], [2, 40, 1000]),       # big gaps, remainder bound
    ([[-2, -1, 0, 1, 2] * 6] * 9, [-2, -1, 0, 1, 2]),
])
def test_codebook_round_trip(profile, values, codebook):
    levels = torch.tensor(values, dtype=torch.int32)
    t = CodedTensor(levels, -12, codebook=torch.tensor(codebook, dtype=torch.int32))
    d = decode_levels(encode({"w": t}, profile=profile, scan_order=1))["w"]
    assert torch.equal(d.levels, levels)
    assert d.codebook.tolist() == codebook
    assert torch.equal(d.dequantize(), t.dequantize())


def test_codebook_stream_readable_by_reference_model(reference_model):
    levels = torch.tensor([[-3, 0, 5, 0], [0, 0, 0, 0], [5, 5, -3, 0]], dtype=torch.int32)
    t = CodedTensor(levels, -12, codebook=torch.tensor([-3, 0, 5], dtype=torch.int32))
    data = encode({"w": t})
    model = reference_model.read_stream(data)["w"]
    assert np.array_equal(model["recon"].astype(np.float32), t.dequantize().numpy())


@pytest.mark.parametrize("topology_unit", [True, False])
def test_topology_unit_optional(topology_unit):
    data = encode({"i": torch.tensor([1, 2, 3])}, topology_unit=topology_unit)
    assert (bytes.fromhex("00060e000000") in data) == topology_unit
    assert decode(data)["i"].tolist() == [1, 2, 3]


def test_deterministic_bytes():
    rng = np.random.default_rng(2)
    t = CodedTensor(torch.from_numpy(rng.integers(-20, 20, (64, 9)).astype(np.int32)), -28)
    assert encode({"w": t}, scan_order=3) == encode({"w": t}, scan_order=3)


def test_all_zero_tensor_with_few_bytes_decodes():
    # the header-vs-payload size bound must admit the most compressible real tensors
    for shape in [(200_000,), (3000, 64)]:
        z = torch.zeros(shape, dtype=torch.int32)
        data = encode({"z": CodedTensor(z, -30)})
        assert torch.equal(decode_levels(data)["z"].levels, z)


def _mixed_tensors() -> dict:
    rs = np.random.RandomState(11)
    dense = torch.from_numpy(rs.laplace(0, 0.05, (64, 3, 3, 3)).astype(np.float32))
    return {
        "conv": quantize_tensor(dense, -30),
        "conv_dq": quantize_tensor(dense, -28, dq=True),
        "fc": CodedTensor(torch.from_numpy(rs.randint(-3, 4, (40, 70)).astype(np.int32)), -20, 3),
        "cb": CodedTensor(torch.tensor([[-4, 0, 0, 9], [9, 9, 0, -4]], dtype=torch.int32), -16,
                          codebook=torch.tensor([-4, 0, 9], dtype=torch.int32)),
        "steps": torch.arange(-5, 300, dtype=torch.int32),  # PT_INT
        "bias": quantize_tensor(torch.linspace(-1, 1, 17), -60),
    }


def test_parallel_workers_give_the_same_bytes_and_values():
    tensors = _mixed_tensors()
    serial = encode(tensors)
    assert encode(tensors, workers=3) == serial
    assert encode(tensors, workers=64) == serial
    reference = decode(serial)
    for workers in (2, 5):
        values = decode(serial, workers=workers)
        assert list(values) == list(tensors)  # stream order kept
        for name in tensors:
            assert torch.equal(values[name], reference[name])
        levels = decode_levels(serial, workers=workers)
        assert list(levels) == list(tensors)
        assert torch.equal(levels["fc"].levels, tensors["fc"].levels)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4", None])
def test_workers_must_be_a_positive_int(bad):
    tensors = {"a": torch.arange(6, dtype=torch.int32)}
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        encode(tensors, workers=bad)
    data = encode(tensors)
    for fn in (decode, decode_levels):
        with pytest.raises(ValueError, match="workers must be an int >= 1"):
            fn(data, workers=bad)


def test_parallel_decode_of_a_corrupt_tensor_raises_bitstream_error():
    from ecqx.coding import BitstreamError

    tensors = _mixed_tensors()
    data = bytearray(encode(tensors))
    data[-3] ^= 0xFF  # inside the last NDU's CABAC payload
    with pytest.raises(BitstreamError):
        decode(bytes(data), workers=4)
