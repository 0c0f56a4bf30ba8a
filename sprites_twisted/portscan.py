# -*- test-case-name: tests.test_portscan -*-
"""
The local sprite server's port watch: the listening ports of this machine,
served as ``/v1/sprites/{name}/ports/watch`` (PROTOCOL.md, "Port
notifications").

On this machine every sprite is the machine itself, so the ports listening
"in the sprite" are this machine's.  L{PortScanner} reads
``/proc/net/tcp`` and ``/proc/net/tcp6`` once a second (as the real server
does), on the clock it is given, while anyone is watching.  It reports
sockets in the LISTEN state bound to a loopback or wildcard address (what a
tunnel to ``localhost`` can reach), one entry per port and address, with
the owning pid when ``/proc/*/fd`` shows it (processes of other users
usually do not).  The address matters on one machine: a forwarder's own
listener on ``127.0.0.2:3000`` is another socket than the dev server's
``127.0.0.1:3000`` it forwards to.

L{PortWatchServerProtocol} (Autobahn, public callbacks only) sends
``port_list`` first, then one ``port_opened``/``port_closed`` per change.
L{PortWatchResource} is the ``twisted.web`` resource for the path
(L{mountPortWatch} puts it under the server's ``/v1/sprites/{name}/``): it
checks the bearer token and the sprite name with the server's own rules
(L{sprites_twisted.server.LocalSpriteServer.checkRequest}, so
``--sprite`` is honoured), answers refusals with the same JSON error
bodies as the proxy path, and hands the upgrade to Autobahn's
C{WebSocketResource}.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

__all__ = [
    "ListeningSocket",
    "PortScanner",
    "parseProcNetTCP",
    "PortWatchServerProtocol",
    "PortWatchServerFactory",
    "PortWatchResource",
    "mountPortWatch",
    "SCAN_INTERVAL",
]

#: Seconds between two scans (the real server's pace).
SCAN_INTERVAL = 1.0
_LISTEN = "0A"


@dataclass(frozen=True)
class ListeningSocket:
    """
    A listening TCP port of this machine.

    :ivar port: the port number.
    :ivar address: the bound address (``127.0.0.1``, ``0.0.0.0``, ``::``,
        ``::1``; v4-mapped addresses as IPv4).
    :ivar pid: the owning process, when it could be found.
    """

    port: int
    address: str
    pid: int | None = None

    def message(self, kind: str) -> dict[str, Any]:
        """
        This port as a watch message of type C{kind} (or a ``port_list``
        entry, without ``type``, when C{kind} is empty).
        """
        body: dict[str, Any] = {"port": self.port, "address": self.address, "pid": self.pid}
        if kind:
            body = {"type": kind, **body}
        return body


def _decodeAddress(text: str) -> str:
    """
    A ``/proc/net/tcp*`` address: hex of 32-bit words in host byte order.
    """
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return address.compressed


def _reachable(address: str) -> bool:
    """
    Can a tunnel to ``localhost`` reach a socket bound to C{address}?
    """
    parsed = ipaddress.ip_address(address)
    return parsed.is_loopback or parsed.is_unspecified


def parseProcNetTCP(text: str) -> list[tuple[str, int, int]]:
    """
    The LISTEN sockets on loopback or wildcard addresses in the text of
    ``/proc/net/tcp`` or ``/proc/net/tcp6``.

    :returns: C{(address, port, inode)} per socket; malformed lines are
        skipped.
    """
    sockets = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        try:
            hexAddress, _, hexPort = fields[1].partition(":")
            address = _decodeAddress(hexAddress)
            port = int(hexPort, 16)
            inode = int(fields[9])
        except ValueError:
            continue
        if port and _reachable(address):
            sockets.append((address, port, inode))
    return sockets


class _Reader(Protocol):
    def __call__(self, path: str) -> str: ...


def _readText(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


class PortScanner:
    """
    This machine's listening ports, scanned every C{interval} seconds on
    C{clock} while at least one subscriber is registered.

    :param clock: an C{IReactorTime}.
    :param procRoot: where ``/proc`` is (tests pass a directory of their
        own).
    :param read: reads a text file (tests substitute their own).
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        *,
        procRoot: str = "/proc",
        interval: float = SCAN_INTERVAL,
        read: _Reader = _readText,
        listDirectory: Callable[[str], list[str]] = os.listdir,
        readLink: Callable[[str], str] = os.readlink,
    ) -> None:
        self._clock = clock
        self.procRoot = procRoot.rstrip("/")
        self.interval = interval
        self._read = read
        self._listDirectory = listDirectory
        self._readLink = readLink
        self.ports: dict[tuple[int, str], ListeningSocket] = {}
        self._subscribers: list[Callable[[str, ListeningSocket], None]] = []
        self._loop: LoopingCall | None = None
        self._pids: dict[int, int] = {}
        self._problems: set[str] = set()

    def subscribe(self, callback: Callable[[str, ListeningSocket], None]) -> list[ListeningSocket]:
        """
        Call C{callback("port_opened" | "port_closed", socket)} for every
        change from now on, and start scanning if this is the first
        subscriber.

        :returns: the ports listening now (a fresh scan if none was running).
        """
        if not self._subscribers:
            self.scan()
            self._subscribers.append(callback)
            self._loop = LoopingCall(self.scan)
            self._loop.clock = self._clock
            self._loop.start(self.interval, now=False).addErrback(
                lambda f: self.log.failure("the port scan failed", f)
            )
        else:
            self._subscribers.append(callback)
        return [self.ports[key] for key in sorted(self.ports)]

    def unsubscribe(self, callback: Callable[[str, ListeningSocket], None]) -> None:
        """
        Stop calling C{callback}; the last one leaving stops the scans.
        """
        if callback in self._subscribers:
            self._subscribers.remove(callback)
        if not self._subscribers and self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()

    def scan(self) -> None:
        """
        Scan once and report what changed.
        """
        current: dict[tuple[int, str], int] = {}
        for name in ("tcp", "tcp6"):
            path = f"{self.procRoot}/net/{name}"
            try:
                text = self._read(path)
            except OSError as e:
                if path not in self._problems:
                    self._problems.add(path)
                    self.log.warn("cannot read {path}: {error}", path=path, error=e.strerror)
                continue
            for address, port, inode in parseProcNetTCP(text):
                current.setdefault((port, address), inode)
        previous = self.ports
        gone = [previous[key] for key in sorted(set(previous) - set(current))]
        new = sorted(set(current) - set(previous))
        pids: dict[int, int] = {}
        if new:
            pids = self._findPids({current[key] for key in new})
        for key in new:
            self.ports[key] = ListeningSocket(key[0], key[1], pids.get(current[key]))
        for socket in gone:
            del self.ports[(socket.port, socket.address)]
        for socket in gone:
            self._notify("port_closed", socket)
        for key in new:
            self._notify("port_opened", self.ports[key])

    def _notify(self, kind: str, socket: ListeningSocket) -> None:
        for callback in list(self._subscribers):
            try:
                callback(kind, socket)
            except Exception:
                self.log.failure("a port watch subscriber failed")

    def _findPids(self, inodes: set[int]) -> dict[int, int]:
        """
        The owning pid of each socket inode, from ``/proc/*/fd``; inodes
        not found (another user's processes) are left out.
        """
        found: dict[int, int] = {}
        wanted = {f"socket:[{inode}]": inode for inode in inodes}
        try:
            entries = self._listDirectory(self.procRoot)
        except OSError:
            return found
        for entry in entries:
            if not entry.isdigit():
                continue
            fdDirectory = f"{self.procRoot}/{entry}/fd"
            try:
                fds = self._listDirectory(fdDirectory)
            except OSError:
                continue
            for fd in fds:
                try:
                    target = self._readLink(f"{fdDirectory}/{fd}")
                except OSError:
                    continue
                inode = wanted.get(target)
                if inode is not None:
                    found[inode] = int(entry)
                    if len(found) == len(wanted):
                        return found
        return found


class PortWatchServerProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """
    One watcher: ``port_list`` when the WebSocket opens, then the changes.
    Messages from the watcher are ignored.
    """

    factory: PortWatchServerFactory
    _subscribed = False

    def onOpen(self) -> None:
        scanner = self.factory.scanner
        ports = scanner.subscribe(self._changed)
        self._subscribed = True
        self.sendWatchMessage({"type": "port_list", "ports": [s.message("") for s in ports]})

    def _changed(self, kind: str, socket: ListeningSocket) -> None:
        self.sendWatchMessage(socket.message(kind))

    def sendWatchMessage(self, message: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        pass

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._subscribed:
            self._subscribed = False
            self.factory.scanner.unsubscribe(self._changed)


def _quietLogger() -> Any:
    import txaio

    logger = txaio.make_logger()  # type: ignore[attr-defined]
    logger.set_log_level("error", keep=True)
    return logger


PortWatchServerProtocol.log = _quietLogger()


class PortWatchServerFactory(WebSocketServerFactory):  # type: ignore[misc]
    """
    The Autobahn server factory of the watch; its timers (global reactor)
    are off.  Watchers ping us; Autobahn answers pings by itself.
    """

    protocol = PortWatchServerProtocol  # type: ignore[assignment]
    log = _quietLogger()

    def __init__(self, scanner: PortScanner, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.scanner = scanner
        self.setProtocolOptions(
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            autoPingInterval=0,
            maxFramePayloadSize=64 * 1024,
            maxMessagePayloadSize=64 * 1024,
            perMessageCompressionAccept=lambda offers: None,
        )


class _Server(Protocol):
    """
    What the resource needs of the local sprite server.
    """

    reactor: Any
    spriteChildren: dict[bytes, Callable[[Any, str], Any]]

    def checkRequest(self, request: Request, name: str) -> bytes | None: ...


class PortWatchResource(Resource):
    """
    ``/v1/sprites/{name}/ports``, whose one child ``watch`` upgrades to the
    port watch of sprite C{name}.

    The request is checked by the server's own rules
    (C{LocalSpriteServer.checkRequest}: 401 for a bad token, 404 for a
    sprite it does not serve, the same JSON bodies as the proxy path); a
    request that is not a WebSocket upgrade is a 400.

    :param server: a L{sprites_twisted.server.LocalSpriteServer}.
    :param factory: the L{PortWatchServerFactory} serving the upgrades.
    """

    isLeaf = True

    def __init__(self, server: _Server, factory: PortWatchServerFactory, name: str) -> None:
        super().__init__()
        self.api = server
        self.factory = factory
        self.name = name

    def render(self, request: Request) -> Any:
        from sprites_twisted.server import refuse

        if request.postpath != [b"watch"]:
            return refuse(request, 404, "not_found", "no such endpoint")
        refusal = self.api.checkRequest(request, self.name)
        if refusal is not None:
            return refusal
        if (request.getHeader(b"upgrade") or b"").lower() != b"websocket":
            return refuse(request, 400, "bad_request", "expected a WebSocket upgrade")
        # Twisted's HTTP channel is the connection's producer; the WebSocket
        # takes the connection over, so it must let go.
        channel: Any = request.channel
        channel.transport.unregisterProducer()
        return WebSocketResource(self.factory).render(request)


def mountPortWatch(server: _Server, scanner: PortScanner | None = None) -> PortScanner:
    """
    Serve the port watch at ``/v1/sprites/{name}/ports/watch`` of the
    local sprite server C{server} (replacing any watch mounted before).

    :param scanner: what to report (this machine's ports, scanned once a
        second on the server's reactor, by default).
    :returns: the scanner.
    """
    if scanner is None:
        scanner = PortScanner(server.reactor)
    factory = PortWatchServerFactory(scanner, server.reactor)
    server.spriteChildren[b"ports"] = lambda api, name: PortWatchResource(api, factory, name)
    return scanner
