"""Prompt-disjoint train/test splits by a hash of the prompt id (fake backend)."""
import json
from pathlib import Path

import datasets
import pytest

from cai_gen import merge, pipeline, store
from cai_gen.backends.fake import FakeBackend
from cai_gen.errors import UserError

from .conftest import make_cfg


def run(out: Path, *overrides: str, gate: str = "mixed"):
    cfg = make_cfg("backend=fake", *overrides)
    return pipeline.run(cfg, out, backend=FakeBackend("fake", cfg.model.name, gate=gate))


def jl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


def prompt_of(row_id: str) -> str:
    return row_id.rsplit("-s", 1)[0]


def test_splits_are_prompt_disjoint_and_cover_every_file(tmp_path):
    run(tmp_path, "samples=3", "output.test_size=0.3")
    prefs, sft, kto = (jl(tmp_path / f) for f in ("preferences.jsonl", "sft.jsonl", "kto.jsonl"))
    nv = jl(tmp_path / "no_violation.jsonl")
    side: dict[str, str] = {}
    for r in prefs + sft + kto + nv:
        assert side.setdefault(prompt_of(r["id"]), r["split"]) == r["split"]  # every sample of a prompt: one side
    assert set(side.values()) == {"train", "test"}
    d = datasets.load_from_disk(str(tmp_path / "preferences"))
    assert sorted(d["train_prefs"]["id"]) == sorted(r["id"] for r in prefs if r["split"] == "train")
    assert sorted(d["test_prefs"]["id"]) == sorted(r["id"] for r in prefs if r["split"] == "test")
    assert len(d["train_sft"]) + len(d["test_sft"]) == len(prefs) + len(nv)
    k = datasets.load_from_disk(str(tmp_path / "kto"))
    assert len(k["train"]) + len(k["test"]) == len(kto) and set(k["test"]["split"]) <= {"test"}


def test_a_prompt_keeps_its_side_as_the_set_grows(tmp_path):
    run(tmp_path / "small", "limit=20", "output.test_size=0.3", gate="yes")
    run(tmp_path / "big", "output.test_size=0.3", gate="yes")
    small = {r["id"]: r["split"] for r in jl(tmp_path / "small" / "preferences.jsonl")}
    big = {r["id"]: r["split"] for r in jl(tmp_path / "big" / "preferences.jsonl")}
    assert small and all(big[i] == s for i, s in small.items())
    assert store.split_of("acct-1", 0.0) == "train"  # test_size 0: everything trains


def test_shards_merge_into_the_unsharded_split(tmp_path):
    run(tmp_path / "whole", "output.test_size=0.3", gate="yes")
    for i in range(2):
        run(tmp_path / f"s{i}", "output.test_size=0.3", f"shard.index={i}", "shard.count=2", gate="yes")
    assert merge.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 0
    whole = {r["id"]: r["split"] for r in jl(tmp_path / "whole" / "preferences.jsonl")}
    merged = {r["id"]: r["split"] for r in jl(tmp_path / "m" / "preferences.jsonl")}
    assert merged == whole
    d = datasets.load_from_disk(str(tmp_path / "m" / "preferences"))
    assert sorted(d["test_prefs"]["id"]) == sorted(i for i, s in whole.items() if s == "test")


def test_rows_without_a_split_get_it_from_their_prompt_text():
    def row(i, text, **more):
        return {"id": i, "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": text}], **more}
    rows = store.with_splits([row("a-s0", "Where is  my order?"), row("b-s1", "refund", split="test")], 0.5)
    assert rows[0]["split"] == store.split_of("where is my order?", 0.5) and rows[1]["split"] == "test"
    # a row with no prompt turns (not a cai_gen row) is one error naming the file and row, not a guess
    with pytest.raises(UserError, match=r"^f.jsonl: row 'acct-1-s0': its `prompt` column has no user turn"):
        store.with_splits([{"id": "acct-1-s0"}], 0.5, "f.jsonl")


def test_rows_carry_the_prompt_id_and_read_back_split_as_written(tmp_path):
    # a prompt id that itself ends in -sN: the row id's tail would be ambiguous, the column is not
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": f"acct-s{i}", "prompt": f"question {i}?"}) + "\n" for i in range(12)))
    run(tmp_path / "r", f"prompts.path={f}", "samples=2", "output.test_size=0.5")
    prefs, nv = jl(tmp_path / "r" / "preferences.jsonl"), jl(tmp_path / "r" / "no_violation.jsonl")
    assert prefs and nv
    for r in prefs + nv:
        assert r["id"].startswith(r["prompt_id"] + "-s")
    assert [r["split"] for r in store.resplit(prefs + nv, 0.5)] == [r["split"] for r in prefs + nv]


def test_length_balance_match_brings_chosen_longer_to_half(tmp_path):
    from cai_gen import quality

    pairs = [(f"p{i}-s0", 30, 10) for i in range(30)] + [(f"q{i}-s0", 10, 30) for i in range(10)]
    drop = quality.length_balance(pairs, seed=0)
    left = [p for p in pairs if p[0] not in drop]
    share = sum(c > r for _, c, r in left) / len(left)
    assert 0.45 <= share <= 0.55 and all(i.startswith("p") for i in drop)
    assert quality.length_balance(pairs, seed=0) == drop and quality.length_balance(pairs, seed=1) != drop
    assert quality.length_balance(pairs[:10] + pairs[30:40], seed=0) == set()  # already 50%: nothing goes
    # in a run: the fake revisions are always shorter than their originals, so balancing leaves no pair
    s = run(tmp_path, "limit=3", "output.length_balance=match", gate="yes")
    assert s["kept"] == 0 and s["reasons"] == {"length_balance": 6}
    s = run(tmp_path / "b", "limit=3", gate="yes")
    assert s["report"]["length_only_accuracy"] == 0.0 and s["report"]["cohen_d"] is None  # constant lengths
    from cai_gen.stats import cohen_d
    assert cohen_d([10, 12, 14], [4, 6, 8]) == 3.0 and cohen_d([1, 2], [1, 2]) == 0.0


def test_kept_copies_of_a_prompt_share_one_split_and_one_shard(tmp_path):
    """prompts.keep_duplicates=true: 12 copies of one question get ids -dupN by file position, but they are one
    prompt, so they must land on one side of the split and in one shard (issue 24 item 6). The split and the
    shard used to hash the copy's id, so the copies were on both sides."""
    from cai_gen import prompts

    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": "Where is my order?"}) + "\n" for _ in range(12))
                 + json.dumps({"prompt": "Refund please"}) + "\n")
    recs = prompts.load(None, str(f), None, keep_duplicates=True)
    assert len(recs) == 13 and len({r.id for r in recs}) == 13
    for count in (2, 3, 4):
        where = {i for i in range(count) for r in prompts.shard(recs, i, count) if r.prompt == "Where is my order?"}
        assert len(where) == 1, count
    run(tmp_path / "out", f"prompts.path={f}", "prompts.keep_duplicates=true", "output.test_size=0.5",
        "samples=1", gate="yes")
    rows = [r for r in jl(tmp_path / "out" / "preferences.jsonl") if r["prompt"][-1]["content"] == "Where is my order?"]
    sides = {r["split"] for r in rows}
    assert len(rows) == 12 and len(sides) == 1
    # rows read back without a split column (an older run, evaluate --test-size) agree with the written side
    assert {r["split"] for r in store.resplit([{"id": r["id"], "prompt": r["prompt"]} for r in rows], 0.5)} == sides


class LongerRevisions(FakeBackend):
    """Revisions of the prompts that say "long" come out longer than their originals (the fake's are shorter);
    those of "odd" prompts repeat the critique (a filter drops them: rejected rows among the balanced ones)."""

    def _text(self, conv, p):
        from cai_gen.backends.fake import REVISION_MARK, _words

        text = super()._text(conv, p)
        if REVISION_MARK in conv[-1]["content"] and any("odd" in m["content"] for m in conv):
            return conv[-2]["content"]
        if REVISION_MARK in conv[-1]["content"] and any("long question" in m["content"] for m in conv):
            text = text[:-1] + " " + " ".join(_words("more" + text, 12)) + "."
        return text


def test_length_balance_is_decided_over_the_whole_run_not_per_chunk(tmp_path):
    """Two lopsided halves (26 prompts whose chosen is longer, then 14 whose chosen is shorter) in chunks of 5:
    the run keeps what one chunk over the whole run keeps, and its files are that run's files (issue 24 item 7).
    Each chunk used to be balanced on its own: an all-longer chunk lost every pair."""
    from cai_gen import quality

    f = tmp_path / "p.jsonl"
    odd = lambda i: "an odd" if i % 4 == 1 else "A"  # noqa: E731
    f.write_text("".join(json.dumps({"prompt": f"{odd(i)} long question {i}?"}) + "\n" for i in range(26))
                 + "".join(json.dumps({"prompt": f"{odd(i)} short question {i}?"}) + "\n" for i in range(14)))

    def go(out, *more):
        cfg = make_cfg("backend=fake", f"prompts.path={f}", "samples=1", "output.length_balance=match", *more)
        return pipeline.run(cfg, out, backend=LongerRevisions("fake", cfg.model.name, gate="mixed"))

    one, chunked = go(tmp_path / "one"), go(tmp_path / "chunked", "chunk_size=5")
    # the whole run's balance: drop the fewest of the majority so chosen-longer is within 50% +- 5
    lens = [(r["id"], len(r["chosen"][0]["content"].split()), len(r["rejected"][0]["content"].split()))
            for r in jl(tmp_path / "one" / "preferences.jsonl")]
    assert 0.45 <= sum(c > j for _, c, j in lens) / len(lens) <= 0.55 and one["reasons"]["length_balance"] > 0
    assert quality.length_balance(lens, 0) == set()  # nothing left to drop
    assert (chunked["kept"], chunked["rejected"], chunked["reasons"]) == (one["kept"], one["rejected"], one["reasons"])

    def rows(d, name):
        return [{k: v for k, v in r.items() if k != "created_at"} for r in jl(tmp_path / d / name)]

    for name in ("preferences.jsonl", "kto.jsonl", "sft.jsonl", "rejected.jsonl", "no_violation.jsonl",
                 "trace.jsonl"):
        assert rows("chunked", name) == rows("one", name), name
    kept = {r["id"] for r in jl(tmp_path / "chunked" / "preferences.jsonl")}
    d = datasets.load_from_disk(str(tmp_path / "chunked" / "preferences"))
    assert set(d["train_prefs"]["id"]) | set(d["test_prefs"]["id"]) == kept


def sides_of(rows: list[dict]) -> dict[str, set]:
    """Every user turn's text -> the sides of the rows whose prompt holds it."""
    out: dict[str, set] = {}
    for r in rows:
        for m in r["prompt"]:
            if m["role"] == "user":
                out.setdefault(m["content"], set()).add(r["split"])
    return out


def test_no_question_is_on_both_sides_of_a_run(tmp_path):
    """Issue 31 item 9: with prompts.keep_duplicates=true the rows' own ids split one question both ways, and the
    prefixes of one multi-turn conversation hashed apart. The split groups prompts by their user turns."""
    f = tmp_path / "p.jsonl"
    lines = []
    for i in range(10):
        q = f"Where is my order number {i}?"
        lines += [{"id": f"a{i}", "prompt": q}, {"id": f"b{i}", "prompt": q}]  # one question, two ids
        turns = [{"role": "user", "content": f"Hi, conversation {i}."}]
        for k in range(3):  # every prefix of one conversation, each a prompt
            lines.append({"id": f"c{i}-{k}", "messages": list(turns)})
            turns += [{"role": "assistant", "content": f"Sure ({k})."}, {"role": "user", "content": f"Turn {k} of {i}?"}]
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    run(tmp_path / "r", f"prompts.path={f}", "prompts.keep_duplicates=true", "output.test_size=0.5", "samples=1",
        gate="yes")
    rows = jl(tmp_path / "r" / "preferences.jsonl")
    assert len(rows) == len(lines)
    sides = sides_of(rows)
    assert all(len(s) == 1 for s in sides.values()), {t: s for t, s in sides.items() if len(s) > 1}
    assert set().union(*sides.values()) == {"train", "test"}
    d = datasets.load_from_disk(str(tmp_path / "r" / "preferences"))
    train = {m["content"] for p in d["train_prefs"]["prompt"] for m in p if m["role"] == "user"}
    test = {m["content"] for p in d["test_prefs"]["prompt"] for m in p if m["role"] == "user"}
    assert train and test and not train & test


def test_a_merge_of_runs_split_at_other_sizes_has_no_question_on_both_sides(tmp_path, capsys):
    """Issue 31 item 9: runs made with another output.test_size (here over the same questions under other ids)
    merged with each row's own side: a prompt test in one run and train in the other was on both sides. The merge
    re-splits every row at one test size; differing sizes need --test-size."""
    dirs = []
    for name, ts in (("a", 0.1), ("b", 0.6)):
        f = tmp_path / f"{name}.jsonl"
        f.write_text("".join(json.dumps({"id": f"{name}{i}", "prompt": f"Question {i} about my bill?"}) + "\n"
                             for i in range(30)))
        run(tmp_path / name, f"prompts.path={f}", f"output.test_size={ts}", "samples=1", gate="yes")
        dirs.append(str(tmp_path / name))
    capsys.readouterr()
    assert merge.main([*dirs, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different output.test_size" in err[0] and "--test-size" in err[0]
    assert merge.main([*dirs, "--out", str(tmp_path / "m"), "--test-size", "0.3"]) == 0
    rows = jl(tmp_path / "m" / "preferences.jsonl")
    assert len(rows) == 60
    sides = sides_of(rows)
    assert all(len(s) == 1 for s in sides.values()) and set().union(*sides.values()) == {"train", "test"}
    assert json.loads((tmp_path / "m" / "merge.json").read_text())["test_size"] == 0.3
    kto = datasets.load_from_disk(str(tmp_path / "m" / "kto"))
    assert not {str(p) for p in kto["train"]["prompt"]} & {str(p) for p in kto["test"]["prompt"]}
