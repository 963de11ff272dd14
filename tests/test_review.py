"""Expert review: routing, the SQLite store (history, migrations, bad files), the HTTP API, merging verdicts,
agreement, and the JSONL/CSV round trip. Runs on the fake backend (fast); the page itself is driven in a real
browser in test_review_page.py."""
import hashlib
import json
import shutil
import sqlite3
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cai_gen import pipeline
from cai_gen.backends.fake import FakeBackend
from cai_gen.config import ReviewCfg
from cai_gen.errors import UserError
from cai_gen.review import db, exchange, merge, route
from cai_gen.review.__main__ import main as review_main
from cai_gen.review.server import ReviewServer

from .conftest import make_cfg

OVERRIDES = ("backend=fake", "limit=12", "review.domains=[billing]", "review.sample_rate=0.25")


def jl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    cfg = make_cfg(*OVERRIDES)
    out = tmp_path_factory.mktemp("review_base")
    pipeline.run(cfg, out, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    return out


@pytest.fixture
def run_dir(base_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    return out


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---- routing --------------------------------------------------------------------------------------------

def pref(i="p-s0", domain="billing", flags=()):
    return {"id": i, "domain": domain, "flags": list(flags)}


def test_each_rule_routes_and_is_named():
    cfg = ReviewCfg(domains=["billing"], flags=["reward_margin_low", "preface_stripped"])
    assert route.reasons(pref(), cfg, 0) == ["domain:billing"]
    assert route.reasons(pref(domain="shipping"), cfg, 0) == []
    assert route.reasons(pref(domain="x", flags=["judge_low_confidence"]), cfg, 0) == ["judge:judge_low_confidence"]
    assert route.reasons(pref(domain="x", flags=["judge_inconsistent", "preface_stripped_r2"]), cfg, 0) == \
        ["judge:judge_inconsistent", "flag:preface_stripped"]  # round suffix ignored
    off = ReviewCfg(judge_low_confidence=False)
    assert route.reasons(pref(domain="x", flags=["judge_low_confidence"]), off, 0) == []
    assert route.reasons(pref(), ReviewCfg(sample_rate=1.0), 0) == ["sample"]


def test_sample_rate_is_stable_close_and_nested():
    ids = [f"q{i}-s0" for i in range(4000)]
    at10 = {i for i in ids if route.sampled(7, i, 0.10)}
    at20 = {i for i in ids if route.sampled(7, i, 0.20)}
    assert 320 <= len(at10) <= 480          # 400 expected; binomial sd ~19
    assert at10 <= at20                     # raising the rate only adds pairs
    assert at10 == {i for i in ids if route.sampled(7, i, 0.10)}       # same pairs on every rerun
    assert at10 != {i for i in ids if route.sampled(8, i, 0.10)}       # the seed picks another audit sample


def test_run_writes_the_queue_from_its_pairs(run_dir):
    prefs = {p["id"]: p for p in jl(run_dir / "preferences.jsonl")}
    queue = jl(run_dir / "review_queue.jsonl")
    billing = {i for i, p in prefs.items() if p["domain"] == "billing"}
    assert billing and billing <= {it["id"] for it in queue}
    for it in queue:
        p = prefs[it["id"]]
        assert it["routed_by"] == route.reasons(p, ReviewCfg(domains=["billing"], sample_rate=0.25), 0)
        assert it["revision"] == p["chosen"][0]["content"] and it["original"] == p["rejected"][0]["content"]
        assert [r["critique"] for r in it["rounds"]] == p["critiques"]
        assert all(r["critique_request"] for r in it["rounds"])
    assert "sample" in {w for it in queue for w in it["routed_by"]}


def test_review_config_is_free_no_generation_on_rerun(run_dir):
    cfg = make_cfg(*OVERRIDES[:2], "review.sample_rate=1.0")
    be = FakeBackend("fake", cfg.model.name, max_model_len=2048)
    be.calls = []
    pipeline.run(cfg, run_dir, backend=be)
    assert be.calls == []  # every generation came from the ledger
    assert len(jl(run_dir / "review_queue.jsonl")) == len(jl(run_dir / "preferences.jsonl"))


def test_judge_swapped_pair_shows_original_as_original(tmp_path):
    cfg = make_cfg("backend=fake", "limit=3", "judge=self", "judge.on_disagrees=swap", "review.flags=[judge_swapped]")
    pipeline.run(cfg, tmp_path, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048, judge="original"))
    prefs = {p["id"]: p for p in jl(tmp_path / "preferences.jsonl")}
    queue = jl(tmp_path / "review_queue.jsonl")
    assert queue and len(queue) == len(prefs)
    trace = {t["id"]: t for t in jl(tmp_path / "trace.jsonl")}
    for it in queue:
        stages = trace[it["id"]]["stages"]
        assert it["original"] == next(s for s in stages if s["stage"] == "respond")["output"]
        assert prefs[it["id"]]["chosen"][0]["content"] == it["original"]  # the judge swapped it


# ---- database -------------------------------------------------------------------------------------------

def test_last_verdict_wins_and_history_is_kept(run_dir):
    conn = db.open_run(run_dir)
    it = db.items(conn)[0]["id"]
    db.record(conn, it, "alice", "accept", comment="fine")
    db.record(conn, it, "alice", "edit", chosen="A better answer.")
    cur = db.current(conn)[it]
    assert cur["alice"]["verdict"] == "edit" and cur["alice"]["chosen"] == "A better answer."
    assert [h["verdict"] for h in db.history(conn, it)] == ["accept", "edit"]


@pytest.mark.parametrize("args, field", [
    (("no-such-item", "alice", "accept"), "item: unknown item 'no-such-item'"),
    ((None, "alice", "maybe"), "verdict: 'maybe'"),
    ((None, "alice", "edit"), "chosen: an edit verdict needs"),
    ((None, "", "accept"), "reviewer: ''"),
    ((None, "<script>", "accept"), "reviewer: '<script>'"),
])
def test_bad_verdicts_are_refused_and_store_nothing(run_dir, args, field):
    conn = db.open_run(run_dir)
    item = args[0] or db.items(conn)[0]["id"]
    with pytest.raises(UserError, match=field.replace("(", r"\(")):
        db.record(conn, item, *args[1:])
    assert db.history(conn) == []


def test_old_schema_is_migrated_and_keeps_its_verdicts(run_dir):
    path = run_dir / db.FILE
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(db.MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO items VALUES ('x-s0', ?, '2026-01-01T00:00:00+00:00')",
                 (json.dumps({"id": "x-s0", "original": "o", "revision": "r"}),))
    conn.execute("INSERT INTO verdicts(item_id, reviewer, verdict, created_at) VALUES ('x-s0', 'ann', 'swap', 't')")
    conn.close()
    conn = db.open_run(run_dir)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.VERSION == 2
    assert db.history(conn, "x-s0") == [{"item": "x-s0", "reviewer": "ann", "verdict": "swap", "chosen": None,
                                         "comment": None, "at": "t", "source": "web"}]
    assert len(db.items(conn)) == 1 + len(jl(run_dir / "review_queue.jsonl"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "newer"])
def test_a_bad_database_file_is_refused_and_left_untouched(run_dir, damage):
    path = run_dir / db.FILE
    conn = db.open_run(run_dir)
    db.record(conn, db.items(conn)[0]["id"], "alice", "accept")
    conn.close()
    if damage == "garbage":
        path.write_bytes(b"this is not sqlite\n" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1500])
    elif damage == "foreign":
        path.unlink()
        other = sqlite3.connect(path)
        other.execute("CREATE TABLE notes(x)")
        other.commit()
        other.close()
    else:
        other = sqlite3.connect(path)
        other.execute("PRAGMA user_version = 99")
        other.close()
    before = sha(path)
    with pytest.raises(UserError, match=str(path)):
        db.open_run(run_dir)
    with pytest.raises(UserError):
        ReviewServer(run_dir, port=0)
    assert review_main(["merge", str(run_dir)]) == 2
    assert sha(path) == before
    assert not (run_dir / "reviewed").exists()


def test_merge_without_a_database_is_a_clear_error(run_dir, capsys):
    assert review_main(["merge", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no review database" in err[0]
    assert review_main(["serve", str(run_dir / "nope")]) == 2


# ---- HTTP API ------------------------------------------------------------------------------------------

@pytest.fixture
def server(run_dir):
    srv = ReviewServer(run_dir, port=0)
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def call(srv, path, body=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(srv.url + path.lstrip("/"), data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_api_records_and_reports_progress(server, run_dir):
    code, st = call(server, "/api/state?reviewer=alice")
    assert code == 200 and st["done"] == 0 and st["total"] == len(jl(run_dir / "review_queue.jsonl"))
    first = st["items"][0]["id"]
    code, r = call(server, "/api/verdict", {"item": first, "reviewer": "alice", "verdict": "swap", "comment": "hm"})
    assert code == 200 and r["done"] == 1
    code, it = call(server, f"/api/item/{first}?reviewer=alice")
    assert it["mine"]["verdict"] == "swap" and it["mine"]["comment"] == "hm" and it["reviews"] == 1
    assert call(server, "/api/verdict", {"item": "ghost", "reviewer": "alice", "verdict": "accept"})[0] == 404
    assert call(server, "/api/verdict", {"item": first, "reviewer": "alice", "verdict": "meh"})[0] == 400
    assert call(server, "/api/verdict", b"{not json")[0] == 400
    assert call(server, "/api/item/ghost")[0] == 404


def test_two_reviewers_writing_at_once_lose_nothing(server):
    ids = [i["id"] for i in call(server, "/api/state")[1]["items"]]
    errors = []

    def work(name):
        for k in range(30):
            code, _ = call(server, "/api/verdict", {"item": ids[k % len(ids)], "reviewer": name,
                                                    "verdict": ("accept", "swap", "reject")[k % 3]})
            if code != 200:
                errors.append(code)
    threads = [threading.Thread(target=work, args=(n,)) for n in ("alice", "bob", "carol")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    conn = db.connect(server.db_path)
    assert len(db.history(conn)) == 90


# ---- merge and agreement -------------------------------------------------------------------------------

def test_kappa_matches_the_textbook_example():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> po 0.7, pe 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert merge.kappa(a, b) == 0.4
    assert merge.kappa(["accept", "swap"], ["accept", "swap"]) == 1.0
    assert merge.kappa(["accept"] * 3, ["accept"] * 3) is None  # chance agreement is total: undefined


def test_agreement_over_reviewer_pairs():
    v = lambda x: {"verdict": x}  # noqa: E731
    cur = {"i1": {"a": v("accept"), "b": v("accept"), "c": v("swap")},
           "i2": {"a": v("reject"), "b": v("reject")},
           "i3": {"a": v("accept")}}
    ag = merge.agreement(cur)
    assert ag["reviewers"] == ["a", "b", "c"] and ag["items_multi"] == 2
    assert ag["comparisons"] == 4 and ag["agreement"] == 0.5   # a-b twice (agree), a-c, b-c (disagree)
    ab = next(p for p in ag["pairs"] if (p["a"], p["b"]) == ("a", "b"))
    assert ab == {"a": "a", "b": "b", "items": 2, "agreement": 1.0, "kappa": 1.0}


def test_merge_applies_each_verdict(run_dir):
    conn = db.open_run(run_dir)
    items = db.items(conn)
    assert len(items) >= 7
    a, s, e, r, maj, tie, pend = items[:7]
    db.record(conn, a["id"], "alice", "accept")
    db.record(conn, s["id"], "alice", "swap")
    db.record(conn, e["id"], "alice", "edit", chosen="The expert's answer.")
    db.record(conn, r["id"], "alice", "reject")
    for who, v in (("alice", "accept"), ("bob", "swap"), ("carol", "swap")):
        db.record(conn, maj["id"], who, v)
    db.record(conn, tie["id"], "alice", "accept")
    db.record(conn, tie["id"], "bob", "reject")
    conn.close()
    assert review_main(["merge", str(run_dir)]) == 0
    out = {p["id"]: p for p in jl(run_dir / "reviewed" / "preferences.jsonl")}
    c = lambda row, k: row[k][0]["content"]  # noqa: E731
    assert (c(out[a["id"]], "chosen"), c(out[a["id"]], "rejected")) == (a["revision"], a["original"])
    assert (c(out[s["id"]], "chosen"), c(out[s["id"]], "rejected")) == (s["original"], s["revision"])
    assert (c(out[e["id"]], "chosen"), c(out[e["id"]], "rejected")) == ("The expert's answer.", e["original"])
    assert r["id"] not in out and tie["id"] not in out
    assert out[maj["id"]]["verdict"] == "swap" and out[maj["id"]]["reviewer"] == "bob,carol"
    assert out[a["id"]]["expert_reviewed"] is True and out[a["id"]]["reviewed_at"]
    assert out[pend["id"]]["expert_reviewed"] is False and out[pend["id"]]["verdict"] is None
    prefs = jl(run_dir / "preferences.jsonl")
    assert len(out) == len(prefs) - 2  # nothing lost but the rejected and the disputed
    assert [d["id"] for d in jl(run_dir / "reviewed" / "dropped.jsonl")] == [r["id"]]
    assert [d["id"] for d in jl(run_dir / "reviewed" / "disputed.jsonl")] == [tie["id"]]
    kto = jl(run_dir / "reviewed" / "kto.jsonl")
    assert len(kto) == 2 * len(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    dec = summary["review"]["decisions"]
    assert (dec["accept"], dec["swap"], dec["edit"], dec["reject"], dec["disputed"]) == (1, 2, 1, 1, 1)
    assert dec["pending"] == len(items) - 7 + 1
    ag = summary["review"]["agreement"]
    assert ag["comparisons"] == 4 and ag["agreement"] == 0.25  # maj: a-b no, a-c no, b-c yes; tie: a-b no
    card = (run_dir / "README.md").read_text()
    assert "## Expert review" in card and "**25.0%**" in card and f"Cohen's kappa {ag['kappa']}" in card
    import datasets
    d = datasets.load_from_disk(str(run_dir / "reviewed" / "preferences"))
    assert len(d["train_prefs"]) + len(d["test_prefs"]) == len(out)
    assert {"expert_reviewed", "reviewer", "reviewed_at", "verdict"} <= set(d["train_prefs"].column_names)


def test_verdicts_on_changed_text_are_not_applied(run_dir):
    conn = db.open_run(run_dir)
    it = db.items(conn)[0]
    db.record(conn, it["id"], "alice", "swap")
    conn.close()
    prefs = jl(run_dir / "preferences.jsonl")
    for p in prefs:
        if p["id"] == it["id"]:
            p["chosen"][0]["content"] = "a different revision from a redone run"
    (run_dir / "preferences.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prefs))
    s = merge.apply(run_dir)
    assert s["decisions"]["stale"] == 1 and s["decisions"]["swap"] == 0
    row = next(p for p in jl(run_dir / "reviewed" / "preferences.jsonl") if p["id"] == it["id"])
    assert row["expert_reviewed"] is False and row["chosen"][0]["content"].startswith("a different")


# ---- export / import -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_annotate_import_round_trip(run_dir, tmp_path, fmt):
    conn = db.open_run(run_dir)
    db.record(conn, db.items(conn)[0]["id"], "alice", "accept")
    f = tmp_path / f"items.{fmt}"
    assert review_main(["export", str(run_dir), str(f)]) == 0
    if fmt == "csv":
        import csv
        recs = list(csv.DictReader(f.open(newline="")))
        assert recs[0]["reviewer"] == "alice" and recs[0]["verdict"] == "accept" and recs[1]["verdict"] == ""
        recs[1].update(reviewer="bob", verdict="edit", chosen='Line one,\nline "two".', comment="tone")
        recs[2].update(verdict="Reject")  # reviewer from --reviewer; case-insensitive verdict
        with f.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(recs[0]))
            w.writeheader()
            w.writerows(recs)
    else:
        recs = jl(f)
        recs[1].update(reviewer="bob", verdict="edit", chosen='Line one,\nline "two".', comment="tone")
        recs[2].update(verdict="reject")
        f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    ids = [r["id"] for r in recs]
    assert review_main(["import", str(run_dir), str(f), "--reviewer", "carol"]) == 0
    cur = db.current(conn)
    assert cur[ids[1]]["bob"] == {**cur[ids[1]]["bob"], "verdict": "edit", "chosen": 'Line one,\nline "two".',
                                  "comment": "tone", "source": "import"}
    assert cur[ids[2]]["carol"]["verdict"] == "reject"
    n = len(db.history(conn))
    assert exchange.load(conn, f, reviewer="carol") == {"imported": 0, "unchanged": 3, "blank": len(recs) - 3}
    assert len(db.history(conn)) == n  # importing the same file twice adds nothing


@pytest.mark.parametrize("bad, msg", [
    ({"id": "ghost", "verdict": "accept", "reviewer": "x"}, r":2: item: unknown item 'ghost'"),
    ({"id": None, "verdict": "accept", "reviewer": "x"}, r":2: id: missing"),
    ({"verdict": "accept"}, r":2: reviewer: missing"),
    ({"verdict": "edit", "reviewer": "x"}, r":2: chosen: an edit verdict needs"),
    ({"verdict": "great", "reviewer": "x"}, r":2: verdict: 'great'"),
    ({"verdict": "swap", "reviewer": "x", "reviewed_at": "last tuesday"}, r":2: reviewed_at: 'last tuesday'"),
])
def test_bad_import_rows_name_the_line_and_store_nothing(run_dir, tmp_path, bad, msg):
    conn = db.open_run(run_dir)
    first = db.items(conn)[0]["id"]
    f = tmp_path / "v.jsonl"
    f.write_text(json.dumps({"id": first, "verdict": "accept", "reviewer": "ok"}) + "\n" +
                 json.dumps({"id": first, **bad}) + "\n")
    with pytest.raises(UserError, match=str(f) + msg):
        exchange.load(conn, f)
    assert db.history(conn) == []  # the good first row was not stored either


def test_csv_without_the_verdict_column_is_refused(run_dir, tmp_path):
    f = tmp_path / "v.csv"
    f.write_text("id,reviewer\nx,alice\n")
    conn = db.open_run(run_dir)
    with pytest.raises(UserError, match="missing column"):
        exchange.load(conn, f)
