"""Expert review: routing, the SQLite store (history, migrations, bad files), the HTTP API, merging verdicts,
agreement, and the JSONL/CSV round trip. Runs on the fake backend (fast); the page itself is driven in a real
browser in test_review_page.py."""
import csv
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cai_gen import pipeline
from cai_gen.backends.fake import FakeBackend
from cai_gen.config import ReviewCfg
from cai_gen.errors import UserError
from cai_gen import routing as route
from cai_gen.review import api, auth, db, exchange, merge
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
    old = {"id": "x-s0", "original": "o", "revision": "r"}
    conn.execute("INSERT INTO items VALUES ('x-s0', ?, '2026-01-01T00:00:00+00:00')", (json.dumps(old),))
    conn.execute("INSERT INTO verdicts(item_id, reviewer, verdict, created_at) VALUES ('x-s0', 'ann', 'swap', 't')")
    conn.close()
    conn = db.open_run(run_dir)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.VERSION == 8
    assert db.history(conn, "x-s0") == [{"item": "x-s0", "reviewer": "ann", "verdict": "swap", "chosen": None,
                                         "comment": None, "at": "t", "source": "web",
                                         "hash": db.content_hash(old), "shown_first": None, "seconds": None,
                                         "ratings": None, "tags": None}]
    # x-s0 is not in this run's queue: retired, not deleted
    assert [it["id"] for it in db.items(conn)] == [it["id"] for it in jl(run_dir / "review_queue.jsonl")]
    assert db.retired(conn) == ["x-s0"] and db.version(conn, "x-s0", db.content_hash(old)) == old


def v2_database(path: Path, items: list[dict], verdicts: list[tuple[str, str, str]]) -> None:
    """A review.sqlite as the schema-v2 code wrote it (INSERT OR IGNORE kept each item's first text)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(db.MIGRATIONS[0] + db.MIGRATIONS[1])
    conn.execute("PRAGMA user_version = 2")
    conn.executemany("INSERT INTO items VALUES (?, ?, 't0')", [(it["id"], json.dumps(it)) for it in items])
    conn.executemany("INSERT INTO verdicts(item_id, reviewer, verdict, created_at) VALUES (?, ?, ?, 't1')",
                     verdicts)
    conn.close()


def test_v2_database_from_before_a_rerun_is_migrated_and_refreshed(run_dir):
    queue = jl(run_dir / "review_queue.jsonl")
    same, changed = queue[0], {**queue[1], "revision": "the revision an earlier run made"}
    v2_database(run_dir / db.FILE, [same, changed], [(same["id"], "ann", "reject"), (changed["id"], "ann", "swap")])
    conn = db.open_run(run_dir)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.VERSION
    stored = {it["id"]: it for it in db.items(conn)}
    assert stored[changed["id"]] == queue[1]  # the current run's text, not the one the old code kept
    cur = db.current(conn)
    assert cur[same["id"]]["ann"]["verdict"] == "reject"  # given on the text still shown: still counts
    assert changed["id"] not in cur
    assert [h["verdict"] for h in db.history(conn, changed["id"])] == ["swap"]
    assert db.version(conn, changed["id"], db.history(conn, changed["id"])[0]["hash"]) == changed
    conn.close()
    s = merge.apply(run_dir)
    assert s["decisions"]["swap"] == 0 and s["decisions"]["stale"] == 1 and s["decisions"]["reject"] == 1


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

def invite(run_dir: Path, *names: str, role: str = "reviewer") -> dict[str, str]:
    conn = db.open_run(run_dir)
    try:
        return {n: auth.invite(conn, n, role) for n in names}
    finally:
        conn.close()


def session(run_dir: Path, token: str) -> str:
    """The session an invite token signs in to (what POST /api/signin does), for `Authorization: Bearer`."""
    conn = db.connect(run_dir / db.FILE)
    try:
        return auth.redeem(conn, token)[1]
    finally:
        conn.close()


def serve(run_dir: Path, **kw) -> ReviewServer:
    """A started server with alice, bob and carol signed in (srv.tokens: their sessions, sent as Bearer);
    labelled view unless blind=True."""
    srv = ReviewServer(run_dir, port=0, **{"blind": False, **kw})  # first: srv.changes is what its sync did
    srv.tokens = {n: session(run_dir, t) for n, t in invite(run_dir, "alice", "bob", "carol").items()}
    srv.start()
    return srv


@pytest.fixture
def server(run_dir):
    srv = serve(run_dir)
    yield srv
    srv.shutdown()
    srv.server_close()


def call(srv, path, body=None, who="alice", headers=None):
    """An API call as `who` (Bearer token; who=None: no token), JSON body unless bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {srv.tokens[who]}"} if who else {}),
         **(headers or {})}
    req = urllib.request.Request(srv.url + path.lstrip("/"), data=data, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_api_records_and_reports_progress(server, run_dir):
    code, st = call(server, "/api/state")
    assert code == 200 and st["done"] == 0 and st["total"] == len(jl(run_dir / "review_queue.jsonl"))
    assert st["reviewer"] == "alice" and st["run"] == run_dir.name  # a name, never the server's path
    first = st["items"][0]["id"]
    code, r = call(server, "/api/verdict", {"item": first, "verdict": "swap", "comment": "hm"})
    assert code == 200 and r["done"] == 1
    code, it = call(server, f"/api/item/{first}")
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
            code, _ = call(server, "/api/verdict", {"item": ids[k % len(ids)],
                                                    "verdict": ("accept", "swap", "reject")[k % 3]}, who=name)
            if code != 200:
                errors.append(code)
    threads = [threading.Thread(target=work, args=(n,)) for n in ("alice", "bob", "carol")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    conn = db.connect(server.db_path)
    assert len(db.history(conn)) == 90


def raw_post(srv, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """POST /api/verdict over a plain socket, with whatever headers a hostile client sends. The socket timeout
    turns a server that waits forever into a failed test (socket.timeout), not a hung one."""
    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"POST /api/verdict HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: application/json\r\n" % port
                     + b"Authorization: Bearer " + srv.tokens["alice"].encode() + b"\r\n" + head + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status, _, rest = data.partition(b"\r\n")
    assert status.startswith(b"HTTP/1."), f"no HTTP response, got {data[:200]!r}"
    return int(status.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("length, code", [
    (b"-1", 400),                   # was rfile.read(-1): waited for the client to close
    (b"-5", 400),
    (b"abc", 400),                  # was int("abc"): a traceback and no response
    (b"1_0", 400),                  # int() accepts these two; a length does not
    (b" +10", 400),
    (b"10, 11", 400),               # was a traceback too
    (b"2000000", 413),
    # longer than int() converts: h11 (uvicorn's parser) refuses a length of over 20 digits as malformed
    pytest.param(b"9" * 5000, 400, id="5000-digits"),
    (None, 411),
])
def test_bad_content_length_is_answered_at_once(server, capfd, length, code):
    # no body: the server answers without reading one, and unread bytes would make its close a reset
    got, r = raw_post(server, b"" if length is None else b"Content-Length: " + length + b"\r\n")
    assert got == code and r["error"]
    assert call(server, "/api/state")[0] == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_two_different_content_lengths_are_refused(server):
    got, r = raw_post(server, b"Content-Length: 2\r\nContent-Length: 13\r\n")
    assert got == 400 and "Content-Length" in r["error"]


def test_a_client_that_stops_sending_is_dropped(run_dir):
    srv = serve(run_dir, client_timeout=0.5)
    try:
        host, port = srv.server_address[:2]
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"POST /api/verdict HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: application/json\r\n" % port
                         + b"Authorization: Bearer " + srv.tokens["alice"].encode()
                         + b"\r\nContent-Length: 100\r\n\r\n{}")
            assert sock.recv(65536) == b""  # the server closed the connection instead of waiting for 98 bytes
        assert call(srv, "/api/state")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def closed_by_server(sock: socket.socket, dribble: bytes = b"", every: float = 0.2, bound: float = 60.0) -> bool:
    """Send `dribble` one byte at a time, `every` seconds apart (nothing: just wait), until the server closes the
    connection (True) or `bound` seconds pass (False). The bound is generous: no claim on speed, only that the
    connection does not live for ever."""
    end = time.monotonic() + bound
    k = 0
    while time.monotonic() < end:
        try:
            if dribble:
                sock.send(dribble[k % len(dribble):k % len(dribble) + 1])
                k += 1
            if select.select([sock], [], [], every)[0] and sock.recv(65536) == b"":
                return True
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


@pytest.mark.parametrize("stage", ["headers", "body", "silent"])
def test_a_client_that_dribbles_its_request_is_closed(run_dir, stage):
    """Issue 31 item 16: a client sending a byte every few seconds was kept for ever (each byte restarted the
    socket timeout). A request must now arrive whole within client_timeout of its first byte; the server keeps
    serving others meanwhile."""
    srv = serve(run_dir, client_timeout=1)
    try:
        host, port = srv.server_address[:2]
        head = b"POST /api/verdict HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: application/json\r\n" % port
        with socket.create_connection((host, port), timeout=30) as sock:
            if stage == "headers":  # a header that never ends (slowloris)
                sock.sendall(head)
                assert closed_by_server(sock, b"x-slow-header-value")
            elif stage == "body":  # the headers whole, then a body far shorter than its length, byte by byte
                sock.sendall(head + b"Authorization: Bearer " + srv.tokens["alice"].encode()
                             + b"\r\nContent-Length: 100000\r\n\r\n")
                assert closed_by_server(sock, b'{"item": "x", "comment": "' + b"a" * 64)
            else:  # connected, never a byte
                assert closed_by_server(sock)
        assert call(srv, "/api/state")[0] == 200
        assert db.history(db.connect(srv.db_path)) == []
    finally:
        srv.shutdown()
        srv.server_close()


def test_connections_past_the_cap_are_closed_and_those_under_it_served(run_dir):
    """Issue 31 item 16: connections open at once are capped (the review page's, not the operating system's
    file limit); a connection past the cap is closed before it is read."""
    srv = serve(run_dir, max_connections=3, client_timeout=60)
    try:
        addr = srv.server_address[:2]
        held = [socket.create_connection(addr, timeout=30) for _ in range(3)]
        with socket.create_connection(addr, timeout=30) as extra:
            assert closed_by_server(extra, bound=30)
        for sock in held:  # the three under the cap, still open, are served
            with sock:
                sock.sendall(b"GET /api/state HTTP/1.1\r\nHost: localhost:%d\r\nAuthorization: Bearer %s\r\n"
                             b"Connection: close\r\n\r\n" % (addr[1], srv.tokens["alice"].encode()))
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200 ")
        assert call(srv, "/api/state")[0] == 200  # closed ones leave room for new ones
    finally:
        srv.shutdown()
        srv.server_close()


def ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_serve_binds_the_ipv6_loopback(run_dir):
    """Issue 31 item 16: `serve --host ::1` failed to bind (the stdlib server was IPv4 only). The CLI serves
    there, links and Host checks use [::1]:PORT, and Ctrl-C stops it with its closing line."""
    conn = db.open_run(run_dir)
    token = auth.invite(conn, "alice")
    conn.close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "cai_gen.review", "serve", str(run_dir), "--host", "::1",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # the line with the address, printed once the socket is bound
        assert line.startswith("cai_gen review: http://[::1]:"), line + proc.stderr.read()
        url = line.split()[2]
        srv = type("Srv", (), {"url": url, "tokens": {"alice": session(run_dir, token)}})
        code, st = call(srv, "/api/state")
        assert code == 200 and st["reviewer"] == "alice"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped; 0 verdict(s) stored" in out, out + err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("kind", ["deep", "comment", "hash"])
def test_hostile_bodies_are_400_not_500(server, capfd, kind):
    item = call(server, "/api/state")[1]["items"][0]["id"]
    body = {"deep": b"[" * 5000,  # nested past json's recursion limit (sys.getrecursionlimit())
            "comment": json.dumps({"item": item, "reviewer": "al", "verdict": "accept", "comment": {"a": 1}}).encode(),
            "hash": json.dumps({"item": item, "reviewer": "al", "verdict": "accept", "hash": 7}).encode()}[kind]
    got, r = raw_post(server, b"Content-Length: %d\r\n" % len(body), body)
    assert got == 400 and r["error"]
    assert "Traceback" not in capfd.readouterr().err
    assert db.history(db.connect(server.db_path)) == []


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
    # KTO: two rows per kept pair, one per no-violation row (carried from the run: nothing there to review)
    nv = jl(run_dir / "reviewed" / "no_violation.jsonl")
    assert nv == jl(run_dir / "no_violation.jsonl")
    kto, sft = jl(run_dir / "reviewed" / "kto.jsonl"), jl(run_dir / "reviewed" / "sft.jsonl")
    assert len(kto) == 2 * len(out) + len(nv) and len(sft) == len(out) + len(nv)
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


def rerun_changes(run_dir: Path, item_id: str, revision: str) -> None:
    """What a rerun that regenerates one pair's revision writes: the pair and its review item, both changed."""
    prefs, queue = jl(run_dir / "preferences.jsonl"), jl(run_dir / "review_queue.jsonl")
    for p in prefs:
        if p["id"] == item_id:
            assert "judge_swapped" not in p["flags"]  # the revision is the chosen answer
            p["chosen"][0]["content"] = revision
    for it in queue:
        if it["id"] == item_id:
            it["revision"] = revision
    (run_dir / "preferences.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prefs))
    (run_dir / "review_queue.jsonl").write_text("".join(json.dumps(it) + "\n" for it in queue))


def test_rerun_that_changes_a_pair_refreshes_the_item_and_old_verdicts_stop_counting(run_dir):
    conn = db.open_run(run_dir)
    first, other = db.items(conn)[:2]
    db.record(conn, first["id"], "alice", "swap", comment="the original reads better")
    db.record(conn, other["id"], "alice", "accept")
    conn.close()
    rerun_changes(run_dir, first["id"], "A new revision from the rerun.")
    queue = jl(run_dir / "review_queue.jsonl")  # the rerun also routed `other` by another rule, same text
    for it in queue:
        if it["id"] == other["id"]:
            it["routed_by"] = ["flag:reward_margin_low"]
    (run_dir / "review_queue.jsonl").write_text("".join(json.dumps(it) + "\n" for it in queue))

    srv = serve(run_dir)  # `serve` after the rerun
    try:
        assert srv.changes == {"added": 0, "refreshed": 1, "retired": 0, "restored": 0}
        code, shown = call(srv, f"/api/item/{first['id']}")
        assert code == 200 and shown["item"]["revision"] == "A new revision from the rerun."
        assert shown["mine"] is None and shown["reviews"] == 0  # alice judged the old text, not this one
        code, _ = call(srv, "/api/verdict", {"item": first["id"], "verdict": "accept", "hash": shown["hash"]},
                       who="bob")
        assert code == 200
    finally:
        srv.shutdown()
        srv.server_close()

    s = merge.apply(run_dir)
    out = {p["id"]: p for p in jl(run_dir / "reviewed" / "preferences.jsonl")}
    row = out[first["id"]]
    # bob's verdict on the new text applies alone: alice's swap on the old text is neither a vote nor a tie
    assert (row["verdict"], row["reviewer"]) == ("accept", "bob")
    assert row["chosen"][0]["content"] == "A new revision from the rerun."
    assert out[other["id"]]["verdict"] == "accept" and out[other["id"]]["reviewer"] == "alice"  # routing only
    assert s["decisions"]["swap"] == 0 and s["decisions"]["disputed"] == 0 and s["decisions"]["accept"] == 2
    conn = db.connect(run_dir / db.FILE)
    old = db.history(conn, first["id"])[0]
    assert (old["reviewer"], old["verdict"], old["comment"]) == ("alice", "swap", "the original reads better")
    assert db.version(conn, first["id"], old["hash"])["revision"] == first["revision"]  # what alice saw


def test_a_verdict_on_text_replaced_since_the_page_loaded_is_refused(run_dir):
    srv = serve(run_dir)
    try:
        item_id = call(srv, "/api/state")[1]["items"][0]["id"]
        seen = call(srv, f"/api/item/{item_id}")[1]["hash"]
        rerun_changes(run_dir, item_id, "Rewritten while the page was open.")
        db.open_run(run_dir).close()  # a `merge`/`status`/restart syncs the queue while the page stays open
        code, r = call(srv, "/api/verdict", {"item": item_id, "verdict": "swap", "hash": seen})
        assert code == 409 and "changed since this page loaded it" in r["error"]
        assert db.history(db.connect(srv.db_path)) == []
    finally:
        srv.shutdown()
        srv.server_close()


def test_unrouted_item_is_retired_keeping_its_verdicts_and_comes_back_when_routed_again(run_dir):
    conn = db.open_run(run_dir)
    sampled = next(it for it in db.items(conn) if it["routed_by"] == ["sample"])  # routed only by the sample
    db.record(conn, sampled["id"], "alice", "swap")
    conn.close()
    narrow = make_cfg("backend=fake", "limit=12", "review.domains=[billing]", "review.sample_rate=0")
    pipeline.run(narrow, run_dir, backend=FakeBackend("fake", narrow.model.name, max_model_len=2048))

    conn = db.open_run(run_dir)
    assert sampled["id"] not in {it["id"] for it in db.items(conn)}
    assert sampled["id"] in db.retired(conn)
    assert [h["verdict"] for h in db.history(conn, sampled["id"])] == ["swap"]  # not deleted
    with pytest.raises(UserError, match="unknown item"):
        db.record(conn, sampled["id"], "bob", "accept")
    conn.close()
    s = merge.apply(run_dir)
    row = next(p for p in jl(run_dir / "reviewed" / "preferences.jsonl") if p["id"] == sampled["id"])
    assert row["expert_reviewed"] is False and row["verdict"] is None  # the retired verdict is not merged
    assert s["decisions"]["swap"] == 0 and s["orphaned"] == 1 and s["retired"] >= 1

    wide = make_cfg(*OVERRIDES)  # the first routing again: same text, so alice's verdict counts again
    pipeline.run(wide, run_dir, backend=FakeBackend("fake", wide.model.name, max_model_len=2048))
    conn = db.open_run(run_dir)
    assert db.current(conn)[sampled["id"]]["alice"]["verdict"] == "swap" and db.retired(conn) == []


def test_import_of_verdicts_made_before_a_rerun_keeps_them_unapplied(run_dir, tmp_path):
    conn = db.open_run(run_dir)
    f = tmp_path / "out.jsonl"
    exchange.export(conn, f)
    conn.close()
    recs = jl(f)
    recs[0].update(reviewer="carol", verdict="swap")
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rerun_changes(run_dir, recs[0]["id"], "Changed while the file was out for annotation.")
    conn = db.open_run(run_dir)
    assert exchange.load(conn, f) == {"imported": 1, "unchanged": 0, "blank": len(recs) - 1, "stale": 1,
                                      "superseded": 0}
    assert recs[0]["id"] not in db.current(conn) and db.history(conn)[0]["reviewer"] == "carol"
    assert exchange.load(conn, f)["imported"] == 0  # the same file twice adds nothing, stale rows included


# ---- export / import -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_annotate_import_round_trip(run_dir, tmp_path, fmt):
    conn = db.open_run(run_dir)
    db.record(conn, db.items(conn)[0]["id"], "alice", "accept")
    f = tmp_path / f"items.{fmt}"
    assert review_main(["export", str(run_dir), str(f), "--unblind"]) == 0
    if fmt == "csv":
        import csv
        recs = list(csv.DictReader(f.open(newline="")))
        assert recs[0]["reviewer"] == "alice" and recs[0]["verdict"] == "accept" and recs[1]["verdict"] == ""
        recs[1].update(reviewer="bob", verdict="edit", chosen='Line one,\nline "two".', comment="tone")
        recs[2].update(verdict="Reject")  # reviewer from --reviewer; case-insensitive verdict
        write_csv(f, recs)
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
    assert exchange.load(conn, f, reviewer="carol") == {"imported": 0, "unchanged": 3, "blank": len(recs) - 3,
                                                       "stale": 0, "superseded": 0}
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


# ---- issue 24: import twice, import first, every turn, one check per server ------------------------------

def test_reimporting_two_rows_for_one_item_and_reviewer_adds_nothing(run_dir, tmp_path, capsys):
    db.open_run(run_dir).close()  # as after a `serve`
    item = jl(run_dir / "review_queue.jsonl")[0]["id"]
    f = tmp_path / "v.jsonl"
    f.write_text(json.dumps({"id": item, "reviewer": "carol", "verdict": "accept"}) + "\n"
                 + json.dumps({"id": item, "reviewer": "carol", "verdict": "swap", "comment": "on second thought"})
                 + "\n")
    assert review_main(["import", str(run_dir), str(f)]) == 0
    first = capsys.readouterr().out
    conn = db.connect(run_dir / db.FILE)
    assert db.current(conn)[item]["carol"]["verdict"] == "swap"  # the file's last row
    n = len(db.history(conn))
    for _ in range(2):  # the old code flipped it back to accept on every re-import
        assert review_main(["import", str(run_dir), str(f)]) == 0
        assert db.current(conn)[item]["carol"]["verdict"] == "swap" and len(db.history(conn)) == n
    assert "1 row(s) skipped: a later row" in first  # says which row counted
    assert "imported 0 verdicts (1 unchanged" in capsys.readouterr().out


def test_import_before_any_serve_or_export_works(run_dir, tmp_path, capsys):
    assert not (run_dir / db.FILE).exists()
    item = jl(run_dir / "review_queue.jsonl")[0]["id"]
    f = tmp_path / "v.jsonl"
    f.write_text(json.dumps({"id": item, "reviewer": "carol", "verdict": "reject"}) + "\n")
    assert review_main(["import", str(run_dir), str(f)]) == 0, capsys.readouterr().err
    assert db.current(db.connect(run_dir / db.FILE))[item]["carol"]["verdict"] == "reject"


TURNS = [{"role": "system", "content": "You are the billing desk."},
         {"role": "user", "content": "First question about my invoice."},
         {"role": "assistant", "content": "An earlier answer from the desk."},
         {"role": "user", "content": "And the follow-up?"}]


def test_multi_turn_prompt_shows_every_turn_in_the_api_and_the_csv(run_dir, tmp_path):
    queue = jl(run_dir / "review_queue.jsonl")
    queue[0]["prompt"] = TURNS
    (run_dir / "review_queue.jsonl").write_text("".join(json.dumps(it) + "\n" for it in queue))
    conn = db.open_run(run_dir)
    f = tmp_path / "out.csv"
    exchange.export(conn, f)
    conn.close()
    import csv
    row = next(r for r in csv.DictReader(f.open(newline="")) if r["id"] == queue[0]["id"])
    assert row["system"] == "You are the billing desk."
    assert row["prompt"] == ("user: First question about my invoice.\n\nassistant: An earlier answer from the desk."
                             "\n\nuser: And the follow-up?")
    srv = serve(run_dir, blind=True)
    try:
        assert call(srv, f"/api/item/{queue[0]['id']}")[1]["item"]["prompt"] == TURNS  # page.js shows each turn
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_database_is_checked_once_at_start_not_per_request(run_dir, monkeypatch):
    statements = []
    real = sqlite3.connect

    def traced(*a, **k):
        conn = real(*a, **k)
        conn.set_trace_callback(statements.append)
        return conn
    monkeypatch.setattr(sqlite3, "connect", traced)
    ReviewServer(run_dir, port=0).server_close()
    assert sum("quick_check" in s for s in statements) == 1  # at start
    srv = serve(run_dir)
    try:
        item = call(srv, "/api/state")[1]["items"][0]["id"]
        statements.clear()
        for _ in range(3):
            assert call(srv, f"/api/item/{item}")[0] == 200
        assert call(srv, "/api/verdict", {"item": item, "verdict": "accept"})[0] == 200
        assert statements and not [s for s in statements if "quick_check" in s]  # 4 requests, no check
    finally:
        srv.shutdown()
        srv.server_close()


def test_serve_on_a_port_out_of_range_is_one_line(run_dir, capsys):
    assert review_main(["serve", str(run_dir), "--port", "99999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--port: 99999 is not a port number" in err[0]


@pytest.mark.parametrize("flag, value", [("--request-timeout", "0"), ("--request-timeout", "nan"),
                                         ("--max-connections", "0")])
def test_serve_with_no_time_or_room_for_a_request_is_one_line(run_dir, capsys, flag, value):
    assert review_main(["serve", str(run_dir), "--port", "0", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag}: " in err[0]


def test_invite_links_use_the_port_serve_uses(run_dir, capsys):
    srv = serve(run_dir)  # port 0: a free port, not 8765
    try:
        port = srv.server_address[1]
        assert port != 8765
        capsys.readouterr()
        assert review_main(["invite", str(run_dir), "dana"]) == 0
        link = capsys.readouterr().out.strip()
        assert link.startswith(f"http://127.0.0.1:{port}/?token=")
        assert review_main(["invite", str(run_dir), "erin", "--public-url", "https://r.example.org"]) == 0
        assert capsys.readouterr().out.startswith("https://r.example.org/?token=")  # told otherwise: as told
    finally:
        srv.shutdown()
        srv.server_close()


def test_v4_database_is_upgraded_old_sessions_end_and_search_and_ab_key_are_filled(run_dir):
    path = run_dir / db.FILE
    conn = sqlite3.connect(path, isolation_level=None)
    for m in db.MIGRATIONS[:4]:
        if callable(m):
            m(conn)
        else:
            conn.executescript(m)
    conn.execute("PRAGMA user_version = 4")
    it = jl(run_dir / "review_queue.jsonl")[0]
    conn.execute("INSERT INTO items(id, payload, added_at, content_hash, routed_by) VALUES (?, ?, 't', ?, '')",
                 (it["id"], json.dumps(it), db.content_hash(it)))
    used, fresh = "used-token", "fresh-token"
    # made just now: v6 ends an unused link INVITE_HOURS after it was made, so ben's still works
    conn.executemany("INSERT INTO tokens(name, role, token_hash, created_at) VALUES (?, 'reviewer', ?, ?)",
                     [("ann", auth._hash(used), db.now()), ("ben", auth._hash(fresh), db.now())])
    conn.execute("INSERT INTO sessions VALUES (?, 1, 't')", (auth._hash("old-session"),))
    conn.close()
    conn = db.open_run(run_dir)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.VERSION and len(db.get_meta(conn, "ab_key")) == 64
    assert auth.by_session(conn, "old-session") is None  # it never expired before v5: it ends now
    assert auth.redeem(conn, used) is None and auth.redeem(conn, fresh)[0].name == "ben"
    from cai_gen.review import api
    assert it["id"] in [i["id"] for i in api.listing(conn, "ann", q=it["revision"])["items"]]  # search filled
    assert api.listing(conn, "ann", q='"revision"')["matched"] == 0


# ---- verdict kinds, ratings, reason tags (issue 34 item 1) ----------------------------------------------

GUIDE = {"guidelines": [{"name": "helpfulness", "text": "Would the customer act on it?"},
                        {"name": "tone", "text": "Is it courteous?"}], "tags": ["invents facts", "wrong role"]}


def with_guide(run_dir: Path, guide: dict) -> None:
    """The run's constitution.json with a `review:` section (what a run writes from a constitution that has one)."""
    p = run_dir / "constitution.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "review": guide}))


def test_blind_api_takes_every_verdict_kind_with_ratings_and_tags(run_dir):
    with_guide(run_dir, GUIDE)
    srv = serve(run_dir, blind=True)
    items = jl(run_dir / "review_queue.jsonl")[:6]
    try:
        st = call(srv, "/api/state")[1]
        assert st["rubric"] == GUIDE["guidelines"] and st["scale"] == [1, 5]  # the constitution's own wording
        shown = call(srv, f"/api/item/{items[0]['id']}")[1]
        principle = items[0]["rounds"][0]["principle"]
        assert shown["tags"] == [*dict.fromkeys([r["principle"] for r in items[0]["rounds"]]), *GUIDE["tags"]]
        kinds = [("A", None), ("B", None), ("tie", None), ("reject", None), ("edit", "Mine."), ("skip", None)]
        for it, (v, chosen) in zip(items, kinds):
            body = {"item": it["id"], "verdict": v, "chosen": chosen, "comment": "unsure: legal" if v == "skip" else None,
                    "ratings": {"A": {"helpfulness": 2, "tone": 5}, "B": {"helpfulness": 4}},
                    "tags": ["invents facts"] + ([principle] if it is items[0] else [])}
            code, r = call(srv, "/api/verdict", body)
            assert code == 200, r
            mine = call(srv, f"/api/item/{it['id']}")[1]["mine"]
            assert mine["verdict"] == v and mine["ratings"] == body["ratings"]  # shown as the reviewer gave it
        for bad, field in [({"verdict": "skip"}, "comment: a skip needs a reason"),
                           ({"verdict": "A", "ratings": {"A": {"helpfulness": 6}}}, "ratings.revision.helpfulness"
                            if api.shown_first(srv.ab_key, items[0]["id"], "alice") == "revision"
                            else "ratings.original.helpfulness"),
                           ({"verdict": "A", "ratings": {"A": {"safety": 3}}}, "ratings: ['safety'] not among"),
                           ({"verdict": "A", "ratings": {"revision": {"tone": 3}}}, "ratings: must map A / B"),
                           ({"verdict": "A", "tags": ["made up"]}, "tags: ['made up'] not among"),
                           ({"verdict": "accept"}, "verdict: 'accept'")]:
            code, r = call(srv, "/api/verdict", {"item": items[0]["id"], **bad})
            assert code == 400 and r["error"].startswith(field), r
    finally:
        srv.shutdown()
        srv.server_close()
    conn = db.connect(run_dir / db.FILE)
    hist = db.history(conn)
    conn.close()
    assert [h["verdict"] for h in hist] == ["accept" if h["shown_first"] == "revision" else "swap" for h in hist[:1]] \
        + [hist[1]["verdict"], "tie", "reject", "edit", "skip"]
    for h in hist:  # ratings stored by answer, whichever letter it was shown under
        a = h["shown_first"]
        b = "original" if a == "revision" else "revision"
        assert h["ratings"] == {a: {"helpfulness": 2, "tone": 5}, b: {"helpfulness": 4}}
        assert "invents facts" in h["tags"]
    assert hist[5]["comment"] == "unsure: legal"


def test_merge_maps_ties_skips_and_ratings_to_the_written_sides(run_dir):
    conn = db.open_run(run_dir)
    items = db.items(conn)
    acc, swp, tie, skip, skip2, ed = items[:6]
    r = {"revision": {"helpfulness": 5}, "original": {"helpfulness": 1, "format": 2}}
    db.record(conn, acc["id"], "alice", "accept", ratings=r)
    db.record(conn, acc["id"], "bob", "accept", ratings={"revision": {"helpfulness": 4}})
    db.record(conn, swp["id"], "alice", "swap", ratings=r)
    db.record(conn, tie["id"], "alice", "tie")
    db.record(conn, skip["id"], "alice", "skip", comment="not my field")
    db.record(conn, skip2["id"], "alice", "skip", comment="not my field")  # skip + a verdict: no dispute
    db.record(conn, skip2["id"], "bob", "swap")
    db.record(conn, ed["id"], "alice", "edit", chosen="Expert text.", ratings=r)
    conn.close()
    assert review_main(["merge", str(run_dir)]) == 0
    out = {p["id"]: p for p in jl(run_dir / "reviewed" / "preferences.jsonl")}
    assert tie["id"] not in out and [d["id"] for d in jl(run_dir / "reviewed" / "dropped.jsonl")] == [tie["id"]]
    assert out[skip["id"]]["expert_reviewed"] is False and out[skip["id"]]["verdict"] is None
    assert out[skip2["id"]]["verdict"] == "swap" and out[skip2["id"]]["reviewer"] == "bob"
    assert out[acc["id"]]["ratings"] == {"format": {"chosen": None, "rejected": 2.0},
                                         "helpfulness": {"chosen": 4.5, "rejected": 1.0}}
    # swapped: the chosen text is the original, so its ratings are the original's
    assert out[swp["id"]]["ratings"]["helpfulness"] == {"chosen": 1.0, "rejected": 5.0}
    assert out[ed["id"]]["ratings"]["helpfulness"] == {"chosen": None, "rejected": 1.0}  # nobody rated the edit
    assert out[items[7]["id"]]["ratings"] is None
    s = json.loads((run_dir / "reviewed" / "review.json").read_text())
    assert s["decisions"]["tie"] == 1 and "skip" not in s["decisions"] and s["decisions"]["swap"] == 2
    assert s["agreement"]["comparisons"] == 1  # acc: alice and bob; skip2's skip is nobody's judgement to agree with
    assert s["ratings"]["helpfulness"] == {"revision": 4.75, "original": 1.0, "n": 7, "pairs": 1, "agreement": 0.0,
                                           "within_one": 1.0}  # acc's revision: alice 5, bob 4
    card = (run_dir / "README.md").read_text()
    assert "| helpfulness | 4.75 | 1.0 | 7 |" in card and "tie (both fine)" in card


def write_csv(f: Path, recs: list[dict]) -> None:
    """Rows back into a CSV as a spreadsheet saves them (the header from the first row)."""
    with f.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)


def old_database(run_dir, version: int):
    """The run's review.sqlite as schema `version` left it, holding the queue's first item: (connection, item)."""
    conn = sqlite3.connect(run_dir / db.FILE, isolation_level=None)
    for m in db.MIGRATIONS[:version]:
        m(conn) if callable(m) else conn.executescript(m)
    conn.execute(f"PRAGMA user_version = {version}")
    it = jl(run_dir / "review_queue.jsonl")[0]
    conn.execute("INSERT INTO items(id, payload, added_at, content_hash) VALUES (?, ?, 't', ?)",
                 (it["id"], json.dumps(it), db.content_hash(it)))
    return conn, it


def test_v6_database_gets_tie_and_skip_and_keeps_every_verdict(run_dir):
    conn, it = old_database(run_dir, 6)
    conn.execute("INSERT INTO verdicts(item_id, reviewer, verdict, created_at, content_hash, seconds) "
                 "VALUES (?, 'ann', 'swap', 't', ?, 7.5)", (it["id"], db.content_hash(it)))
    with pytest.raises(sqlite3.IntegrityError):  # what v6 could not store
        conn.execute("INSERT INTO verdicts(item_id, reviewer, verdict, created_at) VALUES (?, 'ann', 'tie', 't')",
                     (it["id"],))
    conn.close()
    conn = db.open_run(run_dir)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.VERSION
    old = db.history(conn, it["id"])
    assert [(h["reviewer"], h["verdict"], h["seconds"], h["ratings"]) for h in old] == [("ann", "swap", 7.5, None)]
    db.record(conn, it["id"], "ann", "tie", ratings={"original": {"format": 3}})
    assert db.current(conn)[it["id"]]["ann"]["verdict"] == "tie"
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'verdicts_item_reviewer'").fetchone()[0] == 1


def test_a_constitutions_review_section_loads_and_leaves_its_ref_alone(tmp_path):
    from cai_gen import constitution
    f = tmp_path / "x.yaml"
    base = "name: x\nprinciples:\n  - {id: a, critique: q, revision: r}\n"
    f.write_text(base)
    ref = constitution.load(path=str(f)).ref
    f.write_text(base + "review:\n  guidelines:\n    - {name: tone, text: 'Is it courteous?'}\n  tags: [wrong role]\n")
    c = constitution.load(path=str(f))
    assert c.ref == ref  # a team's annotation guide does not change what was generated
    assert c.review.guidelines[0].text == "Is it courteous?" and c.review.tags == ["wrong role"]
    assert api.rubric({}, c.model_dump(mode="json")["review"]) == [{"name": "tone", "text": "Is it courteous?"}]
    assert [g["name"] for g in api.rubric({}, None)] == ["helpfulness", "correctness", "safety", "format"]
    f.write_text(base + "review:\n  guidlines: []\n")
    with pytest.raises(UserError, match="guidlines"):
        constitution.load(path=str(f))


# ---- the page's data: rendered answers, list previews and filters (issue 34 item 2) -------------------------

@pytest.mark.parametrize("text, has, hasnt", [
    ("**bold** and\n\n- a\n- b", ["<strong>bold</strong>", "<li>a</li>"], []),
    ("<script>window.x=1</script>", ["&lt;script&gt;"], ["<script"]),
    ("<img src=http://evil/a.png onerror=alert(1)>", ["&lt;img"], ["<img"]),
    ("![logo](http://evil/b.png)", ['<span class="url">&lt;http://evil/b.png&gt;</span>'], ["<img", "<a"]),
    ("[site](https://e.org/x) [bad](javascript:alert(1))", ["site <span class=\"url\">&lt;https://e.org/x&gt;",
                                                             "[bad](javascript:alert(1))"], ["<a", "href"]),
    ("<a href=http://e.org>x</a>", ["&lt;a href"], ["<a "]),
])
def test_answers_are_rendered_markdown_with_nothing_that_runs_loads_or_navigates(text, has, hasnt):
    from cai_gen.review import render
    out = render.html(text)
    assert all(h in out for h in has), out
    assert not any(h in out for h in hasnt), out


def test_items_carry_rendered_answers_and_the_list_previews_and_filters(server, run_dir):
    items = jl(run_dir / "review_queue.jsonl")
    code, it = call(server, f"/api/item/{items[0]['id']}")
    from cai_gen.review import render
    assert it["item"]["html"] == {"original": render.html(items[0]["original"]),
                                  "revision": render.html(items[0]["revision"])}
    assert call(server, "/api/verdict", {"item": items[1]["id"], "verdict": "tie"})[0] == 200
    st = call(server, "/api/state")[1]
    assert st["items"][0]["preview"] == " ".join(items[0]["prompt"][-1]["content"].split())[:90]
    mine = call(server, "/api/state?show=mine")[1]
    todo = call(server, "/api/state?show=todo")[1]
    assert [i["id"] for i in mine["items"]] == [items[1]["id"]] and mine["items"][0]["verdict"] == "tie"
    assert [i["id"] for i in todo["items"]] == [i["id"] for i in items if i["id"] != items[1]["id"]]
    assert todo["first_todo"] == 0 and call(server, "/api/state?show=nope")[0] == 400
