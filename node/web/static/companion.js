// The owner's companion on the status page: history charts (inline SVG drawn from /api/history),
// the contribution streak and milestones, and pairing the Telegram bot. Uses app.js's helpers.
"use strict";

const companion = { span: "day", pairedCode: null };
const HISTORY_MS = 20000;

function amount(unit, v) {
  if (typeof v !== "number") return "—";
  if (unit === "bytes") return bytes(Math.round(v));
  if (unit === "credits") return v.toFixed(3);
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

function chartFigure(c, span) {
  const box = svg("svg", { viewBox: "0 0 600 120", class: "chart", role: "img", "aria-label": c.label,
                           preserveAspectRatio: "none" });
  box.append(svg("line", { x1: 0, y1: 118, x2: 600, y2: 118, class: "axis" }));
  if (c.points) {
    box.append(svg("polygon", { points: `0,118 ${c.points} 600,118`, class: "area" }));
    box.append(svg("polyline", { points: c.points, class: "series" }));
  }
  const per = span === "day" ? "a minute" : "an hour";
  const now = c.total !== null && c.total !== undefined
    ? `${amount(c.unit, c.total)} in all, at most ${amount(c.unit, c.max)} ${per}`
    : `now ${amount(c.unit, c.last)}, at most ${amount(c.unit, c.max)}`;
  const range = c.start ? `${new Date(c.start * 1000).toLocaleString()} – ${new Date(c.end * 1000).toLocaleString()}` : "no data yet";
  return el("figure", { class: "chart-box", "data-series": c.field },
            el("figcaption", {}, el("strong", {}, c.label), " ", el("span", { class: "muted" }, now)),
            box, el("div", { class: "muted range" }, range));
}

async function refreshHistory() {
  try {
    const h = await api(`/api/history?span=${companion.span}`);
    fill("charts", ...h.charts.map(c => chartFigure(c, h.span)));
    const s = h.streak;
    $("streak").textContent = `Contribution streak: ${s.current} day(s) in a row (best ${s.best}, ${s.days} day(s) in the history).`;
    const marks = h.milestones.reached.map(m => el("li", { class: "chip reached" }, `${amount(m.kind === "served" ? "bytes" : "", m.goal)} ${m.label}`))
      .concat(h.milestones.next.map(m => el("li", { class: "chip" },
        `next: ${amount(m.kind === "served" ? "bytes" : "", m.goal)} ${m.label} (${Math.round(m.progress * 100)}%)`)));
    fill("milestones", ...marks);
    for (const b of document.querySelectorAll("#history .span")) b.classList.toggle("on", b.dataset.span === companion.span);
  } catch (e) { $("streak").textContent = "history unavailable: " + e.message; }
}

async function refreshTelegram() {
  try {
    const t = await api("/api/telegram");
    let text;
    if (!t.configured) text = "No bot: set telegram_token in config.toml (from @BotFather) and restart the node.";
    else if (t.paired) text = `${t.bot ? "@" + t.bot : "The bot"} is paired with your chat: it sends alerts and a daily summary.`;
    else text = `${t.bot ? "@" + t.bot : "The bot"} is not paired yet: make a code, then send it to the bot.`;
    if (t.error) text += ` Last error: ${t.error}.`;
    $("telegram-state").textContent = text;
    $("telegram-pair").hidden = !t.configured;
    if (!t.code_waiting) { companion.pairedCode = null; $("pair-code").textContent = ""; }
    else if (!companion.pairedCode) {  // made by 'poolai telegram pair': the page never sees the code itself
      $("pair-code").textContent = `A pairing code is waiting, valid until ${clock(t.code_expires_at)}.`;
    }
  } catch (e) { $("telegram-state").textContent = "unavailable: " + e.message; }
}

async function pairTelegram() {
  try {
    const r = await api("/api/admin/telegram/pair", { method: "POST", json: {} });
    companion.pairedCode = r.code;
    setStatus("pair-code", `Send  /start ${r.code}  to ${r.bot ? "@" + r.bot : "the bot"} within 15 minutes (once).`, true);
  } catch (e) { setStatus("pair-code", e.message, false); }
}

function companionStart() {
  // Wait for app.js's first /api/page: a node without the companion service has no history to ask for.
  if (!state.view) { setTimeout(companionStart, 300); return; }
  if (!(state.view.sections || []).includes("companion")) {
    $("history").hidden = true; $("telegram").hidden = true; return;
  }
  for (const b of document.querySelectorAll("#history .span")) {
    b.addEventListener("click", () => { companion.span = b.dataset.span; refreshHistory(); });
  }
  $("telegram-pair").addEventListener("click", pairTelegram);
  refreshHistory(); refreshTelegram();
  setInterval(refreshHistory, HISTORY_MS);
  setInterval(refreshTelegram, HISTORY_MS);
}

companionStart();
