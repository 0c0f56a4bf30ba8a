# -*- test-case-name: tests.test_pipe -*-
"""
The byte pipe: Twisted's ``portforward`` design, closing by reason.

Two L{Pipe} protocols, each writing what it receives to the other's
transport, each transport registered as a streaming producer of the other
(L{splice}): a full buffer on either side pauses reading on the other, which
keeps memory flat however much data flows.  The same pipe joins a local TCP
connection to a tunnel (client) and a tunnel to its target (local sprite
server); a tunnel looks like a stream transport through
L{sprites_twisted.wsstream.WebSocketStreamTransport}.

How one side ended decides how the other is ended (L{endStream}):

- a clean end (C{ConnectionDone}: a FIN, a WebSocket close 1000/1001) is
  passed on as a clean end: C{loseConnection}, after what was written;
- anything else (a reset, a dropped or timed-out tunnel, close code 1011)
  is passed on as a broken one: everything already written is still
  delivered, then the stream is reset (TCP: RST; tunnel: close 1011), so
  the program at the other end sees an error, never a complete-looking
  stream.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sprites_twisted.config import DEFAULT_RESET_FLUSH_TIMEOUT as RESET_FLUSH_TIMEOUT
from sprites_twisted.interfaces import IResettableTransport

__all__ = [
    "PIPE_BUFFER_SIZE",
    "Pipe",
    "splice",
    "endStream",
    "resetAfterFlush",
    "isCleanEnd",
]

#: Read size and producer-pause level of relayed TCP connections (see
#: L{setBufferSize}); ``docs/performance.md`` says why this size.
PIPE_BUFFER_SIZE = 96 * 1024
_FLUSH_POLL = 0.01


def isCleanEnd(reason: Failure | None) -> bool:
    """
    Did a stream end cleanly (C{ConnectionDone}) rather than break?
    """
    return reason is not None and reason.check(ConnectionDone) is not None


@implementer(IPushProducer)
class Pipe(Protocol):
    """
    One end of a two-way byte pipe: what it receives is written to its
    peer's transport; when its connection is lost, the peer's transport is
    ended the same way (L{endStream}).

    :ivar peer: the other end, set by L{splice} (or earlier by a subclass).
    :ivar bytesIn: bytes received on this end (and written to the peer).
    :ivar clock: the reactor time used to reset a TCP peer after flushing.
    """

    peer: Pipe | None = None
    bytesIn = 0
    clock: IReactorTime | None = None
    # A TCP transport or a WebSocketStreamTransport: each an ITransport, an
    # IConsumer and an IPushProducer, an intersection mypy cannot spell.
    transport: Any

    # IPushProducer, for the peer's transport (registered by L{splice}):
    # pausing and resuming pass through to this end's transport, so a full
    # buffer on one side stops reading on the other.  C{stopProducing} (the
    # peer's connection is gone) does not: ending this side is decided by
    # reason in L{connectionLost} (L{endStream}), and a transport's own
    # C{stopProducing} would always end it cleanly.

    def pauseProducing(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.bytesIn += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            endStream(peer.transport, reason, self.clock)


def splice(a: Pipe, b: Pipe) -> None:
    """
    Join two connected L{Pipe}s: make each the other's peer and register
    each as the streaming producer of the other's transport (a full buffer
    on one side pauses reading on the other; see L{Pipe.pauseProducing}).
    """
    a.peer = b
    b.peer = a
    assert a.transport is not None and b.transport is not None
    setBufferSize(a.transport)
    setBufferSize(b.transport)
    a.transport.registerProducer(b, True)
    b.transport.registerProducer(a, True)


def setBufferSize(transport: Any, size: int = PIPE_BUFFER_SIZE) -> None:
    """
    Read and buffer C{size} bytes at a time on a Twisted socket transport
    (its public C{bufferSize}, both the read size and the level above which
    a registered producer is paused); per connection, never process-wide.
    A transport that is not a Twisted socket (or has its own idea of a
    buffer, as the WebSocket adapter does) is left alone.
    """
    if hasattr(transport, "setBufferSize"):
        transport.setBufferSize(size)
    elif isinstance(getattr(transport, "bufferSize", None), int):
        transport.bufferSize = size


def endStream(transport: Any, reason: Failure | None, clock: IReactorTime | None = None) -> None:
    """
    End C{transport} the way its peer ended (C{reason}): cleanly when
    C{reason} is a C{ConnectionDone}, else as a broken stream
    (L{resetAfterFlush}).  Its producer is unregistered first: the peer it
    was reading for is gone.
    """
    try:
        transport.unregisterProducer()
    except Exception:  # noqa: BLE001 - nothing registered, or already gone
        pass
    if isCleanEnd(reason):
        transport.loseConnection()
    else:
        resetAfterFlush(transport, clock)


def resetAfterFlush(transport: Any, clock: IReactorTime | None = None) -> None:
    """
    Deliver what was written to C{transport}, then reset it.

    A tunnel (an L{IResettableTransport}) closes with 1011 after its data.
    A TCP transport first empties Twisted's buffer (a one-shot pull
    producer is asked for more data when it is), then, given a C{clock},
    waits up to
    L{RESET_FLUSH_TIMEOUT} for the kernel to have sent what it holds, and
    aborts (an RST).  Without a clock, or where the kernel cannot be asked,
    it aborts as soon as Twisted's buffer is empty.
    """
    if IResettableTransport.providedBy(transport):
        transport.resetConnection()
        return
    if getattr(transport, "disconnecting", False) and not getattr(transport, "connected", True):
        return
    try:
        transport.pauseProducing()
    except Exception:  # noqa: BLE001 - not a producer: nothing to stop reading
        pass
    producer = _AbortWhenFlushed(transport, clock)
    producer.registering = True
    try:
        transport.registerProducer(producer, False)
    except RuntimeError:
        # A producer is still registered (the caller did not unregister it).
        transport.abortConnection()
        return
    finally:
        producer.registering = False
    # Twisted asks a pull producer for data when a write empties its
    # buffer; writing now (IWriteDescriptor.doWrite) makes that happen at
    # once when everything fits in the socket, else as soon as it drains.
    doWrite = getattr(transport, "doWrite", None)
    if doWrite is not None and not producer.done:
        if doWrite() is not None:
            transport.abortConnection()


def _unsent(transport: Any) -> int:
    """
    Bytes the kernel still holds for C{transport}'s socket (Linux SIOCOUTQ),
    or 0 when it cannot tell.
    """
    try:
        fd = transport.getHandle().fileno()
        buf = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])
    except Exception:  # noqa: BLE001 - no socket, closed, not Linux
        return 0


@implementer(IPullProducer)
class _AbortWhenFlushed:
    """
    A one-shot pull producer: Twisted asks it for data when the transport's
    buffer is empty, which is when it aborts the transport (after the
    kernel sent what it holds, when a clock is given).
    """

    #: Set while C{registerProducer} runs: Twisted then asks a pull
    #: producer for data whatever its buffer holds.
    registering = False
    done = False

    def __init__(self, transport: Any, clock: IReactorTime | None) -> None:
        self._transport = transport
        self._clock = clock
        self._deadline = 0.0

    def resumeProducing(self) -> None:
        if self.done or self.registering:
            return
        self.done = True
        try:
            self._transport.unregisterProducer()
        except Exception:  # noqa: BLE001 - already gone
            pass
        clock = self._clock
        if clock is None:
            self._transport.abortConnection()
            return
        self._deadline = clock.seconds() + RESET_FLUSH_TIMEOUT
        self._waitForKernel()

    def _waitForKernel(self) -> None:
        assert self._clock is not None
        if _unsent(self._transport) and self._clock.seconds() < self._deadline:
            self._clock.callLater(_FLUSH_POLL, self._waitForKernel)
            return
        self._transport.abortConnection()

    def stopProducing(self) -> None:
        self.done = True
