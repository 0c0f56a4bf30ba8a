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
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

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


class InstalledCopyTests(TestCase):
    """
    After ``pip install .`` (which ``make test`` does first), Twisted finds
    the plugins from the installed copy alone, outside the source tree.
    """

    async def test_foundWhenInstalled(self) -> None:
        """
        From a directory outside the tree and with no PYTHONPATH, twistd's
        plugin lookup lists both commands and the endpoint parser, and the
        package comes from site-packages.
        """
        from twisted.internet import reactor

        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        code = (
            "import sprites_twisted\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "from twisted.internet.interfaces import "
            "IStreamClientEndpointStringParserWithReactor as P\n"
            "print(sprites_twisted.__file__)\n"
            "print(sorted(p.tapname for p in getPlugins(IServiceMaker) "
            "if p.tapname.startswith('sprites-')))\n"
            "print(sorted(p.prefix for p in getPlugins(P) if p.prefix == 'sprite'))\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out, err, status = await getProcessOutputAndValue(
            sys.executable, ["-c", code], env=env, path=elsewhere, reactor=reactor
        )
        if status != 0 and b"No module named 'sprites_twisted'" in err:
            raise SkipTest(
                "sprites-twisted is not installed in this Python (make test installs it)"
            )
        self.assertEqual(status, 0, err)
        location, makers, parsers = out.decode().strip().splitlines()
        self.assertIn("site-packages", location)
        self.assertNotEqual(os.path.dirname(os.path.dirname(location)), ROOT)
        self.assertEqual(makers, "['sprites-local', 'sprites-proxy']")
        self.assertEqual(parsers, "['sprite']")
