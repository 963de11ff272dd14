"""The engine boundary. Stages hand a backend whole batches of chat conversations; backends return text.

Backends are Protocol-typed, not subclassed: anything with these methods works. Heavy imports stay inside
each backend module so `--help` and config errors never pay for torch or vllm.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Callable, Protocol

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class Params:
    """Sampling for one request (plain values, so every backend can map them)."""
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    # Constrain the answer to exactly one of these strings (the judge's verdicts). vLLM enforces it with
    # structured outputs; the transformers and fake backends pick the choice the model scores highest.
    choices: tuple[str, ...] | None = None
    # End the request once one sentence (4+ words) has been said this many times: a loop, which a small model
    # keeps up until max tokens and the repetition filter drops anyway (finish_reason "loop"). None: off.
    # The vllm, transformers and fake backends honour it; openai generates to max tokens as before.
    loop_stop: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str  # "stop", "length" (hit max_tokens: the text is truncated) or "loop" (loop_stop ended it)
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens served from the prefix cache, where the engine says
    # for a request with `choices`: the probability of each choice, where the backend can tell (vLLM log-probs of
    # the first token, the transformers backend's likelihoods); None otherwise
    probs: dict[str, float] | None = None
    # when the generation finished (ISO UTC, stamped as the ledger commits it): a row's created_at is its last
    # generation's, so a rerun or re-filter does not make old data look new
    done_at: str | None = None


OnDone = Callable[[int, Generation], None]


def seed_of(*key) -> int:
    """A request's sampling seed from what it is (run seed, prompt or cell, sample, stage): the same request gets
    the same seed in every run, executor and shard, so its ledger key (which holds the params) is the same."""
    return int.from_bytes(hashlib.sha256(json.dumps(key).encode()).digest()[:4], "big") & 0x7FFFFFFF


def last_text(conv: Conversation) -> str:
    """The last message's text: a chosen or rejected answer is one assistant message."""
    return conv[-1]["content"] if conv else ""

_SENTENCE_END = re.compile(r"[.!?\n]+")
_WORD = re.compile(r"[a-z0-9']+")


def loop_end(text: str, times: int) -> int | None:
    """Where `text` completes one sentence of 4+ words for the `times`-th time (its end, a character index), or
    None. Only sentences closed by . ! ? or a line break count, so a text that loops here still loops (and still
    fails quality.repetitive) however it would have gone on: ending it there loses nothing the filters keep."""
    said: dict[str, int] = {}
    start = 0
    for m in _SENTENCE_END.finditer(text):
        w = _WORD.findall(text[start:m.start()].lower())
        start = m.end()
        if len(w) >= 4:
            k = " ".join(w)
            said[k] = said.get(k, 0) + 1
            if said[k] >= times:
                return m.start() + 1
    return None


class Backend(Protocol):
    name: str
    model: str
    max_model_len: int

    def count_tokens(self, convs: list[Conversation]) -> list[int]:
        """Prompt length in tokens of each conversation after the chat template (generation prompt added)."""
        ...

    def generate(self, convs: list[Conversation], params: list[Params], on_done: OnDone | None = None) -> list[Generation]:
        """One batched call. `on_done(i, gen)` fires as each request finishes (progress, streaming commits)."""
        ...

    def close(self) -> None: ...


def generate_queued(backend, convs: list[Conversation], params: list[Params],
                    on_done: OnDone | None = None) -> list[Generation]:
    """generate() for a backend with submit/poll: queue the whole batch at once, report each request as it
    finishes (vLLM steps its engine inside poll; the openai client waits on its requests there)."""
    index = {h: i for i, h in enumerate(backend.submit(convs, params))}
    out: list[Generation | None] = [None] * len(convs)
    left = len(index)
    while left:
        for h, gen in backend.poll():
            i = index[h]
            out[i] = gen
            left -= 1
            if on_done:
                on_done(i, gen)
    return out  # type: ignore[return-value]


def queued(backend) -> bool:
    """Can the backend take requests without waiting (submit/poll), so the pipelined schedule can run on it?"""
    return getattr(backend, "queued", hasattr(backend, "submit"))


def choice_probs(first: dict[str, float], choices: tuple[str, ...]) -> dict[str, float] | None:
    """Each choice's probability from the first generated token's top log-probs ({decoded token: logprob}):
    a token counts for the one choice it begins (case-insensitive). None when a token begins several choices
    (the judge's "A HIGH"/"A LOW") or none of the mass fell on a choice."""
    import math

    mass = dict.fromkeys(choices, 0.0)
    for tok, lp in first.items():
        t = tok.strip().upper()
        hits = [c for c in choices if t and c.upper().startswith(t)]
        if len(hits) > 1:
            return None
        if hits:
            mass[hits[0]] += math.exp(lp)
    total = sum(mass.values())
    return {c: m / total for c, m in mass.items()} if total > 0 else None


class Lazy:
    """A backend that opens its engine on first use: rerunning a finished run dir with other filters, gate or
    judge actions takes everything from the ledger and never pays for an engine start."""

    def __init__(self, model: str, queued_: bool, open_: Callable[[], Backend]):
        self.model, self.queued, self._open, self.backend = model, queued_, open_, None
        self.opened = False  # whether the engine was started, even if closed since (summary.engine_started)

    def _get(self) -> Backend:
        if self.backend is None:
            self.backend = self._open()
            self.opened = True
        return self.backend

    @property
    def max_model_len(self) -> int:
        return self._get().max_model_len

    @property
    def retries(self) -> int:
        return getattr(self.backend, "retries", 0)

    def count_tokens(self, convs):
        return self._get().count_tokens(convs)

    def generate(self, convs, params, on_done=None):
        return self._get().generate(convs, params, on_done)

    def submit(self, convs, params):
        return self._get().submit(convs, params)

    def poll(self):
        return self._get().poll()

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


# The registry: a backend is one file that registers its class with its config class (@register below): a module
# of this package (each is imported by load) or a user's backend/NAME.py beside its backend/NAME.yaml in an
# include_path folder. BUILTIN: the order an unknown kind's error lists the first ones (others follow).
BUILTIN = ("vllm", "transformers", "fake", "openai")
_configs: dict[str, type] = {}
_classes: dict[str, type] = {}
_loaded: set[str] = set()


def register(name: str, config_cls: type):
    """Class decorator: backend.kind=NAME validates as `config_cls` (a config.BackendCfg with the backend's knobs
    and `options()`, the constructor's keyword arguments) and runs the decorated class."""
    def deco(cls):
        _configs[name], _classes[name] = config_cls, cls
        return cls
    return deco


def load(include=()) -> None:
    """Register this package's backends, then every backend/*.py of the user's include path (each registers
    itself). Backend modules import their engines inside the class, so this stays cheap."""
    import importlib
    import importlib.util
    import pkgutil
    import sys

    for m in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{m.name}")
    from .. import paths
    from ..errors import UserError

    for d in paths.include_dirs(include):
        for f in sorted((d / "backend").glob("*.py")):
            if str(f) in _loaded:
                continue
            _loaded.add(str(f))
            mod = f"cai_gen_backend_{f.stem}"  # in sys.modules, so pickle can name its classes
            spec = importlib.util.spec_from_file_location(mod, f)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:  # a user's backend file that does not import: one line naming it
                del sys.modules[mod]
                raise UserError(f"{f}: {type(e).__name__}: {e}") from None


def configs() -> dict[str, type]:
    """Every registered backend's config class by name: the built-ins in BUILTIN's order (whichever a caller
    imported first), then the user's."""
    load()
    return {k: _configs[k] for k in sorted(_configs, key=lambda k: BUILTIN.index(k) if k in BUILTIN else len(BUILTIN))}


def config_class(kind) -> type:
    """The config class backend.kind=`kind` validates as; an unknown kind is the error pydantic gives a Literal."""
    have = configs()
    found = have.get(kind)
    if found is None:
        from pydantic import ValidationError
        from pydantic_core import PydanticCustomError

        names = [repr(k) for k in have]
        expected = f"{', '.join(names[:-1])} or {names[-1]}"
        err = PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        raise ValidationError.from_exception_data("BackendCfg", [dict(type=err, loc=("kind",), input=kind)])
    return found


def config(data: dict):
    """A backend config from plain values ({"kind": ..., knob: value}), validated as its kind's class."""
    return config_class(data.get("kind")).model_validate(data)


def backend_class(kind: str) -> type:
    """The registered backend class of `kind`."""
    if kind not in configs():
        from ..errors import UserError
        raise UserError(f"backend.kind: unknown backend {kind!r} (use {', '.join(configs())})")
    return _classes[kind]


def make_backend(kind: str, model_path: str, model_name: str, opts: dict) -> Backend:
    return backend_class(kind)(model_path, model_name, **opts)
