"""One PNG per elasticity trace: live instances over time for every backend, against the
lower bound ceil(in-flight / max_concurrency), with the trace's users on top."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): no display here

Series = tuple[str, Sequence[tuple[float, int, int]]]  # label, [(t, live, lower bound)]


def trace_plot(
    path: Path,
    title: str,
    users: Sequence[tuple[float, int]],
    series: Sequence[Series],
) -> None:
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(8, 5.5), sharex=True, dpi=80, gridspec_kw={"height_ratios": [1, 3]}
    )
    if users:
        t, u = zip(*users, strict=True)
        ax1.step(t, u, where="post", color="tab:gray")
    ax1.set_ylabel("users")
    for i, (label, rows) in enumerate(series):
        if not rows:
            continue
        t, live, bound = zip(*rows, strict=True)
        line = ax2.step(t, live, where="post", label=label, linewidth=1.2)
        if i == 0:  # the bound differs per run only by sampling noise: draw the first
            ax2.step(
                t,
                bound,
                where="post",
                label="lower bound (first run)",
                color="black",
                linestyle="--",
                linewidth=1.0,
            )
        line[0].set_zorder(3)
    ax2.set_ylabel("live instances")
    ax2.set_xlabel("seconds")
    ax2.legend(loc="upper right", fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
