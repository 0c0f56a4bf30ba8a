# -*- test-case-name: tests.test_endpoint -*-
"""
L{SpriteProxyEndpoint}: a stream client endpoint whose connections are
tunnels to a port inside a sprite (the Go SDK's ``ProxySocket``).

Anything that takes an C{IStreamClientEndpoint} (``ClientService``,
``connectProtocol``, an HTTP agent's endpoint factory...) can reach a
service inside a sprite through it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from sprites_twisted.config import APIEndpoint, checkSpriteName, checkToken, parseAPIURL, proxyPath
from sprites_twisted.errors import APIUnreachableError, TunnelTimeoutError
from sprites_twisted.mapping import checkHost, checkPort
from sprites_twisted.relay import SpriteAddress
from sprites_twisted.tunnel import AttemptFactory, TunnelAttempt, TunnelClientFactory
from sprites_twisted.wire import encodeInit

__all__ = ["SpriteProxyEndpoint", "DEFAULT_HANDSHAKE_TIMEOUT", "apiTransportEndpoint"]

#: Seconds from ``connect`` until the tunnel must have answered ``connected``.
DEFAULT_HANDSHAKE_TIMEOUT = 30.0


def apiTransportEndpoint(
    reactor: Any, api: APIEndpoint, trustRoot: Any = None, timeout: float = 30
) -> IStreamClientEndpoint:
    """
    The TCP (and, for ``https``/``wss``, verified TLS) endpoint to the API.

    TLS uses Twisted's C{optionsForClientTLS}: the chain is checked against
    C{trustRoot} (the system store by default) and the host name with
    service_identity.  IP literals skip name resolution.

    :param trustRoot: C{None} (system store), an C{IOpenSSLTrustRoot}, or
        the path of a PEM file of CA certificates.
    """
    try:
        address = ipaddress.ip_address(api.host)
    except ValueError:
        address = None
    inner: IStreamClientEndpoint
    if address is None:
        inner = HostnameEndpoint(reactor, api.host, api.port, timeout=timeout)
    elif address.version == 4:
        inner = TCP4ClientEndpoint(reactor, api.host, api.port, timeout=timeout)
    else:
        inner = TCP6ClientEndpoint(reactor, api.host, api.port, timeout=timeout)
    if not api.secure:
        return inner
    from twisted.internet.ssl import optionsForClientTLS

    return wrapClientTLS(optionsForClientTLS(api.host, trustRoot=loadTrustRoot(trustRoot)), inner)


def loadTrustRoot(trustRoot: Any) -> Any:
    """
    Turn a CA file path into a trust root; pass anything else through.
    """
    if isinstance(trustRoot, str):
        from twisted.internet.ssl import Certificate, trustRootFromCertificates

        from sprites_twisted.errors import ConfigurationError

        try:
            with open(trustRoot, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise ConfigurationError(f"cannot read CA file {trustRoot!r}: {e.strerror}") from None
        certificates = []
        marker = b"-----END CERTIFICATE-----"
        for block in pem.split(marker)[:-1]:
            certificates.append(Certificate.loadPEM(block + marker + b"\n"))
        if not certificates:
            raise ConfigurationError(f"CA file {trustRoot!r} holds no PEM certificate")
        return trustRootFromCertificates(certificates)
    return trustRoot


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
    """

    def __init__(
        self,
        reactor: Any,
        spriteName: str,
        remotePort: int,
        remoteHost: str = "localhost",
        *,
        token: str,
        apiURL: str = "https://api.sprites.dev",
        transportEndpoint: IStreamClientEndpoint | None = None,
        timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        trustRoot: Any = None,
        allowInsecure: bool = False,
        closeTimeout: float = 1.0,
        maxFramePayloadSize: int = 0,
    ) -> None:
        self._reactor = reactor
        self.spriteName = checkSpriteName(spriteName)
        self.remotePort = checkPort(remotePort)
        self.remoteHost = checkHost(remoteHost) or "localhost"
        self._token = checkToken(token)
        self._api = parseAPIURL(apiURL, allowInsecure=allowInsecure)
        self.apiURL = apiURL
        self._timeout = timeout
        self._closeTimeout = closeTimeout
        self._trustRoot = trustRoot
        if transportEndpoint is None:
            transportEndpoint = apiTransportEndpoint(reactor, self._api, trustRoot)
        self._transportEndpoint = transportEndpoint
        self._initMessage = encodeInit(self.remoteHost, self.remotePort)
        self._peerAddress = SpriteAddress(self.spriteName, self.remoteHost, self.remotePort)
        self._wsFactory = TunnelClientFactory(
            self._api.webSocketURL(proxyPath(self.spriteName)),
            self._token,
            reactor,
            maxFramePayloadSize,
        )

    def __repr__(self) -> str:
        return (
            f"<SpriteProxyEndpoint {self.spriteName} "
            f"{self._peerAddress.host}:{self.remotePort} via {self._api.describe()}>"
        )

    @property
    def url(self) -> str:
        """
        The WebSocket URL each tunnel opens.
        """
        return str(self._wsFactory.url)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Open a tunnel and connect a protocol from C{protocolFactory} to it.
        """
        try:
            return self._connect(protocolFactory)
        except BaseException:
            return defer.fail()

    def _connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        tcpConnecting: list[Deferred[Any]] = []

        def cancel(d: Deferred[Any]) -> None:
            attempt.done = True
            for pending in tcpConnecting:
                if not pending.called:
                    pending.cancel()
            attempt.abort()

        result: Deferred[IProtocol] = Deferred(cancel)
        attempt = TunnelAttempt(
            result,  # type: ignore[arg-type]
            protocolFactory,  # type: ignore[arg-type]
            self._initMessage,
            self._peerAddress,
            self._reactor,
            self._api.host,
            self._closeTimeout,
        )
        tcp = self._transportEndpoint.connect(AttemptFactory(self._wsFactory, attempt))
        tcpConnecting.append(tcp)

        def tcpFailed(f: Failure) -> None:
            if attempt.done:
                return None
            if f.check(CancelledError):
                attempt.failed(f)
            elif f.check(ConnectError) and not f.check(APIUnreachableError):
                attempt.failed(
                    Failure(APIUnreachableError(self._api.describe(), f.getErrorMessage()))
                )
            else:
                attempt.failed(f)
            return None

        tcp.addCallbacks(lambda _: None, tcpFailed)
        if self._timeout:
            timeout = self._timeout

            def timedOut(value: Any, _timeout: float) -> Any:
                if isinstance(value, Failure) and value.check(CancelledError):
                    return Failure(TunnelTimeoutError(timeout))
                return value

            result.addTimeout(timeout, self._reactor, onTimeoutCancel=timedOut)
        return result
