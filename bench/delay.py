"""
The WAN mode's delay relay: a TCP relay that makes loopback look like a
network with a round trip time of C{rtt} (netem is absent on these
machines, so this is done in user space).

- Each chunk read from one side is written to the other C{rtt / 2} after it
  arrived, in order, in both directions (bandwidth is not limited).
- Nothing the connecting side sends leaves before one C{rtt} has passed
  since it connected: on loopback ``connect()`` returns at once, where on a
  network it returns after the SYN / SYN-ACK round trip, so a client's first
  bytes arrive 1.5 RTT after it started to connect.  A direct TCP exchange
  through the relay (connect, send, first byte back) thus takes two RTTs,
  the lower limit the issue names.
- A close (FIN) travels like data: C{rtt / 2} after the last byte before
  it; a reset likewise, as a reset.

Timers on these virtual machines wake up late, by 0.2 to 1 ms (more after
longer sleeps), which would add that much to every hop; so a release is
scheduled L{SPIN} early and the relay spins for the rest (the WAN mode sends
a few chunks per connection: this costs little CPU).  It runs on Twisted's
select reactor, whose timeout has microseconds (``epoll`` rounds up to whole
milliseconds).

Run as ``python bench/roles.py delay RTT_MICROSECONDS UPSTREAM_PORT``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

#: Stop reading a side while this many of its bytes wait in the relay.
HIGH_WATER = 4 << 20
LOW_WATER = 1 << 20
#: Seconds before its time that a release wakes up, to spin the rest.
SPIN = 0.0015

_CLOSE = "close"
_RESET = "reset"


class Direction:
    """
    One direction of one relayed connection: a queue of chunks, each with
    the time it may leave, released in order by one timer.

    :param clock: an C{IReactorTime}.
    :param delay: seconds each chunk is held.
    :param notBefore: no chunk leaves before this time plus C{delay}.
    :param source: the transport the chunks come from (paused while too
        much waits).
    """

    def __init__(self, clock: Any, delay: float, notBefore: float, source: Any) -> None:
        self._clock = clock
        self._delay = delay
        self._notBefore = notBefore
        self._source = source
        self._queue: deque[tuple[float, bytes | str]] = deque()
        self._queued = 0
        self._paused = False
        self._timer: Any = None
        self._sink: Any = None

    def push(self, item: bytes | str) -> None:
        """Queue C{item}: bytes, or L{_CLOSE} / L{_RESET} for the end."""
        due = max(self._clock.seconds(), self._notBefore) + self._delay
        self._queue.append((due, item))
        if isinstance(item, bytes):
            self._queued += len(item)
            if self._queued > HIGH_WATER and not self._paused:
                self._paused = True
                self._source.pauseProducing()
        self._schedule()

    def start(self, sink: Any) -> None:
        """Write to C{sink} from now on (once the far side is connected)."""
        self._sink = sink
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._queue.clear()

    def _schedule(self) -> None:
        if self._timer is None and self._sink is not None and self._queue:
            wait = max(0.0, self._queue[0][0] - self._clock.seconds() - SPIN)
            self._timer = self._clock.callLater(wait, self._release)

    def _release(self) -> None:
        self._timer = None
        due = self._queue[0][0]
        now = self._clock.seconds()
        while now < due:
            now = self._clock.seconds()
        chunks = []
        while self._queue and self._queue[0][0] <= now:
            _, item = self._queue.popleft()
            if isinstance(item, bytes):
                chunks.append(item)
                self._queued -= len(item)
                continue
            if chunks:
                self._sink.writeSequence(chunks)
            if item == _RESET:
                self._sink.abortConnection()
            else:
                self._sink.loseConnection()
            self.stop()
            return
        if chunks:
            self._sink.writeSequence(chunks)
        if self._paused and self._queued < LOW_WATER:
            self._paused = False
            self._source.resumeProducing()
        self._schedule()


class _Side(Protocol):
    outgoing: Direction

    def dataReceived(self, data: bytes) -> None:
        self.outgoing.push(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        clean = reason is None or reason.check(ConnectionDone) is not None
        self.outgoing.push(_CLOSE if clean else _RESET)


class _Upstream(_Side):
    def __init__(self, accepted: _Accepted) -> None:
        self.accepted = accepted

    def connectionMade(self) -> None:
        factory = self.accepted.factory
        self.transport.setTcpNoDelay(True)
        self.outgoing = Direction(factory.reactor, factory.rtt / 2, 0.0, self.transport)
        self.outgoing.start(self.accepted.transport)
        self.accepted.outgoing.start(self.transport)


class _UpstreamFactory(ClientFactory):
    noisy = False

    def __init__(self, accepted: _Accepted) -> None:
        self.accepted = accepted

    def buildProtocol(self, addr: Any) -> _Upstream:
        return _Upstream(self.accepted)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.accepted.outgoing.stop()
        self.accepted.transport.abortConnection()


class _Accepted(_Side):
    factory: DelayFactory

    def connectionMade(self) -> None:
        reactor, rtt = self.factory.reactor, self.factory.rtt
        self.outgoing = Direction(reactor, rtt / 2, reactor.seconds() + rtt, self.transport)
        self.transport.setTcpNoDelay(True)
        reactor.connectTCP("127.0.0.1", self.factory.upstreamPort, _UpstreamFactory(self))


class DelayFactory(Factory):
    """
    Accept connections and relay each to C{upstreamPort} on 127.0.0.1
    with C{rtt} seconds of round trip added (see the module docstring).
    """

    noisy = False
    protocol = _Accepted

    def __init__(self, reactor: Any, rtt: float, upstreamPort: int) -> None:
        self.reactor = reactor
        self.rtt = rtt
        self.upstreamPort = upstreamPort
