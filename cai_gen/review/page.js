"use strict";
// The review page. All prompt text goes in with textContent: it is data, never HTML. The answers go in as the HTML the
// server rendered from their Markdown and sanitised (render.py: no raw HTML, no image, no link, only formatting
// tags); nothing typed or generated is ever turned into HTML here.
// Who reviews comes from the session cookie, never from anything typed here. An invite link (/?token=...) signs in
// only after the reviewer confirms whose link it is: a page on another site that sends this browser to its own
// invite link (login CSRF) gets no further than the question. The confirmation is a JSON POST, which another
// site cannot send here; the invite works once.
const $ = (id) => document.getElementById(id);
const LIMIT = 100;  // items per list page (the server's most)
let st = null;      // the last /api/state answer: one page of the (searched) queue, progress, csrf, mode
let pos = 0;        // position of the shown item in the searched queue
let current = null, currentHash = null, shownAt = 0;  // hash: the text shown, sent with the verdict
let query = "", pendingSkip = false;

function setStatus(msg, bad) { $("status").textContent = msg; $("status").className = bad ? "error" : "meta"; }

async function api(path, opts) {
  const r = await fetch(path, Object.assign({credentials: "same-origin"}, opts));
  const body = await r.json();
  if (r.status === 401) throw new Error("not signed in, or your session ended: open a new invite link");
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// the two answers' keys: where the ratings of the left and right column are sent (blind: the letters; the server
// maps them back), and the verdict each "better" button gives
function sides() { return st.blind ? ["A", "B"] : ["original", "revision"]; }

function modeLabels() {
  // blind: the page never knows which answer is the revision; A/B order is the server's, per item and reviewer.
  // Left is key 1 and right key 2 in both views (labelled: the original left, the revision right)
  const blind = st.blind;
  $("title-a").textContent = blind ? "Answer A" : "Original";
  $("title-b").textContent = blind ? "Answer B" : "Revision";
  const first = $("b-first"), second = $("b-second");
  first.dataset.verdict = blind ? "A" : "swap";
  second.dataset.verdict = blind ? "B" : "accept";
  first.replaceChildren(blind ? "A better " : "Original better (swap) ", kbd("1"));
  second.replaceChildren(blind ? "B better " : "Revision better (accept) ", kbd("2"));
  $("b-tie").dataset.verdict = "tie";
  $("b-reject").dataset.verdict = "reject";
  $("b-skip").dataset.verdict = "skip";
  $("b-edit").dataset.verdict = "edit";
  $("b-from-a").textContent = blind ? "start from A" : "start from the original";
  $("b-from-b").textContent = blind ? "start from B" : "start from the revision";
  $("keys-hint").textContent = "keys: 1 / 2 that answer is better, t tie, u unusable, s skip, e edit, "
    + "g rate, ? guide, j / k next / prev" + (st.role === "admin" ? ", a team" : "");
}

function ratingInputs() { return [...document.querySelectorAll("#ratings input")]; }

function renderRatings(mine) {
  // one row per guideline, one 1-5 box per answer; typing a digit fills the box and moves to the next one
  const [lo, hi] = st.scale, table = $("ratings"), head = document.createElement("tr");
  const cell = (tag, text) => { const c = document.createElement(tag); c.textContent = text; return c; };
  head.append(cell("th", "rate " + lo + "-" + hi), ...(st.blind ? ["A", "B"] : ["original", "revision"]).map((x) => cell("th", x)));
  table.replaceChildren(head, ...st.rubric.map((g) => {
    const tr = document.createElement("tr"), name = cell("th", g.name);
    name.title = g.text;
    tr.append(name);
    sides().forEach((side) => {
      const td = document.createElement("td"), inp = document.createElement("input");
      inp.type = "number"; inp.min = lo; inp.max = hi; inp.dataset.side = side; inp.dataset.guideline = g.name;
      inp.setAttribute("aria-label", g.name + " of " + side);
      const was = mine && mine.ratings && mine.ratings[side] && mine.ratings[side][g.name];
      inp.value = was ? String(was) : "";
      td.append(inp);
      tr.append(td);
    });
    return tr;
  }));
}

function ratings() {
  const out = {};
  for (const inp of ratingInputs()) {
    const n = Number(inp.value);
    if (inp.value === "") continue;
    if (!Number.isInteger(n) || n < st.scale[0] || n > st.scale[1]) throw new Error(inp.getAttribute("aria-label") + ": rate " + st.scale[0] + "-" + st.scale[1]);
    (out[inp.dataset.side] = out[inp.dataset.side] || {})[inp.dataset.guideline] = n;
  }
  return Object.keys(out).length ? out : null;
}

function renderTags(choices, mine) {
  const box = $("tags"), have = new Set((mine && mine.tags) || []);
  box.replaceChildren(...choices.map((t) => {
    const l = document.createElement("label"), c = document.createElement("input");
    c.type = "checkbox"; c.value = t; c.checked = have.has(t);
    l.append(c, document.createTextNode(" " + t));
    return l;
  }));
}

function tags() {
  const t = [...document.querySelectorAll("#tags input:checked")].map((c) => c.value);
  return t.length ? t : null;
}

function kbd(k) { const e = document.createElement("kbd"); e.textContent = k; return e; }

async function fetchState(offset, after) {
  return api("/api/state?offset=" + offset + "&limit=" + LIMIT + "&after=" + after + "&q=" + encodeURIComponent(query)
             + "&show=" + encodeURIComponent($("show").value) + "&domain=" + encodeURIComponent($("domain").value)
             + "&principle=" + encodeURIComponent($("principle").value));
}

function options(select, all, values) {  // the filter's choices, keeping the one picked
  if ([...select.options].slice(1).map((o) => o.value).join("\n") === values.join("\n")) return;  // unchanged
  const was = select.value, first = document.createElement("option");
  first.value = ""; first.textContent = all;
  select.replaceChildren(first, ...values.map((v) => { const o = document.createElement("option"); o.value = v; o.textContent = v; return o; }));
  select.value = values.includes(was) ? was : "";
}

function render() {
  $("whoami").textContent = "reviewing as " + st.reviewer + (st.role === "admin" ? " (admin)" : "")
    + (st.blind ? " · blind" : "");
  $("progress-text").textContent = st.done + " / " + st.total + " reviewed by " + st.reviewer
    + (st.overlap && st.role !== "admin" ? " (your queue)" : "");
  options($("domain"), "every domain", st.domains || []);
  options($("principle"), "every principle", st.principles || []);
  $("b-admin").hidden = st.role !== "admin";
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
    const prev = document.createElement("span");
    prev.className = "preview";
    prev.textContent = it.preview;
    b.append(dot, document.createTextNode(it.id), prev);
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
  $("main").hidden = false;
  render();
  if (!st.matched) {
    current = null;
    const filtered = query || st.show !== "all" || $("domain").value || $("principle").value;
    setStatus(filtered ? "Nothing matches the search or filter."
      : st.overlap && st.role !== "admin" ? "Nothing for you now: every item has its " + st.overlap + " reviewer(s)."
      : "No items routed to review in this run (see the review: config).");
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
  // the server's sanitised rendering (render.py); the raw text stays in `current` for "start from"
  const [a, b] = st.blind ? [current.html.A, current.html.B] : [current.html.original, current.html.revision];
  $("answer-a").innerHTML = a;
  $("answer-b").innerHTML = b;
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
  document.querySelectorAll("#verdict-form button[data-verdict]").forEach((b) => {
    b.classList.toggle("chosen", !!data.mine && b.dataset.verdict === data.mine.verdict);
  });
  $("comment").value = (data.mine && data.mine.comment) || "";
  renderRatings(data.mine);
  renderTags(data.tags || [], data.mine);
  pendingSkip = false;
  $("edit-box").style.display = "none";
  setStatus(data.mine ? "your verdict: " + data.mine.verdict + " at " + data.mine.at : "not reviewed by you yet");
  shownAt = performance.now();  // the verdict's seconds count from here: time spent reading this item
}

async function verdict(v, chosen) {
  if (!current) return;
  if (v === "skip" && !$("comment").value.trim()) {  // a skip says why: write it, then Ctrl+Enter
    pendingSkip = true;
    $("comment").focus();
    setStatus("skip: write why you are unsure in the comment, then Ctrl+Enter");
    return;
  }
  try {
    await api("/api/verdict", {method: "POST",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": st.csrf},
      body: JSON.stringify({item: current.id, verdict: v, chosen: chosen || null, comment: $("comment").value || null,
                            hash: currentHash, seconds: (performance.now() - shownAt) / 1000,
                            ratings: ratings(), tags: tags()})});
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
$("b-tie").onclick = () => verdict("tie");
$("b-reject").onclick = () => verdict("reject");
$("b-skip").onclick = () => verdict("skip");
$("b-edit").onclick = startEdit;
// the answer's own (Markdown) text, not the rendering
const raw = (k) => (st.blind ? current.answers[k ? "B" : "A"] : current[k ? "revision" : "original"]);
$("b-from-a").onclick = () => { $("edit-text").value = raw(0); $("edit-text").focus(); };
$("b-from-b").onclick = () => { $("edit-text").value = raw(1); $("edit-text").focus(); };
["show", "domain", "principle"].forEach((id) => $(id).addEventListener("change",
  () => start().catch((e) => setStatus("could not load: " + e.message, true))));
$("b-save-edit").onclick = () => verdict("edit", $("edit-text").value);
$("prev-page").onclick = () => st && goTo(st.offset - LIMIT);
$("next-page").onclick = () => st && goTo(st.offset + LIMIT);
$("search").addEventListener("change", () => {
  query = $("search").value.trim();
  start().catch((e) => setStatus("could not load: " + e.message, true));
});

// ---- the admin view: /api/stats, which answers admins only -------------------------------------------------

function table(el, head, rows) {
  const row = (tag, cells) => {
    const tr = document.createElement("tr");
    tr.append(...cells.map((c) => { const td = document.createElement(tag); td.textContent = c === null || c === undefined ? "-" : String(c); return td; }));
    return tr;
  };
  el.replaceChildren(row("th", head), ...rows.map((r) => row("td", r)));
}

const pct = (x) => (x === null || x === undefined ? null : (100 * x).toFixed(1) + "%");

async function showTeam() {
  const s = await api("/api/stats"), t = s.team;
  $("team-summary").textContent = t.complete + " of " + t.items + " items have their verdicts in"
    + (t.overlap ? " (each item to " + t.overlap + " reviewer" + (t.overlap > 1 ? "s" : "") + ")" : " (everyone sees every item)")
    + "; " + t.disputed.length + " disputed.";
  const names = [...new Set([...Object.keys(t.reviewers), ...Object.keys(s.reviewers)])].sort();
  table($("team-progress"), ["reviewer", "assigned", "judged", "skipped", "open", "too fast (<" + s.fast_seconds + " s)", "median s", "chose A"],
    names.map((n) => {
      const p = t.reviewers[n] || {}, r = s.reviewers[n] || {};
      return [n, t.overlap ? p.assigned : null, p.judged, p.skipped, t.overlap ? p.open : null,
              r.timed ? r.too_fast + " of " + r.timed + " (" + pct(r.too_fast_share) + ")" : null, r.median_seconds,
              r.blind_ab ? pct(r.a_share) + " of " + r.blind_ab + " (p=" + r.position_p + ")" : null];
    }));
  const ag = s.agreement;
  $("team-agreement").textContent = ag.comparisons
    ? "agreement " + pct(ag.agreement) + " over " + ag.comparisons + " shared judgements, kappa " + (ag.kappa === null ? "-" : ag.kappa)
    : "no item has two verdicts yet";
  table($("team-pairs"), ["reviewers", "items shared", "agreement", "kappa"],
    ag.pairs.map((p) => [p.a + " + " + p.b, p.items, pct(p.agreement), p.kappa]));
  const shown = t.disputed.slice(0, 200);
  $("team-more").textContent = t.disputed.length > shown.length ? " (the first " + shown.length + " shown)" : "";
  $("team-disputed").replaceChildren(...shown.map((d) => {
    const b = document.createElement("button");
    b.textContent = d.id + ": " + Object.entries(d.votes).map(([r, v]) => r + " " + v).join(", ");
    b.dataset.item = d.id;
    b.onclick = () => openDisputed(d.id);
    return b;
  }));
  $("main").hidden = true;
  $("admin").hidden = false;
}

function hideTeam() { $("admin").hidden = true; $("main").hidden = false; }

async function openDisputed(id) {  // the list filtered to disputed items, at this one
  hideTeam();
  $("show").value = "disputed";
  await start();
  const k = st.items.findIndex((it) => it.id === id);
  if (k >= 0) await goTo(st.offset + k);
}

function team() {
  if (!st || st.role !== "admin") return;
  if ($("admin").hidden) showTeam().catch((e) => setStatus("could not load the team view: " + e.message, true));
  else hideTeam();
}
$("b-admin").onclick = team;
$("b-back").onclick = hideTeam;

function guide() {
  const g = $("guidelines");
  g.open = !g.open;
  if (g.open) g.scrollIntoView({block: "start"});
}

document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (e.target === $("edit-text")) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); verdict("edit", $("edit-text").value); }
    if (e.key === "Escape") { $("edit-box").style.display = "none"; $("edit-text").blur(); }
    return;
  }
  if (e.target === $("comment")) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && pendingSkip) { e.preventDefault(); verdict("skip"); }
    if (e.key === "Escape") $("comment").blur();
    return;
  }
  const boxes = ratingInputs(), at = boxes.indexOf(e.target);
  if (at >= 0) {  // a rating box: a digit fills it and moves on; Enter or Esc goes back to the verdict keys
    if (/^[0-9]$/.test(e.key) && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      e.target.value = e.key;
      if (at + 1 < boxes.length) boxes[at + 1].focus(); else e.target.blur();
    } else if (e.key === "Enter" || e.key === "Escape") { e.preventDefault(); e.target.blur(); }
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey || !st) return;
  if (!$("admin").hidden && e.key !== "a") return;  // the team view is open: no verdict on an item not in view
  const keys = {"1": $("b-first").dataset.verdict, "2": $("b-second").dataset.verdict, t: "tie", u: "reject", s: "skip"};
  if (keys[e.key]) { e.preventDefault(); verdict(keys[e.key]); }
  else if (e.key === "e") { e.preventDefault(); startEdit(); }
  else if (e.key === "g" && boxes.length) { e.preventDefault(); boxes[0].focus(); }
  else if (e.key === "?") { e.preventDefault(); guide(); }
  else if (e.key === "a") { e.preventDefault(); team(); }
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
  $("b-signin").focus();  // Enter signs in: the keyboard alone, as everywhere on this page
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
    $("signin").hidden = false;  // not an empty skeleton: say how to get in
    $("signin-text").textContent = e.message.startsWith("not signed in")
      ? "Not signed in (or your session ended): open the invite link you were sent." : "Could not load: " + e.message;
  });
}

const invite = new URLSearchParams(location.search).get("token");
if (invite) confirmInvite(invite); else load();
