"""C++ core unit tests through the binding (spec nnc-bitstream.md §15.7), with the spec's pure-Python model
(nnc-reference-model/nncproto.py) and hand computation as independent oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecqx.coding import CodedTensor, decode_levels, encode, load_native


@pytest.fixture(scope="module")
def native():
    return load_native()


def test_context_update_by_hand(native):
    # ecoIdx 0: p = s0 = 0, sh0 = 5, sh1 = 4; bin 1: s0 += 64 >> 5 = 2, s1 += 64 >> 4 = 4, p = 4 + 16*2 = 36
    assert native.trace_context(0, [1]) == [(2, 36)]
    # then bin 0: sg = -1, s1 = 36 - 32 = 4; s0 -= CURVE[16 + (-2 >> 3)] >> 5 = CURVE[15] >> 5 = 80 >> 5 = 2
    # -> s0 = 0; s1 -= CURVE[16 + (-4 >> 7)] >> 4 = 80 >> 4 = 5 -> s1 = -1; p = -1
    assert native.trace_context(0, [1, 0]) == [(2, 36), (0, -1)]


@pytest.mark.parametrize("eco", range(9))
def test_context_trajectory_matches_reference_model(native, reference_model, eco):
    rng = np.random.default_rng(eco)
    bins = [int(b) for b in (rng.random(400) < rng.random())]
    bins += [1] * 300 + [0] * 300  # saturation in both directions
    ctx = reference_model.Ctx(eco)
    expected = []
    for b in bins:
        ctx.update(b)
        expected.append((ctx.s0, ctx.p))
    assert native.trace_context(eco, bins) == expected


def _script(seed):
    rng = np.random.default_rng(seed)
    kinds, args, values = [], [], []
    for _ in range(600):
        r = rng.random()
        if r < 0.75:
            ctx = int(rng.integers(0, 4))
            kinds.append(0)
            args.append(ctx)
            # skewed contexts: long MPS runs then an LPS with a tiny rLPS (carry propagation, 0xFF runs)
            values.append(int(rng.random() < (0.995 if ctx < 2 else 0.4)))
        elif r < 0.97:
            n = int(rng.integers(1, 33))
            kinds.append(1)
            args.append(n)
            values.append(int(rng.integers(0, 2**n)))
        else:
            kinds.append(2)
            args.append(0)
            values.append(0)
    return kinds, args, values


def _model_encode(P, kinds, args, values):
    enc = P.AEnc()
    ctx = [P.Ctx(0) for _ in range(64)]
    for k, a, v in zip(kinds, args, values, strict=True):
        if k == 0:
            enc.bin(v, ctx[a])
        elif k == 1:
            enc.bypass_n(v, a)
        else:
            enc.rng = 256
    return enc.finish()


@pytest.mark.parametrize("seed", range(6))
def test_arithmetic_coder_matches_model_and_round_trips(native, reference_model, seed):
    kinds, args, values = _script(seed)
    data = native.encode_bin_script(kinds, args, values)
    assert data == _model_encode(reference_model, kinds, args, values)
    decoded, consumed = native.decode_bin_script(data, kinds, args)
    assert consumed == len(data)
    expected = [0 if k == 2 else v for k, v in zip(kinds, values, strict=True)]
    assert decoded == expected


def test_long_ff_runs_and_carries(native, reference_model):
    # bypass bins of all ones produce 0xFF output bytes that stay pending until a carry resolves them
    kinds = [1] * 40 + [0] + [1] * 40
    args = [8] * 40 + [0] + [8] * 40
    values = [255] * 40 + [1] + [255] * 40
    data = native.encode_bin_script(kinds, args, values)
    assert data == _model_encode(reference_model, kinds, args, values)
    assert data.count(0xFF) >= 60
    assert native.decode_bin_script(data, kinds, args)[0] == values


def test_truncated_script_is_detected(native):
    kinds, args, values = _script(11)
    data = native.encode_bin_script(kinds, args, values)
    with pytest.raises(ValueError, match="ends before|terminating"):
        native.decode_bin_script(data[: len(data) // 2], kinds, args)


def _magnitudes(n_gtx):
    mags = set(range(0, n_gtx + 4))
    for t in range(1, 31):
        for d in (-1, 0, 1):
            mags.add(n_gtx + 1 + (1 << t) - 1 + d)
    mags |= {2**30, 2**31 - 2, 2**31 - 1}
    return sorted(m for m in mags if 0 <= m <= 2**31 - 1)


@pytest.mark.parametrize("n_gtx", [1, 2, 11, 31])
def test_binarization_round_trip_at_boundaries(reference_model, n_gtx):
    mags = _magnitudes(n_gtx)
    values = np.array([m * s for m in mags for s in (1, -1)], dtype=np.int64).astype(np.int32)
    data = encode({"v": torch.from_numpy(values)}, cabac_unary_length_minus1=n_gtx - 1)
    assert np.array_equal(decode_levels(data)["v"].levels.numpy(), values)
    expected = reference_model.write_stream([dict(name="v", levels=values, qp=None)], N=n_gtx)
    assert data == expected


def _scan_by_spec(h, w, so):
    # spec §9.2, written out independently of the product code
    if so == 0 or h == 1 or w == 1:
        return [y * w + x for y in range(h) for x in range(w)]
    b = 4 << so
    out = []
    for by in range(0, h, b):
        for bx in range(0, w, b):
            for y in range(by, min(by + b, h)):
                for x in range(bx, min(bx + b, w)):
                    out.append(y * w + x)
    return out


@pytest.mark.parametrize("shape", [(1, 1), (8, 8), (9, 7), (17, 33), (64, 64), (65, 1), (1, 70), (70, 130)])
@pytest.mark.parametrize("so", range(5))
def test_scan_positions(native, shape, so):
    assert native.scan_positions(shape[0], shape[1], so) == _scan_by_spec(shape[0], shape[1], so)


def test_dq_remaps_inconsistent_indices():
    # spec §15.2 note: at an even state r = 5, -1 cannot be represented; the coder turns them into 4, -2
    r = torch.tensor([[2, 0, 0, -3], [0, 0, 0, 0], [5, -1, 0, 28]], dtype=torch.int32)
    out = decode_levels(encode({"w": CodedTensor(r, -20, dq=True)}))["w"].levels
    assert out.tolist() == [[2, 0, 0, -3], [0, 0, 0, 0], [4, -2, 0, 28]]


def test_dq_state_path_by_hand():
    # r = [1, 1, 1]: state 0 (Q0) codes k = (1+0)>>1 = 0 -> r 0, state stays 0 (parity 0) everywhere
    # r = [2, 1, 1]: k = 1 at state 0 -> state T[0][1] = 2 (Q0): r=1 -> k=0 -> decodes 0,
    # state T[2][0] = 1 (Q1): r=1 -> k = (1+1)>>1 = 1 -> decodes 2*1-1 = 1
    out = decode_levels(encode({"a": CodedTensor(torch.tensor([1, 1, 1], dtype=torch.int32), -8, dq=True),
                                "b": CodedTensor(torch.tensor([2, 1, 1], dtype=torch.int32), -8, dq=True)}))
    assert out["a"].levels.tolist() == [0, 0, 0]
    assert out["b"].levels.tolist() == [2, 0, 1]


def test_dq_row_skip_block_scan_follows_layer_width_rule(reference_model):
    # spec §10/§11.5: a skipped row segment advances the DQ state layerWidth times, even in block scans,
    # so encoder-side indices can come back different; our decoder must agree with the model's.
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 21)).astype(np.float32)  # 21 % 4 != segment lengths % 4
    w[5:9, :] = 0
    w[20, :] = 0
    from ecqx.coding import quantize_tensor

    q = quantize_tensor(torch.from_numpy(w), -26, dq=True, scan_order=1)
    data = encode({"w": q}, scan_order=1, row_skipping=True)
    ours = decode_levels(data)["w"].levels.numpy()
    model = reference_model.read_stream(data)["w"]["levels"]
    assert np.array_equal(ours, model)
    assert not np.array_equal(ours, q.levels.numpy())  # the quirk is really exercised


# The encoder derives entry points (spec §9.4) from its own register at each block-row start; the definition
# is the decoder's state there, which the decoder records while decoding. Both must agree on every stream:
# dense, sparse, all-zero (the value window reaches past the payload end), bypass-heavy and carry-heavy data.
def _entry_point_cases():
    rs = np.random.RandomState(915)
    kinds = ["laplace", "sparse", "zeros", "huge", "ones"]
    for i in range(60):
        so = 1 + i % 4
        block = 4 << so
        rows = int(rs.randint(block + 1, 4 * block + 3))
        width = int(rs.randint(2, 90))
        yield i, rows, width, so, kinds[i % len(kinds)], bool(i % 2), bool((i // 2) % 2), bool((i // 3) % 2)


@pytest.mark.parametrize("case", list(_entry_point_cases()), ids=lambda c: str(c[0]))
def test_encoder_entry_points_equal_the_decoders(native, case):
    i, rows, width, so, kind, dq, row_skip, param_opt = case
    rs = np.random.RandomState(i)
    n = rows * width
    if kind == "laplace":
        levels = np.round(rs.laplace(0, 3, n))
    elif kind == "sparse":
        levels = np.round(rs.laplace(0, 2, n)) * (rs.rand(n) < 0.1)
    elif kind == "zeros":
        levels = np.zeros(n)
    elif kind == "huge":
        levels = rs.randint(-(2**30), 2**30, n) * (rs.rand(n) < 0.5)
    else:
        levels = np.ones(n)
    levels = torch.from_numpy(levels.astype(np.int32))
    num_gtx, profile = (11, 1) if i % 3 else (1 + i % 5, 0)
    payload, eps = native.encode_payload(levels, rows, width, so, dq, num_gtx, profile, 0, 0, True, 8,
                                         row_skip, param_opt, -7)
    out = torch.empty(n, dtype=torch.int32)
    _, consumed, decoded_eps = native.decode_payload(payload, out, rows, width, so, dq, num_gtx, profile,
                                                     0, 0, True, 8)
    assert consumed == len(payload)
    assert len(eps) == -(-rows // (4 << so)) - 1
    assert [tuple(e) for e in eps] == [tuple(e) for e in decoded_eps]


# The decoder writes every output position itself (coded rows by the scan, skipped rows as zeros): into a
# buffer full of garbage it decodes exactly what it decodes into a zeroed one.
@pytest.mark.parametrize("so", range(5))
@pytest.mark.parametrize("dq", [False, True])
def test_decoder_overwrites_every_position(native, so, dq):
    rs = np.random.RandomState(so + 10 * dq)
    rows, width = 70, 37
    levels = (rs.randint(-5, 6, (rows, width)) * (rs.rand(rows, width) < 0.6)).astype(np.int32)
    levels[::4] = 0  # zero rows, skipped with row skipping
    levels[-1] = 0
    flat = torch.from_numpy(levels.reshape(-1).copy())
    payload, _ = native.encode_payload(flat, rows, width, so, dq, 11, 1, 0, 0, True, 8, True, True, 0)
    decoded = {}
    for fill in (0, 12345):
        out = torch.full((rows * width,), fill, dtype=torch.int32)
        native.decode_payload(payload, out, rows, width, so, dq, 11, 1, 0, 0, True, 8)
        decoded[fill] = out
    assert torch.equal(decoded[0], decoded[12345])
    assert (decoded[12345].view(rows, width)[::4] == 0).all()
    if not dq:  # with DQ the decoder may re-map inconsistent indices (spec §11.2)
        assert torch.equal(decoded[12345], flat)


# The trellis forms candidate levels from trunc(qscale·|w|) in 64-bit integers: the core itself rejects inputs
# whose product is not a finite number inside the int32 level range, with an error naming the problem.
@pytest.mark.parametrize("value,qscale,message", [
    (float("nan"), 64.0, r"position 13 is NaN"),
    (float("inf"), 64.0, r"position 13 is infinite"),
    (-float("inf"), 64.0, r"position 13 is infinite"),
    (1e30, 64.0, r"weight 1\.00000002e\+30 at position 13 .* exceeds the int32 level range"),
    (-3e9, 1.0, r"position 13 .* exceeds the int32 level range"),
    (0.5, float("nan"), r"qscale .* must be a finite positive number, got nan"),
    (0.5, 0.0, r"qscale .* must be a finite positive number, got 0"),
    (0.5, -2.0, r"qscale .* must be a finite positive number, got -2"),
])
def test_trellis_rejects_unrepresentable_input(native, value, qscale, message):
    w = torch.linspace(-1, 1, 6 * 5, dtype=torch.float32)
    w[13] = value
    out = torch.zeros(6 * 5, dtype=torch.int32)
    with pytest.raises(ValueError, match=message):
        native.trellis_quantize(w, out, 6, 5, 1, qscale)


def test_trellis_accepts_levels_up_to_the_int32_range(native):
    """Just inside the limit the trellis still works: its levels are DQ-consistent and survive the coder."""
    w = torch.tensor([2.0**31 - 128, -(2.0**31 - 128), 0.3, -7.5, 0.0, 1e-3], dtype=torch.float32)
    out = torch.zeros(6, dtype=torch.int32)
    native.trellis_quantize(w, out, 2, 3, 0, 1.0)
    assert abs(int(out[0]) - (2**31 - 128)) <= 2 and abs(int(out[1]) + (2**31 - 128)) <= 2
    payload, _ = native.encode_payload(out, 2, 3, 0, True, 11, 1, 0, 0, False, 8, False, True, 0)
    back = torch.empty(6, dtype=torch.int32)
    native.decode_payload(payload, back, 2, 3, 0, True, 11, 1, 0, 0, False, 8)
    assert torch.equal(back, out)
