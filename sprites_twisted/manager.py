# -*- test-case-name: tests.test_manager -*-
"""
L{ProxyManager}: many sessions as one service (the Go SDK's
``ProxyManager``).
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList

from sprites_twisted.errors import MappingError
from sprites_twisted.interfaces import IProxySession

__all__ = ["ProxyManager"]


class ProxyManager(MultiService):
    """
    A C{MultiService} of L{sprites_twisted.session.ProxySession}s.

    Stopping it (or the application it belongs to) closes every session;
    a session added while it runs starts listening at once.
    """

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
        self.addService(session)  # type: ignore[arg-type]

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
