# -*- test-case-name: tests.test_endpoint -*-
"""
Tests for L{sprites_twisted.endpoint}: the endpoint contract (never raises,
cancel aborts, a timeout on the given reactor), its configuration checks,
and that the token shows nowhere.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sprites_twisted.endpoint import SpriteProxyEndpoint
from sprites_twisted.errors import ConfigurationError, TunnelTimeoutError
from sprites_twisted.testing import TEST_API_URL, TEST_TOKEN, MemoryClientEndpoint, MemoryNetwork
from tests import wsfake


class EndpointTests(SynchronousTestCase):
    """
    L{SpriteProxyEndpoint} as an C{IStreamClientEndpoint}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.network = MemoryNetwork(self.reactor)
        self.factory = wsfake.acceptThenReply(b"")  # accepts, never replies

    def endpoint(self, **kw: object) -> SpriteProxyEndpoint:
        return SpriteProxyEndpoint(
            self.reactor,
            "demo",
            5432,
            token=TEST_TOKEN,
            apiURL=TEST_API_URL,
            transportEndpoint=MemoryClientEndpoint(self.network, self.factory),
            **kw,  # type: ignore[arg-type]
        )

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IStreamClientEndpoint, self.endpoint()))

    def test_tokenNotShown(self) -> None:
        """
        Neither the repr nor the URL holds the token.
        """
        endpoint = self.endpoint()
        self.assertNotIn(TEST_TOKEN, repr(endpoint))
        self.assertNotIn(TEST_TOKEN, endpoint.url)
        self.assertTrue(endpoint.url.endswith("/v1/sprites/demo/proxy"))

    def test_badConfiguration(self) -> None:
        """
        Bad values are refused at construction, naming them.
        """
        with self.assertRaises(ValueError) as raised:
            SpriteProxyEndpoint(self.reactor, "demo", 70000, token=TEST_TOKEN)
        self.assertIn("70000", str(raised.exception))
        with self.assertRaises(ConfigurationError):
            SpriteProxyEndpoint(self.reactor, "", 80, token=TEST_TOKEN)
        with self.assertRaises(ConfigurationError):
            SpriteProxyEndpoint(self.reactor, "demo", 80, token="")

    def test_connectNeverRaises(self) -> None:
        """
        A factory that blows up is a failed Deferred, not an exception.
        """

        class Broken:
            def buildProtocol(self, addr: object) -> Protocol:
                raise RuntimeError("no")

        endpoint = SpriteProxyEndpoint(
            self.reactor,
            "demo",
            5432,
            token=TEST_TOKEN,
            apiURL=TEST_API_URL,
            transportEndpoint=None,  # a real TCP endpoint on a MemoryReactor
        )
        d = endpoint.connect(Broken())  # type: ignore[arg-type]
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, CancelledError, ConnectingCancelledError)

    def test_timeoutOnTheGivenReactor(self) -> None:
        """
        The handshake timeout runs on the endpoint's reactor, and drops the
        attempt.
        """
        d = self.endpoint(timeout=3).connect(Factory.forProtocol(Protocol))
        self.network.flush()
        self.reactor.advance(2.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.network.flush()
        self.assertEqual(self.failureResultOf(d, TunnelTimeoutError).value.timeout, 3)
        self.assertTrue(self.factory.servers[0].lost)

    def test_cancelAborts(self) -> None:
        """
        Cancelling drops the WebSocket and leaves no timer behind.
        """
        d = self.endpoint().connect(Factory.forProtocol(Protocol))
        self.network.flush()
        d.cancel()
        self.network.flush()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.factory.servers[0].lost)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
