// attnlab viz page: fetches /api/analyze and draws the result with plotly.js (served locally, no CDN).
// Three kinds of models (POST /api/model says which): causal LMs (a prompt), sequence-to-sequence models (a source
// and a target prefix) and image classifiers (an uploaded or built-in image).
"use strict";
const $ = (id) => document.getElementById(id);
let data = null;      // the last analysis
let position = 0;     // the selected token
let info = null;      // what the chosen model takes (POST /api/model), null when unknown
let infoFor = null;   // the model path `info` describes
let infoPending = null;
let imageChoice = null;  // {example: index} or {image: data URL}
const CFG = { displayModeBar: false, responsive: true };
const VIEWS = { causal_lm: "results", seq2seq: "seq2seq-results", image: "image-results" };

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
  div.className = opts.className || "heatmap";
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
    renderSymbols($("symbols"), L.symbols || {}, data.tokens);
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

// ------------------------------------------------------------------------------------------ model kinds
function modelInfo() {
  // What the model in the box takes, asked once per path; null (treated as a causal LM) when the server says no:
  // the analysis request then reports why.
  const path = $("model").value.trim();
  if (path === infoFor && infoPending) return infoPending;
  infoFor = path;
  imageChoice = null;
  infoPending = post("/api/model", { model: path }).then((i) => i, () => null).then((i) => {
    if (infoFor === path) { info = i; applyMode(); }
    return i;
  });
  return infoPending;
}

function kindOf(i) { return i ? i.kind : "causal_lm"; }

function applyMode() {
  const kind = kindOf(info);
  $("prompt").hidden = kind === "image";
  $("prompt").placeholder = kind === "seq2seq" ? "Type a source text" : "Type a prompt";
  $("target-row").hidden = kind !== "seq2seq";
  $("image-input").hidden = kind !== "image";
  $("generate-controls").hidden = Boolean(info && !info.generates);
  if (kind === "image") renderExamples();
}

function renderExamples() {
  const box = $("examples");
  box.innerHTML = "";
  box.dataset.model = infoFor;
  const im = info.image;
  const items = info.examples.items;
  $("image-note").textContent = `the model takes ${im.height}×${im.width} images, ${im.channels === 1 ? "grey" : "RGB"}` +
    (items.length ? `; or click a sample (${info.examples.source})` : "; no built-in sample fits it: upload one");
  items.forEach((e) => {
    const button = document.createElement("button");
    button.className = "example";
    button.dataset.index = e.index;
    button.title = e.caption;
    const img = document.createElement("img");
    img.alt = "";
    img.src = `data:image/png;base64,${e.png}`;
    button.append(img, e.caption);
    button.onclick = () => { imageChoice = { example: e.index }; markExample(); analyze(); };
    box.appendChild(button);
  });
  markExample();
}

function markExample() {
  document.querySelectorAll("#examples button").forEach((b) =>
    b.classList.toggle("selected", Boolean(imageChoice) && String(imageChoice.example) === b.dataset.index));
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function downscale(url, width, height) {
  // A large upload is sent at the model's size (the server would resize it to that anyway).
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = width; canvas.height = height;
      canvas.getContext("2d").drawImage(img, 0, 0, width, height);
      resolve(canvas.toDataURL("image/png"));
    };
    img.onerror = () => reject(new Error("the file is not an image the browser can read"));
    img.src = url;
  });
}

async function upload() {
  const file = $("image-file").files[0];
  if (!file || !info || !info.image) return;
  try {
    const url = await readFile(file);
    imageChoice = { image: file.size <= 700000 ? url : await downscale(url, info.image.width, info.image.height) };
  } catch (err) { showError(err.message); return; }
  markExample();
  analyze();
}

function requestBody(kind) {
  const body = { model: $("model").value.trim(), top_k: Number($("topk-n").value) || 10 };
  if (kind === "seq2seq") return { ...body, source: $("prompt").value, target: $("target").value };
  if (kind === "image") {
    if (!imageChoice) throw new Error(info.examples.items.length ? "no image chosen: upload an image or click a sample"
      : "no image chosen: upload an image (no built-in sample fits this model)");
    return { ...body, ...imageChoice };
  }
  return { ...body, prompt: $("prompt").value };
}

function showView(kind) {
  for (const [k, id] of Object.entries(VIEWS)) $(id).hidden = k !== kind;
}

async function analyze() {
  showError("");
  status("analysing…");
  document.body.dataset.ready = "0";
  const kind = kindOf(await modelInfo());
  try {
    data = await post("/api/analyze", requestBody(kind));
  } catch (err) { status(""); showError(err.message); return; }
  showView(data.kind);
  if (data.kind === "seq2seq") renderSeq2Seq();
  else if (data.kind === "image") renderImage();
  else renderLM();
  status("done");
  document.body.dataset.ready = "1";
}

function renderLM() {
  position = data.position;
  $("family").textContent = `${data.family} · ${data.n_layers} layers · ${data.tokens.length} tokens`;
  $("layer").innerHTML = data.layers.map((l) => `<option value="${l.layer}">${l.layer}</option>`).join("");
  renderTokens(); renderTopK(); renderLayer();
}

function renderSymbols(box, s, tokens) {
  if (s.weights) {
    s.weights.forEach((m, h) => heatmap(box, m, m[0].map((_, k) => `s${k}`), tokens,
      `${s.head_labels[h]}: weights over the symbol library`, { zmin: 0 }));
  } else {
    box.textContent = s.kind === "positional" ? `positional symbols: token j gets symbol ${s.assigned}` :
      `relative symbols: s(i−j), up to distance ${s.max_rel_pos}`;
  }
}

function layerOptions(select, layers) {
  select.innerHTML = layers.map((l) => `<option value="${l.layer}">${l.layer}</option>`).join("");
}

// ------------------------------------------------------------------------------------------ seq2seq
function renderSeq2Seq() {
  position = data.position;
  $("s2s-family").textContent = `${data.family} · ${data.n_layers} encoder + ${data.n_decoder_layers} decoder layers · ` +
    `${data.source_tokens.length} source, ${data.target_tokens.length} target tokens`;
  layerOptions($("enc-layer"), data.encoder_layers);
  layerOptions($("dec-layer"), data.decoder_layers);
  const source = $("source-tokens");
  source.innerHTML = "";
  data.source_tokens.forEach((t, i) => {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = show(t);
    span.title = `source position ${i}, id ${data.source_ids[i]}`;
    source.appendChild(span);
  });
  renderTargetTokens(); renderS2STopK(); renderEncoder(); renderDecoder();
}

function renderTargetTokens() {
  const box = $("target-tokens");
  box.innerHTML = "";
  data.target_tokens.forEach((t, i) => {
    const span = document.createElement("span");
    span.className = "tok" + (i === position ? " selected" : "");
    span.textContent = show(t);
    span.title = `target position ${i}, id ${data.target_ids[i]}`;
    span.onclick = () => { position = i; renderTargetTokens(); renderS2STopK(); };
    box.appendChild(span);
  });
}

function renderS2STopK() {
  const top = data.next_token_all[position];
  Plotly.newPlot($("s2s-topk"), [{ type: "bar", orientation: "h", x: top.map((t) => t.prob).reverse(),
    y: top.map((t) => `${show(t.token)} (${t.id})`).reverse() }],
    { title: { text: `next token after target position ${position} (“${show(data.target_tokens[position])}”)`,
               font: { size: 13 } }, margin: { l: 90, r: 10, t: 30, b: 30 } }, CFG);
}

function renderStack(L, tokens, prefix, future) {
  for (const id of [`${prefix}-maps`, `${prefix}-relations`, `${prefix}-symbols`]) $(id).innerHTML = "";
  if (L.attention) {
    L.attention.weights.forEach((m, h) => heatmap($(`${prefix}-maps`), m, L.attention.key_labels, tokens,
      `${prefix} layer ${L.layer} · ${L.attention.head_labels[h]}`, { zmin: 0 }));
  }
  $(`${prefix}-dat`).hidden = !L.relations;
  if (L.relations) {
    L.relations.values.forEach((m, r) => heatmap($(`${prefix}-relations`), m, tokens, tokens,
      `${prefix} layer ${L.layer} · ${L.relations.labels[r]}${future ? " (future: blank)" : ""}`,
      { colorscale: "RdBu", zmid: 0 }));
    renderSymbols($(`${prefix}-symbols`), L.symbols || {}, tokens);
  }
}

function renderEncoder() {
  renderStack(data.encoder_layers[Number($("enc-layer").value) || 0], data.source_tokens, "encoder", false);
}

function renderDecoder() {
  const L = data.decoder_layers[Number($("dec-layer").value) || 0];
  renderStack(L, data.target_tokens, "decoder", true);
  $("cross-maps").innerHTML = "";
  if (L.cross_attention) {
    L.cross_attention.weights.forEach((m, h) => heatmap($("cross-maps"), m, L.cross_attention.key_labels,
      data.target_tokens, `decoder layer ${L.layer} · ${L.cross_attention.head_labels[h]}`, { zmin: 0 }));
  }
}

// ------------------------------------------------------------------------------------------ images
function rgb(pixels) { return pixels.map((row) => row.map((p) => (p.length === 1 ? [p[0], p[0], p[0]] : p))); }

function toGrid(values) {
  // A row over [CLS; patches] → the patches' values on the patch grid (rows × columns), raster order.
  const [rows, cols] = data.grid;
  return Array.from({ length: rows }, (_, r) => values.slice(1 + r * cols, 1 + (r + 1) * cols));
}

function meanOf(maps) {
  return maps[0].map((row, r) => row.map((_, c) => maps.reduce((sum, m) => sum + m[r][c], 0) / maps.length));
}

function pictureWith(parent, overlay, title, opts = {}) {
  // The input image, and a patch-grid map drawn over it (each cell covers its patch's pixels).
  const div = document.createElement("div");
  div.className = opts.className || "heatmap square";
  parent.appendChild(div);
  const p = data.patch_size;
  const traces = [{ type: "image", z: rgb(data.image.pixels), hoverinfo: "skip" }];
  if (overlay) {
    traces.push({ type: "heatmap", z: overlay, x0: (p - 1) / 2, dx: p, y0: (p - 1) / 2, dy: p, opacity: 0.65,
      colorscale: opts.colorscale || "Viridis", zmin: opts.zmin, zmid: opts.zmid, showscale: true,
      hovertemplate: "patch row %{y}, column %{x}: %{z:.4f}<extra></extra>" });
  }
  Plotly.newPlot(div, traces, { title: { text: title, font: { size: 12 } }, margin: { l: 10, r: 10, t: 30, b: 10 },
    xaxis: { visible: false }, yaxis: { visible: false, autorange: "reversed", scaleanchor: "x" } }, CFG);
}

function renderImage() {
  $("img-family").textContent = `${data.family} · ${data.n_layers} layers · ${data.grid[0]}×${data.grid[1]} patches` +
    ` of ${data.patch_size}×${data.patch_size} px · pooling ${data.pooling}` + (data.example ? ` · ${data.example}` : "");
  layerOptions($("img-layer"), data.layers);
  const pooled = data.pooling === "cls" ? "pooled: the CLS token" : "pooled: the mean of all tokens";
  $("img-query").innerHTML = `<option value="pooled">${pooled}</option>` +
    data.tokens.map((t, i) => `<option value="${i}">${i}: ${t}</option>`).join("");
  $("input-image").innerHTML = "";
  pictureWith($("input-image"), null, `input (${data.image.height}×${data.image.width}, as the model saw it)`,
    { className: "imagebox" });
  const top = data.prediction.top;
  Plotly.newPlot($("prediction"), [{ type: "bar", orientation: "h", x: top.map((c) => c.prob).reverse(),
    y: top.map((c) => `${c.label} (${c.id})`).reverse() }],
    { title: { text: `predicted class: ${data.prediction.label}`, font: { size: 13 } },
      margin: { l: 110, r: 10, t: 30, b: 30 }, xaxis: { range: [0, 1] } }, CFG);
  renderImageLayer();
}

function renderImageLayer() {
  const L = data.layers[Number($("img-layer").value) || 0];
  const query = $("img-query").value;
  for (const id of ["patch-maps", "patch-relations", "image-maps", "image-relations", "image-symbols"]) $(id).innerHTML = "";
  const who = query === "pooled" ? (data.pooling === "cls" ? "the CLS token" : "the mean of all tokens")
    : `token ${query} (${data.tokens[query]})`;
  $("patch-title").textContent = `What ${who} attends to, on the patch grid (layer ${L.layer})`;
  if (L.attention) {
    const maps = query === "pooled" ? L.patch_attention.maps : L.attention.weights.map((h) => toGrid(h[query]));
    maps.forEach((m, h) => pictureWith($("patch-maps"), m, `${L.attention.head_labels[h]}`, { zmin: 0 }));
    pictureWith($("patch-maps"), query === "pooled" ? L.patch_attention.mean : meanOf(maps), "mean over heads",
      { zmin: 0 });
    L.attention.weights.forEach((m, h) => heatmap($("image-maps"), m, L.attention.key_labels, data.tokens,
      `layer ${L.layer} · ${L.attention.head_labels[h]}`, { zmin: 0 }));
  }
  $("patch-relations-section").hidden = !L.relations;
  $("image-dat").hidden = !L.relations;
  if (L.relations) {
    const maps = query === "pooled" ? L.patch_relations.maps : L.relations.values.map((r) => toGrid(r[query]));
    maps.forEach((m, r) => pictureWith($("patch-relations"), m, `${L.relations.labels[r]} with ${who}`,
      { colorscale: "RdBu", zmid: 0 }));
    L.relations.values.forEach((m, r) => heatmap($("image-relations"), m, data.tokens, data.tokens,
      `layer ${L.layer} · ${L.relations.labels[r]}`, { colorscale: "RdBu", zmid: 0 }));
    renderSymbols($("image-symbols"), L.symbols || {}, data.tokens);
  }
}

async function generate() {
  showError("");
  status("generating…");
  const kind = kindOf(await modelInfo());
  const body = { model: $("model").value.trim(), max_new_tokens: Number($("gen-n").value) || 40,
                 greedy: $("greedy").checked };
  body[kind === "seq2seq" ? "source" : "prompt"] = $("prompt").value;
  try {
    const out = await post("/api/generate", body);
    $("generation").hidden = false;
    $("generation").textContent = kind === "seq2seq" ? `${out.source} → ${out.target}` : out.text;
    if (kind === "seq2seq") $("target").value = out.target;  // Analyze then shows how the model produced it
    status("done");
  } catch (err) { status(""); showError(err.message); }
}

async function init() {
  $("analyze").onclick = analyze;
  $("generate").onclick = generate;
  $("layer").onchange = renderLayer;
  $("enc-layer").onchange = renderEncoder;
  $("dec-layer").onchange = renderDecoder;
  $("img-layer").onchange = renderImageLayer;
  $("img-query").onchange = renderImageLayer;
  $("image-file").onchange = upload;
  $("model").onchange = modelInfo;
  try {
    const response = await fetch("/api/models");
    const models = await response.json();
    $("runs").innerHTML = models.models.map((m) => `<option value="${m}">`).join("");
    if (models.models.length) $("model").value = models.models[0];
    const l = models.limits;
    $("limits").textContent = `limits: ${l.max_prompt_tokens} prompt tokens, ${l.max_parameters.toLocaleString()} parameters`;
    $("gen-n").max = l.max_new_tokens;
    if (models.models.length) modelInfo();
  } catch (err) { showError(`cannot reach the server: ${err.message}`); }
}
init();
