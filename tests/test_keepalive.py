# -*- test-case-name: tests.test_keepalive -*-
"""
Tests for L{sprites_twisted.keepalive}: pings on the given clock, dead
after three silent intervals.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.keepalive import DEFAULT_KEEPALIVE_INTERVAL, Keepalive


class KeepaliveTests(SynchronousTestCase):
    """
    L{Keepalive} pings, notices pongs, declares death once.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pings = 0
        self.dead: list[str] = []
        self.keepalive = Keepalive(self.clock, 15.0, self.ping, self.dead.append)

    def ping(self) -> None:
        self.pings += 1

    def test_defaults(self) -> None:
        """
        15 s by default, as the official SDKs' other sockets.
        """
        self.assertEqual(DEFAULT_KEEPALIVE_INTERVAL, 15.0)

    def test_pingsEveryInterval(self) -> None:
        """
        A ping every interval while pongs come back; never dead.
        """
        self.keepalive.start()
        for i in range(1, 10):
            self.clock.advance(15)
            self.assertEqual(self.pings, i)
            self.keepalive.pong()
        self.assertEqual(self.dead, [])

    def test_deadAfterThreeSilentIntervals(self) -> None:
        """
        No pong for 45 s: dead, once, with the reason; no more pings.
        """
        self.keepalive.start()
        self.clock.advance(15)
        self.clock.advance(15)
        self.assertEqual(self.dead, [])
        self.clock.advance(14.9)
        self.assertEqual(self.dead, [])
        self.clock.advance(0.1)
        self.assertEqual(self.dead, ["no answer to pings for 45 s"])
        self.assertEqual(self.pings, 2)
        self.clock.advance(100)
        self.assertEqual(len(self.dead), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_latePongKeepsAlive(self) -> None:
        """
        A pong just before the limit restarts the count.
        """
        self.keepalive.start()
        self.clock.advance(44)
        self.keepalive.pong()
        self.clock.advance(1 + 15 + 15)
        self.assertEqual(self.dead, [])

    def test_stop(self) -> None:
        """
        Stopping cancels the timer; stopping twice is fine.
        """
        self.keepalive.start()
        self.keepalive.stop()
        self.keepalive.stop()
        self.assertEqual(self.keepalive.state, "idle")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zeroIntervalIsOff(self) -> None:
        """
        An interval of 0 never pings.
        """
        keepalive = Keepalive(self.clock, 0, self.ping, self.dead.append)
        keepalive.start()
        self.assertEqual(keepalive.state, "idle")
        self.assertEqual(self.clock.getDelayedCalls(), [])
