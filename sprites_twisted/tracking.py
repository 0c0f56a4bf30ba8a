# -*- test-case-name: tests.test_tracking -*-
"""
L{OpenSet}: the open connections of a listener or of the local server.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

__all__ = ["OpenSet"]


class OpenSet(set):  # type: ignore[type-arg]
    """
    A set whose L{whenEmpty} tells when the last member is gone (for
    draining and clean shutdown).  Only L{discard} removes members.
    """

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[Deferred[None]] = []

    def discard(self, item: object) -> None:
        super().discard(item)
        if not self:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def whenEmpty(self) -> Deferred[None]:
        """
        A new Deferred that fires once the set is empty; at once if it is.
        """
        d: Deferred[None] = Deferred()
        if self:
            self._waiters.append(d)
        else:
            d.callback(None)
        return d
