"""
sprites_twisted: reach services inside Fly.io Sprites from Twisted.

Forward local ports into a sprite (L{SpritesClient.proxyPort}), open single
tunnels as endpoints (L{SpriteProxyEndpoint}), manage many forwards as one
service (L{ProxyManager}), and run a local sprite server for offline work
(L{sprites_twisted.server}).
"""

from __future__ import annotations

__version__ = "0.1.0"

from sprites_twisted.client import Sprite, SpritesClient  # noqa: E402
from sprites_twisted.endpoint import SpriteProxyEndpoint  # noqa: E402
from sprites_twisted.errors import (  # noqa: E402
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
from sprites_twisted.interfaces import IProxySession  # noqa: E402
from sprites_twisted.manager import ProxyManager  # noqa: E402
from sprites_twisted.mapping import PortMapping, parseMapping  # noqa: E402
from sprites_twisted.session import ProxySession  # noqa: E402

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
