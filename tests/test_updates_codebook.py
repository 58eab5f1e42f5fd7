"""Codebook tensors in difference updates (NNCodec's ``codebook_mode=1``) against NNCodec 2.1.3.

* NNCodec → ours: an UpdateDecoder reads NNCodec's codebook update streams, round after round, to NNCodec's
  own decoding (float64 there, exact in float32), and ends each round with NNCodec's decoder state (the TCA
  base: the coded integers, codebook index minus zero offset, not the codebook values).
* ours → NNCodec: ``UpdateEncoder(codebook_mode=1)`` writes NNCodec's bytes from the same float updates (its
  quantization, codebook and zero-offset choice), and NNCodec's decoder reads them; codebook descriptions
  (levels + qp + codebook taken from NNCodec's decoding) give the same bytes.
* divergence: a tensor whose update is one nonzero value everywhere (one-entry codebook) is dropped by
  NNCodec's encoder; ours codes it and NNCodec's decoder reads it.
* forged codebook headers in updates raise BitstreamError naming the tensor and the field.

The oracle is tests/nncodec_update_oracle.py with ``codebook_mode=1``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nncodec_update_oracle import NNCodecUpdates, correlated_updates

import ecqx.coding as coding
from ecqx.coding import BitstreamError, UpdateDecoder, UpdateEncoder, hls

pytestmark = pytest.mark.interop

ROUNDS = 4
QPS = dict(qp=-36, nonweight_qp=-40)
# (tca, hdsp, row_skipping, use_dq, scan_order); with codebooks NNCodec turns DQ into a qp 4 lower, no DQ
SETTINGS = [
    (False, False, False, False, 0),
    (True, False, False, False, 0),
    (True, False, True, True, 0),
    (False, True, True, False, 0),
    (True, True, True, True, 1),
    (True, True, False, False, 2),
    (True, False, True, False, 3),
]


def _options(tca, hdsp, row_skipping, use_dq, scan_order) -> dict:
    return dict(QPS, tca=tca, hdsp=hdsp, row_skipping=row_skipping, use_dq=use_dq, scan_order=scan_order)


def _oracle(**options) -> NNCodecUpdates:
    ref = NNCodecUpdates(**options)
    ref.options["codebook_mode"] = 1
    return ref


def _torch(update: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.copy()) for k, v in update.items()}


def _assert_values(ours: dict[str, torch.Tensor], theirs: dict[str, np.ndarray]) -> None:
    """NNCodec reconstructs codebook tensors in float64 (codebook · Δ); ours are float32 and equal."""
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        assert ours[name].dtype == torch.float32
        np.testing.assert_array_equal(ours[name].numpy().astype(np.float64), value, err_msg=name)


def _coded(t) -> np.ndarray:
    """Codebook values back to the coded integers: index into the codebook minus the zero offset."""
    return np.searchsorted(t.codebook.numpy(), t.levels.numpy()) - t.codebook_zero_offset


@pytest.mark.parametrize("correlated", [True, False], ids=["correlated", "independent"])
@pytest.mark.parametrize("setting", SETTINGS,
                         ids=lambda s: "tca{}-hdsp{}-rs{}-dq{}-scan{}".format(*map(int, s)))
def test_codebook_update_sequence_matches_nncodec(setting, correlated):
    """ROUNDS rounds, round 2 with an all-zero bias (no data unit): identical bytes, both decoders agree."""
    tca = setting[0]
    options = _options(*setting)
    ref, ref_ours = _oracle(**options), _oracle(**options)
    encoder = UpdateEncoder(**options, codebook_mode=1)
    decoder_theirs, decoder_ours = UpdateDecoder(), UpdateDecoder()
    updates = correlated_updates(ROUNDS, seed=5, correlated=correlated, zero_tensor_round=2,
                                 zero_rows=setting[2])
    for r, update in enumerate(updates):
        theirs = ref.encode(update)
        ours = encoder.encode(_torch(update))
        assert ours == theirs, f"round {r}: {len(ours)} bytes vs NNCodec's {len(theirs)}"
        headers = [n.header for n in hls.parse_stream(theirs, allow_updates=True).ndus]
        assert all(h.codebook is not None and not h.dq for h in headers)  # NNCodec really coded codebooks
        levels = decoder_theirs.decode_levels(theirs)
        _assert_values({k: t.values() for k, t in levels.items()}, ref.decode(theirs))
        _assert_values(decoder_ours.decode(ours), ref_ours.decode(ours))
        for name, t in levels.items():
            # NNCodec's encoder keeps the coded integers as TCA base; so does its decoder, and so do we
            np.testing.assert_array_equal(_coded(t), ref.encoder_levels()[name])
            np.testing.assert_array_equal(decoder_theirs.state_dict()["tensors"][name]["base"].numpy(),
                                          ref.dec_state["parameters"][name])
            assert t.tca == (tca and t.put_node_depth > 1)
            assert t.put_node_depth == ref.enc_state["put_node_depth"][name]
        assert ("fc.bias" in levels) == (r != 2)


def test_codebook_descriptions_give_nncodec_bytes():
    """Quantized descriptions with a codebook (NNCodec's decoded levels, qp and codebook) code to NNCodec's
    bytes: the explicit-codebook input takes the zero offset NNCodec's search takes."""
    options = _options(True, True, True, False, 0)
    ref, encoder = _oracle(**options), UpdateEncoder(**options)  # codebook_mode 0: the descriptions decide
    decoder = UpdateDecoder()
    for update in correlated_updates(3, seed=8, zero_rows=True):
        theirs = ref.encode(update)
        decoded = decoder.decode_levels(theirs)
        described = {name: coding.CodedTensor(t.levels, t.qp, t.qp_density, codebook=t.codebook)
                     for name, t in decoded.items()}
        assert list(described) == list(update)
        assert encoder.encode(described) == theirs


def test_use_dq_with_codebooks_is_a_finer_qp():
    """With use_dq NNCodec codes codebooks without DQ at qp - (1 << qp_density); so do we."""
    update = correlated_updates(1, seed=4)[0]
    for use_dq, shift in ((False, 0), (True, 4)):
        options = _options(False, False, False, use_dq, 0)
        data = UpdateEncoder(**options, codebook_mode=1).encode(_torch(update))
        assert data == _oracle(**options).encode(update)
        qps = {name: t.qp for name, t in UpdateDecoder().decode_levels(data).items()}
        assert qps == {"fc.weight": -36 - shift, "fc.bias": -40 - shift, "conv.weight": -36 - shift}


def test_constant_tensor_updates_are_kept():
    """A one-element or constant update has a one-entry codebook and all coded integers 0. NNCodec's encoder
    then writes no data unit (its decoder never sees the value); ours writes it, and NNCodec decodes it, also
    with TCA and HDSP in later rounds. Everything else stays NNCodec's bytes."""
    options = _options(True, True, True, False, 0)
    ref, ref_ours = _oracle(**options), _oracle(**options)
    encoder, decoder = UpdateEncoder(**options, codebook_mode=1), UpdateDecoder()
    rs = np.random.RandomState(0)
    for r in range(3):
        update = {"w": (rs.randn(8, 4) * 0.05).astype(np.float32),
                  "scale": np.full((1,), 0.03 * (r + 1), np.float32), "c": np.full((3, 4), 0.02, np.float32)}
        assert list(ref.decode(ref.encode(update))) == ["w"]  # NNCodec drops the constant tensors
        ours = encoder.encode(_torch(update))
        expected = ref_ours.decode(ours)
        assert list(expected) == ["w", "scale", "c"]
        for name in ("scale", "c"):  # uniform rounding: within half a step (qp -36: 2^-9)
            assert np.abs(expected[name] - update[name]).max() <= 2.0**-10
        _assert_values(decoder.decode(ours), expected)


def test_codebooks_in_blocks_are_refused_by_the_encoder():
    description = {"parameter_type": {"w": "weight", "b": "bias"}, "block_identifier": {"w": "x", "b": "x"}}
    with pytest.raises(ValueError, match="codebook_mode=1 cannot be combined with block_id_and_param_type"):
        UpdateEncoder(codebook_mode=1, block_id_and_param_type=description)
    with pytest.raises(ValueError, match="codebook_mode must be an int in 0..1"):
        UpdateEncoder(codebook_mode=2)
    encoder = UpdateEncoder(block_id_and_param_type=description)
    w = coding.CodedTensor(torch.tensor([[1, 3], [3, 1]], dtype=torch.int32), -30,
                           codebook=torch.tensor([1, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="tensor 'w' of block 'x': codebook tensors are not written"):
        encoder.encode({"w": w, "b": torch.ones(2)})
    with pytest.raises(ValueError, match="tensor 'w': level 2 is not an entry of its codebook"):
        UpdateEncoder().encode({"w": coding.CodedTensor(w.levels + 1, -30, codebook=w.codebook)})


# ------------------------------------------------------------------------------------------------ hostile
@pytest.fixture(scope="module")
def codebook_streams():
    encoder = UpdateEncoder(**_options(True, False, False, False, 0), codebook_mode=1)
    return [encoder.encode(_torch(u)) for u in correlated_updates(2, seed=2)]


def _rewrite(data: bytes, edit, monkeypatch=None, codebook_writer=None) -> bytes:
    """The same update with the data-unit headers edited (payloads kept); optionally a forged codebook()."""
    stream = hls.parse_stream(data, allow_updates=True)
    if codebook_writer is not None:
        monkeypatch.setattr(hls, "_write_codebook", codebook_writer)
    parts = [hls.write_start_unit(1), hls.write_mps(1, stream.qp_density, stream.qp_base, True, True),
             hls.write_tpl("")]
    for ndu in stream.ndus:
        edit(ndu.header)
        parts.append(hls.write_ndu(ndu.header, 1, ndu.payload, parent_signalling=True))
    return b"".join(parts)


def _weight_only(h) -> None:
    if h.name != "fc.weight":
        h.codebook = None  # leaves the other units alone: they fail on their own payloads otherwise


def _forged_writer(size_field=None, centre=None, zero_value=None):
    def write(w, codebook, zero_offset, egk):
        size = len(codebook)
        w.u(4, egk)
        w.ue(2, size if size_field is None else size_field)
        w.ie(2, (zero_offset - (size >> 1)) if centre is None else centre)
        w.ie(7, codebook[zero_offset] if zero_value is None else zero_value)
        for j in range(zero_offset - 1, -1, -1):
            w.ue(egk, codebook[j + 1] - codebook[j] - 1)
        for j in range(zero_offset + 1, size):
            w.ue(egk, codebook[j] - codebook[j - 1] - 1)
    return write


def test_header_rewrite_is_exact(codebook_streams):
    assert _rewrite(codebook_streams[1], lambda h: None) == codebook_streams[1]


@pytest.mark.parametrize("writer,message", [
    (_forged_writer(size_field=0), "tensor 'fc.weight': codebook_size 0 outside"),
    (_forged_writer(centre=1000),
     r"tensor 'fc.weight': codebook zero offset \d+ \(codebook_centre_offset\) outside"),
    (_forged_writer(zero_value=-(2**31) + 2), "tensor 'fc.weight': codebook values exceed the int32 range"),
])
def test_forged_codebook_fields_raise(codebook_streams, monkeypatch, writer, message):
    forged = _rewrite(codebook_streams[0], lambda h: None, monkeypatch, writer)
    with pytest.raises(BitstreamError, match=message):
        UpdateDecoder().decode(forged)


def test_codebook_that_does_not_fit_the_payload_raises(codebook_streams):
    """A shorter codebook (the ends cut off) than the payload was coded with: the decoded index leaves the
    codebook or the payload does not end where it should; either names the tensor. The state stays."""
    decoder = UpdateDecoder()
    decoder.decode(codebook_streams[0])
    before = decoder.state_dict()

    def cut(h):
        if h.name == "fc.weight":
            z = h.codebook_zero_offset
            h.codebook = h.codebook[max(0, z - 1):z + 2]
            h.codebook_zero_offset = min(z, 1)

    with pytest.raises(BitstreamError, match="tensor 'fc.weight'"):
        decoder.decode(_rewrite(codebook_streams[1], cut))
    assert decoder.state_dict()["updates"] == before["updates"]
    assert set(decoder.decode(codebook_streams[1])) == {"fc.weight", "fc.bias", "conv.weight"}


def test_codebook_flag_on_a_uniform_update_raises():
    """A codebook written into the header of a uniformly coded TCA update does not decode silently."""
    encoder = UpdateEncoder(**_options(True, False, False, False, 0))
    streams = [encoder.encode(_torch(u)) for u in correlated_updates(2, seed=3)]
    decoder = UpdateDecoder()
    decoder.decode(streams[0])

    def add(h):
        if h.name == "fc.weight":
            h.codebook, h.codebook_zero_offset, h.codebook_egk = [-1, 0, 1], 1, 0

    with pytest.raises(BitstreamError, match="tensor 'fc.weight'"):
        decoder.decode(_rewrite(streams[1], add))


def test_codebook_in_a_block_unit_of_an_update_raises():
    description = {"parameter_type": {"w": "weight", "b": "bias"}, "block_identifier": {"w": "x", "b": "x"}}
    shapes = {"w": (6, 4), "b": (6,)}
    rs = np.random.RandomState(1)
    update = {"w": torch.from_numpy((rs.randn(6, 4) * 0.05).astype(np.float32)),
              "b": torch.from_numpy((rs.randn(6) * 0.05).astype(np.float32))}
    data = UpdateEncoder(block_id_and_param_type=description).encode(update)
    stream = hls.parse_stream(data, allow_updates=True, out_of_band_dims=shapes.get)
    header = stream.ndus[0].header
    header.codebook, header.codebook_zero_offset, header.codebook_egk = [-2, 0, 2], 1, 0
    forged = b"".join([hls.write_start_unit(1),
                       hls.write_mps(1, stream.qp_density, stream.qp_base, True, True), hls.write_tpl(""),
                       hls.write_ndu(header, 1, stream.ndus[0].payload, parent_signalling=True)])
    with pytest.raises(BitstreamError, match="NNR_PT_BLOCK unit of 'w': codebook_present_flag = 1"):
        UpdateDecoder(shapes=shapes).decode(forged)
