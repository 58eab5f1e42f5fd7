"""encode / decode of named integer tensors as NNC bitstreams (the public codec API)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ecqx.coding import hls
from ecqx.coding.errors import BitstreamError
from ecqx.coding.hls import NduHeader, PayloadType
from ecqx.coding.native import load_native
from ecqx.coding.quant import MAX_QP_DENSITY, step_size

log = logging.getLogger(__name__)

DEFAULT_QP_DENSITY = 2
QP_BASE_RANGE = (-(2**12), 2**12 - 1)
INT32_RANGE = (-(2**31) + 1, 2**31 - 1)  # -2^31 cannot be coded (spec §7.1)
# A context-coded bin costs at least ~0.01 bit, so one payload byte describes at most ~800 coded positions
# (or row-skip flags); stream headers claiming more are rejected before any allocation.
MAX_POSITIONS_PER_BYTE = 1024
PAYLOAD_SLACK_BYTES = 8
DEFAULT_MAX_ELEMENTS = 1 << 28
# codebooks up to this size get every zero offset tried (one payload encode each), larger ones two guesses
MAX_EXHAUSTIVE_CODEBOOK = 64


@dataclass
class DecodedTensor:
    """One decoded tensor: integer levels (multiples of the step) and the parameters from the stream."""

    name: str
    levels: torch.Tensor | None
    qp: int | None
    qp_density: int | None
    dq: bool
    codebook: torch.Tensor | None
    payload_type: PayloadType
    shape: tuple[int, ...]
    unit_bytes: int
    raw_values: torch.Tensor | None = None
    decompressed_data_format: int | None = None

    @property
    def step(self) -> float | None:
        return None if self.qp is None else step_size(self.qp, self.qp_density)

    def dequantize(self) -> torch.Tensor:
        """float32 reconstruction for PT_FLOAT (and raw floats), the int32 values for PT_INT."""
        if self.payload_type == PayloadType.NNR_PT_RAW_FLOAT:
            return self.raw_values
        if self.payload_type == PayloadType.NNR_PT_INT:
            return self.levels
        if self.levels.dtype == torch.int32:
            out = torch.empty(self.levels.shape, dtype=torch.float32)
            load_native().levels_to_float(self.levels.contiguous(), out, self.step)  # one fused pass
            return out
        values = self.levels.to(torch.float32)
        return values.mul_(torch.tensor(self.step, dtype=torch.float32))


@dataclass
class _Item:
    name: str
    levels: torch.Tensor  # int32, CPU, contiguous
    shape: tuple[int, ...]
    payload_type: PayloadType
    qp: int | None = None
    qp_density: int | None = None
    dq: bool = False
    codebook: list[int] | None = None
    decompressed_data_format: int | None = None


# ------------------------------------------------------------------------------------------------ inputs
def _int32_levels(name: str, value: object, dq: bool = False) -> torch.Tensor:
    """Integer torch/numpy data as an int32 CPU contiguous tensor (explicit copy when needed).

    -2^31 is only codable as a DQ reconstruction index (the coded level is r / 2); plain levels exclude it.
    """
    lowest = -(2**31) if dq else INT32_RANGE[0]
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_):
            raise TypeError(f"tensor {name!r}: levels must be integers, got numpy dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value).astype(np.int64, copy=False))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"tensor {name!r}: expected a torch.Tensor or numpy array, "
                        f"got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex():
        raise TypeError(f"tensor {name!r}: levels must have an integer dtype, got {value.dtype}")
    if value.numel() == 0:
        raise ValueError(f"tensor {name!r} is empty; NNC cannot code tensors with a zero dimension")
    if value.device.type == "meta":
        raise ValueError(f"tensor {name!r} is on the meta device and has no data to encode")
    t = value.detach().to("cpu")  # explicit copy of non-CPU tensors
    if t.dtype != torch.int32:
        wide = t.to(torch.int64)
        lo, hi = int(wide.min()), int(wide.max())
        if lo < lowest or hi > INT32_RANGE[1]:
            raise ValueError(f"tensor {name!r}: values {lo}..{hi} exceed the codable range "
                             f"{lowest}..{INT32_RANGE[1]}")
        t = wide.to(torch.int32)
    elif int(t.min()) < lowest:
        raise ValueError(f"tensor {name!r}: value -2147483648 cannot be coded (allowed {INT32_RANGE[0]}.."
                         f"{INT32_RANGE[1]})")
    return t.contiguous()


def _as_int(name: str, what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            return int(value)
        raise TypeError(f"tensor {name!r}: {what} must be an int, got {value!r}")
    return int(value)


def _codebook_list(name: str, codebook: object) -> list[int]:
    if isinstance(codebook, np.ndarray):
        codebook = torch.from_numpy(codebook)
    if not isinstance(codebook, torch.Tensor) or codebook.dim() != 1 or codebook.is_floating_point():
        raise TypeError(f"tensor {name!r}: codebook must be a 1-D integer tensor")
    values = [int(v) for v in codebook.tolist()]
    if not values:
        raise ValueError(f"tensor {name!r}: codebook is empty")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"tensor {name!r}: codebook must be strictly increasing, got {values}")
    if values[0] < INT32_RANGE[0] or values[-1] > INT32_RANGE[1]:
        raise ValueError(f"tensor {name!r}: codebook values exceed the int32 range")
    return values


def _description_item(name: str, d: object) -> _Item:
    dq = getattr(d, "dq", False)
    if not isinstance(dq, (bool, int, np.bool_, np.integer)) or dq not in (0, 1):
        raise TypeError(f"tensor {name!r}: dq must be a bool (or 0/1), got {dq!r}")
    levels = _int32_levels(name, d.levels, dq=bool(dq))
    qp = _as_int(name, "qp", d.qp)
    qp_density = _as_int(name, "qp_density", getattr(d, "qp_density", DEFAULT_QP_DENSITY))
    if not 0 <= qp_density <= MAX_QP_DENSITY:
        raise ValueError(f"tensor {name!r}: qp_density must be 0..{MAX_QP_DENSITY}, got {qp_density}")
    step_size(qp, qp_density)
    codebook = getattr(d, "codebook", None)
    cb = None if codebook is None else _codebook_list(name, codebook)
    if cb is not None and dq:
        raise ValueError(f"tensor {name!r}: codebook tensors cannot use dependent quantization (dq=True)")
    return _Item(name, levels, tuple(levels.shape), PayloadType.NNR_PT_FLOAT, qp, qp_density, bool(dq), cb)


def _to_item(name: object, value: object) -> _Item:
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {name!r}")
    if "\x00" in name:
        raise ValueError(f"tensor name {name!r} must not contain NUL characters")
    if hasattr(value, "levels") and hasattr(value, "qp"):
        return _description_item(name, value)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            raise TypeError(f"tensor {name!r} is a float tensor without levels; quantize it first "
                            "(ecqx.coding.quantize_tensor) or pass an integer tensor for lossless coding")
        levels = _int32_levels(name, value)
        return _Item(name, levels, tuple(levels.shape), PayloadType.NNR_PT_INT)
    raise TypeError(f"tensor {name!r}: expected a quantized tensor description (levels, qp, ...) "
                    f"or an integer tensor, got {type(value).__name__}")


# ------------------------------------------------------------------------------------------------ encode
def _check_options(profile: int, scan_order: int, cabac_unary_length_minus1: int) -> None:
    if profile not in (0, 1) or isinstance(profile, bool):
        raise ValueError(f"profile must be 0 or 1, got {profile!r}")
    if scan_order not in range(5) or isinstance(scan_order, bool):
        raise ValueError(f"scan_order must be one of 0, 1, 2, 3, 4, got {scan_order!r}")
    if cabac_unary_length_minus1 not in range(256) or isinstance(cabac_unary_length_minus1, bool):
        raise ValueError(f"cabac_unary_length_minus1 must be 0..255, got {cabac_unary_length_minus1!r}")


def _unify_qp_density(items: list[_Item]) -> int:
    floats = [it for it in items if it.payload_type == PayloadType.NNR_PT_FLOAT]
    density = max((it.qp_density for it in floats), default=DEFAULT_QP_DENSITY)
    for it in floats:
        it.qp = it.qp << (density - it.qp_density)
        it.qp_density = density
    return density


def _choose_qp_base(items: list[_Item], qp_density: int) -> int:
    qps = [it.qp for it in items if it.payload_type == PayloadType.NNR_PT_FLOAT]
    half = 1 << (5 + qp_density)
    if not qps or (min(qps) >= -half and max(qps) < half):
        return 0  # NNCodec's choice
    lo, hi = min(qps), max(qps)
    if hi - lo >= 2 * half:
        raise ValueError(f"qp values {lo}..{hi} span more than the {2 * half} values one stream can carry "
                         f"with qp_density {qp_density} (qp delta is {6 + qp_density} bits)")
    base = (lo + hi + 1) // 2
    if not QP_BASE_RANGE[0] <= base <= QP_BASE_RANGE[1]:
        raise ValueError(f"qp values around {base} exceed the mps_quantization_parameter range "
                         f"{QP_BASE_RANGE}")
    return base


def _geometry(shape: tuple[int, ...]) -> tuple[int, int]:
    count = math.prod(shape)
    width = math.prod(shape[1:]) if len(shape) > 1 else 1
    return count // width, width


def _header_scan_order(shape: tuple[int, ...], scan_order: int) -> int:
    """Scan order written for a tensor: 0 where the coder would fall back to scan 0 (spec §9.5)."""
    rows, width = _geometry(shape)
    return scan_order if len(shape) > 1 and rows > 1 and width > 1 else 0


def _encode_payload(levels: torch.Tensor, shape, scan_order, dq, n1, profile, cb_size, cb_zero, has_qp,
                    qp_bits, row_skipping, param_opt, qp_delta):
    rows, width = _geometry(shape)
    return load_native().encode_payload(levels, rows, width, scan_order, dq, n1 + 1, profile, cb_size,
                                        cb_zero, has_qp, qp_bits, row_skipping, param_opt, qp_delta)


def _cheapest_egk(codebook: list[int], zero_offset: int) -> int:
    return min(range(16), key=lambda k: hls.codebook_bits(codebook, zero_offset, k))


def _encode_codebook_item(it: _Item, header: NduHeader, common: dict) -> tuple[bytes, list]:
    cb = torch.tensor(it.codebook, dtype=torch.int64)
    flat = it.levels.reshape(-1).to(torch.int64)
    idx = torch.searchsorted(cb, flat)
    idx_clamped = idx.clamp(max=len(it.codebook) - 1)
    if not torch.equal(cb[idx_clamped], flat):
        bad = flat[cb[idx_clamped] != flat][0].item()
        raise ValueError(f"tensor {it.name!r}: level {bad} is not an entry of its codebook {it.codebook}")
    if len(it.codebook) <= MAX_EXHAUSTIVE_CODEBOOK:
        # like NNCodec, try every zero offset; judged by the complete NDU size, so never larger than NNCodec's
        candidates = list(range(len(it.codebook)))
    else:
        counts = torch.bincount(idx_clamped, minlength=len(it.codebook))
        candidates = [int(counts.argmax())]
        if 0 in it.codebook and it.codebook.index(0) not in candidates:
            candidates.append(it.codebook.index(0))
    best = None
    header.codebook = it.codebook
    for zero in candidates:
        coded = (idx_clamped - zero).to(torch.int32).reshape(it.shape).contiguous()
        payload, eps = _encode_payload(coded, it.shape, cb_size=len(it.codebook), cb_zero=zero, **common)
        header.codebook_zero_offset = zero
        header.codebook_egk = _cheapest_egk(it.codebook, zero)
        header.entry_points = [tuple(e) for e in eps]
        size = len(hls.write_ndu(header, common["profile"], payload))
        if best is None or size < best[0]:
            best = (size, payload, eps, zero)
    header.codebook_zero_offset = best[3]
    header.codebook_egk = _cheapest_egk(it.codebook, best[3])
    return best[1], best[2]


def _check_workers(workers: object) -> int:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an int >= 1 (tensors coded in parallel threads), got {workers!r}")
    return int(workers)


def _map_in_order(fn, items: list, workers: int) -> list:
    """fn over items, in order; with workers > 1 in a thread pool (the native coder releases the GIL, and
    every tensor is an independent NDU, so the bytes do not depend on the number of workers)."""
    if workers == 1 or len(items) < 2:
        return [fn(it) for it in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def _encode_items(items: list[_Item], *, profile: int, scan_order: int, row_skipping: bool, param_opt: bool,
                  cabac_unary_length_minus1: int, topology_unit: bool, topology_data: str = "",
                  workers: int = 1) -> bytes:
    _check_options(profile, scan_order, cabac_unary_length_minus1)
    workers = _check_workers(workers)
    qp_density = _unify_qp_density(items)
    qp_base = _choose_qp_base(items, qp_density)
    parts = [hls.write_start_unit(profile),
             hls.write_mps(profile, qp_density, qp_base, topology_carriage=topology_unit)]
    if topology_unit:
        parts.append(hls.write_tpl(topology_data))

    def encode_ndu(indexed: tuple[int, _Item]) -> bytes:
        index, it = indexed
        so = _header_scan_order(it.shape, scan_order)
        is_float = it.payload_type == PayloadType.NNR_PT_FLOAT
        header = NduHeader(name=it.name, payload_type=it.payload_type, dims=it.shape, dq=it.dq,
                           cabac_unary_length_minus1=cabac_unary_length_minus1, scan_order=so,
                           parameter_id=index, decompressed_data_format=it.decompressed_data_format)
        common = dict(scan_order=so, dq=it.dq, n1=cabac_unary_length_minus1, profile=profile,
                      has_qp=is_float, qp_bits=6 + qp_density, row_skipping=bool(row_skipping),
                      param_opt=bool(param_opt), qp_delta=(it.qp - qp_base) if is_float else 0)
        if it.codebook is not None:
            payload, eps = _encode_codebook_item(it, header, common)
        else:
            payload, eps = _encode_payload(it.levels, it.shape, cb_size=0, cb_zero=0, **common)
        header.entry_points = [tuple(e) for e in eps]
        if hls.num_entry_points(it.shape, so) != len(header.entry_points):
            raise AssertionError("entry point count mismatch")  # coder invariant, not user input
        return hls.write_ndu(header, profile, payload)

    parts += _map_in_order(encode_ndu, list(enumerate(items)), workers)
    return b"".join(parts)


def encode(tensors: Mapping[str, object], *, profile: int = 1, scan_order: int = 0, row_skipping: bool = True,
           param_opt: bool = True, cabac_unary_length_minus1: int = 10, topology_unit: bool = True,
           workers: int = 1) -> bytes:
    """Encodes named tensors into one NNC bitstream.

    Values are quantized tensor descriptions (attributes levels, qp, qp_density, codebook, optional dq)
    coded as NNR_PT_FLOAT, or integer torch tensors / numpy arrays coded losslessly as NNR_PT_INT. Tensors
    with different qp_density are converted exactly to the largest one. Deterministic: same input, same bytes
    (whatever `workers`, the number of threads coding tensors in parallel; e.g. ``os.cpu_count()``).
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of names to tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError("tensors is empty; nothing to encode")
    items = [_to_item(name, value) for name, value in tensors.items()]
    return _encode_items(items, profile=profile, scan_order=scan_order, row_skipping=row_skipping,
                         param_opt=param_opt, cabac_unary_length_minus1=cabac_unary_length_minus1,
                         topology_unit=topology_unit, workers=workers)


# ------------------------------------------------------------------------------------------------ decode
def _check_size(h: NduHeader, payload_len: int, max_elements: int) -> tuple[int, int]:
    rows, width = _geometry(h.dims)
    count = rows * width
    if count > max_elements:
        raise BitstreamError(f"tensor {h.name!r}: {count} elements (dims {h.dims}) exceed the decoder limit "
                             f"of {max_elements} (decode(..., max_elements=...) raises it)")
    budget = MAX_POSITIONS_PER_BYTE * (payload_len + PAYLOAD_SLACK_BYTES)
    row_skip_possible = width > 1 and count > width
    if (rows if row_skip_possible else count) > budget:
        raise BitstreamError(f"tensor {h.name!r}: dims {h.dims} cannot be described by a {payload_len}-byte "
                             "payload (corrupt dimensions)")
    return rows, width


def _decode_raw_float(h: NduHeader, payload: bytes) -> torch.Tensor:
    count = math.prod(h.dims)
    if len(payload) != 4 * count:
        raise BitstreamError(f"tensor {h.name!r}: raw float payload has {len(payload)} bytes, "
                             f"expected {4 * count}")
    return torch.from_numpy(np.frombuffer(payload, dtype="<f4").astype(np.float32)).reshape(h.dims)


def _decode_ndu(ndu: hls.ParsedNdu, profile: int, max_elements: int,
                out: torch.Tensor | None = None) -> DecodedTensor:
    """Decodes one NDU; integer levels go to `out` (int32, the tensor's size) when given."""
    h, payload = ndu.header, ndu.payload
    result = DecodedTensor(name=h.name, levels=None, qp=None, qp_density=None, dq=h.dq, codebook=None,
                           payload_type=h.payload_type, shape=h.dims, unit_bytes=ndu.unit_bytes,
                           decompressed_data_format=h.decompressed_data_format)
    if h.payload_type == PayloadType.NNR_PT_RAW_FLOAT:
        result.raw_values = _decode_raw_float(h, payload)
        return result
    is_float = h.payload_type == PayloadType.NNR_PT_FLOAT
    if is_float and ndu.qp_density is None:
        raise BitstreamError(f"tensor {h.name!r}: float tensor but the parameter set carries no qp_density "
                             "(mps_quantization_method_flags lacks QSU/QCB)")
    rows, width = _check_size(h, len(payload), max_elements)
    cb_size = len(h.codebook) if h.codebook is not None else 0
    if out is None:
        out = torch.empty(h.dims, dtype=torch.int32)
    qp_bits = 6 + ndu.qp_density if is_float else 8
    try:
        qp_delta, consumed, eps = load_native().decode_payload(
            payload, out, rows, width, h.scan_order, h.dq, h.cabac_unary_length_minus1 + 1, profile,
            cb_size, h.codebook_zero_offset, is_float, qp_bits)
    except ValueError as exc:
        raise BitstreamError(f"tensor {h.name!r}: {exc}") from exc
    if consumed != len(payload):
        raise BitstreamError(f"tensor {h.name!r}: CABAC payload is {len(payload)} bytes but the decoder "
                             f"consumed {consumed} (nnr_unit_size mismatch or corrupt data)")
    if eps and [tuple(e) for e in eps] != h.entry_points:
        raise BitstreamError(f"tensor {h.name!r}: cabac_entry_point_list does not match the payload")
    if is_float:
        result.qp = ndu.qp_base + qp_delta
        result.qp_density = ndu.qp_density
        try:
            step_size(result.qp, result.qp_density)
        except ValueError as exc:
            raise BitstreamError(f"tensor {h.name!r}: {exc}") from exc
    if h.codebook is not None:
        coded = out.to(torch.int64) + h.codebook_zero_offset
        if int(coded.min()) < 0 or int(coded.max()) >= cb_size:
            raise BitstreamError(f"tensor {h.name!r}: coded codebook index outside the codebook "
                                 f"of size {cb_size}")
        result.codebook = torch.tensor(h.codebook, dtype=torch.int32)
        out = result.codebook[coded]
    result.levels = out
    return result


def _checked_ndus(data: bytes) -> tuple[hls.ParsedStream, list[hls.ParsedNdu]]:
    stream = hls.parse_stream(data)
    if not stream.ndus:
        raise BitstreamError("bitstream contains no compressed data units (no tensors; truncated?)")
    names = set()
    for ndu in stream.ndus:
        if ndu.header.name in names:
            raise BitstreamError(f"tensor name {ndu.header.name!r} occurs twice in the bitstream")
        names.add(ndu.header.name)
    return stream, stream.ndus


def _decode_values(ndu: hls.ParsedNdu, profile: int, max_elements: int) -> torch.Tensor:
    h = ndu.header
    if h.payload_type != PayloadType.NNR_PT_FLOAT or h.codebook is not None:
        return _decode_ndu(ndu, profile, max_elements).dequantize()
    # uniform float tensor: levels are decoded into the result's own memory and scaled there (one buffer)
    _check_size(h, len(ndu.payload), max_elements)  # before allocating anything a header asks for
    values = torch.empty(h.dims, dtype=torch.float32)
    decoded = _decode_ndu(ndu, profile, max_elements, out=values.view(torch.int32))
    load_native().levels_to_float(decoded.levels, values, decoded.step)
    return values


def decode_levels(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS,
                  workers: int = 1) -> dict[str, DecodedTensor]:
    """Decodes a bitstream to integer levels and parameters (one DecodedTensor per NDU, stream order);
    `workers` threads decode tensors in parallel."""
    workers = _check_workers(workers)
    stream, ndus = _checked_ndus(data)
    decoded = _map_in_order(lambda ndu: _decode_ndu(ndu, stream.profile, max_elements), ndus, workers)
    return {ndu.header.name: t for ndu, t in zip(ndus, decoded, strict=True)}


def decode(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS,
           workers: int = 1) -> dict[str, torch.Tensor]:
    """Decodes a bitstream to {name: tensor}: float32 for PT_FLOAT (levels · Δ in float32), int32 for PT_INT.

    max_elements caps the size of any one tensor (protects against hostile headers); `workers` threads
    decode tensors in parallel.
    """
    workers = _check_workers(workers)
    stream, ndus = _checked_ndus(data)
    values = _map_in_order(lambda ndu: _decode_values(ndu, stream.profile, max_elements), ndus, workers)
    return {ndu.header.name: v for ndu, v in zip(ndus, values, strict=True)}
