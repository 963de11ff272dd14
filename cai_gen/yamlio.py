"""Safe YAML/JSONL reading with one-line errors that name the file and line."""
from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from pathlib import Path

import yaml

from .errors import UserError


def read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte 0x{e.object[e.start]:02x})") from None


def load_yaml(path: Path):
    text = read_text(path)
    try:
        # safe_load: tags like !!python/object are refused, never constructed
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: invalid YAML: {_words(e)}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None


# The parser's own words for the usual slips, and what they mean to the person who typed them
_SLIPS = [
    (("expected <block end>", "did not find expected key", "did not find expected '-' indicator"),
     "bad indentation: this line lines up with no key or list item above it (indent it like its siblings)"),
    (("mapping values are not allowed here",),
     "a `key:` where none can be: this line is indented deeper than the key above it, or a value holding ': ' "
     "needs quotes"),
    (("could not find expected ':'",),
     "a line that is no `key: value` where one is expected (a missing ':' or bad indentation)"),
    (("found character '\\t'",), "a tab in the indentation (YAML indents with spaces)"),
]


def _words(e: yaml.MarkedYAMLError) -> str:
    """One readable phrase for a YAML syntax error (the parser's "expected <block end>, but found '<block mapping
    start>'" says nothing to someone who indented a line by three spaces instead of four)."""
    said = f"{e.context or ''} {e.problem or ''}"
    for needles, words in _SLIPS:
        if any(n in said for n in needles):
            return words
    return e.problem or e.context or "cannot be parsed"


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file, one at a time (memory stays flat however
    big the file): the package's one JSONL reader. A bad line is one error naming file and line.

    Lines end at "\\n" only: str.splitlines() (and universal-newline text mode, for "\\r") also break lines at
    U+2028, U+2029, U+0085 and friends, which JSON allows raw inside a string and our writers write raw
    (ensure_ascii=False), so a file with one would read as damaged. A "\\r" before the "\\n" is JSON whitespace."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with open(path, "rb") as f:  # binary lines end at b"\n" and nowhere else
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{n}: not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(rec, dict):
                raise UserError(f"{path}:{n}: expected an object (one JSON object per line), "
                                f"got {type(rec).__name__}")
            yield n, rec


def jsonl_rows(path: Path) -> Iterator[dict]:
    """read_jsonl's objects without their line numbers."""
    return (rec for _, rec in read_jsonl(path))


def pydantic_msg(err: dict, data) -> str:
    """'principles[3] (id=foo).critique: Field required' from one pydantic error."""
    parts, node = [], data
    for p in err["loc"]:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{p}]"]
            try:
                node = node[p]
                if isinstance(node, dict) and "id" in node:
                    parts[-1] += f" (id={node['id']})"
            except (IndexError, KeyError, TypeError):
                node = None
        else:
            parts.append(str(p))
            node = node.get(p) if isinstance(node, dict) else None
    return f"{'.'.join(parts) or 'top level'}: {err['msg']}"


def _fields(model, loc, tags) -> list[str]:
    """The keys allowed where an unknown key `loc[-1]` was found: walk the pydantic annotations from `model`
    along the error's path (a discriminated union's tag in the path picks its class from `tags`)."""
    import types
    import typing

    from pydantic import BaseModel

    def models(ann):  # the pydantic classes an annotation can hold (through Annotated, Optional, Union)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return [ann]
        if typing.get_origin(ann) in (typing.Annotated, typing.Union, types.UnionType):
            return [m for a in typing.get_args(ann) for m in models(a)]
        return []

    ann = model
    for k, part in enumerate(loc[:-1]):
        if isinstance(part, int):  # an item of a list
            while typing.get_origin(ann) is typing.Annotated:
                ann = typing.get_args(ann)[0]
            args = typing.get_args(ann)
            ann = args[0] if typing.get_origin(ann) is list and args else None
        elif part in tags and k and isinstance(loc[k - 1], int):
            ann = tags[part]
        else:
            ann = next((m.model_fields[part].annotation for m in models(ann) if part in m.model_fields), None)
        if ann is None:
            return []
    return [f for m in models(ann) for f in m.model_fields]


def validation_error(e, data, where: str, *, line=None, tags=(), prefix=(), model=None) -> UserError:
    """One line for a pydantic ValidationError `e` about `data`: 'WHERE[:LINE]: field.path: message', the one
    format of every file's validation errors (constitution.load, a prompt row's checks). `line(loc)`: the
    line in WHERE of a key path, or None; `tags`: the names pydantic puts in a path for a discriminated union
    (a check's kind), not keys of the file; `prefix`: the path `data` sits at (a prompt row's ["checks"]);
    `model`: the type `data` was validated as, so a misspelt key gets a did-you-mean (`critque`: critique)."""
    # an unknown argument says more than the "field required" a misspelt one also causes
    err = next((x for x in e.errors() if x["type"] == "extra_forbidden"), e.errors()[0])
    raw, msg = list(err["loc"]), err["msg"]
    if raw and raw[-1] == "[key]":  # a Literal-keyed dict (synth.mix, synth.axes): the key itself is unknown
        raw, msg = raw[:-1], "unknown key; " + msg.replace("Input should be", "use")
    elif err["type"] == "extra_forbidden" and model is not None and raw and isinstance(raw[-1], str):
        close = difflib.get_close_matches(raw[-1], _fields(model, raw, dict(tags)), n=1, cutoff=0.7)
        msg += f" (did you mean {close[0]}?)" if close else ""
    # a union's tag comes right after the list index of the entry it picked (checks[0].regex.pattern)
    loc = [*prefix, *(x for k, x in enumerate(raw)
                      if not (x in tags and isinstance(x, str) and k and isinstance(raw[k - 1], int)))]
    n = line(loc) if line else None
    return UserError(f"{where}{f':{n}' if n else ''}: {pydantic_msg({**err, 'loc': loc, 'msg': msg}, data)}")


def line_of(path: Path, loc) -> int | None:
    """The 1-based line of a key path (pydantic's error loc: keys, list indexes, a trailing "[key]") in a YAML
    file, so an error can say file:line; None when the file does not hold the whole path (an included base)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = None
    for part in loc:
        if part == "[key]":
            break  # the key itself is what is wrong: its line is already `line`
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            if hit is None:
                return None
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return None
    return line
