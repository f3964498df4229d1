"""A rich progress bar for training: step, loss, reward accuracy, tokens/s and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    def __init__(self, total: int, completed: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=completed, stats="")

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        parts = [f"loss {metrics.get('loss', float('nan')):.4f}"]
        if "rewards/accuracies" in metrics:
            parts.append(f"acc {metrics['rewards/accuracies']:.2f}")
        parts.append(f"{metrics.get('tokens_per_second', 0):.0f} tok/s")
        self.progress.update(self.task, completed=step, stats=" ".join(parts))

    def note(self, message: str) -> None:
        if self.enabled:
            self.progress.console.log(message)
