"""Constrained prompts: 1-3 verifiable IFEval instructions attached to any base prompt set (Zhou et al. 2023,
arXiv 2311.07911; Tülu 3 trained on prompts made this way). Each row gets the instructions in its text, phrased
as a user would ask, and the matching `checks` (kind `instruction`: IFEval's own verifier by instruction id and
kwargs), so every step of a run can tell whether an answer did what was asked, in the form it was asked.

    python -m cai_gen.constrain tasks customer_service_full prompts/instruction_following.yaml --n 320

IN: a built-in prompt set name, a .jsonl file or a prompt-set .yaml file (several may be given); OUT: a prompt
set .yaml (its stem is the set's name) or a .jsonl file. Types and kwargs are drawn by a RNG keyed on (seed, base
prompt id, copy), so a row never depends on the other rows or their order; combinations IFEval's own conflict
table forbids (if-verifiable's copy of it) are never drawn. The phrasings are ours, several per type: a model
trained on one fixed wording learns the wording, not the instruction.
"""
from __future__ import annotations

import copy
import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import ArgParser, UserError
from .prompts import PromptRecord

AT_LEAST, LESS = "at least", "less than"


@dataclass(frozen=True)
class Kind:
    """One IFEval instruction type: its kwargs drawn for a base prompt, and the ways users ask for it.
    A phrasing is our own format string over the kwargs (plus {words}, {n_word} ...): the base prompt is never one."""
    draw: Callable[[random.Random, str, set], dict]  # (rng, base prompt, words the prompt's other asks use)
    say: tuple[str, ...]


STOP = set("""a about above after again all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here hers
him his how i if in into is it its just me more most my no nor not now of off on once only or other our out over own
same she should so some such than that the their them then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours please need want know
like make tell give write help get one two three thanks thank just really still every much many something someone
anything going does doesn't don't can't i'm it's what's there's""".split())


def content_words(text: str) -> list[str]:
    """The prompt's own content words (5+ letters, no stop words), first occurrence order: keywords a user would
    name for this prompt ("mention refund"), not random dictionary words."""
    out: list[str] = []
    for w in re.findall(r"[a-z]+", text.lower()):
        if len(w) >= 5 and w not in STOP and w not in out:
            out.append(w)
    return out


def _words(rng: random.Random, text: str, used: set[str], k: int) -> list[str]:
    """k keywords for this prompt, none already used by another of its instructions (a word both required and
    forbidden would make the prompt impossible); IFEval's own word list when the prompt has too few."""
    from if_verifiable.ifeval.instructions_util import WORD_LIST

    own = [w for w in content_words(text) if w not in used]
    pool = own if len(own) >= k else own + [w.lower() for w in WORD_LIST if w.lower() not in used and w not in own]
    out = rng.sample(pool[:12], k)
    used.update(out)
    return out


def _rare(rng: random.Random, used: set[str]) -> str:
    """A rare letter for "fewer than N": none that a required word of the same prompt holds."""
    return rng.choice([c for c in "jqxz" if not any(c in w for w in used)] or ["q"])


def _quoted(ws: list[str]) -> str:
    return " and ".join(f'"{w}"' for w in ws)


LANGUAGES = {"es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese"}
ENDINGS = ("Is there anything else I can help with?", "Let me know if you have any other questions.",
           "Hope this helps!", "That is all for now.", "Any other questions?", "Talk soon.")
FIRST_WORDS = ("first", "next", "however", "finally", "today", "remember", "overall", "because")

KINDS: dict[str, Kind] = {
    "keywords:existence": Kind(
        lambda r, t, u: {"keywords": _words(r, t, u, 2)},
        ("Make sure you mention {kw} somewhere in your answer.", "Please use the words {kw} in your reply.",
         "Your answer has to include the words {kw}.")),
    "keywords:frequency": Kind(
        lambda r, t, u: {"keyword": _words(r, t, u, 1)[0], "frequency": r.randint(2, 4), "relation": AT_LEAST}
        if r.random() < 0.7 else {"keyword": _words(r, t, u, 1)[0], "frequency": r.randint(2, 3), "relation": LESS},
        ("Use the word \"{keyword}\" {times}.", "I'd like the word \"{keyword}\" to show up {times} in what you write.",
         "The word \"{keyword}\" should appear {times}.")),
    "keywords:forbidden_words": Kind(
        lambda r, t, u: {"forbidden_words": _words(r, t, u, 2)},
        ("Don't use the words {fw} anywhere.", "Without using the words {fw}, please.",
         "Avoid the words {fw} completely.")),
    "keywords:letter_frequency": Kind(
        lambda r, t, u: {"letter": r.choice("bdgkmpwyz"), "let_frequency": r.randint(3, 9), "let_relation": AT_LEAST}
        if r.random() < 0.6 else {"letter": _rare(r, u), "let_frequency": r.randint(2, 5), "let_relation": LESS},
        ("The letter \"{letter}\" has to appear {let_times} in your answer.",
         "Make the letter {letter} show up {let_times}.", "Use the letter \"{letter}\" {let_times}, no matter how.")),
    "language:response_language": Kind(
        lambda r, t, u: {"language": r.choice(sorted(LANGUAGES))},
        ("Please answer in {lang} only, no English.", "Reply entirely in {lang}.",
         "Write your whole answer in {lang}, please.")),
    "length_constraints:number_sentences": Kind(
        lambda r, t, u: {"num_sentences": r.randint(2, 5), "relation": LESS} if r.random() < 0.5
        else {"num_sentences": r.randint(4, 10), "relation": AT_LEAST},
        ("Answer in {sent_phrase}.", "Keep it to {sent_phrase}.", "Your answer should have {sent_phrase}.")),
    "length_constraints:number_paragraphs": Kind(
        lambda r, t, u: {"num_paragraphs": r.randint(2, 5)},
        ("Write exactly {num_paragraphs} paragraphs, separated from each other by the markdown divider ***.",
         "Give me {num_paragraphs} paragraphs, with *** on its own between each two.",
         "I need {num_paragraphs} paragraphs. Put *** between paragraphs.")),
    "length_constraints:number_words": Kind(
        lambda r, t, u: {"num_words": r.choice((40, 50, 60, 80, 100, 120, 150)), "relation": LESS}
        if r.random() < 0.5 else {"num_words": r.choice((100, 120, 150, 200, 250, 300)), "relation": AT_LEAST},
        ("{words_phrase}, please.", "Please write {words_phrase}.", "Answer with {words_phrase}.")),
    "length_constraints:nth_paragraph_first_word": Kind(
        lambda r, t, u: (lambda n: {"num_paragraphs": n, "nth_paragraph": r.randint(1, n),
                                 "first_word": r.choice(FIRST_WORDS)})(r.randint(2, 4)),
        ("Write {num_paragraphs} paragraphs separated by two new lines, and start paragraph {nth_paragraph} with "
         "the word \"{first_word}\".",
         "I want {num_paragraphs} paragraphs (blank line between them); the {nth_word} one must begin with the word "
         "\"{first_word}\".")),
    "detectable_content:number_placeholders": Kind(
        lambda r, t, u: {"num_placeholders": r.randint(1, 4)},
        ("Leave at least {num_placeholders} placeholder{s_ph} in square brackets, like [name], for me to fill in.",
         "Include {num_placeholders} or more bracketed placeholders such as [date].")),
    "detectable_content:postscript": Kind(
        lambda r, t, u: {"postscript_marker": r.choice(("P.S.", "P.P.S"))},
        ("End with a postscript that starts with \"{postscript_marker}\".", "Add a \"{postscript_marker}\" note at the end.",
         "At the very end, add a note starting with \"{postscript_marker}\".")),
    "detectable_format:number_bullet_lists": Kind(
        lambda r, t, u: {"num_bullets": r.randint(2, 6)},
        ("Use exactly {num_bullets} bullet points in markdown, like:\n* point one\n* point two",
         "Format it as exactly {num_bullets} markdown bullets (* ...), no more, no fewer.",
         "Give me {num_bullets} bullet points, each starting with \"* \".")),
    "detectable_format:constrained_response": Kind(
        lambda r, t, u: {},
        ("Answer with one of these: \"My answer is yes.\", \"My answer is no.\" or \"My answer is maybe.\"",
         "Reply only with \"My answer is yes.\", \"My answer is no.\", or \"My answer is maybe.\"")),
    "detectable_format:number_highlighted_sections": Kind(
        lambda r, t, u: {"num_highlights": r.randint(1, 4)},
        ("Highlight at least {num_highlights} section{s_hl} with markdown, i.e. *highlighted section*.",
         "Please mark at least {num_highlights} part{s_hl} in italics with asterisks, like *this part*.")),
    "detectable_format:multiple_sections": Kind(
        lambda r, t, u: {"section_spliter": r.choice(("Section", "SECTION")), "num_sections": r.randint(2, 4)},
        ("Split it into {num_sections} sections, each starting with \"{section_spliter} X\" (X the number).",
         "Organise the answer in {num_sections} parts labelled {section_spliter} 1, {section_spliter} 2 and so on.")),
    "detectable_format:json_format": Kind(
        lambda r, t, u: {},
        ("Give the whole answer as JSON.", "Wrap your entire output in JSON format; markdown ticks are fine.",
         "Reply in valid JSON only.")),
    "detectable_format:title": Kind(
        lambda r, t, u: {},
        ("Give it a title in double angular brackets, like <<my title>>.",
         "Start with a title wrapped in << and >>.", "Add a title, written as <<title>>.")),
    "combination:two_responses": Kind(
        lambda r, t, u: {},
        ("Give me two different answers, separated by six asterisks: ******",
         "Write two different versions and put ****** between them (nothing else).")),
    "combination:repeat_prompt": Kind(
        lambda r, t, u: {"prompt_to_repeat": t},
        ("First repeat my request above word for word without change, then give your answer (do not say anything "
         "before repeating it, and do not repeat this sentence).",
         "Before answering, copy my request above exactly as I wrote it (without this sentence), then answer.")),
    "startend:end_checker": Kind(
        lambda r, t, u: {"end_phrase": r.choice(ENDINGS)},
        ("Finish with the exact phrase \"{end_phrase}\" and nothing after it.",
         "End your reply with exactly: {end_phrase}", "The last words of your answer must be \"{end_phrase}\"")),
    "change_case:capital_word_frequency": Kind(
        lambda r, t, u: {"capital_frequency": r.randint(2, 6), "capital_relation": AT_LEAST} if r.random() < 0.5
        else {"capital_frequency": r.randint(2, 4), "capital_relation": LESS},
        ("Use ALL-CAPS words {cap_times}.", "Words in all capital letters should appear {cap_times}.")),
    "change_case:english_capital": Kind(
        lambda r, t, u: {},
        ("Write your whole answer in English and in ALL CAPITAL LETTERS.", "Answer in English, all in capitals.")),
    "change_case:english_lowercase": Kind(
        lambda r, t, u: {},
        ("Answer in English, all in lowercase letters, no capitals at all.",
         "Please write everything in lowercase, in English. No capital letters.")),
    "punctuation:no_comma": Kind(
        lambda r, t, u: {},
        ("Don't use any commas.", "Please write it without a single comma.", "No commas anywhere in your reply.")),
    "startend:quotation": Kind(
        lambda r, t, u: {},
        ("Wrap your entire answer in double quotation marks.", "Put the whole reply inside double quotes.")),
}

ORDINAL = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}


def _times(n: int, relation: str) -> str:
    if relation == LESS:
        return f"fewer than {n} times"
    return f"at least {n} times"


def phrase_vars(kw: dict) -> dict:
    """The kwargs plus the words a phrasing needs around them ("at least 3 times", "fewer than 60 words")."""
    v = dict(kw)
    if "keywords" in kw:
        v["kw"] = _quoted(kw["keywords"])
    if "forbidden_words" in kw:
        v["fw"] = _quoted(kw["forbidden_words"])
    if "frequency" in kw:
        v["times"] = _times(kw["frequency"], kw["relation"])
    if "let_frequency" in kw:
        v["let_times"] = _times(kw["let_frequency"], kw["let_relation"])
    if "capital_frequency" in kw:
        v["cap_times"] = _times(kw["capital_frequency"], kw["capital_relation"])
    if "language" in kw:
        v["lang"] = LANGUAGES[kw["language"]]
    if "num_sentences" in kw:
        n = kw["num_sentences"]
        v["sent_phrase"] = f"fewer than {n} sentences" if kw["relation"] == LESS else f"at least {n} sentences"
    if "num_words" in kw:
        n = kw["num_words"]
        v["words_phrase"] = f"fewer than {n} words" if kw["relation"] == LESS else f"at least {n} words"
    if "nth_paragraph" in kw:
        v["nth_word"] = ORDINAL[kw["nth_paragraph"]]
    v["s_ph"] = "" if kw.get("num_placeholders") == 1 else "s"
    v["s_hl"] = "" if kw.get("num_highlights") == 1 else "s"
    return v


# Pairs IFEval's table allows that no answer can satisfy here, or that pull against each other: the section marker
# ("SECTION 1", "Section 1") cannot be all lower- or all upper-case text; a word limit and a sentence count at once.
EXTRA_CONFLICTS = (("change_case:english_lowercase", "detectable_format:multiple_sections"),
                   ("change_case:english_capital", "detectable_format:multiple_sections"),
                   ("length_constraints:number_words", "length_constraints:number_sentences"))


@lru_cache(maxsize=1)
def conflicts() -> dict[str, frozenset[str]]:
    """IFEval's conflict table (if-verifiable's copy of Google's instructions_registry), made symmetric by its own
    conflict_make, over the types we attach, plus EXTRA_CONFLICTS. Every type conflicts with itself: one of each."""
    from if_verifiable.ifeval import instructions_registry as reg

    table = reg.conflict_make(copy.deepcopy(reg.INSTRUCTION_CONFLICTS))
    out = {k: set(v) & set(KINDS) for k, v in table.items() if k in KINDS}
    for a, b in EXTRA_CONFLICTS:
        out[a].add(b)
        out[b].add(a)
    return {k: frozenset(v) for k, v in out.items()}


def fits(iid: str, text: str) -> bool:
    """Types that only make sense for some prompts: a yes/no/maybe answer for a question only."""
    return iid != "detectable_format:constrained_response" or text.rstrip().endswith("?")


LAST_DRAWN = ("keywords:forbidden_words", "keywords:letter_frequency")  # they avoid the words the other asks use


def draw(rng: random.Random, text: str, k: int) -> list[tuple[str, dict, str]]:
    """Up to k (instruction id, kwargs, phrasing) that do not conflict, in the order they are asked; a
    repeat-the-request instruction goes last (what comes before it is the request to repeat)."""
    chosen: list[str] = []
    while len(chosen) < k:
        pool = [i for i in KINDS if fits(i, text) and not any(i in conflicts()[c] for c in chosen)]
        if not pool:
            break
        chosen.append(rng.choice(pool))
    chosen.sort(key=lambda i: i == "combination:repeat_prompt")
    used: set[str] = set()
    kwargs: dict[str, dict] = {}
    for i in sorted(chosen, key=lambda i: i in LAST_DRAWN):
        kwargs[i] = KINDS[i].draw(rng, text, used)
        used.update(w.lower() for v in kwargs[i].values() if isinstance(v, str) for w in re.findall(r"[A-Za-z]+", v))
    return [(i, kwargs[i], rng.choice(KINDS[i].say)) for i in chosen]


def constrain(text: str, rng: random.Random, k: int) -> tuple[str, list[dict]]:
    """The base prompt with k instructions appended, and their checks (kind `instruction`, strict)."""
    out, checks = text.rstrip(), []
    for iid, kw, say in draw(rng, text, k):
        if iid == "combination:repeat_prompt":
            kw = {"prompt_to_repeat": out}
        sep = "\n\n" if not re.search(r"[.?!)\"']$", out) or rng.random() < 0.35 else " "
        out = out + sep + say.format(**phrase_vars(kw))
        checks.append({"id": iid.split(":")[1], "kind": "instruction", "instruction": iid, "kwargs": kw})
    return out, checks


def describe(iid: str, kwargs: dict) -> str:
    """The instruction as IFEval's own code words it ("Answer with at least 300 words."), from if-verifiable's
    registry: the exact ask a critique from checks can name. IFEval's ids only (importing IFBench's registry tries
    to download NLTK data): another id comes back as itself."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT as EVAL

    cls = EVAL.get(iid)
    if cls is None:
        return iid
    r = cls(iid)
    text = r.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    return " ".join(str(text).split())


COUNTS = (1, 2, 3)
COUNT_WEIGHTS = (0.4, 0.35, 0.25)


def build(recs: list[PromptRecord], n: int | None, seed: int, most: int = 3) -> list[dict]:
    """Prompt rows: `n` base prompts (all when None; a seeded choice, each base once before any twice), each with
    1-`most` instructions. Ids: the base's id with -if (and the copy number after the first use)."""
    order = list(recs)
    random.Random(json.dumps([seed, "bases"])).shuffle(order)
    n = len(order) if n is None else n
    rows = []
    for j in range(n):
        rec, copy_n = order[j % len(order)], j // len(order)
        rng = random.Random(json.dumps([seed, "constrain", rec.id, copy_n]))
        k = rng.choices([c for c in COUNTS if c <= most], weights=COUNT_WEIGHTS[:most])[0]
        text, checks = constrain(rec.prompt, rng, k)
        rid = f"{rec.id}-if" + (f"{copy_n + 1}" if copy_n else "")
        row: dict = {"id": rid, "domain": rec.domain}
        if rec.system or rec.context:
            msgs = ([{"role": "system", "content": rec.system}] if rec.system else []) + rec.turns()
            row["messages"] = msgs + [{"role": "user", "content": text}]
        else:
            row["prompt"] = text
        row["checks"] = checks
        rows.append(row)
    return rows


def read(source: str) -> list[PromptRecord]:
    """A base prompt set: a built-in name, a .jsonl file or a prompt-set .yaml file."""
    from . import prompts

    p = Path(source).expanduser()
    if p.suffix == ".jsonl":
        if not p.is_file():
            raise UserError(f"{source}: no such file")
        return prompts.load(None, str(p), None)
    if p.suffix in (".yaml", ".yml"):
        from .yamlio import load_yaml

        data = load_yaml(p)
        if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
            raise UserError(f"{p}: expected a mapping with a `prompts:` list")
        default = str(data.get("domain") or p.stem)
        return [prompts._record(r, f"{p}: prompts[{i}]", default, f"set:{p.stem}")
                for i, r in enumerate(data["prompts"])]
    return prompts.load(source, None, None)


def write(rows: list[dict], out: Path, header: str) -> None:
    """A prompt set .yaml (one flow mapping per row, as the built-in sets are written) or a .jsonl file."""
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        body = "".join("  - " + yaml.safe_dump(r, default_flow_style=True, width=10**9, allow_unicode=True,
                                               sort_keys=False).strip() + "\n" for r in rows)
        text = "".join(f"# {h}\n" if h else "#\n" for h in header.splitlines()) + \
            f"name: {out.stem}\ndomain: general     # default domain for items without one\nprompts:\n" + body
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)


HEADER = """Constrained prompts: {n} base prompts of {sources}, each with 1-3 verifiable instructions (IFEval's
types, kwargs drawn by a seeded RNG, phrased as users ask, no two that IFEval's conflict table forbids) and their
`checks` (kind `instruction`: IFEval's own verifier, strict). None is an IFEval or IFBench test prompt
(tests/test_constrain.py checks exact and near-duplicate overlap with all 841).
Made by: {cmd}
Do not edit by hand: rebuild it with the command above (the same command writes the same file)."""


def main(argv: list[str] | None = None) -> None:
    p = ArgParser(prog="python -m cai_gen.constrain",
                  description="Attach verifiable IFEval instructions (and their checks) to base prompts.")
    p.add_argument("sources", nargs="+", metavar="IN", help="base prompts: a built-in set name, FILE.jsonl or FILE.yaml")
    p.add_argument("out", metavar="OUT", help="the constrained set: FILE.yaml (a prompt set) or FILE.jsonl")
    p.add_argument("--n", type=int, default=None, help="rows to write (default: one per base prompt)")
    p.add_argument("--seed", type=int, default=0, help="the draw of bases, instruction types, kwargs and phrasings")
    p.add_argument("--max-instructions", type=int, default=3, choices=(1, 2, 3), help="instructions per prompt, at most")
    a = p.parse_args(argv)
    if a.n is not None and a.n < 1:
        p.error("--n must be at least 1")
    try:
        recs = [r for s in a.sources for r in read(s)]
        seen: set[str] = set()
        for r in recs:
            if r.id in seen:
                raise UserError(f"{a.out}: base prompt id {r.id!r} comes twice across {', '.join(a.sources)}")
            seen.add(r.id)
        rows = build(recs, a.n, a.seed, a.max_instructions)
        cmd = " ".join(["python -m cai_gen.constrain", *a.sources, a.out] + ([f"--n {a.n}"] if a.n else []) +
                       [f"--seed {a.seed}"] + ([f"--max-instructions {a.max_instructions}"] if a.max_instructions != 3
                                               else []))
        write(rows, Path(a.out), HEADER.format(n=len(rows), sources=", ".join(a.sources), cmd=cmd))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(rows)} constrained prompts -> {a.out}")


if __name__ == "__main__":
    main()
