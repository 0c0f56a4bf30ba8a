# -*- test-case-name: tests.test_warm -*-
"""
Warm tunnels: upgraded WebSockets kept ready for the next connection.

The upgrade does not depend on the target (the URL names the sprite; only
the init names host and port), so a client can upgrade a WebSocket before
any local connection needs it and save that round trip (TCP, TLS and the
HTTP upgrade: two or more round trips) when one does.  The rules:

- spares are made only after a connection used a tunnel (warm or cold), up
  to C{size} per sprite, so an idle forwarder holds no WebSocket and never
  keeps a sprite awake; not while that connection is being set up.  Where
  the API is near (its init answered within L{DISTANT_ROUND_TRIP}: a local
  sprite server, a LAN), not during its first exchange either, where the
  spare's upgrade would compete with it for the CPU: in the reactor turn
  after its tunnel delivered the first bytes from the sprite (once they are
  written on), or L{REFILL_WAIT} seconds after it answered if none came
  sooner.  Where it is distant (the internet), as soon as it answered: the
  upgrade then costs round trips, not CPU shared with that exchange
  (L{WarmPool.usedBy}).  A tunnel whose target was refused is replaced at
  once, and none when the API failed the connection (unreachable, upgrade
  refused, timed out: a spare would fail the same way);
- a spare unused for C{idleTimeout} seconds is closed with 1000;
- a spare the server closed is dropped from the pool; one that dies after
  being claimed, before answering the init, is retried once on a fresh
  tunnel by the endpoint (L{sprites_twisted.tunnel.Tunnel.retry});
- L{WarmPool.close} closes every spare (sessions call it when they stop).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sprites_twisted.config import DEFAULT_PREWARM, DEFAULT_PREWARM_IDLE
from sprites_twisted.tunnel import CLOSED, SPARE, Tunnel

__all__ = [
    "DEFAULT_PREWARM",
    "DEFAULT_PREWARM_IDLE",
    "DISTANT_ROUND_TRIP",
    "REFILL_WAIT",
    "WarmPool",
]

#: Seconds after a used tunnel answered at which its replacement is opened
#: if no bytes from the sprite came sooner (a client-speaks-first protocol
#: whose client is still silent): long enough for a first exchange over
#: loopback or a LAN, short against how long a spare takes to upgrade
#: over the internet.
REFILL_WAIT = 0.05

#: A used tunnel whose init took at least this many seconds to be answered
#: has its replacement opened at once (L{WarmPool.usedBy}): that far away,
#: the spare's upgrade costs round trips, which waiting for the first
#: exchange would add to, more than CPU shared with that exchange.
DISTANT_ROUND_TRIP = 0.005


class WarmPool:
    """
    The spares of one sprite.

    :param size: how many spares to keep (0: none, the pool is off).
    :param idleTimeout: seconds an unused spare is kept.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        spriteName: str,
        size: int = DEFAULT_PREWARM,
        idleTimeout: float = DEFAULT_PREWARM_IDLE,
    ) -> None:
        self._clock = clock
        self.spriteName = spriteName
        self.size = size
        self.idleTimeout = idleTimeout
        self._ready: list[Tunnel] = []
        self._upgrading: set[Tunnel] = set()
        self._expiry: dict[Tunnel, IDelayedCall] = {}
        #: Refills waiting for a connection's first bytes (L{usedBy}): their
        #: timer, and what takes their first-bytes hook out.
        self._pending: dict[object, tuple[IDelayedCall, Callable[[], None]]] = {}

    def __repr__(self) -> str:
        return f"<WarmPool {self.spriteName}: {len(self._ready)} ready, {len(self._upgrading)} upgrading>"

    @property
    def ready(self) -> int:
        """
        How many spares are ready now.
        """
        return len(self._ready)

    def take(self) -> Tunnel | None:
        """
        A ready spare for a connection, or C{None}.
        """
        while self._ready:
            tunnel = self._ready.pop(0)
            self._cancelExpiry(tunnel)
            channel = tunnel.channel
            if tunnel.state == SPARE and channel is not None and channel.isOpen():
                self.log.debug("using a warm tunnel to {sprite}", sprite=self.spriteName)
                return tunnel
        return None

    def used(self, openTunnel: Callable[[], Tunnel]) -> None:
        """
        A connection just used a tunnel: top the pool up to C{size} with
        tunnels from C{openTunnel} (which upgrades one, unclaimed).
        """
        missing = self.size - len(self._ready) - len(self._upgrading)
        for _ in range(missing):
            tunnel = openTunnel()
            if tunnel.state == CLOSED:  # the connection failed at once
                continue
            tunnel.onSpare = self._spareReady
            tunnel.onSpareLost = self._spareLost
            self._upgrading.add(tunnel)

    def usedBy(self, tunnel: Tunnel, openTunnel: Callable[[], Tunnel]) -> None:
        """
        A connection got C{tunnel}, which answered: L{used}, in the reactor
        turn after the tunnel delivered its first bytes from the sprite (a
        reply, or a server's greeting), or L{REFILL_WAIT} seconds from now,
        whichever comes first (only the latter if the tunnel is no longer
        relaying); not at all if the pool is closed before.  At once if its
        init took L{DISTANT_ROUND_TRIP} or more to be answered (an API over
        the internet): the spare is then ready a round trip sooner, and its
        upgrade is served by a machine other than this one.
        """
        if self._clock.seconds() - tunnel.initSent >= DISTANT_ROUND_TRIP:
            self.used(openTunnel)
            return
        key = object()

        def refill() -> None:
            entry = self._pending.pop(key, None)
            if entry is None:  # done already, or the pool was closed
                return
            _drop(entry)
            self.used(openTunnel)

        call = self._clock.callLater(REFILL_WAIT, refill)

        def firstData() -> None:
            # In the reactor's next turn, not now: the bytes are still to be
            # written on, and the spare's connect would go first.
            if call.active():
                call.reset(0)

        self._pending[key] = (call, tunnel.notifyFirstData(firstData))

    def close(self) -> None:
        """
        Close every spare now (1000), and forget those still upgrading
        (they close as soon as they are up) and the refills still waiting.
        """
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            _drop(entry)
        spares = self._ready + list(self._upgrading)
        self._ready, self._upgrading = [], set()
        for tunnel in spares:
            self._cancelExpiry(tunnel)
            tunnel.onSpare = _closeAtOnce
            tunnel.onSpareLost = None
            tunnel.closeSpare()
        if spares:
            self.log.debug(
                "closed {count} warm tunnel(s) to {sprite}",
                count=len(spares),
                sprite=self.spriteName,
            )

    def _spareReady(self, tunnel: Tunnel) -> None:
        self._upgrading.discard(tunnel)
        self._ready.append(tunnel)
        self._expiry[tunnel] = self._clock.callLater(self.idleTimeout, self._expire, tunnel)
        self.log.debug("a warm tunnel to {sprite} is ready", sprite=self.spriteName)

    def _spareLost(self, tunnel: Tunnel) -> None:
        self._upgrading.discard(tunnel)
        if tunnel in self._ready:
            self._ready.remove(tunnel)
        self._cancelExpiry(tunnel)
        self.log.debug("a warm tunnel to {sprite} was closed", sprite=self.spriteName)

    def _expire(self, tunnel: Tunnel) -> None:
        self._expiry.pop(tunnel, None)
        if tunnel in self._ready:
            self._ready.remove(tunnel)
            self.log.debug(
                "closing a warm tunnel to {sprite}, unused for {idle:g} s",
                sprite=self.spriteName,
                idle=self.idleTimeout,
            )
            tunnel.onSpareLost = None
            tunnel.closeSpare()

    def _cancelExpiry(self, tunnel: Tunnel) -> None:
        call = self._expiry.pop(tunnel, None)
        if call is not None and call.active():
            call.cancel()


def _drop(entry: tuple[IDelayedCall, Callable[[], None]]) -> None:
    """
    Take a waiting refill's timer and first-bytes hook out.
    """
    call, unhook = entry
    if call.active():
        call.cancel()
    unhook()


def _closeAtOnce(tunnel: Tunnel) -> None:
    tunnel.closeSpare()
