// attnlab viz page: fetches /api/analyze and draws the result with plotly.js (served locally, no CDN).
"use strict";
const $ = (id) => document.getElementById(id);
let data = null;      // the last analysis
let position = 0;     // the selected token
const CFG = { displayModeBar: false, responsive: true };

function showError(message) { const e = $("error"); e.textContent = message || ""; e.hidden = !message; }
function status(text) { $("status").textContent = text; }

async function post(url, body) {
  const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
                                      body: JSON.stringify(body) });
  const payload = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok || payload.error) throw new Error(payload.error || `HTTP ${response.status}`);
  return payload;
}

function show(label) { return label.replace(/\n/g, "⏎").replace(/ /g, "␣"); }

function heatmap(parent, z, x, y, title, opts = {}) {
  const div = document.createElement("div");
  div.className = "heatmap";
  parent.appendChild(div);
  Plotly.newPlot(div, [{ type: "heatmap", z, x: x.map((v, i) => `${i}:${show(v)}`), y: y.map((v, i) => `${i}:${show(v)}`),
    colorscale: opts.colorscale || "Viridis", zmin: opts.zmin, zmax: opts.zmax, zmid: opts.zmid, hoverongaps: false }],
    { title: { text: title, font: { size: 13 } }, margin: { l: 60, r: 10, t: 30, b: 50 },
      yaxis: { autorange: "reversed", tickfont: { size: 9 } }, xaxis: { tickfont: { size: 9 } } }, CFG);
}

function bars(parent, rows, names, title) {
  const div = document.createElement("div");
  div.className = "bars";
  parent.appendChild(div);
  const x = data.tokens.map((t, i) => `${i}:${show(t)}`);
  const traces = names.map((name, e) => ({ type: "bar", name, x, y: rows.map((r) => r[e]) }));
  Plotly.newPlot(div, traces, { barmode: "stack", title: { text: title, font: { size: 13 } },
    margin: { l: 40, r: 10, t: 30, b: 50 }, yaxis: { range: [0, 1] } }, CFG);
}

function renderTokens() {
  const box = $("tokens");
  box.innerHTML = "";
  data.tokens.forEach((t, i) => {
    const span = document.createElement("span");
    span.className = "tok" + (i === position ? " selected" : "");
    span.textContent = show(t);
    span.title = `position ${i}, id ${data.ids[i]}`;
    span.dataset.index = i;
    span.onclick = () => { position = i; renderTokens(); renderTopK(); renderLeapText(); };
    box.appendChild(span);
  });
}

function renderTopK() {
  const top = data.next_token_all[position];
  Plotly.newPlot($("topk"), [{ type: "bar", orientation: "h", x: top.map((t) => t.prob).reverse(),
    y: top.map((t) => `${show(t.token)} (${t.id})`).reverse() }],
    { title: { text: `next token after position ${position} (“${show(data.tokens[position])}”)`, font: { size: 13 } },
      margin: { l: 90, r: 10, t: 30, b: 30 } }, CFG);
}

function layer() { return data.layers[Number($("layer").value) || 0]; }

function renderLeapText() {
  const imp = layer().importance;
  if (!imp) return;
  const box = $("leap-text");
  box.innerHTML = "";
  imp.weights.forEach((head, h) => {
    const line = document.createElement("div");
    line.append(`${imp.head_labels[h]} (window ${imp.window ?? "global"}): `);
    const row = head[position];
    const peak = Math.max(...row.slice(0, position + 1), 1e-9);
    data.tokens.forEach((t, j) => {
      const span = document.createElement("span");
      span.className = "tok";
      span.textContent = show(t);
      span.title = `α = ${row[j]}`;
      span.style.background = `rgba(255, 127, 14, ${(row[j] / peak).toFixed(3)})`;
      line.appendChild(span);
    });
    box.appendChild(line);
  });
}

function renderLayer() {
  const L = layer();
  for (const id of ["attention-maps", "leap-maps", "relation-maps", "routing", "symbols", "balls"]) $(id).innerHTML = "";
  $("attention").hidden = !L.attention;
  if (L.attention) {
    $("attention-title").textContent = L.attention.title;
    L.attention.weights.forEach((m, h) => heatmap($("attention-maps"), m, L.attention.key_labels, data.tokens,
      `layer ${L.layer} · ${L.attention.head_labels[h]}`, { zmin: 0 }));
  }
  $("leap").hidden = !L.importance;
  if (L.importance) {
    L.importance.weights.forEach((m, h) => heatmap($("leap-maps"), m, data.tokens, data.tokens,
      `layer ${L.layer} · ${L.importance.head_labels[h]}`, { zmin: 0, colorscale: "Oranges" }));
    renderLeapText();
  }
  $("dat").hidden = !L.relations;
  if (L.relations) {
    L.relations.values.forEach((m, r) => heatmap($("relation-maps"), m, data.tokens, data.tokens,
      `layer ${L.layer} · ${L.relations.labels[r]}`, { colorscale: "RdBu", zmid: 0 }));
    const s = L.symbols || {};
    if (s.weights) {
      s.weights.forEach((m, h) => heatmap($("symbols"), m, m[0].map((_, k) => `s${k}`), data.tokens,
        `${s.head_labels[h]}: weights over the symbol library`, { zmin: 0 }));
    } else {
      $("symbols").textContent = s.kind === "positional" ? `positional symbols: token j gets symbol ${s.assigned}` :
        `relative symbols: s(i−j), up to distance ${s.max_rel_pos}`;
    }
  }
  $("moa").hidden = !L.routing;
  if (L.routing) {
    bars($("routing"), L.routing.heads, L.routing.head_types, `layer ${L.layer}: router weights over head types`);
    bars($("routing"), L.routing.branches, L.routing.branch_names, `layer ${L.layer}: FFN branch weights (top-k)`);
    const table = document.createElement("table");
    table.innerHTML = "<tr><th>head</th><th>keys pruned</th></tr>" + L.balls.map((b) =>
      `<tr><td>${b.head}</td><td>${b.pruned.length ? b.pruned.map((j) => `${j}:${show(data.tokens[j])}`).join(" ") : "none"}</td></tr>`).join("");
    $("balls").appendChild(table);
  }
}

async function analyze() {
  showError("");
  status("analysing…");
  try {
    data = await post("/api/analyze", { model: $("model").value.trim(), prompt: $("prompt").value,
                                        top_k: Number($("topk-n").value) || 10 });
  } catch (err) { status(""); showError(err.message); return; }
  position = data.position;
  $("family").textContent = `${data.family} · ${data.n_layers} layers · ${data.tokens.length} tokens`;
  $("layer").innerHTML = data.layers.map((l) => `<option value="${l.layer}">${l.layer}</option>`).join("");
  $("results").hidden = false;
  renderTokens(); renderTopK(); renderLayer();
  status("done");
  document.body.dataset.ready = "1";
}

async function generate() {
  showError("");
  status("generating…");
  try {
    const out = await post("/api/generate", { model: $("model").value.trim(), prompt: $("prompt").value,
      max_new_tokens: Number($("gen-n").value) || 40, greedy: $("greedy").checked });
    $("generation").hidden = false;
    $("generation").textContent = out.text;
    status("done");
  } catch (err) { status(""); showError(err.message); }
}

async function init() {
  $("analyze").onclick = analyze;
  $("generate").onclick = generate;
  $("layer").onchange = renderLayer;
  try {
    const info = await (await fetch("/api/models")).json();
    $("runs").innerHTML = info.models.map((m) => `<option value="${m}">`).join("");
    if (info.models.length) $("model").value = info.models[0];
    const l = info.limits;
    $("limits").textContent = `limits: ${l.max_prompt_tokens} prompt tokens, ${l.max_parameters.toLocaleString()} parameters`;
    $("gen-n").max = l.max_new_tokens;
  } catch (err) { showError(`cannot reach the server: ${err.message}`); }
}
init();
