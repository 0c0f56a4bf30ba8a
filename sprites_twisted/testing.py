# -*- test-case-name: tests.test_testing -*-
"""
Test helpers for users of sprites_twisted (and for our own tests).

- L{MemorySprite}: the real local sprite server (L{LocalSpriteServer}) and
  in-memory target services, reachable by real tunnels over
  C{twisted.test.iosim} connections.  Everything runs on one
  C{MemoryReactorClock}: no sockets, no real time.  Call L{MemorySprite.flush}
  to move bytes.
- L{FakeProxySession}: an C{IProxySession} for code that only manages
  sessions.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from zope.interface import implementer

from sprites_twisted.client import SpritesClient
from sprites_twisted.interfaces import IProxySession
from sprites_twisted.mapping import PortMapping
from sprites_twisted.server import LocalSpriteServer

__all__ = [
    "TEST_TOKEN",
    "TEST_API_URL",
    "MemoryNetwork",
    "MemoryClientEndpoint",
    "MemorySprite",
    "FakeProxySession",
]

#: The token L{MemorySprite} accepts unless told otherwise.
TEST_TOKEN = "sprites-test-token-d4c3b2a1"
#: A loopback API URL (never connected to: the transport is in memory).
TEST_API_URL = "http://127.0.0.1:8900"


class MemoryNetwork:
    """
    The in-memory connections made by L{MemoryClientEndpoint}s, pumped
    together.
    """

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.pumps: list[iosim.IOPump] = []

    def flush(self, maxRounds: int = 100000) -> None:
        """
        Deliver bytes and disconnections on every connection until nothing
        moves (running calls due now on the reactor in between).
        """
        for _ in range(maxRounds):
            self.reactor.advance(0)
            moved = False
            for pump in list(self.pumps):
                if pump.pump(advanceClock=False):
                    moved = True
            self.pumps = [
                p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)
            ]
            if not moved:
                return
        raise RuntimeError("MemoryNetwork.flush: still moving after maxRounds")


@implementer(IStreamClientEndpoint)
class MemoryClientEndpoint:
    """
    Connects, in memory, to a protocol built by C{serverFactory}; refuses
    (C{ConnectionRefusedError}) when C{serverFactory} is C{None}.
    """

    def __init__(self, network: MemoryNetwork, serverFactory: IProtocolFactory | None) -> None:
        self.network = network
        self.serverFactory = serverFactory
        self.connections: list[iosim.IOPump] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.serverFactory is None:
            return defer.fail(ConnectionRefusedError())
        clientAddress = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.network.pumps))
        serverAddress = IPv4Address("TCP", "127.0.0.1", 8900)
        server = self.serverFactory.buildProtocol(clientAddress)
        client = protocolFactory.buildProtocol(serverAddress)
        if server is None or client is None:
            return defer.fail(ConnectionRefusedError("no protocol"))
        serverTransport = iosim.FakeTransport(server, True, serverAddress, clientAddress)
        clientTransport = iosim.FakeTransport(client, False, clientAddress, serverAddress)
        pump = iosim.connect(server, serverTransport, client, clientTransport, greet=False)
        self.network.pumps.append(pump)
        self.connections.append(pump)
        return defer.succeed(client)


class MemorySprite:
    """
    A local sprite server with in-memory targets, reachable in memory.

    >>> sprite = MemorySprite()
    >>> sprite.addTarget(5432, myFactory)
    >>> client = sprite.client()
    >>> d = client.proxySocket("tcp", "demo", "localhost:5432", clientFactory)
    >>> sprite.flush()

    :param serverOptions: passed to L{LocalSpriteServer}.
    """

    def __init__(
        self,
        reactor: MemoryReactorClock | None = None,
        token: str = TEST_TOKEN,
        **serverOptions: Any,
    ) -> None:
        self.reactor = reactor if reactor is not None else MemoryReactorClock()
        self.network = MemoryNetwork(self.reactor)
        self.targets: dict[tuple[str, int], IProtocolFactory] = {}
        self.server = LocalSpriteServer(
            self.reactor, token, targetEndpoint=self._targetEndpoint, **serverOptions
        )
        self.factory = self.server.factory()
        self.apiEndpoint = MemoryClientEndpoint(self.network, self.factory)

    def addTarget(self, port: int, factory: IProtocolFactory, host: str = "localhost") -> None:
        """
        Serve C{factory} at C{host}:C{port} "inside the sprite".
        """
        self.targets[(host, port)] = factory

    def _targetEndpoint(self, reactor: Any, host: str, port: int) -> IStreamClientEndpoint:
        return MemoryClientEndpoint(self.network, self.targets.get((host, port)))

    def client(self, token: str = TEST_TOKEN, **options: Any) -> SpritesClient:
        """
        A L{SpritesClient} whose tunnels reach this server in memory.
        """
        options.setdefault("transportEndpoint", self.apiEndpoint)
        # Tests count tunnels: no warm spares unless asked for.
        options.setdefault("prewarm", 0)
        return SpritesClient(self.reactor, token, TEST_API_URL, **options)

    def flush(self) -> None:
        """
        Move all pending bytes on all connections.
        """
        self.network.flush()


@implementer(IProxySession)
class FakeProxySession(Service):
    """
    An C{IProxySession} (and C{IService}, so it fits in a
    L{sprites_twisted.manager.ProxyManager}) that listens nowhere, for
    testing code that manages sessions.  L{close} fires every L{wait}.
    """

    def __init__(
        self, spriteName: str, localPort: int, remotePort: int, remoteHost: str = ""
    ) -> None:
        self.spriteName = spriteName
        self.mapping = PortMapping(localPort, remotePort, remoteHost)
        self.localPort = localPort
        self.remotePort = remotePort
        self.remoteHost = remoteHost
        self.interface = "127.0.0.1"
        self.closed = False
        self._waiters: list[Deferred[None]] = []

    def close(self) -> Deferred[None]:
        if not self.closed:
            self.closed = True
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)
        return defer.succeed(None)

    def wait(self) -> Deferred[None]:
        if self.closed:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.close()

    def localAddr(self) -> IAddress | None:
        if self.closed:
            return None
        return IPv4Address("TCP", "127.0.0.1", self.localPort)
