"""
The load generator (runs inside ``run.py``) and process accounting.

Blocking sockets on 127.0.0.1, every one with a timeout, so that a stuck
relay fails the run instead of hanging it.  Talks the target's header
protocol (see ``roles.py``).
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from roles import HEADER, TOKEN, recvDiscard, recvExactly, sendZeros

TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def upload(port: int, size: int) -> float:
    """Send C{size} bytes to the sink; seconds until it acknowledged them all."""
    start = time.perf_counter()
    with connect(port) as sock:
        sock.sendall(HEADER.pack(b"S", size))
        sendZeros(sock, size)
        if sock.recv(1) != b"K":
            raise EOFError("no acknowledgement from the sink")
        return time.perf_counter() - start


def download(port: int, size: int) -> float:
    """Pull C{size} bytes from the source; seconds until all arrived."""
    start = time.perf_counter()
    with connect(port) as sock:
        sock.sendall(HEADER.pack(b"G", size))
        recvDiscard(sock, size)
        return time.perf_counter() - start


def echo(port: int, size: int) -> float:
    """Send C{size} bytes to the echo and read them back at the same time."""
    start = time.perf_counter()
    with connect(port) as sock:
        sock.sendall(HEADER.pack(b"E", 0))
        errors: list[BaseException] = []

        def send() -> None:
            try:
                sendZeros(sock, size)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        sender = threading.Thread(target=send)
        sender.start()
        recvDiscard(sock, size)
        sender.join()
        if errors:
            raise errors[0]
        return time.perf_counter() - start


def firstByte(port: int) -> float:
    """Connect, ask for an echo, and wait for the first byte back."""
    start = time.perf_counter()
    sock = connect(port)
    try:
        sock.sendall(HEADER.pack(b"E", 0) + b"x")
        if sock.recv(1) != b"x":
            raise EOFError("no echo")
        return time.perf_counter() - start
    finally:
        sock.close()


def pingPong(port: int, rounds: int, size: int = 64) -> list[float]:
    """Round trips of C{size} bytes on one open connection."""
    with connect(port) as sock:
        sock.sendall(HEADER.pack(b"E", 0))
        message = b"p" * size
        times = []
        for _ in range(rounds + 20):
            start = time.perf_counter()
            sock.sendall(message)
            recvDiscard(sock, size)
            times.append(time.perf_counter() - start)
        return times[20:]


def transactions(
    port: int,
    connections: int,
    seconds: float,
    maxCount: int,
    request: int = 100,
    response: int = 1024,
) -> tuple[int, float, list[float]]:
    """
    C{connections} connections at once, each sending C{request} bytes and
    waiting for C{response} bytes back, again and again, for C{seconds}
    (or C{maxCount} exchanges in all, whichever comes first).

    The connections are opened and each does one exchange before the clock
    starts, so that setup is not counted.  One thread, non-blocking sockets
    and a selector, so that the load generator's own cost per exchange is
    small and the same for every path.

    :returns: (exchanges done, seconds taken, each exchange's seconds).
    """
    socks = [connect(port) for _ in range(connections)]
    try:
        message = b"q" * request
        for sock in socks:
            sock.sendall(HEADER.pack(b"R", request << 32 | response))
        for sock in socks:
            sock.sendall(message)
        for sock in socks:
            recvDiscard(sock, response)
        selector = selectors.DefaultSelector()
        left: dict[socket.socket, int] = {}
        sent: dict[socket.socket, float] = {}
        buf = bytearray(max(response, 64 * 1024))
        times: list[float] = []
        start = time.perf_counter()
        stopAt = start + seconds
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            sent[sock] = time.perf_counter()
            sock.send(message)
            left[sock] = response
        outstanding = len(socks)
        done = 0
        end = start
        while outstanding:
            events = selector.select(timeout=TIMEOUT)
            if not events:
                raise TimeoutError(f"no response for {TIMEOUT} s")
            now = time.perf_counter()
            for key, _ in events:
                sock = key.fileobj  # type: ignore[assignment]
                n = sock.recv_into(buf, left[sock])
                if not n:
                    raise EOFError("connection closed during the exchanges")
                left[sock] -= n
                if left[sock]:
                    continue
                done += 1
                times.append(now - sent[sock])
                end = now
                if now < stopAt and done + outstanding <= maxCount:
                    sent[sock] = now
                    sock.send(message)
                    left[sock] = response
                else:
                    outstanding -= 1
        selector.close()
        return done, end - start, times
    finally:
        for sock in socks:
            sock.close()


# --- a bare WebSocket (the WAN part's reference) -----------------------------


def _clientFrame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455), FIN set."""
    key = os.urandom(4)
    mask = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(
        len(payload), "big"
    )
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return bytes([0x80 | opcode]) + length + key + masked


def _readFrame(sock: socket.socket) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    head = recvExactly(sock, 2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", recvExactly(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", recvExactly(sock, 8))[0]
    return head[0] & 0x0F, recvExactly(sock, n)


def openWebSocket(apiPort: int) -> socket.socket:
    """An upgraded proxy WebSocket to the local sprite server, not yet initialised."""
    sock = connect(apiPort)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/sprites/bench/proxy HTTP/1.1\r\nHost: 127.0.0.1:{apiPort}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("the server closed during the upgrade")
        response += chunk
    if b" 101 " not in response.split(b"\r\n", 1)[0]:
        raise EOFError(f"upgrade refused: {response[:80]!r}")
    return sock


def warmFirstByte(sock: socket.socket, targetPort: int, earlyData: bool) -> float:
    """
    On an open WebSocket (L{openWebSocket}): send the init, then (after the
    reply, or at once with C{earlyData}) an echo request; seconds until the
    first echoed byte.  The lower bound of a warm tunnel, without a client.
    """
    init = _clientFrame(1, json.dumps({"host": "localhost", "port": targetPort}).encode())
    data = _clientFrame(2, HEADER.pack(b"E", 0) + b"x")
    start = time.perf_counter()
    if earlyData:
        sock.sendall(init + data)
    else:
        sock.sendall(init)
    opcode, reply = _readFrame(sock)
    if opcode != 1 or json.loads(reply).get("status") != "connected":
        raise EOFError(f"the tunnel failed: {reply[:80]!r}")
    if not earlyData:
        sock.sendall(data)
    while True:
        opcode, payload = _readFrame(sock)
        if opcode == 2 and payload:
            if payload[:1] != b"x":
                raise EOFError("no echo")
            return time.perf_counter() - start
        if opcode == 8:
            raise EOFError("the tunnel closed before the echo")


def openIdle(port: int, count: int, batch: int = 50) -> list[socket.socket]:
    """Open C{count} echo connections, each proven open by one round trip."""
    socks: list[socket.socket] = []
    while len(socks) < count:
        group = [connect(port) for _ in range(min(batch, count - len(socks)))]
        for sock in group:
            sock.sendall(HEADER.pack(b"E", 0) + b"i")
        for sock in group:
            if sock.recv(1) != b"i":
                raise EOFError("an idle tunnel did not echo")
        socks.extend(group)
    return socks


def slowRead(
    port: int, size: int, rate: float, sample: callable, readSize: int = 64 * 1024
) -> float:
    """Pull C{size} bytes at about C{rate} bytes/s, calling C{sample} as it goes."""
    start = time.perf_counter()
    with connect(port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, readSize)
        sock.sendall(HEADER.pack(b"G", size))
        buf = bytearray(readSize)
        got = 0
        nextSample = 0.0
        while got < size:
            n = sock.recv_into(buf, min(readSize, size - got))
            if not n:
                raise EOFError("slow reader: connection closed early")
            got += n
            elapsed = time.perf_counter() - start
            ahead = got / rate - elapsed
            if ahead > 0:
                time.sleep(ahead)
            if elapsed >= nextSample:
                sample()
                nextSample = elapsed + 0.1
        return time.perf_counter() - start


# --- processes ------------------------------------------------------------


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen[bytes]
    port: int
    info: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        """User + system CPU seconds so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def runtime(self) -> float:
        """CPU seconds so far, to the nanosecond (schedstat, all threads)."""
        total = 0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            with open(f"/proc/{self.pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9

    def status(self, key: str) -> int:
        """A /proc/PID/status memory figure (VmRSS, VmHWM) in KiB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def rss(self) -> int:
        return self.status("VmRSS")

    def resetPeak(self) -> None:
        """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5)."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                self.popen.wait(3)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(3)


def start(role: str, *args: int | str, code: str | None = None) -> Proc:
    """
    Start C{role} (see C{roles.py}) and wait for its C{READY} line; with
    C{code}, running the C{sprites_twisted} of that source tree.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, BENCH_CODE=code) if code else None
    popen = subprocess.Popen(
        [sys.executable, os.path.join(here, "roles.py"), role, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 30
    line = b""
    while time.monotonic() < deadline:
        line = popen.stdout.readline()  # type: ignore[union-attr]
        if line.startswith(b"READY ") or not line:
            break
    if not line.startswith(b"READY "):
        popen.kill()
        raise RuntimeError(f"{role} did not start")
    _, port, info = line.decode().split()
    return Proc(role, popen, int(port), info)
