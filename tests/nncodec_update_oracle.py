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


class NNCodecBlockUpdates(NNCodecUpdates):
    """NNCodec's update coding with NNR_PT_BLOCK units (``block_id_and_param_type``).

    NNCodec writes block units of updates without the weight's dimensions (tensor_dimensions_flag 0) and its
    ``decompress`` has no way to take them, so the decoder here is its ``nnc_core.coder.decode`` given the
    model's dimensions out of band (``model_info["parameter_dimensions"]``), followed by its reconstruction,
    exactly as ``decompress`` runs them otherwise.
    """

    def __init__(self, *, block_id_and_param_type: dict, shapes: dict[str, tuple[int, ...]],
                 **options) -> None:
        super().__init__(**options)
        self.options["block_id_and_param_type"] = block_id_and_param_type
        self.shapes = dict(shapes)

    def decode(self, data: bytes) -> dict[str, np.ndarray]:
        from nncodec import nnc_core

        model_info = {
            "parameter_type": {}, "parameter_dimensions": dict(self.shapes), "parameter_index": {},
            "block_identifier": {}, "topology_storage_format": None, "topology_compression_format": None,
            "performance_maps": {"mps": {}, "lps": {}},
            "performance_map_flags": {k: {} for k in (
                "mps_sparsification_flag", "lps_sparsification_flag", "mps_pruning_flag", "lps_pruning_flag",
                "mps_unification_flag", "lps_unification_flag", "mps_decomposition_performance_map_flag",
                "lps_decomposition_performance_map_flag")},
        }
        with contextlib.redirect_stdout(io.StringIO()):
            decoded = nnc_core.coder.decode(bytearray(data), model_info, approx_param_base=self.dec_state,
                                            update_base_param=True, tool_if=self.dec_hdsp, return_hls=True)
            if self.dec_hdsp is not None:
                self.dec_hdsp.add_data_to_hist(decoded["parameters"])
            nnc_core.approximator.rec(decoded)
            decoded = nnc_core.approximator.recompose_params(model_info, decoded)
        return dict(decoded["parameters"])


def block_model_updates(rounds: int, *, seed: int = 0, zero_block_round: int | None = None,
                        conv_channels: int = 40) -> tuple[list[dict[str, np.ndarray]], dict]:
    """Updates of a small Conv+BatchNorm / Linear+bias model and its block_id_and_param_type.

    Tensors: conv.weight (C×3×3×3) with bn.{weight,bias,running_mean,running_var} (C), fc.weight (10×C),
    fc.bias (10), and head.weight (5×4) outside any block. Rounds are correlated (a common direction, sparse,
    plus noise). zero_block_round: in that round the whole fc block is zero (no data unit).
    """
    rs = np.random.RandomState(seed)
    c = conv_channels
    shapes = {"conv.weight": (c, 3, 3, 3), "bn.weight": (c,), "bn.bias": (c,), "bn.running_mean": (c,),
              "bn.running_var": (c,), "fc.weight": (10, c), "fc.bias": (10,), "head.weight": (5, 4)}
    direction = {k: (rs.randn(*s) * (rs.rand(*s) < 0.4)).astype(np.float32) * 0.02 for k, s in shapes.items()}
    updates = []
    for r in range(rounds):
        noise = {k: rs.randn(*d.shape).astype(np.float32) * 0.003 * (d != 0) for k, d in direction.items()}
        u = {k: (d * (1.0 + 0.1 * r) + noise[k]).astype(np.float32) for k, d in direction.items()}
        if zero_block_round == r:
            u["fc.weight"][:] = 0
            u["fc.bias"][:] = 0
        updates.append(u)
    description = {
        "parameter_type": {"conv.weight": "weight", "bn.weight": "bn.gamma", "bn.bias": "bn.beta",
                           "bn.running_mean": "bn.mean", "bn.running_var": "bn.var", "fc.weight": "weight",
                           "fc.bias": "bias"},
        "block_identifier": {"conv.weight": "conv", "bn.weight": "conv", "bn.bias": "conv",
                             "bn.running_mean": "conv", "bn.running_var": "conv", "fc.weight": "fc",
                             "fc.bias": "fc"},
    }
    return updates, description
