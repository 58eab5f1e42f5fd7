"""Golden NNC streams of spec nnc-bitstream.md §1 and §15.2 (validated there against NNCodec 2.1.3).

Each vector: the stream bytes, the tensor (name → integer levels), its qp (None for NNR_PT_INT), dq flag and
the writer settings that produced it. Expected float values are computed by hand from §12.1/§12.3
(Δ(qp) · level); the spec lists the decoded floats for V1 and V3, which the tests also check literally.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_COMMON_P0 = "00 04 02 00  00 08 06 81 00 40 00 80  00 06 0e 00 00 00"
_COMMON_P1 = "00 04 02 01  00 08 06 81 00 40 00 80  00 06 0e 00 00 00"


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


@dataclass(frozen=True)
class GoldenVector:
    name: str
    data: bytes
    tensor: str
    levels: np.ndarray
    qp: int | None
    dq: int
    profile: int
    row_skipping: bool
    param_opt: bool
    scan_order: int


_W = np.array([[1, 0, 0, -2], [0, 0, 0, 0], [3, -1, 0, 14]], dtype=np.int32)
_W_DQ = np.array([[2, 0, 0, -3], [0, 0, 0, 0], [4, -2, 0, 28]], dtype=np.int32)
_V5 = np.array([[0, 1, 0], [2, 0, -1], [0, 0, 0], [0, -3, 0], [1, 0, 0], [0, 0, 5], [0, 0, 0], [-1, 0, 0],
                [0, 2, 0], [0, 0, -1]], dtype=np.int32)

GOLDEN = [
    GoldenVector("V1", _hex(_COMMON_P0 +
                            "00 16 16 09 77 00 30 48 38 40 a0 80 ef 9d 00 23 12 0d d1 72 57 80"),
                 "w", _W, -16, 0, profile=0, row_skipping=False, param_opt=False, scan_order=0),
    GoldenVector("V2", _hex(_COMMON_P1 +
                            "00 18 16 09 77 00 d0 40 c1 20 e1 02 a0 80 f0 0a 20 01 50 4a a9 87 23 c0"),
                 "w", _W, -16, 0, profile=1, row_skipping=True, param_opt=True, scan_order=0),
    GoldenVector("V3", _hex(_COMMON_P1 +
                            "00 18 16 09 77 00 d0 41 c1 20 e1 02 a0 80 ec 0e 20 00 7b 93 ba 49 2f c0"),
                 "w", _W_DQ, -20, 1, profile=1, row_skipping=True, param_opt=True, scan_order=0),
    GoldenVector("V3-p0", _hex(_COMMON_P0 +
                               "00 16 16 09 77 00 70 48 38 40 a0 80 eb a1 00 0d 17 de 7b 93 43 80"),
                 "w", _W_DQ, -20, 1, profile=0, row_skipping=False, param_opt=False, scan_order=0),
    GoldenVector("V4", _hex(_COMMON_P1 + "00 14 16 01 69 00 d0 41 87 0a 15 8d 00 13 c7 92 dc 09 cd 1e"),
                 "i", np.array([5, -3, 0, 0, 1000], dtype=np.int32), None, 0, profile=1, row_skipping=True,
                 param_opt=True, scan_order=0),
    GoldenVector("V5", _hex(_COMMON_P0 +
                            "00 1a 16 09 77 00 30 48 a8 30 a1 f2 82 e8 e7 a5 00 3e f5 99 2c 32 63 de f9 f0"),
                 "w", _V5, -24, 0, profile=0, row_skipping=False, param_opt=False, scan_order=1),
]

# decoded floats the spec states literally (§1 for V1, §15.2 for V3)
STATED_VALUES = {
    "V1": np.array([[0.0625, 0, 0, -0.125], [0, 0, 0, 0], [0.1875, -0.0625, 0, 0.875]], dtype=np.float32),
    "V3": np.array([[0.0625, 0, 0, -0.09375], [0, 0, 0, 0], [0.125, -0.0625, 0, 0.875]], dtype=np.float32),
}

# step sizes the spec lists in §12.1 for qp_density 2
STATED_STEPS = {0: 1.0, 5: 2.5, -16: 0.0625, -20: 0.03125, -32: 0.00390625, -38: 0.00146484375,
                -75: 2.384185791015625e-06}
