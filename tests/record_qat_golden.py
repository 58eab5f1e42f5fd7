"""Record ``tests/golden/qat_golden.pt`` from the current implementation (see ``tests/qat_scenarios.py``).

Run from the repository root: ``python tests/record_qat_golden.py``. Recorded once, before the grouped
quantizer step replaced the per-tensor one; never re-record to make a failing test pass.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qat_scenarios import SCENARIOS, run_scenario  # noqa: E402

OUT = Path(__file__).resolve().parent / "golden" / "qat_golden.pt"


def main() -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    golden = {
        "commit": commit,
        "torch": str(torch.__version__),
        "scenarios": {name: run_scenario(name) for name in SCENARIOS},
    }
    torch.save(golden, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) from {commit}")


if __name__ == "__main__":
    main()
