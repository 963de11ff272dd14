"""A deterministic fake engine for fast unit tests of the pipeline's logic (never for behaviour claims).

Text is derived from a hash of the conversation, so the same input always gives the same output. The stage is
read off the conversation: the synth template's last line marks a request for a user message (cai_gen.synth);
the revision template's last line marks a revision request; otherwise a conversation
with an assistant turn asks for a critique; otherwise it is a first response. Tokens are whitespace words.
"""
from __future__ import annotations

import hashlib
import time
from collections import deque
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from ..config import BackendCfg, ModelCfg
from . import Conversation, Generation, OnDone, Params, loop_end, register

WORDS = ("account billing refund order shipping update support policy secure verify help team email step link "
         "settings review details contact confirm request window days form option status").split()
REVISION_MARK = "rewritten response only"
SYNTH_MARK = "Reply with the user's message only"  # the last line of templates/synth.jinja (cai_gen.synth)


def _words(seed: str, n: int) -> list[str]:
    h = hashlib.sha256(seed.encode()).digest()
    return [WORDS[(h[i % len(h)] + i * 7) % len(WORDS)] for i in range(n)]


class FakeCfg(BackendCfg):
    """backend=fake (conf/backend/fake.yaml)."""
    kind: Literal["fake"] = "fake"
    mode: Literal["good", "echo", "preface", "loop"] = "good"
    gate: Literal["yes", "no", "mixed"] = "yes"  # fake gate answers: always YES, always NO, or P(YES) from a hash
    delay: float = Field(0.0, ge=0)
    hold_file: str | None = None  # after the number of generations this file holds, wait while it exists (tests)
    judge: Literal["revision", "original", "first", "low", "original_low", "tie", "prose"] = "revision"
    max_model_len: int | None = Field(None, gt=0)
    scripted: ClassVar[tuple[str, ...]] = ("mode", "gate", "judge")

    def options(self, model: ModelCfg, seed: int) -> dict:
        return dict(mode=self.mode, max_model_len=self.max_model_len or model.max_model_len, delay=self.delay,
                    judge=self.judge, gate=self.gate, hold_file=self.hold_file)


@register("fake", FakeCfg)
class FakeBackend:
    name = "fake"

    def __init__(self, model_path: str, model_name: str, *, mode: str = "good", max_model_len: int = 2048,
                 delay: float = 0.0, judge: str = "revision", gate: str = "yes", hold_file: str | None = None):
        self.model, self.mode, self.max_model_len, self.delay = model_name, mode, max_model_len, delay
        self.judge, self.gate, self.hold_file = judge, gate, hold_file
        self.made = 0  # generations made by this engine (hold_file counts them)
        self.calls: list[int] = []  # batch size of each generate/submit call (tests check stages are batched)
        self.queue: deque[tuple[int, Conversation, Params]] = deque()
        self._next = 0

    def count_tokens(self, convs: list[Conversation]) -> list[int]:
        return [sum(len(m["content"].split()) + 2 for m in c) for c in convs]

    def _verdict(self, conv: Conversation, choices: tuple[str, ...]) -> str:
        """A judge with a known behaviour: prefers the revision (fake revisions start 'Thanks'), the original,
        always answer A (position bias), the revision with LOW confidence, the original with one LOW verdict,
        TIE, or prose off the choices (a server without constrained decoding)."""
        text = conv[-1]["content"]
        a = text.split("[Answer A]", 1)[-1].split("[Answer B]", 1)[0].strip()
        rev = "A" if a.startswith("Thanks") else "B"
        orig = "B" if rev == "A" else "A"
        pick = {"revision": f"{rev} HIGH", "original": f"{orig} HIGH", "first": "A HIGH", "low": f"{rev} LOW",
                "original_low": f"{orig} {'LOW' if rev == 'A' else 'HIGH'}", "tie": "TIE HIGH",
                "prose": "I prefer the first one"}[self.judge]
        return pick if pick in choices or self.judge == "prose" else choices[0]

    def _p_yes(self, conv: Conversation) -> float:
        """The gate: always YES, always NO, or P(YES) from a hash of the conversation (about half NO)."""
        if self.gate != "mixed":
            return 1.0 if self.gate == "yes" else 0.0
        return hashlib.sha256(repr(conv).encode()).digest()[0] / 255

    def _text(self, conv: Conversation, p: Params) -> str:
        if p.choices == ("YES", "NO"):
            return "YES" if self._p_yes(conv) >= 0.5 else "NO"
        if p.choices:
            return self._verdict(conv, p.choices)
        key = repr(conv) + f"|{p.temperature}|{p.top_p}|{p.seed}"
        last = conv[-1]["content"]
        if SYNTH_MARK in last:  # cai_gen.synth: a user's message, a question in the fake's words
            w = _words("synth" + key, 12)
            return f"Hi, can you help me {w[0]} my {w[1]} {w[2]}? I need the {' '.join(w[3:9])} before {w[9]}."
        if REVISION_MARK in last:
            if self.mode == "loop":  # says one sentence over and over until max tokens, like a small model
                return "Thanks for reaching out. " + "I am here to help you today. " * 40
            if self.mode == "echo":
                return conv[-2]["content"]  # repeats its own critique, the small-model failure we must catch
            body = "Thanks for reaching out. " + " ".join(_words("rev" + key, 24)) + "."
            return ("Here is a revised response:\n\n" + body) if self.mode == "preface" else body
        if any(m["role"] == "assistant" for m in conv):
            return "The response is vague about " + " ".join(_words("crit" + key, 10)) + "."
        return "Sure. " + " ".join(_words("resp" + key, 30)) + "."

    def generate(self, convs: list[Conversation], params: list[Params], on_done: OnDone | None = None) -> list[Generation]:
        self.calls.append(len(convs))
        out = []
        for i, (conv, p) in enumerate(zip(convs, params)):
            gen = self._one(conv, p)
            out.append(gen)
            if self.delay:
                time.sleep(self.delay)
            if on_done:
                on_done(i, gen)
        return out

    def _hold(self) -> None:
        """A hung engine, for the interrupt tests: once it has made the number of generations written in
        `hold_file`, it waits while that file exists. A test interrupts it at a known point, however loaded the
        machine (a timed delay races the run to its end), then removes the file so the resumed run goes on."""
        while self.hold_file:
            try:
                n = int(Path(self.hold_file).read_text() or 0)
            except (FileNotFoundError, ValueError):
                return
            if self.made < n:
                return
            time.sleep(0.02)

    def _one(self, conv: Conversation, p: Params) -> Generation:
        self._hold()
        self.made += 1
        words = self._text(conv, p).split(" ")
        finish = "length" if len(words) > p.max_tokens else "stop"
        end = loop_end(" ".join(words[: p.max_tokens]), p.loop_stop) if p.loop_stop else None
        if end is not None:
            words, finish = " ".join(words)[:end].split(" "), "loop"
        probs = None
        if p.choices == ("YES", "NO"):
            y = self._p_yes(conv)
            probs = {"YES": y, "NO": 1 - y}
        return Generation(" ".join(words[: p.max_tokens]), finish, self.count_tokens([conv])[0],
                          min(len(words), p.max_tokens), probs=probs)

    def submit(self, convs: list[Conversation], params: list[Params]) -> list[int]:
        self.calls.append(len(convs))
        hs = list(range(self._next, self._next + len(convs)))
        self._next += len(convs)
        self.queue.extend(zip(hs, convs, params))
        return hs

    def poll(self) -> list[tuple[int, Generation]]:
        # One request per step, oldest first: the next stage's requests are queued while older ones are pending.
        done = [self.queue.popleft()] if self.queue else []  # a deque: O(1) per step at any queue length
        out = []
        for h, conv, p in done:
            if self.delay:
                time.sleep(self.delay)
            out.append((h, self._one(conv, p)))
        return out

    def close(self) -> None:
        pass
