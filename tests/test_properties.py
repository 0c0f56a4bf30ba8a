"""
Property-based tests (hypothesis): whatever a peer or a user throws at the
parsers, they return a valid value or raise their documented error, never
anything else.  Example counts stay modest so that the suite stays fast;
``make test`` runs every property twice (with and without the fast path),
each time with new random examples.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.config import APIEndpoint, isLoopbackHost, parseAPIURL
from sprites_twisted.errors import AddressError, ConfigurationError, HandshakeError, MappingError
from sprites_twisted.mapping import PortMapping, parseAddress, parseMapping
from sprites_twisted.tunnel import refusalError
from sprites_twisted.wire import MAX_INIT_SIZE, Init, InitError, parseInit, parseReply

FAST = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])

jsonScalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
jsonValues = st.recursive(
    jsonScalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
hosts = (
    st.text(max_size=40)
    | st.sampled_from(["", "localhost", "::1", "[::1]", "fdf::1", "127.0.0.1", "a\nb", "x" * 300])
    | jsonValues
)
ports = st.integers() | st.sampled_from([0, 1, 65535, 65536, -1]) | jsonValues
inits = st.builds(
    lambda host, port, extra: {**extra, "host": host, "port": port},
    hosts,
    ports,
    st.dictionaries(st.text(max_size=8), jsonValues, max_size=2),
).map(lambda d: json.dumps(d).encode())
payloads = (
    inits
    | st.binary(max_size=200)
    | jsonValues.map(lambda v: json.dumps(v).encode())
    | st.integers(1, 6000).map(lambda n: b"[" * n)
    | st.integers(1, 3000).map(lambda n: b'{"a":' * n)
)


def assertValidHost(case: SynchronousTestCase, host: str) -> None:
    """
    A host in wire form: a non-empty string without control characters,
    spaces or brackets.
    """
    case.assertIsInstance(host, str)
    case.assertTrue(host)
    case.assertFalse(any(not c.isprintable() or c.isspace() or c in "[]/" for c in host))


class ParseInitTests(SynchronousTestCase):
    """
    L{parseInit} on anything a client can send.
    """

    @FAST
    @given(payloads)
    @example(b"[" * 4000)
    @example(b'{"host": "localhost", "port": 5432}')
    def test_validOrInitError(self, payload: bytes) -> None:
        """
        An init parses to a valid target or raises InitError.
        """
        try:
            init = parseInit(payload)
        except InitError:
            return
        self.assertIsInstance(init, Init)
        self.assertLessEqual(len(payload), MAX_INIT_SIZE)
        self.assertIsInstance(init.port, int)
        self.assertNotIsInstance(init.port, bool)
        self.assertTrue(1 <= init.port <= 65535)
        assertValidHost(self, init.host)


class ParseReplyTests(SynchronousTestCase):
    """
    L{parseReply} and L{refusalError} on anything a server can send.
    """

    @FAST
    @given(payloads)
    @example(b"[" * 60000)
    def test_targetOrHandshakeError(self, payload: bytes) -> None:
        """
        A reply gives the target string or raises HandshakeError.
        """
        try:
            target = parseReply(payload)
        except HandshakeError as e:
            self.assertLess(len(str(e)), 400)
            return
        self.assertIsInstance(target, str)

    @FAST
    @given(
        st.integers(100, 599),
        payloads,
        st.dictionaries(
            st.sampled_from(["retry-after", "transfer-encoding", "content-type"]),
            st.text(max_size=20),
            max_size=3,
        ),
    )
    @example(429, b"[" * 8000, {})
    def test_refusalAlwaysTyped(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        """
        Any refused upgrade becomes a typed error with a short message.
        """
        error = refusalError(status, headers, body)
        self.assertEqual(error.status, status)
        self.assertLess(len(str(error)), 600)


class ParseMappingTests(SynchronousTestCase):
    """
    L{parseMapping} on anything a user can type.
    """

    @FAST
    @given(
        st.text(max_size=30)
        | st.from_regex(r"\A[0-9]{1,6}(:[\[\]a-z0-9.:]{0,12})?(:[0-9]{1,6})?\Z")
    )
    @example("5433:[fdf::1]:5432")
    @example("0:db:5432")
    def test_mappingOrMappingError(self, text: str) -> None:
        """
        A mapping parses to a valid PortMapping or raises MappingError.
        """
        try:
            mapping = parseMapping(text)
        except MappingError as e:
            self.assertIsInstance(e, ValueError)
            return
        self.assertIsInstance(mapping, PortMapping)
        self.assertTrue(0 <= mapping.localPort <= 65535)
        self.assertTrue(1 <= mapping.remotePort <= 65535)
        if mapping.remoteHost:
            assertValidHost(self, mapping.remoteHost)
        self.assertEqual(PortMapping(*mapping.__dict__.values()), mapping)

    @FAST
    @given(
        st.text(max_size=30)
        | st.from_regex(r"\A(\[[0-9a-f:]{0,10}\]|[a-z0-9.]{0,10}):[0-9]{0,6}\Z")
    )
    @example("[::1]:22")
    @example(":5432")
    def test_addressOrAddressError(self, text: str) -> None:
        """
        An address parses to a host and port or raises AddressError.
        """
        try:
            host, port = parseAddress(text)
        except AddressError:
            return
        assertValidHost(self, host)
        self.assertTrue(1 <= port <= 65535)


class ParseAPIURLTests(SynchronousTestCase):
    """
    L{parseAPIURL} on anything a user can configure.
    """

    @FAST
    @given(
        st.text(max_size=40)
        | st.builds(
            lambda scheme, host, rest: f"{scheme}://{host}{rest}",
            st.sampled_from(["http", "https", "ws", "wss", "ftp", "HTTPS", ""]),
            st.sampled_from(
                ["localhost", "127.0.0.1", "[::1]", "api.sprites.dev", "10.0.0.1", "", "[::"]
            ),
            st.text(max_size=12),
        ),
        st.booleans(),
    )
    @example("http://[::1", False)
    @example("https://example.com:99999", False)
    def test_endpointOrConfigurationError(self, url: str, allowInsecure: bool) -> None:
        """
        A URL parses to an endpoint or raises ConfigurationError, and a
        plain-text one is only accepted to loopback unless allowed.
        """
        try:
            api = parseAPIURL(url, allowInsecure=allowInsecure)
        except ConfigurationError:
            return
        self.assertIsInstance(api, APIEndpoint)
        self.assertTrue(1 <= api.port <= 65535 or api.port == 0)
        if not api.secure and not allowInsecure:
            self.assertTrue(isLoopbackHost(api.host))
