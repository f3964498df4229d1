"""The one progress-bar helper: ``Bars`` for counted work (scoring, generation, probes) and ``TrainProgress``
for the training loop (step, loss, reward accuracy, tokens/s, ETA). Both draw on stderr with rich; off a
terminal they print a plain line at every tenth of the work instead, so a background run shows it is alive."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second (pairs/s, prompts/s) of a counted bar."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f}/s" if task.speed else "", style="cyan")


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


class Bars:
    """Rich progress bars on stderr, or no-ops when disabled (tests, library use).

    Off a terminal (nohup, CI logs) rich draws nothing until the end, so a plain line is printed at every
    tenth of the work instead: a long background run must show that it is alive and how fast it goes.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.console = Console(stderr=True)
        self.lines = enabled and not self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console,
            disable=not enabled or self.lines,
        )

    @contextmanager
    def open(self) -> Iterator[Bars]:
        with self.progress:
            yield self

    def task(self, description: str, total: int) -> Callable[[int], None]:
        """A new bar; returns ``advance(n)``."""
        task_id = self.progress.add_task(description, total=total)
        if not self.lines:
            return lambda n: self.progress.advance(task_id, n)
        state = {"done": 0, "next": 0.1, "start": time.perf_counter()}

        def advance(n: int) -> None:
            state["done"] += n
            if total and state["done"] / total >= state["next"] - 1e-9:
                elapsed = time.perf_counter() - state["start"]
                eta = elapsed * (total - state["done"]) / state["done"]
                rate = state["done"] / max(elapsed, 1e-9)
                self.console.print(f"{description}: {state['done']}/{total} ({rate:.1f}/s, {elapsed:.0f} s, "
                                   f"eta {eta:.0f} s)", highlight=False)
                while state["done"] / total >= state["next"] - 1e-9:
                    state["next"] += 0.1

        return advance


@contextmanager
def counted(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """One bar for one piece of counted work: ``with counted("reference log-probs", n) as advance: ...``."""
    bars = Bars(enabled)
    with bars.open():
        yield bars.task(description, total)
