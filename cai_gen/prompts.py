"""Prompt sources -> PromptRecord: a built-in set (prompts/<name>.yaml), a JSONL file, or a HF dataset."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from collections.abc import Iterable
from pathlib import Path

from . import paths
from .errors import UserError
from .yamlio import load_yaml, read_text


@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: str
    domain: str
    source: str
    system: str | None = None


def available(include: Iterable[str] = ()) -> list[str]:
    """Names selectable as prompts=<name>: every prompts/*.yaml on the search path (cai_gen/paths.py)."""
    return paths.names("prompts", include)


def _auto_id(text: str) -> str:
    # content-derived, so the same prompt keeps its id across runs and files
    return "p-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _record(row: dict, where: str, default_domain: str, source: str) -> PromptRecord:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with a `prompt` field, got {type(row).__name__}")
    if "prompt" not in row:
        raise UserError(f"{where}: missing field `prompt`")
    text = row["prompt"]
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: field `prompt` must be a non-empty string")
    for key in ("id", "domain", "system"):
        if row.get(key) is not None and not isinstance(row[key], (str, int)):
            raise UserError(f"{where}: field `{key}` must be a string")
    for key in ("prompt", "id", "domain", "system"):
        if isinstance(row.get(key), str):
            try:  # valid JSON can hold a lone surrogate ("\ud800") that no file or tokenizer can encode
                row[key].encode("utf-8")
            except UnicodeEncodeError as e:
                raise UserError(f"{where}: field `{key}` is not valid Unicode ({e.reason} at character "
                                f"{e.start})") from None
    pid = str(row["id"]) if row.get("id") is not None else _auto_id(text)
    return PromptRecord(pid, text, str(row.get("domain") or default_domain), source, row.get("system"))


def _dedupe(recs: list[PromptRecord], where: str) -> list[PromptRecord]:
    seen: dict[str, int] = {}
    for i, r in enumerate(recs):
        if r.id in seen:
            raise UserError(f"{where}: duplicate prompt id {r.id!r} (rows {seen[r.id] + 1} and {i + 1})")
        seen[r.id] = i
    if not recs:
        raise UserError(f"{where}: no prompts")
    return recs


def from_set(name: str, include: Iterable[str] = ()) -> list[PromptRecord]:
    """The first prompts/<name>.yaml on the search path: the user's include dirs, then the built-ins."""
    file = paths.find("prompts", name, include)
    if file is None:
        where = ", ".join(map(str, paths.folders("prompts", include)))
        raise UserError(f"prompts: no prompt set {name!r} in {where} (have: {', '.join(available(include))})")
    data = load_yaml(file)
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise UserError(f"{file}: expected a mapping with a `prompts:` list")
    default = str(data.get("domain") or name)
    return _dedupe([_record(r, f"{file}: prompts[{i}]", default, f"set:{name}") for i, r in enumerate(data["prompts"])],
                   str(file))


def from_jsonl(path: str) -> list[PromptRecord]:
    file = Path(path).expanduser()
    recs = []
    for n, line in enumerate(read_text(file).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{file}:{n}: invalid JSON: {e.msg} (column {e.colno})") from None
        recs.append(_record(row, f"{file}:{n}", "general", f"file:{file.name}"))
    return _dedupe(recs, str(file))


def from_dataset(name: str, split: str, column: str, id_column: str | None, domain_column: str | None) -> list[PromptRecord]:
    import datasets

    try:
        local = Path(name)
        if local.is_dir() and any((local / f).exists() for f in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(name)
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types for a bad name/split; the user needs one line
        raise UserError(f"prompts.dataset: cannot load {name!r} split {split!r}: {str(e).splitlines()[0]}") from None
    for col in (column, id_column, domain_column):
        if col and col not in ds.column_names:
            raise UserError(f"prompts.dataset {name!r}: no column {col!r} (have: {', '.join(ds.column_names)})")
    recs = []
    for i, row in enumerate(ds):
        r = {"prompt": row[column]}
        if id_column:
            r["id"] = row[id_column]
        if domain_column:
            r["domain"] = row[domain_column]
        recs.append(_record(r, f"{name}[{split}] row {i}", "general", f"dataset:{name}"))
    return _dedupe(recs, name)


def load(name: str | None, path: str | None, dataset: str | None, split: str = "train", column: str = "prompt",
         id_column: str | None = None, domain_column: str | None = None, limit: int | None = None,
         include: Iterable[str] = ()) -> list[PromptRecord]:
    if path:
        recs = from_jsonl(path)
    elif dataset:
        recs = from_dataset(dataset, split, column, id_column, domain_column)
    elif name:
        recs = from_set(name, include)
    else:
        raise UserError("prompts: set prompts=<name>, prompts.path=FILE.jsonl or prompts.dataset=NAME")
    return recs[:limit] if limit else recs


def shard(recs: list[PromptRecord], index: int, count: int) -> list[PromptRecord]:
    """This shard's prompts: a hash of the prompt id picks the shard, so a prompt's shard never depends on
    the order, the other prompts or how many there are (a grown prompt set keeps old prompts where they were).
    Every row's randomness is keyed by its prompt id, so the shards together equal the unsharded run."""
    if count == 1:
        return recs
    pick = lambda r: int.from_bytes(hashlib.sha256(r.id.encode()).digest()[:8], "big") % count  # noqa: E731
    return [r for r in recs if pick(r) == index]
