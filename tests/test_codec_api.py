"""Public codec API: HLS fields, inspect table, clear errors for bad input, loader errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from golden_vectors import GOLDEN

from ecqx.coding import (
    BitstreamError,
    CodedTensor,
    NativeBuildError,
    decode,
    decode_levels,
    encode,
    format_table,
    inspect_stream,
    load_native,
    quantize_tensor,
    snap_step,
    step_size,
)
from ecqx.coding import native as native_mod
from ecqx.coding.hls import PayloadType, parse_stream


def _w():
    return CodedTensor(torch.tensor([[1, 0, 0, -2], [0, 0, 0, 0], [3, -1, 0, 14]], dtype=torch.int32), -16)


def test_hls_fields_of_nncodec_default_stream():
    v2 = next(v for v in GOLDEN if v.name == "V2")
    s = parse_stream(v2.data)
    assert (s.profile, s.qp_density, s.qp_base, s.topology_data) == (1, 2, 0, "")
    h = s.ndus[0].header
    assert (h.name, h.payload_type, h.dims, h.dq) == ("w", PayloadType.NNR_PT_FLOAT, (3, 4), False)
    assert (h.cabac_unary_length_minus1, h.scan_order, h.entry_points, h.codebook) == (10, 0, [], None)
    assert (h.node_id_present, h.device_id, h.parameter_id, h.put_node_depth) == (True, 0, 0, 0)
    assert s.ndus[0].unit_bytes == 0x18


def test_hls_fields_written():
    t = {"a": torch.tensor([1, 2]), "b": CodedTensor(torch.zeros(9, 9, dtype=torch.int32), -8, dq=True)}
    s = parse_stream(encode(t, scan_order=1, cabac_unary_length_minus1=3))
    a, b = (n.header for n in s.ndus)
    assert a.payload_type == PayloadType.NNR_PT_INT and a.parameter_id == 0 and a.dims == (2,)
    assert b.payload_type == PayloadType.NNR_PT_FLOAT and b.parameter_id == 1 and b.dq
    assert (b.scan_order, b.cabac_unary_length_minus1, len(b.entry_points)) == (1, 3, 1)


def test_scan_order_zero_written_for_degenerate_shapes():
    ones = torch.ones(40, dtype=torch.int32)
    s = parse_stream(encode({"r": ones.reshape(1, 40), "c": ones.reshape(40, 1)}, scan_order=2))
    assert [n.header.scan_order for n in s.ndus] == [0, 0]


def test_inspect_rows_and_table():
    data = encode({"w": _w(), "i": torch.tensor([5, 0, 0, 1])})
    rows = inspect_stream(data)
    assert [r["name"] for r in rows] == ["w", "i"]
    w = rows[0]
    assert (w["shape"], w["dtype"], w["payload_type"], w["qp"], w["qp_density"], w["step"], w["dq"]) == (
        (3, 4), "float32", "NNR_PT_FLOAT", -16, 2, 0.0625, False)
    assert w["bits_per_value"] == pytest.approx(8 * w["unit_bytes"] / 12)
    assert rows[1]["qp"] is None and rows[1]["dtype"] == "int32"
    assert w["zero_fraction"] is None and rows[1]["zero_fraction"] is None  # header-only by default
    table = format_table(rows)
    assert "NNR_PT_FLOAT" in table and "total" in table and "0.0625" in table
    header = table.splitlines()[0]
    assert "bits/value" in header and "unit bytes" in header and "qp*" in header and "zeros" not in header
    assert "step = (2^d + qp mod 2^d) * 2^(floor(qp / 2^d) - d)" in table and "(d = 2)" in table
    assert "values=True" in table
    full = inspect_stream(data, values=True)
    assert full[0]["zero_fraction"] == pytest.approx(7 / 12) and full[1]["zero_fraction"] == 0.5
    assert [{k: v for k, v in r.items() if k != "zero_fraction"} for r in full] == \
        [{k: v for k, v in r.items() if k != "zero_fraction"} for r in rows]
    assert "zeros" in format_table(full).splitlines()[0]


def test_snap_step():
    assert snap_step(0.0625) == (-16, 0.0625)
    qp, step = snap_step(0.07)
    assert step == step_size(qp) and abs(step - 0.07) <= abs(step_size(qp + 1) - 0.07)
    assert snap_step(0.0625, qp_density=0) == (-4, 0.0625)


def test_coded_tensor_value_is_float32_product():
    t = _w()
    assert t.step == 0.0625
    assert torch.equal(t.dequantize(), t.levels.float() * 0.0625)


def test_numpy_and_int64_inputs_are_accepted():
    n = np.array([[1, -2], [3, 4]], dtype=np.int16)
    out = decode(encode({"n": n, "t": torch.tensor([7], dtype=torch.int64)}))
    assert out["n"].tolist() == [[1, -2], [3, 4]] and out["t"].tolist() == [7]


def test_non_contiguous_and_non_int32_are_copied():
    base = torch.arange(24, dtype=torch.int64).reshape(4, 6)
    t = base.t()
    assert torch.equal(decode(encode({"t": t}))["t"], t.to(torch.int32))


@pytest.mark.parametrize("bad,match", [
    ({"w": torch.ones(3)}, "float tensor without levels"),
    ({"w": CodedTensor(torch.ones(3), -8)}, "integer dtype"),
    ({"w": torch.tensor([2**31], dtype=torch.int64)}, "exceed the codable range"),
    ({"w": torch.tensor([-2**31], dtype=torch.int32)}, "-2147483648"),
    ({"w": torch.zeros(0, dtype=torch.int32)}, "empty"),
    ({"w": CodedTensor(torch.ones(3, dtype=torch.int32), -8, qp_density=9)}, "qp_density"),
    ({"w": CodedTensor(torch.ones(3, dtype=torch.int32), 1.5)}, "qp must be an int"),
    ({"w": CodedTensor(torch.ones(3, dtype=torch.int32), -8, codebook=torch.tensor([2, 1]))}, "increasing"),
    ({"w": CodedTensor(torch.ones(3, dtype=torch.int32), -8, codebook=torch.tensor([0, 2]))}, "not an entry"),
    ({"w": CodedTensor(torch.ones(3, dtype=torch.int32), -8, codebook=torch.tensor([1]), dq=True)}, "dq"),
    ({"w": "text"}, "expected a quantized tensor description"),
    ({3: torch.ones(2, dtype=torch.int32)}, "names must be str"),
    ({}, "empty"),
])
def test_encode_rejects_bad_input(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        encode(bad)


@pytest.mark.parametrize("option,value,match", [
    ("profile", 2, "profile"), ("scan_order", 5, "scan_order"), ("cabac_unary_length_minus1", 256, "unary"),
])
def test_encode_rejects_bad_options(option, value, match):
    with pytest.raises(ValueError, match=match):
        encode({"w": _w()}, **{option: value})


def test_encode_rejects_qp_out_of_step_range():
    with pytest.raises(ValueError, match="step size"):
        encode({"w": CodedTensor(torch.ones(3, dtype=torch.int32), 4000)})


def test_quantize_tensor_rejects_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        quantize_tensor(torch.ones(3, dtype=torch.int32), -8)
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_tensor(torch.tensor([1.0, float("nan")]), -8)
    with pytest.raises(ValueError, match="scan_order"):
        quantize_tensor(torch.ones(3), -8, scan_order=7)


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"\x00", "truncated"),
    (b"\x00\x04\x02\x05", "general_profile_idc"),
    (b"\x00\x08\x06\x81\x00\x40\x00\x80", "start unit"),
    (b"\x00\x04\x02\x01\x00\x04\x02\x01", "second NNR start unit"),
    (b"\x00\x04\x02\x01\x00\x03\x12", "NDU|truncated|model parameter set"),
    (b"\x00\x04\x02\x01\x7f\xff\x00", "truncated"),
    (b"\x00\x04\x02\x01\x00\x03\x1a", "nnr_unit_type"),
])
def test_decode_rejects_malformed_streams(data, match):
    with pytest.raises(BitstreamError, match=match):
        decode(data)


def test_bitstream_error_is_value_error():
    assert issubclass(BitstreamError, ValueError)
    with pytest.raises(ValueError):
        decode(b"garbage!")


def test_decode_rejects_oversized_dimensions():
    data = bytearray(encode({"w": torch.arange(12, dtype=torch.int32).reshape(3, 4)}, profile=0))
    s = parse_stream(bytes(data))
    assert s.ndus[0].header.dims == (3, 4)
    # rewrite the NDU with a huge first dimension but the same tiny payload
    from ecqx.coding.hls import NduHeader, write_ndu

    h = s.ndus[0].header
    huge = NduHeader(name=h.name, payload_type=h.payload_type, dims=(10**9, 4))
    prefix = data[: len(data) - s.ndus[0].unit_bytes]
    forged = bytes(prefix) + write_ndu(huge, 0, s.ndus[0].payload)
    with pytest.raises(BitstreamError, match="decoder limit|cannot be described"):
        decode(forged)
    with pytest.raises(BitstreamError, match="decoder limit"):
        decode_levels(encode({"w": torch.zeros(64, 64, dtype=torch.int32)}), max_elements=1000)


def test_missing_compiler_is_actionable(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-ecqx")
    with pytest.raises(NativeBuildError, match="no C\\+\\+ compiler found.*CXX"):
        native_mod._check_compiler()


def test_stale_lock_is_actionable(monkeypatch, tmp_path):
    monkeypatch.setattr(native_mod, "_torch_uses_lock_file", lambda: True)
    (tmp_path / "lock").write_text("")
    with pytest.raises(NativeBuildError, match=f"stale build lock {tmp_path / 'lock'}.*delete that file"):
        with native_mod._build_guard(tmp_path):
            pass
    (tmp_path / "lock").unlink()
    with native_mod._build_guard(tmp_path):
        pass


def test_build_directory_honours_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert native_mod.build_directory().parent == tmp_path
    assert native_mod.build_directory().name.startswith(native_mod.EXTENSION_NAME)


def test_cli_inspect_and_decode(tmp_path, capsys):
    from ecqx.coding.__main__ import main
    from ecqx.coding.model import encode_state_dict

    sd = {"w": torch.tensor([[0.25, -0.5], [0.0, 1.0]]), "n": torch.tensor(3)}
    path = tmp_path / "m.nnc"
    path.write_bytes(encode_state_dict(sd, quantized={"w": quantize_tensor(sd["w"], -8)}))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "w" in out and "NNR_PT_FLOAT" in out and "NNR_PT_INT" in out
    assert main(["decode", str(path), "-o", str(tmp_path / "m.pt")]) == 0
    loaded = torch.load(tmp_path / "m.pt")
    assert torch.equal(loaded["w"], sd["w"]) and loaded["n"].dtype == torch.int64 and int(loaded["n"]) == 3
    (tmp_path / "bad.nnc").write_bytes(b"\x00\x04\x02")
    assert main(["inspect", str(tmp_path / "bad.nnc")]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["decode", str(path), "-o", str(tmp_path / "m2.pt"), "--workers", "0"]) == 1
    assert "workers must be an int >= 1" in capsys.readouterr().err


def _hand_stream(units):
    from ecqx.coding import hls

    return hls.write_start_unit(1) + hls.write_mps(1, 2, 0, topology_carriage=False) + b"".join(units)


def test_raw_float_ndu_is_decoded():
    import struct

    from ecqx.coding.hls import NduHeader, write_ndu

    values = [1.5, -2.25, 3.0e-8]
    h = NduHeader(name="raw", payload_type=PayloadType.NNR_PT_RAW_FLOAT, dims=(3,))
    out = decode(_hand_stream([write_ndu(h, 1, struct.pack("<3f", *values))]))["raw"]
    assert out.dtype == torch.float32 and out.tolist() == [float(np.float32(v)) for v in values]


def test_layer_parameter_set_overrides_qp_density_and_base():
    from ecqx.coding.bits import BitWriter
    from ecqx.coding.hls import NduHeader, _unit, write_ndu

    # LPS (unit type 2) with qp_density 3 and quantization_parameter -40, written field by field (§2.6)
    w = BitWriter()
    w.u(6, 2), w.u(1, 1), w.u(1, 0)          # common header
    w.u(1, 1), w.u(7, 0)                      # lps_self_contained_flag, reserved
    w.u(1, 0), w.u(1, 0), w.u(1, 0), w.u(1, 0)  # reserved, sparsification, pruning, unification
    w.u(3, 1), w.u(1, 0)                      # quantization method QSU, reserved
    w.u(3, 3), w.i(13, -40)
    w.align()
    lps = _unit(w.tobytes())
    levels = torch.tensor([3, 0, -1, 7], dtype=torch.int32)
    payload, _ = load_native().encode_payload(levels, 1, 4, 0, False, 11, 1, 0, 0, True, 9, True, False, -5)
    h = NduHeader(name="t", payload_type=PayloadType.NNR_PT_FLOAT, dims=(4,))
    d = decode_levels(_hand_stream([lps, write_ndu(h, 1, payload)]))["t"]
    assert (d.qp, d.qp_density) == (-45, 3)
    assert torch.equal(d.levels, levels)
    assert torch.equal(d.dequantize(), levels.float() * step_size(-45, 3))


@pytest.mark.parametrize("dq", [False, True])
def test_decode_values_are_float32_levels_times_float32_step(dq):
    # decode() scales the levels natively in the output buffer; the reference is numpy's float32 arithmetic on
    # the integer levels, including levels beyond 2^24 where the int -> float32 conversion itself rounds
    rs = np.random.RandomState(5)
    levels = rs.randint(-(2**30), 2**30, size=(7, 33)).astype(np.int32)
    levels[rs.rand(7, 33) < 0.4] = 0
    levels[2] = 0  # a skipped row
    if dq:  # a DQ stream carries only reconstruction indices the 8-state machine allows: make them so
        levels = quantize_tensor(torch.from_numpy(levels).float() * step_size(-37, 3), -37, 3, dq=True).levels
        levels = levels.numpy()
    data = encode({"w": CodedTensor(torch.from_numpy(levels), qp=-37, qp_density=3, dq=dq)})
    assert np.array_equal(decode_levels(data)["w"].levels.numpy(), levels)
    decoded = decode(data)["w"]
    expected = levels.astype(np.float32) * np.float32(step_size(-37, 3))
    assert decoded.dtype == torch.float32 and decoded.shape == (7, 33)
    assert np.array_equal(decoded.numpy(), expected)
    assert np.abs(levels).max() > 2**24


def _mixed_qp_stream(qp_density, rs):
    """Tensors whose qps reach both ends of the (6 + qp_density)-bit delta window, plus DQ, a codebook and an
    integer tensor."""
    half = 1 << (5 + qp_density)
    tensors = {}
    for i, qp in enumerate((-half, half - 1, int(rs.randint(-half, half)), int(rs.randint(-half, half)))):
        levels = torch.from_numpy(rs.randint(-50, 50, size=(5, 7)).astype(np.int32))
        tensors[f"t{i}"] = CodedTensor(levels, qp, qp_density, dq=i == 2)
    codebook = torch.tensor([-7, 0, 9], dtype=torch.int32)
    indices = torch.from_numpy(rs.randint(0, 3, size=(6, 4)))
    tensors["cb"] = CodedTensor(codebook[indices], int(rs.randint(-half, 0)), qp_density, codebook=codebook)
    tensors["int"] = torch.tensor([3, -1, 0], dtype=torch.int32)
    return tensors


@pytest.mark.parametrize("qp_density", range(8))
@pytest.mark.parametrize("profile", [0, 1])
def test_inspect_qp_from_the_payload_start_matches_the_decoder(qp_density, profile):
    rs = np.random.RandomState(qp_density * 2 + profile)
    data = encode(_mixed_qp_stream(qp_density, rs), profile=profile, scan_order=1)
    decoded = decode_levels(data)
    rows = inspect_stream(data)
    assert [r["name"] for r in rows] == list(decoded)
    for row in rows:
        t = decoded[row["name"]]
        assert (row["qp"], row["qp_density"], row["step"]) == (t.qp, t.qp_density, t.step), row["name"]
        assert row["codebook_size"] == (None if t.codebook is None else 3)
    assert {r["qp"] for r in rows[:2]} == {-(1 << (5 + qp_density)), (1 << (5 + qp_density)) - 1}


def test_inspect_reads_headers_only(monkeypatch):
    import ecqx.coding.decoder as decoder

    data = encode({"w": _w(), "i": torch.tensor([5, 0, 0, 1])})
    expected = inspect_stream(data)

    def no_decoding():
        raise AssertionError("inspect_stream decoded a payload")

    monkeypatch.setattr(decoder, "load_native", no_decoding)
    assert inspect_stream(data) == expected
    with pytest.raises(AssertionError, match="decoded a payload"):
        inspect_stream(data, values=True)


def _zero_tensors(count, shape):
    return {f"z{i}": torch.zeros(shape, dtype=torch.int32) for i in range(count)}


def test_max_elements_bounds_the_whole_stream_before_decoding(monkeypatch):
    import ecqx.coding.decoder as decoder
    from ecqx.coding import decode_state_dict

    data = encode(_zero_tensors(4, (4, 2**18)))  # 4 tensors of 2^20 zeros, each below the limit
    limit = 2**21
    readers = [lambda **kw: decode(data, **kw), lambda **kw: decode_levels(data, **kw),
               lambda **kw: decode_state_dict(data, **kw),
               lambda **kw: inspect_stream(data, values=True, **kw)]
    native = decoder.load_native

    def no_decoding():
        raise AssertionError("a payload was decoded before the element budget was checked")

    monkeypatch.setattr(decoder, "load_native", no_decoding)
    for read in readers:
        with pytest.raises(BitstreamError, match=r"4194304 tensor elements in 4 tensors .*"
                                                 r"max_elements=2097152.*raise it with max_elements="):
            read(max_elements=limit)
    assert len(inspect_stream(data, max_elements=limit)) == 4  # header-only inspection allocates nothing
    monkeypatch.setattr(decoder, "load_native", native)
    for read in readers:
        assert len(read(max_elements=2**22)) == 4  # the limit is inclusive


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "many", None])
def test_max_elements_must_be_a_positive_int(bad):
    data = encode({"i": torch.tensor([1, 2])})
    for read in (decode, decode_levels, inspect_stream):
        with pytest.raises(ValueError, match="max_elements must be an int >= 1"):
            read(data, max_elements=bad)


def test_allow_partial_must_be_a_bool():
    with pytest.raises(TypeError, match="allow_partial must be a bool"):
        decode(encode({"i": torch.tensor([1, 2])}), allow_partial="yes")
