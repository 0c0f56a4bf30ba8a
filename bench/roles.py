"""
The processes of the benchmark, one role each (``python bench/roles.py ROLE ...``).

Every role listens on 127.0.0.1, prints ``READY <port>`` on stdout once it
serves, and exits when its stdin closes (so it never outlives ``run.py``).

- ``target PORT?``: the load target.  Blocking sockets, one thread per
  connection.  Each connection starts with a 9-byte header: a mode byte and a
  64-bit size.  ``E`` echoes everything after the header; ``S`` sinks
  ``size`` bytes and answers one byte ``K``; ``G`` sends ``size`` bytes;
  ``R`` (request/response) takes ``size`` as two 32-bit halves, REQUEST and
  RESPONSE, then reads REQUEST bytes and answers RESPONSE bytes, over and
  over until the connection closes.
- ``server``: the local sprite server (``LocalSpriteServer.factory()``), the same
  code ``twistd sprites-local`` runs.
- ``client API_PORT TARGET_PORT [PREWARM [EARLY]]``: the tunnel client: one
  forwarded local port (``SpritesClient.proxyPort``, what ``twistd
  sprites-proxy`` runs); it passes ``prewarm=PREWARM`` (0 by default: a
  cold client, even where warm tunnels are on by default) and with EARLY = 1
  ``earlyData=True``, only where this version of the client has them
  (``run.py`` checks first).
- ``server-tls PEM RESUMABLE``: the same over TLS (``listenSSL``) with the
  key and certificate in PEM; with RESUMABLE = 1 it offers session
  resumption (``enableSessions`` and ``enableSessionTickets``), which
  Twisted's ``ssl:`` endpoint strings (so ``twistd sprites-local``) do not.
- ``client-tls API_PORT TARGET_PORT CA_PEM``: the tunnel client to an
  ``https://`` API URL, trusting the CA in CA_PEM.
- ``portforward TARGET_PORT``: Twisted's own ``twisted.protocols.portforward``.
- ``delay RTT_MICROSECONDS UPSTREAM_PORT``: the WAN mode's delay relay
  (``delay.py``), in front of the local sprite server or the target.

With ``BENCH_CODE=DIR`` in the environment, a role runs the
``sprites_twisted`` of the source tree DIR (another checkout, for
``interleave.py``) instead of this one's.

The Twisted roles log to ``bench/results/ROLE.log`` like ``twistd -l`` would.
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
TOKEN = "bench-token-0123456789"
HEADER = struct.Struct("!cQ")
CHUNK = 1024 * 1024


def raiseFileLimit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def exitWhenStdinCloses() -> None:
    def watch() -> None:
        try:
            while sys.stdin.buffer.read(1):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def serve(reactor: object) -> None:
    """
    Run the reactor, then leave at once: a normal interpreter shutdown
    (after a SIGTERM or SIGINT stopped the reactor) would wait on the stdin
    watcher's lock and end in a fatal error.
    """
    reactor.run()  # type: ignore[attr-defined]
    sys.stdout.flush()
    os._exit(0)


def ready(port: int, info: str = "-") -> None:
    sys.stdout.write(f"READY {port} {info}\n")
    sys.stdout.flush()


# --- the target -----------------------------------------------------------


def recvExactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def recvDiscard(sock: socket.socket, n: int) -> None:
    """Read and drop exactly C{n} bytes."""
    buf = bytearray(min(n, CHUNK) or 1)
    left = n
    while left > 0:
        got = sock.recv_into(buf, min(len(buf), left))
        if not got:
            raise EOFError(f"connection closed with {left} bytes to go")
        left -= got


def sendZeros(sock: socket.socket, n: int) -> None:
    """Send C{n} zero bytes, a megabyte at a time."""
    block = memoryview(bytes(CHUNK))
    left = n
    while left > 0:
        k = min(CHUNK, left)
        sock.sendall(block[:k])
        left -= k


def serveTargetConnection(sock: socket.socket) -> None:
    try:
        mode, size = HEADER.unpack(recvExactly(sock, HEADER.size))
        if mode == b"E":
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                n = sock.recv_into(buf)
                if not n:
                    break
                sock.sendall(view[:n])
        elif mode == b"S":
            recvDiscard(sock, size)
            sock.sendall(b"K")
            sock.recv(1)
        elif mode == b"G":
            sendZeros(sock, size)
            sock.recv(1)
        elif mode == b"R":
            request, response = size >> 32, size & 0xFFFFFFFF
            answer = bytes(response)
            while True:
                recvExactly(sock, request)
                sock.sendall(answer)
    except (OSError, EOFError):
        pass
    finally:
        sock.close()


def runTarget(port: int = 0) -> None:
    threading.stack_size(256 * 1024)
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    ready(listener.getsockname()[1])
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serveTargetConnection, args=(sock,), daemon=True).start()


# --- the Twisted roles ----------------------------------------------------


def maskerInUse() -> str:
    """
    How the relay masks its frames: Autobahn's compiled NVX masker, pure
    Python, or Autobahn's own public API (the fast path off).  The module
    holding the fast path has changed name (``_framing``, then
    ``_fastpath``); either is reported, and neither is required.
    """
    import importlib

    for name in ("_fastpath", "_framing"):
        try:
            module = importlib.import_module(f"sprites_twisted.{name}")
        except ImportError:
            continue
        if not getattr(module, "ENABLED", True):
            return "autobahn-public-API"
        return "nvx_xormask_process" if module.NATIVE_MASKING else "pure-Python-XOR"
    return "autobahn"


def startLogging(role: str) -> None:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    os.makedirs(RESULTS, exist_ok=True)
    logFile = open(os.path.join(RESULTS, f"{role}.log"), "a")  # noqa: SIM115
    globalLogBeginner.beginLoggingTo([textFileLogObserver(logFile)], redirectStandardIO=False)


def runServer(pemPath: str = "", resumable: int = 0) -> None:
    from twisted.internet import reactor

    from sprites_twisted.server import LocalSpriteServer

    startLogging("server")
    server = LocalSpriteServer(reactor, TOKEN, maxTunnels=20000)
    if pemPath:
        from twisted.internet.ssl import CertificateOptions, PrivateCertificate

        with open(pemPath) as f:
            certificate = PrivateCertificate.loadPEM(f.read())
        options = CertificateOptions(
            privateKey=certificate.privateKey.original,
            certificate=certificate.original,
            enableSessions=bool(resumable),
            enableSessionTickets=bool(resumable),
        )
        port = reactor.listenSSL(0, server.factory(), options, backlog=1024, interface="127.0.0.1")
    else:
        port = reactor.listenTCP(0, server.factory(), backlog=1024, interface="127.0.0.1")
    ready(port.getHost().port, maskerInUse())
    serve(reactor)


def runClient(
    apiPort: int, targetPort: int, prewarm: int = 0, earlyData: int = 0, caPath: str = ""
) -> None:
    import inspect

    from twisted.internet import reactor

    from sprites_twisted.client import SpritesClient

    startLogging("client")
    options: dict[str, object] = {}
    # Where the client has warm tunnels, they may be on by default: a cold
    # client says prewarm=0.
    if prewarm or "prewarm" in inspect.signature(SpritesClient).parameters:
        options["prewarm"] = prewarm
    if earlyData:
        options["earlyData"] = True
    scheme = "http"
    if caPath:
        scheme, options["trustRoot"] = "https", caPath
    client = SpritesClient(reactor, TOKEN, f"{scheme}://127.0.0.1:{apiPort}", **options)

    def listening(session: object) -> None:
        ready(session.localPort, maskerInUse())  # type: ignore[attr-defined]

    def failed(f: object) -> None:
        sys.stderr.write(f"client failed: {f}\n")
        os._exit(1)

    reactor.callWhenRunning(
        lambda: client.proxyPort("bench", 0, targetPort).addCallbacks(listening, failed)
    )
    serve(reactor)


def runPortforward(targetPort: int) -> None:
    from twisted.internet import reactor
    from twisted.protocols.portforward import ProxyFactory

    startLogging("portforward")
    factory = ProxyFactory("127.0.0.1", targetPort)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    ready(port.getHost().port)
    serve(reactor)


def runDelay(rttMicroseconds: int, upstreamPort: int) -> None:
    from twisted.internet import selectreactor

    selectreactor.install()
    from delay import DelayFactory
    from twisted.internet import reactor

    startLogging("delay")
    factory = DelayFactory(reactor, rttMicroseconds / 1e6, upstreamPort)
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    ready(port.getHost().port)
    serve(reactor)


def dumpObjectCounts(signum: int, frame: object) -> None:
    """SIGUSR1: write the most common live object types to RESULTS (diagnostics)."""
    import collections
    import gc

    gc.collect()
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    with open(os.path.join(RESULTS, f"objects-{os.getpid()}.txt"), "w") as f:
        f.writelines(f"{n:8} {name}\n" for name, n in counts.most_common(60))


def main(argv: list[str]) -> None:
    import signal

    sys.path.insert(0, os.environ.get("BENCH_CODE") or ROOT)
    signal.signal(signal.SIGUSR1, dumpObjectCounts)
    raiseFileLimit()
    exitWhenStdinCloses()
    role, args = argv[0], [int(a) if a.isdigit() else a for a in argv[1:]]
    if role == "target":
        runTarget(*args)
    elif role == "server":
        runServer()
    elif role == "server-tls":
        runServer(*args)
    elif role == "client":
        runClient(*args)
    elif role == "client-tls":
        runClient(args[0], args[1], caPath=args[2])
    elif role == "portforward":
        runPortforward(*args)
    elif role == "delay":
        runDelay(*args)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
