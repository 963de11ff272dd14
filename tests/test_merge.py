"""python -m cai_gen.merge: run dirs into one dataset with unique ids, reviewed data preferred, half-life weights."""
import json
import shutil
from pathlib import Path

import pytest

from cai_gen import merge, pipeline, store
from cai_gen.backends.fake import FakeBackend
from cai_gen.review import db
from cai_gen.review.__main__ import main as review_main

from .conftest import make_cfg


def jl(p: Path) -> list[dict]:
    # "\n" only: splitlines() would also cut at U+2028 inside a string (test_a_run_with_line_separators...)
    return [json.loads(line) for line in p.read_text(encoding="utf-8").split("\n") if line.strip()]


def restamp(run: Path, when: str) -> None:
    """Pretend the run was collected at `when` (its rows' created_at)."""
    f = run / "preferences.jsonl"
    f.write_text("".join(json.dumps({**r, "created_at": when}) + "\n" for r in jl(f)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs over overlapping prompts (limit 4 and limit 6): ids of the first 4 prompts are in both."""
    out = []
    for limit in (4, 6):
        cfg = make_cfg("backend=fake", f"limit={limit}", "review.sample_rate=1.0")
        d = tmp_path_factory.mktemp(f"run{limit}")
        pipeline.run(cfg, d, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
        out.append(d)
    return out[0], out[1]


@pytest.fixture
def old_new(runs, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(runs[0], old)
    shutil.copytree(runs[1], new)
    restamp(old, "2026-01-01T00:00:00+00:00")
    restamp(new, "2026-03-02T00:00:00+00:00")  # 60 days later
    return old, new


def test_duplicate_ids_keep_the_newest_and_weights_halve_per_half_life(old_new, tmp_path):
    old, new = old_new
    out = tmp_path / "merged"
    assert merge.main([str(old), str(new), "--out", str(out), "--half-life-days", "30"]) == 0
    rows = jl(out / "preferences.jsonl")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len({r["id"] for r in jl(new / "preferences.jsonl")} |
                                            {r["id"] for r in jl(old / "preferences.jsonl")})
    assert {r["created_at"] for r in rows} == {"2026-03-02T00:00:00+00:00"}  # the newer copy of every shared id
    assert {r["weight"] for r in rows} == {1.0}
    info = json.loads((out / "merge.json").read_text())
    assert info["duplicates_dropped"] == len(jl(old / "preferences.jsonl"))

    # only the old run's rows: 60 days before --now is two half-lives
    out2 = tmp_path / "m2"
    assert merge.main([str(old), "--out", str(out2), "--half-life-days", "30", "--now", "2026-03-02T00:00:00Z"]) == 0
    assert {r["weight"] for r in jl(out2 / "preferences.jsonl")} == {0.25}
    kto = jl(out2 / "kto.jsonl")
    assert {k["weight"] for k in kto} == {0.25} and len(kto) == 2 * len(jl(out2 / "preferences.jsonl"))
    import datasets
    d = datasets.load_from_disk(str(out2 / "preferences"))
    assert "weight" in d["train_prefs"].column_names and len(d["train_prefs"]) + len(d["test_prefs"]) == len(kto) // 2


def test_first_policy_and_error_policy(old_new, tmp_path, capsys):
    old, new = old_new
    assert merge.main([str(old), str(new), "--out", str(tmp_path / "f"), "--duplicates", "first"]) == 0
    rows = {r["id"]: r for r in jl(tmp_path / "f" / "preferences.jsonl")}
    assert all(rows[r["id"]]["created_at"].startswith("2026-01-01") for r in jl(old / "preferences.jsonl"))
    assert merge.main([str(old), str(new), "--out", str(tmp_path / "e"), "--duplicates", "error"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is also in an earlier run dir" in err[0]
    assert not (tmp_path / "e").exists()


def test_reviewed_data_is_used_and_columns_are_the_union(old_new, tmp_path):
    old, new = old_new
    conn = db.open_run(old)
    first = db.items(conn)[0]
    db.record(conn, first["id"], "ann", "swap", at="2026-04-01T00:00:00+00:00")
    conn.close()
    assert review_main(["merge", str(old)]) == 0
    out = tmp_path / "m"
    assert merge.main([str(new), str(old), "--out", str(out), "--half-life-days", "30"]) == 0
    rows = {r["id"]: r for r in jl(out / "preferences.jsonl")}
    r = rows[first["id"]]  # the expert's judgement (newest by reviewed_at) wins over the new run's copy
    assert r["verdict"] == "swap" and r["chosen"][0]["content"] == first["original"] and r["weight"] == 1.0
    others = [x for i, x in rows.items() if i != first["id"]]
    assert all(set(x) == set(r) for x in others)           # the same columns on every row
    assert all(x["expert_reviewed"] is False for x in others)
    assert min(x["weight"] for x in others) == 0.5         # 2026-03-02 is 30 days before the review


@pytest.mark.parametrize("args, msg", [
    (["{missing}"], "not a finished cai_gen run dir"),
    (["{old}", "--half-life-days", "0"], "--half-life-days: must be > 0"),
    (["{old}", "--now", "yesterday"], "--now: 'yesterday' is not an ISO time"),
    (["{old}", "--out", "{old}"], "is one of the inputs"),
])
def test_bad_input_is_one_line(old_new, tmp_path, capsys, args, msg):
    old, _ = old_new
    fill = {"missing": str(tmp_path / "nope"), "old": str(old)}
    argv = [a.format(**fill) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o")]
    assert merge.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_a_damaged_line_is_named(old_new, tmp_path, capsys):
    old, _ = old_new
    with (old / "preferences.jsonl").open("a") as f:
        f.write("{not json\n")
    assert merge.main([str(old), "--out", str(tmp_path / "o")]) == 2
    n = len((old / "preferences.jsonl").read_text().splitlines())
    assert f"preferences.jsonl:{n}: invalid JSON" in capsys.readouterr().err


def _no_time(rows: list[dict]) -> list[str]:
    """Rows as sorted JSON without created_at (each run stamps its own): content, order aside."""
    return sorted(json.dumps({k: v for k, v in r.items() if k != "created_at"}, sort_keys=True) for r in rows)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, list[Path]]:
    """The gate says NO to some rows (no_violation.jsonl): one whole run of 20 prompts and its 2 shards."""
    def run(d: Path, *extra: str) -> Path:
        cfg = make_cfg("backend=fake", "limit=20", *extra)
        pipeline.run(cfg, d, backend=FakeBackend("fake", cfg.model.name, gate="mixed", max_model_len=2048))
        return d
    base = tmp_path_factory.mktemp("mixed")
    return run(base / "whole"), [run(base / f"s{i}", "shard.count=2", f"shard.index={i}") for i in range(2)]


def test_merged_shards_are_the_unsharded_run_with_its_no_violation_rows(mixed, tmp_path):
    whole, parts = mixed
    assert jl(whole / "no_violation.jsonl") and jl(whole / "preferences.jsonl")  # both kinds are there to lose
    out = tmp_path / "m"
    assert merge.main([*map(str, parts), "--out", str(out)]) == 0
    for name in ("preferences.jsonl", "no_violation.jsonl", "sft.jsonl", "kto.jsonl"):
        assert _no_time(jl(out / name)) == _no_time(jl(whole / name)), name
    import datasets
    for name, splits in (("preferences", ("train_sft", "test_sft", "train_prefs", "test_prefs")),
                         ("kto", ("train", "test"))):
        got, want = datasets.load_from_disk(str(out / name)), datasets.load_from_disk(str(whole / name))
        assert [len(got[s]) for s in splits] == [len(want[s]) for s in splits], name
    assert json.loads((out / "merge.json").read_text())["no_violation"] == len(jl(whole / "no_violation.jsonl"))


def test_review_merge_keeps_the_no_violation_rows_and_so_does_merging_reviewed_shards(mixed, tmp_path):
    whole, parts = mixed
    copies = []
    for p in parts:
        shutil.copytree(p, tmp_path / p.name)
        copies.append(tmp_path / p.name)
        db.open_run(copies[-1]).close()  # the review database, as `serve` makes it
        assert review_main(["merge", str(copies[-1])]) == 0  # nobody reviewed: reviewed/ is the run's dataset
        for name in ("no_violation.jsonl", "sft.jsonl", "kto.jsonl"):
            assert jl(copies[-1] / "reviewed" / name) == jl(p / name), name
    assert merge.main([*map(str, copies), "--out", str(tmp_path / "m")]) == 0
    for name in ("no_violation.jsonl", "sft.jsonl", "kto.jsonl"):
        assert _no_time(jl(tmp_path / "m" / name)) == _no_time(jl(whole / name)), name


def test_half_life_weights_reach_the_no_violation_rows_too(mixed, tmp_path):
    _, parts = mixed
    out = tmp_path / "w"
    assert merge.main([*map(str, parts), "--out", str(out), "--half-life-days", "30"]) == 0
    sft, kto = jl(out / "sft.jsonl"), jl(out / "kto.jsonl")
    assert {r["origin"] for r in sft} == {"revision", "no_violation"}
    assert all(isinstance(r["weight"], float) for r in sft + kto + jl(out / "no_violation.jsonl"))


def test_a_run_with_line_separators_in_its_text_reads_back_everywhere(tmp_path, capsys):
    # a prompt escaped as \u2028 in the input is written raw (ensure_ascii=False): every reader of the run's
    # files must take it as the one line it is
    from cai_gen import evaluate

    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Line one\u2028line two\u2029three\u0085 {i}?"}) + "\n"
                         for i in range(6)))
    run = tmp_path / "run"
    cfg = make_cfg("backend=fake", f"prompts.path={f}", "review.sample_rate=1.0")
    pipeline.run(cfg, run, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    assert "\u2028" in (run / "preferences.jsonl").read_text(encoding="utf-8")
    assert merge.main([str(run), "--out", str(tmp_path / "m")]) == 0
    assert len(jl(tmp_path / "m" / "preferences.jsonl")) == len(jl(run / "preferences.jsonl")) == 12
    assert review_main(["export", str(run), str(tmp_path / "items.jsonl")]) == 0
    assert review_main(["import", str(run), str(tmp_path / "items.jsonl")]) == 0
    assert review_main(["merge", str(run)]) == 0
    train, test = evaluate.load_pairs(run, None)
    assert len(train) + len(test) == 12 and "\u2028" in train[0]["prompt"][-1]["content"]
    assert "damaged" not in capsys.readouterr().err


def test_a_sweep_merge_keeps_every_runs_rows(tmp_path, capsys):
    """Issue 31 item 8: two runs of a sweep (another constitution, another seed) hold the same ids for other rows;
    the merge dropped one run whole as "duplicate ids" and exited 0. Each run's rows are kept, ids tagged."""
    runs = []
    for i, extra in enumerate((["constitution=customer_service"], ["constitution=helpful_honest"],
                               ["constitution=helpful_honest", "seed=7"])):
        cfg = make_cfg("backend=fake", "limit=4", "samples=1", *extra)
        pipeline.run(cfg, tmp_path / f"r{i}", backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
        runs.append(tmp_path / f"r{i}")
    out = tmp_path / "m"
    assert merge.main([*map(str, runs), "--out", str(out)]) == 0
    rows = jl(out / "preferences.jsonl")
    want = [r for d in runs for r in jl(d / "preferences.jsonl")]
    assert len(rows) == len(want) > 0 and len({r["id"] for r in rows}) == len(rows)
    info = json.loads((out / "merge.json").read_text())
    assert info["duplicates_dropped"] == 0 and len(info["variants"]["tags"]) == 3
    assert {"constitution", "seed"} <= set(info["variants"]["differ_in"])
    assert sorted(r["id"] for r in rows) == sorted(f"{r['id']}@{s['tag']}" for d, s in zip(runs, info["sources"])
                                                   for r in jl(d / "preferences.jsonl"))
    assert "3 configs" in capsys.readouterr().out
    # one question, one side: a prompt's rows from every run share it
    side = {}
    for r in rows + jl(out / "no_violation.jsonl"):
        assert side.setdefault(r["prompt"][-1]["content"], r["split"]) == r["split"]


def test_a_reviewed_dir_a_rerun_outdated_is_removed_and_refused(runs, tmp_path, capsys):
    """Issue 31 item 7: a rerun that re-filters keeps 0 pairs, but reviewed/ from before still held the old ones
    and cai_gen.merge published them (and the card showed their review). A rerun removes a reviewed/ its new
    files outdate (verdicts stay in review.sqlite); merge refuses one that is stale; the card leaves it out."""
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    conn = db.open_run(run)
    db.record(conn, db.items(conn)[0]["id"], "ann", "accept", at="2026-04-01T00:00:00+00:00")
    conn.close()
    assert review_main(["merge", str(run)]) == 0
    assert merge.main([str(run), "--out", str(tmp_path / "ok")]) == 0  # current: used
    assert any(r["expert_reviewed"] for r in jl(tmp_path / "ok" / "preferences.jsonl"))
    # the run's files change under reviewed/ (a rerun by an older cai_gen, a hand edit): merge refuses it
    stale = tmp_path / "stale"
    shutil.copytree(run, stale)
    (stale / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jl(stale / "preferences.jsonl")[1:]))
    capsys.readouterr()
    assert merge.main([str(stale), "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reviewed: was built from another preferences.jsonl" in err[0] and "review merge" in err[0]
    # a rerun that re-filters every pair away: reviewed/ goes, merge publishes the run's 0 pairs
    cfg = make_cfg("backend=fake", "limit=4", "review.sample_rate=1.0", "filters.min_chars=100000")
    s = pipeline.run(cfg, run, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    assert s["kept"] == 0 and not (run / "reviewed").exists() and (run / "review.sqlite").is_file()
    assert "reviewed/: removed" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["report"]["review"] is None
    assert merge.main([str(run), "--out", str(tmp_path / "after")]) == 0
    assert jl(tmp_path / "after" / "preferences.jsonl") == []
    # a rerun that changes nothing keeps a current reviewed/
    cfg = make_cfg("backend=fake", "limit=4", "review.sample_rate=1.0")
    pipeline.run(cfg, run, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    assert review_main(["merge", str(run)]) == 0
    pipeline.run(cfg, run, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    assert (run / "reviewed" / "preferences.jsonl").is_file() and store.reviewed_stale(run) is None
