"""
Tests for L{sprites_twisted.errors}.
"""

from __future__ import annotations

from twisted.internet.error import ConnectError
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted import errors


class ErrorTreeTests(SynchronousTestCase):
    """
    The exception tree carries the facts a user needs.
    """

    def test_tunnelErrorsAreConnectErrors(self) -> None:
        """
        Every tunnel error satisfies the endpoint contract (ConnectError).
        """
        for error in [
            errors.APIUnreachableError("h:1", "refused"),
            errors.TLSVerificationError("h", "bad"),
            errors.SpriteAuthError(401),
            errors.SpriteNotFoundError(404),
            errors.RateLimitedError(429, retryAfter=3),
            errors.SpriteServerError(503),
            errors.HandshakeError("error"),
            errors.TunnelTimeoutError(30),
            errors.TunnelClosedError(1006, "gone"),
        ]:
            self.assertIsInstance(error, ConnectError)
            self.assertIsInstance(error, errors.SpritesError)
            self.assertEqual(str(error), error.message)

    def test_valueErrors(self) -> None:
        """
        Bad input errors are ValueErrors carrying the value.
        """
        e = errors.MappingError("8080:x", "bad")
        self.assertIsInstance(e, ValueError)
        self.assertEqual(e.value, "8080:x")
        self.assertIn("'8080:x'", str(e))
        self.assertIsInstance(errors.ConfigurationError("x"), ValueError)

    def test_refusalMessages(self) -> None:
        """
        Refusals show the status, the server's code and message, and the
        retry delay.
        """
        e = errors.RateLimitedError(429, "slow down", "rate_limited", 2.5)
        self.assertEqual(e.retryAfter, 2.5)
        self.assertIn("HTTP 429", str(e))
        self.assertIn("slow down", str(e))
        self.assertIn("rate_limited", str(e))
        self.assertIn("retry after 2.5 s", str(e))
        self.assertIn("SPRITE_TOKEN", str(errors.SpriteAuthError(401)))

    def test_serverTextSanitised(self) -> None:
        """
        Server-provided text is truncated and stripped of control
        characters.
        """
        e = errors.HandshakeError("error", "x" * 1000 + "\x1b[31m")
        self.assertLess(len(str(e)), 300)
        e = errors.HandshakeError("error", "a\x1b[31mb")
        self.assertNotIn("\x1b", str(e))

    def test_timeout(self) -> None:
        """
        A timeout names its duration.
        """
        self.assertIn("30 s", str(errors.TunnelTimeoutError(30.0)))
