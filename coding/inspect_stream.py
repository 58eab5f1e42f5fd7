"""Per-tensor summary of an NNC bitstream (for the `inspect` command), read from the unit headers."""

from __future__ import annotations

import math

import torch

from ecqx.coding.common import DEFAULT_MAX_ELEMENTS
from ecqx.coding.decoder import _check_header_size, _checked_stream, _decode_unit, header_qp
from ecqx.coding.hls import ParsedNdu, PayloadType
from ecqx.coding.quant import step_size

_COLUMNS = [("name", "name"), ("shape", "shape"), ("dtype", "dtype"), ("payload_type", "payload"),
            ("qp", "qp*"), ("step", "step"), ("dq", "dq"), ("unit_bytes", "unit bytes"),
            ("bits_per_value", "bits/value"), ("zero_fraction", "zeros")]
_FOOTNOTES = [
    "qp*: quantization parameter at the stream's qp_density d ({densities});",
    "     step = (2^d + qp mod 2^d) * 2^(floor(qp / 2^d) - d), about 2^(qp / 2^d). Fine-coded non-weight",
    "     tensors (biases, BatchNorm) have very negative qp: -1200 at d = 6 is a step of about 2^-18.75.",
    "     '-': integer (NNR_PT_INT) and raw float32 (NNR_PT_RAW_FLOAT) tensors have no step.",
    "unit bytes: the tensor's whole NNR unit (header and payload); bits/value = 8 * unit bytes / values.",
]


def _zero_fraction(ndu: ParsedNdu, profile: int) -> float:
    decoded = _decode_unit(ndu, profile)
    values = [d.raw_values if d.payload_type == PayloadType.NNR_PT_RAW_FLOAT else d.levels for d in decoded]
    nonzero = sum(int(torch.count_nonzero(v)) for v in values)
    return 1.0 - nonzero / sum(v.numel() for v in values)  # a level is 0 exactly where its value is


def inspect_stream(data: bytes, *, values: bool = False, max_elements: int = DEFAULT_MAX_ELEMENTS,
                   allow_partial: bool = False) -> list[dict]:
    """One row per tensor (stream order): name, shape, dtype, payload_type, qp, qp_density, step, dq,
    codebook_size, unit_bytes, bits_per_value and zero_fraction.

    Header-only by default: shape, dtype and 0-d shapes come from the topology unit's metadata when present
    (else float32 / int32 by payload type), qp from the first bits of the payload; nothing is decoded and
    zero_fraction is None. values=True decodes the tensors one at a time for their zero_fraction; then
    max_elements bounds their total element count, as in decode(). A stream lacking tensors its topology
    unit names raises BitstreamError unless allow_partial=True.
    """
    stream, meta = _checked_stream(data, max_elements=max_elements, allow_partial=allow_partial,
                                   check_budget=bool(values))
    scalars = set(meta.scalar) if meta is not None else set()
    dtypes = meta.dtype if meta is not None else {}
    rows = []
    for ndu in stream.ndus:
        h = ndu.header
        _check_header_size(ndu)
        # an NNR_PT_BLOCK unit is one row (named after its weight, counting all its tensors' values)
        qp = None if h.payload_type == PayloadType.NNR_PT_BLOCK else header_qp(ndu)
        count = sum(math.prod(dims) for _, dims in h.tensors())
        default_dtype = "int32" if h.payload_type == PayloadType.NNR_PT_INT else "float32"
        rows.append({
            "name": h.name,
            "shape": () if h.name in scalars else tuple(h.dims),
            "dtype": dtypes.get(h.name, default_dtype),
            "payload_type": h.payload_type.name,
            "qp": qp,
            "qp_density": None if qp is None else ndu.qp_density,
            "step": None if qp is None else step_size(qp, ndu.qp_density),
            "dq": h.dq,
            "codebook_size": None if h.codebook is None else len(h.codebook),
            "unit_bytes": ndu.unit_bytes,
            "bits_per_value": 8 * ndu.unit_bytes / count,  # int / int: no float overflow for huge counts
            "zero_fraction": _zero_fraction(ndu, stream.profile) if values else None,
        })
    return rows


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value) or "()"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Plain-text table of inspect_stream rows with a total line and footnotes on the units; the zeros
    column only when the rows carry zero fractions (inspect_stream(..., values=True))."""
    columns = [(key, label) for key, label in _COLUMNS
               if key != "zero_fraction" or any(r.get("zero_fraction") is not None for r in rows)]
    cells = [[_cell(r.get(key)) for key, _ in columns] for r in rows]
    total_bytes = sum(r["unit_bytes"] for r in rows)
    total_values = sum(math.prod(r["shape"]) for r in rows)
    if rows:
        totals = {"name": "total", "shape": f"{total_values} values", "unit_bytes": str(total_bytes),
                  "bits_per_value": _cell(8 * total_bytes / max(total_values, 1))}
        cells.append([totals.get(key, "") for key, _ in columns])
    widths = [max(len(label), *(len(row[i]) for row in cells)) for i, (_, label) in enumerate(columns)]
    lines = ["  ".join(label.ljust(w) for (_, label), w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.append("")
    densities = sorted({r["qp_density"] for r in rows if r.get("qp_density") is not None})
    lines += [line.format(densities="d = " + ", ".join(map(str, densities)) if densities else "no qp here")
              if "{densities}" in line else line for line in _FOOTNOTES]
    if any(key == "zero_fraction" for key, _ in columns):
        lines.append("zeros: fraction of the values that decode to exactly 0.")
    else:
        lines.append("zero fractions need a full decode: inspect_stream(data, values=True).")
    return "\n".join(lines)
