// Policy Studio: a thin client of the gateway's policy API. The API key
// lives in this tab's sessionStorage only and is sent as X-API-Key.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: "", tenant: "", bundles: [], current: null, active: null };

async function api(method, path, body) {
  const headers = { "X-API-Key": state.key };
  if (state.tenant) headers["X-Tenant-ID"] = state.tenant;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
  if (!resp.ok) {
    const err = new Error((data && data.error) || resp.statusText);
    err.status = resp.status;
    err.data = data || {};
    throw err;
  }
  return data;
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function encodeId(id) {
  return id.split("/").map(encodeURIComponent).join("/");
}

// ---- sign in -------------------------------------------------------------

async function signIn(ev) {
  ev.preventDefault();
  state.key = $("api-key").value.trim();
  state.tenant = $("tenant").value.trim();
  $("signin-error").textContent = "";
  try {
    await loadBundles();
    sessionStorage.setItem("cordum-studio", JSON.stringify({ key: state.key, tenant: state.tenant }));
    $("signin").hidden = true;
    $("studio").hidden = false;
    $("whoami").textContent = state.tenant ? `tenant ${state.tenant}` : "signed in";
    await loadHistory();
    await loadEngine();
  } catch (e) {
    $("signin-error").textContent = e.status === 401 ? "That API key is not valid." :
      e.status === 403 ? "This key may not use Policy Studio (an admin key is needed)." : e.message;
  }
}

// ---- bundles -------------------------------------------------------------

async function loadBundles() {
  const data = await api("GET", "/api/v1/policy/bundles");
  state.bundles = data.items || [];
  state.active = data.active_snapshot;
  $("active-snapshot").textContent = `active ${String(data.active_snapshot || "").slice(0, 12)}`;
  const list = $("bundle-list");
  list.replaceChildren();
  for (const b of state.bundles) {
    const li = document.createElement("li");
    li.dataset.id = b.id;
    li.textContent = b.id;
    const src = document.createElement("span");
    src.className = "badge";
    src.textContent = b.source;
    li.append(src);
    if (!b.published) {
      const d = document.createElement("span");
      d.className = "badge draft";
      d.textContent = "unpublished";
      li.append(d);
    }
    if (!b.enabled) {
      const d = document.createElement("span");
      d.className = "badge";
      d.textContent = "disabled";
      li.append(d);
    }
    if (state.current && state.current.id === b.id) li.className = "selected";
    li.addEventListener("click", () => openBundle(b.id));
    list.append(li);
  }
}

async function openBundle(id) {
  const b = await api("GET", `/api/v1/policy/bundles/${encodeId(id)}`);
  state.current = { id: b.id, source: b.source };
  $("bundle-id").textContent = b.id;
  $("bundle-meta").textContent = `${b.source} · ${b.enabled ? "enabled" : "disabled"} · sha ${String(b.sha256).slice(0, 12)}`;
  $("editor").value = b.content || "";
  clearProblems();
  $("diff").hidden = true;
  setStatus("");
  await loadBundles();
}

function newBundle(ev) {
  ev.preventDefault();
  const id = $("new-bundle-id").value.trim();
  if (!id) return;
  state.current = { id, source: "user" };
  $("bundle-id").textContent = id;
  $("bundle-meta").textContent = "new";
  $("editor").value = "rules:\n  - id: my-rule\n    match:\n      topics: [\"job.example.*\"]\n    decision: deny\n    reason: \"Not yet.\"\n";
  clearProblems();
  setStatus("New bundle: edit, then validate & save.");
}

// ---- editor with line numbers and problems -----------------------------------

function renderGutter(badLines) {
  const lines = $("editor").value.split("\n").length;
  const gutter = $("gutter");
  gutter.replaceChildren();
  for (let i = 1; i <= lines; i++) {
    const span = document.createElement("span");
    span.textContent = String(i);
    span.dataset.line = String(i);
    if (badLines && badLines.has(i)) span.className = "bad";
    gutter.append(span, document.createTextNode("\n"));
  }
  gutter.scrollTop = $("editor").scrollTop;
}

function clearProblems() {
  $("problems").replaceChildren();
  renderGutter(new Set());
}

function showProblems(diagnostics) {
  const list = $("problems");
  list.replaceChildren();
  const bad = new Set();
  for (let d of diagnostics) {
    // Lines belong to the bundle they name; others are listed without a line.
    const here = !d.bundle_id || !state.current || d.bundle_id === state.current.id;
    if (!here) d = { ...d, line: 0, message: `${d.bundle_id}: ${d.message}` };
    const li = document.createElement("li");
    li.className = "problem";
    li.dataset.line = String(d.line);
    li.dataset.column = String(d.column);
    li.textContent = d.line > 0 ? `line ${d.line}, column ${d.column}: ${d.message}` : d.message;
    li.addEventListener("click", () => gotoLine(d.line));
    list.append(li);
    if (d.line > 0) bad.add(d.line);
  }
  renderGutter(bad);
  if (diagnostics.length && diagnostics[0].line > 0) gotoLine(diagnostics[0].line);
}

function gotoLine(line) {
  const ed = $("editor");
  const lines = ed.value.split("\n");
  let start = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
  ed.focus();
  ed.setSelectionRange(start, start + (lines[line - 1] || "").length);
}

async function save() {
  if (!state.current) return setStatus("Open or create a bundle first.", true);
  clearProblems();
  try {
    await api("PUT", `/api/v1/policy/bundles/${encodeId(state.current.id)}`, { content: $("editor").value });
    setStatus(`Saved ${state.current.id}. It is live after Publish.`);
    await loadBundles();
  } catch (e) {
    if (e.data && e.data.diagnostics) {
      showProblems(e.data.diagnostics);
      setStatus("The bundle has errors; nothing was saved.", true);
    } else {
      setStatus(e.message, true);
    }
  }
}

// ---- diff against the active snapshot --------------------------------------

function lineDiff(a, b) {
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--)
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push([" ", a[i]]); i++; j++; }
    else if (j < m && (i === n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push(["+", b[j]]); j++; }
    else { out.push(["-", a[i]]); i++; }
  }
  return out;
}

async function diff() {
  if (!state.current) return;
  let snap;
  try {
    snap = await api("GET", `/api/v1/policy/snapshots/${encodeURIComponent(state.active)}`);
  } catch (e) {
    return setStatus(`Cannot read the active snapshot: ${e.message}`, true);
  }
  const live = (snap.bundles || []).find((b) => b.id === state.current.id);
  const before = live ? live.content.split("\n") : [];
  const after = $("editor").value.split("\n");
  const pre = $("diff");
  pre.replaceChildren();
  let changes = 0;
  for (const [op, text] of lineDiff(before, after)) {
    const span = document.createElement("span");
    span.className = op === "+" ? "add" : op === "-" ? "del" : "same";
    span.textContent = `${op} ${text}\n`;
    if (op !== " ") changes++;
    pre.append(span);
  }
  pre.hidden = false;
  setStatus(live ? `${changes} changed line(s) against the active snapshot.` : "Not in the active snapshot: every line is new.");
}

// ---- publish and history ------------------------------------------------------

async function publish() {
  try {
    const out = await api("POST", "/api/v1/policy/publish", { message: $("publish-message").value });
    setStatus(out.changed ? `Published snapshot ${String(out.snapshot_id).slice(0, 12)}.` : "Nothing to publish: the active snapshot already holds these bundles.");
    await loadBundles();
    await loadHistory();
  } catch (e) {
    if (e.data && e.data.diagnostics) showProblems(e.data.diagnostics);
    setStatus(`Publish refused: ${e.message}`, true);
  }
}

async function loadHistory() {
  const data = await api("GET", "/api/v1/policy/snapshots");
  const list = $("history");
  list.replaceChildren();
  for (const h of data.items || []) {
    const li = document.createElement("li");
    li.dataset.snapshot = h.snapshot_id;
    const changes = h.changes || {};
    const count = (changes.added || []).length + (changes.changed || []).length + (changes.removed || []).length;
    li.textContent = `${h.action} ${String(h.snapshot_id).slice(0, 10)} by ${h.by} (${count} change${count === 1 ? "" : "s"})${h.message ? " — " + h.message : ""}`;
    if (h.snapshot_id === data.active) {
      const b = document.createElement("span");
      b.className = "badge";
      b.textContent = "active";
      li.append(b);
    } else {
      const btn = document.createElement("button");
      btn.className = "rollback";
      btn.textContent = "roll back";
      btn.addEventListener("click", async () => {
        try {
          await api("POST", "/api/v1/policy/rollback", { snapshot_id: h.snapshot_id });
          setStatus(`Rolled back to ${String(h.snapshot_id).slice(0, 12)}.`);
          await loadBundles();
          await loadHistory();
        } catch (e) { setStatus(`Rollback refused: ${e.message}`, true); }
      });
      li.append(" ", btn);
    }
    list.append(li);
  }
}

// ---- the tenant's policy engine ---------------------------------------------------
// A tenant may run a policy component of its own after the shared rules (it
// can only tighten them). The marketplace's policy-component plugins are
// offered here; installing one selects it for the signed-in tenant.

async function loadEngine() {
  let current = null;
  try { current = await api("GET", "/api/v1/policy/component"); } catch (e) { if (e.status !== 404) throw e; }
  $("engine-current").textContent = current
    ? `This tenant also runs ${current.plugin || "an uploaded component"} (${String(current.digest).slice(0, 12)}).`
    : "This tenant runs the shared rules only.";
  $("engine-remove").hidden = !current;
  const list = $("engine-list");
  list.replaceChildren();
  let market = { items: [] };
  try { market = await api("GET", "/api/v1/marketplace/packs"); } catch (_) { /* no marketplace access */ }
  for (const item of market.items || []) {
    if (item.kind !== "policy-component") continue;
    const li = document.createElement("li");
    li.dataset.plugin = item.id;
    li.textContent = `${item.title || item.id} ${item.version}`;
    const inUse = current && current.plugin === `${item.id}@${item.version}`;
    if (inUse) {
      const b = document.createElement("span");
      b.className = "badge";
      b.textContent = "in use";
      li.append(" ", b);
    } else {
      const btn = document.createElement("button");
      btn.className = "use-engine";
      btn.textContent = "use";
      btn.addEventListener("click", async () => {
        try {
          await api("POST", "/api/v1/marketplace/install", { pack_id: item.id, version: item.version, catalog_id: item.catalog_id });
          setStatus(`This tenant now runs ${item.id} ${item.version} after the rules.`);
          await loadEngine();
        } catch (e) { setStatus(`Could not select ${item.id}: ${e.message}`, true); }
      });
      li.append(" ", btn);
    }
    list.append(li);
  }
}

async function removeEngine() {
  try {
    await api("DELETE", "/api/v1/policy/component");
    setStatus("This tenant runs the shared rules only.");
    await loadEngine();
  } catch (e) { setStatus(`Could not remove the component: ${e.message}`, true); }
}

// ---- try a request --------------------------------------------------------------

async function explain(ev) {
  ev.preventDefault();
  let labels = {};
  try { labels = JSON.parse($("try-labels").value || "{}"); } catch (_) { return setStatus("Labels must be a JSON object.", true); }
  const tags = $("try-risk-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
  const body = { topic: $("try-topic").value.trim(), labels, meta: { capability: $("try-capability").value.trim(), risk_tags: tags } };
  if ($("try-draft").checked && state.current && state.current.source === "user") {
    body.use_drafts = true;
    body.bundles = [{ id: state.current.id, content: $("editor").value }];
  }
  try {
    const out = await api("POST", "/api/v1/policy/explain", body);
    const decision = String(out.decision || "").replace("DECISION_TYPE_", "");
    $("decision").textContent = `${decision}${out.ruleId ? " by rule " + out.ruleId : " (default decision)"}${out.reason ? ": " + out.reason : ""}`;
    $("decision").dataset.decision = decision;
    const tbody = $("trace").querySelector("tbody");
    tbody.replaceChildren();
    for (const t of out.trace || []) {
      const tr = document.createElement("tr");
      if (t.decisive) tr.className = "decisive";
      for (const cell of [t.position, t.rule_id, t.matched ? "yes" : "no", t.detail]) {
        const td = document.createElement("td");
        td.textContent = String(cell);
        tr.append(td);
      }
      tbody.append(tr);
    }
  } catch (e) {
    $("decision").textContent = `Error: ${e.message}`;
  }
}

// ---- wiring -------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("new-bundle-form").addEventListener("submit", newBundle);
  $("save-button").addEventListener("click", save);
  $("diff-button").addEventListener("click", diff);
  $("publish-button").addEventListener("click", publish);
  $("try-form").addEventListener("submit", explain);
  $("engine-remove").addEventListener("click", removeEngine);
  $("editor").addEventListener("input", () => renderGutter(new Set()));
  $("editor").addEventListener("scroll", () => { $("gutter").scrollTop = $("editor").scrollTop; });
  const saved = sessionStorage.getItem("cordum-studio");
  if (saved) {
    const s = JSON.parse(saved);
    $("api-key").value = s.key || "";
    $("tenant").value = s.tenant || "";
  }
  renderGutter(new Set());
});
