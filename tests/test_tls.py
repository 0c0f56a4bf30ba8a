"""
TLS between the client and the Sprites API, end to end over loopback: the
local sprite server serves ``ssl:`` with certificates from a throw-away CA
(L{tests.pki}), and L{SpritesClient} must accept exactly the certificate
that chains to its trust root and names the host, and refuse everything
else before a single byte of HTTP (let alone the token) is sent.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase

from sprites_twisted.client import SpritesClient
from sprites_twisted.errors import ConfigurationError, TLSVerificationError
from sprites_twisted.server import LocalSpriteServer
from tests.helpers import (
    LogCapture,
    TrackingFactory,
    connectLocal,
    countingFactory,
    echoFactory,
    listen,
    roundTrip,
)
from tests.pki import ServerCertificate, sharedPKI

reactor: Any = _globalReactor

TOKEN = "tls-test-token-0b8c4e7a91d2"


class TLSTestMixin:
    """
    Starts a TLS sprite server and an echo target, and builds clients.
    """

    async def startTLSServer(
        self: Any, certificate: ServerCertificate
    ) -> tuple[int, TrackingFactory]:
        """
        Serve the sprite API over TLS with C{certificate} on 127.0.0.1.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.caPath = sharedPKI().writeCA(directory)
        self.requests = countingFactory(LocalSpriteServer(reactor, TOKEN))
        port, tracked = await listen(
            self, reactor, self.requests, certificate.serverDescription(directory, "server")
        )
        echoPort, _ = await listen(self, reactor, echoFactory())
        self.echoPort = echoPort.getHost().port
        return port.getHost().port, tracked

    def tlsClient(self: Any, url: str, **options: Any) -> SpritesClient:
        """
        A client of C{url} trusting the test CA unless told otherwise.
        """
        options.setdefault("trustRoot", self.caPath)
        options.setdefault("handshakeTimeout", 10)
        # A local client that closes its socket leaves the tunnel lingering
        # for the reply; keep that short so that clean-up is quick.
        options.setdefault("lingerTimeout", 0.01)
        options.setdefault("prewarm", 0)
        return SpritesClient(reactor, TOKEN, url, **options)

    async def tunnelThroughPort(self: Any, client: SpritesClient, payload: bytes) -> bytes:
        """
        Forward a local port through C{client} to the echo target, send
        C{payload} and return what came back.
        """
        session = await client.proxyPort("demo", 0, self.echoPort, "127.0.0.1")
        self.addCleanup(session.close)
        return await roundTrip(reactor, session.localPort, payload)


class TrustedCertificateTests(TLSTestMixin, TestCase):
    """
    A certificate from the trusted CA for the right host is accepted.
    """

    async def test_trustedCertificateCarriesBytes(self) -> None:
        """
        Bytes go through a forwarded port over wss:// to localhost.
        """
        port, tracked = await self.startTLSServer(sharedPKI().good)
        payload = os.urandom(100_000)
        echoed = await self.tunnelThroughPort(self.tlsClient(f"wss://localhost:{port}"), payload)
        self.assertEqual(echoed, payload)
        self.assertEqual(
            [r.get(b"authorization") for r in self.requests.requests],
            [b"Bearer " + TOKEN.encode()],
        )
        self.assertNotIn(TOKEN.encode(), bytes(tracked.received))

    async def test_httpsSchemeAndTrustRootObject(self) -> None:
        """
        An https:// base URL and an C{IOpenSSLTrustRoot} (instead of a CA
        path) work the same.
        """
        port, _ = await self.startTLSServer(sharedPKI().good)
        root = trustRootFromCertificates([Certificate.loadPEM(sharedPKI().caPEM)])
        client = self.tlsClient(f"https://localhost:{port}", trustRoot=root)
        self.assertEqual(await self.tunnelThroughPort(client, b"ping"), b"ping")

    async def test_ipAddressIdentity(self) -> None:
        """
        An IP literal base URL is checked against the certificate's IP
        address names.
        """
        port, _ = await self.startTLSServer(sharedPKI().good)
        client = self.tlsClient(f"wss://127.0.0.1:{port}")
        self.assertEqual(await self.tunnelThroughPort(client, b"by address"), b"by address")


class VerificationFailureTests(TLSTestMixin, TestCase):
    """
    Every certificate problem is a L{TLSVerificationError} naming the host
    and the reason, and the server never sees the HTTP request.
    """

    async def assertRefused(
        self, certificate: ServerCertificate, url: str = "wss://localhost:{port}", **options: Any
    ) -> TLSVerificationError:
        """
        Open one tunnel to a server using C{certificate}; check that it fails
        verification before any HTTP byte reached the server.
        """
        port, tracked = await self.startTLSServer(certificate)
        client = self.tlsClient(url.format(port=port), **options)
        d = client.proxySocket(
            "tcp", "demo", f"127.0.0.1:{self.echoPort}", Factory.forProtocol(Protocol)
        )
        error = await self.assertFailure(d, TLSVerificationError)
        self.assertEqual(tracked.accepted, 1)
        self.assertEqual(self.requests.requests, [])
        self.assertNotIn(TOKEN.encode(), bytes(tracked.received))
        await tracked.whenIdle()
        return error

    async def test_untrustedCA(self) -> None:
        """
        A certificate from another CA is refused as untrusted.
        """
        error = await self.assertRefused(sharedPKI().untrusted)
        self.assertEqual(error.host, "localhost")
        self.assertIn("verification failed for localhost", str(error))
        self.assertIn("'CN=some other CA' is not a trusted CA", str(error))
        self.assertNotIn("expired", str(error))

    async def test_expired(self) -> None:
        """
        An expired certificate is refused as expired, with the date.
        """
        error = await self.assertRefused(sharedPKI().expired)
        self.assertIn("verification failed for localhost", str(error))
        self.assertIn("certificate has expired (on ", str(error))
        self.assertNotIn("trusted", str(error))

    async def test_wrongHostName(self) -> None:
        """
        A certificate for another name is refused, naming both names.
        """
        error = await self.assertRefused(sharedPKI().wrongHost)
        self.assertIn(
            "verification failed for localhost: the certificate is not valid for the "
            "host name localhost (it is for wrong.example)",
            str(error),
        )

    async def test_wrongIPAddress(self) -> None:
        """
        An IP literal URL is refused by a certificate that names only a host.
        """
        error = await self.assertRefused(sharedPKI().wrongHost, "wss://127.0.0.1:{port}")
        self.assertEqual(error.host, "127.0.0.1")
        self.assertIn("not valid for the host name 127.0.0.1", str(error))

    async def test_systemTrustByDefault(self) -> None:
        """
        Without a trust root the system store is used, so the test CA is not
        trusted: verification is on by default.
        """
        error = await self.assertRefused(sharedPKI().good, trustRoot=None)
        self.assertIn("not a trusted CA", str(error))

    async def test_failedTunnelIsLoggedAndListenerServes(self) -> None:
        """
        Through a forwarded port, a verification failure closes that local
        connection and logs a warning with the reason.
        """
        port, tracked = await self.startTLSServer(sharedPKI().expired)
        logs = LogCapture(self)
        session = await self.tlsClient(f"wss://localhost:{port}").proxyPort(
            "demo", 0, self.echoPort, "127.0.0.1"
        )
        self.addCleanup(session.close)
        for _ in range(2):
            local = await connectLocal(reactor, session.localPort)
            await local.closed
            self.assertEqual(bytes(local.received), b"")
        warnings = logs.atLevel(LogLevel.warn)
        self.assertEqual(
            len([w for w in warnings if "certificate has expired" in w and "localhost" in w]), 2
        )
        self.assertEqual(tracked.accepted, 2)
        self.assertEqual(self.requests.requests, [])
        self.assertEqual(logs.problems(), [])


class TrustRootArgumentTests(TestCase):
    """
    A trust root that cannot be used is an error at once, never a silently
    unverified connection.
    """

    def test_missingCAFile(self) -> None:
        """
        A CA path that does not exist is a L{ConfigurationError} naming it.
        """
        path = os.path.abspath(self.mktemp())
        with self.assertRaises(ConfigurationError) as cm:
            SpritesClient(reactor, TOKEN, "https://localhost:1", trustRoot=path).endpoint("s", 1)
        self.assertIn(path, str(cm.exception))

    def test_caFileWithoutCertificate(self) -> None:
        """
        A CA file holding no PEM certificate is a L{ConfigurationError}.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("not a certificate\n")
        with self.assertRaises(ConfigurationError):
            SpritesClient(reactor, TOKEN, "https://localhost:1", trustRoot=path).endpoint("s", 1)

    def test_unusableTrustRoot(self) -> None:
        """
        Something that is neither a path nor a trust root is refused.
        """
        for junk in (42, b"/etc/ssl", object()):
            self.assertRaises(
                (TypeError, ConfigurationError),
                SpritesClient(reactor, TOKEN, "https://localhost:1", trustRoot=junk).endpoint,
                "s",
                1,
            )


class PlainServerTests(TestCase):
    """
    A wss:// URL pointing at a server that does not speak TLS.
    """

    async def test_plainTextServer(self) -> None:
        """
        A plain-text answer to the TLS hello is a TLSHandshakeError saying
        the server may not speak TLS there; the token is not sent.
        """
        from twisted.internet.endpoints import TCP4ServerEndpoint

        from sprites_twisted.errors import TLSHandshakeError

        received: list[bytes] = []

        class PlainHTTP(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.loseConnection()

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(PlainHTTP)
        )
        self.addCleanup(port.stopListening)
        client = SpritesClient(reactor, TOKEN, f"wss://127.0.0.1:{port.getHost().port}")
        d = client.proxySocket("tcp", "demo", "127.0.0.1:1", Factory.forProtocol(Protocol))
        error = await self.assertFailure(d, TLSHandshakeError)
        self.assertIn("does the server speak TLS", str(error))
        self.assertIn("127.0.0.1", str(error))
        self.assertTrue(received)
        self.assertNotIn(TOKEN.encode(), b"".join(received))


class ResumptionTests(TLSTestMixin, TestCase):
    """
    Tunnels to one API host resume the TLS session of the one before.
    """

    async def test_secondTunnelResumes(self) -> None:
        """
        Once a tunnel is open its TLS session is kept, and the next tunnel's
        connection is given it; both carry bytes (a session that cannot be
        resumed falls back to a full, verified handshake).
        """
        port, _ = await self.startTLSServer(sharedPKI().good)
        client = self.tlsClient(f"wss://localhost:{port}")
        endpoint = client.endpoint("demo", self.echoPort, "127.0.0.1")
        sessions = endpoint._tlsSessions
        self.assertIsNotNone(sessions)
        offered: list[bool] = []
        original = sessions.clientConnectionForTLS

        def spy(tlsProtocol: Any) -> Any:
            offered.append(sessions.session is not None)
            return original(tlsProtocol)

        sessions.clientConnectionForTLS = spy  # type: ignore[method-assign]
        session = await client.proxyPort("demo", 0, self.echoPort, "127.0.0.1")
        self.addCleanup(session.close)
        self.assertEqual(await roundTrip(reactor, session.localPort, b"first"), b"first")
        self.assertIsNotNone(sessions.session)
        self.assertEqual(await roundTrip(reactor, session.localPort, b"second"), b"second")
        self.assertEqual(offered, [False, True])

    def test_plainTextHasNoSessions(self) -> None:
        """
        A plain-text API URL has no TLS session cache.
        """
        endpoint = SpritesClient(reactor, TOKEN, "http://127.0.0.1:1").endpoint("demo", 80)
        self.assertIsNone(endpoint._tlsSessions)
