# -*- test-case-name: tests.test_wsstream -*-
"""
A WebSocket made to look like a stream transport, so that a plain
L{sprites_twisted.pipe.Pipe} (or any protocol) can be connected to a tunnel.

The adapter (L{WebSocketStreamTransport}) sits on a I{channel}: one of our
Autobahn shims (the tunnel's client protocol or the local server's
protocol), which provides the few operations listed in L{IChannel}.  Data
flows one way through each: the shim hands received binary payload
straight to the attached protocol's C{dataReceived}; the protocol's
C{write} goes through the adapter to the channel's C{sendBinary}.

How a tunnel ends, in stream terms (L{closeFailure}): a clean close with
code 1000 or 1001 (or none) is C{ConnectionDone}; any other code, a dropped
connection or a protocol error is C{ConnectionLost} naming the code.
Ending it: C{loseConnection} closes with 1000 after what was written,
C{resetConnection} with 1011 after what was written, C{abortConnection}
closes with 1011 and drops the TCP connection without waiting for the
close handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import txaio
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
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from sprites_twisted import _fastpath
from sprites_twisted.interfaces import IResettableTransport
from sprites_twisted.mapping import formatTarget

__all__ = [
    "MAX_SEND_CHUNK",
    "NORMAL_CLOSE_CODES",
    "CLOSE_NORMAL",
    "CLOSE_BROKEN",
    "IChannel",
    "SpriteAddress",
    "WebSocketStreamTransport",
    "closeFailure",
    "quietAutobahnLogger",
    "sendCloseCode",
    "ChannelMixin",
]

#: Writes larger than this go out as several messages, so that no single
#: frame exceeds what a server is willing to take.
MAX_SEND_CHUNK = 256 * 1024
#: Close codes that end a relayed stream normally (``None``/1005: no code).
NORMAL_CLOSE_CODES = (None, 1000, 1001, 1005)
#: The close code of a clean end of stream.
CLOSE_NORMAL = 1000
#: The close code of a broken stream (a reset on the other side).
CLOSE_BROKEN = 1011


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


def quietAutobahnLogger() -> Any:
    """
    A txaio logger for our Autobahn shims, pinned at ``error``.

    Autobahn logs the whole HTTP upgrade, ``Authorization`` header
    included, at ``debug``: pinning the level (``keep=True``) means that
    raising txaio's global level never prints the token.  Its
    ``warn``/``info`` lines only repeat, less clearly, what our own loggers
    report once per tunnel; errors (a bug in a callback) still show.
    """
    logger = txaio.make_logger()  # type: ignore[attr-defined]
    logger.set_log_level("error", keep=True)
    return logger


def sendCloseCode(ws: Any, code: int, reason: str | None) -> None:
    """
    Start the closing handshake of C{ws} (an Autobahn protocol) with
    C{code}.  Autobahn's C{sendClose} takes only 1000 and 3000-4999 from
    applications; other codes (1009 too big, 1011 broken stream) go through
    L{sprites_twisted._fastpath.sendProtocolClose}, with the reason cut to
    fit a control frame.  Where that is not possible the WebSocket closes
    with 1000 and its TCP connection is aborted, which the peer still sees
    as a broken stream (1006).
    """
    if code == CLOSE_NORMAL or 3000 <= code <= 4999:
        ws.sendClose(code=code, reason=reason[:100] if reason else None)
        return
    raw = (reason or "").encode("utf-8")[:120]
    if not _fastpath.sendProtocolClose(ws, code, raw or None):
        ws.sendClose(code=CLOSE_NORMAL, reason=None)
        if ws.transport is not None:
            ws.transport.abortConnection()


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


class IChannel(Interface):
    """
    What the adapter needs of the WebSocket under it (our Autobahn shims).
    """

    def isOpen() -> bool:  # type: ignore[misc]
        """
        Is the WebSocket open (data may be sent)?
        """

    def sendBinary(data: bytes | memoryview) -> None:  # type: ignore[misc]
        """
        Send C{data} as one binary message.
        """

    def sendCloseCode(code: int, reason: str | None) -> None:  # type: ignore[misc]
        """
        Start the closing handshake with C{code}.
        """

    def getTCPTransport() -> Any:  # type: ignore[misc]
        """
        The TCP (or TLS) transport under the WebSocket, or C{None} once gone.
        """


@implementer(ITransport, IConsumer, IPushProducer, IResettableTransport)
class WebSocketStreamTransport:
    """
    A stream transport over an open WebSocket channel.

    The channel calls the attached protocol's C{dataReceived} itself (it
    reads L{protocol}), L{closeStarted} when a close frame was sent or
    received, and L{connectionLost} when the TCP connection is gone.

    Autobahn's own close timers run on the global reactor; ours use
    C{clock}: C{closeTimeout} seconds after a close was sent or received,
    the TCP connection is closed (flushing), and aborted if it is still
    there C{10 * closeTimeout} later.
    """

    __slots__ = (
        "channel",
        "disconnecting",
        "protocol",
        "_host",
        "_peer",
        "_clock",
        "_closeTimeout",
        "_timer",
        "_send",
        "__provides__",
    )

    def __init__(
        self,
        channel: Any,
        host: IAddress,
        peer: IAddress,
        clock: IReactorTime,
        closeTimeout: float,
    ) -> None:
        #: The WebSocket under this transport (an L{IChannel}).
        self.channel = channel
        self.disconnecting = False
        self._host = host
        self._peer = peer
        self._clock = clock
        self._closeTimeout = closeTimeout
        self._timer: IDelayedCall | None = None
        #: The attached protocol (the channel delivers data to it).
        self.protocol: IProtocol | None = None
        self._send = channel.sendBinary

    def attach(self, protocol: IProtocol) -> None:
        """
        Connect C{protocol} to this transport (calls its C{makeConnection}).
        """
        self.protocol = protocol
        protocol.makeConnection(self)

    # ITransport

    def write(self, data: bytes) -> None:
        if self.disconnecting or not data or not self.channel.isOpen():
            return
        n = len(data)
        if n <= MAX_SEND_CHUNK:
            self._send(data)
            return
        view = memoryview(data)
        for start in range(0, n, MAX_SEND_CHUNK):
            self._send(view[start : start + MAX_SEND_CHUNK])

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Close the tunnel with 1000 after what was written.
        """
        self._close(CLOSE_NORMAL, None)

    def resetConnection(self) -> None:
        """
        Close the tunnel with 1011 after what was written: the far end
        resets its side.
        """
        self._close(CLOSE_BROKEN, "connection reset")

    def _close(self, code: int, reason: str | None) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        if self.channel.isOpen():
            self.channel.sendCloseCode(code, reason)
        self.closeStarted()

    def abortConnection(self) -> None:
        """
        Close with 1011 and drop the TCP connection now, without waiting
        for the closing handshake.
        """
        wasOpen = self.channel.isOpen()
        self._close(CLOSE_BROKEN, "connection aborted")
        tcp = self.channel.getTCPTransport()
        if tcp is not None:
            if wasOpen:
                tcp.loseConnection()
            else:
                tcp.abortConnection()

    def getPeer(self) -> IAddress:
        return self._peer

    def getHost(self) -> IAddress:
        return self._host

    def setBufferSize(self, size: int) -> None:
        """
        Set the read size of the TCP connection under the WebSocket (see
        L{sprites_twisted.pipe.setBufferSize}).
        """
        tcp = self.channel.getTCPTransport()
        if tcp is not None and isinstance(getattr(tcp, "bufferSize", None), int):
            tcp.bufferSize = size

    # IConsumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        tcp = self.channel.getTCPTransport()
        if tcp is not None:
            tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        tcp = self.channel.getTCPTransport()
        if tcp is not None:
            tcp.unregisterProducer()

    # IPushProducer

    def pauseProducing(self) -> None:
        tcp = self.channel.getTCPTransport()
        if tcp is not None:
            tcp.pauseProducing()

    def resumeProducing(self) -> None:
        tcp = self.channel.getTCPTransport()
        if tcp is not None:
            tcp.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()

    # Called by the channel

    def closeStarted(self) -> None:
        """
        A close frame was sent or received: make sure the TCP connection
        goes away soon even if the peer does not finish the handshake.
        """
        if self._timer is not None or self.channel.getTCPTransport() is None:
            return
        self._timer = self._clock.callLater(self._closeTimeout, self._closeTCP, False)

    def _closeTCP(self, abort: bool) -> None:
        tcp = self.channel.getTCPTransport()
        if tcp is None:
            return
        if abort:
            tcp.abortConnection()
        else:
            tcp.loseConnection()
            # One timer at a time: the abort, 10 * closeTimeout after the
            # close, if the connection is still there then.
            self._timer = self._clock.callLater(9 * self._closeTimeout, self._closeTCP, True)

    def connectionLost(self, reason: Failure) -> None:
        """
        The WebSocket is gone: cancel timers and tell the protocol, with
        C{reason} (see L{closeFailure}).
        """
        self.disconnecting = True
        call, self._timer = self._timer, None
        if call is not None and call.active():
            call.cancel()
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


class ChannelMixin:
    """
    The half of our two Autobahn shims (the tunnel's client protocol, the
    local server's protocol) that is the same on both sides, mixed in before
    the Autobahn base class: the L{IChannel} operations, and the streaming
    receive hooks.

    Binary payload goes to L{binaryData} as it arrives, whatever the message
    size (rebound to the attached protocol's C{dataReceived} once relaying).
    Text messages are collected only up to C{textLimit} bytes and handed
    whole to C{tunnel.textReceived}; past the limit C{tunnel.textTooLarge}
    is told, and with a limit of 0 text is ignored whatever its size,
    nothing of it kept.  A binary frame over C{maxBinaryFrame} (0: no
    limit) is reported to C{tunnel.frameTooLarge}.  C{tunnel} is the plain
    state machine the shim forwards to.
    """

    tunnel: Any
    textLimit = 0
    maxBinaryFrame = 0
    _isBinary = False
    _textParts: list[bytes] | None = None
    _textSize = 0
    #: How binary data is sent (L{_fastpath.sendMasking}): Autobahn's
    #: public C{sendMessage} until the WebSocket opens.
    _txMasked: bool | None = None
    # Set by Autobahn.
    state: int
    transport: Any
    STATE_OPEN: int

    # IChannel

    def isOpen(self) -> bool:
        return bool(self.state == self.STATE_OPEN)

    def sendBinary(self, data: bytes | memoryview) -> None:
        _fastpath.sendBinary(self, data, self._txMasked)

    def sendCloseCode(self, code: int, reason: str | None) -> None:
        sendCloseCode(self, code, reason)

    def getTCPTransport(self) -> Any:
        return self.transport

    def channelOpened(self) -> None:
        """
        Call when the WebSocket opens: binary data goes out through the
        fast path's sender when it can.
        """
        self._txMasked = _fastpath.sendMasking(self)

    # Autobahn's callbacks

    def webSocketDataReceived(self, data: bytes) -> None:
        """
        Bytes for Autobahn's WebSocket parser (the fast path overrides it).
        """
        super().dataReceived(data)  # type: ignore[misc]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.tunnel.closed(wasClean, code, reason)

    # Autobahn's streaming receive hooks

    def binaryData(self, payload: bytes) -> None:
        """
        Binary payload (any part of a binary message) before relaying.
        """
        self.tunnel.binaryData(payload)

    def onMessageBegin(self, isBinary: bool) -> None:
        self._isBinary = isBinary
        self._textParts = None if isBinary or not self.textLimit else []
        self._textSize = 0

    def onMessageFrameBegin(self, length: int) -> None:
        if self._isBinary and 0 < self.maxBinaryFrame < length:
            self._isBinary = False  # drop what of it arrives
            self._textParts = None
            self.tunnel.frameTooLarge(length)

    def onMessageFrameData(self, payload: bytes) -> None:
        if self._isBinary:
            self.binaryData(payload)
            return
        parts = self._textParts
        if parts is None:
            return
        self._textSize += len(payload)
        if self._textSize > self.textLimit:
            self._textParts = None
            self.tunnel.textTooLarge()
            return
        parts.append(payload)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        parts, self._textParts = self._textParts, None
        if parts is not None:
            self.tunnel.textReceived(b"".join(parts))
