# -*- test-case-name: tests.test_servertunnel -*-
"""
Tests for L{sprites_twisted.servertunnel}: the local server's state machine
of one tunnel, on a fake channel, a hand-fired target endpoint and a clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sprites_twisted.server import DEFAULT_INIT_TIMEOUT, LocalSpriteServer
from sprites_twisted.servertunnel import MAX_EARLY_DATA, ServerTunnel
from sprites_twisted.wire import MAX_INIT_SIZE
from tests.channels import FakeChannel


@implementer(IStreamClientEndpoint)
class TargetEndpoint:
    def __init__(self) -> None:
        self.pending: list[tuple[Any, Deferred[Any]]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((factory, d))
        return d

    def succeed(self) -> tuple[Any, StringTransport]:
        factory, d = self.pending.pop(0)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        d.callback(proto)
        return proto, transport


INIT = json.dumps({"host": "localhost", "port": 5432}).encode()


class ServerTunnelTests(SynchronousTestCase):
    """
    L{ServerTunnel}: awaitingInit -> connecting -> relaying -> closed.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.targets = TargetEndpoint()
        self.server = LocalSpriteServer(
            self.reactor, "token", targetEndpoint=lambda r, h, p: self.targets
        )
        self.channel = FakeChannel()
        self.tunnel = ServerTunnel(self.server, "demo")
        self.tunnel.channel = self.channel  # type: ignore[assignment]
        self.server.tunnelStarted(self.tunnel)
        self.tunnel.opened()

    def replies(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.channel.texts]

    def relaying(self) -> tuple[Any, StringTransport]:
        self.tunnel.textReceived(INIT)
        self.assertEqual(self.tunnel.state, "connecting")
        target, transport = self.targets.succeed()
        self.assertEqual(self.tunnel.state, "relaying")
        return target, transport

    def test_connected(self) -> None:
        """
        A good init connects the target and answers connected naming it;
        text after that is not collected any more.
        """
        self.assertEqual(self.channel.textLimit, MAX_INIT_SIZE)
        self.relaying()
        self.assertEqual(self.replies(), [{"status": "connected", "target": "localhost:5432"}])
        self.assertEqual(self.channel.textLimit, 0)

    def test_relay(self) -> None:
        """
        Binary data goes to the target, the target's data to the channel.
        """
        target, transport = self.relaying()
        self.channel.binaryData(b"to target")  # type: ignore[attr-defined]
        self.assertEqual(transport.value(), b"to target")
        target.dataReceived(b"to client")
        self.assertEqual(self.channel.binary, [b"to client"])

    def test_earlyDataKept(self) -> None:
        """
        Binary data sent right after the init is delivered to the target
        once it is connected, in order.
        """
        self.tunnel.textReceived(INIT)
        self.tunnel.binaryData(b"early ")
        self.tunnel.binaryData(b"bird")
        target, transport = self.targets.succeed()
        self.assertEqual(transport.value(), b"early bird")

    def test_tooMuchEarlyData(self) -> None:
        """
        More early data than allowed refuses the tunnel.
        """
        self.tunnel.textReceived(INIT)
        self.tunnel.binaryData(b"x" * (MAX_EARLY_DATA + 1))
        self.assertEqual(self.replies()[-1]["status"], "error")
        self.assertIn("too much data", self.replies()[-1]["message"])

    def test_initTimeout(self) -> None:
        """
        No init within the timeout: an error reply and a close.
        """
        self.reactor.advance(DEFAULT_INIT_TIMEOUT)
        self.assertEqual(self.replies()[0]["status"], "error")
        self.assertEqual(self.channel.closes[0][0], 1000)
        self.reactor.advance(self.server.closeTimeout)
        self.assertTrue(self.channel.transport.disconnected)

    def test_targetRefused(self) -> None:
        """
        A target that refuses is reported in the reply.
        """
        self.tunnel.textReceived(INIT)
        _, d = self.targets.pending.pop(0)
        d.errback(ConnectionRefusedError())
        self.assertIn("cannot connect to localhost:5432", self.replies()[0]["message"])

    def test_targetFINIs1000(self) -> None:
        """
        A target that closes cleanly closes the tunnel with 1000.
        """
        target, _ = self.relaying()
        target.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.channel.closes, [(1000, None)])

    def test_targetResetIs1011(self) -> None:
        """
        A target that resets closes the tunnel with 1011.
        """
        target, _ = self.relaying()
        target.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.channel.closes, [(1011, "connection reset")])

    def test_close1011ResetsTarget(self) -> None:
        """
        A client close with 1011 (or a dropped WebSocket) resets the target
        after what was written; 1000 closes it cleanly.
        """
        target, transport = self.relaying()
        self.tunnel.closed(True, 1011, "reset")
        self.assertFalse(transport.disconnecting)
        transport.producer.resumeProducing()
        self.assertTrue(transport.disconnected)
        target.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.server.tunnels, set())

    def test_close1000ClosesTarget(self) -> None:
        target, transport = self.relaying()
        self.tunnel.closed(True, 1000, None)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)

    def test_tunnelEndedOnlyWhenBothGone(self) -> None:
        """
        The server counts the tunnel until both the WebSocket and the
        target are gone.
        """
        target, _ = self.relaying()
        self.tunnel.closed(True, 1000, None)
        self.assertEqual(self.server.tunnels, {self.tunnel})
        target.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.server.tunnels, set())

    def test_frameTooLarge(self) -> None:
        """
        An oversized binary frame closes with 1009, then the connection.
        """
        self.relaying()
        self.tunnel.frameTooLarge(10**7)
        self.assertEqual(self.channel.closes[0][0], 1009)
        self.reactor.advance(self.server.closeTimeout)
        self.assertTrue(self.channel.transport.disconnected)
