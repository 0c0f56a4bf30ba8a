# -*- test-case-name: tests.test_keepalive -*-
"""
Liveness of a tunnel: WebSocket pings on the reactor's clock.

The Sprites API sends no pings on proxy sockets, and a path that dies
(a sprite that pauses, a NAT that forgets, a laptop that sleeps) sends no
FIN either: without pings a tunnel and its local connection would hang
forever.  As the official SDKs' other sockets do, a L{Keepalive} sends a
ping every C{interval} seconds and declares the tunnel dead when no pong
has come for C{misses} intervals (15 s and 45 s by default).  Autobahn's
own auto-ping runs on the global reactor, not the one we are given, so it
stays off.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sprites_twisted.config import DEFAULT_KEEPALIVE_INTERVAL

__all__ = ["DEFAULT_KEEPALIVE_INTERVAL", "KEEPALIVE_MISSES", "Keepalive"]

#: Intervals without a pong after which a tunnel is dead (45 s by default).
KEEPALIVE_MISSES = 3


class Keepalive:
    """
    Pings every C{interval} seconds through C{sendPing}; calls C{onDead}
    with a reason once, when no pong arrived within C{misses * interval}
    seconds of the last one (or of L{start}).

    States: ``idle`` (not started, or stopped) and ``running``.
    """

    __slots__ = (
        "_clock",
        "interval",
        "_sendPing",
        "_onDead",
        "_misses",
        "_call",
        "_lastPong",
        "state",
    )

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        sendPing: Callable[[], None],
        onDead: Callable[[str], None],
        misses: int = KEEPALIVE_MISSES,
    ) -> None:
        self._clock = clock
        self.interval = interval
        self._sendPing = sendPing
        self._onDead = onDead
        self._misses = misses
        self._call: IDelayedCall | None = None
        self._lastPong = 0.0
        self.state = "idle"

    def start(self) -> None:
        """
        Start pinging (no-op when the interval is 0 or already running).
        """
        if self.interval <= 0 or self.state == "running":
            return
        self.state = "running"
        self._lastPong = self._clock.seconds()
        self._call = self._clock.callLater(self.interval, self._tick)

    def pong(self) -> None:
        """
        A pong (or any sign of life) arrived.
        """
        self._lastPong = self._clock.seconds()

    def stop(self) -> None:
        """
        Stop pinging; idempotent.
        """
        self.state = "idle"
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _tick(self) -> None:
        self._call = None
        if self.state != "running":
            return
        silent = self._clock.seconds() - self._lastPong
        limit = self._misses * self.interval
        if silent >= limit - 1e-9:
            self.stop()
            self._onDead(f"no answer to pings for {silent:g} s")
            return
        self._sendPing()
        self._call = self._clock.callLater(self.interval, self._tick)
