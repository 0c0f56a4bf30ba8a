# -*- test-case-name: tests.test_session -*-
"""
L{ProxySession}: one forwarded port, as a Twisted service.

A session owns one local listener (loopback unless told otherwise) and the
connections it accepted.  It is an C{IService}, so a
L{sprites_twisted.manager.ProxyManager} (or any C{MultiService}, or a
twistd application) starts and stops it with everything else.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IAddress, IListeningPort, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sprites_twisted.config import isLoopbackHost
from sprites_twisted.interfaces import IProxySession
from sprites_twisted.listener import DEFAULT_LINGER_TIMEOUT, LocalProxyFactory
from sprites_twisted.mapping import PortMapping, formatTarget

__all__ = ["ProxySession", "DEFAULT_DRAIN_TIMEOUT", "DEFAULT_INTERFACE"]

#: Seconds open connections may go on after a session stops listening.
DEFAULT_DRAIN_TIMEOUT = 5.0
#: Where listeners bind unless the caller says otherwise.
DEFAULT_INTERFACE = "127.0.0.1"

_NEW, _LISTENING, _CLOSING, _CLOSED = "new", "listening", "closing", "closed"


@implementer(IProxySession)
class ProxySession(Service):
    """
    A local listener on C{mapping.localPort} whose connections are tunnelled
    to C{mapping.remoteHost}:C{mapping.remotePort} in C{spriteName}.

    Create it through L{sprites_twisted.client.SpritesClient.proxyPort} (or
    C{proxyPorts}), or directly with any tunnel endpoint.

    :param endpoint: opens one tunnel per accepted connection.
    :param interface: the local address to bind; loopback by default.
        Binding anything else logs a warning, since anyone who can reach
        that address can then reach the sprite.
    :param drainTimeout: seconds open connections may go on after
        L{close}, before they are closed.
    :param lingerTimeout: see L{sprites_twisted.listener}.
    """

    log = Logger()
    _raiseSynchronously = False

    def __init__(
        self,
        reactor: Any,
        spriteName: str,
        mapping: PortMapping,
        endpoint: IStreamClientEndpoint,
        *,
        interface: str = DEFAULT_INTERFACE,
        drainTimeout: float = DEFAULT_DRAIN_TIMEOUT,
        lingerTimeout: float = DEFAULT_LINGER_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self.spriteName = spriteName
        self.mapping = mapping
        self.interface = interface
        self.drainTimeout = drainTimeout
        self.factory = LocalProxyFactory(
            endpoint, reactor, spriteName, mapping.describeTarget(), lingerTimeout
        )
        self._state = _NEW
        self._port: IListeningPort | None = None
        self._listening: Deferred[Any] | None = None
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
        ``interface:port`` of the listener, IPv6 in brackets, for logs.
        """
        return formatTarget(self.interface, self.localPort)

    def localAddr(self) -> IAddress | None:
        if self._port is None or self._state != _LISTENING:
            return None
        return self._port.getHost()

    # Listening

    def listen(self) -> Deferred[ProxySession]:
        """
        Start listening (once).

        :returns: a Deferred that fires with this session when listening,
            or fails with C{CannotListenError} (which names the address).
        """
        if self._state == _LISTENING:
            return defer.succeed(self)
        if self._state != _NEW:
            return defer.fail(RuntimeError(f"{self!r} is closed and cannot listen again"))
        if self._listening is not None:
            return self._chainListening()
        self.running = 1
        server: TCP4ServerEndpoint | TCP6ServerEndpoint
        if ":" in self.interface:
            server = TCP6ServerEndpoint(
                self._reactor, self.mapping.localPort, interface=self.interface
            )
        else:
            server = TCP4ServerEndpoint(
                self._reactor, self.mapping.localPort, interface=self.interface
            )
        listening = server.listen(self.factory)
        self._listening = listening
        listening.addCallbacks(self._listened, self._listenFailed)
        return self._chainListening(listening)

    def _chainListening(self, listening: Deferred[Any] | None = None) -> Deferred[ProxySession]:
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

        listening = listening if listening is not None else self._listening
        assert listening is not None
        listening.addBoth(done)
        return d

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self._port = port
        if self._state != _NEW:
            port.stopListening()
            return port
        self._state = _LISTENING
        self.log.info(
            "forwarding {local} -> {sprite} {target}",
            local=self.describeLocal(),
            sprite=self.spriteName,
            target=self.mapping.describeTarget(),
        )
        if not isLoopbackHost(self.interface):
            self.log.warn(
                "listening on {local}, which is not a loopback address: anyone who "
                "can reach it can reach the sprite {sprite}",
                local=self.describeLocal(),
                sprite=self.spriteName,
            )
        return port

    def _listenFailed(self, failure: Failure) -> Failure:
        self._listening = None
        if self._state == _NEW:
            self._finish()
        return failure

    def startService(self) -> None:
        """
        Start listening.  Failures are logged; under twistd
        (C{_raiseSynchronously}) a synchronous failure is raised, so that
        start-up stops with a message naming the address.
        """
        Service.startService(self)
        if self._state != _NEW or self._listening is not None:
            return
        d = self.listen()
        failures: list[Failure] = []
        d.addErrback(failures.append)
        if failures:
            if self._raiseSynchronously:
                failures[0].raiseException()
            self.log.error(
                "cannot forward {local} -> {sprite}: {error}",
                local=self.describeLocal(),
                sprite=self.spriteName,
                error=failures[0].getErrorMessage(),
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
        if self._state == _CLOSED:
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
        stopped: Deferred[Any] = defer.succeed(None)
        if self._port is not None:
            stopped = defer.maybeDeferred(self._port.stopListening)

        def logStopped(result: Any) -> Any:
            # Once the port is really closed (a TCP port closes one reactor
            # turn after stopListening), so the line can be relied upon.
            if wasListening:
                self.log.info(
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

        stopped.addBoth(drain)
        stopped.addBoth(lambda _: self._finish())
        return stopped

    def _finish(self) -> None:
        self._state = _CLOSED
        self.running = 0
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self) -> Deferred[None]:
        """
        A new Deferred that fires when the session is closed.
        """
        if self._state == _CLOSED:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d
