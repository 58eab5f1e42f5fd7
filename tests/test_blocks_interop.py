"""NNR_PT_BLOCK units (a layer's weight with its bias / batch-norm / local-scaling vectors in one data unit)
against NNCodec 2.1.3, in plain streams and in difference updates.

* NNCodec → ours: streams of ``nnc.compress(..., block_id_and_param_type=..., bnf=...)`` decode with
  ``ecqx.coding.decode`` to exactly ``nnc.decompress``'s values (names, order, float32 bits).
* ours → NNCodec: ``ecqx.coding.encode(..., block_id_and_param_type=...)`` fed NNCodec's decoded integers
  writes NNCodec's bytes; with batch-norm folding, ``fold_batch_norm`` + our quantizer + ``encode`` writes the
  bytes of ``compress(..., bnf=True)`` and the folded floats equal those of NNCodec's own ``fold_bn``.
* updates: ``UpdateEncoder(block_id_and_param_type=...)`` writes NNCodec's bytes round after round (TCA, HDSP,
  row skipping, DQ, scans 0–4), and ``UpdateDecoder`` reads NNCodec's streams to NNCodec's decoding.
* hostile block headers raise BitstreamError naming the unit and field.

The model: conv.weight (C×3×3×3) + BatchNorm (4 vectors), fc.weight (10×C) + fc.bias, head.weight alone.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from nncodec import nnc, nnc_core
from nncodec_oracle import decode_levels as oracle_decode_levels
from nncodec_update_oracle import NNCodecBlockUpdates, block_model_updates

import ecqx.coding as coding
from ecqx.coding import BitstreamError, UpdateDecoder, UpdateEncoder, hls

pytestmark = pytest.mark.interop

QP, NONWEIGHT_QP = -32, -40


def _model(channels: int = 40, seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    updates, description = block_model_updates(1, seed=seed, conv_channels=channels)
    params = {k: (v * 20).astype(np.float32) for k, v in updates[0].items()}
    params["bn.running_var"] = (1.0 + np.abs(params["bn.running_var"])).astype(np.float32)
    return params, description


def _compress(params, description, **options) -> bytes:
    with contextlib.redirect_stdout(io.StringIO()):
        return bytes(nnc.compress(dict(params), bitstream_path=None, return_bitstream=True, verbose=False,
                                  block_id_and_param_type=description, qp=QP, nonweight_qp=NONWEIGHT_QP,
                                  **options))


def _decompress(data: bytes) -> dict[str, np.ndarray]:
    with contextlib.redirect_stdout(io.StringIO()):
        return dict(nnc.decompress(bytearray(data), verbose=False))


def _assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, np.ndarray]) -> None:
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        assert ours[name].dtype == torch.float32
        np.testing.assert_array_equal(ours[name].numpy().view(np.int32), value.view(np.int32), err_msg=name)


FOLDED = {
    "parameter_type": {"conv.weight": "weight", "conv.weight_scaling": "weight.ls",
                       "conv.weight.bias": "bias", "fc.weight": "weight", "fc.bias": "bias"},
    "block_identifier": {"conv.weight": "conv", "conv.weight_scaling": "conv", "conv.weight.bias": "conv",
                         "fc.weight": "fc", "fc.bias": "fc"},
}


# ---------------------------------------------------------------------------------------------- plain streams
@pytest.mark.parametrize("bnf", [False, True], ids=["blocks", "bnf"])
@pytest.mark.parametrize("use_dq,scan_order", [(False, 0), (True, 0), (True, 1), (False, 2), (True, 3),
                                               (False, 4)])
def test_nncodec_block_streams_decode_and_reencode_identically(bnf, use_dq, scan_order):
    params, description = _model()
    theirs = _compress(params, description, bnf=bnf, use_dq=use_dq, scan_order=scan_order)
    stream = hls.parse_stream(theirs)
    block_units = [n for n in stream.ndus if n.header.payload_type == hls.PayloadType.NNR_PT_BLOCK]
    assert len(block_units) == 2 and len(stream.ndus) == 3  # conv block, fc block, head.weight alone
    if scan_order:  # a 40-row weight has several block rows at scans 1-3: entry points in the block unit
        assert block_units[0].header.entry_points or scan_order == 4
    _assert_same(coding.decode(theirs), _decompress(theirs))
    # NNCodec's integers (its decoder's) re-encoded by us: the same bytes
    decoded = oracle_decode_levels(theirs)
    levels = {k: coding.CodedTensor(torch.from_numpy(v.levels), v.qp, 2, None, bool(v.dq))
              for k, v in decoded.items()}
    ours_levels = coding.decode_levels(theirs)
    for name, t in decoded.items():
        np.testing.assert_array_equal(ours_levels[name].levels.numpy(), t.levels)
        assert ours_levels[name].qp == t.qp
    if bnf:
        order = ["conv.weight", "conv.weight_scaling", "conv.weight.bias", "fc.weight", "fc.bias",
                 "head.weight"]
        ids = {"conv.weight": 0, "fc.weight": 5, "head.weight": 7}  # positions in the unfolded dict
        ours = coding.encode({k: levels[k] for k in order}, row_skipping=False, scan_order=scan_order,
                             block_id_and_param_type=FOLDED, parameter_ids=ids)
    else:
        ours = coding.encode({k: levels[k] for k in params}, row_skipping=False, scan_order=scan_order,
                             block_id_and_param_type=description)
    assert ours == theirs


@pytest.mark.parametrize("use_dq", [False, True])
def test_batch_norm_folding_matches_nncodec(use_dq):
    """fold_batch_norm gives NNCodec's folded floats bit for bit, and with our quantizer the bytes of
    compress(..., bnf=True)."""
    params, description = _model(seed=3)
    folded, folded_description, ids = coding.fold_batch_norm(
        {k: torch.from_numpy(v) for k, v in params.items()}, description)
    # NNCodec's own folding
    model = nnc_core.nnr_model.NNRModel(dict(params))
    nnc_core.nnr_model.set_block_id_and_param_type(model.model_info, description)
    approx_data = nnc_core.approximator.init_approx_data(dict(params), model.model_info, qp_density=2,
                                                         scan_order=0)
    info = nnc_core.approximator.ApproxInfo(approx_data, model.model_info, "uniform", 0, QP, False,
                                            not use_dq, 10, 0, nonweight_qp=NONWEIGHT_QP)
    nnc_core.approximator.fold_bn(model.model_info, approx_data, info)
    assert set(folded) == set(approx_data["parameters"])
    for name, value in approx_data["parameters"].items():
        np.testing.assert_array_equal(folded[name].numpy().view(np.int32), value.view(np.int32), err_msg=name)
    assert folded_description["parameter_type"]["conv.weight_scaling"] == "weight.ls"
    quantized = {}
    for name, value in folded.items():
        qp = QP if folded_description["parameter_type"].get(name, "weight") == "weight" and value.dim() > 1 \
            else NONWEIGHT_QP
        quantized[name] = coding.quantize_tensor(value, qp, 2, dq=use_dq)
    ours = coding.encode(quantized, row_skipping=False, block_id_and_param_type=folded_description,
                         parameter_ids=ids)
    theirs = _compress(params, description, bnf=True, use_dq=use_dq)
    assert ours == theirs
    _assert_same(coding.decode(ours), _decompress(ours))


def test_state_dict_with_blocks_round_trips_and_nncodec_reads_it():
    params, description = _model(channels=16)
    state = {k: torch.from_numpy(v) for k, v in params.items()}
    data = coding.encode_state_dict(state, nonweight_qp=NONWEIGHT_QP, raw_float=False,
                                    block_id_and_param_type=description)
    assert sum(n.header.payload_type == hls.PayloadType.NNR_PT_BLOCK
               for n in hls.parse_stream(data).ndus) == 2
    ours = coding.decode_state_dict(data)
    assert list(ours) == list(state)
    theirs = _decompress(data)
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name].numpy(), value, err_msg=name)


def test_encoder_rejects_blocks_nnc_cannot_carry():
    params, description = _model(channels=8)
    levels = {k: coding.quantize_tensor(torch.from_numpy(v), QP) for k, v in params.items()}
    bad = {"parameter_type": dict(description["parameter_type"]),
           "block_identifier": dict(description["block_identifier"])}
    bad["parameter_type"]["bn.bias"] = "bias"  # the conv block then lacks bn.beta
    with pytest.raises(ValueError, match="batch-norm roles"):
        coding.encode(levels, block_id_and_param_type=bad)
    bad = {"parameter_type": {"fc.weight": "weight", "head.weight": "bias"},
           "block_identifier": {"fc.weight": 1, "head.weight": 1}}
    with pytest.raises(ValueError, match="'head.weight' .*shape"):
        coding.encode(levels, block_id_and_param_type=bad)
    with pytest.raises(ValueError, match="not coded"):
        coding.encode(levels, block_id_and_param_type={"parameter_type": {}, "block_identifier": {"x": 1}})


# ------------------------------------------------------------------------------------------------ updates
ROUNDS = 4
# (tca, hdsp, row_skipping, use_dq, scan_order)
UPDATE_SETTINGS = [
    (False, False, False, False, 0),
    (True, False, False, True, 0),
    (True, True, True, True, 1),
    (False, True, True, False, 2),
    (True, True, False, False, 3),
    (True, False, True, True, 4),
]


@pytest.mark.parametrize("setting", UPDATE_SETTINGS,
                         ids=lambda s: "tca{}-hdsp{}-rs{}-dq{}-scan{}".format(*map(int, s)))
def test_block_update_sequence_matches_nncodec(setting):
    """ROUNDS rounds of block updates (round 2: the fc block all zero, no unit): same bytes as NNCodec, and
    our decoder reads NNCodec's streams to NNCodec's decoding."""
    tca, hdsp, row_skipping, use_dq, scan_order = setting
    options = dict(qp=-36, nonweight_qp=NONWEIGHT_QP, tca=tca, hdsp=hdsp, row_skipping=row_skipping,
                   use_dq=use_dq, scan_order=scan_order)
    updates, description = block_model_updates(ROUNDS, seed=5, zero_block_round=2)
    shapes = {k: v.shape for k, v in updates[0].items()}
    ref = NNCodecBlockUpdates(block_id_and_param_type=description, shapes=shapes, **options)
    encoder = UpdateEncoder(**options, block_id_and_param_type=description)
    decoder = UpdateDecoder(shapes=shapes)
    for r, update in enumerate(updates):
        theirs = ref.encode(update)
        ours = encoder.encode({k: torch.from_numpy(v.copy()) for k, v in update.items()})
        assert ours == theirs, f"round {r}: {len(ours)} bytes vs NNCodec's {len(theirs)}"
        units = hls.parse_stream(theirs, allow_updates=True, out_of_band_dims=shapes.get).ndus
        assert [u.header.name for u in units] == (["conv.weight", "head.weight"] if r == 2 else
                                                  ["conv.weight", "fc.weight", "head.weight"])
        assert not units[0].header.dims_in_band  # NNCodec's block units in updates: dims out of band
        levels = decoder.decode_levels(theirs)
        _assert_same({k: t.values() for k, t in levels.items()}, ref.decode(theirs))
        assert levels["bn.weight"].put_node_depth == r + 1
        assert levels["bn.weight"].tca == (tca and r > 0)
        assert levels["bn.weight"].parameter_id == 0 and ("fc.bias" not in levels) == (r == 2)


def test_apply_updates_takes_block_dimensions_from_the_base():
    updates, description = block_model_updates(3, seed=8)
    encoder = UpdateEncoder(qp=-36, nonweight_qp=NONWEIGHT_QP, tca=True, use_dq=False,
                            block_id_and_param_type=description)
    streams = [encoder.encode({k: torch.from_numpy(v.copy()) for k, v in u.items()}) for u in updates]
    base = {k: torch.zeros(v.shape) for k, v in updates[0].items()}
    rebuilt = coding.apply_updates(base, streams)
    for name in base:
        np.testing.assert_allclose(rebuilt[name].numpy(), sum(u[name] for u in updates), atol=3 * 2.0**-10)
    with pytest.raises(BitstreamError, match="tensor_dimensions_flag = 0"):
        UpdateDecoder().decode(streams[0])


# ------------------------------------------------------------------------------------------------ hostile
def _rewrite_first_block(data: bytes, edit, updates: bool = False, dims=None) -> bytes:
    stream = hls.parse_stream(data, allow_updates=updates, out_of_band_dims=dims)
    parts = [hls.write_start_unit(stream.profile),
             hls.write_mps(stream.profile, stream.qp_density, stream.qp_base, True, stream.parent_signalling),
             hls.write_tpl(stream.topology_data or "")]
    done = False
    for ndu in stream.ndus:
        if not done and ndu.header.payload_type == hls.PayloadType.NNR_PT_BLOCK:
            edit(ndu.header)
            done = True
        parts.append(hls.write_ndu(ndu.header, stream.profile, ndu.payload,
                                   parent_signalling=stream.parent_signalling))
    return b"".join(parts)


@pytest.fixture(scope="module")
def block_stream() -> bytes:
    params, description = _model(channels=16)
    return _compress(params, description, use_dq=True)


def test_block_header_rewrite_is_exact(block_stream):
    assert _rewrite_first_block(block_stream, lambda h: None) == block_stream


@pytest.mark.parametrize("edit,message", [
    (lambda h: setattr(h, "compressed_parameter_types", hls.CPT_BN | hls.CPT_BI),
     "count_topology_elements_minus2 gives 5 tensors, compressed_parameter_types 0xc needs 6"),
    (lambda h: setattr(h, "compressed_parameter_types", hls.CPT_BN | hls.CPT_BI | hls.CPT_DC), "NNR_CPT_DC"),
    (lambda h: setattr(h.block[0], "name", h.block[1].name), "names 'bn.weight' twice"),
    (lambda h: setattr(h, "dims", (17, 3, 3, 3)), "NNR_PT_BLOCK unit of 'conv.weight'"),
    (lambda h: setattr(h, "dims_in_band", False), "tensor_dimensions_flag = 0"),
    (lambda h: setattr(h, "entry_points", [(5, 1, 0)]) or setattr(h, "scan_order", 1),
     "NNR_PT_BLOCK unit of 'conv.weight'"),
])
def test_hostile_block_headers_raise(block_stream, edit, message):
    forged = _rewrite_first_block(block_stream, edit)
    with pytest.raises(BitstreamError, match=message):
        coding.decode(forged)


def test_block_count_beyond_seven_is_refused(block_stream):
    data = bytearray(block_stream)
    start = 18 + 2 + 2  # start unit, MPS, TPL; the first NDU's size field, unit header and payload-type byte
    assert data[start - 1] & 0x04  # nnr_multiple_topology_elements_present_flag of a block unit
    data[start] = 0x01  # count_topology_elements_minus2 as ue(7) = 127 + ...: far more than seven tensors
    with pytest.raises(BitstreamError, match="count_topology_elements_minus2|NNR unit"):
        coding.decode(bytes(data))


def test_block_update_with_missing_member_base_raises():
    updates, description = block_model_updates(2, seed=2)
    shapes = {k: v.shape for k, v in updates[0].items()}
    encoder = UpdateEncoder(qp=-36, nonweight_qp=NONWEIGHT_QP, tca=True, use_dq=False,
                            block_id_and_param_type=description)
    streams = [encoder.encode({k: torch.from_numpy(v.copy()) for k, v in u.items()}) for u in updates]
    decoder = UpdateDecoder(shapes=shapes)
    decoder.decode(streams[0])
    state = decoder.state_dict()
    del state["tensors"]["bn.running_var"]
    broken = UpdateDecoder(shapes=shapes)
    broken.load_state_dict(state)
    with pytest.raises(BitstreamError, match="'bn.running_var' of the NNR_PT_BLOCK unit of 'conv.weight'.*"
                                             "missing base"):
        broken.decode(streams[1])
    # a forged depth on the block unit names the unit
    forged = _rewrite_first_block(streams[1], lambda h: setattr(h, "put_node_depth", 5), updates=True,
                                  dims=shapes.get)
    with pytest.raises(BitstreamError, match="put_node_depth 5"):
        decoder.decode(forged)
