# -*- test-case-name: tests.test_wsstream -*-
"""
Tests for L{sprites_twisted.wsstream}: the WebSocket as a stream transport,
on a fake channel.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sprites_twisted.interfaces import IResettableTransport
from sprites_twisted.wsstream import (
    MAX_SEND_CHUNK,
    SpriteAddress,
    WebSocketStreamTransport,
    closeFailure,
    sendCloseCode,
)
from tests.channels import FakeChannel


class Recorder(Protocol):
    reason: Failure | None = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reason = reason


class StreamTransportTests(SynchronousTestCase):
    """
    L{WebSocketStreamTransport} writes binary messages, closes by reason,
    passes flow control to the TCP connection and reports the end.
    """

    def setUp(self) -> None:
        self.channel = FakeChannel()
        self.clock = Clock()
        self.peer = SpriteAddress("demo", "localhost", 5432)
        self.stream = WebSocketStreamTransport(
            self.channel, IPv4Address("TCP", "127.0.0.1", 1), self.peer, self.clock, 1.0
        )
        self.proto = Recorder()
        self.stream.attach(self.proto)

    def test_interfaces(self) -> None:
        """
        It is a transport, a consumer, a push producer and resettable.
        """
        for interface in (ITransport, IConsumer, IPushProducer, IResettableTransport):
            self.assertTrue(verifyObject(interface, self.stream))
        self.assertIs(self.proto.transport, self.stream)
        self.assertEqual(self.stream.getPeer(), self.peer)
        self.assertEqual(str(self.peer), "demo localhost:5432")

    def test_writeChunks(self) -> None:
        """
        Writes become binary messages of at most MAX_SEND_CHUNK bytes, in
        order; empty writes send nothing.
        """
        self.stream.write(b"")
        self.stream.write(b"small")
        big = bytes(range(256)) * (MAX_SEND_CHUNK // 256 * 2 + 1)
        self.stream.writeSequence([big[:10], big[10:]])
        self.assertEqual(self.channel.binary[0], b"small")
        self.assertEqual(b"".join(self.channel.binary[1:]), big)
        self.assertTrue(all(len(m) <= MAX_SEND_CHUNK for m in self.channel.binary))

    def test_loseConnectionIs1000(self) -> None:
        """
        loseConnection closes with 1000 once, and nothing is sent after.
        """
        self.stream.loseConnection()
        self.stream.loseConnection()
        self.stream.write(b"late")
        self.assertEqual(self.channel.closes, [(1000, None)])
        self.assertEqual(self.channel.binary, [])

    def test_resetConnectionIs1011(self) -> None:
        """
        resetConnection closes with 1011 after what was written.
        """
        self.stream.write(b"last")
        self.stream.resetConnection()
        self.assertEqual(self.channel.binary, [b"last"])
        self.assertEqual(self.channel.closes, [(1011, "connection reset")])

    def test_abortClosesTCPWithoutWaiting(self) -> None:
        """
        abortConnection closes with 1011 and closes the TCP connection now.
        """
        self.stream.abortConnection()
        self.assertEqual(self.channel.closes[0][0], 1011)
        self.assertTrue(self.channel.transport.disconnecting)

    def test_closeTimers(self) -> None:
        """
        After a close, the TCP connection is closed after closeTimeout and
        aborted after ten times that; the timers go once the WebSocket is
        gone.
        """
        self.stream.loseConnection()
        self.clock.advance(0.999)
        self.assertFalse(self.channel.transport.disconnecting)
        self.clock.advance(0.001)
        self.assertTrue(self.channel.transport.disconnecting)
        self.assertFalse(self.channel.transport.disconnected)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.stream.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeTimeoutAborts(self) -> None:
        """
        A TCP connection still there ten close timeouts after the close is
        aborted; one timer runs at a time.
        """
        self.stream.loseConnection()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        self.clock.advance(8.999)
        self.assertFalse(self.channel.transport.disconnected)
        self.clock.advance(0.001)
        self.assertTrue(self.channel.transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flowControlGoesToTCP(self) -> None:
        """
        Producer calls go to the TCP connection under the WebSocket.
        """
        producer = Recorder()
        self.stream.registerProducer(producer, True)
        self.assertIs(self.channel.transport.producer, producer)
        self.stream.unregisterProducer()
        self.assertIsNone(self.channel.transport.producer)
        self.stream.pauseProducing()
        self.assertEqual(self.channel.transport.producerState, "paused")
        self.stream.resumeProducing()
        self.assertEqual(self.channel.transport.producerState, "producing")
        self.stream.setBufferSize(1234)  # a StringTransport has none: ignored

    def test_connectionLostOnce(self) -> None:
        """
        The protocol hears of the end once, with the reason.
        """
        reason = Failure(ConnectionLost("tunnel closed (code 1011)"))
        self.stream.connectionLost(reason)
        self.stream.connectionLost(Failure(ConnectionDone()))
        self.assertIs(self.proto.reason, reason)


class CloseFailureTests(SynchronousTestCase):
    """
    L{closeFailure}: 1000/1001 (or no code) cleanly is a clean end, anything
    else a broken stream naming the code.
    """

    def test_clean(self) -> None:
        for code in (1000, 1001, None, 1005):
            self.assertTrue(closeFailure(True, code, None).check(ConnectionDone), code)

    def test_broken(self) -> None:
        for wasClean, code in ((True, 1011), (True, 4000), (False, 1000), (False, 1006)):
            failure = closeFailure(wasClean, code, "why")
            self.assertTrue(failure.check(ConnectionLost))
            self.assertIn(f"code {code}", failure.getErrorMessage())
            self.assertIn("why", failure.getErrorMessage())


class SendCloseCodeTests(SynchronousTestCase):
    """
    L{sendCloseCode} uses Autobahn's sendClose where it accepts the code,
    its sendCloseFrame otherwise.
    """

    def test_codes(self) -> None:
        calls: list[tuple[str, object, object]] = []

        class WS:
            def sendClose(self, code: int, reason: str | None) -> None:
                calls.append(("sendClose", code, reason))

            def sendCloseFrame(self, code: int, reasonUtf8: bytes | None, isReply: bool) -> None:
                calls.append(("sendCloseFrame", code, reasonUtf8))

        sendCloseCode(WS(), 1000, None)
        sendCloseCode(WS(), 4001, "x" * 200)
        sendCloseCode(WS(), 1011, "broken")
        sendCloseCode(WS(), 1009, "é" * 100)
        self.assertEqual(calls[0], ("sendClose", 1000, None))
        self.assertEqual(calls[1], ("sendClose", 4001, "x" * 100))
        self.assertEqual(calls[2], ("sendCloseFrame", 1011, b"broken"))
        self.assertEqual(calls[3][:2], ("sendCloseFrame", 1009))
        self.assertLessEqual(len(calls[3][2]), 120)  # type: ignore[arg-type]
