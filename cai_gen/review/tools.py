"""Label Studio and Argilla: their documented JSON formats for the blind tasks of tasks.py, written and read here
without either tool as a dependency.

Label Studio: FILE is a JSON list of tasks (`[{"data": {...}}]`, Import in a project) and FILE's
`.label_config.xml` the labelling interface to paste in (Settings > Labeling Interface > Code): its Pairwise
control over the answers A and B (the documented pairwise template), a Choices control for the other verdicts,
TextAreas for the edit and the comment, a Rating per guideline and answer, and the task's reasons as dynamic
Choices (`value="$tag_options"`). Answers are Text objects: model text is shown as plain text, never as HTML.
Import reads Label Studio's JSON export (tasks with `annotations`: `result` items by control name,
`completed_by`, `lead_time`, `was_cancelled`).

Argilla (v2): FILE is a JSON list of records as `Record.to_dict()` writes them (`rg.Record.from_dict`) and FILE's
`.settings.json` the dataset settings (`rg.Settings.from_json`): text fields, a label question for the verdict,
text questions, a rating question per guideline and answer, a multi-label question for the reasons. Import reads
`dataset.records.to_json(...)`: `responses` per question, each with its `user_id`.
"""
from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from ..errors import UserError
from ..store import atomic_write
from ..yamlio import read_text
from . import api, db
from .tasks import MEANING, Context, Note, read_flat, slug, store, tasks, write_flat

OTHER = ("tie", "reject", "edit", "skip")  # the verdicts that are not a pick of A or B


def sibling(path: Path, suffix: str) -> Path:
    """tasks.json -> tasks.label_config.xml / tasks.settings.json."""
    return path.with_name(path.stem + suffix)


def _load(path: Path) -> list:
    try:
        data = json.loads(read_text(path))
    except ValueError as e:
        raise UserError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list (the tool's export of tasks / records)")
    return data


def _text(v) -> str | None:
    if isinstance(v, list):  # TextArea results are a list of lines
        v = "\n".join(str(x) for x in v)
    return v if isinstance(v, str) and v.strip() else None


# ---- Label Studio ----

def label_config(ctx: Context) -> str:
    g = "\n".join(f"  <Header value={quoteattr(x['name'] + ': ' + x['text'])} size=\"6\"/>\n"
                  f"  <View style=\"display: flex; gap: 2em;\">\n"
                  f"    <View><Header value=\"A\" size=\"6\"/><Rating name=\"{ctx_name('A', x)}\" toName=\"A\" "
                  f"maxRating=\"{db.SCALE[1]}\"/></View>\n"
                  f"    <View><Header value=\"B\" size=\"6\"/><Rating name=\"{ctx_name('B', x)}\" toName=\"B\" "
                  f"maxRating=\"{db.SCALE[1]}\"/></View>\n  </View>" for x in ctx.guidelines)
    choices = "\n".join(f"    <Choice value={quoteattr(MEANING[k])} alias=\"{k}\"/>" for k in OTHER)
    return f"""<View>
  <!-- cai_gen blind review: nothing here or in a task says how A and B were made -->
  <Text name="system" value="$system"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Principles the pair was written for" size="6"/>
  <Text name="principles" value="$principles"/>
  <Header value={quoteattr("Click the better answer, or choose another outcome below (it overrides the click)")}/>
  <Pairwise name="pick" toName="A,B"/>
  <View style="display: flex; gap: 1em;">
    <View style="flex: 1;"><Header value="A"/><Text name="A" value="$A"/></View>
    <View style="flex: 1;"><Header value="B"/><Text name="B" value="$B"/></View>
  </View>
  <Choices name="verdict" toName="prompt" choice="single">
{choices}
  </Choices>
  <TextArea name="rewrite" toName="prompt" rows="6" maxSubmissions="1" editable="true" placeholder={quoteattr(escape("Edit: the answer to choose instead"))}/>
  <TextArea name="comment" toName="prompt" rows="2" maxSubmissions="1" editable="true" placeholder="Comment (a skip says why)"/>
  <Header value={quoteattr(f"Ratings, {db.SCALE[0]} poor to {db.SCALE[1]} excellent")}/>
{g}
  <Header value="Reasons" size="6"/>
  <Choices name="tags" toName="prompt" choice="multiple" value="$tag_options"/>
</View>
"""


def ctx_name(side: str, g: dict) -> str:
    return f"{side.lower()}_{slug(g['name'])}"  # as Context.rating_names names it


def write_label_studio(conn, ctx: Context, path: Path) -> int:
    ctx.rating_names()  # names that collide are refused before anything is written
    ts = tasks(conn, ctx)
    out = [{"data": {**t, "tag_options": [{"value": x} for x in t["tag_options"]]}} for t in ts]
    atomic_write(path, json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    atomic_write(sibling(path, ".label_config.xml"), label_config(ctx))
    return len(ts)


def _annotator(a: dict) -> str | None:
    who = a.get("completed_by")
    if isinstance(who, dict):  # newer exports: {"id", "email", "first_name", "last_name"}
        return who.get("email") or (f"label-studio-{who['id']}" if who.get("id") is not None else None)
    if isinstance(who, int) and not isinstance(who, bool):  # older exports: the user's number only
        return f"label-studio-{who}"
    return who if isinstance(who, str) and who else None


def read_label_studio(ctx: Context, path: Path) -> list[Note]:
    ratings = ctx.rating_names()
    notes = []
    for i, t in enumerate(_load(path), 1):
        if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
            raise UserError(f"{path}: task {i}: not a Label Studio task (no `data` object: export the project as "
                            "JSON, not JSON-MIN or CSV)")
        tid = str(t["data"].get("task"))
        if not isinstance(t.get("annotations") or [], list):
            raise UserError(f"{path}: task {i} ({tid}): annotations: not a list")
        for k, a in enumerate(t.get("annotations") or [], 1):
            where = f"{path}: task {i} ({tid}), annotation {k}"
            if not isinstance(a, dict) or not isinstance(a.get("result", []), list):
                raise UserError(f"{where}: not a Label Studio annotation (`result` is not a list)")
            n = Note(where, tid, _annotator(a), None, at=a.get("updated_at") or a.get("created_at"))
            lead = a.get("lead_time")
            # seconds from opening the task to submitting it (too_fast); a day or more is a tab left open
            n.seconds = lead if isinstance(lead, (int, float)) and not isinstance(lead, bool) and 0 <= lead < 86400 else None
            if a.get("was_cancelled"):  # Label Studio's own Skip: no verdict, no reason
                notes.append(n)
                continue
            pick = other = None
            for r in a.get("result") or []:
                if not isinstance(r, dict) or not isinstance(r.get("value") or {}, dict):
                    raise UserError(f"{where}: result: {str(r)[:80]!r} is not a Label Studio result")
                name, kind, v = r.get("from_name"), r.get("type"), r.get("value") or {}
                if kind == "pairwise":
                    pick = {"left": "A", "right": "B"}.get(v.get("selected"))
                    if pick is None:
                        raise UserError(f"{where}: pick: {v.get('selected')!r} is not left or right")
                elif name == "verdict":
                    c = (v.get("choices") or [None])[0] if isinstance(v.get("choices"), list) else v.get("choices")
                    other = next((k for k in OTHER if c in (k, MEANING[k])), None)
                    if other is None:
                        raise UserError(f"{where}: verdict: {c!r} is not one of {', '.join(OTHER)}")
                elif name == "tags":
                    if not isinstance(v.get("choices") or [], list):
                        raise UserError(f"{where}: tags: not a list of choices")
                    n.tags = [str(x) for x in v.get("choices") or []] or None
                elif name in ("rewrite", "comment"):
                    setattr(n, name, _text(v.get("text")))
                elif kind == "rating":
                    if name not in ratings:
                        raise UserError(f"{where}: rating {name!r} is not one of this export's "
                                        f"({', '.join(ratings)})")
                    side, g = ratings[name]
                    n.ratings.setdefault(side, {})[g] = v.get("rating")
            n.verdict = other or pick
            notes.append(n)
    return notes


# ---- Argilla ----

def _field(name: str, title: str, required: bool = True) -> dict:
    # use_markdown off: model text is shown as text, never rendered
    return {"name": name, "title": title, "required": required, "settings": {"type": "text", "use_markdown": False}}


def _question(name: str, title: str, settings: dict, required: bool = False, description: str | None = None) -> dict:
    return {"name": name, "title": title, "description": description, "required": required, "settings": settings}


def settings(conn, ctx: Context) -> dict:
    lo, hi = db.SCALE
    qs = [_question("verdict", "Verdict", {"type": "label_selection", "visible_options": None, "options": [
        {"value": k, "text": MEANING[k], "description": None} for k in api.BLIND]}, required=True,
        description="A or B: the better answer. Edit: write the answer to choose (below). Skip: say why.")]
    qs += [_question("rewrite", "Edit: the answer to choose instead", {"type": "text", "use_markdown": False}),
           _question("comment", "Comment (a skip says why)", {"type": "text", "use_markdown": False})]
    qs += [_question(name, f"{side}: {g}", {"type": "rating", "options": [{"value": v} for v in range(lo, hi + 1)]},
                     description=next(x["text"] for x in ctx.guidelines if x["name"] == g))
           for name, (side, g) in ctx.rating_names().items()]
    tags = ctx.all_tags(conn)
    if len(tags) >= 2:  # Argilla's label questions need two options at least
        qs.append(_question("tags", "Reasons", {"type": "multi_label_selection", "visible_options": None,
                                                "options_order": "natural",
                                                "options": [{"value": t, "text": t, "description": None} for t in tags]}))
    guide = "\n".join(["Two answers to the same prompt, A and B, in an order that says nothing about how they "
                       "were made. Give one verdict:", *(f"- **{k}**: {MEANING[k]}" for k in api.BLIND), "",
                       f"Ratings ({lo} poor to {hi} excellent):", *(f"- **{g['name']}**: {g['text']}"
                                                                    for g in ctx.guidelines)])
    return {"guidelines": guide, "allow_extra_metadata": False,
            "distribution": {"strategy": "overlap", "min_submitted": 1},
            "fields": [_field("prompt", "Prompt"), _field("system", "System prompt", False),
                       _field("principles", "Principles", False), _field("answer_a", "A"), _field("answer_b", "B")],
            "questions": qs, "metadata": [], "vectors": [], "mapping": None}


def write_argilla(conn, ctx: Context, path: Path) -> int:
    ts = tasks(conn, ctx)
    recs = [{"id": t["task"], "fields": {k: v for k, v in (("prompt", t["prompt"]), ("system", t["system"]),
                                                          ("principles", t["principles"]), ("answer_a", t["A"]),
                                                          ("answer_b", t["B"])) if v},
             "metadata": {}, "suggestions": {}, "responses": {}, "vectors": {}, "_server_id": None} for t in ts]
    atomic_write(path, json.dumps(recs, ensure_ascii=False, indent=1) + "\n")
    atomic_write(sibling(path, ".settings.json"), json.dumps(settings(conn, ctx), ensure_ascii=False, indent=1) + "\n")
    return len(ts)


def read_argilla(ctx: Context, path: Path) -> list[Note]:
    ratings = ctx.rating_names()
    notes = []
    for i, rec in enumerate(_load(path), 1):
        if not isinstance(rec, dict) or not isinstance(rec.get("responses") or {}, dict):
            raise UserError(f"{path}: record {i}: not an Argilla record (`responses` is not an object)")
        tid = str(rec.get("id"))
        by: dict[str, dict] = {}  # user_id -> {question: value}
        for q, answers in (rec.get("responses") or {}).items():
            for a in answers if isinstance(answers, list) else []:
                if isinstance(a, dict) and a.get("status", "submitted") == "submitted":  # not drafts, not discarded
                    by.setdefault(str(a.get("user_id")), {})[q] = a.get("value")
        for who, ans in by.items():
            where = f"{path}: record {i} ({tid}), user {who}"
            n = Note(where, tid, who if who != "None" else None, ans.get("verdict"), _text(ans.get("rewrite")),
                     _text(ans.get("comment")), any_tag=True)
            tags = ans.get("tags")
            n.tags = [str(t) for t in tags] if isinstance(tags, list) and tags else None
            for q, v in ans.items():
                if q in ratings and v is not None:
                    side, g = ratings[q]
                    n.ratings.setdefault(side, {})[g] = v
            notes.append(n)
    return notes


# ---- the CLI's two verbs ----

WRITE = {"label-studio": write_label_studio, "argilla": write_argilla}
READ = {"label-studio": read_label_studio, "argilla": read_argilla}


def fmt_of(path: Path, fmt: str | None) -> str:
    """--format, else the file's: .csv / .jsonl; a .json is Label Studio's or Argilla's (say which with --format)."""
    fmt = fmt or {".csv": "csv", ".jsonl": "jsonl"}.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: say the format with --format label-studio|argilla|csv|jsonl")
    return fmt


def export(conn, run_dir: Path, path: Path, fmt: str | None = None) -> tuple[int, list[Path]]:
    """Write the blind task set; returns (tasks, files written)."""
    path = Path(path)
    fmt, ctx = fmt_of(path, fmt), Context.of(conn, run_dir)
    if fmt in WRITE:
        n = WRITE[fmt](conn, ctx, path)
        return n, [path, sibling(path, ".label_config.xml" if fmt == "label-studio" else ".settings.json")]
    return write_flat(conn, ctx, path, fmt), [path]


def labelled(path: Path, fmt: str | None) -> bool:
    """A CSV / JSONL written by `export --unblind` (rows by item `id`, not by `task`): exchange.py reads it."""
    path = Path(path)
    fmt = fmt or {".csv": "csv", ".jsonl": "jsonl"}.get(path.suffix.lower())
    if fmt not in ("csv", "jsonl") or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.readline()
    if fmt == "csv":
        cols = {c.strip() for c in head.split(",")}
        return "id" in cols and "task" not in cols
    try:
        rec = json.loads(head)
    except ValueError:
        return False  # the reader names the line
    return isinstance(rec, dict) and "id" in rec and "task" not in rec


def load(conn, run_dir: Path, path: Path, fmt: str | None = None, reviewer: str | None = None) -> dict:
    path = Path(path)
    fmt, ctx = fmt_of(path, fmt), Context.of(conn, run_dir)
    notes = READ[fmt](ctx, path) if fmt in READ else read_flat(ctx, path, fmt)
    return store(conn, ctx, notes, f"import:{fmt}", reviewer)
