"""
Tests for L{sprites_twisted.config}.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import sprites_twisted
from sprites_twisted.config import (
    DEFAULT_API_URL,
    DEFAULT_INIT_TIMEOUT,
    DEFAULT_PREWARM_IDLE,
    apiURLFromEnvironment,
    checkToken,
    isLoopbackHost,
    parseAPIURL,
    proxyPath,
    readTokenFile,
    tokenFromEnvironment,
)
from sprites_twisted.errors import ConfigurationError


class APIURLTests(SynchronousTestCase):
    """
    API base URLs become WebSocket URLs.
    """

    def test_httpsBecomesWss(self) -> None:
        """
        https maps to wss on 443, with the default port left out.
        """
        api = parseAPIURL("https://api.sprites.dev")
        self.assertEqual(
            api.webSocketURL(proxyPath("s")), "wss://api.sprites.dev/v1/sprites/s/proxy"
        )
        self.assertEqual(api.port, 443)
        self.assertTrue(api.secure)

    def test_httpBecomesWs(self) -> None:
        """
        http to loopback maps to ws with its port.
        """
        api = parseAPIURL("http://127.0.0.1:8900/")
        self.assertEqual(api.webSocketURL(proxyPath("s")), "ws://127.0.0.1:8900/v1/sprites/s/proxy")
        self.assertFalse(api.secure)

    def test_trailingSlashAndBasePath(self) -> None:
        """
        A base path is kept and a trailing slash dropped.
        """
        api = parseAPIURL("wss://example.com:8443/api/")
        self.assertEqual(
            api.webSocketURL(proxyPath("s")), "wss://example.com:8443/api/v1/sprites/s/proxy"
        )

    def test_ipv6Loopback(self) -> None:
        """
        An IPv6 host is bracketed in the URL.
        """
        api = parseAPIURL("http://[::1]:8900")
        self.assertEqual(api.host, "::1")
        self.assertEqual(api.webSocketURL("/x"), "ws://[::1]:8900/x")
        self.assertEqual(api.describe(), "[::1]:8900")

    def test_insecureRemoteRefused(self) -> None:
        """
        A plain-text URL to a non-loopback host is refused unless allowed.
        """
        for url in ["http://example.com", "ws://10.0.0.1:80", "http://localhost.evil.com"]:
            with self.assertRaises(ConfigurationError) as ctx:
                parseAPIURL(url)
            self.assertIn(url, str(ctx.exception))
            self.assertIn("allow", str(ctx.exception))
        self.assertFalse(parseAPIURL("http://example.com", allowInsecure=True).secure)

    def test_badURLs(self) -> None:
        """
        Unknown schemes, missing hosts and credentials are refused, naming
        the URL.
        """
        for url in [
            "ftp://x",
            "https://",
            "https://u:p@x",
            "https://x?q=1",
            "nope",
            "",
            "https://x:0",
        ]:
            with self.assertRaises(ConfigurationError, msg=url):
                parseAPIURL(url)

    def test_environment(self) -> None:
        """
        SPRITES_API_URL overrides the public API.
        """
        self.assertEqual(apiURLFromEnvironment({}), DEFAULT_API_URL)
        self.assertEqual(apiURLFromEnvironment({"SPRITES_API_URL": "http://x"}), "http://x")


class ProxyPathTests(SynchronousTestCase):
    """
    Sprite names are one percent-encoded path segment.
    """

    def test_plain(self) -> None:
        """
        An ordinary name is used as is.
        """
        self.assertEqual(proxyPath("my-sprite_1"), "/v1/sprites/my-sprite_1/proxy")

    def test_encoded(self) -> None:
        """
        Slashes, question marks, percent signs and spaces are encoded.
        """
        self.assertEqual(proxyPath("a/b?c%d e"), "/v1/sprites/a%2Fb%3Fc%25d%20e/proxy")

    def test_dots(self) -> None:
        """
        Names made of dots cannot climb the path.
        """
        self.assertEqual(proxyPath(".."), "/v1/sprites/%2E%2E/proxy")
        self.assertEqual(proxyPath("."), "/v1/sprites/%2E/proxy")
        self.assertEqual(proxyPath("../x"), "/v1/sprites/..%2Fx/proxy")

    def test_empty(self) -> None:
        """
        An empty name is refused.
        """
        self.assertRaises(ConfigurationError, proxyPath, "")


class TokenTests(SynchronousTestCase):
    """
    Tokens come from the environment or a file and are never shown.
    """

    def test_environmentOrder(self) -> None:
        """
        SPRITE_TOKEN wins over SPRITES_TOKEN; neither gives None.
        """
        self.assertEqual(tokenFromEnvironment({"SPRITE_TOKEN": "a", "SPRITES_TOKEN": "b"}), "a")
        self.assertEqual(tokenFromEnvironment({"SPRITES_TOKEN": "b"}), "b")
        self.assertIsNone(tokenFromEnvironment({}))

    def test_checkToken(self) -> None:
        """
        Empty tokens and tokens that would break the header are refused
        without showing them.
        """
        self.assertEqual(checkToken(" abc "), "abc")
        for bad in ["", "   ", "a b", "sec\r\nX-Injected: 1", "caf\u00e9"]:
            with self.assertRaises(ConfigurationError) as ctx:
                checkToken(bad)
            if bad.strip():
                self.assertNotIn(bad.strip(), str(ctx.exception))

    def test_tokenFile(self) -> None:
        """
        A token file is read and its permissions reported.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("secret-token\n")
        os.chmod(path, 0o600)
        self.assertEqual(readTokenFile(path), ("secret-token", False))
        os.chmod(path, 0o644)
        self.assertEqual(readTokenFile(path), ("secret-token", True))

    def test_tokenFileProblems(self) -> None:
        """
        Missing and empty files give errors naming the file.
        """
        path = self.mktemp()
        with self.assertRaises(ConfigurationError) as ctx:
            readTokenFile(path)
        self.assertIn(path, str(ctx.exception))
        with open(path, "w") as f:
            f.write("\n")
        with self.assertRaises(ConfigurationError) as ctx:
            readTokenFile(path)
        self.assertIn("empty", str(ctx.exception))


class LoopbackTests(SynchronousTestCase):
    """
    L{isLoopbackHost} trusts only literal loopback addresses and localhost.
    """

    def test_loopback(self) -> None:
        """
        localhost, 127/8 and ::1 are loopback; other names are not.
        """
        for host in ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "LOCALHOST"]:
            self.assertTrue(isLoopbackHost(host), host)
        for host in ["example.com", "10.0.0.1", "0.0.0.0", "::", "localhost.example.com"]:
            self.assertFalse(isLoopbackHost(host), host)


class DefaultsTests(SynchronousTestCase):
    """
    Every tunable default is defined once, in L{sprites_twisted.config}.
    """

    def test_definedOnlyInConfig(self) -> None:
        """
        No other product module assigns a C{DEFAULT_*} name of its own
        (importing one from config, under any name, is how they get it).
        """
        package = Path(sprites_twisted.__file__).parent
        found = []
        for path in sorted(package.glob("*.py")):
            if path.name == "config.py":
                continue
            for node in ast.parse(path.read_text()).body:
                targets = node.targets if isinstance(node, ast.Assign) else []
                if isinstance(node, ast.AnnAssign):
                    targets = [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name) and name.id.startswith("DEFAULT_"):
                            found.append(f"{path.name}: {name.id}")
        self.assertEqual(found, [])

    def test_reExported(self) -> None:
        """
        The names the modules always had are config's own values.
        """
        from sprites_twisted import config, localtap, pipe, portwatch, server, session, socks, warm

        self.assertIs(session.DEFAULT_DRAIN_TIMEOUT, config.DEFAULT_DRAIN_TIMEOUT)
        self.assertIs(warm.DEFAULT_PREWARM_IDLE, config.DEFAULT_PREWARM_IDLE)
        self.assertIs(server.DEFAULT_INIT_TIMEOUT, config.DEFAULT_INIT_TIMEOUT)
        self.assertIs(server.DEFAULT_REQUEST_TIMEOUT, config.DEFAULT_SERVER_REQUEST_TIMEOUT)
        self.assertIs(socks.DEFAULT_REQUEST_TIMEOUT, config.DEFAULT_SOCKS_REQUEST_TIMEOUT)
        self.assertIs(localtap.DEFAULT_LISTEN, config.DEFAULT_LOCAL_LISTEN)
        self.assertIs(pipe.RESET_FLUSH_TIMEOUT, config.DEFAULT_RESET_FLUSH_TIMEOUT)
        self.assertIs(portwatch.PING_INTERVAL, config.DEFAULT_WATCH_PING_INTERVAL)
        self.assertEqual(
            (portwatch.INITIAL_DELAY, portwatch.BACKOFF_FACTOR, portwatch.MAX_DELAY),
            config.DEFAULT_WATCH_BACKOFF,
        )

    def test_initTimeoutOutlastsSpare(self) -> None:
        """
        The local server waits for an init longer than a client keeps a warm
        tunnel unused, so an idle spare is closed by its client (1000), not
        refused by the server.
        """
        self.assertGreater(DEFAULT_INIT_TIMEOUT, DEFAULT_PREWARM_IDLE)
