# -*- test-case-name: tests.test_client -*-
"""
Tests for the Deferred API of L{sprites_twisted.client}, on a C{MemoryReactorClock}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted import PortMapping, ProxySession, SpritesClient
from sprites_twisted.endpoint import SpriteProxyEndpoint
from sprites_twisted.errors import (
    AddressError,
    ConfigurationError,
    MappingError,
)
from sprites_twisted.testing import TEST_TOKEN, MemorySprite
from tests.helpers import Echo, FailingListenReactor


class ForwardTests(SynchronousTestCase):
    """
    L{SpritesClient.forward}: any server endpoint as the local side.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.client = SpritesClient(self.reactor, TEST_TOKEN, "http://127.0.0.1:8900")

    def test_unixSocket(self) -> None:
        """
        An endpoint string listens there; a Unix socket gets mode 0600 and
        the session names it in logs.
        """
        session = self.successResultOf(self.client.forward("demo", "unix:/tmp/pg.sock", 5432))
        [(path, factory, backlog, mode, wantPID)] = self.reactor.unixServers
        self.assertEqual((path, mode), ("/tmp/pg.sock", 0o600))
        self.assertIs(factory, session.factory)
        self.assertEqual(session.describeLocal(), "unix:/tmp/pg.sock")
        self.assertEqual((session.remotePort, session.remoteHost), (5432, ""))
        self.successResultOf(session.close())

    def test_explicitMode(self) -> None:
        """
        A mode given in the string is kept.
        """
        self.successResultOf(self.client.forward("demo", "unix:/tmp/pg.sock:mode=660", 5432))
        self.assertEqual(self.reactor.unixServers[0][3], 0o660)

    def test_endpointObject(self) -> None:
        """
        An IStreamServerEndpoint object is used as it is.
        """
        endpoint = TCP6ServerEndpoint(self.reactor, 8080, interface="::1")
        session = self.successResultOf(self.client.sprite("demo").forward(endpoint, 80, "web"))
        self.assertEqual([(p, i) for p, _, _, i in self.reactor.tcpServers], [(8080, "::1")])
        self.assertIs(session.listenOn, endpoint)

    def test_badString(self) -> None:
        """
        A string Twisted cannot parse fails the Deferred, naming it.
        """
        failure = self.failureResultOf(self.client.forward("demo", "bogus:1", 80), ValueError)
        self.assertIn("'bogus:1'", str(failure.value))


class ProxyPortsTests(SynchronousTestCase):
    """
    proxyPorts: all or nothing.
    """

    def test_inputOrder(self) -> None:
        """
        Sessions come back in input order.
        """
        reactor = MemoryReactorClock()
        client = SpritesClient(reactor, TEST_TOKEN, "http://127.0.0.1:8900")
        mappings = [PortMapping(9003, 3), PortMapping(9001, 1), PortMapping(9002, 2, "db")]
        sessions = self.successResultOf(client.proxyPorts("demo", mappings))
        self.assertEqual([s.mapping for s in sessions], mappings)

    def test_rollback(self) -> None:
        """
        One busy port closes the sessions already made and fails naming
        the port.
        """
        reactor = FailingListenReactor({9002})
        client = SpritesClient(reactor, TEST_TOKEN, "http://127.0.0.1:8900")
        d = client.proxyPorts(
            "demo", [PortMapping(9001, 1), PortMapping(9002, 2), PortMapping(9003, 3)]
        )
        error = self.failureResultOf(d, CannotListenError).value
        self.assertIn("9002", str(error))
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertEqual([p.disconnected for p in reactor.ports], [True])

    def test_rollbackClosesListeners(self) -> None:
        """
        After a failed proxyPorts, no listener stays open.
        """
        reactor = FailingListenReactor({9002})
        client = SpritesClient(reactor, TEST_TOKEN, "http://127.0.0.1:8900")
        made: list[ProxySession] = []
        original = client.session

        def recording(*a, **kw):  # type: ignore[no-untyped-def]
            s = original(*a, **kw)
            made.append(s)
            return s

        client.session = recording  # type: ignore[method-assign]
        self.failureResultOf(
            client.proxyPorts("demo", [PortMapping(9001, 1), PortMapping(9002, 2)]),
            CannotListenError,
        )
        self.assertIsNone(made[0].localAddr())
        self.assertTrue(reactor.ports[0].disconnected)
        self.successResultOf(made[0].wait())

    def test_badMappings(self) -> None:
        """
        Duplicate local ports and non-mappings fail with MappingError.
        """
        client = SpritesClient(MemoryReactorClock(), TEST_TOKEN, "http://127.0.0.1:8900")
        f = self.failureResultOf(
            client.proxyPorts("demo", [PortMapping(1, 2), PortMapping(1, 3)]), MappingError
        )
        self.assertIn("local port 1", str(f.value))
        self.failureResultOf(client.proxyPorts("demo", ["8080:80"]), MappingError)  # type: ignore[list-item]
        self.failureResultOf(client.proxyPort("demo", 1, 70000), MappingError)

    def test_cancelClosesSessions(self) -> None:
        """
        Cancelling proxyPorts closes what it made.
        """

        reactor = FailingListenReactor()
        client = SpritesClient(reactor, TEST_TOKEN, "http://127.0.0.1:8900")
        sessions: list[ProxySession] = []
        original = client.session

        def slowSecond(*a, **kw):  # type: ignore[no-untyped-def]
            s = original(*a, **kw)
            sessions.append(s)
            if len(sessions) == 2:
                s.listen = lambda: Deferred()  # type: ignore[method-assign]
            return s

        client.session = slowSecond  # type: ignore[method-assign]
        d = client.proxyPorts("demo", [PortMapping(9001, 1), PortMapping(9002, 2)])
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertIsNone(sessions[0].localAddr())
        self.successResultOf(sessions[0].wait())


class ClientTests(SynchronousTestCase):
    """
    L{SpritesClient} and L{Sprite}.
    """

    def test_tokenNeverShown(self) -> None:
        """
        The token appears in no repr.
        """
        sprite = MemorySprite()
        client = sprite.client()
        endpoint = client.endpoint("demo", 5432)
        session = client.session("demo", PortMapping(1, 2))
        for thing in [client, endpoint, session, client.sprite("demo"), endpoint._wsFactory]:
            self.assertNotIn(TEST_TOKEN, repr(thing))

    def test_badConfiguration(self) -> None:
        """
        A missing token or an insecure remote URL is refused at once.
        """
        self.assertRaises(ConfigurationError, SpritesClient, MemoryReactorClock(), "")
        self.assertRaises(
            ConfigurationError, SpritesClient, MemoryReactorClock(), "t", "http://example.com"
        )

    def test_endpointsReused(self) -> None:
        """
        The same target gets the same endpoint (one Autobahn factory, no
        reseeding of the global random per call); the cache is bounded.
        """
        import random

        client = MemorySprite().client()
        first = client.endpoint("demo", 22)
        state = random.getstate()
        self.assertIs(client.endpoint("demo", 22, "localhost"), first)
        self.assertEqual(random.getstate(), state)
        self.assertIsNot(client.endpoint("demo", 23), first)
        for port in range(1000, 1100):
            client.endpoint("demo", port)
        self.assertLessEqual(len(client._endpoints), 64)
        self.assertIsNot(client.endpoint("demo", 22), first)

    def test_oneKeepalive(self) -> None:
        """
        Every endpoint of a client pings its tunnels on the client's one
        keepalive, with the client's interval; an endpoint made on its own
        has its own.
        """
        client = MemorySprite().client(keepaliveInterval=7.0)
        endpoints = [client.endpoint("demo", 22), client.endpoint("other", 5432, "db")]
        self.assertEqual({id(e.keepalive) for e in endpoints}, {id(client.keepalive)})
        self.assertEqual(client.keepalive.interval, 7.0)
        alone = SpriteProxyEndpoint(
            MemoryReactorClock(), "demo", 22, token=TEST_TOKEN, keepaliveInterval=3.0
        )
        self.assertEqual(alone.keepalive.interval, 3.0)
        self.assertIsNot(alone.keepalive, client.keepalive)

    def test_insecureURLWarns(self) -> None:
        """
        An explicitly allowed plain-text URL to another host logs a warning
        (without the token); a loopback one does not.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        SpritesClient(MemoryReactorClock(), TEST_TOKEN, "http://127.0.0.1:8900")
        self.assertEqual([e for e in events if e["log_level"].name == "warn"], [])
        SpritesClient(MemoryReactorClock(), TEST_TOKEN, "http://example.com", allowInsecure=True)
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["host"], "example.com")
        self.assertNotIn(TEST_TOKEN, repr(warnings[0]))

    def test_proxySocketNetwork(self) -> None:
        """
        Only tcp is supported.
        """
        client = MemorySprite().client()
        f = self.failureResultOf(
            client.proxySocket("udp", "demo", "localhost:1", Factory()), AddressError
        )
        self.assertIn("'udp'", str(f.value))

    def test_proxySocketAddress(self) -> None:
        """
        Bad addresses fail, naming the address.
        """
        client = MemorySprite().client()
        for address in ["nohost", "h:0", "h:65536", "::1:22"]:
            f = self.failureResultOf(
                client.proxySocket("tcp", "demo", address, Factory()), AddressError
            )
            self.assertIn(repr(address), str(f.value))

    def test_proxySocketWorks(self) -> None:
        """
        proxySocket and Sprite.proxySocket reach the target; an empty host
        means localhost.
        """
        sprite = MemorySprite()
        sprite.addTarget(22, Factory.forProtocol(Echo))
        client = sprite.client()
        for d in [
            client.proxySocket("tcp", "demo", ":22", Factory.forProtocol(Protocol)),
            client.sprite("demo").proxySocket("tcp", "localhost:22", Factory.forProtocol(Protocol)),
        ]:
            sprite.flush()
            proto = self.successResultOf(d)
            self.assertEqual(proto.transport.getPeer().port, 22)

    def test_cancelProxySocket(self) -> None:
        """
        Cancelling proxySocket aborts the tunnel and leaves nothing open.
        """
        sprite = MemorySprite()
        sprite.addTarget(22, Factory.forProtocol(Echo))
        d = sprite.client().proxySocket("tcp", "demo", ":22", Factory.forProtocol(Protocol))
        d.cancel()
        sprite.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(sprite.server.tunnels, set())
        self.assertEqual(sprite.network.pumps, [])
