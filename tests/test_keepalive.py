# -*- test-case-name: tests.test_keepalive -*-
"""
Tests for L{sprites_twisted.keepalive}: pings on the given clock, dead
after three silent intervals, one timer for every member.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.keepalive import DEFAULT_KEEPALIVE_INTERVAL, Keepalive


class Member:
    """
    A L{sprites_twisted.keepalive.Pinged} that records what it was told.
    """

    def __init__(self) -> None:
        self.pings = 0
        self.dead: list[str] = []
        self.onPing = lambda: None
        self.onDead = lambda: None

    def sendPing(self) -> None:
        self.pings += 1
        self.onPing()

    def keepaliveDead(self, reason: str) -> None:
        self.dead.append(reason)
        self.onDead()


class KeepaliveTests(SynchronousTestCase):
    """
    L{Keepalive} pings, notices pongs, declares death once.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.keepalive = Keepalive(self.clock, 15.0)
        self.member = Member()

    def test_defaults(self) -> None:
        """
        15 s by default, as the official SDKs' other sockets.
        """
        self.assertEqual(DEFAULT_KEEPALIVE_INTERVAL, 15.0)
        self.assertEqual(Keepalive(self.clock).interval, 15.0)

    def test_intervalFixed(self) -> None:
        """
        The interval cannot change under running members (their order
        depends on it).
        """
        with self.assertRaises(AttributeError):
            self.keepalive.interval = 1.0  # type: ignore[misc]

    def test_pingsEveryInterval(self) -> None:
        """
        A ping every interval while pongs come back; never dead.
        """
        self.keepalive.start(self.member)
        self.assertTrue(self.keepalive.running(self.member))
        self.clock.advance(14.9)
        self.assertEqual(self.member.pings, 0)
        self.clock.advance(0.1)
        self.assertEqual(self.member.pings, 1)
        for i in range(2, 10):
            self.keepalive.pong(self.member)
            self.clock.advance(15)
            self.assertEqual(self.member.pings, i)
        self.assertEqual(self.member.dead, [])

    def test_deadAfterThreeSilentIntervals(self) -> None:
        """
        No pong for 45 s: dead, once, with the reason; no more pings, and
        no timer left.
        """
        self.keepalive.start(self.member)
        self.clock.advance(15)
        self.clock.advance(15)
        self.assertEqual(self.member.dead, [])
        self.clock.advance(14.9)
        self.assertEqual(self.member.dead, [])
        self.clock.advance(0.1)
        self.assertEqual(self.member.dead, ["no answer to pings for 45 s"])
        self.assertEqual(self.member.pings, 2)
        self.assertFalse(self.keepalive.running(self.member))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(len(self.member.dead), 1)

    def test_latePongKeepsAlive(self) -> None:
        """
        A pong just before the limit restarts the count.
        """
        self.keepalive.start(self.member)
        self.clock.advance(44)
        self.keepalive.pong(self.member)
        self.clock.advance(1 + 15 + 15)
        self.assertEqual(self.member.dead, [])
        self.clock.advance(15)
        self.assertEqual(len(self.member.dead), 1)

    def test_stop(self) -> None:
        """
        Stopping the last member cancels the timer; stopping twice, or a
        member never started, is fine; a pong after the stop is ignored.
        """
        self.keepalive.start(self.member)
        self.keepalive.stop(self.member)
        self.keepalive.stop(self.member)
        self.keepalive.stop(Member())
        self.keepalive.pong(self.member)
        self.assertFalse(self.keepalive.running(self.member))
        self.assertEqual(self.keepalive.count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_startTwice(self) -> None:
        """
        Starting a running member again changes nothing: its schedule
        stays.
        """
        self.keepalive.start(self.member)
        self.clock.advance(10)
        self.keepalive.start(self.member)
        self.clock.advance(5)
        self.assertEqual(self.member.pings, 1)

    def test_zeroIntervalIsOff(self) -> None:
        """
        An interval of 0 never pings.
        """
        keepalive = Keepalive(self.clock, 0)
        keepalive.start(self.member)
        self.assertFalse(keepalive.running(self.member))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SharedTimerTests(SynchronousTestCase):
    """
    One L{Keepalive} keeps each member's own schedule on one reactor timer.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.keepalive = Keepalive(self.clock, 15.0)

    def test_oneTimerForMany(self) -> None:
        """
        A thousand members started in one turn cost one delayed call, and
        each is pinged once per interval.
        """
        members = [Member() for _ in range(1000)]
        for member in members:
            self.keepalive.start(member)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(15)
        self.assertEqual({m.pings for m in members}, {1})
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_ownSchedules(self) -> None:
        """
        Members started at different times are pinged on their own
        schedules, and each dies on its own.
        """
        first, second = Member(), Member()
        self.keepalive.start(first)
        self.clock.advance(5)
        self.keepalive.start(second)
        self.clock.advance(10)
        self.assertEqual((first.pings, second.pings), (1, 0))
        self.clock.advance(5)
        self.assertEqual((first.pings, second.pings), (1, 1))
        self.keepalive.pong(second)
        # One second at a time: Clock.advance runs a timer at the time it
        # advances to, and a late timer reschedules from there.
        self.clock.pump([1] * 25)
        self.assertEqual(first.dead, ["no answer to pings for 45 s"])
        self.assertEqual(second.dead, [])
        self.assertTrue(self.keepalive.running(second))
        self.clock.pump([1] * 19)
        self.assertEqual(second.dead, [])
        self.clock.advance(1)
        self.assertEqual(second.dead, ["no answer to pings for 45 s"])
        self.assertEqual(second.pings, 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopFirstKeepsOthers(self) -> None:
        """
        Stopping the member whose ping is next leaves the others on their
        schedule.
        """
        first, second = Member(), Member()
        self.keepalive.start(first)
        self.clock.advance(5)
        self.keepalive.start(second)
        self.keepalive.stop(first)
        self.clock.advance(10)
        self.assertEqual((first.pings, second.pings), (0, 0))
        self.clock.advance(5)
        self.assertEqual((first.pings, second.pings), (0, 1))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_startDuringPing(self) -> None:
        """
        A member started while another is pinged (or declared dead) does
        not delay the next member's ping.
        """
        first, second, third = Member(), Member(), Member()
        self.keepalive.start(first)
        self.clock.advance(5)
        self.keepalive.start(second)
        first.onPing = lambda: self.keepalive.start(third)
        self.clock.advance(10)
        self.assertEqual((first.pings, second.pings, third.pings), (1, 0, 0))
        self.clock.advance(5)
        self.assertEqual((first.pings, second.pings, third.pings), (1, 1, 0))
        self.clock.advance(10)
        self.assertEqual((first.pings, second.pings, third.pings), (2, 1, 1))

    def test_stopOthersWhenDead(self) -> None:
        """
        A member's death may stop every other member: the timer is gone.
        """
        first, second = Member(), Member()
        self.keepalive.start(first)
        self.keepalive.start(second)
        first.onDead = lambda: self.keepalive.stop(second)
        self.clock.advance(45)
        self.assertEqual(first.dead, ["no answer to pings for 45 s"])
        self.assertEqual(second.dead, [])
        self.assertEqual(self.keepalive.count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failingMemberAlone(self) -> None:
        """
        A member whose ping or death callback raises is logged; the others
        are still pinged and declared dead on time, and the timer goes on.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        broken, fine = Member(), Member()

        def boom() -> None:
            raise RuntimeError("boom")

        broken.onPing = boom
        broken.onDead = boom
        self.keepalive.start(broken)
        self.keepalive.start(fine)
        self.clock.advance(15)
        self.assertEqual((broken.pings, fine.pings), (1, 1))
        self.keepalive.pong(fine)
        self.clock.advance(15)
        self.clock.advance(15)
        self.assertEqual(broken.dead, ["no answer to pings for 45 s"])
        self.assertEqual(fine.pings, 3)
        self.assertEqual(fine.dead, [])
        self.clock.advance(15)
        self.assertEqual(fine.dead, ["no answer to pings for 45 s"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
        self.assertEqual(
            [e["log_format"] for e in events if "log_failure" in e],
            ["keepalive of {member!r} failed"] * 3,
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lateTimer(self) -> None:
        """
        A timer that fires late (a reactor that was busy, a laptop that
        slept) pings each due member once and counts the silence from the
        last pong.
        """
        member = Member()
        self.keepalive.start(member)
        self.clock.advance(40)
        self.assertEqual(member.pings, 1)
        self.assertEqual(member.dead, [])
        self.clock.advance(50)
        self.assertEqual(member.pings, 1)
        self.assertEqual(member.dead, ["no answer to pings for 90 s"])
