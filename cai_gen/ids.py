"""What `prompts.keep_duplicates=true` names a kept copy of a prompt, the prompt a copy is of, and which prompts
share a split side (one question is never on both sides).

A leaf module (it imports nothing of cai_gen), so the loader (prompts.py), the splits (store.py) and the shards
share one definition of the suffix instead of each parsing ids its own way."""
from __future__ import annotations

import re
import unicodedata

# one or more copy suffixes at the end: a copy of a user id that itself ends in -dupN groups with that id's base
_COPY = re.compile(r"(?:-dup\d+)+$")


def copy_id(prompt_id: str, position: int) -> str:
    """The id of a kept copy of `prompt_id` at row `position` of its file (a copy needs its own id: rows,
    seeds and ledger keys are keyed by it, so each copy gets its own samples)."""
    return f"{prompt_id}-dup{position}"


def base_id(prompt_id: str) -> str:
    """The prompt a copy is of (the id itself for a prompt that is no copy): what picks a prompt's split and
    shard, so every copy of one prompt lands on the same side and in the same shard."""
    return _COPY.sub("", prompt_id)


def norm(text: str) -> str:
    """A user turn as the split compares it, and the project's one definition of "the same question" (the split,
    evaluate's in_train, synth's dedup and the benchmark-overlap test all read it): NFKC, case and runs of
    whitespace do not make another question; punctuation does. The split hashes this text, so a change here
    moves prompts between train and test in every existing run."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def groups(convs: list[list[str]]) -> list[str]:
    """Per conversation (its user turns, oldest first), the key of its split group: conversations that share an
    opening user turn (prefixes of one conversation, copies of one question under other ids) or the turn answered
    are one group, transitively. The key is the group's smallest normalised turn, so a prompt's side depends on
    its own text unless another prompt of the set shares one of these turns."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    ends = [(norm(c[0]), norm(c[-1])) for c in convs]
    for a, b in ends:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the root is the smallest key of the group
    return [find(a) for a, _ in ends]
