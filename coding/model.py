"""Whole-model helpers: a state_dict to one NNC bitstream and back (loads with strict=True)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping

import numpy as np
import torch

from ecqx.coding.blocks import plan_units
from ecqx.coding.common import DEFAULT_MAX_ELEMENTS, _check_workers
from ecqx.coding.decoder import _checked_stream, _decode_stream
from ecqx.coding.encoder import _encode_items
from ecqx.coding.errors import BitstreamError
from ecqx.coding.hls import STATE_DICT_METADATA_KEY, PayloadType, StateDictMetadata
from ecqx.coding.normalise import _description_item, _int32_levels, _Item
from ecqx.coding.quant import quantize_tensor, relative_qp

log = logging.getLogger(__name__)

METADATA_KEY = STATE_DICT_METADATA_KEY
NONWEIGHT_AUTO = "auto"
#: relative precision of nonweight_qp="auto": step <= max|x| / 2^bits (see benchmarks/bench_nonweight.py)
DEFAULT_NONWEIGHT_BITS = 10
MAX_NONWEIGHT_BITS = 24  # float32 has a 24-bit significand: a finer step only costs bits
_FLOAT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                 "bfloat16": torch.bfloat16}
_INT_DTYPES = {"int32": torch.int32, "int64": torch.int64, "int16": torch.int16, "int8": torch.int8,
               "uint8": torch.uint8, "bool": torch.bool}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_nonweight(nonweight_qp: object, nonweight_bits: object) -> None:
    if nonweight_qp != NONWEIGHT_AUTO and (isinstance(nonweight_qp, bool)
                                          or not isinstance(nonweight_qp, (int, np.integer))):
        raise ValueError(f"nonweight_qp must be {NONWEIGHT_AUTO!r} or an int qp, got {nonweight_qp!r}")
    if (isinstance(nonweight_bits, bool) or not isinstance(nonweight_bits, (int, np.integer))
            or not 1 <= nonweight_bits <= MAX_NONWEIGHT_BITS):
        raise ValueError(f"nonweight_bits must be an int in 1..{MAX_NONWEIGHT_BITS}, got {nonweight_bits!r}")


def _float_values(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The entry's values as a float32 CPU tensor (0-d as (1,)), with errors that name the entry."""
    if _dtype_name(tensor.dtype) not in _FLOAT_DTYPES:
        raise TypeError(f"state_dict entry {name!r}: unsupported float dtype {tensor.dtype}")
    if tensor.device.type == "meta":
        raise ValueError(f"state_dict entry {name!r} is on the meta device and has no data to encode")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"state_dict entry {name!r} contains NaN or infinite values; only finite values "
                         "can be coded")
    values = tensor.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"state_dict entry {name!r} has values beyond the float32 range")
    return (values.reshape(1) if values.dim() == 0 else values).contiguous()


def _state_item(name: str, tensor: torch.Tensor, quantized: Mapping[str, object], qp_density: int,
                nonweight_qp: int | str) -> _Item:
    """One entry as an item; with nonweight_qp="auto" non-quantized floats come back as raw-float items
    (their qp is chosen for all of them together by _code_auto_items)."""
    if name in quantized:
        item = _description_item(name, quantized[name])
    elif tensor.is_floating_point():
        values = _float_values(name, tensor)
        if nonweight_qp == NONWEIGHT_AUTO:
            return _Item(name, None, tuple(values.shape), PayloadType.NNR_PT_RAW_FLOAT, raw_values=values)
        item = _description_item(name, quantize_tensor(values, int(nonweight_qp), qp_density))
        item.raw_values = values
        return item
    elif _dtype_name(tensor.dtype) in _INT_DTYPES:
        levels = _int32_levels(name, tensor.reshape(-1) if tensor.dim() == 0 else tensor)
        item = _Item(name, levels, tuple(levels.shape), PayloadType.NNR_PT_INT)
    else:
        raise TypeError(f"state_dict entry {name!r}: dtype {tensor.dtype} cannot be coded "
                        f"(allowed: {', '.join(list(_FLOAT_DTYPES) + list(_INT_DTYPES))})")
    if tensor.dim() == 0 and item.levels.numel() == 1:
        item.levels = item.levels.reshape(1).contiguous()  # NNC has no 0-d tensors; shape restored on decode
        item.shape = (1,)
    elif item.shape != tuple(tensor.shape):
        raise ValueError(f"quantized[{name!r}] has shape {item.shape}, the state_dict entry "
                         f"{tuple(tensor.shape)}")
    return item


def _qp_window(fixed: list[int], wanted: list[int], qp_density: int) -> tuple[int, int]:
    """qps [lo, hi] one stream can carry (a (6 + qp_density)-bit delta from one base, spec §3.2) that hold
    the fixed qps and reach down to the finest wanted one as far as the fixed ones allow.

    A tensor whose wanted qp lies above the range is coded finer than wanted (never larger than raw, see
    _code_auto_items); one below it needs a finer step than the stream can signal and is stored raw.
    """
    width = 1 << (6 + qp_density)
    lo = min(fixed + wanted)
    if fixed:
        lo = max(lo, max(fixed) - width + 1)
    return lo, lo + width - 1


def _code_auto_items(items: list[_Item], qp_density: int, bits: int, raw_float: bool) -> None:
    """In place: every raw-float item gets a qp whose step is at most max|x| · 2^-bits of its own values
    (relative_qp), at the stream's qp_density. Where the stream cannot signal that step the item stays raw
    (raw_float) or takes the finest step the stream can signal."""
    auto = [it for it in items if it.payload_type == PayloadType.NNR_PT_RAW_FLOAT]
    if not auto:
        return
    floats = [it for it in items if it.payload_type == PayloadType.NNR_PT_FLOAT]
    density = max([qp_density] + [it.qp_density for it in floats])
    fixed = [it.qp << (density - it.qp_density) for it in floats]
    wanted = {it.name: relative_qp(float(it.raw_values.abs().max()), bits, density) for it in auto}
    lo, hi = _qp_window(fixed, [q for q in wanted.values() if q is not None], density)
    for it in auto:
        want = wanted[it.name]
        if want is None:  # all zeros (any step codes them), or values below every float32 step
            signalled = not bool(it.raw_values.any())
            qp = min(max(0, lo), hi) if signalled else lo
        else:
            signalled = want >= lo
            qp = min(max(want, lo), hi)
        if not signalled and raw_float:
            continue
        coded = quantize_tensor(it.raw_values, qp, density)
        if coded.qp != qp:  # levels beyond int32 even at the coarsest step the stream can signal
            if raw_float:
                continue
            peak = float(it.raw_values.abs().max())
            raise ValueError(f"state_dict entry {it.name!r}: values up to {peak:.3g} need a coarser step "
                             "than this stream can signal; pass raw_float=True")
        if not signalled:
            log.warning("state_dict entry %r: coded with step %.3g, coarser than nonweight_bits=%d asks "
                        "(the finest step this stream can signal)", it.name, coded.step, bits)
        it.levels, it.qp, it.qp_density = coded.levels.reshape(it.shape), qp, density
        it.payload_type = PayloadType.NNR_PT_FLOAT


def encode_state_dict(state_dict: Mapping[str, torch.Tensor], quantized: Mapping[str, object] | None = None,
                      *, qp_density: int = 2, nonweight_qp: int | str = NONWEIGHT_AUTO,
                      nonweight_bits: int = DEFAULT_NONWEIGHT_BITS, raw_float: bool = True,
                      **encode_options) -> bytes:
    """Encodes every entry of a state_dict into one NNC bitstream.

    Entries in `quantized` (quantized tensor descriptions) are coded losslessly from their levels; integer
    buffers losslessly as NNR_PT_INT. Every other float tensor (BatchNorm parameters and statistics, biases,
    layers left unquantized) is quantized uniformly:

    * ``nonweight_qp="auto"`` (default): each tensor with its own step, the largest NNC step at most
      ``max|x| · 2^-nonweight_bits`` (so every value stays within ``max|x| · 2^-(nonweight_bits+1)``);
    * an int: one fixed qp for all of them (NNCodec's nonweight_qp; -75 at qp_density 2 is a step of 2.4e-6).

    Their units use the smaller of two CABAC unary lengths, and with ``raw_float`` (default) a tensor is
    stored as raw float32 (NNR_PT_RAW_FLOAT, lossless) whenever that unit is not larger than the quantized
    one, so no tensor costs more than its float32 bytes. NNCodec 2.1.3 (which needs numpy < 2) decodes a raw
    float unit only as the last unit of a stream (after one, its reader computes the stream position as a
    float); ``raw_float=False`` writes streams it always reads. Original dtypes, 0-d shapes and empty tensors
    (NNC cannot code a zero dimension) are recorded in the topology unit text (NNCodec ignores it) so that
    decode_state_dict restores them.
    """
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError("state_dict must be a non-empty mapping of names to tensors")
    _check_nonweight(nonweight_qp, nonweight_bits)
    if not isinstance(raw_float, bool):
        raise TypeError(f"raw_float must be a bool, got {raw_float!r}")
    quantized = dict(quantized or {})
    unknown = sorted(set(quantized) - set(state_dict))
    if unknown:
        raise KeyError(f"quantized names not in the state_dict: {unknown}")
    if encode_options.get("topology_unit") is False:
        raise ValueError("encode_state_dict needs the topology unit (it carries dtypes); "
                         "drop topology_unit=False")
    encode_options["topology_unit"] = True
    items: list[_Item] = []
    meta: dict[str, object] = {"dtype": {}, "scalar": []}
    empty: list[dict] = []
    for index, (name, tensor) in enumerate(state_dict.items()):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if tensor.numel() == 0:
            empty.append(_empty_record(name, index, tensor, quantized))
            continue
        items.append(_state_item(name, tensor, quantized, qp_density, nonweight_qp))
        if tensor.dtype not in (torch.float32, torch.int32):
            meta["dtype"][name] = _dtype_name(tensor.dtype)
        if tensor.dim() == 0:
            meta["scalar"].append(name)
    if not items:
        raise ValueError(f"state_dict has no tensor with values to code (all {len(empty)} entries are empty)")
    if empty:
        meta["empty"] = empty
    # the NDUs carry the names; the count and the last name let a decoder detect a stream cut between units
    # (an NNR_PT_BLOCK unit is one unit, named after its weight)
    units = plan_units([it.name for it in items], {it.name: it.shape for it in items},
                       encode_options.get("block_id_and_param_type"))
    last = units[-1]
    meta["count"], meta["last"] = len(units), last if isinstance(last, str) else last.weight
    if any(not isinstance(unit, str) for unit in units):  # blocks code their tensors in another order
        meta["names"] = list(state_dict)
    _code_auto_items(items, qp_density, nonweight_bits, raw_float)
    for it in items:
        it.raw_fallback = raw_float
    text = json.dumps({METADATA_KEY: meta}, separators=(",", ":"))
    defaults = dict(profile=1, scan_order=0, row_skipping=True, param_opt=True, cabac_unary_length_minus1=10)
    defaults.update(encode_options)
    return _encode_items(items, topology_data=text, **defaults)


def _empty_record(name: str, index: int, tensor: torch.Tensor, quantized: Mapping[str, object]) -> dict:
    """Metadata of an entry with a zero dimension: NNC cannot code it, decode_state_dict recreates it."""
    levels = getattr(quantized.get(name), "levels", None)
    if name in quantized and (not hasattr(levels, "shape") or tuple(levels.shape) != tuple(tensor.shape)):
        raise ValueError(f"quantized[{name!r}] does not match the empty state_dict entry of shape "
                         f"{tuple(tensor.shape)}")
    dtype = _dtype_name(tensor.dtype)
    if dtype not in _FLOAT_DTYPES and dtype not in _INT_DTYPES:
        raise TypeError(f"state_dict entry {name!r}: dtype {tensor.dtype} cannot be coded "
                        f"(allowed: {', '.join(list(_FLOAT_DTYPES) + list(_INT_DTYPES))})")
    return {"name": name, "index": index, "shape": list(tensor.shape), "dtype": dtype}


def _read_stream(source: object) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            return handle.read()
    raise TypeError(f"expected the bitstream as bytes or a file path, got {type(source).__name__}")


def _torch_dtype(dtype_name: str) -> torch.dtype:
    return _FLOAT_DTYPES.get(dtype_name) or _INT_DTYPES[dtype_name]


def _restore_dtype(name: str, value: torch.Tensor, dtype_name: str) -> torch.Tensor:
    dtype = _torch_dtype(dtype_name)
    if dtype in (torch.bool, torch.uint8, torch.int8, torch.int16):  # narrower than the decoded int32
        lo, hi = (0, 1) if dtype == torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
        got_lo, got_hi = (int(v) for v in torch.aminmax(value))
        if got_lo < lo or got_hi > hi:
            raise BitstreamError(f"topology unit: field 'dtype' of the {METADATA_KEY!r} metadata gives "
                                 f"tensor {name!r} dtype {dtype_name!r}, but its decoded values span "
                                 f"{got_lo}..{got_hi}")
    return value.to(dtype)


def _entry_order(meta: StateDictMetadata, coded: list[str]) -> list[str]:
    if meta.names is not None:
        return meta.names
    order = list(coded)
    for entry in sorted(meta.empty, key=lambda e: e.index):
        order.insert(min(entry.index, len(order)), entry.name)
    return order


def decode_state_dict(source: bytes | str | os.PathLike, *, workers: int = 1,
                      max_elements: int = DEFAULT_MAX_ELEMENTS) -> dict[str, torch.Tensor]:
    """Decodes a bitstream (bytes, or the path of an .nnc file) to a state_dict: the recorded entry order,
    dtypes, 0-d shapes and empty entries are restored; `workers` threads decode tensors in parallel.

    Raises BitstreamError when a tensor named in the stream's topology unit is missing (a truncated stream)
    or the metadata is malformed, and before any allocation when the tensors hold more than max_elements
    elements in total.
    """
    stream, meta = _checked_stream(_read_stream(source), max_elements=max_elements)
    values = _decode_stream(stream, _check_workers(workers))
    if meta is None:
        return values
    scalars = set(meta.scalar)
    empty = {e.name: e for e in meta.empty}
    out: dict[str, torch.Tensor] = {}
    for name in _entry_order(meta, list(values)):
        if name in empty:
            out[name] = torch.empty(empty[name].shape, dtype=_torch_dtype(empty[name].dtype))
            continue
        value = values.pop(name)
        if name in meta.dtype:
            value = _restore_dtype(name, value, meta.dtype[name])
        out[name] = value.reshape(()) if name in scalars else value
    return out


def load_nnc(module: torch.nn.Module, source: bytes | str | os.PathLike, *, strict: bool = True,
             workers: int = 1, max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.nn.Module:
    """Decodes a bitstream (bytes or a path) with decode_state_dict and loads it into `module` with
    ``module.load_state_dict(..., strict=strict)``; returns the module."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    state = decode_state_dict(source, workers=workers, max_elements=max_elements)
    module.load_state_dict(state, strict=strict)
    return module
