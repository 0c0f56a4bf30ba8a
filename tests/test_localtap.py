"""
Tests for L{sprites_twisted.localtap}: ``twistd sprites-local`` option
parsing and the service it builds, on a MemoryReactor.
"""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.localtap import DEFAULT_LISTEN, Options, _makeService
from sprites_twisted.server import APISite

TOKEN = "local-test-token-abcdef"


def parse(args: list[str], environ: dict[str, str] | None = None) -> Options:
    """
    Parse C{args} as ``twistd sprites-local`` would, with C{environ}.
    """
    options = Options({"SPRITE_TOKEN": TOKEN} if environ is None else environ)
    options.parseOptions(args)
    return options


BAD = [
    (["--listen", "nosuch:1"], ["--listen 'nosuch:1'", "server endpoint string"]),
    (["--listen", "tcp:notaport"], ["--listen 'tcp:notaport'"]),
    (["--listen", "tcp:99999"], ["--listen 'tcp:99999'", "port 99999 is outside 0..65535"]),
    (["--max-tunnels", "0"], ["--max-tunnels '0'", "1 or more"]),
    (["--max-tunnels", "many"], ["--max-tunnels 'many'"]),
    (["--sprite", ""], ["sprite name ''"]),
    (["--allow", "bad host"], ["--allow 'bad host'", "IP address"]),
    (["--allow", ""], ["--allow ''", "empty"]),
    (["--token-file", "/nonexistent/token"], ["'/nonexistent/token'"]),
    (["extra"], ["unexpected argument 'extra'"]),
]


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{Options}.
    """

    def test_defaults(self) -> None:
        """
        By default the server listens on 127.0.0.1:8900, serves any sprite
        name and allows only loopback targets.
        """
        options = parse([])
        self.assertEqual(options["listen"], DEFAULT_LISTEN)
        self.assertEqual(DEFAULT_LISTEN, "tcp:8900:interface=127.0.0.1")
        self.assertIsNone(options.sprites)
        self.assertEqual(options.allow, [])
        self.assertEqual(options.token, TOKEN)
        self.assertFalse(options.tokenGenerated)

    def test_repeatable(self) -> None:
        """
        --sprite and --allow can be given several times.
        """
        options = parse(
            ["--sprite", "a", "-s", "b", "--allow", "10.0.0.0/8", "--allow", "db.internal"]
        )
        self.assertEqual(options.sprites, ["a", "b"])
        self.assertEqual(options.allow, ["10.0.0.0/8", "db.internal"])

    def test_maxTunnels(self) -> None:
        """
        --max-tunnels is parsed as a whole number.
        """
        self.assertEqual(parse(["--max-tunnels", "3"])["max-tunnels"], 3)

    def test_generatedToken(self) -> None:
        """
        Without a token, a long random one is generated, different each time.
        """
        first, second = parse([], {}), parse([], {})
        self.assertTrue(first.tokenGenerated)
        self.assertGreaterEqual(len(first.token or ""), 32)
        self.assertNotEqual(first.token, second.token)

    def test_tokenFile(self) -> None:
        """
        --token-file wins over the environment.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\n")
        os.chmod(path, 0o600)
        options = parse(["--token-file", path])
        self.assertEqual(options.token, "from-file")
        self.assertFalse(options.tokenGenerated)

    def test_bad(self) -> None:
        """
        Each bad command line is a usage error naming the bad value.
        """
        for args, expected in BAD:
            with self.subTest(args=args):
                error = self.assertRaises(usage.UsageError, parse, args)
                for text in expected:
                    self.assertIn(text, str(error))

    def test_tokenNotInOptions(self) -> None:
        """
        The token is not in the options dictionary.
        """
        options = parse([])
        self.assertNotIn(TOKEN, repr(options))


class MakeServiceTests(SynchronousTestCase):
    """
    Tests for L{_makeService} on a MemoryReactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.out = io.StringIO()

    def make(self, args: list[str], environ: dict[str, str] | None = None) -> Any:
        service = _makeService(parse(args, environ), self.reactor, self.out)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def server(self) -> Any:
        factory = self.reactor.tcpServers[0][1]
        self.assertIsInstance(factory, APISite)
        return factory.api

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]

    def test_listensOnLoopback(self) -> None:
        """
        The server listens on 127.0.0.1:8900 by default.
        """
        self.make([])
        port, _, _, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (8900, "127.0.0.1"))
        self.assertEqual(self.warnings(), [])

    def test_listenOption(self) -> None:
        """
        --listen takes any server endpoint string, IPv6 included.
        """
        self.make(["--listen", "tcp6:0:interface=\\:\\:1"])
        port, _, _, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (0, "::1"))

    def test_serverConfiguration(self) -> None:
        """
        The server gets the token, the sprite names, the allow list and the
        tunnel limit.
        """
        self.make(["-s", "db", "--allow", "10.0.0.0/8", "--max-tunnels", "4"])
        server = self.server()
        self.assertTrue(server.checkAuthorization(b"Bearer " + TOKEN.encode()))
        self.assertFalse(server.checkAuthorization(b"Bearer nope"))
        self.assertEqual(server.sprites, frozenset(["db"]))
        self.assertTrue(server.policy.allows("10.1.2.3"))
        self.assertFalse(server.policy.allows("192.168.1.1"))
        self.assertEqual(server.maxTunnels, 4)

    def test_generatedTokenPrintedOnce(self) -> None:
        """
        A generated token is printed once, and is the one the server
        accepts; it never goes to the log.
        """
        self.make([], {})
        server = self.server()
        printed = self.out.getvalue()
        token = printed.split("SPRITE_TOKEN=", 1)[1].split()[0]
        self.assertEqual(printed.count(token), 1)
        self.assertTrue(server.checkAuthorization(b"Bearer " + token.encode()))
        self.assertFalse([e for e in self.events if token in formatEvent(e)])

    def test_givenTokenNotPrinted(self) -> None:
        """
        A token given by the user is never printed or logged.
        """
        self.make([])
        self.assertEqual(self.out.getvalue(), "")
        self.assertFalse([e for e in self.events if TOKEN in formatEvent(e)])

    def test_logsStart(self) -> None:
        """
        Start-up logs where the server listens and what it allows.
        """
        self.make(["-s", "db", "--allow", "10.0.0.0/8"])
        messages = [formatEvent(e) for e in self.events]
        self.assertIn(
            "sprites-local: serving the Sprites proxy API on tcp:8900:interface=127.0.0.1 "
            "for db; targets: loopback, 10.0.0.0/8",
            messages,
        )

    def test_allInterfacesWarns(self) -> None:
        """
        Listening beyond loopback logs a warning.
        """
        self.make(["--listen", "tcp:8900"])
        warnings = self.warnings()
        self.assertEqual(len(warnings), 1)
        self.assertIn("tcp:8900, which is not loopback only", warnings[0])
