"""Constitutions: YAML data (one domain per file), validated, merged with an `include:` base, hashed, sampled.

Merge rule for `include:`: scalar keys, local wins; `principles` merge by id (a local principle replaces the
base's principle of the same id, new ids are appended); `few_shot` local examples come first, then the base's.
`include: FILE` is read relative to the including file; when there is no such file, from the constitution folders
on the search path (cai_gen/paths.py), so a user's constitution anywhere can include the built-in `_base.yaml`.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationError,
                      field_validator, model_validator)

from . import checks as checks_mod, paths
from .errors import UserError
from .yamlio import line_of, load_yaml, validation_error


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    critique: str = Field(min_length=1)  # the critique request: what to look for in the response
    revision: str = Field(min_length=1)  # the revision request: how to rewrite it
    weight: float = Field(1.0, gt=0)     # relative sampling weight
    tags: list[str] = []
    # the outside signal: does an answer violate this principle? (cai_gen/checks: one registry of kinds)
    checks: list[checks_mod.annotation()] = []  # type: ignore[valid-type]


class FewShot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    principle: str
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)


# cai_gen.synth: the kinds of prompt it writes, and the variety axes its instruction template knows how to phrase.
# A fixed set of axis names, so a typo ("chanel") is an error instead of an axis the model is never told about.
SYNTH_KINDS = ("targeted", "borderline", "ordinary")
SYNTH_AXES = ("persona", "expertise", "region", "language_style", "channel", "tone")
DEFAULT_MIX = {"targeted": 0.4, "borderline": 0.3, "ordinary": 0.3}
DEFAULT_AXES = {
    "persona": ["new customer", "long-time customer", "frustrated customer", "small business owner"],
    "channel": ["chat", "email", "phone transcript"],
    "tone": ["polite", "terse", "angry", "confused"],
}


AxisName = Literal["persona", "expertise", "region", "language_style", "channel", "tone"]  # = SYNTH_AXES
AxisValues = Annotated[list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]], Field(min_length=1)]


class Synth(BaseModel):
    """How `python -m cai_gen.synth` writes prompts for this domain. Absent: DEFAULT_MIX and DEFAULT_AXES.
    Keys are Literals, so an unknown kind or axis is reported at that key (file:line), not at the whole block."""
    model_config = ConfigDict(extra="forbid")
    mix: dict[Literal["targeted", "borderline", "ordinary"], float] = Field(default_factory=lambda: dict(DEFAULT_MIX))
    axes: dict[AxisName, AxisValues] = Field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_AXES.items()})

    @field_validator("mix")
    @classmethod
    def _mix(cls, m):
        if any(v < 0 for v in m.values()):
            raise ValueError(f"shares must be >= 0, got {m}")
        if abs(sum(m.values()) - 1) > 0.01:
            raise ValueError(f"shares must sum to 1, got {round(sum(m.values()), 4)}")
        return m


class Guideline(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)  # a rating key in review.sqlite and the reviewed rows
    text: str = ""  # the question a reviewer rates by, shown on the review page


class ReviewGuide(BaseModel):
    """The team's annotation guide for `python -m cai_gen.review` (absent: cai_gen.review.api.RUBRIC's four)."""
    model_config = ConfigDict(extra="forbid")
    guidelines: list[Guideline] = Field(default_factory=list)  # rated 1-5 per answer; empty: the defaults
    tags: list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]] = []  # reason tags


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    version: int | str = 1
    description: str = ""
    # free: rewrite as needed | minimal: change only what the critique requires (CLAIR, arXiv 2408.06266)
    revision_style: Literal["free", "minimal"] = "free"
    # model: the model critiques | checks: a principle whose checks fail takes its critique from their findings
    critique_from: Literal["model", "checks"] = "model"
    principles: list[Principle] = Field(min_length=1)
    few_shot: list[FewShot] = []
    synth: Synth | None = None  # cai_gen.synth's mix and axes (None: the defaults); not part of the hash
    review: ReviewGuide | None = None  # the review page's guidelines and reason tags; not part of the hash
    _files: list = PrivateAttr(default_factory=list)  # the YAML files it was read from (errors name file:line)

    @field_validator("principles")
    @classmethod
    def _unique(cls, ps):
        seen = set()
        for i, p in enumerate(ps):
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r} at principles[{i}]")
            seen.add(p.id)
        return ps

    @model_validator(mode="after")
    def _check_ids(self):
        seen: dict[str, str] = {}
        for p in self.principles:
            for c in p.checks:
                if c.id in seen:
                    raise ValueError(f"check id {c.id!r} is used twice (principles {seen[c.id]!r} and {p.id!r}): "
                                     "a check's id names it in every row's results")
                seen[c.id] = p.id
        return self

    @model_validator(mode="after")
    def _few_shot_known(self):
        ids = {p.id for p in self.principles}
        for i, fs in enumerate(self.few_shot):
            if fs.principle not in ids:
                raise ValueError(f"few_shot[{i}] names unknown principle {fs.principle!r}")
        return self

    @property
    def _defaulted(self) -> set[str]:
        """Keys added after constitutions were first hashed, left out at their default: every ref stays as it was."""
        return {"critique_from"} if self.critique_from == "model" else set()

    @property
    def hash(self) -> str:
        # `synth` only steers prompt writing: leaving it out keeps every run's constitution ref (and its run dirs'
        # fingerprints) unchanged when a team tunes the synth mix
        d = self.model_dump(mode="json", exclude={"synth", "review"} | self._defaulted)
        for p in d["principles"]:
            if not p["checks"]:
                del p["checks"]  # a constitution without checks keeps the ref it had before checks existed
        blob = json.dumps(d, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}#{self.hash}"

    @property
    def generation_hash(self) -> str:
        """The hash of what decides the requests' text, checks left out: a changed threshold or an added check
        re-decides what is kept from the ledger (the run dir's fingerprint uses this, so no restart is needed)."""
        d = self.model_dump(mode="json", exclude={"synth", "review"} | self._defaulted)
        for p in d["principles"]:
            p.pop("checks", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]

    @property
    def checked(self) -> bool:
        return any(p.checks for p in self.principles)

    def without_checks(self) -> "Constitution":
        """The same constitution with no checks (principles.checks=false): its ref is the one it has without them."""
        out = self.model_copy(update={"principles": [p.model_copy(update={"checks": []}) for p in self.principles]})
        out._files = self._files
        return out

    def where(self, check_id: str) -> str:
        """file:line of a check's entry (its `id:` line), for one-line errors about it."""
        pat = re.compile(rf"""\bid:\s*["']?{re.escape(check_id)}["']?\s*[,}}\n]""")
        for f in self._files:
            try:
                text = Path(f).read_text(encoding="utf-8")
            except OSError:
                continue
            m = pat.search(text)
            if m:
                return f"{f}:{text[:m.start()].count(chr(10)) + 1}"
        return str(self._files[0]) if self._files else self.name

    def principle(self, pid: str) -> Principle:
        return next(p for p in self.principles if p.id == pid)

    def sample(self, rounds: int, *key) -> list[str]:
        """Weighted principle ids for `rounds` rounds, a different one each round while any are left.

        Seeded by `key` (seed, prompt id, sample) alone, so a row's choice does not depend on run order."""
        rng = random.Random(json.dumps(key))
        pool, out = list(self.principles), []
        for _ in range(rounds):
            if not pool:
                pool = list(self.principles)
            p = rng.choices(pool, weights=[q.weight for q in pool])[0]
            pool.remove(p)
            out.append(p.id)
        return out


def available(include: Iterable[str] = ()) -> list[str]:
    """Names selectable as constitution=<name>: every constitutions/*.yaml on the search path not starting with
    '_' (bases)."""
    return paths.names("constitutions", include)


def _raw(path: Path, seen: tuple[Path, ...] = (), bases: tuple[Path, ...] = (), files: list | None = None) -> dict:
    path = path.resolve()
    if files is not None:
        files.append(path)
    if path in seen:
        raise UserError(f"{path}: include cycle ({' -> '.join(p.name for p in seen + (path,))})")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a constitution must be a YAML mapping, got {type(data).__name__}")
    inc = data.pop("include", None)
    if inc is None:
        return data
    if not isinstance(inc, str):
        raise UserError(f"{path}: include: must be a file name, got {inc!r}")
    near = path.parent / inc
    file = next((f for f in (near, *(b / inc for b in bases)) if f.is_file()), near)  # none: "file not found" names it
    base = _raw(file, seen + (path,), bases, files)
    merged = {**base, **{k: v for k, v in data.items() if k not in ("principles", "few_shot")}}
    local = data.get("principles") or []
    if not isinstance(local, list):
        raise UserError(f"{path}: principles: must be a list")
    by_id = {p.get("id"): p for p in local if isinstance(p, dict)}
    merged["principles"] = [_merge_principle(p, by_id.pop(p.get("id"))) if isinstance(p, dict) and p.get("id") in by_id
                            else p for p in base.get("principles") or []]
    merged["principles"] += [p for p in local if not isinstance(p, dict) or p.get("id") in by_id]
    merged["few_shot"] = list(data.get("few_shot") or []) + list(base.get("few_shot") or [])
    return merged


def _principle_line(file: Path, data: dict, loc: list) -> int | None:
    """The line of principles[i]... in the file that holds it: the top file's own list may be shorter or ordered
    differently than the merged one, so find the principle there by its id."""
    if len(loc) < 2 or loc[0] != "principles" or not isinstance(loc[1], int):
        return None
    try:
        pid = data["principles"][loc[1]].get("id")
        own = load_yaml(file).get("principles") or []
        i = next(k for k, p in enumerate(own) if isinstance(p, dict) and p.get("id") == pid)
    except (IndexError, KeyError, AttributeError, StopIteration, UserError):
        return None
    rest = loc[2:]  # without the union's tag ("regex"): validation_error took it out
    for k in range(len(rest), -1, -1):
        line = line_of(file, ["principles", i, *rest[:k]])
        if line is not None:
            return line
    return None


def _merge_principle(base: dict, local: dict) -> dict:
    """A local principle replaces the base's of the same id; its `checks` merge by id (local wins, new appended)."""
    if "checks" not in local or not isinstance(local["checks"], list) or not isinstance(base.get("checks"), list):
        return local if "checks" in local else {**local, **({"checks": base["checks"]} if "checks" in base else {})}
    mine = {c.get("id"): c for c in local["checks"] if isinstance(c, dict)}
    out = [mine.pop(c.get("id")) if isinstance(c, dict) and c.get("id") in mine else c for c in base["checks"]]
    return {**local, "checks": out + [c for c in local["checks"] if not isinstance(c, dict) or c.get("id") in mine]}


def load(name: str | None = None, path: str | None = None, include: Iterable[str] = ()) -> Constitution:
    """constitution.path=FILE, else the first constitutions/<name>.yaml on the search path (include dirs first)."""
    bases = tuple(paths.folders("constitutions", include))
    if path:
        file = Path(path).expanduser()
    elif name:
        file = paths.find("constitutions", name, include)
        if file is None:
            raise UserError(f"constitution: no constitution named {name!r} in {', '.join(map(str, bases))} "
                            f"(have: {', '.join(available(include))}); or set constitution.path=FILE")
    else:
        raise UserError("constitution: set constitution=<name> or constitution.path=FILE")
    files: list[Path] = []
    data = _raw(file, bases=bases, files=files)
    try:
        const = Constitution.model_validate(data)
        const._files = files
        return const
    except ValidationError as e:
        # `synth` is taken whole from one file (scalar merge), so its line is exact where the top file has it; a
        # principle's entry (its checks) is found by its id in the top file
        def line(loc):
            top = loc and (loc[0] == "synth" or len(loc) == 1)  # a top-level key: its own line in the file
            return line_of(file, loc) if top else _principle_line(file, data, loc)
        raise validation_error(e, data, str(file), line=line, tags=checks_mod.kinds(), model=Constitution) from None
