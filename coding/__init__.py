"""ecqx.coding — NNC (ISO/IEC 15938-17) codec: DeepCABAC in C++17, NNC high-level syntax, model helpers.

The C++ extension is built on first use (never at import); `python -m ecqx.coding.build` pre-builds it.
"""

from ecqx.coding.api import DecodedTensor, decode, decode_levels, encode
from ecqx.coding.blocks import fold_batch_norm
from ecqx.coding.errors import BitstreamError, NativeBuildError
from ecqx.coding.hls import PayloadType
from ecqx.coding.inspect_stream import format_table, inspect_stream
from ecqx.coding.model import decode_state_dict, encode_state_dict, load_nnc
from ecqx.coding.native import load_native
from ecqx.coding.quant import CodedTensor, QuantizedLevels, quantize_tensor, snap_step, step_size
from ecqx.coding.sizes import float32_bytes
from ecqx.coding.updates import DecodedUpdateTensor, UpdateDecoder, UpdateEncoder, apply_updates

__all__ = [
    "BitstreamError",
    "CodedTensor",
    "DecodedTensor",
    "DecodedUpdateTensor",
    "NativeBuildError",
    "PayloadType",
    "QuantizedLevels",
    "UpdateDecoder",
    "UpdateEncoder",
    "apply_updates",
    "decode",
    "decode_state_dict",
    "decode_levels",
    "encode",
    "encode_state_dict",
    "float32_bytes",
    "fold_batch_norm",
    "format_table",
    "inspect_stream",
    "load_nnc",
    "load_native",
    "quantize_tensor",
    "snap_step",
    "step_size",
]
