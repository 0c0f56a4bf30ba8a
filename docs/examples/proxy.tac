"""
Forward local ports into a sprite from a .tac file: what
``twistd sprites-proxy`` does, as code you can extend.

    SPRITE_TOKEN=... twistd -ny docs/examples/proxy.tac

Forwards 127.0.0.1:5433 to port 5432 and 127.0.0.1:8080 to port 80 in the
sprite "mysprite".  The token and API URL come from the environment
(SPRITE_TOKEN, SPRITES_API_URL), never from this file.
"""

from twisted.application.service import Application
from twisted.internet import reactor

from sprites_twisted import PortMapping, ProxyManager, SpritesClient
from sprites_twisted.config import apiURLFromEnvironment, tokenFromEnvironment

client = SpritesClient(reactor, tokenFromEnvironment() or "", apiURLFromEnvironment())

forwards = ProxyManager()
for mapping in [PortMapping(5433, 5432), PortMapping(8080, 80)]:
    forwards.addSession(client.session("mysprite", mapping))

application = Application("mysprite-forwards")
forwards.setServiceParent(application)
