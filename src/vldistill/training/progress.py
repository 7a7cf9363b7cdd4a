"""Rich progress bars for training: loss, steps per second, time left.

Before the first step there is no loss to show, so the loss column starts empty (not ``loss nan``).
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    """A progress bar over optimizer steps that shows the running loss; silent when disabled."""

    def __init__(
        self, *, enabled: bool, total: int, completed: int = 0, epoch: int = 0, console: Console | None = None
    ) -> None:
        """``completed`` steps and ``epoch`` epochs are done (a resumed run); ``console``: stderr by default."""
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(
            "train", total=total, completed=completed, epoch=epoch + 1, loss="", rate=""
        )
        self._ema: float | None = None

    def __enter__(self) -> TrainProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.__exit__(kind, value, tb)

    def advance(self, loss: float, epoch: int) -> None:
        self._ema = loss if self._ema is None else 0.9 * self._ema + 0.1 * loss
        speed = self._progress.tasks[0].speed
        self._progress.update(
            self._task,
            advance=1,
            loss=f"loss {self._ema:.4f}",
            epoch=epoch + 1,
            rate=f"{speed:.2f} steps/s" if speed else "",
        )

    def note(self, message: str) -> None:
        if self.enabled:
            self._progress.console.print(message)
