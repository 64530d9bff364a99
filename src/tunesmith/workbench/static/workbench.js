// tunesmith workbench: the little JavaScript the pages need. No framework, no build step, no CDN.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

// ---- new project: send the file as the request body (streamed to disk by the server, size-limited)
const newProject = $("#new-project");
if (newProject) newProject.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("#np-file").files[0], status = $("#np-status");
  if (!file) return;
  const q = new URLSearchParams({name: $("#np-name").value, model: $("#np-model").value, filename: file.name});
  $("#np-create").disabled = true;
  status.className = "hint"; status.textContent = "Uploading and importing…";
  try {
    const r = await fetch(newProject.dataset.upload + "?" + q, {method: "POST", body: file,
      headers: {"X-CSRF-Token": csrf, "Content-Type": "application/octet-stream"}});
    const j = await r.json();
    if (!r.ok) throw new Error(j.error || r.statusText);
    location.href = j.url;
  } catch (e) {
    status.className = "error-box"; status.textContent = e.message;
    $("#np-create").disabled = false;
  }
});

// ---- a select that submits its form when changed (the CSP allows no inline handlers)
$$("select[data-autosubmit]").forEach((el) => el.addEventListener("change", () => el.form.submit()));

// ---- pages that wait for a job refresh themselves
const reload = $("[data-reload]");
if (reload) setTimeout(() => location.reload(), 1000 * Number(reload.dataset.reload));

// ---- live loss curve over server-sent events
function fmtTime(s) {
  if (s == null) return "";
  if (s < 1) return "under 1 s";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function drawCurve(svg, rows, total) {
  const W = 640, H = 220, L = 44, B = 22, T = 8, R = 8;
  const train = rows.filter((r) => r.loss != null), heldout = rows.filter((r) => r.eval_loss != null);
  const all = train.map((r) => r.loss).concat(heldout.map((r) => r.eval_loss));
  if (!all.length) { svg.innerHTML = '<text x="320" y="110" text-anchor="middle" fill="#888">waiting for the first step…</text>'; return; }
  const maxStep = Math.max(...rows.map((r) => r.step), Number(total) || 0, 2), lo = Math.min(...all), hi = Math.max(...all);
  const pad = (hi - lo) * 0.08 || 0.5, y0 = lo - pad, y1 = hi + pad;
  const x = (s) => L + (W - L - R) * (s - 1) / Math.max(1, maxStep - 1);
  const y = (v) => T + (H - T - B) * (1 - (v - y0) / (y1 - y0));
  const path = (pts, key) => pts.map((r, i) => (i ? "L" : "M") + x(r.step).toFixed(1) + "," + y(r[key]).toFixed(1)).join("");
  let g = `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" class="axis"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" class="axis"/>`;
  for (let k = 0; k <= 3; k++) {
    const v = y0 + (y1 - y0) * k / 3;
    g += `<text x="${L - 4}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(2)}</text>`;
  }
  g += `<text x="${L}" y="${H - 6}">step 1</text><text x="${W - R}" y="${H - 6}" text-anchor="end">step ${maxStep}</text>`;
  g += `<path d="${path(train, "loss")}" class="line train"/>`;
  g += heldout.map((r) => `<circle cx="${x(r.step)}" cy="${y(r.eval_loss)}" r="3.5" class="dot eval"/>`).join("");
  if (heldout.length > 1) g += `<path d="${path(heldout, "eval_loss")}" class="line eval"/>`;
  svg.innerHTML = g;
}

$$("figure.curve").forEach((fig) => {
  const job = fig.closest(".job"), svg = $("svg", fig), byStep = new Map();
  const badge = $('[data-role="status"]', job), progress = $('[data-role="progress"]', job), last = $('[data-role="last"]', fig);
  const es = new EventSource(fig.dataset.events);
  let timer = null;
  const redraw = () => { timer = null; drawCurve(svg, Array.from(byStep.values()).sort((a, b) => a.step - b.step), fig.dataset.total); };
  es.addEventListener("metric", (ev) => {
    const r = JSON.parse(ev.data);
    byStep.set(r.step, Object.assign(byStep.get(r.step) || {}, r));
    const latest = byStep.get(Math.max(...byStep.keys()));
    last.textContent = `· step ${latest.step}` + (latest.loss != null ? `, loss ${latest.loss.toFixed(4)}` : "")
      + (latest.eval_loss != null ? `, held-out ${latest.eval_loss.toFixed(4)}` : "");
    fig.dataset.points = byStep.size;
    if (!timer) timer = setTimeout(redraw, 100);
  });
  es.addEventListener("status", (ev) => {
    const s = JSON.parse(ev.data), before = job.dataset.status;
    if (s.total && fig.dataset.total !== String(s.total)) { fig.dataset.total = s.total; if (!timer) timer = setTimeout(redraw, 100); }
    job.dataset.status = s.status; badge.textContent = s.status; badge.className = "badge " + s.status;
    progress.textContent = s.total ? `step ${s.step} of ${s.total}` + (s.eta_s != null ? ` · ${s.eta_s < 1 ? "" : "about "}${fmtTime(s.eta_s)} left` : "") : "";
    if (before !== s.status && ["running", "queued"].includes(before) && !["running", "queued"].includes(s.status))
      setTimeout(() => location.reload(), 300);  // new buttons (Resume, Compare, Verdict) come with the page
  });
  es.addEventListener("end", () => { es.close(); redraw(); });
  redraw();
});
// Non-training jobs (check, compare, export) show progress by refreshing while they run.
if ($$(".job").some((j) => !$("figure.curve", j) && ["queued", "running"].includes(j.dataset.status)) && !reload)
  setTimeout(() => location.reload(), 2000);

// ---- blind review: keyboard shortcuts
const rate = $("#rate");
if (rate) document.addEventListener("keydown", (ev) => {
  if (ev.target.matches("textarea, input[type=text]") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key.toLowerCase();
  const target = $(`[data-key="${key}"]`, rate);
  if (!target) return;
  ev.preventDefault();
  if (target.type === "checkbox") target.checked = !target.checked;
  else target.click();
});

// ---- chat: both models answer the same conversation
const chat = $("#chat");
if (chat) {
  const history = {base: [], tuned: []};
  const input = $("#chat-input"), send = $("#chat-send"), status = $("#chat-status");
  const bubble = (side, cls, html) => {
    const div = document.createElement("div"); div.className = "msg " + cls; div.innerHTML = html;
    $(`.log[data-side="${side}"]`, chat).appendChild(div); div.scrollIntoView({block: "nearest"}); return div;
  };
  const escape = (t) => t.replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  const ask = async () => {
    const text = input.value.trim();
    if (!text) return;
    input.value = ""; send.disabled = true; status.textContent = "both models are writing…";
    const t0 = performance.now();
    for (const side of ["base", "tuned"]) { history[side].push({role: "user", content: text}); bubble(side, "user", escape(text)); }
    try {
      // one request, both replies: the base model's conversation and the fine-tuned one's differ after turn one
      const r = await fetch(chat.dataset.url, {method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify({messages: history.tuned, base_messages: history.base, max_tokens: Number($("#chat-max").value) || 200,
          temperature: Number($("#chat-temperature").value) || 0})});
      const j = await r.json();
      if (!r.ok) throw new Error(j.error || r.statusText);
      for (const side of ["base", "tuned"]) { history[side].push({role: "assistant", content: j[side].text}); bubble(side, "assistant", j[side].html); }
      status.textContent = `answered in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    } catch (e) { status.textContent = e.message; }
    send.disabled = false; input.focus();
  };
  $("#chat-form").addEventListener("submit", (ev) => { ev.preventDefault(); ask(); });
  input.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); ask(); } });
}
