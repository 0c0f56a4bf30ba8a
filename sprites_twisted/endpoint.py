# -*- test-case-name: tests.test_endpoint -*-
"""
L{SpriteProxyEndpoint}: a stream client endpoint whose connections are
tunnels to a port inside a sprite (the Go SDK's ``ProxySocket``).

Anything that takes an C{IStreamClientEndpoint} (``ClientService``,
``connectProtocol``, an HTTP agent's endpoint factory...) can reach a
service inside a sprite through it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sprites_twisted.config import (
    DEFAULT_API_URL,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    checkSpriteName,
    checkToken,
    parseAPIURL,
    proxyPath,
)
from sprites_twisted.errors import APIUnreachableError, HandshakeError, TunnelTimeoutError
from sprites_twisted.keepalive import Keepalive
from sprites_twisted.mapping import checkHost, checkPort, formatTarget
from sprites_twisted.tls import (
    ResumingClientTLS,
    apiTransport,
    apiTransportEndpoint,
    loadTrustRoot,
)
from sprites_twisted.tunnel import AttemptFactory, EarlyData, Tunnel, TunnelClientFactory
from sprites_twisted.warm import WarmPool
from sprites_twisted.wire import encodeInit
from sprites_twisted.wsstream import SpriteAddress

__all__ = [
    "SpriteProxyEndpoint",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "apiTransportEndpoint",
    "loadTrustRoot",
]


@implementer(IStreamClientEndpoint)
class SpriteProxyEndpoint:
    """
    Connections through this endpoint are tunnels to C{remoteHost}:
    C{remotePort} inside sprite C{spriteName}.

    ``connect`` fires with the protocol once the tunnel answered
    ``connected`` (the protocol's ``connectionMade`` has run), or fails with
    a L{sprites_twisted.errors.TunnelError} subclass (always a
    C{ConnectError}).  Cancelling the Deferred aborts the attempt; after
    C{timeout} seconds it fails with L{TunnelTimeoutError}.

    :param reactor: provides C{IReactorTCP} and C{IReactorTime}.
    :param token: the API token; kept private, never logged or shown.
    :param apiURL: the API base URL (``https://api.sprites.dev``).
    :param transportEndpoint: connect through this endpoint instead of
        one made from C{apiURL} (tests, proxies, custom TLS).
    :param trustRoot: CA certificates for ``wss`` (path or trust root).
    :param allowInsecure: allow a plain-text URL to a non-loopback host.
    :param closeTimeout: seconds a closing tunnel waits for the closing
        handshake before closing its TCP connection.
    :param earlyData: tell listeners to use L{connectEarly} (see there).
    :param pool: the sprite's warm tunnels (L{sprites_twisted.warm}), shared
        by the endpoints of one sprite; none by default.
    :param keepaliveInterval: seconds between WebSocket pings on an open
        tunnel; it is dead (its stream ends as broken) after three intervals
        without a pong.  0 turns pings off.
    :param keepalive: the L{Keepalive} that pings this endpoint's tunnels,
        shared by a client's endpoints (L{sprites_twisted.client}); by
        default one of its own, with C{keepaliveInterval}, which is ignored
        when C{keepalive} is given.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        spriteName: str,
        remotePort: int,
        remoteHost: str = "localhost",
        *,
        token: str,
        apiURL: str = DEFAULT_API_URL,
        transportEndpoint: IStreamClientEndpoint | None = None,
        timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        trustRoot: Any = None,
        allowInsecure: bool = False,
        closeTimeout: float = DEFAULT_CLOSE_TIMEOUT,
        keepaliveInterval: float = DEFAULT_KEEPALIVE_INTERVAL,
        keepalive: Keepalive | None = None,
        pool: WarmPool | None = None,
        earlyData: bool = False,
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        #: Whether local connections through this endpoint send early data
        #: (L{connectEarly}); read by the listener.
        self.earlyData = earlyData
        self.spriteName = checkSpriteName(spriteName)
        self.remotePort = checkPort(remotePort)
        self.remoteHost = checkHost(remoteHost) or "localhost"
        self._token = checkToken(token)
        self._api = parseAPIURL(apiURL, allowInsecure=allowInsecure)
        self.apiURL = apiURL
        self._timeout = timeout
        self._closeTimeout = closeTimeout
        #: Pings every open tunnel of this endpoint, on one reactor timer.
        self.keepalive = (
            keepalive if keepalive is not None else Keepalive(reactor, keepaliveInterval)
        )
        self._trustRoot = trustRoot
        self._tlsSessions: ResumingClientTLS | None = None
        if transportEndpoint is None:
            transportEndpoint, self._tlsSessions = apiTransport(reactor, self._api, trustRoot)
        self._transportEndpoint = transportEndpoint
        self._initMessage = encodeInit(self.remoteHost, self.remotePort)
        self._peerAddress = SpriteAddress(self.spriteName, self.remoteHost, self.remotePort)
        self._wsFactory = TunnelClientFactory(
            self._api.webSocketURL(proxyPath(self.spriteName)),
            self._token,
            reactor,
        )

    def __repr__(self) -> str:
        return (
            f"<SpriteProxyEndpoint {self.spriteName} "
            f"{formatTarget(self._peerAddress.host, self.remotePort)} via {self._api.describe()}>"
        )

    @property
    def url(self) -> str:
        """
        The WebSocket URL each tunnel opens.
        """
        return str(self._wsFactory.url)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Open a tunnel (or take a warm one) and connect a protocol from
        C{protocolFactory} to it.
        """
        return self.connectEarly(protocolFactory, None)

    def connectEarly(
        self, protocolFactory: IProtocolFactory, early: EarlyData | None
    ) -> Deferred[IProtocol]:
        """
        L{connect}, sending C{early} data (what the local client already
        sent, and sends until the tunnel answers) right after the init,
        without waiting for ``connected``: a tunnel's set-up then takes one
        round trip.  The public API does not promise that a server keeps
        such data (the local sprite server does); a refused tunnel fails as
        without it.  The Deferred still fires once ``connected`` arrived.
        """
        try:
            return self._connect(protocolFactory, early)
        except BaseException:
            return defer.fail()

    def openTunnel(self) -> Tunnel:
        """
        Start upgrading a new tunnel to this endpoint's sprite, claimed by
        nobody yet (the warm pool's spares, and every cold connect).
        """
        tunnel = Tunnel(self._reactor, self._api.host, self._closeTimeout, self.keepalive)
        tunnel.tlsSessions = self._tlsSessions
        tcp = self._transportEndpoint.connect(AttemptFactory(self._wsFactory, tunnel))
        tunnel.tcpConnecting = tcp
        api = self._api

        def connected(result: Any) -> None:
            tunnel.tcpConnecting = None

        def failed(f: Failure) -> None:
            tunnel.tcpConnecting = None
            if f.check(ConnectError) and not f.check(APIUnreachableError, CancelledError):
                f = Failure(APIUnreachableError(api.describe(), f.getErrorMessage()))
            tunnel.tcpFailed(f)

        tcp.addCallbacks(connected, failed)
        return tunnel

    def closeSpares(self) -> None:
        """
        Close this sprite's warm tunnels (a session calls this as it stops).
        """
        if self._pool is not None:
            self._pool.close()

    def _refill(self, outcome: Any, current: list[Tunnel]) -> Any:
        """
        A connection's tunnel is settled: top the warm pool up (after the
        connection's first exchange, L{WarmPool.usedBy}; at once if the
        target was refused), unless the API itself failed (unreachable,
        refused the upgrade, timed out) or the caller cancelled, where a
        spare would fail the same way.
        """
        assert self._pool is not None
        if not isinstance(outcome, Failure):
            self._pool.usedBy(current[0], self.openTunnel)
        elif outcome.check(HandshakeError):
            self._pool.used(self.openTunnel)
        return outcome

    def _connect(
        self, protocolFactory: IProtocolFactory, early: EarlyData | None
    ) -> Deferred[IProtocol]:
        current: list[Tunnel] = []

        def cancel(d: Deferred[Any]) -> None:
            for tunnel in current:
                pending = tunnel.tcpConnecting
                if pending is not None and not pending.called:
                    pending.cancel()
                tunnel.abort()

        result: Deferred[IProtocol] = Deferred(cancel)

        def claim(tunnel: Tunnel) -> None:
            current[:] = [tunnel]
            tunnel.claim(result, protocolFactory, self._initMessage, self._peerAddress, early)

        def retry(dead: Tunnel) -> None:
            # Once, on a fresh (cold) tunnel: only a warm one is retried.
            self.log.debug(
                "a warm tunnel to {sprite} closed before answering; retrying on a fresh one",
                sprite=self.spriteName,
            )
            claim(self.openTunnel())

        spare = self._pool.take() if self._pool is not None else None
        if spare is not None:
            spare.warm = True
            spare.retry = retry
            claim(spare)
        else:
            claim(self.openTunnel())
        if self._pool is not None:
            result.addBoth(self._refill, current)
        if self._timeout:
            timeout = self._timeout

            def timedOut(value: Any, _timeout: float) -> Any:
                if isinstance(value, Failure) and value.check(CancelledError):
                    return Failure(TunnelTimeoutError(timeout))
                return value

            result.addTimeout(timeout, self._reactor, onTimeoutCancel=timedOut)
        return result
