# -*- test-case-name: tests.test_relay -*-
"""
The byte pipe between a TCP stream and a WebSocket, shared by the tunnel
(client) and the local sprite server.

The design is Twisted's ``portforward``: two L{Pipe} protocols, each
writing what it receives to the other's transport, each transport
registered as a streaming producer of the other.  A full socket buffer on
either side therefore pauses reading on the other side, which is what keeps
memory flat however much data flows.

The WebSocket side is made to look like an ordinary stream transport by
L{WebSocketStreamTransport}, so that the same L{Pipe} works on both ends and
on both the client and the server.  L{StreamingWebSocketMixin} is mixed
into our Autobahn protocols: it hands binary frame data to the pipe as it
arrives (no reassembly of whole messages, no size limit on a stream) and
collects text messages (the handshake) up to a small limit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import txaio
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sprites_twisted._framing import BINARY_FIN, TEXT_FIN, dataFrame, unmaskInto
from sprites_twisted.mapping import formatTarget

__all__ = [
    "OpenSet",
    "NORMAL_CLOSE_CODES",
    "closeFailure",
    "quietAutobahnLogger",
    "SpriteAddress",
    "Pipe",
    "splice",
    "WebSocketStreamTransport",
    "StreamingWebSocketMixin",
    "SharedOptionsFactoryMixin",
    "MAX_SEND_CHUNK",
    "isTLSFailure",
    "sendMessage",
]

#: Writes larger than this are sent as several WebSocket messages, so that
#: no single frame exceeds what a server is willing to take.
MAX_SEND_CHUNK = 256 * 1024
#: Read size and producer-pause level of the relayed TCP connections (see
#: L{setBufferSize}).  Measured with ``make bench``: 96 KiB relays faster
#: than Twisted's 64 KiB; 128 KiB and more is slower, because each read
#: allocates a buffer of this size and glibc serves allocations of 128 KiB
#: and up with fresh pages from the kernel.
PIPE_BUFFER_SIZE = 96 * 1024

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED
_LEN16 = struct.Struct("!H")
_LEN64 = struct.Struct("!Q")


def quietAutobahnLogger() -> Any:
    """
    A txaio logger for our Autobahn subclasses, pinned at ``error``.

    Autobahn logs the whole HTTP upgrade, ``Authorization`` header
    included, at ``debug``.  Pinning the level (``keep=True``) means that
    raising txaio's global level for debugging never prints the token.
    Its ``warn``/``info`` lines ("dropping connection ... None", "failing
    WebSocket connection") only repeat, less clearly, what our own loggers
    report once per tunnel, so they are dropped too; errors and failures
    (a bug in a callback) still show.
    """
    # txaio binds make_logger when a framework is chosen (Autobahn's Twisted
    # modules choose Twisted), so its stubs do not know it.
    logger = txaio.make_logger()  # type: ignore[attr-defined]
    logger.set_log_level("error", keep=True)
    return logger


def isTLSFailure(reason: Failure | None) -> bool:
    """
    Did the connection end because TLS failed?  A bad chain arrives as
    pyOpenSSL's C{Error}; a certificate for another host name as
    service_identity's C{VerificationError} (Twisted checks the name in its
    verify callback).
    """
    if reason is None:
        return False
    try:
        from OpenSSL.SSL import Error as SSLError
        from service_identity import CertificateError, VerificationError
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
        return False
    return reason.check(SSLError, VerificationError, CertificateError) is not None


class SharedOptionsFactoryMixin:
    """
    Mixed into our Autobahn factories (before the Autobahn base): protocols
    read the factory's options from their class instead of copying them.

    On every connection Autobahn copies its ~30 protocol options from the
    factory into the protocol's ``__dict__`` and pretty-prints them for a
    debug message, formatted even when debug logging is off: about a sixth
    of the CPU of opening a tunnel, on each side, and a dictionary per
    tunnel.  Here C{buildProtocol} returns an instance of a subclass of
    C{self.protocol} that carries the current option values as class
    attributes and has no C{CONFIG_ATTRS} left to copy.  The subclass is
    cached and rebuilt whenever an option value changes, so
    C{setProtocolOptions} keeps working; a protocol still sees the values
    current when it was built, as with Autobahn.
    """

    protocol: Any
    _sharedClass: Any = None
    _sharedValues: tuple[Any, ...] = ()

    def buildProtocol(self, addr: Any) -> Any:
        base = self.protocol
        names = base.CONFIG_ATTRS
        values = tuple(getattr(self, name) for name in names)
        cls = self._sharedClass
        if cls is None or cls.__bases__[0] is not base or values != self._sharedValues:
            attrs: dict[str, Any] = dict(zip(names, values, strict=True))
            attrs["CONFIG_ATTRS"] = ()
            attrs["__module__"] = base.__module__
            attrs["__qualname__"] = base.__qualname__
            cls = type(base.__name__, (base,), attrs)
            self._sharedClass, self._sharedValues = cls, values
        proto = cls()
        proto.factory = self
        return proto


@implementer(IAddress)
@dataclass(frozen=True)
class SpriteAddress:
    """
    The far end of a tunnel: C{host}:C{port} inside sprite C{spriteName}.
    """

    spriteName: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.spriteName} {formatTarget(self.host, self.port)}"


class OpenSet(set):  # type: ignore[type-arg]
    """
    The open connections of a listener or of the local server: a set whose
    L{whenEmpty} tells when the last one is gone (for draining and clean
    shutdown).  Only L{discard} removes members.
    """

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[Deferred[None]] = []

    def discard(self, item: object) -> None:
        super().discard(item)
        if not self:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def whenEmpty(self) -> Deferred[None]:
        """
        A new Deferred that fires once the set is empty; at once if it is.
        """
        d: Deferred[None] = Deferred()
        if self:
            self._waiters.append(d)
        else:
            d.callback(None)
        return d


#: Close codes that end a relayed stream normally (``None``/1005: no code).
NORMAL_CLOSE_CODES = (None, 1000, 1001, 1005)


def closeFailure(wasClean: bool, code: int | None, reason: str | None) -> Failure:
    """
    How a relayed stream ended, as the Failure its protocol gets: a clean
    close with a normal code is C{ConnectionDone}, anything else
    C{ConnectionLost} naming the code and reason.
    """
    if wasClean and code in NORMAL_CLOSE_CODES:
        return Failure(ConnectionDone())
    text = f"tunnel closed (code {code})"
    if reason:
        text += f": {reason}"
    return Failure(ConnectionLost(text))


class Pipe(Protocol):
    """
    One end of a two-way byte pipe: what it receives is written to its
    peer's transport; when it loses its connection, the peer's transport is
    closed (after flushing what was written to it).

    :ivar peer: the other end, set by L{splice}.
    :ivar bytesIn: bytes received on this end (and written to the peer).
    """

    peer: Pipe | None = None
    bytesIn = 0
    # A TCP transport or a WebSocketStreamTransport: each is an ITransport,
    # an IConsumer and an IPushProducer, an intersection of interfaces that
    # the type checker cannot spell.
    transport: Any

    def dataReceived(self, data: bytes) -> None:
        self.bytesIn += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            try:
                peer.transport.unregisterProducer()
            except Exception:  # noqa: BLE001 - already gone is fine
                pass
            peer.transport.loseConnection()


def splice(a: Pipe, b: Pipe) -> None:
    """
    Join two connected L{Pipe}s: make each the other's peer and register
    each transport as a streaming producer of the other (two-way flow
    control), then resume both.

    Both transports must provide C{IConsumer} and C{IPushProducer}.
    """
    a.peer = b
    b.peer = a
    assert a.transport is not None and b.transport is not None
    setBufferSize(a.transport)
    setBufferSize(b.transport)
    a.transport.registerProducer(b.transport, True)
    b.transport.registerProducer(a.transport, True)


def setBufferSize(transport: Any, size: int | None = None) -> None:
    """
    Read and buffer C{size} bytes (L{PIPE_BUFFER_SIZE}) at a time on
    C{transport}'s TCP connection (the one under a
    L{WebSocketStreamTransport}), if it is a Twisted socket transport.

    Twisted uses its transports' C{bufferSize} (64 KiB) both as the read
    size and as the write-buffer level above which a registered producer is
    paused.  Larger reads mean fewer frames and fewer Python calls per byte
    relayed.  Per connection only, never process-wide.
    """
    if isinstance(transport, WebSocketStreamTransport):
        transport = transport._ws.transport
    if isinstance(getattr(transport, "bufferSize", None), int):
        transport.bufferSize = size or PIPE_BUFFER_SIZE


def _framingOf(ws: Any) -> bool | None:
    """
    Whether binary frames from C{ws} (an open Autobahn protocol) are masked
    (C{True} for a client, C{False} for a server with default options), or
    C{None} when its options ask for something the relay's own framing does
    not do (compression, automatic fragmentation, frame or octet logging,
    timings, masking turned off for tests): Autobahn then sends.
    """
    if not (hasattr(ws, "trafficStats") and hasattr(ws, "send_queue")):
        return None
    if (
        ws._perMessageCompress is not None
        or ws.autoFragmentSize
        or ws.logFrames
        or ws.logOctets
        or getattr(ws, "trackedTimings", None)
    ):
        return None
    masked = bool(ws.maskServerFrames if ws.factory.isServer else ws.maskClientFrames)
    if masked and not ws.applyMask:
        return None
    return masked


_CHECK: Any = object()


def sendMessage(
    ws: Any, payload: bytes | memoryview, isBinary: bool = True, masked: Any = _CHECK
) -> None:
    """
    Send C{payload} as one unfragmented message on C{ws}, an open Autobahn
    protocol.

    What Autobahn's C{sendMessage} does for a connection without
    compression, fragmentation, frame logging or timing (ours), minus its
    per-frame overhead (see L{_framing}): build the frame (masked with a
    fresh key when this side masks), count it in C{trafficStats}, write it
    in one transport write.  Anything else goes through C{ws.sendMessage}.

    :param masked: what L{_framingOf} says for C{ws}, when the caller
        keeps it.
    """
    if masked is _CHECK:
        masked = _framingOf(ws)
    n = len(payload)
    if masked is None or ws.send_queue or 0 < ws.maxMessagePayloadSize < n:
        ws.sendMessage(bytes(payload), isBinary=isBinary)
        return
    frame = dataFrame(payload, masked, BINARY_FIN if isBinary else TEXT_FIN)
    stats = ws.trafficStats
    stats.outgoingWebSocketMessages += 1
    stats.outgoingWebSocketFrames += 1
    stats.outgoingOctetsAppLevel += n
    stats.outgoingOctetsWebSocketLevel += n
    stats.outgoingOctetsWireLevel += len(frame)
    ws.transport.write(frame)


class StreamingWebSocketMixin:
    """
    Mixed into an Autobahn WebSocket protocol (before it in the bases).

    Binary frame data goes to L{binaryReceived} as it arrives, without
    reassembling messages.  Text messages are collected up to
    C{maxTextSize} bytes and passed whole to L{textReceived}; a larger text
    message fails the connection (close code 1009).

    Unfragmented binary frames (all the relay sends) are parsed here,
    straight from Autobahn's receive buffer (L{processData}); everything
    else (text, control frames, fragmented messages, anything malformed or
    over a size limit) is left to Autobahn, which validates it and calls
    the C{onMessage*} hooks below.
    """

    maxTextSize = 64 * 1024
    _msgBinary = False
    _textParts: list[bytes]
    _textSize = 0
    # The unfragmented binary frame being received by processData:
    # payload bytes still to come, its masking key, payload bytes so far.
    _rxLeft = 0
    _rxMask: bytes | None = None
    _rxDone = 0
    # Set by Autobahn; declared for type checkers.
    failedByMe: bool
    maxFramePayloadSize: int
    maxMessagePayloadSize: int
    data: bytes
    state: int
    current_frame: Any
    inside_message: bool
    factory: Any
    trafficStats: Any

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's Twisted adapter formats a debug line (C{hltype},
        # C{hlval}) for every read, even with debug logging off.
        self._dataReceived(data)  # type: ignore[attr-defined]

    def processData(self) -> bool:
        """
        Consume Autobahn's receive buffer (C{self.data}) while it holds
        unfragmented binary frames; hand anything else to Autobahn.

        Autobahn calls this in a loop while it returns C{True}.  Unlike
        Autobahn, the buffer is walked by offset and cut once at the end, and
        the payload of all the frames it holds is delivered at once (one
        copy, unmasked in a single pass; none when one frame's payload is
        the whole read), before anything is left to Autobahn.  What Autobahn
        would reject or treat specially (reserved bits, wrong masking,
        non-minimal lengths, frames over C{maxFramePayloadSize}, a binary
        frame inside a fragmented message, compression, frame logging) is
        left to it, so its checks and close codes apply unchanged.
        """
        if not self._rxLeft and (
            self.current_frame is not None
            or self._perMessageCompress is not None  # type: ignore[attr-defined]
            or self.logFrames  # type: ignore[attr-defined]
            or self.trackedTimings  # type: ignore[attr-defined]
        ):
            return super().processData()  # type: ignore[misc,no-any-return]
        data = self.data
        size = len(data)
        pos = 0
        # Payload found so far: (start, length) pieces of data when frames
        # are unmasked, or the unmasked bytes themselves.
        pieces: list[tuple[int, int]] = []
        unmasked: bytearray | None = None
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
                    unmaskInto(unmasked, memoryview(data)[pos : pos + take], mask, self._rxDone)
                else:
                    pieces.append((pos, take))
                pos += take
                left -= take
                self._rxLeft = left
                self._rxDone += take
                if not left:
                    self._frameEnd()
                continue
            avail = size - pos
            if avail < 2:
                break
            second = data[pos + 1]
            masked = second & 0x80
            if (
                data[pos] != BINARY_FIN
                or self.inside_message
                or bool(masked) != bool(self.factory.isServer)
                or (masked and not self.applyMask)  # type: ignore[attr-defined]
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
            if 0 < self.maxFramePayloadSize < length or 0 < self.maxMessagePayloadSize < length:
                return self._autobahnFrom(data, pos, pieces, unmasked)
            pos += headerSize
            self._rxMask = data[pos - 4 : pos] if masked else None
            self._rxLeft = length
            self._rxDone = 0
            self.inside_message = True
            self._msgBinary = True
            if not length:
                self._frameEnd()
        if pos:
            self.data = data[pos:]
        self._deliverPieces(data, pieces, unmasked)
        return False

    def _autobahnFrom(
        self, data: bytes, pos: int, pieces: list[tuple[int, int]], unmasked: bytearray | None
    ) -> bool:
        """
        Deliver what was found, then leave the buffer from C{pos} (a frame
        header) to Autobahn.
        """
        if pos:
            self.data = data[pos:]
        self._deliverPieces(data, pieces, unmasked)
        if self.state == _CLOSED:
            return False
        return super().processData()  # type: ignore[misc,no-any-return]

    def _deliverPieces(
        self, data: bytes, pieces: list[tuple[int, int]], unmasked: bytearray | None
    ) -> None:
        """
        Hand the payload found in C{data} to L{binaryReceived}, at once.
        """
        if unmasked:
            self._frameData(bytes(unmasked))
        elif len(pieces) == 1:
            start, length = pieces[0]
            self._frameData(data if length == len(data) else data[start : start + length])
        elif pieces:
            view = memoryview(data)
            self._frameData(b"".join([view[start : start + n] for start, n in pieces]))

    def _frameData(self, payload: bytes) -> None:
        """
        Payload of an unfragmented binary frame: what Autobahn's
        C{onFrameData} and our C{onMessageFrameData} do for it.
        """
        if self.state == _OPEN:
            stats = self.trafficStats
            stats.incomingOctetsWebSocketLevel += len(payload)
            stats.incomingOctetsAppLevel += len(payload)
        if not self.failedByMe:
            self.binaryReceived(payload)

    def _frameEnd(self) -> None:
        """
        End of an unfragmented binary frame (and message): what Autobahn's
        C{onFrameEnd} does for it.
        """
        self._rxMask = None
        self.inside_message = False
        if self.state == _OPEN:
            stats = self.trafficStats
            stats.incomingWebSocketFrames += 1
            stats.incomingWebSocketMessages += 1
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:  # type: ignore[attr-defined]
            self._cancelAutoPingTimeoutCall()  # type: ignore[attr-defined]

    def onMessageBegin(self, isBinary: bool) -> None:
        self._msgBinary = isBinary
        self._textParts = []
        self._textSize = 0
        self.message_data_total_length = 0

    def onMessageFrameBegin(self, length: int) -> None:
        if 0 < self.maxFramePayloadSize < length and not self.failedByMe:
            self._max_message_size_exceeded(  # type: ignore[attr-defined]
                length,
                self.maxFramePayloadSize,
                f"received a frame of {length} bytes, over the limit of {self.maxFramePayloadSize}",
            )

    def onMessageFrameData(self, payload: bytes) -> None:
        if self.failedByMe:
            return
        if self._msgBinary:
            self.binaryReceived(payload)
            return
        self._textSize += len(payload)
        if self._textSize > self.maxTextSize:
            self._max_message_size_exceeded(  # type: ignore[attr-defined]
                self._textSize,
                self.maxTextSize,
                f"received a text message over the limit of {self.maxTextSize} bytes",
            )
            self._textParts = []
            return
        self._textParts.append(payload)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        if not self._msgBinary and not self.failedByMe:
            parts, self._textParts = self._textParts, []
            self.textReceived(b"".join(parts))

    def binaryReceived(self, data: bytes) -> None:
        """
        Binary payload arrived (any part of any binary message).
        """

    def textReceived(self, payload: bytes) -> None:
        """
        A whole text message arrived.
        """


@implementer(ITransport, IConsumer, IPushProducer)
class WebSocketStreamTransport:
    """
    A stream transport over an open Autobahn WebSocket: C{write} sends
    binary messages, C{loseConnection} sends a close (1000) after what was
    written, producer calls go to the TCP transport underneath.

    The Autobahn protocol calls L{deliver} with received binary data and
    L{deliverConnectionLost} when its TCP connection is gone.

    Autobahn's own close timers run on the global reactor; we disable them
    and use C{clock} instead: C{closeTimeout} seconds after a close is sent
    or received, the TCP connection is closed (flushing), and aborted if it
    is still there C{10 * closeTimeout} later.
    """

    disconnecting = False

    def __init__(
        self,
        ws: Any,
        host: IAddress,
        peer: IAddress,
        clock: IReactorTime,
        closeTimeout: float = 1.0,
    ) -> None:
        self._ws = ws
        self._host = host
        self._peer = peer
        self._clock = clock
        self._closeTimeout = closeTimeout
        self._protocol: IProtocol | None = None
        self._timers: list[IDelayedCall] = []
        self.bytesWritten = 0

    def attach(self, protocol: IProtocol) -> None:
        """
        Connect C{protocol} to this transport (calls its C{makeConnection}).
        """
        self._protocol = protocol
        protocol.makeConnection(self)

    # ITransport

    def write(self, data: bytes) -> None:
        ws = self._ws
        if self.disconnecting or ws.state != _OPEN or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        self.bytesWritten += n
        if n <= MAX_SEND_CHUNK:
            self._sendBinary(ws, data)
            return
        view = memoryview(data)
        for start in range(0, n, MAX_SEND_CHUNK):
            self._sendBinary(ws, view[start : start + MAX_SEND_CHUNK])

    _masked: bool | None = None
    _framesChecked = False

    def _sendBinary(self, ws: Any, payload: bytes | memoryview) -> None:
        if not self._framesChecked:
            self._framesChecked = True
            self._masked = _framingOf(ws)
        sendMessage(ws, payload, True, self._masked)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        if self._ws.state == _OPEN:
            self._ws.sendClose(code=1000)
        self.closeStarted()

    def abortConnection(self) -> None:
        self.disconnecting = True
        if self._ws.state != _CLOSED:
            self._ws.dropConnection(abort=True)

    def getPeer(self) -> IAddress:
        return self._peer

    def getHost(self) -> IAddress:
        return self._host

    # IConsumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        transport = self._ws.transport
        if transport is not None:
            transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        transport = self._ws.transport
        if transport is not None:
            transport.unregisterProducer()

    # IPushProducer

    def pauseProducing(self) -> None:
        transport = self._ws.transport
        if transport is not None:
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        transport = self._ws.transport
        if transport is not None and self._ws.state != _CLOSED:
            transport.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()

    # Called by the WebSocket protocol

    def deliver(self, data: bytes) -> None:
        """
        Binary payload from the WebSocket: hand it to the protocol.
        """
        if self._protocol is not None:
            self._protocol.dataReceived(data)

    def closeStarted(self) -> None:
        """
        A close frame was sent or received: make sure the TCP connection
        goes away soon even if the peer does not finish the close handshake.
        """
        if self._timers or self._ws.state == _CLOSED:
            return
        transport = self._ws.transport
        self._timers = [
            self._clock.callLater(self._closeTimeout, self._closeTCP, False),
            self._clock.callLater(10 * self._closeTimeout, self._closeTCP, True),
        ]
        del transport

    def _closeTCP(self, abort: bool) -> None:
        transport = self._ws.transport
        if transport is None:
            return
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()

    def deliverConnectionLost(self, reason: Failure) -> None:
        """
        The TCP connection under the WebSocket is gone: cancel timers and
        tell the protocol, with C{reason} (always a Failure).
        """
        self.disconnecting = True
        for call in self._timers:
            if call.active():
                call.cancel()
        self._timers = []
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)
