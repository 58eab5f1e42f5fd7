"""Whole-model helpers: a state_dict to one NNC bitstream and back (loads with strict=True)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch

from ecqx.coding.api import _description_item, _encode_items, _int32_levels, _Item, decode
from ecqx.coding.errors import BitstreamError
from ecqx.coding.hls import PayloadType, parse_stream
from ecqx.coding.quant import quantize_tensor

METADATA_KEY = "ecqx-state-dict"
_FLOAT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                 "bfloat16": torch.bfloat16}
_INT_DTYPES = {"int32": torch.int32, "int64": torch.int64, "int16": torch.int16, "int8": torch.int8,
               "uint8": torch.uint8, "bool": torch.bool}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _state_item(name: str, tensor: torch.Tensor, quantized: Mapping[str, object], qp_density: int,
                nonweight_qp: int) -> _Item:
    if name in quantized:
        item = _description_item(name, quantized[name])
    elif tensor.is_floating_point():
        if _dtype_name(tensor.dtype) not in _FLOAT_DTYPES:
            raise TypeError(f"state_dict entry {name!r}: unsupported float dtype {tensor.dtype}")
        coded = quantize_tensor(tensor.reshape(-1) if tensor.dim() == 0 else tensor, nonweight_qp, qp_density)
        item = _description_item(name, coded)
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


def encode_state_dict(state_dict: Mapping[str, torch.Tensor], quantized: Mapping[str, object] | None = None,
                      *, qp_density: int = 2, nonweight_qp: int = -75, **encode_options) -> bytes:
    """Encodes every entry of a state_dict into one NNC bitstream.

    Entries in `quantized` (quantized tensor descriptions) are coded losslessly from their levels; other
    float tensors are quantized uniformly with the fine `nonweight_qp` (as NNCodec's nonweight_qp); integer
    buffers are coded losslessly as NNR_PT_INT. Original dtypes and 0-d shapes are recorded in the topology
    unit text (NNCodec ignores it) so that decode_state_dict restores them.
    """
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError("state_dict must be a non-empty mapping of names to tensors")
    quantized = dict(quantized or {})
    unknown = sorted(set(quantized) - set(state_dict))
    if unknown:
        raise KeyError(f"quantized names not in the state_dict: {unknown}")
    if encode_options.get("topology_unit") is False:
        raise ValueError("encode_state_dict needs the topology unit (it carries dtypes); "
                         "drop topology_unit=False")
    encode_options["topology_unit"] = True
    items: list[_Item] = []
    meta: dict[str, dict] = {"dtype": {}, "scalar": []}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        items.append(_state_item(name, tensor, quantized, qp_density, nonweight_qp))
        if tensor.dtype not in (torch.float32, torch.int32):
            meta["dtype"][name] = _dtype_name(tensor.dtype)
        if tensor.dim() == 0:
            meta["scalar"].append(name)
    text = json.dumps({METADATA_KEY: meta}, separators=(",", ":"))
    defaults = dict(profile=1, scan_order=0, row_skipping=True, param_opt=True, cabac_unary_length_minus1=10)
    defaults.update(encode_options)
    return _encode_items(items, topology_data=text, **defaults)


def _metadata(data: bytes) -> dict:
    text = parse_stream(data).topology_data
    if not text:
        return {"dtype": {}, "scalar": []}
    try:
        meta = json.loads(text)[METADATA_KEY]
        return {"dtype": dict(meta.get("dtype", {})), "scalar": list(meta.get("scalar", []))}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {"dtype": {}, "scalar": []}


def decode_state_dict(data: bytes, *, workers: int = 1) -> dict[str, torch.Tensor]:
    """Decodes a bitstream to a state_dict (original dtypes and 0-d shapes restored when recorded);
    `workers` threads decode tensors in parallel."""
    meta = _metadata(data)
    out: dict[str, torch.Tensor] = {}
    for name, value in decode(data, workers=workers).items():
        dtype_name = meta["dtype"].get(name)
        if dtype_name is not None:
            dtype = _FLOAT_DTYPES.get(dtype_name) or _INT_DTYPES.get(dtype_name)
            if dtype is None:
                raise BitstreamError(f"tensor {name!r}: unknown dtype {dtype_name!r} in the stream metadata")
            value = value.to(dtype)
        if name in meta["scalar"] and value.numel() == 1:
            value = value.reshape(())
        out[name] = value
    return out
