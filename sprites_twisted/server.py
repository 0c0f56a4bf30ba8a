# -*- test-case-name: tests.test_server -*-
"""
The local sprite server: the Sprites API, served on this machine.

It speaks the same contract as the real API (``PROTOCOL.md``), on
C{twisted.web}: ``GET /v1/sprites/{name}`` (sprite information) and
``GET /v1/sprites/{name}/proxy`` upgraded to a WebSocket (Autobahn's
C{WebSocketResource}) with a bearer token, the JSON handshake, then raw
bytes relayed to a TCP target on this machine
(L{sprites_twisted.servertunnel}).  It powers the demo and the tests and
lets users develop offline; it is product code, exposed to whoever can
reach it, so it refuses anything malformed without crashing and never
becomes an open relay:

- HTTP is parsed by Twisted; a header value with a NUL byte is a 400
  (``malformed header``), a request head over L{MAX_REQUEST_HEADER} bytes
  a 431, a request not complete within C{requestTimeout} a 408;
- the token is compared in constant time; 401 otherwise;
- any other path (``/control`` included) is 404, as are sprite names
  outside C{sprites} when that set is given;
- targets must be loopback unless an allow list says otherwise;
- the init must arrive within C{initTimeout}, be a small JSON object with a
  valid host and port, and come before any binary data;
- at most C{maxTunnels} tunnels at once (429 with ``Retry-After`` beyond);
- binary frames over C{maxFramePayloadSize} close the tunnel (1009); text
  messages after the init are ignored, whatever their size.

Every refusal is an HTTP/1.1 response with a JSON body (``error``,
``message``), after which the connection closes.
L{LocalSpriteServer.factory} serves it on any stream server endpoint
(``tcp:``, ``ssl:``...).
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from sprites_twisted.config import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_INIT_TIMEOUT,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_TUNNELS,
)
from sprites_twisted.config import DEFAULT_SERVER_REQUEST_TIMEOUT as DEFAULT_REQUEST_TIMEOUT
from sprites_twisted.portscan import mountPortWatch
from sprites_twisted.servertunnel import ProxyServerFactory, ServerTunnel
from sprites_twisted.tracking import OpenSet

__all__ = [
    "LocalSpriteServer",
    "APISite",
    "TargetPolicy",
    "parseProxyPath",
    "DEFAULT_MAX_TUNNELS",
    "DEFAULT_INIT_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_REQUEST_HEADER",
]

#: The largest HTTP request head (request line and headers) the server
#: reads; a larger one is answered 431.
MAX_REQUEST_HEADER = 16 * 1024

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
}

_log = Logger()


def jsonResponse(status: int, code: str, message: str, **extra: Any) -> bytes:
    """
    A complete HTTP/1.1 error response with a JSON body, for answers
    written straight to a connection (before or instead of a request).
    """
    body = json.dumps({"error": code, "message": message, **extra}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def refuse(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    **extra: Any,
) -> bytes:
    """
    Answer C{request} with HTTP C{status} and a JSON body (C{error},
    C{message}, C{extra}); the connection closes once it is sent.
    """
    _log.info(
        "refused {method} {path!r}: HTTP {status} ({error})",
        method=request.method.decode("latin-1")[:16],
        path=request.path.decode("latin-1")[:200],
        status=status,
        error=code,
    )
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"connection", b"close")
    for name, value in headers:
        request.setHeader(name, value)
    channel = request.channel
    request.notifyFinish().addBoth(lambda _: channel.loseConnection())
    return json.dumps({"error": code, "message": message, **extra}).encode()


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


class _Channel(HTTPChannel):
    """
    Twisted's HTTP channel, answering what it would refuse with a bare 400
    with our JSON errors instead: a header value holding a NUL byte (400,
    ``malformed header``), a request head over L{MAX_REQUEST_HEADER} bytes
    (431) and a request not complete in time (408).
    """

    totalHeadersSize = 2 * MAX_REQUEST_HEADER
    MAX_LENGTH = MAX_REQUEST_HEADER
    _headSize = 0
    _answered = False

    def _answer(self, response: bytes) -> None:
        self._answered = True
        if self.transport is not None:
            self.transport.write(response)
            self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        if self._answered:
            return
        self._headSize += len(line) + 2
        if self._headSize > MAX_REQUEST_HEADER:
            self._tooLarge()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self._answered:
            self._tooLarge()

    def _tooLarge(self) -> None:
        _log.info("refused a request: HTTP 431 (header_too_large)")
        self._answer(
            jsonResponse(431, "header_too_large", f"request header over {MAX_REQUEST_HEADER} bytes")
        )

    def headerReceived(self, line: bytes) -> bool:
        name, sep, value = line.partition(b":")
        if sep and b"\x00" in value:
            shown = name.strip().decode("latin-1")[:40]
            _log.info("refused a request: HTTP 400 (malformed header {name!r})", name=shown)
            self._answer(
                jsonResponse(
                    400, "bad_request", f"malformed header {shown!r}: its value holds a NUL byte"
                )
            )
            return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        self._headSize = 0
        super().allHeadersReceived()

    def timeoutConnection(self) -> None:
        if not self._answered and self.transport is not None:
            timeout = self.timeOut
            _log.info("refused a request: HTTP 408 (request_timeout)")
            self.transport.write(
                jsonResponse(408, "request_timeout", f"no complete request within {timeout:g} s")
            )
            self._answered = True
        super().timeoutConnection()


class APISite(Site):
    """
    The C{twisted.web} site serving a L{LocalSpriteServer}.

    :ivar api: that server.
    """

    protocol = _Channel  # type: ignore[assignment]

    def __init__(self, api: LocalSpriteServer, resource: IResource, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.api = api


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return refuse(request, 404, "not_found", "no such endpoint")


class _Node(Resource):
    """
    A fixed path segment; anything not below it is a JSON 404.
    """

    def getChild(self, path: bytes, request: Request) -> IResource:
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return refuse(request, 404, "not_found", "no such endpoint")


class _Sprites(_Node):
    """
    ``/v1/sprites/``: each child is one sprite, by its (unquoted) name.
    """

    def __init__(self, server: LocalSpriteServer) -> None:
        super().__init__()
        self.api = server

    def getChild(self, path: bytes, request: Request) -> IResource:
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return _NotFound()
        if not name:
            return _NotFound()
        return _Sprite(self.api, name)


class _Sprite(_Node):
    """
    ``/v1/sprites/{name}``: its information (GET); its ``proxy`` below.
    """

    def __init__(self, server: LocalSpriteServer, name: str) -> None:
        super().__init__()
        self.api = server
        self.name = name

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"proxy":
            return _Proxy(self.api, self.name)
        child = self.api.spriteChildren.get(path)
        if child is not None:
            return child(self.api, self.name)
        return _NotFound()

    def render(self, request: Request) -> bytes:
        refusal = self.api.checkRequest(request, self.name)
        if refusal is not None:
            return refusal
        if request.method not in (b"GET", b"HEAD"):
            return refuse(request, 405, "method_not_allowed", "use GET")
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.api.spriteInfo(self.name)).encode()


class _Proxy(Resource):
    """
    ``/v1/sprites/{name}/proxy``: the tunnel's WebSocket upgrade.
    """

    isLeaf = True

    def __init__(self, server: LocalSpriteServer, name: str) -> None:
        super().__init__()
        self.api = server
        self.name = name

    def render(self, request: Request) -> Any:
        api = self.api
        if request.postpath:
            return refuse(request, 404, "not_found", "no such endpoint")
        refusal = api.checkRequest(request, self.name)
        if refusal is not None:
            return refusal
        upgrade = request.getHeader(b"upgrade") or b""
        if upgrade.lower() != b"websocket":
            return refuse(request, 400, "bad_request", "expected a WebSocket upgrade")
        if len(api.tunnels) >= api.maxTunnels:
            return refuse(
                request,
                429,
                "rate_limited",
                f"too many open tunnels (limit {api.maxTunnels})",
                [(b"retry-after", b"1")],
                retry_after_seconds=1,
            )
        # Twisted's HTTP channel is the connection's producer; the
        # WebSocket takes the connection over, so it must let go.
        channel: Any = request.channel
        channel.transport.unregisterProducer()
        return WebSocketResource(_OneTunnel(api, self.name)).render(request)


class _OneTunnel:
    """
    What Autobahn's C{WebSocketResource} builds its protocol from: one
    tunnel to a named sprite.
    """

    def __init__(self, server: LocalSpriteServer, name: str) -> None:
        self.api = server
        self.name = name

    def buildProtocol(self, addr: Any) -> Any:
        return self.api.wsFactory.tunnelProtocol(addr, self.name)


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
    :param maxFramePayloadSize: the largest binary frame accepted from a
        client (text messages after the init are ignored whatever their size).
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
        closeTimeout: float = DEFAULT_CLOSE_TIMEOUT,
        targetEndpoint: Callable[[Any, str, int], IStreamClientEndpoint] = defaultTargetEndpoint,
        requestTimeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if not token:
            raise ValueError("the local sprite server needs a token")
        self.reactor = reactor

        self._started = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
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
        #: Further resources under ``/v1/sprites/{name}/``: segment ->
        #: C{(server, name) -> IResource}.
        self.spriteChildren: dict[bytes, Callable[[LocalSpriteServer, str], IResource]] = {}
        #: The port watch, ``/v1/sprites/{name}/ports/watch``: this machine's
        #: listening ports (issue 12, L{sprites_twisted.portscan}).
        self.portScanner = mountPortWatch(self)
        root = _Node()
        v1 = _Node()
        root.putChild(b"v1", v1)
        v1.putChild(b"sprites", _Sprites(self))
        self.site = APISite(self, root, timeout=requestTimeout or None, reactor=reactor)
        self.site.displayTracebacks = False
        self.site.noisy = False

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

    def checkRequest(self, request: Request, name: str) -> bytes | None:
        """
        The refusal for a request about sprite C{name} without a valid
        token (401) or for a sprite this server does not serve (404), or
        C{None} when it may go on.
        """
        if not self.checkAuthorization(request.getHeader(b"authorization")):
            return refuse(
                request,
                401,
                "unauthorized",
                "missing or invalid bearer token",
                [(b"www-authenticate", b'Bearer realm="sprites"')],
            )
        if not self.allowsSprite(name):
            return refuse(request, 404, "sprite_not_found", f"no sprite named {name!r}")
        return None

    def spriteInfo(self, name: str) -> dict[str, Any]:
        """
        What ``GET /v1/sprites/{name}`` answers (the fields of the API's
        ``SpriteInfo`` that mean something here).
        """
        return {
            "id": f"local-{name}",
            "name": name,
            "organization": "local",
            "status": "running",
            "url": "",
            "url_settings": {"auth": "sprite"},
            "created_at": self._started,
        }

    def tunnelStarted(self, tunnel: ServerTunnel) -> None:
        """
        Count a tunnel from the moment its upgrade is accepted.
        """
        self.tunnels.add(tunnel)

    def tunnelEnded(self, tunnel: ServerTunnel) -> None:
        """
        A tunnel and its target connection are both gone.
        """
        self.tunnels.discard(tunnel)

    def whenIdle(self) -> Deferred[None]:
        """
        A Deferred that fires once no tunnel (nor its target connection) is
        open; at once if none is.
        """
        return self.tunnels.whenEmpty()

    def factory(self) -> APISite:
        """
        The protocol factory serving the API (a C{twisted.web} C{Site}), for
        any stream server endpoint (``tcp:8900:interface=127.0.0.1``,
        ``ssl:...``).  The same factory each call; it can serve several
        endpoints at once.
        """
        return self.site
