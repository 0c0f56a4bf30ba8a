# -*- test-case-name: tests.test_testing -*-
"""
Tests for L{sprites_twisted.testing}, the helpers we ship for users' tests.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sprites_twisted.interfaces import IProxySession
from sprites_twisted.testing import FakeProxySession, MemorySprite
from tests.helpers import Echo
from tests.test_tunnel import Recorder


class MemorySpriteTests(SynchronousTestCase):
    """
    L{MemorySprite} is the real local server, reached in memory.
    """

    def test_roundTrip(self) -> None:
        """
        A tunnel to a target added with addTarget relays both ways.
        """
        sprite = MemorySprite()
        sprite.addTarget(5432, Factory.forProtocol(Echo))
        endpoint = sprite.client().endpoint("demo", 5432)
        d = endpoint.connect(Factory.forProtocol(Recorder))
        sprite.flush()
        proto = self.successResultOf(d)
        proto.transport.write(b"hello")
        sprite.flush()
        self.assertEqual(proto.received, b"hello")


class FakeProxySessionTests(SynchronousTestCase):
    """
    L{FakeProxySession} is a verified IProxySession.
    """

    def test_interface(self) -> None:
        session = FakeProxySession("demo", 8080, 80)
        self.assertTrue(verifyObject(IProxySession, session))
        d = session.wait()
        self.assertNoResult(d)
        self.successResultOf(session.close())
        self.successResultOf(d)
