# -*- test-case-name: tests.test_server -*-
"""
The local sprite server: the Sprites proxy API, served on this machine.

It speaks the same contract as the real API (``PROTOCOL.md``):
``GET /v1/sprites/{name}/proxy`` upgraded to a WebSocket with a bearer
token, the JSON handshake, then raw bytes relayed to a TCP target on this
machine.  It powers the demo and the tests and lets users develop offline;
it is product code, exposed to whoever can reach it, so it refuses anything
malformed without crashing and never becomes an open relay:

- the token is compared in constant time; 401 otherwise;
- any other path (``/control`` included) is 404, as are sprite names
  outside C{sprites} when that set is given;
- targets must be loopback unless an allow list says otherwise;
- the init must arrive within C{initTimeout}, be a small JSON object with a
  valid host and port, and come before any binary data;
- at most C{maxTunnels} tunnels at once (429 with ``Retry-After`` beyond);
- frames over C{maxFramePayloadSize} close the tunnel (1009).

Routing, auth and the JSON error bodies happen inside the Autobahn server
protocol (L{ProxyServerProtocol.processHandshake}), before Autobahn validates
the upgrade: the request head is read once, capped at
L{MAX_REQUEST_HEADER} bytes and C{requestTimeout} seconds, and any refusal
is a complete HTTP/1.1 response with a JSON body, after which the
connection closes.  L{LocalSpriteServer.factory} serves it on any stream
server endpoint (``tcp:``, ``ssl:``...).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import parseHttpHeader
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprites_twisted.relay import (
    OpenSet,
    Pipe,
    SharedOptionsFactoryMixin,
    SpriteAddress,
    StreamingWebSocketMixin,
    WebSocketStreamTransport,
    closeFailure,
    isTLSFailure,
    quietAutobahnLogger,
    sendMessage,
    splice,
)
from sprites_twisted.wire import MAX_INIT_SIZE, InitError, encodeReply, formatTarget, parseInit

__all__ = [
    "LocalSpriteServer",
    "TargetPolicy",
    "ProxyServerProtocol",
    "ProxyServerFactory",
    "parseProxyPath",
    "DEFAULT_MAX_TUNNELS",
    "MAX_REQUEST_HEADER",
]

DEFAULT_MAX_TUNNELS = 10000
DEFAULT_INIT_TIMEOUT = 10.0
DEFAULT_MAX_FRAME = 1024 * 1024
#: Seconds a connection may take to send its whole upgrade request.
DEFAULT_REQUEST_TIMEOUT = 10.0
#: The largest HTTP request head (request line and headers) the server
#: reads; a larger one is answered 431.
MAX_REQUEST_HEADER = 16 * 1024
#: Binary data a client may send after its init, before the target is
#: connected (a well-behaved client sends none).
MAX_EARLY_DATA = 1024 * 1024

_AWAITING_INIT, _CONNECTING, _RELAYING, _CLOSED = range(4)
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
}


def parseProxyPath(path: bytes) -> str | None:
    """
    The sprite name in ``/v1/sprites/{name}/proxy``, or C{None} for any
    other path.
    """
    segments = path.split(b"/")
    if len(segments) != 5 or segments[:3] != [b"", b"v1", b"sprites"] or segments[4] != b"proxy":
        return None
    if not segments[3]:
        return None
    try:
        return unquote(segments[3].decode("ascii"), errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None


class TargetPolicy:
    """
    Which targets the server may connect to.

    Loopback (``localhost``, 127.0.0.0/8, ``::1``) always; beyond that only
    what C{allow} lists: host names (exact, case-insensitive), IP addresses
    or networks (``10.0.0.0/8``).  Host names are matched as given, never
    resolved, so a name cannot smuggle in another address.
    """

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.names: set[str] = set()
        self.networks: list[Any] = []
        for entry in allow:
            entry = entry.strip()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.names.add(entry.lower().rstrip("."))

    def allows(self, host: str) -> bool:
        """
        May the server connect to C{host}?
        """
        lowered = host.lower().rstrip(".")
        if lowered == "localhost":
            return True
        try:
            address = ipaddress.ip_address(lowered)
        except ValueError:
            return lowered in self.names
        if address.is_loopback:
            return True
        return any(address in network for network in self.networks)


def defaultTargetEndpoint(reactor: Any, host: str, port: int) -> IStreamClientEndpoint:
    """
    The endpoint for a target: ``localhost`` is 127.0.0.1 (the sprite's
    loopback is this machine's); IP literals connect directly; other (allow
    listed) names are resolved.
    """
    if host.lower() in ("localhost", "localhost."):
        return TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=10)
    if address.version == 4:
        return TCP4ClientEndpoint(reactor, host, port, timeout=10)
    return TCP6ClientEndpoint(reactor, host, port, timeout=10)


class _TargetPipe(Pipe):
    """
    The target's end of a tunnel's pipe.
    """

    def __init__(self, tunnel: ProxyServerProtocol) -> None:
        self.tunnel = tunnel

    def connectionLost(self, reason: Failure | None = None) -> None:
        Pipe.connectionLost(self, reason)
        self.tunnel.targetLost()


class _TargetFactory(Factory):
    noisy = False

    def __init__(self, tunnel: ProxyServerProtocol) -> None:
        self.tunnel = tunnel

    def buildProtocol(self, addr: Any) -> _TargetPipe:
        return _TargetPipe(self.tunnel)


class ProxyServerProtocol(StreamingWebSocketMixin, WebSocketServerProtocol):  # type: ignore[misc]
    """
    One connection to the server: route and authenticate the upgrade
    request, then (as a tunnel) wait for the init, connect to the target,
    reply, relay.
    """

    log = quietAutobahnLogger()
    _log = Logger()
    maxTextSize = MAX_INIT_SIZE
    # A ProxyServerFactory (annotated loosely: Twisted's Factory.protocol
    # type wants protocols whose factory may be any Factory).
    factory: Any
    spriteName = ""
    _state = _AWAITING_INIT
    _initTimer: IDelayedCall | None = None
    _connecting: Deferred[Any] | None = None
    _stream: WebSocketStreamTransport | None = None
    _wsPipe: Pipe | None = None
    _target: _TargetPipe | None = None
    _targetName = "?"
    _targetAddress: tuple[str, int] = ("", 0)
    _started = 0.0

    _routed = False
    _refused = False
    _requestTimer: IDelayedCall | None = None

    # The upgrade request

    def connectionMade(self) -> None:
        super().connectionMade()
        server = self.factory.server
        if server.requestTimeout:
            self._requestTimer = server.reactor.callLater(
                server.requestTimeout, self._requestTimedOut
            )

    def processHandshake(self) -> None:
        """
        Route the request once its head is complete: anything but an
        authenticated WebSocket upgrade at ``/v1/sprites/{name}/proxy``
        (within the tunnel limit) gets a JSON error; the rest goes on to
        Autobahn, which validates and answers the upgrade.
        """
        if self._refused:
            return
        if not self._routed:
            data = self.data
            end = data.find(b"\r\n\r\n", 0, MAX_REQUEST_HEADER)
            if end < 0:
                if len(data) >= MAX_REQUEST_HEADER:
                    self._refuseRequest(
                        431,
                        "header_too_large",
                        f"request header over {MAX_REQUEST_HEADER} bytes",
                    )
                return
            if not self._route(data[: end + 4]):
                return
            self._routed = True
        super().processHandshake()

    def _route(self, head: bytes) -> bool:
        """
        Check the request head; C{False} when it was refused.
        """
        server = self.factory.server
        try:
            requestLine, headers, _ = parseHttpHeader(head)
        except Exception:  # noqa: BLE001 - anything unparsable is a bad request
            requestLine, headers = "", {}
        parts = requestLine.split()
        if len(parts) != 3:
            self._refuseRequest(400, "bad_request", "malformed request line")
            return False
        self._method = parts[0][:16]
        path = parts[1].split("?", 1)[0]
        self._path = path[:200]
        name = parseProxyPath(path.encode("latin-1"))
        if name is None:
            self._refuseRequest(404, "not_found", "no such endpoint")
            return False
        authorization = headers.get("authorization")
        if not server.checkAuthorization(
            authorization.encode("latin-1") if authorization is not None else None
        ):
            self._refuseRequest(
                401,
                "unauthorized",
                "missing or invalid bearer token",
                ("WWW-Authenticate", 'Bearer realm="sprites"'),
            )
            return False
        if not server.allowsSprite(name):
            self._refuseRequest(404, "sprite_not_found", f"no sprite named {name!r}")
            return False
        if headers.get("upgrade", "").lower() != "websocket":
            self._refuseRequest(400, "bad_request", "expected a WebSocket upgrade")
            return False
        if len(server.tunnels) >= server.maxTunnels:
            self._refuseRequest(
                429,
                "rate_limited",
                f"too many open tunnels (limit {server.maxTunnels})",
                ("Retry-After", "1"),
                retry_after_seconds=1,
            )
            return False
        self.spriteName = name
        server.tunnelStarted(self)
        return True

    _method = "?"
    _path = "?"

    def _refuseRequest(
        self,
        status: int,
        code: str,
        message: str,
        header: tuple[str, str] | None = None,
        **extra: Any,
    ) -> None:
        """
        Answer the request with HTTP C{status} and a JSON body
        (C{error}, C{message}, C{extra}), then close the connection.
        """
        self._refused = True
        self._cancelRequestTimer()
        self._log.info(
            "refused {method} {path!r}: HTTP {status} ({error})",
            method=self._method,
            path=self._path,
            status=status,
            error=code,
        )
        body = json.dumps({"error": code, "message": message, **extra}).encode()
        lines = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if header is not None:
            lines.append(f"{header[0]}: {header[1]}")
        self.data = b""
        if self.transport is not None:
            self.transport.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        self.wasNotCleanReason = f"refused with HTTP {status}"
        self.dropConnection(abort=False)
        self._armDrop()

    def _requestTimedOut(self) -> None:
        self._requestTimer = None
        if self.state == self.STATE_CONNECTING and not self._refused:
            timeout = self.factory.server.requestTimeout
            self._refuseRequest(
                408, "request_timeout", f"no complete upgrade request within {timeout:g} s"
            )

    def _cancelRequestTimer(self) -> None:
        if self._requestTimer is not None and self._requestTimer.active():
            self._requestTimer.cancel()
        self._requestTimer = None

    # The tunnel

    def onOpen(self) -> None:
        self._cancelRequestTimer()
        server = self.factory.server
        self._started = server.reactor.seconds()
        self._initTimer = server.reactor.callLater(server.initTimeout, self._initTimedOut)

    def _initTimedOut(self) -> None:
        self._initTimer = None
        self._refuse(f"no init message within {self.factory.server.initTimeout:g} s")

    def _cancelInitTimer(self) -> None:
        if self._initTimer is not None and self._initTimer.active():
            self._initTimer.cancel()
        self._initTimer = None

    def _refuse(self, message: str) -> None:
        """
        Answer the handshake with an error status and close.
        """
        self._cancelInitTimer()
        self._log.warn(
            "refused tunnel to {sprite}: {reason}",
            sprite=self.spriteName,
            reason=message,
        )
        self._state = _CLOSED
        if self.state == self.STATE_OPEN:
            self.sendMessage(encodeReply("error", message=message), isBinary=False)
            self.sendClose(code=1000, reason=message[:100])
        self._armDrop()

    def _armDrop(self) -> None:
        if self._dropTimer is None and self.transport is not None:
            self._dropTimer = self.factory.server.reactor.callLater(
                self.factory.server.closeTimeout, self._drop
            )

    _dropTimer: IDelayedCall | None = None

    def _drop(self) -> None:
        self._dropTimer = None
        self.dropConnection(abort=True)

    def textReceived(self, payload: bytes) -> None:
        if self._state != _AWAITING_INIT:
            return
        self._cancelInitTimer()
        try:
            init = parseInit(payload)
        except InitError as e:
            self._refuse(str(e))
            return
        server = self.factory.server
        self._targetName = formatTarget(init.host, init.port)
        self._targetAddress = (init.host, init.port)
        if not server.policy.allows(init.host):
            self._refuse(f"target {self._targetName} is not allowed by this server")
            return
        self._state = _CONNECTING
        self._early: list[bytes] = []
        self._earlySize = 0
        try:
            endpoint = server.targetEndpoint(server.reactor, init.host, init.port)
            d = endpoint.connect(_TargetFactory(self))
        except Exception as e:  # noqa: BLE001 - reported to the client
            self._refuse(f"cannot connect to {self._targetName}: {e}")
            return
        self._connecting = d
        d.addCallbacks(self._targetConnected, self._targetFailed)
        d.addErrback(lambda f: self._log.failure("Unexpected error relaying a tunnel", f))

    def _targetConnected(self, target: _TargetPipe) -> None:
        self._connecting = None
        if self._state != _CONNECTING or self.state != self.STATE_OPEN:
            assert target.transport is not None
            self._targetOpen = True
            target.transport.loseConnection()
            return
        self._state = _RELAYING
        self._target = target
        self._targetOpen = True
        sendMessage(self, encodeReply("connected", target=self._targetName), isBinary=False)
        server = self.factory.server
        assert self.transport is not None  # the WebSocket is open
        stream = WebSocketStreamTransport(
            self,
            self.transport.getHost(),
            SpriteAddress(self.spriteName, *self._targetAddress),
            server.reactor,
            server.closeTimeout,
        )
        self._stream = stream
        wsPipe = Pipe()
        self._wsPipe = wsPipe
        stream.attach(wsPipe)
        splice(wsPipe, target)
        early, self._early = self._early, []
        for chunk in early:
            stream.deliver(chunk)

    def _targetFailed(self, failure: Failure) -> None:
        self._connecting = None
        if self._state != _CONNECTING:
            return
        self._refuse(f"cannot connect to {self._targetName}: {failure.getErrorMessage()}")

    def binaryReceived(self, data: bytes) -> None:
        state = self._state
        if state == _RELAYING:
            stream = self._stream
            if stream is not None:
                stream.deliver(data)
        elif state == _CONNECTING:
            self._earlySize += len(data)
            if self._earlySize > MAX_EARLY_DATA:
                self._refuse("too much data before the tunnel was connected")
                return
            self._early.append(data)
        elif state == _AWAITING_INIT:
            self._refuse("binary message before the init message")

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> Any:
        result = super().onCloseFrame(code, reasonRaw)
        if self._stream is not None:
            self._stream.closeStarted()
        return result

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._cancelRequestTimer()
        self._cancelInitTimer()
        if self._dropTimer is not None and self._dropTimer.active():
            self._dropTimer.cancel()
        self._dropTimer = None
        state, self._state = self._state, _CLOSED
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        server = self.factory.server
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.deliverConnectionLost(closeFailure(wasClean, code, reason))
        if state == _RELAYING:
            wsPipe, target = self._wsPipe, self._target
            self._log.info(
                "tunnel {sprite} -> {target} ended: {toTarget} bytes to the target, "
                "{fromTarget} bytes from it, {duration:.3f} s",
                sprite=self.spriteName,
                target=self._targetName,
                toTarget=wsPipe.bytesIn if wsPipe is not None else 0,
                fromTarget=target.bytesIn if target is not None else 0,
                duration=server.reactor.seconds() - self._started,
            )

    _wsLost = False
    _targetOpen = False

    def targetLost(self) -> None:
        """
        The target connection is gone (it has closed the WebSocket side).
        """
        self._targetOpen = False
        self._maybeEnded()

    def _maybeEnded(self) -> None:
        if self._wsLost and not self._targetOpen and self._connecting is None:
            self.factory.server.tunnelEnded(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if isTLSFailure(reason):
            # A client that failed TLS (wrong CA, expired certificate...):
            # its problem, reported on its side; Autobahn would log it as
            # an error here.
            self._log.info(
                "TLS with {peer} failed: {reason}",
                peer=self.transport.getPeer() if self.transport is not None else None,
                reason=reason.getErrorMessage(),
            )
            reason = Failure(ConnectionLost("TLS handshake failed"))
        try:
            super().connectionLost(reason)
        finally:
            self._wsLost = True
            self._maybeEnded()


class ProxyServerFactory(SharedOptionsFactoryMixin, WebSocketServerFactory):  # type: ignore[misc]
    """
    Autobahn server factory for the tunnels of one L{LocalSpriteServer}.
    Autobahn's timers (global reactor) are off; ours use the server's
    reactor.
    """

    protocol = ProxyServerProtocol

    def __init__(self, server: LocalSpriteServer) -> None:
        super().__init__(reactor=server.reactor)
        self.server = server
        self.setProtocolOptions(
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            autoPingInterval=0,
            maxFramePayloadSize=server.maxFramePayloadSize,
            perMessageCompressionAccept=lambda offers: None,
            tcpNoDelay=True,
        )


class LocalSpriteServer:
    """
    The local sprite server's configuration and state.

    :param reactor: provides C{IReactorTCP} and C{IReactorTime}.
    :param token: the bearer token clients must present.
    :param sprites: if given, the only sprite names served (404 otherwise).
    :param allow: extra targets beyond loopback (see L{TargetPolicy}).
    :param maxTunnels: concurrent tunnels before answering 429.
    :param initTimeout: seconds a tunnel may take to send its init.
    :param requestTimeout: seconds a connection may take to send its whole
        upgrade request (408 after that).
    :param maxFramePayloadSize: the largest frame accepted from a client.
    :param targetEndpoint: C{(reactor, host, port) -> IStreamClientEndpoint}
        (tests substitute their own).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        token: str,
        *,
        sprites: Iterable[str] | None = None,
        allow: Iterable[str] = (),
        maxTunnels: int = DEFAULT_MAX_TUNNELS,
        initTimeout: float = DEFAULT_INIT_TIMEOUT,
        maxFramePayloadSize: int = DEFAULT_MAX_FRAME,
        closeTimeout: float = 1.0,
        targetEndpoint: Callable[[Any, str, int], IStreamClientEndpoint] = defaultTargetEndpoint,
        requestTimeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if not token:
            raise ValueError("the local sprite server needs a token")
        self.reactor = reactor
        self._token = token.encode("utf-8")
        self.sprites = frozenset(sprites) if sprites is not None else None
        self.policy = TargetPolicy(allow)
        self.maxTunnels = maxTunnels
        self.initTimeout = initTimeout
        self.requestTimeout = requestTimeout
        self.maxFramePayloadSize = maxFramePayloadSize
        self.closeTimeout = closeTimeout
        self.targetEndpoint = targetEndpoint
        self.tunnels = OpenSet()
        self.wsFactory = ProxyServerFactory(self)

    def __repr__(self) -> str:
        return f"<LocalSpriteServer {len(self.tunnels)} tunnels>"

    def checkAuthorization(self, header: bytes | None) -> bool:
        """
        Is C{header} ``Bearer <our token>``?  Constant-time comparison.
        """
        if not header:
            return False
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self._token)

    def allowsSprite(self, name: str) -> bool:
        """
        Does this server serve sprite C{name}?
        """
        return self.sprites is None or name in self.sprites

    def tunnelStarted(self, proto: ProxyServerProtocol) -> None:
        """
        Count a tunnel from the moment its upgrade is accepted.
        """
        self.tunnels.add(proto)

    def tunnelEnded(self, proto: ProxyServerProtocol) -> None:
        """
        A tunnel and its target connection are both gone.
        """
        self.tunnels.discard(proto)

    def whenIdle(self) -> Deferred[None]:
        """
        A Deferred that fires once no tunnel (nor its target connection) is
        open; at once if none is.
        """
        return self.tunnels.whenEmpty()

    def factory(self) -> ProxyServerFactory:
        """
        The protocol factory serving the API, for any stream server endpoint
        (``tcp:8900:interface=127.0.0.1``, ``ssl:...``).  The same factory
        each call; it can serve several endpoints at once.
        """
        return self.wsFactory
