# -*- test-case-name: tests.test_framing -*-
"""
RFC 6455 binary data frames for the relay, built and unmasked with as few
copies and Python calls as possible.

Autobahn's general-purpose send path costs, per frame, a new masker object
(an import, two cffi allocations and a ``ffi.gc``), masking through a
zeroed buffer and a copy back to C{bytes}, a join of header and payload,
and a debug line whose arguments are formatted even when debug logging is
off; its receive path re-slices its input buffer at every frame boundary
and unmasks through three copies.  The relay moves every byte through
these paths, so L{WebSocketStreamTransport} and L{StreamingWebSocketMixin}
(in C{relay}) use the helpers here for unfragmented binary frames, and
leave everything else (text, control frames, anything unusual) to
Autobahn.

The frames are standard: FIN set, opcode 2, and a client masks every frame
with a fresh key from C{os.urandom} (RFC 6455 section 5.3 asks for a strong
source of entropy).  Masking uses Autobahn's compiled NVX masker when
Autobahn uses it (C{autobahn.websocket.USES_NVX}), in place on our own
buffer; otherwise a pure-Python XOR over big integers.
"""

from __future__ import annotations

import importlib
import os
import struct
from typing import Any

from autobahn.websocket import USES_NVX

__all__ = [
    "BINARY_FIN",
    "TEXT_FIN",
    "NATIVE_MASKING",
    "frameHeader",
    "dataFrame",
    "unmask",
    "unmaskInto",
]

#: First header byte of an unfragmented binary frame: FIN, no RSV, opcode 2.
BINARY_FIN = 0x82
#: First header byte of an unfragmented text frame: FIN, no RSV, opcode 1.
TEXT_FIN = 0x81

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def frameHeader(length: int, masked: bool, first: int = BINARY_FIN) -> bytes:
    """
    The header of a frame of C{length} payload bytes, without the masking
    key (minimal length encoding, as RFC 6455 requires).
    """
    second = 0x80 if masked else 0
    if length < 126:
        return bytes((first, second | length))
    if length < 0x10000:
        return _LEN16.pack(first, second | 126, length)
    return _LEN64.pack(first, second | 127, length)


def _xorIntegers(buf: bytearray, start: int, mask: bytes) -> None:
    """
    XOR C{buf[start:]} with C{mask} repeated (key offset 0), in place, in
    pure Python: a few linear passes over big integers, far faster than a
    loop over bytes.
    """
    n = len(buf) - start
    if n <= 0:
        return
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    buf[start:] = (int.from_bytes(buf[start:], "little") ^ key).to_bytes(n, "little")


def _loadNative() -> Any:
    """
    The compiled module behind Autobahn's NVX masker, if Autobahn uses it.
    """
    if not USES_NVX:
        return None
    try:
        native = importlib.import_module("_nvx_xormasker")
    except ImportError:  # pragma: no cover - NVX is announced but absent
        return None
    names = ("nvx_xormask_new", "nvx_xormask_process", "nvx_xormask_free")
    if not all(hasattr(native.lib, name) for name in names):  # pragma: no cover
        return None
    return native


_native = _loadNative()
_nativeLib: Any = _native.lib if _native is not None else None
_nativeFFI: Any = _native.ffi if _native is not None else None

#: Whether frames are masked with Autobahn's compiled (NVX) masker.
NATIVE_MASKING = _nativeLib is not None


def _xorNative(buf: bytearray, start: int, mask: bytes) -> None:
    """
    XOR C{buf[start:]} with C{mask} in place with Autobahn's compiled NVX
    masker (SSE2 where available).
    """
    n = len(buf) - start
    if n <= 0:
        return
    masker = _nativeLib.nvx_xormask_new(mask)
    if masker == _nativeFFI.NULL:
        raise MemoryError("cannot allocate a WebSocket masker")
    try:
        _nativeLib.nvx_xormask_process(masker, _nativeFFI.from_buffer(buf) + start, n)
    finally:
        _nativeLib.nvx_xormask_free(masker)


_xorInPlace = _xorNative if NATIVE_MASKING else _xorIntegers


def dataFrame(payload: bytes | memoryview, masked: bool, first: int = BINARY_FIN) -> bytes:
    """
    One unfragmented data frame (binary unless C{first} is L{TEXT_FIN})
    carrying C{payload}: header and payload in one C{bytes}, ready for a
    single transport write.  A C{masked} frame (client to server) gets a
    fresh random masking key.
    """
    header = frameHeader(len(payload), masked, first)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    buf = bytearray(header)
    buf += mask
    start = len(buf)
    buf += payload
    _xorInPlace(buf, start, mask)
    return bytes(buf)


def unmaskInto(buf: bytearray, data: bytes | memoryview, mask: bytes, offset: int) -> None:
    """
    Append C{data}, frame payload that starts C{offset} bytes into a frame
    masked with C{mask}, to C{buf}, unmasked.
    """
    k = offset & 3
    if k:
        mask = mask[k:] + mask[:k]
    start = len(buf)
    buf += data
    _xorInPlace(buf, start, mask)


def unmask(data: bytes | memoryview, mask: bytes, offset: int) -> bytes:
    """
    Unmask C{data}, the frame payload that starts C{offset} bytes into a
    frame masked with C{mask}.
    """
    buf = bytearray()
    unmaskInto(buf, data, mask, offset)
    return bytes(buf)
