"""Encoder: normalised items to one NNC bitstream (start unit, parameter set, topology unit, one NDU each).

Chooses the stream's qp_density and qp base, codes each tensor's payload with the native DeepCABAC coder
(codebook tensors with the cheapest zero offset, tensors that carry their raw values as the smallest of
their coded and raw float32 units) and writes the units; tensors are independent NDUs, coded in parallel
threads when asked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from ecqx.coding import hls
from ecqx.coding.blocks import Block, plan_units
from ecqx.coding.common import DEFAULT_QP_DENSITY, QP_BASE_RANGE, _check_workers, _geometry, _map_in_order
from ecqx.coding.hls import NduHeader, PayloadType
from ecqx.coding.native import load_native
from ecqx.coding.normalise import _check_options, _Item, _to_item
from ecqx.coding.quant import QuantizedLevels

# codebooks up to this size get every zero offset tried (one payload encode each), larger ones two guesses
MAX_EXHAUSTIVE_CODEBOOK = 64
# cabac_unary_length_minus1 tried (besides the stream's) for tensors that carry their raw values
NONWEIGHT_UNARY_LENGTH_MINUS1 = 0


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


def _block_items(block: Block, by_name: dict[str, tuple[int, _Item]]) -> list[_Item]:
    """The block's items in coding order, checked: quantized (NNR_PT_FLOAT), one dq flag, no codebook."""
    items = [by_name[name][1] for name, _ in block.members]
    for it in items:
        if it.payload_type != PayloadType.NNR_PT_FLOAT or it.levels is None:
            raise ValueError(f"tensor {it.name!r} of block {block.block_id!r}: a block carries quantized "
                             f"tensors (levels and qp), not {it.payload_type.name} (encode_state_dict: "
                             "raw_float=False quantizes every float tensor)")
        if it.codebook is not None:
            raise ValueError(f"tensor {it.name!r} of block {block.block_id!r}: codebook tensors are not "
                             "written in blocks")
    if len({it.dq for it in items}) > 1:
        raise ValueError(f"block {block.block_id!r}: its tensors differ in dq (one dq_flag per block unit): "
                         + ", ".join(f"{it.name}={it.dq}" for it in items))
    return items


def _parameter_ids(items: list[_Item], units: list, given: Mapping[str, int] | None) -> dict[str, int]:
    """parameter_id of every tensor: its position in the input, or the given ids (every coded unit's tensor,
    the weight for a block)."""
    ids = {it.name: index for index, it in enumerate(items)}
    if given is None:
        return ids
    if not isinstance(given, Mapping):
        raise TypeError("parameter_ids must be a mapping of tensor names to ints, got "
                        f"{type(given).__name__}")
    for unit in units:
        name = unit if isinstance(unit, str) else unit.weight
        value = given.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**31:
            raise ValueError(f"parameter_ids[{name!r}] must be an int in 0..2^31-1, got {value!r}")
        ids[name] = int(value)
    return ids


def _encode_items(items: list[_Item], *, profile: int, scan_order: int, row_skipping: bool, param_opt: bool,
                  cabac_unary_length_minus1: int, topology_unit: bool, topology_data: str = "",
                  workers: int = 1, block_id_and_param_type: object = None,
                  parameter_ids: Mapping[str, int] | None = None) -> bytes:
    _check_options(profile, scan_order, cabac_unary_length_minus1)
    workers = _check_workers(workers)
    units = plan_units([it.name for it in items], {it.name: it.shape for it in items},
                       block_id_and_param_type)
    ids = _parameter_ids(items, units, parameter_ids)
    by_name = {it.name: (ids[it.name], it) for it in items}
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

    def block_ndu(block: Block) -> bytes:
        members = _block_items(block, by_name)
        weight = members[-1]
        so = _header_scan_order(weight.shape, scan_order)
        header = NduHeader(name=weight.name, payload_type=PayloadType.NNR_PT_BLOCK, dims=weight.shape,
                           dq=weight.dq, cabac_unary_length_minus1=cabac_unary_length_minus1, scan_order=so,
                           parameter_id=by_name[weight.name][0],
                           block=[hls.BlockMember(it.name, role, it.shape)
                                  for it, (_, role) in zip(members, block.members, strict=True)],
                           compressed_parameter_types=block.cpt)
        payload, eps = encode_block_payload(
            [it.levels for it in members], [it.shape for it in members], scan_order=so, dq=weight.dq,
            n1=cabac_unary_length_minus1, profile=profile, qp_bits=6 + qp_density,
            qp_deltas=[it.qp - qp_base for it in members], row_skipping=bool(row_skipping),
            param_opt=bool(param_opt))
        header.entry_points = [tuple(e) for e in eps]
        return hls.write_ndu(header, profile, payload)

    def encode_ndu(unit: str | Block) -> bytes:
        if isinstance(unit, Block):
            return block_ndu(unit)
        index, it = by_name[unit]
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

    parts += _map_in_order(encode_ndu, units, workers)
    return b"".join(parts)


def encode_block_payload(levels: list[torch.Tensor], shapes: list[tuple[int, ...]], *, scan_order: int,
                         dq: bool, n1: int, profile: int, qp_bits: int, qp_deltas: list[int],
                         row_skipping: bool, param_opt: bool, parent_present: bool = False,
                         bases: list | None = None, histories: list | None = None,
                         hdsp: bool = False) -> tuple[bytes, list]:
    """One NNR_PT_BLOCK codeword: the tensors in coding order, each with its qp delta (spec §3.1, §3.2).
    bases / histories (TCA / HDSP, update streams) hold one tensor or None per block tensor."""
    geometry = [_geometry(shape) for shape in shapes]
    empty32, empty8 = torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.int8)
    bases = [empty32 if b is None else b.reshape(-1) for b in (bases or [None] * len(levels))]
    histories = [empty8 if h is None else h.reshape(-1) for h in (histories or [None] * len(levels))]
    return load_native().encode_block(
        [lv.contiguous() for lv in levels], [g[0] for g in geometry], [g[1] for g in geometry], scan_order,
        dq, n1 + 1, profile, [0] * len(levels), [0] * len(levels), qp_bits, list(qp_deltas), row_skipping,
        param_opt, parent_present, bases, histories, hdsp)


def encode(tensors: Mapping[str, QuantizedLevels | torch.Tensor | np.ndarray], *, profile: int = 1,
           scan_order: int = 0, row_skipping: bool = True, param_opt: bool = True,
           cabac_unary_length_minus1: int = 10, topology_unit: bool = True, workers: int = 1,
           block_id_and_param_type: Mapping | None = None, parameter_ids: Mapping[str, int] | None = None
           ) -> bytes:
    """Encodes named tensors into one NNC bitstream.

    Values are quantized tensor descriptions (:class:`~ecqx.coding.quant.QuantizedLevels`: levels, qp,
    qp_density, codebook, dq; the last three may be missing) coded as NNR_PT_FLOAT, or integer torch
    tensors / numpy arrays coded losslessly as NNR_PT_INT. Tensors with different qp_density are converted
    exactly to the largest one. Deterministic: same input, same bytes (whatever `workers`, the number of
    threads coding tensors in parallel; e.g. ``os.cpu_count()``).

    The defaults are those of NNCodec's tensor and nn APIs. ``row_skipping`` writes the row_skip_enabled_flag
    and one flag per row of each ≥2-D tensor (a few bytes per tensor without zero rows); NNCodec's
    ``nnc.compress`` defaults to ``row_skipping=False``, so pass ``row_skipping=False`` to get its bytes.

    ``block_id_and_param_type`` (NNCodec's name and format: ``{"parameter_type": {name: role},
    "block_identifier": {name: block id}}``) codes the tensors of each block in one NNR_PT_BLOCK unit, at the
    position of the block's weight: a weight with, of its first dimension, 1-D tensors of the roles
    ``weight.ls``, ``bias`` and ``bn.beta``/``bn.gamma``/``bn.mean``/``bn.var`` (all four). Every tensor of a
    block is quantized (levels and qp) with one dq flag. NNCodec's
    ``compress(..., block_id_and_param_type=...)`` writes the same bytes for the same integers; for its
    batch-norm folding (``bnf=True``) see :func:`ecqx.coding.fold_batch_norm`, which also gives the
    ``parameter_ids`` NNCodec writes (profile 1; by default a tensor's position in ``tensors``; for a block,
    its weight's).
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of names to tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError("tensors is empty; nothing to encode")
    items = [_to_item(name, value) for name, value in tensors.items()]
    return _encode_items(items, profile=profile, scan_order=scan_order, row_skipping=row_skipping,
                         param_opt=param_opt, cabac_unary_length_minus1=cabac_unary_length_minus1,
                         topology_unit=topology_unit, workers=workers,
                         block_id_and_param_type=block_id_and_param_type, parameter_ids=parameter_ids)
