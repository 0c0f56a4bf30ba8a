"""
The examples in ``docs/`` build what they say they build.
"""

from __future__ import annotations

import os

from twisted.application.service import IService, loadApplication
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.manager import ProxyManager
from sprites_twisted.mapping import PortMapping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ExampleTacTests(SynchronousTestCase):
    """
    Tests for ``docs/examples/proxy.tac``.
    """

    def test_proxyTac(self) -> None:
        """
        The .tac file makes an application holding a ProxyManager with one
        session per mapping, for the sprite it names, with the token and API
        URL from the environment; nothing listens until it starts.
        """
        environ = dict(os.environ, SPRITE_TOKEN="tac-token", SPRITES_API_URL="http://[::1]:8900")
        self.patch(os, "environ", environ)
        application = loadApplication(os.path.join(ROOT, "docs", "examples", "proxy.tac"), "python")
        (manager,) = list(IService(application))
        self.assertIsInstance(manager, ProxyManager)
        sessions = manager.sessions
        self.assertEqual(
            [s.mapping for s in sessions], [PortMapping(5433, 5432), PortMapping(8080, 80)]
        )
        self.assertEqual({s.spriteName for s in sessions}, {"mysprite"})
        endpoint = sessions[0].factory.endpoint
        self.assertEqual(endpoint.url, "ws://[::1]:8900/v1/sprites/mysprite/proxy")
        self.assertEqual(endpoint._token, "tac-token")
        self.assertEqual([s.localAddr() for s in sessions], [None, None])
