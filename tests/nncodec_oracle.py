"""Test oracle: NNCodec 2.1.3 (the reference NNC codec) driven through its own Python API.

Spec nnc-bitstream.md §14 describes the API used here; §14.5 how to feed it integers we chose ourselves.
NNCodec is installed through the ``dev`` extra, so the conformance tests always run it (never skipped).

Three kinds of helpers:

* :func:`quantize_encode` — NNCodec quantizes float tensors itself (uniform rounding or its 8-state
  trellis) and writes the stream; returns the bytes, its encoder-side integers, the qp it used, and what
  its own decoder returns (values and integers).
* :func:`encode_levels` / :func:`encode_int` — NNCodec's coder and high-level-syntax writer fed with
  integers we supply (PT_FLOAT with our qp, or PT_INT for raw integers).
* :func:`decode_values` / :func:`decode_levels` — NNCodec's decoder on any stream.

Everything works on dicts of numpy arrays; nothing is written to disk.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np
from nncodec import nnc, nnc_core

NNCODEC_VERSION = "2.1.3"

_PERFORMANCE_FLAG_NAMES = (
    "mps_sparsification_flag", "lps_sparsification_flag", "mps_pruning_flag", "lps_pruning_flag",
    "mps_unification_flag", "lps_unification_flag", "mps_decomposition_performance_map_flag",
    "lps_decomposition_performance_map_flag",
)


@dataclass
class OracleTensor:
    """What NNCodec's decoder reports for one tensor (before reconstruction)."""

    levels: np.ndarray  # int32 reconstruction indices r (DQ) / levels / codebook indices / raw ints
    qp: int | None  # None for NNR_PT_INT
    dq: int
    codebook: np.ndarray | None = None  # int codebook entries when the tensor used a codebook
    codebook_zero_offset: int | None = None


@dataclass
class OracleStream:
    """Result of :func:`quantize_encode`."""

    data: bytes
    encoder_levels: dict[str, np.ndarray]  # NNCodec's encoder-side integers (spec §11.5)
    qps: dict[str, int | None]  # qp NNCodec actually used (after its overflow fallback); None for ints
    dqs: dict[str, int]
    values: dict[str, np.ndarray] = field(default_factory=dict)  # nnc.decompress output
    decoded: dict[str, OracleTensor] = field(default_factory=dict)  # nnc_core.coder.decode output


@contextlib.contextmanager
def _quiet():
    """NNCodec prints progress lines on stdout; keep the test output clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _enc_info(*, profile: int, param_opt: bool, row_skipping: bool, N1: int) -> dict:
    return {
        "cabac_unary_length_minus1": int(N1),
        "param_opt_flag": bool(param_opt),
        "partial_data_counter": 0,
        "general_profile_idc": int(profile),
        "node_id_present_flag": 1,
        "device_id": 0,
        "mps_parent_signalling_enabled_flag": 0,
        "parent_node_id_present_flag": 0,
        "temporal_context_modeling_flag": 0,
        "row_skip_enabled_flag": 1 if row_skipping else 0,
        "pre_signalling": 0,
    }


def _as_params(tensors: dict[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    params = {}
    for name, value in tensors.items():
        arr = np.ascontiguousarray(np.asarray(value), dtype=dtype)
        if arr.ndim == 0:
            raise ValueError(f"tensor {name!r}: NNCodec cannot code 0-d arrays (spec §2.11); reshape to (1,)")
        params[name] = arr
    return params


def quantize_encode(
    tensors: dict[str, np.ndarray],
    *,
    qp: int | dict[str, int],
    qp_density: int = 2,
    dq: bool = True,
    scan_order: int = 0,
    row_skipping: bool = False,
    param_opt: bool = True,
    N1: int = 10,
    codebook_mode: int = 0,
) -> OracleStream:
    """Quantize float32 tensors with NNCodec and encode them exactly as ``nnc.compress`` does.

    ``qp`` is one value for every tensor (1-D included) or a dict per tensor. ``codebook_mode`` 1/2 selects
    NNCodec's codebook approximator (then ``dq`` is ignored by NNCodec, spec §12.6).
    """
    params = _as_params(tensors, np.float32)
    qp_per_tensor = {k: int(qp[k] if isinstance(qp, dict) else qp) for k in params}
    if codebook_mode:
        # the codebook path is only reachable through nnc.compress; it does not expose its integers,
        # so take them from its own decoder
        with _quiet():
            data = bytes(nnc.compress(
                params, bitstream_path=None, return_bitstream=True, verbose=False, qp_density=qp_density,
                qp=-38, qp_per_tensor=qp_per_tensor, use_dq=dq, codebook_mode=codebook_mode,
                scan_order=scan_order, param_opt=param_opt, cabac_unary_length_minus1=N1,
                row_skipping=row_skipping))
        decoded = decode_levels(data)
        enc_levels = {k: v.levels for k, v in decoded.items()}
        qps = {k: v.qp for k, v in decoded.items()}
        dqs = {k: v.dq for k, v in decoded.items()}
    else:
        model = nnc_core.nnr_model.NNRModel(params)
        approx_data = nnc_core.approximator.init_approx_data(
            params, model.model_info, qp_density=qp_density, scan_order=scan_order)
        approx_info = nnc_core.approximator.ApproxInfo(
            approx_data, model.model_info, "uniform", 0, -38, False, not dq, N1, 0,
            nonweight_qp=None, qp_per_tensor=qp_per_tensor)
        enc_info = _enc_info(profile=1, param_opt=param_opt, row_skipping=row_skipping, N1=N1)
        with _quiet():
            approx_enc = nnc_core.approximator.approx(
                approx_info.approx_info, model.model_info, approx_data, enc_info)
            bs, _ = nnc_core.coder.encode(
                enc_info=enc_info, model_info=model.model_info, approx_data=approx_enc)
        data = bytes(bs)
        enc_levels = {k: np.array(approx_enc["parameters"][k], dtype=np.int32, copy=True) for k in params}
        qps = {k: int(approx_enc["qp"][k]) for k in params}
        dqs = {k: int(approx_enc["dq_flag"][k]) for k in params}
    return OracleStream(data=data, encoder_levels=enc_levels, qps=qps, dqs=dqs,
                        values=decode_values(data), decoded=decode_levels(data))


def compress_default(tensors: dict[str, np.ndarray], **kwargs) -> bytes:
    """``nnc.compress`` itself (float32 and/or int32 arrays) with NNCodec's own defaults unless overridden."""
    params = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with _quiet():
        data = nnc.compress(params, bitstream_path=None, return_bitstream=True, verbose=False, **kwargs)
    return bytes(data)


def encode_levels(
    levels: dict[str, np.ndarray],
    qps: dict[str, int | None],
    dqs: dict[str, int] | None = None,
    *,
    qp_density: int = 2,
    N1: int = 10,
    param_opt: bool = True,
    row_skipping: bool = False,
    scan_order: int = 0,
    profile: int = 1,
) -> bytes:
    """Encode given integers with NNCodec's coder + HLS writer (spec §14.5b).

    ``qps[name] is None`` → NNR_PT_INT (raw integers, no qp, no DQ); otherwise PT_FLOAT with that qp and
    ``dqs[name]`` (for DQ the integers are reconstruction indices r and must be DQ-consistent, §11.2).
    """
    params = _as_params(levels, np.int32)
    dqs = dqs or {}
    model = nnc_core.nnr_model.NNRModel(params)
    approx_data = {
        "approx_method": {}, "qp_density": np.int32(qp_density), "qp": {}, "dq_flag": {},
        "decomposition_rank": {}, "g_number_of_rows": {}, "scan_order": {}, "parameters": params,
        "compressed_parameter_types": {}, "codebooks": {}, "codebooks_egk": {}, "codebook_zero_offsets": {},
    }
    for name, arr in params.items():
        if arr.ndim > 1:
            approx_data["scan_order"][name] = np.int32(scan_order)
        if qps[name] is None:
            approx_data["approx_method"][name] = "skip"
            approx_data["dq_flag"][name] = 0
        else:
            approx_data["approx_method"][name] = "uniform"
            approx_data["qp"][name] = np.int32(qps[name])
            approx_data["dq_flag"][name] = int(dqs.get(name, 0))
    enc_info = _enc_info(profile=profile, param_opt=param_opt, row_skipping=row_skipping, N1=N1)
    with _quiet():
        bs, _ = nnc_core.coder.encode(enc_info=enc_info, model_info=model.model_info, approx_data=approx_data)
    return bytes(bs)


def encode_int(tensors: dict[str, np.ndarray], **kwargs) -> bytes:
    """Raw integer tensors as NNR_PT_INT through NNCodec's coder (options as :func:`encode_levels`)."""
    return encode_levels(tensors, {k: None for k in tensors}, **kwargs)


def decode_values(data: bytes) -> dict[str, np.ndarray]:
    """``nnc.decompress``: float32 (uniform), float64 (codebook) or int32 (PT_INT) arrays by name."""
    with _quiet():
        return dict(nnc.decompress(bytearray(data), verbose=False))


def _empty_model_info() -> dict:
    return {
        "parameter_type": {}, "parameter_dimensions": {}, "parameter_index": {}, "block_identifier": {},
        "topology_storage_format": None, "topology_compression_format": None,
        "performance_maps": {"mps": {}, "lps": {}},
        "performance_map_flags": {name: {} for name in _PERFORMANCE_FLAG_NAMES},
    }


def decode_levels(data: bytes) -> dict[str, OracleTensor]:
    """NNCodec's decoder stopped before reconstruction: integers, qp, dq flag and codebook per tensor."""
    with _quiet():
        ad = nnc_core.coder.decode(bytearray(data), _empty_model_info())
    out = {}
    for name, levels in ad["parameters"].items():
        method = ad["approx_method"].get(name)
        is_int = method == "skip" or name not in ad["qp"]
        codebook = ad.get("codebooks", {}).get(name)
        out[name] = OracleTensor(
            levels=np.array(levels, dtype=np.int32, copy=True),
            qp=None if is_int else int(ad["qp"][name]),
            dq=int(ad["dq_flag"].get(name, 0)),
            codebook=None if codebook is None else np.asarray(codebook).astype(np.int64),
            codebook_zero_offset=(None if codebook is None
                                  else int(ad["codebook_zero_offsets"][name])),
        )
    return out


def step_size(qp: int, qp_density: int = 2) -> np.float32:
    """Spec §12.1, written independently of the product code (float32 result)."""
    k = 1 << qp_density
    mul = k + (qp & (k - 1))
    return np.float32(mul * 2.0 ** ((qp >> qp_density) - qp_density))


def reconstruct(levels: np.ndarray, qp: int, qp_density: int = 2) -> np.ndarray:
    """Spec §12.3: float32(Δ) × float32(r), one float32 rounding."""
    return (step_size(qp, qp_density) * np.asarray(levels).astype(np.float32)).astype(np.float32)


def encode_payload(
    levels: np.ndarray,
    *,
    qp_delta: int | None = None,
    qp_density: int = 2,
    dq: int = 0,
    scan_order: int = 0,
    profile: int = 1,
    row_skipping: bool = False,
    param_opt: bool = True,
    N1: int = 10,
) -> bytes:
    """One NDU's CABAC codeword (no HLS) from NNCodec's pybind coder, exactly as its coder calls it.

    ``qp_delta`` (qp − mps_quantization_parameter) is written first for PT_FLOAT payloads; ``None`` gives a
    PT_INT payload. ``levels`` keeps its shape: rows = shape[0].
    """
    from nncodec.extensions.deepCABAC import Encoder
    from nncodec.nnc_core.hdsp.hdsp_tool import HDSP_OPTS_OFF

    arr = np.ascontiguousarray(levels, dtype=np.int32)
    enc = Encoder()
    if qp_delta is not None:
        enc.iae_v(6 + qp_density, int(qp_delta))
    enc.initCtxModels(N1 + 1, bool(param_opt))
    effective_scan = scan_order if arr.ndim > 1 else 0
    zero_rows = np.zeros(arr.shape[0], dtype=np.int32)
    if profile == 1 and arr.ndim >= 2:
        zero_rows[:] = [0 if np.any(row) else 1 for row in arr]
    row_skip = int(row_skipping) if profile == 1 else 0
    enc.encodeLayer(arr, int(dq), effective_scan, int(profile), 0, row_skip, zero_rows, *HDSP_OPTS_OFF(),
                    0, 0)
    return bytes(enc.finish().tobytes())


_ISOLATED_WORKER = r"""
import sys, pickle
import numpy as np
sys.path.insert(0, sys.argv[1])
import nncodec_oracle as O
streams, expected, start = pickle.load(open(sys.argv[2], "rb"))
with open(sys.argv[3], "a") as log:
    for i in range(start, len(streams)):
        try:
            got = O.decode_levels(streams[i])
            same = set(got) == set(expected)
            same = same and all(np.array_equal(got[k].levels, v) for k, v in expected.items())
            status = "same" if same else "different"
        except (Exception, SystemExit):
            status = "error"
        log.write(f"{i} {status}\n")
        log.flush()
"""


def decode_isolated(streams: list[bytes], expected: dict[str, np.ndarray],
                    timeout: float = 300.0) -> list[str]:
    """NNCodec's decoder on possibly corrupt streams, in a child process (NNCodec itself can crash on them).

    Returns one status per stream: "same" (decoded to ``expected`` integers), "different", "error" (a Python
    exception) or "crash" (the process died; the worker restarts after the crashing stream).
    """
    import os
    import pickle
    import subprocess
    import sys
    import tempfile

    statuses: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "log.txt")
        start = 0
        while start < len(streams):
            job = os.path.join(tmp, "job.pkl")
            with open(job, "wb") as f:
                pickle.dump((streams, expected, start), f)
            proc = subprocess.run([sys.executable, "-c", _ISOLATED_WORKER, os.path.dirname(__file__), job,
                                   log_path], capture_output=True, timeout=timeout)
            with open(log_path) as f:
                for line in f:
                    idx, status = line.split()
                    statuses[int(idx)] = status
            done = max(statuses, default=-1) + 1
            if proc.returncode == 0 and done >= len(streams):
                break
            statuses[done] = "crash"
            start = done + 1
    return [statuses[i] for i in range(len(streams))]
