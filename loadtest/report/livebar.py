"""The terminal face of forkproxy.loadtest.report.progress: a rich progress bar with the live
ETA."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.console import Console, RenderableType
from rich.progress import BarColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from forkproxy.loadtest.report.progress import clock_text

if TYPE_CHECKING:
    from forkproxy.loadtest.report.progress import Progress


class LiveBar(RichProgress):
    """rich's bar, brought up to date from the Progress model at every refresh (rich redraws
    from its own thread several times a second), so the ETA moves inside a long step."""

    def __init__(self, model: Progress) -> None:
        self.model = model
        self.task_id: TaskID | None = None  # add_task() below already renders once
        super().__init__(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[step]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=Console(file=model.stream),
            # print() to a terminal stdout lands above the bar; a redirected stdout stays put
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=model.stream is sys.stderr,
        )
        self.task_id = self.add_task(model.title, total=1000, step="", eta="")

    def get_renderables(self) -> Iterable[RenderableType]:
        m = self.model
        n = len(m.expected)
        if self.task_id is not None:
            self.update(
                self.task_id,
                completed=1000 * m.done_fraction(),
                step=f"{min(m.current + 1, n)}/{n} {m.unit}: {m.label}",
                eta=clock_text(m.remaining()),
            )
        yield from super().get_renderables()
