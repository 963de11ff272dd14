"""serve --overlap K (issue 34 item 3): each item to K reviewers, each reviewer a queue of their own; skips pass an
item on, disputed items go to one more reviewer; the admin view's numbers and who may see them; the list's
disputed / domain / principle filters. Fake backend, no browser."""
import json
import sqlite3
import threading
from urllib.parse import urlencode

import pytest

from cai_gen.review import assign, auth, db
from cai_gen.review.__main__ import main as review_main

from .test_review import base_run, call, invite, jl, old_database, run_dir, serve, session  # noqa: F401  (fixtures)
from .test_review_access import host, raw


@pytest.fixture
def make(run_dir):  # noqa: F811
    """make(**kw): a started server (alice, bob, carol signed in); shut down after the test."""
    made = []

    def start(**kw):
        srv = serve(run_dir, **kw)
        made.append(srv)
        return srv
    yield start
    for srv in made:
        srv.shutdown()
        srv.server_close()


def ids_of(srv, who: str, **q) -> list[str]:
    code, st = call(srv, "/api/state?" + urlencode(q), who=who)
    assert code == 200, st
    return [i["id"] for i in st["items"]]


def add(srv, name: str, role: str = "reviewer") -> None:
    srv.tokens[name] = session(srv.run_dir, invite(srv.run_dir, name, role=role)[name])


def verdict(srv, who: str, item: str, v: str, **kw) -> int:
    return call(srv, "/api/verdict", {"item": item, "verdict": v, **kw}, who=who)[0]


def test_overlap_1_gives_each_reviewer_their_own_items(make, run_dir):  # noqa: F811
    queue = [it["id"] for it in jl(run_dir / "review_queue.jsonl")]
    assert len(queue) >= 5
    srv = make(overlap=1, batch=2)
    a, b = ids_of(srv, "alice"), ids_of(srv, "bob")
    assert len(a) == len(b) == 2 and not set(a) & set(b)
    st = call(srv, "/api/state", who="alice")[1]
    assert (st["total"], st["done"], st["overlap"]) == (2, 0, 1) and ids_of(srv, "alice") == a  # asking again adds none
    # another's item: neither shown nor judged
    assert call(srv, f"/api/item/{b[0]}", who="alice")[0] == 403
    assert verdict(srv, "alice", b[0], "accept") == 403
    assert call(srv, f"/api/item/{a[0]}", who="alice")[0] == 200
    # judging frees room in the batch: alice gets one more, never one of bob's
    assert verdict(srv, "alice", a[0], "accept") == 200
    a2 = ids_of(srv, "alice")
    assert len(a2) == 3 and set(a) <= set(a2)
    assert not set(a2) & set(ids_of(srv, "bob"))
    conn = db.connect(srv.db_path)
    held = conn.execute("SELECT item_id, count(*) FROM assignments GROUP BY item_id HAVING count(*) > 1").fetchall()
    assert held == []


def test_overlap_2_gives_each_item_to_two_and_no_more(make, run_dir):  # noqa: F811
    n = len(jl(run_dir / "review_queue.jsonl"))
    srv = make(overlap=2, batch=n)
    assert len(ids_of(srv, "alice")) == len(ids_of(srv, "bob")) == n
    assert ids_of(srv, "carol") == []          # every item has its two reviewers


def test_a_skip_passes_the_item_to_another_reviewer(make, run_dir):  # noqa: F811
    n = len(jl(run_dir / "review_queue.jsonl"))
    srv = make(overlap=1, batch=n)
    mine = ids_of(srv, "alice")
    assert len(mine) == n and ids_of(srv, "bob") == []
    assert verdict(srv, "alice", mine[2], "skip", comment="not my field") == 200
    assert ids_of(srv, "bob") == [mine[2]]     # a skip is no verdict: the place goes to bob
    assert mine[2] in ids_of(srv, "alice", show="mine")  # alice keeps it, as skipped, and does not get it again
    st = call(srv, "/api/state", who="alice")[1]
    assert st["done"] == 1 and st["total"] == n
    assert ids_of(srv, "carol") == []          # bob holds it now: one reviewer is K


def test_a_disputed_item_goes_to_one_more_reviewer_until_a_majority(make, run_dir):  # noqa: F811
    n = len(jl(run_dir / "review_queue.jsonl"))
    srv = make(overlap=2, batch=n)
    x, y = ids_of(srv, "alice")[:2]
    assert len(ids_of(srv, "bob")) == n
    for who, item, v in (("alice", x, "accept"), ("bob", x, "swap"), ("alice", y, "tie"), ("bob", y, "tie")):
        assert verdict(srv, who, item, v) == 200
    assert ids_of(srv, "carol") == [x]         # only the disputed one; the agreed one is done
    assert ids_of(srv, "alice", show="disputed") == [x]
    add(srv, "dana")
    assert ids_of(srv, "dana") == []           # carol holds the deciding place
    assert verdict(srv, "carol", x, "reject") == 200   # 1-1-1: still no majority, one more
    assert ids_of(srv, "dana") == [x]
    assert verdict(srv, "dana", x, "accept") == 200    # 2 accept: settled
    add(srv, "erin")
    assert ids_of(srv, "erin") == [] and ids_of(srv, "alice", show="disputed") == []


def test_an_item_leaves_the_queues_once_its_verdicts_are_in(make, run_dir):  # noqa: F811
    srv = make(overlap=1, batch=2)
    x = ids_of(srv, "alice")[0]
    add(srv, "root", role="admin")
    assert verdict(srv, "root", x, "accept") == 200    # an admin's verdict counts like anyone's
    assert x not in ids_of(srv, "alice") and call(srv, f"/api/item/{x}", who="alice")[0] == 403
    assert x not in ids_of(srv, "bob")


def test_revoking_a_reviewer_gives_their_unjudged_items_back(make, run_dir):  # noqa: F811
    n = len(jl(run_dir / "review_queue.jsonl"))
    srv = make(overlap=1, batch=n)
    mine = ids_of(srv, "alice")
    assert verdict(srv, "alice", mine[0], "accept") == 200
    conn = db.open_run(run_dir)
    auth.revoke(conn, "alice")
    conn.close()
    assert ids_of(srv, "bob") == mine[1:]      # her verdict stays; the rest is bob's


def test_reviewers_asking_at_once_never_share_an_item(make, run_dir):  # noqa: F811
    srv = make(overlap=1, batch=2)
    names = [f"r{k}" for k in range(6)]
    for name in names:
        add(srv, name)
    got, errors = {}, []

    def ask(name):
        for _ in range(3):
            code, st = call(srv, "/api/state", who=name)
            if code != 200:
                errors.append(code)
        got[name] = [i["id"] for i in st["items"]]
    threads = [threading.Thread(target=ask, args=(n,)) for n in names]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    every = [i for ids in got.values() for i in ids]
    assert len(every) == len(set(every)) and all(len(ids) <= 2 for ids in got.values())
    assert len(every) == min(len(jl(run_dir / "review_queue.jsonl")), 2 * len(names))


def test_verdicts_from_before_overlap_stay_in_the_reviewers_queue(make, run_dir):  # noqa: F811
    queue = [it["id"] for it in jl(run_dir / "review_queue.jsonl")]
    conn = db.open_run(run_dir)
    db.record(conn, queue[-1], "alice", "swap")  # given while everyone saw every item
    conn.close()
    srv = make(overlap=1, batch=2)
    assert ids_of(srv, "alice") == [*queue[:2], queue[-1]]   # still hers to see and change
    assert verdict(srv, "alice", queue[-1], "accept") == 200
    assert queue[-1] not in ids_of(srv, "bob")


def test_assignments_survive_a_restart(make, run_dir):  # noqa: F811
    srv = make(overlap=1, batch=2)
    a = ids_of(srv, "alice")
    srv.shutdown()
    srv.server_close()
    srv2 = make(overlap=1, batch=2)
    srv2.tokens["alice"] = srv.tokens["alice"]
    assert ids_of(srv2, "alice") == a


def test_without_overlap_everyone_sees_every_item_and_nothing_is_assigned(make, run_dir):  # noqa: F811
    srv = make()
    n = len(jl(run_dir / "review_queue.jsonl"))
    assert len(ids_of(srv, "alice")) == len(ids_of(srv, "bob")) == n
    conn = db.connect(srv.db_path)
    assert conn.execute("SELECT count(*) FROM assignments").fetchone()[0] == 0


# ---- the admin view ------------------------------------------------------------------------------------

def test_the_admin_view_shows_progress_agreement_and_disputes_to_admins_only(make, run_dir):  # noqa: F811
    srv = make(overlap=2, batch=3)
    add(srv, "root", role="admin")
    a, b = ids_of(srv, "alice"), ids_of(srv, "bob")
    assert a == b
    assert verdict(srv, "alice", a[0], "accept", seconds=2) == 200
    assert verdict(srv, "bob", a[0], "swap", seconds=30) == 200
    assert verdict(srv, "alice", a[1], "skip", comment="unsure", seconds=12) == 200
    assert call(srv, "/api/stats", who="alice")[0] == 403   # a reviewer sees no one's progress
    code, st = call(srv, "/api/stats", who="root")
    assert code == 200
    team = st["team"]
    assert team["overlap"] == 2 and team["items"] == len(jl(run_dir / "review_queue.jsonl"))
    assert team["reviewers"]["alice"] == {"assigned": 3, "judged": 1, "skipped": 1, "open": 1}
    assert team["reviewers"]["carol"]["assigned"] == 0
    assert team["disputed"] == [{"id": a[0], "votes": {"alice": "accept", "bob": "swap"}}]
    assert st["reviewers"]["alice"]["too_fast"] == 1 and st["agreement"]["comparisons"] == 1
    # an admin is never assigned and sees every item
    assert len(ids_of(srv, "root")) == team["items"]
    assert call(srv, f"/api/item/{a[2]}", who="root")[0] == 200


@pytest.mark.parametrize("headers", [{"Host": "evil.example"}, {"Origin": "http://evil.example"}])
def test_the_admin_view_from_another_site_is_403(make, run_dir, headers):  # noqa: F811
    srv = make(overlap=1)
    add(srv, "root", role="admin")
    code, _, body = raw(srv, "GET", "/api/stats", {"Host": host(srv), "Authorization": f"Bearer {srv.tokens['root']}",
                                                  **headers})
    assert code == 403 and b"team" not in body
    assert raw(srv, "GET", "/api/stats", {"Host": host(srv)})[0] == 401


# ---- the list's filters --------------------------------------------------------------------------------

def test_the_list_filters_by_domain_and_principle(make, run_dir):  # noqa: F811
    items = jl(run_dir / "review_queue.jsonl")
    srv = make()
    st = call(srv, "/api/state")[1]
    assert st["domains"] == sorted({it["domain"] for it in items if it.get("domain")})
    names = sorted({r["principle"] for it in items for r in it["rounds"]})
    assert st["principles"] == names
    p = names[0]
    want = [it["id"] for it in items if p in [r["principle"] for r in it["rounds"]]]
    assert ids_of(srv, "alice", principle=p) == want
    assert ids_of(srv, "alice", principle=p[:-1]) == []  # whole names only
    d = st["domains"][0]
    assert ids_of(srv, "alice", domain=d) == [it["id"] for it in items if it.get("domain") == d]
    assert call(srv, "/api/state?show=disputed")[1]["matched"] == 0


def test_v7_database_gets_assignments_and_the_principles_column(run_dir):  # noqa: F811
    path = run_dir / db.FILE
    conn, it = old_database(run_dir, 7)
    conn.close()
    conn = db.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.VERSION == 8
    got = conn.execute("SELECT principles FROM items WHERE id = ?", (it["id"],)).fetchone()[0]
    assert got.strip(db.SEP).split(db.SEP) == list(dict.fromkeys(r["principle"] for r in it["rounds"]))
    assert assign.top_up(conn, "ann", 1, 5) == [it["id"]]


@pytest.mark.parametrize("flag", [["--overlap", "0"], ["--overlap", "1", "--batch", "0"]])
def test_serve_with_a_bad_overlap_is_one_line(run_dir, capsys, flag):  # noqa: F811
    assert review_main(["serve", str(run_dir), "--port", "0", *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag[-2] in err[0]


def test_status_reports_the_queues_of_the_last_serve(make, run_dir, capsys):  # noqa: F811
    srv = make(overlap=2, batch=2)
    x = ids_of(srv, "alice")[0]
    assert ids_of(srv, "bob")[0] == x
    assert verdict(srv, "alice", x, "accept") == 200 and verdict(srv, "bob", x, "reject") == 200
    capsys.readouterr()
    assert review_main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    n = len(jl(run_dir / "review_queue.jsonl"))
    assert out[0] == f"{n} items routed, 1 reviewed by someone, 0 with their verdicts in, 1 disputed (serve --overlap 2)"
    assert "  alice: queue 2, judged 1, skipped 0, open 1" in out and "  carol: queue 0, judged 0, skipped 0, open 0" in out
