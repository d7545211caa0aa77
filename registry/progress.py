"""A rich progress bar for long work: step, loss, tokens/s and ETA, on stderr."""

from __future__ import annotations


class ProgressReporter:
    """Callable the core hands to capabilities as `context.progress(**fields)`."""

    def __init__(self):
        self._progress = None
        self._task = None

    def __call__(self, *, step: int | None = None, total: int | None = None, description: str | None = None,
                 loss: float | None = None, tokens_per_second: float | None = None, **_ignored) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        if step is None:
            if description:
                Console(stderr=True).print(f"[dim]{description}[/dim]")
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("training", total=total, loss="-", speed="-")
        self._progress.update(
            self._task, completed=step, total=total,
            loss=f"{loss:.4f}" if loss is not None else "-",
            speed=f"{tokens_per_second:,.0f}" if tokens_per_second is not None else "-",
        )
        if total is not None and step >= total:
            self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
