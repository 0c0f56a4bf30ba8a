"""
``make bench``: the tunnel against raw loopback TCP and Twisted's portforward.

Everything runs on 127.0.0.1 in separate processes (see ``roles.py``): the
target, the local sprite server, the tunnel client, and a
``twisted.protocols.portforward`` relay; the load generator is this process.
Each workload is repeated and reported as medians; ratios are taken within
the same run, since absolute figures drift on a shared machine.

Writes ``docs/performance.md`` (keeping its hand-written notes section),
``docs/performance.png`` and ``bench/results/latest.json``, and prints the
table.  No arguments; ``BENCH_QUICK=1`` shrinks every workload for a smoke
run (its figures are not written to ``docs/``).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import signal
import socket
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import loadgen as L  # noqa: E402
import report  # noqa: E402
from roles import RESULTS, raiseFileLimit  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
QUICK = os.environ.get("BENCH_QUICK") == "1"

BULK_SIZE = 64 * MiB if QUICK else GiB
BULK_REPS = 2 if QUICK else 5
SETUP_N = 100 if QUICK else 500
SETUP_REPS = 1 if QUICK else 3
PING_N = 500 if QUICK else 2000
PING_REPS = 1 if QUICK else 3
IDLE_N = 500 if QUICK else 5000
SLOW_SIZE = 32 * MiB if QUICK else GiB
SLOW_RATE = 10e6
#: The whole run is killed after this many seconds.
DEADLINE = 900


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def settle(seconds: float = 0.5) -> None:
    time.sleep(seconds)


def startTunnel(targetPort: int) -> tuple[L.Proc, L.Proc]:
    server = L.start("server")
    client = L.start("client", server.port, targetPort)
    return client, server


def bulk(paths: dict[str, tuple[int, list[L.Proc]]]) -> dict[str, Any]:
    """Upload, download and echo of BULK_SIZE through each path."""
    modes = {"upload": (L.upload, 1), "download": (L.download, 1), "echo": (L.echo, 2)}
    out: dict[str, Any] = {m: {p: {"mbps": [], "cpu": {}} for p in paths} for m in modes}
    for rep in range(BULK_REPS):
        for mode, (fn, ways) in modes.items():
            for path, (port, procs) in paths.items():
                cpu0 = [proc.cpu() for proc in procs]
                seconds = fn(port, BULK_SIZE)
                moved = ways * BULK_SIZE / GiB
                entry = out[mode][path]
                entry["mbps"].append(BULK_SIZE / seconds / 1e6)
                for proc, c0 in zip(procs, cpu0, strict=True):
                    entry["cpu"].setdefault(proc.role, []).append((proc.cpu() - c0) / moved)
                log(
                    f"bulk {rep + 1}/{BULK_REPS} {mode:8} {path:11} {BULK_SIZE / seconds / 1e6:7.0f} MB/s"
                )
    return out


def setup(paths: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {p: {"median": [], "p99": []} for p in paths}
    for rep in range(SETUP_REPS):
        for path, port in paths.items():
            times = sorted(L.firstByte(port) for _ in range(SETUP_N))
            out[path]["median"].append(statistics.median(times) * 1e3)
            out[path]["p99"].append(times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3)
            log(f"setup {rep + 1}/{SETUP_REPS} {path:11} median {out[path]['median'][-1]:.3f} ms")
    return out


def pingPong(paths: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {p: [] for p in paths}
    for rep in range(PING_REPS):
        for path, port in paths.items():
            out[path].append(statistics.median(L.pingPong(port, PING_N)) * 1e6)
            log(f"ping-pong {rep + 1}/{PING_REPS} {path:11} {out[path][-1]:.1f} us")
    return out


def idle(targetPort: int) -> dict[str, Any]:
    """IDLE_N concurrent idle connections through fresh relay processes."""
    out: dict[str, Any] = {}
    for path in ("portforward", "tunnel"):
        if path == "tunnel":
            client, server = startTunnel(targetPort)
            procs, port = [client, server], client.port
        else:
            pf = L.start("portforward", targetPort)
            procs, port = [pf], pf.port
        try:
            for _ in range(20):
                L.firstByte(port)
            settle(1.0)
            before = {p.role: p.rss() for p in procs}
            start = time.perf_counter()
            socks = L.openIdle(port, IDLE_N)
            opened = time.perf_counter() - start
            settle(2.0)
            after = {p.role: p.rss() for p in procs}
            for sock in socks:
                sock.close()
            for role, rss in before.items():
                out[role] = {
                    "before": rss,
                    "after": after[role],
                    "perTunnel": (after[role] - rss) / IDLE_N,
                }
            log(f"idle {path}: {IDLE_N} opened in {opened:.1f} s, {out}")
        finally:
            for p in procs:
                p.stop()
    return out


def slowReader(targetPort: int) -> dict[str, Any]:
    client, server = startTunnel(targetPort)
    procs = [client, server]
    try:
        for _ in range(3):
            L.download(client.port, 4 * MiB)
        settle(1.0)
        baseline = {p.role: p.rss() for p in procs}
        peak = dict(baseline)
        for p in procs:
            p.resetPeak()

        def sample() -> None:
            for p in procs:
                peak[p.role] = max(peak[p.role], p.rss())

        seconds = L.slowRead(client.port, SLOW_SIZE, SLOW_RATE, sample)
        for p in procs:
            peak[p.role] = max(peak[p.role], p.status("VmHWM"))
        out = {
            p.role: {
                "baseline": baseline[p.role],
                "peak": peak[p.role],
                "aboveMiB": (peak[p.role] - baseline[p.role]) / 1024,
            }
            for p in procs
        }
        out["rateMBps"] = SLOW_SIZE / seconds / 1e6
        log(f"slow reader: {out}")
        return out
    finally:
        for p in procs:
            p.stop()


def machine() -> dict[str, Any]:
    import autobahn
    from autobahn.websocket import USES_NVX

    import twisted

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "autobahn": autobahn.__version__,
        "nvx": bool(USES_NVX),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    signal.alarm(DEADLINE)
    raiseFileLimit()
    os.makedirs(RESULTS, exist_ok=True)
    started = time.monotonic()
    procs: list[L.Proc] = []
    results: dict[str, Any] = {
        "machine": machine(),
        "sizes": {
            "bulk": BULK_SIZE,
            "bulkReps": BULK_REPS,
            "setupN": SETUP_N,
            "setupReps": SETUP_REPS,
            "pingN": PING_N,
            "pingReps": PING_REPS,
            "idleN": IDLE_N,
            "slowSize": SLOW_SIZE,
            "slowRate": SLOW_RATE,
        },
        "quick": QUICK,
    }
    try:
        target = L.start("target")
        procs.append(target)
        client, server = startTunnel(target.port)
        pf = L.start("portforward", target.port)
        procs += [client, server, pf]
        results["machine"]["masker"] = {"client": client.info, "server": server.info}
        for port in (target.port, pf.port, client.port):
            for _ in range(5):
                L.firstByte(port)
            L.upload(port, 64 * MiB)
            L.download(port, 64 * MiB)
            L.echo(port, 64 * MiB)
        gc.disable()
        results["bulk"] = bulk(
            {
                "direct": (target.port, []),
                "portforward": (pf.port, [pf]),
                "tunnel": (client.port, [client, server]),
            }
        )
        latencyPaths = {
            "direct": target.port,
            "portforward": pf.port,
            "tunnel": client.port,
        }
        results["setup"] = setup(latencyPaths)
        results["pingpong"] = pingPong(latencyPaths)
        gc.enable()
        for p in (client, server, pf):
            p.stop()
        results["idle"] = idle(target.port)
        results["slow"] = slowReader(target.port)
    finally:
        for p in reversed(procs):
            p.stop()
    results["seconds"] = time.monotonic() - started
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = report.render(results, write=not QUICK)
    print(table)
    log(f"done in {results['seconds']:.0f} s")


if __name__ == "__main__":
    socket.setdefaulttimeout(L.TIMEOUT)
    main()
