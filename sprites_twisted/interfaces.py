# -*- test-case-name: tests.test_session -*-
"""
Interfaces of sprites_twisted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import IService
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IAddress

__all__ = ["IProxySession", "IResettableTransport"]


class IProxySession(IService):
    """
    A forwarded port: one local listener whose connections are tunnelled
    to a port inside a sprite (the Go SDK's ``ProxySession``).

    It is an C{IService}: starting it listens, stopping it is L{close}.
    A session that was stopped can be started again.
    """

    spriteName = Attribute("The sprite's name (str).")
    localPort = Attribute(
        "The local port (int): the bound port once listening (useful when 0 "
        "was asked for), else the port asked for."
    )
    remotePort = Attribute("The port inside the sprite (int).")
    remoteHost = Attribute("The host inside the sprite (str); '' means localhost.")

    def close() -> Deferred[None]:  # type: ignore[misc]
        """
        Stop listening, let open connections drain, then close them.

        Idempotent: every call returns a new Deferred that fires (with
        C{None}) once the session is fully closed.
        """

    def wait() -> Deferred[None]:  # type: ignore[misc]
        """
        A new Deferred per call that fires (with C{None}) when the session is
        closed; at once if it already is.
        """

    def localAddr() -> IAddress | None:  # type: ignore[misc]
        """
        The listening address (an C{IAddress}), or C{None} when the session
        is not listening.
        """


class IResettableTransport(Interface):
    """
    A stream transport that can end as broken after delivering what was
    written to it: a tunnel (closed with code 1011), as opposed to
    C{abortConnection}, which drops what is still buffered.
    """

    def resetConnection() -> None:  # type: ignore[misc]
        """
        Send what was written, then end the stream as broken, so that the
        far end sees an error rather than a clean end of stream.
        """
