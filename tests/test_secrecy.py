"""
The API token never shows: not in any log event (any level, Twisted's or
Autobahn's, even with txaio's global level at ``debug``), not in a repr,
not in an exception's message or traceback.  One run drives every failure a
server can cause (401, 404, a refused handshake, a TLS failure) and a
success, through a forwarded port and through L{SpritesClient.proxySocket}.
"""

from __future__ import annotations

import os
from typing import Any

import txaio
from twisted.internet import reactor as _globalReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from sprites_twisted.client import SpritesClient
from sprites_twisted.errors import (
    HandshakeError,
    SpriteAuthError,
    SpriteNotFoundError,
    TLSVerificationError,
)
from sprites_twisted.server import LocalSpriteServer
from sprites_twisted.servertunnel import ProxyServerProtocol
from sprites_twisted.tunnel import TunnelClientProtocol
from tests.helpers import LogCapture, connectLocal, echoFactory, listen
from tests.pki import sharedPKI

reactor: Any = _globalReactor

#: The client's token: it must appear nowhere.
TOKEN = "secret-client-token-7d1f3a9c5e"
#: Another server's token, for the 401 case: it must not appear either.
OTHER_TOKEN = "secret-server-token-2b6e8f04ad"


class TokenSecrecyTests(TestCase):
    """
    A full run with failing servers leaks the token nowhere.
    """

    def setUp(self) -> None:
        level = txaio.get_global_log_level()
        txaio.set_global_log_level("debug")
        self.addCleanup(txaio.set_global_log_level, level)
        self.shown: list[str] = []

    def show(self, *objects: Any) -> None:
        """
        Remember the repr and str of C{objects}.
        """
        for o in objects:
            self.shown += [repr(o), str(o)]

    def showFailure(self, failure: Failure) -> None:
        """
        Remember everything a failure can be displayed as.
        """
        self.shown += [
            str(failure.value),
            repr(failure.value),
            failure.getErrorMessage(),
            failure.getTraceback(),
            failure.getTraceback(detail="verbose"),
            str(failure.value.args),
        ]

    async def clientRun(
        self, client: SpritesClient, targetPort: int, expected: Any, host: str = "127.0.0.1"
    ) -> None:
        """
        One failing (or, with C{expected} None, working) tunnel through a
        forwarded port, and one through C{proxySocket}.
        """
        session = await client.proxyPort("demo", 0, targetPort, host)
        self.addCleanup(session.close)
        self.show(client, client.sprite("demo"), session, session.factory)
        endpoint = client.endpoint("demo", targetPort, host)
        self.show(endpoint, endpoint._wsFactory, endpoint._transportEndpoint)
        local = await connectLocal(reactor, session.localPort)
        local.transport.write(b"hello")
        if expected is None:
            await local.whenReceived(5)
            local.transport.loseConnection()
        await local.closed
        d = client.proxySocket("tcp", "demo", f"{host}:{targetPort}", Factory.forProtocol(Protocol))
        if expected is None:
            proto = await d
            self.show(proto, proto.transport)
            proto.transport.loseConnection()
        else:
            try:
                await d
            except expected:
                self.showFailure(Failure())
            else:
                self.fail(f"expected {expected}")

    async def test_tokenNeverShown(self) -> None:
        """
        No log event, repr, error message or traceback of the run holds either
        token.
        """
        logs = LogCapture(self)
        echoPort = (await listen(self, reactor, echoFactory()))[0].getHost().port
        server = LocalSpriteServer(reactor, TOKEN, sprites={"demo"})
        other = LocalSpriteServer(reactor, OTHER_TOKEN)
        self.show(server, other)
        plain = (await listen(self, reactor, server.factory()))[0].getHost().port
        wrong = (await listen(self, reactor, other.factory()))[0].getHost().port
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        description = sharedPKI().expired.serverDescription(directory, "expired")
        tls = (await listen(self, reactor, server.factory(), description))[0].getHost().port

        def client(url: str, **kw: Any) -> SpritesClient:
            kw.setdefault("trustRoot", sharedPKI().writeCA(directory))
            return SpritesClient(reactor, TOKEN, url, lingerTimeout=0.01, prewarm=0, **kw)

        await self.clientRun(client(f"ws://127.0.0.1:{plain}"), echoPort, None)
        await self.clientRun(client(f"ws://127.0.0.1:{wrong}"), echoPort, SpriteAuthError)
        notFound = client(f"ws://127.0.0.1:{plain}")
        session = await notFound.proxyPort("nope", 0, echoPort)
        self.addCleanup(session.close)
        await (await connectLocal(reactor, session.localPort)).closed
        d = notFound.proxySocket(
            "tcp", "nope", f"127.0.0.1:{echoPort}", Factory.forProtocol(Protocol)
        )
        try:
            await d
        except SpriteNotFoundError:
            self.showFailure(Failure())
        # A target outside the server's policy: the handshake is refused.
        await self.clientRun(client(f"ws://127.0.0.1:{plain}"), 5432, HandshakeError, "10.9.8.7")
        await self.clientRun(client(f"wss://localhost:{tls}"), echoPort, TLSVerificationError)

        texts = logs.texts()
        # The run did log the failures (so the check below has teeth)...
        joined = "\n".join(texts)
        for fragment in ("HTTP 401", "HTTP 404", "certificate has expired", "tunnel refused"):
            self.assertIn(fragment, joined)
        # ...and never either token.
        for token in (TOKEN, OTHER_TOKEN):
            self.assertEqual([t for t in texts if token in t], [])
            self.assertEqual([s for s in self.shown if token in s], [])
        # Autobahn's per-protocol loggers (which log the upgrade request,
        # headers included, at debug) stayed at info despite the global level.
        before = len(logs.events)
        TunnelClientProtocol.log.debug("request: {r}", r=TOKEN)
        ProxyServerProtocol.log.debug("request: {r}", r=TOKEN)
        self.assertEqual(len(logs.events), before)
        self.assertEqual(logs.problems(), [])
