# -*- test-case-name: tests.test_client -*-
"""
The Deferred entry points: L{SpritesClient} and L{Sprite}.

These are the Go SDK's ``ProxyPort``, ``ProxyPorts`` and ``ProxySocket``,
returning Deferreds.  Nothing here raises for bad input once constructed:
every error arrives as a failed Deferred naming the bad value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprites_twisted.config import (
    DEFAULT_API_URL,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_INTERFACE,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_LINGER_TIMEOUT,
    DEFAULT_PREWARM,
    DEFAULT_PREWARM_IDLE,
    checkSpriteName,
    checkToken,
    isLoopbackHost,
    parseAPIURL,
)
from sprites_twisted.endpoint import SpriteProxyEndpoint
from sprites_twisted.errors import AddressError, ConfigurationError, MappingError
from sprites_twisted.keepalive import Keepalive
from sprites_twisted.mapping import PortMapping, parseAddress
from sprites_twisted.session import ProxySession
from sprites_twisted.warm import WarmPool

__all__ = ["SpritesClient", "Sprite", "DEFAULT_KEEPALIVE_INTERVAL", "serverEndpoint"]

#: How many endpoints (distinct targets) a client keeps for reuse.
_ENDPOINT_CACHE_SIZE = 64


def serverEndpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """
    A server endpoint from a Twisted endpoint string, for
    L{SpritesClient.forward}.

    A ``unix:`` socket without ``mode=`` gets mode 0600 (only this user
    can reach the sprite through it); Twisted removes the file when the
    listener stops.

    :raises ValueError: naming the string when Twisted cannot parse it.
    """
    from twisted.internet.endpoints import serverFromString

    text = description.strip()
    if text.split(":", 1)[0].lower() == "unix" and "mode=" not in text:
        text += ":mode=600"
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, text)
        return endpoint
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"invalid listen endpoint {description!r}: {e}") from None


class SpritesClient:
    """
    Access to the sprites of one account.

    :param reactor: provides C{IReactorTCP} and C{IReactorTime}.
    :param token: the API token.  It is sent only in the ``Authorization``
        header of tunnel requests, and never logged or shown in a repr.
    :param baseURL: the API base URL.  A plain-text (``http``/``ws``) URL
        is refused unless it points at a loopback address or
        C{allowInsecure} is set.
    :param handshakeTimeout: seconds a tunnel may take to answer
        ``connected``.
    :param trustRoot: CA certificates for TLS (a PEM file path or an
        C{IOpenSSLTrustRoot}); the system trust store by default.
    :param transportEndpoint: connect to the API through this endpoint
        (tests, or a custom transport).
    :param prewarm: warm tunnels (upgraded WebSockets, not yet sent an init)
        kept per sprite once a connection used one, so that the next one
        skips the upgrade's round trips; 0 turns them off.  None are kept
        while the client is idle: see L{sprites_twisted.warm}.
    :param prewarmIdle: seconds an unused warm tunnel is kept (10).
    :param earlyData: send what a local client sends right after the init,
        without waiting for ``connected`` (one round trip to a working
        connection).  Off by default: the public API does not promise that
        a server keeps such data; the local sprite server does.
    :param keepaliveInterval: seconds between WebSocket pings on each open
        tunnel (15 by default); a tunnel with no answer for three intervals
        is dead, and its local connection is reset.  0 turns pings off.
    :param check: sessions made by this client carry a C{check} that asks
        the API about their sprite (L{checkSprite}) before a
        L{sprites_twisted.manager.ProxyManager} starts them.
    :raises ConfigurationError: for a missing/invalid token or a bad URL.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        token: str,
        baseURL: str = DEFAULT_API_URL,
        *,
        handshakeTimeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        lingerTimeout: float = DEFAULT_LINGER_TIMEOUT,
        drainTimeout: float = DEFAULT_DRAIN_TIMEOUT,
        interface: str = DEFAULT_INTERFACE,
        trustRoot: Any = None,
        allowInsecure: bool = False,
        transportEndpoint: IStreamClientEndpoint | None = None,
        keepaliveInterval: float = DEFAULT_KEEPALIVE_INTERVAL,
        check: bool = True,
        prewarm: int = DEFAULT_PREWARM,
        prewarmIdle: float = DEFAULT_PREWARM_IDLE,
        earlyData: bool = False,
    ) -> None:
        self._reactor = reactor
        self._token = checkToken(token)
        self.baseURL = baseURL.rstrip("/")
        api = parseAPIURL(self.baseURL, allowInsecure=allowInsecure)
        if not api.secure and not isLoopbackHost(api.host):
            self.log.warn(
                "the Sprites API URL {url} is not encrypted: the token and all tunnelled "
                "data travel in clear text to {host}",
                url=self.baseURL,
                host=api.host,
            )
        self.handshakeTimeout = handshakeTimeout
        self.check = check
        self.lingerTimeout = lingerTimeout
        self.drainTimeout = drainTimeout
        self.interface = interface
        self._trustRoot = trustRoot
        self._allowInsecure = allowInsecure
        self._transportEndpoint = transportEndpoint
        #: Pings every open tunnel of this client's endpoints, on one
        #: reactor timer.
        self.keepalive = Keepalive(reactor, keepaliveInterval)
        if isinstance(prewarm, bool) or not isinstance(prewarm, int) or prewarm < 0:
            raise ConfigurationError(f"prewarm {prewarm!r}: expected a whole number, 0 or more")
        self.prewarm = prewarm
        self.prewarmIdle = prewarmIdle
        self.earlyData = earlyData
        self._endpoints: dict[tuple[str, int, str, float], SpriteProxyEndpoint] = {}
        self._pools: dict[str, WarmPool] = {}

    def __repr__(self) -> str:
        return f"<SpritesClient {self.baseURL}>"

    @property
    def keepaliveInterval(self) -> float:
        """
        Seconds between pings on each open tunnel (0: none).
        """
        return self.keepalive.interval

    def sprite(self, spriteName: str) -> Sprite:
        """
        A handle on one sprite.
        """
        return Sprite(self, checkSpriteName(spriteName))

    def endpoint(
        self, spriteName: str, remotePort: int, remoteHost: str = ""
    ) -> SpriteProxyEndpoint:
        """
        An C{IStreamClientEndpoint} to C{remoteHost}:C{remotePort} in the
        sprite.

        Endpoints are stateless, so the client keeps the most recently
        used ones and hands the same object out again: repeated
        C{proxySocket} calls to one target then share one Autobahn client
        factory instead of building (and reseeding Python's global
        C{random}, which Autobahn's factory does) one per call.

        :raises SpritesError: for a bad name, port or host.
        """
        key = (spriteName, remotePort, remoteHost or "localhost", self.handshakeTimeout)
        endpoint = self._endpoints.pop(key, None)
        if endpoint is None:
            endpoint = SpriteProxyEndpoint(
                self._reactor,
                spriteName,
                remotePort,
                remoteHost or "localhost",
                token=self._token,
                apiURL=self.baseURL,
                transportEndpoint=self._transportEndpoint,
                timeout=self.handshakeTimeout,
                trustRoot=self._trustRoot,
                allowInsecure=self._allowInsecure,
                keepalive=self.keepalive,
                pool=self._pool(spriteName),
                earlyData=self.earlyData,
            )
        self._endpoints[key] = endpoint
        while len(self._endpoints) > _ENDPOINT_CACHE_SIZE:
            del self._endpoints[next(iter(self._endpoints))]
        return endpoint

    def _pool(self, spriteName: str) -> WarmPool | None:
        """
        The warm tunnels of C{spriteName}, shared by its endpoints (none when
        C{prewarm} is 0).
        """
        if not self.prewarm:
            return None
        pool = self._pools.get(spriteName)
        if pool is None:
            pool = WarmPool(self._reactor, spriteName, self.prewarm, self.prewarmIdle)
            self._pools[spriteName] = pool
        return pool

    def closeSpares(self, spriteName: str | None = None) -> None:
        """
        Close every warm tunnel now, or only those of C{spriteName} (they are
        made again after the next connection).
        """
        if spriteName is None:
            pools = list(self._pools.values())
        else:
            pool = self._pools.get(spriteName)
            pools = [pool] if pool is not None else []
        for pool in pools:
            pool.close()

    def checkSprite(self, spriteName: str) -> Deferred[dict[str, Any]]:
        """
        Ask the API about C{spriteName} (``GET /v1/sprites/{name}``), to
        know before forwarding whether the token and the name are good.

        See L{sprites_twisted.check.checkSprite} for the result and the
        errors; the handshake timeout bounds it.
        """
        from sprites_twisted.check import checkSprite

        return checkSprite(
            self._reactor,
            spriteName,
            token=self._token,
            apiURL=self.baseURL,
            trustRoot=self._trustRoot,
            allowInsecure=self._allowInsecure,
            timeout=self.handshakeTimeout,
            transportEndpoint=self._transportEndpoint,
        )

    def session(
        self,
        spriteName: str,
        mapping: PortMapping,
        *,
        interface: str | None = None,
        listenOn: IStreamServerEndpoint | str | None = None,
        announce: bool = True,
    ) -> ProxySession:
        """
        A L{ProxySession} for C{mapping}, not yet listening (add it to a
        L{ProxyManager} or call its C{listen}).

        :param listenOn: listen on this server endpoint (or endpoint
            string, see L{serverEndpoint}) instead of TCP on
            C{mapping.localPort}.
        :param announce: log the session's start and stop at info (see
            L{ProxySession.announce}).
        :raises SpritesError: for a bad name or mapping; C{ValueError}
            naming a bad endpoint string.
        """
        if not isinstance(mapping, PortMapping):
            raise MappingError(mapping, "expected a PortMapping")
        checkSpriteName(spriteName)
        description = None
        if isinstance(listenOn, str):
            description = listenOn
            listenOn = serverEndpoint(self._reactor, listenOn)
        return ProxySession(
            self._reactor,
            spriteName,
            mapping,
            self.endpoint(spriteName, mapping.remotePort, mapping.remoteHost),
            interface=interface or self.interface,
            listenOn=listenOn,
            localDescription=description,
            drainTimeout=self.drainTimeout,
            lingerTimeout=self.lingerTimeout,
            check=(lambda: self.checkSprite(spriteName)) if self.check else None,
            announce=announce,
        )

    def forward(
        self,
        spriteName: str,
        serverEndpoint: IStreamServerEndpoint | str,
        remotePort: int,
        remoteHost: str = "",
    ) -> Deferred[ProxySession]:
        """
        Forward connections accepted on C{serverEndpoint} (any Twisted
        server endpoint, or an endpoint string such as
        ``unix:/tmp/pg.sock``, ``tcp6:8080:interface=\\:\\:1`` or
        ``systemd:domain=INET:index=0``) to C{remoteHost}:C{remotePort} in
        the sprite.  Fires with the listening session.
        """
        try:
            session = self.session(
                spriteName, PortMapping(0, remotePort, remoteHost), listenOn=serverEndpoint
            )
        except BaseException:
            return defer.fail()

        def failed(failure: Failure) -> Failure:
            session.close(drainTimeout=0)
            return failure

        return session.listen().addErrback(failed)

    def proxyPort(
        self,
        spriteName: str,
        localPort: int,
        remotePort: int,
        remoteHost: str = "",
        *,
        interface: str | None = None,
    ) -> Deferred[ProxySession]:
        """
        Forward C{localPort} (0 for any free port) to C{remotePort} in the
        sprite.  Fires with the listening session.
        """
        try:
            mapping = PortMapping(localPort, remotePort, remoteHost)
        except BaseException:
            return defer.fail()
        d = self.proxyPorts(spriteName, [mapping], interface=interface)
        return d.addCallback(lambda sessions: sessions[0])

    def proxyPorts(
        self,
        spriteName: str,
        mappings: Sequence[PortMapping],
        *,
        interface: str | None = None,
    ) -> Deferred[list[ProxySession]]:
        """
        Forward several ports at once; all or nothing.

        Fires with the sessions in input order.  If any listener cannot be
        made, the sessions already made are closed and the Deferred fails
        with that error (C{CannotListenError} names the address).
        Cancelling it closes whatever it made.
        """
        try:
            mappings = list(mappings)
            seen: set[int] = set()
            for mapping in mappings:
                if not isinstance(mapping, PortMapping):
                    raise MappingError(mapping, "expected a PortMapping")
                if mapping.localPort and mapping.localPort in seen:
                    raise MappingError(
                        mapping.localPort, f"local port {mapping.localPort} is mapped twice"
                    )
                seen.add(mapping.localPort)
            sessions = [
                self.session(spriteName, mapping, interface=interface) for mapping in mappings
            ]
        except BaseException:
            return defer.fail()

        current: list[Deferred[Any]] = []

        def closeAll() -> Deferred[Any]:
            return DeferredList([s.close(drainTimeout=0) for s in sessions], consumeErrors=True)

        def cancel(d: Deferred[Any]) -> None:
            for pending in current:
                pending.cancel()
            closeAll()

        result: Deferred[list[ProxySession]] = Deferred(cancel)

        def failed(failure: Failure) -> None:
            def report(_: Any) -> None:
                if not result.called:
                    result.errback(failure)

            closeAll().addCallback(report)

        def step(index: int) -> None:
            if result.called:
                return
            if index == len(sessions):
                result.callback(list(sessions))
                return
            d = sessions[index].listen()
            current[:] = [d]
            d.addCallbacks(lambda _: step(index + 1), failed)

        step(0)
        return result

    def proxySocket(
        self,
        network: str,
        spriteName: str,
        address: str,
        protocolFactory: IProtocolFactory,
    ) -> Deferred[IProtocol]:
        """
        One tunnel to C{address} (``host:port``, ``[v6]:port``, empty host
        for localhost) in the sprite, connected to a protocol from
        C{protocolFactory}.  Only C{network="tcp"} is supported.
        """
        try:
            if network != "tcp":
                raise AddressError(network, "unsupported network; only 'tcp' is supported")
            host, port = parseAddress(address)
            endpoint = self.endpoint(spriteName, port, host)
        except BaseException:
            return defer.fail()
        return endpoint.connect(protocolFactory)

    # Issue 12: the port watch, automatic forwarding and SOCKS (the logic
    # is in sprites_twisted.portwatch, .autoforward and .socks).

    def watchPorts(
        self, spriteName: str, observer: IPortObserver, *, start: bool = True
    ) -> PortWatcher:
        """
        Watch the ports listening in the sprite: a
        L{sprites_twisted.portwatch.PortWatcher} reporting to C{observer}
        (an C{IPortObserver}), started unless C{start} is false.
        """
        from sprites_twisted.portwatch import PortWatcher

        watcher = PortWatcher(
            self._reactor,
            spriteName,
            observer,
            token=self._token,
            apiURL=self.baseURL,
            transportEndpoint=self._transportEndpoint,
            trustRoot=self._trustRoot,
            allowInsecure=self._allowInsecure,
        )
        if start:
            watcher.start()
        return watcher

    def autoForward(self, spriteName: str, **kw: Any) -> AutoForwarder:
        """
        A L{sprites_twisted.autoforward.AutoForwarder} service for the
        sprite (add it to a L{ProxyManager}); C{kw} as it takes.
        """
        from sprites_twisted.autoforward import AutoForwarder

        return AutoForwarder(self, spriteName, **kw)

    def socksFactory(self, spriteName: str, **kw: Any) -> SOCKSServerFactory:
        """
        A SOCKS server factory whose CONNECTs are tunnels into the sprite
        (L{sprites_twisted.socks.socksFactory}); listen with it on any
        server endpoint.
        """
        from sprites_twisted.socks import socksFactory

        return socksFactory(self, spriteName, self._reactor, **kw)


class Sprite:
    """
    One sprite of a L{SpritesClient}: the same calls without the name.
    """

    def __init__(self, client: SpritesClient, name: str) -> None:
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"<Sprite {self.name!r} via {self.client.baseURL}>"

    def proxyPort(
        self, localPort: int, remotePort: int, remoteHost: str = "", **kw: Any
    ) -> Deferred[ProxySession]:
        """
        See L{SpritesClient.proxyPort}.
        """
        return self.client.proxyPort(self.name, localPort, remotePort, remoteHost, **kw)

    def proxyPorts(
        self, mappings: Sequence[PortMapping], **kw: Any
    ) -> Deferred[list[ProxySession]]:
        """
        See L{SpritesClient.proxyPorts}.
        """
        return self.client.proxyPorts(self.name, mappings, **kw)

    def proxySocket(
        self, network: str, address: str, protocolFactory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        """
        See L{SpritesClient.proxySocket}.
        """
        return self.client.proxySocket(network, self.name, address, protocolFactory)

    def endpoint(self, remotePort: int, remoteHost: str = "") -> SpriteProxyEndpoint:
        """
        See L{SpritesClient.endpoint}.
        """
        return self.client.endpoint(self.name, remotePort, remoteHost)

    def forward(
        self, serverEndpoint: IStreamServerEndpoint | str, remotePort: int, remoteHost: str = ""
    ) -> Deferred[ProxySession]:
        """
        See L{SpritesClient.forward}.
        """
        return self.client.forward(self.name, serverEndpoint, remotePort, remoteHost)

    def check(self) -> Deferred[dict[str, Any]]:
        """
        See L{SpritesClient.checkSprite}.
        """
        return self.client.checkSprite(self.name)

    # Issue 12

    def autoForward(self, **kw: Any) -> AutoForwarder:
        """
        See L{SpritesClient.autoForward}.
        """
        return self.client.autoForward(self.name, **kw)

    def socksFactory(self, **kw: Any) -> SOCKSServerFactory:
        """
        See L{SpritesClient.socksFactory}.
        """
        return self.client.socksFactory(self.name, **kw)


if TYPE_CHECKING:  # issue 12's types, imported lazily at run time
    from sprites_twisted.autoforward import AutoForwarder
    from sprites_twisted.portwatch import IPortObserver, PortWatcher
    from sprites_twisted.socks import SOCKSServerFactory
