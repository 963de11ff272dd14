"""What a synthesized prompt must be: one user message, asking, not answering; and not a copy.

`check` cleans a model's output (quotes, "User:" labels, a "Here is a message:" line, an assistant turn the model
went on to write) and returns the message or the reason it is not one. `Dedup` finds exact and near duplicates
(word n-gram Jaccard; datasketch's MinHash LSH picks the candidates, the exact Jaccard of those decides), against
the few-shot prompts and every message kept before.

Small models are the reason for most rules here: SmolLM2-135M, asked for a customer's message, often answers as
the agent ("Thank you for contacting us ..."), refuses, or describes the message instead of writing it.
"""
from __future__ import annotations

import re

from .ids import norm
from .quality import trim

# a label before the message: "User:", "**Customer message:**", "Example 3:", "- Message:"
LABEL = re.compile(r"^\s*(?:[-*\d.)]+\s*)?\**\s*(?:(?:new |test |example |sample |the )?(?:user|customer|client|human|"
                   r"caller|sender)(?:'s)?(?: message| email| request| query| question)?|message|request|query|"
                   r"question|prompt|example(?: \d+)?|q)\s*\**\s*[:\-]\s*\**\s*", re.I)
# a first line that only announces the message: "Here's a message a frustrated customer might send:"
ANNOUNCE = re.compile(r"^[^\n]{0,160}\b(?:here(?:'s| is)|message|request|email|example)\b[^\n]{0,160}:\s*\n", re.I)
# the model went on to write the assistant's side too: keep what came before
TURN = re.compile(r"\n\s*\**\s*(?:assistant|agent|support(?: agent)?|representative|response|reply|answer|ai|"
                  r"bot|chatbot)\s*\**\s*:", re.I)
QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}

# the assistant's voice: an answer, not a request
ANSWER = re.compile(r"^(?:sure\b|certainly\b|of course\b|absolutely\b|great question|good question|"
                    r"thank(?:s| you) (?:for (?:contacting|reaching|your (?:message|patience|inquiry|question))|"
                    r"so much for (?:contacting|reaching))|i apologi[sz]e for|we apologi[sz]e|"
                    r"i understand (?:your|that you|how)|dear (?:customer|valued|user)|"
                    r"(?:hello|hi)[!,.]? (?:how (?:can|may) i|i'?m (?:here|happy|sorry))|how (?:can|may) i (?:help|assist)|"
                    r"i'?d be (?:happy|glad) to|i would be (?:happy|glad) to|here(?:'s| is) how|to (?:resolve|fix) this,)"
                    # the agent's lines anywhere: "I'm here to help. Can you tell me more about your order?"
                    r"|\bhow (?:can|may) i (?:help|assist)|\bi'?m here to help\b|\bwhat can i (?:help|do for) you|"
                    r"\bi'?ll be your (?:assistant|chatbot|agent)|\bwelcome to (?:our|my|the)\b|"
                    r"\bwe hope you\b|\bwe are committed\b|\bi'?m an ai\b|\bi am an ai\b|\bi'?m here to assist\b|"
                    r"\bsorry for the inconvenience\b|\bi'?m designed to\b", re.I)
REFUSAL = re.compile(r"^(?:i'?m|i am|we'?re|we are) (?:sorry|afraid),? (?:but )?(?:i|we) (?:can'?t|cannot|am unable|"
                     r"'m unable|won'?t)|^(?:i|we) (?:can'?t|cannot|won'?t|am unable to|'m unable to) (?:help|assist|"
                     r"provide|fulfill|comply|do that|share|answer|create|write)|\bas an ai\b", re.I)
# text about the message, the assistant or the task instead of the message itself
META = re.compile(r"^(?:this (?:message|request|user)|the (?:user|customer|message|sender)\b|an? (?:user|customer) "
                  r"(?:might|could|would|who|asks|wants|writes)|in this (?:message|scenario)|(?:persona|channel|tone|"
                  r"expertise|region|language style)\s*:)|\bthe assistant\b|\bbreak (?:the|this) rule\b|"
                  r"\bcareless assistant\b|reply with the message|\bthe ai assistant\b|\bthis message\b|"
                  r"\b(?:original|user's|customer's) message\b|^this is an? [^.]{0,40}\b(?:message|response|request)\b|"
                  r"^the target\b|\bthe (?:user|customer)(?:'s)?\b(?! (?:service|support|care|portal|account))|"
                  r"\bwhen a (?:user|customer)\b|^here(?:'s| is) (?:a|the|my) (?:response|reply|message)\b|"
                  r"^rewrite\b|\bthe text to be\b|\b\d+ words\b", re.I | re.M)
# a form letter with slots to fill ("Hi [Username]", "[package_name]"), not a message someone sent
PLACEHOLDER = re.compile(r"\[[A-Za-z][\w ']{0,30}\]|<[A-Za-z][\w ]{0,30}>|\{[A-Za-z_]\w*\}")
# several messages or talking points at once ("- ...", "1. ..."), not one message
LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.M)
# a user message asks (?), speaks as someone (I, my, we, you) or pleads (please); anything else is not a request
ASKS = re.compile(r"\?|\b(?:i|i'm|i've|i'd|i'll|my|me|mine|we|our|us|you|your|please|pls)\b", re.I)
WORD = re.compile(r"[\w']+")


def clean(text: str) -> str:
    """The message alone: the model's label, announcement line, surrounding quotes and an assistant turn it
    went on to write are removed."""
    t = text.strip()
    m = TURN.search("\n" + t)
    if m:
        t = ("\n" + t)[:m.start()].strip()
    for _ in range(3):  # "Sure! Here is one:\n\n**Customer:** \"...\"": each layer once
        before = t
        m = ANNOUNCE.match(t)
        if m and t[m.end():].strip():
            t = t[m.end():].strip()
        t = LABEL.sub("", t, count=1).strip()
        if len(t) >= 2 and QUOTES.get(t[0]) == t[-1]:
            t = t[1:-1].strip()
        if t == before:
            break
    return t


def check(raw: str, finish_reason: str, min_words: int, max_words: int) -> tuple[str, str | None]:
    """(the cleaned message, None) when it is a usable user message, else (the cleaned text, reason)."""
    t = clean(raw)
    if finish_reason == "length":
        # cut by max tokens: a small model rambles on after the message, so its first paragraph, back to the last
        # whole sentence, is often the message; nothing whole left is `truncated`
        t = trim(t.split("\n\n")[0])
        if not t:
            return raw.strip(), "truncated"
    n = len(WORD.findall(t))
    if n == 0:
        return t, "empty"
    if n < min_words:
        return t, "too_short"
    if n > max_words:
        return t, "too_long"
    if REFUSAL.search(t[:200]):
        return t, "refusal"
    if ANSWER.search(t):  # search: the opening group is anchored (^), the agent's stock lines are not
        return t, "answer"
    if META.search(t):
        return t, "meta"
    if PLACEHOLDER.search(t):
        return t, "placeholder"
    if len(LIST_LINE.findall(t)) >= 2:
        return t, "list"
    if not ASKS.search(t):
        return t, "not_request"
    return t, None


def normal(text: str) -> str:
    """The words of the split's form of the text (ids.norm), punctuation dropped: two texts the split calls one
    question are one here too (an exact duplicate), and so are texts that differ only in punctuation."""
    return " ".join(WORD.findall(norm(text)))


def shingles(text: str, n: int) -> set[str]:
    words = normal(text).split()
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class Dedup:
    """Exact (normalized text) and near duplicates (word n-gram Jaccard >= threshold) of the texts added so far.
    The LSH is queried at a lower threshold than the decision's: LSH misses some pairs just over its threshold,
    and every candidate is then measured exactly, so the extra candidates cost little and decide nothing."""

    def __init__(self, threshold: float, ngram: int = 2, num_perm: int = 128):
        from datasketch import MinHashLSH  # scipy underneath: imported when a synth run dedups, not at --help

        self.threshold, self.ngram, self.num_perm = threshold, ngram, num_perm
        self.lsh = MinHashLSH(threshold=max(0.05, threshold - 0.2), num_perm=num_perm)
        self.sets: dict[str, set[str]] = {}
        self.texts: dict[str, str] = {}   # key -> text, so a report can show what a removed text duplicated
        self.exact: dict[str, str] = {}

    def _minhash(self, sh: set[str]):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=1)  # a fixed seed: the same candidates on every run
        m.update_batch([s.encode() for s in sorted(sh)])
        return m

    def find(self, text: str) -> tuple[str, float] | None:
        """(key of the closest earlier text, similarity) when `text` duplicates one, else None."""
        norm = normal(text)
        if norm in self.exact:
            return self.exact[norm], 1.0
        sh = shingles(text, self.ngram)
        best = None
        for key in self.lsh.query(self._minhash(sh)):
            sim = jaccard(sh, self.sets[key])
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (key, sim)
        return best

    def add(self, key: str, text: str) -> None:
        norm = normal(text)
        self.exact.setdefault(norm, key)
        self.texts.setdefault(key, text)
        if key not in self.sets:
            self.sets[key] = shingles(text, self.ngram)
            self.lsh.insert(key, self._minhash(self.sets[key]))
