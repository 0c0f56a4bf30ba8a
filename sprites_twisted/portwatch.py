# -*- test-case-name: tests.test_portwatch -*-
"""
The port watch: which ports listen inside a sprite, as they come and go.

``GET {base}/v1/sprites/{name}/ports/watch`` is a WebSocket (same bearer
token as tunnels; PROTOCOL.md, "Port notifications").  The server first
sends ``{"type": "port_list", "ports": [...]}``, then one
``{"type": "port_opened" | "port_closed", "port": 3000, "address": ...,
"pid": ...}`` per change.

A L{PortWatcher} keeps that connection up and tells an L{IPortObserver}
about each port that opens or closes:

- It reconnects whenever the watch drops or cannot be opened, after a
  jittered, capped exponential backoff on the reactor it was given.
- Each ``port_list`` (the first one, and the first after every reconnect)
  is a resynchronisation: ports that vanished meanwhile are reported
  closed, new ones opened; the observer never sees a port twice.
- Unknown message types and unknown fields are ignored; malformed messages
  are logged (one line each) and skipped.
- A ping every L{PING_INTERVAL} seconds notices a dead path
  (L{sprites_twisted.keepalive.Keepalive}, as for tunnels): no answer
  within three intervals drops the connection (and so reconnects).

The WebSocket is Autobahn's, used through its public callbacks only: a
thin L{WatchClientProtocol} forwards ``onOpen``/``onMessage``/``onClose`` to
the watcher, a plain object with named states.  Autobahn's own timers (which
run on the global reactor) are off; every timer here is on the given
reactor.  The token travels only in the ``Authorization`` header and is
never logged.
"""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from sprites_twisted import __version__
from sprites_twisted.config import (
    DEFAULT_API_URL,
    DEFAULT_WATCH_BACKOFF,
    checkSpriteName,
    checkToken,
    parseAPIURL,
    proxyPath,
)
from sprites_twisted.config import DEFAULT_WATCH_CONNECT_TIMEOUT as DEFAULT_CONNECT_TIMEOUT
from sprites_twisted.config import DEFAULT_WATCH_PING_INTERVAL as PING_INTERVAL
from sprites_twisted.keepalive import Keepalive
from sprites_twisted.tls import isTLSFailure, tlsFailure

__all__ = [
    "IPortObserver",
    "IPortWatcher",
    "ListeningPort",
    "PortWatcher",
    "WatchClientProtocol",
    "WatchClientFactory",
    "parseWatchMessage",
    "watchPath",
    "WatchMessageError",
    "PING_INTERVAL",
]

#: The largest watch message accepted (a ``port_list`` of every port fits).
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Backoff: first delay, factor, cap (seconds).
INITIAL_DELAY, BACKOFF_FACTOR, MAX_DELAY = DEFAULT_WATCH_BACKOFF

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*", "::0"})


def watchPath(spriteName: str) -> str:
    """
    ``/v1/sprites/{name}/ports/watch``, the name percent-encoded as one
    path segment (exactly as for the proxy path).
    """
    return proxyPath(spriteName).removesuffix("/proxy") + "/ports/watch"


@dataclass(frozen=True)
class ListeningPort:
    """
    A port listening inside the sprite.

    :ivar port: the port number, 1..65535.
    :ivar address: what the server said about the address: a listening IP
        (``127.0.0.1``, ``0.0.0.0``, ``::``) or the port's proxy URL; C{""}
        when it said nothing.
    :ivar pid: the owning process, when the server knows it.
    """

    port: int
    address: str = ""
    pid: int | None = None

    @property
    def key(self) -> tuple[int, str]:
        """
        What identifies this listening socket: port and address (a server
        may report one port on several addresses, ``0.0.0.0`` and ``::``).
        """
        return (self.port, self.address)

    @property
    def remoteHost(self) -> str:
        """
        The host a tunnel to this port connects to inside the sprite, in
        L{sprites_twisted.mapping.PortMapping} form: C{""} (localhost) for a
        wildcard, loopback 127.0.0.1 or a URL; the literal for any other IP
        address (``::1``, ``10.0.0.5``).
        """
        address = self.address.strip()
        if address in _WILDCARDS or address == "127.0.0.1" or "/" in address:
            return ""
        import ipaddress

        try:
            parsed = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return ""
        if parsed.is_unspecified:
            return ""
        return parsed.compressed

    def describe(self) -> str:
        """
        ``port 3000 (127.0.0.1, pid 1847)``, for logs.
        """
        details = [d for d in (self.address, f"pid {self.pid}" if self.pid else "") if d]
        return f"port {self.port}" + (f" ({', '.join(details)})" if details else "")


class WatchMessageError(ValueError):
    """
    A watch message that cannot be understood; the message says why.
    """


def _parsePort(value: Any, where: str) -> ListeningPort:
    if isinstance(value, bool):
        raise WatchMessageError(f"{where}: port {value!r} is not a number")
    number: Any
    address: Any
    pid: Any
    if isinstance(value, int):
        number, address, pid = value, "", None
    elif isinstance(value, dict):
        number = value.get("port")
        if isinstance(number, bool) or not isinstance(number, int):
            raise WatchMessageError(f"{where}: port {number!r} is not a number")
        address = value.get("address")
        if not isinstance(address, str):
            address = ""
        pid = value.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            pid = None
    else:
        raise WatchMessageError(f"{where}: {str(value)[:80]!r} is not a port")
    if not 1 <= number <= 65535:
        raise WatchMessageError(f"{where}: port {number} is outside 1..65535")
    return ListeningPort(number, address[:300], pid)


def parseWatchMessage(payload: bytes) -> tuple[str, list[ListeningPort]] | None:
    """
    Parse one watch message.

    :returns: C{("port_list", ports)}, C{("port_opened", [port])} or
        C{("port_closed", [port])}; C{None} for a message of another (or
        no) type, which is to be ignored.  In a ``port_list``, entries that
        are not ports are skipped; a port and address listed twice count
        once.
    :raises WatchMessageError: naming what is wrong with a message that is
        not a JSON object, or whose ``port``/``ports`` is not valid.
    """
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WatchMessageError(f"not JSON: {payload[:80]!r}") from None
    if not isinstance(message, dict):
        raise WatchMessageError(f"not a JSON object: {payload[:80]!r}")
    kind = message.get("type")
    if kind == "port_list":
        entries = message.get("ports")
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise WatchMessageError(f"port_list: ports {repr(entries)[:80]} is not a list")
        ports: dict[tuple[int, str], ListeningPort] = {}
        for entry in entries:
            try:
                port = _parsePort(entry, "port_list")
            except WatchMessageError:
                continue
            ports.setdefault(port.key, port)
        return kind, list(ports.values())
    if kind in ("port_opened", "port_closed"):
        return kind, [_parsePort(message, kind)]
    return None


class IPortObserver(Interface):
    """
    Told about ports as they open and close inside a sprite.

    Calls come from the reactor thread and always alternate for one
    listening socket (one port and address, L{ListeningPort.key}): opened,
    closed, opened...  One port number may be open on several addresses.
    An exception raised by the observer is logged and otherwise ignored.
    """

    def portOpened(port: ListeningPort) -> None:
        """
        C{port} (a L{ListeningPort}) is listening.
        """

    def portClosed(port: ListeningPort) -> None:
        """
        C{port} (the L{ListeningPort} given to C{portOpened}) has stopped
        listening.
        """


class IPortWatcher(Interface):
    """
    A running watch of the ports inside one sprite.
    """

    spriteName = Attribute("The sprite watched (str).")
    ports = Attribute(
        "The sockets currently known to listen: a dict of (port, address) to "
        "ListeningPort (the last known state while disconnected)."
    )
    state = Attribute("The watcher's state name (str): see PortWatcher.")

    def start() -> None:
        """
        Start watching (connecting at once); idempotent.
        """

    def stop() -> Deferred[None]:  # type: ignore[misc]
        """
        Stop watching and close the connection; idempotent.  The Deferred
        fires once the connection is gone.  No observer call follows.
        """

    def whenSynced() -> Deferred[None]:  # type: ignore[misc]
        """
        A new Deferred that fires once the watcher is synchronised with the
        server: at once if it is now, else when the next ``port_list`` has
        been applied.
        """


class State(enum.Enum):
    """
    The states of a L{PortWatcher}.
    """

    IDLE = "idle"  # not started
    CONNECTING = "connecting"  # TCP/TLS and the upgrade in flight
    LISTING = "listing"  # WebSocket open, waiting for port_list
    SYNCED = "synced"  # port_list applied, following changes
    WAITING = "waiting"  # disconnected, reconnecting after a delay
    STOPPED = "stopped"


@implementer(IPortWatcher)
class PortWatcher:
    """
    Watch the ports of C{spriteName} and report changes to C{observer}.

    :param reactor: provides C{IReactorTCP} and C{IReactorTime}; every timer
        runs on it.
    :param observer: an L{IPortObserver}.
    :param token: the API token (``Authorization: Bearer``); never logged.
    :param apiURL: the API base URL.
    :param transportEndpoint: connect through this endpoint instead of the
        one made from C{apiURL} (tests, custom transports).
    :param trustRoot: CA certificates for ``wss`` (a path or a trust root).
    :param jitter: returns a float in [0, 1); each delay is scaled by
        C{0.5 + jitter() / 2}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        spriteName: str,
        observer: IPortObserver,
        *,
        token: str,
        apiURL: str = DEFAULT_API_URL,
        transportEndpoint: IStreamClientEndpoint | None = None,
        trustRoot: Any = None,
        allowInsecure: bool = False,
        initialDelay: float = INITIAL_DELAY,
        maxDelay: float = MAX_DELAY,
        connectTimeout: float = DEFAULT_CONNECT_TIMEOUT,
        pingInterval: float = PING_INTERVAL,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._reactor = reactor
        self.spriteName = checkSpriteName(spriteName)
        self.observer = observer
        token = checkToken(token)
        self._api = parseAPIURL(apiURL, allowInsecure=allowInsecure)
        if transportEndpoint is None:
            from sprites_twisted.tls import apiTransportEndpoint, loadTrustRoot

            transportEndpoint = apiTransportEndpoint(
                reactor, self._api, loadTrustRoot(trustRoot), connectTimeout
            )
        self._transportEndpoint = transportEndpoint
        self.url = self._api.webSocketURL(watchPath(self.spriteName))
        self._wsFactory = WatchClientFactory(self, self.url, token, reactor)
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.connectTimeout = connectTimeout
        self._jitter = jitter
        self.state = State.IDLE
        self.ports: dict[tuple[int, str], ListeningPort] = {}
        self.attempts = 0
        self._proto: WatchClientProtocol | None = None
        self._connecting: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        self._keepalive = Keepalive(reactor, pingInterval)
        self._synced: list[Deferred[None]] = []
        self._gone: list[Deferred[None]] = []
        self._lastProblem: str | None = None
        self._tlsProblem: str | None = None

    @property
    def pingInterval(self) -> float:
        """
        Seconds between pings on the watch connection (0: none).
        """
        return self._keepalive.interval

    def __repr__(self) -> str:
        return f"<PortWatcher {self.spriteName} via {self._api.describe()} ({self.state.value})>"

    # Control

    def start(self) -> None:
        if self.state is not State.IDLE:
            return
        self.log.info("watching the ports of {sprite}", sprite=self.spriteName)
        self._connect()

    def stop(self) -> Deferred[None]:
        if self.state is State.STOPPED:
            return self._whenGone()
        self.state = State.STOPPED
        self._cancelTimers()
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        proto = self._proto
        if proto is not None and proto.transport is not None:
            if proto.state == proto.STATE_OPEN:
                proto.sendClose(code=1000)
                # Autobahn's close timeout is off: drop the connection ourselves.
                self._timer = self._reactor.callLater(1.0, self._abort)
            else:
                # The upgrade is still in flight: nothing to close cleanly.
                proto.transport.abortConnection()
        waiters, self._synced = self._synced, []
        for d in waiters:
            d.errback(Failure(defer.CancelledError("the port watch was stopped")))
        return self._whenGone()

    def whenSynced(self) -> Deferred[None]:
        if self.state is State.SYNCED:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._synced.append(d)
        return d

    def _whenGone(self) -> Deferred[None]:
        if self._proto is None:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._gone.append(d)
        return d

    # Connecting

    def _connect(self) -> None:
        self.state = State.CONNECTING
        self._timer = None
        d = self._transportEndpoint.connect(self._wsFactory)
        self._connecting = d
        if self.connectTimeout:
            self._timer = self._reactor.callLater(self.connectTimeout, self._connectTimedOut)
        d.addErrback(self._connectFailed)
        d.addErrback(lambda f: self.log.failure("Unexpected error in the port watch", f))

    def _connectFailed(self, failure: Failure) -> None:
        self._connecting = None
        if self.state is not State.CONNECTING:
            return
        self._retry()
        self._problem(
            f"cannot reach the Sprites API at {self._api.describe()}: {failure.getErrorMessage()}"
        )

    def _connectTimedOut(self) -> None:
        self._timer = None
        if self.state is not State.CONNECTING:
            return
        self._retry()
        self._problem(f"no answer from {self.url} within {self.connectTimeout:g} s")
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()

    def _retry(self) -> None:
        """
        Schedule the next attempt after a jittered, capped backoff.
        """
        if self.state is State.STOPPED:
            return
        self._cancelTimers()
        self.state = State.WAITING
        # The exponent is capped: a float power overflows after ~1000 tries.
        exponent = min(self.attempts, 64)
        delay = min(self.maxDelay, self.initialDelay * BACKOFF_FACTOR**exponent)
        delay *= 0.5 + self._jitter() / 2
        self.attempts += 1
        self.log.debug("reconnecting the port watch in {delay:.1f} s", delay=delay)
        self._timer = self._reactor.callLater(delay, self._connect)

    def _problem(self, text: str) -> None:
        """
        Log why the watch is down: a warning the first time, debug while it
        repeats.
        """
        if text == self._lastProblem:
            self.log.debug(
                "port watch of {sprite}: {problem}", sprite=self.spriteName, problem=text
            )
        else:
            self.log.warn(
                "port watch of {sprite}: {problem}; reconnecting",
                sprite=self.spriteName,
                problem=text,
            )
        self._lastProblem = text

    # Called by WatchClientProtocol

    def protocolBuilt(self, proto: WatchClientProtocol) -> None:
        """
        The shim for a new connection exists.
        """
        self._proto = proto

    def wsOpened(self, proto: WatchClientProtocol) -> None:
        """
        The upgrade succeeded: wait for ``port_list``.
        """
        self._connecting = None
        if self.state is State.STOPPED:
            proto.sendClose(code=1000)
            return
        self._cancelTimers()
        self.state = State.LISTING
        self._keepalive.start(self)

    def messageReceived(self, payload: bytes, isBinary: bool) -> None:
        """
        One message from the server.
        """
        self.heard()
        if self.state not in (State.LISTING, State.SYNCED):
            return
        if isBinary:
            self.log.warn("port watch: skipped a binary message ({size} bytes)", size=len(payload))
            return
        try:
            parsed = parseWatchMessage(payload)
        except WatchMessageError as e:
            self.log.warn("port watch: skipped a malformed message: {problem}", problem=str(e))
            return
        if parsed is None:
            return
        kind, ports = parsed
        if kind == "port_list":
            self._resync(ports)
        elif self.state is not State.SYNCED:
            # A change before the list: the list will include it.
            return
        elif kind == "port_opened":
            self._opened(ports[0])
        else:
            self._closed(ports[0])

    @property
    def apiHost(self) -> str:
        """
        The API's host name, which its certificate must be valid for.
        """
        return self._api.host

    def tlsFailed(self, failure: Failure) -> None:
        """
        TLS with the API failed (a L{sprites_twisted.errors.TLSVerificationError}
        or C{TLSHandshakeError} saying why); L{wsClosed} follows.
        """
        self._tlsProblem = failure.getErrorMessage()

    def heard(self) -> None:
        """
        A pong (or any frame): the path is alive.
        """
        self._keepalive.pong(self)

    def wsClosed(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The connection is gone (or the upgrade failed).
        """
        self._proto = None
        self._connecting = None
        gone, self._gone = self._gone, []
        state = self.state
        if state is State.STOPPED:
            self._cancelTimers()
            for d in gone:
                d.callback(None)
            return
        for d in gone:
            d.callback(None)
        if state is State.WAITING:
            return  # already retrying (the connect timed out)
        # Retry first: the log line below may run code that stops us.
        self._retry()
        if state is State.SYNCED:
            self._lastProblem = None
            self.log.info(
                "port watch of {sprite} closed ({why}); reconnecting",
                sprite=self.spriteName,
                why=reason or f"code {code}",
            )
        else:
            tls, self._tlsProblem = self._tlsProblem, None
            self._problem(tls or reason or f"the watch closed (code {code})")

    # Applying changes

    def _resync(self, ports: Iterable[ListeningPort]) -> None:
        listed = {p.key: p for p in ports}
        first = self.state is State.LISTING
        self.state = State.SYNCED
        self.attempts = 0
        if first and self._lastProblem is not None:
            self.log.info("port watch of {sprite} is back", sprite=self.spriteName)
        self._lastProblem = None
        for key in sorted(set(self.ports) - set(listed)):
            self._closed(self.ports[key])
        for key in sorted(listed):
            if key not in self.ports:
                self._opened(listed[key])
        waiters, self._synced = self._synced, []
        for d in waiters:
            d.callback(None)

    def _opened(self, port: ListeningPort) -> None:
        if port.key in self.ports or self.state is State.STOPPED:
            return
        self.ports[port.key] = port
        try:
            self.observer.portOpened(port)
        except Exception:
            self.log.failure("the port observer failed on {port}", port=port.describe())

    def _closed(self, port: ListeningPort) -> None:
        """
        C{port} closed: the socket on its address, or every socket on its
        port number when the message gave no address.
        """
        if self.state is State.STOPPED:
            return
        if port.address:
            keys = [port.key] if port.key in self.ports else []
        else:
            keys = sorted(k for k in self.ports if k[0] == port.port)
        for key in keys:
            known = self.ports.pop(key, None)
            if known is None:
                continue
            try:
                self.observer.portClosed(known)
            except Exception:
                self.log.failure("the port observer failed on {port}", port=known.describe())

    # Liveness and timers

    def sendPing(self) -> None:
        """
        The keepalive's ping (L{sprites_twisted.keepalive.Pinged}).
        """
        proto = self._proto
        if proto is not None:
            proto.sendPing()

    def keepaliveDead(self, why: str) -> None:
        """
        The keepalive gave up (L{sprites_twisted.keepalive.Pinged}): drop
        the connection (which reconnects).
        """
        self.log.warn(
            "port watch of {sprite}: {why}; reconnecting", sprite=self.spriteName, why=why
        )
        self._lastProblem = why
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()

    def _abort(self) -> None:
        self._timer = None
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()

    def _cancelTimers(self) -> None:
        call, self._timer = self._timer, None
        if call is not None and call.active():
            call.cancel()
        self._keepalive.stop(self)


def _quietLogger() -> Any:
    """
    A txaio logger pinned at ``error``: Autobahn logs the upgrade request,
    ``Authorization`` header included, at ``debug``, and pinning the level
    (``keep=True``) means raising txaio's global level never shows the
    token.
    """
    import txaio

    logger = txaio.make_logger()  # type: ignore[attr-defined]
    logger.set_log_level("error", keep=True)
    return logger


class WatchClientProtocol(WebSocketClientProtocol):  # type: ignore[misc]
    """
    The watch's WebSocket: forwards Autobahn's public callbacks to its
    L{PortWatcher}, nothing else.
    """

    log = _quietLogger()
    watcher: PortWatcher
    # A TCP or TLS transport (ITCPTransport: abortConnection too).
    transport: Any

    def onOpen(self) -> None:
        self.watcher.wsOpened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.watcher.messageReceived(payload, isBinary)

    def onPong(self, payload: bytes) -> None:
        self.watcher.heard()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if isTLSFailure(reason):
            # Say what is wrong with the certificate, as tunnels do; Autobahn
            # would only report "certificate verify failed".
            self.watcher.tlsFailed(tlsFailure(reason, self.transport, self.watcher.apiHost))
            reason = Failure(ConnectionLost("TLS failed"))
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.watcher.wsClosed(wasClean, code, reason)


class WatchClientFactory(WebSocketClientFactory):  # type: ignore[misc]
    """
    The Autobahn client factory of one L{PortWatcher}; its timers are off
    (they run on the global reactor); the watcher keeps its own.
    """

    protocol = WatchClientProtocol
    log = _quietLogger()

    def __init__(self, watcher: PortWatcher, url: str, token: str, reactor: Any) -> None:
        super().__init__(
            url,
            headers={"Authorization": f"Bearer {token}"},
            useragent=f"sprites-twisted/{__version__}",
            reactor=reactor,
        )
        self.watcher = watcher
        self.setProtocolOptions(
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            serverConnectionDropTimeout=0,
            autoPingInterval=0,
            maxMessagePayloadSize=MAX_MESSAGE_SIZE,
            maxFramePayloadSize=MAX_MESSAGE_SIZE,
            perMessageCompressionOffers=[],
        )

    def __repr__(self) -> str:
        return f"<WatchClientFactory {self.url}>"

    def buildProtocol(self, addr: Any) -> WatchClientProtocol:
        proto: Any = super().buildProtocol(addr)
        proto.watcher = self.watcher
        self.watcher.protocolBuilt(proto)
        return proto  # type: ignore[no-any-return]


def describePorts(ports: Iterable[ListeningPort]) -> str:
    """
    ``3000, 5432`` for logs.
    """
    return ", ".join(str(p.port) for p in sorted(ports, key=lambda p: p.port)) or "none"
