// tunesmith serve's web UI: chat through the server's own /v1/chat/completions, streamed.
"use strict";
const $ = (id) => document.getElementById(id);
let turns = [], model = null;

fetch("/v1/models").then((r) => r.json()).then((j) => { model = j.data[0].id; $("model").textContent = model; });

function bubble(cls, text) {
  const div = document.createElement("div");
  div.className = "msg " + cls; div.textContent = text;
  $("log").appendChild(div); div.scrollIntoView(); return div;
}

async function send(text) {
  turns.push({role: "user", content: text});
  bubble("user", text);
  const out = bubble("assistant", ""), t0 = performance.now();
  const system = $("system").value.trim();
  const messages = (system ? [{role: "system", content: system}] : []).concat(turns);
  $("send").disabled = true;
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model, messages, stream: true, stream_options: {include_usage: true}})});
    if (!r.ok) throw new Error((await r.json()).error.message);
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buffer = "", usage = null;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      const events = buffer.split("\n\n"); buffer = events.pop();
      for (const e of events) {
        const data = e.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices) if (c.delta.content) { out.textContent += c.delta.content; out.scrollIntoView(); }
      }
    }
    turns.push({role: "assistant", content: out.textContent});
    const secs = (performance.now() - t0) / 1000;
    if (usage) bubble("meta", `${usage.completion_tokens} tokens in ${secs.toFixed(1)} s`);
  } catch (err) {
    out.className = "msg error"; out.textContent = String(err.message || err); turns.pop();
  } finally { $("send").disabled = false; }
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (text) { $("input").value = ""; send(text); }
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
});
$("reset").addEventListener("click", () => { turns = []; $("log").innerHTML = ""; });
