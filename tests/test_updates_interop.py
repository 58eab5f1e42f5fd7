"""Difference updates (NNC edition 2) against NNCodec 2.1.3: sequences of updates with TCA/HDSP state.

* NNCodec → ours: an UpdateDecoder reads NNCodec's update streams, round after round, to exactly the values
  NNCodec's own decoder (with its state carried) returns, and to NNCodec's encoder-side integers.
* ours → NNCodec: an UpdateEncoder with the same options writes the same bytes as NNCodec's
  ``compress(..., compress_differences=True, approx_param_base=state, update_base_param=True)``, and NNCodec's
  decoder reads them.
* state: an encoder/decoder restored from state_dict mid-sequence continues with identical bytes/values.
* hostile streams (forged depth, wrong parent, missing base) raise BitstreamError naming the problem.

The oracle is tests/nncodec_update_oracle.py. Tensors are small (64×32, 32, 16×3×3) and seeded.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from nncodec.extensions.deepCABAC import Encoder as NNCodecEncoder
from nncodec.extensions.deepCABAC import HdspMode
from nncodec_update_oracle import NNCodecUpdates, correlated_updates

import ecqx.coding as coding
from ecqx.coding import BitstreamError, UpdateDecoder, UpdateEncoder, hls

pytestmark = pytest.mark.interop

ROUNDS = 4
QPS = dict(qp=-36, nonweight_qp=-40)
# (tca, hdsp, row_skipping, use_dq, scan_order): every tool on and off, in combination
SETTINGS = [
    (False, False, False, False, 0),
    (True, False, False, False, 0),
    (True, False, True, True, 0),
    (False, True, False, True, 0),
    (True, True, True, False, 0),
    (True, True, False, True, 1),
    (False, False, True, True, 2),
    (True, True, True, True, 1),
]


def _torch(update: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.copy()) for k, v in update.items()}


def _options(tca, hdsp, row_skipping, use_dq, scan_order) -> dict:
    return dict(QPS, tca=tca, hdsp=hdsp, row_skipping=row_skipping, use_dq=use_dq, scan_order=scan_order)


def _assert_values(ours: dict[str, torch.Tensor], theirs: dict[str, np.ndarray]) -> None:
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        assert ours[name].dtype == torch.float32
        np.testing.assert_array_equal(ours[name].numpy(), value, err_msg=name)


@pytest.mark.parametrize("correlated", [True, False], ids=["correlated", "independent"])
@pytest.mark.parametrize("setting", SETTINGS,
                         ids=lambda s: "tca{}-hdsp{}-rs{}-dq{}-scan{}".format(*map(int, s)))
def test_update_sequence_matches_nncodec(setting, correlated):
    """Both directions and byte identity, ROUNDS rounds; round 2 has an all-zero bias (no data unit)."""
    tca, hdsp, row_skipping, use_dq, scan_order = setting
    options = _options(*setting)
    # DQ + row skipping + a block scan: NNCodec's decoder can return other integers than its encoder coded
    # (spec §11.5); NNCodec's encoder keeps its own integers as TCA base / HDSP history, so its later updates
    # do not decode. Ours keeps the decoder's integers: identical bytes until the two differ, and NNCodec
    # decodes every round of ours.
    quirk = row_skipping and use_dq and scan_order > 0
    diverges = quirk and (tca or hdsp)  # without TCA/HDSP nothing depends on the state: bytes stay equal
    ref, ref_ours = NNCodecUpdates(**options), NNCodecUpdates(**options)
    encoder, decoder_theirs, decoder_ours = UpdateEncoder(**options), UpdateDecoder(), UpdateDecoder()
    updates = correlated_updates(ROUNDS, seed=7, correlated=correlated, zero_tensor_round=2,
                                 zero_rows=row_skipping)
    for r, update in enumerate(updates):
        theirs = ref.encode(update)
        ours = encoder.encode(_torch(update))
        expected_ours = ref_ours.decode(ours)  # NNCodec's decoder on our stream (its own state)
        _assert_values(decoder_ours.decode(ours), expected_ours)
        if diverges and r > 0:
            continue
        assert ours == theirs, f"round {r}: {len(ours)} bytes vs NNCodec's {len(theirs)}"
        expected = ref.decode(theirs)
        levels = decoder_theirs.decode_levels(theirs)
        _assert_values({k: t.values() for k, t in levels.items()}, expected)
        for name, t in levels.items():
            if not quirk:  # the integers NNCodec's encoder coded (its next TCA base)
                np.testing.assert_array_equal(t.levels.numpy(), ref.encoder_levels()[name])
            assert t.put_node_depth == ref.enc_state["put_node_depth"][name]
            assert t.tca == (tca and t.put_node_depth > 1)
        assert ("fc.bias" in levels) == (r != 2)


def test_nncodec_decodes_our_updates_with_other_device():
    """device_id 3 in every unit; NNCodec (state carried) reads all rounds of our TCA stream."""
    options = _options(True, True, False, False, 0)
    encoder, decoder = UpdateEncoder(**options, device_id=3), UpdateDecoder()
    ref = NNCodecUpdates(**options, device_id=3)
    for update in correlated_updates(3, seed=11):
        data = encoder.encode(_torch(update))
        assert data == ref.encode(update)
        expected = ref.decode(data)
        levels = decoder.decode_levels(data)
        _assert_values({k: t.values() for k, t in levels.items()}, expected)
        assert {t.device_id for t in levels.values()} == {3}
        for name, value in expected.items():  # uniform rounding: within half a step (qp -36: 2^-7, -40: 2^-8)
            assert np.abs(value - update[name]).max() <= 2.0**-8


def test_tca_pays_on_correlated_updates_and_not_on_independent_ones():
    """Golden sizes from NNCodec (byte-identical to ours): TCA shrinks correlated updates after round 1."""
    sizes = {}
    for tca, correlated in itertools.product([False, True], [True, False]):
        encoder = UpdateEncoder(**_options(tca, False, False, False, 0))
        ref = NNCodecUpdates(**_options(tca, False, False, False, 0))
        rounds = []
        for update in correlated_updates(ROUNDS, seed=3, correlated=correlated):
            data = encoder.encode(_torch(update))
            assert data == ref.encode(update)
            rounds.append(len(data))
        sizes[tca, correlated] = rounds
    # round 1 has no base: identical; afterwards TCA saves over a third on correlated updates
    assert sizes[True, True][0] == sizes[False, True][0]
    for r in range(1, ROUNDS):
        assert sizes[True, True][r] < 0.7 * sizes[False, True][r]
    # on independent updates the base values point to the wrong contexts: TCA does not pay
    assert sum(sizes[True, False][1:]) > sum(sizes[False, False][1:])


@pytest.mark.parametrize("shape,scan_order,n1", [((64, 32), 0, 10), ((40, 3, 3), 1, 3), ((33,), 0, 0),
                                                 ((70, 20), 2, 10)])
@pytest.mark.parametrize("tca,hdsp", [(True, False), (False, True), (True, True)])
def test_payload_matches_nncodec_coder(shape, scan_order, n1, tca, hdsp):
    """CABAC payloads of one update tensor, arbitrary integers, base and mask: NNCodec's encodeLayer(2)."""
    rs = np.random.RandomState(abs(hash((shape, scan_order, n1, tca, hdsp))) % 2**31)
    x = (rs.laplace(size=shape) * 3).astype(np.int32)
    x[rs.rand(*shape) < 0.5] = 0
    if len(shape) > 1:
        x[::5] = 0
    base = (x + rs.randint(-2, 3, size=shape) * (rs.rand(*shape) < 0.3)).astype(np.int32) if tca else None
    hist = (rs.rand(*shape) < 0.4).astype(np.int8) if hdsp else None
    rows, width = shape[0], int(np.prod(shape[1:]))
    for row_skip in (False, True):
        enc = NNCodecEncoder()
        enc.iae_v(8, -5)
        enc.initCtxModels(n1 + 1, True)
        zero_rows = np.array([0 if np.any(r) else 1 for r in x.reshape(rows, -1)], dtype=np.int32)
        mode = HdspMode.TensorOn if hdsp else HdspMode.TensorOff
        mask = hist if hist is not None else np.zeros(2, np.int8)
        if tca:
            enc.encodeLayer2(x, base, 0, scan_order, 1, 1, int(row_skip), zero_rows, mode, mask, 0, 0)
        else:
            enc.encodeLayer(x, 0, scan_order, 1, 1, int(row_skip), zero_rows, mode, mask, 0, 0)
        theirs = bytes(enc.finish().tobytes())
        native = coding.load_native()
        empty_b, empty_h = torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.int8)
        b = torch.from_numpy(base.reshape(-1).copy()) if tca else empty_b
        h = torch.from_numpy(hist.reshape(-1).copy()) if hdsp else empty_h
        ours, eps = native.encode_update_payload(torch.from_numpy(x.copy()), rows, width, scan_order, False,
                                                 n1 + 1, 0, 0, True, 8, row_skip, True, -5, True, b, h, hdsp)
        assert ours == theirs
        out = torch.empty(shape, dtype=torch.int32)
        qp_delta, consumed, eps_dec, flag = native.decode_update_payload(
            ours, out, rows, width, scan_order, False, n1 + 1, 0, 0, True, 8, True, b, h)
        assert (qp_delta, consumed, flag) == (-5, len(ours), hdsp and width > 1)
        np.testing.assert_array_equal(out.numpy(), x)
        assert eps_dec == eps


# ------------------------------------------------------------------------------------------------ state
def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resume_mid_sequence_gives_identical_bytes_and_values():
    options = _options(True, True, True, True, 0)
    updates = [_torch(u) for u in correlated_updates(5, seed=5, zero_tensor_round=1, zero_rows=True)]
    encoder, decoder = UpdateEncoder(**options), UpdateDecoder()
    straight = [encoder.encode(u) for u in updates]
    values = [decoder.decode(d) for d in straight]

    first, first_dec = UpdateEncoder(**options), UpdateDecoder()
    for u in updates[:2]:
        first_dec.decode(first.encode(u))
    enc_state, dec_state = _roundtrip(first.state_dict()), _roundtrip(first_dec.state_dict())
    resumed, resumed_dec = UpdateEncoder(**options), UpdateDecoder()
    resumed.load_state_dict(enc_state)
    resumed_dec.load_state_dict(dec_state)
    for r in range(2, 5):
        data = resumed.encode(updates[r])
        assert data == straight[r]
        got = resumed_dec.decode(data)
        assert list(got) == list(values[r])
        for name in got:
            assert torch.equal(got[name], values[r][name])
    assert resumed.updates == resumed_dec.updates == 5

    with pytest.raises(ValueError, match="tca=True, this encoder has tca=False"):
        UpdateEncoder(**dict(options, tca=False)).load_state_dict(enc_state)


def test_fresh_decoder_cannot_continue_without_state():
    options = _options(True, False, False, False, 0)
    encoder = UpdateEncoder(**options)
    streams = [encoder.encode(_torch(u)) for u in correlated_updates(2, seed=1)]
    with pytest.raises(BitstreamError, match="missing base"):
        UpdateDecoder().decode(streams[1])


# ------------------------------------------------------------------------------------------------ hostile
def _rewrite(data: bytes, edit) -> bytes:
    """The same update with its data-unit headers edited (payloads kept)."""
    stream = hls.parse_stream(data, allow_updates=True)
    parts = [hls.write_start_unit(1), hls.write_mps(1, stream.qp_density, stream.qp_base, True, True),
             hls.write_tpl("")]
    for ndu in stream.ndus:
        edit(ndu.header)
        parts.append(hls.write_ndu(ndu.header, 1, ndu.payload, parent_signalling=True))
    return b"".join(parts)


@pytest.fixture(scope="module")
def tca_streams():
    encoder = UpdateEncoder(**_options(True, False, False, False, 0))
    return [encoder.encode(_torch(u)) for u in correlated_updates(3, seed=2)]


def _decoder_after_first(streams) -> UpdateDecoder:
    decoder = UpdateDecoder()
    decoder.decode(streams[0])
    return decoder


def test_header_rewrite_is_exact(tca_streams):
    assert _rewrite(tca_streams[1], lambda h: None) == tca_streams[1]


@pytest.mark.parametrize("edit,message", [
    (lambda h: setattr(h, "put_node_depth", h.put_node_depth + 1), "put_node_depth 3 does not follow"),
    (lambda h: setattr(h, "put_node_depth", 0), "put_node_depth 0 in a data unit with a parent"),
    (lambda h: setattr(h, "parameter_id", h.parameter_id + 1), "parameter_id .* differs from its parent"),
    (lambda h: setattr(h, "device_id", 4), "device_id 4 differs from the device_id 0"),
    (lambda h: setattr(h, "parent_device_id", 2), "parent_device_id 2 names another device"),
])
def test_hostile_update_headers_raise(tca_streams, edit, message):
    decoder = _decoder_after_first(tca_streams)
    before = decoder.state_dict()
    with pytest.raises(BitstreamError, match=message):
        decoder.decode(_rewrite(tca_streams[1], edit))
    # the failed update left the state untouched: the genuine stream still decodes
    after = decoder.state_dict()
    assert after["updates"] == before["updates"]
    assert set(decoder.decode(tca_streams[1])) == {"fc.weight", "fc.bias", "conv.weight"}


def test_skipped_update_is_detected(tca_streams):
    decoder = _decoder_after_first(tca_streams)
    with pytest.raises(BitstreamError, match="forged depth or a missed update"):
        decoder.decode(tca_streams[2])


def test_plain_decoder_points_to_update_decoder(tca_streams):
    with pytest.raises(BitstreamError, match="UpdateDecoder"):
        coding.decode(tca_streams[0])


def test_tca_flag_on_a_first_update_is_missing_base(tca_streams):
    forged = _rewrite(tca_streams[0], lambda h: setattr(h, "temporal_context_modeling", True))
    with pytest.raises(BitstreamError, match="missing base"):
        UpdateDecoder().decode(forged)


def test_quantized_descriptions_give_the_same_bytes_as_floats():
    """Levels + qp descriptions (here the integers the encoder itself chose) code exactly like the floats."""
    options = _options(True, True, False, False, 0)
    from_floats, from_levels = UpdateEncoder(**options), UpdateEncoder(**options)
    for update in correlated_updates(3, seed=9):
        data = from_floats.encode(_torch(update))
        described = {}
        for name, value in update.items():
            qp = QPS["qp"] if value.ndim >= 2 else QPS["nonweight_qp"]
            described[name] = coding.quantize_tensor(torch.from_numpy(value), qp)
            assert described[name].qp == qp
        assert from_levels.encode(described) == data


def test_corrupt_update_payloads_raise_bitstream_error(tca_streams):
    """Flipped payload bytes in a TCA update: decoded or BitstreamError, never another exception."""
    rs = np.random.RandomState(4)
    first = UpdateDecoder()
    first.decode(tca_streams[0])
    state = first.state_dict()
    errors = 0
    for _ in range(60):
        data = bytearray(tca_streams[1])
        pos = rs.randint(60, len(data))
        data[pos] ^= 1 << rs.randint(8)
        decoder = UpdateDecoder()
        decoder.load_state_dict(state)
        try:
            decoder.decode(bytes(data))
        except BitstreamError:
            errors += 1
    assert errors > 0


# (qp_density, qp, nonweight_qp, scan_order, tca, hdsp, row_skipping, use_dq): block scans 3 and 4 and qp
# densities other than 2, each qp a step of about 2^-9 (2^-10 for the non-weights)
DENSITY_SCAN_SETTINGS = [
    (2, -36, -40, 3, True, True, True, False),
    (2, -36, -40, 4, True, False, False, True),
    (0, -9, -10, 0, True, True, False, True),
    (1, -18, -20, 1, True, False, True, False),
    (3, -72, -80, 2, False, True, False, True),
    (3, -72, -80, 3, True, True, True, False),
]


@pytest.mark.parametrize("setting", DENSITY_SCAN_SETTINGS,
                         ids=lambda s: "qpd{}-scan{}-tca{}-hdsp{}-rs{}-dq{}".format(s[0], *map(int, s[3:])))
def test_update_sequence_scan_orders_and_qp_densities_match_nncodec(setting):
    """Four rounds (round 2: an all-zero bias): same bytes as NNCodec, each decoder reads the other's streams
    to NNCodec's values. The weights have 70 and 40 rows, so scans 3 and 4 have several block rows."""
    qp_density, qp, nonweight_qp, scan_order, tca, hdsp, row_skipping, use_dq = setting
    options = dict(qp=qp, nonweight_qp=nonweight_qp, tca=tca, hdsp=hdsp, row_skipping=row_skipping,
                   use_dq=use_dq, scan_order=scan_order)
    ref, ref_ours = NNCodecUpdates(**options), NNCodecUpdates(**options)
    ref.options["qp_density"] = ref_ours.options["qp_density"] = qp_density
    encoder = UpdateEncoder(**options, qp_density=qp_density)
    decoder_theirs, decoder_ours = UpdateDecoder(), UpdateDecoder()
    rs = np.random.RandomState(qp_density * 10 + scan_order)
    shapes = {"a.weight": (70, 20), "b.weight": (40, 3, 3), "a.bias": (70,)}
    direction = {k: (rs.randn(*s) * (rs.rand(*s) < 0.3)).astype(np.float32) * 0.02 for k, s in shapes.items()}
    for r in range(4):
        update = {k: (d * (1 + 0.1 * r) + rs.randn(*d.shape).astype(np.float32) * 0.002 * (d != 0))
                  .astype(np.float32) for k, d in direction.items()}
        update["a.weight"][::5] = 0
        if r == 2:
            update["a.bias"][:] = 0
        theirs = ref.encode(update)
        ours = encoder.encode(_torch(update))
        assert hls.parse_stream(ours, allow_updates=True).qp_density == qp_density
        assert ours == theirs, f"round {r}: {len(ours)} bytes vs NNCodec's {len(theirs)}"
        _assert_values(decoder_theirs.decode(theirs), ref.decode(theirs))
        _assert_values(decoder_ours.decode(ours), ref_ours.decode(ours))
