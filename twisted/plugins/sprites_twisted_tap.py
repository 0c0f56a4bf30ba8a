# -*- test-case-name: tests.test_plugins -*-
"""
The twistd commands of sprites_twisted.  Thin on purpose: the modules are
named as strings and imported only when their command runs.
"""

from twisted.application.service import ServiceMaker

spritesProxy = ServiceMaker(
    "sprites-proxy",
    "sprites_twisted.tap",
    "Forward local TCP ports into a Fly.io sprite.",
    "sprites-proxy",
)
spritesLocal = ServiceMaker(
    "sprites-local",
    "sprites_twisted.localtap",
    "Serve the Sprites proxy API on this machine (demo, tests, offline work).",
    "sprites-local",
)
