"""Safe YAML/JSONL reading with one-line errors that name the file and line."""
from __future__ import annotations

import json
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
        raise UserError(f"{path}{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a bad line is one error naming it."""
    out = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{n}: expected a JSON object per line")
        out.append((n, rec))
    return out


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
