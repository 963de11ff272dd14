"""What `prompts.keep_duplicates=true` names a kept copy of a prompt, and the prompt a copy is of.

A leaf module (it imports nothing of cai_gen), so the loader (prompts.py), the splits (store.py) and the shards
share one definition of the suffix instead of each parsing ids its own way."""
from __future__ import annotations

import re

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
