"""
Tests for L{sprites_twisted._parser}: the ``sprite:`` client endpoint
string.
"""

from __future__ import annotations

import os

from twisted.internet.endpoints import clientFromString
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted._parser import SpriteEndpointParser
from sprites_twisted.endpoint import SpriteProxyEndpoint
from sprites_twisted.errors import ConfigurationError

TOKEN = "parser-test-token-xyz"
ENV = {"SPRITE_TOKEN": TOKEN, "SPRITES_API_URL": "http://127.0.0.1:8900"}


class ClientFromStringTests(SynchronousTestCase):
    """
    The parser as Twisted finds it, through C{clientFromString}.
    """

    def test_usesGivenReactor(self) -> None:
        """
        The endpoint uses the reactor given to C{clientFromString}, not the
        global one, and the options given in the string.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(TOKEN)
        os.chmod(path, 0o600)
        reactor = MemoryReactor()
        endpoint = clientFromString(
            reactor,
            f"sprite:db:5432:remoteHost=db.internal:apiURL=http\\://127.0.0.1\\:8900"
            f":tokenFile={path}:timeout=5",
        )
        self.assertIsInstance(endpoint, SpriteProxyEndpoint)
        self.assertIs(endpoint._reactor, reactor)
        self.assertEqual(endpoint.spriteName, "db")
        self.assertEqual((endpoint.remoteHost, endpoint.remotePort), ("db.internal", 5432))
        self.assertEqual(endpoint.url, "ws://127.0.0.1:8900/v1/sprites/db/proxy")
        self.assertEqual(endpoint._timeout, 5.0)
        self.assertEqual(endpoint._token, TOKEN)


class ParserTests(SynchronousTestCase):
    """
    Tests for L{SpriteEndpointParser} with a given environment.
    """

    def parse(
        self, *args: str, environ: dict[str, str] | None = None, **kwargs: str
    ) -> SpriteProxyEndpoint:
        parser = SpriteEndpointParser(ENV if environ is None else environ)
        return parser.parseStreamClient(self.reactor, *args, **kwargs)

    def setUp(self) -> None:
        self.reactor = MemoryReactor()

    def test_prefix(self) -> None:
        """
        The parser answers to ``sprite:``.
        """
        self.assertEqual(SpriteEndpointParser.prefix, "sprite")

    def test_defaults(self) -> None:
        """
        Without options the target is localhost, the token and API URL come
        from the environment, and the handshake timeout is 30 s.
        """
        endpoint = self.parse("db", "5432")
        self.assertEqual(endpoint.remoteHost, "localhost")
        self.assertEqual(endpoint._token, TOKEN)
        self.assertEqual(endpoint.url, "ws://127.0.0.1:8900/v1/sprites/db/proxy")
        self.assertEqual(endpoint._timeout, 30.0)

    def test_publicAPI(self) -> None:
        """
        Without SPRITES_API_URL, the public API is used over TLS.
        """
        endpoint = self.parse("db", "5432", environ={"SPRITES_TOKEN": TOKEN})
        self.assertEqual(endpoint.url, "wss://api.sprites.dev/v1/sprites/db/proxy")

    def test_caFile(self) -> None:
        """
        caFile= is the trust root for an https API.
        """
        import twisted

        caFile = os.path.join(
            os.path.dirname(twisted.__file__), "internet", "test", "fake_CAs", "thing1.pem"
        )
        endpoint = self.parse("db", "5432", apiURL="https://sprites.example", caFile=caFile)
        self.assertEqual(endpoint._trustRoot, caFile)

    def test_ipv6RemoteHost(self) -> None:
        """
        remoteHost= takes an IPv6 literal, with or without brackets.
        """
        self.assertEqual(self.parse("db", "5432", remoteHost="[fdf::1]").remoteHost, "fdf::1")
        self.assertEqual(self.parse("db", "5432", remoteHost="fdf::1").remoteHost, "fdf::1")

    def test_bracketedIPv6String(self) -> None:
        """
        In a whole endpoint string, ``remoteHost=[\\:\\:1]`` (colons
        escaped, as Twisted requires) is ::1, and the repr shows it in
        brackets.
        """
        tokenFile = self.mktemp()
        with open(tokenFile, "w") as f:
            f.write(TOKEN)
        os.chmod(tokenFile, 0o600)
        endpoint = clientFromString(
            MemoryReactor(),
            "sprite:db:22:remoteHost=[\\:\\:1]:apiURL=http\\://127.0.0.1\\:8900"
            f":tokenFile={tokenFile}",
        )
        self.assertEqual(endpoint.remoteHost, "::1")
        self.assertIn("db [::1]:22 via 127.0.0.1:8900", repr(endpoint))

    def test_errors(self) -> None:
        """
        Bad strings raise a ConfigurationError (a ValueError) naming the bad
        value and never showing the token.
        """
        cases = [
            (("db",), {}, None, "'db' is not NAME:PORT"),
            (("db", "1", "2"), {}, None, "'db:1:2' is not NAME:PORT"),
            (("db", "web"), {}, None, "'web'"),
            (("db", "0"), {}, None, "port 0 is outside 1..65535"),
            (("db", "70000"), {}, None, "port 70000 is outside 1..65535"),
            (("db", "1"), {"remoteHost": "a b"}, None, "'a b'"),
            (("db", "1"), {"token": TOKEN}, None, "unknown option 'token'"),
            (("db", "1"), {"timeout": "soon"}, None, "timeout 'soon'"),
            (("db", "1"), {"timeout": "-1"}, None, "timeout '-1'"),
            (("db", "1"), {"apiURL": "ftp://x"}, None, "'ftp://x'"),
            (("db", "1"), {"apiURL": "http://10.1.2.3"}, None, "not encrypted"),
            (("db", "1"), {"tokenFile": "/nonexistent/t"}, None, "'/nonexistent/t'"),
            (("db", "1"), {}, {}, "no token"),
            (("", "1"), {}, None, "sprite name ''"),
        ]
        for args, kwargs, environ, expected in cases:
            with self.subTest(args=args, kwargs=kwargs):
                error = self.assertRaises(
                    ConfigurationError, self.parse, *args, environ=environ, **kwargs
                )
                self.assertIn(expected, str(error))
                self.assertNotIn(TOKEN, str(error))
                self.assertIsInstance(error, ValueError)
