"""
Tests for L{sprites_twisted.session}, L{sprites_twisted.manager} and the
Deferred API of L{sprites_twisted.client}, on a C{MemoryReactorClock}.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import TCP6ServerEndpoint
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sprites_twisted import IProxySession, PortMapping, ProxyManager, ProxySession, SpritesClient
from sprites_twisted.errors import (
    AddressError,
    APIUnreachableError,
    ConfigurationError,
    MappingError,
    SpriteAuthError,
)
from sprites_twisted.testing import TEST_TOKEN, FakeProxySession, MemorySprite
from tests.helpers import Echo


class RecordingPort:
    """
    A listening port that remembers whether it was stopped.
    """

    def __init__(self, address: IPv4Address) -> None:
        self.address = address
        self.disconnected = False

    def stopListening(self) -> None:
        self.disconnected = True

    def getHost(self) -> IPv4Address:
        return self.address


class FailingListenReactor(MemoryReactorClock):
    """
    A memory reactor whose ports record C{stopListening}, and on which
    listening on the C{busy} ports fails.
    """

    def __init__(self, busy: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        super().__init__()
        self.busy = busy
        self.ports: list[RecordingPort] = []

    def listenTCP(self, port, factory, backlog=50, interface=""):  # type: ignore[no-untyped-def]
        if port in self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        super().listenTCP(port, factory, backlog, interface)
        recording = RecordingPort(IPv4Address("TCP", interface, port or 43210))
        self.ports.append(recording)
        return recording


class SessionTests(SynchronousTestCase):
    """
    L{ProxySession}: one listener, closeable, waitable.
    """

    def setUp(self) -> None:
        self.reactor = FailingListenReactor()
        self.client = SpritesClient(self.reactor, TEST_TOKEN, "http://127.0.0.1:8900")

    def test_interfaces(self) -> None:
        """
        A session provides IProxySession and IService; the fake passes
        verifyObject too.
        """
        session = self.client.session("demo", PortMapping(8080, 80))
        self.assertTrue(verifyObject(IProxySession, session))
        self.assertTrue(verifyObject(IService, session))
        self.assertTrue(verifyObject(IProxySession, FakeProxySession("demo", 1, 2)))

    def test_listensOnLoopback(self) -> None:
        """
        proxyPort listens on 127.0.0.1 at the requested port.
        """
        session = self.successResultOf(self.client.proxyPort("demo", 8080, 80))
        port, factory, backlog, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (8080, "127.0.0.1"))
        self.assertIs(factory, session.factory)
        self.assertEqual(
            (session.localPort, session.remotePort, session.remoteHost), (8080, 80, "")
        )
        self.assertEqual(session.localAddr().port, 8080)

    def test_explicitInterface(self) -> None:
        """
        Another interface is used only when asked for.
        """
        self.successResultOf(self.client.proxyPort("demo", 8080, 80, interface="::1"))
        self.assertEqual(self.reactor.tcpServers[0][3], "::1")

    def test_portZero(self) -> None:
        """
        Port 0 listens on some free port, which localAddr reports.
        """
        session = self.successResultOf(self.client.proxyPort("demo", 0, 80))
        self.assertEqual(self.reactor.tcpServers[0][0], 0)
        self.assertIsNotNone(session.localAddr())

    def test_closeIdempotent(self) -> None:
        """
        close() twice is fine; both Deferreds fire; the listener stops.
        """
        session = self.successResultOf(self.client.proxyPort("demo", 8080, 80))
        d1 = session.close()
        d2 = session.close()
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.successResultOf(session.close())
        self.assertEqual([p.disconnected for p in self.reactor.ports], [True])
        self.assertIsNone(session.localAddr())
        self.assertFalse(session.running)

    def test_waitBeforeAndAfterClose(self) -> None:
        """
        wait() gives a new Deferred per call, firing on close, and fires at
        once after.
        """
        session = self.successResultOf(self.client.proxyPort("demo", 8080, 80))
        w1, w2 = session.wait(), session.wait()
        self.assertIsNot(w1, w2)
        self.assertNoResult(w1)
        session.close()
        self.successResultOf(w1)
        self.successResultOf(w2)
        self.successResultOf(session.wait())

    def test_closeDrainsThenAborts(self) -> None:
        """
        close() stops listening at once, lets open connections go on for
        the drain period, then closes them.
        """
        client = SpritesClient(self.reactor, TEST_TOKEN, "http://127.0.0.1:8900", drainTimeout=5)
        session = self.successResultOf(client.proxyPort("demo", 8080, 80))
        proto = session.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        d = session.close()
        self.assertTrue(self.reactor.ports[0].disconnected)
        self.reactor.advance(4)
        self.assertNoResult(d)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(d)
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)

    def test_closeWhenConnectionsFinishEarly(self) -> None:
        """
        If open connections end within the drain period, close fires then.
        """
        session = self.successResultOf(self.client.proxyPort("demo", 8080, 80))
        proto = session.factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        d = session.close()
        self.assertNoResult(d)
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopServiceCloses(self) -> None:
        """
        Stopping the service closes the session.
        """
        session = self.client.session("demo", PortMapping(8080, 80))
        session.startService()
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.successResultOf(session.stopService())
        self.successResultOf(session.wait())

    def test_listenFailureLogged(self) -> None:
        """
        startService logs a listen failure naming the port; the session is
        then closed.
        """
        reactor = FailingListenReactor({8080})
        client = SpritesClient(reactor, TEST_TOKEN, "http://127.0.0.1:8900")
        session = client.session("demo", PortMapping(8080, 80))
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        session.startService()
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("8080", errors[0]["error"])
        self.successResultOf(session.wait())
        self.failureResultOf(session.listen(), CannotListenError)

    def test_restart(self) -> None:
        """
        A stopped session starts again: it listens anew, and wait() waits
        for the new close.
        """
        session = self.client.session("demo", PortMapping(8080, 80))
        session.startService()
        self.successResultOf(session.stopService())
        self.assertIsNone(session.localAddr())
        session.startService()
        self.assertTrue(session.running)
        self.assertEqual([p[0] for p in self.reactor.tcpServers], [8080, 8080])
        self.assertEqual(session.localAddr().port, 8080)
        waiting = session.wait()
        self.assertNoResult(waiting)
        self.successResultOf(session.stopService())
        self.successResultOf(waiting)
        self.assertEqual([p.disconnected for p in self.reactor.ports], [True, True])

    def test_listenWhileClosing(self) -> None:
        """
        listen() during the drain of a close listens once the close is
        done.
        """
        session = self.successResultOf(self.client.proxyPort("demo", 8080, 80))
        proto = session.factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        session.close()
        listening = session.listen()
        self.assertNoResult(listening)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertIs(self.successResultOf(listening), session)
        self.assertEqual(len(self.reactor.tcpServers), 2)

    def test_localhostBothFamilies(self) -> None:
        """
        Binding ``localhost`` listens on 127.0.0.1 and on ::1, the second on
        the port the first got; closing stops both.
        """
        session = self.successResultOf(self.client.proxyPort("demo", 0, 80, interface="localhost"))
        self.assertEqual(
            [(p, i) for p, _, _, i in self.reactor.tcpServers], [(0, "127.0.0.1"), (43210, "::1")]
        )
        self.successResultOf(session.close())
        self.assertEqual([p.disconnected for p in self.reactor.ports], [True, True])

    def test_bindAddressFromMapping(self) -> None:
        """
        A mapping's own bind address (BIND:LOCAL:HOST:REMOTE) wins over the
        client's interface.
        """
        session = self.client.session("demo", PortMapping(8080, 80, "web", "127.0.0.2"))
        self.successResultOf(session.listen())
        self.assertEqual(self.reactor.tcpServers[0][3], "127.0.0.2")
        self.assertEqual(session.describeLocal(), "127.0.0.2:8080")

    def test_nonLoopbackWarns(self) -> None:
        """
        Binding a non-loopback interface logs a warning.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.successResultOf(self.client.proxyPort("demo", 8080, 80, interface="0.0.0.0"))
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertIn("anyone", warnings[0]["log_format"])


class ForwardTests(SynchronousTestCase):
    """
    L{SpritesClient.forward}: any server endpoint as the local side.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.client = SpritesClient(self.reactor, TEST_TOKEN, "http://127.0.0.1:8900")

    def test_unixSocket(self) -> None:
        """
        An endpoint string listens there; a Unix socket gets mode 0600 and
        the session names it in logs.
        """
        session = self.successResultOf(self.client.forward("demo", "unix:/tmp/pg.sock", 5432))
        [(path, factory, backlog, mode, wantPID)] = self.reactor.unixServers
        self.assertEqual((path, mode), ("/tmp/pg.sock", 0o600))
        self.assertIs(factory, session.factory)
        self.assertEqual(session.describeLocal(), "unix:/tmp/pg.sock")
        self.assertEqual((session.remotePort, session.remoteHost), (5432, ""))
        self.successResultOf(session.close())

    def test_explicitMode(self) -> None:
        """
        A mode given in the string is kept.
        """
        self.successResultOf(self.client.forward("demo", "unix:/tmp/pg.sock:mode=660", 5432))
        self.assertEqual(self.reactor.unixServers[0][3], 0o660)

    def test_endpointObject(self) -> None:
        """
        An IStreamServerEndpoint object is used as it is.
        """
        endpoint = TCP6ServerEndpoint(self.reactor, 8080, interface="::1")
        session = self.successResultOf(self.client.sprite("demo").forward(endpoint, 80, "web"))
        self.assertEqual([(p, i) for p, _, _, i in self.reactor.tcpServers], [(8080, "::1")])
        self.assertIs(session.listenOn, endpoint)

    def test_badString(self) -> None:
        """
        A string Twisted cannot parse fails the Deferred, naming it.
        """
        failure = self.failureResultOf(self.client.forward("demo", "bogus:1", 80), ValueError)
        self.assertIn("'bogus:1'", str(failure.value))


class ProxyPortsTests(SynchronousTestCase):
    """
    proxyPorts: all or nothing.
    """

    def test_inputOrder(self) -> None:
        """
        Sessions come back in input order.
        """
        reactor = MemoryReactorClock()
        client = SpritesClient(reactor, TEST_TOKEN, "http://127.0.0.1:8900")
        mappings = [PortMapping(9003, 3), PortMapping(9001, 1), PortMapping(9002, 2, "db")]
        sessions = self.successResultOf(client.proxyPorts("demo", mappings))
        self.assertEqual([s.mapping for s in sessions], mappings)

    def test_rollback(self) -> None:
        """
        One busy port closes the sessions already made and fails naming
        the port.
        """
        reactor = FailingListenReactor({9002})
        client = SpritesClient(reactor, TEST_TOKEN, "http://127.0.0.1:8900")
        d = client.proxyPorts(
            "demo", [PortMapping(9001, 1), PortMapping(9002, 2), PortMapping(9003, 3)]
        )
        error = self.failureResultOf(d, CannotListenError).value
        self.assertIn("9002", str(error))
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertEqual([p.disconnected for p in reactor.ports], [True])

    def test_rollbackClosesListeners(self) -> None:
        """
        After a failed proxyPorts, no listener stays open.
        """
        reactor = FailingListenReactor({9002})
        client = SpritesClient(reactor, TEST_TOKEN, "http://127.0.0.1:8900")
        made: list[ProxySession] = []
        original = client.session

        def recording(*a, **kw):  # type: ignore[no-untyped-def]
            s = original(*a, **kw)
            made.append(s)
            return s

        client.session = recording  # type: ignore[method-assign]
        self.failureResultOf(
            client.proxyPorts("demo", [PortMapping(9001, 1), PortMapping(9002, 2)]),
            CannotListenError,
        )
        self.assertIsNone(made[0].localAddr())
        self.assertTrue(reactor.ports[0].disconnected)
        self.successResultOf(made[0].wait())

    def test_badMappings(self) -> None:
        """
        Duplicate local ports and non-mappings fail with MappingError.
        """
        client = SpritesClient(MemoryReactorClock(), TEST_TOKEN, "http://127.0.0.1:8900")
        f = self.failureResultOf(
            client.proxyPorts("demo", [PortMapping(1, 2), PortMapping(1, 3)]), MappingError
        )
        self.assertIn("local port 1", str(f.value))
        self.failureResultOf(client.proxyPorts("demo", ["8080:80"]), MappingError)  # type: ignore[list-item]
        self.failureResultOf(client.proxyPort("demo", 1, 70000), MappingError)

    def test_cancelClosesSessions(self) -> None:
        """
        Cancelling proxyPorts closes what it made.
        """
        from twisted.internet.defer import Deferred

        reactor = FailingListenReactor()
        client = SpritesClient(reactor, TEST_TOKEN, "http://127.0.0.1:8900")
        sessions: list[ProxySession] = []
        original = client.session

        def slowSecond(*a, **kw):  # type: ignore[no-untyped-def]
            s = original(*a, **kw)
            sessions.append(s)
            if len(sessions) == 2:
                s.listen = lambda: Deferred()  # type: ignore[method-assign]
            return s

        client.session = slowSecond  # type: ignore[method-assign]
        d = client.proxyPorts("demo", [PortMapping(9001, 1), PortMapping(9002, 2)])
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertIsNone(sessions[0].localAddr())
        self.successResultOf(sessions[0].wait())


class ClientTests(SynchronousTestCase):
    """
    L{SpritesClient} and L{Sprite}.
    """

    def test_tokenNeverShown(self) -> None:
        """
        The token appears in no repr.
        """
        sprite = MemorySprite()
        client = sprite.client()
        endpoint = client.endpoint("demo", 5432)
        session = client.session("demo", PortMapping(1, 2))
        for thing in [client, endpoint, session, client.sprite("demo"), endpoint._wsFactory]:
            self.assertNotIn(TEST_TOKEN, repr(thing))

    def test_badConfiguration(self) -> None:
        """
        A missing token or an insecure remote URL is refused at once.
        """
        self.assertRaises(ConfigurationError, SpritesClient, MemoryReactorClock(), "")
        self.assertRaises(
            ConfigurationError, SpritesClient, MemoryReactorClock(), "t", "http://example.com"
        )

    def test_endpointsReused(self) -> None:
        """
        The same target gets the same endpoint (one Autobahn factory, no
        reseeding of the global random per call); the cache is bounded.
        """
        import random

        client = MemorySprite().client()
        first = client.endpoint("demo", 22)
        state = random.getstate()
        self.assertIs(client.endpoint("demo", 22, "localhost"), first)
        self.assertEqual(random.getstate(), state)
        self.assertIsNot(client.endpoint("demo", 23), first)
        for port in range(1000, 1100):
            client.endpoint("demo", port)
        self.assertLessEqual(len(client._endpoints), 64)
        self.assertIsNot(client.endpoint("demo", 22), first)

    def test_insecureURLWarns(self) -> None:
        """
        An explicitly allowed plain-text URL to another host logs a warning
        (without the token); a loopback one does not.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        SpritesClient(MemoryReactorClock(), TEST_TOKEN, "http://127.0.0.1:8900")
        self.assertEqual([e for e in events if e["log_level"].name == "warn"], [])
        SpritesClient(MemoryReactorClock(), TEST_TOKEN, "http://example.com", allowInsecure=True)
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["host"], "example.com")
        self.assertNotIn(TEST_TOKEN, repr(warnings[0]))

    def test_proxySocketNetwork(self) -> None:
        """
        Only tcp is supported.
        """
        client = MemorySprite().client()
        f = self.failureResultOf(
            client.proxySocket("udp", "demo", "localhost:1", Factory()), AddressError
        )
        self.assertIn("'udp'", str(f.value))

    def test_proxySocketAddress(self) -> None:
        """
        Bad addresses fail, naming the address.
        """
        client = MemorySprite().client()
        for address in ["nohost", "h:0", "h:65536", "::1:22"]:
            f = self.failureResultOf(
                client.proxySocket("tcp", "demo", address, Factory()), AddressError
            )
            self.assertIn(repr(address), str(f.value))

    def test_proxySocketWorks(self) -> None:
        """
        proxySocket and Sprite.proxySocket reach the target; an empty host
        means localhost.
        """
        sprite = MemorySprite()
        sprite.addTarget(22, Factory.forProtocol(Echo))
        client = sprite.client()
        for d in [
            client.proxySocket("tcp", "demo", ":22", Factory.forProtocol(Protocol)),
            client.sprite("demo").proxySocket("tcp", "localhost:22", Factory.forProtocol(Protocol)),
        ]:
            sprite.flush()
            proto = self.successResultOf(d)
            self.assertEqual(proto.transport.getPeer().port, 22)

    def test_cancelProxySocket(self) -> None:
        """
        Cancelling proxySocket aborts the tunnel and leaves nothing open.
        """
        sprite = MemorySprite()
        sprite.addTarget(22, Factory.forProtocol(Echo))
        d = sprite.client().proxySocket("tcp", "demo", ":22", Factory.forProtocol(Protocol))
        d.cancel()
        sprite.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(sprite.server.tunnels, set())
        self.assertEqual(sprite.network.pumps, [])


class ManagerTests(SynchronousTestCase):
    """
    L{ProxyManager}: sessions as child services.
    """

    def setUp(self) -> None:
        self.reactor = FailingListenReactor()
        self.client = SpritesClient(self.reactor, TEST_TOKEN, "http://127.0.0.1:8900", check=False)

    def test_startStop(self) -> None:
        """
        Starting the manager listens for every session; stopping it closes
        them all.
        """
        manager = ProxyManager()
        sessions = [self.client.session("demo", PortMapping(p, 80)) for p in (8001, 8002)]
        for s in sessions:
            manager.addSession(s)
        self.assertEqual(self.reactor.tcpServers, [])
        manager.startService()
        self.assertEqual([t[0] for t in self.reactor.tcpServers], [8001, 8002])
        self.successResultOf(manager.stopService())
        self.successResultOf(manager.waitAll())
        self.assertTrue(all(s.localAddr() is None for s in sessions))

    def test_addWhileRunning(self) -> None:
        """
        A session added to a running manager starts listening at once.
        """
        manager = ProxyManager()
        manager.startService()
        manager.addSession(self.client.session("demo", PortMapping(8001, 80)))
        self.assertEqual(len(self.reactor.tcpServers), 1)

    def test_duplicateRejected(self) -> None:
        """
        The same local port on the same interface cannot be added twice.
        """
        manager = ProxyManager()
        manager.addSession(self.client.session("demo", PortMapping(8001, 80)))
        with self.assertRaises(MappingError) as ctx:
            manager.addSession(self.client.session("demo", PortMapping(8001, 81)))
        self.assertIn("8001", str(ctx.exception))
        manager.addSession(self.client.session("demo", PortMapping(0, 82)))
        manager.addSession(self.client.session("demo", PortMapping(0, 83)))
        self.assertEqual(len(manager.sessions), 3)

    def test_checkBeforeListening(self) -> None:
        """
        A started manager runs its sessions' checks (once per sprite) and
        listens only when they pass; whenReady fires then.
        """
        checks: list[Deferred[None]] = []

        def check() -> Deferred[None]:
            checks.append(Deferred())
            return checks[-1]

        manager = ProxyManager()
        for port in (8001, 8002):
            session = self.client.session("demo", PortMapping(port, 80))
            session.check = check
            manager.addSession(session)
        ready = manager.whenReady()
        manager.startService()
        self.assertEqual(len(checks), 1)
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertNoResult(ready)
        checks[0].callback(None)
        self.assertEqual([t[0] for t in self.reactor.tcpServers], [8001, 8002])
        self.successResultOf(ready)
        self.successResultOf(manager.whenReady())
        self.successResultOf(manager.stopService())

    def test_checkRefusalStopsStartUp(self) -> None:
        """
        A check that says the token is bad: nothing listens, whenReady
        fails with that error, and it is logged.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        manager = ProxyManager()
        session = self.client.session("demo", PortMapping(8001, 80))
        session.check = lambda: fail(SpriteAuthError(401))
        manager.addSession(session)
        manager.startService()
        self.failureResultOf(manager.whenReady(), SpriteAuthError)
        self.assertEqual(self.reactor.tcpServers, [])
        errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("rejected the token", errors[0])
        self.successResultOf(manager.stopService())

    def test_checkInconclusiveStartsAnyway(self) -> None:
        """
        A check that cannot tell (the API is unreachable) is a warning, and
        the sessions listen.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        manager = ProxyManager()
        session = self.client.session("demo", PortMapping(8001, 80))
        session.check = lambda: fail(APIUnreachableError("127.0.0.1:1", "refused"))
        manager.addSession(session)
        manager.startService()
        self.successResultOf(manager.whenReady())
        self.assertEqual(len(self.reactor.tcpServers), 1)
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("starting anyway", warnings[0])
        self.successResultOf(manager.stopService())

    def test_noCheck(self) -> None:
        """
        ProxyManager(check=False) listens without running checks.
        """
        manager = ProxyManager(check=False)
        session = self.client.session("demo", PortMapping(8001, 80))
        session.check = lambda: fail(SpriteAuthError(401))
        manager.addSession(session)
        manager.startService()
        self.successResultOf(manager.whenReady())
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.successResultOf(manager.stopService())

    def test_listenFailureReported(self) -> None:
        """
        whenReady fails with a session's listen failure.
        """
        reactor = FailingListenReactor({8002})
        client = SpritesClient(reactor, TEST_TOKEN, "http://127.0.0.1:8900", check=False)
        manager = ProxyManager()
        for port in (8001, 8002):
            manager.addSession(client.session("demo", PortMapping(port, 80)))
        manager.startService()
        failure = self.failureResultOf(manager.whenReady(), CannotListenError)
        self.assertEqual(failure.value.port, 8002)
        self.flushLoggedErrors()
        self.successResultOf(manager.stopService())

    def test_closeAllAndWaitAll(self) -> None:
        """
        closeAll fires when every session is closed; waitAll too.
        """
        manager = ProxyManager()
        fakes = [FakeProxySession("demo", 1, 2), FakeProxySession("demo", 3, 4)]
        for f in fakes:
            manager.addSession(f)  # type: ignore[arg-type]
        waited = manager.waitAll()
        self.assertNoResult(waited)
        self.successResultOf(manager.closeAll())
        self.successResultOf(waited)
        self.assertTrue(all(f.closed for f in fakes))
