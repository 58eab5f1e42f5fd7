"""Hostile input: truncated, bit-flipped, random and forged streams raise BitstreamError (a ValueError), never
crash or hang. A small seeded corpus here; the large mutation corpus and sanitizer builds live elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecqx.coding import BitstreamError, CodedTensor, decode_levels, encode, load_native, quantize_tensor


def _stream(scan_order=2, dq=True):
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.integers(-40, 40, (40, 30)).astype(np.int32))
    w[3:7] = 0
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


# ------------------------------------------------------------------------------------- stream as a whole
def _unit_ends(data):
    """Offsets where an NNR unit ends, with the type of that unit."""
    ends, pos = {}, 0
    while pos < len(data):
        field = 4 if data[pos] & 0x80 else 2
        size = int.from_bytes(data[pos:pos + field], "big") & 0x7FFFFFFF
        ends[pos + size] = data[pos + field] >> 2
        pos += size
    return ends


def _model_stream():
    from ecqx.coding import encode_state_dict

    sd = {"conv.weight": torch.linspace(-1, 1, 2 * 3 * 3 * 3).reshape(2, 3, 3, 3),
          "conv.bias": torch.tensor([0.5, -0.25]),
          "bn.num_batches_tracked": torch.tensor(7),
          "fc.weight": torch.linspace(-2, 2, 60).reshape(6, 10)}
    return sd, encode_state_dict(sd, quantized={"fc.weight": quantize_tensor(sd["fc.weight"], -20)})


def _readers():
    from ecqx.coding import decode, decode_state_dict, inspect_stream

    return {"decode": decode, "decode_levels": decode_levels, "decode_state_dict": decode_state_dict,
            "inspect_stream": inspect_stream}


def test_stream_cut_at_a_tensor_boundary_is_incomplete():
    from ecqx.coding import decode, inspect_stream

    sd, data = _model_stream()
    names = list(sd)
    ndu_ends = sorted(end for end, unit_type in _unit_ends(data).items() if unit_type == 5)
    assert len(ndu_ends) == 4 and ndu_ends[-1] == len(data)
    for kept, cut in enumerate(ndu_ends[:-1], start=1):
        missing = names[kept:]
        for reader_name, read in _readers().items():
            with pytest.raises(BitstreamError, match="incomplete bitstream") as info:
                read(data[:cut])
            message = str(info.value)
            assert f"{len(missing)} of the 4 tensors" in message, reader_name
            assert f"ends after {names[kept - 1]!r}; its last tensor is {names[-1]!r}" in message, message
        # asked for explicitly, the tensors present come back
        assert list(decode(data[:cut], allow_partial=True)) == names[:kept]
        assert list(decode_levels(data[:cut], allow_partial=True)) == names[:kept]
        assert [r["name"] for r in inspect_stream(data[:cut], allow_partial=True)] == names[:kept]


def _with_topology(data, text):
    """The stream with its topology unit replaced by one carrying `text`."""
    from ecqx.coding import hls

    pos = 0
    while pos < len(data):
        field = 4 if data[pos] & 0x80 else 2
        size = int.from_bytes(data[pos:pos + field], "big") & 0x7FFFFFFF
        if data[pos + field] >> 2 == 3:
            return data[:pos] + hls.write_tpl(text) + data[pos + size:]
        pos += size
    raise AssertionError("stream has no topology unit")


def _legacy_text(meta):
    import json

    return json.dumps({"ecqx-state-dict": meta}, separators=(",", ":"))


def test_streams_of_the_previous_version_decode_and_cuts_before_named_tensors_are_caught():
    """Streams written before the name list (dtype and scalar only) still decode; a cut that drops a tensor
    the old metadata names is caught, one that drops only unnamed tensors cannot be told from a whole
    stream."""
    from ecqx.coding import decode_state_dict

    sd, data = _model_stream()
    legacy = _with_topology(data, _legacy_text({"dtype": {"bn.num_batches_tracked": "int64"},
                                                "scalar": ["bn.num_batches_tracked"]}))
    out = decode_state_dict(legacy)
    assert list(out) == list(sd)
    assert out["bn.num_batches_tracked"].dtype == torch.int64 and out["bn.num_batches_tracked"].dim() == 0
    ndu_ends = sorted(end for end, unit_type in _unit_ends(legacy).items() if unit_type == 5)
    with pytest.raises(BitstreamError, match="'bn.num_batches_tracked'"):
        decode_state_dict(legacy[:ndu_ends[1]])
    assert list(decode_state_dict(legacy[:ndu_ends[2]])) == list(sd)[:3]


FORGED = [
    ("[" * 100000 + "]" * 100000 + '"ecqx-state-dict"', "nests deeper"),
    ('{"ecqx-state-dict":' + "[" * 5000 + "]" * 5000 + "}", "nests deeper"),
    ('{"ecqx-state-dict": {"dtype": {"conv.bias": "float32"}', "nests deeper|unmatched"),
    ('{"ecqx-state-dict": {"dtype": {"conv.bias": "float32"}}} trailing', "not valid JSON"),
    ('{"ecqx-state-dict": [1, 2]}', "'ecqx-state-dict'"),
    ('["ecqx-state-dict"]', "'ecqx-state-dict'"),
    (_legacy_text({"dtype": ["conv.bias"]}), "'dtype'.*must be an object"),
    (_legacy_text({"dtype": {"conv.bias": 3}}), "'dtype'.*unknown dtype 3"),
    (_legacy_text({"dtype": {"conv.bias": "complex64"}}), "'dtype'.*unknown dtype 'complex64'"),
    (_legacy_text({"dtype": {"fc.weight": "int8"}}), "'dtype'.*'fc.weight' dtype 'int8'.*NNR_PT_FLOAT"),
    (_legacy_text({"dtype": {"conv.bias": "int64"}}), "'dtype'.*'conv.bias' dtype 'int64'.*float values"),
    (_legacy_text({"dtype": {"bn.num_batches_tracked": "float16"}}), "'dtype'.*NNR_PT_INT"),
    (_legacy_text({"scalar": 5}), "'scalar'.*list of tensor names"),
    (_legacy_text({"scalar": [None]}), "'scalar'.*list of tensor names"),
    (_legacy_text({"scalar": ["conv.weight"]}), "'scalar'.*'conv.weight'.*54 elements"),
    (_legacy_text({"scalar": ["conv.bias", "conv.bias"]}), "'scalar'.*more than once"),
    (_legacy_text({"names": "conv.weight"}), "'names'.*list of tensor names"),
    (_legacy_text({"names": ["conv.weight", "conv.bias", "fc.weight"]}), "'names'.*'bn.num_batches_tracked'"),
    (_legacy_text({"names": ["conv.weight", "conv.bias", "bn.num_batches_tracked", "fc.weight"],
                   "dtype": {"fc.bias": "float16"}}), "'dtype'.*not in its 'names' list.*'fc.bias'"),
    (_legacy_text({"names": ["conv.weight", "conv.bias", "bn.num_batches_tracked", "fc.weight",
                             "fc.weight"]}), "'names'.*more than once"),
    (_legacy_text({"names": ["conv.weight", "conv.bias", "bn.num_batches_tracked", "fc.weight"],
                   "empty": [{"name": "conv.bias", "index": 1, "shape": [0], "dtype": "float32"}]}),
     "'empty'.*'conv.bias'"),
    (_legacy_text({"empty": [{"name": "e", "index": -1, "shape": [0], "dtype": "float32"}]}), "'empty'"),
    (_legacy_text({"empty": [{"name": "e", "index": 0, "shape": [3], "dtype": "float32"}]}), "'empty'"),
]


@pytest.mark.parametrize("text,match", FORGED)
def test_forged_metadata_is_a_bitstream_error_naming_the_field(text, match):
    _, data = _model_stream()
    forged = _with_topology(data, text)
    for reader_name, read in _readers().items():
        with pytest.raises(BitstreamError, match=match) as info:
            read(forged)
        assert "topology unit" in str(info.value), reader_name


@pytest.mark.parametrize("dtype,value", [("int8", 1000), ("int8", -129), ("uint8", -1), ("bool", 2),
                                         ("int16", 40000)])
def test_integer_dtype_must_hold_the_decoded_values(dtype, value):
    from ecqx.coding import decode_state_dict, encode_state_dict

    data = encode_state_dict({"i": torch.tensor([0, value], dtype=torch.int32)})
    forged = _with_topology(data, _legacy_text({"dtype": {"i": dtype}}))
    with pytest.raises(BitstreamError, match=f"'dtype'.*'i' dtype '{dtype}'.*decoded values span"):
        decode_state_dict(forged)


@pytest.mark.parametrize("text", ["", "free text of another producer", "[" * 100000,
                                  '{"other-tool": {"dtype": 5}}'])
def test_topology_text_of_other_producers_is_ignored(text):
    from ecqx.coding import decode_state_dict

    w = torch.tensor([[1, 0], [3, -4]], dtype=torch.int32)
    data = _with_topology(encode({"w": CodedTensor(w, -8), "i": torch.tensor([2, 3])}), text)
    out = decode_state_dict(data)
    assert torch.equal(out["w"], w.float() * 0.25)
    assert torch.equal(out["i"], torch.tensor([2, 3], dtype=torch.int32))


def test_astronomical_dimensions_are_a_bitstream_error():
    from mutation_corpus import PREFIX, ndu_header, unit

    from ecqx.coding import decode, format_table, inspect_stream

    data = PREFIX + unit(ndu_header(b"w", [2**39] * 32) + bytes(16))  # 2^1248 elements: beyond any float
    for read in (decode, lambda d: inspect_stream(d, values=True)):
        with pytest.raises(BitstreamError, match=r"max_elements=.*about 2\^1250 bytes"):
            read(data)
    with pytest.raises(BitstreamError, match="cannot be described"):
        inspect_stream(data)
    # all rows skipped: the payload bounds the rows, not the width; the headers alone can still be shown
    skipped = PREFIX + unit(ndu_header(b"w", [4] + [2**39] * 31, payload_type=0) + bytes(16))
    with pytest.raises(BitstreamError, match="max_elements"):
        decode(skipped)
    (row,) = inspect_stream(skipped)
    assert row["shape"] == (4,) + (2**39,) * 31 and row["bits_per_value"] == 0.0
    assert f"{4 * 2**(39 * 31)} values" in format_table([row])


def test_metadata_count_and_last_must_agree_with_the_stream():
    import json

    from ecqx.coding import decode_state_dict

    sd, data = _model_stream()
    names = list(sd)
    for forged, pattern in (
        ({"count": 3, "last": names[-1]}, "'count'.*declares 3 tensors but the stream codes 4"),
        ({"count": 4, "last": "other"}, "'last'.*names 'other'"),
        ({"count": 0}, "'count'.*int >= 1"),
        ({"last": names[-1]}, "'last'.*given with 'count'"),
    ):
        stream = _with_topology(data, json.dumps({"ecqx-state-dict": forged}))
        with pytest.raises(BitstreamError, match=pattern):
            decode_state_dict(stream)


def test_metadata_holds_a_count_not_a_second_list_of_names():
    import json

    from ecqx.coding import hls

    sd, data = _model_stream()
    text = hls.parse_stream(data).topology_data
    meta = json.loads(text)["ecqx-state-dict"]
    assert meta["count"] == 4 and meta["last"] == list(sd)[-1] and "names" not in meta
