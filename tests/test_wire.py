"""
Tests for L{sprites_twisted.wire}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.errors import HandshakeError
from sprites_twisted.wire import (
    MAX_INIT_SIZE,
    MAX_REPLY_SIZE,
    Init,
    InitError,
    encodeInit,
    encodeReply,
    formatTarget,
    parseInit,
    parseReply,
)


class InitTests(SynchronousTestCase):
    """
    The client's init message.
    """

    def test_encode(self) -> None:
        """
        The init is a JSON object with host and integer port; empty host
        becomes localhost, IPv6 goes without brackets.
        """
        self.assertEqual(json.loads(encodeInit("", 5432)), {"host": "localhost", "port": 5432})
        self.assertEqual(json.loads(encodeInit("[fdf::1]", 1)), {"host": "fdf::1", "port": 1})

    def test_roundTrip(self) -> None:
        """
        What the client encodes, the server parses back.
        """
        self.assertEqual(parseInit(encodeInit("db", 5432)), Init("db", 5432))
        self.assertEqual(parseInit(b'{"host": "", "port": 22}'), Init("localhost", 22))
        self.assertEqual(parseInit(b'{"port": 22}'), Init("localhost", 22))

    def test_badInits(self) -> None:
        """
        Anything but a small object with a valid host and port is refused
        with a reason.
        """
        for payload, reason in [
            (b"nope", "not JSON"),
            (b"\xff\xfe", "not JSON"),
            (b"[1, 2]", "not a JSON object"),
            (b'{"host": "x"}', "port"),
            (b'{"host": "x", "port": "22"}', "port"),
            (b'{"host": "x", "port": true}', "port"),
            (b'{"host": "x", "port": 22.5}', "port"),
            (b'{"host": "x", "port": 0}', "outside"),
            (b'{"host": "x", "port": 65536}', "outside"),
            (b'{"host": 5, "port": 1}', "host"),
            (b'{"host": "a\\u0000b", "port": 1}', "character"),
            (b'{"host": "a\\nb", "port": 1}', "character"),
            (b'{"host": "' + b"a" * MAX_INIT_SIZE + b'", "port": 1}', "larger"),
        ]:
            with self.assertRaises(InitError, msg=payload[:40]) as ctx:
                parseInit(payload)
            self.assertIn(reason, str(ctx.exception))


class ReplyTests(SynchronousTestCase):
    """
    The server's reply.
    """

    def test_connected(self) -> None:
        """
        A connected reply gives the target.
        """
        self.assertEqual(
            parseReply(encodeReply("connected", target="localhost:5432")), "localhost:5432"
        )
        self.assertEqual(parseReply(b'{"status": "connected"}'), "")

    def test_refused(self) -> None:
        """
        Any other status is a HandshakeError with the server's message.
        """
        with self.assertRaises(HandshakeError) as ctx:
            parseReply(encodeReply("error", message="connection refused"))
        self.assertEqual(ctx.exception.status, "error")
        self.assertEqual(ctx.exception.serverMessage, "connection refused")
        self.assertIn("unexpected status 'error'", str(ctx.exception))
        self.assertIn("connection refused", str(ctx.exception))
        with self.assertRaises(HandshakeError) as ctx:
            parseReply(b'{"status": "denied", "error": "forbidden"}')
        self.assertEqual(ctx.exception.serverMessage, "forbidden")

    def test_malformed(self) -> None:
        """
        Non-JSON, non-object and oversized replies are HandshakeErrors.
        """
        for payload, reason in [
            (b"<html>", "not JSON"),
            (b'"connected"', "not a JSON object"),
            (b"{}", "None"),
            (b"x" * (MAX_REPLY_SIZE + 1), "larger"),
        ]:
            with self.assertRaises(HandshakeError, msg=payload[:20]) as ctx:
                parseReply(payload)
            self.assertIn(reason, str(ctx.exception))

    def test_formatTarget(self) -> None:
        """
        IPv6 targets are bracketed.
        """
        self.assertEqual(formatTarget("::1", 22), "[::1]:22")
        self.assertEqual(formatTarget("db", 22), "db:22")
