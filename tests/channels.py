"""
A fake WebSocket channel (what L{sprites_twisted.wsstream} and the tunnel
state machines need of our Autobahn shims), for in-memory unit tests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport


class FakeChannel:
    """
    Records what is sent; C{transport} is a C{StringTransport} standing for
    the TCP connection under the WebSocket.
    """

    def __init__(self) -> None:
        self.transport: Any = StringTransport()
        self.open = True
        self.binary: list[bytes] = []
        self.texts: list[bytes] = []
        self.closes: list[tuple[int, str | None]] = []
        self.pings = 0
        self.textLimit = 0

    # IChannel

    def isOpen(self) -> bool:
        return self.open

    def sendBinary(self, data: bytes | memoryview) -> None:
        self.binary.append(bytes(data))

    def sendCloseCode(self, code: int, reason: str | None) -> None:
        self.closes.append((code, reason))
        self.open = False

    def getTCPTransport(self) -> Any:
        return self.transport

    # What the state machines call besides

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        (self.binary if isBinary else self.texts).append(payload)

    def sendClose(self, code: int | None = None, reason: str | None = None) -> None:
        self.closes.append((code or 1000, reason))
        self.open = False

    def sendPing(self) -> None:
        self.pings += 1
