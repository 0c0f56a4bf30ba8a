# -*- test-case-name: tests.test_servertunnel -*-
"""
The local sprite server's side of one tunnel.

As on the client (L{sprites_twisted.tunnel}), two pieces:

- L{ServerTunnel}, a plain object with named states (``awaitingInit`` ->
  ``connecting`` -> ``relaying`` -> ``closed``): it reads the init, checks
  the target against the server's policy, connects to it, answers, and
  joins the target and the WebSocket with a L{sprites_twisted.pipe.Pipe};
- L{ProxyServerProtocol}, the thin Autobahn shim forwarding Autobahn's
  public callbacks to it.

Binary data sent right after the init (early data, before ``connected``)
is kept, up to L{MAX_EARLY_DATA} bytes, and delivered to the target once
it is connected.  How either side ended is passed on by reason: a target
that closes gives close 1000, a target that resets gives close 1011; a
close 1000/1001 from the client closes the target (FIN), anything else
resets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprites_twisted import _fastpath
from sprites_twisted.pipe import Pipe, isCleanEnd, splice
from sprites_twisted.tls import isTLSFailure
from sprites_twisted.wire import MAX_INIT_SIZE, InitError, encodeReply, formatTarget, parseInit
from sprites_twisted.wsstream import (
    ChannelMixin,
    SpriteAddress,
    WebSocketStreamTransport,
    closeFailure,
    quietAutobahnLogger,
)

if TYPE_CHECKING:
    from sprites_twisted.server import LocalSpriteServer

__all__ = ["MAX_EARLY_DATA", "ServerTunnel", "ProxyServerProtocol", "ProxyServerFactory"]

#: Binary data a client may send after its init, before the target is
#: connected (early data); more refuses the tunnel.
MAX_EARLY_DATA = 1024 * 1024

AWAITING_INIT = "awaitingInit"
CONNECTING = "connecting"
RELAYING = "relaying"
CLOSED = "closed"


class _TargetPipe(Pipe):
    """
    The target's end of a tunnel's pipe.
    """

    def __init__(self, tunnel: ServerTunnel) -> None:
        self.tunnel = tunnel
        self.clock = tunnel.server.reactor

    def connectionLost(self, reason: Failure | None = None) -> None:
        Pipe.connectionLost(self, reason)
        self.tunnel.targetLost(reason)


class _TargetFactory(Factory):
    noisy = False

    def __init__(self, tunnel: ServerTunnel) -> None:
        self.tunnel = tunnel

    def buildProtocol(self, addr: Any) -> _TargetPipe:
        return _TargetPipe(self.tunnel)


class ServerTunnel:
    """
    One tunnel of a L{LocalSpriteServer}, for sprite C{spriteName}.
    """

    log = Logger()

    def __init__(self, server: LocalSpriteServer, spriteName: str) -> None:
        self.server = server
        self.spriteName = spriteName
        self.state = AWAITING_INIT
        self.channel: ProxyServerProtocol | None = None
        self.targetName = "?"
        self._targetAddress = ("", 0)
        self._initTimer: IDelayedCall | None = None
        self._dropTimer: IDelayedCall | None = None
        self._connecting: Deferred[Any] | None = None
        self._early: list[bytes] = []
        self._earlySize = 0
        self._stream: WebSocketStreamTransport | None = None
        self._wsPipe: Pipe | None = None
        self._target: _TargetPipe | None = None
        self._targetOpen = False
        self._wsLost = False
        self._started = 0.0
        self._targetEnd: Failure | None = None

    # Events from the shim

    def opened(self) -> None:
        assert self.channel is not None
        self.channel.textLimit = MAX_INIT_SIZE
        reactor = self.server.reactor
        self._started = reactor.seconds()
        self._initTimer = reactor.callLater(self.server.initTimeout, self._initTimedOut)

    def textReceived(self, payload: bytes) -> None:
        if self.state != AWAITING_INIT:
            return
        self._cancel("_initTimer")
        try:
            init = parseInit(payload)
        except InitError as e:
            self.refuse(str(e))
            return
        server = self.server
        self.targetName = formatTarget(init.host, init.port)
        self._targetAddress = (init.host, init.port)
        if not server.policy.allows(init.host):
            self.refuse(f"target {self.targetName} is not allowed by this server")
            return
        self.state = CONNECTING
        assert self.channel is not None
        self.channel.textLimit = 0
        try:
            endpoint = server.targetEndpoint(server.reactor, init.host, init.port)
            d = endpoint.connect(_TargetFactory(self))
        except Exception as e:  # noqa: BLE001 - reported to the client
            self.refuse(f"cannot connect to {self.targetName}: {e}")
            return
        self._connecting = d
        d.addCallbacks(self._targetConnected, self._targetFailed)
        d.addErrback(lambda f: self.log.failure("Unexpected error relaying a tunnel", f))

    def textTooLarge(self) -> None:
        self.refuse(f"init message larger than {MAX_INIT_SIZE} bytes")

    def binaryData(self, data: bytes) -> None:
        """
        Binary payload before the target is connected (once relaying, the
        shim delivers to the pipe directly).
        """
        if self.state == CONNECTING:
            self._earlySize += len(data)
            if self._earlySize > MAX_EARLY_DATA:
                self.refuse("too much data before the tunnel was connected")
                return
            self._early.append(data)
        elif self.state == AWAITING_INIT:
            self.refuse("binary message before the init message")

    def frameTooLarge(self, length: int) -> None:
        """
        A binary frame over the server's limit: close with 1009.
        """
        limit = self.server.maxFramePayloadSize
        self._closeWith(1009, f"frame of {length} bytes over the limit of {limit}")

    def closeFrame(self) -> None:
        if self._stream is not None:
            self._stream.closeStarted()

    def closed(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The WebSocket is gone: end the target the same way.
        """
        self._cancel("_initTimer")
        self._cancel("_dropTimer")
        state, self.state = self.state, CLOSED
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        stream, self._stream = self._stream, None
        end = closeFailure(wasClean, code, reason)
        if stream is not None:
            stream.connectionLost(end)
        if state == RELAYING:
            wsPipe, target = self._wsPipe, self._target
            self.log.info(
                "tunnel {sprite} -> {target} ended ({how}): {toTarget} bytes to the "
                "target, {fromTarget} bytes from it, {duration:.3f} s",
                sprite=self.spriteName,
                target=self.targetName,
                how=self._describeEnd(end, code),
                toTarget=wsPipe.bytesIn if wsPipe is not None else 0,
                fromTarget=target.bytesIn if target is not None else 0,
                duration=self.server.reactor.seconds() - self._started,
            )
        self._wsLost = True
        self._maybeEnded()

    def _describeEnd(self, end: Failure, code: int | None) -> str:
        target = self._targetEnd
        if target is not None:
            return "the target closed" if isCleanEnd(target) else "the target reset"
        if isCleanEnd(end):
            return f"the client closed with {code}"
        return f"the client closed with {code}: the target was reset"

    def targetLost(self, reason: Failure | None) -> None:
        """
        The target connection is gone (its pipe has ended the WebSocket).
        """
        if self._targetEnd is None and reason is not None:
            self._targetEnd = reason
        self._targetOpen = False
        self._maybeEnded()

    # Decisions

    def refuse(self, message: str) -> None:
        """
        Answer the handshake with an error status and close.
        """
        self._cancel("_initTimer")
        self.log.warn(
            "refused tunnel to {sprite}: {reason}", sprite=self.spriteName, reason=message
        )
        self.state = CLOSED
        channel = self.channel
        if channel is not None and channel.isOpen():
            channel.sendMessage(encodeReply("error", message=message), isBinary=False)
        self._closeWith(1000, message[:100])

    def _closeWith(self, code: int, reason: str) -> None:
        channel = self.channel
        if channel is None or channel.transport is None:
            return
        if channel.isOpen():
            channel.sendCloseCode(code, reason)
        if self._dropTimer is None:
            self._dropTimer = self.server.reactor.callLater(self.server.closeTimeout, self._drop)

    def _drop(self) -> None:
        self._dropTimer = None
        channel = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()

    def _initTimedOut(self) -> None:
        self._initTimer = None
        self.refuse(f"no init message within {self.server.initTimeout:g} s")

    def _targetConnected(self, target: _TargetPipe) -> None:
        self._connecting = None
        self._targetOpen = True
        channel = self.channel
        if self.state != CONNECTING or channel is None or not channel.isOpen():
            assert target.transport is not None
            target.transport.loseConnection()
            return
        self.state = RELAYING
        self._target = target
        channel.sendMessage(encodeReply("connected", target=self.targetName), isBinary=False)
        assert channel.transport is not None
        stream = WebSocketStreamTransport(
            channel,
            channel.transport.getHost(),
            SpriteAddress(self.spriteName, *self._targetAddress),
            self.server.reactor,
            self.server.closeTimeout,
        )
        self._stream = stream
        wsPipe = Pipe()
        wsPipe.clock = self.server.reactor
        self._wsPipe = wsPipe
        stream.attach(wsPipe)
        splice(wsPipe, target)
        channel.binaryData = wsPipe.dataReceived  # type: ignore[method-assign]
        early, self._early = self._early, []
        for chunk in early:
            wsPipe.dataReceived(chunk)

    def _targetFailed(self, failure: Failure) -> None:
        self._connecting = None
        if self.state != CONNECTING:
            return
        self.refuse(f"cannot connect to {self.targetName}: {failure.getErrorMessage()}")

    def _maybeEnded(self) -> None:
        if self._wsLost and not self._targetOpen and self._connecting is None:
            self.server.tunnelEnded(self)

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        setattr(self, name, None)
        if call is not None and call.active():
            call.cancel()


class _ProxyServerProtocol(ChannelMixin, WebSocketServerProtocol):  # type: ignore[misc]
    """
    The Autobahn shim of a L{ServerTunnel} (see L{ChannelMixin}).
    """

    log = quietAutobahnLogger()
    _log = Logger()
    tunnel: ServerTunnel

    # Autobahn's callbacks

    def dataReceived(self, data: bytes) -> None:
        self.webSocketDataReceived(data)

    def onOpen(self) -> None:
        self.channelOpened()
        self.maxBinaryFrame = self.tunnel.server.maxFramePayloadSize
        self.tunnel.opened()

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> Any:
        result = super().onCloseFrame(code, reasonRaw)
        self.tunnel.closeFrame()
        return result

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if isTLSFailure(reason):
            # A client that failed TLS: its problem, reported on its side.
            self._log.info(
                "TLS with {peer} failed: {reason}",
                peer=self.transport.getPeer() if self.transport is not None else None,
                reason=reason.getErrorMessage(),
            )
            reason = Failure(ConnectionLost("TLS handshake failed"))
        super().connectionLost(reason)


#: The shim Autobahn runs (with the fast path mixed in when it is on).
ProxyServerProtocol: Any = _fastpath.fastProtocol(_ProxyServerProtocol)


class _ProxyServerFactory(WebSocketServerFactory):  # type: ignore[misc]
    """
    Autobahn server factory for the tunnels of one L{LocalSpriteServer}.
    Autobahn's timers (global reactor) and size limits are off: ours apply.
    """

    protocol = ProxyServerProtocol

    def __init__(self, server: LocalSpriteServer) -> None:
        super().__init__(reactor=server.reactor)
        self.server = server
        self.setProtocolOptions(
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            autoPingInterval=0,
            maxFramePayloadSize=0,
            maxMessagePayloadSize=0,
            perMessageCompressionAccept=lambda offers: None,
            tcpNoDelay=True,
        )

    def tunnelProtocol(self, addr: Any, spriteName: str) -> Any:
        """
        A protocol for a new tunnel to C{spriteName}.
        """
        proto: Any = self.buildProtocol(addr)
        tunnel = ServerTunnel(self.server, spriteName)
        tunnel.channel = proto
        proto.tunnel = tunnel
        self.server.tunnelStarted(tunnel)
        return proto


ProxyServerFactory: Any = _fastpath.fastFactory(_ProxyServerFactory)
