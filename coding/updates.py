"""Difference updates (NNC edition 2, as NNCodec 2.1.3 codes them): stateful encoder and decoder.

A federated or incremental run sends a sequence of updates of the same named tensors. Each update is one NNC
bitstream whose model parameter set has ``mps_parent_signalling_enabled_flag = 1`` and whose data units name
their parent (the previous update of the same tensor) through ``device_id``, ``parameter_id`` and
``put_node_depth`` (see coding/README.md, "NNC edition 2: difference updates"). Two optional tools make the
coding of an update depend on earlier ones:

* ``tca`` (temporal context adaptation): the integers of the previous update of a tensor select the
  significance, sign and greater-than contexts at each position;
* ``hdsp`` (history-dependent significance probability): a mask of the positions that were nonzero in any
  earlier update selects a separate significance context; the encoder codes each tensor with and without it
  and keeps the smaller payload.

Both sides therefore carry state from one update to the next (:meth:`state_dict` / :meth:`load_state_dict`
let a run stop and resume). An update tensor that is entirely zero gets no data unit at all.

This module only imports torch/numpy and the codec's own layers (DESIGN.md §1).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ecqx.coding import hls
from ecqx.coding.blocks import Block, check_block_description, plan_units
from ecqx.coding.common import DEFAULT_MAX_ELEMENTS
from ecqx.coding.decoder import MAX_POSITIONS_PER_BYTE, PAYLOAD_SLACK_BYTES, _coded_positions, _map_codebook
from ecqx.coding.encoder import _cheapest_egk, encode_block_payload
from ecqx.coding.errors import BitstreamError
from ecqx.coding.hls import NduHeader, PayloadType
from ecqx.coding.model import decode_state_dict
from ecqx.coding.native import load_native
from ecqx.coding.normalise import _codebook_list
from ecqx.coding.quant import MAX_QP_DENSITY, quantize_tensor, step_size

STATE_VERSION = 1
PROFILE = 1  # parent signalling, TCA and HDSP are profile-1 tools
_EMPTY_I32 = torch.empty(0, dtype=torch.int32)
_EMPTY_I8 = torch.empty(0, dtype=torch.int8)


@dataclass
class _Tensor:
    """One tensor of an update, ready to code."""

    name: str
    levels: torch.Tensor  # int32, CPU, contiguous, original shape; codebook tensors: index - zero offset
    payload_type: PayloadType
    qp: int | None = None
    dq: bool = False
    codebook: list[int] | None = None  # strictly increasing integer codebook (levels are coded indices)
    cb_zero: int = 0  # CbZeroOffset: the codebook index coded as 0
    cb_egk: int = 0

    @property
    def cb_size(self) -> int:
        return len(self.codebook) if self.codebook is not None else 0

    def is_zero(self) -> bool:
        """True when every value of the update is 0 (then it gets no data unit)."""
        if self.codebook is not None:
            # coded indices are all 0 also for a constant nonzero tensor (codebook [c]); NNCodec skips that
            # unit too and its decoder then never learns c. We code it (a one-entry codebook costs no bins).
            return self.codebook == [0]
        return not bool(self.levels.any())


@dataclass
class _Node:
    """What both sides remember of a tensor: its last coded integers (TCA base), how many updates of it were
    coded (put_node_depth of the last one), its parameter_id, and the HDSP history mask."""

    base: torch.Tensor | None = None
    depth: int = 0
    parameter_id: int | None = None
    history: torch.Tensor | None = None  # int8, 1 where an earlier update was nonzero


def _geometry(shape: tuple[int, ...]) -> tuple[int, int]:
    count = math.prod(shape)
    width = math.prod(shape[1:]) if len(shape) > 1 else 1
    return count // width, width


def _header_scan_order(shape: tuple[int, ...], scan_order: int) -> int:
    rows, width = _geometry(shape)
    return scan_order if len(shape) > 1 and rows > 1 and width > 1 else 0


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in {lo}..{hi}, got {value!r}")
    return int(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _state_tensor(value: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None else value.detach().clone()


def _nodes_to_state(nodes: dict[str, _Node]) -> dict:
    return {
        name: {
            "base": _state_tensor(n.base),
            "depth": n.depth,
            "parameter_id": n.parameter_id,
            "history": _state_tensor(n.history),
        }
        for name, n in nodes.items()
    }


def _nodes_from_state(tensors: object, what: str) -> dict[str, _Node]:
    if not isinstance(tensors, Mapping):
        raise ValueError(
            f"{what} state_dict: 'tensors' must be a mapping of tensor names, got {tensors!r:.100}"
        )
    nodes = {}
    for name, entry in tensors.items():
        if not isinstance(entry, Mapping) or set(entry) != {"base", "depth", "parameter_id", "history"}:
            raise ValueError(
                f"{what} state_dict: tensor {name!r} needs exactly base, depth, parameter_id, history"
            )
        base, history = entry["base"], entry["history"]
        if base is not None and (not isinstance(base, torch.Tensor) or base.dtype != torch.int32):
            raise ValueError(f"{what} state_dict: base of {name!r} must be an int32 tensor or None")
        if history is not None and (not isinstance(history, torch.Tensor) or history.dtype != torch.int8):
            raise ValueError(f"{what} state_dict: history of {name!r} must be an int8 tensor or None")
        depth = _check_int(f"{what} state_dict depth of {name!r}", entry["depth"], 0, 2**31)
        pid = entry["parameter_id"]
        if pid is not None:
            pid = _check_int(f"{what} state_dict parameter_id of {name!r}", pid, 0, 2**31)
        nodes[name] = _Node(_state_tensor(base), depth, pid, _state_tensor(history))
    return nodes


def _add_history(node: _Node, levels: torch.Tensor) -> None:
    if node.history is None:
        node.history = torch.zeros(levels.shape, dtype=torch.int8)
    node.history[levels != 0] = 1


def _check_state_kind(state: object, kind: str, owner: str) -> None:
    """ValueError unless ``state`` is a mapping of ``kind`` at this module's STATE_VERSION."""
    if not isinstance(state, Mapping) or state.get("kind") != kind:
        raise ValueError(f"not an {owner} state_dict (missing kind {kind!r})")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{owner} state_dict version {state.get('version')!r} is not {STATE_VERSION}")


# ------------------------------------------------------------------------------------------------ encoder
class UpdateEncoder:
    """Encodes a sequence of difference updates of named tensors, one NNC bitstream per update.

    Options follow NNCodec's ``nnc.compress`` where they mean the same: float tensors are quantized exactly as
    NNCodec does, with ``qp`` for tensors of two or more dimensions and ``nonweight_qp`` for the others
    (None: ``qp - (2 << qp_density)``), with its 8-state trellis when ``use_dq``. ``tca`` and ``hdsp`` switch
    the temporal tools on; ``row_skipping`` signals all-zero rows; ``device_id`` names the sender in every
    data unit (``parent_device_id`` is written as NNCodec writes it, 0 unless given).

    ``block_id_and_param_type`` (NNCodec's grouping, see :func:`ecqx.coding.encode`) codes each block (a
    weight with its bias, batch-norm or local-scaling vectors) in one NNR_PT_BLOCK unit; its float tensors
    other than the weight take ``nonweight_qp``. As NNCodec writes them in updates, block units leave the
    weight's dimensions out of band: the receiving :class:`UpdateDecoder` knows them from its state or its
    ``shapes``.

    ``codebook_mode`` 1 codes every quantized float tensor with a codebook, as NNCodec's ``codebook_mode=1``
    does: float tensors are quantized uniformly without dependent quantization (with ``use_dq`` at a qp
    ``1 << qp_density`` lower, NNCodec's stand-in for DQ), the codebook is the sorted set of their levels, and
    the zero offset (the codebook index coded as 0) is the one NNCodec's search picks. TCA and HDSP then work
    on the coded indices (codebook index minus zero offset), as in NNCodec. Quantized tensor descriptions with
    a ``codebook`` are coded with that codebook whatever ``codebook_mode`` is. Codebook tensors are not
    written in NNR_PT_BLOCK units.

    With the same options and the same sequence of updates, the bytes equal those of NNCodec 2.1.3's
    ``compress(..., compress_differences=True, approx_param_base=state, update_base_param=True)`` (one
    exception, see coding/README.md: a codebook tensor whose update is one nonzero value everywhere).
    """

    def __init__(
        self,
        qp: int = -38,
        *,
        nonweight_qp: int | None = -75,
        qp_density: int = 2,
        use_dq: bool = True,
        tca: bool = False,
        hdsp: bool = False,
        row_skipping: bool = False,
        device_id: int = 0,
        parent_device_id: int = 0,
        param_opt: bool = True,
        scan_order: int = 0,
        cabac_unary_length_minus1: int = 10,
        block_id_and_param_type: Mapping | None = None,
        codebook_mode: int = 0,
    ) -> None:
        self.codebook_mode = _check_int("codebook_mode", codebook_mode, 0, 1)
        if block_id_and_param_type is not None:
            if self.codebook_mode:
                raise ValueError("codebook_mode=1 cannot be combined with block_id_and_param_type: codebook "
                                 "tensors are not written in NNR_PT_BLOCK units")
            types, ids = check_block_description(block_id_and_param_type)
            block_id_and_param_type = {"parameter_type": types, "block_identifier": ids}
        self.block_id_and_param_type = block_id_and_param_type
        self.qp_density = _check_int("qp_density", qp_density, 0, MAX_QP_DENSITY)
        self.qp = _check_int("qp", qp, -(2**12), 2**12 - 1)
        if nonweight_qp is not None:
            nonweight_qp = _check_int("nonweight_qp", nonweight_qp, -(2**12), 2**12 - 1)
        # NNCodec: a missing (or zero) nonweight_qp means a step four times finer than qp's
        self.nonweight_qp = nonweight_qp if nonweight_qp else self.qp - (2 << self.qp_density)
        self.use_dq = _check_bool("use_dq", use_dq)
        self.tca = _check_bool("tca", tca)
        self.hdsp = _check_bool("hdsp", hdsp)
        self.row_skipping = _check_bool("row_skipping", row_skipping)
        self.param_opt = _check_bool("param_opt", param_opt)
        self.device_id = _check_int("device_id", device_id, 0, 2**31)
        self.parent_device_id = _check_int("parent_device_id", parent_device_id, 0, 2**31)
        self.scan_order = _check_int("scan_order", scan_order, 0, 4)
        self.cabac_unary_length_minus1 = _check_int(
            "cabac_unary_length_minus1", cabac_unary_length_minus1, 0, 255
        )
        if self.codebook_mode and self.cabac_unary_length_minus1 == 0:
            # NNCodec's zero-offset search codes with cabac_unary_length_minus1 greater-than flags: none here
            raise ValueError("codebook_mode=1 needs cabac_unary_length_minus1 >= 1")
        self._nodes: dict[str, _Node] = {}
        self._updates = 0

    # -------------------------------------------------------------------------------------------- state
    def _options(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "qp",
                "nonweight_qp",
                "qp_density",
                "use_dq",
                "tca",
                "hdsp",
                "row_skipping",
                "device_id",
                "parent_device_id",
                "param_opt",
                "scan_order",
                "cabac_unary_length_minus1",
                "block_id_and_param_type",
                "codebook_mode",
            )
        }

    @property
    def updates(self) -> int:
        """Number of updates encoded so far."""
        return self._updates

    def state_dict(self) -> dict:
        """Everything needed to continue the sequence: options, per-tensor base, depth, id and history."""
        return {
            "kind": "ecqx-update-encoder",
            "version": STATE_VERSION,
            "options": self._options(),
            "updates": self._updates,
            "tensors": _nodes_to_state(self._nodes),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restores a state_dict of an encoder with the same options (else ValueError naming the option)."""
        _check_state_kind(state, "ecqx-update-encoder", "UpdateEncoder")
        options = dict(state.get("options", {}))
        options.setdefault("codebook_mode", 0)  # states written before codebook_mode existed
        for key, value in self._options().items():
            if options.get(key) != value:
                raise ValueError(
                    f"UpdateEncoder state_dict was written with {key}={options.get(key)!r}, this "
                    f"encoder has {key}={value!r}"
                )
        nodes = _nodes_from_state(state.get("tensors"), "UpdateEncoder")
        self._updates = _check_int("UpdateEncoder state_dict updates", state.get("updates"), 0, 2**62)
        self._nodes = nodes

    # -------------------------------------------------------------------------------------------- input
    def _tensor(self, name: object, value: object) -> _Tensor:
        if not isinstance(name, str) or "\x00" in name:
            raise TypeError(f"tensor names must be str without NUL characters, got {name!r}")
        if hasattr(value, "levels") and hasattr(value, "qp"):
            density = getattr(value, "qp_density", self.qp_density)
            if density != self.qp_density:
                raise ValueError(
                    f"tensor {name!r}: qp_density {density} differs from the encoder's "
                    f"qp_density {self.qp_density}"
                )
            levels = torch.as_tensor(value.levels)
            if levels.is_floating_point():
                raise TypeError(f"tensor {name!r}: levels must be integers, got {levels.dtype}")
            step_size(int(value.qp), self.qp_density)
            dq = bool(getattr(value, "dq", False))
            codebook = getattr(value, "codebook", None)
            if codebook is not None:
                if dq:
                    raise ValueError(f"tensor {name!r}: codebook tensors cannot use dependent quantization "
                                     "(dq=True)")
                return self._codebook_tensor(name, levels, int(value.qp), _codebook_list(name, codebook))
            return _Tensor(name, self._int32(name, levels, dq), PayloadType.NNR_PT_FLOAT, int(value.qp), dq)
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"tensor {name!r}: expected a float or integer tensor or a quantized tensor "
                f"description (levels, qp), got {type(value).__name__}"
            )
        if value.dim() == 0:
            value = value.reshape(1)
        if value.numel() == 0:
            raise ValueError(f"tensor {name!r} is empty; NNC cannot code tensors with a zero dimension")
        if value.is_floating_point():
            # NNCodec: qp for "weight" tensors, nonweight_qp for the others; without a role, >= 2-D is one
            role = (self.block_id_and_param_type or {}).get("parameter_type", {}).get(name)
            is_weight = role == "weight" if role is not None else value.dim() >= 2
            qp = self.qp if is_weight else self.nonweight_qp
            if self.codebook_mode:
                # NNCodec's codebook approximator: no DQ; with use_dq a finer step stands in for it
                qp -= (1 << self.qp_density) if self.use_dq else 0
                coded = quantize_tensor(value, qp, self.qp_density, dq=False)
                levels = coded.levels.contiguous()
                return self._codebook_tensor(name, levels, coded.qp, torch.unique(levels).tolist())
            coded = quantize_tensor(
                value,
                qp,
                self.qp_density,
                dq=self.use_dq,
                scan_order=_header_scan_order(tuple(value.shape), self.scan_order),
            )
            return _Tensor(name, coded.levels.contiguous(), PayloadType.NNR_PT_FLOAT, coded.qp, coded.dq)
        return _Tensor(name, self._int32(name, value, False), PayloadType.NNR_PT_INT)

    def _codebook_tensor(self, name: str, levels: torch.Tensor, qp: int, codebook: list[int]) -> _Tensor:
        """A codebook-coded tensor: `levels` (codebook values) become indices minus the zero offset that
        NNCodec's search chooses, with the cheapest Exp-Golomb order for the codebook deltas."""
        cb = torch.tensor(codebook, dtype=torch.int64)
        values = levels.detach().to("cpu", torch.int64).contiguous()
        if values.numel() == 0:
            raise ValueError(f"tensor {name!r} is empty; NNC cannot code tensors with a zero dimension")
        index = torch.searchsorted(cb, values).clamp(max=len(codebook) - 1)
        if not bool((cb[index] == values).all()):
            bad = int(values[cb[index] != values][0])
            raise ValueError(f"tensor {name!r}: level {bad} is not an entry of its codebook {codebook}")
        index = index.to(torch.int32)
        zero = self._nncodec_zero_offset(index, len(codebook))
        return _Tensor(name, (index - zero).contiguous(), PayloadType.NNR_PT_FLOAT, qp, False,
                       codebook=list(codebook), cb_zero=zero, cb_egk=_cheapest_egk(list(codebook), zero))

    def _nncodec_zero_offset(self, index: torch.Tensor, size: int) -> int:
        """NNCodec's choice of the codebook zero offset: the one whose shifted indices take the fewest bytes
        in a plain profile-0 coding (raster scan, no DQ, no codebook bounds, parameter optimisation on, one
        greater-than flag fewer than the real coding uses); ties keep the smaller offset. It ignores TCA, HDSP
        and row skipping, so the real payload is not always smallest with it, but its bytes are NNCodec's."""
        rows, width = _geometry(tuple(index.shape))
        native = load_native()
        best, best_len, n1 = 0, None, self.cabac_unary_length_minus1
        for zero in range(size):
            payload, _ = native.encode_payload(index - zero, rows, width, 0, False, n1, 0, 0, 0, False, 8,
                                               False, True, 0)
            if best_len is None or len(payload) < best_len:
                best, best_len = zero, len(payload)
        return best

    @staticmethod
    def _int32(name: str, levels: torch.Tensor, dq: bool) -> torch.Tensor:
        wide = levels.detach().to("cpu", torch.int64)
        if wide.numel() == 0:
            raise ValueError(f"tensor {name!r} is empty; NNC cannot code tensors with a zero dimension")
        lo = -(2**31) if dq else -(2**31) + 1
        if int(wide.min()) < lo or int(wide.max()) > 2**31 - 1:
            raise ValueError(f"tensor {name!r}: values exceed the codable range {lo}..{2**31 - 1}")
        return wide.to(torch.int32).contiguous()

    # -------------------------------------------------------------------------------------------- coding
    def _payload(self, t: _Tensor, node: _Node | None, hdsp: bool, base: torch.Tensor | None) -> tuple:
        rows, width = _geometry(tuple(t.levels.shape))
        is_float = t.payload_type == PayloadType.NNR_PT_FLOAT
        qp_delta = t.qp if is_float else 0  # mps_quantization_parameter is 0, as NNCodec writes it
        half = 1 << (5 + self.qp_density)
        if is_float and not -half <= qp_delta < half:
            raise ValueError(
                f"tensor {t.name!r}: qp {t.qp} is outside {-half}..{half - 1}, the range one update "
                f"stream carries with qp_density {self.qp_density}"
            )
        history = (
            node.history.reshape(-1)
            if (hdsp and node is not None and node.history is not None)
            else _EMPTY_I8
        )
        return load_native().encode_update_payload(
            t.levels,
            rows,
            width,
            _header_scan_order(tuple(t.levels.shape), self.scan_order),
            t.dq,
            self.cabac_unary_length_minus1 + 1,
            t.cb_size,
            t.cb_zero,
            is_float,
            6 + self.qp_density,
            self.row_skipping,
            self.param_opt,
            qp_delta,
            True,
            _EMPTY_I32 if base is None else base.reshape(-1),
            history,
            hdsp,
        )

    def _decoded(self, t: _Tensor, node: _Node | None, payload: bytes,
                 base: torch.Tensor | None) -> torch.Tensor:
        rows, width = _geometry(tuple(t.levels.shape))
        out = torch.empty(t.levels.shape, dtype=torch.int32)
        history = node.history.reshape(-1) if (node is not None and node.history is not None) else _EMPTY_I8
        is_float = t.payload_type == PayloadType.NNR_PT_FLOAT
        load_native().decode_update_payload(
            payload, out, rows, width, _header_scan_order(tuple(t.levels.shape), self.scan_order), t.dq,
            self.cabac_unary_length_minus1 + 1, t.cb_size, t.cb_zero, is_float, 6 + self.qp_density, True,
            _EMPTY_I32 if base is None else base.reshape(-1), history)
        return out

    def _block_payload(self, members: list[_Tensor], bases: list, hdsp: bool, so: int) -> tuple[bytes, list]:
        nodes = [self._nodes.get(t.name) for t in members]
        histories = [n.history if (hdsp and n is not None) else None for n in nodes]
        return encode_block_payload(
            [t.levels for t in members], [tuple(t.levels.shape) for t in members], scan_order=so,
            dq=members[-1].dq, n1=self.cabac_unary_length_minus1, profile=PROFILE,
            qp_bits=6 + self.qp_density,
            qp_deltas=[t.qp for t in members], row_skipping=self.row_skipping, param_opt=self.param_opt,
            parent_present=True, bases=bases, histories=histories, hdsp=hdsp)

    def _encode_block(self, block: Block, by_name: dict[str, _Tensor], index: int,
                      parts: list[bytes]) -> list[tuple[_Tensor, int, torch.Tensor]]:
        """Appends the NNR_PT_BLOCK unit of one block (none when all its tensors are zero); returns what the
        state records for its tensors."""
        members = [by_name[name] for name, _ in block.members]
        for t in members:
            if t.codebook is not None:
                raise ValueError(f"tensor {t.name!r} of block {block.block_id!r}: codebook tensors are not "
                                 "written in NNR_PT_BLOCK units")
        if not any(bool(t.levels.any()) for t in members):
            return []
        for t in members:
            if t.payload_type != PayloadType.NNR_PT_FLOAT:
                raise ValueError(f"tensor {t.name!r} of block {block.block_id!r}: a block carries quantized "
                                 "float tensors, not integer ones")
        if len({t.dq for t in members}) > 1:
            raise ValueError(f"block {block.block_id!r}: its tensors differ in dq (one dq_flag per block "
                             "unit)")
        half = 1 << (5 + self.qp_density)
        for t in members:
            if not -half <= t.qp < half:
                raise ValueError(f"tensor {t.name!r}: qp {t.qp} is outside {-half}..{half - 1}, the range "
                                 f"one update stream carries with qp_density {self.qp_density}")
        weight = members[-1]
        node = self._nodes.get(weight.name)
        nodes = [self._nodes.get(t.name) for t in members]
        # NNCodec: TCA for the whole block when its weight has a base
        tca = self.tca and node is not None and node.base is not None
        if tca and any(n is None or n.base is None for n in nodes):
            missing = [t.name for t, n in zip(members, nodes, strict=True) if n is None or n.base is None]
            raise ValueError(f"block {block.block_id!r}: TCA needs earlier updates of all its tensors; "
                             f"{missing} have none")
        bases = [n.base if tca else None for n in nodes]
        so = _header_scan_order(tuple(weight.levels.shape), self.scan_order)
        payload, eps = self._block_payload(members, bases, False, so)
        if self.hdsp and all(n is not None and n.history is not None for n in nodes):
            with_hdsp = self._block_payload(members, bases, True, so)
            if len(with_hdsp[0]) < len(payload):  # ties keep HDSP off (NNCodec)
                payload, eps = with_hdsp
        stored = [t.levels for t in members]
        if weight.dq and self.row_skipping and so > 0:  # as for single tensors: keep the decoder's integers
            outs = [torch.empty(t.levels.shape, dtype=torch.int32) for t in members]
            geometry = [_geometry(tuple(t.levels.shape)) for t in members]
            histories = [n.history.reshape(-1) if (n is not None and n.history is not None) else _EMPTY_I8
                         for n in nodes]
            load_native().decode_block(
                payload, outs, [g[0] for g in geometry], [g[1] for g in geometry], so, True,
                self.cabac_unary_length_minus1 + 1, PROFILE, [0] * len(members), [0] * len(members),
                6 + self.qp_density, True, [_EMPTY_I32 if b is None else b.reshape(-1) for b in bases],
                histories)
            stored = outs
        header = self._unit_header(
            weight, PayloadType.NNR_PT_BLOCK, so, eps, index, node, tca,
            block=[hls.BlockMember(t.name, role, tuple(t.levels.shape))
                   for t, (_, role) in zip(members, block.members, strict=True)],
            compressed_parameter_types=block.cpt,
            dims_in_band=False,  # NNCodec sends a block's dimensions out of band in update streams
        )
        parts.append(hls.write_ndu(header, PROFILE, payload, parent_signalling=True))
        return [(t, index, levels) for t, levels in zip(members, stored, strict=True)]

    def _unit_header(self, t, payload_type: PayloadType, scan_order: int, entry_points, index: int, node,
                     tca: bool, **fields) -> NduHeader:
        """The data unit header of tensor ``t``'s next update: one more PUT depth below its last coded
        update (``node``, None for the first), parent named by ids; ``fields`` add block or codebook data."""
        return NduHeader(
            name=t.name,
            payload_type=payload_type,
            dims=tuple(t.levels.shape),
            dq=t.dq,
            cabac_unary_length_minus1=self.cabac_unary_length_minus1,
            scan_order=scan_order,
            entry_points=[tuple(e) for e in entry_points],
            device_id=self.device_id,
            parameter_id=index,
            put_node_depth=(node.depth if node is not None else 0) + 1,
            parent_node_id_present=True,
            temporal_context_modeling=tca,
            parent_device_id=self.parent_device_id,
            **fields,
        )

    def encode(self, update: Mapping[str, object]) -> bytes:
        """Codes one update (a mapping of names to float tensors, integer tensors or quantized tensor
        descriptions with ``levels``/``qp``[/``dq``]) and advances the state. Returns the bitstream."""
        if not isinstance(update, Mapping) or not update:
            raise ValueError("update must be a non-empty mapping of tensor names to tensors")
        tensors = [self._tensor(name, value) for name, value in update.items()]
        by_name = {t.name: t for t in tensors}
        units = plan_units(list(by_name), {t.name: tuple(t.levels.shape) for t in tensors},
                           self.block_id_and_param_type)
        # a block's tensors take the parameter_id of its weight (NNCodec)
        position = {t.name: index for index, t in enumerate(tensors)}
        ids = {}
        for unit in units:
            for name in ([unit] if isinstance(unit, str) else [n for n, _ in unit.members]):
                ids[name] = position[name if isinstance(unit, str) else unit.weight]
        for t in tensors:
            node = self._nodes.get(t.name)
            index = ids[t.name]
            if node is not None and node.parameter_id is not None and node.parameter_id != index:
                raise ValueError(
                    f"tensor {t.name!r} has parameter_id {index} in this update (its position, or its block "
                    f"weight's) but had {node.parameter_id} before (parameter_id must stay the same)"
                )
            if node is not None and node.base is not None and tuple(node.base.shape) != tuple(t.levels.shape):
                raise ValueError(
                    f"tensor {t.name!r}: shape {tuple(t.levels.shape)} differs from its previous "
                    f"update's shape {tuple(node.base.shape)}"
                )
        parts = [
            hls.write_start_unit(PROFILE),
            hls.write_mps(PROFILE, self.qp_density, 0, topology_carriage=True, parent_signalling=True),
            hls.write_tpl(""),
        ]
        coded: list[tuple[_Tensor, int, torch.Tensor]] = []
        for unit in units:
            if isinstance(unit, Block):
                coded += self._encode_block(unit, by_name, ids[unit.weight], parts)
                continue
            t, index = by_name[unit], ids[unit]
            if t.is_zero():
                continue  # an all-zero update tensor has no data unit (NNCodec's skipped NDU)
            node = self._nodes.get(t.name)
            base = node.base if (self.tca and node is not None) else None
            payload, eps = self._payload(t, node, False, base)
            if self.hdsp and node is not None and node.history is not None:
                with_hdsp = self._payload(t, node, True, base)
                if len(with_hdsp[0]) < len(payload):  # the smaller payload; ties keep HDSP off (NNCodec)
                    payload, eps = with_hdsp
            so = _header_scan_order(tuple(t.levels.shape), self.scan_order)
            stored = t.levels
            if t.dq and self.row_skipping and so > 0:
                # DQ + row skipping + block scan: the decoder's integers can differ from the coded ones
                # (spec §11.5); the state (TCA base, HDSP history) holds what the decoder will hold. NNCodec
                # keeps its encoder's integers instead, so its later updates in this setting do not decode.
                stored = self._decoded(t, node, payload, base)
            header = self._unit_header(
                t, t.payload_type, so, eps, index, node, base is not None,
                codebook=t.codebook,
                codebook_zero_offset=t.cb_zero,
                codebook_egk=t.cb_egk,
            )
            parts.append(hls.write_ndu(header, PROFILE, payload, parent_signalling=True))
            coded.append((t, index, stored))
        # state after the whole update (a failure above leaves the state untouched)
        stored_levels = {t.name: t.levels for t in tensors}
        for t, index, stored in coded:
            node = self._nodes.setdefault(t.name, _Node())
            node.base = stored.clone()
            node.depth += 1
            node.parameter_id = index
            stored_levels[t.name] = stored
        if self.hdsp:  # NNCodec records every tensor of the update, all-zero ones included
            for t in tensors:
                _add_history(self._nodes.setdefault(t.name, _Node()), stored_levels[t.name])
        self._updates += 1
        return b"".join(parts)


# ------------------------------------------------------------------------------------------------ decoder
@dataclass
class DecodedUpdateTensor:
    """One tensor of a decoded update: integers (codebook values for codebook tensors), qp and the data unit's
    update fields."""

    name: str
    levels: torch.Tensor
    qp: int | None
    qp_density: int | None
    dq: bool
    payload_type: PayloadType
    put_node_depth: int
    parameter_id: int
    device_id: int
    tca: bool
    hdsp: bool
    codebook: torch.Tensor | None = None  # int32 codebook of a codebook-coded tensor (levels are its values)
    codebook_zero_offset: int = 0  # the codebook index coded as 0

    @property
    def step(self) -> float | None:
        return None if self.qp is None else step_size(self.qp, self.qp_density)

    def values(self) -> torch.Tensor:
        """float32 levels · Δ for quantized tensors (spec §12.3), the int32 values for NNR_PT_INT."""
        if self.payload_type != PayloadType.NNR_PT_FLOAT:
            return self.levels
        out = torch.empty(self.levels.shape, dtype=torch.float32)
        load_native().levels_to_float(self.levels.contiguous(), out, self.step)
        return out


class UpdateDecoder:
    """Decodes the bitstreams of an :class:`UpdateEncoder` (or of NNCodec 2.1.3 with
    ``compress_differences=True``) in order, carrying each tensor's previous integers (TCA base), update count
    and HDSP history from one update to the next.

    Streams that do not fit the state raise :class:`BitstreamError` naming the problem: a TCA data unit whose
    tensor has no earlier update (missing base), a put_node_depth that does not follow the last decoded update
    of the tensor, a parameter_id or device_id other than the parent's.

    Codebook units (NNCodec's ``codebook_mode``) decode to their codebook values; their TCA base and HDSP
    history are the coded integers (codebook index minus zero offset), as NNCodec's decoder keeps them.

    NNR_PT_BLOCK units (a weight with its bias, batch-norm or local-scaling vectors) are decoded to their
    tensors. NNCodec writes them without the weight's dimensions in update streams; this decoder takes them
    from its state (an earlier update of the weight) or, for a first update, from ``shapes`` ({name: shape},
    for example the base model's shapes).
    """

    def __init__(self, *, max_elements: int = DEFAULT_MAX_ELEMENTS,
                 shapes: Mapping[str, Iterable[int]] | None = None) -> None:
        if (
            isinstance(max_elements, bool)
            or not isinstance(max_elements, (int, np.integer))
            or max_elements < 1
        ):
            raise ValueError(f"max_elements must be an int >= 1, got {max_elements!r}")
        self.max_elements = int(max_elements)
        self._shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in (shapes or {}).items():
            try:
                dims = tuple(_check_int(f"shapes[{name!r}] dimension", d, 1, 2**31) for d in shape)
            except TypeError as exc:
                raise ValueError(f"shapes[{name!r}] must be a sequence of ints, got {shape!r}") from exc
            self._shapes[str(name)] = dims
        self._nodes: dict[str, _Node] = {}
        self._device_id: int | None = None
        self._updates = 0

    @property
    def updates(self) -> int:
        return self._updates

    def state_dict(self) -> dict:
        return {
            "kind": "ecqx-update-decoder",
            "version": STATE_VERSION,
            "device_id": self._device_id,
            "updates": self._updates,
            "tensors": _nodes_to_state(self._nodes),
        }

    def load_state_dict(self, state: Mapping) -> None:
        _check_state_kind(state, "ecqx-update-decoder", "UpdateDecoder")
        device = state.get("device_id")
        if device is not None:
            device = _check_int("UpdateDecoder state_dict device_id", device, 0, 2**31)
        nodes = _nodes_from_state(state.get("tensors"), "UpdateDecoder")
        self._updates = _check_int("UpdateDecoder state_dict updates", state.get("updates"), 0, 2**62)
        self._device_id, self._nodes = device, nodes

    # -------------------------------------------------------------------------------------------- checks
    def _check_parent(self, h: NduHeader, node: _Node | None, device: int | None) -> None:
        name = h.name
        if not h.parent_node_id_present:
            return
        if h.put_node_depth < 1:
            raise BitstreamError(
                f"tensor {name!r}: put_node_depth {h.put_node_depth} in a data unit with a parent "
                "(an update has depth >= 1)"
            )
        if device is not None and h.device_id != device:
            raise BitstreamError(
                f"tensor {name!r}: device_id {h.device_id} differs from the device_id {device} "
                "of the earlier updates (wrong parent)"
            )
        if h.parent_device_id not in (0, h.device_id):
            # NNCodec 2.1.3 writes parent_device_id 0 whatever the device; other values must be the sender's
            raise BitstreamError(
                f"tensor {name!r}: parent_device_id {h.parent_device_id} names another device "
                f"than the updates' device_id {h.device_id} (wrong parent)"
            )
        known = node is not None and node.depth > 0
        if known and h.parameter_id != node.parameter_id:
            raise BitstreamError(
                f"tensor {name!r}: parameter_id {h.parameter_id} differs from its parent's "
                f"parameter_id {node.parameter_id} (wrong parent)"
            )
        if known and h.put_node_depth != node.depth + 1:
            raise BitstreamError(
                f"tensor {name!r}: put_node_depth {h.put_node_depth} does not follow the last "
                f"decoded update of this tensor (depth {node.depth}; expected "
                f"{node.depth + 1}: forged depth or a missed update)"
            )
        if h.temporal_context_modeling:
            if not known or node.base is None:
                raise BitstreamError(
                    f"tensor {name!r}: temporal_context_modeling_flag = 1 but this decoder has "
                    "no earlier update of the tensor (missing base: decode the updates in order, "
                    "or load the decoder state)"
                )
            if tuple(node.base.shape) != tuple(h.dims):
                raise BitstreamError(
                    f"tensor {name!r}: dims {h.dims} differ from the base update's shape "
                    f"{tuple(node.base.shape)}"
                )

    def _known_dims(self, name: str) -> tuple[int, ...] | None:
        """Dimensions of a tensor whose unit leaves them out of band: from the last decoded update of it,
        else from ``shapes``."""
        node = self._nodes.get(name)
        if node is not None and node.base is not None:
            return tuple(node.base.shape)
        return self._shapes.get(name)

    def _decode_block(self, ndu: hls.ParsedNdu) -> list[DecodedUpdateTensor]:
        """The tensors of one NNR_PT_BLOCK unit (coding order), checked against their own states: every tensor
        of a block follows the same parent (the weight's parameter_id and depth) and, with TCA, has a base."""
        h = ndu.header
        nodes = [self._nodes.get(m.name) for m in h.block]
        for m, node in zip(h.block, nodes, strict=True):
            known = node is not None and node.depth > 0
            if h.parent_node_id_present and known and node.parameter_id != h.parameter_id:
                raise BitstreamError(
                    f"tensor {m.name!r} of the NNR_PT_BLOCK unit of {h.name!r}: parameter_id "
                    f"{h.parameter_id} differs from its parent's parameter_id {node.parameter_id} "
                    "(wrong parent)")
            if h.parent_node_id_present and known and h.put_node_depth != node.depth + 1:
                raise BitstreamError(
                    f"tensor {m.name!r} of the NNR_PT_BLOCK unit of {h.name!r}: put_node_depth "
                    f"{h.put_node_depth} does not follow the last decoded update of this tensor (depth "
                    f"{node.depth}; expected {node.depth + 1}: forged depth or a missed update)")
            if h.temporal_context_modeling and (node is None or node.base is None):
                raise BitstreamError(
                    f"tensor {m.name!r} of the NNR_PT_BLOCK unit of {h.name!r}: "
                    "temporal_context_modeling_flag = 1 but this decoder has no earlier update of the tensor "
                    "(missing base)")
            if h.temporal_context_modeling and tuple(node.base.shape) != m.dims:
                raise BitstreamError(f"tensor {m.name!r}: dims {m.dims} differ from the base update's shape "
                                     f"{tuple(node.base.shape)}")
        geometry = [_geometry(m.dims) for m in h.block]
        outs = [torch.empty(m.dims, dtype=torch.int32) for m in h.block]
        bases = [n.base.reshape(-1) if h.temporal_context_modeling else _EMPTY_I32 for n in nodes]
        histories = [n.history.reshape(-1) if (n is not None and n.history is not None) else _EMPTY_I8
                     for n in nodes]
        count = len(h.block)
        try:
            qp_deltas, consumed, eps, hdsp = load_native().decode_block(
                ndu.payload, outs, [g[0] for g in geometry], [g[1] for g in geometry], h.scan_order, h.dq,
                h.cabac_unary_length_minus1 + 1, PROFILE, [0] * count, [0] * count, 6 + ndu.qp_density,
                h.parent_node_id_present, bases, histories)
        except ValueError as exc:
            raise BitstreamError(f"NNR_PT_BLOCK unit of {h.name!r}: {exc}") from exc
        if consumed != len(ndu.payload):
            raise BitstreamError(
                f"NNR_PT_BLOCK unit of {h.name!r}: CABAC payload is {len(ndu.payload)} bytes but the decoder "
                f"consumed {consumed} (nnr_unit_size mismatch or corrupt data)")
        if [tuple(e) for e in eps] != h.entry_points:
            raise BitstreamError(f"NNR_PT_BLOCK unit of {h.name!r}: cabac_entry_point_list does not match "
                                 "the payload")
        results = []
        for m, out, delta, flag in zip(h.block, outs, qp_deltas, hdsp, strict=True):
            qp = ndu.qp_base + delta
            try:
                step_size(qp, ndu.qp_density)
            except ValueError as exc:
                raise BitstreamError(f"tensor {m.name!r}: {exc}") from exc
            results.append(DecodedUpdateTensor(
                name=m.name, levels=out, qp=qp, qp_density=ndu.qp_density, dq=h.dq,
                payload_type=PayloadType.NNR_PT_FLOAT, put_node_depth=h.put_node_depth,
                parameter_id=h.parameter_id, device_id=h.device_id, tca=h.temporal_context_modeling,
                hdsp=bool(flag)))
        return results

    def _check_size(self, h: NduHeader, payload_len: int) -> None:
        budget = MAX_POSITIONS_PER_BYTE * (payload_len + PAYLOAD_SLACK_BYTES)
        if sum(_coded_positions(dims) for _, dims in h.tensors()) > budget:
            raise BitstreamError(
                f"tensor {h.name!r}: dims {h.dims} cannot be described by a {payload_len}-byte "
                "payload (corrupt dimensions)"
            )

    # -------------------------------------------------------------------------------------------- decoding
    def decode_levels(self, data: bytes) -> dict[str, DecodedUpdateTensor]:
        """Decodes one update to integers and update fields, and advances the state (only when the whole
        stream decodes; a BitstreamError leaves the state as it was)."""
        stream = hls.parse_stream(data, allow_updates=True, out_of_band_dims=self._known_dims)
        if stream.profile != PROFILE:
            raise BitstreamError(f"general_profile_idc {stream.profile}: difference updates need profile 1")
        total = sum(math.prod(dims) for n in stream.ndus for _, dims in n.header.tensors())
        if total > self.max_elements:
            raise BitstreamError(
                f"update declares {total} tensor elements, more than max_elements={self.max_elements}"
            )
        device = self._device_id
        results: dict[str, DecodedUpdateTensor] = {}
        coded: dict[str, torch.Tensor] = {}  # coded integers of codebook tensors (their state)
        for ndu in stream.ndus:
            h = ndu.header
            for name, _ in h.tensors():
                if name in results:
                    raise BitstreamError(f"tensor name {name!r} occurs twice in the update")
            if h.payload_type == PayloadType.NNR_PT_RAW_FLOAT:
                raise BitstreamError(
                    f"tensor {h.name!r}: payload type {h.payload_type.name} is not supported "
                    "in difference updates"
                )
            if h.codebook is not None and h.payload_type == PayloadType.NNR_PT_BLOCK:
                raise BitstreamError(
                    f"NNR_PT_BLOCK unit of {h.name!r}: codebook_present_flag = 1 (a codebook for the block's "
                    "weight) is not supported in difference updates"
                )
            node = self._nodes.get(h.name)
            self._check_parent(h, node, device)
            if h.parent_node_id_present:
                device = h.device_id
            self._check_size(h, len(ndu.payload))
            is_float = h.payload_type != PayloadType.NNR_PT_INT
            if is_float and ndu.qp_density is None:
                raise BitstreamError(
                    f"tensor {h.name!r}: float tensor but the parameter set carries no qp_density"
                )
            if h.payload_type == PayloadType.NNR_PT_BLOCK:
                for t in self._decode_block(ndu):
                    results[t.name] = t
                continue
            rows, width = _geometry(h.dims)
            out = torch.empty(h.dims, dtype=torch.int32)
            base = node.base.reshape(-1) if h.temporal_context_modeling else _EMPTY_I32
            history = (
                node.history.reshape(-1) if (node is not None and node.history is not None) else _EMPTY_I8
            )
            try:
                qp_delta, consumed, eps, hdsp = load_native().decode_update_payload(
                    ndu.payload,
                    out,
                    rows,
                    width,
                    h.scan_order,
                    h.dq,
                    h.cabac_unary_length_minus1 + 1,
                    len(h.codebook) if h.codebook is not None else 0,
                    h.codebook_zero_offset,
                    is_float,
                    6 + (ndu.qp_density or 0) if is_float else 8,
                    h.parent_node_id_present,
                    base,
                    history,
                )
            except ValueError as exc:
                raise BitstreamError(f"tensor {h.name!r}: {exc}") from exc
            if consumed != len(ndu.payload):
                raise BitstreamError(
                    f"tensor {h.name!r}: CABAC payload is {len(ndu.payload)} bytes but the decoder "
                    f"consumed {consumed} (nnr_unit_size mismatch or corrupt data)"
                )
            if eps and [tuple(e) for e in eps] != h.entry_points:
                raise BitstreamError(f"tensor {h.name!r}: cabac_entry_point_list does not match the payload")
            qp = None
            if is_float:
                qp = ndu.qp_base + qp_delta
                try:
                    step_size(qp, ndu.qp_density)
                except ValueError as exc:
                    raise BitstreamError(f"tensor {h.name!r}: {exc}") from exc
            codebook = None
            if h.codebook is not None:
                # TCA base and HDSP history are the coded integers (index - zero offset), as NNCodec keeps
                # them; the result holds the codebook values
                coded[h.name] = out.clone()
                _map_codebook(h, out)
                codebook = torch.tensor(h.codebook, dtype=torch.int32)
            results[h.name] = DecodedUpdateTensor(
                name=h.name,
                levels=out,
                qp=qp,
                qp_density=ndu.qp_density if is_float else None,
                dq=h.dq,
                payload_type=h.payload_type,
                put_node_depth=h.put_node_depth,
                parameter_id=h.parameter_id,
                device_id=h.device_id,
                tca=h.temporal_context_modeling,
                hdsp=bool(hdsp),
                codebook=codebook,
                codebook_zero_offset=h.codebook_zero_offset if codebook is not None else 0,
            )
        # commit the state
        for name, t in results.items():
            levels = coded.get(name, t.levels)
            node = self._nodes.setdefault(name, _Node())
            node.base = levels.clone()
            # an update takes the depth it declares (checked above against a known parent); a data unit
            # without parent (a base model in an update sequence) counts one more, as NNCodec's state does
            node.depth = t.put_node_depth if t.put_node_depth > 0 else node.depth + 1
            node.parameter_id = t.parameter_id
            _add_history(node, levels)
        self._device_id = device
        self._updates += 1
        return results

    def decode(self, data: bytes) -> dict[str, torch.Tensor]:
        """Decodes one update to {name: tensor} (float32 levels · Δ; int32 for integer tensors). Tensors the
        update does not carry (all zero at the encoder) are absent, as in NNCodec's decoder."""
        return {name: t.values() for name, t in self.decode_levels(data).items()}


# ------------------------------------------------------------------------------------------------ rebuild
def _update_bytes(source: object, index: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            return handle.read()
    raise TypeError(f"update {index}: expected bytes or a file path, got {type(source).__name__}")


def apply_updates(
    base: Mapping[str, torch.Tensor] | bytes | str | os.PathLike,
    updates: Iterable[bytes | str | os.PathLike],
    *,
    decoder: UpdateDecoder | None = None,
) -> dict[str, torch.Tensor]:
    """Rebuilds a model from its base and a sequence of difference updates, in order.

    ``base`` is a state_dict, or the bytes or path of an ``.nnc`` file (decoded with
    :func:`ecqx.coding.decode_state_dict`); ``updates`` are the bytes or paths of the update bitstreams of one
    :class:`UpdateEncoder`. Float tensors are held as float32 and each update is added as
    ``tensor + float32(level) · Δ`` (exactly what the sender that produced the updates accounts for), integer
    tensors as int64 plus the decoded integers. Tensors an update does not carry stay as they are. Pass
    ``decoder`` to continue a sequence that an earlier call (or an earlier run) started; it is advanced.

    Raises :class:`BitstreamError` for a corrupt update or one that does not follow the previous ones, and
    ``ValueError`` for an update tensor that the base does not have or whose shape differs.
    """
    if isinstance(base, Mapping):
        state = dict(base)
    else:
        state = decode_state_dict(base)
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"base entry {name!r} is a {type(value).__name__}, not a torch.Tensor")
        value = value.detach().to("cpu")
        out[name] = value.to(torch.float32 if value.is_floating_point() else torch.int64).clone()
    # block units in updates leave their dimensions out of band: the base model gives them
    if decoder is None:
        shapes = {k: tuple(v.shape) for k, v in out.items() if v.numel() > 0 and v.dim() > 0}
        decoder = UpdateDecoder(shapes=shapes)
    for index, source in enumerate(updates):
        decoded = decoder.decode(_update_bytes(source, index))
        for name, values in decoded.items():
            if name not in out:
                raise ValueError(f"update {index}: tensor {name!r} is not in the base")
            target = out[name]
            if values.numel() != target.numel() or (values.dim() > 0 and target.dim() > 0
                                                    and tuple(values.shape) != tuple(target.shape)):
                raise ValueError(f"update {index}: tensor {name!r} has shape {tuple(values.shape)}, the "
                                 f"base has {tuple(target.shape)}")
            values = values.reshape(target.shape)
            if target.is_floating_point():
                out[name] = target + values.to(torch.float32)
            else:
                out[name] = target + values.to(torch.int64)
    return out
