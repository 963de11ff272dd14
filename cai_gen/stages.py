"""The stages of a run as small objects. A run is a list of them; the schedules (flow.pipelined, flow.staged,
and executor=ray, which runs flow on each replica) take every row through the list.

A stage says two things about a row:
- `requests(job, row)`: the engine requests it needs (conversation + sampling), `[]` for a stage that needs no
  engine (pair), or None when the row skips it (a row whose rounds are over skips the later rounds);
- `accept(job, row, gens)`: takes the generations into the row and says whether the row goes on. False means
  the row left the flow: dropped with a reason (job.reject), or ended early without a pair (job.end: the gate
  found no violation).
A new stage is one class here and one line in `build`.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import judge as judge_mod, quality, turns
from .backends import Conversation, Generation, Params
from .progress import label

GATE_CHOICES = ("YES", "NO")


@dataclass(frozen=True)
class Request:
    conv: Conversation
    params: Params
    tag: str | None = None   # labels the request in the trace (the judge's order)


class Stage:
    """Shared attributes; subclasses override requests/accept (plain duck typing: the schedules need only these)."""
    name = ""
    engine = True      # sends requests to the engine (pair does not)
    few_shot = False   # its conversations carry the few-shot prefix (the trace counts it instead of copying it)
    per_row = 1        # requests per row (the judge asks twice, once per order)

    def __init__(self, rnd: int = 0):
        self.rnd = rnd

    @property
    def label(self) -> str:
        return label(self.name, self.rnd)

    def params(self, job, row, max_tokens: int, choices: tuple[str, ...] | None = None) -> Params:
        s = job.cfg.sampling
        loop = None if choices else getattr(s.loop_stop, self.name, None)
        return Params(s.critique_temperature, s.critique_top_p, max_tokens,
                      job.seed(row.id, self.name, self.rnd), choices, loop)

    def principle(self, row) -> str:
        """The principle this round of the row works on."""
        return row.principles[self.rnd - 1]

    def ask(self, job, row, turn: dict, max_tokens: int) -> list[Request]:
        """Extend the row's conversation with a user turn and request the model's reply to it."""
        row.history.append(turn)
        return [Request(job.conv(row, True), self.params(job, row, max_tokens))]


class Respond(Stage):
    name = "respond"

    def requests(self, job, row):
        return [Request(job.conv(row, False), row.params)]

    def accept(self, job, row, gens: list[Generation]) -> bool:
        f, g = job.cfg.filters, gens[0]
        # a preface on the original must go too, or DPO learns "no preface" instead of the revision's content
        text, stripped = quality.strip_preface(g.text) if f.strip_preface else (g.text.strip(), False)
        if stripped:
            row.flags.append("original_preface_stripped")
        if len(text) < f.min_chars:
            return job.reject(row, self.label, "empty_original")
        if g.finish_reason == "length":
            # a cut original is still a valid `rejected` (the harmful plan cut at max tokens is what the pair must
            # push away from): trim it to its last whole sentence, keep it as is, or drop it
            if f.truncated_original == "drop":
                return job.reject(row, self.label, "truncated_original")
            if f.truncated_original == "trim":
                text = quality.trim(text)
                if len(text) < f.min_chars:
                    return job.reject(row, self.label, "truncated_original")
                row.flags.append("original_trimmed")
            else:
                row.flags.append("original_truncated")
        row.original = text
        row.original_tokens = g.completion_tokens
        row.history = [{"role": "assistant", "content": text}]
        return True


class Critique(Stage):
    name, few_shot = "critique", True

    def requests(self, job, row):
        if not row.open:
            return None
        return self.ask(job, row, turns.critique_turn(job.const, self.principle(row), self.rnd),
                        job.cfg.sampling.max_tokens.critique)

    def accept(self, job, row, gens):
        text = gens[0].text.strip()
        why = job.filters.critique(text)
        if why:
            return job.fail(row, self, why)
        row.critiques.append(text)
        row.history.append({"role": "assistant", "content": text})
        return True


class Gate(Stage):
    """Forced YES/NO after the critique: does the answer violate the principle? NO: no revision this round.
    The question is a side request (not added to the row's history), so revisions are the same requests with
    the gate on or off and a run dir switches between the two without regenerating them."""
    name, few_shot = "gate", True

    def requests(self, job, row):
        if not row.open:
            return None
        conv = job.conv(row, True) + [turns.gate_turn(job.const, self.principle(row))]
        return [Request(conv, self.params(job, row, 4, GATE_CHOICES))]

    def accept(self, job, row, gens):
        g, threshold = gens[0], job.cfg.gate.threshold
        p = p_yes(g)
        if p is None:  # free text from a backend without constraints: revise (the filters still apply)
            row.flags.append(f"gate_unparsed_r{self.rnd}")
        yes = p is None or p >= threshold
        row.gate.append({"round": self.rnd, "principle": self.principle(row),
                         "p_yes": None if p is None else round(p, 4), "answer": "YES" if yes else "NO"})
        if yes:
            return True
        if not row.revisions:
            return job.end(row, self.label, "no_violation")  # the original stands: KTO desirable + SFT row
        row.open = False  # a later round found nothing more to fix: keep the last revision
        return True


class Revise(Stage):
    name, few_shot = "revise", True

    def requests(self, job, row):
        if not row.open:
            return None
        s = job.cfg.sampling
        return self.ask(job, row, turns.revision_turn(job.const, self.principle(row), self.rnd, job.style),
                        revise_tokens(s.max_tokens.revise, s.revise_max_scale, row.original_tokens))

    def accept(self, job, row, gens):
        f, g = job.cfg.filters, gens[0]
        text, stripped = quality.strip_preface(g.text) if f.strip_preface else (g.text.strip(), False)
        why = quality.check_text(text, g.finish_reason, "revision", f.min_chars, f.truncated_revision == "drop")
        if g.finish_reason == "loop":
            why = "repetitive_revision"  # loop_stop ended it: the full text would have failed the same check
        if why == "empty_revision" and (stripped or quality.PREFACE.match(g.text.strip())):
            why = "revision_preface"  # nothing but a preface: talked about revising instead of revising
        elif not why and not f.strip_preface and quality.PREFACE.match(text):
            why = "revision_preface"
        why = why or job.filters.revision(text, row.critiques[-1], self.principle(row), row.prompt.text())
        if stripped:
            row.flags.append(f"preface_stripped_r{self.rnd}")
        row.draft = text
        if why:
            return job.fail(row, self, why)
        row.revisions.append(text)
        row.history.append({"role": "assistant", "content": text})
        return True


class Pair(Stage):
    """chosen = the last accepted revision, rejected = the original; the pair-level filters."""
    name, engine = "pair", False

    def requests(self, job, row):
        return []

    def accept(self, job, row, gens):
        f = job.cfg.filters
        why, row.similarity = quality.check_pair(row.revisions[-1], row.original, f.min_edit, f.max_edit)
        if why:
            return job.reject(row, "pair", why)
        return True


class Judge(Stage):
    """Both orders of a kept pair (position bias shows as `inconsistent`); outcome and action per pair."""
    name, per_row = "judge", 2

    def __init__(self, model: str):
        super().__init__(0)
        self.model = model

    def requests(self, job, row):
        jc = job.cfg.judge
        return [Request(judge_mod.conversation(job.const, row, o, jc.rubric),
                        Params(jc.temperature, 1.0, jc.max_tokens, job.seed(row.id, "judge", o), judge_mod.CHOICES), o)
                for o in judge_mod.ORDERS]

    def accept(self, job, row, gens):
        jc = job.cfg.judge
        v = {o: g.text.strip() for o, g in zip(judge_mod.ORDERS, gens)}
        out = judge_mod.outcome(v["original_first"], v["revision_first"])
        act = judge_mod.action(out, jc)
        row.judge = {"outcome": out, "verdicts": v, "model": self.model, "action": act}
        if act == "drop":
            return job.reject(row, "judge", out)
        if act == "swap":
            row.swapped = True
            row.flags.append("judge_swapped")
        elif out != "judge_agrees":
            row.flags.append(out if out.startswith("judge_") else f"judge_{out}")
        return True


def p_yes(g: Generation) -> float | None:
    """P(YES) of a gate answer: from the choice probabilities where the backend gives them, else 1/0 from the
    text; None when the text is neither choice."""
    if g.probs and "YES" in g.probs:
        return float(g.probs["YES"])
    t = g.text.strip().upper()
    return 1.0 if t == "YES" else 0.0 if t == "NO" else None


def revise_tokens(cap: int, scale: float | None, original_tokens: int) -> int:
    """A revision's max tokens: the stage's cap, or with revise_max_scale, at most `scale` times the original's
    tokens but never under REVISE_FLOOR (a short original may need a longer, fuller answer)."""
    if scale is None:
        return cap
    return min(cap, max(REVISE_FLOOR, round(scale * original_tokens)))


REVISE_FLOOR = 64


def build(cfg) -> list[Stage]:
    """The generation stages of a run: respond, then per round critique -> gate -> revise, then pair."""
    out: list[Stage] = [Respond()]
    for r in range(1, cfg.rounds + 1):
        out += [Critique(r)] + ([Gate(r)] if cfg.gate.enabled else []) + [Revise(r)]
    return out + [Pair()]
