"""Live progress per stage (rows done, generated tokens/s, ETA) and run-wide token/time counters."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .backends import Generation


@dataclass
class StageStats:
    rows: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class Tracker:
    console: Console = field(default_factory=lambda: Console(stderr=True))
    stages: dict[str, StageStats] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, total: int):
        """Yields on_done(i, gen) for the backend; shows one progress bar for the stage."""
        st = self.stages.setdefault(name, StageStats())
        cols = [TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                TextColumn("{task.fields[tps]:>7.0f} tok/s"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn()]
        t0 = time.perf_counter()
        # Not a live display when stderr is not a terminal (CI logs, nohup): rich would print nothing useful.
        with Progress(*cols, console=self.console, transient=False, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task(name, total=total, tps=0.0)
            done_tokens = 0

            def on_done(_i: int, g: Generation) -> None:
                nonlocal done_tokens
                st.rows += 1
                st.prompt_tokens += g.prompt_tokens
                st.cached_tokens += g.cached_tokens
                st.completion_tokens += g.completion_tokens
                done_tokens += g.completion_tokens
                bar.update(task, advance=1, tps=done_tokens / max(time.perf_counter() - t0, 1e-6))

            yield on_done
        dt = time.perf_counter() - t0
        st.seconds += dt
        if not sys.stderr.isatty():
            self.console.print(f"{name}: {total} rows, {done_tokens} tokens in {dt:.1f}s "
                               f"({done_tokens / max(dt, 1e-6):.0f} tok/s)")

    def totals(self) -> StageStats:
        t = StageStats()
        for s in self.stages.values():
            t.rows += s.rows
            t.prompt_tokens += s.prompt_tokens
            t.cached_tokens += s.cached_tokens
            t.completion_tokens += s.completion_tokens
            t.seconds += s.seconds
        return t
