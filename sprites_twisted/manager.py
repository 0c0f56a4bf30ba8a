# -*- test-case-name: tests.test_manager -*-
"""
L{ProxyManager}: many sessions as one service (the Go SDK's
``ProxyManager``), with the up-front check of
L{sprites_twisted.check} before anything listens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprites_twisted.check import isRefusal
from sprites_twisted.errors import MappingError
from sprites_twisted.interfaces import IProxySession

__all__ = ["ProxyManager"]

#: L{ProxyManager._outcome} before start-up ended.
_PENDING = object()


class ProxyManager(MultiService):
    """
    A C{MultiService} of L{sprites_twisted.session.ProxySession}s.

    Starting it first runs each session's C{check} (once per sprite name;
    sessions made by a L{sprites_twisted.client.SpritesClient} ask the API
    about the sprite), then starts the sessions.  A check that says the
    token or the name is bad stops start-up: nothing listens, and
    L{whenReady} fails with that error.  Other check failures (rate
    limits, server trouble, an unreachable API) are logged as warnings and
    the sessions start anyway: the sprite may still be waking.

    Stopping it (or the application it belongs to) closes every session;
    a session added while it runs starts listening at once.

    :param check: run the sessions' checks before they listen.
    """

    log = Logger()

    def __init__(self, *, check: bool = True) -> None:
        super().__init__()
        self.check = check
        self._ready: Deferred[Any] | None = None
        self._readyWaiters: list[Deferred[None]] = []
        self._outcome: object = _PENDING

    @property
    def sessions(self) -> list[IProxySession]:
        """
        The sessions, in the order they were added.
        """
        return [s for s in self if IProxySession.providedBy(s)]

    def addSession(self, session: IProxySession) -> None:
        """
        Add C{session} (a child service).

        :raises MappingError: when another session already uses the same
            local interface and (non-zero) port.
        """
        port = session.localPort
        interface = getattr(session, "interface", None)
        if port:
            for other in self.sessions:
                if (
                    other.localPort == port
                    and getattr(other, "interface", None) == interface
                    and other is not session
                ):
                    raise MappingError(
                        port, f"local port {port} on {interface} is already forwarded"
                    )
        self.addService(session)

    def startService(self) -> None:
        """
        Check, then start every session (see the class docstring).  The
        outcome is reported through L{whenReady}.
        """
        Service.startService(self)
        self._outcome = _PENDING
        checks: dict[str, Callable[[], Any]] = {}
        if self.check:
            for session in self.sessions:
                check = getattr(session, "check", None)
                if check is not None and session.spriteName not in checks:
                    checks[session.spriteName] = check
        ready = Deferred.fromCoroutine(self._checkAndListen(list(checks.values())))
        self._ready = ready
        ready.addBoth(self._started)

    async def _checkAndListen(self, checks: list[Callable[[], Any]]) -> None:
        for check in checks:
            try:
                await defer.maybeDeferred(check)
            except CancelledError:
                raise
            except Exception:
                reason = Failure()
                if isRefusal(reason):
                    raise
                self.log.warn(
                    "could not check the sprite before listening ({error}); starting anyway",
                    error=reason.getErrorMessage(),
                )
        if not self.running:
            return
        listening: list[Deferred[Any]] = []
        for service in list(self):
            listen = getattr(service, "listen", None)
            if listen is None:
                service.startService()
                continue
            service.running = 1
            listening.append(listen())
        try:
            await defer.gatherResults(listening, consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()

    def _started(self, result: Any) -> None:
        self._ready = None
        if isinstance(result, Failure):
            if not result.check(CancelledError) and not self._readyWaiters:
                self.log.error("not forwarding: {error}", error=result.getErrorMessage())
            self._outcome = result
        else:
            self._outcome = None
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            self._report(d)

    def _report(self, d: Deferred[None]) -> None:
        if isinstance(self._outcome, Failure):
            d.errback(self._outcome)
        else:
            d.callback(None)

    def whenReady(self) -> Deferred[None]:
        """
        A new Deferred that fires once the manager started and every
        session listens, or fails with the check's refusal
        (L{sprites_twisted.errors.SpriteAuthError},
        L{sprites_twisted.errors.SpriteNotFoundError}) or the first listen
        failure (C{CannotListenError} names the address).  The other
        sessions keep listening after a listen failure; the caller decides
        (the ``sprites-proxy`` command exits).  A failure that a
        C{whenReady} caller waited for is theirs to report; otherwise the
        manager logs it as an error.
        """
        d: Deferred[None] = Deferred()
        if self._outcome is _PENDING:
            self._readyWaiters.append(d)
        else:
            self._report(d)
        return d

    def stopService(self) -> Deferred[Any]:
        if self._ready is not None:
            ready, self._ready = self._ready, None
            ready.cancel()
        return super().stopService()  # type: ignore[no-any-return]

    def closeAll(self) -> Deferred[None]:
        """
        Close every session; the Deferred fires when all are closed (their
        connections drained or closed).
        """
        return self._all([s.close() for s in self.sessions])

    def waitAll(self) -> Deferred[None]:
        """
        A Deferred that fires when every session is closed.
        """
        return self._all([s.wait() for s in self.sessions])

    @staticmethod
    def _all(ds: list[Deferred[None]]) -> Deferred[None]:
        d = DeferredList(ds, consumeErrors=True)
        return d.addCallback(lambda _: None)  # type: ignore[return-value]
