"""Exceptions of the NNC codec."""


class BitstreamError(ValueError):
    """A bitstream is malformed, truncated or uses a feature this codec does not support."""


class NativeBuildError(RuntimeError):
    """The C++ extension could not be built or loaded (missing compiler, stale build lock, compile error)."""
