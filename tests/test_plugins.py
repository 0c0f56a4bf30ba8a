"""
Tests for the plugins in ``twisted/plugins``: twistd and the endpoint
string machinery find them, and they stay thin and cheap to import.
"""

from __future__ import annotations

import os
import sys

from twisted.application.service import IServiceMaker
from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sprites_twisted import localtap, tap
from sprites_twisted._parser import SpriteEndpointParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServiceMakerTests(SynchronousTestCase):
    """
    The twistd commands are discoverable.
    """

    def makers(self) -> dict[str, IServiceMaker]:
        return {p.tapname: p for p in getPlugins(IServiceMaker)}

    def test_spritesProxy(self) -> None:
        """
        ``sprites-proxy`` is a twistd command backed by L{tap}.
        """
        maker = self.makers()["sprites-proxy"]
        self.assertEqual(maker.module, "sprites_twisted.tap")
        self.assertIsInstance(maker.options(), tap.Options)

    def test_spritesLocal(self) -> None:
        """
        ``sprites-local`` is a twistd command backed by L{localtap}.
        """
        maker = self.makers()["sprites-local"]
        self.assertEqual(maker.module, "sprites_twisted.localtap")
        self.assertIsInstance(maker.options(), localtap.Options)

    def test_noPackageInit(self) -> None:
        """
        Neither ``twisted/`` nor ``twisted/plugins/`` in the source tree has
        an ``__init__.py`` (it would shadow Twisted's own package).
        """
        for folder in ("twisted", os.path.join("twisted", "plugins")):
            self.assertFalse(os.path.exists(os.path.join(ROOT, folder, "__init__.py")))


class EndpointParserPluginTests(SynchronousTestCase):
    """
    The ``sprite:`` parser is discoverable.
    """

    def test_found(self) -> None:
        """
        Exactly one endpoint parser plugin answers to ``sprite``, and it is
        ours.
        """
        parsers = [
            p
            for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
            if p.prefix == "sprite"
        ]
        self.assertEqual(len(parsers), 1)
        self.assertIsInstance(parsers[0], SpriteEndpointParser)


class ImportCostTests(TestCase):
    """
    Every process that parses a plugin endpoint string imports our parser
    plugin, so importing it must stay cheap.
    """

    async def test_parserPluginIsLight(self) -> None:
        """
        Importing the endpoint parser plugin imports neither Autobahn, nor
        twisted.web, nor our endpoint.
        """
        from twisted.internet import reactor

        code = (
            "import sys, twisted.plugins.sprites_twisted_endpoints\n"
            "heavy = ('autobahn', 'twisted.web', 'sprites_twisted.endpoint', "
            "'sprites_twisted.client')\n"
            "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
        )
        env = dict(os.environ, PYTHONPATH=ROOT)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-c", code], env=env, path=ROOT, reactor=reactor
        )
        self.assertEqual((code, out.strip()), (0, b"[]"), err)
