// phicurate tune: the page over `phicurate tune OUTPUT --serve`. Every number comes from the server,
// which evaluates select's own rules; this script only holds the settings and draws the answers.
"use strict";

const SLIDER_STEPS = 1000;
const state = { values: {}, on: {}, active: null };
const cards = {};
let params = [];
let inFlight = false;
let pending = false;
let sent = 0;

const $ = (id) => document.getElementById(id);
const fmt = (n) => n.toLocaleString("en-US");
const pct = (a, b) => (b ? ((100 * a) / b).toFixed(2) + "%" : "-");

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

// Slider position <-> value over the histogram's range (log1p scale for long-tailed counts).
function toValue(h, pos, integer) {
  const lo = h.edges[0], hi = h.edges[h.edges.length - 1], f = pos / SLIDER_STEPS;
  let v = h.log ? Math.expm1(Math.log1p(lo) + f * (Math.log1p(hi) - Math.log1p(lo))) : lo + f * (hi - lo);
  return integer ? Math.round(v) : Number(v.toPrecision(4));
}
function toPos(h, v) {
  const lo = h.edges[0], hi = h.edges[h.edges.length - 1];
  const f = h.log ? (Math.log1p(Math.max(v, lo)) - Math.log1p(lo)) / (Math.log1p(hi) - Math.log1p(lo))
    : (v - lo) / (hi - lo || 1);
  return Math.round(Math.min(1, Math.max(0, f)) * SLIDER_STEPS);
}
function xOf(h, v) {
  return (100 * toPos(h, v)) / SLIDER_STEPS;
}

function drawHist(p, column, overlay) {
  const h = p.hists[column], box = cards[p.key].hists[column];
  box.replaceChildren();
  const top = Math.max(1, ...h.counts);
  const v = state.values[p.key];
  if (state.on[p.key] && p.keeps_above !== null && typeof v === "number") {
    const x = xOf(h, v);
    box.append(p.keeps_above ? svg("rect", { class: "fail", x: 0, y: 0, width: x, height: 100 })
      : svg("rect", { class: "fail", x, y: 0, width: 100 - x, height: 100 }));
  }
  for (const [cls, counts] of [["all", h.counts], ["others", overlay]]) {
    if (!counts) continue;
    counts.forEach((c, i) => {
      if (!c) return;
      const x0 = xOf(h, h.edges[i]), x1 = xOf(h, h.edges[i + 1]);
      const height = (96 * Math.sqrt(c)) / Math.sqrt(top);
      box.append(svg("rect", { class: cls, x: x0, y: 100 - height, width: Math.max(0.3, x1 - x0 - 0.15), height }));
    });
  }
  if (typeof v === "number") {
    const x = xOf(h, v);
    box.append(svg("line", { class: "thr", x1: x, x2: x, y1: 0, y2: 100, "vector-effect": "non-scaling-stroke" }));
  }
}

function setValue(p, v, fromSlider) {
  state.values[p.key] = v;
  const c = cards[p.key];
  if (c.num && c.num.value !== String(v)) c.num.value = v;
  if (c.slider && !fromSlider) c.slider.value = toPos(p.hists[p.columns[0]], v);
}

function moved(p) {
  state.active = p.key;
  document.querySelectorAll(".card.active").forEach((e) => e.classList.remove("active"));
  cards[p.key].card.classList.add("active");
  update();
}

function buildCard(p, langs) {
  const short = p.key.includes(".") ? p.key.slice(p.key.indexOf(".") + 1) : p.key;
  const card = el("div", { class: "card", "data-key": p.key });
  const c = (cards[p.key] = { card, hists: {} });
  const controls = el("div", { class: "controls" });
  if (p.off) {
    c.on = el("input", { type: "checkbox", class: "on", checked: p.on, title: "rule on" });
    c.on.addEventListener("change", () => {
      state.on[p.key] = c.on.checked;
      card.classList.toggle("off", !c.on.checked);
      moved(p);
    });
    controls.append(el("label", {}, c.on, " on"));
  }
  if (p.kind === "number") {
    const h = p.hists[p.columns[0]];
    c.slider = el("input", { type: "range", class: "slider", min: 0, max: SLIDER_STEPS, step: 1 });
    c.num = el("input", { type: "number", class: "num", step: p.integer ? 1 : "any" });
    c.slider.addEventListener("input", () => {
      setValue(p, toValue(h, Number(c.slider.value), p.integer), true);
      moved(p);
    });
    c.num.addEventListener("change", () => {
      if (c.num.value === "") return;
      setValue(p, Number(c.num.value), false);
      moved(p);
    });
    controls.append(c.slider, c.num);
  } else if (p.kind === "bool") {
    c.bool = el("input", { type: "checkbox", class: "bool", checked: p.value });
    c.bool.addEventListener("change", () => {
      state.values[p.key] = c.bool.checked;
      moved(p);
    });
    controls.append(el("label", {}, c.bool, " true"));
  } else if (p.kind === "lang") {
    c.lang = el("input", { type: "text", class: "lang", value: p.value.join(", ") });
    c.lang.addEventListener("change", () => {
      state.values[p.key] = c.lang.value.split(/[\s,]+/).filter(Boolean);
      moved(p);
    });
    controls.append(c.lang);
  }
  const side = p.keeps_above === null ? "" : p.keeps_above ? "keeps >= threshold" : "keeps <= threshold";
  card.append(el("div", {},
    el("div", { class: "name" }, short),
    el("div", { class: "rules" }, p.reasons.map((r) => r.replace(/^[a-z0-9_]+:/, "")).join(", ") + (side ? "; " + side : ""))),
    controls);
  for (const col of p.columns) {
    if (!p.hists[col]) continue;
    const h = p.hists[col];
    const box = svg("svg", { class: "hist", viewBox: "0 0 100 100", preserveAspectRatio: "none" });
    c.hists[col] = box;
    const lo = h.edges[0], hi = h.edges[h.edges.length - 1];
    card.append(el("div", { class: "rules" }, col + (h.log ? " (log scale)" : "")),
      el("div", {}, box, el("div", { class: "axis" }, el("span", {}, String(Number(lo.toPrecision(3)))),
        el("span", {}, String(Number(hi.toPrecision(3)))))));
  }
  if (p.kind === "lang") {
    card.append(el("div", { class: "rules" }, "languages in the data"),
      el("div", { class: "rules" }, langs.map(([l, n]) => `${l} ${fmt(n)}`).join(", ")));
  }
  state.values[p.key] = p.value;
  state.on[p.key] = p.on;
  if (c.num) setValue(p, p.value, false);
  card.classList.toggle("off", !p.on);
  return card;
}

function build(init) {
  params = init.params;
  $("output").textContent = init.output;
  $("write-path").textContent = init.write_path;
  const root = $("settings");
  let box = el("div", { class: "section" }, el("h2", {}, "language and edu score"));
  root.append(box);
  for (const p of params) {
    if (p.kind === "section") {
      const on = el("input", { type: "checkbox", class: "on", checked: p.on });
      box = el("div", { class: "section" + (p.on ? "" : " off"), "data-key": p.key },
        el("h2", {}, el("label", {}, on, " " + p.key)));
      cards[p.key] = { card: box, on, hists: {} };
      state.on[p.key] = p.on;
      on.addEventListener("change", () => {
        state.on[p.key] = on.checked;
        box.classList.toggle("off", !on.checked);
        state.active = null;
        update();
      });
      root.append(box);
      continue;
    }
    const parent = box;
    parent.append(buildCard(p, init.langs));
  }
  show(init.totals);
  $("yaml").textContent = init.yaml;
}

function show(t) {
  $("kept-docs").textContent = fmt(t.kept_docs);
  $("kept-docs").dataset.value = t.kept_docs;
  $("kept-tokens").textContent = fmt(t.kept_tokens);
  $("kept-tokens").dataset.value = t.kept_tokens;
  $("all-docs").textContent = fmt(t.docs);
  $("all-tokens").textContent = fmt(t.tokens);
  $("kept-docs-pct").textContent = pct(t.kept_docs, t.docs);
  $("kept-tokens-pct").textContent = pct(t.kept_tokens, t.tokens);
  $("ms").textContent = t.ms;
  const src = $("sources").tBodies[0];
  src.replaceChildren(...t.sources.map((s) => el("tr", { "data-source": s.source },
    el("td", {}, s.source), el("td", { "data-value": s.kept_docs }, fmt(s.kept_docs)), el("td", {}, pct(s.kept_docs, s.docs)),
    el("td", { "data-value": s.kept_tokens }, fmt(s.kept_tokens)), el("td", {}, pct(s.kept_tokens, s.tokens)))));
  const drops = $("drops").tBodies[0];
  drops.replaceChildren(...t.drops.map((d) => el("tr", { class: d.docs ? "" : "zero", "data-reason": d.reason },
    el("td", {}, d.reason), el("td", { "data-value": d.docs }, fmt(d.docs)), el("td", {}, fmt(d.tokens)))));
  for (const p of params) {
    if (p.kind === "section") continue;
    for (const col of Object.keys(cards[p.key].hists)) {
      drawHist(p, col, t.active === p.key && t.overlay ? t.overlay[col] : null);
    }
  }
  showMargin(t);
}

function showMargin(t) {
  const kept = $("margin-kept"), dropped = $("margin-dropped");
  if (!t.margin) {
    if (t.active) {
      $("margin-rule").textContent = t.active + " (no threshold to be near)";
      kept.replaceChildren();
      dropped.replaceChildren();
    }
    return;
  }
  const m = t.margin;
  $("margin-rule").textContent = `${t.active}: ${m.column} at ${m.threshold}`;
  const item = (d) => el("li", { "data-row": d.row },
    el("div", { class: "meta" }, `${m.column} = ${Number(d.value.toPrecision(6))} · ${d.words} words · ${d.id} (${d.source})`),
    el("div", { class: "text" }, "…"));
  const none = () => el("li", { class: "none" }, "none: no document passing the other rules is on this side");
  kept.replaceChildren(...(m.kept.length ? m.kept.map(item) : [none()]));
  dropped.replaceChildren(...(m.dropped.length ? m.dropped.map(item) : [none()]));
  const rows = [...m.kept, ...m.dropped].map((d) => d.row);
  if (rows.length) {
    api("/api/texts", { rows }).then((texts) => {
      for (const li of document.querySelectorAll("#margin li[data-row]")) {
        const text = texts[li.dataset.row];
        if (text !== undefined) li.querySelector(".text").textContent = text;
      }
    }).catch((e) => ($("error").textContent = e.message));
  }
}

// One request at a time; moves made meanwhile are sent together as soon as the answer comes.
function update() {
  document.body.dataset.busy = "1";
  if (inFlight) {
    pending = true;
    return;
  }
  inFlight = true;
  pending = false;
  const seq = ++sent;
  api("/api/evaluate", { values: state.values, on: state.on, active: state.active })
    .then((t) => {
      $("error").textContent = "";
      show(t);
      $("yaml").textContent = t.yaml;
      document.body.dataset.applied = seq;
    })
    .catch((e) => ($("error").textContent = e.message))
    .finally(() => {
      inFlight = false;
      if (pending) update();
      else document.body.dataset.busy = "0";
    });
}

$("write").addEventListener("click", () => {
  $("write-message").textContent = "writing…";
  api("/api/write", { values: state.values, on: state.on })
    .then((r) => {
      $("write-message").textContent = r.message;
      $("yaml").textContent = r.yaml;
    })
    .catch((e) => ($("write-message").textContent = "error: " + e.message));
});

$("show-zero").addEventListener("change", (e) => $("drops").classList.toggle("all", e.target.checked));

api("/api/init")
  .then((init) => {
    build(init);
    document.body.dataset.busy = "0";
  })
  .catch((e) => ($("error").textContent = e.message));
