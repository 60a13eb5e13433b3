// Strait flow UI: polls api/map and api/flows every 2 s and draws the service map (SVG) and the
// flow table. No dependencies, no build step; served from the strait binary.
"use strict";

const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
// Inputs named after the filter keys of the API (those of `strait observe`).
const FIELDS = ["namespace", "pod", "verdict", "protocol", "http-status"];
// Map geometry, in pixels.
const NODE_W = 190, NODE_H = 46, ROW_GAP = 18, MIN_GAP = 210, MAX_GAP = 380;
const MARGIN = 12, PAD = 14, CLUSTER_HEAD = 28, NS_HEAD = 24;

const $ = (sel) => document.querySelector(sel);
let inflight = false;
let newest = ""; // time of the newest flow already shown (RFC 3339, fixed width)
let timer = null;

// === filters ===

// The API query for the form: repeated keys for comma-separated values and the free text box.
function filterParams() {
  const form = $("#filters");
  const p = new URLSearchParams();
  for (const key of FIELDS) {
    for (const v of form.elements[key].value.split(",")) {
      if (v.trim()) p.append(key, v.trim());
    }
  }
  for (const tok of form.elements.extra.value.split(/\s+/)) {
    if (!tok) continue;
    const i = tok.indexOf("=");
    if (i <= 0) throw new Error(`"${tok}" is not key=value`);
    p.append(tok.slice(0, i), tok.slice(i + 1));
  }
  return p;
}

// Fills the form from the page's own query string (same keys as the API, plus `last`).
function loadFromUrl() {
  const form = $("#filters");
  const extra = [];
  for (const [k, v] of new URLSearchParams(location.search)) {
    const el = k === "last" ? form.elements.last : FIELDS.includes(k) ? form.elements[k] : null;
    if (el && el.tagName === "SELECT") {
      const want = k === "verdict" ? v.toUpperCase() : v;
      if (k === "last" && ![...el.options].some((o) => o.value === want)) el.add(new Option(want));
      if ((k === "last" || !el.value) && [...el.options].some((o) => o.value === want)) {
        el.value = want;
        continue;
      }
    } else if (el) {
      el.value = el.value ? `${el.value},${v}` : v;
      continue;
    }
    extra.push(`${k}=${v}`);
  }
  form.elements.extra.value = extra.join(" ");
}

function saveToUrl() {
  try {
    const p = filterParams();
    const last = $("#filters").elements.last.value;
    if (last !== "200") p.set("last", last);
    const q = p.toString();
    history.replaceState(null, "", q ? `?${q}` : location.pathname);
  } catch (_) {
    // An unfinished key=value stays in the box; the error shows on refresh.
  }
}

// === data ===

async function fetchJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  let body;
  try {
    body = await r.json();
  } catch (_) {
    body = { error: `${r.status} ${r.statusText}` };
  }
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

async function refresh(force) {
  if (inflight || ($("#pause").checked && !force)) return;
  inflight = true;
  try {
    const p = filterParams();
    const fp = new URLSearchParams(p);
    fp.set("last", $("#filters").elements.last.value);
    const [map, flows] = await Promise.all([
      fetchJson(`api/map?${p}`),
      fetchJson(`api/flows?${fp}`),
    ]);
    showError(null);
    renderStatus(map, flows);
    renderMap(map);
    renderTable(flows.flows);
  } catch (e) {
    showError(e.message);
  } finally {
    inflight = false;
    document.body.dataset.ready = "1";
  }
}

function showError(msg) {
  const el = $("#error");
  el.hidden = !msg;
  el.textContent = msg ? `Error: ${msg}` : "";
}

function renderStatus(map, flows) {
  const down = flows.unreachable.length;
  const agents = down ? `${flows.agents - down} of ${flows.agents} agents` : `${flows.agents} agents`;
  $("#status").textContent = `${agents} · updated ${clock(new Date().toISOString())}`;
  const problems = [...flows.unreachable.map((u) => `${u.agent} unreachable: ${u.error}`),
    ...flows.warnings];
  const w = $("#warnings");
  w.hidden = problems.length === 0;
  w.textContent = problems.join("\n");
  $("#map-count").textContent = `${map.edges.length} edges from ${map.flows} flows the agents hold`;
  $("#flow-count").textContent = `last ${flows.flows.length} matching, newest first`;
}

// === service map ===

// Column of each node: longest path from the sources, back edges (cycles) left out.
function ranks(nodes, edges) {
  const out = new Map(nodes.map((n) => [n.id, []]));
  const indeg = new Map(nodes.map((n) => [n.id, 0]));
  for (const e of edges) {
    if (e.from === e.to || !out.has(e.from) || !out.has(e.to)) continue;
    out.get(e.from).push(e.to);
    indeg.set(e.to, indeg.get(e.to) + 1);
  }
  const state = new Map();
  const forward = [];
  const visit = (id) => {
    state.set(id, 1);
    for (const t of out.get(id)) {
      const s = state.get(t);
      if (s === 1) continue; // back edge
      forward.push([id, t]);
      if (!s) visit(t);
    }
    state.set(id, 2);
  };
  const order = nodes.map((n) => n.id).sort((a, b) => indeg.get(a) - indeg.get(b));
  for (const id of order) if (!state.has(id)) visit(id);
  const rank = new Map(nodes.map((n) => [n.id, 0]));
  for (let i = 0; i < nodes.length; i++) {
    let changed = false;
    for (const [a, b] of forward) {
      if (rank.get(b) < rank.get(a) + 1) {
        rank.set(b, rank.get(a) + 1);
        changed = true;
      }
    }
    if (!changed) break;
  }
  return rank;
}

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function text(parent, x, y, cls, s) {
  const t = el("text", { x, y, class: cls }, parent);
  t.textContent = s;
  return t;
}

function renderMap(map) {
  const svg = $("#map");
  svg.replaceChildren();
  const defs = el("defs", {}, svg);
  for (const kind of ["allowed", "denied", "warn"]) {
    const m = el("marker", {
      id: `arrow-${kind}`, viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
    }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z" }, m);
  }
  const avail = Math.max($("#map-box").clientWidth, 600);
  if (map.nodes.length === 0) {
    svg.setAttribute("width", avail);
    svg.setAttribute("height", 80);
    text(svg, 24, 45, "empty", "No flows match: generate some traffic or loosen the filters.");
    return;
  }
  const rank = ranks(map.nodes, map.edges);
  const cols = Math.max(...rank.values()) + 1;
  const inner = avail - 2 * MARGIN - 4 * PAD;
  const gap = cols > 1
    ? Math.min(MAX_GAP, Math.max(MIN_GAP, (inner - cols * NODE_W) / (cols - 1)))
    : 0;
  const used = cols * NODE_W + (cols - 1) * gap;
  const boxW = Math.max(used, inner);
  const x0 = MARGIN + 2 * PAD + (boxW - used) / 2;
  const width = boxW + 2 * MARGIN + 4 * PAD;

  // Clusters, then namespaces, in the API's order (sorted, world last).
  const clusters = new Map();
  for (const n of map.nodes) {
    const c = n.id === "world" ? "" : n.cluster;
    if (!clusters.has(c)) clusters.set(c, new Map());
    const nss = clusters.get(c);
    const ns = n.id === "world" ? "" : n.namespace;
    if (!nss.has(ns)) nss.set(ns, []);
    nss.get(ns).push(n);
  }

  const boxes = el("g", { class: "boxes" }, svg);
  const edgeLayer = el("g", { class: "edges" }, svg);
  const nodeLayer = el("g", { class: "nodes" }, svg);
  const pos = new Map();
  const selected = selectedNode(map.nodes);
  let y = MARGIN;
  for (const [cluster, nss] of clusters) {
    const cy = y;
    const cbox = el("rect", { class: "cluster-box", x: MARGIN, y: cy, width: width - 2 * MARGIN, rx: 8 }, boxes);
    text(boxes, MARGIN + 10, cy + 19, "cluster-label", cluster ? `cluster ${cluster}` : "outside the lab");
    y += CLUSTER_HEAD;
    for (const [ns, nodes] of nss) {
      const perCol = new Map();
      for (const n of nodes) {
        const r = rank.get(n.id);
        if (!perCol.has(r)) perCol.set(r, []);
        perCol.get(r).push(n);
      }
      const rows = Math.max(...[...perCol.values()].map((l) => l.length));
      const h = NS_HEAD + rows * (NODE_H + ROW_GAP) - ROW_GAP + PAD;
      el("rect", { class: "ns-box", x: MARGIN + PAD, y, width: boxW + 2 * PAD, height: h, rx: 6 }, boxes);
      text(boxes, MARGIN + PAD + 8, y + 16, "ns-label", ns ? `namespace ${ns}` : "world");
      for (const [r, list] of perCol) {
        const top = y + NS_HEAD + ((rows - list.length) * (NODE_H + ROW_GAP)) / 2;
        list.forEach((n, i) => {
          const p = { x: x0 + r * (NODE_W + gap), y: top + i * (NODE_H + ROW_GAP), rank: r };
          pos.set(n.id, p);
          drawNode(nodeLayer, n, p, n.id === selected);
        });
      }
      y += h + PAD;
    }
    cbox.setAttribute("height", y - cy);
    y += MARGIN;
  }
  svg.setAttribute("width", width);
  svg.setAttribute("height", y);
  svg.setAttribute("viewBox", `0 0 ${width} ${y}`);
  drawEdges(edgeLayer, map.edges, pos);
}

function drawNode(layer, n, p, selected) {
  const world = n.id === "world";
  const g = el("g", {
    class: `node${world ? " world" : ""}${selected ? " selected" : ""}`,
    "data-id": n.id,
    transform: `translate(${p.x},${p.y})`,
  }, layer);
  el("title", {}, g).textContent = world
    ? "addresses outside the lab's pods"
    : `${n.id}\npods: ${n.pods.join(", ")}`;
  el("rect", { width: NODE_W, height: NODE_H, rx: 6 }, g);
  text(g, 10, 19, "node-name", ellipsis(n.name, 22));
  const sub = world ? "outside the pods"
    : n.pods.length === 1 && n.pods[0] === n.name ? "pod"
      : `${n.pods.length} pod${n.pods.length === 1 ? "" : "s"}`;
  text(g, 10, 36, "node-sub", sub);
  if (!world) g.addEventListener("click", () => toggleNodeFilter(n));
}

function drawEdges(layer, edges, pos) {
  // Spread the ends of several edges over a node's side, ordered by the other end's height.
  const outs = new Map();
  const ins = new Map();
  const forward = (e) => pos.get(e.to).rank > pos.get(e.from).rank;
  for (const e of edges) {
    if (!pos.has(e.from) || !pos.has(e.to) || !forward(e)) continue;
    if (!outs.has(e.from)) outs.set(e.from, []);
    if (!ins.has(e.to)) ins.set(e.to, []);
    outs.get(e.from).push(e);
    ins.get(e.to).push(e);
  }
  const slot = (list, e, key) => {
    list.sort((a, b) => pos.get(a[key]).y - pos.get(b[key]).y);
    return (NODE_H * (list.indexOf(e) + 1)) / (list.length + 1);
  };
  for (const e of edges) {
    const a = pos.get(e.from);
    const b = pos.get(e.to);
    if (!a || !b) continue;
    let d;
    let mid;
    if (e.from === e.to) {
      const x = a.x + NODE_W - 30;
      d = `M${x},${a.y} C${x - 10},${a.y - 40} ${x + 50},${a.y - 40} ${x + 20},${a.y}`;
      mid = { x: x + 15, y: a.y - 30 };
    } else if (forward(e)) {
      const x1 = a.x + NODE_W;
      const y1 = a.y + slot(outs.get(e.from), e, "to");
      const x2 = b.x;
      const y2 = b.y + slot(ins.get(e.to), e, "from");
      const dx = Math.max(40, (x2 - x1) / 2);
      d = `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`;
      mid = { x: (x1 + x2) / 2, y: (y1 + y2) / 2 };
    } else {
      // Against the flow of columns: over the top, from the source's top to the target's.
      const x1 = a.x + NODE_W / 2 + 12;
      const x2 = b.x + NODE_W / 2 - 12;
      const top = Math.min(a.y, b.y) - 40;
      d = `M${x1},${a.y} C${x1},${top} ${x2},${top} ${x2},${b.y}`;
      mid = { x: (x1 + x2) / 2, y: top + 10 };
    }
    const denied = e.dropped > 0;
    const warn = !denied && e.error > 0;
    const total = e.forwarded + e.dropped + e.error + e.audit;
    const g = el("g", {
      class: `edge ${denied ? "denied" : "allowed"}${e.error > 0 ? " has-errors" : ""}`,
      "data-from": e.from,
      "data-to": e.to,
      "data-forwarded": e.forwarded,
      "data-dropped": e.dropped,
      "data-error": e.error,
      "data-audit": e.audit,
    }, layer);
    el("title", {}, g).textContent = `${e.from} → ${e.to}\n` +
      `forwarded ${e.forwarded}, dropped ${e.dropped}, error ${e.error}, audit ${e.audit}\n` +
      `protocols: ${e.protocols.join(", ")}; ports: ${e.ports.join(", ")}` +
      (e.drop_reasons.length ? `\ndrop reasons: ${e.drop_reasons.join(", ")}` : "");
    el("path", {
      d,
      "stroke-width": (1.5 + Math.log10(total + 1)).toFixed(1),
      "marker-end": `url(#arrow-${denied ? "denied" : warn ? "warn" : "allowed"})`,
    }, g);
    drawLabel(g, mid, e);
  }
}

function drawLabel(g, mid, e) {
  const bg = el("rect", { class: "edge-label-bg", rx: 4 }, g);
  const t = el("text", { class: "edge-label", x: mid.x, y: mid.y + 4, "text-anchor": "middle" }, g);
  const parts = [
    [e.forwarded, "forwarded", "fwd"],
    [e.dropped, "dropped", "drop"],
    [e.error, "error", "err"],
    [e.audit, "audit", "audit"],
  ].filter(([n]) => n > 0);
  parts.forEach(([n, word, cls], i) => {
    if (i > 0) el("tspan", {}, t).textContent = " · ";
    el("tspan", { class: cls }, t).textContent = `${n}`;
    el("tspan", {}, t).textContent = ` ${word}`;
  });
  const box = t.getBBox();
  bg.setAttribute("x", box.x - 5);
  bg.setAttribute("y", box.y - 2);
  bg.setAttribute("width", box.width + 10);
  bg.setAttribute("height", box.height + 4);
}

// The workload the pod filter names as `NAMESPACE/WORKLOAD` (set by clicking it), if any.
function selectedNode(nodes) {
  const pod = $("#filters").elements.pod.value.trim();
  const n = nodes.find((n) => n.id !== "world" && `${n.namespace}/${n.name}` === pod);
  return n ? n.id : null;
}

// Clicking a workload filters by its pods (`pod=NAMESPACE/WORKLOAD` is a name prefix).
function toggleNodeFilter(n) {
  const input = $("#filters").elements.pod;
  const want = `${n.namespace}/${n.name}`;
  input.value = input.value === want ? "" : want;
  changed();
}

// === flow table ===

function renderTable(flows) {
  const rows = [];
  let top = newest;
  for (let i = flows.length - 1; i >= 0; i--) {
    const f = flows[i];
    if (f.time > top) top = f.time;
    const v = f.verdict.toLowerCase();
    const fresh = newest && f.time > newest ? " new" : "";
    const reason = f.drop_reason || f.error || "";
    const by = f.decided_by ? ` (${f.decided_by})` : "";
    const l7 = f.http
      ? `${f.http.method} ${f.http.path}${f.http.status != null ? ` → ${f.http.status}` : ""}`
      : "";
    const svc = f.service ? ` via ${f.service.namespace}/${f.service.name}` : "";
    rows.push(
      `<tr class="flow ${v}${fresh}" data-verdict="${esc(f.verdict)}">` +
      `<td title="${esc(f.time)} on ${esc(f.cluster)}/${esc(f.node)}, ${esc(f.direction.toLowerCase())}">${esc(clock(f.time))}</td>` +
      `<td title="${esc(peerTitle(f.source))}">${esc(peer(f.source, f.cluster))}</td>` +
      `<td title="${esc(peerTitle(f.destination))}${esc(svc)}, dialed ${esc(f.original_destination)}">${esc(peer(f.destination, f.cluster))}</td>` +
      `<td>${esc(f.protocol)} <span class="dir">${esc(f.direction.toLowerCase())}</span></td>` +
      `<td class="verdict">${esc(f.verdict)}</td>` +
      `<td title="${esc((f.policies || []).join("\n"))}">${esc(reason + (reason ? by : ""))}</td>` +
      `<td>${esc(l7)}</td>` +
      `<td class="num" title="${f.bytes_sent} bytes sent, ${f.bytes_received} received">` +
      `↑${esc(bytes(f.bytes_sent))} ↓${esc(bytes(f.bytes_received))}</td></tr>`,
    );
  }
  newest = top;
  $("#flows tbody").innerHTML = rows.length
    ? rows.join("")
    : '<tr><td class="empty" colspan="8">No flows match.</td></tr>';
}

function peer(p, cluster) {
  let s = p.pod ? `${p.namespace}/${p.pod}` : p.ip || "?";
  if (p.cluster && p.cluster !== cluster) s += `@${p.cluster}`;
  // Port 0: a connect the kernel refused before the socket had a port.
  return p.port ? `${s}:${p.port}` : s;
}

function peerTitle(p) {
  const parts = [];
  if (p.ip) parts.push(p.ip);
  if (p.workload) parts.push(`workload ${p.workload}`);
  if (p.node) parts.push(`node ${p.node}`);
  if (p.identity) parts.push(`identity ${p.identity}`);
  return parts.join(", ");
}

// `HH:MM:SS.mmm` in local time from an RFC 3339 time with up to nanoseconds.
function clock(t) {
  const m = /^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$/.exec(t);
  const d = new Date(m ? m[1] + (m[2] ? m[2].slice(0, 4) : "") + m[3] : t);
  if (Number.isNaN(d.getTime())) return t;
  const p = (n, w) => String(n).padStart(w, "0");
  return `${p(d.getHours(), 2)}:${p(d.getMinutes(), 2)}:${p(d.getSeconds(), 2)}.${p(d.getMilliseconds(), 3)}`;
}

function bytes(n) {
  if (n < 1024) return `${n}`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i++;
  } while (v >= 1024 && i < units.length - 1);
  return `${v.toFixed(1)}${units[i]}`;
}

function ellipsis(s, n) {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// === wiring ===

let debounce = null;
function changed() {
  saveToUrl();
  clearTimeout(debounce);
  debounce = setTimeout(() => refresh(true), 250);
}

async function start() {
  loadFromUrl();
  const form = $("#filters");
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    changed();
  });
  form.addEventListener("reset", () => setTimeout(changed, 0));
  $("#pause").addEventListener("change", () => refresh(true));
  try {
    const info = await fetchJson("api/info");
    $("#lab").textContent = info.lab;
    document.title = `Strait flows · ${info.lab}`;
  } catch (e) {
    showError(e.message);
  }
  await refresh(true);
  timer = setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
