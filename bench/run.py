"""
``make bench``: the tunnel against raw loopback TCP and Twisted's portforward.

Everything runs on 127.0.0.1 in separate processes (see ``roles.py``): the
target, the local sprite server, the tunnel client, and a
``twisted.protocols.portforward`` relay; the load generator is this process.
Each workload is repeated and reported as medians; ratios are taken within
the same run, since absolute figures drift on a shared machine.

The parts (``--only`` / ``BENCH_ONLY``, comma-separated; all by default):

- ``bulk``: upload, download and echo throughput, CPU per GiB.
- ``latency``: connection setup and ping-pong on loopback, plus setup with
  warm tunnels and early data where the client has them.
- ``small``: 4 and 16 connections at once doing request/response
  exchanges (100 bytes out, 1 KiB back): transactions per second and CPU
  per transaction, tunnel against portforward.
- ``pgbench``: ``pgbench -S`` through the tunnel, portforward and direct,
  on a throwaway PostgreSQL cluster (skipped, with the reason, without
  PostgreSQL).
- ``idle``: memory per idle tunnel.
- ``slow``: memory with a slow reader.
- ``tls``: connection setup time and CPU per tunnel over ``ws://`` and
  ``wss://`` (a throwaway CA like ``tests/pki.py``'s), the latter against
  a server that refuses TLS session resumption (like ``twistd
  sprites-local`` on an ``ssl:`` endpoint) and one that offers it.
- ``wan``: connection setup through the delay relay (``delay.py``) with
  ``--rtt`` / ``BENCH_RTT_MS`` milliseconds of round trip (20 by default),
  in ms and in RTTs: direct TCP, the tunnel cold, warm, warm with early
  data; and, as the lower bound of a warm tunnel, a bare WebSocket the
  load generator opened beforehand (init then data, and both at once).

``--repeat N`` / ``BENCH_REPEAT`` runs the whole selection N times, each
time with fresh processes, and reports medians over all of them (the raw
figures of each repeat stay in the JSON).

Writes ``docs/performance.md`` (keeping its hand-written notes section),
``docs/performance.png``, ``docs/performance-wan.png`` and
``bench/results/latest.json`` (and a dated copy, ``run-*.json``, for
``bench/compare.py``), and prints the tables.  ``BENCH_QUICK=1``
shrinks every workload for a smoke run; a quick run or one with only some
parts writes only the JSON and prints (``report.py --write`` makes the page
from several partial runs).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import loadgen as L  # noqa: E402
import pg  # noqa: E402
import report  # noqa: E402
from roles import RESULTS, raiseFileLimit  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
QUICK = os.environ.get("BENCH_QUICK") == "1"

PARTS = ("bulk", "latency", "small", "pgbench", "tls", "idle", "slow", "wan")

BULK_SIZE = 64 * MiB if QUICK else GiB
BULK_REPS = 2 if QUICK else 5
SETUP_N = 100 if QUICK else 500
SETUP_REPS = 1 if QUICK else 3
#: Loopback setup with warm tunnels: connections this far apart, so that
#: the client has its spare tunnel back (the cold tunnel is measured the
#: same way next to it).
SPACED_N = 40 if QUICK else 100
SPACED_GAP = 0.010
PING_N = 500 if QUICK else 2000
PING_REPS = 1 if QUICK else 3
IDLE_N = 500 if QUICK else 5000
SLOW_SIZE = 32 * MiB if QUICK else GiB
SLOW_RATE = 10e6
SMALL_CONNECTIONS = (4, 16)
#: Short runs, many times, the paths alternating: the load other work puts
#: on the machine changes within seconds, and the ratio is taken per pair.
SMALL_SECONDS = 0.5 if QUICK else 1.0
SMALL_REPS = 2 if QUICK else 6
SMALL_MAX = 2_000_000
SMALL_REQUEST, SMALL_RESPONSE = 100, 1024
PG_SECONDS = 1
PG_REPS = 1 if QUICK else 3
TLS_N = 50 if QUICK else 150
TLS_REPS = 1
#: Seconds for the tunnels of a setup workload to be torn down (each local
#: close lingers for the listener's 2-second half-close wait).
TEARDOWN = 2.5
#: WAN setup: connections per path, taken in turn over the paths.
WAN_N = 8 if QUICK else 20
DEFAULT_RTT_MS = 20.0
#: The whole run (each repeat) is killed after this many seconds.
DEADLINE = 900


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def settle(seconds: float = 0.5) -> None:
    time.sleep(seconds)


def features() -> dict[str, bool]:
    """Which of the client's connection-setup features this version has."""
    from sprites_twisted.client import SpritesClient

    parameters = inspect.signature(SpritesClient).parameters
    return {"prewarm": "prewarm" in parameters, "earlyData": "earlyData" in parameters}


class Lab:
    """
    The long-lived processes of one repeat, started when a part first needs
    them and stopped together.
    """

    def __init__(self, feature: dict[str, bool]) -> None:
        self.feature = feature
        self.procs: dict[str, L.Proc] = {}

    def get(self, name: str) -> L.Proc:
        if name not in self.procs:
            self.procs[name] = self._start(name)
        return self.procs[name]

    def _start(self, name: str) -> L.Proc:
        if name == "target":
            return L.start("target")
        if name == "server":
            return L.start("server")
        target = self.get("target").port
        if name == "portforward":
            return L.start("portforward", target)
        api = self.get("server").port
        if name == "client":
            return L.start("client", api, target)
        if name == "client-warm":
            return L.start("client", api, target, 1)
        if name == "client-early":
            return L.start("client", api, target, 1, 1)
        raise KeyError(name)

    def stop(self, *names: str) -> None:
        for name in names or list(reversed(self.procs)):
            proc = self.procs.pop(name, None)
            if proc is not None:
                proc.stop()


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


#: What a new client feature's path may fail with; it is then reported as
#: failed and the run goes on.
FEATURE_ERRORS = (OSError, EOFError, RuntimeError)


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:200]


def setupTimes(port: int, count: int, gap: float = 0.0) -> list[float]:
    """C{count} sequential connect-to-first-echoed-byte times, C{gap} apart."""
    times = []
    for _ in range(count):
        times.append(L.firstByte(port))
        if gap:
            time.sleep(gap)
    return times


def setup(paths: dict[str, int], count: int = SETUP_N, gap: float = 0.0) -> dict[str, Any]:
    out: dict[str, Any] = {p: {"median": [], "p99": []} for p in paths}
    for rep in range(SETUP_REPS):
        for path, port in paths.items():
            times = sorted(setupTimes(port, count, gap))
            out[path]["median"].append(statistics.median(times) * 1e3)
            out[path]["p99"].append(times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3)
            log(f"setup {rep + 1}/{SETUP_REPS} {path:12} median {out[path]['median'][-1]:.3f} ms")
    return out


def pingPong(paths: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {p: [] for p in paths}
    for rep in range(PING_REPS):
        for path, port in paths.items():
            out[path].append(statistics.median(L.pingPong(port, PING_N)) * 1e6)
            log(f"ping-pong {rep + 1}/{PING_REPS} {path:11} {out[path][-1]:.1f} us")
    return out


def latency(lab: Lab) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Loopback setup and ping-pong as before; then spaced setup, cold and warm."""
    paths = {
        "direct": lab.get("target").port,
        "portforward": lab.get("portforward").port,
        "tunnel": lab.get("client").port,
    }
    for port in paths.values():
        setupTimes(port, 5)
    back = setup(paths)
    ping = pingPong(paths)
    spacedPaths = {"cold": paths["tunnel"]}
    failed: dict[str, str] = {}
    for path, name in (("warm", "client-warm"), ("early", "client-early")):
        if lab.feature["prewarm"] and (path == "warm" or lab.feature["earlyData"]):
            try:
                spacedPaths[path] = lab.get(name).port
                setupTimes(spacedPaths[path], 5, SPACED_GAP)
            except FEATURE_ERRORS as e:
                failed[path] = describe(e)
                spacedPaths.pop(path, None)
                log(f"setup {path}: failed: {failed[path]}")
    setupTimes(spacedPaths["cold"], 5, SPACED_GAP)
    spaced = setup(spacedPaths, SPACED_N, SPACED_GAP)
    if failed:
        spaced["failed"] = failed
    return back, ping, spaced


def exchanges(
    paths: dict[str, tuple[int, list[L.Proc]]],
    run: Callable[[int, int], tuple[int, float]],
    reps: int,
    label: str,
) -> dict[str, Any]:
    """
    For each connection count, C{reps} times over every path (in turn,
    the order reversed every other time): transactions per second, CPU
    microseconds per transaction of each relay process (schedstat), and the tunnel /
    portforward ratio of each time.
    """
    out: dict[str, Any] = {}
    names = list(paths)
    for conns in SMALL_CONNECTIONS:
        entry: dict[str, Any] = {p: {"tps": [], "cpu": {}} for p in names}
        entry["ratio"] = []
        for rep in range(reps):
            order = names if rep % 2 == 0 else names[::-1]
            for path in order:
                port, procs = paths[path]
                cpu0 = [proc.runtime() for proc in procs]
                count, seconds = run(port, conns)
                tps = count / seconds
                entry[path]["tps"].append(tps)
                for proc, c0 in zip(procs, cpu0, strict=True):
                    us = (proc.runtime() - c0) / count * 1e6
                    entry[path]["cpu"].setdefault(proc.role, []).append(us)
                log(f"{label} {conns:2} connections {rep + 1}/{reps} {path:11} {tps:8.0f} TPS")
            if "tunnel" in entry and "portforward" in entry:
                entry["ratio"].append(entry["tunnel"]["tps"][-1] / entry["portforward"]["tps"][-1])
        out[str(conns)] = entry
    return out


def small(lab: Lab) -> dict[str, Any]:
    pf, client, server = lab.get("portforward"), lab.get("client"), lab.get("server")
    paths = {"portforward": (pf.port, [pf]), "tunnel": (client.port, [client, server])}

    def run(port: int, conns: int) -> tuple[int, float]:
        count, seconds, _ = L.transactions(
            port, conns, SMALL_SECONDS, SMALL_MAX, SMALL_REQUEST, SMALL_RESPONSE
        )
        return count, seconds

    for port, _ in paths.values():
        L.transactions(port, 16, 0.3, SMALL_MAX)
    out = exchanges(paths, run, SMALL_REPS, "small")
    out["sizes"] = {"request": SMALL_REQUEST, "response": SMALL_RESPONSE, "seconds": SMALL_SECONDS}
    return out


def pgbenchPart(lab: Lab) -> dict[str, Any]:
    tools = pg.findTools()
    owner = pg.runAs()
    if isinstance(tools, str) or isinstance(owner, str):
        reason = tools if isinstance(tools, str) else owner
        log(f"pgbench: skipped: {reason}")
        return {"skipped": reason}
    cluster = pg.Cluster(tools, owner)
    procs: list[L.Proc] = []
    try:
        try:
            port = cluster.start()
            cluster.createDatabase()
        except (OSError, RuntimeError, ValueError) as e:
            log(f"pgbench: skipped: could not start PostgreSQL: {e}")
            return {"skipped": f"could not start a PostgreSQL cluster: {e}"}
        server = lab.get("server")
        client = L.start("client", server.port, port)
        pf = L.start("portforward", port)
        procs += [client, pf]
        paths = {
            "direct": (port, []),
            "portforward": (pf.port, [pf]),
            "tunnel": (client.port, [client, server]),
        }

        def run(port: int, conns: int) -> tuple[int, float]:
            tps, count = pg.pgbench(tools, port, conns, PG_SECONDS)
            return count, count / tps

        for p, _ in paths.values():
            pg.pgbench(tools, p, 4, 1)
        out = exchanges(paths, run, PG_REPS, "pgbench -S")
        out["seconds"] = PG_SECONDS
        return out
    finally:
        for p in procs:
            p.stop()
        cluster.stop()


def tlsPart(lab: Lab) -> dict[str, Any]:
    """
    Sequential tunnel setups over ws and wss: median ms, and CPU ms per
    tunnel of the client and the server (teardown included).
    """
    import shutil
    import tempfile

    try:
        from tests.pki import sharedPKI
    except ImportError as e:
        log(f"tls: skipped: {e}")
        return {"skipped": f"cannot make a throwaway CA: {e}"}
    directory = tempfile.mkdtemp(prefix="sprites-bench-tls-")
    procs: list[L.Proc] = []
    try:
        pki = sharedPKI()
        ca, pem = pki.writeCA(directory), pki.good.write(directory, "server")
        target = lab.get("target").port
        paths = {"ws": (lab.get("client"), lab.get("server"))}
        for name, resumable in (("wss", 0), ("wss-resumable", 1)):
            server = L.start("server-tls", pem, resumable)
            client = L.start("client-tls", server.port, target, ca)
            procs += [client, server]
            paths[name] = (client, server)
        out: dict[str, Any] = {p: {"median": [], "client": [], "server": []} for p in paths}
        for client, _ in paths.values():
            setupTimes(client.port, 5)
        settle(TEARDOWN)
        for rep in range(TLS_REPS):
            for path, (client, server) in paths.items():
                cpu0 = (client.runtime(), server.runtime())
                times = setupTimes(client.port, TLS_N)
                settle(TEARDOWN)
                entry = out[path]
                entry["median"].append(statistics.median(times) * 1e3)
                entry["client"].append((client.runtime() - cpu0[0]) / TLS_N * 1e3)
                entry["server"].append((server.runtime() - cpu0[1]) / TLS_N * 1e3)
                log(
                    f"tls {rep + 1}/{TLS_REPS} {path:13} setup {entry['median'][-1]:.2f} ms, "
                    f"CPU per tunnel client {entry['client'][-1]:.2f} ms, "
                    f"server {entry['server'][-1]:.2f} ms"
                )
        return out
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(directory, ignore_errors=True)


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


def wan(lab: Lab, rttMs: float) -> dict[str, Any]:
    """
    Connection setup through the delay relay: direct TCP (the target behind
    the relay) and the tunnel client with the local sprite server behind
    the relay, cold, warm and warm with early data; then, as the lower
    bound of a warm tunnel, a WebSocket this process opened beforehand.
    One connection per path in turn, each followed by a pause of a few RTTs
    (time for a warm client to open its next spare tunnel).
    """
    rtt = rttMs / 1e3
    micros = round(rttMs * 1000)
    procs: list[L.Proc] = []
    try:
        toTarget = L.start("delay", micros, lab.get("target").port)
        toServer = L.start("delay", micros, lab.get("server").port)
        procs += [toTarget, toServer]
        target = lab.get("target").port
        paths = {"direct": toTarget.port}
        clients = {"cold": (), "warm": (1,), "early": (1, 1)}
        if not lab.feature["prewarm"]:
            del clients["warm"], clients["early"]
        elif not lab.feature["earlyData"]:
            del clients["early"]
        failed: dict[str, str] = {}
        for path, extra in clients.items():
            try:
                proc = L.start("client", toServer.port, target, *extra)
            except FEATURE_ERRORS as e:
                failed[path] = describe(e)
                continue
            procs.append(proc)
            paths[path] = proc.port
        gap = max(0.05, 4 * rtt)
        times: dict[str, list[float]] = {p: [] for p in paths}
        times["bare-warm"], times["bare-early"] = [], []

        def measure(path: str, once: Callable[[], float]) -> None:
            if path in failed:
                return
            try:
                times[path].append(once() * 1e3)
            except FEATURE_ERRORS as e:
                if path in ("direct", "cold"):
                    raise
                failed[path] = describe(e)
                log(f"wan {path}: failed: {failed[path]}")

        def bare(early: bool) -> float:
            with L.openWebSocket(toServer.port) as sock:
                time.sleep(gap)
                return L.warmFirstByte(sock, target, early)

        for path, port in paths.items():
            for _ in range(3):
                measure(path, lambda port=port: L.firstByte(port))
                time.sleep(gap)
            times[path].clear()
        for _ in range(WAN_N):
            for path, port in paths.items():
                measure(path, lambda port=port: L.firstByte(port))
                time.sleep(gap)
            measure("bare-warm", lambda: bare(False))
            measure("bare-early", lambda: bare(True))
        for path, ms in times.items():
            if ms and path not in failed:
                m = statistics.median(ms)
                log(f"wan {rttMs:g} ms RTT {path:6} median {m:7.2f} ms = {m / rttMs:.2f} RTT")
        for path in failed:
            times.pop(path, None)
        direct = statistics.median(times["direct"]) / rttMs
        if not 2 <= direct < 2.5:
            log(f"wan: WARNING: direct TCP took {direct:.2f} RTT, where the relay should make it 2")
        return {"rttMs": rttMs, "ms": times, "failed": failed}
    finally:
        for p in procs:
            p.stop()


def codeVersion() -> str:
    """The commit measured (with ``+changes`` for uncommitted edits), or ``?``."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--", "sprites_twisted"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + ("+changes" if dirty else "")


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


def runOnce(parts: list[str], rttMs: float, feature: dict[str, bool]) -> dict[str, Any]:
    """One repeat of the selected parts, with its own processes."""
    results: dict[str, Any] = {}
    lab = Lab(feature)
    try:
        if {"bulk", "latency", "small"} & set(parts):
            target = lab.get("target")
            client, server, pf = lab.get("client"), lab.get("server"), lab.get("portforward")
            results["masker"] = {"client": client.info, "server": server.info}
            for port in (target.port, pf.port, client.port):
                for _ in range(5):
                    L.firstByte(port)
                if "bulk" in parts:
                    L.upload(port, 64 * MiB)
                    L.download(port, 64 * MiB)
                    L.echo(port, 64 * MiB)
            gc.disable()
            try:
                if "bulk" in parts:
                    results["bulk"] = bulk(
                        {
                            "direct": (target.port, []),
                            "portforward": (pf.port, [pf]),
                            "tunnel": (client.port, [client, server]),
                        }
                    )
                if "latency" in parts:
                    back, ping, spaced = latency(lab)
                    results["setup"], results["pingpong"] = back, ping
                    results["setupSpaced"] = spaced
                if "small" in parts:
                    results["small"] = small(lab)
            finally:
                gc.enable()
        if "pgbench" in parts:
            results["pgbench"] = pgbenchPart(lab)
        if "tls" in parts:
            results["tls"] = tlsPart(lab)
        lab.stop("client", "client-warm", "client-early", "portforward", "server")
        if "idle" in parts:
            results["idle"] = idle(lab.get("target").port)
        if "slow" in parts:
            results["slow"] = slowReader(lab.get("target").port)
        if "wan" in parts:
            results["wan"] = wan(lab, rttMs)
    finally:
        lab.stop()
    return results


def merge(runs: list[Any]) -> Any:
    """
    The repeats as one result: lists are joined (so medians are taken over
    every repeat's figures), numbers become the median of the repeats, and
    anything else is the first repeat's.
    """
    first = runs[0]
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for r in runs for k in r))
        return {k: merge([r[k] for r in runs if k in r]) for k in keys}
    if isinstance(first, list):
        return [x for r in runs for x in r]
    if isinstance(first, int | float) and not isinstance(first, bool):
        return statistics.median(runs)
    return first


def parseArguments(argv: list[str]) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("` \n"))
    parser.add_argument(
        "--repeat",
        type=int,
        default=int(env.get("BENCH_REPEAT", "1")),
        help="run the whole selection N times (env BENCH_REPEAT; default 1)",
    )
    parser.add_argument(
        "--only",
        default=env.get("BENCH_ONLY", ""),
        help=f"comma-separated parts to run, of {','.join(PARTS)} (env BENCH_ONLY; default all)",
    )
    parser.add_argument(
        "--rtt",
        type=float,
        default=float(env.get("BENCH_RTT_MS", str(DEFAULT_RTT_MS))),
        help="the WAN part's round trip time in ms (env BENCH_RTT_MS; default 20)",
    )
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()] or list(PARTS)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; the parts: {', '.join(PARTS)}")
    if args.repeat < 1 or args.rtt <= 0:
        parser.error("--repeat must be 1 or more and --rtt above 0")
    return args


def main(argv: list[str]) -> None:
    args = parseArguments(argv)
    signal.alarm(DEADLINE * args.repeat)
    raiseFileLimit()
    os.makedirs(RESULTS, exist_ok=True)
    started = time.monotonic()
    feature = features()
    log(
        f"parts {','.join(args.parts)}, {args.repeat} repeat(s), WAN RTT {args.rtt:g} ms; "
        f"client features: {', '.join(k for k, v in feature.items() if v) or 'none'}"
    )
    runs = []
    for n in range(args.repeat):
        log(f"repeat {n + 1}/{args.repeat}")
        runs.append(runOnce(args.parts, args.rtt, feature))
        if args.repeat > 1:
            print(f"\n--- repeat {n + 1}/{args.repeat} ---\n{report.summary(runs[-1])}", flush=True)
    results: dict[str, Any] = merge(runs)
    results["machine"] = machine()
    results["machine"]["code"] = codeVersion()
    results["machine"]["masker"] = results.pop("masker", {})
    results["features"] = feature
    results["parts"] = args.parts
    results["repeat"] = args.repeat
    results["repeats"] = runs
    results["sizes"] = {
        "bulk": BULK_SIZE,
        "bulkReps": BULK_REPS,
        "setupN": SETUP_N,
        "setupReps": SETUP_REPS,
        "spacedN": SPACED_N,
        "spacedGap": SPACED_GAP,
        "pingN": PING_N,
        "pingReps": PING_REPS,
        "idleN": IDLE_N,
        "slowSize": SLOW_SIZE,
        "slowRate": SLOW_RATE,
        "smallSeconds": SMALL_SECONDS,
        "smallReps": SMALL_REPS,
        "pgSeconds": PG_SECONDS,
        "pgReps": PG_REPS,
        "wanN": WAN_N,
        "tlsN": TLS_N,
        "tlsReps": TLS_REPS,
    }
    results["quick"] = QUICK
    results["seconds"] = time.monotonic() - started
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("latest.json", f"run-{stamp}.json"):
        with open(os.path.join(RESULTS, name), "w") as f:
            json.dump(results, f, indent=1)
    write = not QUICK and set(args.parts) == set(PARTS)
    table = report.render(results, write=write)
    print(table)
    if not write:
        log("a quick or partial run: docs/performance.md left as it was")
    log(f"done in {results['seconds']:.0f} s")


if __name__ == "__main__":
    socket.setdefaulttimeout(L.TIMEOUT)
    main(sys.argv[1:])
