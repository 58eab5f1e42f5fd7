"""Child process of tests/test_robustness.py: decodes a corpus of damaged streams under a memory cap.

usage: python robustness_worker.py CORPUS.pkl RESULT.json PROGRESS.txt EXTRA_MEMORY_MB

The corpus is a pickled list of (label, bytes). After importing torch and loading the native extension the
worker caps its address space (RLIMIT_AS) at the current size plus EXTRA_MEMORY_MB, so an allocation driven by
an unchecked header field fails loudly instead of exhausting the machine. Every stream goes through
``decode``, ``decode_levels``, ``inspect_stream`` and ``decode_state_dict``; the outcome per stream is "ok"
(a valid result), "rejected" (``BitstreamError`` with a message) or a failure description. A crash or hang is
detected by the parent (exit status, timeout); the label of the stream being decoded is in PROGRESS.txt.
"""

from __future__ import annotations

import json
import pickle
import resource
import sys
import traceback


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmSize not found in /proc/self/status")


def _check_valid(coding, data: bytes) -> str | None:
    """Decode once through every reader; returns None if the result is a valid decoding, else a problem."""
    import torch

    values = coding.decode(data)
    levels = coding.decode_levels(data)
    rows = coding.inspect_stream(data)
    if not isinstance(values, dict) or list(values) != list(levels):
        return f"decode and decode_levels disagree on the tensor names: {list(values)} vs {list(levels)}"
    if len(rows) != len(values):
        return f"inspect_stream lists {len(rows)} tensors, decode {len(values)}"
    for name, tensor in values.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            return f"decode returned {type(name).__name__} -> {type(tensor).__name__}"
        if tensor.dtype not in (torch.float32, torch.int32):
            return f"tensor {name!r}: unexpected dtype {tensor.dtype}"
        if tuple(tensor.shape) != tuple(levels[name].shape):
            return f"tensor {name!r}: shape {tuple(tensor.shape)} but the stream says {levels[name].shape}"
        if tensor.dtype == torch.float32 and not bool(torch.isfinite(tensor).all()):
            return f"tensor {name!r}: non-finite reconstruction"
    # model-level reader: a stream without (valid) model metadata must be rejected the same clean way
    try:
        state = coding.decode_state_dict(data)
    except coding.BitstreamError as exc:
        return None if str(exc).strip() else "decode_state_dict: BitstreamError without a message"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "decode_state_dict returned something other than a dict of tensors"
    return None


def main() -> int:
    corpus_path, result_path, progress_path, extra_mb = sys.argv[1:5]
    import torch

    import ecqx.coding as coding

    torch.set_num_threads(1)
    coding.load_native()
    with open(corpus_path, "rb") as f:
        corpus: list[tuple[str, bytes]] = pickle.load(f)
    # warm up every code path once before the cap (lazy imports, allocator pools)
    for _, data in corpus[:50]:
        try:
            _check_valid(coding, data)
        except coding.BitstreamError:
            pass
    limit = _vm_bytes() + int(extra_mb) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:  # prove the cap is effective: one allocation beyond it must fail
        probe = bytearray((int(extra_mb) + 256) * 2**20)
        del probe
        print("RLIMIT_AS cap is not effective", file=sys.stderr)
        return 3
    except MemoryError:
        pass

    outcomes: dict[str, str] = {}
    failures: list[dict] = []
    with open(progress_path, "w") as progress:
        for label, data in corpus:
            progress.write(label + "\n")
            progress.flush()
            try:
                problem = _check_valid(coding, data)
                outcome = "ok" if problem is None else "invalid"
            except coding.BitstreamError as exc:
                outcome = "rejected" if str(exc).strip() else "invalid"
                problem = None if str(exc).strip() else "BitstreamError without a message"
            except BaseException as exc:  # noqa: BLE001 - everything else is a finding
                outcome = "invalid"
                problem = f"{type(exc).__name__}: {exc}"[:500]
                if isinstance(exc, MemoryError):
                    problem = "MemoryError (allocation beyond the cap): " + "".join(
                        traceback.format_exception(exc))[-1500:]
            outcomes[label] = outcome
            if problem is not None:
                failures.append({"label": label, "problem": problem, "size": len(data)})
    with open(result_path, "w") as f:
        json.dump({"outcomes": outcomes, "failures": failures}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
