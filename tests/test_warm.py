# -*- test-case-name: tests.test_warm -*-
"""
Tests for L{sprites_twisted.warm} and the warm and early-data paths of the
endpoint: in memory against the real local sprite server, on its clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.client import SpritesClient
from sprites_twisted.errors import ConfigurationError, HandshakeError, SpriteAuthError
from sprites_twisted.testing import MemorySprite
from sprites_twisted.tunnel import EarlyData
from sprites_twisted.warm import (
    DEFAULT_PREWARM,
    DEFAULT_PREWARM_IDLE,
    DISTANT_ROUND_TRIP,
    REFILL_WAIT,
)
from tests.test_tunnel import Recorder


class Target(Protocol):
    """
    Records what reaches the target and answers with what it got.
    """

    instances: list[Target]

    def connectionMade(self) -> None:
        self.received = b""
        Target.instances.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.transport.write(data)


class WarmPoolTests(SynchronousTestCase):
    """
    One spare per sprite after a connection used one, kept 10 s, none while
    idle, retried once if dead, closed on stop.
    """

    def setUp(self) -> None:
        Target.instances = []
        self.sprite = MemorySprite()
        self.sprite.addTarget(5432, Factory.forProtocol(Target))
        self.client = self.sprite.client(prewarm=DEFAULT_PREWARM)
        self.endpoint = self.client.endpoint("demo", 5432)
        self.pool = self.client._pool("demo")
        assert self.pool is not None

    def connect(self, early: EarlyData | None = None, settle: bool = True) -> Any:
        """
        Connect through the endpoint; with C{settle}, then let the refill
        wait run out (the target sends nothing first, so only the clock
        triggers the used tunnel's replacement).
        """
        d = self.endpoint.connectEarly(Factory.forProtocol(Recorder), early)
        self.sprite.flush()
        protocol = self.successResultOf(d)
        if settle:
            self.sprite.reactor.advance(REFILL_WAIT)
            self.sprite.flush()
        return protocol

    def test_defaults(self) -> None:
        """
        One spare, kept at most 10 s; a negative count is refused.
        """
        self.assertEqual((DEFAULT_PREWARM, DEFAULT_PREWARM_IDLE), (1, 10.0))
        self.assertEqual(SpritesClient(self.sprite.reactor, "t", "http://127.0.0.1:1").prewarm, 1)
        with self.assertRaises(ConfigurationError):
            self.sprite.client(prewarm=-1)

    def test_nothingWarmWhileIdle(self) -> None:
        """
        Before any connection, no WebSocket is open.
        """
        self.sprite.flush()
        self.assertEqual(len(self.sprite.server.tunnels), 0)
        self.assertEqual(self.pool.ready, 0)

    def test_refillAfterUse(self) -> None:
        """
        A connection (cold) leaves one spare behind; the next connection
        takes it and leaves a new one.
        """
        first = self.connect()
        self.assertEqual(self.pool.ready, 1)
        self.assertEqual(len(self.sprite.server.tunnels), 2)
        spare = self.pool._ready[0]
        second = self.connect()
        self.assertTrue(spare.warm)
        self.assertEqual(spare.state, "relaying")
        self.assertIs(second.transport.channel, spare.channel)
        self.assertEqual(self.pool.ready, 1)
        first.transport.write(b"one")
        second.transport.write(b"two")
        self.sprite.flush()
        self.assertEqual((first.received, second.received), (b"one", b"two"))

    def test_refillOnceSettled(self) -> None:
        """
        The spare that replaces a used one is not opened while the
        connection's tunnel is being set up, nor when it has just answered
        (its first exchange would compete with the spare's upgrade for the
        CPU), but right after the first bytes from the sprite reached the
        connection's protocol.
        """
        self.connect()
        d = self.endpoint.connect(Factory.forProtocol(Recorder))
        api = self.sprite.apiEndpoint.connections
        self.assertEqual((self.pool.ready, len(self.pool._upgrading), len(api)), (0, 0, 2))
        self.sprite.flush()
        protocol = self.successResultOf(d)
        self.assertEqual((self.pool.ready, len(self.pool._upgrading), len(api)), (0, 0, 2))
        protocol.transport.write(b"ping")
        self.sprite.flush()
        self.assertEqual(protocol.received, b"ping")
        self.assertEqual((self.pool.ready, len(api)), (1, 3))
        self.assertEqual(protocol.transport.channel.binaryData, protocol.dataReceived)
        # Once: with the spare taken, neither more bytes nor the wait running
        # out open another.
        self.assertIsNotNone(self.pool.take())
        protocol.transport.write(b"again")
        self.sprite.reactor.advance(REFILL_WAIT)
        self.sprite.flush()
        self.assertEqual((protocol.received, self.pool.ready, len(api)), (b"pingagain", 0, 3))

    def test_refillInTheNextTurn(self) -> None:
        """
        The first bytes from the sprite do not open the spare while they
        are being delivered (writing them on comes first), but in the
        reactor's next turn.
        """
        self.connect()
        d = self.endpoint.connect(Factory.forProtocol(Recorder))
        self.sprite.flush()
        protocol = self.successResultOf(d)
        api = self.sprite.apiEndpoint.connections
        opened = len(api)
        protocol.transport.channel.binaryData(b"hello")  # as the frame parser would
        self.assertEqual((protocol.received, len(api)), (b"hello", opened))
        self.sprite.reactor.advance(0)
        self.assertEqual(len(api), opened + 1)

    def test_distantAPIRefillsAtOnce(self) -> None:
        """
        Where the init took L{DISTANT_ROUND_TRIP} or more to be answered,
        the spare is opened as the tunnel answers, before any bytes came,
        and nothing waits on the clock or on the connection's first bytes.
        """
        self.connect()
        api = self.sprite.apiEndpoint.connections
        opened = len(api)
        d = self.endpoint.connect(Factory.forProtocol(Recorder))  # the spare's init goes out
        self.sprite.reactor.advance(DISTANT_ROUND_TRIP * 1.1)  # before the reply comes
        self.sprite.flush()
        protocol = self.successResultOf(d)
        self.assertEqual((protocol.received, self.pool.ready, len(api)), (b"", 1, opened + 1))
        self.assertEqual(protocol.transport.channel.binaryData, protocol.dataReceived)
        self.assertEqual(
            [c for c in self.sprite.reactor.getDelayedCalls() if c.func.__name__ == "refill"], []
        )

    def test_nearAPIWaits(self) -> None:
        """
        Just under L{DISTANT_ROUND_TRIP}, the spare waits for the first
        exchange.
        """
        self.connect()
        api = self.sprite.apiEndpoint.connections
        opened = len(api)
        d = self.endpoint.connect(Factory.forProtocol(Recorder))
        self.sprite.reactor.advance(DISTANT_ROUND_TRIP * 0.9)
        self.sprite.flush()
        protocol = self.successResultOf(d)
        self.assertEqual((self.pool.ready, len(api)), (0, opened))
        protocol.transport.write(b"ping")
        self.sprite.flush()
        self.assertEqual((self.pool.ready, len(api)), (1, opened + 1))

    def test_refillAfterWait(self) -> None:
        """
        If no bytes come from the sprite, the spare is opened
        L{REFILL_WAIT} seconds after the tunnel answered, and not before;
        bytes that come later add none.
        """
        protocol = self.connect(settle=False)
        api = self.sprite.apiEndpoint.connections
        self.sprite.reactor.advance(REFILL_WAIT * 0.99)
        self.sprite.flush()
        self.assertEqual((self.pool.ready, len(api)), (0, 1))
        self.sprite.reactor.advance(REFILL_WAIT * 0.01)
        self.sprite.flush()
        self.assertEqual((self.pool.ready, len(api)), (1, 2))
        # The first-bytes hook is gone with the wait, and later bytes open
        # no other spare (the one opened is taken first).
        self.assertEqual(protocol.transport.channel.binaryData, protocol.dataReceived)
        self.assertIsNotNone(self.pool.take())
        protocol.transport.write(b"late")
        self.sprite.flush()
        self.assertEqual((protocol.received, self.pool.ready, len(api)), (b"late", 0, 2))

    def test_noRefillAfterClose(self) -> None:
        """
        A refill still waiting when the spares are closed (a session
        stopping) is dropped: no WebSocket is opened after, and no call
        stays pending on the clock.
        """
        protocol = self.connect(settle=False)
        api = self.sprite.apiEndpoint.connections
        self.client.closeSpares()
        self.assertEqual(
            [c for c in self.sprite.reactor.getDelayedCalls() if c.func.__name__ == "refill"], []
        )
        self.assertEqual(protocol.transport.channel.binaryData, protocol.dataReceived)
        protocol.transport.write(b"ping")
        self.sprite.flush()
        self.sprite.reactor.advance(REFILL_WAIT)
        self.sprite.flush()
        self.assertEqual((protocol.received, self.pool.ready, len(api)), (b"ping", 0, 1))

    def test_noRefillWhenTheAPIFails(self) -> None:
        """
        A connection the API refuses (here: a wrong token) leaves no spare
        behind: it would be refused the same way.  A tunnel whose target
        was refused does, since the API itself worked.
        """
        api = self.sprite.apiEndpoint.connections
        client = self.sprite.client("wrong-token-0123456789", prewarm=1)
        d = client.endpoint("demo", 5432).connect(Factory.forProtocol(Recorder))
        self.sprite.flush()
        self.failureResultOf(d, SpriteAuthError)
        pool = client._pool("demo")
        assert pool is not None
        self.assertEqual((pool.ready, len(pool._upgrading), len(api)), (0, 0, 1))

        d = self.client.endpoint("demo", 9999).connect(Factory.forProtocol(Recorder))
        self.sprite.flush()
        self.failureResultOf(d, HandshakeError)
        self.assertEqual((self.pool.ready, len(api)), (1, 3))

    def test_idleExpiry(self) -> None:
        """
        A spare unused for 10 s is closed with 1000 and not replaced; the
        local sprite server, whose init timeout is longer, sees a clean
        close, not a tunnel to refuse.
        """
        from sprites_twisted.server import DEFAULT_INIT_TIMEOUT
        from tests.helpers import LogCapture

        self.assertGreater(DEFAULT_INIT_TIMEOUT, DEFAULT_PREWARM_IDLE)
        logs = LogCapture(self)
        self.connect().transport.loseConnection()
        self.sprite.flush()
        self.assertEqual(self.pool.ready, 1)
        self.sprite.reactor.advance(DEFAULT_PREWARM_IDLE - 0.1)
        self.sprite.flush()
        self.assertEqual(self.pool.ready, 1)
        self.sprite.reactor.advance(0.1)
        self.sprite.flush()
        self.assertEqual(self.pool.ready, 0)
        self.sprite.reactor.advance(self.sprite.server.closeTimeout)
        self.sprite.flush()
        self.assertEqual(len(self.sprite.server.tunnels), 0)
        self.assertEqual([t for t in logs.texts() if "refused" in t], [])

    def test_spareClosedByServerIsDropped(self) -> None:
        """
        A spare the server closes is forgotten; the next connection goes
        cold and works.
        """
        self.connect()
        spare = self.pool._ready[0]
        spare.channel.transport.loseConnection()  # the path goes away
        self.sprite.flush()
        self.assertEqual(self.pool.ready, 0)
        proto = self.connect()
        proto.transport.write(b"cold")
        self.sprite.flush()
        self.assertEqual(proto.received, b"cold")

    def test_deadSpareRetriedWithEarlyBytes(self) -> None:
        """
        A spare that dies after being claimed, before it answered, is
        retried once on a fresh tunnel, with the early bytes sent again:
        the target gets them exactly once and the caller sees no failure.
        """
        self.connect()
        spare = self.pool._ready[0]
        (pump,) = [p for p in self.sprite.network.pumps if p.client is spare.channel]
        # The server side of the spare goes away; the client learns of it
        # only after it claimed the spare and sent the init and early bytes.
        pump.serverIO.abortConnection()
        early = EarlyData()
        early.write(b"GET / early")
        d = self.endpoint.connectEarly(Factory.forProtocol(Recorder), early)
        self.sprite.flush()
        proto = self.successResultOf(d)
        self.assertEqual(Target.instances[-1].received, b"GET / early")
        self.assertEqual(proto.received, b"GET / early")
        self.assertIsNot(proto.transport.channel, spare.channel)

    def test_retriedTunnelRefillsOnFirstBytes(self) -> None:
        """
        After a dead spare was retried, the replacement spare waits for
        the first bytes from the sprite on the fresh tunnel, the one the
        connection got.
        """
        self.connect()
        spare = self.pool._ready[0]
        (pump,) = [p for p in self.sprite.network.pumps if p.client is spare.channel]
        pump.serverIO.abortConnection()
        d = self.endpoint.connect(Factory.forProtocol(Recorder))
        self.sprite.flush()
        proto = self.successResultOf(d)
        fresh = proto.transport.channel
        self.assertIsNot(fresh, spare.channel)
        self.assertEqual((self.pool.ready, len(self.pool._upgrading)), (0, 0))
        self.assertNotEqual(fresh.binaryData, proto.dataReceived)  # hooked
        proto.transport.write(b"ping")
        self.sprite.flush()
        self.assertEqual(proto.received, b"ping")
        self.assertEqual(self.pool.ready, 1)
        self.assertEqual(fresh.binaryData, proto.dataReceived)

    def test_closedInConnectionMadeRefillsAfterWait(self) -> None:
        """
        An application that closes in C{connectionMade} gets a clean end
        (C{ConnectionDone}) and leaves one spare behind, opened when the
        refill wait runs out, since no bytes will come.
        """

        class Quitter(Recorder):
            def connectionMade(self) -> None:
                super().connectionMade()
                self.transport.loseConnection()

            def connectionLost(self, reason: Any) -> None:
                self.lostReason = reason

        self.connect()
        self.assertIsNotNone(self.pool.take())
        api = self.sprite.apiEndpoint.connections
        opened = len(api)
        d = self.endpoint.connect(Factory.forProtocol(Quitter))
        self.sprite.flush()
        proto = self.successResultOf(d)
        self.assertIsInstance(proto.lostReason.value, ConnectionDone)
        self.assertEqual((self.pool.ready, len(api)), (0, opened + 1))
        self.sprite.reactor.advance(REFILL_WAIT)
        self.sprite.flush()
        self.assertEqual((self.pool.ready, len(api)), (1, opened + 2))
        self.assertEqual(
            [c for c in self.sprite.reactor.getDelayedCalls() if c.func.__name__ == "refill"], []
        )

    def test_refusalIsNotRetried(self) -> None:
        """
        A spare whose init is refused by the sprite fails as a cold tunnel
        would: no retry.
        """
        endpoint = self.client.endpoint("demo", 9999)  # nothing there
        self.connect()
        d = endpoint.connect(Factory.forProtocol(Recorder))
        self.sprite.flush()
        self.assertIn("cannot connect to localhost:9999", str(self.failureResultOf(d).value))

    def test_closedOnStop(self) -> None:
        """
        Closing the client's spares (sessions do it when they stop) closes
        them with 1000 at once.
        """
        self.connect().transport.loseConnection()
        self.sprite.flush()
        self.client.closeSpares()
        self.sprite.flush()
        self.sprite.reactor.advance(self.sprite.server.closeTimeout)
        self.sprite.flush()
        self.assertEqual(self.pool.ready, 0)
        self.assertEqual(len(self.sprite.server.tunnels), 0)

    def test_sessionStopClosesSpares(self) -> None:
        """
        A session's close leaves no warm tunnel behind.
        """
        from sprites_twisted.mapping import PortMapping

        session = self.client.session("demo", PortMapping(0, 5432))
        self.successResultOf(session.listen())
        session.factory.endpoint.connect(Factory.forProtocol(Recorder))
        self.sprite.flush()
        self.sprite.reactor.advance(REFILL_WAIT)
        self.sprite.flush()
        pool = self.client._pool("demo")
        assert pool is not None
        self.assertEqual(pool.ready, 1)
        self.successResultOf(session.close(drainTimeout=0))
        self.sprite.flush()
        self.assertEqual(pool.ready, 0)

    def test_closeSparesOfOneSprite(self) -> None:
        """
        C{closeSpares(name)} closes that sprite's warm tunnels only.
        """
        other = self.client._pool("other")
        assert other is not None
        closed: list[str] = []
        self.patch(other, "close", lambda: closed.append("other"))
        self.connect().transport.loseConnection()
        self.sprite.flush()
        self.assertEqual(self.pool.ready, 1)
        self.client.closeSpares("other")
        self.assertEqual((closed, self.pool.ready), (["other"], 1))
        self.client.closeSpares("demo")
        self.sprite.flush()
        self.assertEqual(self.pool.ready, 0)
        self.client.closeSpares("nosuch")

    def test_socksServiceStopClosesSpares(self) -> None:
        """
        A SOCKS service that stops leaves no warm tunnel of its sprite
        behind.
        """
        from twisted.internet.testing import MemoryReactorClock

        from sprites_twisted.socks import SOCKSService

        factory = self.client.socksFactory("demo")
        service = SOCKSService(MemoryReactorClock(), factory, "127.0.0.1", 1080)
        service.startService()
        self.connect().transport.loseConnection()
        self.sprite.flush()
        self.assertEqual(self.pool.ready, 1)
        self.successResultOf(service.stopService())
        self.sprite.flush()
        self.assertEqual(self.pool.ready, 0)


class EarlyDataTests(SynchronousTestCase):
    """
    With early data, the local client's first bytes go right behind the
    init; the local sprite server keeps them for the target.
    """

    def setUp(self) -> None:
        Target.instances = []
        self.sprite = MemorySprite()
        self.sprite.addTarget(5432, Factory.forProtocol(Target))

    def test_sentBeforeConnected(self) -> None:
        """
        Early bytes and bytes written while awaiting the reply go out before
        the reply, in order, and reach the target once.
        """
        endpoint = self.sprite.client(earlyData=True).endpoint("demo", 5432)
        self.assertTrue(endpoint.earlyData)
        early = EarlyData()
        early.write(b"hello ")
        d = endpoint.connectEarly(Factory.forProtocol(Recorder), early)
        early.write(b"world")
        self.sprite.flush()
        proto = self.successResultOf(d)
        self.assertEqual(Target.instances[0].received, b"hello world")
        self.assertEqual(proto.received, b"hello world")

    def test_refusedFailsAsBefore(self) -> None:
        """
        A refused tunnel with early data fails with the server's reason.
        """
        endpoint = self.sprite.client(earlyData=True).endpoint("demo", 9999)
        early = EarlyData()
        early.write(b"lost")
        d = endpoint.connectEarly(Factory.forProtocol(Recorder), early)
        self.sprite.flush()
        self.assertIn("cannot connect", str(self.failureResultOf(d).value))

    def test_fullBufferStopsReading(self) -> None:
        """
        EarlyData says when it is full (the listener then stops reading).
        """
        early = EarlyData(limit=4)
        early.write(b"abc")
        self.assertFalse(early.full)
        early.write(b"d")
        self.assertTrue(early.full)
