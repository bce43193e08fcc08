// The orchd dashboard: a snapshot (GET /api/snapshot) kept fresh, and every event live (SSE).
//
// Agent output is hostile: every piece of event or status data reaches the DOM through
// textContent (the el() helper below); nothing here assigns innerHTML.  Memory stays flat:
// the page keeps at most LOG_CAP events, and the log is windowed (only the rows on screen
// are in the DOM).
"use strict";

const LOG_CAP = 20000;        // events kept in memory (the oldest go first)
const HISTORY = 5000;         // events of history asked for at first load
const ROW_H = 20;             // px per log row (style.css .log line-height)
const OVERSCAN = 10;
const TEXT_CAP = 400;         // characters of one event shown in its row
const REFRESH_MS = 300;       // a state-changing event refreshes the snapshot at most this often
const QUIET_KINDS = new Set(["agent.text", "agent.output", "agent.tool_call", "agent.tool_result", "worker.log",
                             "agent.unknown", "agent.session"]);

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = String(v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// ------------------------------------------------------------------ token

function takeToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("orchd-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);  // out of the address bar
  }
  return sessionStorage.getItem("orchd-token") || "";
}
let token = takeToken();

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function notice(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method, headers: authHeaders(body !== undefined ? {"Content-Type": "application/json"} : {}),
    body: body !== undefined ? JSON.stringify(body) : undefined, cache: "no-store",
  });
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.status === 401) $("token-form").hidden = false;
  if (!res.ok) {
    const detail = data && data.error ? `${data.error.detail} [${data.error.code}]` : `HTTP ${res.status}`;
    throw new Error(detail);
  }
  return data;
}

async function act(sid, action, body) {
  try {
    const r = await api("POST", `/api/sessions/${encodeURIComponent(sid)}/${action}`, body);
    notice(`${action} ${sid}: ${(r && r.detail) || "ok"}`);
    scheduleRefresh();
  } catch (e) {
    notice(`${action} ${sid}: ${e.message}`);
  }
}

// ------------------------------------------------------------------ state

const state = {
  snapshot: null,
  lastEventTs: new Map(),     // session id or "sid/worker" -> ms of its last event
  recoveries: new Map(),      // session id -> [{ts, text}] (last 20)
  events: [],                 // {seq, ts, kind, session, worker, text}
  view: [],                   // indices into events that pass the filters
  lastSeq: 0, gaps: 0, dupes: 0, received: 0,
  loadedAt: Date.now() / 1000, maxLagMs: 0,   // the worst delay from an event's time to the page, since load
  follow: true,
  workers: new Set(), sessions: new Set(),
};
window.orchdDebug = {   // read by the browser tests
  get received() { return state.received; }, get lastSeq() { return state.lastSeq; },
  get gaps() { return state.gaps; }, get dupes() { return state.dupes; }, get kept() { return state.events.length; },
  get maxLagMs() { return state.maxLagMs; },
};

function summary(ev) {
  const skip = new Set(["seq", "ts", "kind", "session", "worker", "agent", "gen", "prev"]);
  if (typeof ev.text === "string") return ev.text;
  if (ev.kind === "agent.output") return JSON.stringify(ev.data);
  const parts = [];
  for (const [k, v] of Object.entries(ev)) {
    if (skip.has(k) || v === null || v === undefined) continue;
    parts.push(`${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
  }
  return parts.join(" ");
}

const MAP_CAP = 5000;   // sessions and workers remembered (the least recently seen go first)
function touch(map, key, value) {
  map.delete(key);
  map.set(key, value);
  if (map.size > MAP_CAP) map.delete(map.keys().next().value);
}

function onEvent(ev) {
  if (ev.seq <= state.lastSeq) { state.dupes++; return; }
  if (state.lastSeq && ev.seq !== state.lastSeq + 1) state.gaps++;
  state.lastSeq = ev.seq;
  state.received++;
  const now = Date.now();
  if (ev.ts > state.loadedAt) state.maxLagMs = Math.max(state.maxLagMs, now - ev.ts * 1000);
  if (ev.session) {
    const at = typeof ev.ts === "number" ? ev.ts * 1000 : now;   // history keeps its own times
    touch(state.lastEventTs, ev.session, at);
    if (ev.worker) touch(state.lastEventTs, ev.session + "/" + ev.worker, at);
    if (ev.kind === "worker.failure" || (ev.kind === "worker.launching" && ev.reason)) {
      const list = state.recoveries.get(ev.session) || [];
      list.push({ts: ev.ts, text: `${ev.worker || ""} ${ev.kind} ${summary(ev)}`.slice(0, TEXT_CAP)});
      if (list.length > 20) list.shift();
      touch(state.recoveries, ev.session, list);
    }
  }
  let text = summary(ev);
  if (text.length > TEXT_CAP) text = text.slice(0, TEXT_CAP) + "…";
  const row = {seq: ev.seq, ts: ev.ts, kind: ev.kind, session: ev.session, worker: ev.worker, text};
  state.events.push(row);
  if (ev.worker && !state.workers.has(ev.worker) && state.workers.size < 500) {
    state.workers.add(ev.worker);
    $("f-worker").append(el("option", {value: ev.worker, text: ev.worker}));
  }
  if (ev.session && !state.sessions.has(ev.session) && state.sessions.size < 500) {
    state.sessions.add(ev.session);
    $("f-session").append(el("option", {value: ev.session, text: ev.session}));
  }
  if (state.events.length > LOG_CAP) {
    state.events.splice(0, LOG_CAP / 4);
    rebuildView();
  } else if (passes(row)) {
    state.view.push(state.events.length - 1);
  }
  if (!QUIET_KINDS.has(ev.kind)) scheduleRefresh();
  scheduleLog();
}

// ------------------------------------------------------------------ the windowed log

const filters = {session: "", worker: "", kind: "", noise: false};

function passes(row) {
  if (filters.session && row.session !== filters.session) return false;
  if (filters.worker && row.worker !== filters.worker) return false;
  if (filters.kind) return row.kind.startsWith(filters.kind);
  return filters.noise || row.kind !== "worker.log";
}

function rebuildView() {
  state.view = [];
  state.events.forEach((row, i) => { if (passes(row)) state.view.push(i); });
}

let logPending = false;
function scheduleLog() {
  if (logPending) return;
  logPending = true;
  requestAnimationFrame(() => { logPending = false; renderLog(); });
}

const rowPool = [];
function renderLog() {
  const box = $("log"), spacer = $("log-spacer");
  spacer.style.height = `${state.view.length * ROW_H}px`;
  if (state.follow) box.scrollTop = box.scrollHeight;
  const first = Math.max(0, Math.floor(box.scrollTop / ROW_H) - OVERSCAN);
  const count = Math.ceil(box.clientHeight / ROW_H) + 2 * OVERSCAN;
  const last = Math.min(state.view.length, first + count);
  while (rowPool.length < last - first) {
    const r = el("div", {class: "ev"}, el("span", {class: "s muted"}), " ", el("span", {class: "k"}), " ",
                 el("span", {class: "w"}), " ", el("span", {class: "t"}));
    rowPool.push(r);
    box.append(r);
  }
  rowPool.forEach((r, j) => {
    const i = first + j;
    if (i >= last) { r.hidden = true; return; }
    const row = state.events[state.view[i]];
    r.hidden = false;
    r.style.top = `${i * ROW_H}px`;
    r.className = row.kind.includes("error") || row.kind === "worker.failure" ? "ev err" : "ev";
    const [s, k, w, t] = r.querySelectorAll("span");
    s.textContent = String(row.seq);
    k.textContent = row.kind;
    w.textContent = row.worker || row.session || "";
    t.textContent = row.text;
    r.title = row.text;
  });
  $("log-count").textContent = `${state.view.length} shown · ${state.received} received`;
  $("log-bottom").hidden = state.follow;
}

function setupLog() {
  const box = $("log");
  box.addEventListener("scroll", () => {
    state.follow = box.scrollTop + box.clientHeight >= box.scrollHeight - ROW_H;
    scheduleLog();
  }, {passive: true});
  $("log-bottom").addEventListener("click", () => { state.follow = true; scheduleLog(); });
  const refilter = () => {
    filters.session = $("f-session").value;
    filters.worker = $("f-worker").value;
    filters.kind = $("f-kind").value.trim();
    filters.noise = $("f-noise").checked;
    rebuildView();
    scheduleLog();
  };
  for (const id of ["f-session", "f-worker", "f-noise"]) $(id).addEventListener("change", refilter);
  $("f-kind").addEventListener("input", refilter);
}

// ------------------------------------------------------------------ snapshot and rendering

let refreshTimer = null, refreshing = false, refreshAgain = false;
function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    if (refreshing) { refreshAgain = true; return; }
    refreshing = true;
    try { await refresh(); } finally {
      refreshing = false;
      if (refreshAgain) { refreshAgain = false; scheduleRefresh(); }
    }
  }, REFRESH_MS);
}

async function refresh() {
  try {
    state.snapshot = await api("GET", "/api/snapshot");
  } catch (e) {
    notice(`snapshot: ${e.message}`);
    return;
  }
  render();
}

function ago(ms) {
  if (!ms) return "–";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
}

function sinceCell(key) {
  return el("span", {class: "since", "data-key": key, text: ago(state.lastEventTs.get(key))});
}

function tickSince() {
  for (const node of document.querySelectorAll(".since")) node.textContent = ago(state.lastEventTs.get(node.dataset.key));
}

function bar(fraction) {
  const inner = el("span");
  inner.style.width = `${Math.round(Math.min(1, Math.max(0, fraction || 0)) * 100)}%`;
  return el("div", {class: "bar", title: `${Math.round((fraction || 0) * 100)}%`}, inner);
}

function badge(st) {
  return el("span", {class: `badge st-${String(st).replace(/[^a-z_]/g, "")}`, text: st});
}

function money(v) { return v === null || v === undefined ? "–" : `$${Number(v).toFixed(4)}`; }

function needsOf(s) {
  const out = [];
  if (s.waiting_for === "answer" || s.question) out.push({why: "waits for your answer", bad: false});
  if (s.waiting_for && s.waiting_for !== "answer") out.push({why: `waits for ${s.waiting_for}`, bad: false});
  if (s.state === "escalated") out.push({why: "escalated", bad: true});
  if (s.state === "failed") out.push({why: "failed", bad: true});
  for (const w of s.workers || []) {
    if (w.reason && /quota|rate.?limit/i.test(w.reason) && !["done", "stopped"].includes(w.state)) {
      out.push({why: `${w.name}: quota wait`, bad: false});
    }
  }
  return out;
}

const drafts = new Map();   // session id -> the answer being typed (the strip is rebuilt on every refresh)
function answerBox(s) {
  const input = el("textarea", {rows: 2, placeholder: "your answer", "aria-label": `answer ${s.id}`, class: "answer-text",
                                oninput: (e) => drafts.set(s.id, e.target.value)});
  input.value = drafts.get(s.id) || "";
  const btn = el("button", {type: "button", class: "answer-btn", text: "answer", onclick: () => {
    if (input.value.trim()) { act(s.id, "answer", {text: input.value}); drafts.delete(s.id); }
  }});
  return el("div", {class: "row"}, input, btn);
}

function renderNeeds(sessions) {
  const box = $("needs-list");
  const cards = [];
  for (const s of sessions) {
    const needs = needsOf(s);
    if (!needs.length) continue;
    const bad = needs.some((n) => n.bad);
    cards.push(el("div", {class: `card need${bad ? " bad" : ""}`, "data-session": s.id},
      el("h3", {}, el("span", {text: s.id}), badge(s.state), ...needs.map((n) => el("span", {class: "badge st-waiting", text: n.why}))),
      el("div", {class: "task", text: s.task}),
      s.reason ? el("div", {class: "muted", text: s.reason}) : null,
      s.question ? el("div", {class: "question", text: s.question}) : null,
      ...(s.workers || []).filter((w) => w.last_decision === "stop_and_escalate" || w.state === "failed")
        .map((w) => el("div", {class: "muted", text: `${w.name}: ${w.last_decision || w.reason || w.state}`})),
      (s.waiting_for === "answer" || s.question) ? answerBox(s) : null));
  }
  box.replaceChildren(...(cards.length ? cards : [el("p", {class: "muted", text: "nothing waits for you"})]));
}

function controls(s) {
  const b = (action, label, cls) => el("button", {type: "button", class: cls, "data-action": action, text: label,
                                                  onclick: () => act(s.id, action)});
  const terminal = ["done", "failed", "stopped", "escalated"].includes(s.state);
  return el("div", {class: "row"},
    !terminal && s.state !== "paused" ? b("pause", "pause") : null,
    s.state === "paused" ? b("resume", "resume") : null,
    !terminal ? b("review", "review") : null,
    !terminal ? b("stop", "stop", "danger") : null,
    el("button", {type: "button", "data-action": "diff", text: "diff", onclick: () => showDiff(s.id)}));
}

function reviewsOf(s, snapshot) {
  const all = snapshot.reviews;   // {session id: [review]} once the daemon serves reviews
  const list = all && !Array.isArray(all) && Array.isArray(all[s.id]) ? all[s.id] : [];
  return list.slice(-20);
}

function finding(f) {
  if (typeof f === "string") return el("li", {text: f});
  const where = f.file ? `${f.file}${f.line ? `:${f.line}` : ""} ` : "";
  return el("li", {}, badge(f.severity || "note"), " ", el("span", {class: "muted", text: where}),
            el("span", {text: f.evidence || ""}));
}

function renderReviews(s, snapshot) {
  const reviews = reviewsOf(s, snapshot);
  if (!reviews.length) return null;
  return el("details", {class: "reviews", open: true},
    el("summary", {text: `reviews (${reviews.length})`}),
    ...reviews.map((r) => el("div", {class: "review", "data-review": r.id},
      el("div", {class: "row"},
        el("strong", {text: `${r.assignment} · round ${r.round}`}),
        r.decision ? badge(r.decision) : badge("pending"),
        r.reason ? el("span", {class: "muted", text: r.reason}) : null),
      ...(r.verdicts || []).map((v) => el("div", {class: "verdict"},
        el("div", {class: "row"}, el("span", {text: `${v.reviewer} (${v.agent})`}), badge(v.verdict),
           el("span", {class: "muted", text: v.summary || ""})),
        (v.findings || []).length
          ? el("ul", {class: "findings"}, ...v.findings.slice(0, 50).map(finding)) : null)))));
}

function workerTable(s) {
  const head = el("tr", {}, ...["agent", "role", "state", "progress", "last event", "tokens in/out", "cost"].map((h, i) =>
    el("th", {class: i === 1 ? "hide-narrow" : null, text: h})));
  const rows = (s.workers || []).map((w) => el("tr", {"data-worker": w.name},
    el("td", {}, el("strong", {text: w.name}), el("span", {class: "muted", text: ` ${w.agent}`})),
    el("td", {class: "hide-narrow", text: w.role || ""}),
    el("td", {}, badge(w.state), w.reason ? el("div", {class: "muted", text: w.reason}) : null,
       w.review_round ? el("div", {class: "muted", text: `review round ${w.review_round}${w.last_decision ? ` · ${w.last_decision}` : ""}`}) : null),
    el("td", {}, el("div", {class: "row"}, bar(w.progress),
       el("span", {class: "muted", text: `w${w.weight}${w.milestones ? ` · ${w.milestones}✓` : ""}`}))),
    el("td", {}, sinceCell(`${s.id}/${w.name}`)),
    el("td", {class: "num", text: `${w.input_tokens}/${w.output_tokens}`}),
    el("td", {class: "num", text: money(w.cost_usd)})));
  return el("div", {class: "tablewrap"}, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function renderSessions(snapshot) {
  const budgets = new Map((snapshot.budgets || []).map((b) => [b.session, b]));
  const cards = [...snapshot.sessions].reverse().map((s) => {
    const b = budgets.get(s.id) || {};
    const rec = state.recoveries.get(s.id) || [];
    return el("div", {class: "card session", "data-session": s.id, "data-state": s.state},
      el("h3", {}, el("span", {text: s.id}), badge(s.state),
         el("span", {class: "muted"}, "last event ", sinceCell(s.id)),
         el("span", {class: "muted", text: `tokens ${(b.input_tokens || 0) + (b.output_tokens || 0)} · ${money(b.cost_usd)}`})),
      el("div", {class: "task", text: s.task}),
      el("div", {class: "row"}, bar(s.progress), el("span", {class: "muted", text: `${Math.round((s.progress || 0) * 100)}%`})),
      s.reason ? el("div", {class: "muted", text: s.reason}) : null,
      s.branch ? el("div", {class: "muted", text: `branch ${s.branch}`}) : null,
      renderReviews(s, snapshot),
      rec.length ? el("details", {}, el("summary", {text: `recoveries (${rec.length})`}),
                      ...rec.map((r) => el("div", {class: "muted", text: r.text}))) : null,
      workerTable(s),
      controls(s));
  });
  $("sessions").replaceChildren(...(cards.length ? cards : [el("p", {class: "muted", text: "no sessions yet"})]));
}

function render() {
  const snap = state.snapshot;
  if (!snap) return;
  const typing = document.activeElement && document.activeElement.classList.contains("answer-text");
  if (!typing) renderNeeds(snap.sessions);   // not while an answer is being typed (it keeps focus)
  renderSessions(snap);
  $("seq").textContent = `seq ${Math.max(snap.seq, state.lastSeq)}`;
  if (snap.log_error) notice(`the event log cannot be written: ${snap.log_error}`);
}

async function showDiff(sid) {
  try {
    const d = await api("GET", `/api/sessions/${encodeURIComponent(sid)}/diff`);
    $("diff-box").hidden = false;
    $("diff-h").textContent = `diff ${sid}${d.base ? ` (from ${d.base.slice(0, 10)})` : ""}`;
    $("diff-stat").textContent = d.parts.map((p) => `${p.worker || "session"} (${p.ref})${p.error ? `: ${p.error}` : ""}\n${p.stat}`).join("\n") || "no changes";
    $("diff-patch").textContent = d.parts.map((p) => p.patch + (p.truncated ? "\n… (truncated)\n" : "")).join("\n");
  } catch (e) {
    notice(`diff ${sid}: ${e.message}`);
  }
}

// ------------------------------------------------------------------ live events

let source = null;
function connect() {
  const since = state.lastSeq || Math.max(0, ((state.snapshot && state.snapshot.seq) || 0) - HISTORY);
  const q = new URLSearchParams({since: String(since)});
  if (token) q.set("token", token);
  source = new EventSource(`/api/events?${q}`);
  source.onopen = () => { $("conn").textContent = "live"; $("conn").className = "badge conn-up"; };
  source.onmessage = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch (e) { return; }
    onEvent(ev);
  };
  source.onerror = () => {
    $("conn").textContent = "disconnected, reconnecting…";
    $("conn").className = "badge conn-down";
    if (source.readyState === EventSource.CLOSED) {  // the browser gave up (an HTTP error): start again
      source.close();
      setTimeout(connect, 1000);
    }
  };
}

// ------------------------------------------------------------------ start

function setupForms() {
  $("token-form").hidden = !!token;
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token-input").value.trim();
    sessionStorage.setItem("orchd-token", token);
    $("token-form").hidden = true;
    notice("");
    if (source) source.close();
    connect();
    scheduleRefresh();
  });
  $("submit-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = {target: $("submit-target").value.trim(), task: $("submit-task").value};
    const plan = $("submit-plan").value.trim();
    try {
      if (plan) body.plan = JSON.parse(plan);
      const r = await api("POST", "/api/sessions", body);
      notice(`submitted ${r.session}`);
      scheduleRefresh();
    } catch (err) {
      notice(`submit: ${err.message}`);
    }
  });
}

async function start() {
  setupForms();
  setupLog();
  await refresh();
  connect();
  setInterval(tickSince, 1000);
  window.addEventListener("resize", scheduleLog);
}

start();
