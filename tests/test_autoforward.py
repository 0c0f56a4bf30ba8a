"""
Tests for L{sprites_twisted.autoforward}: the forwarder's decisions with
fake sessions and a fake watch, the ``sprites-proxy`` options, and the whole
loop over loopback: a dev server started after the forwarder is running is
forwarded on the same port, reachable, and goes away when it stops.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sprites_twisted import tap
from sprites_twisted.autoforward import (
    PORT_SEARCH,
    AutoForwarder,
    PortRanges,
    parsePortRanges,
)
from sprites_twisted.client import SpritesClient
from sprites_twisted.errors import MappingError
from sprites_twisted.mapping import PortMapping
from sprites_twisted.portwatch import IPortObserver, IPortWatcher, ListeningPort, PortWatcher
from sprites_twisted.server import LocalSpriteServer
from sprites_twisted.socks import SOCKSService
from tests.helpers import LocalClient
from tests.suites import e2e

reactor: Any = globalReactor
TOKEN = "auto-token-0b7d"


class FakeSession:
    def __init__(self, mapping: PortMapping, interface: str, client: FakeClient) -> None:
        self.mapping = mapping
        self.interface = interface
        self.client = client
        self.listening = False
        self.closed = False
        self.listenResult: Deferred[Any] | None = None

    @property
    def localPort(self) -> int:
        return self.mapping.localPort

    def listen(self) -> Deferred[Any]:
        port = self.mapping.localPort
        if self.client.hold:
            self.listenResult = Deferred()
            return self.listenResult
        if (self.interface, port) in self.client.busy:
            return defer.fail(
                CannotListenError(self.interface, port, OSError(98, "Address already in use"))
            )
        self.listening = True
        self.client.busy.add((self.interface, port))
        return defer.succeed(self)

    def localAddr(self) -> Any:
        return IPv4Address("TCP", self.interface, self.localPort) if self.listening else None

    def close(self) -> Deferred[None]:
        if self.listening:
            self.client.busy.discard((self.interface, self.localPort))
        self.listening = False
        self.closed = True
        return defer.succeed(None)


class FakeClient:
    interface = "127.0.0.1"

    def __init__(self, baseURL: str = "https://api.sprites.dev") -> None:
        self.baseURL = baseURL
        self.busy: set[tuple[str, int]] = set()
        self.sessions: list[FakeSession] = []
        self.hold = False

    def session(
        self, spriteName: str, mapping: PortMapping, *, interface: str, announce: bool = True
    ) -> FakeSession:
        # The forwarder logs each forward itself: the session must not.
        assert not announce
        session = FakeSession(mapping, interface, self)
        self.sessions.append(session)
        return session


@implementer(IPortWatcher)
class FakeWatcher:
    spriteName = "box"
    state = "idle"

    def __init__(self, observer: IPortObserver) -> None:
        self.observer = observer
        self.ports: dict[Any, Any] = {}
        self.started = self.stopped = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> Deferred[None]:
        self.stopped += 1
        return defer.succeed(None)

    def whenSynced(self) -> Deferred[None]:
        return defer.succeed(None)


class ForwarderTests(SynchronousTestCase):
    """
    L{AutoForwarder} opens, numbers, filters, caps and closes forwards.
    """

    def setUp(self) -> None:
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.client = FakeClient()

    def make(self, **kw: Any) -> AutoForwarder:
        watchers: list[FakeWatcher] = []

        def factory(observer: IPortObserver) -> FakeWatcher:
            watchers.append(FakeWatcher(observer))
            return watchers[-1]

        forwarder = AutoForwarder(self.client, "box", watcherFactory=factory, **kw)  # type: ignore[arg-type]
        forwarder.startService()
        self.watchers = watchers
        return forwarder

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.logs if e["log_namespace"].endswith("AutoForwarder")]

    def test_interfaces(self) -> None:
        """
        The forwarder is an L{IPortObserver}; the fakes provide what they
        stand in for.
        """
        forwarder = self.make()
        verifyObject(IPortObserver, forwarder)
        verifyObject(IPortObserver, Tee(forwarder))
        verifyObject(IPortWatcher, self.watchers[0])

    def test_samePortWhenFree(self) -> None:
        """
        A port opened in the sprite is forwarded on the same local port, in
        one log line.
        """
        forwarder = self.make()
        self.assertEqual(self.watchers[0].started, 1)
        forwarder.portOpened(ListeningPort(3000, "0.0.0.0", 77))
        session = self.successResultOf(forwarder.whenForwarded(3000))
        self.assertEqual(session.mapping, PortMapping(3000, 3000, ""))
        self.assertEqual(session.interface, "127.0.0.1")
        self.assertEqual(self.lines(), ["port 3000 in the sprite -> 127.0.0.1:3000"])

    def test_nextFreePort(self) -> None:
        """
        A taken local port moves the forward to the next free one, logged.
        """
        self.client.busy |= {("127.0.0.1", 3000), ("127.0.0.1", 3001)}
        forwarder = self.make()
        forwarder.portOpened(ListeningPort(3000))
        session = self.successResultOf(forwarder.whenForwarded(3000))
        self.assertEqual(session.localPort, 3002)
        self.assertEqual(
            self.lines(), ["port 3000 in the sprite -> 127.0.0.1:3002 (local port 3000 is taken)"]
        )

    def test_noFreePort(self) -> None:
        """
        When no local port is free in the search window, a warning says so.
        """
        self.client.busy |= {("127.0.0.1", p) for p in range(3000, 3000 + PORT_SEARCH)}
        forwarder = self.make()
        forwarder.portOpened(ListeningPort(3000))
        self.assertEqual(forwarder.sessions, {})
        self.assertIn("no free local port on 127.0.0.1 from 3000 to 3099", self.lines()[-1])

    def test_closedWhenPortCloses(self) -> None:
        """
        A port that stops listening closes its forward, in one log line;
        one that listens on two addresses closes with the last.
        """
        forwarder = self.make()
        forwarder.portOpened(ListeningPort(3000, "0.0.0.0"))
        forwarder.portOpened(ListeningPort(3000, "::"))
        [session] = self.client.sessions
        forwarder.portClosed(ListeningPort(3000, "0.0.0.0"))
        self.assertFalse(session.closed)
        forwarder.portClosed(ListeningPort(3000, "::"))
        self.assertTrue(session.closed)
        self.successResultOf(forwarder.whenClosed(3000))
        self.assertEqual(
            self.lines()[-1],
            "port 3000 in the sprite closed (it stopped listening): stopped 127.0.0.1:3000",
        )

    def test_remoteHost(self) -> None:
        """
        A port on ::1 only is forwarded to ::1 inside the sprite.
        """
        forwarder = self.make()
        forwarder.portOpened(ListeningPort(5432, "::1"))
        self.assertEqual(self.client.sessions[0].mapping, PortMapping(5432, 5432, "::1"))

    def test_filters(self) -> None:
        """
        Ports outside C{include} or inside C{exclude} are not forwarded.
        """
        forwarder = self.make(include=parsePortRanges("3000-3999"), exclude=PortRanges.of([3022]))
        for port in (22, 3000, 3022, 4000):
            forwarder.portOpened(ListeningPort(port))
        self.assertEqual(sorted(forwarder.sessions), [3000])

    def test_cap(self) -> None:
        """
        At most C{maxPorts} forwards (one warning); when one closes, a port
        left out is forwarded.
        """
        forwarder = self.make(maxPorts=2)
        for port in (1001, 1002, 1003, 1004):
            forwarder.portOpened(ListeningPort(port))
        self.assertEqual(sorted(forwarder.sessions), [1001, 1002])
        warnings = [line for line in self.lines() if "the most allowed" in line]
        self.assertEqual(len(warnings), 1)
        forwarder.portClosed(ListeningPort(1001))
        self.assertEqual(sorted(forwarder.sessions), [1002, 1003])

    def test_defaultCap(self) -> None:
        """
        The default cap is 64.
        """
        forwarder = self.make()
        for port in range(2000, 2100):
            forwarder.portOpened(ListeningPort(port))
        self.assertEqual(len(forwarder.sessions), 64)

    def test_sameHostSkipsOwnListeners(self) -> None:
        """
        With the sprite on this machine, sockets of this process (by pid, by
        its own forwards' addresses, or by C{ownAddresses}) are never
        forwarded, so forwards cannot chain.
        """
        self.client = FakeClient("http://127.0.0.1:8900")
        self.client.busy.add(("127.0.0.1", 3000))  # the dev server
        forwarder = self.make(ownAddresses=lambda: [("127.0.0.1", 1080)])
        self.assertTrue(forwarder.sameHost)
        forwarder.portOpened(ListeningPort(3000, "127.0.0.1", 4242))
        self.assertEqual(forwarder.sessions[3000].localPort, 3001)
        # The forwarder's own listener shows up in the watch:
        forwarder.portOpened(ListeningPort(3001, "127.0.0.1", None))
        forwarder.portOpened(ListeningPort(3002, "127.0.0.1", os.getpid()))
        forwarder.portOpened(ListeningPort(1080, "127.0.0.1"))
        self.assertEqual(sorted(forwarder.sessions), [3000])
        # Another process on the same port number but another address is
        # forwarded.
        forwarder.portOpened(ListeningPort(3001, "::1", 5151))
        self.assertEqual(sorted(forwarder.sessions), [3000, 3001])

    def test_sameHostLocalhostBind(self) -> None:
        """
        A forwarder bound to ``localhost`` (both families) recognises its
        own listeners on 127.0.0.1 and ::1.
        """
        self.client = FakeClient("http://127.0.0.1:8900")
        forwarder = self.make(interface="localhost")
        forwarder.portOpened(ListeningPort(3000, "0.0.0.0", 4242))
        self.assertEqual(forwarder.sessions[3000].localPort, 3000)
        forwarder.portOpened(ListeningPort(3000, "127.0.0.1"))
        forwarder.portOpened(ListeningPort(3000, "::1"))
        self.assertEqual(set(forwarder.sockets[3000]), {"0.0.0.0"})

    def test_remoteSpriteNotSkipped(self) -> None:
        """
        With a remote sprite, a pid equal to ours means nothing.
        """
        forwarder = self.make()
        self.assertFalse(forwarder.sameHost)
        forwarder.portOpened(ListeningPort(3000, "0.0.0.0", os.getpid()))
        self.assertEqual(sorted(forwarder.sessions), [3000])

    def test_closedWhileListening(self) -> None:
        """
        A port that closes while its listener is being opened closes that
        listener; nothing is logged as forwarded.
        """
        self.client.hold = True
        forwarder = self.make()
        forwarder.portOpened(ListeningPort(3000))
        [session] = self.client.sessions
        forwarder.portClosed(ListeningPort(3000))
        self.assertTrue(session.closed)
        self.assertEqual(forwarder.sessions, {})
        self.assertEqual(self.lines(), [])

    def test_stopService(self) -> None:
        """
        Stopping stops the watch and closes every forward.
        """
        forwarder = self.make()
        forwarder.portOpened(ListeningPort(1))
        forwarder.portOpened(ListeningPort(2))
        self.successResultOf(forwarder.stopService())
        self.assertEqual(self.watchers[0].stopped, 1)
        self.assertTrue(all(s.closed for s in self.client.sessions))
        forwarder.portOpened(ListeningPort(3))
        self.assertEqual(forwarder.sessions, {})
        # Started again, it watches anew.
        forwarder.startService()
        self.assertEqual([w.started for w in self.watchers], [1, 1])
        forwarder.portOpened(ListeningPort(3))
        self.assertEqual(sorted(forwarder.sessions), [3])

    def test_badCap(self) -> None:
        """
        A cap below 1 is refused, naming it.
        """
        e = self.assertRaises(MappingError, AutoForwarder, self.client, "box", maxPorts=0)  # type: ignore[arg-type]
        self.assertIn("not 0", str(e))


class RangeTests(SynchronousTestCase):
    """
    L{parsePortRanges}.
    """

    def test_parse(self) -> None:
        """
        Single ports and ranges, separated by commas or spaces.
        """
        ranges = parsePortRanges("22, 3000-3999 8080")
        self.assertEqual(ranges.ranges, ((22, 22), (3000, 3999), (8080, 8080)))
        self.assertIn(3500, ranges)
        self.assertNotIn(4000, ranges)
        self.assertEqual(str(ranges), "22,3000-3999,8080")

    def test_bad(self) -> None:
        """
        Bad ranges raise L{MappingError} naming the bad part.
        """
        for text, part in [
            ("", "empty"),
            ("x", "'x'"),
            ("0-10", "'0-10' is outside"),
            ("9-3", "'9-3' runs backwards"),
            ("1-70000", "outside"),
        ]:
            e = self.assertRaises(MappingError, parsePortRanges, text)
            self.assertIn(part, str(e))


class OptionsTests(SynchronousTestCase):
    """
    ``sprites-proxy --auto ... --socks ...``.
    """

    environ = {"SPRITE_TOKEN": TOKEN, "SPRITES_API_URL": "http://127.0.0.1:8900"}

    def parse(self, *argv: str) -> tap.Options:
        options = tap.Options(self.environ)
        options.parseOptions(list(argv))
        return options

    def test_autoAlone(self) -> None:
        """
        ``--auto`` needs no explicit mapping; its filters are parsed.
        """
        options = self.parse(
            "-s", "box", "--auto", "--auto-ports", "3000-9999", "--auto-exclude", "22"
        )
        self.assertEqual(options.autoPorts, PortRanges(((3000, 9999),)))
        self.assertEqual(options.autoExclude, PortRanges(((22, 22),)))
        self.assertEqual(options.autoMax, 64)

    def test_badValues(self) -> None:
        """
        Bad values are usage errors naming them.
        """
        for argv, text in [
            (["--auto", "--auto-ports", "3000-"], "'3000-'"),
            (["--auto", "--auto-max", "0"], "--auto-max '0'"),
            (["--auto-ports", "1-2", "5432"], "only makes sense with --auto"),
            (["--socks", "localhost:1080"], "'localhost' is not an IP address"),
            (["--socks", "1080x"], "port '1080x'"),
            (["--socks", "::1:1080"], "brackets"),
            (["--socks-auth", "/nonexistent", "5432"], "only makes sense with --socks"),
            (["--socks", "1080", "--socks-auth", "/nonexistent"], "cannot read '/nonexistent'"),
        ]:
            e = self.assertRaises(usage.UsageError, self.parse, "-s", "box", *argv)
            self.assertIn(text, str(e), argv)

    def test_services(self) -> None:
        """
        ``_makeService`` adds the forwarder and a SOCKS service listening on
        127.0.0.1; explicit mappings are excluded from automatic forwarding.
        """
        options = self.parse("-s", "box", "--auto", "--socks", "1080", "5432", "8080:80")
        memory = MemoryReactorClock()
        manager = tap._makeService(options, memory)
        [forwarder] = [s for s in manager if isinstance(s, AutoForwarder)]
        [socks] = [s for s in manager if isinstance(s, SOCKSService)]
        self.assertEqual(forwarder.exclude, PortRanges.of([80, 5432]))
        self.assertTrue(forwarder.sameHost)
        socks.startService()
        self.assertEqual(memory.tcpServers[-1][0], 1080)
        self.assertEqual(memory.tcpServers[-1][3], "127.0.0.1")
        self.successResultOf(socks.stopService())

    def test_socksElsewhereWarns(self) -> None:
        """
        A SOCKS port off loopback without a password logs a warning.
        """
        logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        options = self.parse("-s", "box", "--socks", "0.0.0.0:1080")
        manager = tap._makeService(options, MemoryReactorClock())
        [socks] = [s for s in manager if isinstance(s, SOCKSService)]
        socks.startService()
        self.assertTrue(any("not on loopback" in formatEvent(e) for e in logs))


@implementer(IPortObserver)
class Tee:
    """
    Passes events to the forwarder first, then fires waiters.
    """

    def __init__(self, first: IPortObserver) -> None:
        self.first = first
        self.waiting: list[tuple[tuple[str, int, str], Deferred[None]]] = []

    def _event(self, event: tuple[str, int, str]) -> None:
        still = []
        for wanted, d in self.waiting:
            if wanted == event:
                d.callback(None)
            else:
                still.append((wanted, d))
        self.waiting = still

    def portOpened(self, port: ListeningPort) -> None:
        self.first.portOpened(port)
        self._event(("opened", port.port, port.address))

    def portClosed(self, port: ListeningPort) -> None:
        self.first.portClosed(port)
        self._event(("closed", port.port, port.address))

    def waitFor(self, event: tuple[str, int, str]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append((event, d))
        return d


class DevServer(ProcessProtocol):
    """
    A child process; C{stop()} ends it and fires once it has exited.
    """

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def errReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-4096:]

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)

    def stop(self) -> Deferred[None]:
        if not self.ended.called and self.transport is not None:
            self.transport.signalProcess("TERM")
        d: Deferred[None] = Deferred()
        if self.ended.called:
            d.callback(None)
        else:
            self.ended.addCallback(d.callback)
        return d


async def startDevServer(testCase: TestCase, port: int, payload: bytes) -> DevServer:
    """
    A dev server in another process (``python -m http.server``) on
    127.0.0.1:C{port}, serving C{payload} as C{/blob}; stopped at the end
    of the test.
    """
    directory = testCase.mktemp()
    os.makedirs(directory)
    with open(os.path.join(directory, "blob"), "wb") as f:
        f.write(payload)
    dev = DevServer()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    reactor.spawnProcess(
        dev,
        sys.executable,
        [*argv, "--directory", directory],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    testCase.addCleanup(dev.stop)
    return dev


def freePort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


async def fetch(host: str, port: int) -> bytes:
    local = await connectProtocol(TCP4ClientEndpoint(reactor, host, port), LocalClient())
    local.transport.write(b"GET /blob HTTP/1.0\r\n\r\n")
    await local.closed
    return bytes(local.received).partition(b"\r\n\r\n")[2]


@e2e
class IntegrationTests(TestCase):
    """
    The forwarder and the local sprite server, whose watch scans this
    machine's real ``/proc``, over loopback.
    """

    async def _start(self, interface: str, include: PortRanges) -> AutoForwarder:
        self.payload = os.urandom(256 * 1024)
        server = LocalSpriteServer(reactor, TOKEN)
        api = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.factory())
        self.addCleanup(api.stopListening)
        self.addCleanup(server.whenIdle)
        client = SpritesClient(reactor, TOKEN, f"http://127.0.0.1:{api.getHost().port}", prewarm=0)
        self.watchers: list[PortWatcher] = []

        def watcherFactory(observer: IPortObserver) -> PortWatcher:
            self.tee = Tee(observer)
            watcher = PortWatcher(
                reactor,
                "box",
                self.tee,
                token=TOKEN,
                apiURL=f"http://127.0.0.1:{api.getHost().port}",
            )
            self.watchers.append(watcher)
            return watcher

        forwarder = AutoForwarder(
            client, "box", include=include, interface=interface, watcherFactory=watcherFactory
        )
        forwarder.startService()
        self.addCleanup(forwarder.stopService)
        await self.watchers[0].whenSynced()
        return forwarder

    def test_followsDevServerOnSamePort(self) -> None:
        """
        A dev server started after the forwarder is forwarded on the same
        port number (on 127.0.0.2, since 127.0.0.1 is the dev server's own),
        serves the page intact, and goes away when it stops.
        """

        async def run() -> None:
            port = freePort()
            forwarder = await self._start("127.0.0.2", PortRanges.of([port]))
            dev = await startDevServer(self, port, self.payload)
            session = await forwarder.whenForwarded(port)
            self.assertEqual(session.localPort, port)
            body = await fetch("127.0.0.2", port)
            self.assertEqual(hashlib.sha256(body).digest(), hashlib.sha256(self.payload).digest())
            await dev.stop()
            await forwarder.whenClosed(port)
            with self.assertRaises(ConnectionRefusedError):
                await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.2", port), LocalClient())

        return Deferred.fromCoroutine(run())

    def test_nextPortAndNoChain(self) -> None:
        """
        On 127.0.0.1 the dev server's port is taken, so the forward takes the
        next one; the forward's own listener, reported by the watch, is not
        forwarded again.
        """

        async def run() -> None:
            port = freePort()
            forwarder = await self._start("127.0.0.1", PortRanges(((port, port + 20),)))
            ownSeen: Deferred[None] | None = None
            await startDevServer(self, port, self.payload)
            session = await forwarder.whenForwarded(port)
            self.assertGreater(session.localPort, port)
            ownSeen = self.tee.waitFor(("opened", session.localPort, "127.0.0.1"))
            await ownSeen
            self.assertEqual(sorted(forwarder.sessions), [port])
            body = await fetch("127.0.0.1", session.localPort)
            self.assertEqual(hashlib.sha256(body).digest(), hashlib.sha256(self.payload).digest())

        return Deferred.fromCoroutine(run())
