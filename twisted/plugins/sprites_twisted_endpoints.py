# -*- test-case-name: tests.test_plugins -*-
"""
The ``sprite:`` client endpoint string (``clientFromString(reactor,
"sprite:NAME:5432")``).  Every process that parses a plugin-provided
endpoint string imports this file, so the parser module is import-light.
"""

from sprites_twisted._parser import SpriteEndpointParser

spriteEndpointParser = SpriteEndpointParser()
