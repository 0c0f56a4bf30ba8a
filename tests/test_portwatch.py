"""
Tests for L{sprites_twisted.portwatch}: message parsing, the watcher's
states (resync, backoff, liveness, stop) driven by hand on a C{Clock}, and
the Autobahn shim end to end against L{sprites_twisted.portscan}'s server
over real loopback sockets.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as globalReactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sprites_twisted.errors import ConfigurationError
from sprites_twisted.portscan import PortScanner, mountPortWatch
from sprites_twisted.portwatch import (
    IPortObserver,
    IPortWatcher,
    ListeningPort,
    PortWatcher,
    State,
    WatchMessageError,
    parseWatchMessage,
    watchPath,
)
from sprites_twisted.server import LocalSpriteServer

reactor: Any = globalReactor
TOKEN = "watch-token-77aa"


@implementer(IPortObserver)
class Recorder:
    """
    Records events; C{next()} fires on the next one.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self._waiting: list[tuple[tuple[str, int] | None, Deferred[None]]] = []

    def portOpened(self, port: ListeningPort) -> None:
        self._record(("opened", port.port))

    def portClosed(self, port: ListeningPort) -> None:
        self._record(("closed", port.port))

    def _record(self, event: tuple[str, int]) -> None:
        self.events.append(event)
        still = []
        for wanted, d in self._waiting:
            if wanted is None or wanted == event:
                d.callback(None)
            else:
                still.append((wanted, d))
        self._waiting = still

    def waitFor(self, event: tuple[str, int]) -> Deferred[None]:
        if event in self.events:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        d = Deferred()
        self._waiting.append((event, d))
        return d


@implementer(IStreamClientEndpoint)
class RecordingEndpoint:
    def __init__(self) -> None:
        self.connects: list[Deferred[Any]] = []
        self.cancelled = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel)
        self.connects.append(d)
        return d


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class FakeProto:
    STATE_OPEN = 3
    state = 3

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.closes: list[int] = []
        self.pings = 0

    def sendClose(self, code: int) -> None:
        self.closes.append(code)

    def sendPing(self) -> None:
        self.pings += 1


def msg(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


class ParseTests(SynchronousTestCase):
    """
    L{parseWatchMessage} accepts the documented shapes and names what is
    wrong with others.
    """

    def test_shapes(self) -> None:
        """
        port_list with objects or numbers, port_opened, port_closed; extra
        fields are ignored; duplicates count once.
        """
        kind, ports = parseWatchMessage(
            msg(type="port_list", ports=[{"port": 3000, "pid": 9, "x": 1}, 5432, 3000, "junk"])
        )  # type: ignore[misc]
        self.assertEqual(kind, "port_list")
        self.assertEqual(ports, [ListeningPort(3000, "", 9), ListeningPort(5432)])
        self.assertEqual(
            parseWatchMessage(msg(type="port_opened", port=80, address="0.0.0.0", pid=1)),
            ("port_opened", [ListeningPort(80, "0.0.0.0", 1)]),
        )
        self.assertEqual(
            parseWatchMessage(msg(type="port_closed", port=80)),
            ("port_closed", [ListeningPort(80)]),
        )

    def test_unknownIgnored(self) -> None:
        """
        Other types, and objects without a type, are ignored (C{None}).
        """
        self.assertIsNone(parseWatchMessage(msg(type="hello", port="x")))
        self.assertIsNone(parseWatchMessage(msg(port=1)))

    def test_malformed(self) -> None:
        """
        Non-JSON, non-objects, bad ports and bad lists raise, naming the
        value.
        """
        for payload, text in [
            (b"\xff{", "not JSON"),
            (b"[1]", "not a JSON object"),
            (msg(type="port_opened", port=0), "port 0 is outside"),
            (msg(type="port_opened", port="80"), "port '80' is not a number"),
            (msg(type="port_closed", port=True), "port True"),
            (msg(type="port_list", ports=5), "ports 5 is not a list"),
        ]:
            e = self.assertRaises(WatchMessageError, parseWatchMessage, payload)
            self.assertIn(text, str(e))

    def test_remoteHost(self) -> None:
        """
        Wildcards, 127.0.0.1 and URLs mean localhost; other IPs are kept.
        """
        for address, host in [
            ("", ""),
            ("0.0.0.0", ""),
            ("::", ""),
            ("127.0.0.1", ""),
            ("https://box-3000.sprites.app/", ""),
            ("::1", "::1"),
            ("10.0.0.5", "10.0.0.5"),
            ("garbage", ""),
        ]:
            self.assertEqual(ListeningPort(1, address).remoteHost, host, address)

    # make test runs this twice, with new random examples each time.
    @settings(max_examples=150, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=200),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                lambda children: (
                    st.lists(children, max_size=5)
                    | st.dictionaries(
                        st.sampled_from(["type", "port", "ports", "address", "pid", "x"]),
                        children,
                        max_size=5,
                    )
                ),
                max_leaves=20,
            ).map(lambda v: json.dumps(v).encode()),
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["port_list", "port_opened", "port_closed", "?"]),
                    "port": st.integers() | st.text(max_size=3) | st.none(),
                    "ports": st.lists(st.integers() | st.text(max_size=3), max_size=4),
                    "pid": st.integers() | st.none() | st.booleans(),
                }
            ).map(lambda v: json.dumps(v).encode()),
        )
    )
    def test_anyPayload(self, payload: bytes) -> None:
        """
        Any payload parses to valid ports, C{None}, or L{WatchMessageError}.
        """
        try:
            parsed = parseWatchMessage(payload)
        except WatchMessageError:
            return
        if parsed is None:
            return
        kind, ports = parsed
        self.assertIn(kind, ("port_list", "port_opened", "port_closed"))
        for port in ports:
            self.assertTrue(1 <= port.port <= 65535)
            self.assertTrue(port.pid is None or port.pid > 0)

    def test_watchPath(self) -> None:
        """
        The name is one encoded path segment.
        """
        self.assertEqual(watchPath("a/b"), "/v1/sprites/a%2Fb/ports/watch")


class WatcherTests(SynchronousTestCase):
    """
    The L{PortWatcher} state machine, driven by hand.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = RecordingEndpoint()
        self.observer = Recorder()
        self.jitter = 0.0
        self.watcher = PortWatcher(
            self.clock,
            "box",
            self.observer,
            token=TOKEN,
            apiURL="http://127.0.0.1:8900",
            transportEndpoint=self.endpoint,
            jitter=lambda: self.jitter,
        )
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def open(self) -> FakeProto:
        proto = FakeProto()
        self.watcher.protocolBuilt(proto)  # type: ignore[arg-type]
        self.watcher.wsOpened(proto)  # type: ignore[arg-type]
        return proto

    def test_interface(self) -> None:
        """
        The watcher provides L{IPortWatcher}, the recorder L{IPortObserver}.
        """
        verifyObject(IPortWatcher, self.watcher)
        verifyObject(IPortObserver, self.observer)

    def test_badConfiguration(self) -> None:
        """
        A bad name, token or URL is refused at once.
        """
        for kw in ({"token": ""}, {"token": TOKEN, "apiURL": "ftp://x"}):
            self.assertRaises(
                ConfigurationError, PortWatcher, self.clock, "box", self.observer, **kw
            )
        self.assertRaises(
            ConfigurationError, PortWatcher, self.clock, "", self.observer, token=TOKEN
        )

    def test_listThenChanges(self) -> None:
        """
        The list opens every port; changes follow; a change before the list
        is ignored; duplicates are not reported twice.
        """
        self.watcher.start()
        self.assertEqual(self.watcher.state, State.CONNECTING)
        self.assertEqual(len(self.endpoint.connects), 1)
        self.open()
        self.watcher.messageReceived(msg(type="port_opened", port=1), False)
        synced = self.watcher.whenSynced()
        self.assertNoResult(synced)
        self.watcher.messageReceived(msg(type="port_list", ports=[3000, 22]), False)
        self.successResultOf(synced)
        self.watcher.messageReceived(msg(type="port_opened", port=3000), False)
        self.watcher.messageReceived(msg(type="port_opened", port=8080), False)
        self.watcher.messageReceived(msg(type="port_closed", port=22), False)
        self.watcher.messageReceived(msg(type="port_closed", port=9), False)
        self.assertEqual(
            self.observer.events,
            [("opened", 22), ("opened", 3000), ("opened", 8080), ("closed", 22)],
        )
        self.assertEqual(sorted(p for p, _ in self.watcher.ports), [3000, 8080])

    def test_addresses(self) -> None:
        """
        One port on two addresses is two sockets; a close with an address
        closes that one, a close without closes every socket on the port.
        """
        self.watcher.start()
        self.open()
        self.watcher.messageReceived(
            msg(type="port_list", ports=[{"port": 80, "address": "0.0.0.0"}]), False
        )
        self.watcher.messageReceived(msg(type="port_opened", port=80, address="::"), False)
        self.watcher.messageReceived(msg(type="port_opened", port=81, address="::"), False)
        self.watcher.messageReceived(msg(type="port_opened", port=81, address="::1"), False)
        self.watcher.messageReceived(msg(type="port_closed", port=80, address="::"), False)
        self.assertEqual(sorted(self.watcher.ports), [(80, "0.0.0.0"), (81, "::"), (81, "::1")])
        self.watcher.messageReceived(msg(type="port_closed", port=81), False)
        self.assertEqual(sorted(self.watcher.ports), [(80, "0.0.0.0")])
        self.assertEqual(
            self.observer.events,
            [("opened", 80), ("opened", 80), ("opened", 81), ("opened", 81), ("closed", 80)]
            + [("closed", 81), ("closed", 81)],
        )

    def test_malformedSkipped(self) -> None:
        """
        A malformed message is logged once and skipped; unknown types are
        ignored silently; the watch goes on.
        """
        self.watcher.start()
        self.open()
        self.watcher.messageReceived(msg(type="port_list", ports=[]), False)
        self.watcher.messageReceived(b"not json", False)
        self.watcher.messageReceived(msg(type="port_opened", port=-1), False)
        self.watcher.messageReceived(msg(type="stats", cpu=3), False)
        self.watcher.messageReceived(b"\x00\x01", True)
        self.watcher.messageReceived(msg(type="port_opened", port=5), False)
        warnings = [formatEvent(e) for e in self.logs if "skipped" in formatEvent(e)]
        self.assertEqual(len(warnings), 3)
        self.assertIn("not JSON", warnings[0])
        self.assertIn("port -1", warnings[1])
        self.assertEqual(self.observer.events, [("opened", 5)])

    def test_resyncAfterReconnect(self) -> None:
        """
        After the watch drops and comes back, the next list closes vanished
        ports and opens new ones; unchanged ports are not reported.
        """
        self.watcher.start()
        self.open()
        self.watcher.messageReceived(msg(type="port_list", ports=[1, 2, 3]), False)
        self.watcher.wsClosed(False, 1006, "dropped")
        self.assertEqual(self.watcher.state, State.WAITING)
        self.clock.advance(0.5)
        self.assertEqual(len(self.endpoint.connects), 2)
        self.open()
        self.watcher.messageReceived(msg(type="port_list", ports=[2, 3, 4]), False)
        self.assertEqual(self.observer.events[3:], [("closed", 1), ("opened", 4)])

    def test_backoffJitteredAndCapped(self) -> None:
        """
        Failed attempts back off exponentially, scaled by the jitter, up to
        the cap; a successful list resets the backoff.
        """
        self.watcher.start()
        delays = []
        for i in range(8):
            self.jitter = 0.0 if i % 2 else 0.999
            self.endpoint.connects[-1].errback(ConnectionRefused())
            [call] = self.clock.getDelayedCalls()
            delays.append(round(call.getTime() - self.clock.seconds(), 2))
            self.clock.advance(call.getTime() - self.clock.seconds())
        self.assertEqual(delays, [1.0, 1.0, 4.0, 4.0, 15.99, 15.0, 29.99, 15.0])
        self.open()
        self.watcher.messageReceived(msg(type="port_list", ports=[]), False)
        self.assertEqual(self.watcher.attempts, 0)
        # One warning for the repeated problem, not eight.
        warned = [e for e in self.logs if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warned), 1)
        self.assertTrue(any("is back" in formatEvent(e) for e in self.logs))

    def test_longOutage(self) -> None:
        """
        After thousands of failed attempts the delay is still the cap.
        """
        self.watcher.start()
        self.watcher.attempts = 5000
        self.endpoint.connects[-1].errback(ConnectionRefused())
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 15.0)

    def test_connectTimeout(self) -> None:
        """
        A connection that does not open within the connect timeout is
        cancelled and retried.
        """
        self.watcher.start()
        self.clock.advance(30)
        self.assertEqual(self.endpoint.cancelled, 1)
        self.assertEqual(self.watcher.state, State.WAITING)
        self.clock.advance(1)
        self.assertEqual(len(self.endpoint.connects), 2)

    def test_pingAndDeadPath(self) -> None:
        """
        The watch pings every 15 s; 45 s without any answer aborts the
        connection (which then reconnects).
        """
        self.watcher.start()
        proto = self.open()
        self.watcher.messageReceived(msg(type="port_list", ports=[]), False)
        self.clock.advance(15)
        self.assertEqual(proto.pings, 1)
        self.watcher.heard()
        self.clock.advance(15)
        self.clock.advance(15)
        self.assertEqual(proto.pings, 3)
        self.assertFalse(proto.transport.aborted)
        self.clock.advance(15)
        self.assertTrue(proto.transport.aborted)

    def test_stop(self) -> None:
        """
        Stopping closes the WebSocket (1000), fires once it is gone, fails
        pending C{whenSynced}, and nothing is reported after.
        """
        self.watcher.start()
        proto = self.open()
        synced = self.watcher.whenSynced()
        stopped = self.watcher.stop()
        self.failureResultOf(synced, CancelledError)
        self.assertEqual(proto.closes, [1000])
        self.assertNoResult(stopped)
        self.watcher.messageReceived(msg(type="port_list", ports=[1]), False)
        self.watcher.wsClosed(True, 1000, None)
        self.successResultOf(stopped)
        self.assertEqual(self.observer.events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(self.watcher.stop())

    def test_stopDuringUpgrade(self) -> None:
        """
        Stopping while the upgrade is in flight aborts the connection (there
        is no WebSocket to close yet).
        """
        self.watcher.start()
        proto = FakeProto()
        proto.state = 1
        self.watcher.protocolBuilt(proto)  # type: ignore[arg-type]
        stopped = self.watcher.stop()
        self.assertTrue(proto.transport.aborted)
        self.assertEqual(proto.closes, [])
        self.watcher.wsClosed(False, 1006, None)
        self.successResultOf(stopped)

    def test_stopWhileConnecting(self) -> None:
        """
        Stopping during the connect cancels it; no retry follows.
        """
        self.watcher.start()
        self.successResultOf(self.watcher.stop())
        self.assertEqual(self.endpoint.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_observerErrorsLogged(self) -> None:
        """
        An observer that raises is logged; the watch goes on.
        """

        class Broken(Recorder):
            def portOpened(self, port: ListeningPort) -> None:
                raise RuntimeError("boom")

        self.watcher.observer = Broken()
        self.watcher.start()
        self.open()
        self.watcher.messageReceived(msg(type="port_list", ports=[1, 2]), False)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(sorted(p for p, _ in self.watcher.ports), [1, 2])

    def test_tokenNotInRepr(self) -> None:
        """
        The token appears in no repr.
        """
        self.assertNotIn(TOKEN, repr(self.watcher))
        self.assertNotIn(TOKEN, repr(self.watcher._wsFactory))


def ConnectionRefused() -> Exception:
    from twisted.internet.error import ConnectionRefusedError

    return ConnectionRefusedError()


class FakeProc:
    """
    A /proc/net/tcp whose listening ports the test sets.
    """

    def __init__(self) -> None:
        self.ports: set[int] = set()

    def read(self, path: str) -> str:
        header = "  sl  local_address rem_address   st\n"
        if path.endswith("tcp6"):
            return header
        lines = [
            f"   {i}: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 "
            f"00000000  1000        0 {1000 + port} 1 0 100 0 0 10 0"
            for i, port in enumerate(sorted(self.ports))
        ]
        return header + "\n".join(lines) + "\n"


class EndToEndTests(TestCase):
    """
    The watcher against the local server's watch over loopback.
    """

    async def _serve(self, port: int = 0) -> Any:
        listening = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(
            self.server.factory()
        )
        return listening

    def _setUp(self) -> None:
        self.proc = FakeProc()
        self.scanner = PortScanner(reactor, read=self.proc.read, listDirectory=lambda p: [])
        self.scanner.interval = 0.05
        self.server = LocalSpriteServer(reactor, TOKEN)
        mountPortWatch(self.server, self.scanner)

    def _watcher(self, port: int, token: str = TOKEN) -> tuple[PortWatcher, Recorder]:
        observer = Recorder()
        watcher = PortWatcher(
            reactor,
            "box",
            observer,
            token=token,
            apiURL=f"http://127.0.0.1:{port}",
            transportEndpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", port),
            initialDelay=0.05,
            maxDelay=0.2,
        )
        watcher.start()
        self.addCleanup(watcher.stop)
        return watcher, observer

    def test_followsAndReconnects(self) -> None:
        """
        The first list, then a change, reach the observer; after the server
        restarts (on the same port), the watcher reconnects and resyncs:
        the port that vanished meanwhile closes, the new one opens.
        """

        async def run() -> None:
            self._setUp()
            self.proc.ports = {3000}
            listening = await self._serve()
            port = listening.getHost().port
            watcher, observer = self._watcher(port)
            await observer.waitFor(("opened", 3000))
            self.proc.ports = {3000, 5000}
            await observer.waitFor(("opened", 5000))
            # Restart: stop listening, cut the watch, change ports meanwhile.
            await listening.stopListening()
            closed = watcher._whenGone()
            assert watcher._proto is not None
            watcher._proto.transport.abortConnection()
            await closed
            self.proc.ports = {5000, 6000}
            listening = await self._serve(port)
            self.addCleanup(listening.stopListening)
            await observer.waitFor(("opened", 6000))
            await watcher.whenSynced()
            self.assertEqual(
                observer.events,
                [("opened", 3000), ("opened", 5000), ("closed", 3000), ("opened", 6000)],
            )
            self.flushLoggedErrors()

        return Deferred.fromCoroutine(run())

    def test_badTokenRetries(self) -> None:
        """
        A rejected token is logged (without the token) and retried with
        backoff; nothing is reported.
        """

        async def run() -> None:
            self._setUp()
            listening = await self._serve()
            self.addCleanup(listening.stopListening)
            lines: list[str] = []
            seen: Deferred[None] = Deferred()

            def observe(event: dict[str, Any]) -> None:
                text = formatEvent(event)
                lines.append(text)
                if "port watch of box" in text and not seen.called:
                    seen.callback(None)

            globalLogPublisher.addObserver(observe)
            self.addCleanup(globalLogPublisher.removeObserver, observe)
            watcher, observer = self._watcher(listening.getHost().port, token="wrong-token-1")
            await seen
            self.assertIn("401", " ".join(lines))
            self.assertNotIn("wrong-token-1", " ".join(lines))
            self.assertEqual(observer.events, [])
            self.assertIn(watcher.state, (State.WAITING, State.CONNECTING))

        return Deferred.fromCoroutine(run())


class SecrecyTests(TestCase):
    """
    The watch never shows the token, even with txaio's global level at
    debug (Autobahn logs the upgrade request, headers included, there).
    """

    def test_tokenNeverLogged(self) -> None:
        """
        A successful watch and a refused one log no token.
        """
        import txaio

        from tests.helpers import LogCapture

        level = txaio.get_global_log_level()
        txaio.set_global_log_level("debug")
        self.addCleanup(txaio.set_global_log_level, level)

        async def run() -> None:
            logs = LogCapture(self)
            proc = FakeProc()
            proc.ports = {4000}
            scanner = PortScanner(reactor, read=proc.read, listDirectory=lambda p: [])
            server = LocalSpriteServer(reactor, TOKEN)
            mountPortWatch(server, scanner)
            listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                server.factory()
            )
            self.addCleanup(listening.stopListening)
            port = listening.getHost().port
            refused: Deferred[None] = Deferred()

            def observe(event: dict[str, Any]) -> None:
                if "401" in formatEvent(event) and not refused.called:
                    refused.callback(None)

            globalLogPublisher.addObserver(observe)
            self.addCleanup(globalLogPublisher.removeObserver, observe)
            watchers = []
            for token in (TOKEN, "other-secret-token-9a"):
                observer = Recorder()
                watcher = PortWatcher(
                    reactor,
                    "box",
                    observer,
                    token=token,
                    apiURL=f"http://127.0.0.1:{port}",
                )
                watcher.start()
                self.addCleanup(watcher.stop)
                watchers.append((watcher, observer))
            await watchers[0][1].waitFor(("opened", 4000))
            await refused
            texts = logs.texts()
            self.assertTrue(any("watching the ports of box" in t for t in texts))
            for token in (TOKEN, "other-secret-token-9a"):
                self.assertEqual([t for t in texts if token in t], [])
                for watcher, _ in watchers:
                    self.assertNotIn(token, repr(watcher))

        return Deferred.fromCoroutine(run())


class TLSTests(TestCase):
    """
    Over ``wss://`` the watch is verified as tunnels are: a server with a
    certificate from the trusted CA is followed; one from another CA is
    refused (logged, retried) before any request, and so any token, is sent.
    """

    async def _serve(self, certificate: Any) -> tuple[int, Any]:
        import os

        from tests.helpers import listen
        from tests.pki import sharedPKI

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.caPath = sharedPKI().writeCA(directory)
        proc = FakeProc()
        proc.ports = {7000}
        server = LocalSpriteServer(reactor, TOKEN)
        mountPortWatch(server, PortScanner(reactor, read=proc.read, listDirectory=lambda p: []))
        port, tracked = await listen(
            self, reactor, server.factory(), certificate.serverDescription(directory, "server")
        )
        return port.getHost().port, tracked

    def _watch(self, port: int) -> tuple[PortWatcher, Recorder]:
        observer = Recorder()
        watcher = PortWatcher(
            reactor,
            "box",
            observer,
            token=TOKEN,
            apiURL=f"https://localhost:{port}",
            trustRoot=self.caPath,
            initialDelay=0.05,
            maxDelay=0.2,
        )
        watcher.start()
        self.addCleanup(watcher.stop)
        return watcher, observer

    def test_verified(self) -> Deferred[None]:
        """
        A server with a trusted certificate for localhost is followed.
        """
        from tests.pki import sharedPKI

        async def run() -> None:
            port, _ = await self._serve(sharedPKI().good)
            watcher, observer = self._watch(port)
            await observer.waitFor(("opened", 7000))
            self.assertTrue(watcher.url.startswith("wss://localhost:"))

        return Deferred.fromCoroutine(run())

    def test_untrusted(self) -> Deferred[None]:
        """
        A certificate from another CA fails the watch (a warning naming the
        problem); no HTTP request reached the server; nothing is reported.
        """
        from tests.pki import sharedPKI

        async def run() -> None:
            port, tracked = await self._serve(sharedPKI().untrusted)
            warned: Deferred[str] = Deferred()

            def observe(event: dict[str, Any]) -> None:
                text = formatEvent(event)
                if "port watch of box" in text and not warned.called:
                    warned.callback(text)

            globalLogPublisher.addObserver(observe)
            self.addCleanup(globalLogPublisher.removeObserver, observe)
            watcher, observer = self._watch(port)
            text = await warned
            self.assertIn("is not a trusted CA", text)  # the diagnosis, as for tunnels
            self.assertNotIn(TOKEN, text)
            await watcher.stop()
            self.assertEqual(observer.events, [])
            # What reached the server is TLS records only, never the request.
            self.assertNotIn(b"GET /v1/sprites", bytes(tracked.received))
            self.assertNotIn(TOKEN.encode(), bytes(tracked.received))

        return Deferred.fromCoroutine(run())
