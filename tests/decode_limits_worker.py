"""Child process of tests/test_decode_limits.py: peak memory of decoding crafted large streams.

usage: python decode_limits_worker.py RESULT.json EXTRA_MEMORY_MB CASE [CASE ...]

Every case builds a small stream that declares large all-zero tensors (row skipping makes them cost a few
bytes), resets the kernel's peak-RSS mark (VmHWM, /proc/self/clear_refs), runs one reader and reports the
peak resident growth over the resident size before the call, next to the bytes of the result. The address
space is capped at the size after warm-up plus EXTRA_MEMORY_MB so a runaway allocation fails in here.
Exit status 3: the peak mark cannot be reset here, run every case in a process of its own.
"""

from __future__ import annotations

import gc
import json
import resource
import sys

WIDTH = 12_500_000  # 4 rows: 50M elements, 200 MB as float32


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status("VmHWM") <= _status("VmRSS") + (4 << 20)


def _widened_ndus(data: bytes, width: int, copies: int = 1) -> bytes:
    """The stream's last NDU declaring `width` columns (same payload: all its rows are skipped), `copies`
    times (named t0, t1, ... when more than one)."""
    from ecqx.coding import hls

    stream = hls.parse_stream(data)
    ndu = stream.ndus[-1]
    units = []
    for i in range(copies):
        header = ndu.header
        header.dims = (header.dims[0], width)
        header.name = f"t{i}" if copies > 1 else header.name
        units.append(hls.write_ndu(header, stream.profile, ndu.payload))
    return b"".join(units)


def _streams(codec):
    import torch

    def widened(data, width, copies=1):
        last = codec.hls.parse_stream(data).ndus[-1].unit_bytes
        return data[:-last] + _widened_ndus(data, width, copies)

    zeros = torch.zeros(4, 16, dtype=torch.int32)
    codebook = codec.CodedTensor(zeros + 5, -20, codebook=torch.tensor([-3, 5, 9], dtype=torch.int32))
    model = codec.encode_state_dict({"t": torch.zeros(4, 16)}, quantized={"t": codec.CodedTensor(zeros, -20)})
    return {"uniform": widened(codec.encode({"t": codec.CodedTensor(zeros, -20)}), WIDTH),
            "codebook": widened(codec.encode({"t": codebook}), WIDTH),
            "bombs": widened(codec.encode({"t": zeros}), 2**27, copies=20),
            "model": widened(model, WIDTH)}


CASES = {
    "uniform-decode": ("uniform", lambda c, d: c.decode(d)),
    "uniform-levels": ("uniform", lambda c, d: c.decode_levels(d)),
    "codebook-decode": ("codebook", lambda c, d: c.decode(d)),
    "codebook-levels": ("codebook", lambda c, d: c.decode_levels(d)),
    "model-state-dict": ("model", lambda c, d: c.decode_state_dict(d)),
    "inspect-headers": ("codebook", lambda c, d: c.inspect_stream(d)),
    "inspect-values": ("codebook", lambda c, d: c.inspect_stream(d, values=True)),
    "bombs-decode": ("bombs", lambda c, d: c.decode(d)),
    "bombs-inspect-values": ("bombs", lambda c, d: c.inspect_stream(d, values=True)),
}


def _result_bytes(result) -> int:
    import torch

    if isinstance(result, list):  # inspect rows
        return 0
    total = 0
    for value in result.values():
        tensor = value if isinstance(value, torch.Tensor) else value.levels
        total += tensor.numel() * tensor.element_size()
    return total


def main() -> int:
    result_path, extra_mb, *cases = sys.argv[1:]
    import torch

    import ecqx.coding as codec
    import ecqx.coding.hls  # noqa: F401 - codec.hls in _streams

    torch.set_num_threads(1)
    codec.load_native()
    streams = _streams(codec)
    codec.decode(codec.encode({"w": codec.CodedTensor(torch.ones(3, 3, dtype=torch.int32), -8)}))  # warm up
    limit = _status("VmSize") + int(extra_mb) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    report = {}
    for index, case in enumerate(cases):
        stream_name, read = CASES[case]
        gc.collect()
        if not _reset_peak() and index > 0:
            return 3
        before = _status("VmRSS")
        try:
            result = read(codec, streams[stream_name])
            outcome, message, output = "ok", "", _result_bytes(result)
        except codec.BitstreamError as exc:
            outcome, message, output = "rejected", str(exc), 0
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome, message, output = "failed", f"{type(exc).__name__}: {exc}"[:2000], 0
        growth = _status("VmHWM") - before
        result = None
        report[case] = {"outcome": outcome, "message": message, "output_bytes": output, "growth": growth,
                        "stream_bytes": len(streams[stream_name])}
    with open(result_path, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
