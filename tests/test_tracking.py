# -*- test-case-name: tests.test_tracking -*-
"""
Tests for L{sprites_twisted.tracking}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.tracking import OpenSet


class OpenSetTests(SynchronousTestCase):
    """
    L{OpenSet.whenEmpty} fires when the last member is discarded.
    """

    def test_emptyAtOnce(self) -> None:
        """
        An empty set's whenEmpty has fired already.
        """
        self.assertIsNone(self.successResultOf(OpenSet().whenEmpty()))

    def test_firesOnLastDiscard(self) -> None:
        """
        Each waiter fires once the last member is gone, not before.
        """
        s = OpenSet()
        s.add(1)
        s.add(2)
        first, second = s.whenEmpty(), s.whenEmpty()
        s.discard(1)
        self.assertNoResult(first)
        s.discard(2)
        self.successResultOf(first)
        self.successResultOf(second)
        s.discard(3)  # absent: harmless
