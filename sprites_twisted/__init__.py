"""
sprites_twisted: reach services inside Fly.io Sprites from Twisted.

Forward local ports into a sprite (L{SpritesClient.proxyPort}), open single
tunnels as endpoints (L{SpriteProxyEndpoint}), manage many forwards as one
service (L{ProxyManager}), and run a local sprite server for offline work
(L{sprites_twisted.server}).
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

# The names below are imported on first use (PEP 562): Twisted imports the
# ``sprite:`` endpoint parser (sprites_twisted._parser), and with it this
# package, in every process that parses a plugin endpoint string, so that
# import must not pull in Autobahn.
_EXPORTS = {
    "SpritesClient": "sprites_twisted.client",
    "Sprite": "sprites_twisted.client",
    "SpriteProxyEndpoint": "sprites_twisted.endpoint",
    "PortMapping": "sprites_twisted.mapping",
    "parseMapping": "sprites_twisted.mapping",
    "ProxySession": "sprites_twisted.session",
    "ProxyManager": "sprites_twisted.manager",
    "IProxySession": "sprites_twisted.interfaces",
    "SpritesError": "sprites_twisted.errors",
    "MappingError": "sprites_twisted.errors",
    "ConfigurationError": "sprites_twisted.errors",
    "TunnelError": "sprites_twisted.errors",
    "SpriteAuthError": "sprites_twisted.errors",
    "SpriteNotFoundError": "sprites_twisted.errors",
    "RateLimitedError": "sprites_twisted.errors",
    "HandshakeError": "sprites_twisted.errors",
    "TunnelTimeoutError": "sprites_twisted.errors",
}

if TYPE_CHECKING:
    from sprites_twisted.client import Sprite, SpritesClient
    from sprites_twisted.endpoint import SpriteProxyEndpoint
    from sprites_twisted.errors import (
        ConfigurationError,
        HandshakeError,
        MappingError,
        RateLimitedError,
        SpriteAuthError,
        SpriteNotFoundError,
        SpritesError,
        TunnelError,
        TunnelTimeoutError,
    )
    from sprites_twisted.interfaces import IProxySession
    from sprites_twisted.manager import ProxyManager
    from sprites_twisted.mapping import PortMapping, parseMapping
    from sprites_twisted.session import ProxySession


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sprites_twisted' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "__version__",
    "SpritesClient",
    "Sprite",
    "SpriteProxyEndpoint",
    "PortMapping",
    "parseMapping",
    "ProxySession",
    "ProxyManager",
    "IProxySession",
    "SpritesError",
    "MappingError",
    "ConfigurationError",
    "TunnelError",
    "SpriteAuthError",
    "SpriteNotFoundError",
    "RateLimitedError",
    "HandshakeError",
    "TunnelTimeoutError",
]
