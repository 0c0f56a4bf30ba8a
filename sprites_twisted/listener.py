# -*- test-case-name: tests.test_listener -*-
"""
The local side of a forwarded port: each accepted connection opens its own
tunnel and is relayed through it.

Like Twisted's ``portforward.ProxyServer``, an accepted connection is
paused at once and reads nothing until the tunnel answers ``connected``:
what the local client sends early waits in the kernel and is delivered
once the tunnel is up.  A tunnel that fails closes that one connection and
is logged with its reason; the listener keeps serving.

There is no half-close in the tunnel protocol.  When the local client shuts
down its sending side we keep the tunnel open and keep delivering the
sprite's reply until the sprite closes or nothing has arrived for
C{lingerTimeout} seconds (the Go SDK drops the reply in that case).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
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

from sprites_twisted.mapping import formatTarget
from sprites_twisted.relay import OpenSet, Pipe, splice

__all__ = ["LocalProxyProtocol", "LocalProxyFactory", "DEFAULT_LINGER_TIMEOUT"]

#: Seconds a half-closed local connection waits for more reply data.
DEFAULT_LINGER_TIMEOUT = 2.0


class _TunnelSide(Pipe):
    """
    The tunnel's end of the pipe; knows its local peer from the start, so
    that data arriving in the same read as ``connected`` is not lost.
    """

    def __init__(self, local: LocalProxyProtocol) -> None:
        self.peer = local
        self.local = local

    def dataReceived(self, data: bytes) -> None:
        Pipe.dataReceived(self, data)
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


@implementer(IHalfCloseableProtocol)
class LocalProxyProtocol(Pipe):
    """
    One accepted local connection, relayed through its own tunnel.
    """

    log = Logger()
    factory: LocalProxyFactory
    # An accepted TCP connection: ITCPTransport, IPushProducer and IConsumer.
    transport: Any
    _connecting: Deferred[Any] | None = None
    _linger: IDelayedCall | None = None
    _lost = False
    _readClosed = False
    _failed = False
    _tunnelOpen = False
    _ended = False
    _brokenBy: Failure | None = None
    _aborted = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()
        factory = self.factory
        self._started = factory.clock.seconds()
        factory.connectionStarted(self)
        d = factory.endpoint.connect(_TunnelSideFactory(self))
        self._connecting = d
        d.addCallbacks(self._tunnelUp, self._tunnelFailed)
        d.addErrback(lambda f: self.log.failure("Unexpected error in a local connection", f))

    def _tunnelUp(self, tunnel: _TunnelSide) -> None:
        self._connecting = None
        self._tunnelOpen = True
        if self._lost:
            assert tunnel.transport is not None
            tunnel.transport.loseConnection()
            return
        splice(self, tunnel)
        assert self.transport is not None
        self.transport.resumeProducing()

    def _tunnelFailed(self, failure: Failure) -> None:
        self._connecting = None
        if self._lost and failure.check(CancelledError):
            return
        self._failed = True
        self.log.warn(
            "tunnel from {peer} to {sprite} {target} failed: {error}",
            error=failure.getErrorMessage(),
            **self._where(),
        )
        if self.transport is not None:
            self.transport.loseConnection()
        self._maybeEnded()

    def tunnelClosed(self, reason: Failure | None = None) -> None:
        """
        The tunnel's connection is gone (its side of the pipe has already
        closed ours).  C{reason} other than C{ConnectionDone} (an odd close
        code, a dropped connection, a protocol violation) is logged as a
        warning when the connection ends.
        """
        self._tunnelOpen = False
        if reason is not None and not reason.check(ConnectionDone):
            self._brokenBy = reason
        self._maybeEnded()

    def abort(self) -> None:
        """
        Close this connection and its tunnel now, without waiting.
        """
        self._aborted = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            tunnel: Any = peer.transport  # a WebSocketStreamTransport
            tunnel.abortConnection()
        if self.transport is not None:
            self.transport.abortConnection()

    # Half-close

    def readConnectionLost(self) -> None:
        """
        The local client will send nothing more.  Keep the tunnel to deliver
        the reply, until the sprite closes or it goes quiet.
        """
        self._readClosed = True
        if self.peer is None:
            # No tunnel yet (or failed): nothing to wait for.
            if self._connecting is None and self.transport is not None:
                self.transport.loseConnection()
            return
        self._armLinger()

    def writeConnectionLost(self) -> None:
        """
        The local client will read nothing more: end the connection.
        """
        if self.transport is not None:
            self.transport.loseConnection()

    def replyArrived(self) -> None:
        """
        Data from the sprite: a lingering connection waits longer.
        """
        if self._linger is not None:
            self._linger.reset(self.factory.lingerTimeout)

    def _armLinger(self) -> None:
        if self._linger is None:
            self._linger = self.factory.clock.callLater(
                self.factory.lingerTimeout, self._lingerExpired
            )

    def _lingerExpired(self) -> None:
        self._linger = None
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        Pipe.connectionLost(self, reason)
        self._maybeEnded()

    def _maybeEnded(self) -> None:
        """
        Report the connection ended once both the local socket and the
        tunnel are gone (so that draining really leaves nothing open).
        """
        if self._ended or not self._lost or self._tunnelOpen or self._connecting is not None:
            return
        self._ended = True
        if not self._failed:
            peer = self.peer
            counts = {"sent": self.bytesIn, "received": peer.bytesIn if peer is not None else 0}
            if self._brokenBy is not None and not self._aborted:
                self.log.warn(
                    "tunnel from {peer} to {sprite} {target} broke: {error} "
                    "({sent} bytes sent, {received} bytes received)",
                    error=self._brokenBy.getErrorMessage(),
                    **counts,
                    **self._where(),
                )
            else:
                self.log.info(
                    "connection from {peer} to {sprite} {target} ended: "
                    "{sent} bytes sent, {received} bytes received, {duration:.3f} s",
                    duration=self.factory.clock.seconds() - self._started,
                    **counts,
                    **self._where(),
                )
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
