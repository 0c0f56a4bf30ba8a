"""
Tests for L{sprites_twisted.tap}: ``twistd sprites-proxy`` option parsing
and the service it builds, on a MemoryReactor.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

import twisted
from sprites_twisted.endpoint import SpriteProxyEndpoint
from sprites_twisted.manager import ProxyManager
from sprites_twisted.mapping import PortMapping
from sprites_twisted.session import ProxySession
from sprites_twisted.tap import Options, _makeService

# A CA certificate that ships with Twisted's own tests.
CA_FILE = os.path.join(
    os.path.dirname(twisted.__file__), "internet", "test", "fake_CAs", "thing1.pem"
)
TOKEN = "tap-test-token-0123456789"
LOCAL_API = "http://127.0.0.1:8900"
ENV = {"SPRITE_TOKEN": TOKEN, "SPRITES_API_URL": LOCAL_API}


def parse(args: list[str], environ: dict[str, str] | None = None) -> Options:
    """
    Parse C{args} as ``twistd sprites-proxy`` would, with C{environ}.
    """
    options = Options(ENV if environ is None else environ)
    options.parseOptions(args)
    return options


# (arguments, environment or None for ENV, expected mappings)
GOOD = [
    (["-s", "db", "5432"], None, [PortMapping(5432, 5432)]),
    (
        ["--sprite", "web", "--map", "8080:80", "-m", "5433:5432"],
        None,
        [PortMapping(8080, 80), PortMapping(5433, 5432)],
    ),
    (
        ["-s", "web", "8080", "4005:4000"],
        None,
        [PortMapping(8080, 8080), PortMapping(4005, 4000)],
    ),
    (
        ["-s", "db", "--map", "5433:[fdf::1]:5432"],
        None,
        [PortMapping(5433, 5432, "fdf::1")],
    ),
    (
        ["-s", "db", "5433:db.internal:5432"],
        None,
        [PortMapping(5433, 5432, "db.internal")],
    ),
    (["-s", "db", "0:80", "0:81"], None, [PortMapping(0, 80), PortMapping(0, 81)]),
    (["-s", "db", "5432"], {"SPRITES_TOKEN": TOKEN}, [PortMapping(5432, 5432)]),
    # Options after mappings are options, not mappings.
    (
        ["8080:80", "-s", "db", "--bind", "::1", "81"],
        None,
        [PortMapping(8080, 80), PortMapping(81, 81)],
    ),
    (["5432", "--sprite=db"], None, [PortMapping(5432, 5432)]),
    (
        ["-s", "db", "127.0.0.2:8080:web:80", "[::1]:8080:localhost:80"],
        None,
        [PortMapping(8080, 80, "web", "127.0.0.2"), PortMapping(8080, 80, "localhost", "::1")],
    ),
]

# (arguments, environment or None for ENV, texts the message must contain)
BAD = [
    (["5432"], None, ["--sprite NAME is required"]),
    (["-s", "db"], None, ["nothing to forward", "--map 8080:80"]),
    (["-s", "db", "99999"], None, ["'99999'", "outside 1..65535", "expected PORT"]),
    (["-s", "db", "--map", "8080:70000"], None, ["'8080:70000'", "outside 1..65535"]),
    (["-s", "db", "8080:0"], None, ["'8080:0'", "remote port 0 is outside 1..65535"]),
    (["-s", "db", "0"], None, ["'0'", "outside 1..65535"]),
    (["-s", "db", "web"], None, ["'web'", "not a whole number"]),
    (["-s", "db", "1:fdf::1:2"], None, ["'1:fdf::1:2'", "brackets"]),
    (["-s", "db", "5433:[nope]:5432"], None, ["'5433:[nope]:5432'"]),
    (
        ["-s", "db", "--map", "8080:81", "8080:80"],
        None,
        ["local port 8080 is mapped twice"],
    ),
    (
        ["-s", "db", "8080:80", "8080:81"],
        None,
        ["'8080:80'", "'8080:81'", "mapped twice"],
    ),
    (["-s", "db", "5432"], {}, ["no Sprites token", "SPRITE_TOKEN", "--token-file"]),
    (["-s", "db", "5432"], {"SPRITE_TOKEN": "two words"}, ["token contains spaces"]),
    (["-s", "db\x07", "5432"], None, ["'db\\x07'", "control characters"]),
    (
        ["-s", "db", "--bind", "example.com", "5432"],
        None,
        ["--bind 'example.com'", "IP address", "localhost"],
    ),
    (
        ["-s", "db", "--listen", "unix:/tmp/x.sock"],
        None,
        ["--listen 'unix:/tmp/x.sock' has no --to"],
    ),
    (["-s", "db", "--to", "5432"], None, ["--to '5432' needs a --listen"]),
    (
        ["-s", "db", "--listen", "tcp:99999", "--to", "80"],
        None,
        ["--listen 'tcp:99999'", "port 99999 is outside 0..65535"],
    ),
    (["-s", "db", "--listen", "nosuch:1", "--to", "80"], None, ["--listen 'nosuch:1'"]),
    (
        ["-s", "db", "--listen", "unix:/tmp/x", "--to", "db:0"],
        None,
        ["--to 'db:0'", "outside 1..65535"],
    ),
    (["-s", "db", "--keepalive", "often", "5432"], None, ["--keepalive 'often'"]),
    (["-s", "db", "--linger", "-1", "5432"], None, ["--linger '-1'"]),
    (["-s", "db", "--prewarm", "-1", "5432"], None, ["--prewarm '-1'", "0 or more"]),
    (["-s", "db", "--prewarm", "two", "5432"], None, ["--prewarm 'two'"]),
    (["-s", "db", "--prewarm-idle", "0", "5432"], None, ["--prewarm-idle '0'"]),
    (["-s", "db", "--no-such-option", "5432"], None, ["no-such-option"]),
    (["-s", "db", "--bind", "127.0.0.300", "5432"], None, ["--bind '127.0.0.300'"]),
    (
        ["-s", "db", "--handshake-timeout", "soon", "5432"],
        None,
        ["--handshake-timeout 'soon'"],
    ),
    (
        ["-s", "db", "--handshake-timeout", "0", "5432"],
        None,
        ["--handshake-timeout '0'"],
    ),
    (
        ["-s", "db", "--drain-timeout", "-1", "5432"],
        None,
        ["--drain-timeout '-1'", "zero or more"],
    ),
    (["-s", "db", "--drain-timeout", "nan", "5432"], None, ["--drain-timeout 'nan'"]),
    (
        ["-s", "db", "--api-url", "ftp://example.com", "5432"],
        None,
        ["'ftp://example.com'"],
    ),
    (
        ["-s", "db", "--api-url", "http://10.1.2.3:8900", "5432"],
        None,
        ["'http://10.1.2.3:8900'", "not encrypted", "--allow-insecure"],
    ),
    (
        ["-s", "db", "5432"],
        {"SPRITE_TOKEN": TOKEN, "SPRITES_API_URL": "ws://sprites.example"},
        ["'ws://sprites.example'", "not encrypted"],
    ),
    (
        ["-s", "db", "--token-file", "/nonexistent/token", "5432"],
        None,
        ["'/nonexistent/token'"],
    ),
    (
        ["-s", "db", "--ca-file", "/nonexistent/ca.pem", "5432"],
        None,
        ["'/nonexistent/ca.pem'"],
    ),
]


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{Options}.
    """

    def test_goodInputs(self) -> None:
        """
        Each good command line parses into its mappings, in order.
        """
        for args, environ, mappings in GOOD:
            with self.subTest(args=args):
                options = parse(args, environ)
                self.assertEqual(options.mappings, mappings)
                self.assertEqual(options.token, TOKEN)

    def test_badInputs(self) -> None:
        """
        Each bad command line is a usage error whose message names the bad
        value and what is expected, and never shows the token.
        """
        for args, environ, expected in BAD:
            with self.subTest(args=args):
                error = self.assertRaises(usage.UsageError, parse, args, environ)
                for text in expected:
                    self.assertIn(text, str(error))
                self.assertNotIn(TOKEN, str(error))

    def test_defaults(self) -> None:
        """
        Without options, listeners bind 127.0.0.1, the drain lasts 5 s, the
        handshake may take 30 s and the API URL comes from SPRITES_API_URL.
        """
        options = parse(["-s", "db", "5432"])
        self.assertEqual(options["bind"], "127.0.0.1")
        self.assertEqual(options["drain-timeout"], 5.0)
        self.assertEqual(options["handshake-timeout"], 30.0)
        self.assertEqual(options["api-url"], LOCAL_API)
        self.assertFalse(options["allow-insecure"])
        self.assertIsNone(options.trustRoot)

    def test_publicAPIByDefault(self) -> None:
        """
        Without --api-url or SPRITES_API_URL the public API is used.
        """
        options = parse(["-s", "db", "5432"], {"SPRITE_TOKEN": TOKEN})
        self.assertEqual(options["api-url"], "https://api.sprites.dev")

    def test_apiURLOption(self) -> None:
        """
        --api-url wins over SPRITES_API_URL.
        """
        options = parse(["-s", "db", "--api-url", "http://[::1]:9000", "5432"])
        self.assertEqual(options["api-url"], "http://[::1]:9000")

    def test_allowInsecure(self) -> None:
        """
        --allow-insecure accepts a plain-text URL to a non-loopback host.
        """
        options = parse(
            [
                "-s",
                "db",
                "--allow-insecure",
                "--api-url",
                "http://10.1.2.3:8900",
                "5432",
            ]
        )
        self.assertTrue(options["allow-insecure"])

    def test_bindIPv6(self) -> None:
        """
        --bind takes an IPv6 address, with or without brackets.
        """
        self.assertEqual(parse(["-s", "db", "--bind", "::1", "5432"])["bind"], "::1")
        self.assertEqual(parse(["-s", "db", "--bind", "[::1]", "5432"])["bind"], "::1")

    def test_bindLocalhost(self) -> None:
        """
        --bind localhost is accepted (both loopback families).
        """
        self.assertEqual(parse(["-s", "db", "--bind", "localhost", "5432"])["bind"], "localhost")

    def test_listenTo(self) -> None:
        """
        --listen ENDPOINT --to TARGET pairs make forwards, in order; the
        target is PORT or HOST:PORT.
        """
        options = parse(
            ["-s", "db", "--listen", "unix:/tmp/pg.sock", "--to", "5432"]
            + ["--listen", "tcp6:8080:interface=\\:\\:1", "--to", "[fdf::1]:80"]
        )
        self.assertEqual(
            options.forwards,
            [
                ("unix:/tmp/pg.sock", PortMapping(0, 5432)),
                ("tcp6:8080:interface=\\:\\:1", PortMapping(0, 80, "fdf::1")),
            ],
        )
        self.assertEqual(options.mappings, [])

    def test_keepaliveAndLinger(self) -> None:
        """
        --keepalive and --linger are seconds (15 and 2 by default);
        --no-keepalive is 0.
        """
        options = parse(["-s", "db", "5432"])
        self.assertEqual((options["keepalive"], options["linger"]), (15.0, 2.0))
        options = parse(["-s", "db", "--keepalive", "4", "--linger", "0.5", "5432"])
        self.assertEqual((options["keepalive"], options["linger"]), (4.0, 0.5))
        self.assertEqual(parse(["-s", "db", "--no-keepalive", "5432"])["keepalive"], 0.0)

    def test_tokenSource(self) -> None:
        """
        The options say where the token came from (for messages), never
        what it is.
        """
        self.assertEqual(parse(["-s", "db", "1"]).tokenSource, "$SPRITE_TOKEN")
        self.assertEqual(
            parse(["-s", "db", "1"], {"SPRITES_TOKEN": TOKEN}).tokenSource, "$SPRITES_TOKEN"
        )

    def test_timeouts(self) -> None:
        """
        The timeouts are parsed as seconds; a drain of 0 closes at once.
        """
        options = parse(["-s", "db", "--handshake-timeout", "2.5", "--drain-timeout", "0", "5432"])
        self.assertEqual(options["handshake-timeout"], 2.5)
        self.assertEqual(options["drain-timeout"], 0.0)

    def test_tokenNeverInOptions(self) -> None:
        """
        The token is kept out of the options dictionary, so printing the
        options (or their repr) cannot show it.
        """
        options = parse(["-s", "db", "5432"])
        self.assertNotIn(TOKEN, repr(options))
        self.assertNotIn(TOKEN, str(options))
        self.assertNotIn(TOKEN, list(options.values()))

    def test_tokenCommandLineRefused(self) -> None:
        """
        There is no option taking the token itself.
        """
        self.assertRaises(usage.UsageError, parse, ["-s", "db", "--token", TOKEN, "5432"], {})

    def test_tokenFile(self) -> None:
        """
        --token-file reads the token (trimmed) and wins over the
        environment; a private file is not reported as exposed.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("file-token-abc\n")
        os.chmod(path, 0o600)
        options = parse(["-s", "db", "--token-file", path, "5432"])
        self.assertEqual(options.token, "file-token-abc")
        self.assertFalse(options.tokenFileExposed)

    def test_tokenFileExposed(self) -> None:
        """
        A token file readable by others is noticed.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("file-token-abc\n")
        os.chmod(path, 0o644)
        options = parse(["-s", "db", "--token-file", path, "5432"])
        self.assertTrue(options.tokenFileExposed)

    def test_caFile(self) -> None:
        """
        --ca-file is loaded once, at parse time, into a trust root.
        """
        options = parse(["-s", "db", "--ca-file", CA_FILE, "5432"])
        self.assertIsNotNone(options.trustRoot)

    def test_caFileWithoutCertificate(self) -> None:
        """
        A --ca-file holding no certificate is a usage error naming it.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        error = self.assertRaises(usage.UsageError, parse, ["-s", "db", "--ca-file", path, "1"])
        self.assertIn(repr(path), str(error))


class MakeServiceTests(SynchronousTestCase):
    """
    Tests for L{_makeService} on a MemoryReactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def make(self, args: list[str], environ: dict[str, str] | None = None) -> ProxyManager:
        manager = _makeService(parse(["--no-check", *args], environ), self.reactor)
        self.addCleanup(manager.stopService)
        return manager

    def messages(self, level: Any = None) -> list[str]:
        return [formatEvent(e) for e in self.events if level is None or e.get("log_level") == level]

    def test_oneSessionPerMapping(self) -> None:
        """
        The service is a ProxyManager with one ProxySession per mapping, in
        the order given, each for the named sprite.
        """
        manager = self.make(["-s", "db", "--map", "8080:80", "5433:[fdf::1]:5432"])
        self.assertIsInstance(manager, ProxyManager)
        sessions = list(manager)
        self.assertEqual(len(sessions), 2)
        for session in sessions:
            self.assertIsInstance(session, ProxySession)
            self.assertEqual(session.spriteName, "db")
        self.assertEqual(
            [s.mapping for s in sessions],
            [PortMapping(8080, 80), PortMapping(5433, 5432, "fdf::1")],
        )

    def test_listenersOnLoopback(self) -> None:
        """
        Nothing listens before the service starts; then each mapping
        listens on its port on 127.0.0.1.
        """
        manager = self.make(["-s", "db", "--map", "8080:80", "5433:5432"])
        self.assertEqual(self.reactor.tcpServers, [])
        manager.startService()
        self.assertEqual(
            [(port, interface) for port, _, _, interface in self.reactor.tcpServers],
            [(8080, "127.0.0.1"), (5433, "127.0.0.1")],
        )
        factories = [factory for _, factory, _, _ in self.reactor.tcpServers]
        self.assertEqual(factories, [s.factory for s in manager])

    def test_bindIPv6(self) -> None:
        """
        --bind ::1 makes IPv6 listeners on ::1.
        """
        manager = self.make(["-s", "db", "--bind", "[::1]", "8080:80"])
        manager.startService()
        self.assertEqual(self.reactor.tcpServers[0][3], "::1")
        self.assertEqual(self.reactor.tcpServers[0][0], 8080)

    def test_tunnelsUseOptions(self) -> None:
        """
        Each session's tunnels go to the API URL given, for the mapping's
        remote host and port, on the reactor given, with the handshake
        timeout; sessions drain for --drain-timeout.
        """
        manager = self.make(
            [
                "-s",
                "db",
                "--handshake-timeout",
                "7",
                "--drain-timeout",
                "2",
                "5433:[fdf::1]:5432",
            ]
        )
        session = list(manager)[0]
        endpoint = session.factory.endpoint
        self.assertIsInstance(endpoint, SpriteProxyEndpoint)
        self.assertIs(endpoint._reactor, self.reactor)
        self.assertEqual(endpoint.url, "ws://127.0.0.1:8900/v1/sprites/db/proxy")
        self.assertEqual((endpoint.remoteHost, endpoint.remotePort), ("fdf::1", 5432))
        self.assertEqual(endpoint._timeout, 7.0)
        self.assertEqual(session.drainTimeout, 2.0)

    def test_caFileReachesTunnels(self) -> None:
        """
        The trust root loaded from --ca-file is the one the tunnels verify
        the API's certificate against.
        """
        args = ["-s", "db", "--api-url", "https://sprites.example", "--ca-file", CA_FILE, "80"]
        options = parse(args)
        manager = _makeService(options, self.reactor)
        endpoint = list(manager)[0].factory.endpoint
        self.assertIsNotNone(options.trustRoot)
        self.assertIs(endpoint._trustRoot, options.trustRoot)
        self.assertEqual(endpoint.url, "wss://sprites.example/v1/sprites/db/proxy")

    def test_optionsReachClient(self) -> None:
        """
        --linger reaches the sessions and --keepalive the tunnels' endpoint.
        """
        manager = self.make(["-s", "db", "--linger", "0.5", "--keepalive", "3", "8080:80"])
        session = list(manager)[0]
        self.assertEqual(session.factory.lingerTimeout, 0.5)
        self.assertEqual(session.factory.endpoint.keepalive.interval, 3.0)
        self.assertEqual(session.check, None)

    def test_warmAndEarlyOptions(self) -> None:
        """
        One warm tunnel kept 10 s and no early data by default; --prewarm,
        --prewarm-idle and --early-data reach the client and its endpoints.
        """
        session = list(self.make(["-s", "db", "8080:80"]))[0]
        endpoint = session.factory.endpoint
        self.assertFalse(endpoint.earlyData)
        self.assertEqual((endpoint._pool.size, endpoint._pool.idleTimeout), (1, 10.0))
        options = ["-s", "db", "--prewarm", "3", "--prewarm-idle", "2.5", "--early-data", "80"]
        endpoint = list(self.make(options))[0].factory.endpoint
        self.assertTrue(endpoint.earlyData)
        self.assertEqual((endpoint._pool.size, endpoint._pool.idleTimeout), (3, 2.5))
        endpoint = list(self.make(["-s", "db", "--prewarm", "0", "80"]))[0].factory.endpoint
        self.assertIsNone(endpoint._pool)

    def test_checkByDefault(self) -> None:
        """
        Without --no-check the manager asks the API about the sprite before
        listening: an HTTP connection to the API, and no listener yet.
        """
        manager = _makeService(parse(["-s", "db", "8080:80"]), self.reactor)
        manager.startService()
        self.addCleanup(manager.stopService)
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(
            [(host, port) for host, port, *_ in self.reactor.tcpClients], [("127.0.0.1", 8900)]
        )

    def test_listenForward(self) -> None:
        """
        A --listen/--to pair listens on that endpoint; a Unix socket gets
        mode 0600.
        """
        path = self.mktemp()
        manager = self.make(["-s", "db", "--listen", f"unix:{path}", "--to", "5432"])
        manager.startService()
        [(address, factory, backlog, mode, wantPID)] = self.reactor.unixServers
        self.assertEqual((address, mode), (path, 0o600))
        session = list(manager)[0]
        self.assertEqual(session.describeLocal(), f"unix:{path}")
        self.assertIn(f"forwarding unix:{path} -> db localhost:5432", self.messages())

    def test_fourPartBind(self) -> None:
        """
        BIND:LOCAL:HOST:REMOTE listens on BIND.
        """
        manager = self.make(["-s", "db", "127.0.0.2:8080:web:80"])
        manager.startService()
        self.assertEqual([(p, i) for p, _, _, i in self.reactor.tcpServers], [(8080, "127.0.0.2")])

    def test_logsForwarding(self) -> None:
        """
        Starting logs one line per mapping, naming the local address, the
        sprite and the target; the token is never logged.
        """
        manager = self.make(["-s", "db", "--map", "8080:80", "5433:[fdf::1]:5432"])
        manager.startService()
        messages = self.messages()
        self.assertIn("forwarding 127.0.0.1:8080 -> db localhost:80", messages)
        self.assertIn("forwarding 127.0.0.1:5433 -> db [fdf::1]:5432", messages)
        self.assertFalse([m for m in messages if TOKEN in m])

    def test_stopClosesListeners(self) -> None:
        """
        Stopping the service stops every listener at once (nothing to
        drain) and its Deferred fires.
        """
        manager = self.make(["-s", "db", "8080:80", "8081:81"])
        manager.startService()
        self.assertEqual([s.localAddr() is not None for s in manager], [True, True])
        self.successResultOf(manager.stopService())
        self.assertEqual([s.localAddr() for s in manager], [None, None])
        self.assertIn("stopped forwarding 127.0.0.1:8080 -> db localhost:80", self.messages())

    def test_nonLoopbackBindWarns(self) -> None:
        """
        Listening on an address other than loopback logs a warning.
        """
        manager = self.make(["-s", "db", "--bind", "0.0.0.0", "8080:80"])
        manager.startService()
        warnings = self.messages(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("0.0.0.0:8080, which is not a loopback address", warnings[0])

    def test_loopbackBindQuiet(self) -> None:
        """
        The default set-up logs no warning at all.
        """
        self.make(["-s", "db", "8080:80"]).startService()
        self.assertEqual(self.messages(LogLevel.warn), [])

    def test_insecureURLWarns(self) -> None:
        """
        An allowed plain-text URL to another host is logged as a warning.
        """
        self.make(["-s", "db", "--allow-insecure", "--api-url", "http://10.1.2.3:8900", "80"])
        warnings = self.messages(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("http://10.1.2.3:8900 is not encrypted", warnings[0])
        self.assertIn("clear text", warnings[0])

    def test_exposedTokenFileWarns(self) -> None:
        """
        A token file readable by group or others is logged as a warning
        naming the file (not the token).
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(TOKEN)
        os.chmod(path, 0o640)
        self.make(["-s", "db", "--token-file", path, "80"], {})
        warnings = self.messages(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn(f"token file {path} can be read by group or others", warnings[0])
        self.assertNotIn(TOKEN, warnings[0])
