# -*- test-case-name: tests.test_session -*-
"""
Tests for L{sprites_twisted.session}: one forwarded port as a service, on a C{MemoryReactorClock}.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sprites_twisted import IProxySession, PortMapping, SpritesClient
from sprites_twisted.testing import TEST_TOKEN, FakeProxySession
from tests.helpers import FailingListenReactor


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

    def test_announce(self) -> None:
        """
        A session logs its start and stop at info, or at debug when its
        owner logs its own line for each (announce=False).
        """
        from sprites_twisted.mapping import PortMapping as Mapping

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for announce, level in ((True, "info"), (False, "debug")):
            session = self.client.session("demo", Mapping(0, 80), announce=announce)
            self.successResultOf(session.listen())
            self.successResultOf(session.close())
            lines = [e["log_level"].name for e in events if "forwarding" in e.get("log_format", "")]
            self.assertEqual(lines[-2:], [level, level])
