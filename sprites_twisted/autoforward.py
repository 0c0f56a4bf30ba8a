# -*- test-case-name: tests.test_autoforward -*-
"""
Automatic forwarding: follow the ports listening inside a sprite.

An L{AutoForwarder} is a service (a child of a
L{sprites_twisted.manager.ProxyManager}, or of any C{MultiService}) that
watches the sprite's ports (L{sprites_twisted.portwatch}) and opens one
L{sprites_twisted.session.ProxySession} per listening port:

- on the same local port number when it is free, else on the next free one,
  logged as ``port 3000 in the sprite -> 127.0.0.1:3001``;
- closed (its connections drained) when the port stops listening, logged
  in one line too;
- only for ports that pass the filters: C{include} ranges (all ports by
  default) minus C{exclude} ranges (the ports mapped explicitly, by
  default nothing else); and at most C{maxPorts} (64) at once.  Ports left
  out by the cap are forwarded once a slot frees up.

When the sprite is this machine (the API is on loopback: the local sprite
server), the forwarder's own listeners show up in the watch.  A listening
socket owned by this process (its pid), or bound to an address and port
this process listens on (its own forwards, plus C{ownAddresses}), is never
forwarded, so forwards cannot chain into each other; a dev server's port
is taken locally too, so it gets the next free port (or the same port on
another loopback address with ``--bind 127.0.0.2``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sprites_twisted.config import DEFAULT_MAX_PORTS, checkSpriteName, isLoopbackHost, parseAPIURL
from sprites_twisted.errors import MappingError
from sprites_twisted.mapping import PortMapping, formatTarget
from sprites_twisted.portwatch import IPortObserver, IPortWatcher, ListeningPort

if TYPE_CHECKING:
    from sprites_twisted.client import SpritesClient
    from sprites_twisted.session import ProxySession

__all__ = [
    "AutoForwarder",
    "PortRanges",
    "parsePortRanges",
    "DEFAULT_MAX_PORTS",
    "PORT_SEARCH",
]

#: How many local port numbers are tried, from the sprite's port up.
PORT_SEARCH = 100


@dataclass(frozen=True)
class PortRanges:
    """
    A set of port numbers as inclusive ranges.

    :ivar ranges: C{(low, high)} pairs, 1 <= low <= high <= 65535.
    """

    ranges: tuple[tuple[int, int], ...] = ()

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and any(lo <= port <= hi for lo, hi in self.ranges)

    def __or__(self, other: PortRanges) -> PortRanges:
        return PortRanges(self.ranges + other.ranges)

    def __str__(self) -> str:
        return ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)

    @classmethod
    def of(cls, ports: Iterable[int]) -> PortRanges:
        """
        The ranges holding exactly C{ports}.
        """
        return cls(tuple((p, p) for p in sorted(set(ports))))


#: Every port.
ALL_PORTS = PortRanges(((1, 65535),))


def parsePortRanges(text: str) -> PortRanges:
    """
    Parse ``3000-9999``, ``22``, ``80,443,8000-8999`` (commas or spaces).

    :raises MappingError: naming the bad part of C{text}.
    """
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise MappingError(text, f"port range {text!r} is empty; expected e.g. 3000-9999 or 22")
    ranges = []
    for part in parts:
        low, sep, high = part.partition("-")
        try:
            lo = int(low)
            hi = int(high) if sep else lo
        except ValueError:
            raise MappingError(
                part, f"port range {part!r} is not PORT or LOW-HIGH (in {text!r})"
            ) from None
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise MappingError(part, f"port range {part!r} is outside 1..65535")
        if lo > hi:
            raise MappingError(part, f"port range {part!r} runs backwards")
        ranges.append((lo, hi))
    return PortRanges(tuple(ranges))


def _normalAddresses(address: str) -> tuple[str, ...]:
    """
    The IP addresses a bind address stands for, as the watch reports them:
    ``localhost`` (bound on both families) is 127.0.0.1 and ::1.
    """
    if address.lower() in ("localhost", "localhost."):
        return ("127.0.0.1", "::1")
    try:
        return (ipaddress.ip_address(address.strip("[]")).compressed,)
    except ValueError:
        return (address,)


@implementer(IPortObserver)
class AutoForwarder(Service):
    """
    Forward every port that listens inside C{spriteName}, as it comes and
    goes.

    :param client: the L{SpritesClient} making the sessions (and, by
        default, the watch).
    :param include: only these ports (all by default).
    :param exclude: never these ports (for instance those mapped
        explicitly).
    :param maxPorts: the most forwards open at once.
    :param interface: the local address to bind (the client's default,
        loopback, unless given).
    :param sameHost: whether the sprite is this machine (default: whether
        the API URL points at loopback), which turns on skipping this
        process's own listeners.
    :param ownAddresses: returns the C{(address, port)} pairs this process
        listens on besides the forwarder's own (explicit forwards, a SOCKS
        port), for the same-host check.
    :param watcherFactory: C{observer -> IPortWatcher}, not started;
        C{client.watchPorts} by default.
    """

    log = Logger()

    def __init__(
        self,
        client: SpritesClient,
        spriteName: str,
        *,
        include: PortRanges | None = None,
        exclude: PortRanges | None = None,
        maxPorts: int = DEFAULT_MAX_PORTS,
        interface: str | None = None,
        sameHost: bool | None = None,
        ownAddresses: Callable[[], Iterable[tuple[str, int]]] = lambda: (),
        watcherFactory: Callable[[IPortObserver], IPortWatcher] | None = None,
    ) -> None:
        if maxPorts < 1:
            raise MappingError(
                maxPorts, f"the cap on forwarded ports must be 1 or more, not {maxPorts}"
            )
        self.client = client
        self.spriteName = checkSpriteName(spriteName)
        self.include = include if include is not None else ALL_PORTS
        self.exclude = exclude if exclude is not None else PortRanges()
        self.maxPorts = maxPorts
        self.interface = interface or client.interface
        if sameHost is None:
            sameHost = isLoopbackHost(parseAPIURL(client.baseURL, allowInsecure=True).host)
        self.sameHost = sameHost
        self._ownAddresses = ownAddresses
        if watcherFactory is None:
            watcherFactory = self._defaultWatcher
        self._watcherFactory = watcherFactory
        self.watcher: IPortWatcher | None = None
        #: The eligible listening sockets inside the sprite, per port number.
        self.sockets: dict[int, dict[str, ListeningPort]] = {}
        #: Port in the sprite -> its forward (listening or being opened).
        self.sessions: dict[int, ProxySession] = {}
        self._pending: dict[int, Deferred[Any]] = {}
        self._closing: set[Deferred[Any]] = set()
        self._capWarned = False
        self._waiters: dict[tuple[str, int], list[Deferred[Any]]] = {}

    def __repr__(self) -> str:
        return f"<AutoForwarder {self.spriteName}: {len(self.sessions)} ports>"

    def _defaultWatcher(self, observer: IPortObserver) -> IPortWatcher:
        watcher: IPortWatcher = self.client.watchPorts(self.spriteName, observer, start=False)
        return watcher

    # Service

    def startService(self) -> None:
        Service.startService(self)
        # A new watch each time: a stopped watcher does not start again.
        self.watcher = self._watcherFactory(self)
        self.watcher.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop watching and close every forward (their connections drained).
        """
        Service.stopService(self)
        stops: list[Deferred[Any]] = []
        if self.watcher is not None:
            stops.append(self.watcher.stop())
        for pending in list(self._pending.values()):
            pending.cancel()
        for port in sorted(self.sessions):
            stops.append(self._close(port, "the forwarder stopped"))
        stops.extend(self._closing)
        self.sockets.clear()
        d = DeferredList(stops, consumeErrors=True)
        return d.addCallback(lambda _: None)  # type: ignore[return-value]

    # IPortObserver

    def portOpened(self, port: ListeningPort) -> None:
        reason = self._skipReason(port)
        if reason is not None:
            self.log.debug(
                "not forwarding {port} of {sprite}: {reason}",
                port=port.describe(),
                sprite=self.spriteName,
                reason=reason,
            )
            return
        self.sockets.setdefault(port.port, {})[port.address] = port
        self._maybeForward(port.port)

    def portClosed(self, port: ListeningPort) -> None:
        sockets = self.sockets.get(port.port)
        if sockets is None or sockets.pop(port.address, None) is None:
            return
        if sockets:
            return  # still listening on another address
        del self.sockets[port.port]
        if port.port in self.sessions:
            self._close(port.port, "it stopped listening")
        self._fill()

    # Deciding

    def _skipReason(self, port: ListeningPort) -> str | None:
        if port.port not in self.include:
            return f"outside {self.include}"
        if port.port in self.exclude:
            return f"excluded ({self.exclude})"
        if self.sameHost:
            if port.pid is not None and port.pid == os.getpid():
                return "this process listens on it"
            if self._isOwnAddress(port):
                return "this process listens on it"
        return None

    def _isOwnAddress(self, port: ListeningPort) -> bool:
        (address,) = _normalAddresses(port.address)[:1]
        bound = list(self._ownAddresses())
        for session in self.sessions.values():
            if session.localAddr() is not None:
                bound.append((self.interface, session.localPort))
        own = {(a, p) for host, p in bound for a in _normalAddresses(host)}
        if (address, port.port) in own:
            return True
        # A wildcard listener of ours covers every address.
        return any(p == port.port and a in ("0.0.0.0", "::") for a, p in own)

    def _maybeForward(self, remotePort: int) -> None:
        if not self.running or remotePort in self.sessions or remotePort not in self.sockets:
            return
        if len(self.sessions) >= self.maxPorts:
            if not self._capWarned:
                self._capWarned = True
                self.log.warn(
                    "not forwarding port {port} of {sprite}: already forwarding {count} "
                    "ports, the most allowed (more are forwarded as others close)",
                    port=remotePort,
                    sprite=self.spriteName,
                    count=self.maxPorts,
                )
            return
        sockets = self.sockets[remotePort]
        # Prefer a socket reachable as localhost (wildcard, 127.0.0.1).
        hosts = sorted({s.remoteHost for s in sockets.values()}, key=lambda h: h != "")
        self._listen(remotePort, hosts[0], remotePort, 0)

    def _fill(self) -> None:
        """
        Forward ports left out by the cap, now that there may be room.
        """
        for remotePort in sorted(self.sockets):
            if len(self.sessions) >= self.maxPorts:
                return
            self._maybeForward(remotePort)
        if len(self.sessions) < self.maxPorts:
            self._capWarned = False

    # Listening

    def _listen(self, remotePort: int, remoteHost: str, localPort: int, tries: int) -> None:
        if tries >= PORT_SEARCH or localPort > 65535:
            self.log.warn(
                "cannot forward port {port} of {sprite}: no free local port on {interface} "
                "from {port} to {last}",
                port=remotePort,
                sprite=self.spriteName,
                interface=self.interface,
                last=localPort - 1,
            )
            return
        session = self.client.session(
            self.spriteName,
            PortMapping(localPort, remotePort, remoteHost),
            interface=self.interface,
            # Each opened or closed forward is one line: ours.
            announce=False,
        )
        self.sessions[remotePort] = session
        d = session.listen()
        self._pending[remotePort] = d

        def listened(_: Any) -> None:
            self._pending.pop(remotePort, None)
            if self.sessions.get(remotePort) is not session:
                return
            if remotePort not in self.sockets or not self.running:
                self._close(remotePort, "it stopped listening")
                return
            local = formatTarget(self.interface, session.localPort)
            if session.localPort == remotePort:
                self.log.info("port {port} in the sprite -> {local}", port=remotePort, local=local)
            else:
                self.log.info(
                    "port {port} in the sprite -> {local} (local port {port} is taken)",
                    port=remotePort,
                    local=local,
                )
            self._fire(("forwarded", remotePort), session)

        def failed(failure: Failure) -> None:
            self._pending.pop(remotePort, None)
            if self.sessions.get(remotePort) is session:
                del self.sessions[remotePort]
            if failure.check(CannotListenError) and self.running:
                if remotePort in self.sockets:
                    self._listen(remotePort, remoteHost, localPort + 1, tries + 1)
                return
            if not failure.check(defer.CancelledError):
                self.log.warn(
                    "cannot forward port {port} of {sprite}: {error}",
                    port=remotePort,
                    sprite=self.spriteName,
                    error=failure.getErrorMessage(),
                )

        d.addCallbacks(listened, failed)
        d.addErrback(lambda f: self.log.failure("Unexpected error forwarding a port", f))

    def _close(self, remotePort: int, why: str) -> Deferred[Any]:
        session = self.sessions.pop(remotePort, None)
        if session is None:
            return defer.succeed(None)
        pending = self._pending.pop(remotePort, None)
        if pending is not None and not pending.called:
            pending.cancel()
        local = formatTarget(self.interface, session.localPort)
        wasListening = session.localAddr() is not None
        d = session.close()
        self._closing.add(d)

        def closed(result: Any) -> Any:
            self._closing.discard(d)
            if wasListening:
                self.log.info(
                    "port {port} in the sprite closed ({why}): stopped {local}",
                    port=remotePort,
                    why=why,
                    local=local,
                )
            self._fire(("closed", remotePort), None)
            return result

        return d.addBoth(closed)

    # Waiting (tests, embedding applications)

    def whenForwarded(self, remotePort: int) -> Deferred[ProxySession]:
        """
        A Deferred that fires with the session forwarding C{remotePort} once
        it listens (at once if it does now).
        """
        session = self.sessions.get(remotePort)
        if session is not None and remotePort not in self._pending:
            return defer.succeed(session)
        return self._wait(("forwarded", remotePort))

    def whenClosed(self, remotePort: int) -> Deferred[None]:
        """
        A Deferred that fires once the forward of C{remotePort} has closed
        (at once if there is none).
        """
        if remotePort not in self.sessions:
            return defer.succeed(None)
        return self._wait(("closed", remotePort))

    def _wait(self, event: tuple[str, int]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiters.setdefault(event, []).append(d)
        return d

    def _fire(self, event: tuple[str, int], value: Any) -> None:
        for d in self._waiters.pop(event, []):
            d.callback(value)


def fromOptions(options: Any, client: SpritesClient, reactor: Any = None) -> list[Service]:
    """
    The services the ``--auto`` and ``--socks`` options of
    ``sprites-proxy`` ask for (see L{sprites_twisted.tap}), to add to its
    L{sprites_twisted.manager.ProxyManager}.
    """
    services: list[Service] = []
    sprite = options["sprite"]
    ownAddresses: list[tuple[str, int]] = [
        (options["bind"], m.localPort) for m in options.mappings if m.localPort
    ]
    socks = options.socks
    if socks is not None:
        from sprites_twisted.socks import SOCKSService, socksFactory

        host, port = socks
        factory = socksFactory(client, sprite, reactor, credentials=options.socksCredentials)
        services.append(SOCKSService(reactor, factory, host, port, options["drain-timeout"]))
        ownAddresses.append((host, port))
    if options["auto"]:
        explicit = [m.remotePort for m in options.mappings if m.remoteHost in ("", "localhost")]
        exclude = PortRanges.of(explicit)
        if options.autoExclude is not None:
            exclude = exclude | options.autoExclude
        forwarder = AutoForwarder(
            client,
            sprite,
            include=options.autoPorts,
            exclude=exclude,
            maxPorts=options.autoMax,
            interface=options["bind"],
            ownAddresses=lambda: ownAddresses,
        )
        forwarder.setName("auto-forward")
        services.append(forwarder)
    return services


# The command line (sprites_twisted.tap adds these to sprites-proxy).

#: Flags of ``sprites-proxy`` for this module.
OPT_FLAGS = [
    [
        "auto",
        None,
        "Forward every port that listens in the sprite, as it comes and goes "
        "(same local port when free, else the next free one).",
    ],
]

#: Parameters of ``sprites-proxy`` for this module and SOCKS.
OPT_PARAMETERS = [
    ["auto-ports", None, None, "With --auto: only these ports, e.g. 3000-9999 or 80,8000-8999."],
    ["auto-exclude", None, None, "With --auto: never these ports, e.g. 22 or 5432,6379."],
    [
        "auto-max",
        None,
        str(DEFAULT_MAX_PORTS),
        "With --auto: the most ports forwarded at once.",
    ],
    [
        "socks",
        None,
        None,
        "Run a SOCKS5/SOCKS4a server on [BIND:]PORT (bind 127.0.0.1 by default) whose "
        "CONNECTs reach HOST:PORT inside the sprite.",
    ],
    [
        "socks-auth",
        None,
        None,
        "With --socks: a file of USER:PASSWORD lines; SOCKS5 clients must then "
        "authenticate (RFC 1929) and SOCKS4 is refused.",
    ],
]


def wanted(options: Any) -> bool:
    """
    Do the options ask for anything of this module (so that no explicit
    mapping is needed)?
    """
    return bool(options["auto"] or options["socks"])


def checkOptions(options: Any) -> None:
    """
    Check the options of L{OPT_FLAGS} and L{OPT_PARAMETERS} and set
    ``options.autoPorts``, ``autoExclude`` (L{PortRanges} or C{None}),
    ``autoMax`` (int), ``socks`` (C{(address, port)} or C{None}) and
    ``socksCredentials`` (a dict or C{None}).

    :raises usage.UsageError: naming the option and the bad value.
    """
    from twisted.python import usage

    from sprites_twisted.errors import ConfigurationError
    from sprites_twisted.socks import parseCredentials, parseListenAddress

    for name in ("auto-ports", "auto-exclude", "auto-max"):
        if options[name] != _defaults[name] and not options["auto"]:
            raise usage.UsageError(f"--{name} only makes sense with --auto")
    if options["socks-auth"] and not options["socks"]:
        raise usage.UsageError("--socks-auth only makes sense with --socks [BIND:]PORT")
    try:
        options.autoPorts = (
            parsePortRanges(options["auto-ports"]) if options["auto-ports"] else None
        )
        options.autoExclude = (
            parsePortRanges(options["auto-exclude"]) if options["auto-exclude"] else None
        )
    except MappingError as e:
        raise usage.UsageError(f"--auto-ports/--auto-exclude: {e}") from None
    text = str(options["auto-max"])
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise usage.UsageError(f"--auto-max {text!r}: expected a whole number from 1 to 65535")
    options.autoMax = int(text)
    options.socks = None
    options.socksCredentials = None
    try:
        if options["socks"]:
            options.socks = parseListenAddress(options["socks"])
        if options["socks-auth"]:
            path = options["socks-auth"]
            try:
                with open(path, encoding="utf-8") as f:
                    content = f.read(1024 * 1024)
            except (OSError, UnicodeDecodeError) as e:
                reason = getattr(e, "strerror", None) or str(e)
                raise ConfigurationError(f"cannot read {path!r}: {reason}") from None
            options.socksCredentials = parseCredentials(content, path)
    except ConfigurationError as e:
        raise usage.UsageError(f"--socks: {e}") from None


_defaults = {name: default for name, _, default, _ in OPT_PARAMETERS}
