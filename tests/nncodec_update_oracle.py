"""Test oracle for difference updates: NNCodec 2.1.3 coding a sequence of updates with its state carried.

NNCodec's own flow (as its federated-learning client uses it): every update goes through
``nnc.compress(update, compress_differences=True, approx_param_base=state, update_base_param=True, tca=...,
hdsp_tool=...)`` with one encoder-side ``state`` dict (``parameters``, ``put_node_depth``, ``device_id``,
``parameter_id``) kept across updates, and through ``nnc.decompress(bytes, approx_param_base=state,
update_base_param=True, hdsp_tool=..., return_hls=True)`` with a separate decoder-side state. HDSP history is
kept by an ``HdspTool`` on each side. Nothing is written to disk.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from nncodec import nnc
from nncodec.nnc_core.hdsp.hdsp_tool import HdspTool


def _state(device_id: int) -> dict:
    return {"parameters": {}, "put_node_depth": {}, "device_id": device_id, "parameter_id": {}}


class NNCodecUpdates:
    """NNCodec's encoder and decoder for one sequence of updates (one device)."""

    def __init__(
        self,
        *,
        qp: int = -38,
        nonweight_qp: int = -75,
        use_dq: bool = True,
        tca: bool = False,
        hdsp: bool = False,
        row_skipping: bool = False,
        device_id: int = 0,
        scan_order: int = 0,
        param_opt: bool = True,
    ) -> None:
        self.options = dict(
            qp=qp,
            nonweight_qp=nonweight_qp,
            use_dq=use_dq,
            tca=tca,
            row_skipping=row_skipping,
            device_id=device_id,
            scan_order=scan_order,
            param_opt=param_opt,
        )
        self.enc_state = _state(device_id)
        self.dec_state = _state(device_id)
        self.enc_hdsp = HdspTool(True) if hdsp else None
        self.dec_hdsp = HdspTool(True) if hdsp else None

    def encode(self, update: dict[str, np.ndarray]) -> bytes:
        params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in update.items()}
        with contextlib.redirect_stdout(io.StringIO()):
            data = nnc.compress(
                params,
                bitstream_path=None,
                return_bitstream=True,
                verbose=False,
                compress_differences=True,
                approx_param_base=self.enc_state,
                update_base_param=True,
                hdsp_tool=self.enc_hdsp,
                **self.options,
            )
        return bytes(data)

    def encoder_levels(self) -> dict[str, np.ndarray]:
        """The integers NNCodec's encoder coded last for each tensor (its TCA base)."""
        return {k: np.array(v, dtype=np.int32, copy=True) for k, v in self.enc_state["parameters"].items()}

    def decode(self, data: bytes) -> dict[str, np.ndarray]:
        """NNCodec's decoder (state carried): {name: float32 values} of the tensors the update carries."""
        with contextlib.redirect_stdout(io.StringIO()):
            values, _ = nnc.decompress(
                bytearray(data),
                verbose=False,
                approx_param_base=self.dec_state,
                update_base_param=True,
                hdsp_tool=self.dec_hdsp,
                return_hls=True,
            )
        return dict(values)


def correlated_updates(
    rounds: int,
    *,
    seed: int = 0,
    correlated: bool = True,
    zero_tensor_round: int | None = None,
    zero_rows: bool = False,
) -> list[dict[str, np.ndarray]]:
    """A small model's updates: a 64×32 weight, its 32 bias and a 16×3×3 conv-like weight.

    correlated: each round is the previous one slightly changed (a common direction plus noise, sparse), so
    the positions and signs of nonzero levels repeat (where TCA pays); otherwise independent noise.
    zero_tensor_round: in that round the bias update is all zero (NNCodec then writes no data unit for it).
    zero_rows: some rows of the 64×32 weight are zero in every round (row skipping).
    """
    rs = np.random.RandomState(seed)
    shapes = {"fc.weight": (64, 32), "fc.bias": (32,), "conv.weight": (16, 3, 3)}
    direction = {k: (rs.randn(*s) * (rs.rand(*s) < 0.3)).astype(np.float32) * 0.02 for k, s in shapes.items()}
    out = []
    for r in range(rounds):
        if correlated:
            u = {
                k: (d * (1.0 + 0.05 * r) + rs.randn(*d.shape).astype(np.float32) * 0.002 * (d != 0))
                for k, d in direction.items()
            }
        else:
            u = {k: (rs.randn(*s) * (rs.rand(*s) < 0.3)).astype(np.float32) * 0.02 for k, s in shapes.items()}
        if zero_rows:
            u["fc.weight"][::4] = 0
        if zero_tensor_round == r:
            u["fc.bias"] = np.zeros_like(u["fc.bias"])
        out.append({k: v.astype(np.float32) for k, v in u.items()})
    return out
