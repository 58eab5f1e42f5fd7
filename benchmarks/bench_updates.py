"""Federated update coding: our NNC update coding vs NNCodec 2.1.3 on the updates of one federated run.

Runs ONE NNC-coded ``ecqx federate`` run (``recipes/federated_mnist_lenet5.yaml`` on the shared MNIST copy,
``--rounds`` rounds, ``--set key=value`` overriding keys of the recipe's ``federated:`` section) and records
every difference update sent (upstream: each client's, downstream: the server's from round 2 on; round 1's
downstream is the initial model, not an update) through ``run_federated(..., observer=...)``. After the run
each update is coded offline, per sender in send order (state carried from round to round per sender, as in
the run), by:

* **ours**: ``ecqx.coding.UpdateEncoder`` / ``UpdateDecoder`` with the run's settings (the bytes must equal
  the run's own), on the ECQ levels of the run; distortion of the reconstruction vs the float difference;
* **NNCodec, same levels**: ``nnc.compress(compress_differences=True, approx_param_base=state,
  update_base_param=True)`` / ``nnc.decompress`` fed the run's integers: the values ``level · Δ(qp)`` with
  ``qp_per_tensor`` = our qp per tensor, ``use_dq=False`` (its uniform rounding returns exactly our levels),
  the run's ``tca``, ``row_skipping``, ``qp_density``, ``device_id`` and the coder defaults both use
  (param_opt on, scan order 0, cabac_unary_length_minus1 10, no HDSP); the bytes must be identical;
* **NNCodec, own quantization**: the same call on the float difference itself (its uniform rounding at our
  qp per tensor, ``use_dq=False`` as ours), own state per sender; bytes and distortion;
* **NNCodec, matched distortion**: as before at our qps + k per update, k the smallest offset at which its
  squared error over all float tensors is >= ours (found with ``compress(quantize_only=True)``): bytes at
  equal or worse distortion; and, with a trial coding at k − 1 (better than ours), the bytes interpolated
  (linear in SNR dB) to our SNR: NNCodec's bytes at equal distortion.

NNCodec's own quantizations are offline: their reconstructions are not what the clients hold (the run's error
feedback follows our quantization); each update is compared on the same inputs.

Speed: per update, best process CPU time of ``--repeat`` runs (each from a copy of the state before the
update; ``torch.set_num_threads(1)``, all coders single-threaded) of our encode (levels → bytes) and decode
(bytes → float tensors) vs NNCodec's compress / decompress of the same levels; NNCodec's compress of the
float difference (its own quantization included) separately. Writes ``benchmarks/results/bench_updates.json``
and ``.md``.

    python benchmarks/bench_updates.py [--rounds 3] [--data /work/shared/data/mnist] [--set up_lam=0.1 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_federated import recipe_overrides  # noqa: E402
from environment import environment  # noqa: E402

from ecqx.coding import UpdateDecoder, UpdateEncoder  # noqa: E402
from ecqx.quantized import QuantizedTensor  # noqa: E402
from ecqx.updates import qp_limits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "federated_mnist_lenet5.yaml"
RESULTS = ROOT / "benchmarks" / "results"
# coder options of UpdateEncoder that training/federated leaves at their defaults (NNCodec's defaults as well)
CODER_DEFAULTS = dict(param_opt=True, scan_order=0, cabac_unary_length_minus1=10)
MAX_QP_OFFSET = 64
VARIANTS = ("ours", "nncodec_same_levels", "nncodec_own", "nncodec_matched")


# ------------------------------------------------------------------------------------------------ distortion
def distortion_sums(difference: dict[str, torch.Tensor], reconstruction: dict[str, torch.Tensor]) -> dict:
    """Signal energy, squared error and value count of ``reconstruction`` vs ``difference`` (float64 sums),
    over the weight tensors (floating point, >= 2-D) and over all tensors; a missing reconstruction is 0."""
    sums = {"weights": [0.0, 0.0, 0], "all": [0.0, 0.0, 0]}
    for name, value in difference.items():
        x = value.detach().to(torch.float64).reshape(-1)
        rec = reconstruction.get(name)
        rec = torch.zeros_like(x) if rec is None else torch.as_tensor(rec).to(torch.float64).reshape(-1)
        signal, error = float((x * x).sum()), float(((x - rec) ** 2).sum())
        groups = ("weights", "all") if value.is_floating_point() and value.dim() >= 2 else ("all",)
        for group in groups:
            sums[group][0] += signal
            sums[group][1] += error
            sums[group][2] += x.numel()
    return {g: {"signal": s, "error": e, "count": n} for g, (s, e, n) in sums.items()}


def snr_db(signal: float, error: float) -> float | None:
    """10 log10(signal / error); None (infinite) when the error is 0."""
    if error == 0:
        return None
    return 10.0 * math.log10(signal / error) if signal > 0 else -math.inf


def summarize(sums: dict) -> dict:
    """MSE and SNR (dB) per group of :func:`distortion_sums` (or of their sum)."""
    return {g: {"mse": s["error"] / s["count"] if s["count"] else 0.0,
                "snr_db": snr_db(s["signal"], s["error"])} for g, s in sums.items()}


def add_sums(total: dict | None, sums: dict) -> dict:
    if total is None:
        return copy.deepcopy(sums)
    for g, s in sums.items():
        for key, value in s.items():
            total[g][key] += value
    return total


# ------------------------------------------------------------------------------------------------ NNCodec
def _nnc():
    from nncodec import nnc

    return nnc


def _fresh_state(device_id: int) -> dict:
    return {"parameters": {}, "put_node_depth": {}, "device_id": device_id, "parameter_id": {}}


def nncodec_compress(params: dict[str, np.ndarray], qps: dict[str, int], state: dict, options: dict) -> bytes:
    """``nnc.compress`` of one difference update at ``qps`` per tensor, advancing the encoder ``state``."""
    with contextlib.redirect_stdout(io.StringIO()):
        data = _nnc().compress(params, bitstream_path=None, return_bitstream=True, verbose=False,
                               compress_differences=True, approx_param_base=state, update_base_param=True,
                               qp_per_tensor=qps, **options)
    return bytes(data)


def nncodec_decompress(data: bytes, state: dict) -> dict[str, np.ndarray]:
    """``nnc.decompress`` of one update, advancing the decoder ``state``."""
    with contextlib.redirect_stdout(io.StringIO()):
        values, _ = _nnc().decompress(bytearray(data), verbose=False, approx_param_base=state,
                                      update_base_param=True, return_hls=True)
    return dict(values)


def nncodec_quantize(params: dict[str, np.ndarray], qps: dict[str, int], options: dict) -> dict:
    """NNCodec's reconstruction of ``params`` at ``qps`` without coding (``compress(quantize_only=True)``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return _nnc().compress(params, bitstream_path=None, verbose=False, qp_per_tensor=qps,
                               quantize_only=True, **options)


@dataclass
class NNCodecLane:
    """NNCodec's encoder and decoder state for one sender's sequence of updates."""

    device_id: int
    enc: dict = field(init=False)
    dec: dict = field(init=False)

    def __post_init__(self):
        self.enc, self.dec = _fresh_state(self.device_id), _fresh_state(self.device_id)


@dataclass
class Lane:
    """Everything one sender carries: our encoder/decoder and NNCodec's states per variant."""

    encoder: UpdateEncoder
    decoder: UpdateDecoder
    same: NNCodecLane
    own: NNCodecLane
    matched: NNCodecLane


# ------------------------------------------------------------------------------------------------ helpers
def timed(step, state, repeat: int):
    """Runs ``step(copy of state)`` ``repeat`` times; returns (last result, the advanced copy, best process
    CPU time in seconds)."""
    best, result, trial = math.inf, None, None
    for _ in range(repeat):
        trial = copy.deepcopy(state)
        start = time.process_time()
        result = step(trial)
        best = min(best, time.process_time() - start)
    return result, trial, best


def _numpy_params(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """float32 / int32 arrays (NNCodec's input types), 0-d tensors as shape (1,)."""
    out = {}
    for name, t in tensors.items():
        t = t.reshape(1) if t.dim() == 0 else t
        dtype = np.float32 if t.is_floating_point() else np.int32
        out[name] = np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype))
    return out


def _dequantized(update: dict) -> dict[str, torch.Tensor]:
    return {k: v.dequantize() if isinstance(v, QuantizedTensor) else v.to(torch.int64)
            for k, v in update.items()}


def _qps(update: dict) -> dict[str, int]:
    return {k: int(v.qp) for k, v in update.items() if isinstance(v, QuantizedTensor)}


def _squared_error(params: dict[str, np.ndarray], rec: dict) -> float:
    return float(sum(((params[k].astype(np.float64) - np.asarray(rec[k], dtype=np.float64)) ** 2).sum()
                     for k in params if params[k].dtype == np.float32))


def _shift(qps: dict[str, int], k: int, qp_density: int) -> dict[str, int]:
    low, high = qp_limits(qp_density)
    return {n: min(max(q + k, low), high) for n, q in qps.items()}


def matched_offset(params: dict[str, np.ndarray], qps: dict[str, int], target: float, options: dict,
                   qp_density: int) -> int:
    """Smallest k in ±MAX_QP_OFFSET with NNCodec's squared error at ``qps + k`` (clamped to the stream's qp
    range) >= ``target``."""
    def error(k: int) -> float:
        return _squared_error(params, nncodec_quantize(params, _shift(qps, k, qp_density), options))

    k = 0
    if error(0) < target:
        while k < MAX_QP_OFFSET and error(k) < target:
            k += 1
    else:
        while k > -MAX_QP_OFFSET and error(k - 1) >= target:
            k -= 1
    return k


def interpolate_bytes(coarse: tuple[int, float | None], finer: tuple[int, float | None],
                      target_snr: float | None) -> float:
    """Bytes at ``target_snr`` on the line through (SNR, bytes) of a coarser and a finer coding (dB-linear);
    the coarse point's bytes when the SNRs coincide or are infinite."""
    (b0, s0), (b1, s1) = coarse, finer
    if None in (s0, s1, target_snr) or s1 == s0:
        return float(b0)
    return b0 + (b1 - b0) * (target_snr - s0) / (s1 - s0)


def _finer_point(nnc_lane: NNCodecLane, difference: dict, params: dict, qps: dict, options: dict) -> dict:
    """Bytes (trial encode from a copy of the state, not committed) and distortion of NNCodec one qp step
    finer than the matched point: the other end of the interpolation to our distortion."""
    data = nncodec_compress(params, qps, copy.deepcopy(nnc_lane.enc), options)
    rec = {k: torch.from_numpy(np.asarray(v)) for k, v in nncodec_quantize(params, qps, options).items()}
    return {"bytes": len(data), "distortion": distortion_sums(difference, rec)}


# ------------------------------------------------------------------------------------------------ coding
def _code_ours(lane: Lane, record, repeat: int) -> tuple[dict, dict[str, torch.Tensor]]:
    data, lane.encoder, t_enc = timed(lambda enc: enc.encode(record.update), lane.encoder, repeat)
    if data != record.data:
        raise RuntimeError(f"{record.direction} round {record.round} sender {record.sender}: our re-encoding "
                           "differs from the run's bytes (settings not reproduced)")
    rec, lane.decoder, t_dec = timed(lambda dec: dec.decode(data), lane.decoder, repeat)
    expected = _dequantized(record.update)
    for name, value in rec.items():
        if not torch.equal(value.to(expected[name].dtype), expected[name]):
            raise RuntimeError(f"our decoder's {name!r} differs from the dequantized update")
    rec = {k: rec.get(k, torch.zeros_like(v)) for k, v in expected.items()}
    return {"bytes": len(data), "encode_s": t_enc, "decode_s": t_dec}, rec


def _code_same(lane: Lane, record, options: dict, repeat: int) -> dict:
    params, qps = _numpy_params(_dequantized(record.update)), _qps(record.update)
    data, lane.same.enc, t_enc = timed(lambda st: nncodec_compress(params, qps, st, options), lane.same.enc,
                                       repeat)
    rec, lane.same.dec, t_dec = timed(lambda st: nncodec_decompress(data, st), lane.same.dec, repeat)
    for name, value in rec.items():
        if not np.array_equal(np.asarray(value), params[name]):
            raise RuntimeError(f"NNCodec's decoder returns other values of {name!r} than our levels · Δ")
    return {"bytes": len(data), "identical": data == record.data, "encode_s": t_enc, "decode_s": t_dec}


def _code_own(nnc_lane: NNCodecLane, params: dict, qps: dict, options: dict, repeat: int):
    data, nnc_lane.enc, t_enc = timed(lambda st: nncodec_compress(params, qps, st, options), nnc_lane.enc,
                                      repeat)
    rec, nnc_lane.dec, t_dec = timed(lambda st: nncodec_decompress(data, st), nnc_lane.dec, repeat)
    return {"bytes": len(data), "encode_s": t_enc, "decode_s": t_dec}, rec


def code_record(lane: Lane, record, options: dict, qp_density: int, repeat: int) -> dict:
    """All variants of one update; returns the row of the per-update table."""
    difference = {k: v.detach().cpu() for k, v in record.difference.items()}
    ours, rec_ours = _code_ours(lane, record, repeat)
    ours["distortion"] = distortion_sums(difference, rec_ours)
    same = _code_same(lane, record, options, repeat)
    params, qps = _numpy_params(difference), _qps(record.update)
    own, rec_own = _code_own(lane.own, params, qps, options, repeat)
    own["distortion"] = distortion_sums(difference, rec_own)
    # integer tensors are exact in every variant: the squared error of all tensors is that of the floats
    k = matched_offset(params, qps, ours["distortion"]["all"]["error"], options, qp_density)
    finer = _finer_point(lane.matched, difference, params, _shift(qps, k - 1, qp_density), options)
    matched, rec_matched = _code_own(lane.matched, params, _shift(qps, k, qp_density), options, 1)
    matched["distortion"] = distortion_sums(difference, rec_matched)
    matched["qp_offset"] = k
    matched["finer"] = finer
    matched["bytes_at_equal_distortion"] = interpolate_bytes(
        (matched["bytes"], summarize(matched["distortion"])["all"]["snr_db"]),
        (finer["bytes"], summarize(finer["distortion"])["all"]["snr_db"]),
        summarize(ours["distortion"])["all"]["snr_db"])
    return {"direction": record.direction, "round": record.round, "sender": record.sender,
            "values": sum(v.numel() for v in difference.values()), "qps": qps, "ours": ours,
            "nncodec_same_levels": same, "nncodec_own": own, "nncodec_matched": matched}


def nncodec_options(config) -> dict:
    """The run's coding settings as NNCodec options (besides use_dq, qp_per_tensor and device_id)."""
    return dict(qp_density=config.qp_density, tca=config.tca, row_skipping=config.row_skipping,
                **CODER_DEFAULTS)


def code_all(records: list, config, repeat: int) -> list[dict]:
    """Codes the records in send order, one :class:`Lane` per (direction, sender)."""
    options = dict(nncodec_options(config), use_dq=False)
    lanes: dict[tuple, Lane] = {}
    rows = []
    for record in records:
        if any(getattr(v, "dq", False) for v in record.update.values()):
            raise RuntimeError("an update uses DQ; this benchmark assumes uniform levels (use_dq=False)")
        device = 0 if record.sender is None else int(record.sender)
        key = (record.direction, record.sender)
        if key not in lanes:
            lanes[key] = Lane(UpdateEncoder(qp_density=config.qp_density, tca=config.tca,
                                            row_skipping=config.row_skipping, device_id=device),
                              UpdateDecoder(), NNCodecLane(device), NNCodecLane(device), NNCodecLane(device))
        opts = dict(options, device_id=device)
        rows.append(code_record(lanes[key], record, opts, config.qp_density, repeat))
        r = rows[-1]
        m = r["nncodec_matched"]
        print(f"  {r['direction']:>4} round {r['round']} sender {r['sender']}: ours {r['ours']['bytes']} B, "
              f"NNCodec same levels {r['nncodec_same_levels']['bytes']} B, "
              f"own {r['nncodec_own']['bytes']} B, "
              f"matched {m['bytes']} B (qp {m['qp_offset']:+d}), at equal distortion "
              f"{m['bytes_at_equal_distortion']:.0f} B", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ aggregate
def aggregate(rows: list[dict]) -> dict:
    """Sums over ``rows``: updates, bytes, times and distortion sums per variant; MSE/SNR of the sums."""
    out = {"updates": len(rows), "values": sum(r["values"] for r in rows),
           "identical_bytes": all(r["nncodec_same_levels"]["identical"] for r in rows)}
    for variant in VARIANTS:
        entry = {"bytes": sum(r[variant]["bytes"] for r in rows)}
        for key in ("encode_s", "decode_s"):
            if variant != "nncodec_matched":
                entry[key] = sum(r[variant][key] for r in rows)
        if variant not in ("nncodec_same_levels",):
            sums = None
            for r in rows:
                sums = add_sums(sums, r[variant]["distortion"])
            entry["distortion"] = summarize(sums) if sums else None
        out[variant] = entry
    if rows:
        matched = [r["nncodec_matched"] for r in rows]
        out["nncodec_matched"]["mean_qp_offset"] = sum(m["qp_offset"] for m in matched) / len(rows)
        out["nncodec_matched"]["bytes_at_equal_distortion"] = sum(m["bytes_at_equal_distortion"]
                                                                  for m in matched)
    return out


def ratios(agg: dict) -> dict:
    """NNCodec / ours for bytes and times."""
    ours, same, own = agg["ours"], agg["nncodec_same_levels"], agg["nncodec_own"]

    def div(a, b):
        return a / b if b and a is not None else None

    return {"bytes_same_levels_over_ours": div(same["bytes"], ours["bytes"]),
            "bytes_own_over_ours": div(own["bytes"], ours["bytes"]),
            "bytes_matched_over_ours": div(agg["nncodec_matched"]["bytes"], ours["bytes"]),
            "bytes_equal_distortion_over_ours": div(agg["nncodec_matched"].get("bytes_at_equal_distortion"),
                                                    ours["bytes"]),
            "encode_same_levels_over_ours": div(same["encode_s"], ours["encode_s"]),
            "decode_same_levels_over_ours": div(same["decode_s"], ours["decode_s"]),
            "encode_own_over_ours": div(own["encode_s"], ours["encode_s"]),
            "decode_own_over_ours": div(own["decode_s"], ours["decode_s"])}


def tables(rows: list[dict], clients: int) -> dict:
    """Per round and direction, per direction, and total (communication: downstream stream × clients)."""
    per_round = []
    for rnd in sorted({r["round"] for r in rows}):
        for direction in ("up", "down"):
            sel = [r for r in rows if r["round"] == rnd and r["direction"] == direction]
            if sel:
                per_round.append({"round": rnd, "direction": direction, **aggregate(sel)})
    per_direction = {d: aggregate([r for r in rows if r["direction"] == d]) for d in ("up", "down")}
    for agg in [*per_round, *per_direction.values()]:
        agg["ratios"] = ratios(agg)
    up, down = per_direction["up"], per_direction["down"]
    sent = {v: up[v]["bytes"] + clients * down[v]["bytes"] for v in VARIANTS}
    equal = "bytes_at_equal_distortion"
    sent["nncodec_equal_distortion"] = (up["nncodec_matched"].get(equal, 0)
                                        + clients * down["nncodec_matched"].get(equal, 0))
    return {"per_round": per_round, "per_direction": per_direction,
            "communication_bytes": sent,
            "communication_ratios": {v: b / sent["ours"] for v, b in sent.items() if sent["ours"]}}


# ------------------------------------------------------------------------------------------------ run
def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default=os.environ.get("ECQX_SHARED", "/work/shared") + "/data/mnist")
    p.add_argument("--recipe", type=Path, default=RECIPE)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the recipe's federated: section (repeatable)")
    p.add_argument("--repeat", type=int, default=3, help="timing repetitions per update (best is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: timings on one core)")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_updates")
    return p.parse_args(argv)


def record_run(args: argparse.Namespace):
    """One NNC-coded federated run, parsed and seeded exactly as ``ecqx federate`` does; returns the
    observed update records, the config, the per-round results and the run's wall seconds."""
    from ecqx.training import federated

    argv = ["--config", str(args.recipe), "--data.init_args.root", args.data,
            "--federated.rounds", str(args.rounds), *recipe_overrides(args.set)]
    parser = federated._parser()  # the parser of `ecqx federate` (recipe + overrides)
    cfg = parser.parse_args(argv)
    pl.seed_everything(cfg.federated.seed, workers=True, verbose=False)
    init = parser.instantiate_classes(cfg)
    records = []
    start = time.perf_counter()
    results = federated.run_federated(init.model, init.data, init.federated, observer=records.append)
    return records, init.federated, results, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ report
def _fmt_snr(value) -> str:
    return "∞" if value is None else f"{value:.2f}"


def _fmt_ratio(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _header(report: dict) -> list[str]:
    env, cfg = report["environment"], report["config"]
    accuracy = ", ".join(f"{a:.4f}" for a in report["accuracy"])
    options = ", ".join(f"{k}={v}" for k, v in report["nncodec_options"].items())
    return [
        "# Federated update coding: ours vs NNCodec 2.1.3 on the updates of one run",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}, {env['cpu_count']} logical CPUs, torch threads {env['torch_threads']}  ",
        f"Versions: Python {env['python']}, torch {env['torch']}, numpy {env['numpy']}, "
        f"nncodec {env['nncodec']}, flwr {env['flwr']}, ecqx {env['ecqx']}; {env['date_utc']} UTC  ",
        f"Run: `{report['recipe']}` (overrides: {report['overrides'] or 'none'}), {cfg['clients']} clients, "
        f"{cfg['rounds']} rounds, upstream {cfg['up_bits']}-bit ECQ (Λ {cfg['up_lam']}), downstream "
        f"{cfg['down_bits']}-bit (Λ {cfg['down_lam']}), non-weights {cfg['nonweight_bits']}-bit; "
        f"qp_density {cfg['qp_density']}, TCA {cfg['tca']}, row skipping {cfg['row_skipping']}; run "
        f"{report['run_seconds']:.1f} s, offline coding {report['coding_seconds']:.1f} s; test accuracy per "
        f"round: {accuracy}.",
        "",
        "NNCodec (every variant): `nnc.compress(compress_differences=True, approx_param_base=state, "
        f"update_base_param=True, qp_per_tensor=<qp per tensor>, use_dq=False, {options}, "
        "device_id=<sender>)` with its encoder state carried per sender, "
        "`nnc.decompress(approx_param_base=state, update_base_param=True)` with its decoder state. "
        "*same levels*: input `level · Δ(qp)` at our qp per tensor (codes exactly our integers); *own*: "
        "input the float difference at our qp per tensor; *matched*: the float difference at our qps + k, k "
        "per update the smallest offset at which NNCodec's squared error is ≥ ours; *at equal distortion*: "
        "bytes interpolated (linear in SNR dB) between k and k − 1 to our SNR. NNCodec's own quantizations "
        "are offline comparisons on the same inputs (the clients hold our reconstruction). Round 1's "
        f"downstream is the initial model (initial_model: {cfg.get('initial_model', 'nnc')}), not an update: "
        "not compared.",
        "",
    ]


def _rows(tables_: dict) -> list[tuple[str, dict]]:
    rows = [(str(a["round"]), a) for a in tables_["per_round"]]
    for d in ("up", "down"):
        if tables_["per_direction"][d]["updates"]:
            rows.append(("total", dict(tables_["per_direction"][d], direction=d)))
    return rows


def _bytes_table(report: dict) -> list[str]:
    t, clients = report["tables"], report["config"]["clients"]
    lines = [
        "## Bytes per round (upstream: sum over clients; downstream: the one stream every client receives)",
        "",
        "| round | dir | updates | ours | NNCodec same levels | identical | NNCodec own (our qps) "
        "| own / ours | NNCodec matched | matched / ours | mean k | NNCodec at equal distortion "
        "| equal-distortion / ours |",
        "|---:|---|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, a in _rows(t):
        r, m = a["ratios"], a["nncodec_matched"]
        lines.append(
            f"| {label} | {a['direction']} | {a['updates']} | {a['ours']['bytes']:,} | "
            f"{a['nncodec_same_levels']['bytes']:,} | {'yes' if a['identical_bytes'] else 'NO'} | "
            f"{a['nncodec_own']['bytes']:,} | {_fmt_ratio(r['bytes_own_over_ours'])} | {m['bytes']:,} | "
            f"{_fmt_ratio(r['bytes_matched_over_ours'])} | {m.get('mean_qp_offset', 0):+.2f} | "
            f"{m.get('bytes_at_equal_distortion', 0):,.0f} | "
            f"{_fmt_ratio(r['bytes_equal_distortion_over_ours'])} |")
    sent, sr = t["communication_bytes"], t["communication_ratios"]
    names = {"ours": "ours", "nncodec_same_levels": "NNCodec same levels",
             "nncodec_own": "NNCodec own quantization at our qps", "nncodec_matched": "NNCodec matched",
             "nncodec_equal_distortion": "NNCodec at equal distortion (interpolated)"}
    parts = [f"{names[v]} {b:,.0f} B ({_fmt_ratio(sr.get(v))}×)" for v, b in sent.items()]
    total = f"Total communication (upstream + downstream × {clients} clients): " + "; ".join(parts) + "."
    return [*lines, "", total, ""]


def _distortion_table(report: dict) -> list[str]:
    lines = [
        "## Distortion vs the float difference (SNR dB over weight tensors / over all tensors, MSE over all; "
        "summed over the updates)",
        "",
        "| round | dir | ours SNR w | ours SNR all | ours MSE | NNCodec own SNR w | own SNR all | own MSE "
        "| matched SNR w | matched SNR all | matched MSE |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, a in _rows(report["tables"]):
        cells = []
        for v in ("ours", "nncodec_own", "nncodec_matched"):
            d = a[v]["distortion"]
            cells += [_fmt_snr(d["weights"]["snr_db"]), _fmt_snr(d["all"]["snr_db"]),
                      f"{d['all']['mse']:.3e}"]
        lines.append(f"| {label} | {a['direction']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _speed_table(report: dict) -> list[str]:
    lines = [
        f"## Speed (ms per update: best process CPU time of {report['repeat']} runs, each from a copy of the "
        "state before the update)",
        "",
        "| dir | updates | values/update | ours encode | NNCodec encode (same levels) | × | ours decode "
        "| NNCodec decode | × | NNCodec encode incl. own quantization | × | NNCodec decode (own) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in ("up", "down"):
        a = report["tables"]["per_direction"][d]
        if not a["updates"]:
            continue
        n, r = a["updates"], a["ratios"]

        def ms(variant: str, key: str, n=n, a=a) -> str:
            return f"{1e3 * a[variant][key] / n:.2f}"

        lines.append(
            f"| {d} | {n} | {a['values'] // n:,} | {ms('ours', 'encode_s')} | "
            f"{ms('nncodec_same_levels', 'encode_s')} | {r['encode_same_levels_over_ours']:.1f} | "
            f"{ms('ours', 'decode_s')} | {ms('nncodec_same_levels', 'decode_s')} | "
            f"{r['decode_same_levels_over_ours']:.1f} | {ms('nncodec_own', 'encode_s')} | "
            f"{r['encode_own_over_ours']:.1f} | {ms('nncodec_own', 'decode_s')} |")
    return lines + [
        "",
        "× = NNCodec time / our time. Encode = levels → bytes (ours: `UpdateEncoder.encode` of the quantized "
        "update; NNCodec: `compress` of `level · Δ`, including its uniform rounding, which returns exactly "
        "the levels); decode = bytes → float tensors (`UpdateDecoder.decode` / `decompress`).",
        "",
    ]


def markdown(report: dict) -> str:
    parts = (_header, _bytes_table, _distortion_table, _speed_table)
    return "\n".join(line for part in parts for line in part(report))


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def main(argv=None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    records, config, results, run_seconds = record_run(args)
    print(f"run: {len(records)} updates in {run_seconds:.1f} s; coding them offline", flush=True)
    start = time.perf_counter()
    rows = code_all(records, config, args.repeat)
    coding_seconds = time.perf_counter() - start
    options = nncodec_options(config)
    report = {
        "environment": environment(args.threads, numpy=np.__version__, nncodec=_version("nncodec"),
                                   flwr=_version("flwr")),
        "recipe": str(args.recipe.resolve().relative_to(ROOT)) if args.recipe.resolve().is_relative_to(ROOT)
        else str(args.recipe),
        "overrides": args.set, "config": asdict(config), "repeat": args.repeat,
        "nncodec_options": options, "run_seconds": run_seconds, "coding_seconds": coding_seconds,
        "accuracy": [r.accuracy for r in results],
        "run_bytes": [{"round": r.round, "bytes_up": r.bytes_up, "bytes_down": r.bytes_down}
                      for r in results],
        "tables": tables(rows, config.clients), "updates": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    if not all(a["identical_bytes"] for a in report["tables"]["per_direction"].values()):
        print("ERROR: NNCodec's bytes for the same levels differ from ours", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
