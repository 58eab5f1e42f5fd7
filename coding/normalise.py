"""Input normalisation of the encoder: named values become coding items with checked parameters.

A value is either a quantized tensor description (:class:`~ecqx.coding.quant.QuantizedLevels`), coded as
NNR_PT_FLOAT from its integer levels, or an integer torch tensor / numpy array, coded losslessly as
NNR_PT_INT. Every check that needs only the input (types, ranges, codebooks, encoder options) happens here,
before any coding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ecqx.coding.common import DEFAULT_QP_DENSITY, INT32_RANGE
from ecqx.coding.hls import PayloadType
from ecqx.coding.quant import MAX_QP_DENSITY, QuantizedLevels, step_size

#: QuantizedLevels attributes that a description may lack, with the value the encoder takes for them
DESCRIPTION_DEFAULTS = {"qp_density": DEFAULT_QP_DENSITY, "codebook": None, "dq": False}
_REQUIRED_ATTRIBUTES = tuple(name for name in QuantizedLevels.__annotations__
                             if name not in DESCRIPTION_DEFAULTS)


@dataclass
class _Item:
    """One tensor as the encoder codes it."""

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


def _is_description(value: object) -> bool:
    """Whether `value` is coded as a quantized tensor description: a QuantizedLevels, except that the
    attributes of DESCRIPTION_DEFAULTS may be missing."""
    return all(hasattr(value, attribute) for attribute in _REQUIRED_ATTRIBUTES)


def _attribute(d: object, attribute: str) -> object:
    return getattr(d, attribute, DESCRIPTION_DEFAULTS[attribute])


def _description_item(name: str, d: object) -> _Item:
    dq = _attribute(d, "dq")
    if not isinstance(dq, (bool, int, np.bool_, np.integer)) or dq not in (0, 1):
        raise TypeError(f"tensor {name!r}: dq must be a bool (or 0/1), got {dq!r}")
    levels = _int32_levels(name, d.levels, dq=bool(dq))
    qp = _as_int(name, "qp", d.qp)
    qp_density = _as_int(name, "qp_density", _attribute(d, "qp_density"))
    if not 0 <= qp_density <= MAX_QP_DENSITY:
        raise ValueError(f"tensor {name!r}: qp_density must be 0..{MAX_QP_DENSITY}, got {qp_density}")
    step_size(qp, qp_density)
    codebook = _attribute(d, "codebook")
    cb = None if codebook is None else _codebook_list(name, codebook)
    if cb is not None and dq:
        raise ValueError(f"tensor {name!r}: codebook tensors cannot use dependent quantization (dq=True)")
    return _Item(name, levels, tuple(levels.shape), PayloadType.NNR_PT_FLOAT, qp, qp_density, bool(dq), cb)


def _to_item(name: object, value: object) -> _Item:
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {name!r}")
    if "\x00" in name:
        raise ValueError(f"tensor name {name!r} must not contain NUL characters")
    if _is_description(value):
        return _description_item(name, value)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            raise TypeError(f"tensor {name!r} is a float tensor without levels; quantize it first "
                            "(ecqx.coding.quantize_tensor) or pass an integer tensor for lossless coding")
        levels = _int32_levels(name, value)
        return _Item(name, levels, tuple(levels.shape), PayloadType.NNR_PT_INT)
    raise TypeError(f"tensor {name!r}: expected a quantized tensor description (levels, qp, ...) "
                    f"or an integer tensor, got {type(value).__name__}")


def _check_options(profile: int, scan_order: int, cabac_unary_length_minus1: int) -> None:
    if profile not in (0, 1) or isinstance(profile, bool):
        raise ValueError(f"profile must be 0 or 1, got {profile!r}")
    if scan_order not in range(5) or isinstance(scan_order, bool):
        raise ValueError(f"scan_order must be one of 0, 1, 2, 3, 4, got {scan_order!r}")
    if cabac_unary_length_minus1 not in range(256) or isinstance(cabac_unary_length_minus1, bool):
        raise ValueError(f"cabac_unary_length_minus1 must be 0..255, got {cabac_unary_length_minus1!r}")
