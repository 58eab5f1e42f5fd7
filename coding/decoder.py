"""Decoder: an NNC bitstream to integer levels (decode_levels) or to values (decode).

Every header is parsed and the stream is checked as a whole (unique names, topology-unit metadata, total
element count against ``max_elements``) before any payload is decoded; each tensor's dimensions are checked
against its payload size before its memory is allocated. Tensors are independent NDUs, decoded in parallel
threads when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ecqx.coding import hls
from ecqx.coding.common import DEFAULT_MAX_ELEMENTS, _check_workers, _geometry, _map_in_order
from ecqx.coding.errors import BitstreamError
from ecqx.coding.hls import NduHeader, PayloadType
from ecqx.coding.native import load_native
from ecqx.coding.quant import step_size

# A context-coded bin costs at least ~0.01 bit, so one payload byte describes at most ~800 coded positions
# (or row-skip flags); stream headers claiming more are rejected before any allocation.
MAX_POSITIONS_PER_BYTE = 1024
PAYLOAD_SLACK_BYTES = 8
# codebook indices become codebook values in slices of this many elements, so the temporary index and value
# tensors stay small next to the output
CODEBOOK_CHUNK = 1 << 20


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


def _check_max_elements(max_elements: object) -> int:
    if isinstance(max_elements, bool) or not isinstance(max_elements, (int, np.integer)) or max_elements < 1:
        raise ValueError("max_elements must be an int >= 1 (the most tensor elements, summed over all "
                         f"tensors, that a stream may declare), got {max_elements!r}")
    return int(max_elements)


def _check_budget(ndus: list[hls.ParsedNdu], max_elements: int) -> None:
    """The whole stream's element count against the limit, from the headers, before anything is allocated."""
    counts = [sum(math.prod(dims) for _, dims in ndu.header.tensors()) for ndu in ndus]
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


def _coded_positions(dims: tuple[int, ...]) -> int:
    """The fewest bins a tensor of these dims can be coded with: one per row where whole rows can be skipped,
    else one per element."""
    rows, width = _geometry(dims)
    return rows if (width > 1 and rows * width > width) else rows * width


def _check_size(h: NduHeader, payload_len: int) -> tuple[int, int]:
    budget = MAX_POSITIONS_PER_BYTE * (payload_len + PAYLOAD_SLACK_BYTES)
    if sum(_coded_positions(dims) for _, dims in h.tensors()) > budget:
        raise BitstreamError(f"tensor {h.name!r}: dims {h.dims} cannot be described by a {payload_len}-byte "
                             "payload (corrupt dimensions)")
    return _geometry(h.dims)


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
    has_qp = ndu.header.payload_type in (PayloadType.NNR_PT_FLOAT, PayloadType.NNR_PT_BLOCK)
    if has_qp and ndu.qp_density is None:
        raise BitstreamError(f"tensor {ndu.header.name!r}: float tensor but the parameter set carries no "
                             "qp_density (mps_quantization_method_flags lacks QSU/QCB)")


def header_qp(ndu: hls.ParsedNdu) -> int | None:
    """qp of a PT_FLOAT tensor from its header and the first bits of its payload (None for other types; a
    PT_BLOCK unit's first bits are the qp of its first coded tensor, not of the unit)."""
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
    if h.payload_type == PayloadType.NNR_PT_BLOCK:
        raise ValueError(f"unit of {h.name!r} is an NNR_PT_BLOCK unit of several tensors; use _decode_unit")
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


def _decode_block(ndu: hls.ParsedNdu, profile: int,
                  outs: list[torch.Tensor] | None = None) -> list[DecodedTensor]:
    """Decodes an NNR_PT_BLOCK unit: one DecodedTensor per tensor, in coding order (spec §2.8, §3.1). Each
    tensor has its own qp; the unit's dq_flag and scan_order apply to all of them, a codebook to the
    weight."""
    h, payload = ndu.header, ndu.payload
    _require_qp_density(ndu)
    _check_size(h, len(payload))
    members = h.block
    if outs is None:
        outs = [torch.empty(m.dims, dtype=torch.int32) for m in members]
    geometry = [_geometry(m.dims) for m in members]
    cb_size = len(h.codebook) if h.codebook is not None else 0
    cb_sizes = [cb_size if m.role == "weight" else 0 for m in members]
    cb_zeros = [h.codebook_zero_offset if m.role == "weight" else 0 for m in members]
    empty = [torch.empty(0, dtype=torch.int32)] * len(members)
    try:
        qp_deltas, consumed, eps, _ = load_native().decode_block(
            payload, outs, [g[0] for g in geometry], [g[1] for g in geometry], h.scan_order, h.dq,
            h.cabac_unary_length_minus1 + 1, profile, cb_sizes, cb_zeros, 6 + ndu.qp_density, False, empty,
            [torch.empty(0, dtype=torch.int8)] * len(members))
    except ValueError as exc:
        raise BitstreamError(f"NNR_PT_BLOCK unit of {h.name!r}: {exc}") from exc
    if consumed != len(payload):
        raise BitstreamError(f"NNR_PT_BLOCK unit of {h.name!r}: CABAC payload is {len(payload)} bytes but "
                             f"the decoder consumed {consumed} (nnr_unit_size mismatch or corrupt data)")
    if [tuple(e) for e in eps] != h.entry_points:
        raise BitstreamError(f"NNR_PT_BLOCK unit of {h.name!r}: cabac_entry_point_list does not match the "
                             "payload")
    results = []
    for i, (m, out) in enumerate(zip(members, outs, strict=True)):
        result = DecodedTensor(name=m.name, levels=out, qp=_checked_qp(h, ndu.qp_base + qp_deltas[i],
                                                                         ndu.qp_density),
                               qp_density=ndu.qp_density, dq=h.dq, codebook=None, payload_type=h.payload_type,
                               shape=m.dims, unit_bytes=ndu.unit_bytes if i == 0 else 0,
                               decompressed_data_format=h.decompressed_data_format)
        if cb_sizes[i]:
            _map_codebook(h, out)
            result.codebook = torch.tensor(h.codebook, dtype=torch.int32)
        results.append(result)
    return results


def _decode_unit(ndu: hls.ParsedNdu, profile: int) -> list[DecodedTensor]:
    """Every tensor of one unit (one, or several for NNR_PT_BLOCK), in coding order."""
    if ndu.header.payload_type == PayloadType.NNR_PT_BLOCK:
        return _decode_block(ndu, profile)
    return [_decode_ndu(ndu, profile)]


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
        for name, _ in ndu.header.tensors():
            if name in names:
                raise BitstreamError(f"tensor name {name!r} occurs twice in the bitstream")
            names.add(name)
    meta = hls.read_state_dict_metadata(stream.topology_data)
    if meta is not None:
        hls.check_state_dict_metadata(meta, stream.ndus, allow_partial)
    if check_budget:
        _check_budget(stream.ndus, max_elements)
    return stream, meta


def _decode_values(ndu: hls.ParsedNdu, profile: int) -> list[torch.Tensor]:
    """The values of every tensor of a unit, in coding order."""
    h = ndu.header
    if h.payload_type == PayloadType.NNR_PT_BLOCK:
        return [t.dequantize() for t in _decode_block(ndu, profile)]
    if h.payload_type != PayloadType.NNR_PT_FLOAT:
        return [_decode_ndu(ndu, profile).dequantize()]
    # levels (codebook values for codebook tensors) are decoded into the result's own memory and scaled there
    _require_qp_density(ndu)
    _check_size(h, len(ndu.payload))  # before allocating anything a header asks for
    values = torch.empty(h.dims, dtype=torch.float32)
    decoded = _decode_ndu(ndu, profile, out=values.view(torch.int32))
    load_native().levels_to_float(decoded.levels, values, decoded.step)
    return [values]


def _decode_stream(stream: hls.ParsedStream, workers: int) -> dict[str, torch.Tensor]:
    ndus = stream.ndus
    values = _map_in_order(lambda ndu: _decode_values(ndu, stream.profile), ndus, workers)
    return {name: v for ndu, vs in zip(ndus, values, strict=True)
            for (name, _), v in zip(ndu.header.tensors(), vs, strict=True)}


def decode_levels(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS, workers: int = 1,
                  allow_partial: bool = False) -> dict[str, DecodedTensor]:
    """Decodes a bitstream to integer levels and parameters (one DecodedTensor per tensor, stream order; the
    tensors of an NNR_PT_BLOCK unit in its coding order, the unit's bytes counted on the first of them).

    max_elements bounds the total element count of all tensors (checked from the headers before anything is
    allocated); `workers` threads decode tensors in parallel. A stream whose topology unit names tensors that
    it lacks (e.g. cut at a unit boundary) raises BitstreamError unless allow_partial=True.
    """
    workers = _check_workers(workers)
    stream, _ = _checked_stream(data, max_elements=max_elements, allow_partial=allow_partial)
    decoded = _map_in_order(lambda ndu: _decode_unit(ndu, stream.profile), stream.ndus, workers)
    return {t.name: t for ts in decoded for t in ts}


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
