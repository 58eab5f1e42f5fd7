"""The public codec API: encode named tensors into an NNC bitstream, decode one back.

Input normalisation lives in :mod:`ecqx.coding.normalise`, the encoder in :mod:`ecqx.coding.encoder`, the
decoder in :mod:`ecqx.coding.decoder` and what they share in :mod:`ecqx.coding.common`. The internal names
imported here with ``as`` are re-exported for code written against this module; the codec's own modules
import them from their homes.
"""

from __future__ import annotations

from ecqx.coding.common import DEFAULT_MAX_ELEMENTS as DEFAULT_MAX_ELEMENTS
from ecqx.coding.common import _check_workers as _check_workers
from ecqx.coding.decoder import DecodedTensor, decode, decode_levels
from ecqx.coding.decoder import _check_header_size as _check_header_size
from ecqx.coding.decoder import _checked_stream as _checked_stream
from ecqx.coding.decoder import _decode_ndu as _decode_ndu
from ecqx.coding.decoder import _decode_stream as _decode_stream
from ecqx.coding.decoder import header_qp as header_qp
from ecqx.coding.encoder import _encode_items as _encode_items
from ecqx.coding.encoder import encode
from ecqx.coding.normalise import _description_item as _description_item
from ecqx.coding.normalise import _int32_levels as _int32_levels
from ecqx.coding.normalise import _Item as _Item

__all__ = ["DecodedTensor", "decode", "decode_levels", "encode"]
