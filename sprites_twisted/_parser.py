# -*- test-case-name: tests.test_parser -*-
"""
The ``sprite:`` client endpoint string::

    sprite:NAME:PORT[:remoteHost=HOST][:apiURL=URL][:tokenFile=PATH]
                    [:caFile=PATH][:timeout=SECONDS]

``clientFromString(reactor, "sprite:mydb:5432")`` gives a
:class:`~sprites_twisted.endpoint.SpriteProxyEndpoint` to port 5432 on
``localhost`` inside sprite ``mydb``.  Colons inside values are escaped as
Twisted requires (``apiURL=http\\://127.0.0.1\\:8900``).  The token comes
from ``tokenFile=``, else from ``SPRITE_TOKEN`` (then ``SPRITES_TOKEN``);
never from the string itself, which tends to end up in configuration files
and process lists.

Twisted imports this module (through the plugin in ``twisted/plugins``) in
every process that parses a plugin-provided endpoint string, ours or not.
It therefore imports only the standard library, zope.interface and
Twisted; the endpoint (and Autobahn with it) is imported when a ``sprite:``
string is actually parsed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

if TYPE_CHECKING:
    from sprites_twisted.endpoint import SpriteProxyEndpoint

__all__ = ["SpriteEndpointParser"]

_USAGE = (
    "expected sprite:NAME:PORT with optional remoteHost=, apiURL=, tokenFile=, caFile= and timeout="
)
_OPTIONS = ("remoteHost", "apiURL", "tokenFile", "caFile", "timeout")


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class SpriteEndpointParser:
    """
    Parses ``sprite:`` endpoint strings into
    :class:`~sprites_twisted.endpoint.SpriteProxyEndpoint` objects that use
    the reactor given to ``clientFromString``.

    :param environ: where the token and ``SPRITES_API_URL`` are read
        (the process environment by default).
    """

    prefix = "sprite"
    log = Logger()

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> SpriteProxyEndpoint:
        """
        Build the endpoint.

        :raises sprites_twisted.errors.ConfigurationError: (a ``ValueError``)
            naming the bad value and what is expected.
        """
        from sprites_twisted.config import (
            apiURLFromEnvironment,
            checkSpriteName,
            parseAPIURL,
            readTokenFile,
            tokenFromEnvironment,
        )
        from sprites_twisted.endpoint import SpriteProxyEndpoint
        from sprites_twisted.errors import ConfigurationError
        from sprites_twisted.mapping import checkHost, checkPort

        def fail(problem: str) -> ConfigurationError:
            return ConfigurationError(f"sprite: endpoint: {problem}")

        environ = os.environ if self._environ is None else self._environ
        unknown = sorted(set(kwargs) - set(_OPTIONS))
        if unknown:
            raise fail(f"unknown option {unknown[0]!r}; {_USAGE}")
        if len(args) != 2:
            given = ":".join(str(a) for a in args)
            raise fail(f"{given!r} is not NAME:PORT; {_USAGE}")
        spriteName, remotePort = args
        remoteHost = kwargs.get("remoteHost") or "localhost"
        apiURL = kwargs.get("apiURL") or apiURLFromEnvironment(environ)
        timeoutText = kwargs.get("timeout", "30")
        try:
            timeout = float(timeoutText)
        except ValueError:
            timeout = 0.0
        if not 0 < timeout < float("inf"):
            raise fail(f"timeout {timeoutText!r} is not a number of seconds above 0")
        # Check what the string says before looking for a token, so that a
        # typo is reported as such even where no token is set.
        try:
            checkSpriteName(spriteName)
            checkPort(remotePort)
            checkHost(remoteHost)
            parseAPIURL(apiURL)
        except ConfigurationError as e:
            raise fail(str(e)) from None
        except ValueError as e:
            raise fail(f"{e}; {_USAGE}") from None
        tokenFile = kwargs.get("tokenFile")
        if tokenFile:
            token, exposed = readTokenFile(tokenFile)
            if exposed:
                self.log.warn(
                    "the token file {path} can be read by group or others (chmod 600 it)",
                    path=tokenFile,
                )
        else:
            found = tokenFromEnvironment(environ)
            if found is None:
                raise fail("no token: set SPRITE_TOKEN (or SPRITES_TOKEN), or give tokenFile=PATH")
            token = found
        return SpriteProxyEndpoint(
            reactor,
            spriteName,
            remotePort,
            remoteHost,
            token=token,
            apiURL=apiURL,
            timeout=timeout,
            trustRoot=kwargs.get("caFile") or None,
        )
