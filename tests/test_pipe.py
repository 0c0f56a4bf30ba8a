# -*- test-case-name: tests.test_pipe -*-
"""
Tests for L{sprites_twisted.pipe}: two-way flow control, and ending the
peer the way a side ended (a clean end as a clean end; a broken one as a
reset, after everything written was delivered).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sprites_twisted import pipe
from sprites_twisted.interfaces import IResettableTransport
from sprites_twisted.pipe import Pipe, endStream, resetAfterFlush, splice


def connected() -> tuple[Pipe, StringTransport]:
    p = Pipe()
    transport = StringTransport()
    p.makeConnection(transport)
    return p, transport


class SpliceTests(SynchronousTestCase):
    """
    L{splice} joins two pipes with flow control both ways.
    """

    def test_dataBothWays(self) -> None:
        """
        What one end receives is written to the other, and counted.
        """
        a, ta = connected()
        b, tb = connected()
        splice(a, b)
        a.dataReceived(b"to b")
        b.dataReceived(b"to a")
        self.assertEqual((tb.value(), ta.value()), (b"to b", b"to a"))
        self.assertEqual((a.bytesIn, b.bytesIn), (4, 4))

    def test_pauseResumePassThrough(self) -> None:
        """
        Each transport is the streaming producer of the other: a full side
        pauses the other and resumes it.
        """
        a, ta = connected()
        b, tb = connected()
        splice(a, b)
        self.assertTrue(ta.streaming)
        ta.producer.pauseProducing()
        self.assertEqual(tb.producerState, "paused")
        ta.producer.resumeProducing()
        self.assertEqual(tb.producerState, "producing")

    def test_stopProducingDoesNotEndThePeer(self) -> None:
        """
        Twisted tells a dead consumer's producer to stop; that must not end
        the producer's own stream cleanly (the pipe ends it by reason).
        """
        a, ta = connected()
        b, tb = connected()
        splice(a, b)
        ta.producer.stopProducing()
        self.assertFalse(tb.disconnecting)


class EndStreamTests(SynchronousTestCase):
    """
    L{endStream} and L{Pipe.connectionLost}: how one side ended is how the
    other is ended.
    """

    def test_cleanEndIsClean(self) -> None:
        """
        A C{ConnectionDone} ends the peer with C{loseConnection}.
        """
        a, ta = connected()
        b, tb = connected()
        splice(a, b)
        a.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(tb.disconnecting)
        self.assertFalse(tb.disconnected)  # not aborted
        self.assertIsNone(tb.producer)

    def test_brokenEndResetsAfterFlush(self) -> None:
        """
        Anything else resets the peer, but only once its buffer is empty.
        """
        a, ta = connected()
        b, tb = connected()
        splice(a, b)
        a.dataReceived(b"last")
        a.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(tb.value(), b"last")
        self.assertFalse(tb.disconnecting)
        tb.producer.resumeProducing()  # what Twisted does once it is flushed
        self.assertTrue(tb.disconnected)

    def test_resettableTransport(self) -> None:
        """
        A tunnel (L{IResettableTransport}) is reset with its own method.
        """

        @implementer(IResettableTransport)
        class Tunnel(StringTransport):
            reset = False

            def resetConnection(self) -> None:
                self.reset = True

        transport = Tunnel()
        endStream(transport, Failure(ConnectionLost()))
        self.assertTrue(transport.reset)
        self.assertFalse(transport.disconnecting)

    def test_noReason(self) -> None:
        """
        No reason at all is not a clean end.
        """
        self.assertFalse(pipe.isCleanEnd(None))


class SocketTransport(StringTransport):
    """
    A transport over a real connected socket, flushed as Twisted would:
    registering a pull producer asks it once (ignored), and C{doWrite}
    asks it again once the buffer is empty.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.aborted = 0

    def getHandle(self) -> socket.socket:
        return self.sock

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        if not streaming:
            producer.resumeProducing()

    def doWrite(self) -> None:
        if self.producer is not None:
            self.producer.resumeProducing()

    def abortConnection(self) -> None:
        self.aborted += 1
        super().abortConnection()


class KernelFlushTests(SynchronousTestCase):
    """
    A reset waits for the kernel to have sent what it holds for the socket
    (an RST would throw it away), up to a deadline.
    """

    def setUp(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.ours = socket.create_connection(listener.getsockname())
        self.theirs, _ = listener.accept()
        listener.close()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        self.theirs.settimeout(5)
        # Fill their receive window so that the kernel keeps the rest.
        self.ours.setblocking(False)
        self.sent = 0
        try:
            while True:
                self.sent += self.ours.send(b"x" * 65536)
        except BlockingIOError:
            pass
        self.transport = SocketTransport(self.ours)
        self.clock = Clock()

    def test_waitsForTheKernel(self) -> None:
        """
        Not aborted while the kernel still holds data; aborted once the
        peer has read it all.
        """
        self.assertGreater(pipe._unsent(self.transport), 0)
        resetAfterFlush(self.transport, self.clock)
        self.clock.advance(0.5)
        self.assertEqual(self.transport.aborted, 0)
        received = 0
        while received < self.sent:
            received += len(self.theirs.recv(1 << 20))
        self.assertEqual(pipe._unsent(self.transport), 0)
        self.clock.advance(0.01)
        self.assertEqual(self.transport.aborted, 1)

    def test_deadline(self) -> None:
        """
        A peer that never reads does not hold the reset forever.
        """
        resetAfterFlush(self.transport, self.clock)
        self.clock.advance(pipe.RESET_FLUSH_TIMEOUT - 1)
        self.assertEqual(self.transport.aborted, 0)
        self.clock.pump([0.5] * 4)
        self.assertEqual(self.transport.aborted, 1)

    def test_withoutClock(self) -> None:
        """
        Without a clock, the reset comes as soon as Twisted's buffer is
        empty.
        """
        resetAfterFlush(self.transport, None)
        self.assertEqual(self.transport.aborted, 1)
