# -*- test-case-name: tests.test_session -*-
"""
L{ProxySession}: one forwarded port, as a Twisted service.

A session owns one local listener (loopback unless told otherwise, or any
Twisted server endpoint: a Unix socket, ``tcp6:``, ``systemd:``) and the
connections it accepted.  It is an C{IService}, so a
L{sprites_twisted.manager.ProxyManager} (or any C{MultiService}, or a
twistd application) starts and stops it with everything else; a stopped
session can start again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from sprites_twisted.config import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_INTERFACE,
    DEFAULT_LINGER_TIMEOUT,
    isLoopbackHost,
)
from sprites_twisted.interfaces import IProxySession
from sprites_twisted.listener import LocalProxyFactory
from sprites_twisted.mapping import PortMapping, formatTarget

__all__ = ["ProxySession", "DEFAULT_DRAIN_TIMEOUT", "DEFAULT_INTERFACE"]

#: The session's states.  NEW: never listened; STARTING: a listen is under
#: way; LISTENING; CLOSING: not listening, connections draining; STOPPED:
#: closed (it may listen again).
_NEW, _STARTING, _LISTENING, _CLOSING, _STOPPED = (
    "new",
    "starting",
    "listening",
    "closing",
    "stopped",
)


@implementer(IProxySession)
class ProxySession(Service):
    """
    A local listener whose connections are tunnelled to
    C{mapping.remoteHost}:C{mapping.remotePort} in C{spriteName}.

    The listener is C{listenOn} when given (any C{IStreamServerEndpoint}),
    else TCP on C{mapping.localPort} at C{mapping.bindAddress} or
    C{interface}; ``localhost`` listens on both 127.0.0.1 and ::1 (the
    second on the port the first got; a host without IPv6 keeps only the
    first, with a warning).

    Create it through L{sprites_twisted.client.SpritesClient.session},
    C{proxyPort}, C{proxyPorts} or C{forward}, or directly with any tunnel
    endpoint.

    :param endpoint: opens one tunnel per accepted connection.
    :param interface: the local address to bind when the mapping names
        none; loopback by default.  Binding anything else logs a warning,
        since anyone who can reach that address can then reach the sprite.
    :param listenOn: listen there instead of on a TCP port.
    :param localDescription: how logs name C{listenOn} (its endpoint
        string, say).
    :param drainTimeout: seconds open connections may go on after
        L{close}, before they are closed.
    :param lingerTimeout: see L{sprites_twisted.listener}.
    :param check: called (with no arguments) by a
        L{sprites_twisted.manager.ProxyManager} before it starts the
        session: a Deferred that fails when forwarding cannot work (see
        L{sprites_twisted.check.checkSprite}).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        spriteName: str,
        mapping: PortMapping,
        endpoint: IStreamClientEndpoint,
        *,
        interface: str = DEFAULT_INTERFACE,
        listenOn: IStreamServerEndpoint | None = None,
        localDescription: str | None = None,
        drainTimeout: float = DEFAULT_DRAIN_TIMEOUT,
        lingerTimeout: float = DEFAULT_LINGER_TIMEOUT,
        check: Callable[[], Deferred[Any]] | None = None,
        announce: bool = True,
    ) -> None:
        self._reactor = reactor
        self.spriteName = spriteName
        self.mapping = mapping
        self.interface = mapping.bindAddress or interface
        self.listenOn = listenOn
        self._localDescription = localDescription
        self.drainTimeout = drainTimeout
        self.check = check
        #: Log "forwarding ..." and "stopped forwarding ..." at info (an
        #: owner that logs its own line for each, as the auto-forwarder does,
        #: turns this off and they go to debug).
        self.announce = announce
        self.factory = LocalProxyFactory(
            endpoint, reactor, spriteName, mapping.describeTarget(), lingerTimeout
        )
        self._state = _NEW
        self._ports: list[IListeningPort] = []
        self._listening: Deferred[None] | None = None
        self._closing: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] = []

    def __repr__(self) -> str:
        return (
            f"<ProxySession {self.describeLocal()} -> {self.spriteName} "
            f"{self.mapping.describeTarget()} ({self._state})>"
        )

    # IProxySession attributes

    @property
    def localPort(self) -> int:
        address = self.localAddr()
        port = getattr(address, "port", None)
        return port if isinstance(port, int) else self.mapping.localPort

    @property
    def remotePort(self) -> int:
        return self.mapping.remotePort

    @property
    def remoteHost(self) -> str:
        return self.mapping.remoteHost

    def describeLocal(self) -> str:
        """
        Where the session listens, for logs: ``interface:port`` (IPv6 in
        brackets) for TCP, else the endpoint's description.
        """
        if self.listenOn is not None:
            if self._localDescription:
                return self._localDescription
            address = self.localAddr()
            return str(getattr(address, "name", None) or address or self.listenOn)
        return formatTarget(self.interface, self.localPort)

    def localAddr(self) -> IAddress | None:
        if not self._ports or self._state != _LISTENING:
            return None
        return self._ports[0].getHost()

    # Listening

    def _serverEndpoints(self) -> list[Callable[[int], IStreamServerEndpoint]]:
        """
        The endpoints to listen on, each made from the port the first one
        got (C{mapping.localPort} for the first).
        """
        if self.listenOn is not None:
            listenOn = self.listenOn
            return [lambda port: listenOn]
        if self.interface == "localhost":
            return [
                lambda port: TCP4ServerEndpoint(self._reactor, port, interface="127.0.0.1"),
                lambda port: TCP6ServerEndpoint(self._reactor, port, interface="::1"),
            ]
        if ":" in self.interface:
            return [lambda port: TCP6ServerEndpoint(self._reactor, port, interface=self.interface)]
        return [lambda port: TCP4ServerEndpoint(self._reactor, port, interface=self.interface)]

    def listen(self) -> Deferred[ProxySession]:
        """
        Start listening; again after the session was closed.

        :returns: a new Deferred that fires with this session when it
            listens, or fails with C{CannotListenError} (which names the
            address) or the endpoint's error.  While the session is still
            closing, listening starts once it is closed.
        """
        if self._state == _LISTENING:
            return defer.succeed(self)
        if self._state == _CLOSING:
            return self.wait().addCallback(lambda _: self.listen())
        if self._state != _STARTING:
            self._state = _STARTING
            self.running = 1
            self._closing = None
            self._listening = Deferred.fromCoroutine(self._listen())
        return self._chainListening()

    async def _listen(self) -> None:
        makers = self._serverEndpoints()
        try:
            first = await makers[0](self.mapping.localPort).listen(self.factory)
            self._ports.append(first)
            port = getattr(first.getHost(), "port", 0)
            for make in makers[1:]:
                try:
                    self._ports.append(await make(port).listen(self.factory))
                except Exception as e:  # noqa: BLE001 - the first family is enough
                    self.log.warn(
                        "forwarding {local} on IPv4 only: {error}",
                        local=self.describeLocal(),
                        error=str(e),
                    )
        except BaseException:
            ports, self._ports = self._ports, []
            for listening in ports:
                listening.stopListening()
            self._finish()
            raise
        self._state = _LISTENING
        self.log.emit(
            LogLevel.info if self.announce else LogLevel.debug,
            "forwarding {local} -> {sprite} {target}",
            local=self.describeLocal(),
            sprite=self.spriteName,
            target=self.mapping.describeTarget(),
        )
        if self.listenOn is None and not isLoopbackHost(self.interface):
            self.log.warn(
                "listening on {local}, which is not a loopback address: anyone who "
                "can reach it can reach the sprite {sprite}",
                local=self.describeLocal(),
                sprite=self.spriteName,
            )

    def _chainListening(self) -> Deferred[ProxySession]:
        """
        A new Deferred for the outcome of the (shared) listen attempt.
        """
        d: Deferred[ProxySession] = Deferred()

        def done(result: Any) -> Any:
            if isinstance(result, Failure):
                d.errback(result)
                return None
            d.callback(self)
            return result

        assert self._listening is not None
        self._listening.addBoth(done)
        return d

    def startService(self) -> None:
        """
        Start listening.  A failure is logged (with the address); use
        L{listen} to get it as a Deferred.
        """
        Service.startService(self)
        if self._state in (_STARTING, _LISTENING):
            return
        self.listen().addErrback(self._logListenFailure)

    def _logListenFailure(self, failure: Failure) -> None:
        self.log.error(
            "cannot forward {local} -> {sprite}: {error}",
            local=self.describeLocal(),
            sprite=self.spriteName,
            error=failure.getErrorMessage(),
        )

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.close()

    # Closing

    def close(self, drainTimeout: float | None = None) -> Deferred[None]:
        """
        Stop listening at once; open connections get C{drainTimeout} seconds
        (the session's default if C{None}) to finish, then are closed.

        Idempotent; each call returns a new Deferred that fires when the
        session is fully closed.
        """
        if self._state in (_NEW, _STOPPED):
            self.running = 0
            return defer.succeed(None)
        if self._closing is None:
            if drainTimeout is None:
                drainTimeout = self.drainTimeout
            self._closing = self._close(drainTimeout)
        return self.wait()

    def _close(self, drainTimeout: float) -> Deferred[None]:
        wasListening = self._state == _LISTENING
        local = self.describeLocal()
        self._state = _CLOSING
        self.running = 0
        if self._listening is not None and not self._listening.called:
            self._listening.cancel()
        ports, self._ports = self._ports, []
        stopped: Deferred[Any] = defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in ports], consumeErrors=True
        )

        def logStopped(result: Any) -> Any:
            # Once the port is really closed (a TCP port closes one reactor
            # turn after stopListening), so the line can be relied upon.
            if wasListening:
                self.log.emit(
                    LogLevel.info if self.announce else LogLevel.debug,
                    "stopped forwarding {local} -> {sprite} {target}",
                    local=local,
                    sprite=self.spriteName,
                    target=self.mapping.describeTarget(),
                )
            return result

        stopped.addBoth(logStopped)

        def drain(_: Any) -> Deferred[None]:
            idle = self.factory.whenIdle()
            if idle.called:
                return idle
            if drainTimeout <= 0:
                self.factory.abortAll()
                return self.factory.whenIdle()
            timer = self._reactor.callLater(drainTimeout, self.factory.abortAll)

            def stopTimer(result: Any) -> Any:
                if timer.active():
                    timer.cancel()
                return result

            return idle.addBoth(stopTimer)

        def closeSpares(result: Any) -> Any:
            # Warm tunnels exist for the next connection; there is none.
            closeSpares = getattr(self.factory.endpoint, "closeSpares", None)
            if closeSpares is not None:
                closeSpares()
            return result

        stopped.addBoth(drain)
        stopped.addBoth(closeSpares)
        stopped.addBoth(lambda _: self._finish())
        return stopped

    def _finish(self) -> None:
        self._state = _STOPPED
        self._closing = None
        self._listening = None
        self.running = 0
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self) -> Deferred[None]:
        """
        A new Deferred that fires when the session is closed (at once if it
        is closed now).
        """
        if self._state == _STOPPED:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d
