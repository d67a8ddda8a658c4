// The PoolAI node status page: polls /api/page and redraws; no framework, no build step.
// Every value from the node (and so from remote peers' adverts) is inserted as text, never as HTML.
"use strict";

const POLL_MS = 1500;
const TOKEN_KEY = "poolai-admin-token";  // localStorage is per origin: host *and* port
const state = { token: null, peersOffset: 0, jobsOffset: 0, view: null, myFiles: [], demoJobs: [] };

// ------------------------------------------------------------------ helpers
function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function fill(id, ...children) { $(id).replaceChildren(...children); }
// The one short form of an id, as in logs and the CLI (poolai.mesh.short_ids): its last 8 characters.
function short(id) { return id ? "…" + String(id).slice(-8) : "—"; }
function bytes(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}
function secs(s) {
  if (typeof s !== "number") return "—";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(0) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function clock(ts) { return typeof ts === "number" ? new Date(ts * 1000).toLocaleTimeString() : "—"; }
function ms(v) { return typeof v === "number" ? v.toFixed(1) + " ms" : "—"; }
function stateTag(s) { return el("span", { class: "state " + String(s) }, String(s)); }
function emptyRow(cols, text) { return el("tr", {}, el("td", { class: "empty", colspan: cols }, text)); }

function meter(label, fraction, text) {
  const f = Math.max(0, Math.min(1, Number(fraction) || 0));
  const bar = el("span"); bar.style.width = (f * 100).toFixed(1) + "%";
  return el("div", { class: "meter" }, el("span", { class: "muted" }, label),
            el("div", { class: "bar" + (f > 0.9 ? " hot" : "") }, bar), el("span", {}, text));
}

function setStatus(id, text, ok) {
  const p = $(id); p.textContent = text; p.className = "status " + (ok === undefined ? "" : ok ? "ok" : "bad");
}

// ------------------------------------------------------------------ API access
// Services answer {"error": "text"} or {"error": {"code", "message"}}.
function errorText(data) {
  const e = data && data.error;
  return e && typeof e === "object" ? e.message || e.code : e;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  return h;
}

async function api(path, opts) {
  opts = opts || {};
  const init = { method: opts.method || "GET", headers: headers(opts.headers) };
  if (opts.json !== undefined) {
    init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(opts.json);
  } else if (opts.body !== undefined) init.body = opts.body;
  const r = await fetch(path, init);
  const type = r.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await r.json() : await r.blob();
  if (!r.ok) {
    const err = new Error(errorText(data) || ("HTTP " + r.status));
    err.status = r.status; throw err;
  }
  return data;
}

// ------------------------------------------------------------------ polling
async function refresh() {
  try {
    const view = await api(`/api/page?peers=${state.peersOffset}&jobs=${state.jobsOffset}`);
    state.view = view;
    render(view);
    $("live").textContent = "live"; $("live").className = "pill ok";
  } catch (e) {
    $("live").textContent = e.status === 401 ? "token needed" : "offline";
    $("live").className = "pill bad";
  }
  setTimeout(refresh, POLL_MS);
}

function render(v) {
  const sections = [renderOverview, renderPeers, renderOverlay, renderDevices, renderJobs,
                    renderStorage, renderCredits, renderAlerts, renderLog, renderPlayground];
  for (const f of sections) {
    try { f(v); } catch (e) { console.error(f.name, e); }  // one bad section must not blank the page
  }
}

function renderOverview(v) {
  const n = v.node;
  $("short-id").textContent = short(n.peer_id);
  const dl = [];
  const row = (k, ...val) => { dl.push(el("dt", {}, k), el("dd", {}, ...val)); };
  row("peer id", el("code", { id: "peer-id" }, n.peer_id));
  row("version", n.version || "—");
  row("uptime", secs(n.uptime_s));
  row("addresses", ...(n.addrs.length ? n.addrs.map(a => el("div", { class: "mono" }, a)) : ["—"]));
  row("reachability", el("span", { title: n.reachability.note }, n.reachability.state + ": " + n.reachability.note));
  if (n.reach) row("internet", el("span", { id: "reach-line", class: "reach " + String(n.reach.state),
                                           title: reachDetail(n.reach) }, n.reach.line));
  row("peers", `${v.peers.total} connected, ${n.known_peers ?? "—"} known`);
  fill("overview-facts", ...dl);
}

// What the dial-back checks saw, for the reachability line's tooltip.
function reachDetail(r) {
  const yesNo = b => b === true ? "yes" : b === false ? "no" : "can't tell";
  return (r.detail && r.detail !== r.line ? `${r.detail}\n` : "") +
    ((r.relay_addrs || []).length ? `relays: ${r.relay_addrs.join(", ")}\n` : "") +
    `observed at: ${(r.observed || []).join(", ") || "—"}\n` +
    `NAT: ${yesNo(r.nat)}; port-preserving: ${yesNo(r.port_preserving)}; ` +
    `address-dependent: ${yesNo(r.address_dependent)}\n` +
    `${r.answers ?? 0} answer(s)` + (typeof r.age_s === "number" ? `, checked ${secs(r.age_s)} ago` : "");
}

function pager(id, page, onMove) {
  const box = $(id);
  if (page.total <= page.size) { box.replaceChildren(); return; }
  const last = Math.min(page.offset + page.size, page.total);
  box.replaceChildren(
    el("button", { class: "small", disabled: page.offset === 0, onclick: () => onMove(page.offset - page.size) }, "‹ newer"),
    `${page.offset + 1}–${last} of ${page.total}`,
    el("button", { class: "small", disabled: last >= page.total, onclick: () => onMove(page.offset + page.size) }, "older ›"));
}

function renderPeers(v) {
  $("peer-count").textContent = String(v.peers.total);
  const rows = v.peers.items.map(p => el("tr", { "data-peer": p.peer_id },
    el("td", { class: "mono nowrap", title: p.peer_id }, short(p.peer_id)),
    el("td", { class: "nowrap" }, ms(p.rtt_ms)),
    el("td", { class: "mono" }, p.addrs[0] || "—")));
  fill("peer-rows", ...(rows.length ? rows : [emptyRow(3, "no peer connected")]));
  pager("peer-pager", v.peers, off => { state.peersOffset = Math.max(0, off); refreshSoon(); });
}

const LABEL_CHAR_W = 6;  // px per character of a ring label (10px monospace)
// Ring positions are 64-bit hex strings; 32 bits are plenty for an angle.
function angle(hex) { return (parseInt(String(hex).slice(0, 8), 16) / 4294967296) * 2 * Math.PI - Math.PI / 2; }

function renderOverlay(v) {
  const o = v.overlay, ring = $("ring");
  if (!o) {
    ring.replaceChildren(svg("text", { x: 150, y: 150, "text-anchor": "middle" }, "no overlay service"));
    $("overlay-facts").textContent = ""; return;
  }
  const C = 150, R = 112;
  const at = (hex, r) => { const a = angle(hex); return [C + (r || R) * Math.cos(a), C + (r || R) * Math.sin(a)]; };
  const [sx, sy] = at(o.position);
  const items = [svg("circle", { class: "rim", cx: C, cy: C, r: R })];
  const peers = new Map();
  for (const kind of ["long", "proximity", "predecessors", "successors"]) {
    for (const link of o[kind] || []) {
      const [px, py] = at(link.position);
      // long links bow towards the centre so they stand apart from ring neighbours
      const d = kind === "long" || kind === "proximity"
        ? `M${sx},${sy} Q${(sx + px) / 2 * 0.55 + C * 0.45},${(sy + py) / 2 * 0.55 + C * 0.45} ${px},${py}`
        : `M${sx},${sy} L${px},${py}`;
      items.push(svg("path", { class: "link " + kind, d }, svg("title", {}, `${kind}: ${link.peer_id}`)));
      peers.set(link.peer_id, link);
    }
  }
  const placed = [];  // label boxes so far: a label that would overlap one is left out (the dot's title has it)
  for (const [id, link] of peers) {
    const [px, py] = at(link.position);
    items.push(svg("circle", { class: "peer", cx: px, cy: py, r: 5 }, svg("title", {}, id)));
    const label = short(id), a = angle(link.position), w = label.length * LABEL_CHAR_W;
    // anchored on the side away from the ring, so a label grows outwards, never across it
    const anchor = Math.cos(a) > 0.35 ? "start" : Math.cos(a) < -0.35 ? "end" : "middle";
    const [tx, ty] = at(link.position, R + 10);
    const x0 = anchor === "start" ? tx : anchor === "end" ? tx - w : tx - w / 2;
    const box = [x0, ty - 5, x0 + w, ty + 6];
    if (placed.some(b => box[0] < b[2] && b[0] < box[2] && box[1] < b[3] && b[1] < box[3])) continue;
    placed.push(box);
    items.push(svg("text", { x: tx, y: ty + 3, "text-anchor": anchor }, label));
  }
  items.push(svg("circle", { class: "self", cx: sx, cy: sy, r: 7 }, svg("title", {}, "this node")));
  items.push(svg("text", { x: C, y: C - 4, "text-anchor": "middle" }, "this node at"));
  items.push(svg("text", { x: C, y: C + 10, "text-anchor": "middle" }, o.position.slice(0, 8) + "…"));
  ring.replaceChildren(...items);
  $("overlay-facts").textContent =
    `network size ≈ ${o.size_estimate}; links: ${(o.successors || []).length} successors, ` +
    `${(o.predecessors || []).length} predecessors, ${(o.long || []).length} long, ` +
    `${(o.proximity || []).length} proximity; ${o.incoming ?? 0} incoming; ` +
    `coordinate error ${o.coordinate ? o.coordinate.error : "—"}`;
}

function renderDevices(v) {
  const d = v.devices;
  if (!d) { fill("device-cards"); $("device-note").textContent = "This node runs no capacity service."; return; }
  const cards = [], me = d.self;
  if (me) {
    for (const g of me.gpus || []) {
      const used = g.memory_total - g.memory_free;
      cards.push(el("div", { class: "device gpu" },
        el("h4", {}, `GPU ${g.index}: ${g.name}`),
        meter("memory", used / g.memory_total, `${bytes(used)} / ${bytes(g.memory_total)}`),
        meter("util", (g.utilization ?? 0) / 100, g.utilization == null ? "—" : g.utilization + "%"),
        el("div", { class: "muted" }, `cc ${g.compute_capability}` +
          (g.temperature_c != null ? ` · ${g.temperature_c} °C` : "") +
          (g.power_w != null ? ` · ${g.power_w} W` + (g.power_limit_w ? ` of ${g.power_limit_w} W` : "") : ""))));
    }
    const ramUsed = me.ram_total - me.ram_free;
    cards.push(el("div", { class: "device cpu" },
      el("h4", {}, `CPU: ${me.cpu_cores} cores`),
      meter("RAM", me.ram_total ? ramUsed / me.ram_total : 0, `${bytes(ramUsed)} / ${bytes(me.ram_total)}`),
      meter("slots", me.job_slots ? (me.job_slots - me.free_slots) / me.job_slots : 0,
            `${me.job_slots - me.free_slots} / ${me.job_slots} busy`),
      el("div", { class: "muted" }, `${me.queue_length} queued · ${bytes(me.storage_free)} disk free`)));
  } else {
    cards.push(el("div", { class: "device" }, el("h4", {}, "waiting for the first inventory reading…")));
  }
  fill("device-cards", ...cards);
  const p = d.pool;
  $("device-note").textContent = (d.simulated ? "Simulated devices. " : "") + (d.note || "") +
    ` — the pool: ${p.peers} other peer(s) advertising ${p.gpus} GPU(s), ${bytes(p.gpu_memory_total)} of GPU memory, ` +
    `${p.cpu_cores} CPU cores, ${p.free_slots} free job slot(s).`;
}

function jobCells(j, finished) {
  const cells = [
    el("td", { class: "mono", title: j.job_id }, short(j.job_id)),
    el("td", {}, j.device || "—"),
    el("td", {}, j.role || "—"),
    el("td", { title: j.error || "" }, stateTag(finished ? (j.result || j.state) : j.state)),
    el("td", { class: "mono", title: j.peer || "" }, j.peer ? short(j.peer) : "—"),
  ];
  if (finished) {
    cells.push(el("td", {}, clock(j.finished_at)), el("td", {}, secs(j.run_s)), el("td", {}, secs(j.total_s)));
  } else {
    const cancel = j.role === "submitted"
      ? el("button", { class: "small", "data-admin": true, onclick: () => cancelJob(j.job_id) }, "cancel") : "";
    if (cancel) cancel.disabled = !state.token;
    cells.push(el("td", {}, clock(j.submitted_at)), el("td", {}, secs(j.elapsed_s)), el("td", {}, cancel));
  }
  return el("tr", { "data-job": j.job_id, "data-state": finished ? (j.result || j.state) : j.state }, ...cells);
}

function renderJobs(v) {
  const j = v.jobs;
  if (!j) {
    $("jobs-missing").textContent = "This node runs no jobs service.";
    fill("active-rows", emptyRow(8, "—")); fill("finished-rows", emptyRow(8, "—")); fill("job-counts");
    return;
  }
  $("jobs-missing").textContent = [j.draining ? "Draining." : "", j.paused ? "Paused." : ""].join(" ");
  fill("job-counts", ...Object.entries(j.counts).map(([k, n]) => el("span", { class: "chip" }, `${n} ${k}`)));
  const active = j.active.map(x => jobCells(x, false));
  if (j.active_total > j.active.length) active.push(emptyRow(8, `and ${j.active_total - j.active.length} more`));
  fill("active-rows", ...(active.length ? active : [emptyRow(8, "none")]));
  const done = j.finished.items.map(x => jobCells(x, true));
  fill("finished-rows", ...(done.length ? done : [emptyRow(8, "none yet")]));
  pager("job-pager", j.finished, off => { state.jobsOffset = Math.max(0, off); refreshSoon(); });
}

function renderStorage(v) {
  const s = v.storage;
  if (!s) { fill("storage-body", el("p", { class: "muted" }, "This node runs no storage service.")); return; }
  const parts = [];
  if (typeof s.quota_bytes === "number" && s.quota_bytes > 0)
    parts.push(meter("quota", s.used_bytes / s.quota_bytes, `${bytes(s.used_bytes)} / ${bytes(s.quota_bytes)}`));
  parts.push(el("p", {}, `${s.shares ?? 0} share(s) held for the mesh · ${s.files ?? 0} file(s) looked after` +
    ` (${s.pinned ?? 0} pinned)` + (s.gets_running ? ` · ${s.gets_running} download(s) running` : "") +
    (s.hash_failures ? ` · ${s.hash_failures} corrupt share(s) found` : "")));
  const rows = (s.placed || []).map(f => el("tr", { "data-file": f.file_id },
    el("td", { title: f.file_id }, f.name ? f.name + " " : "", el("span", { class: "mono muted" }, short(f.file_id))),
    el("td", {}, bytes(f.size)),
    el("td", {}, `${f.k} of ${f.n}`),
    el("td", { title: f.spread == null ? "" : `shares on ${f.spread} distinct peer(s) of the ${f.n} a full spread needs` },
      f.health === "unchecked"
        ? el("span", { class: "state unchecked", title: "storage upkeep has not looked at it yet (it does every storage_interval)" }, "not checked yet")
        : stateTag(f.health), f.spread != null && f.spread < f.n ? ` on ${f.spread} of ${f.n} peers` : "")));
  parts.push(el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "file placed"), el("th", {}, "size"),
    el("th", {}, "shares"), el("th", {}, "health"))), el("tbody", {}, ...(rows.length ? rows : [emptyRow(4, "none yet")]))));
  for (const e of s.recent_errors || []) parts.push(el("p", { class: "status bad" }, `${e.op} ${short(e.file_id)}: ${e.error}`));
  fill("storage-body", ...parts);
}

function renderCredits(v) {
  const c = v.credits;
  if (!c) return;  // the placeholder text stays
  const num = x => typeof x === "number" ? x.toFixed(3) : "—";
  const dl = el("dl", { class: "facts" });
  const row = (k, val) => dl.append(el("dt", {}, k), el("dd", {}, val));
  row("balance", num(c.balance));
  row("earned / spent", `${num(c.earned)} / ${num(c.spent)}`);
  row("receipts", `${c.receipts ?? 0} (ledger: ${c.ledger_held ?? 0} held, ${c.ledger_pending ?? 0} awaiting a signature)`);
  if (c.priority !== undefined) row("job priority", String(c.priority));
  row("payout address", c.payout_address || "not set");
  fill("credits-body", dl);
  $("credits-body").className = "";
}

function renderAlerts(v) {
  const items = v.alerts.map(a => el("li", { class: a.level }, a.text));
  fill("alert-list", ...(items.length ? items : [el("li", { class: "ok" }, "All quiet.")]));
}

function renderLog(v) {
  const pre = $("log-tail");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = v.log.map(e => `${clock(e.ts)} ${e.level.padEnd(7)} ${e.logger}: ${e.msg}`).join("\n") || "(empty)";
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    try { render(state.view = await api(`/api/page?peers=${state.peersOffset}&jobs=${state.jobsOffset}`)); } catch (e) { /* the poll loop reports it */ }
  }, 50);
}

// ------------------------------------------------------------------ playground
function renderPlayground(v) {
  const jobs = v.sections.includes("jobs"), storage = v.sections.includes("storage");
  $("demo-job").disabled = !jobs || !state.token;
  if (!jobs) setStatus("demo-status", "This node runs no jobs service.");
  else if (!state.token && !state.demoJobs.length) setStatus("demo-status", "Unlock the admin section to submit jobs.");
  $("upload").disabled = !storage;
  if (!storage) setStatus("upload-status", "This node runs no storage service.");
  for (const id of state.demoJobs) {
    const all = v.jobs ? v.jobs.active.concat(v.jobs.finished.items) : [];
    const job = all.find(x => x.job_id === id);
    if (job) {
      const done = job.finished;
      setStatus("demo-status", `demo job ${short(id)}: ${done ? (job.result || job.state) : job.state}` +
        (job.peer ? ` on ${short(job.peer)}` : "") + (done && job.total_s != null ? ` in ${secs(job.total_s)}` : ""),
        done ? (job.result === "ok") : undefined);
      if (done && job.error) $("demo-status").title = job.error;
    }
  }
}

async function runDemoJob() {
  setStatus("demo-status", "submitting…");
  try {
    const r = await api("/api/admin/playground/demo-job", { method: "POST", json: {} });
    state.demoJobs = [r.job_id];
    setStatus("demo-status", `demo job ${short(r.job_id)} submitted`);
    refreshSoon();
  } catch (e) { setStatus("demo-status", "could not submit: " + e.message, false); }
}

async function sha256(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), b => b.toString(16).padStart(2, "0")).join("");
}

// The last complete NDJSON line of a streamed answer.
function lastEvent(text) {
  const lines = text.split("\n").filter(l => l.trim());
  for (let i = lines.length - 1; i >= 0; i--) {
    try { return JSON.parse(lines[i]); } catch (e) { /* a line still arriving */ }
  }
  return null;
}

function upload() {
  const file = $("file-input").files[0];
  if (!file) { setStatus("upload-status", "choose a file first", false); return; }
  const bar = $("upload-progress"); bar.hidden = false; bar.value = 0;
  setStatus("upload-status", `uploading ${file.name}…`);
  $("upload").disabled = true;
  // XMLHttpRequest rather than fetch(): only it reports upload progress. With progress=1 the node
  // then streams one JSON line per step while it erasure-codes the file and places the shares.
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/files?pin=1&progress=1");
  for (const [k, v] of Object.entries(headers({ "Content-Type": "application/octet-stream" }))) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = e => {
    if (e.lengthComputable) { bar.value = 50 * e.loaded / e.total; setStatus("upload-status", `uploading ${file.name}: ${bytes(e.loaded)} of ${bytes(e.total)}`); }
  };
  xhr.onprogress = () => {
    const ev = lastEvent(xhr.responseText);
    if (ev && ev.event === "progress") {
      bar.value = 50 + (ev.total ? 50 * ev.done / ev.total : 0);
      setStatus("upload-status", `${file.name}: ${ev.phase} ${ev.done} of ${ev.total}`);
    }
  };
  xhr.onerror = () => { bar.hidden = true; $("upload").disabled = false; setStatus("upload-status", "upload failed: network error", false); };
  xhr.onload = async () => {
    bar.hidden = true; $("upload").disabled = false;
    let ev = lastEvent(xhr.responseText) || {};
    if (xhr.status >= 300 || ev.event !== "done") {
      setStatus("upload-status", "upload failed: " + (errorText(ev) || xhr.status), false); return;
    }
    const entry = { name: file.name, size: file.size, file_id: ev.file_id, sha256: await sha256(file) };
    state.myFiles.unshift(entry);
    setStatus("upload-status", `stored ${file.name} as ${short(entry.file_id)}: ${ev.shares_stored} share(s) ` +
      `placed, any ${ev.k} of ${ev.n} rebuild it`, true);
    renderMyFiles();
    refreshSoon();
  };
  xhr.send(file);
}

function renderMyFiles() {
  fill("my-files", ...state.myFiles.map(f => el("tr", { "data-file": f.file_id },
    el("td", {}, f.name), el("td", {}, bytes(f.size)), el("td", { class: "mono", title: f.file_id }, short(f.file_id)),
    el("td", {}, el("button", { class: "small download", onclick: () => download(f) }, "download")))));
}

async function download(f) {
  setStatus("upload-status", `fetching ${f.name} back from the mesh…`);
  try {
    const blob = await api("/api/files/" + encodeURIComponent(f.file_id));
    const same = (await sha256(blob)) === f.sha256;
    setStatus("upload-status", same ? `${f.name}: downloaded, identical to the upload (sha256 ${f.sha256.slice(0, 12)}…)`
                                    : `${f.name}: downloaded, but it DIFFERS from the upload`, same);
    const a = el("a", { href: URL.createObjectURL(blob), download: f.name });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) { setStatus("upload-status", "download failed: " + e.message, false); }
}

// ------------------------------------------------------------------ admin
function setLocked(locked) {
  $("lock").textContent = locked ? "admin locked" : "admin";
  $("lock").className = "pill" + (locked ? "" : " admin");
  $("token-form").hidden = !locked;
  for (const b of document.querySelectorAll("[data-admin]")) b.disabled = locked;
}

async function unlock(token) {
  const previous = state.token;
  state.token = token;
  try {
    await api("/api/admin/check", { method: "POST", json: {} });
    localStorage.setItem(TOKEN_KEY, token);
    setLocked(false); setStatus("admin-status", "unlocked", true);
  } catch (e) {
    state.token = previous && previous !== token ? previous : null;
    if (e.status === 401) localStorage.removeItem(TOKEN_KEY);
    setLocked(!state.token); setStatus("admin-status", "token refused: " + e.message, false);
  }
}

async function admin(path, body, done) {
  try {
    await api(path, { method: "POST", json: body || {} });
    setStatus("admin-status", done, true); refreshSoon();
  } catch (e) { setStatus("admin-status", e.message, false); }
}

function cancelJob(id) { admin(`/api/admin/jobs/${encodeURIComponent(id)}/cancel`, {}, `cancelled ${short(id)}`); }

// ------------------------------------------------------------------ start
function start() {
  // The printed URL carries the token in its fragment, which never reaches any server.
  const m = /(?:^#|&)token=([A-Za-z0-9_-]+)/.exec(location.hash);
  if (m) history.replaceState(null, "", location.pathname + location.search);
  const token = m ? m[1] : localStorage.getItem(TOKEN_KEY);
  setLocked(true);
  if (token) unlock(token);
  $("token-form").addEventListener("submit", e => { e.preventDefault(); unlock($("token-input").value.trim()); });
  $("drain").addEventListener("click", () => admin("/api/admin/drain", { drain: true }, "draining"));
  $("undrain").addEventListener("click", () => admin("/api/admin/drain", { drain: false }, "accepting jobs again"));
  $("pause").addEventListener("click", () => admin("/api/admin/jobs/pause", {}, "jobs paused"));
  $("resume").addEventListener("click", () => admin("/api/admin/jobs/resume", {}, "jobs resumed"));
  $("quota-form").addEventListener("submit", e => {
    e.preventDefault(); admin("/api/admin/storage/quota", { quota: $("quota-input").value.trim() }, "quota set");
  });
  $("demo-job").addEventListener("click", runDemoJob);
  $("upload").addEventListener("click", upload);
  refresh();
}

start();
