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
# cabac_unary_length_minus1 tried (besides the stream's) for tensors that carry their raw values
NONWEIGHT_UNARY_LENGTH_MINUS1 = 0


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
    # float32 values of the tensor: NNR_PT_RAW_FLOAT items are written from them; a PT_FLOAT item that has
    # them becomes the smallest of its coded units (two unary lengths) and, with raw_fallback, its raw unit
    raw_values: torch.Tensor | None = None
    raw_fallback: bool = True


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


def _raw_float_ndu(it: _Item, index: int, profile: int, cabac_unary_length_minus1: int) -> bytes:
    """The tensor as an NNR_PT_RAW_FLOAT unit: its float32 values, little-endian, no CABAC (spec §2.8)."""
    values = it.raw_values.detach().to("cpu", torch.float32).reshape(-1)
    if values.numel() != math.prod(it.shape):
        raise ValueError(f"tensor {it.name!r}: {values.numel()} raw values for the shape {it.shape}")
    header = NduHeader(name=it.name, payload_type=PayloadType.NNR_PT_RAW_FLOAT, dims=it.shape,
                       cabac_unary_length_minus1=cabac_unary_length_minus1, scan_order=0, parameter_id=index,
                       decompressed_data_format=it.decompressed_data_format)
    return hls.write_ndu(header, profile, values.numpy().astype("<f4", copy=False).tobytes())


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

    def coded_ndu(index: int, it: _Item, n1: int) -> bytes:
        so = _header_scan_order(it.shape, scan_order)
        is_float = it.payload_type == PayloadType.NNR_PT_FLOAT
        header = NduHeader(name=it.name, payload_type=it.payload_type, dims=it.shape, dq=it.dq,
                           cabac_unary_length_minus1=n1, scan_order=so,
                           parameter_id=index, decompressed_data_format=it.decompressed_data_format)
        common = dict(scan_order=so, dq=it.dq, n1=n1, profile=profile,
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

    def encode_ndu(indexed: tuple[int, _Item]) -> bytes:
        index, it = indexed
        if it.raw_values is None:
            return coded_ndu(index, it, cabac_unary_length_minus1)
        if it.payload_type == PayloadType.NNR_PT_RAW_FLOAT:
            return _raw_float_ndu(it, index, profile, cabac_unary_length_minus1)
        # the smallest unit, the lossless raw one on ties: a fine uniform step gives large levels, which cost
        # fewer bits with fewer greater-than flags before the Exp-Golomb remainder (spec §7.1)
        units = [coded_ndu(index, it, n1) for n1 in dict.fromkeys((NONWEIGHT_UNARY_LENGTH_MINUS1,
                                                                    cabac_unary_length_minus1))]
        if it.raw_fallback:
            units.insert(0, _raw_float_ndu(it, index, profile, cabac_unary_length_minus1))
        return min(units, key=len)

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

    The defaults are those of NNCodec's tensor and nn APIs. ``row_skipping`` writes the row_skip_enabled_flag
    and one flag per row of each ≥2-D tensor (a few bytes per tensor without zero rows); NNCodec's
    ``nnc.compress`` defaults to ``row_skipping=False``, so pass ``row_skipping=False`` to get its bytes.
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
# codebook indices become codebook values in slices of this many elements, so the temporary index and value
# tensors stay small next to the output
CODEBOOK_CHUNK = 1 << 20


def _check_max_elements(max_elements: object) -> int:
    if isinstance(max_elements, bool) or not isinstance(max_elements, (int, np.integer)) or max_elements < 1:
        raise ValueError("max_elements must be an int >= 1 (the most tensor elements, summed over all "
                         f"tensors, that a stream may declare), got {max_elements!r}")
    return int(max_elements)


def _check_budget(ndus: list[hls.ParsedNdu], max_elements: int) -> None:
    """The whole stream's element count against the limit, from the headers, before anything is allocated."""
    counts = [math.prod(ndu.header.dims) for ndu in ndus]
    total = sum(counts)
    if total <= max_elements:
        return
    largest = ndus[max(range(len(counts)), key=counts.__getitem__)].header
    # dims of up to 32 Exp-Golomb values can multiply beyond any float
    size = (f"about {4 * total / 2**30:.3g} GiB" if total < 2**64
            else f"about 2^{total.bit_length() + 1} bytes")
    raise BitstreamError(
        f"bitstream declares {total} tensor elements in {len(ndus)} tensors (largest {largest.name!r} with "
        f"dims {largest.dims}), more than the decoder limit max_elements={max_elements} ({size} as float32); "
        "for a trusted stream raise it with max_elements=... (command line: --max-elements)")


def _check_size(h: NduHeader, payload_len: int) -> tuple[int, int]:
    rows, width = _geometry(h.dims)
    count = rows * width
    budget = MAX_POSITIONS_PER_BYTE * (payload_len + PAYLOAD_SLACK_BYTES)
    row_skip_possible = width > 1 and count > width
    if (rows if row_skip_possible else count) > budget:
        raise BitstreamError(f"tensor {h.name!r}: dims {h.dims} cannot be described by a {payload_len}-byte "
                             "payload (corrupt dimensions)")
    return rows, width


def _check_raw_float_size(h: NduHeader, payload_len: int) -> None:
    if payload_len != 4 * math.prod(h.dims):
        raise BitstreamError(f"tensor {h.name!r}: raw float payload has {payload_len} bytes, "
                             f"expected {4 * math.prod(h.dims)}")


def _check_header_size(ndu: hls.ParsedNdu) -> None:
    """The checks that need no payload decoding: dimensions a payload of this size can describe."""
    if ndu.header.payload_type == PayloadType.NNR_PT_RAW_FLOAT:
        _check_raw_float_size(ndu.header, len(ndu.payload))
    else:
        _check_size(ndu.header, len(ndu.payload))


def _decode_raw_float(h: NduHeader, payload: bytes) -> torch.Tensor:
    _check_raw_float_size(h, len(payload))
    return torch.from_numpy(np.frombuffer(payload, dtype="<f4").astype(np.float32)).reshape(h.dims)


def _peek_qp_delta(payload: bytes, qp_bits: int) -> int:
    """The qp delta that opens a PT_FLOAT payload (qp_bits bypass bins, spec §3.2), without decoding the
    tensor: the arithmetic decoder of spec §4.1 and §4.3; range stays 510 while only bypass bins are read."""
    def byte(i: int) -> int:
        return payload[i] if i < len(payload) else 0  # the arithmetic decoder reads zeros past the end

    value, pos, bits_needed, scaled, raw = (byte(0) << 8) | byte(1), 2, -8, 510 << 7, 0
    for _ in range(qp_bits):
        value <<= 1
        bits_needed += 1
        if bits_needed >= 0:
            value += byte(pos)
            pos += 1
            bits_needed = -8
        bit = int(value >= scaled)
        value -= scaled * bit
        raw = (raw << 1) | bit
    half = 1 << (qp_bits - 1)
    return raw - 2 * half if raw >= half else raw


def _checked_qp(h: NduHeader, qp: int, qp_density: int) -> int:
    try:
        step_size(qp, qp_density)
    except ValueError as exc:
        raise BitstreamError(f"tensor {h.name!r}: {exc}") from exc
    return qp


def _require_qp_density(ndu: hls.ParsedNdu) -> None:
    if ndu.header.payload_type == PayloadType.NNR_PT_FLOAT and ndu.qp_density is None:
        raise BitstreamError(f"tensor {ndu.header.name!r}: float tensor but the parameter set carries no "
                             "qp_density (mps_quantization_method_flags lacks QSU/QCB)")


def header_qp(ndu: hls.ParsedNdu) -> int | None:
    """qp of a PT_FLOAT tensor from its header and the first bits of its payload (None for other types)."""
    if ndu.header.payload_type != PayloadType.NNR_PT_FLOAT:
        return None
    _require_qp_density(ndu)
    return _checked_qp(ndu.header, ndu.qp_base + _peek_qp_delta(ndu.payload, 6 + ndu.qp_density),
                       ndu.qp_density)


def _map_codebook(h: NduHeader, values: torch.Tensor) -> None:
    """Coded codebook indices in `values` (int32) become the codebook's values, in place, slice by slice."""
    table = torch.tensor(h.codebook, dtype=torch.int32)
    flat = values.view(-1)
    for start in range(0, flat.numel(), CODEBOOK_CHUNK):
        chunk = flat[start:start + CODEBOOK_CHUNK]
        # coded values are index - zero_offset; an int32 wrap-around can only make an index negative
        chunk.add_(h.codebook_zero_offset)
        lo, hi = torch.aminmax(chunk)
        if int(lo) < 0 or int(hi) >= len(h.codebook):
            raise BitstreamError(f"tensor {h.name!r}: coded codebook index outside the codebook "
                                 f"of size {len(h.codebook)}")
        chunk.copy_(table[chunk])


def _decode_ndu(ndu: hls.ParsedNdu, profile: int, out: torch.Tensor | None = None) -> DecodedTensor:
    """Decodes one NDU; integer levels (codebook values for codebook tensors) go to `out` (int32, the
    tensor's size) when given."""
    h, payload = ndu.header, ndu.payload
    result = DecodedTensor(name=h.name, levels=None, qp=None, qp_density=None, dq=h.dq, codebook=None,
                           payload_type=h.payload_type, shape=h.dims, unit_bytes=ndu.unit_bytes,
                           decompressed_data_format=h.decompressed_data_format)
    if h.payload_type == PayloadType.NNR_PT_RAW_FLOAT:
        result.raw_values = _decode_raw_float(h, payload)
        return result
    is_float = h.payload_type == PayloadType.NNR_PT_FLOAT
    _require_qp_density(ndu)
    rows, width = _check_size(h, len(payload))
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
        result.qp = _checked_qp(h, ndu.qp_base + qp_delta, ndu.qp_density)
        result.qp_density = ndu.qp_density
    if h.codebook is not None:
        _map_codebook(h, out)
        result.codebook = torch.tensor(h.codebook, dtype=torch.int32)
    result.levels = out
    return result


def _check_allow_partial(allow_partial: object) -> bool:
    if not isinstance(allow_partial, (bool, np.bool_)):
        raise TypeError(f"allow_partial must be a bool, got {allow_partial!r}")
    return bool(allow_partial)


def _checked_stream(data: bytes, *, max_elements: object, allow_partial: object = False,
                    check_budget: bool = True) -> tuple[hls.ParsedStream, hls.StateDictMetadata | None]:
    """Parses every header and checks the stream as a whole before anything is decoded: unique names, the
    state_dict metadata of the topology unit (all named tensors present unless allow_partial) and the total
    element count against max_elements (when check_budget)."""
    max_elements = _check_max_elements(max_elements)
    allow_partial = _check_allow_partial(allow_partial)
    stream = hls.parse_stream(data)
    if not stream.ndus:
        raise BitstreamError("bitstream contains no compressed data units (no tensors; truncated?)")
    names = set()
    for ndu in stream.ndus:
        if ndu.header.name in names:
            raise BitstreamError(f"tensor name {ndu.header.name!r} occurs twice in the bitstream")
        names.add(ndu.header.name)
    meta = hls.read_state_dict_metadata(stream.topology_data)
    if meta is not None:
        hls.check_state_dict_metadata(meta, stream.ndus, allow_partial)
    if check_budget:
        _check_budget(stream.ndus, max_elements)
    return stream, meta


def _decode_values(ndu: hls.ParsedNdu, profile: int) -> torch.Tensor:
    h = ndu.header
    if h.payload_type != PayloadType.NNR_PT_FLOAT:
        return _decode_ndu(ndu, profile).dequantize()
    # levels (codebook values for codebook tensors) are decoded into the result's own memory and scaled there
    _require_qp_density(ndu)
    _check_size(h, len(ndu.payload))  # before allocating anything a header asks for
    values = torch.empty(h.dims, dtype=torch.float32)
    decoded = _decode_ndu(ndu, profile, out=values.view(torch.int32))
    load_native().levels_to_float(decoded.levels, values, decoded.step)
    return values


def _decode_stream(stream: hls.ParsedStream, workers: int) -> dict[str, torch.Tensor]:
    ndus = stream.ndus
    values = _map_in_order(lambda ndu: _decode_values(ndu, stream.profile), ndus, workers)
    return {ndu.header.name: v for ndu, v in zip(ndus, values, strict=True)}


def decode_levels(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS, workers: int = 1,
                  allow_partial: bool = False) -> dict[str, DecodedTensor]:
    """Decodes a bitstream to integer levels and parameters (one DecodedTensor per NDU, stream order).

    max_elements bounds the total element count of all tensors (checked from the headers before anything is
    allocated); `workers` threads decode tensors in parallel. A stream whose topology unit names tensors that
    it lacks (e.g. cut at a unit boundary) raises BitstreamError unless allow_partial=True.
    """
    workers = _check_workers(workers)
    stream, _ = _checked_stream(data, max_elements=max_elements, allow_partial=allow_partial)
    ndus = stream.ndus
    decoded = _map_in_order(lambda ndu: _decode_ndu(ndu, stream.profile), ndus, workers)
    return {ndu.header.name: t for ndu, t in zip(ndus, decoded, strict=True)}


def decode(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS, workers: int = 1,
           allow_partial: bool = False) -> dict[str, torch.Tensor]:
    """Decodes a bitstream to {name: tensor}: float32 for PT_FLOAT (levels · Δ in float32), int32 for PT_INT.

    max_elements bounds the total element count of all tensors (hostile headers are rejected before any
    allocation; peak memory stays close to the size of the result); `workers` threads decode tensors in
    parallel. A stream whose topology unit names tensors that it lacks raises BitstreamError unless
    allow_partial=True.
    """
    workers = _check_workers(workers)
    stream, _ = _checked_stream(data, max_elements=max_elements, allow_partial=allow_partial)
    return _decode_stream(stream, workers)
