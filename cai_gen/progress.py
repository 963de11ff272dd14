"""Live progress per stage (rows done, generated tokens/s, ETA) and run-wide token/time counters."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .backends import Generation


@dataclass
class StageStats:
    # summary.json's stages.*: rows through the stage (a row's best-of-N samples and the judge's two orders count
    # once, as the progress bars count), and the engine requests it generated in this process (each sample, each
    # order; a request read back from the ledger on resume is not generated again and not counted)
    rows: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def label(stage: str, rnd: int) -> str:
    """A stage's name in progress, summaries and logs: 'respond', 'judge', 'critique r1', 'revise r2'."""
    return stage if rnd == 0 else f"{stage} r{rnd}"


@dataclass
class Tracker:
    console: Console = field(default_factory=lambda: Console(stderr=True))
    stages: dict[str, StageStats] = field(default_factory=dict)
    gen_seconds: float = 0.0  # wall time spent generating (stages of the pipelined schedule overlap)
    shown: int = 0  # kept pairs previewed on the terminal so far (preview.show)

    def _columns(self):
        # rows, not requests: a best-of-N revision's N samples and the judge's two orders are one row's work; the
        # rate shows while a bar moves and is blanked when it ends (the run's one tok/s is the summary's)
        return [TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]

    @staticmethod
    def _rate(tokens: int, seconds: float) -> str:
        return f"{tokens / max(seconds, 1e-6):>7.0f} tok/s"

    @staticmethod
    def _count(st: StageStats, g: Generation) -> None:
        st.requests += 1
        st.prompt_tokens += g.prompt_tokens
        st.cached_tokens += g.cached_tokens
        st.completion_tokens += g.completion_tokens

    @contextmanager
    def flow(self, bars: list[tuple[str, int] | None]):
        """Progress for the pipelined schedule: one bar per engine stage ((label, rows) per step, None for a step
        without engine requests), all moving at once. Yields on_done(step, gen, reused=False) for each generation
        (tokens), row_done(step) once a row is through a step (all of its requests in), and left(step, n) (n fewer
        rows will reach that step: they left the flow or skip it)."""
        steps = [k for k, b in enumerate(bars) if b is not None]
        sts = {k: self.stages.setdefault(bars[k][0], StageStats()) for k in steps}
        t0 = time.perf_counter()
        first: dict[int, float | None] = dict.fromkeys(steps)
        last = dict.fromkeys(steps, t0)
        toks = dict.fromkeys(steps, 0)
        rows = dict.fromkeys(steps, 0)  # this flow's (a chunk's) rows and requests; sts[k] sums the run's
        reqs = dict.fromkeys(steps, 0)
        with Progress(*self._columns(), console=self.console, transient=False,
                      disable=not self.console.is_terminal) as bar:
            tasks = {k: bar.add_task(bars[k][0], total=bars[k][1], rate="") for k in steps}
            totals = {k: bars[k][1] for k in steps}

            def on_done(k: int, g: Generation, reused: bool = False) -> None:
                if reused:
                    return
                now = time.perf_counter()
                self._count(sts[k], g)
                toks[k] += g.completion_tokens
                reqs[k] += 1
                first[k] = first[k] or now
                last[k] = now
                bar.update(tasks[k], rate=self._rate(toks[k], now - first[k]))

            def row_done(k: int) -> None:
                if k in tasks:
                    rows[k] += 1
                    sts[k].rows += 1
                    bar.update(tasks[k], advance=1)

            def left(k: int, n: int = 1) -> None:
                if k in tasks:
                    totals[k] -= n
                    bar.update(tasks[k], total=totals[k])

            yield on_done, row_done, left
            for k in steps:
                bar.update(tasks[k], rate="")
        dt = time.perf_counter() - t0
        self.gen_seconds += dt
        for k in steps:
            # a stage's seconds: from the flow's start to its last finished request (stages overlap)
            sts[k].seconds += (last[k] - t0) if first[k] else 0.0
            if not self.console.is_terminal:
                self.console.print(f"{bars[k][0]}: {rows[k]} rows, {reqs[k]} requests, {toks[k]:,} tokens "
                                   f"(pipelined: done {last[k] - t0:.1f}s after start)")
        if not self.console.is_terminal:
            self.console.print(f"pipelined: {sum(toks.values()):,} tokens in {dt:.1f}s")

    @contextmanager
    def stage(self, name: str, total: int, generating: bool = True, rate: bool = True):
        """Yields on_done(i, gen, last=True) for the backend; shows one progress bar for the stage, `total` rows
        (a row is done at its `last` request). `generating=False` (reward scoring) keeps its time out of the run's
        generation time; `rate=False` (a stage of a run, whose one tok/s is the summary's) leaves the rate out of
        the closing line."""
        st = self.stages.setdefault(name, StageStats())
        cols = self._columns()
        t0 = time.perf_counter()
        # Not a live display when stderr is not a terminal (CI logs, nohup): rich would print nothing useful.
        with Progress(*cols, console=self.console, transient=False, disable=not self.console.is_terminal) as bar:
            task = bar.add_task(name, total=total, rate="")
            done_tokens = 0

            def on_done(_i: int, g: Generation, last: bool = True) -> None:
                nonlocal done_tokens
                self._count(st, g)
                st.rows += int(last)
                done_tokens += g.completion_tokens
                bar.update(task, advance=int(last), rate=self._rate(done_tokens, time.perf_counter() - t0))

            yield on_done
            if not rate:
                bar.update(task, rate="")
        dt = time.perf_counter() - t0
        st.seconds += dt
        if generating:
            self.gen_seconds += dt
        if not self.console.is_terminal:
            self.console.print(f"{name}: {total} rows, {done_tokens:,} tokens in {dt:.1f}s"
                               + (f" ({done_tokens / max(dt, 1e-6):.0f} tok/s)" if rate else ""))

    def totals(self) -> StageStats:
        t = StageStats()
        for s in self.stages.values():
            t.rows += s.rows
            t.requests += s.requests
            t.prompt_tokens += s.prompt_tokens
            t.cached_tokens += s.cached_tokens
            t.completion_tokens += s.completion_tokens
            t.seconds += s.seconds
        return t
