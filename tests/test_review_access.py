"""Review server access (issue 15): invite tokens and sessions, requests from other sites, blind A/B verdicts,
too-fast verdicts and position bias, a 5,000-item queue, and spreadsheet-safe CSV. Fake backend, no browser."""
import csv
import hashlib
import http.client
import json
import logging
import shutil
from datetime import datetime
from email.message import Message
from urllib.parse import quote

import pytest

from cai_gen.errors import UserError
from cai_gen.review import api, auth, db, exchange, merge
from cai_gen.review.__main__ import main as review_main
from cai_gen.review.server import ReviewServer

from .test_review import base_run, call, invite, jl, run_dir, serve, session  # noqa: F401  (fixtures)


@pytest.fixture
def server(run_dir):  # noqa: F811
    srv = serve(run_dir)
    yield srv
    srv.shutdown()
    srv.server_close()


def raw(srv, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, Message, bytes]:
    """One request with exactly these headers (http.client adds none we did not ask for but Content-Length)."""
    host, port = srv.server_address[:2]
    c = http.client.HTTPConnection(host, port, timeout=10)  # timeout: a hang fails the test instead of stalling it
    c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        c.putheader(k, v)
    if method == "POST":
        c.putheader("Content-Length", str(len(body)))
    c.endheaders(body)
    r = c.getresponse()
    out = (r.status, r.headers, r.read())  # header names are case-insensitive (uvicorn sends them in lower case)
    c.close()
    return out


def host(srv) -> str:
    return f"127.0.0.1:{srv.server_address[1]}"


def signin(srv, token: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """The page's confirmation POST for an invite token."""
    return raw(srv, "POST", "/api/signin", {"Host": host(srv), "Content-Type": "application/json", **(headers or {})},
               json.dumps({"token": token}).encode())


def sign_in(srv, name: str) -> tuple[str, str]:
    """(cookie, csrf) the way the page gets them: a new invite for NAME confirmed, then /api/state."""
    code, h, _ = signin(srv, invite(srv.run_dir, name)[name])
    assert code == 200
    cookie = h["Set-Cookie"].split(";")[0]
    code, _, body = raw(srv, "GET", "/api/state", {"Host": host(srv), "Cookie": cookie})
    assert code == 200
    return cookie, json.loads(body)["csrf"]


def first_item(srv) -> str:
    return call(srv, "/api/state")[1]["items"][0]["id"]


def stored(srv) -> list[dict]:
    conn = db.connect(srv.db_path)
    try:
        return db.history(conn)
    finally:
        conn.close()


# ---- identity ------------------------------------------------------------------------------------------

def test_confirmed_invite_sets_a_strict_httponly_cookie_and_a_bad_link_is_401(server, run_dir):  # noqa: F811
    token = invite(run_dir, "dana")["dana"]
    code, r = call(server, "/api/invite", {"token": token}, who=None)
    assert code == 200 and r == {"reviewer": "dana", "role": "reviewer"}  # the confirm page names whose link
    code, h, body = signin(server, token)
    attrs = {a.strip() for a in h["Set-Cookie"].split(";")[1:]}
    assert code == 200 and attrs == {"HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={24 * 3600}"}
    assert json.loads(body)["reviewer"] == "dana"
    bearer = {"Authorization": "Bearer " + h["Set-Cookie"].split(";")[0].split("=", 1)[1]}  # what a script sends
    assert call(server, "/api/state", headers=bearer, who=None)[1]["reviewer"] == "dana"
    assert signin(server, "not-a-token")[0] == 401
    assert call(server, "/api/invite", {"token": "not-a-token"}, who=None)[0] == 401


def test_an_invite_link_works_once(server, run_dir):  # noqa: F811
    token = invite(run_dir, "dana")["dana"]
    assert signin(server, token)[0] == 200
    code, h, body = signin(server, token)  # a second browser, or someone who copied the link
    assert code == 401 and "Set-Cookie" not in h and b"already used" in body
    assert call(server, "/api/invite", {"token": token}, who=None)[0] == 401
    # nor is an invite a bearer credential any more: only a session is
    assert call(server, "/api/state", headers={"Authorization": f"Bearer {token}"}, who=None)[0] == 401


def test_an_unused_invite_stops_working_after_valid_hours(server, run_dir, capsys):  # noqa: F811
    """Issue 24 item 12: an invite nobody used was a credential for ever. It ends after `--valid-hours`."""
    assert review_main(["invite", str(run_dir), "erin", "--valid-hours", "2"]) == 0
    token = capsys.readouterr().out.strip().split("token=")[1]
    conn = db.connect(server.db_path)
    created, expires = conn.execute("SELECT created_at, expires_at FROM tokens WHERE name = 'erin'").fetchone()
    assert (datetime.fromisoformat(expires) - datetime.fromisoformat(created)).total_seconds() == 7200
    # two hours later, unused (the stored end moved back instead of waiting)
    conn.execute("UPDATE tokens SET expires_at = '2000-01-01T00:00:00+00:00' WHERE name = 'erin'")
    conn.close()
    code, h, body = signin(server, token)
    assert code == 401 and "Set-Cookie" not in h and b"expired" in body
    assert call(server, "/api/invite", {"token": token}, who=None)[0] == 401  # the confirmation page: not hers
    assert review_main(["reviewers", str(run_dir)]) == 0
    assert "expired 2000-01-01" in next(ln for ln in capsys.readouterr().out.splitlines() if "erin" in ln)
    assert review_main(["invite", str(run_dir), "erin", "--valid-hours", "0"]) == 2
    assert "--valid-hours: must be > 0" in capsys.readouterr().err


def test_invites_from_before_expiry_get_the_default_from_when_they_were_made(run_dir):  # noqa: F811
    """A database made before v6: its unused links had no end. After the upgrade they end INVITE_HOURS after
    they were made, so last month's forgotten link is dead and today's still works."""
    old, new = invite(run_dir, "olga", "nico").values()
    conn = db.connect(run_dir / db.FILE)
    conn.execute("UPDATE tokens SET expires_at = NULL")  # what v5 stored
    conn.execute("UPDATE tokens SET created_at = '2026-01-01T00:00:00+00:00' WHERE name = 'olga'")
    db._v6(conn)
    conn.commit()
    assert conn.execute("SELECT expires_at FROM tokens WHERE name = 'olga'").fetchone()[0] == "2026-01-04T00:00:00+00:00"
    assert auth.by_invite(conn, old) is None and auth.by_invite(conn, new).name == "nico"
    conn.close()


def test_login_csrf_a_get_with_an_attackers_token_signs_nobody_in(server, run_dir):  # noqa: F811
    token = invite(run_dir, "mallory")["mallory"]
    # what a hostile page does: navigate the reviewer's browser to the attacker's own invite link
    code, h, body = raw(server, "GET", f"/?token={token}", {"Host": host(server)})
    assert code == 200 and "Set-Cookie" not in h and b"cai_gen review" in body  # the page, asking to confirm
    conn = db.connect(server.db_path)
    assert conn.execute("SELECT count(*) FROM sessions s JOIN tokens t ON t.id = s.token_id "
                        "WHERE t.name = 'mallory'").fetchone()[0] == 0
    conn.close()
    # nor can it post the confirmation itself: a form or text/plain post, or any post from its origin, is 403
    form = f"token={token}".encode()
    assert raw(server, "POST", "/api/signin", {"Host": host(server), "Content-Type":
                                               "application/x-www-form-urlencoded"}, form)[0] == 403
    assert signin(server, token, {"Content-Type": "text/plain"})[0] == 403
    assert signin(server, token, {"Origin": "http://evil.example"})[0] == 403
    assert signin(server, token)[0] == 200  # the invite was not used up by any of that


def test_sessions_end_after_session_hours(run_dir):  # noqa: F811
    srv = serve(run_dir, session_hours=2)
    try:
        code, h, body = signin(srv, invite(run_dir, "dana")["dana"])
        assert code == 200 and "Max-Age=7200" in h["Set-Cookie"]
        cookie = h["Set-Cookie"].split(";")[0]
        assert raw(srv, "GET", "/api/state", {"Host": host(srv), "Cookie": cookie})[0] == 200
        conn = db.connect(srv.db_path)
        created, expires = conn.execute("SELECT created_at, expires_at FROM sessions WHERE token_id = "
                                        "(SELECT id FROM tokens WHERE name = 'dana')").fetchone()
        assert (datetime.fromisoformat(expires) - datetime.fromisoformat(created)).total_seconds() == 7200
        assert json.loads(body)["expires_at"] == expires
        # two hours later (the stored end moved back instead of waiting)
        conn.execute("UPDATE sessions SET expires_at = '2000-01-01T00:00:00+00:00'")
        conn.close()
        assert raw(srv, "GET", "/api/state", {"Host": host(srv), "Cookie": cookie})[0] == 401
        assert call(srv, "/api/state")[0] == 401  # a bearer session ends the same way
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(UserError, match="--session-hours"):
        ReviewServer(run_dir, port=0, session_hours=0)


def test_no_token_is_401_everywhere(server):
    item = first_item(server)
    assert call(server, "/api/state", who=None)[0] == 401
    assert call(server, f"/api/item/{item}", who=None)[0] == 401
    assert call(server, "/api/verdict", {"item": item, "verdict": "accept"}, who=None)[0] == 401
    code, _, _ = raw(server, "GET", "/api/state", {"Host": host(server), "Cookie": "cai_review=forged"})
    assert code == 401
    assert stored(server) == []


def test_a_verdict_is_stored_as_the_token_holder_whatever_the_body_says(server):
    item = first_item(server)
    code, r = call(server, "/api/verdict", {"item": item, "verdict": "reject", "reviewer": "bob"}, who="alice")
    assert code == 200 and r["verdict"]["reviewer"] == "alice"
    assert [(h["reviewer"], h["verdict"]) for h in stored(server)] == [("alice", "reject")]


def test_revoked_token_and_its_sessions_are_401(server, run_dir, capsys):  # noqa: F811
    cookie, csrf = sign_in(server, "bob")
    unused = invite(run_dir, "bob")["bob"]
    assert review_main(["revoke", str(run_dir), "bob"]) == 0
    assert "2 session(s) ended" in capsys.readouterr().out  # the bearer one and the cookie one
    assert call(server, "/api/state", who="bob")[0] == 401
    assert signin(server, unused)[0] == 401  # an invite not used yet is revoked too
    code, _, _ = raw(server, "GET", "/api/state", {"Host": host(server), "Cookie": cookie})
    assert code == 401
    assert call(server, "/api/state", who="alice")[0] == 200  # others keep working
    assert review_main(["revoke", str(run_dir), "bob"]) == 2  # nothing left to revoke: one line
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_invite_prints_a_working_link_and_lists_reviewers(server, run_dir, capsys):  # noqa: F811
    assert review_main(["invite", str(run_dir), "dana", "--role", "admin",
                        "--public-url", "https://review.example.org"]) == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith("https://review.example.org/?token=")
    token = link.split("token=")[1]
    conn = db.connect(server.db_path)
    hashes = [h for (h,) in conn.execute("SELECT token_hash FROM tokens")]
    conn.close()
    assert token not in hashes and len(hashes) == 4  # only hashes are stored
    server.tokens["dana"] = session(run_dir, token)
    assert call(server, "/api/state", who="dana")[1]["role"] == "admin"
    assert review_main(["reviewers", str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["alice", "reviewer"], ["bob", "reviewer"], ["carol", "reviewer"],
                                                ["dana", "admin"]]
    assert review_main(["invite", str(run_dir), "<script>"]) == 2


def test_stats_are_for_admins(server, run_dir):  # noqa: F811
    assert call(server, "/api/stats")[0] == 403
    server.tokens["root"] = session(run_dir, invite(run_dir, "root", role="admin")["root"])
    call(server, "/api/verdict", {"item": first_item(server), "verdict": "accept", "seconds": 2}, who="bob")
    code, st = call(server, "/api/stats", who="root")
    assert code == 200 and st["reviewers"]["bob"]["too_fast"] == 1


# ---- other sites ---------------------------------------------------------------------------------------

def test_cross_site_text_plain_post_is_403(server):
    cookie, _ = sign_in(server, "alice")
    body = json.dumps({"item": first_item(server), "verdict": "swap"}).encode()
    # what <form enctype=text/plain> or fetch(..., {mode: "no-cors"}) on evil.example sends with alice's cookie
    code, _, _ = raw(server, "POST", "/api/verdict", {"Host": host(server), "Cookie": cookie,
                                                      "Origin": "http://evil.example", "Content-Type": "text/plain"},
                     body)
    assert code == 403
    code, _, _ = raw(server, "POST", "/api/verdict", {"Host": host(server), "Cookie": cookie,
                                                      "Content-Type": "text/plain"}, body)
    assert code == 403  # no Origin at all (an old browser) is still not JSON
    assert stored(server) == []


def test_form_post_is_403_and_a_cookie_write_needs_the_csrf_token(server):
    cookie, csrf = sign_in(server, "alice")
    item = first_item(server)
    form = f"item={item}&verdict=swap".encode()
    code, _, _ = raw(server, "POST", "/api/verdict", {"Host": host(server), "Cookie": cookie,
                                                      "Content-Type": "application/x-www-form-urlencoded"}, form)
    assert code == 403
    body = json.dumps({"item": item, "verdict": "swap"}).encode()
    json_h = {"Host": host(server), "Cookie": cookie, "Content-Type": "application/json"}
    assert raw(server, "POST", "/api/verdict", json_h, body)[0] == 403  # no CSRF token
    assert raw(server, "POST", "/api/verdict", {**json_h, "X-CSRF-Token": "0" * 64}, body)[0] == 403
    assert stored(server) == []
    same_site = {**json_h, "X-CSRF-Token": csrf, "Origin": f"http://{host(server)}"}
    assert raw(server, "POST", "/api/verdict", same_site, body)[0] == 200  # what the page itself sends
    assert [h["reviewer"] for h in stored(server)] == ["alice"]


@pytest.mark.parametrize("headers", [{"Host": "evil.example"}, {"Host": "evil.example:80"},
                                     {"Host": "127.0.0.1"},  # the right name on another port
                                     {"Origin": "http://evil.example"}, {"Origin": "null"}])
def test_foreign_host_or_origin_is_403(server, headers):
    auth_h = {"Host": host(server), "Authorization": f"Bearer {server.tokens['alice']}", **headers}
    code, _, body = raw(server, "GET", "/api/state", auth_h)
    assert code == 403 and b"items" not in body  # DNS rebinding reads nothing
    assert raw(server, "GET", "/", {**auth_h, "Authorization": ""})[0] == 403


def test_responses_carry_security_headers_and_no_internals(server, monkeypatch, caplog):
    for path in ("/", "/page.js", "/api/state"):
        code, h, _ = raw(server, "GET", path, {"Host": f"localhost:{server.server_address[1]}",
                                               "Authorization": f"Bearer {server.tokens['alice']}"})
        assert code == 200
        assert "default-src 'self'" in h["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
        assert h["X-Content-Type-Options"] == "nosniff"

    def boom(*a, **k):
        raise RuntimeError(f"disk trouble at {server.db_path}")
    monkeypatch.setattr(api, "listing", boom)
    with caplog.at_level(logging.ERROR, logger="cai_gen.review"):
        code, r = call(server, "/api/state")
    assert code == 500 and "disk trouble" not in r["error"] and "/" not in r["error"]
    assert str(server.db_path) in caplog.text  # the detail is in the server's log


def test_non_loopback_host_needs_an_invite_and_a_public_url(base_run, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    assert review_main(["serve", str(run), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invite reviewers first" in err[0]
    token = session(run, invite(run, "alice")["alice"])
    with pytest.raises(Exception, match="--public-url"):
        ReviewServer(run, host="0.0.0.0", port=0)
    srv = ReviewServer(run, host="0.0.0.0", port=0, public_url="https://review.example.org/")
    srv.start()
    try:
        port = srv.server_address[1]
        h = {"Authorization": f"Bearer {token}", "Host": "review.example.org"}
        ok = lambda hd: raw(srv, "GET", "/api/state", hd)[0]  # noqa: E731
        assert ok(h) == 200 and ok({**h, "Origin": "https://review.example.org"}) == 200
        assert ok({**h, "Host": f"0.0.0.0:{port}"}) == 403 and ok({**h, "Origin": "http://review.example.org"}) == 403
        assert srv.url == "https://review.example.org/"
    finally:
        srv.shutdown()
        srv.server_close()


# ---- blind verdicts, timing, bias ----------------------------------------------------------------------

def test_blind_verdicts_are_mapped_back_with_the_position_shown(run_dir):  # noqa: F811
    srv = serve(run_dir, blind=True)
    try:
        items = jl(run_dir / "review_queue.jsonl")
        firsts = {api.shown_first(srv.ab_key, it["id"], "alice") for it in items}
        assert firsts == {"revision", "original"}  # both orders occur
        for it in items:
            code, shown = call(srv, f"/api/item/{it['id']}")
            assert code == 200 and shown["blind"] is True
            assert not {"original", "revision", "judge", "flags"} & set(shown["item"])  # nothing names the order
            assert all(set(r) == {"principle", "critique_request"} for r in shown["item"]["rounds"])
            a = shown["item"]["answers"]["A"]
            assert a == (it["revision"] if api.shown_first(srv.ab_key, it["id"], "alice") == "revision"
                         else it["original"])
            assert call(srv, "/api/verdict", {"item": it["id"], "verdict": "A", "seconds": 12.5})[0] == 200
        assert call(srv, "/api/verdict", {"item": items[0]["id"], "verdict": "accept"})[0] == 400
        assert call(srv, f"/api/item/{items[0]['id']}")[1]["mine"]["verdict"] == "A"  # shown as it was given
    finally:
        srv.shutdown()
        srv.server_close()
    conn = db.connect(run_dir / db.FILE)
    hist = db.history(conn)
    conn.close()
    assert len(hist) == len(items)
    for h in hist:  # "A better" means the revision won exactly when the revision was shown as A
        assert h["verdict"] == ("accept" if h["shown_first"] == "revision" else "swap") and h["seconds"] == 12.5
    s = merge.per_reviewer(db.current(db.connect(run_dir / db.FILE)))["alice"]
    assert (s["blind_ab"], s["chose_a"], s["a_share"]) == (len(items), len(items), 1.0)
    assert s["too_fast"] == 0


@pytest.mark.parametrize("seconds", [-1, "12", True, 1e9])
def test_bad_seconds_are_400(server, seconds):
    code, r = call(server, "/api/verdict", {"item": first_item(server), "verdict": "accept", "seconds": seconds})
    assert code == 400 and r["error"].startswith("seconds:")


def test_too_fast_verdicts_are_flagged_and_merge_can_ignore_them(run_dir, capsys):  # noqa: F811
    conn = db.open_run(run_dir)
    a, b = [it["id"] for it in db.items(conn)[:2]]
    db.record(conn, a, "alice", "swap", seconds=1.5)
    db.record(conn, a, "bob", "accept", seconds=30)
    db.record(conn, b, "alice", "swap", seconds=2, shown_first="original")  # blind, chose A
    conn.close()
    assert review_main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "alice: 2 /" in out and "too_fast (<5 s) 2 of 2" in out and "chose A 1 of 1" in out
    s = merge.apply(run_dir)
    assert s["reviewers"]["alice"]["too_fast"] == 2 and s["reviewers"]["bob"]["too_fast"] == 0
    assert s["decisions"]["disputed"] == 1 and s["decisions"]["swap"] == 1
    s = merge.apply(run_dir, ignore_too_fast=True)
    assert s["too_fast_ignored"] == 2 and s["decisions"]["disputed"] == 0 and s["decisions"]["accept"] == 1
    rows = {r["id"]: r for r in jl(run_dir / "reviewed" / "preferences.jsonl")}
    assert rows[a]["reviewer"] == "bob" and rows[b]["expert_reviewed"] is False
    assert review_main(["merge", str(run_dir)]) == 0
    card = (run_dir / "README.md").read_text()
    assert "| alice | 2 | 1 | 100.0% |" in card and "2 (100.0%)" in card


# ---- scale and export ----------------------------------------------------------------------------------

def test_a_5000_item_queue_loads_pages_and_searches(run_dir):  # noqa: F811
    one = jl(run_dir / "review_queue.jsonl")[0]
    queue = [{**one, "id": f"big{i:05d}-s0", "domain": "dom-odd" if i % 2 else "dom-even",
              "revision": f"revision number {i}"} for i in range(5000)]
    (run_dir / "review_queue.jsonl").write_text("".join(json.dumps(it) + "\n" for it in queue))
    srv = serve(run_dir, blind=True)
    try:
        code, st = call(srv, "/api/state")
        assert code == 200 and st["total"] == st["matched"] == 5000 and len(st["items"]) == api.PAGE
        assert st["items"][0]["id"] == "big00000-s0" and st["first_todo"] == 0
        code, st = call(srv, "/api/state?offset=4950&limit=100")
        assert [i["id"] for i in st["items"]] == [f"big{i:05d}-s0" for i in range(4950, 5000)]
        assert call(srv, "/api/verdict", {"item": "big04950-s0", "verdict": "reject"})[0] == 200
        st = call(srv, "/api/state?offset=4900&after=4949")[1]
        assert st["done"] == 1 and st["todo_after"] == 4951 and st["items"][50]["verdict"] == "reject"
        st = call(srv, "/api/state?q=revision%20number%204321")[1]
        assert st["matched"] == 1 and st["items"][0]["id"] == "big04321-s0"
        assert call(srv, "/api/state?q=dom-even&limit=5")[1]["matched"] == 2500
        assert call(srv, "/api/state?limit=0")[0] == 400 and call(srv, "/api/state?offset=-3")[0] == 400
    finally:
        srv.shutdown()
        srv.server_close()


def test_csv_export_escapes_formula_cells_and_import_restores_them(run_dir, tmp_path):  # noqa: F811
    conn = db.open_run(run_dir)
    ids = [it["id"] for it in db.items(conn)]
    texts = ['=HYPERLINK("http://evil.example","click")', "+1 agree", "-5 degrees", "@SUM(A1)", "'=quoted",
             "plain"]
    for k, t in enumerate(texts):
        db.record(conn, ids[k], "alice", "edit", chosen=t, comment=t)
    f = tmp_path / "out.csv"
    exchange.export(conn, f)
    recs = {r["id"]: r for r in csv.DictReader(f.open(newline=""))}
    for k, t in enumerate(texts):
        cell = recs[ids[k]]["chosen"]
        assert cell[0] not in "=+-@" and (cell == t if t == "plain" else cell == "'" + t)
        assert recs[ids[k]]["comment"] == cell
    conn.close()
    # the same verdicts, imported by another reviewer name: the text comes back unescaped
    rows = list(csv.DictReader(f.open(newline="")))
    for r in rows:
        r["reviewer"] = "bob" if r["reviewer"] else ""
    with f.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert review_main(["import", str(run_dir), str(f)]) == 0
    cur = db.current(db.connect(run_dir / db.FILE))
    assert [cur[ids[k]]["bob"]["chosen"] for k in range(len(texts))] == texts


# ---- issue 24: blind mode cannot be unblinded ----------------------------------------------------------

def test_search_cannot_tell_which_answer_is_the_revision(run_dir):  # noqa: F811
    srv = serve(run_dir, blind=True)
    try:
        recovered, found = 0, 0
        items = jl(run_dir / "review_queue.jsonl")
        for it in items:
            ans = call(srv, f"/api/item/{it['id']}")[1]["item"]["answers"]
            a, b = ans["A"], ans["B"]
            # the attack from the issue: the stored JSON's field names next to answer A's first words
            for q in (f'"revision": "{a[:20]}', f'"original": "{a[:20]}', f"revision {a[:20]}",
                      a[-15:] + "\n" + b[:15], a[-15:] + " " + b[:15],  # across the end of A and start of B
                      a[-15:] + "\x00" + b[:15]):
                st = call(srv, "/api/state?q=" + quote(q))[1]
                recovered += any(i["id"] == it["id"] for i in st["items"])
            st = call(srv, "/api/state?q=" + quote(a[:20]))[1]  # what the reviewer is shown still matches
            found += any(i["id"] == it["id"] for i in st["items"])
        assert recovered == 0 and found == len(items)
        critique = items[0]["rounds"][0]["critique"][:25]
        assert call(srv, "/api/state?q=" + quote(critique))[1]["matched"] == 0  # not shown when blind
    finally:
        srv.shutdown()
        srv.server_close()
    conn = db.connect(run_dir / db.FILE)
    assert api.listing(conn, "alice", q=critique, blind=False)["matched"] >= 1  # the labelled view shows it
    conn.close()


def test_ab_order_is_keyed_by_a_random_secret_kept_in_the_database(base_run, tmp_path):  # noqa: F811
    runs = [tmp_path / "one", tmp_path / "two"]
    for r in runs:
        shutil.copytree(base_run, r)
    one = [big_queue(r, 200) for r in runs][0]
    keys = []
    for r in runs:
        srv = serve(r, blind=True)
        try:
            keys.append(srv.ab_key)
            st = call(srv, "/api/state")[1]
            assert srv.ab_key not in json.dumps(st)  # never sent to a page
            for it in one[:5]:
                shown = call(srv, f"/api/item/{it['id']}")[1]
                assert srv.ab_key not in json.dumps(shown)
                first = api.shown_first(srv.ab_key, it["id"], "alice")
                assert shown["item"]["answers"]["A"] == it[first]
        finally:
            srv.shutdown()
            srv.server_close()
    assert len(bytes.fromhex(keys[0])) == 32 and keys[0] != keys[1]  # random, per database: same run, same seed
    conn = db.open_run(runs[0])
    assert db.get_meta(conn, "ab_key") == keys[0]  # made once: a restart keeps every reviewer's order
    conn.close()
    # the old order, a hash anyone could compute from the run seed (0), the item and the reviewer, now predicts
    # the order no better than a coin
    old = lambda i: "revision" if hashlib.sha256(f"0:{i}:alice".encode()).digest()[0] & 1 else "original"  # noqa: E731
    agree = sum(old(it["id"]) == api.shown_first(keys[0], it["id"], "alice") for it in one)
    assert 60 < agree < 140  # of 200; binomial sd 7


def big_queue(run, n: int) -> list[dict]:
    one = jl(run / "review_queue.jsonl")[0]
    queue = [{**one, "id": f"q{i:04d}-s0", "original": f"original text {i}", "revision": f"revised text {i}"}
             for i in range(n)]
    (run / "review_queue.jsonl").write_text("".join(json.dumps(it) + "\n" for it in queue))
    return queue


@pytest.mark.parametrize("argv", [["-m", "cai_gen.review", "serve", "RUN", "--port", "abc"],
                                  ["-m", "cai_gen.review", "bogus"],
                                  ["-m", "cai_gen.merge", "RUN"],
                                  ["-m", "cai_gen.evaluate", "RUN", "--steps", "x"]])
def test_a_bad_flag_is_one_line_exit_2(argv):
    """Issue 24 item 14: argparse printed the usage and the error over two lines; every entry point's parser
    (errors.ArgParser) says it in one, naming the command."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python {' '.join(argv[:2])}") and ": error: " in lines[0], r.stderr
