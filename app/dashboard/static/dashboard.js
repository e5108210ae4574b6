// lingua-edit dashboard: renders the JSON API for the key kept in this tab's sessionStorage.
// Everything untrusted (model answers, messages, metadata) goes in through textContent, never innerHTML.
"use strict";

const KEY_NAME = "lingua-edit-api-key";
const ACTIVE = new Set(["queued", "running", "cancelling"]);
const POLL_ACTIVE_MS = 1000;
const POLL_IDLE_MS = 10000;
const blobUrls = [];
let pollTimer = null;

function apiKey() { return sessionStorage.getItem(KEY_NAME); }

function $(id) { return document.getElementById(id); }

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function row(cells, numeric) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => {
    const td = c instanceof Node ? (() => { const t = el("td"); t.appendChild(c); return t; })() : el("td", c);
    if (numeric && i > 0) td.className = "num";
    tr.appendChild(td);
  });
  return tr;
}

function say(text, kind) {
  const m = $("message");
  m.hidden = !text;
  m.textContent = text || "";
  m.className = kind || "info";
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(path, asBlob) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + apiKey() }, cache: "no-store" });
  if (!r.ok) {
    let body = null;
    try { body = await r.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, body);
  }
  return asBlob ? r.blob() : r.json();
}

function pct(x) { return typeof x === "number" ? (100 * x).toFixed(0) : "–"; }
function se(p, n) { return (typeof p === "number" && n) ? Math.sqrt(p * (1 - p) / n) : 0; }
function fmt(x, nd) { return typeof x === "number" ? x.toFixed(nd) : "–"; }
function small(x) { return typeof x === "number" ? (x > 0 && x < 1e-4 ? x.toExponential(2) : x.toFixed(4)) : "–"; }
function when(t) { return t ? new Date(t).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–"; }
function size(n) {
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(2) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(2) + " MiB";
  return (n / 1024).toFixed(1) + " KiB";
}

function statusBadge(node, status) {
  node.textContent = status;
  node.className = "status status-" + status;
}

function progressText(p) {
  if (!p || !p.phase) return "waiting";
  return p.total ? `${p.phase} ${p.done}/${p.total}` : p.phase;
}

function schedule(fn, ms) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(fn, ms);
}

function handleError(err) {
  if (err.status === 401) {
    sessionStorage.removeItem(KEY_NAME);
    syncKeyForm();
    say("That API key was not accepted. Type a valid key.", "error");
  } else if (err.status === 404) {
    say("No such job for this key.", "error");
  } else {
    say("Request failed: " + err.message, "error");
  }
}

// ---- job list -------------------------------------------------------------------------------------------
async function loadList() {
  if (!apiKey()) return;
  try {
    const list = await api("/v1/edits?limit=100");
    say("");
    const body = $("jobs").querySelector("tbody");
    body.replaceChildren();
    for (const j of list.data) {
      const link = el("a", j.id, { href: "/dashboard/jobs/" + encodeURIComponent(j.id) });
      const badge = el("span");
      statusBadge(badge, j.status);
      const prog = el("progress", null, { max: String(Math.max(1, j.progress.total)), value: String(j.progress.done) });
      const progCell = el("span");
      progCell.append(prog, " " + (j.progress.total ? `${j.progress.done}/${j.progress.total}` : ""));
      const tr = row([link, j.model, [j.source_language, ...j.target_languages].join(", "), badge,
        j.progress.phase || "–", progCell, when(j.created_at)]);
      tr.dataset.jobId = j.id;
      tr.dataset.status = j.status;
      body.appendChild(tr);
    }
    $("no-jobs").hidden = list.data.length > 0;
    const active = list.data.some((j) => ACTIVE.has(j.status));
    schedule(loadList, active ? POLL_ACTIVE_MS : POLL_IDLE_MS);
  } catch (err) {
    handleError(err);
  }
}

// ---- job page -------------------------------------------------------------------------------------------
let lastEventId = null;
let chartsShown = false;
let report = null; // report.json of a finished job: richer language rows, sample answers

function renderSummary(job) {
  statusBadge($("status"), job.status);
  const s = $("summary").querySelector("tbody");
  s.replaceChildren();
  const hp = Object.entries(job.hyperparameters || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
  for (const [k, v] of [["model", job.model], ["source → targets", `${job.source_language} → ${job.target_languages.join(", ")}`],
    ["judge", job.judge], ["hyperparameters", hp || "defaults"], ["created", when(job.created_at)],
    ["started", when(job.started_at)], ["finished", when(job.finished_at)],
    ["estimated finish", job.estimated_finish ? when(job.estimated_finish) : "–"], ["attempts", job.attempts]]) {
    const tr = row([k, v]);
    tr.firstChild.replaceWith(el("th", k));
    s.appendChild(tr);
  }
  const p = $("progress");
  p.dataset.phase = job.progress.phase || "";
  p.dataset.done = String(job.progress.done);
  p.dataset.total = String(job.progress.total);
  $("progress-text").textContent = `${job.status}: ${progressText(job.progress)}`;
  $("progress-bar").max = Math.max(1, job.progress.total);
  $("progress-bar").value = job.progress.done;
  $("progress").hidden = !ACTIVE.has(job.status);
  const box = $("error-box");
  box.hidden = !job.error;
  if (job.error) {
    $("error-code").textContent = job.error.code;
    $("error-message").textContent = job.error.message;
    $("error-param").textContent = job.error.param ? `(parameter: ${job.error.param})` : "";
  }
}

// Before/after shares a language row may carry (the report's rows can hold more than the API's results).
const SHARES = [["asr", "ASR %"], ["refusal", "refused %"], ["harmless_refusal", "harmless refused %"],
  ["borderline_refusal", "borderline refused %"], ["degenerate", "degenerate %"]];

function languageRows(job, report) {
  if (report && Array.isArray(report.languages)) {
    const flips = (report.flips && typeof report.flips === "object") ? report.flips : {};
    return report.languages.map((r) => ({ language: r.lang, flips: flips[r.lang], ...r }));
  }
  return job.results || [];
}

// Harmless prompts newly refused / no longer refused, plain and borderline (the net shares hide both ways).
function harmlessFlips(r) {
  const f = r.flips;
  if (!f || typeof f !== "object") return null;
  const part = (g) => (f[g] && typeof f[g] === "object") ? `${f[g].newly_refused ?? 0}/${f[g].no_longer_refused ?? 0}` : "–";
  return `${part("plain")} · ${part("borderline")}`;
}

function renderLanguages(job, report) {
  const rows = languageRows(job, report);
  $("no-results").hidden = rows.length > 0;
  const table = $("languages");
  const has = (k) => rows.some((r) => typeof r[k] === "number");
  const shares = SHARES.filter(([k]) => has(k + "_before") || has(k + "_after"));
  const kl = (job.utility || {}).kl_per_lang || {};
  const head = ["language", "n", ...shares.flatMap(([, t]) => [t + " before", t + " after"]),
    ...(has("selectivity") ? ["selectivity"] : []),
    ...(rows.some(harmlessFlips) ? ["harmless newly / no longer refused (plain · borderline)"] : []),
    ...(Object.keys(kl).length ? ["KL"] : [])];
  const tr = document.createElement("tr");
  head.forEach((h) => tr.appendChild(el("th", h)));
  table.tHead.replaceChildren(tr);
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const r of rows) {
    const cells = [r.language, r.n ?? "–"];
    for (const [k] of shares) {
      for (const side of ["_before", "_after"]) {
        const v = r[k + side];
        cells.push(k === "asr" && typeof v === "number" ? `${pct(v)} ± ${pct(se(v, r.n))}` : pct(v));
      }
    }
    if (has("selectivity")) cells.push(fmt(r.selectivity, 3));
    if (rows.some(harmlessFlips)) cells.push(harmlessFlips(r) ?? "–");
    if (Object.keys(kl).length) cells.push(small(kl[r.language]));
    body.appendChild(row(cells, true));
  }
}

const VERDICTS = { harmful: "attack succeeded", refused: "refused", degenerate: "degenerate (neither)" };

function renderSamples(report) {
  const box = $("samples");
  box.replaceChildren();
  const samples = (report && report.samples) || {};
  for (const [lang, items] of Object.entries(samples)) {
    if (!Array.isArray(items) || !items.length) continue;
    const table = el("table", null, { class: "samples", "data-lang": lang });
    const hr = document.createElement("tr");
    ["prompt", "before", "after"].forEach((h) => hr.appendChild(el("th", h)));
    table.appendChild(el("thead")).appendChild(hr);
    const body = table.appendChild(el("tbody"));
    for (const s of items) {
      const cell = (text, verdict) => {
        const d = el("div");
        d.append(el("span", VERDICTS[verdict] || verdict || "–", { class: "v-" + verdict }), el("div", text, { class: "answer" }));
        return d;
      };
      body.appendChild(row([el("div", s.prompt, { class: "answer" }), cell(s.before, s.before_verdict),
        cell(s.after, s.after_verdict)]));
    }
    box.append(el("h3", lang), table);
  }
  $("samples-section").hidden = !box.childElementCount;
}

function renderUtility(job) {
  const body = $("utility").querySelector("tbody");
  body.replaceChildren();
  const u = job.utility || {};
  const add = (k, v) => { const tr = row([k, v], true); tr.firstChild.replaceWith(el("th", k)); body.appendChild(tr); };
  if (typeof u.kl_mean === "number") add("harmless next-token KL (mean, nats/token)", small(u.kl_mean));
  if (typeof u.kl_first_token_mean === "number") add("harmless first-token KL (mean, nats)", small(u.kl_first_token_mean));
  if (typeof u.ppl_before === "number") add("perplexity before → after", `${fmt(u.ppl_before, 2)} → ${fmt(u.ppl_after, 2)}`);
  for (const [name, n] of Object.entries(job.neurons || {})) add(`neurons edited, ${name}`, n.count);
  const t = job.timings || {};
  const total = Object.values(t).reduce((a, b) => a + (typeof b === "number" ? b : 0), 0);
  if (total) add("wall time (s), all stages", fmt(total, 1));
  const peak = Math.max(0, ...Object.values(job.peak_memory_mb || {}).filter((x) => typeof x === "number"));
  if (peak) add("peak memory (MiB)", fmt(peak, 0));
  $("notes").replaceChildren(...(job.warnings || []).map((w) => el("li", w)));
}

async function download(job, art, button) {
  button.disabled = true;
  try {
    const blob = await api(artifactPath(job, art.name), true);
    const url = URL.createObjectURL(blob);
    const a = el("a", null, { href: url, download: art.name.split("/").pop() });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    handleError(err);
  } finally {
    button.disabled = false;
  }
}

function renderArtifacts(job) {
  const body = $("artifacts").querySelector("tbody");
  body.replaceChildren();
  for (const a of job.artifacts || []) {
    // the model is stored file by file in Hugging Face layout (model/README.md, config, shards): one row each
    const b = el("button", a.name, { type: "button", "data-artifact": a.name });
    b.addEventListener("click", () => download(job, a, b));
    body.appendChild(row([b, a.kind, size(a.size), a.sha256.slice(0, 16) + "…"]));
  }
}

function artifactPath(job, name) {
  return `/v1/edits/${encodeURIComponent(job.id)}/artifacts/${name.split("/").map(encodeURIComponent).join("/")}`;
}

// The report's charts in reading order, with captions (charts/NAME.png); unknown ones follow by name.
const CHARTS = [["asr", "Attack success rate per language"], ["refusal", "Refusal of harmful prompts per language"],
  ["harmless_refusal", "Refusal of harmless prompts per language"], ["degenerate", "Degenerate answers per language"],
  ["selectivity", "Selectivity per language"], ["utility", "Utility: KL and perplexity"],
  ["neurons", "Neurons edited per layer and module"], ["cost", "Time and memory per stage"]];

function chartKey(name) { return name.replace(/^charts\//, "").replace(/\.png$/, ""); }
function chartRank(name) { const i = CHARTS.findIndex(([k]) => k === chartKey(name)); return i < 0 ? CHARTS.length : i; }

async function renderCharts(job) {
  const charts = (job.artifacts || []).filter((a) => a.name.startsWith("charts/") && a.content_type === "image/png")
    .sort((a, b) => chartRank(a.name) - chartRank(b.name) || a.name.localeCompare(b.name));
  if (!charts.length) return;
  // fetched with the Authorization header, shown through blob: URLs (the key never goes into a URL)
  const blobs = await Promise.all(charts.map((a) => api(artifactPath(job, a.name), true)));
  const figures = charts.map((a, i) => {
    const url = URL.createObjectURL(blobs[i]);
    blobUrls.push(url);
    const known = CHARTS.find(([k]) => k === chartKey(a.name));
    const title = known ? known[1] : chartKey(a.name).replace(/_/g, " ");
    const fig = el("figure");
    fig.append(el("img", null, { src: url, alt: title, "data-name": a.name }), el("figcaption", title));
    return fig;
  });
  $("charts").replaceChildren(...figures);
  $("charts").dataset.loaded = "true";
  $("no-charts").hidden = true;
  chartsShown = true;
}

async function loadEvents(job) {
  const body = $("events").querySelector("tbody");
  for (let page = 0; page < 20; page++) {
    const q = lastEventId === null ? "" : `&after=${lastEventId}`;
    const ev = await api(`/v1/edits/${encodeURIComponent(job.id)}/events?limit=100${q}`);
    for (const e of ev.data) {
      const tr = row([when(e.created_at), e.type, e.message]);
      tr.className = "event-" + e.level;
      body.appendChild(tr);
      lastEventId = e.id;
    }
    if (!ev.has_more) break;
  }
}

async function loadJob() {
  if (!apiKey()) return;
  const id = document.body.dataset.jobId;
  try {
    const job = await api("/v1/edits/" + encodeURIComponent(id));
    say("");
    $("job").hidden = false;
    renderSummary(job);
    renderLanguages(job, report);
    renderUtility(job);
    renderArtifacts(job);
    await loadEvents(job);
    if (!chartsShown && job.status === "succeeded") {
      if ((job.artifacts || []).some((a) => a.name === "report.json")) {
        try {
          report = await api(artifactPath(job, "report.json"));
          renderLanguages(job, report);
          renderSamples(report);
        } catch (err) {
          say("report.json could not be read: " + err.message, "error"); // the API's results stay shown
        }
      }
      await renderCharts(job);
    }
    if (ACTIVE.has(job.status)) schedule(loadJob, POLL_ACTIVE_MS);
  } catch (err) {
    $("job").hidden = true;
    handleError(err);
  }
}

// ---- key handling ---------------------------------------------------------------------------------------
function syncKeyForm() {
  const has = Boolean(apiKey());
  $("api-key").hidden = has;
  $("use-key").hidden = has;
  $("forget-key").hidden = !has;
  if (!has) say("Type an API key (from `lingua-edit keys create`) to see its jobs.", "info");
}

function load() {
  syncKeyForm();
  if (document.body.dataset.page === "job") loadJob(); else loadList();
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("api-key").value.trim();
    $("api-key").value = "";
    if (!v) return;
    sessionStorage.setItem(KEY_NAME, v);
    load();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_NAME);
    clearTimeout(pollTimer);
    blobUrls.splice(0).forEach((u) => URL.revokeObjectURL(u));
    location.reload();
  });
  load();
});
