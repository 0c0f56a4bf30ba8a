"""
Tests for L{sprites_twisted._twistd}: what both twistd commands share.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted import localtap, tap
from sprites_twisted._twistd import TokenOptions, checkServerEndpoint, positiveNumber
from sprites_twisted.manager import ProxyManager

TOKEN = "twistd-test-token-42"


class PositiveNumberTests(SynchronousTestCase):
    """
    Tests for L{positiveNumber}.
    """

    def test_numbers(self) -> None:
        """
        Numbers above zero parse; zero only when allowed.
        """
        self.assertEqual(positiveNumber("t", "1.5"), 1.5)
        self.assertEqual(positiveNumber("t", "0", allowZero=True), 0.0)

    def test_bad(self) -> None:
        """
        Zero, negatives, infinity, NaN and words are usage errors naming the
        option and the value.
        """
        for value in ["0", "-2", "inf", "nan", "ten", ""]:
            with self.subTest(value=value):
                error = self.assertRaises(usage.UsageError, positiveNumber, "wait", value)
                self.assertIn(f"--wait {value!r}", str(error))


class TokenOptionsTests(SynchronousTestCase):
    """
    Tests for L{TokenOptions}.
    """

    def test_environmentOrder(self) -> None:
        """
        SPRITE_TOKEN wins over SPRITES_TOKEN.
        """
        options = TokenOptions({"SPRITE_TOKEN": "first", "SPRITES_TOKEN": "second"})
        options.parseOptions([])
        self.assertEqual(options.readToken(), "first")

    def test_none(self) -> None:
        """
        With no file and no variable there is no token.
        """
        options = TokenOptions({})
        options.parseOptions([])
        self.assertIsNone(options.readToken())

    def test_emptyFile(self) -> None:
        """
        An empty token file is a usage error naming the file.
        """
        path = self.mktemp()
        open(path, "w").close()
        options = TokenOptions({"SPRITE_TOKEN": TOKEN})
        options.parseOptions(["--token-file", path])
        error = self.assertRaises(usage.UsageError, options.readToken)
        self.assertIn(f"token file {path!r} is empty", str(error))


class AnyOrderTests(SynchronousTestCase):
    """
    L{TokenOptions.parseOptions} takes options after positional arguments.
    """

    def test_optionAfterMapping(self) -> None:
        """
        ``5432 -s db`` is the sprite option and one mapping, whatever the
        order, with short and long options, ``=`` or not.
        """
        for args in (
            ["-s", "db", "5432"],
            ["5432", "-s", "db"],
            ["5432", "--sprite", "db"],
            ["5432", "--sprite=db"],
        ):
            with self.subTest(args=args):
                options = tap.Options({"SPRITE_TOKEN": TOKEN})
                options.parseOptions(args)
                self.assertEqual(options["sprite"], "db")
                self.assertEqual([m.localPort for m in options.mappings], [5432])

    def test_doubleDash(self) -> None:
        """
        After ``--`` everything is an argument.
        """
        options = tap.Options({"SPRITE_TOKEN": TOKEN})
        error = self.assertRaises(
            usage.UsageError, options.parseOptions, ["-s", "db", "--", "--bind"]
        )
        self.assertIn("'--bind'", str(error))

    def test_unknownOption(self) -> None:
        """
        An unknown option is a usage error naming it.
        """
        options = tap.Options({"SPRITE_TOKEN": TOKEN})
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["5432", "--nope"])
        self.assertIn("nope", str(error))


class CheckServerEndpointTests(SynchronousTestCase):
    """
    Tests for L{checkServerEndpoint}.
    """

    def test_good(self) -> None:
        """
        Endpoint strings Twisted parses come back unchanged.
        """
        for text in ["tcp:8900:interface=127.0.0.1", "tcp:0", "unix:/tmp/s.sock", "tcp6:80"]:
            self.assertEqual(checkServerEndpoint("--listen", text), text)

    def test_portOutOfRange(self) -> None:
        """
        A TCP port above 65535 (which Twisted reports only when listening,
        as an OverflowError) is a usage error naming the port.
        """
        for text in ["tcp:99999", "tcp:port=70000:interface=127.0.0.1", "tcp6:65536"]:
            with self.subTest(text=text):
                error = self.assertRaises(usage.UsageError, checkServerEndpoint, "--listen", text)
                self.assertIn(f"--listen {text!r}", str(error))
                self.assertIn("is outside 0..65535", str(error))

    def test_unparseable(self) -> None:
        """
        A string Twisted cannot parse is a usage error naming it.
        """
        error = self.assertRaises(usage.UsageError, checkServerEndpoint, "--listen", "bogus:1")
        self.assertIn("--listen 'bogus:1'", str(error))

    def test_systemdWithoutSocket(self) -> None:
        """
        A ``systemd:`` string in a process that systemd passed no socket
        says so, and how socket activation passes them, instead of
        Twisted's bare "list index out of range".
        """
        text = "systemd:domain=INET:index=0"
        error = self.assertRaises(usage.UsageError, checkServerEndpoint, "--listen", text)
        self.assertEqual(
            str(error),
            f"--listen {text!r}: no such socket was passed to this process; "
            "systemd's socket activation passed 0 socket(s) here "
            "(it sets LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES)",
        )


class PlainServicesTests(SynchronousTestCase):
    """
    twistd gets the services themselves, with no wrapper.
    """

    def test_proxyService(self) -> None:
        """
        ``twistd sprites-proxy`` runs the ProxyManager itself.
        """
        options = tap.Options({"SPRITE_TOKEN": TOKEN, "SPRITES_API_URL": "http://127.0.0.1:1"})
        options.parseOptions(["-s", "db", "8080:80"])
        self.assertIsInstance(tap.makeService(options), ProxyManager)

    def test_localService(self) -> None:
        """
        ``twistd sprites-local`` runs Twisted's own endpoint service.
        """
        options = localtap.Options({"SPRITE_TOKEN": TOKEN})
        options.parseOptions([])
        self.assertIsInstance(localtap.makeService(options), StreamServerEndpointService)
