"""
Turn ``run.py``'s results into the tables, the target verdicts,
``docs/performance.md`` and ``docs/performance.png``.

The section of ``docs/performance.md`` between ``<!-- notes -->`` and
``<!-- /notes -->`` is written by hand (what the profiles show) and kept
as it is when the file is regenerated.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs")
MD = os.path.join(DOCS, "performance.md")
PNG = os.path.join(DOCS, "performance.png")
NETWORK_PNG = os.path.join(DOCS, "performance-wan.png")
NOTES_START, NOTES_END = "<!-- notes -->", "<!-- /notes -->"
PATHS = ("direct", "portforward", "tunnel")
MODES = ("upload", "download", "echo")


def med(values: list[float]) -> float:
    return statistics.median(values)


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "**missed**"


def verdicts(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, verdict, met) for each of issue 5's targets this run measured."""
    out: list[tuple[str, str, bool | None]] = []
    if "bulk" in r:
        for mode in MODES:
            ratio = med(r["bulk"][mode]["tunnel"]["mbps"]) / med(
                r["bulk"][mode]["portforward"]["mbps"]
            )
            out.append((f"{mode} throughput >= 0.8 x portforward", f"{ratio:.3f} x", ratio >= 0.8))
        worst = max(MODES, key=lambda m: med(r["bulk"][m]["tunnel"]["cpu"]["client"]))
        cpu = med(r["bulk"][worst]["tunnel"]["cpu"]["client"])
        out.append(
            (
                "tunnel client CPU <= 1.0 s per GiB",
                f"{cpu:.2f} s/GiB (worst: {worst})",
                cpu <= 1.0,
            )
        )
    if "setup" in r:
        setup = med(r["setup"]["tunnel"]["median"])
        out.append(("connection setup median <= 1.5 ms", f"{setup:.2f} ms", setup <= 1.5))
    if "idle" in r:
        kib = r["idle"]["client"]["perTunnel"]
        out.append(
            (
                f"idle tunnels <= 16 KiB client RSS each ({r['sizes']['idleN']:,})",
                f"{kib:.1f} KiB",
                kib <= 16,
            )
        )
    if "slow" in r:
        for role in ("client", "server"):
            mib = r["slow"][role]["aboveMiB"]
            out.append(
                (
                    f"slow reader: {role} peak RSS <= 16 MiB above idle",
                    f"{mib:.1f} MiB",
                    mib <= 16,
                )
            )
    return [(name, measured, verdict(met), met) for name, measured, met in out]


#: What a path of the connection-setup tables is called.
SETUP_NAMES = {
    "direct": "direct TCP",
    "cold": "tunnel, cold",
    "warm": "tunnel, warm",
    "early": "tunnel, warm + early data",
    "bare-warm": "reference: a bare WebSocket opened beforehand, init then data",
    "bare-early": "reference: the same, init and data at once",
}
NOT_HERE = "n/a (not in this version)"


def wanMedians(r: dict[str, Any]) -> dict[str, float]:
    """Median setup ms of each WAN path measured."""
    return {p: med(ms) for p, ms in r["wan"]["ms"].items() if ms}


def issue11(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, verdict, met) for issue 11's targets."""
    out: list[tuple[str, str, bool | None]] = []
    if "wan" in r:
        rtt = r["wan"]["rttMs"]
        medians = wanMedians(r)
        for path, limit in (("warm", 2.3), ("early", 1.3), ("cold", 4.3)):
            name = f"{rtt:g} ms RTT: {SETUP_NAMES[path]} setup median <= {limit} RTT"
            if path in medians:
                rtts = medians[path] / rtt
                out.append((name, f"{rtts:.2f} RTT ({medians[path]:.1f} ms)", rtts <= limit))
            elif path in r["wan"].get("failed", {}):
                out.append((name, "failed", False))
            else:
                out.append((name, NOT_HERE, None))
    if "setup" in r:
        cold = med(r["setup"]["tunnel"]["median"])
        out.append(("loopback: cold setup median <= 1.5 ms", f"{cold:.2f} ms", cold <= 1.5))
        spaced = r.get("setupSpaced", {})
        name = "loopback: warm setup median <= 0.8 ms"
        if "warm" in spaced:
            warm = med(spaced["warm"]["median"])
            out.append((name, f"{warm:.2f} ms", warm <= 0.8))
        elif "warm" in spaced.get("failed", {}):
            out.append((name, "failed", False))
        else:
            out.append((name, NOT_HERE, None))
    if "small" in r:
        for conns in ("4", "16"):
            if conns in r["small"]:
                ratio = med(r["small"][conns]["ratio"])
                out.append(
                    (
                        f"small messages, {conns} connections: TPS >= 0.65 x portforward",
                        f"{ratio:.2f} x",
                        ratio >= 0.65,
                    )
                )
    if "bulk" in r:
        for mode in ("upload", "download"):
            b = r["bulk"][mode]
            cpu = med(b["tunnel"]["cpu"]["client"]) / med(b["portforward"]["cpu"]["portforward"])
            out.append(
                (
                    f"{mode}: client CPU per GiB <= 0.85 x portforward process",
                    f"{cpu:.2f} x",
                    cpu <= 0.85,
                )
            )
        for mode in ("upload", "download"):
            b = r["bulk"][mode]
            ratio = med(b["tunnel"]["mbps"]) / med(b["portforward"]["mbps"])
            out.append((f"{mode}: throughput >= 0.9 x portforward", f"{ratio:.2f} x", ratio >= 0.9))
    if "idle" in r:
        kib = r["idle"]["client"]["perTunnel"]
        out.append(("idle memory per tunnel <= 16 KiB (client)", f"{kib:.1f} KiB", kib <= 16))
    return [(name, measured, verdict(met), met) for name, measured, met in out]


def memoryRows(
    data: dict[str, Any], roles: tuple[str, ...], first: str, second: str, third: str
) -> list[list[str]]:
    """Rows of process, two RSS figures (KiB, shown in MiB) and a derived figure."""
    return [
        [
            role,
            fmt(data[role][first] / 1024, 1),
            fmt(data[role][second] / 1024, 1),
            f"{data[role][third]:.1f}",
        ]
        for role in roles
        if role in data
    ]


def bulkTables(r: dict[str, Any]) -> list[str]:
    s = r["sizes"]
    size = s["bulk"] / (1 << 20)
    bulkText = f"{size / 1024:g} GiB" if size >= 1024 else f"{size:g} MiB"
    parts = []
    rows = []
    for mode in MODES:
        v = {p: med(r["bulk"][mode][p]["mbps"]) for p in PATHS}
        rows.append(
            [
                mode,
                fmt(v["direct"]),
                fmt(v["portforward"]),
                fmt(v["tunnel"]),
                f"{v['tunnel'] / v['direct']:.2f}",
                f"{v['tunnel'] / v['portforward']:.2f}",
            ]
        )
    parts.append(
        f"**Bulk throughput**, {bulkText} per transfer, MB/s (10^6 bytes/s; echo: each "
        f"direction, both at once), median of {s['bulkReps'] * r.get('repeat', 1)}\n\n"
        + table(
            [
                "transfer",
                "direct TCP",
                "portforward",
                "tunnel",
                "tunnel / direct",
                "tunnel / portforward",
            ],
            rows,
        )
    )

    rows = []
    for mode in MODES:
        b = r["bulk"][mode]
        pf = med(b["portforward"]["cpu"]["portforward"])
        client = med(b["tunnel"]["cpu"]["client"])
        rows.append(
            [
                mode,
                f"{pf:.2f}",
                f"{client:.2f}",
                f"{med(b['tunnel']['cpu']['server']):.2f}",
                f"{client / pf:.2f}",
            ]
        )
    parts.append(
        "**CPU seconds per GiB moved** (user + system, from /proc; echo moves two GiB per GiB sent)\n\n"
        + table(
            [
                "transfer",
                "portforward process",
                "tunnel client",
                "local sprite server",
                "client / portforward",
            ],
            rows,
        )
    )
    return parts


def latencyTables(r: dict[str, Any]) -> list[str]:
    s = r["sizes"]
    reps = s["setupReps"] * r.get("repeat", 1)
    st, pp = r["setup"], r["pingpong"]
    rows = [
        [
            p,
            f"{med(st[p]['median']):.3f}",
            f"{med(st[p]['p99']):.3f}",
            f"{med(pp[p]):.0f}",
        ]
        for p in PATHS
    ]
    parts = [
        f"**Latency**: setup = connect, handshake, first echoed byte ({s['setupN']} sequential "
        f"connections, median of {reps} runs); ping-pong = 64-byte round trip on an "
        f"open connection ({s['pingN']} round trips, median of {s['pingReps'] * r.get('repeat', 1)} "
        "runs)\n\n"
        + table(["path", "setup median ms", "setup p99 ms", "ping-pong median us"], rows)
    ]
    spaced = r.get("setupSpaced", {})
    rows = []
    for path in ("cold", "warm", "early"):
        if path in spaced.get("failed", {}):
            rows.append([SETUP_NAMES[path], f"failed: {spaced['failed'][path]}", ""])
        elif path in spaced:
            rows.append(
                [
                    SETUP_NAMES[path],
                    f"{med(spaced[path]['median']):.3f}",
                    f"{med(spaced[path]['p99']):.3f}",
                ]
            )
        else:
            rows.append([SETUP_NAMES[path], NOT_HERE, ""])
    parts.append(
        f"**Setup with warm tunnels (loopback)**: as above, but "
        f"{s.get('spacedN', 0)} connections {s.get('spacedGap', 0) * 1e3:g} ms apart (time "
        "for a warm client to open its next spare tunnel), each client its own process "
        "(warm: `prewarm=1`; early data: `prewarm=1, earlyData=True`), "
        f"median of {reps} runs\n\n" + table(["tunnel", "setup median ms", "setup p99 ms"], rows)
    )
    return parts


def wanTable(r: dict[str, Any]) -> str:
    w = r["wan"]
    rtt = w["rttMs"]
    rows = []
    for path in ("direct", "cold", "warm", "early", "bare-warm", "bare-early"):
        if path.startswith("bare") and path not in w["ms"]:
            continue
        ms = w["ms"].get(path)
        if path in w.get("failed", {}):
            rows.append([SETUP_NAMES[path], f"failed: {w['failed'][path]}", "", "", ""])
            continue
        if not ms:
            rows.append([SETUP_NAMES[path], NOT_HERE, "", "", ""])
            continue
        ms = sorted(ms)
        p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
        m = med(ms)
        rows.append([SETUP_NAMES[path], f"{m:.1f}", f"{m / rtt:.2f}", f"{p90:.1f}", f"{ms[0]:.1f}"])
    count = len(next(iter(w["ms"].values()), []))
    return (
        f"**Connection setup over a {rtt:g} ms round trip** (the delay relay between the "
        "tunnel client and the local sprite server, or between the load generator and the "
        "target for direct TCP): connect, then the first byte echoed; "
        f"{count} connections per path, taken in turn.  Direct TCP's excess over two RTTs "
        "is what this machine adds per hop (waking a sleeping process on a virtual CPU); "
        "every hop of the tunnel pays it too\n\n"
        + table(["path", "median ms", "median RTTs", "p90 ms", "min ms"], rows)
    )


def exchangeTable(data: dict[str, Any], paths: tuple[str, ...]) -> str:
    rows = []
    for conns in ("4", "16"):
        if conns not in data:
            continue
        e = data[conns]
        pf = med(e["portforward"]["cpu"]["portforward"])
        client = med(e["tunnel"]["cpu"]["client"])
        rows.append(
            [conns]
            + [fmt(med(e[p]["tps"])) for p in paths]
            + [
                f"{med(e['ratio']):.2f}",
                f"{pf:.1f}",
                f"{client:.1f}",
                f"{med(e['tunnel']['cpu']['server']):.1f}",
                f"{client / pf:.2f}",
            ]
        )
    header = ["connections"] + [f"{p} TPS" for p in paths] + ["tunnel / portforward"]
    header += ["CPU us/tx portforward", "CPU us/tx client", "CPU us/tx server"]
    header.append("client CPU / portforward")
    return table(header, rows)


def smallTable(r: dict[str, Any]) -> str:
    sm = r["small"]
    sizes = sm["sizes"]
    reps = r["sizes"]["smallReps"] * r.get("repeat", 1)
    return (
        f"**Small messages**: N connections at once, each sending {sizes['request']} bytes "
        f"and waiting for {sizes['response']:,} bytes back, over and over for "
        f"{sizes['seconds']:g} s; transactions per second and CPU microseconds per "
        f"transaction of each relay process (median of {reps} runs, the ratio taken "
        "within each run)\n\n" + exchangeTable(sm, ("portforward", "tunnel"))
    )


def pgbenchTable(r: dict[str, Any]) -> str:
    pgr = r["pgbench"]
    if "skipped" in pgr:
        return f"**pgbench -S**: skipped: {pgr['skipped']}"
    return (
        f"**pgbench -S** (select only, scale 1, {pgr['seconds']} s per run, median of "
        f"{r['sizes']['pgReps'] * r.get('repeat', 1)}; direct = PostgreSQL's own port) "
        "through each path, TPS without the initial connection time, CPU per transaction "
        "as above\n\n" + exchangeTable(pgr, ("direct", "portforward", "tunnel"))
    )


def tlsTable(r: dict[str, Any]) -> str:
    t = r["tls"]
    if "skipped" in t:
        return f"**TLS**: skipped: {t['skipped']}"
    names = {
        "ws": "ws://",
        "wss": "wss://, server without resumption",
        "wss-resumable": "wss://, server offering resumption",
    }
    base = med(t["ws"]["client"])
    rows = [
        [
            names[p],
            f"{med(t[p]['median']):.2f}",
            f"{med(t[p]['client']):.2f}",
            f"{med(t[p]['server']):.2f}",
            f"{med(t[p]['client']) / base:.2f}",
        ]
        for p in names
        if p in t
    ]
    s = r["sizes"]
    return (
        f"**TLS handshake cost** (loopback): {s.get('tlsN', 0)} sequential tunnels, cold, per "
        "path; CPU milliseconds per tunnel (schedstat, teardown included), median of "
        f"{s.get('tlsReps', 0) * r.get('repeat', 1)} runs.  The resuming server sets Twisted's "
        "`enableSessions` and `enableSessionTickets`; an `ssl:` endpoint string (so "
        "`twistd sprites-local`) sets neither, and nothing can resume against it\n\n"
        + table(
            [
                "API",
                "setup median ms",
                "client CPU ms / tunnel",
                "server CPU ms / tunnel",
                "client CPU / ws",
            ],
            rows,
        )
    )


def tables(r: dict[str, Any]) -> str:
    """Every table of the parts that ran."""
    return "\n\n".join(p for p in (loopbackTables(r), networkTables(r)) if p)


def networkTables(r: dict[str, Any]) -> str:
    """The WAN, small-message, pgbench and TLS tables (issue 11)."""
    parts = []
    if "wan" in r:
        parts.append(wanTable(r))
    if "small" in r:
        parts.append(smallTable(r))
    if "pgbench" in r:
        parts.append(pgbenchTable(r))
    if "tls" in r:
        parts.append(tlsTable(r))
    return "\n\n".join(parts)


def loopbackTables(r: dict[str, Any]) -> str:
    """Bulk, latency, idle and slow-reader tables (issue 5's, plus warm setup)."""
    s = r["sizes"]
    parts = []
    if "bulk" in r:
        parts += bulkTables(r)
    if "setup" in r:
        parts += latencyTables(r)
    if "idle" in r:
        idle = r["idle"]
        rows = memoryRows(idle, ("client", "server", "portforward"), "before", "after", "perTunnel")
        parts.append(
            f"**Idle connections**: {s['idleN']:,} concurrent idle connections, RSS of each relay "
            "process (portforward: the same connections through one portforward process)\n\n"
            + table(
                [
                    "process",
                    "RSS before MiB",
                    "RSS with all open MiB",
                    "KiB per connection",
                ],
                rows,
            )
        )

    if "slow" in r:
        slow = r["slow"]
        rows = memoryRows(slow, ("client", "server"), "baseline", "peak", "aboveMiB")
        parts.append(
            f"**Slow reader**: {formatSize(s['slowSize'])} pulled through the tunnel at "
            f"{slow['rateMBps']:.1f} MB/s (paced to {s['slowRate'] / 1e6:g} MB/s)\n\n"
            + table(["process", "idle RSS MiB", "peak RSS MiB", "peak above idle MiB"], rows)
        )
    return "\n\n".join(parts)


def summary(r: dict[str, Any]) -> str:
    """A few lines with the main ratios of one repeat."""
    lines = []
    for name, measured, verdict_, _ in issue11(r):
        lines.append(f"{name}: {measured} ({verdict_})")
    if "wan" in r:
        rtt = r["wan"]["rttMs"]
        medians = wanMedians(r)
        lines.append(
            "WAN setup: "
            + ", ".join(f"{p} {m:.1f} ms = {m / rtt:.2f} RTT" for p, m in medians.items())
        )
    return "\n".join(lines)


def targetsTable(r: dict[str, Any]) -> str:
    parts = []
    five = verdicts(r)
    if five:
        parts.append(
            table(
                ["target (issue 5)", "measured", "verdict"],
                [[name, measured, v] for name, measured, v, _ in five],
            )
        )
    eleven = issue11(r)
    if eleven:
        parts.append(
            table(
                ["target (issue 11)", "measured", "verdict"],
                [[name, measured, v] for name, measured, v, _ in eleven],
            )
        )
    return "\n\n".join(parts)


def machineText(r: dict[str, Any]) -> str:
    m = r["machine"]
    masker = m.get("masker", {})
    features = ", ".join(k for k, v in r.get("features", {}).items() if v) or "none"
    sources = r.get("sources", [])
    if sources:
        when = f"- measured in {len(sources)} runs, {r['seconds']:.0f} s in all:\n" + "".join(
            f"  - {source}\n" for source in sources
        )
    else:
        when = (
            f"- measured {m['date']} on commit {m.get('code', '?')}, "
            f"{r.get('repeat', 1)} repeat(s); the whole run took {r['seconds']:.0f} s\n"
        )
    return (
        f"- {m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}\n"
        f"- Python {m['python']}, Twisted {m['twisted']}, autobahn {m['autobahn']}\n"
        f"- Autobahn NVX masking: {'available' if m['nvx'] else 'NOT available'}; the relay's "
        f"framing masks and unmasks with (client) `{masker.get('client', '?')}`, "
        f"(server) `{masker.get('server', '?')}`\n" + when + f"- client features found: {features} "
        "(`prewarm`, `earlyData` in `SpritesClient`'s signature)"
    )


def labelBars(ax: Any, bars: Any, labels: list[str], size: int) -> None:
    for bar, text in zip(bars, labels, strict=True):
        x = bar.get_x() + bar.get_width() / 2
        ax.text(x, bar.get_height(), text, ha="center", va="bottom", fontsize=size)


def plot(r: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"direct": "#9e9e9e", "portforward": "#4c72b0", "tunnel": "#dd8452"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.26
    for i, p in enumerate(PATHS):
        values = [med(r["bulk"][m][p]["mbps"]) for m in MODES]
        bars = ax1.bar(
            [x + (i - 1) * width for x in range(len(MODES))],
            values,
            width,
            label=p,
            color=colors[p],
        )
        labelBars(ax1, bars, [f"{v:,.0f}" for v in values], 7)
    labels = []
    for m in MODES:
        ratio = med(r["bulk"][m]["tunnel"]["mbps"]) / med(r["bulk"][m]["portforward"]["mbps"])
        labels.append(f"{m}\ntunnel: {ratio:.2f} x portforward")
    ax1.set_xticks(range(len(MODES)))
    ax1.set_xticklabels(labels, fontsize=9)
    ax1.set_ylabel("MB/s (higher is better)")
    size = r["sizes"]["bulk"] >> 20
    ax1.set_title(
        f"Bulk throughput, {size / 1024:g} GiB per transfer"
        if size >= 1024
        else f"Bulk throughput, {size} MiB"
    )
    ax1.legend(loc="upper right", fontsize=8)
    ax1.margins(y=0.12)

    st = r["setup"]
    spaced = r.get("setupSpaced", {})
    entries = [(p, st[p], colors[p]) for p in PATHS]
    entries += [
        (f"{p}, spaced", spaced[p], colors["tunnel"] if p == "cold" else "#c4703a")
        for p in ("cold", "warm", "early")
        if p in spaced
    ]
    medians = [med(e["median"]) for _, e, _ in entries]
    p99s = [med(e["p99"]) for _, e, _ in entries]
    xs = range(len(entries))
    bars = ax2.bar(xs, medians, 0.55, color=[c for _, _, c in entries], label="median")
    ax2.scatter(xs, p99s, marker="_", s=400, color="black", label="p99", zorder=3)
    labelBars(ax2, bars, [f"{v:.2f}" for v in medians], 8)
    ax2.axhline(1.5, color="#c44e52", linestyle="--", linewidth=1, label="target: cold 1.5 ms")
    if "warm" in spaced:
        ax2.axhline(0.8, color="#8c2d2f", linestyle=":", linewidth=1, label="target: warm 0.8 ms")
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels(
        [name.replace(", ", "\n") for name, _, _ in entries], fontsize=8 if spaced else 10
    )
    ax2.set_ylabel("ms (lower is better)")
    ax2.set_title("Connection setup to first echoed byte")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.margins(y=0.12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plotNetwork(r: dict[str, Any], path: str) -> None:
    """WAN setup in RTTs against the targets, and small-message TPS against portforward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"direct": "#9e9e9e", "portforward": "#4c72b0", "tunnel": "#dd8452"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [2, 3]})
    if "wan" in r:
        rtt = r["wan"]["rttMs"]
        medians = wanMedians(r)
        order = [
            p
            for p in ("direct", "cold", "warm", "early", "bare-warm", "bare-early")
            if not p.startswith("bare") or p in medians
        ]
        limits = {"cold": 4.3, "warm": 2.3, "early": 1.3}
        values = [medians.get(p, 0.0) / rtt for p in order]
        shade = {"direct": colors["direct"], "bare-warm": "#c8c8c8", "bare-early": "#c8c8c8"}
        bars = ax1.bar(
            range(len(order)), values, 0.55, color=[shade.get(p, colors["tunnel"]) for p in order]
        )
        labels = [f"{v:.2f}" if p in medians else "n/a" for p, v in zip(order, values, strict=True)]
        labelBars(ax1, bars, labels, 8)
        for i, p in enumerate(order):
            if p in limits:
                label = "target" if p == "cold" else None
                ax1.hlines(
                    limits[p], i - 0.35, i + 0.35, colors="#c44e52", linestyles="--", label=label
                )
        names = {
            "direct": "direct\nTCP",
            "cold": "tunnel\ncold",
            "warm": "tunnel\nwarm",
            "early": "warm +\nearly data",
            "bare-warm": "bare WS\n(ref.)",
            "bare-early": "bare WS +\nearly (ref.)",
        }
        ax1.set_xticks(range(len(order)))
        ax1.set_xticklabels([names[p] for p in order], fontsize=8)
        ax1.set_ylabel("round trips (lower is better)")
        ax1.set_title(f"Setup to first echoed byte at {rtt:g} ms RTT")
        ax1.legend(fontsize=8, loc="upper right")
        ax1.margins(y=0.12)
    groups = []
    if "small" in r:
        groups += [(f"small\n{c} conns", r["small"][c]) for c in ("4", "16") if c in r["small"]]
    if "pgbench" in r and "skipped" not in r["pgbench"]:
        groups += [(f"pgbench -S\n{c} conns", r["pgbench"][c]) for c in ("4", "16")]
    width = 0.38
    for i, p in enumerate(("portforward", "tunnel")):
        values = [med(g[p]["tps"]) for _, g in groups]
        bars = ax2.bar(
            [x + (i - 0.5) * width for x in range(len(groups))],
            values,
            width,
            label=p,
            color=colors[p],
        )
        labelBars(ax2, bars, [f"{v:,.0f}" for v in values], 7)
    ax2.set_xticks(range(len(groups)))
    ax2.set_xticklabels(
        [f"{name}\ntunnel / pf: {med(g['ratio']):.2f}" for name, g in groups], fontsize=8
    )
    ax2.set_ylabel("transactions per second (higher is better)")
    ax2.set_title("Small request/response exchanges, connections at once (loopback)")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.margins(y=0.12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def keptNotes() -> str:
    try:
        with open(MD) as f:
            text = f.read()
    except OSError:
        text = ""
    start, end = text.find(NOTES_START), text.find(NOTES_END)
    if start >= 0 and end > start:
        return text[start : end + len(NOTES_END)]
    return f"{NOTES_START}\n(what the profiles show goes here)\n{NOTES_END}"


def formatSize(size: int) -> str:
    """C{size} bytes as GiB or MiB."""
    return f"{size >> 30} GiB" if size % (1 << 30) == 0 else f"{size >> 20} MiB"


def render(r: dict[str, Any], write: bool = True) -> str:
    """The printed report; with C{write}, also the doc page and the plots."""
    printed = tables(r) + "\n\n**Targets**\n\n" + targetsTable(r) + "\n\n" + machineText(r)
    if not write:
        return printed
    plot(r, PNG)
    plotNetwork(r, NETWORK_PNG)
    rtt = r["wan"]["rttMs"]
    page = f"""# Performance

How much a tunnel costs over a plain TCP relay, measured by `make bench`
(`bench/run.py`) on loopback: the load generator connects to a local port
forwarded by the tunnel client (`SpritesClient.proxyPort`, what
`twistd sprites-proxy` runs) through the local sprite server
(`LocalSpriteServer.factory()`, what `twistd sprites-local` runs) to a target
process, every one of them a separate process.  The baselines carry the same
transfers in the same run: **direct** is raw loopback TCP to the target,
**portforward** is one process running Twisted's own
`twisted.protocols.portforward` relay.  Note that the tunnel path has two
relay processes (client and server) where portforward has one, on a machine
with two cores shared with the load generator and the target.

## Results

{loopbackTables(r)}

![Throughput and connection setup against the baselines](performance.png)

### Over a network, and small messages

{networkTables(r)}

![Connection setup at {rtt:g} ms RTT, and small exchanges against portforward](performance-wan.png)

## Targets

{targetsTable(r)}

## Machine

{machineText(r)}

## How to re-run

```
make bench
```

One command, no arguments, about six minutes on this machine.  It prints the same tables,
rewrites this page (this page's notes section is kept) and the plots, and
leaves the raw figures in `bench/results/latest.json` (not committed) and
the relay processes' logs in `bench/results/*.log`.  `BENCH_QUICK=1 make
bench` runs every workload small, as a smoke test, without touching this
page.  Sizes, as issue 5 asks: {formatSize(r["sizes"]["bulk"])} per bulk
transfer, and the slow reader pulls {formatSize(r["sizes"]["slowSize"])} at 10 MB/s
(almost two minutes of the run on its own).

**Running parts.**  `BENCH_ONLY=wan,small make bench` (or `bench/run.py
--only wan,small`) runs only those of the parts `bulk`, `latency`, `small`,
`pgbench`, `tls`, `idle`, `slow` and `wan`; `BENCH_REPEAT=3` (`--repeat 3`)
runs the whole selection three times, each with fresh processes, prints
each repeat's ratios and reports medians over all; `BENCH_RTT_MS=50`
(`--rtt 50`) sets the WAN round trip (20 ms by default).  Only a full run
(all parts, not quick) rewrites this page, or `.venv/bin/python
bench/report.py --write A.json B.json` from runs that together measured
every part (each part whole from one run); every run leaves
`bench/results/run-*.json` naming the commit it measured, and
`.venv/bin/python bench/compare.py bench/results/run-*.json` puts runs side
by side.  For connection set-up, where a change moves figures by less than
the machine drifts between two runs, `make bench-interleave BASE=REV`
(`bench/interleave.py`) runs this tree and revision REV side by side, their
connections alternating, and prints this / REV ratios per round (server and
client each swapped in alone, the bare upgrade, CPU per connection).  The `wan` part's delay relay
(`bench/delay.py`, in user space since netem is absent here) sits between
the tunnel client and the local sprite server (for direct TCP, between the
load generator and the target) and emulates a link of that round trip with
no bandwidth limit: each chunk is held half an RTT in each direction, in
order, and nothing the connecting side sends passes before one RTT after it
connected (the TCP handshake, which loopback skips), so direct TCP takes two
RTTs from connect to the first echoed byte.  Warm tunnels and early data are
measured with `SpritesClient(..., prewarm=1)` and `prewarm=1,
earlyData=True` where the client has them, else reported as not in this
version; `tls` compares a server refusing TLS session resumption with one
offering it; `pgbench` runs on a throwaway PostgreSQL cluster on 127.0.0.1
(`make bench` installs Debian's `postgresql` when root with apt-get, unless
`BENCH_NO_APT=1`) and is skipped, with the reason, without one.

## Notes

{keptNotes()}
"""
    with open(MD, "w") as f:
        f.write(page)
    return printed


#: The result keys each part of ``run.py`` writes.
PART_KEYS = {
    "bulk": ("bulk",),
    "latency": ("setup", "pingpong", "setupSpaced"),
    "small": ("small",),
    "pgbench": ("pgbench",),
    "tls": ("tls",),
    "idle": ("idle",),
    "slow": ("slow",),
    "wan": ("wan",),
}


def combine(runs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """
    One result from several runs that each measured some of the parts:
    each part is taken whole from the last run that has it, so its ratios
    still come from one run; C{sources} says which run gave which part.
    """
    out: dict[str, Any] = {"sizes": {}, "parts": [], "sources": [], "seconds": 0.0}
    for path, r in runs:
        if r.get("quick"):
            raise SystemExit(f"{path} is a quick run: its figures do not go on the page")
        out["sizes"].update(r["sizes"])
        masker = out.get("machine", {}).get("masker") or {}
        out["machine"] = dict(r["machine"])
        out["machine"]["masker"] = r["machine"].get("masker") or masker
        out["features"] = r.get("features", {})
        out["repeat"] = r.get("repeat", 1)
        out["seconds"] += r["seconds"]
        for part in r["parts"]:
            for key in PART_KEYS[part]:
                if key in r:
                    out[key] = r[key]
            if part not in out["parts"]:
                out["parts"].append(part)
        m = r["machine"]
        out["sources"].append(
            f"{os.path.basename(path)} (commit {m.get('code', '?')}, {m['date']}, "
            f"{r.get('repeat', 1)} repeat(s)): {', '.join(r['parts'])}"
        )
    if len({json.dumps(r.get("features", {}), sort_keys=True) for _, r in runs}) > 1:
        raise SystemExit("the runs measured client versions with different features")
    if len({r.get("repeat", 1) for _, r in runs}) > 1:
        raise SystemExit("the runs have different --repeat counts")
    return out


def main(argv: list[str]) -> None:
    """
    ``python bench/report.py --write RUN.json ...``: rewrite the page and
    plots from runs that together measured every part (e.g. the long
    loopback parts in one run and the rest in another).
    """
    import sys

    if len(argv) < 2 or argv[0] != "--write":
        raise SystemExit(main.__doc__)
    runs = []
    for path in argv[1:]:
        with open(path) as f:
            runs.append((path, json.load(f)))
    r = combine(runs)
    missing = [p for p in PART_KEYS if p not in r["parts"]]
    if missing:
        raise SystemExit(f"no run measured {', '.join(missing)}: the page needs every part")
    sys.stdout.write(render(r, write=True) + "\n")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
