"""Bit-level writer and reader for the NNC high-level syntax descriptors (spec nnc-bitstream.md §2.1)."""

from __future__ import annotations

import struct

from ecqx.coding.errors import BitstreamError

MAX_EXP_GOLOMB_PREFIX = 32  # longer zero runs cannot describe a value that fits the syntax elements


class BitWriter:
    """Collects MSB-first bit fields: u(n), i(n), ue(k), ie(k), st(v), flt(32), byte_alignment()."""

    def __init__(self) -> None:
        self._value = 0
        self._nbits = 0

    @property
    def bit_length(self) -> int:
        return self._nbits

    def u(self, n: int, value: int) -> None:
        if value < 0 or value >= (1 << n):
            raise ValueError(f"value {value} does not fit an unsigned {n}-bit field")
        self._value = (self._value << n) | value
        self._nbits += n

    def i(self, n: int, value: int) -> None:
        if not -(1 << (n - 1)) <= value < (1 << (n - 1)):
            raise ValueError(f"value {value} does not fit a signed {n}-bit field")
        self.u(n, value & ((1 << n) - 1))

    def ue(self, k: int, value: int) -> None:
        if value < 0:
            raise ValueError(f"ue({k}) needs a non-negative value, got {value}")
        while value >= (1 << k):
            self.u(1, 0)
            value -= 1 << k
            k += 1
        self.u(1, 1)
        if k:
            self.u(k, value)

    def ie(self, k: int, value: int) -> None:
        self.ue(k, -2 * value if value <= 0 else 2 * value - 1)

    def st(self, text: str) -> None:
        if self._nbits % 8:
            raise ValueError("st(v) must start byte aligned")
        data = text.encode("utf-8")
        if b"\x00" in data:
            raise ValueError(f"string {text!r} must not contain NUL characters")
        for byte in data + b"\x00":
            self.u(8, byte)

    def flt(self, value: float) -> None:
        for byte in struct.pack("<f", value):
            self.u(8, byte)

    def align(self) -> None:
        """byte_alignment(): a 1 bit, then zero bits to the next byte boundary."""
        self.u(1, 1)
        pad = (-self._nbits) % 8
        if pad:
            self.u(pad, 0)

    def tobytes(self) -> bytes:
        if self._nbits % 8:
            raise ValueError("bit writer is not byte aligned")
        return self._value.to_bytes(self._nbits // 8, "big")


class BitReader:
    """Reads MSB-first bit fields from bytes[start:end]; reading past `end` raises BitstreamError."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None, what: str = "unit") -> None:
        self._data = data
        self._pos = start * 8
        self._end = (len(data) if end is None else end) * 8
        self._what = what

    @property
    def byte_position(self) -> int:
        if self._pos % 8:
            raise BitstreamError(f"{self._what}: header is not byte aligned where it must be")
        return self._pos // 8

    def u(self, n: int, field: str = "field") -> int:
        pos = self._pos
        end = pos + n
        if end > self._end:
            raise BitstreamError(f"{self._what}: truncated while reading {field} ({n} bits)")
        last = (end + 7) >> 3
        chunk = int.from_bytes(self._data[pos >> 3:last], "big")
        self._pos = end
        return (chunk >> ((last << 3) - end)) & ((1 << n) - 1)

    def i(self, n: int, field: str = "field") -> int:
        value = self.u(n, field)
        return value - (1 << n) if value >= (1 << (n - 1)) else value

    def ue(self, k: int, field: str = "field") -> int:
        value = 0
        zeros = 0
        while self.u(1, field) == 0:
            value += 1 << k
            k += 1
            zeros += 1
            if zeros > MAX_EXP_GOLOMB_PREFIX:
                raise BitstreamError(f"{self._what}: Exp-Golomb code of {field} is too long")
        return value + (self.u(k, field) if k else 0)

    def ie(self, k: int, field: str = "field") -> int:
        x = self.ue(k, field)
        return (x + 1) // 2 if x & 1 else -(x // 2)

    def st(self, field: str = "string") -> str:
        start = self.byte_position
        end = self._end // 8
        nul = self._data.find(b"\x00", start, end)
        if nul < 0:
            raise BitstreamError(f"{self._what}: unterminated string in {field}")
        self._pos = (nul + 1) * 8
        try:
            return self._data[start:nul].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BitstreamError(f"{self._what}: {field} is not valid UTF-8") from exc

    def flt(self, field: str = "float") -> float:
        raw = bytes(self.u(8, field) for _ in range(4))
        return struct.unpack("<f", raw)[0]

    def align(self) -> None:
        self.u(1, "byte_alignment")
        pad = (-self._pos) % 8
        if pad:
            self.u(pad, "byte_alignment")
