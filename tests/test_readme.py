"""The README's Python quickstart runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_python_quickstart_runs(tmp_path, monkeypatch):
    blocks = _python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_quickstart"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "digits.nnc").stat().st_size == int(namespace["trainer"].callback_metrics["nnc_bytes"])
    assert float(namespace["trainer"].callback_metrics["nnc_val_acc"]) > 0.5  # 10 classes: chance is 0.1
