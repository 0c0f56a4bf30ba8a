# -*- test-case-name: tests.test_fastpath -*-
"""
The relay's fast path: the only module that touches Autobahn's internals.

Everything else in sprites_twisted speaks to Autobahn through its public
API (``sendMessage``, ``sendClose``, ``sendPing``, the ``onMessage*``
streaming hooks, ``onPong``, ``onClose``).  That API costs, per binary
frame, a masker object, three copies and debug lines formatted even when
debug logging is off; on bulk transfers it is about a sixth of the
tunnel's throughput (see ``docs/performance.md``).  This module replaces
exactly three things, and only for unfragmented binary frames:

- **sending** (L{sendBinary}): the frame is built and masked here, in
  one buffer, and written in one transport write;
- **receiving** (L{FastReceiveMixin}): unfragmented binary frames are
  parsed straight from Autobahn's receive buffer and their payload handed
  to the shim's ``binaryData`` hook, the same hook the public path calls;
  anything else (text, control frames, fragments, anything malformed or
  over a limit) is left to Autobahn, unchanged;
- **per-connection set-up** (L{fastFactory}, L{FastHandshakeMixin}):
  protocols read the factory's options from a shared class instead of
  copying and pretty-printing them, and the client's upgrade request is
  sent without a pretty-printed debug line.

One switch: the environment variable ``SPRITES_TWISTED_FASTPATH=0`` turns
it off (read once, at import).  It is also off, both ways, when the
Autobahn found at import lacks anything used here (L{SUPPORTED}); the
public path is then used, with the same behaviour.  The test suite runs
with it on and off.

The frames are standard RFC 6455: FIN set, opcode 2, and a client masks
every frame with a fresh key from C{os.urandom}.  Masking uses Autobahn's
compiled NVX masker when Autobahn uses it, otherwise a pure-Python XOR
over big integers.
"""

from __future__ import annotations

import importlib
import os
import struct
from typing import Any

from autobahn.websocket.protocol import (
    WebSocketClientProtocol,
    WebSocketProtocol,
    WebSocketServerProtocol,
)

__all__ = [
    "ENABLED",
    "SUPPORTED",
    "NATIVE_MASKING",
    "sendMasking",
    "sendBinary",
    "sendProtocolClose",
    "dataFrame",
    "frameHeader",
    "unmask",
    "fastProtocol",
    "fastFactory",
]

#: First header byte of an unfragmented binary frame: FIN, no RSV, opcode 2.
BINARY_FIN = 0x82
#: First header byte of an unfragmented text frame: FIN, no RSV, opcode 1.
TEXT_FIN = 0x81

_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")
_LEN16 = struct.Struct("!H")
_LEN64 = struct.Struct("!Q")

#: What this module reads or overrides in Autobahn; all must be there.
_NEEDED = (
    (WebSocketProtocol, "processData"),
    (WebSocketProtocol, "_dataReceived"),
    (WebSocketClientProtocol, "CONFIG_ATTRS"),
    (WebSocketServerProtocol, "CONFIG_ATTRS"),
    (WebSocketProtocol, "STATE_OPEN"),
    (WebSocketProtocol, "STATE_CLOSED"),
    (WebSocketClientProtocol, "_actuallyStartHandshake"),
)


def _supported() -> bool:
    return all(hasattr(cls, name) for cls, name in _NEEDED)


#: Whether the Autobahn found at import has everything the fast path uses.
SUPPORTED = _supported()
#: Whether the fast path is used (L{SUPPORTED}, and not switched off).
ENABLED = SUPPORTED and os.environ.get("SPRITES_TWISTED_FASTPATH", "1").lower() not in (
    "0",
    "off",
    "no",
    "false",
)

_OPEN = getattr(WebSocketProtocol, "STATE_OPEN", 3)
_CLOSED = getattr(WebSocketProtocol, "STATE_CLOSED", 4)


# Masking


def _xorIntegers(buf: bytearray, start: int, mask: bytes) -> None:
    """
    XOR C{buf[start:]} with C{mask} repeated, in place, in pure Python.
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
    try:
        from autobahn.websocket import USES_NVX
    except ImportError:  # pragma: no cover - older Autobahn
        return None
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


def frameHeader(length: int, masked: bool, first: int = BINARY_FIN) -> bytes:
    """
    The header of a frame of C{length} payload bytes, without the masking
    key (minimal length encoding, as RFC 6455 requires).
    """
    second = 0x80 if masked else 0
    if length < 126:
        return bytes((first, second | length))
    if length < 0x10000:
        return _HEAD16.pack(first, second | 126, length)
    return _HEAD64.pack(first, second | 127, length)


def dataFrame(payload: bytes | memoryview, masked: bool, first: int = BINARY_FIN) -> bytes:
    """
    One unfragmented data frame carrying C{payload}, header included, ready
    for a single transport write.  A C{masked} frame gets a fresh random key.
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


def _unmaskInto(buf: bytearray, data: bytes | memoryview, mask: bytes, offset: int) -> None:
    k = offset & 3
    if k:
        mask = mask[k:] + mask[:k]
    start = len(buf)
    buf += data
    _xorInPlace(buf, start, mask)


def unmask(data: bytes | memoryview, mask: bytes, offset: int) -> bytes:
    """
    Unmask C{data}, frame payload starting C{offset} bytes into a frame
    masked with C{mask}.
    """
    buf = bytearray()
    _unmaskInto(buf, data, mask, offset)
    return bytes(buf)


# Close codes


def sendProtocolClose(ws: Any, code: int, reason: bytes | None) -> bool:
    """
    Start the closing handshake of C{ws} with a close code Autobahn's
    public C{sendClose} refuses from applications (1009, 1011), through its
    C{sendCloseFrame}, documented as internal.  This is not part of the
    switchable fast path (a broken stream must say so either way), but it is
    Autobahn internals, so it lives here.

    :returns: C{False} when this Autobahn has no C{sendCloseFrame} (the
        caller then closes with 1000 and drops the connection).
    """
    sendCloseFrame = getattr(ws, "sendCloseFrame", None)
    if sendCloseFrame is None:
        return False
    sendCloseFrame(code=code, reasonUtf8=reason, isReply=False)
    return True


# Sending


def _masking(ws: Any) -> bool | None:
    """
    Whether binary frames from C{ws} (an open Autobahn protocol) are masked,
    or C{None} when its options ask for something built here is not
    (compression, fragmentation, frame logging, timings): Autobahn sends.
    """
    try:
        if (
            ws._perMessageCompress is not None
            or ws.autoFragmentSize
            or ws.logFrames
            or ws.logOctets
            or getattr(ws, "trackedTimings", None)
            or not hasattr(ws, "send_queue")
            or not hasattr(ws, "trafficStats")
        ):
            return None
        masked = bool(ws.maskServerFrames if ws.factory.isServer else ws.maskClientFrames)
        if masked and not ws.applyMask:
            return None
    except AttributeError:
        return None
    return masked


def sendMasking(ws: Any) -> bool | None:
    """
    How L{sendBinary} sends on C{ws}, an open Autobahn protocol, decided once
    when it opens: C{True} or C{False} (frames built here, masked or not)
    when the fast path is on and C{ws}'s options allow it, else C{None}
    (Autobahn's public C{sendMessage}).
    """
    return _masking(ws) if ENABLED else None


def sendBinary(ws: Any, payload: bytes | memoryview, masked: bool | None) -> None:
    """
    Send C{payload} as one unfragmented binary message on C{ws}, with the
    masking L{sendMasking} chose: built here, or through Autobahn's public
    C{sendMessage} (always when C{masked} is C{None}, and while Autobahn
    has frames of its own queued or the payload is over its message limit).
    """
    n = len(payload)
    if masked is None or ws.send_queue or 0 < ws.maxMessagePayloadSize < n:
        ws.sendMessage(bytes(payload), isBinary=True)
        return
    frame = dataFrame(payload, masked)
    stats = ws.trafficStats
    stats.outgoingWebSocketMessages += 1
    stats.outgoingWebSocketFrames += 1
    stats.outgoingOctetsAppLevel += n
    stats.outgoingOctetsWebSocketLevel += n
    stats.outgoingOctetsWireLevel += len(frame)
    ws.transport.write(frame)


# Receiving


class FastReceiveMixin:
    """
    Mixed in before an Autobahn protocol whose class has a
    C{binaryData(payload)} method, a C{maxBinaryFrame} limit (0: none) and a
    C{webSocketDataReceived(data)} hook (our shims): unfragmented binary frames
    are parsed here, straight from Autobahn's receive buffer; everything
    else goes to Autobahn, which validates it and calls the public hooks.
    """

    _rxLeft = 0
    _rxMask: bytes | None = None
    _rxDone = 0
    data: bytes
    state: int
    factory: Any

    def webSocketDataReceived(self, data: bytes) -> None:
        # The shims' hook for bytes after the upgrade response: skip
        # Autobahn's Twisted adapter, which formats a debug line per read.
        self._dataReceived(data)  # type: ignore[attr-defined]

    def processData(self) -> bool:
        """
        Consume Autobahn's receive buffer while it holds unfragmented binary
        frames; hand anything else to Autobahn (which calls this in a loop
        while it returns C{True}).  The payload of all the frames found in
        one read is delivered at once, unmasked in a single pass.
        """
        s: Any = self
        if not self._rxLeft and (
            s.current_frame is not None
            or s._perMessageCompress is not None
            or s.logFrames
            or getattr(s, "trackedTimings", None)
        ):
            return super().processData()  # type: ignore[misc,no-any-return]
        data = self.data
        size = len(data)
        pos = 0
        pieces: list[tuple[int, int]] = []
        unmasked: bytearray | None = None
        isServer = bool(self.factory.isServer)
        while True:
            left = self._rxLeft
            if left:
                avail = size - pos
                if not avail:
                    break
                take = left if left < avail else avail
                mask = self._rxMask
                if mask is not None:
                    if unmasked is None:
                        unmasked = bytearray()
                    _unmaskInto(unmasked, memoryview(data)[pos : pos + take], mask, self._rxDone)
                else:
                    pieces.append((pos, take))
                pos += take
                left -= take
                self._rxLeft = left
                self._rxDone += take
                if not left:
                    self._rxMask = None
                    s.inside_message = False
                continue
            avail = size - pos
            if avail < 2:
                break
            second = data[pos + 1]
            masked = second & 0x80
            if (
                data[pos] != BINARY_FIN
                or s.inside_message
                or bool(masked) != isServer
                or (masked and not s.applyMask)
            ):
                return self._autobahnFrom(data, pos, pieces, unmasked)
            length = second & 0x7F
            headerSize = (6 if masked else 2) + (2 if length == 126 else 8 if length == 127 else 0)
            if avail < headerSize:
                break
            if length == 126:
                length = _LEN16.unpack_from(data, pos + 2)[0]
                if length < 126:
                    return self._autobahnFrom(data, pos, pieces, unmasked)
            elif length == 127:
                length = _LEN64.unpack_from(data, pos + 2)[0]
                if length < 0x10000 or length > 0x7FFFFFFFFFFFFFFF:
                    return self._autobahnFrom(data, pos, pieces, unmasked)
            if (
                0 < s.maxFramePayloadSize < length
                or 0 < s.maxMessagePayloadSize < length
                or 0 < s.maxBinaryFrame < length
            ):
                return self._autobahnFrom(data, pos, pieces, unmasked)
            pos += headerSize
            self._rxMask = data[pos - 4 : pos] if masked else None
            self._rxLeft = length
            self._rxDone = 0
            s.inside_message = True
            if not length:
                self._rxMask = None
                s.inside_message = False
        if pos:
            self.data = data[pos:]
        self._deliver(data, pieces, unmasked)
        return False

    def _autobahnFrom(
        self, data: bytes, pos: int, pieces: list[tuple[int, int]], unmasked: bytearray | None
    ) -> bool:
        if pos:
            self.data = data[pos:]
        self._deliver(data, pieces, unmasked)
        if self.state == _CLOSED:
            return False
        return super().processData()  # type: ignore[misc,no-any-return]

    def _deliver(
        self, data: bytes, pieces: list[tuple[int, int]], unmasked: bytearray | None
    ) -> None:
        if unmasked:
            payload = bytes(unmasked)
        elif len(pieces) == 1:
            start, length = pieces[0]
            payload = data if length == len(data) else data[start : start + length]
        elif pieces:
            view = memoryview(data)
            payload = b"".join([view[start : start + n] for start, n in pieces])
        else:
            return
        s: Any = self
        if self.state == _OPEN:
            stats = s.trafficStats
            stats.incomingOctetsWebSocketLevel += len(payload)
            stats.incomingOctetsAppLevel += len(payload)
        if not s.failedByMe:
            s.binaryData(payload)


class FastHandshakeMixin:
    """
    Mixed in before an Autobahn client protocol: send the upgrade request
    as Autobahn does, minus the debug line it pretty-prints (the transport
    details) even when debug logging is off.
    """

    def startHandshake(self) -> Any:
        from autobahn.websocket.types import ConnectingRequest

        s: Any = self
        if type(s).onConnecting is not WebSocketClientProtocol.onConnecting:
            return super().startHandshake()  # type: ignore[misc]
        f = s.factory
        s._actuallyStartHandshake(
            ConnectingRequest(
                host=f.host,
                port=f.port,
                resource=f.resource,
                headers=f.headers,
                useragent=f.useragent,
                origin=f.origin,
                protocols=f.protocols,
            )
        )
        return None


def fastProtocol(cls: type) -> type:
    """
    C{cls} (a shim subclass of an Autobahn protocol with a C{binaryData}
    hook) with the fast receive path (and, for a client, the fast upgrade
    request) mixed in; C{cls} itself when the fast path is off.
    """
    if not ENABLED:
        return cls
    bases: tuple[type, ...] = (FastReceiveMixin,)
    if issubclass(cls, WebSocketClientProtocol):
        bases += (FastHandshakeMixin,)
    return type(cls.__name__, (*bases, cls), {"__module__": cls.__module__, "__doc__": cls.__doc__})


class _SharedOptionsMixin:
    """
    C{buildProtocol} returns an instance of a subclass of C{self.protocol}
    carrying the factory's option values as class attributes, with no
    C{CONFIG_ATTRS} left for Autobahn to copy (and pretty-print) per
    connection.  The subclass is built at the first connection and again
    after each C{setProtocolOptions} or C{resetProtocolOptions} (Autobahn's
    documented way of setting options; an option assigned directly to the
    factory after its first connection is not seen).
    """

    protocol: Any
    _sharedClass: Any = None

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        self._sharedClass = None
        super().setProtocolOptions(*args, **kwargs)  # type: ignore[misc]

    def resetProtocolOptions(self) -> None:
        self._sharedClass = None
        super().resetProtocolOptions()  # type: ignore[misc]

    def buildProtocol(self, addr: Any) -> Any:
        base = self.protocol
        cls = self._sharedClass
        if cls is None or cls.__bases__[0] is not base:
            names = base.CONFIG_ATTRS
            attrs: dict[str, Any] = {name: getattr(self, name) for name in names}
            attrs["CONFIG_ATTRS"] = ()
            attrs["__module__"] = base.__module__
            attrs["__qualname__"] = base.__qualname__
            cls = type(base.__name__, (base,), attrs)
            self._sharedClass = cls
        proto = cls()
        proto.factory = self
        return proto


def fastFactory(cls: type) -> type:
    """
    C{cls} (an Autobahn factory) with shared per-factory options mixed in;
    C{cls} itself when the fast path is off.
    """
    if not ENABLED:
        return cls
    return type(
        cls.__name__,
        (_SharedOptionsMixin, cls),
        {"__module__": cls.__module__, "__doc__": cls.__doc__},
    )
