"""Prompt sources -> PromptRecord: a built-in set (prompts/<name>.yaml), a JSONL file, or a HF dataset."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from collections.abc import Iterable
from pathlib import Path

from . import paths
from .ids import base_id, copy_id, groups
from .errors import UserError
from .yamlio import load_yaml, read_jsonl


ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: str                      # the last user turn: what the assistant answers
    domain: str
    source: str
    system: str | None = None
    # earlier turns of a multi-turn prompt, oldest first, as (role, content) pairs (hashable); () for one turn
    context: tuple[tuple[str, str], ...] = ()
    kind: str | None = None          # what kind of request it is (harmful, benign, ...): checks' `when:` matches it
    # the row's own checks (IFEval-style constraints stated in the prompt), parsed and validated at load
    checks: tuple = field(default=(), compare=False, hash=False)
    where: str = field(default="", compare=False, hash=False)  # file:line of the row, for one-line errors about it
    # the key of its split group among the loaded prompts (ids.groups, set by load): "" for a record made alone
    group: str = field(default="", compare=False, hash=False)

    def fields(self) -> dict[str, str]:
        """The fields a check's `when:` can match."""
        return {"domain": self.domain, **({"kind": self.kind} if self.kind else {})}

    def turns(self) -> list[dict]:
        """The earlier turns as chat messages."""
        return [{"role": r, "content": c} for r, c in self.context]

    def messages(self) -> list[dict]:
        """The whole prompt as chat messages (TRL's explicit-prompt format)."""
        sys = [{"role": "system", "content": self.system}] if self.system else []
        return sys + self.turns() + [{"role": "user", "content": self.prompt}]

    def users(self) -> list[str]:
        """The user turns, oldest first (what the split groups prompts by)."""
        return [c for r, c in self.context if r == "user"] + [self.prompt]

    def text(self) -> str:
        """Every turn's text, for checks that ask what the user said (e.g. a model name they mentioned)."""
        return "\n".join([c for _, c in self.context] + [self.prompt])


def available(include: Iterable[str] = ()) -> list[str]:
    """Names selectable as prompts=<name>: every prompts/*.yaml on the search path (cai_gen/paths.py)."""
    return paths.names("prompts", include)


def _auto_id(text: str) -> str:
    # content-derived, so the same prompt keeps its id across runs and files
    return "p-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _turns(msgs, where: str) -> tuple[str | None, tuple, str]:
    """A `messages` list -> (system, earlier turns, last user text); one line naming the row and turn if bad."""
    if not isinstance(msgs, list) or not msgs:
        raise UserError(f"{where}: field `messages` must be a non-empty list of {{role, content}} turns")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise UserError(f"{where}: messages[{i}] must be an object with exactly `role` and `content`")
        if m["role"] not in ROLES:
            raise UserError(f"{where}: messages[{i}]: unknown role {m['role']!r} (use {', '.join(ROLES)})")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise UserError(f"{where}: messages[{i}]: empty content")
        if m["role"] == "system" and i != 0:
            raise UserError(f"{where}: messages[{i}]: a system turn may only come first")
        _encodable(m["content"], where, f"messages[{i}].content")
    if msgs[-1]["role"] != "user":
        raise UserError(f"{where}: messages must end with a user turn (the assistant answers it), "
                        f"not {msgs[-1]['role']!r}")
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
    rest = msgs[1:] if system is not None else msgs
    return system, tuple((m["role"], m["content"]) for m in rest[:-1]), rest[-1]["content"]


def _encodable(text: str, where: str, key: str) -> None:
    try:  # valid JSON can hold a lone surrogate ("\ud800") that no file or tokenizer can encode
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{where}: field `{key}` is not valid Unicode ({e.reason} at character {e.start})") from None


def _record(row: dict, where: str, default_domain: str, source: str) -> PromptRecord:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with a `prompt` field, got {type(row).__name__}")
    if "messages" in row:
        if "prompt" in row or "system" in row:
            raise UserError(f"{where}: give `messages` or `prompt` (+ `system`), not both")
        system, context, text = _turns(row["messages"], where)
        row = {**row, "prompt": text, "system": system}
    else:
        context = ()
    if "prompt" not in row:
        raise UserError(f"{where}: missing field `prompt` (or `messages`)")
    text = row["prompt"]
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: field `prompt` must be a non-empty string")
    for key in ("id", "domain", "system", "kind"):
        if row.get(key) is not None and not isinstance(row[key], (str, int)):
            raise UserError(f"{where}: field `{key}` must be a string")
    for key in ("prompt", "id", "domain", "system"):
        if isinstance(row.get(key), str):
            _encodable(row[key], where, key)
    system = row.get("system")
    # content-derived, so the same conversation keeps its id across runs and files; it covers every part that
    # makes two prompts different (system, earlier turns, last turn). A plain prompt (no system, one turn)
    # hashes its text alone, as ids always did, so existing run dirs' ledgers and splits stay valid.
    auto = _auto_id(text) if system is None and not context else _auto_id(json.dumps([system, context, text]))
    pid = str(row["id"]) if row.get("id") is not None else auto
    kind = str(row["kind"]) if row.get("kind") is not None else None
    return PromptRecord(pid, text, str(row.get("domain") or default_domain), source, system, context, kind,
                        _checks(row.get("checks"), where), where)


def _checks(specs, where: str) -> tuple:
    """A prompt row's own `checks` (the same kinds as a constitution's), or one line naming the row and entry."""
    if specs is None:
        return ()
    from pydantic import ValidationError

    from . import checks
    from .yamlio import validation_error

    if not isinstance(specs, list):
        raise UserError(f"{where}: field `checks` must be a list of checks ({{id, kind, ...}})")
    try:
        out = tuple(checks.parse(specs))
    except ValidationError as e:
        raise validation_error(e, {"checks": specs}, where, tags=checks.kinds(), prefix=["checks"],
                               model=list[checks.annotation()]) from None
    ids = [c.id for c in out]
    for i, c in enumerate(out):
        if c.id in ids[:i]:  # a row's results are keyed by check id: the second would overwrite the first's
            raise UserError(f"{where}: checks[{i}]: check id {c.id!r} is used twice in the row")
    if any(c.needs_engine for c in out):
        raise UserError(f"{where}: checks: a prompt row's checks must be deterministic or classifier checks "
                        "(judge checks belong to a constitution's principles)")
    return out


class Prompts(list):
    """The loaded prompts, and how many exact duplicates (same system, turns and text) were dropped."""
    duplicates: int = 0


def _dedupe(recs: list[PromptRecord], where: str, keep_duplicates: bool = False) -> Prompts:
    """Exact duplicate rows (same system, turns, text, kind and checks) are dropped (reported), unless kept; the
    same text with another `kind` or `checks` is another row (it is checked otherwise), which needs its own id;
    an id given twice to different prompts is an error (which one did the user mean?)."""
    out, seen_id, seen_text = Prompts(), {}, set()
    for i, r in enumerate(recs):
        # hashable: context is (role, content) pairs; checks by their validated spec
        key = (r.system, r.context, r.prompt, r.kind,
               json.dumps([c.model_dump(mode="json") for c in r.checks], sort_keys=True))
        if key in seen_text and not keep_duplicates:
            out.duplicates += 1
            continue
        if r.id in seen_id:
            first, first_key = seen_id[r.id]
            if key[:3] == first_key[:3] and key != first_key:
                raise UserError(f"{where}: rows {first + 1} and {i + 1} are the same prompt (id {r.id!r}) with another "
                                "`kind` or `checks`: give each row its own `id`, or the same kind and checks")
            if key != first_key:  # the same id for another prompt (not merely another prompt's content again)
                raise UserError(f"{where}: duplicate prompt id {r.id!r} (rows {first + 1} and {i + 1})")
            # kept on purpose: the same prompt again, so number the copy (its split and shard follow base_id)
            r = PromptRecord(copy_id(r.id, i), r.prompt, r.domain, r.source, r.system, r.context, r.kind, r.checks)
        seen_id.setdefault(r.id, (i, key))
        seen_text.add(key)
        out.append(r)
    if not out:
        raise UserError(f"{where}: no prompts")
    return out


def from_set(name: str, include: Iterable[str] = ()) -> list[dict]:
    """The first prompts/<name>.yaml on the search path: the user's include dirs, then the built-ins."""
    file = paths.find("prompts", name, include)
    if file is None:
        where = ", ".join(map(str, paths.folders("prompts", include)))
        raise UserError(f"prompts: no prompt set {name!r} in {where} (have: {', '.join(available(include))})")
    data = load_yaml(file)
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise UserError(f"{file}: expected a mapping with a `prompts:` list")
    default = str(data.get("domain") or name)
    return [_record(r, f"{file}: prompts[{i}]", default, f"set:{name}") for i, r in enumerate(data["prompts"])]


def from_jsonl(path: str) -> list[PromptRecord]:
    """One JSON object per line: `prompt` (+ `system`), or `messages` (a multi-turn context ending with a user
    turn); optional `id`, `domain`."""
    file = Path(path).expanduser()
    return [_record(row, f"{file}:{n}", "general", f"file:{file.name}") for n, row in read_jsonl(file)]


# "train", "train[:1000]", "train[10%:20%]", "test[-50:]": datasets' own split syntax, also for load_from_disk
SPLIT = re.compile(r"^([\w.-]+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


def _slice(ds, spec: str, where: str):
    m = SPLIT.match(spec)
    lo, hi = m.group(2), m.group(3)
    if lo is None and hi is None:
        return ds
    n = len(ds)
    to_i = lambda v, d: d if v is None else (round(n * int(v[:-1]) / 100) if v.endswith("%") else int(v))  # noqa: E731
    return ds.select(range(n)[slice(to_i(lo, 0), to_i(hi, n))])


def _load_hub(datasets, name, config, split, revision, data_files):
    """load_dataset of a hub name (or a builder such as json with data_files): a hub repo is looked up once first
    (cai_gen/hubcheck.py), so an unreachable Hub is one line from the local cache instead of retries per file."""
    from . import hubcheck

    hub_repo = "/" in name and not Path(name).expanduser().exists()
    if not hub_repo:
        return datasets.load_dataset(name, config, split=split, revision=revision, data_files=data_files)
    why = "HF_HUB_OFFLINE is set" if hubcheck.offline() else hubcheck.reachable(name, "dataset", "prompts.dataset")
    if why is None:
        return datasets.load_dataset(name, config, split=split, revision=revision, data_files=data_files)
    with hubcheck.offline_mode():
        try:
            return datasets.load_dataset(name, config, split=split, revision=revision, data_files=data_files)
        except Exception as e:  # noqa: BLE001  (not in the cache, whatever type datasets raises for it)
            raise UserError(f"prompts.dataset: cannot reach the Hub ({why}) and {name!r} is not in the local "
                            f"cache ({type(e).__name__})") from None


def from_dataset(name: str, split: str, column: str, id_column: str | None, domain_column: str | None,
                 messages_column: str | None = None, config: str | None = None, revision: str | None = None,
                 data_files=None) -> list[PromptRecord]:
    import datasets

    m = SPLIT.match(split)
    if m is None:
        raise UserError(f"prompts.split: {split!r} is not a split (e.g. train, train[:1000], train[10%:20%])")
    try:
        local = Path(name)
        if local.is_dir() and any((local / f).exists() for f in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(name)
            ds = _slice(ds[m.group(1)] if isinstance(ds, datasets.DatasetDict) else ds, split, name)
        else:
            ds = _load_hub(datasets, name, config, split, revision, data_files)
    except UserError:
        raise
    except Exception as e:  # datasets raises many types for a bad name/split; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"prompts.dataset: cannot load {name!r} split {split!r}: {first}") from None
    text_col = messages_column or column
    for col in (text_col, id_column, domain_column):
        if col and col not in ds.column_names:
            raise UserError(f"prompts.dataset {name!r}: no column {col!r} (have: {', '.join(ds.column_names)})")
    recs = []
    for i, row in enumerate(ds):
        r = {"messages": row[text_col]} if messages_column else {"prompt": row[column]}
        if id_column:
            r["id"] = row[id_column]
        if domain_column:
            r["domain"] = row[domain_column]
        recs.append(_record(r, f"{name}[{split}] row {i}", "general", f"dataset:{name}"))
    return recs


def load(name: str | None, path: str | None, dataset: str | None, split: str = "train", column: str = "prompt",
         id_column: str | None = None, domain_column: str | None = None, limit: int | None = None,
         include: Iterable[str] = (), *, messages_column: str | None = None, config: str | None = None,
         revision: str | None = None, data_files=None, keep_duplicates: bool = False,
         kind: str | None = None) -> Prompts:
    """The run's prompts from one source; exact duplicate conversations dropped (counted in .duplicates)."""
    if path:
        recs, where = from_jsonl(path), str(Path(path).expanduser())
    elif dataset:
        recs, where = from_dataset(dataset, split, column, id_column, domain_column, messages_column, config,
                                   revision, data_files), dataset
    elif name:
        recs, where = from_set(name, include), f"prompts={name}"
    else:
        raise UserError("prompts: set prompts=<name>, prompts.path=FILE.jsonl or prompts.dataset=NAME")
    if kind:  # a dataset of one kind (a public harmful-behaviour set): what `when: {kind: ...}` checks match
        recs = [r if r.kind else replace(r, kind=kind) for r in recs]
    out = _dedupe(recs, where, keep_duplicates)
    if limit:
        out, dup = Prompts(out[:limit]), out.duplicates
        out.duplicates = dup
    # split groups over the run's prompts before any shard is taken, so shards split as the whole run does
    out[:] = [replace(r, group=g) for r, g in zip(out, groups([r.users() for r in out]))]
    return out


def shard(recs: list[PromptRecord], index: int, count: int) -> list[PromptRecord]:
    """This shard's prompts: a hash of the prompt id picks the shard, so a prompt's shard never depends on
    the order, the other prompts or how many there are (a grown prompt set keeps old prompts where they were).
    Every row's randomness is keyed by its prompt id, so the shards together equal the unsharded run."""
    if count == 1:
        return recs
    # by the prompt a kept copy is of (ids.base_id), so all copies of one prompt run in one shard
    pick = lambda r: int.from_bytes(hashlib.sha256(base_id(r.id).encode()).digest()[:8], "big") % count  # noqa: E731
    return [r for r in recs if pick(r) == index]
