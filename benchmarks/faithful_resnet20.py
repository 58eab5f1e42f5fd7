"""Initial ECQ pass on the shipped ResNet-20 (4 bit, Λ = 0.05), faithful vs clean: per-layer table.

Per quantized tensor: the reference step size Δ (unsnapped), the orientation of the extra level, the snapped
NNC step (qp, qp_density) of clean mode, λ_max and zero fraction in both modes; totals at the end.

    python benchmarks/faithful_resnet20.py [--model ../shared/models/resnet20.pt] [--lam 0.05] [--bits 4]

Writes ``benchmarks/results/faithful_resnet20.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from ecqx.assign import assign
from ecqx.entropy import size_decay
from ecqx.grid import uniform_grid
from ecqx.targets import select_targets

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path(os.environ.get("ECQX_SHARED", ROOT.parent / "shared")) / "models" / "resnet20.pt"


def layer_rows(state_dict: dict, bits: int, lam: float) -> list[dict]:
    names = select_targets(state_dict)
    n_max = max(state_dict[n].numel() for n in names)
    rows = []
    for name in names:
        weight, decay = state_dict[name], size_decay(state_dict[name].numel(), n_max)
        row = {"name": name, "weights": weight.numel()}
        for mode in ("faithful", "clean"):
            grid = uniform_grid(weight, bits, mode)
            result = assign(weight, grid, lam, decay, mode)
            row[mode] = {"step": grid.step, "qp": grid.qp, "qp_density": grid.qp_density,
                         "levels": [grid.levels[0], grid.levels[-1]], "lam_max": result.lam_max,
                         "zero_fraction": result.zero_fraction}
        rows.append(row)
    return rows


def totals(rows: list[dict]) -> dict:
    total = sum(r["weights"] for r in rows)
    return {mode: sum(r[mode]["zero_fraction"] * r["weights"] for r in rows) / total
            for mode in ("faithful", "clean")}


def markdown(rows: list[dict], summary: dict, command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "| tensor | Δ (reference) | grid | clean Δ (qp, d) | λ_max faithful / clean "
             "| zeros faithful / clean |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        f, c = r["faithful"], r["clean"]
        lines.append(f"| {r['name']} | {f['step']:.5f} | {f['levels'][0]}…+{f['levels'][1]} | "
                     f"{c['step']:.6g} ({c['qp']}, {c['qp_density']}) | "
                     f"{f['lam_max']:.4f} / {c['lam_max']:.4f} | "
                     f"{f['zero_fraction']:.2%} / {c['zero_fraction']:.2%} |")
    lines.append(f"| **all {len(rows)}** | | | | | **{summary['faithful']:.2%} / {summary['clean']:.2%}** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--lam", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = layer_rows(torch.load(args.model, map_location="cpu"), args.bits, args.lam)
    summary = totals(rows)
    command = f"python benchmarks/faithful_resnet20.py --bits {args.bits} --lam {args.lam}"
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "layers": rows, "zero_fraction": summary}
    (args.out / "faithful_resnet20.json").write_text(json.dumps(payload, indent=2))
    table = markdown(rows, summary, command)
    (args.out / "faithful_resnet20.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
