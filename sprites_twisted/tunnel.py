# -*- test-case-name: tests.test_tunnel -*-
"""
The client side of one tunnel.

Two pieces, as magic-wormhole's ``_rendezvous.py`` splits them:

- L{Tunnel}, a plain object with named states (``upgrading`` ->
  ``awaitingReply`` -> ``relaying`` -> ``closed``) that sends the init,
  reads the reply, fires the endpoint's Deferred, runs the keepalive and
  decides how the stream ended;
- L{TunnelClientProtocol}, a thin Autobahn shim that only forwards
  Autobahn's public callbacks to it and carries out its sends.

Autobahn reports a refused upgrade only as text, so the shim keeps the HTTP
response bytes until the head (and, for a refusal, the body) is complete
and hands them to L{sprites_twisted.refusal}: a 401, 404 or 429 becomes a
typed error with the server's message and ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.error import ConnectionLost, NoProtocol
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure

from sprites_twisted import _fastpath
from sprites_twisted.config import USER_AGENT
from sprites_twisted.errors import HandshakeError, TunnelClosedError
from sprites_twisted.keepalive import Keepalive
from sprites_twisted.refusal import (
    MAX_RESPONSE_HEADER,
    ResponseHead,
    parseResponseHead,
    refusalError,
)
from sprites_twisted.tls import isTLSFailure, tlsFailure
from sprites_twisted.wire import MAX_REPLY_SIZE, parseReply
from sprites_twisted.wsstream import (
    ChannelMixin,
    SpriteAddress,
    WebSocketStreamTransport,
    closeFailure,
    quietAutobahnLogger,
)

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = [
    "USER_AGENT",
    "EarlyData",
    "Tunnel",
    "TunnelClientProtocol",
    "TunnelClientFactory",
    "AttemptFactory",
]

UPGRADING = "upgrading"
SPARE = "spare"
AWAITING_REPLY = "awaitingReply"
RELAYING = "relaying"
CLOSED = "closed"


def _nothing() -> None:
    pass


class EarlyData:
    """
    What a local client sent before its tunnel answered ``connected``
    (early data, opt in): kept until then, so that a tunnel that dies
    before answering can be retried with the same bytes, and sent as it
    arrives once a tunnel is attached.

    :ivar limit: past this many bytes the local side stops reading until
        the tunnel is up (L{full}).
    """

    def __init__(self, limit: int = 64 * 1024) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self._sink: Callable[[bytes], None] | None = None

    @property
    def full(self) -> bool:
        return self.size >= self.limit

    def write(self, data: bytes) -> None:
        """
        More early bytes from the local client.
        """
        self.chunks.append(data)
        self.size += len(data)
        if self._sink is not None:
            self._sink(data)

    def attach(self, sink: Callable[[bytes], None]) -> None:
        """
        Send everything so far to C{sink}, and what comes later as it comes.
        """
        self._sink = sink
        for chunk in self.chunks:
            sink(chunk)

    def detach(self) -> None:
        self._sink = None


class Tunnel:
    """
    One tunnel's WebSocket: the handshake, then the stream.

    A tunnel is I{claimed} by one ``connect`` call (L{claim}): it sends that
    call's init once upgraded (at once, if it already is) and the call's
    Deferred fires exactly once: with the application protocol once the
    sprite answered ``connected``, or with the failure (later events are
    ignored, so a cancel or timeout racing with the answer is harmless).
    After that the stream's end reaches the application protocol as
    C{ConnectionDone} (close 1000/1001) or C{ConnectionLost} (anything
    else, a keepalive timeout included).

    A tunnel upgraded before anyone claimed it is a I{spare} (a warm
    tunnel, L{sprites_twisted.warm}): ``upgrading`` -> ``spare`` ->
    ``awaitingReply`` -> ``relaying`` -> ``closed``.  A claimed spare that
    closes before answering is retried once through C{retry}, so that a
    spare the server had silently dropped costs no more than a cold tunnel.
    """

    # Thousands of tunnels may be open at once: no per-instance dict.
    __slots__ = (
        "clock",
        "apiHost",
        "closeTimeout",
        "state",
        "done",
        "claimed",
        "warm",
        "channel",
        "stream",
        "deferred",
        "protocolFactory",
        "initMessage",
        "peerAddress",
        "early",
        "onSpare",
        "onSpareLost",
        "retry",
        "tcpConnecting",
        "tlsSessions",
        "initSent",
        "_failure",
        "_keepalive",
    )

    def __init__(
        self,
        clock: IReactorTime,
        apiHost: str,
        closeTimeout: float,
        keepalive: Keepalive | None = None,
    ) -> None:
        self.clock = clock
        self.apiHost = apiHost
        self.closeTimeout = closeTimeout
        self.state = UPGRADING
        #: Set when the claiming call's Deferred has fired (or was cancelled).
        self.done = False
        self.claimed = False
        #: A spare when claimed (a retry is allowed if it turns out dead).
        self.warm = False
        self.channel: TunnelClientProtocol | None = None
        self.stream: WebSocketStreamTransport | None = None
        self.deferred: Deferred[IProtocol] | None = None
        self.protocolFactory: IProtocolFactory | None = None
        self.initMessage = b""
        self.peerAddress: SpriteAddress | None = None
        self.early: EarlyData | None = None
        #: Called with this tunnel when it becomes a spare, and when a spare
        #: (claimed or not) is gone: set by the pool.
        self.onSpare: Callable[[Tunnel], None] | None = None
        self.onSpareLost: Callable[[Tunnel], None] | None = None
        #: Called (instead of failing) when a claimed spare died before
        #: answering: set by the endpoint.
        self.retry: Callable[[Tunnel], None] | None = None
        #: The TCP connection attempt, while it is pending (set by the endpoint).
        self.tcpConnecting: Deferred[Any] | None = None
        #: The TLS session cache to give this connection's session to, once
        #: open (L{sprites_twisted.tls.ResumingClientTLS}); set by the endpoint.
        self.tlsSessions: Any = None
        #: When the init went out (the clock's seconds; 0 before): the time
        #: to the reply is one round trip to the sprite and back.
        self.initSent = 0.0
        self._failure: Failure | None = None
        # Interval 0: no pings, where no keepalive is given.
        self._keepalive = keepalive if keepalive is not None else Keepalive(clock, 0.0)

    def claim(
        self,
        deferred: Deferred[IProtocol],
        protocolFactory: IProtocolFactory,
        initMessage: bytes,
        peerAddress: SpriteAddress,
        early: EarlyData | None = None,
    ) -> None:
        """
        Use this tunnel for one ``connect``: its init is sent once upgraded,
        then C{early} data, if any, right behind it.
        """
        self.claimed = True
        self.deferred = deferred
        self.protocolFactory = protocolFactory
        self.initMessage = initMessage
        self.peerAddress = peerAddress
        self.early = early
        if self.state == SPARE:
            self._sendInit()
        elif self.state == CLOSED:
            # The connection failed before the claim (at once, say).
            self._report(self._failure or Failure(TunnelClosedError(None, "closed")))

    # Events from the shim

    def opened(self) -> None:
        """
        The upgrade succeeded: send the init, or wait as a spare.
        """
        channel = self.channel
        if self.tlsSessions is not None and channel is not None:
            getHandle = getattr(channel.transport, "getHandle", None)
            if getHandle is not None:
                self.tlsSessions.remember(getHandle())
        if self.claimed:
            self._sendInit()
            return
        self.state = SPARE
        if self.onSpare is not None:
            self.onSpare(self)

    def _sendInit(self) -> None:
        channel = self.channel
        assert channel is not None
        self.state = AWAITING_REPLY
        self.initSent = self.clock.seconds()
        channel.textLimit = MAX_REPLY_SIZE
        channel.sendMessage(self.initMessage, isBinary=False)
        if self.early is not None:
            self.early.attach(channel.sendBinary)

    def textReceived(self, payload: bytes) -> None:
        """
        A whole text message arrived while awaiting the reply.
        """
        if self.state != AWAITING_REPLY:
            return
        try:
            parseReply(payload)
        except HandshakeError as e:
            self.fail(e)
            return
        self._relay()

    def textTooLarge(self) -> None:
        """
        The reply grew over its limit.
        """
        self.fail(HandshakeError(None, f"reply larger than {MAX_REPLY_SIZE} bytes"))

    def binaryData(self, data: bytes) -> None:
        """
        Binary data before the stream exists: a protocol violation.  (Once
        relaying, the shim delivers to the application protocol directly.)
        """
        if self.state in (AWAITING_REPLY, SPARE):
            self.fail(HandshakeError(None, "binary data arrived before the handshake reply"))

    def refused(self, head: ResponseHead, body: bytes) -> None:
        """
        The upgrade was answered with a status other than 101.
        """
        assert head.status is not None
        self.fail(refusalError(head.status, head.headers, body))

    def closeFrame(self, code: int | None, reason: str | None) -> None:
        """
        A close frame arrived.
        """
        if self.stream is not None:
            self.stream.closeStarted()
        elif self.state in (AWAITING_REPLY, SPARE):
            # No reply can come after a close: fail now rather than wait
            # for the server to drop the connection.
            self.fail(TunnelClosedError(code, reason or "closed before the handshake reply"))

    def pong(self) -> None:
        self._keepalive.pong(self)

    def tlsFailed(self, reason: Failure) -> None:
        """
        The connection ended because TLS failed.
        """
        if self._failure is None and self.channel is not None:
            self._failure = tlsFailure(reason, self.channel.transport, self.apiHost)

    def tcpFailed(self, failure: Failure) -> None:
        """
        The TCP (or TLS) connection to the API could not be made.
        """
        self.state = CLOSED
        if self._failure is None:
            self._failure = failure
        if self.claimed:
            self._report(failure)
        elif self.onSpareLost is not None:
            self.onSpareLost(self)

    def closed(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The WebSocket is gone.
        """
        state, self.state = self.state, CLOSED
        self._keepalive.stop(self)
        if self.early is not None:
            self.early.detach()
        if state == RELAYING:
            stream, self.stream = self.stream, None
            if stream is not None:
                stream.connectionLost(self._failure or closeFailure(wasClean, code, reason))
            return
        if state == CLOSED:
            return
        if not self.claimed:
            if self.onSpareLost is not None:
                self.onSpareLost(self)
            return
        failure = self._failure or self._failureFor(state, wasClean, code, reason)
        if (
            self.warm
            and self.retry is not None
            and not self.done
            and state == AWAITING_REPLY
            and failure.check(TunnelClosedError)
        ):
            retry, self.retry = self.retry, None
            retry(self)
            return
        self._report(failure)

    # Decisions

    def fail(self, error: Exception | Failure) -> None:
        """
        End the tunnel abnormally, for C{error}: its connection is dropped
        and, once relaying, its stream ends as broken.
        """
        if self._failure is None:
            self._failure = error if isinstance(error, Failure) else Failure(error)
        channel = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()

    def abort(self) -> None:
        """
        Drop the connection (cancel and timeout of ``connect``).
        """
        self.done = True
        channel = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()

    def closeSpare(self) -> None:
        """
        Close an unclaimed spare cleanly (1000); one still connecting is
        abandoned.
        """
        if self.claimed:
            return
        channel = self.channel
        if channel is not None and channel.isOpen():
            channel.sendCloseCode(1000, None)
            return
        pending = self.tcpConnecting
        if pending is not None and not pending.called:
            pending.cancel()
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()

    def _relay(self) -> None:
        channel = self.channel
        assert channel is not None and channel.transport is not None
        assert self.deferred is not None and self.protocolFactory is not None
        assert self.peerAddress is not None
        if self.done:
            self.fail(TunnelClosedError(None, "connect was cancelled"))
            return
        self.done = True
        self.state = RELAYING
        channel.textLimit = 0
        if self.early is not None:
            self.early.detach()
        stream = WebSocketStreamTransport(
            channel, channel.transport.getHost(), self.peerAddress, self.clock, self.closeTimeout
        )
        app = self.protocolFactory.buildProtocol(self.peerAddress)
        if app is None:
            self.state = CLOSED
            channel.transport.abortConnection()
            self.deferred.errback(NoProtocol())
            return
        self.stream = stream
        # From here on binary payload goes straight to the protocol.
        channel.binaryData = app.dataReceived  # type: ignore[method-assign]
        stream.attach(app)
        self._keepalive.start(self)
        self.deferred.callback(app)

    def notifyFirstData(self, callback: Callable[[], None]) -> Callable[[], None]:
        """
        Call C{callback} once, right after the first bytes from the sprite
        reached the application protocol; never if the tunnel is not
        relaying (any more).  Nothing is added to the path of later bytes:
        the hook replaces itself.

        :return: a function that takes the hook out unused (a no-op once it
            has fired), so that a connection that never gets bytes does
            not hold it.
        """
        channel = self.channel
        if channel is None or self.state != RELAYING:
            return _nothing
        deliver = channel.binaryData

        def restore() -> None:
            if channel.binaryData is first:
                channel.binaryData = deliver  # type: ignore[method-assign]

        def first(data: bytes) -> None:
            restore()
            deliver(data)
            callback()

        channel.binaryData = first  # type: ignore[method-assign]
        return restore

    def _report(self, failure: Failure) -> None:
        if self.done or self.deferred is None:
            return
        self.done = True
        self.deferred.errback(failure)

    def _failureFor(
        self, state: str, wasClean: bool, code: int | None, reason: str | None
    ) -> Failure:
        if state == UPGRADING:
            return Failure(
                TunnelClosedError(
                    None, f"during the WebSocket upgrade: {reason}" if reason else None
                )
            )
        if wasClean:
            return Failure(TunnelClosedError(code, reason or "closed before the handshake reply"))
        return Failure(TunnelClosedError(code, "connection dropped before the handshake reply"))

    def sendPing(self) -> None:
        """
        The keepalive's ping (L{sprites_twisted.keepalive.Pinged}).
        """
        if self.channel is not None and self.channel.isOpen():
            self.channel.sendPing()

    def keepaliveDead(self, why: str) -> None:
        """
        No pong for too long (L{sprites_twisted.keepalive.Pinged}): the
        stream ends as broken.
        """
        self.fail(ConnectionLost(f"tunnel to {self.peerAddress} is dead: {why}"))


class _TunnelClientProtocol(ChannelMixin, WebSocketClientProtocol):  # type: ignore[misc]
    """
    The Autobahn shim of a L{Tunnel}: forwards public callbacks, carries
    out sends (L{ChannelMixin}), and keeps the HTTP response of a refused
    upgrade for L{sprites_twisted.refusal}.
    """

    log = quietAutobahnLogger()
    tunnel: Tunnel
    # The HTTP response while upgrading (None once upgraded).
    _response: bytes | None = b""
    _head: ResponseHead | None = None

    # Receiving

    def connectionMade(self) -> None:
        setKeepAlive = getattr(self.transport, "setTcpKeepAlive", None)
        if setKeepAlive is not None:
            setKeepAlive(True)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self._response is None:
            self.webSocketDataReceived(data)
            return
        response = self._response + data
        if self._head is None:
            if response[:12] == b"HTTP/1.1 101" and response[12:13] in (b" ", b"\r"):
                if response.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEADER + 4) >= 0:
                    # The usual answer, whole: Autobahn reads and validates
                    # it; reading it here too would cost each tunnel.
                    self._response = None
                    self.webSocketDataReceived(response)
                    return
            try:
                head = parseResponseHead(response)
            except ValueError as e:
                self._response = None
                self.tunnel.fail(TunnelClosedError(None, str(e)))
                return
            if head is None:
                self._response = response
                return
            if head.status == 101 or head.status is None:
                # Autobahn validates the upgrade (or fails it, with text).
                self._response = None
                self.webSocketDataReceived(response)
                return
            self._head = head
        self._response = response
        self._maybeRefused(final=False)

    def _maybeRefused(self, final: bool) -> None:
        head, response = self._head, self._response
        if head is None or response is None:
            return
        body = response[head.size :]
        if final or head.bodyComplete(body):
            self._response = None
            self.tunnel.refused(head, body)

    def onOpen(self) -> None:
        self.channelOpened()
        self.tunnel.opened()

    def onPong(self, payload: bytes) -> None:
        self.tunnel.pong()

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> Any:
        result = super().onCloseFrame(code, reasonRaw)
        reason = reasonRaw.decode("utf-8", "replace") if reasonRaw else None
        self.tunnel.closeFrame(code, reason)
        return result

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._response is not None:
            # The server closed after a refusal: use what body we got.
            self._maybeRefused(final=True)
            self._response = None
        if isTLSFailure(reason):
            self.tunnel.tlsFailed(reason)
            # Reported as a TLS error; Autobahn would log a cryptic line.
            reason = Failure(ConnectionLost("TLS failed"))
        super().connectionLost(reason)


#: The shim Autobahn runs (with the fast path mixed in when it is on).
TunnelClientProtocol: Any = _fastpath.fastProtocol(_TunnelClientProtocol)


class _TunnelClientFactory(WebSocketClientFactory):  # type: ignore[misc]
    """
    The Autobahn client factory for one sprite proxy URL, shared by all
    tunnels of an endpoint.

    All of Autobahn's timers are off (they run on the global reactor); the
    handshake timeout is the endpoint's (on our reactor), close timeouts the
    stream adapter's, pings the L{Tunnel}'s.  Autobahn's own size limits are
    off too: binary data is streamed, text after the handshake ignored, and
    the reply's limit is ours.
    """

    protocol = TunnelClientProtocol

    def __init__(self, url: str, token: str, reactor: Any) -> None:
        super().__init__(
            url,
            headers={"Authorization": f"Bearer {token}"},
            useragent=USER_AGENT,
            reactor=reactor,
        )
        self.setProtocolOptions(
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            serverConnectionDropTimeout=0,
            autoPingInterval=0,
            maxFramePayloadSize=0,
            maxMessagePayloadSize=0,
            perMessageCompressionOffers=[],
            tcpNoDelay=True,
        )

    def __repr__(self) -> str:
        return f"<TunnelClientFactory {self.url}>"


TunnelClientFactory: Any = _fastpath.fastFactory(_TunnelClientFactory)


class AttemptFactory(Factory):
    """
    Builds the protocol for one ``connect`` call: a protocol from the
    shared L{TunnelClientFactory}, bound to its L{Tunnel}.
    """

    noisy = False

    def __init__(self, wsFactory: Any, tunnel: Tunnel) -> None:
        self.wsFactory = wsFactory
        self.tunnel = tunnel

    def buildProtocol(self, addr: Any) -> Any:
        proto = self.wsFactory.buildProtocol(addr)
        proto.tunnel = self.tunnel
        self.tunnel.channel = proto
        return proto
