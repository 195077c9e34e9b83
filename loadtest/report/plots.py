"""PNG plots for the benchmark (matplotlib, Agg backend, small files for the docs)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): no display here


def _finite(xs: Sequence[float]) -> list[float]:
    return [x if x == x and not math.isinf(x) else float("nan") for x in xs]


def elasticity(
    path: Path,
    load: Sequence[tuple[float, float, float, float]],  # t, req/s, p99 ms, users
    instances: Sequence[tuple[float, int, int]],  # t, live instances, lower bound
    spike: tuple[float | None, float | None],
) -> None:
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(7, 6), sharex=True, dpi=80)
    if load:
        t, rps, p99, users = zip(*load, strict=True)
        ax1.plot(t, _finite(rps), label="req/s", color="tab:blue")
        ax1b = ax1.twinx()
        ax1b.plot(t, users, label="users", color="tab:gray", linestyle=":")
        ax1b.set_ylabel("users")
        ax2.plot(t, _finite(p99), color="tab:red")
    if instances:
        t2, n, lb = zip(*instances, strict=True)
        ax3.step(t2, n, where="post", label="live instances", color="tab:green")
        ax3.step(
            t2,
            lb,
            where="post",
            label="ceil(in-flight / max_concurrency)",
            color="tab:orange",
            linestyle="--",
        )
        ax3.legend(loc="upper left", fontsize=7)  # the idle lead-in leaves that corner empty
    start, end = spike
    for ax in (ax1, ax2, ax3):
        if start is not None and end is not None:
            ax.axvspan(start, end, color="0.9", zorder=0)
        ax.grid(alpha=0.3)
    ax1.set_ylabel("req/s")
    ax2.set_ylabel("p99 ms (locust window)")
    ax3.set_ylabel("instances")
    ax3.set_xlabel("seconds (shaded: the spike)")
    fig.suptitle("forkproxy under a spike (locust SpikeShape)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def bars(
    path: Path,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    unit: str,
    log: bool = False,
) -> None:
    wrapped = [textwrap.fill(label, 42) for label in labels]
    lines = sum(w.count("\n") + 1 for w in wrapped)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.28 * lines + 0.15 * len(labels)), dpi=80)
    ax.barh(wrapped, _finite(values), color="tab:blue")
    ax.tick_params(axis="y", labelsize=8)
    for i, v in enumerate(values):
        if v == v:
            ax.text(v, i, f" {v:,.1f}", va="center", fontsize=8)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    finite = [v for v in values if v == v and not math.isinf(v)]
    if finite:  # room for the value printed after the longest bar
        ax.set_xlim(right=max(finite) * (2.0 if log else 1.15))
    ax.set_xlabel(unit)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def memory_over_time(
    path: Path,
    title: str,
    memory: Sequence[tuple[float, float]],  # t seconds, MiB
    requests_per_s: Sequence[int],  # requests sent in each whole second of the trace
) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=80)
    ax2 = ax.twinx()
    ax2.bar(range(len(requests_per_s)), requests_per_s, width=1.0, color="0.85", zorder=0)
    ax2.set_ylabel("requests/s", color="0.4")
    ax.set_zorder(ax2.get_zorder() + 1)  # the memory line over the request bars
    ax.patch.set_visible(False)
    if memory:
        t, mib = zip(*memory, strict=True)
        ax.plot(t, _finite(mib), color="tab:purple", label="PSS, whole process tree")
        ax.set_ylim(bottom=0, top=max(_finite(mib)) * 1.15 or 1.0)
    ax.set_xlabel("seconds into the trace")
    ax.set_ylabel("MiB (PSS)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
