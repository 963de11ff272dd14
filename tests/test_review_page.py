"""The review page in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium): sign in
with invite links, review items with keys and clicks (labelled and blind A/B), reload, switch reviewer, and
check the database, the merge, reviewed/ and the card.

`bash setup.sh --test` installs the browser; CI sets CAI_GEN_REQUIRE_BROWSER=1 so a missing browser fails
instead of skipping."""
import json
import os
import shutil

import pytest

from cai_gen import pipeline
from cai_gen.backends.fake import FakeBackend
from cai_gen.review import auth, db
from cai_gen.review.__main__ import main as review_main
from cai_gen.review.server import ReviewServer

from .conftest import make_cfg

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER))
                       and not os.environ.get("CAI_GEN_REQUIRE_BROWSER"),
                       reason="no chromium/chromedriver: run `bash setup.sh --test`"),
]
HTML_PROMPT = "Is <b>this</b> bold? <img src=x onerror=\"document.title='pwned'\"> {{ 7*7 }}"
TURNS = [{"role": "user", "content": "I was billed in March."}, {"role": "assistant", "content": "Which plan?"},
         {"role": "user", "content": "The yearly one, billed twice."}]


@pytest.fixture(params=[False], ids=["labelled"])
def page(tmp_path, request):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p, "domain": "billing"}) + "\n" for i, p in
                               enumerate([HTML_PROMPT, "Why was I charged twice?", "Cancel my plan.", "Refund the last invoice.",
                                          "Change my billing address."]))
                       + json.dumps({"id": "multi", "messages": TURNS, "domain": "billing"}) + "\n")
    cfg = make_cfg("backend=fake", f"prompts.path={prompts}", "review.domains=[billing]")
    run = tmp_path / "run"
    pipeline.run(cfg, run, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    kw = request.param if isinstance(request.param, dict) else {"blind": request.param}  # ReviewServer's options
    srv = ReviewServer(run, port=0, **kw)
    conn = db.open_run(run)
    srv.links = {n: f"{srv.url}?token={auth.invite(conn, n, role)}" for n, role in
                 (("alice", "reviewer"), ("bob", "reviewer"), ("root", "admin"))}
    conn.close()
    srv.start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(a)
    opts.add_argument("--window-size=1280,1000")  # a laptop screen: the sticky verdict form leaves the answers room
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver, srv, run
    finally:
        driver.quit()
        srv.shutdown()
        srv.server_close()


def ui(driver):
    """The page helpers both tests drive it with: element by id, wait until, send keys, shown item, progress."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def el(i):
        return driver.find_element(By.ID, i)

    return (el, lambda f: WebDriverWait(driver, 15).until(lambda d: f()),
            lambda k: ActionChains(driver).send_keys(k).perform(),
            lambda: el("item-id").text, lambda: el("progress-text").text)


def sign_in(driver, link: str, name: str, replaces: str | None = None, keyboard: bool = False) -> None:
    """Open an invite link: the page names whose it is and signs in only on the click, or Enter (no login CSRF)."""
    from selenium.webdriver.common.keys import Keys

    el, wait, keys, *_ = ui(driver)
    driver.get(link)
    wait(lambda: el("b-signin").is_displayed())
    text = el("signin-text").text
    assert f"signs you in as {name}" in text and "works once" in text
    assert ("You are signed in as " + replaces) in text if replaces else "You are signed in" not in text
    assert "token" not in driver.current_url  # gone from the address bar and the history
    if keyboard:
        keys(Keys.ENTER)  # the confirmation has the focus: no mouse needed
    else:
        el("b-signin").click()
    wait(lambda: not el("signin").is_displayed())


def test_review_with_keys_and_clicks_survives_reload_and_merges(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver, srv, run = page
    items = [json.loads(x) for x in (run / "review_queue.jsonl").read_text().splitlines()]
    ids = [it["id"] for it in items]
    assert len(ids) >= 5
    el, wait, keys, shown, progress = ui(driver)

    driver.get(srv.links["alice"])                 # opening the link alone signs nobody in
    wait(lambda: el("b-signin").is_displayed())
    conn = db.connect(srv.db_path)
    assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
    conn.close()
    sign_in(driver, srv.links["alice"], "alice")
    wait(lambda: shown() == ids[0] and progress() == f"0 / {len(ids)} reviewed by alice")
    # model and prompt text is data: shown verbatim, never parsed as HTML or a template
    assert el("prompt").text == HTML_PROMPT
    assert driver.execute_script("return document.querySelectorAll('#prompt b, #prompt img').length") == 0
    assert driver.title == "cai_gen review"
    assert el("answer-a").text == items[0]["original"] and el("answer-b").text == items[0]["revision"]

    keys("2")                                      # revision (right) better: accept by key; on to the next item
    wait(lambda: progress().startswith("1 /") and shown() == ids[1])
    el("b-first").click()                          # original (left) better: swap by click
    wait(lambda: progress().startswith("2 /") and shown() == ids[2])
    keys("e")                                      # edit: the box opens with the revision to start from
    wait(lambda: el("edit-box").is_displayed())
    box = el("edit-text")
    assert box.get_attribute("value") == items[2]["revision"]
    box.clear()
    box.send_keys("The expert's answer, line 1.", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "Line 2.")
    box.send_keys(Keys.CONTROL, Keys.ENTER)
    wait(lambda: progress().startswith("3 /") and shown() == ids[3])
    comment = el("comment")
    comment.click()
    comment.send_keys("a sarcastic tone")          # letters typed in a text box are not shortcuts
    assert progress().startswith("3 /")
    el("b-reject").click()
    wait(lambda: progress().startswith("4 /"))

    driver.refresh()                               # a closed or reloaded browser loses nothing
    wait(lambda: progress() == f"4 / {len(ids)} reviewed by alice" and shown() == ids[4])
    marks = [b.get_attribute("data-verdict") for b in el("list").find_elements(By.TAG_NAME, "button")]
    assert marks[:5] == ["accept", "swap", "edit", "reject", None]
    keys("k")                                      # back to the rejected item: its verdict and comment show
    wait(lambda: shown() == ids[3])
    wait(lambda: "your verdict: reject" in el("status").text)
    assert el("comment").get_attribute("value") == "a sarcastic tone"

    driver.get(srv.links["alice"])                 # the link worked once
    wait(lambda: "not valid (already used" in el("signin-text").text)
    assert not el("b-signin").is_displayed()
    sign_in(driver, srv.links["bob"], "bob", replaces="alice")  # a second reviewer on the same browser
    wait(lambda: progress() == f"0 / {len(ids)} reviewed by bob" and shown() == ids[0])
    driver.find_element(By.TAG_NAME, "body").click()
    keys("2")                                      # agrees with alice on item 0
    wait(lambda: progress().startswith("1 /") and shown() == ids[1])
    keys("u")                                      # disagrees on item 1 (alice: swap)
    wait(lambda: progress().startswith("2 /"))

    conn = db.connect(srv.db_path)
    cur = db.current(conn)
    assert {i: {r: v["verdict"] for r, v in cur[i].items()} for i in ids[:4]} == {
        ids[0]: {"alice": "accept", "bob": "accept"}, ids[1]: {"alice": "swap", "bob": "reject"},
        ids[2]: {"alice": "edit"}, ids[3]: {"alice": "reject"}}
    assert cur[ids[2]]["alice"]["chosen"] == "The expert's answer, line 1.\nLine 2."
    assert cur[ids[3]]["alice"]["comment"] == "a sarcastic tone"

    assert review_main(["merge", str(run)]) == 0
    out = {p["id"]: p for p in (json.loads(x) for x in (run / "reviewed" / "preferences.jsonl").read_text().splitlines())}
    assert out[ids[0]]["reviewer"] == "alice,bob" and out[ids[0]]["verdict"] == "accept"
    assert ids[1] not in out and ids[3] not in out               # disputed, rejected
    assert out[ids[2]]["chosen"][0]["content"] == "The expert's answer, line 1.\nLine 2."
    assert out[ids[4]]["expert_reviewed"] is False
    review = json.loads((run / "summary.json").read_text())["review"]
    assert review["agreement"]["comparisons"] == 2 and review["agreement"]["agreement"] == 0.5

    multi = next(it for it in items if len(it["prompt"]) > 1)  # a multi-turn prompt: every turn is shown
    el("search").send_keys(multi["id"], Keys.ENTER)
    wait(lambda: shown() == multi["id"])
    assert el("prompt").text.splitlines() == ["user: I was billed in March.", "assistant: Which plan?",
                                              "user: The yearly one, billed twice."]


@pytest.mark.parametrize("page", [True], indirect=True, ids=["blind"])
def test_blind_review_by_keyboard_merges_with_reviewer_and_position(page):
    from selenium.webdriver.common.by import By

    from cai_gen.review.api import shown_first

    driver, srv, run = page
    items = [json.loads(x) for x in (run / "review_queue.jsonl").read_text().splitlines()]
    ids = [it["id"] for it in items]
    el, wait, keys, shown, progress = ui(driver)

    sign_in(driver, srv.links["alice"], "alice")
    wait(lambda: shown() == ids[0] and progress() == f"0 / {len(ids)} reviewed by alice")
    assert el("whoami").text == "reviewing as alice · blind"
    labels = " ".join(e.get_attribute("textContent") for e in driver.find_elements(
        By.CSS_SELECTOR, "header, h2, .actions, #rounds")).lower()  # every label; the model's text aside
    assert "original" not in labels and "revision" not in labels and "critique" not in labels
    assert el("title-a").get_attribute("textContent") == "Answer A"
    assert el("title-b").get_attribute("textContent") == "Answer B"
    first = [shown_first(srv.ab_key, i, "alice") for i in ids]
    a0 = items[0]["revision"] if first[0] == "revision" else items[0]["original"]
    assert el("answer-a").text == a0
    # the guidelines: the rubric and this pair's principles, folded until opened
    assert not el("rubric").is_displayed()
    el("guidelines").find_element(By.TAG_NAME, "summary").click()
    wait(lambda: el("rubric").is_displayed())
    assert [li.text.split(":")[0].lower() for li in el("rubric").find_elements(By.TAG_NAME, "li")] == \
        ["helpfulness", "correctness", "safety", "format"]
    assert items[0]["rounds"][0]["principle"] in el("principles").text

    keys("1")                                   # A better
    wait(lambda: progress().startswith("1 /") and shown() == ids[1])
    keys("2")                                   # B better
    wait(lambda: progress().startswith("2 /") and shown() == ids[2])
    keys("u")                                   # both unusable
    wait(lambda: progress().startswith("3 /") and shown() == ids[3])
    keys("k")
    wait(lambda: shown() == ids[2] and "your verdict: reject" in el("status").text)
    keys("k")
    wait(lambda: shown() == ids[1] and "your verdict: B" in el("status").text)  # shown as it was given

    assert review_main(["merge", str(run)]) == 0
    out = {p["id"]: p for p in (json.loads(x) for x in (run / "reviewed" / "preferences.jsonl").read_text().splitlines())}
    want = {ids[0]: "accept" if first[0] == "revision" else "swap",   # A better: A's answer is chosen
            ids[1]: "swap" if first[1] == "revision" else "accept"}   # B better
    for i, v in want.items():
        assert (out[i]["reviewer"], out[i]["verdict"], out[i]["position"]) == ("alice", v, first[ids.index(i)])
        assert out[i]["votes"][0]["shown_first"] == first[ids.index(i)] and out[i]["votes"][0]["seconds"] >= 0
        assert out[i]["chosen"][0]["content"] == (items[ids.index(i)]["revision"] if v == "accept"
                                                  else items[ids.index(i)]["original"])
    assert ids[2] not in out
    review = json.loads((run / "reviewed" / "review.json").read_text())
    me = review["reviewers"]["alice"]
    assert (me["verdicts"], me["blind_ab"], me["chose_a"], me["timed"]) == (3, 2, 1, 3)
    card = (run / "README.md").read_text()
    assert f"| alice | 3 | 2 | 50.0% | {me['position_p']} | {me['too_fast']} (" in card


HOSTILE = ("**The first step** is below.\n\n- one\n- two\n\n<script>window.pwned = 1</script>\n\n"
           "<img src=\"http://127.0.0.1:9/x.png\" onerror=\"window.pwned = 2\">\n\n![logo](http://127.0.0.1:9/y.png)\n\n"
           "[click me](javascript:window.pwned=3) or [the site](https://example.org/help)")


@pytest.mark.parametrize("page", [True], indirect=True, ids=["blind"])
def test_every_verdict_and_ratings_by_keyboard_alone_and_hostile_markdown_is_inert(page):
    from selenium.webdriver.common.keys import Keys

    from cai_gen.review.api import shown_first

    driver, srv, run = page
    queue = run / "review_queue.jsonl"
    items = [json.loads(x) for x in queue.read_text().splitlines()]
    assert len(items) >= 6
    items[0]["revision"] = items[0]["original"] = HOSTILE  # what a model can be made to write
    queue.write_text("".join(json.dumps(it) + "\n" for it in items))
    db.open_run(run).close()                    # the server's database takes the new text
    ids = [it["id"] for it in items]
    el, wait, keys, shown, progress = ui(driver)

    driver.get(srv.url)                         # before sign-in: how to get in, not an empty page
    wait(lambda: "open the invite link" in el("signin-text").text)
    assert not el("main").is_displayed()
    sign_in(driver, srv.links["alice"], "alice", keyboard=True)
    wait(lambda: shown() == ids[0] and progress() == f"0 / {len(ids)} reviewed by alice")
    # Markdown is rendered, and nothing in it runs, loads or navigates
    js = driver.execute_script
    assert js("return document.querySelector('#answer-a strong').textContent") == "The first step"
    assert js("return document.querySelectorAll('#answer-a li').length") == 2
    assert js("return typeof window.pwned") == "undefined"
    assert js("return [...document.images].map((i) => i.src)") == []
    assert js("return document.querySelectorAll('a, script:not([src]), [onerror], [href^=javascript]').length") == 0
    text = el("answer-a").text
    assert "<script>window.pwned = 1</script>" in text and "https://example.org/help" in text  # shown as text
    assert "javascript:window.pwned=3" in text
    assert "original" not in el("b-edit").text.lower() and "revision" not in el("b-edit").text.lower()
    preview = el("list").find_elements("css selector", "button .preview")[1].text
    assert preview == items[1]["prompt"][-1]["content"][:90]

    keys("?")                                   # the guide is one key away
    wait(lambda: el("rubric").is_displayed())
    keys("g")                                   # rate: a digit per box, A then B per guideline
    keys("45342544")
    keys("1")                                   # A better
    wait(lambda: progress().startswith("1 /") and shown() == ids[1])
    keys("2")                                   # B better
    wait(lambda: progress().startswith("2 /") and shown() == ids[2])
    keys("t")                                   # tie: both fine
    wait(lambda: progress().startswith("3 /") and shown() == ids[3])
    keys("u")                                   # both unusable
    wait(lambda: progress().startswith("4 /") and shown() == ids[4])
    keys("s")                                   # skip: asks why first
    wait(lambda: driver.switch_to.active_element == el("comment"))
    assert progress().startswith("4 /")
    keys("not sure about the law here")
    driver.switch_to.active_element.send_keys(Keys.CONTROL, Keys.ENTER)  # Ctrl held with Enter
    wait(lambda: progress().startswith("5 /") and shown() == ids[5])
    keys(Keys.ESCAPE)
    keys("e")                                   # edit: blind, so the box starts empty
    wait(lambda: el("edit-box").is_displayed())
    keys("My own answer.")
    driver.switch_to.active_element.send_keys(Keys.CONTROL, Keys.ENTER)  # Ctrl held with Enter
    wait(lambda: progress().startswith("6 /"))

    conn = db.connect(srv.db_path)
    cur = {i: v["alice"] for i, v in db.current(conn).items()}
    conn.close()
    first = shown_first(srv.ab_key, ids[0], "alice")
    other = "original" if first == "revision" else "revision"
    assert [cur[i]["verdict"] for i in ids[:6]] == [
        "accept" if first == "revision" else "swap",
        "swap" if shown_first(srv.ab_key, ids[1], "alice") == "revision" else "accept",
        "tie", "reject", "skip", "edit"]
    assert cur[ids[0]]["ratings"] == {first: {"helpfulness": 4, "correctness": 3, "safety": 2, "format": 4},
                                      other: {"helpfulness": 5, "correctness": 4, "safety": 5, "format": 4}}
    assert cur[ids[4]]["comment"] == "not sure about the law here"
    assert cur[ids[5]]["chosen"] == "My own answer."


@pytest.mark.parametrize("page", [{"blind": True, "overlap": 1, "batch": 2}], indirect=True, ids=["overlap1"])
def test_two_reviewers_with_overlap_1_never_get_the_same_item_and_the_admin_sees_their_progress(page):
    from selenium.webdriver.common.by import By

    driver, srv, run = page
    el, wait, keys, shown, progress = ui(driver)

    def listed():  # in one script: the list is rebuilt while a filter loads
        return driver.execute_script("return [...document.querySelectorAll('#list button')].map((b) => b.dataset.item)")

    sign_in(driver, srv.links["alice"], "alice", keyboard=True)
    wait(lambda: progress() == "0 / 2 reviewed by alice (your queue)")
    assert not el("b-admin").is_displayed()     # a reviewer has no team view
    first = listed()
    keys("1")                                   # each verdict frees a place in the batch: one more item comes
    wait(lambda: progress() == "1 / 3 reviewed by alice (your queue)")
    keys("t")
    wait(lambda: progress() == "2 / 4 reviewed by alice (your queue)")
    keys("a")                                   # not an admin: nothing opens
    assert not el("admin").is_displayed()
    alice = listed()
    assert alice[:2] == first and len(alice) == 4

    sign_in(driver, srv.links["bob"], "bob", replaces="alice", keyboard=True)
    wait(lambda: progress() == "0 / 2 reviewed by bob (your queue)")
    bob = listed()
    assert not set(bob) & set(alice)            # bob's queue is his own
    wait(lambda: shown() == bob[0])
    keys("u")
    wait(lambda: progress().startswith("1 / "))
    assert not set(listed()) & set(alice)
    conn = db.connect(srv.db_path)
    held = dict(conn.execute("SELECT item_id, group_concat(reviewer) FROM assignments GROUP BY item_id"))
    conn.close()
    assert all("," not in who for who in held.values()) and len(held) == len(alice) + len(listed())

    items = [json.loads(x) for x in (run / "review_queue.jsonl").read_text().splitlines()]
    total, last = len(items), items[-1]["id"]
    assert last not in held
    conn = db.connect(srv.db_path)
    db.record(conn, last, "carol", "accept")   # two verdicts with no majority: disputed
    db.record(conn, last, "dave", "swap")
    conn.close()

    sign_in(driver, srv.links["root"], "root", replaces="bob", keyboard=True)
    wait(lambda: progress() == f"0 / {total} reviewed by root")  # an admin sees every item, and is assigned none
    assert el("b-admin").is_displayed()
    keys("a")                                   # the team view, one key away
    wait(lambda: el("admin").is_displayed() and len(el("team-progress").find_elements(By.TAG_NAME, "tr")) == 5)
    rows = {r[0]: r for r in ([c.text for c in tr.find_elements(By.TAG_NAME, "td")]
                              for tr in el("team-progress").find_elements(By.TAG_NAME, "tr")[1:])}
    # reviewer, assigned, judged, skipped, open, ...
    assert rows["alice"][:5] == ["alice", "4", "2", "0", "2"] and rows["bob"][:5] == ["bob", "3", "1", "0", "2"]
    assert el("team-summary").text == f"3 of {total} items have their verdicts in (each item to 1 reviewer); 1 disputed."
    assert "agreement 0.0% over 1 shared judgements" in el("team-agreement").text
    assert not el("main").is_displayed()
    keys("a")
    wait(lambda: el("main").is_displayed() and not el("admin").is_displayed())
    keys("a")
    wait(lambda: el("admin").is_displayed())
    disputed = el("team-disputed").find_elements(By.TAG_NAME, "button")
    assert [b.text for b in disputed] == [f"{last}: carol accept, dave swap"]
    disputed[0].click()                          # to the item, in the list filtered to disputed ones
    wait(lambda: el("main").is_displayed() and shown() == last and listed() == [last])
    assert el("show").get_attribute("value") == "disputed"

    from selenium.webdriver.support.ui import Select
    Select(el("show")).select_by_value("all")
    wait(lambda: len(listed()) == total)
    name = items[0]["rounds"][0]["principle"]
    Select(el("principle")).select_by_visible_text(name)  # the list by principle
    want = [it["id"] for it in items if name in [r["principle"] for r in it["rounds"]]]
    wait(lambda: listed() == want)
    Select(el("principle")).select_by_value("")
    Select(el("domain")).select_by_visible_text("billing")
    wait(lambda: listed() == [it["id"] for it in items if it.get("domain") == "billing"])
