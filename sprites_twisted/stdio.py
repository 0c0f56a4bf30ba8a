# -*- test-case-name: tests.test_stdio -*-
"""
Standard input and output as one tunnel: ``sprites-proxy -s NAME -W
[HOST]:PORT``, for ``ssh -o ProxyCommand='sprites-proxy -s %h -W :22'``.

The process's stdin/stdout (C{twisted.internet.stdio.StandardIO}) play the
part of an accepted local connection of a forwarded port, so the same
relay does the work: nothing is read from stdin until the tunnel is up;
each side is the other's streaming producer, so a stalled reader on either
end stops the other from being read (the process never buffers the
stream); stdin's end of file sends what was read, then lets the sprite's
reply come until the sprite closes or goes quiet for the linger time.

Nothing but tunnel bytes is ever written to stdout.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure
from zope.interface import implementer

from sprites_twisted.config import DEFAULT_LINGER_TIMEOUT
from sprites_twisted.interfaces import IResettableTransport
from sprites_twisted.listener import LocalProxyFactory

__all__ = ["StdioResult", "connectStdio"]


@implementer(IStreamClientEndpoint)
class _Watched:
    """
    An endpoint that remembers why its connection attempt failed.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint
        self.failure: Failure | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            self.failure = failure
            return failure

        return self._endpoint.connect(protocolFactory).addErrback(failed)


@implementer(IResettableTransport)
class _StandardIO(StandardIO):
    """
    Standard input and output as the local end of a relay.

    Pipes cannot be reset: a broken tunnel (or a refused one) ends them
    like a clean one, after what was written, and the process's exit code
    says what happened.  Aborting also closes after what was written: the
    bytes are the only output, and dropping some of them helps nobody.
    """

    def resetConnection(self) -> None:
        self.loseConnection()

    def abortConnection(self) -> None:
        self.loseConnection()


class StdioResult:
    """
    How a stdio tunnel ended.

    :ivar failure: why the tunnel could not be opened (a refused tunnel, a
        bad token, an unreachable API), or C{None} when it was open and
        then closed.
    """

    def __init__(self, failure: Failure | None) -> None:
        self.failure = failure


def connectStdio(
    reactor: Any,
    endpoint: IStreamClientEndpoint,
    spriteName: str,
    target: str,
    *,
    lingerTimeout: float = DEFAULT_LINGER_TIMEOUT,
    stdin: int = 0,
    stdout: int = 1,
) -> Deferred[StdioResult]:
    """
    Relay file descriptors C{stdin} and C{stdout} through one tunnel from
    C{endpoint}.

    :param target: ``host:port`` in the sprite, for log lines.
    :returns: a Deferred that fires with a L{StdioResult} once both the
        tunnel and stdout are closed.
    """
    watched = _Watched(endpoint)
    factory = LocalProxyFactory(watched, reactor, spriteName, target, lingerTimeout)
    protocol = factory.buildProtocol(None)
    _StandardIO(protocol, stdin=stdin, stdout=stdout, reactor=reactor)  # type: ignore[call-arg]
    return factory.whenIdle().addCallback(lambda _: StdioResult(watched.failure))
