#!/usr/bin/env python3
"""Plot streaming throughput against workers, per implementation, from criterion's output.

Reads `<criterion dir>/throughput-{W}w-{workload}/{impl}/new/estimates.json` (written by
`cargo bench --bench throughput`), and `call-{W}w-empty/{impl}/percentiles.json` (written by
the same bench), and writes:

  - an SVG with one panel per workload: jobs per second (log scale) against worker count,
    one line per implementation;
  - on stdout, Markdown tables: ns/job and the ratio to the floor per scenario, and the
    call() round trips.

Uses criterion's *median* of sample means (robust against a noisy machine).
Only the Python standard library.

usage: scripts/plot.py [CRITERION_DIR] [-o OUT.svg]
  CRITERION_DIR defaults to $CRITERION_HOME, else $CARGO_TARGET_DIR/criterion, else
  target/criterion; OUT defaults to benches/throughput.svg.
"""

import json
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


def svg(data):
    import math

    workers_all = sorted({w for (k, w, _) in data if k == "throughput"})
    panels = [wl for wl in WORKLOADS if any(("throughput", w, wl) in data for w in workers_all)]
    if not panels or not workers_all:
        sys.exit("no throughput results found")
    pw, ph, ml, mr, mt, mb = 330, 260, 62, 12, 34, 40
    legend_h = 22 * ((len(IMPLS) + 3) // 4) + 30
    width = pw * len(panels)
    height = ph + legend_h + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">'
        "Streaming throughput against workers (jobs/s, log scale; criterion medians)</text>",
    ]
    xs = {w: i for i, w in enumerate(workers_all)}
    for p, wl in enumerate(panels):
        x0 = p * pw + ml
        y0 = 30 + mt
        iw, ih = pw - ml - mr, ph - mt - mb
        vals = [
            1e9 / ns
            for w in workers_all
            for ns in data.get(("throughput", w, wl), {}).values()
            if ns > 0
        ]
        lo = 10 ** math.floor(math.log10(min(vals)))
        hi = 10 ** math.ceil(math.log10(max(vals)))
        if hi / lo < 100:
            hi = lo * 100

        def ypos(v):
            return y0 + ih - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ih

        def xpos(w):
            n = len(workers_all)
            return x0 + (iw / 2 if n == 1 else xs[w] / (n - 1) * iw)

        parts.append(f'<text x="{x0 + iw / 2}" y="{y0 - 10}" text-anchor="middle" font-size="13">{escape(wl)}</text>')
        parts.append(f'<rect x="{x0}" y="{y0}" width="{iw}" height="{ih}" fill="none" stroke="#999"/>')
        d = lo
        while d <= hi * 1.0001:
            y = ypos(d)
            parts.append(f'<line x1="{x0}" x2="{x0 + iw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            label = f"{d / 1e6:g}M" if d >= 1e6 else (f"{d / 1e3:g}k" if d >= 1e3 else f"{d:g}")
            parts.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
            d *= 10
        for w in workers_all:
            parts.append(f'<text x="{xpos(w):.1f}" y="{y0 + ih + 15}" text-anchor="middle">{w}</text>')
        parts.append(f'<text x="{x0 + iw / 2}" y="{y0 + ih + 30}" text-anchor="middle">workers</text>')
        for imp, _, colour, dashed in IMPLS:
            pts = [
                (xpos(w), ypos(1e9 / data[("throughput", w, wl)][imp]))
                for w in workers_all
                if imp in data.get(("throughput", w, wl), {})
            ]
            if not pts:
                continue
            dash = ' stroke-dasharray="5,3"' if dashed else ""
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>')
            for x, y in pts:
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>')
    ly = 30 + ph + 10
    for i, (imp, label, colour, dashed) in enumerate(IMPLS):
        lx = 20 + (i % 4) * (width / 4)
        y = ly + (i // 4) * 22
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        parts.append(f'<line x1="{lx}" x2="{lx + 30}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{lx + 38}" y="{y + 4}">{escape(label)}</text>')
    cores = os.cpu_count()
    parts.append(
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" fill="#555">'
        f"measured on {cores} CPUs; one producer thread, one consumer, bounded queues of 1024</text>"
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
