# -*- test-case-name: tests.test_keepalive -*-
"""
Liveness of a tunnel: WebSocket pings on the reactor's clock.

The Sprites API sends no pings on proxy sockets, and a path that dies
(a sprite that pauses, a NAT that forgets, a laptop that sleeps) sends no
FIN either: without pings a tunnel and its local connection would hang
forever.  As the official SDKs' other sockets do, a L{Keepalive} pings each
of its connections every C{interval} seconds and declares one dead when no
pong has come for C{misses} intervals (15 s and 45 s by default).
Autobahn's own auto-ping runs on the global reactor, not the one we are
given, so it stays off.

One L{Keepalive} serves every tunnel of a client (its endpoints share it)
with a single timer of the reactor: thousands of idle tunnels cost one
C{DelayedCall}, not one each.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sprites_twisted.config import DEFAULT_KEEPALIVE_INTERVAL

__all__ = ["DEFAULT_KEEPALIVE_INTERVAL", "KEEPALIVE_MISSES", "Keepalive", "Pinged"]

#: Intervals without a pong after which a tunnel is dead (45 s by default).
KEEPALIVE_MISSES = 3

# Clock readings this close count as equal (float sums of intervals).
_EPSILON = 1e-9


class Pinged(Protocol):
    """
    A connection a L{Keepalive} looks after.
    """

    def sendPing(self) -> None:
        """
        Send one ping now.
        """

    def keepaliveDead(self, reason: str) -> None:
        """
        No pong came in time; C{reason} says for how long.  The member is
        no longer looked after when this is called.
        """


class Keepalive:
    """
    Pings each started member every C{interval} seconds (the first one
    C{interval} seconds after L{start}) and calls its C{keepaliveDead} once,
    instead of pinging, when no pong arrived within C{misses * interval}
    seconds of the last one (or of L{start}).

    A member is either I{idle} (never started, stopped, or dead) or
    I{running} (L{running}).  One reactor timer serves all members: it is
    pending exactly while a member is running.  An interval of 0 turns
    pings off (L{start} does nothing).  A member whose C{sendPing} or
    C{keepaliveDead} raises is logged and does not disturb the others.
    """

    __slots__ = ("_clock", "_interval", "_misses", "_due", "_lastPong", "_call")

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        interval: float = DEFAULT_KEEPALIVE_INTERVAL,
        misses: int = KEEPALIVE_MISSES,
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._misses = misses
        # Running members, in the order of their next ping (every member's
        # next ping is at most one interval away, and a member pinged goes
        # to the end, so insertion order is time order).
        self._due: OrderedDict[Pinged, float] = OrderedDict()
        self._lastPong: dict[Pinged, float] = {}
        self._call: IDelayedCall | None = None

    @property
    def interval(self) -> float:
        """
        Seconds between pings (0: none).  Fixed: the members' schedule
        depends on it.
        """
        return self._interval

    @property
    def count(self) -> int:
        """
        The number of running members.
        """
        return len(self._due)

    def running(self, member: Pinged) -> bool:
        """
        Whether C{member} is being pinged.
        """
        return member in self._due

    def start(self, member: Pinged) -> None:
        """
        Start pinging C{member} (no-op when the interval is 0 or it is
        already running).
        """
        if self._interval <= 0 or member in self._due:
            return
        now = self._clock.seconds()
        self._lastPong[member] = now
        self._due[member] = now + self._interval
        self._schedule(now)

    def pong(self, member: Pinged) -> None:
        """
        A pong (or any sign of life) arrived from C{member}.
        """
        if member in self._lastPong:
            self._lastPong[member] = self._clock.seconds()

    def stop(self, member: Pinged) -> None:
        """
        Stop pinging C{member}; idempotent.
        """
        if self._due.pop(member, None) is not None:
            del self._lastPong[member]
            if not self._due:
                self._cancel()

    def _schedule(self, now: float) -> None:
        """
        Make the timer fire at the first member's next ping.
        """
        if not self._due:
            self._cancel()
            return
        first = next(iter(self._due.values()))
        call = self._call
        if call is None:
            self._call = self._clock.callLater(max(0.0, first - now), self._tick)
        elif call.getTime() > first + _EPSILON:
            call.reset(max(0.0, first - now))

    def _cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _tick(self) -> None:
        self._call = None
        now = self._clock.seconds()
        limit = self._misses * self._interval - _EPSILON
        nextPing = now + self._interval
        due, lastPong = self._due, self._lastPong
        while due:
            member, when = next(iter(due.items()))
            if when > now + _EPSILON:
                break
            silent = now - lastPong[member]
            try:
                if silent >= limit:
                    del due[member], lastPong[member]
                    member.keepaliveDead(f"no answer to pings for {silent:g} s")
                else:
                    due.move_to_end(member)
                    due[member] = nextPing
                    member.sendPing()
            except Exception:
                self.log.failure("keepalive of {member!r} failed", member=member)
        self._schedule(now)
