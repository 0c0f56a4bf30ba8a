# -*- test-case-name: tests.test_listener -*-
"""
The local side of a forwarded port: each accepted connection opens its own
tunnel and is relayed through it.

Like Twisted's ``portforward.ProxyServer``, an accepted connection is
paused at once and reads nothing until the tunnel answers ``connected``:
what the local client sends early waits in the kernel and is delivered
once the tunnel is up.  A tunnel that fails resets that one connection and
is logged with its reason; the listener keeps serving.

Each connection is a small state machine (L{LocalProxyProtocol.state}):

- ``connecting``: paused, its tunnel being opened;
- ``relaying``: spliced to the tunnel (L{sprites_twisted.pipe});
- ``lingering``: the local client shut down its sending side.  The tunnel
  protocol has no half-close, so the tunnel stays open and the sprite's
  reply keeps being delivered until the sprite closes or nothing has
  arrived for C{lingerTimeout} seconds (then both are closed cleanly);
- ``closing``: one side is gone, the other being ended the same way (a
  clean end as a FIN or close 1000, a broken one as a reset or close 1011);
- ``done``: both are gone (the factory forgets it; the session can drain).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sprites_twisted.config import DEFAULT_LINGER_TIMEOUT
from sprites_twisted.mapping import formatTarget
from sprites_twisted.pipe import Pipe, isCleanEnd, resetAfterFlush, splice
from sprites_twisted.tracking import OpenSet
from sprites_twisted.tunnel import EarlyData

__all__ = ["LocalProxyProtocol", "LocalProxyFactory", "DEFAULT_LINGER_TIMEOUT"]

CONNECTING = "connecting"
RELAYING = "relaying"
LINGERING = "lingering"
CLOSING = "closing"
DONE = "done"


class _TunnelSide(Pipe):
    """
    The tunnel's end of the pipe; knows its local peer from the start, so
    that data arriving in the same read as ``connected`` is not lost.
    """

    def __init__(self, local: LocalProxyProtocol) -> None:
        self.peer = local
        self.local = local
        self.clock = local.factory.clock

    def dataReceived(self, data: bytes) -> None:
        self.bytesIn += len(data)
        self.local.transport.write(data)
        if self.local.state == LINGERING:
            self.local.replyArrived()

    def connectionLost(self, reason: Failure | None = None) -> None:
        Pipe.connectionLost(self, reason)
        self.local.tunnelClosed(reason)


class _TunnelSideFactory(Factory):
    noisy = False

    def __init__(self, local: LocalProxyProtocol) -> None:
        self.local = local

    def buildProtocol(self, addr: Any) -> _TunnelSide:
        return _TunnelSide(self.local)


#: The end line of a connection, and the same after a linger that ran out.
_ENDED = (
    "connection from {peer} to {sprite} {target} ended: "
    "{sent} bytes sent, {received} bytes received, {duration:.3f} s"
)
_ENDED_AFTER_LINGER = _ENDED + ", then closed after {linger:g} s without more of the reply"


@implementer(IHalfCloseableProtocol)
class LocalProxyProtocol(Pipe):
    """
    One accepted local connection, relayed through its own tunnel.

    :ivar state: ``connecting``, ``relaying``, ``lingering``, ``closing``
        or ``done`` (see the module docstring).
    """

    log = Logger()
    factory: LocalProxyFactory
    # An accepted TCP connection: ITCPTransport, IPushProducer and IConsumer.
    transport: Any
    state = CONNECTING
    _connecting: Deferred[Any] | None = None
    _linger: IDelayedCall | None = None
    _localGone = False
    _tunnelGone = True
    _failed = False
    _brokenBy: Failure | None = None
    _localEnd: Failure | None = None
    _aborted = False
    _lingerExpired = False
    _lingerStarted: float | None = None

    _early: EarlyData | None = None
    _earlyPaused = False

    def connectionMade(self) -> None:
        factory = self.factory
        self.clock = factory.clock
        endpoint: Any = factory.endpoint
        if getattr(endpoint, "earlyData", False) and hasattr(endpoint, "connectEarly"):
            # Read what the client sends at once and send it right behind
            # the init (one round trip); stop reading once the buffer is full.
            self._early = EarlyData()
        else:
            self.transport.pauseProducing()
        setKeepAlive = getattr(self.transport, "setTcpKeepAlive", None)
        if setKeepAlive is not None:
            setKeepAlive(True)
        self._started = factory.clock.seconds()
        factory.connectionStarted(self)
        if self._early is not None:
            d = endpoint.connectEarly(_TunnelSideFactory(self), self._early)
        else:
            d = endpoint.connect(_TunnelSideFactory(self))
        self._connecting = d
        d.addCallbacks(self._tunnelUp, self._tunnelFailed)
        d.addErrback(lambda f: self.log.failure("Unexpected error in a local connection", f))

    def dataReceived(self, data: bytes) -> None:
        if self.state == CONNECTING:
            early = self._early
            if early is None:  # pragma: no cover - paused while connecting
                return
            self.bytesIn += len(data)
            early.write(data)
            if early.full and not self._earlyPaused:
                self._earlyPaused = True
                self.transport.pauseProducing()
            return
        Pipe.dataReceived(self, data)

    # The tunnel

    def _tunnelUp(self, tunnel: _TunnelSide) -> None:
        self._connecting = None
        self._tunnelGone = False
        if self._localGone:
            # The local client went away while the tunnel was opening.
            self.state = CLOSING
            if isCleanEnd(self._localEnd):
                tunnel.transport.loseConnection()
            else:
                resetAfterFlush(tunnel.transport, self.clock)
            return
        self.state = RELAYING
        splice(self, tunnel)
        if self._early is None or self._earlyPaused:
            self.transport.resumeProducing()

    def _tunnelFailed(self, failure: Failure) -> None:
        self._connecting = None
        if self._localGone and failure.check(CancelledError):
            self._maybeDone()
            return
        self._failed = True
        self.log.warn(
            "tunnel from {peer} to {sprite} {target} failed: {error}",
            error=failure.getErrorMessage(),
            **self._where(),
        )
        self.state = CLOSING
        if not self._localGone:
            # A refusal is an error for the local program, not an end of
            # stream: reset its connection.
            resetAfterFlush(self.transport, None)
        self._maybeDone()

    def tunnelClosed(self, reason: Failure | None) -> None:
        """
        The tunnel is gone (its side of the pipe has already ended ours, the
        same way: cleanly or as a reset).
        """
        self._tunnelGone = True
        if not isCleanEnd(reason) and not self._lingerExpired:
            self._brokenBy = reason
        if self.state in (RELAYING, LINGERING):
            self.state = CLOSING
        self._maybeDone()

    def abort(self) -> None:
        """
        Close this connection and its tunnel now, without waiting.
        """
        self._aborted = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.abortConnection()
        if self.transport is not None:
            self.transport.abortConnection()

    # Half-close

    def readConnectionLost(self) -> None:
        """
        The local client will send nothing more.  Keep the tunnel to deliver
        the reply, until the sprite closes or it goes quiet.
        """
        if self.state != RELAYING:
            return
        self.state = LINGERING
        self._lingerStarted = self.factory.clock.seconds()
        self._linger = self.factory.clock.callLater(self.factory.lingerTimeout, self._lingerDone)

    def writeConnectionLost(self) -> None:
        """
        The local client will read nothing more: end the connection.
        """
        self.transport.loseConnection()

    def replyArrived(self) -> None:
        """
        Data from the sprite: a lingering connection waits longer.
        """
        if self._linger is not None and self._linger.active():
            self._linger.reset(self.factory.lingerTimeout)

    def _lingerDone(self) -> None:
        self._linger = None
        if self.state != LINGERING:
            return
        self._lingerExpired = True
        self.transport.loseConnection()

    # The local connection

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._localGone = True
        self._localEnd = reason
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self.state in (RELAYING, LINGERING):
            self.state = CLOSING
        Pipe.connectionLost(self, reason)
        self._maybeDone()

    def _maybeDone(self) -> None:
        """
        Report the connection ended once both the local socket and the
        tunnel are gone (so that draining really leaves nothing open).
        """
        if self.state == DONE or not self._localGone or not self._tunnelGone:
            return
        if self._connecting is not None:
            return
        self.state = DONE
        if not self._failed:
            peer = self.peer
            counts: dict[str, float] = {
                "sent": self.bytesIn,
                "received": peer.bytesIn if peer is not None else 0,
            }
            if self._brokenBy is not None and not self._aborted:
                self.log.warn(
                    "tunnel from {peer} to {sprite} {target} broke: {error} "
                    "({sent} bytes sent, {received} bytes received)",
                    error=self._brokenBy.getErrorMessage(),
                    **counts,
                    **self._where(),
                )
            else:
                ended = _ENDED
                end = self.factory.clock.seconds()
                if self._lingerExpired and self._lingerStarted is not None:
                    # A linger that ran out (no more of a reply after a
                    # half-close) is not part of the connection's duration;
                    # it is told in the same line, so that a connection
                    # costs one log event.
                    ended, end = _ENDED_AFTER_LINGER, self._lingerStarted
                    counts["linger"] = self.factory.lingerTimeout
                self.log.info(ended, duration=end - self._started, **counts, **self._where())
        self.factory.connectionEnded(self)

    def _where(self) -> dict[str, str]:
        """
        The log fields naming this connection: local peer, sprite, target.
        """
        return {
            "peer": _describe(self.transport.getPeer() if self.transport else None),
            "sprite": self.factory.spriteName,
            "target": self.factory.target,
        }


def _describe(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return formatTarget(str(host), port)


class LocalProxyFactory(Factory):
    """
    Accepts local connections for one forwarded port and tracks the open
    ones, so that a session can drain and close them.

    :param endpoint: where each connection's tunnel comes from (usually a
        L{sprites_twisted.endpoint.SpriteProxyEndpoint}).
    """

    protocol = LocalProxyProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        spriteName: str,
        target: str,
        lingerTimeout: float = DEFAULT_LINGER_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.spriteName = spriteName
        self.target = target
        self.lingerTimeout = lingerTimeout
        self.connections = OpenSet()

    def connectionStarted(self, proto: LocalProxyProtocol) -> None:
        self.connections.add(proto)

    def connectionEnded(self, proto: LocalProxyProtocol) -> None:
        self.connections.discard(proto)

    def whenIdle(self) -> Deferred[None]:
        """
        A Deferred that fires when no connection is open.
        """
        return self.connections.whenEmpty()

    def abortAll(self) -> None:
        """
        Close every open connection now (their tunnels close with them).
        """
        for proto in list(self.connections):
            proto.abort()
