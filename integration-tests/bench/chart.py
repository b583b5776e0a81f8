"""Renders broker-bench results as a PNG: jobs/s against prefetch, one line
per system and queue type.

    python chart.py RESULTS.json OUT.png

The harness runs it with the venv's Python when given ``--chart``. The
title carries N, so a chart from a small smoke run says so.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

COLORS = {"kiln": "#d62728", "echo": "#7f7f7f", "celery": "#2ca02c"}
LABELS = {"kiln": "Kiln", "echo": "echo ceiling (bare lapin)", "celery": "Celery 5"}
STYLES = {"quorum": "-", "classic": "--"}
ORDER = ["echo", "kiln", "celery"]


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: chart.py RESULTS.json OUT.png")
    with open(sys.argv[1]) as f:
        report = json.load(f)
    results = report.get("results", [])
    if not results:
        raise SystemExit("no results to chart")

    series = {}
    for r in results:
        series.setdefault((r["system"], r["queue_type"]), []).append(r)

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    prefetches = sorted({r["prefetch"] for r in results})
    keys = sorted(series, key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else 9, k[1]))
    for system, qt in keys:
        runs = sorted(series[(system, qt)], key=lambda r: r["prefetch"])
        xs = [r["prefetch"] for r in runs]
        ys = [r["jobs_per_s"] for r in runs]
        color = COLORS.get(system, None)
        ax.plot(
            xs,
            ys,
            STYLES.get(qt, ":"),
            marker="o",
            color=color,
            label=f"{LABELS.get(system, system)}, {qt} queue",
        )
        # An incomplete run (shortfall or wrong replies) gets a hollow marker.
        bad = [(x, y) for x, y, r in zip(xs, ys, runs) if not r.get("complete", True)]
        if bad:
            ax.plot(*zip(*bad), "o", markerfacecolor="white", color=color, markersize=9)

    ax.set_xscale("log", base=2)
    ax.set_xticks(prefetches)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v)}"))
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("prefetch (Celery: worker_prefetch_multiplier × 2 processes)")
    ax.set_ylabel("jobs/s, end to end (log scale)")
    n = report.get("jobs")
    cn = report.get("celery_jobs", n)
    jobs = f"N = {n:,}" + (f" (Celery {cn:,})" if cn != n else "")
    ax.set_title(
        f"Jobs/s against prefetch: {jobs} jobs of {report.get('size')} B, "
        f"RabbitMQ {report.get('rabbitmq_version') or '?'}, {report.get('cpus')} cores\n"
        f"persistent jobs, publisher confirms (≤ {report.get('max_unconfirmed')} unconfirmed); "
        "echo and Kiln confirm each reply before the ack",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(sys.argv[2])
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
