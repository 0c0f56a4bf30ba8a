# -*- test-case-name: tests.test_manager -*-
"""
Tests for L{sprites_twisted.manager}: many sessions as one service, on a C{MemoryReactorClock}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import CannotListenError
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted import PortMapping, ProxyManager, SpritesClient
from sprites_twisted.errors import (
    APIUnreachableError,
    MappingError,
    SpriteAuthError,
)
from sprites_twisted.testing import TEST_TOKEN, FakeProxySession
from tests.helpers import FailingListenReactor


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
