// REMITS fleet dashboard: reads the gateway's event stream (GET /dashboard/v1/feed) with the
// operator's admin credential. Every value from the feed is shown as text, never as markup:
// reasons and claims come from guests' evidence.
"use strict";

const STATUSES = ["affirming", "warning", "contraindicated", "rejected"];
const KEEP = 50;
const $ = (id) => document.getElementById(id);
let recent = [];
let selected = null;
let controller = null;

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== "") node.textContent = text;
  return node;
}

function setState(state, text) {
  $("state").dataset.state = state;
  $("state").textContent = text;
}

function signOut(message) {
  if (controller) controller.abort();
  controller = null;
  sessionStorage.removeItem("remits-admin-token");
  $("board").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setState("signed-out", "signed out");
}

async function connect(token) {
  if (controller) controller.abort();
  controller = new AbortController();
  setState("connecting", "connecting");
  let response;
  try {
    response = await fetch("/dashboard/v1/feed", {
      headers: { Authorization: "Bearer " + token },
      cache: "no-store",
      signal: controller.signal,
    });
  } catch (err) {
    if (err.name !== "AbortError") retry(token);
    return;
  }
  if (response.status === 401 || response.status === 403 || response.status === 404) {
    let detail = response.status + "";
    try { const body = await response.json(); detail = (body.error || "") + ": " + (body.detail || ""); } catch (_) {}
    signOut("refused: " + detail);
    return;
  }
  if (!response.ok) { retry(token); return; }
  sessionStorage.setItem("remits-admin-token", token);
  $("login").hidden = true;
  $("board").hidden = false;
  setState("live", "live");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let expired = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (onEvent(block) === "expired") expired = true;
      }
    }
  } catch (err) {
    if (err.name === "AbortError") return;
  }
  if (expired) signOut("the admin credential has lapsed: paste a new one");
  else retry(token);
}

function retry(token) {
  setState("reconnecting", "reconnecting");
  setTimeout(() => connect(token), 2000);
}

function onEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) event = line.slice(7);
    else if (line.startsWith("data: ")) data.push(line.slice(6));
  }
  const payload = data.length ? JSON.parse(data.join("\n")) : null;
  if (event === "hello") {
    $("actor").textContent = "as " + payload.actor;
    $("since").textContent = "since " + new Date(payload.since * 1000).toLocaleTimeString();
    recent = [];
  } else if (event === "decisions") {
    for (const row of payload) recent.unshift(row);
    recent = recent.slice(0, KEEP);
    drawRecent();
  } else if (event === "summary") {
    drawSummary(payload);
  }
  return event;
}

function drawSummary(s) {
  document.querySelector('[data-testid="total-decided"]').textContent = s.decided;
  for (const status of STATUSES) {
    document.querySelector(`[data-testid="total-${status}"]`).textContent = s.totals[status];
    document.querySelector(`[data-testid="rate-${status}"]`).textContent = s.per_second[status] + "/s";
  }
  drawRates(s.rates);
  drawReasons(s.reasons);
  drawStages(s.stages);
  drawTcb(s.tcb);
}

function drawRates(rates) {
  const svg = $("rate-chart");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const top = Math.max(1, ...rates.map((r) => STATUSES.reduce((n, s) => n + r[s], 0)));
  const width = 600 / Math.max(1, rates.length);
  rates.forEach((r, i) => {
    let y = 120;
    for (const status of STATUSES) {
      if (!r[status]) continue;
      const h = (r[status] / top) * 115;
      y -= h;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", (i * width + 0.5).toFixed(1));
      rect.setAttribute("y", y.toFixed(1));
      rect.setAttribute("width", (width - 1).toFixed(1));
      rect.setAttribute("height", h.toFixed(1));
      rect.setAttribute("class", status);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${new Date(r.t * 1000).toLocaleTimeString()}: ${r[status]} ${status}`;
      rect.appendChild(title);
      svg.appendChild(rect);
    }
  });
}

function bar(count, top) {
  const outer = el("span", { class: "bar" });
  const inner = el("span", { class: "fill" });
  inner.style.width = Math.round((count / Math.max(1, top)) * 100) + "%";
  outer.appendChild(inner);
  return outer;
}

function drawReasons(reasons) {
  const body = $("reasons").tBodies[0];
  body.replaceChildren();
  const top = reasons.length ? reasons[0].count : 1;
  for (const r of reasons) {
    const tr = el("tr", { "data-reason": r.reason });
    tr.appendChild(el("td", {}, r.reason));
    tr.appendChild(el("td", { class: "num" }, String(r.count)));
    const cell = el("td");
    cell.appendChild(bar(r.count, top));
    tr.appendChild(cell);
    body.appendChild(tr);
  }
  $("reasons-empty").hidden = reasons.length > 0;
}

function drawStages(stages) {
  const body = $("stages").tBodies[0];
  body.replaceChildren();
  for (const s of stages) {
    const tr = el("tr", { "data-stage": s.stage });
    tr.appendChild(el("td", {}, s.stage));
    for (const key of ["done", "per_s", "p50_ms", "p99_ms", "pending", "ack_pending"]) {
      tr.appendChild(el("td", { class: "num", "data-field": key }, String(s[key])));
    }
    body.appendChild(tr);
  }
}

function drawTcb(tcb) {
  const box = $("tcb");
  box.replaceChildren();
  const names = Object.keys(tcb);
  for (const name of names) {
    const section = el("div", { class: "histogram", "data-histogram": name });
    section.appendChild(el("h3", {}, name));
    const levels = tcb[name];
    const top = Math.max(1, ...levels.map((l) => l.count));
    for (const l of levels) {
      const row = el("div", { class: "level", "data-level": l.level });
      row.appendChild(el("span", { class: "name" }, l.level));
      row.appendChild(bar(l.count, top));
      row.appendChild(el("span", { class: "num count" }, String(l.count)));
      section.appendChild(row);
    }
    box.appendChild(section);
  }
  $("tcb-empty").hidden = names.length > 0;
}

function drawRecent() {
  const body = $("recent").tBodies[0];
  body.replaceChildren();
  for (const row of recent) {
    const tr = el("tr", { "data-request-id": row.request_id, class: "row " + row.status, tabindex: "0" });
    if (selected === row.request_id) tr.classList.add("selected");
    tr.appendChild(el("td", {}, new Date(row.decided_at * 1000).toLocaleTimeString()));
    tr.appendChild(el("td", {}, row.tee));
    tr.appendChild(el("td", { class: "status" }, row.status));
    tr.appendChild(el("td", {}, row.reason));
    tr.addEventListener("click", () => showDetail(row));
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") showDetail(row); });
    body.appendChild(tr);
  }
}

function showDetail(row) {
  selected = row.request_id;
  const box = $("detail");
  box.replaceChildren();
  const dl = el("dl");
  const fields = [
    ["request", row.request_id], ["TEE", row.tee], ["status", row.status],
    ["reason", row.reason || "—"], ["detail", row.detail || "—"],
    ["decided", new Date(row.decided_at * 1000).toISOString()],
  ];
  for (const [k, v] of fields) {
    dl.appendChild(el("dt", {}, k));
    dl.appendChild(el("dd", { "data-field": k }, v));
  }
  box.appendChild(dl);
  box.appendChild(el("h3", {}, "claims (" + Object.keys(row.claims).length + ")"));
  box.appendChild(el("pre", { id: "claims" }, JSON.stringify(row.claims, null, 2)));
  drawRecent();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (token) connect(token);
  });
  const kept = sessionStorage.getItem("remits-admin-token");
  if (kept) connect(kept);
});
