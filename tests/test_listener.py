# -*- test-case-name: tests.test_listener -*-
"""
Tests for L{sprites_twisted.listener}: the local side of a forwarded port,
driven with C{StringTransport} and a hand-fired endpoint.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sprites_twisted.errors import SpriteAuthError
from sprites_twisted.listener import LocalProxyFactory, LocalProxyProtocol


@implementer(IStreamClientEndpoint)
class HandFiredEndpoint:
    """
    An endpoint whose connects are completed or failed by the test.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Deferred[Any]]] = []
        self.cancelled = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel)
        self.pending.append((factory, d))
        return d

    def succeed(self) -> tuple[Any, StringTransport]:
        factory, d = self.pending.pop(0)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        d.callback(proto)
        return proto, transport

    def fail(self, error: Exception) -> None:
        _, d = self.pending.pop(0)
        d.errback(error)


class ListenerTests(SynchronousTestCase):
    """
    L{LocalProxyProtocol} pauses, connects, relays and closes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = HandFiredEndpoint()
        self.factory = LocalProxyFactory(self.endpoint, self.clock, "demo", "localhost:5432", 2.0)
        self.events = EventLoggingObserver.createWithCleanup(self, _globalPublisher())

    def accept(self) -> tuple[LocalProxyProtocol, StringTransport]:
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        proto.makeConnection(transport)
        return proto, transport

    def test_pausedUntilTunnelUp(self) -> None:
        """
        The local socket reads nothing until the tunnel is up, then resumes
        with producers registered both ways.
        """
        proto, local = self.accept()
        self.assertEqual(local.producerState, "paused")
        self.assertEqual(len(self.endpoint.pending), 1)
        tunnel, remote = self.endpoint.succeed()
        self.assertEqual(local.producerState, "producing")
        self.assertIs(local.producer.transport, remote)
        self.assertTrue(local.streaming)
        self.assertIs(remote.producer.transport, local)
        self.assertTrue(remote.streaming)

    def test_relayInOrder(self) -> None:
        """
        Bytes go both ways unchanged and in order.
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        for chunk in [b"a", b"bc", b"def"]:
            proto.dataReceived(chunk)
        self.assertEqual(remote.value(), b"abcdef")
        tunnel.dataReceived(b"xyz")
        tunnel.dataReceived(b"123")
        self.assertEqual(local.value(), b"xyz123")

    def test_dataBeforeSplice(self) -> None:
        """
        Data the tunnel delivers while it is being joined is not lost.
        """
        proto, local = self.accept()
        factory, d = self.endpoint.pending.pop(0)
        tunnel = factory.buildProtocol(None)
        tunnel.makeConnection(StringTransport())
        tunnel.dataReceived(b"early")
        d.callback(tunnel)
        self.assertEqual(local.value(), b"early")

    def test_slowLocalReaderPausesTunnel(self) -> None:
        """
        When the local socket's buffer is full, the tunnel stops reading
        (and the other way round).
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        local.producer.pauseProducing()
        self.assertEqual(remote.producerState, "paused")
        remote.producer.pauseProducing()
        self.assertEqual(local.producerState, "paused")

    def test_tunnelFailureClosesOnlyThisConnection(self) -> None:
        """
        A failed tunnel closes that local connection and logs one warning
        with the server's reason; other connections are unaffected.
        """
        proto1, local1 = self.accept()
        proto2, local2 = self.accept()
        self.endpoint.fail(SpriteAuthError(401, "bad token"))
        # A refusal is an error for the local program: once what was
        # written is flushed, the connection is reset, not closed.
        self.assertFalse(local1.disconnecting)
        local1.producer.resumeProducing()  # Twisted's buffer is empty
        self.assertTrue(local1.disconnected)  # aborted: an RST
        self.assertEqual(proto1.state, "closing")
        self.assertFalse(local2.disconnecting)
        warnings = [e for e in self.events if e.get("log_level").name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["sprite"], "demo")
        self.assertEqual(warnings[0]["target"], "localhost:5432")
        self.assertIn("bad token", warnings[0]["error"])
        self.assertIn("HTTP 401", warnings[0]["error"])
        proto1.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.connections, {proto2})

    def test_localCloseBeforeTunnelCancels(self) -> None:
        """
        A local client that leaves before the tunnel is up cancels it.
        """
        proto, local = self.accept()
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.endpoint.cancelled, 1)

    def test_tunnelArrivingAfterLocalCloseIsClosed(self) -> None:
        """
        A tunnel that completes after the local side left is closed.
        """
        proto, local = self.accept()
        # The local side left cleanly while connecting (the race where the
        # tunnel's answer was already on its way).
        proto._localGone, proto._localEnd = True, Failure(ConnectionDone())
        proto._connecting = None
        tunnel, remote = self.endpoint.succeed()
        self.assertTrue(remote.disconnecting)
        self.assertFalse(remote.disconnected)
        self.assertEqual(proto.state, "closing")

    def test_tunnelArrivingAfterLocalResetIsReset(self) -> None:
        """
        A tunnel that completes after the local side was reset is reset too.
        """
        proto, local = self.accept()
        proto._localGone, proto._localEnd = True, Failure(ConnectionLost())
        proto._connecting = None
        tunnel, remote = self.endpoint.succeed()
        remote.producer.resumeProducing()
        self.assertTrue(remote.disconnected)

    def test_localResetResetsTunnel(self) -> None:
        """
        A local connection that is reset ends its tunnel as broken: what it
        sent is delivered, then the tunnel is reset (not closed).
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        proto.dataReceived(b"last")
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(remote.value(), b"last")
        self.assertFalse(remote.disconnecting)
        remote.producer.resumeProducing()
        self.assertTrue(remote.disconnected)

    def test_brokenTunnelResetsLocal(self) -> None:
        """
        A tunnel that breaks delivers what arrived, then resets the local
        connection, and the end is logged once as a warning with the
        byte counts.
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        tunnel.dataReceived(b"partial")
        tunnel.connectionLost(Failure(ConnectionLost("tunnel closed (code 1011)")))
        self.assertEqual(local.value(), b"partial")
        self.assertFalse(local.disconnecting)
        local.producer.resumeProducing()
        self.assertTrue(local.disconnected)
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(proto.state, "done")
        warnings = [e for e in self.events if e.get("log_level").name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertIn("broke", warnings[0]["log_format"])
        self.assertIn("code 1011", warnings[0]["error"])
        self.assertEqual(warnings[0]["received"], 7)

    def test_states(self) -> None:
        """
        A connection goes connecting -> relaying -> lingering -> closing ->
        done.
        """
        proto, local = self.accept()
        self.assertEqual(proto.state, "connecting")
        tunnel, remote = self.endpoint.succeed()
        self.assertEqual(proto.state, "relaying")
        proto.readConnectionLost()
        self.assertEqual(proto.state, "lingering")
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(proto.state, "closing")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(proto.state, "done")

    def test_lingerInEndLine(self) -> None:
        """
        A linger that runs out after a half-close is told in the
        connection's one end line, at info level, and not counted in its
        duration; nothing else is logged for the connection.
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        self.clock.advance(0.25)
        proto.readConnectionLost()
        self.clock.advance(1.0)
        proto.replyArrived()
        self.clock.advance(1.9)
        self.assertFalse(local.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(local.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.events), 1)
        [ended] = self.events
        self.assertEqual(ended["log_level"].name, "info")
        self.assertAlmostEqual(ended["duration"], 0.25)
        self.assertEqual(ended["linger"], 2.0)
        self.assertIn(
            "0.250 s, then closed after 2 s without more of the reply", formatEvent(ended)
        )

    def test_lingerEndedBySprite(self) -> None:
        """
        A sprite that closes during the linger ends the connection with the
        plain end line, its duration counted to the end.
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        self.clock.advance(0.25)
        proto.readConnectionLost()
        self.clock.advance(0.5)
        tunnel.connectionLost(Failure(ConnectionDone()))
        proto.connectionLost(Failure(ConnectionDone()))
        [ended] = self.events
        self.assertNotIn("linger", ended)
        self.assertAlmostEqual(ended["duration"], 0.75)
        self.assertTrue(formatEvent(ended).endswith("0.750 s"), formatEvent(ended))

    def test_localCloseClosesTunnel(self) -> None:
        """
        When the local connection is lost the tunnel is closed (flushing),
        and the connection counts as ended once the tunnel is gone too.
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        proto.dataReceived(b"last")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(remote.value(), b"last")
        self.assertTrue(remote.disconnecting)
        self.assertIn(proto, self.factory.connections)
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.connections, set())
        infos = [e for e in self.events if "ended" in e.get("log_format", "")]
        self.assertEqual(len(infos), 1)
        self.assertEqual((infos[0]["sent"], infos[0]["received"]), (4, 0))

    def test_tunnelCloseClosesLocal(self) -> None:
        """
        When the tunnel ends, what it delivered is written, then the local
        connection closes.
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        tunnel.dataReceived(b"reply")
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(local.value(), b"reply")
        self.assertTrue(local.disconnecting)

    def test_halfCloseLingers(self) -> None:
        """
        After the local client stops sending, the reply keeps flowing until
        nothing arrives for the linger period, then both sides close.
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        proto.dataReceived(b"request")
        proto.readConnectionLost()
        self.assertFalse(remote.disconnecting)
        self.clock.advance(1.5)
        tunnel.dataReceived(b"reply part 1")
        self.clock.advance(1.5)
        tunnel.dataReceived(b" and 2")
        self.assertFalse(local.disconnecting)
        self.assertEqual(local.value(), b"reply part 1 and 2")
        self.clock.advance(2.0)
        self.assertTrue(local.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(remote.disconnecting)

    def test_halfCloseEndsWhenSpriteCloses(self) -> None:
        """
        A half-closed connection ends as soon as the sprite side closes,
        without waiting for the linger period.
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        proto.readConnectionLost()
        tunnel.dataReceived(b"answer")
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(local.disconnecting)
        self.assertEqual(local.value(), b"answer")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abortAll(self) -> None:
        """
        abortAll closes every connection and its tunnel at once.
        """
        proto, local = self.accept()
        tunnel, remote = self.endpoint.succeed()
        self.factory.abortAll()
        self.assertTrue(local.disconnected)
        self.assertTrue(remote.disconnected)

    def test_whenIdle(self) -> None:
        """
        whenIdle fires once every connection (and tunnel) has ended.
        """
        self.successResultOf(self.factory.whenIdle())
        proto, local = self.accept()
        d = self.factory.whenIdle()
        self.assertNoResult(d)
        self.endpoint.fail(SpriteAuthError(401))
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)


def _globalPublisher() -> Any:
    from twisted.logger import globalLogPublisher

    return globalLogPublisher


@implementer(IStreamClientEndpoint)
class EarlyEndpoint(HandFiredEndpoint):
    """
    A hand-fired endpoint that takes early data.
    """

    earlyData = True

    def connectEarly(self, factory: Any, early: Any) -> Deferred[Any]:
        self.early = early
        return self.connect(factory)


class EarlyDataListenerTests(SynchronousTestCase):
    """
    With early data, the local client's bytes are read while the tunnel
    opens, up to a limit, and handed to the endpoint.
    """

    def setUp(self) -> None:
        self.endpoint = EarlyEndpoint()
        self.factory = LocalProxyFactory(self.endpoint, Clock(), "demo", "localhost:80", 2.0)

    def test_earlyBytes(self) -> None:
        """
        Reading goes on while connecting; the bytes go to the endpoint's
        early data and count as sent; once up, relaying goes on as usual.
        """
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        local = StringTransport()
        proto.makeConnection(local)
        self.assertEqual(local.producerState, "producing")
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertEqual(b"".join(self.endpoint.early.chunks), b"GET / HTTP/1.1\r\n")
        tunnel, remote = self.endpoint.succeed()
        proto.dataReceived(b"\r\n")
        self.assertEqual(remote.value(), b"\r\n")  # the early bytes went with the init
        self.assertEqual(proto.bytesIn, 18)

    def test_fullPauses(self) -> None:
        """
        Past the early-data limit the local connection stops being read
        until the tunnel is up.
        """
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        local = StringTransport()
        proto.makeConnection(local)
        self.endpoint.early.limit = 4
        proto.dataReceived(b"12345")
        self.assertEqual(local.producerState, "paused")
        self.endpoint.succeed()
        self.assertEqual(local.producerState, "producing")
