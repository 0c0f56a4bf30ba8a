"""
Tests for L{sprites_twisted.mapping}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.errors import AddressError, MappingError
from sprites_twisted.mapping import PortMapping, parseAddress, parseMapping


class PortMappingTests(SynchronousTestCase):
    """
    L{PortMapping} validates and normalises its fields.
    """

    def test_goFieldOrder(self) -> None:
        """
        Positional arguments follow the Go SDK: local, remote, host.
        """
        m = PortMapping(8080, 80, "db")
        self.assertEqual((m.localPort, m.remotePort, m.remoteHost), (8080, 80, "db"))

    def test_emptyHostMeansLocalhost(self) -> None:
        """
        An empty remote host targets localhost.
        """
        m = PortMapping(1, 2)
        self.assertEqual(m.remoteHost, "")
        self.assertEqual(m.targetHost, "localhost")
        self.assertEqual(m.describeTarget(), "localhost:2")

    def test_bracketsRemoved(self) -> None:
        """
        A bracketed IPv6 host is stored without brackets and shown with them.
        """
        m = PortMapping(1, 2, "[fdf::1]")
        self.assertEqual(m.remoteHost, "fdf::1")
        self.assertEqual(m.describeTarget(), "[fdf::1]:2")

    def test_localZeroAllowed(self) -> None:
        """
        Local port 0 (any free port) is allowed.
        """
        self.assertEqual(PortMapping(0, 22).localPort, 0)

    def test_badValues(self) -> None:
        """
        Out-of-range ports, non-integers and bad hosts raise MappingError
        naming the value.
        """
        for args, shown in [
            ((70000, 1), "70000"),
            ((-1, 1), "-1"),
            ((1, 0), "0"),
            ((1, 65536), "65536"),
            ((True, 1), "True"),
            ((1.5, 1), "1.5"),
            ((1, 2, "a b"), "a b"),
            ((1, 2, "x\x00y"), "x\\x00y"),
            ((1, 2, "[::1"), "[::1"),
            ((1, 2, "[nothex]"), "nothex"),
        ]:
            with self.assertRaises(MappingError, msg=repr(args)) as ctx:
                PortMapping(*args)
            self.assertIn(shown, str(ctx.exception))

    def test_frozen(self) -> None:
        """
        Mappings are immutable values.
        """
        m = PortMapping(1, 2)
        with self.assertRaises(AttributeError):
            m.localPort = 3  # type: ignore[misc]
        self.assertEqual(m, PortMapping(1, 2, ""))


class ParseMappingTests(SynchronousTestCase):
    """
    L{parseMapping} accepts the official CLI's forms.
    """

    def test_goodForms(self) -> None:
        """
        PORT, LOCAL:REMOTE, LOCAL:HOST:REMOTE and bracketed IPv6 parse.
        """
        cases = {
            "8080": PortMapping(8080, 8080),
            "4005:4000": PortMapping(4005, 4000),
            "0:22": PortMapping(0, 22),
            "5433:db:5432": PortMapping(5433, 5432, "db"),
            "5433:10.0.0.2:5432": PortMapping(5433, 5432, "10.0.0.2"),
            "5433:[fdf::1]:5432": PortMapping(5433, 5432, "fdf::1"),
            " 80:8080 ": PortMapping(80, 8080),
            "127.0.0.2:8080:web:80": PortMapping(8080, 80, "web", "127.0.0.2"),
            "[::1]:8080:localhost:80": PortMapping(8080, 80, "localhost", "::1"),
            "[::1]:8080:[fdf::1]:80": PortMapping(8080, 80, "fdf::1", "::1"),
            "localhost:0:db:5432": PortMapping(0, 5432, "db", "localhost"),
        }
        for text, expected in cases.items():
            self.assertEqual(parseMapping(text), expected, text)

    def test_badForms(self) -> None:
        """
        Malformed mappings raise MappingError naming the input and the
        expected forms.
        """
        for text in [
            "",
            "abc",
            "0",
            "1:2:3:4",
            "5433:fdf::1:5432",
            "1:[::1]",
            "1::2",
            "99999:1",
            "1:99999",
            "1:0",
            "-1:2",
            "1:[zz]:2",
            "1:ho st:2",
            "example.com:1:h:2",
            "::1:8080:h:80",
            ":8080:h:80",
            "[::1]:8080:80",
            "x[::1]:1:h:2",
            "1:2:3:4:5",
        ]:
            with self.assertRaises(MappingError, msg=text) as ctx:
                parseMapping(text)
            self.assertIn(repr(text), str(ctx.exception))

    def test_bindAddressNamed(self) -> None:
        """
        A bind address that is not an IP literal or localhost is named in
        the error (as ``ssh -L`` users write it).
        """
        with self.assertRaises(MappingError) as ctx:
            parseMapping("example.com:8080:web:80")
        self.assertIn("bind address 'example.com'", str(ctx.exception))

    def test_messageSaysWhatIsExpected(self) -> None:
        """
        The error says which forms are accepted.
        """
        with self.assertRaises(MappingError) as ctx:
            parseMapping("nope")
        self.assertIn("LOCAL:REMOTE", str(ctx.exception))


class ParseAddressTests(SynchronousTestCase):
    """
    L{parseAddress} parses ProxySocket's host:port.
    """

    def test_good(self) -> None:
        """
        host:port, [v6]:port and :port (localhost) parse.
        """
        self.assertEqual(parseAddress("db:5432"), ("db", 5432))
        self.assertEqual(parseAddress("[::1]:22"), ("::1", 22))
        self.assertEqual(parseAddress(":22"), ("localhost", 22))
        self.assertEqual(parseAddress("127.0.0.1:1"), ("127.0.0.1", 1))

    def test_bad(self) -> None:
        """
        Missing ports, bad ports and unbracketed IPv6 raise AddressError
        naming the address.
        """
        for text in ["db", "db:", "db:0", "db:65536", "::1:22", "[::1]22", "db:x", "a b:1"]:
            with self.assertRaises(AddressError, msg=text) as ctx:
                parseAddress(text)
            self.assertIn(repr(text), str(ctx.exception))
