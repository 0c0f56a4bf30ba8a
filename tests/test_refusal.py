# -*- test-case-name: tests.test_refusal -*-
"""
Tests for L{sprites_twisted.refusal}: a refused upgrade's response head and
body become a typed error.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.errors import (
    RateLimitedError,
    SpriteAuthError,
    SpriteNotFoundError,
    SpriteServerError,
    UpgradeRefusedError,
)
from sprites_twisted.refusal import MAX_RESPONSE_HEADER, parseResponseHead, refusalError


class ResponseHeadTests(SynchronousTestCase):
    """
    L{parseResponseHead} and L{ResponseHead.bodyComplete}.
    """

    def test_incomplete(self) -> None:
        self.assertIsNone(parseResponseHead(b"HTTP/1.1 404 Not Found\r\nContent-Le"))

    def test_parsed(self) -> None:
        data = b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\n{}"
        head = parseResponseHead(data)
        assert head is not None
        self.assertEqual(head.status, 429)
        self.assertEqual(head.headers["retry-after"], "3")
        self.assertEqual(head.headers["x-a"], "1, 2")
        self.assertEqual(data[head.size :], b"{}")

    def test_badStatusLine(self) -> None:
        head = parseResponseHead(b"SPDY nonsense\r\n\r\n")
        assert head is not None
        self.assertIsNone(head.status)

    def test_tooLarge(self) -> None:
        with self.assertRaises(ValueError):
            parseResponseHead(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_RESPONSE_HEADER)

    def test_bodyComplete(self) -> None:
        head = parseResponseHead(b"HTTP/1.1 401 No\r\nContent-Length: 4\r\n\r\n")
        assert head is not None
        self.assertFalse(head.bodyComplete(b"abc"))
        self.assertTrue(head.bodyComplete(b"abcd"))
        chunked = parseResponseHead(b"HTTP/1.1 401 No\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert chunked is not None
        self.assertFalse(chunked.bodyComplete(b"4\r\nabcd\r\n"))
        self.assertTrue(chunked.bodyComplete(b"4\r\nabcd\r\n0\r\n\r\n"))
        unknown = parseResponseHead(b"HTTP/1.1 401 No\r\n\r\n")
        assert unknown is not None
        self.assertFalse(unknown.bodyComplete(b"abc"))


class RefusalErrorTests(SynchronousTestCase):
    """
    L{refusalError} maps statuses to error types with the server's words.
    """

    def test_types(self) -> None:
        body = b'{"error": "e", "message": "m"}'
        for status, kind in (
            (401, SpriteAuthError),
            (403, SpriteAuthError),
            (404, SpriteNotFoundError),
            (429, RateLimitedError),
            (503, SpriteServerError),
            (400, UpgradeRefusedError),
        ):
            error = refusalError(status, {}, body)
            self.assertIs(type(error), kind, status)
            self.assertIn("m", str(error))

    def test_retryAfter(self) -> None:
        error = refusalError(429, {"retry-after": "7"}, b"")
        assert isinstance(error, RateLimitedError)
        self.assertEqual(error.retryAfter, 7.0)
        fromBody = refusalError(429, {}, b'{"retry_after_seconds": 2}')
        assert isinstance(fromBody, RateLimitedError)
        self.assertEqual(fromBody.retryAfter, 2.0)

    def test_plainAndChunkedBodies(self) -> None:
        self.assertIn("go away", str(refusalError(404, {}, b"go away\n")))
        chunked = refusalError(404, {"transfer-encoding": "chunked"}, b"5\r\nhello\r\n0\r\n\r\n")
        self.assertIn("hello", str(chunked))
