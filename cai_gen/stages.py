"""The stages of a run as small objects. A run is a list of them; the schedules (flow.pipelined, flow.staged,
and executor=ray, which runs flow on each replica) take every row through the list.

A stage says two things about a row:
- `requests(job, row)`: the engine requests it needs (conversation + sampling), `[]` for a stage that needs no
  engine (pair), or None when the row skips it (a row whose rounds are over skips the later rounds);
- `accept(job, row, gens)`: takes the generations into the row and says whether the row goes on. False means
  the row left the flow: dropped with a reason (job.reject), or ended early without a pair (job.end: the gate
  found no violation); AGAIN (None) that the row needs more of this stage's requests (`requests` says which).
A new stage is one class here and one line in `build`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from . import judge as judge_mod, preview, quality, turns
from .backends import Conversation, Generation, Params
from .progress import label

GATE_CHOICES = ("YES", "NO")
AGAIN = None  # what accept returns for a row that needs this stage's next requests (Revise's next best-of-N wave)


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

    def checked_text(self, job, g: Generation) -> str:
        """The text accept runs the checks on (job.prime batches their classifier calls on it)."""
        return quality.strip_preface(g.text)[0] if job.cfg.filters.strip_preface else g.text.strip()

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
        job.note(row, "original", job.inline(row, text))  # the outside signal, before any choice is made
        return True


class Inspect(Stage):
    """The judge checks (yes/no propositions) on the row's current answer: the original (round 0) or a revision
    just accepted (round r, which it may still refuse: still_violates / new_violation). Built only when the
    constitution has judge checks; a row none of them applies to skips it. In round r every best-of-N sample that
    passed the inline checks is judged (row.candidates), so the revision is the first by index that passes every
    check, judge checks included; none passing: the revision goes and the row's results are those of the answer
    that stays."""
    name = "inspect"

    def __init__(self, rnd: int = 0, per_row: int = 1):
        super().__init__(rnd)
        self.per_row = per_row

    def _checks(self, row):
        return [(p, c) for p, c in row.applicable if c.needs_engine]

    def _texts(self, row) -> list[tuple[int | None, str]]:
        """(sample index, text) of each answer to judge: the original, or this round's candidates."""
        if not self.rnd:
            return [(None, row.original)]
        return [(k, text) for k, text, _, _ in row.candidates] or [(None, row.revisions[-1])]

    def requests(self, job, row):
        if self.rnd and (not row.open or len(row.revisions) < self.rnd):
            return None
        todo = self._checks(row)
        if not todo:
            return None
        texts = self._texts(row)
        # the seed is the one a single answer's request had (the answer is greedy): its ledger key is unchanged
        return [Request(c.conversation(row.prompt.messages(), text),
                        Params(0.0, 1.0, c.max_tokens, job.seed(row.id, "inspect", self.rnd, c.id), GATE_CHOICES),
                        c.id if i == 0 else f"{c.id}#s{k}")
                for i, (k, text) in enumerate(texts) for _, c in todo]

    def accept(self, job, row, gens):
        todo = self._checks(row)
        n = len(todo)
        ps = [[(c, p_yes(g)) for (_, c), g in zip(todo, gens[i * n:(i + 1) * n])] for i in range(len(gens) // n)]
        results = [{c.id: c.verdict(p) for c, p in one} for one in ps]  # a reply off the choices fails: flagged, never a pass
        unparsed = [any(p is None for _, p in one) for one in ps]
        if not self.rnd:
            row.flags += ["check_unparsed_r0"] if unparsed[0] else []
            job.note(row, "original", results[0])
            return True
        whys = [job.verdict(row, self.principle(row), res) for res in results]
        pick = next((i for i, why in enumerate(whys) if not why), None)
        if any(unparsed[:len(unparsed) if pick is None else pick + 1]):  # judged up to the pick: one was off the choices
            row.flags.append(f"check_unparsed_r{self.rnd}")
        cands, row.candidates = row.candidates, []
        if len(whys) > 1:  # each candidate's reason (None: it passed), and which sample became the revision
            row.trace.append({"stage": self.name, "round": self.rnd, "candidates": [c[0] for c in cands],
                              "samples": whys, "picked": None if pick is None else cands[pick][0]})
        if pick == 0:
            row.before = None
            job.note(row, "revision", results[0])
            return True
        # the revision Revise took fails a judge check: it is not the answer after all, and neither are its results
        row.revisions.pop()
        row.history.pop()
        flag = f"preface_stripped_r{self.rnd}"
        if flag in row.flags:
            row.flags.remove(flag)
        if row.before is not None:
            row.checks, row.now = row.before["checks"], row.before["now"]
        row.before = None
        if pick is None:
            return job.fail(row, self, whys[0])
        _, text, stripped, res = cands[pick]  # a later sample passes every check: it is the revision
        take(job, row, self.rnd, text, stripped, res)
        job.note(row, "revision", results[pick])
        return True


class Choose(Stage):
    """The round's principle (principles.choose=targeted, a constitution with checks): among the principles the
    current answer fails, else among those without checks for this prompt; when neither is left, the row ends
    no_violation (round 1: every check passes, nothing model-judged is left) or keeps its last revision."""
    name, engine = "choose", False

    def requests(self, job, row):
        return [] if row.open and len(row.principles) < self.rnd else None

    def accept(self, job, row, gens):
        pid = job.choose(row, self.rnd)
        if pid is not None:
            row.principles.append(pid)
            return True
        if not row.revisions:
            return job.end(row, self.label, "no_violation")
        row.open = False
        return True


class Critique(Stage):
    """The model's critique of the answer against the round's principle; or, where the run takes critiques from
    the checks (principles.critique_from, else the constitution's critique_from) and the principle's checks fail
    on the answer, the checks' own findings: exact, and no model request (a small model's critique is its weakest
    step). The critique request turn stays in the row's history either way, so the revision sees the same shape."""
    name, few_shot = "critique", True

    def requests(self, job, row):
        if not row.open:
            return None
        turn = turns.critique_turn(job.const, self.principle(row), self.rnd)
        if findings(job, row, self.principle(row)):
            row.history.append(turn)
            return []
        return self.ask(job, row, turn, job.cfg.sampling.max_tokens.critique)

    def accept(self, job, row, gens):
        if not gens:  # the checks' findings (requests decided it; the answer and its results are unchanged since)
            text = findings(job, row, self.principle(row))
            row.trace.append({"stage": self.name, "round": self.rnd, "by": "checks", "output": text})
        else:
            text = gens[0].text.strip()
            why = job.filters.critique(text)
            if why:
                return job.fail(row, self, why)
        row.critiques.append(text)
        row.history.append({"role": "assistant", "content": text})
        return True


def findings(job, row, pid: str) -> str | None:
    """The critique the principle's failing checks write about the row's current answer, when the run takes
    critiques from checks and every failing check can say what it found; else None (the model critiques)."""
    if (job.cfg.principles.critique_from or job.const.critique_from) != "checks":
        return None
    failing = [c for p, c in row.applicable if p == pid and row.now.get(c.id) is False]
    if not failing:
        return None
    from .checks import Context

    text = row.revisions[-1] if row.revisions else row.original
    ctx = Context(row.prompt.text(), row.prompt.fields())
    said = [explain(c, text, ctx) for c in failing]
    return None if None in said else turns.check_critique(said)


def explain(check, text: str, ctx) -> str | None:
    """What a failing check found: its own `explain(text, ctx)` where the kind has one, else for an IFEval
    instruction the instruction as IFEval words it; None for a check that cannot say."""
    own = getattr(check, "explain", None)
    if callable(own):
        return own(text, ctx)
    if getattr(check, "kind", None) == "instruction":
        from .constrain import describe

        return f'it does not follow "{describe(check.instruction, dict(check.kwargs or {}))}"'
    return None


class Gate(Stage):
    """Forced YES/NO after the critique: does the answer violate the principle? NO: no revision this round.
    The question is a side request (not added to the row's history), so revisions are the same requests with
    the gate on or off and a run dir switches between the two without regenerating them."""
    name, few_shot = "gate", True

    def requests(self, job, row):
        if not row.open:
            return None
        if job.principle_fails(row, self.principle(row)) is not None:
            return []  # a checked principle: its checks are the gate, no model request
        conv = job.conv(row, True) + [turns.gate_turn(job.const, self.principle(row))]
        return [Request(conv, self.params(job, row, 4, GATE_CHOICES))]

    def accept(self, job, row, gens):
        if not gens:
            yes, p, by = job.principle_fails(row, self.principle(row)), None, "checks"
        else:
            g, threshold, by = gens[0], job.cfg.gate.threshold, "model"
            p = p_yes(g)
            if p is None:  # free text from a backend without constraints: revise (the filters still apply)
                row.flags.append(f"gate_unparsed_r{self.rnd}")
            yes = p is None or p >= threshold
        row.gate.append({"round": self.rnd, "principle": self.principle(row),
                         "p_yes": None if p is None else round(p, 4), "answer": "YES" if yes else "NO",
                         **({"by": by} if by == "checks" else {})})
        if yes:
            return True
        if not row.revisions:
            return job.end(row, self.label, "no_violation")  # the original stands: KTO desirable + SFT row
        row.open = False  # a later round found nothing more to fix: keep the last revision
        return True


class Revise(Stage):
    """sampling.revise_n samples of one revision request (best-of-N): each its own seeded request on one shared
    prefix (vLLM serves n > 1 the same way, as child requests over the prefix cache), so every sample is its
    own ledger entry that a resume or re-filter reuses. The first sample by index that passes every filter and
    check is the revision; judge checks included: with judge checks on the row every sample passing the inline ones
    is kept in index order (row.candidates) and Inspect takes the first its checks pass too.
    Samples are asked sampling.revise_wave at a time: the next wave only when none so far passed (accept returns
    AGAIN and the schedule asks again). Since the first passing sample by index wins, the revision is the one all N
    at once would give; the samples after it are never generated."""
    name, few_shot = "revise", True

    def __init__(self, rnd: int = 0, n: int = 1, wave: int | None = None):
        super().__init__(rnd)
        self.per_row, self.wave = n, wave
        self.asked: dict[str, tuple[list[Request], list[Generation]]] = {}  # row id -> all N requests, samples so far

    def requests(self, job, row):
        if not row.open:
            return None
        if row.id not in self.asked:
            s = job.cfg.sampling
            reqs = self.ask(job, row, turns.revision_turn(job.const, self.principle(row), self.rnd, job.style),
                            revise_tokens(s.max_tokens.revise, s.revise_max_scale, row.original_tokens))
            first = reqs[0]  # sample 0 is the request a run without best-of-N makes: its ledger entry is shared
            self.asked[row.id] = (reqs + [Request(first.conv, replace(first.params, seed=job.seed(row.id, self.name,
                                                                                                 self.rnd, i)))
                                          for i in range(1, self.per_row)], [])
        reqs, got = self.asked[row.id]
        judged = any(c.needs_engine for _, c in row.applicable)  # every sample passing inline is a candidate
        return reqs[len(got):] if judged or not self.wave else reqs[len(got):len(got) + self.wave]

    def accept(self, job, row, gens):
        reqs, got = self.asked[row.id]
        gens = got + list(gens)  # every sample of this round so far, in index order
        # a judge check follows (Inspect): every sample passing the inline checks is a candidate, judged in turn
        judged = any(c.needs_engine for _, c in row.applicable)
        why0, picks, reasons = None, [], []
        for k, g in enumerate(gens):
            text, stripped, why = self.screen(job, row, g)
            res = {}
            if not why:
                res = job.inline(row, text)
                why = job.verdict(row, self.principle(row), res)
            reasons.append(why)
            if not why:
                picks.append((k, text, stripped, res))
                if not judged:
                    break
            elif why0 is None and not picks:
                why0, row.draft = why, text
        if not picks and len(gens) < len(reqs):
            self.asked[row.id] = (reqs, gens)
            return AGAIN  # none passed yet: the next wave
        del self.asked[row.id]
        if len(gens) > 1:  # each sample's reason (None: it passed), and which one became the revision
            row.trace.append({"stage": self.name, "round": self.rnd, "samples": reasons,
                              "picked": picks[0][0] if picks else None})
        if not picks:
            return job.fail(row, self, why0)
        if judged:  # Inspect may refuse it: what to put back, and the samples to try next
            row.before = {"checks": [dict(r) for r in row.checks], "now": dict(row.now)}
            row.candidates = picks
        take(job, row, self.rnd, *picks[0][1:])
        return True

    checked_text = Respond.checked_text  # a sample is stripped as an original is

    def screen(self, job, row, g: Generation) -> tuple[str, bool, str | None]:
        """One sample through the quality filters: (text, preface stripped?, reason or None)."""
        f = job.cfg.filters
        text, stripped = quality.strip_preface(g.text) if f.strip_preface else (g.text.strip(), False)
        why = quality.check_text(text, g.finish_reason, "revision", f.min_chars, f.truncated_revision == "drop")
        if g.finish_reason == "loop":
            why = "repetitive_revision"  # loop_stop ended it: the full text would have failed the same check
        if why == "empty_revision" and (stripped or quality.PREFACE.match(g.text.strip())):
            why = "revision_preface"  # nothing but a preface: talked about revising instead of revising
        elif not why and not f.strip_preface and quality.PREFACE.match(text):
            why = "revision_preface"
        why = why or job.filters.revision(text, row.critiques[-1], self.principle(row), row.prompt.text(),
                                          row.revisions[-1] if row.revisions else row.original)
        return text, stripped, why


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
        preview.show(job, row)  # the first few kept pairs on the terminal, as they are made
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
            # the checks' sides are the written answers' (revision: chosen, original: rejected), so they swap too:
            # `verified`, the KTO labels and SFT rows are decided on the text written as chosen
            for r in row.checks:
                r["original"], r["revision"] = r["revision"], r["original"]
        elif out != "judge_agrees":
            row.flags.append(out if out.startswith("judge_") else f"judge_{out}")
        return True


def take(job, row, rnd: int, text: str, stripped: bool, res: dict) -> None:
    """Make `text` round rnd's revision, with its inline check results."""
    if stripped:
        row.flags.append(f"preface_stripped_r{rnd}")
    row.draft = text
    row.revisions.append(text)
    row.history.append({"role": "assistant", "content": text})
    job.note(row, "revision", res)


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


def targeted(cfg, const) -> bool:
    """Principles chosen from the answer's checks (stages.Choose); a constitution without checks keeps the
    choice it always had (drawn up front, rows.build_rows)."""
    return cfg.principles.choose == "targeted" and const.checked


def build(cfg, const=None) -> list[Stage]:
    """The generation stages of a run: respond [-> inspect], then per round [choose ->] critique -> gate ->
    revise [-> inspect], then pair. Choose runs when principles are targeted by checks; inspect when the
    constitution has judge checks (the other kinds run inline where the answer is accepted)."""
    judged = sum(c.needs_engine for p in const.principles for c in p.checks) if const is not None else 0
    choose = const is not None and targeted(cfg, const)
    out: list[Stage] = [Respond()] + ([Inspect(0, judged)] if judged else [])
    n = cfg.sampling.revise_n
    for r in range(1, cfg.rounds + 1):
        out += ([Choose(r)] if choose else []) + [Critique(r)] + ([Gate(r)] if cfg.gate.enabled else []) + \
            [Revise(r, n, cfg.sampling.revise_wave)] + ([Inspect(r, judged * n)] if judged else [])  # each sample passing inline may be asked
    return out + [Pair()]
