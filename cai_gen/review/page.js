"use strict";
// The review page. All model and prompt text goes in with textContent: it is data, never HTML.
// Who reviews comes from the session cookie, never from anything typed here. An invite link (/?token=...) signs in
// only after the reviewer confirms whose link it is: a page on another site that sends this browser to its own
// invite link (login CSRF) gets no further than the question. The confirmation is a JSON POST, which another
// site cannot send here; the invite works once.
const $ = (id) => document.getElementById(id);
const LIMIT = 100;  // items per list page (the server's most)
let st = null;      // the last /api/state answer: one page of the (searched) queue, progress, csrf, mode
let pos = 0;        // position of the shown item in the searched queue
let current = null, currentHash = null, shownAt = 0;  // hash: the text shown, sent with the verdict
let query = "";

function setStatus(msg, bad) { $("status").textContent = msg; $("status").className = bad ? "error" : "meta"; }

async function api(path, opts) {
  const r = await fetch(path, Object.assign({credentials: "same-origin"}, opts));
  const body = await r.json();
  if (r.status === 401) throw new Error("not signed in, or your session ended: open a new invite link");
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function modeLabels() {
  // blind: the page never knows which answer is the revision; A/B order is the server's, per item and reviewer
  const blind = st.blind;
  $("title-a").textContent = blind ? "Answer A" : "Original (rejected if you accept)";
  $("title-b").textContent = blind ? "Answer B" : "Revision (chosen if you accept)";
  const first = $("b-first"), second = $("b-second");
  first.dataset.verdict = blind ? "A" : "accept";
  second.dataset.verdict = blind ? "B" : "swap";
  first.replaceChildren(blind ? "A better " : "Accept: revision better ", kbd("a"));
  second.replaceChildren(blind ? "B better " : "Swap: original better ", kbd(blind ? "b" : "s"));
  $("b-reject").replaceChildren(blind ? "Both unusable " : "Reject: neither usable ", kbd("r"));
  $("b-from-a").textContent = blind ? "start from A" : "start from the original";
  $("b-from-b").textContent = blind ? "start from B" : "start from the revision";
  $("keys-hint").textContent = "keys: " + (blind ? "a / b: that answer is better" : "a accept, s swap")
    + ", r reject, e edit, j / k next / prev";
}

function kbd(k) { const e = document.createElement("kbd"); e.textContent = k; return e; }

async function fetchState(offset, after) {
  return api("/api/state?offset=" + offset + "&limit=" + LIMIT + "&after=" + after + "&q=" + encodeURIComponent(query));
}

function render() {
  $("whoami").textContent = "reviewing as " + st.reviewer + (st.role === "admin" ? " (admin)" : "")
    + (st.blind ? " · blind" : "");
  $("progress-text").textContent = st.done + " / " + st.total + " reviewed by " + st.reviewer;
  $("progress-fill").style.width = (st.total ? 100 * st.done / st.total : 0) + "%";
  $("matched").textContent = query ? st.matched + " match" + (st.matched === 1 ? "" : "es") : "";
  const last = Math.min(st.offset + LIMIT, st.matched);
  $("page-info").textContent = st.matched ? (st.offset + 1) + "-" + last + " of " + st.matched : "";
  const list = $("list");
  list.replaceChildren();
  st.items.forEach((it, k) => {
    const b = document.createElement("button");
    const dot = document.createElement("span");
    dot.className = "dot" + (it.verdict ? " v-" + it.verdict : "");
    b.append(dot, document.createTextNode(it.id));
    b.dataset.item = it.id;
    if (it.verdict) b.dataset.verdict = it.verdict;
    b.onclick = () => goTo(st.offset + k);
    list.append(b);
  });
  modeLabels();
}

async function goTo(i, fresh) {
  if (!st || !st.matched) return;
  i = Math.max(0, Math.min(st.matched - 1, i));
  const offset = Math.floor(i / LIMIT) * LIMIT;
  if (fresh || offset !== st.offset) { st = await fetchState(offset, i); render(); }
  pos = i;
  [...$("list").children].forEach((b, k) => b.classList.toggle("current", st.offset + k === pos));
  await show(st.items[pos - st.offset].id);
}

async function start() {
  st = await fetchState(0, -1);
  render();
  if (!st.matched) {
    setStatus(query ? "Nothing matches the search." : "No items routed to review in this run (see the review: config).");
    return;
  }
  await goTo(st.first_todo === null ? 0 : st.first_todo, true);
}

async function show(id) {
  const data = await api("/api/item/" + encodeURIComponent(id));
  current = data.item;
  currentHash = data.hash;
  $("item-id").textContent = current.id;
  $("item-domain").textContent = current.domain || "none";
  $("item-routed").textContent = current.routed_by.join(", ");
  $("item-reviews").textContent = data.reviews + " reviewer(s) so far";
  const sys = current.prompt.filter((m) => m.role === "system").map((m) => m.content).join("\n");
  $("system").textContent = sys ? "system: " + sys : "";
  // every turn of a multi-turn prompt, oldest first, each labelled with who said it; one turn: just its text
  const turns = current.prompt.filter((m) => m.role !== "system");
  $("prompt").replaceChildren(...turns.map((m) => {
    const d = document.createElement("div");
    d.className = "turn";
    if (turns.length > 1) {
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = m.role + ": ";
      d.append(role);
    }
    d.append(document.createTextNode(m.content));
    return d;
  }));
  const [a, b] = st.blind ? [current.answers.A, current.answers.B] : [current.original, current.revision];
  $("answer-a").textContent = a;
  $("answer-b").textContent = b;
  const rubric = $("rubric");
  rubric.replaceChildren(...st.rubric.map((r) => {
    const li = document.createElement("li"), name = document.createElement("b");
    name.textContent = r.name;
    li.append(name, document.createTextNode(r.text ? ": " + r.text : ""));
    return li;
  }));
  const principles = $("principles");
  principles.replaceChildren();
  current.rounds.forEach((r) => {
    const h = document.createElement("div"), t = document.createElement("div");
    h.textContent = r.principle;
    t.className = "text meta";
    t.textContent = r.critique_request;
    principles.append(h, t);
  });
  const rounds = $("rounds");
  rounds.replaceChildren();
  if (!st.blind) {  // a critique describes the original's flaws: shown only in the labelled view
    current.rounds.forEach((r, k) => {
      const h = document.createElement("h2");
      h.textContent = "Round " + (k + 1) + ": principle " + r.principle;
      const c = document.createElement("div");
      c.className = "text critique";
      c.textContent = r.critique;
      rounds.append(h, c);
    });
    if (current.judge) {
      const j = document.createElement("div");
      j.className = "meta";
      j.textContent = "judge: " + current.judge.outcome + " (" + JSON.stringify(current.judge.verdicts) + ")";
      rounds.append(j);
    }
  }
  rounds.style.display = rounds.children.length ? "" : "none";
  document.querySelectorAll("[data-verdict]").forEach((b) => {
    if (b.parentElement.classList.contains("actions")) b.classList.toggle("chosen", !!data.mine && b.dataset.verdict === data.mine.verdict);
  });
  $("comment").value = (data.mine && data.mine.comment) || "";
  $("edit-box").style.display = "none";
  setStatus(data.mine ? "your verdict: " + data.mine.verdict + " at " + data.mine.at : "not reviewed by you yet");
  shownAt = performance.now();  // the verdict's seconds count from here: time spent reading this item
}

async function verdict(v, chosen) {
  if (!current) return;
  try {
    await api("/api/verdict", {method: "POST",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": st.csrf},
      body: JSON.stringify({item: current.id, verdict: v, chosen: chosen || null, comment: $("comment").value || null,
                            hash: currentHash, seconds: (performance.now() - shownAt) / 1000})});
    const id = current.id;
    st = await fetchState(st.offset, pos);
    render();
    await goTo(st.todo_after === null ? pos : st.todo_after, true);
    setStatus("saved: " + v + " on " + id);
  } catch (e) { setStatus("not saved: " + e.message, true); }
}

function startEdit() {
  if (!current) return;
  $("edit-box").style.display = "block";
  $("edit-text").value = st.blind ? "" : current.revision;  // blind: no answer is offered first
  $("edit-text").focus();
}

$("b-first").onclick = () => verdict($("b-first").dataset.verdict);
$("b-second").onclick = () => verdict($("b-second").dataset.verdict);
$("b-reject").onclick = () => verdict("reject");
$("b-edit").onclick = startEdit;
$("b-from-a").onclick = () => { $("edit-text").value = $("answer-a").textContent; $("edit-text").focus(); };
$("b-from-b").onclick = () => { $("edit-text").value = $("answer-b").textContent; $("edit-text").focus(); };
$("b-save-edit").onclick = () => verdict("edit", $("edit-text").value);
$("prev-page").onclick = () => st && goTo(st.offset - LIMIT);
$("next-page").onclick = () => st && goTo(st.offset + LIMIT);
$("search").addEventListener("change", () => {
  query = $("search").value.trim();
  start().catch((e) => setStatus("could not load: " + e.message, true));
});

document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (e.target === $("edit-text")) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); verdict("edit", $("edit-text").value); }
    if (e.key === "Escape") { $("edit-box").style.display = "none"; $("edit-text").blur(); }
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey || !st) return;
  const keys = st.blind ? {a: "A", b: "B", r: "reject"} : {a: "accept", s: "swap", r: "reject"};
  if (keys[e.key]) { e.preventDefault(); verdict(keys[e.key]); }
  else if (e.key === "e") { e.preventDefault(); startEdit(); }
  else if (e.key === "j" || e.key === "ArrowRight") goTo(pos + 1);
  else if (e.key === "k" || e.key === "ArrowLeft") goTo(pos - 1);
});

async function post(path, body) {  // before a session: no CSRF token yet (the server checks Origin and JSON)
  const r = await fetch(path, {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const out = await r.json();
  if (!r.ok) throw new Error(out.error || r.statusText);
  return out;
}

async function confirmInvite(token) {
  history.replaceState(null, "", "/");  // the token leaves the address bar and the history at once
  $("signin").hidden = false;
  let invited;
  try { invited = await post("/api/invite", {token: token}); }
  catch (e) { $("signin-text").textContent = e.message; return; }
  let now = null;
  try { now = (await api("/api/state?limit=1")).reviewer; } catch (e) { /* not signed in: nothing to replace */ }
  $("signin-text").textContent = "This invite link signs you in as " + invited.reviewer
    + (invited.role === "admin" ? " (admin)" : "") + ". It works once."
    + (now && now !== invited.reviewer ? " You are signed in as " + now + " now: this replaces it." : "")
    + " If you did not open a link you were sent, close this page.";
  $("b-signin").hidden = false;
  $("b-signin").onclick = async () => {
    try { await post("/api/signin", {token: token}); }
    catch (e) { $("signin-text").textContent = e.message; $("b-signin").hidden = true; return; }
    $("signin").hidden = true;
    load();
  };
}

function load() {
  start().catch((e) => {
    setStatus("could not load: " + e.message, true);
    $("whoami").textContent = "not signed in";
  });
}

const invite = new URLSearchParams(location.search).get("token");
if (invite) confirmInvite(invite); else load();
