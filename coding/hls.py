"""NNC high-level syntax: NNR units (start unit, MPS, LPS, TPL, NDU) as NNCodec 2.1.3 writes and reads them.

Spec nnc-bitstream.md §2. The writer emits the interop profile (§2.11/§2.12); the reader parses every field
NNCodec writes and raises BitstreamError, naming the field, for what this codec does not support.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum

from ecqx.coding.bits import BitReader, BitWriter
from ecqx.coding.errors import BitstreamError


class UnitType(IntEnum):
    STR = 0
    MPS = 1
    LPS = 2
    TPL = 3
    QNT = 4
    NDU = 5
    AGG = 6


class PayloadType(IntEnum):
    NNR_PT_INT = 0
    NNR_PT_FLOAT = 1
    NNR_PT_RAW_FLOAT = 2
    NNR_PT_BLOCK = 3


TPL_FORMATS = {0: "UNREC", 1: "NNEF", 2: "ONNX", 3: "PYT", 4: "TEF", 5: "PRUN", 6: "REFLIST"}
TPL_READABLE = (0, 3, 4)
DEFAULT_UNARY_LENGTH_MINUS1 = 9  # NNCodec's decoder default when cabac_unary_length_flag is 0
MAX_DIMENSIONS = 32
MAX_CODEBOOK_SIZE = 1 << 20
SHORT_UNIT_LIMIT = 32768
# compressed_parameter_types bits (spec §2.8): which tensors of a layer an NNR_PT_BLOCK unit carries
CPT_DC, CPT_LS, CPT_BN, CPT_BI = 0x1, 0x2, 0x4, 0x8
BN_ROLES = ("bn.beta", "bn.gamma", "bn.mean", "bn.var")
BLOCK_ROLES = ("weight", "weight.ls", *BN_ROLES, "bias")
MAX_BLOCK_ELEMENTS = 7  # weight, local scaling, four batch-norm tensors, bias


def block_roles(cpt: int) -> tuple[list[str], list[str]]:
    """(listed, coded): the roles of an NNR_PT_BLOCK unit's tensors in the order of its
    topology_elements_ids_list, and in the order its codeword codes them (spec §2.8.2; decomposition
    excluded).

    The list names the weight first; the codeword carries the weight last, after local scaling, bias and the
    batch-norm tensors.
    """
    listed = ["weight"]
    coded = []
    if cpt & CPT_LS:
        listed.append("weight.ls")
        coded.append("weight.ls")
    if cpt & CPT_BI:
        coded.append("bias")
    if cpt & CPT_BN:
        listed += BN_ROLES
        coded += BN_ROLES
    if cpt & CPT_BI:
        listed.append("bias")
    coded.append("weight")
    return listed, coded


def block_cpt(roles: list[str] | set[str]) -> int:
    """compressed_parameter_types of a block with these roles (the weight always present)."""
    return ((CPT_LS if "weight.ls" in roles else 0) | (CPT_BN if "bn.gamma" in roles else 0)
            | (CPT_BI if "bias" in roles else 0))


@dataclass
class BlockMember:
    """One tensor of an NNR_PT_BLOCK unit."""

    name: str
    role: str  # one of BLOCK_ROLES
    dims: tuple[int, ...]


@dataclass
class NduHeader:
    """Fields of one compressed data unit header (single topology element)."""

    name: str
    payload_type: PayloadType
    dims: tuple[int, ...]
    dq: bool = False
    cabac_unary_length_minus1: int = 10
    scan_order: int = 0
    entry_points: list[tuple[int, int, int]] = field(default_factory=list)
    codebook: list[int] | None = None
    codebook_zero_offset: int = 0
    codebook_egk: int = 0
    node_id_present: bool = True
    device_id: int = 0
    parameter_id: int = 0
    put_node_depth: int = 0
    decompressed_data_format: int | None = None
    # difference updates (present when the MPS has mps_parent_signalling_enabled_flag; spec §2.8, §13)
    parent_node_id_present: bool = False
    parent_node_id_type: int = 0  # 0 ICNN_NDU_ID (the only type read and written)
    temporal_context_modeling: bool = False
    parent_device_id: int = 0
    # NNR_PT_BLOCK: the unit's tensors in coding order (name and dims above are the weight's), its
    # compressed_parameter_types, and whether the weight's dimensions are in the header
    # (tensor_dimensions_flag; NNCodec sends them out of band in update streams)
    block: list[BlockMember] | None = None
    compressed_parameter_types: int = 0
    dims_in_band: bool = True

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, dims) of every tensor the unit carries, in coding order."""
        if self.block is None:
            return [(self.name, self.dims)]
        return [(m.name, m.dims) for m in self.block]


@dataclass
class ParsedNdu:
    header: NduHeader
    payload: bytes
    unit_bytes: int
    qp_density: int | None
    qp_base: int | None


@dataclass
class ParsedStream:
    profile: int
    qp_density: int | None
    qp_base: int | None
    topology_data: str | None
    ndus: list[ParsedNdu]
    parent_signalling: bool = False  # mps_parent_signalling_enabled_flag (difference updates)


# ------------------------------------------------------------------------------------------------ writing
def _unit(body: bytes) -> bytes:
    if len(body) + 2 < SHORT_UNIT_LIMIT:
        return (len(body) + 2).to_bytes(2, "big") + body
    size = len(body) + 4
    if size >= 1 << 31:
        raise ValueError(f"NNR unit of {size} bytes exceeds the 31-bit unit size field")
    return (size | (1 << 31)).to_bytes(4, "big") + body


def _common_header(w: BitWriter, unit_type: UnitType) -> None:
    w.u(6, int(unit_type))
    w.u(1, 1)  # independently_decodable_flag
    w.u(1, 0)  # partial_data_counter_present_flag


def write_start_unit(profile: int) -> bytes:
    w = BitWriter()
    _common_header(w, UnitType.STR)
    w.u(8, profile)
    return _unit(w.tobytes())


def write_mps(profile: int, qp_density: int, qp_base: int, topology_carriage: bool,
              parent_signalling: bool = False) -> bytes:
    w = BitWriter()
    _common_header(w, UnitType.MPS)
    w.u(1, int(topology_carriage))
    w.u(4, 0)  # sparsification, pruning, unification, decomposition performance map flags
    w.u(3, 1)  # mps_quantization_method_flags = NNR_QSU
    w.u(1, 0)  # mps_topology_indexed_reference_flag
    if parent_signalling:  # P1: base model id, validation set, metric type 0; parent signalling 1; rest 0
        w.u(3, 0)
        w.u(1, 1)
        w.u(3, 0)
    else:
        w.u(7, 0)  # P1: base model id, validation set, metric type, parent signalling, reserved; P0: reserved
    w.u(3, qp_density)
    w.i(13, qp_base)
    w.align()
    return _unit(w.tobytes())


def write_tpl(topology_data: str = "") -> bytes:
    w = BitWriter()
    _common_header(w, UnitType.TPL)
    w.u(8, 0)  # NNR_TPL_UNREC
    w.u(8, 0)  # NNR_PT_RAW (no compression)
    w.st(topology_data)
    return _unit(w.tobytes())


def _write_codebook(w: BitWriter, codebook: list[int], zero_offset: int, egk: int) -> None:
    size = len(codebook)
    w.u(4, egk)
    w.ue(2, size)
    w.ie(2, zero_offset - (size >> 1))
    w.ie(7, codebook[zero_offset])
    for j in range(zero_offset - 1, -1, -1):
        w.ue(egk, codebook[j + 1] - codebook[j] - 1)
    for j in range(zero_offset + 1, size):
        w.ue(egk, codebook[j] - codebook[j - 1] - 1)


def codebook_bits(codebook: list[int], zero_offset: int, egk: int) -> int:
    w = BitWriter()
    _write_codebook(w, codebook, zero_offset, egk)
    return w.bit_length


def num_entry_points(dims: tuple[int, ...], scan_order: int) -> int:
    """NumBlockRowsMinus1 of spec §2.10 (0 when the list is absent)."""
    if len(dims) < 2 or scan_order == 0:
        return 0
    return ((dims[0] + (4 << scan_order) - 1) >> (2 + scan_order)) - 1


def write_ndu(h: NduHeader, profile: int, payload: bytes, parent_signalling: bool = False) -> bytes:
    is_block = h.payload_type == PayloadType.NNR_PT_BLOCK
    w = BitWriter()
    _common_header(w, UnitType.NDU)
    w.u(5, int(h.payload_type))
    w.u(1, int(is_block))  # nnr_multiple_topology_elements_present_flag
    w.u(1, int(h.decompressed_data_format is not None))
    w.u(1, 1)  # input_parameters_present_flag
    if is_block:
        listed, _ = block_roles(h.compressed_parameter_types)
        by_role = {m.role: m.name for m in h.block}
        names = [by_role[role] for role in listed if role in by_role]
        w.ue(7, len(names) - 2)  # count_topology_elements_minus2
        w.align()
        for name in names:
            w.st(name)
    else:
        w.st(h.name)
    if profile == 1:
        w.u(1, int(h.node_id_present))
        if h.node_id_present:
            w.ue(1, h.device_id)
            w.ue(5, h.parameter_id)
            w.ue(4, h.put_node_depth)
        if parent_signalling:
            _write_parent_fields(w, h)
    if h.payload_type in (PayloadType.NNR_PT_FLOAT, PayloadType.NNR_PT_BLOCK):
        w.u(1, int(h.codebook is not None))
        if h.codebook is not None:
            _write_codebook(w, h.codebook, h.codebook_zero_offset, h.codebook_egk)
    if h.payload_type in (PayloadType.NNR_PT_INT, PayloadType.NNR_PT_FLOAT, PayloadType.NNR_PT_BLOCK):
        w.u(1, int(h.dq))
    if h.decompressed_data_format is not None:
        w.u(7, h.decompressed_data_format)
    w.u(1, int(h.dims_in_band))  # tensor_dimensions_flag
    w.u(1, 1)  # cabac_unary_length_flag
    w.u(4, h.compressed_parameter_types if is_block else 0)
    if h.dims_in_band:
        w.ue(1, len(h.dims))
        for d in h.dims:
            w.ue(7, d)
    w.u(8, h.cabac_unary_length_minus1)
    if len(h.dims) > 1:
        if profile == 1:
            w.ue(1, 0)  # first_tensor_dimension_shift
        w.u(4, h.scan_order)
        count = num_entry_points(h.dims, h.scan_order)
        if count != len(h.entry_points):
            raise ValueError(f"tensor {h.name!r}: {len(h.entry_points)} entry points given, {count} required")
        previous = 0
        for j, (delta, value8, state) in enumerate(h.entry_points):
            w.u(8, value8)
            if h.dq:
                w.u(3, state)
            if j == 0:
                w.ue(11, delta)
            else:
                w.ie(7, delta - previous)
            previous = delta
    w.align()
    return _unit(w.tobytes() + payload)


def _write_parent_fields(w: BitWriter, h: NduHeader) -> None:
    w.u(1, int(h.parent_node_id_present))
    if h.parent_node_id_present:
        if h.parent_node_id_type != 0:
            raise ValueError(f"tensor {h.name!r}: parent_node_id_type {h.parent_node_id_type} is not "
                             "supported (0 ICNN_NDU_ID only)")
        w.u(2, 0)
        w.u(1, int(h.temporal_context_modeling))
        w.ue(1, h.parent_device_id)
        if not h.node_id_present:
            w.ue(5, h.parameter_id)
            w.ue(4, h.put_node_depth)


def _read_parent_fields(r: BitReader, h: NduHeader) -> None:
    h.parent_node_id_present = bool(r.u(1, "parent_node_id_present_flag"))
    if not h.parent_node_id_present:
        return
    h.parent_node_id_type = r.u(2, "parent_node_id_type")
    h.temporal_context_modeling = bool(r.u(1, "temporal_context_modeling_flag"))
    if h.parent_node_id_type != 0:
        raise _unsupported("parent_node_id_type", h.parent_node_id_type,
                           "0 ICNN_NDU_ID; parents named by payload hashes are not")
    h.parent_device_id = r.ue(1, "parent_device_id")
    if not h.node_id_present:
        h.parameter_id = r.ue(5, "parameter_id")
        h.put_node_depth = r.ue(4, "put_node_depth")


# ------------------------------------------------------------------------------------------------ reading
def _unsupported(what: str, value: object, allowed: str) -> BitstreamError:
    return BitstreamError(f"unsupported {what} = {value} (this decoder supports {allowed})")


def _read_mps(r: BitReader, profile: int,
              allow_updates: bool = False) -> tuple[int | None, int | None, bool, bool]:
    topology_carriage = bool(r.u(1, "topology_carriage_flag"))
    names = ("mps_sparsification_flag", "mps_pruning_flag", "mps_unification_flag",
             "mps_decomposition_performance_map_flag")
    for name in names:
        if r.u(1, name):
            raise _unsupported(name, 1, "0: performance maps are not supported")
    methods = r.u(3, "mps_quantization_method_flags")
    if r.u(1, "mps_topology_indexed_reference_flag"):
        raise _unsupported("mps_topology_indexed_reference_flag", 1, "0 (tensors named by string)")
    if profile == 1:
        for name in ("base_model_id_present_flag", "validation_set_performance_present_flag",
                     "metric_type_performance_map_valid_flag"):
            if r.u(1, name):
                raise _unsupported(name, 1, "0")
        parent_signalling = bool(r.u(1, "mps_parent_signalling_enabled_flag"))
        if parent_signalling and not allow_updates:
            raise BitstreamError("mps_parent_signalling_enabled_flag = 1: the stream is a difference update "
                                 "that needs the decoder state of the earlier updates; decode it with "
                                 "ecqx.coding.UpdateDecoder")
        r.u(3, "reserved bits")
    else:
        parent_signalling = False
        r.u(7, "nnr_reserved_zero_7bits")
    qp_density = qp_base = None
    if methods & 3:
        qp_density = r.u(3, "mps_qp_density")
        qp_base = r.i(13, "mps_quantization_parameter")
    r.align()
    return qp_density, qp_base, topology_carriage, parent_signalling


def _read_lps(r: BitReader) -> tuple[int | None, int | None]:
    r.u(1, "lps_self_contained_flag")
    r.u(7, "nnr_reserved_zero_7bits")
    r.u(1, "nnr_reserved_zero_1_bits")
    for name in ("lps_sparsification_flag", "lps_pruning_flag", "lps_unification_flag"):
        if r.u(1, name):
            raise _unsupported(name, 1, "0: performance maps are not supported")
    methods = r.u(3, "lps_quantization_method_flags")
    r.u(1, "nnr_reserved_zero_1bit")
    qp_density = qp_base = None
    if methods & 3:
        qp_density = r.u(3, "lps_qp_density")
        qp_base = r.i(13, "lps_quantization_parameter")
    r.align()
    return qp_density, qp_base


def _read_codebook(r: BitReader, name: str) -> tuple[list[int], int, int]:
    egk = r.u(4, "codebook_egk")
    size = r.ue(2, "codebook_size")
    if not 1 <= size <= MAX_CODEBOOK_SIZE:
        raise BitstreamError(f"tensor {name!r}: codebook_size {size} outside 1..{MAX_CODEBOOK_SIZE}")
    zero_offset = (size >> 1) + r.ie(2, "codebook_centre_offset")
    if not 0 <= zero_offset < size:
        raise BitstreamError(f"tensor {name!r}: codebook zero offset {zero_offset} (codebook_centre_offset) "
                             f"outside 0..{size - 1}")
    values = [0] * size
    values[zero_offset] = r.ie(7, "codebook_zero_value")
    for j in range(zero_offset - 1, -1, -1):
        values[j] = values[j + 1] - r.ue(egk, "codebook_delta_left") - 1
    for j in range(zero_offset + 1, size):
        values[j] = values[j - 1] + r.ue(egk, "codebook_delta_right") + 1
    if values[0] < -(2**31) + 1 or values[-1] > 2**31 - 1:
        raise BitstreamError(f"tensor {name!r}: codebook values exceed the int32 range")
    return values, zero_offset, egk


def _read_block_names(r: BitReader) -> list[str]:
    count = r.ue(7, "count_topology_elements_minus2") + 2
    if count > MAX_BLOCK_ELEMENTS:
        raise BitstreamError(f"NNR_PT_BLOCK unit: count_topology_elements_minus2 declares {count} tensors, "
                             f"more than the {MAX_BLOCK_ELEMENTS} a block can carry")
    r.align()
    names = [r.st("topology_elem_id_list") for _ in range(count)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BitstreamError(f"NNR_PT_BLOCK unit: topology_elem_id_list names {repeated[0]!r} twice")
    return names


def _block_members(names: list[str], cpt: int, dims: tuple[int, ...]) -> list[BlockMember]:
    """The block's tensors in coding order; every tensor but the weight is 1-D with dims[0] elements."""
    if cpt & CPT_DC:
        raise _unsupported("compressed_parameter_types", f"{cpt:#x} (NNR_CPT_DC set)",
                           "blocks of a weight with local scaling, batch norm and bias; decomposed weights "
                           "are not")
    listed, coded = block_roles(cpt)
    if len(listed) != len(names) or cpt == 0:
        raise BitstreamError(f"NNR_PT_BLOCK unit of {names[0]!r}: count_topology_elements_minus2 gives "
                             f"{len(names)} tensors, compressed_parameter_types {cpt:#x} needs {len(listed)}")
    by_role = dict(zip(listed, names, strict=True))
    return [BlockMember(by_role[role], role, dims if role == "weight" else (dims[0],)) for role in coded]


def _read_ndu_header(r: BitReader, profile: int, tensor_index: int, parent_signalling: bool = False,
                     out_of_band_dims=None) -> NduHeader:
    payload_type = r.u(5, "nnr_compressed_data_unit_payload_type")
    if payload_type not in (0, 1, 2, 3):
        raise _unsupported("nnr_compressed_data_unit_payload_type", payload_type,
                           "0 NNR_PT_INT, 1 NNR_PT_FLOAT, 2 NNR_PT_RAW_FLOAT, 3 NNR_PT_BLOCK")
    is_block = payload_type == PayloadType.NNR_PT_BLOCK
    if r.u(1, "nnr_multiple_topology_elements_present_flag") != int(is_block):
        raise _unsupported("nnr_multiple_topology_elements_present_flag", int(not is_block),
                           "1 exactly in NNR_PT_BLOCK units (tensor splits are not supported)")
    ddf_present = r.u(1, "nnr_decompressed_data_format_present_flag")
    if not r.u(1, "input_parameters_present_flag"):
        raise _unsupported("input_parameters_present_flag", 0, "1 (in-band tensor dimensions)")
    block_names = _read_block_names(r) if is_block else None
    name = block_names[0] if is_block else r.st("topology_elem_id")
    h = NduHeader(name=name, payload_type=PayloadType(payload_type), dims=())
    if profile == 1:
        h.node_id_present = bool(r.u(1, "node_id_present_flag"))
        if h.node_id_present:
            h.device_id = r.ue(1, "device_id")
            h.parameter_id = r.ue(5, "parameter_id")
            h.put_node_depth = r.ue(4, "put_node_depth")
        if parent_signalling:
            _read_parent_fields(r, h)
    has_codebook_flag = payload_type in (PayloadType.NNR_PT_FLOAT, PayloadType.NNR_PT_BLOCK)
    if has_codebook_flag and r.u(1, "codebook_present_flag"):
        h.codebook, h.codebook_zero_offset, h.codebook_egk = _read_codebook(r, h.name)
    if payload_type in (PayloadType.NNR_PT_INT, PayloadType.NNR_PT_FLOAT, PayloadType.NNR_PT_BLOCK):
        h.dq = bool(r.u(1, "dq_flag")) and payload_type != PayloadType.NNR_PT_INT
    if ddf_present:
        h.decompressed_data_format = r.u(7, "nnr_decompressed_data_format")
    h.dims_in_band = bool(r.u(1, "tensor_dimensions_flag"))
    unary_length_flag = r.u(1, "cabac_unary_length_flag")
    cpt = r.u(4, "compressed_parameter_types")
    if cpt and not is_block:
        raise _unsupported("compressed_parameter_types", cpt, "0 outside NNR_PT_BLOCK units")
    h.compressed_parameter_types = cpt
    if h.dims_in_band:
        count = r.ue(1, "count_tensor_dimensions")
        if not 1 <= count <= MAX_DIMENSIONS:
            raise BitstreamError(f"count_tensor_dimensions {count} outside 1..{MAX_DIMENSIONS}")
        dims = tuple(r.ue(7, "tensor_dimensions") for _ in range(count))
    else:
        # NNCodec's update streams leave a block's dimensions out of band: the receiver knows the model
        dims = None if out_of_band_dims is None else out_of_band_dims(h.name)
        if dims is None:
            raise BitstreamError(f"tensor {h.name!r}: tensor_dimensions_flag = 0 (dimensions sent out of "
                                 "band) and no dimensions are known for it; an UpdateDecoder takes them from "
                                 "its state, or from shapes=... for a first update")
        dims = tuple(int(d) for d in dims)
        count = len(dims)
        if not 1 <= count <= MAX_DIMENSIONS:
            raise BitstreamError(f"tensor {h.name!r}: out-of-band dimensions {dims} have no or too many axes")
    if min(dims) < 1:
        raise BitstreamError(f"tensor {h.name!r}: dimensions {dims} contain 0 (empty tensors are not coded)")
    h.dims = dims
    if is_block:
        h.block = _block_members(block_names, cpt, dims)
    h.cabac_unary_length_minus1 = (r.u(8, "cabac_unary_length_minus1") if unary_length_flag
                                   else DEFAULT_UNARY_LENGTH_MINUS1)
    if count > 1:
        if profile == 1:
            r.ue(1, "first_tensor_dimension_shift")
        h.scan_order = r.u(4, "scan_order")
        if h.scan_order > 4:
            raise _unsupported("scan_order", h.scan_order, "0..4")
        previous = 0
        for j in range(num_entry_points(dims, h.scan_order)):
            value8 = r.u(8, "entry_point_value")
            state = r.u(3, "entry_point_dq_state") if h.dq else 0
            if j == 0:
                delta = r.ue(11, "entry_point_offset_delta")
            else:
                delta = previous + r.ie(7, "entry_point_offset_delta")
            h.entry_points.append((delta, value8, state))
            previous = delta
    r.align()
    return h


def _read_unit_size(data: bytes, pos: int) -> tuple[int, int]:
    if pos + 2 > len(data):
        raise BitstreamError(f"truncated NNR unit size at byte {pos}")
    if data[pos] & 0x80:
        if pos + 4 > len(data):
            raise BitstreamError(f"truncated NNR unit size at byte {pos}")
        size, field_bytes = int.from_bytes(data[pos:pos + 4], "big") & 0x7FFFFFFF, 4
    else:
        size, field_bytes = int.from_bytes(data[pos:pos + 2], "big"), 2
    if size < field_bytes + 1:
        raise BitstreamError(f"NNR unit at byte {pos} declares an impossible size {size}")
    if pos + size > len(data):
        raise BitstreamError(f"NNR unit at byte {pos} declares {size} bytes but only {len(data) - pos} "
                             "remain (truncated stream)")
    return size, field_bytes


def parse_stream(data: bytes, allow_updates: bool = False, out_of_band_dims=None) -> ParsedStream:
    """Splits a bitstream into units and parses every header (the CABAC payloads are not decoded here).

    Difference-update streams (mps_parent_signalling_enabled_flag = 1) raise BitstreamError unless
    allow_updates (ecqx.coding.UpdateDecoder carries the state they need). ``out_of_band_dims(name)`` gives
    the dimensions of a tensor whose unit does not carry them (tensor_dimensions_flag = 0), or None.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"bitstream must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise BitstreamError("empty bitstream")
    stream = ParsedStream(profile=-1, qp_density=None, qp_base=None, topology_data=None, ndus=[])
    qp_density = qp_base = None
    seen_mps = False
    pos = 0
    while pos < len(data):
        size, field_bytes = _read_unit_size(data, pos)
        r = BitReader(data, pos + field_bytes, pos + size, what=f"NNR unit at byte {pos}")
        unit_type = r.u(6, "nnr_unit_type")
        r.u(1, "independently_decodable_flag")
        if r.u(1, "partial_data_counter_present_flag"):
            r.u(8, "partial_data_counter")
        if stream.profile < 0 and unit_type != UnitType.STR:
            raise BitstreamError("bitstream does not begin with an NNR start unit")
        if unit_type == UnitType.STR:
            if stream.profile >= 0:
                raise BitstreamError("second NNR start unit in one bitstream")
            stream.profile = r.u(8, "general_profile_idc")
            if stream.profile not in (0, 1):
                raise _unsupported("general_profile_idc", stream.profile, "0 and 1")
        elif unit_type == UnitType.MPS:
            if seen_mps:
                raise BitstreamError("more than one model parameter set")
            qp_density, qp_base, _, stream.parent_signalling = _read_mps(r, stream.profile, allow_updates)
            stream.qp_density, stream.qp_base = qp_density, qp_base
            seen_mps = True
        elif unit_type == UnitType.LPS:
            lps_density, lps_base = _read_lps(r)
            if lps_density is not None:
                qp_density, qp_base = lps_density, lps_base
        elif unit_type == UnitType.TPL:
            storage = r.u(8, "topology_storage_format")
            compression = r.u(8, "topology_compression_format")
            if storage not in TPL_READABLE:
                raise _unsupported("topology_storage_format", TPL_FORMATS.get(storage, storage),
                                   "UNREC, PYT, TEF")
            if compression != 0:
                raise _unsupported("topology_compression_format", compression, "0 (raw)")
            stream.topology_data = r.st("topology_data")
        elif unit_type == UnitType.NDU:
            if not seen_mps:
                raise BitstreamError("compressed data unit before the model parameter set")
            header = _read_ndu_header(r, stream.profile, len(stream.ndus), stream.parent_signalling,
                                      out_of_band_dims)
            start = r.byte_position
            stream.ndus.append(ParsedNdu(header, data[start:pos + size], size, qp_density, qp_base))
        else:
            raise _unsupported("nnr_unit_type", unit_type, "0 start, 1 MPS, 2 LPS, 3 TPL, 5 NDU")
        if unit_type != UnitType.NDU and r.byte_position != pos + size:
            raise BitstreamError(f"NNR unit at byte {pos}: size field {size} does not match its content")
        pos += size
    if stream.profile < 0:
        raise BitstreamError("bitstream has no NNR start unit")
    return stream


# ------------------------------------------------------------------------------------------------ metadata
# encode_state_dict writes this JSON object into topology_data (NNCodec ignores the text):
# {"ecqx-state-dict": {"dtype": {name: dtype}, "scalar": [names of 0-d tensors], "count": number of NDUs,
#  "last": name of the last NDU, "empty": [{"name", "index", "shape", "dtype"} of entries with a zero
#  dimension, which have no NDU]}}. "count", "last" and "empty" are absent in streams of earlier versions; a
# "names" list of every entry in state_dict order is read as well (it repeats the NDU names, so the writer
# records only the count).
STATE_DICT_METADATA_KEY = "ecqx-state-dict"
FLOAT_DTYPE_NAMES = frozenset({"float32", "float64", "float16", "bfloat16"})
INT_DTYPE_NAMES = frozenset({"int32", "int64", "int16", "int8", "uint8", "bool"})
# the metadata nests three levels; the bound keeps forged text away from json's recursion limit
MAX_METADATA_DEPTH = 8
# tens of bytes per tensor name: this allows ~10^5 tensors, while bounding the objects json.loads builds
MAX_METADATA_CHARS = 1 << 24
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


@dataclass
class EmptyEntry:
    """A state_dict entry with a zero dimension (NNC cannot code it; it has no NDU)."""

    name: str
    index: int  # position in the state_dict
    shape: tuple[int, ...]
    dtype: str


@dataclass
class StateDictMetadata:
    """ecqx's state_dict metadata from the topology unit."""

    dtype: dict[str, str]
    scalar: list[str]
    names: list[str] | None  # every entry of the state_dict, in order, where the stream lists them
    empty: list[EmptyEntry] = field(default_factory=list)
    count: int | None = None  # number of NDUs the complete stream holds
    last: str | None = None  # name of its last NDU

    def declared(self) -> list[str]:
        """Tensors the stream must carry as NDUs: the names list, or in older streams every name the
        metadata mentions; entries without values (empty) excepted."""
        empty = {e.name for e in self.empty}
        named = self.names if self.names is not None else dict.fromkeys([*self.dtype, *self.scalar])
        return [name for name in named if name not in empty]


def _metadata_error(field_name: str, problem: str) -> BitstreamError:
    return BitstreamError(f"topology unit: field {field_name!r} of the {STATE_DICT_METADATA_KEY!r} metadata "
                          f"in topology_data {problem}")


def _preview(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(f"{n!r:.80}" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _string_list(value: object, field_name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _metadata_error(field_name, f"must be a list of tensor names (strings), got {value!r:.200}")
    repeated = sorted(name for name, count in Counter(value).items() if count > 1)
    if repeated:
        raise _metadata_error(field_name, f"lists {_preview(repeated)} more than once")
    return value


def _is_count(value: object, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _empty_entries(value: object) -> list[EmptyEntry]:
    if not isinstance(value, list):
        raise _metadata_error("empty", f"must be a list of entry records, got {value!r:.200}")
    entries = []
    for record in value:
        if (not isinstance(record, dict) or not isinstance(record.get("name"), str)
                or not _is_count(record.get("index"), 2**31 - 1)
                or not isinstance(record.get("shape"), list) or len(record["shape"]) > MAX_DIMENSIONS
                or not all(_is_count(d, 2**31 - 1) for d in record["shape"]) or 0 not in record["shape"]):
            raise _metadata_error("empty", "records need a name (string), an index (int >= 0) and a shape "
                                  f"(at most {MAX_DIMENSIONS} ints >= 0, one of them 0), got {record!r:.200}")
        dtype_name = record.get("dtype")
        if not isinstance(dtype_name, str) or dtype_name not in FLOAT_DTYPE_NAMES | INT_DTYPE_NAMES:
            raise _metadata_error("empty", f"gives entry {record['name']!r} the unknown dtype "
                                  f"{dtype_name!r:.100}")
        entries.append(EmptyEntry(record["name"], record["index"], tuple(record["shape"]), dtype_name))
    _string_list([e.name for e in entries], "empty")  # no name twice
    return entries


def read_state_dict_metadata(text: str | None) -> StateDictMetadata | None:
    """The state_dict metadata of a topology unit; None when the text is not ecqx's (NNCodec writes "",
    other producers free text). Malformed metadata raises BitstreamError naming the field."""
    if not text or f'"{STATE_DICT_METADATA_KEY}"' not in text:
        return None
    if len(text) > MAX_METADATA_CHARS:
        raise BitstreamError(f"topology unit: topology_data has {len(text)} characters, more than the "
                             f"{MAX_METADATA_CHARS} this decoder parses as {STATE_DICT_METADATA_KEY!r} "
                             "metadata")
    # nesting depth without recursion: drop strings and everything but brackets, then peel matched pairs
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(MAX_METADATA_DEPTH):
        peeled = brackets.replace("[]", "").replace("{}", "")
        if peeled == brackets:
            break
        brackets = peeled
    if brackets:
        raise BitstreamError(f"topology unit: topology_data nests deeper than {MAX_METADATA_DEPTH} levels or "
                             "has unmatched brackets (not valid metadata JSON)")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BitstreamError(f"topology unit: topology_data is not valid JSON ({exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get(STATE_DICT_METADATA_KEY), dict):
        raise _metadata_error(STATE_DICT_METADATA_KEY, "must be a JSON object at the top level of the text")
    meta = document[STATE_DICT_METADATA_KEY]
    names = None if meta.get("names") is None else _string_list(meta["names"], "names")
    dtype = meta.get("dtype", {})
    if not isinstance(dtype, dict):
        raise _metadata_error("dtype", "must be an object mapping tensor names to dtypes, "
                              f"got {dtype!r:.200}")
    for name, dtype_name in dtype.items():
        if not isinstance(dtype_name, str) or dtype_name not in FLOAT_DTYPE_NAMES | INT_DTYPE_NAMES:
            raise _metadata_error("dtype", f"gives tensor {name!r} the unknown dtype {dtype_name!r:.100} "
                                  f"(known: {', '.join(sorted(FLOAT_DTYPE_NAMES | INT_DTYPE_NAMES))})")
    scalar = _string_list(meta.get("scalar", []), "scalar")
    empty = _empty_entries(meta.get("empty", []))
    count, last = meta.get("count"), meta.get("last")
    if count is not None and (not _is_count(count, 2**31 - 1) or count == 0):
        raise _metadata_error("count", f"must be the number of tensors coded (an int >= 1), "
                              f"got {count!r:.100}")
    if last is not None and (not isinstance(last, str) or count is None):
        raise _metadata_error("last", f"must be the name of the last tensor, given with 'count', "
                              f"got {last!r:.100}")
    if names is not None:
        listed = set(names)
        named = (("dtype", list(dtype)), ("scalar", scalar), ("empty", [e.name for e in empty]))
        for field_name, entries in named:
            unknown = [n for n in entries if n not in listed]
            if unknown:
                raise _metadata_error(field_name, f"names tensors that are not in its 'names' list: "
                                      f"{_preview(unknown)}")
    return StateDictMetadata(dtype=dict(dtype), scalar=list(scalar), names=names, empty=empty, count=count,
                             last=last)


def check_state_dict_metadata(meta: StateDictMetadata, ndus: list[ParsedNdu], allow_partial: bool) -> None:
    """The metadata agrees with the stream: every declared tensor present (unless allow_partial), no
    undeclared tensor, dtypes of the payload's kind (float or integer), scalars with one element."""
    # one entry per tensor (a block unit carries several), with its unit's payload type and its own dims
    present = {name: (ndu.header.payload_type, dims) for ndu in ndus for name, dims in ndu.header.tensors()}
    coded_empty = [e.name for e in meta.empty if e.name in present]
    if coded_empty:
        raise _metadata_error("empty", f"names entries without values that the stream codes: "
                              f"{_preview(coded_empty)}")
    if meta.names is not None:
        listed = set(meta.names)
        extra = [name for name in present if name not in listed]
        if extra:
            raise _metadata_error("names", f"does not list the tensors {_preview(extra)} of the stream")
    if meta.count is not None:
        _check_count(meta, ndus, allow_partial)
    declared = meta.declared()
    missing = [name for name in declared if name not in present]
    if missing and not allow_partial:
        raise BitstreamError(f"incomplete bitstream: {len(missing)} of the {len(declared)} tensors named in "
                             f"its topology unit are missing: {_preview(missing)} (truncated stream? "
                             "decode(..., allow_partial=True) returns the tensors present)")
    for name, dtype_name in meta.dtype.items():
        if name not in present:
            continue
        payload_type = present[name][0]
        is_float = payload_type != PayloadType.NNR_PT_INT
        if is_float != (dtype_name in FLOAT_DTYPE_NAMES):
            raise _metadata_error("dtype", f"gives tensor {name!r} dtype {dtype_name!r}, but the stream "
                                  f"codes it as {payload_type.name} "
                                  f"({'float' if is_float else 'integer'} values)")
    for name in meta.scalar:
        dims = present[name][1] if name in present else None
        if dims is not None and math.prod(dims) != 1:
            raise _metadata_error("scalar", f"marks tensor {name!r} as 0-d, but the stream codes it with "
                                  f"dims {dims} ({math.prod(dims)} elements)")


def _check_count(meta: StateDictMetadata, ndus: list[ParsedNdu], allow_partial: bool) -> None:
    if len(ndus) > meta.count:
        raise _metadata_error("count", f"declares {meta.count} tensors but the stream codes {len(ndus)}")
    if len(ndus) < meta.count:
        if allow_partial:
            return
        raise BitstreamError(f"incomplete bitstream: {meta.count - len(ndus)} of the {meta.count} tensors "
                             f"its topology unit declares are missing (the stream ends after "
                             f"{ndus[-1].header.name!r}; its last tensor is {meta.last!r}; truncated stream? "
                             "decode(..., allow_partial=True) returns the tensors present)")
    if meta.last is not None and ndus[-1].header.name != meta.last:
        raise _metadata_error("last", f"names {meta.last!r}, but the stream's last tensor is "
                              f"{ndus[-1].header.name!r}")
