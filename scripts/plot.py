#!/usr/bin/env python3
"""Plot streaming throughput against workers, per implementation, from criterion's output.

Reads `<criterion dir>/throughput-{W}w-{workload}/{impl}/new/estimates.json` (written by
`cargo bench --bench throughput`), and `call-{W}w-empty/{impl}/percentiles.json` (written by
the same bench), and writes:

  - an SVG with one panel per worker count: for each implementation a group of bars, one per
    workload, each its throughput as a ratio to the floor's (1.0 = raw crossbeam channels);
  - on stdout, Markdown tables: ns/job and the ratio to the floor per scenario, and the
    call() round trips.

Uses criterion's *median* of sample means (robust against a noisy machine).
Only the Python standard library.

usage: scripts/plot.py [CRITERION_DIR] [-o OUT.svg]
  CRITERION_DIR defaults to $CRITERION_HOME, else $CARGO_TARGET_DIR/criterion, else
  target/criterion; OUT defaults to benches/throughput.svg.
"""

import json
import math
import os
import re
import sys
from html import escape

IMPLS = [
    # (id, label, colour, dashed)
    ("floor", "floor (raw crossbeam)", "#000000", False),
    ("orchestrator-shared", "orchestrator Shared", "#1f77b4", False),
    ("orchestrator-shared-metrics", "orchestrator Shared + metrics", "#1f77b4", True),
    ("orchestrator-rr", "orchestrator RoundRobin", "#2ca02c", False),
    ("orchestrator-rr-metrics", "orchestrator RoundRobin + metrics", "#2ca02c", True),
    ("threadpool", "threadpool + channel", "#ff7f0e", False),
    ("rayon", "rayon spawn + channel", "#9467bd", False),
    ("mutex-baseline", "mutex baseline (old design)", "#d62728", False),
]
WORKLOADS = ["empty", "1us", "50us", "analysis"]


def criterion_dir(argv):
    for a in argv:
        if not a.startswith("-"):
            return a
    if os.environ.get("CRITERION_HOME"):
        return os.environ["CRITERION_HOME"]
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.path.join(os.environ["CARGO_TARGET_DIR"], "criterion")
    return os.path.join("target", "criterion")


def load(root):
    """{(kind, workers, workload): {impl: ns per job (median)}} and percentiles."""
    data, pct = {}, {}
    if not os.path.isdir(root):
        sys.exit(f"no criterion output in {root}: run `cargo bench --bench throughput` first")
    for group in os.listdir(root):
        m = re.fullmatch(r"(throughput|call)-(\d+)w-(.+)", group)
        if not m:
            continue
        kind, workers, workload = m.group(1), int(m.group(2)), m.group(3)
        for imp in os.listdir(os.path.join(root, group)):
            est = os.path.join(root, group, imp, "new", "estimates.json")
            if os.path.isfile(est):
                with open(est) as f:
                    e = json.load(f)
                data.setdefault((kind, workers, workload), {})[imp] = e["median"]["point_estimate"]
            p = os.path.join(root, group, imp, "percentiles.json")
            if os.path.isfile(p):
                with open(p) as f:
                    pct[(workers, imp)] = json.load(f)
    return data, pct


def fmt_ns(ns):
    if ns >= 10_000:
        return f"{ns / 1000:,.1f} µs"
    return f"{ns:,.0f} ns"


def tables(data, pct):
    out = []
    workers_all = sorted({w for (k, w, _) in data if k == "throughput"})
    for workload in WORKLOADS:
        rows = [(w, data.get(("throughput", w, workload), {})) for w in workers_all]
        if not any(r for _, r in rows):
            continue
        out.append(f"\n**{workload}** — ns per job (median), and throughput as a multiple of the floor's\n")
        out.append("| implementation | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in workers_all) + " |")
        out.append("|---|" + "---:|" * len(workers_all))
        for imp, label, _, _ in IMPLS:
            cells = []
            for w, r in rows:
                if imp in r:
                    floor = r.get("floor")
                    ratio = f" ({floor / r[imp]:.2f}x)" if floor else ""
                    cells.append(fmt_ns(r[imp]) + ratio)
                else:
                    cells.append("–")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    calls = [(w, data.get(("call", w, "empty"), {})) for w in sorted({w for (k, w, _) in data if k == "call"})]
    if calls:
        out.append("\n**call() round trip, empty job** — criterion median of means; p50 / p99 from a separate pass timing each call\n")
        out.append("| implementation | " + " | ".join(f"{w}w mean | {w}w p50 / p99" for w, _ in calls) + " |")
        out.append("|---|" + "---:|---:|" * len(calls))
        for imp, label, _, _ in IMPLS:
            cells = []
            for w, r in calls:
                mean = r.get(imp)
                floor = r.get("floor")
                ratio = f" ({mean / floor:.2f}x floor)" if mean and floor else ""
                cells.append(fmt_ns(mean) + ratio if mean else "–")
                p = pct.get((w, imp))
                cells.append(f"{fmt_ns(p['p50_ns'])} / {fmt_ns(p['p99_ns'])}" if p else "–")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


WORKLOAD_COLOURS = {"empty": "#1f77b4", "1us": "#2ca02c", "50us": "#ff7f0e", "analysis": "#9467bd"}


def svg(data):
    """One panel per worker count; in each, one group of bars per implementation, one bar per
    workload: its throughput as a ratio to the floor's (1.0 = raw crossbeam channels)."""
    workers_all = sorted({w for (k, w, _) in data if k == "throughput"})
    if not workers_all:
        sys.exit("no throughput results found")
    impls = [i for i in IMPLS if i[0] != "floor"]
    loads = [wl for wl in WORKLOADS if any(("throughput", w, wl) in data for w in workers_all)]

    def ratio(w, wl, imp):
        row = data.get(("throughput", w, wl), {})
        if imp in row and "floor" in row and row[imp] > 0:
            return row["floor"] / row[imp]
        return None

    top = max(
        [1.2]
        + [r for w in workers_all for wl in loads for imp, *_ in impls if (r := ratio(w, wl, imp))]
    )
    top = math.ceil(top * 5) / 5
    gw = 14 * len(loads) + 16  # group width
    pw = gw * len(impls) + 70
    ph, mt, mb = 300, 40, 118
    width = pw * len(workers_all)
    height = mt + ph + mb
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">'
        "Throughput as a ratio to the floor (raw crossbeam channels = 1.0; criterion medians)</text>",
    ]
    for p, w in enumerate(workers_all):
        x0, y0 = p * pw + 50, mt
        iw, ih = pw - 60, ph - 30

        def ypos(v):
            return y0 + ih - v / top * ih

        parts.append(
            f'<text x="{x0 + iw / 2}" y="{y0 - 6}" text-anchor="middle" font-size="13">'
            f"{w} worker{'s' if w > 1 else ''}</text>"
        )
        t = 0.0
        while t <= top + 1e-9:
            y = ypos(t)
            stroke = "#000" if abs(t - 1.0) < 1e-9 else "#e5e5e5"
            parts.append(f'<line x1="{x0}" x2="{x0 + iw}" y1="{y:.1f}" y2="{y:.1f}" stroke="{stroke}"/>')
            parts.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{t:.1f}</text>')
            t += 0.2
        for g, (imp, label, _, _) in enumerate(impls):
            gx = x0 + 8 + g * gw
            for j, wl in enumerate(loads):
                r = ratio(w, wl, imp)
                if r is None:
                    continue
                x = gx + j * 14
                y = ypos(min(r, top))
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="12" height="{ypos(0) - y:.1f}" '
                    f'fill="{WORKLOAD_COLOURS.get(wl, "#777")}"><title>{escape(label)}, {wl}: '
                    f"{r:.2f}x</title></rect>"
                )
            cx = gx + 7 * len(loads)
            parts.append(
                f'<text transform="translate({cx:.1f},{ypos(0) + 8:.1f}) rotate(40)" '
                f'font-size="10">{escape(label)}</text>'
            )
    for j, wl in enumerate(loads):
        lx = 20 + j * 120
        parts.append(f'<rect x="{lx}" y="{height - 22}" width="12" height="12" fill="{WORKLOAD_COLOURS.get(wl, "#777")}"/>')
        parts.append(f'<text x="{lx + 16}" y="{height - 12}">{escape(wl)} jobs</text>')
    cores = os.cpu_count()
    parts.append(
        f'<text x="{width - 10}" y="{height - 12}" text-anchor="end" fill="#555">'
        f"{cores} CPUs; one producer, one consumer, bounded queues of 1024</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    argv = sys.argv[1:]
    out = "benches/throughput.svg"
    if "-o" in argv:
        i = argv.index("-o")
        out = argv[i + 1]
        del argv[i : i + 2]
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return
    root = criterion_dir(argv)
    data, pct = load(root)
    with open(out, "w") as f:
        f.write(svg(data))
    print(tables(data, pct))
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
