"""Kept pairs on the terminal as they are made: the first `preview` of a run, each with its prompt, the rejected
and chosen answers cut short, the critique and the check that fixed it (or the gate's P(YES) when no check did).

Prompts and model text are data: they go out as rich Text, never parsed as markup, with control characters
replaced, so an answer holding "[bold]", ":smile:" or an escape sequence prints as those characters and cannot
move the cursor or clear the screen.
"""
from __future__ import annotations

import re
import unicodedata

from rich.console import Group
from rich.table import Table
from rich.text import Text

CUT = 120  # characters of each text shown (the whole pair is in the run dir's files)
# bidirectional overrides and isolates reorder what follows them on the screen
BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean(text: str, cut: int = CUT) -> str:
    """One line of at most `cut` characters (plus "..."): whitespace runs become one space, control and
    bidirectional-override characters become U+FFFD."""
    one = re.sub(r"\s+", " ", text).strip()
    one = "".join("\ufffd" if unicodedata.category(c) == "Cc" or c in BIDI else c for c in one)
    return one if len(one) <= cut else one[:cut].rstrip() + "..."


def fixed(row) -> list[str]:
    """The checks the original failed and the chosen answer passes: what made this pair verified."""
    from .store import fixed as fixed_checks

    return fixed_checks(row.checks)


def why(row) -> str:
    """Why this is a pair, in a few words: the checks it fixed, else the gate's YES on the last round."""
    ids = fixed(row)
    if ids:
        return "fixed check " + ", ".join(ids)
    g = row.gate[-1] if row.gate else None
    if g and g.get("p_yes") is not None:
        return f"no check failed; the gate said YES (P {g['p_yes']:.2f})"
    return "no check failed; the model critiqued and revised"


def render(n: int, row) -> Group:
    """Pair n of the preview: a heading line, then a two-column grid (label, text) that wraps at the terminal's
    width."""
    head = Text(f"pair {n}", style="bold green")
    head.append(f"  {clean(row.id, 40)}  {clean(', '.join(row.revised() or row.principles), 60)}")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("why", Text(clean(why(row))))
    grid.add_row("prompt", Text(clean(row.prompt.text())))
    grid.add_row("rejected", Text(clean(row.original), style="red"))
    grid.add_row("critique", Text(clean(row.critiques[-1] if row.critiques else "")))
    grid.add_row("chosen", Text(clean(row.revisions[-1]), style="green"))
    return Group(head, grid)


def show(job, row) -> None:
    """Print the row's pair when the run has previews left (cfg.preview); the first says where the rest are."""
    t, limit = job.tracker, job.cfg.preview
    if t.shown >= limit:
        return
    t.shown += 1
    if t.shown == 1:
        t.console.print(Text(f"kept pairs, the first {limit} as they are made (all of them: preferences.jsonl):",
                             style="bold"))
    t.console.print(render(t.shown, row))
