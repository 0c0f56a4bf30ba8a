"""
A scripted WebSocket server for client tests: it speaks just enough of
HTTP and RFC 6455 to answer an upgrade and send chosen frames, so that
tests can play servers that misbehave in precise ways.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

from twisted.internet.protocol import Factory, Protocol

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """
    An unmasked (server-to-client) frame.
    """
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def text(payload: bytes) -> bytes:
    return frame(0x1, payload)


def binary(payload: bytes) -> bytes:
    return frame(0x2, payload)


def close(code: int | None = 1000, reason: bytes = b"") -> bytes:
    return frame(0x8, b"" if code is None else struct.pack("!H", code) + reason)


def parseClientFrames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """
    Decode masked client frames; returns (opcode, payload) pairs and the
    unparsed rest.
    """
    frames = []
    while len(data) >= 2:
        opcode = data[0] & 0x0F
        n = data[1] & 0x7F
        masked = data[1] & 0x80
        pos = 2
        if n == 126:
            if len(data) < 4:
                break
            n = struct.unpack("!H", data[2:4])[0]
            pos = 4
        elif n == 127:
            if len(data) < 10:
                break
            n = struct.unpack("!Q", data[2:10])[0]
            pos = 10
        key = b""
        if masked:
            key = data[pos : pos + 4]
            pos += 4
        if len(data) < pos + n:
            break
        payload = data[pos : pos + n]
        if masked:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        frames.append((opcode, payload))
        data = data[pos + n :]
    return frames, data


class ScriptedServer(Protocol):
    """
    Reads the upgrade request, then calls C{onRequest(self, request)}; the
    script writes what it wants with C{self.transport.write}.  Client
    frames go to C{onFrame(self, opcode, payload)}.
    """

    def __init__(
        self,
        onRequest: Callable[[ScriptedServer, bytes], None],
        onFrame: Callable[[ScriptedServer, int, bytes], None] | None = None,
    ) -> None:
        self.onRequest = onRequest
        self.onFrame = onFrame
        self.buffer = b""
        self.request: bytes | None = None
        self.frames: list[tuple[int, bytes]] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.request is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.request, self.buffer = self.buffer[: end + 4], self.buffer[end + 4 :]
            self.onRequest(self, self.request)
        frames, self.buffer = parseClientFrames(self.buffer)
        for opcode, payload in frames:
            self.frames.append((opcode, payload))
            if self.onFrame is not None:
                self.onFrame(self, opcode, payload)

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True

    def header(self, name: bytes) -> bytes | None:
        assert self.request is not None
        for line in self.request.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def accept(self) -> None:
        """
        Answer the upgrade with 101.
        """
        key = self.header(b"sec-websocket-key") or b""
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )


class ScriptedServerFactory(Factory):
    """
    Builds L{ScriptedServer}s and remembers them.
    """

    def __init__(
        self,
        onRequest: Callable[[ScriptedServer, bytes], None],
        onFrame: Callable[[ScriptedServer, int, bytes], None] | None = None,
    ) -> None:
        self.onRequest = onRequest
        self.onFrame = onFrame
        self.servers: list[ScriptedServer] = []

    def buildProtocol(self, addr: object) -> ScriptedServer:
        server = ScriptedServer(self.onRequest, self.onFrame)
        self.servers.append(server)
        return server


def acceptThenReply(reply: bytes) -> ScriptedServerFactory:
    """
    A server that accepts the upgrade and answers the init with C{reply}
    (raw frame bytes).
    """

    def onRequest(server: ScriptedServer, request: bytes) -> None:
        server.accept()

    def onFrame(server: ScriptedServer, opcode: int, payload: bytes) -> None:
        if opcode == 0x1:
            server.transport.write(reply)

    return ScriptedServerFactory(onRequest, onFrame)


def respondHTTP(response: bytes) -> ScriptedServerFactory:
    """
    A server that answers the upgrade request with C{response} verbatim.
    """

    def onRequest(server: ScriptedServer, request: bytes) -> None:
        server.transport.write(response)

    return ScriptedServerFactory(onRequest)
