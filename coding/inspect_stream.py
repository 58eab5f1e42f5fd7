"""Per-tensor summary of an NNC bitstream (for the `inspect` command)."""

from __future__ import annotations

import math

from ecqx.coding.api import decode_levels


def inspect_stream(data: bytes) -> list[dict]:
    """One row per tensor: name, shape, dtype, payload type, qp, step, dq, unit bytes, bits/value, zeros."""
    rows = []
    for name, t in decode_levels(data).items():
        values = t.dequantize()
        count = math.prod(t.shape)
        rows.append({
            "name": name,
            "shape": tuple(t.shape),
            "dtype": str(values.dtype).removeprefix("torch."),
            "payload_type": t.payload_type.name,
            "qp": t.qp,
            "step": t.step,
            "dq": t.dq,
            "codebook_size": None if t.codebook is None else int(t.codebook.numel()),
            "unit_bytes": t.unit_bytes,
            "bits_per_value": 8.0 * t.unit_bytes / count,
            "zero_fraction": float((values == 0).sum()) / count,
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
    """Plain-text table of inspect_stream rows, with a total line."""
    columns = ["name", "shape", "dtype", "payload_type", "qp", "step", "dq", "unit_bytes", "bits_per_value",
               "zero_fraction"]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    total_bytes = sum(r["unit_bytes"] for r in rows)
    total_values = sum(math.prod(r["shape"]) for r in rows)
    if rows:
        cells.append(["total", str(total_values), "", "", "", "", "", str(total_bytes),
                      _cell(8.0 * total_bytes / max(total_values, 1)), ""])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
