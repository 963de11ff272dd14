"""One definition of "the same question" (ids.norm, the split's): evaluate's in_train and synth's dedup agree with
the split on which prompts are one question."""
from __future__ import annotations

import pytest

from cai_gen import evaluate
from cai_gen.ids import groups, norm
from cai_gen.prompts import PromptRecord
from cai_gen.synth_filters import Dedup, normal

# (train row's user turns, held-out prompt's user turns, one question to the split?)
PAIRS = [
    (["Open the file now."], ["open the \ufb01le \uff2e\uff2f\uff37."], True),    # a ligature, full-width letters
    (["Where is the STRASSE station?"], ["where is the stra\u00dfe   station?"], True),  # casefold, spacing
    (["Plan a trip.", "Make it shorter."], ["plan a trip.", "Now in French."], True),  # one opening turn
    (["What is 2+2?"], ["What is 2+2!"], False),     # punctuation makes another question (and another hash)
    (["Name a fruit."], ["Name a vegetable."], False),
]


def row(users: list[str]) -> dict:
    msgs = []
    for u in users:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": "ok"}]
    return {"prompt": msgs[:-1]}


def rec(users: list[str]) -> PromptRecord:
    ctx = tuple(x for u in users[:-1] for x in (("user", u), ("assistant", "ok")))
    return PromptRecord("p", users[-1], "general", "test", context=ctx)


@pytest.mark.parametrize("train,held,same", PAIRS)
def test_in_train_counts_a_prompt_exactly_when_the_split_groups_it_with_a_training_pair(train, held, same):
    """The old in_train compared the last turns by synth_filters' old word form: it missed a copy the split calls
    one question (NFKC, casefold, a shared opening turn) and counted one the split may put on the other side."""
    a, b = groups([train, held])
    assert (a == b) is same
    assert evaluate.in_train([rec(held)], [row(train)]) == int(same)


@pytest.mark.parametrize("train,held,same", [p for p in PAIRS if p[2] and len(p[0]) == 1])
def test_synth_dedup_finds_every_copy_the_split_calls_one_question(train, held, same):
    d = Dedup(0.99)  # a threshold no near copy here reaches: only the exact form can find it
    d.add("seen", train[0])
    assert d.find(held[0]) == ("seen", 1.0)


def test_the_dedup_form_reads_the_split_form():
    """normal(x) depends on x only through norm(x): texts the split calls one question are one to the dedup."""
    for text in ["Open the \ufb01le \uff2e\uff2f\uff37.", "stra\u00dfe, don't  STOP!", "\u00c9t\u00e9 \u2014 oui?"]:
        assert normal(text) == normal(norm(text))
