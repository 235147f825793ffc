// The kcloud console: one page per hash route, drawn from the API with the user's key.
//
// Rules this file keeps:
// - Text from the server is only ever put in the page as text (el() makes text nodes; never
//   innerHTML), so a name with markup shows as that markup, and runs nothing.
// - The key lives in this tab's sessionStorage and goes out only as `Authorization: Bearer` to
//   this origin. Any 401 wipes the page and the key and returns to the login.
// - An unknown figure is blank with its reason as a tooltip, never 0; a modelled one is marked.
// - Actions a role may not take are not drawn; the API refuses them anyway.

const KEY = "kcloud.key";
const LIVE_MS = { overview: 2000, devices: 5000, device: 2000, deployment: 2000, chat: 2000 };

let me = null;          // whoami: {actor, role, tenant, insecure}
let timer = null;       // the current page's live refresh
let generation = 0;     // bumps on every navigation: late answers of a left page are dropped

// ---------------------------------------------------------------- DOM helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const $ = (id) => document.getElementById(id);
const main = () => $("main");

// One formatter per precision: toLocaleString builds a new one per call, and a table has thousands of cells.
const FORMATS = new Map();
function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value !== "number") return String(value);
  if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e7)) return value.toExponential(2);
  if (!FORMATS.has(digits)) FORMATS.set(digits, new Intl.NumberFormat("en-US", { maximumFractionDigits: digits }));
  return FORMATS.get(digits).format(value);
}
function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
// A run's id (a relative path) as URL path segments.
const runPath = (id) => id.split("/").map(encodeURIComponent).join("/");

// A figure cell: blank with the reason for unknowns, marked when modelled.
function figure(value, { reason = null, modelled = false, show = fmt } = {}) {
  if (value === null || value === undefined) return el("td", { class: "num unknown", title: reason || "unknown" });
  return el("td", { class: "num" + (modelled ? " modelled" : ""), title: modelled ? "modelled (emulated device)" : null },
    show(value));
}

function table(headers, rows, { id = null } = {}) {
  return el("div", { class: "scroll" }, el("table", { id },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : null }, h.label ?? h)))),
    el("tbody", {}, rows)));
}

function card(label, value, sub = null, id = null) {
  return el("div", { class: "card", id }, el("div", { class: "label" }, label),
    el("div", { class: "value" }, value), sub ? el("div", { class: "sub" }, sub) : null);
}

function errorBox(error) {
  return el("p", { class: "error", role: "alert" }, String(error.message || error));
}

// ---------------------------------------------------------------- the API
class ApiError extends Error {}

async function api(path, { method = "GET", body = undefined } = {}) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store" });
  if (response.status === 401) {
    signOut(key ? "Your key is not accepted (wrong, expired or revoked): sign in again." : "");
    throw new ApiError("signed out");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const why = data && (data.error || data.detail);
    throw new ApiError(`${response.status}: ${typeof why === "string" ? why : JSON.stringify(why)}`);
  }
  return data;
}

let plotly = null;
function loadPlotly() {  // only pages with charts pay for the chart library
  plotly ??= new Promise((resolve, reject) => {
    const script = el("script", { src: "assets/plotly.min.js" });
    script.addEventListener("load", () => resolve(window.Plotly));
    script.addEventListener("error", () => reject(new Error("could not load the chart library")));
    document.head.append(script);
  });
  return plotly;
}

async function plot(node, data, layout = {}) {
  const Plotly = await loadPlotly();
  const base = { margin: { t: 36, r: 16, b: 40, l: 56 }, height: 300 };
  await Plotly.react(node, data, { ...base, ...layout }, { displaylogo: false, responsive: true });
}

// ---------------------------------------------------------------- sign in and out
function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  stopLive();
  generation++;
  me = null;
  main().replaceChildren();
  $("top").hidden = true;
  $("insecure").hidden = true;
  $("login").hidden = false;
  $("login-message").textContent = message;
  $("key").value = "";
  $("key").focus();
}

async function signIn() {
  try {
    me = await api("/api/v1/whoami");
  } catch (error) {
    if (!(error instanceof ApiError && error.message === "signed out")) signOut(String(error.message || error));
    return false;
  }
  $("login").hidden = true;
  $("top").hidden = false;
  $("insecure").hidden = !me.insecure;
  $("who").textContent = me.insecure ? "no authentication" :
    `${me.actor} · ${me.role}${me.tenant ? ` · tenant ${me.tenant}` : ""}`;
  drawNav();
  return true;
}

const farmWide = () => !me.tenant;
const isAdmin = () => me.role === "admin";
const canChange = () => me.role !== "readonly";

// ---------------------------------------------------------------- navigation
const PAGES = [
  ["overview", "Overview", () => true],
  ["devices", "Devices", () => true],
  ["nodes", "Nodes", () => true],
  ["deployments", "Deployments", () => true],
  ["chat", "Chat models", () => true],
  ["bench", "Benchmarks", () => farmWide()],
  ["twin", "Twin", () => farmWide()],
  ["usage", "Usage", () => true],
  ["keys", "Keys", () => true],
  ["audit", "Audit", () => true],
];

function drawNav() {
  $("nav").replaceChildren(...PAGES.filter(([, , shown]) => shown()).map(([id, label]) =>
    el("a", { href: `#/${id}`, id: `nav-${id}` }, label)));
}

function stopLive() {
  if (timer) clearInterval(timer);
  timer = null;
}

function live(refresh, ms) {
  stopLive();
  timer = setInterval(() => { if (!document.hidden) refresh().catch(() => {}); }, ms);
}

async function route() {
  stopLive();
  const mine = ++generation;
  if (!me) return;
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const arg = rest.map(decodeURIComponent);
  const name = page || "overview";
  for (const a of $("nav").children) a.classList.toggle("active", a.id === `nav-${name}`);
  const draw = {
    overview: overviewPage, devices: devicesPage, device: devicePage, nodes: nodesPage,
    deployments: deploymentsPage, deployment: deploymentPage, bench: benchPage, run: runPage,
    compare: comparePage, usage: usagePage, keys: keysPage, audit: auditPage, chat: chatPage,
    twin: twinPage, "twin-run": twinRunPage,
  }[name];
  const page_ = el("div", { id: `page-${name}` });
  main().replaceChildren(page_);
  if (!draw) { page_.append(errorBox(`no page ${name}`)); return; }
  try {
    await draw(page_, arg, () => mine === generation);
  } catch (error) {
    if (mine === generation && me) page_.append(errorBox(error));
  }
  if (mine === generation) page_.dataset.ready = "1";  // tests and the benchmark wait for this
}

// ---------------------------------------------------------------- overview
function groupTable(title, groups) {
  const rows = Object.entries(groups).sort().map(([name, g]) => el("tr", {},
    el("td", {}, name), el("td", { class: "num" }, g.devices), el("td", { class: "num" }, g.emulated),
    ...["fp16_bf16_pflops", "int8_pops", "tdp_watts"].map((f) => el("td", {
      class: "num" + (g.totals[f].known === null ? " unknown" : ""),
      title: g.totals[f].unknown_devices ? `${g.totals[f].unknown_devices} device(s) without this figure in the catalog` : null,
    }, g.totals[f].known === null ? "unknown" : g.totals[f].text))));
  return [el("h2", {}, title), table(["", { label: "devices", num: 1 }, { label: "emulated", num: 1 },
    { label: "FP16/BF16", num: 1 }, { label: "INT8", num: 1 }, { label: "TDP", num: 1 }], rows)];
}

async function overviewPage(page) {
  const data = await api("/api/v1/console/overview");
  const c = data.capacity;
  const traffic = el("div", { class: "cards", id: "traffic" });
  const drawTraffic = (t, d) => traffic.replaceChildren(
    card("requests/s now", fmt(t.requests_per_s), `over the last ${t.window_s} s`, "requests-now"),
    card("errors/s now", fmt(t.errors_per_s), null, "errors-now"),
    card("deployments", d.total, Object.entries(d.by_status).map(([s, n]) => `${n} ${s}`).join(", ") || "none"),
    card("replicas running", `${d.replicas_running} / ${d.replicas_desired}`, "running / desired"));
  drawTraffic(data.traffic, data.deployments);
  const devices = data.devices;
  page.append(
    el("h1", {}, "Farm overview"),
    el("div", { class: "cards" },
      card("FP16/BF16", c.totals.fp16_bf16_pflops.text, `${c.devices} devices, ${c.emulated} emulated`),
      card("INT8", c.totals.int8_pops.text),
      card("TDP", c.totals.tdp_watts.text, "catalog maximum board power"),
      card("devices", `${devices.healthy} healthy`, `${devices.draining} draining, ${devices.failed} failed`, "device-states")),
    el("h2", {}, "Now"), traffic,
    el("p", { class: "note" }, "Capacity is the catalog's sourced peak figures summed; a device whose chip lacks a figure is " +
      "counted as unknown, never as zero (≥ marks a partial sum). Emulated devices exist only in a farm file."),
    ...groupTable("By origin", c.by_origin), ...groupTable("By sector", c.by_sector),
    ...groupTable("By cloud", c.by_cloud), ...groupTable("By vendor", c.by_vendor), ...groupTable("By chip", c.by_chip));
  live(async () => {
    const fresh = await api("/api/v1/console/overview");
    drawTraffic(fresh.traffic, fresh.deployments);
  }, LIVE_MS.overview);
}

// ---------------------------------------------------------------- devices
const DEVICE_COLUMNS = [
  { key: "uid", label: "device" }, { key: "node", label: "node" }, { key: "vendor", label: "vendor" },
  { key: "chip", label: "chip" }, { key: "state", label: "state" }, { key: "replicas", label: "replicas", num: 1 },
  { key: "utilization", label: "util %", num: 1, show: (v) => fmt(v * 100, 1) },
  { key: "power_watts", label: "power W", num: 1, show: (v) => fmt(v, 1) },
  { key: "energy_joules", label: "energy kJ", num: 1, show: (v) => fmt(v / 1000, 1) },
  { key: "memory_used_bytes", label: "memory used", num: 1, show: bytes },
  { key: "memory_bytes", label: "memory", num: 1, show: bytes },
  { key: "temperature_celsius", label: "temp °C", num: 1, show: (v) => fmt(v, 0) },
];
const READINGS = new Set(["utilization", "power_watts", "energy_joules", "memory_used_bytes", "temperature_celsius"]);

function deviceRow(d) {
  const cells = DEVICE_COLUMNS.map((col) => {
    if (col.key === "uid") return el("td", {}, el("a", { href: `#/device/${encodeURIComponent(d.uid)}` }, d.uid),
      d.emulated ? el("span", { class: "note", title: "exists only in a farm file; its figures are modelled" }, " emulated") : null);
    if (col.key === "state") return el("td", { class: `state-${d.state}`, title: d.health_reason || d.drain_reason }, d.state);
    if (READINGS.has(col.key)) return figure(d[col.key], { reason: d.reasons[col.key], modelled: d.modelled, show: col.show });
    if (col.num) return figure(d[col.key], { show: col.show || fmt });
    return el("td", {}, d[col.key] ?? "");
  });
  return el("tr", { "data-uid": d.uid }, cells);
}

// Rows drawn at first and added per "show more": a 1,000-device farm's table is sorted and filtered
// whole, but only what a screen can show is built, so the page is ready in well under a second.
const DEVICE_PAGE_ROWS = 200;

async function devicesPage(page, _arg, current) {
  let rows = await api("/api/v1/console/devices");
  let limit = DEVICE_PAGE_ROWS;
  const sort = { key: "uid", dir: 1 };
  const filters = { node: "", vendor: "", chip: "", state: "", text: "" };
  const drawn = new Map();   // uid -> [the row's JSON, its <tr>]: a live update rebuilds changed rows only
  const body = el("tbody");
  const count = el("span", { class: "note", id: "device-count" });
  const more = el("span", { class: "filters" });
  const selects = Object.fromEntries(["node", "vendor", "chip", "state"].map((key) => [key,
    el("select", { id: `filter-${key}`, onchange: (e) => { filters[key] = e.target.value; limit = DEVICE_PAGE_ROWS; draw(); } })]));
  let optionsSeen = "";
  function drawOptions() {   // the choices follow the farm: a node that joins appears without a reload
    const choices = Object.fromEntries(Object.keys(selects).map((key) => [key, [...new Set(rows.map((r) => r[key] ?? ""))].sort()]));
    const seen = JSON.stringify(choices);
    if (seen === optionsSeen) return;
    optionsSeen = seen;
    for (const [key, select] of Object.entries(selects)) {
      select.replaceChildren(el("option", { value: "" }, `every ${key}`), ...choices[key].map((v) => el("option", { value: v }, v)));
      select.value = filters[key];
    }
  }
  const head = el("tr", {}, DEVICE_COLUMNS.map((col) => el("th", {
    class: `sortable${col.num ? " num" : ""}`, "data-key": col.key,
    onclick: () => { sort.dir = sort.key === col.key ? -sort.dir : 1; sort.key = col.key; draw(); },
  }, col.label)));
  function compare(a, b) {
    const x = a[sort.key], y = b[sort.key];
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;   // unknowns last, whichever the direction
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sort.dir;
  }
  function rowFor(d) {
    const json = JSON.stringify(d);
    const known = drawn.get(d.uid);
    if (known && known[0] === json) return known[1];
    const tr = deviceRow(d);
    drawn.set(d.uid, [json, tr]);
    return tr;
  }
  function draw() {
    const text = filters.text.toLowerCase();
    const shown = rows.filter((r) => ["node", "vendor", "chip", "state"].every((k) => !filters[k] || r[k] === filters[k]) &&
      (!text || r.uid.toLowerCase().includes(text) || (r.name || "").toLowerCase().includes(text))).sort(compare);
    const visible = shown.slice(0, limit);
    body.replaceChildren(...visible.map(rowFor));
    for (const th of head.children) {
      th.classList.toggle("sorted-asc", th.dataset.key === sort.key && sort.dir === 1);
      th.classList.toggle("sorted-desc", th.dataset.key === sort.key && sort.dir === -1);
    }
    count.textContent = `${shown.length} of ${rows.length} devices` +
      (visible.length < shown.length ? `, the first ${visible.length} shown` : "");
    count.dataset.total = rows.length;
    const rest = shown.length - visible.length;
    more.replaceChildren(...(rest > 0 ? [
      el("button", { class: "plain", id: "devices-more", onclick: () => { limit += DEVICE_PAGE_ROWS; draw(); } },
        `Show ${Math.min(rest, DEVICE_PAGE_ROWS)} more`),
      el("button", { class: "plain", id: "devices-all", onclick: () => { limit = Infinity; draw(); } }, `Show all ${shown.length}`),
    ] : []));
  }
  page.append(el("h1", {}, "Devices"),
    el("div", { class: "filters" }, Object.values(selects),
      el("input", { id: "filter-text", type: "search", placeholder: "device or name",
        oninput: (e) => { filters.text = e.target.value; limit = DEVICE_PAGE_ROWS; draw(); } }),
      count),
    el("p", { class: "note" }, "Live, every few seconds. Italic figures marked M are modelled (emulated devices, from the " +
      "catalog), not measured. A blank cell has no sensor: hover it for why."),
    el("div", { class: "scroll" }, el("table", { id: "devices" }, el("thead", {}, head), body)), more);
  drawOptions();
  draw();
  live(async () => {
    const fresh = await api("/api/v1/console/devices");
    if (!current()) return;
    rows = fresh;
    drawOptions();
    draw();
  }, LIVE_MS.devices);
}

async function devicePage(page, [uid], current) {
  const path = `/api/v1/console/devices/${encodeURIComponent(uid)}/history`;
  let history = await api(path);
  const device = history;  // its placement state as of now; its readings as of the last tick
  const state = el("p", { id: "device-state", class: `state-${device.state}` }, device.state,
    device.health_reason ? ` — ${device.health_reason}` : "", device.drain_reason ? ` — drained: ${device.drain_reason}` : "");
  const actions = el("div", { class: "filters" });
  if (isAdmin()) {
    const reason = el("input", { id: "drain-reason", placeholder: "reason (optional)", maxlength: 500 });
    const act = async (what) => {
      try {
        await api(`/api/v1/devices/${encodeURIComponent(uid)}/${what}`, { method: "POST", body: what === "drain" ? { reason: reason.value || null } : undefined });
        route();
      } catch (error) { actions.append(errorBox(error)); }
    };
    if (device.state === "draining") actions.append(el("button", { id: "undrain", onclick: () => act("undrain") }, "Undrain"));
    else actions.append(reason, el("button", { id: "drain", class: "danger", onclick: () => act("drain") }, "Drain"));
  }
  const replicas = el("div");
  const drawReplicas = () => replicas.replaceChildren(history.replicas.length ? table(["deployment", "replica", "state"],
    history.replicas.map((r) => el("tr", {}, el("td", {}, el("a", { href: `#/deployment/${encodeURIComponent(r.deployment)}` }, r.deployment)),
      el("td", {}, r.id), el("td", {}, r.state)))) : el("p", { class: "note" }, "No replica runs here."));
  const charts = ["utilization", "power_watts", "energy_joules", "memory_used_bytes", "temperature_celsius"]
    .map((key) => [key, el("div", { class: "plot", id: `chart-${key}` })]);
  async function drawCharts() {
    const times = history.t.map((t) => new Date(t * 1000));
    for (const [key, node] of charts) {
      const label = key.replace(/_/g, " ");
      if (!history[key].some((v) => v !== null)) {  // no sensor: say so, draw no empty axes
        node.replaceChildren(el("p", { class: "note" }, `${label}: no reading. ${history.reasons[key] || ""}`));
        node.classList.add("empty");
        continue;
      }
      await plot(node, [{ x: times, y: history[key], type: "scatter", mode: "lines", connectgaps: false }],
        { title: { text: `${label}${history.modelled ? " (modelled)" : ""}`, font: { size: 13 } }, height: 240 });
    }
  }
  page.append(el("h1", {}, `Device ${uid}`),
    el("p", {}, `${device.name || ""} · ${device.vendor || ""} ${device.chip || ""} on node ${device.node || ""}`,
      device.emulated ? " · emulated: every figure is modelled from the catalog" : ""),
    state, actions, el("h2", {}, "Replicas"), replicas, el("h2", {}, "History"),
    el("div", { class: "plots" }, charts.map(([, node]) => node)));
  drawReplicas();
  await drawCharts();
  live(async () => {
    const fresh = await api(path);
    if (current()) { history = fresh; drawReplicas(); await drawCharts(); }
  }, LIVE_MS.device);
}

async function nodesPage(page) {
  const devices = await api("/api/v1/console/devices");
  const nodes = new Map();
  for (const d of devices) {
    const n = nodes.get(d.node) || { node: d.node, sector: d.sector, cloud: d.cloud, devices: 0, emulated: 0,
      healthy: 0, draining: 0, failed: 0, replicas: 0, chips: new Set() };
    n.devices++; n.emulated += d.emulated; n[d.state]++; n.replicas += d.replicas; n.chips.add(d.chip);
    nodes.set(d.node, n);
  }
  page.append(el("h1", {}, "Nodes"),
    el("p", { class: "note" }, "Every node whose devices the control plane knows: this machine, farm files' nodes and a cluster's joined nodes."),
    table(["node", "sector", "cloud", "chips", { label: "devices", num: 1 }, { label: "emulated", num: 1 },
      { label: "healthy", num: 1 }, { label: "draining", num: 1 }, { label: "failed", num: 1 }, { label: "replicas", num: 1 }],
    [...nodes.values()].sort((a, b) => a.node.localeCompare(b.node)).map((n) => el("tr", {},
      el("td", {}, n.node), el("td", {}, n.sector ?? ""), el("td", {}, n.cloud ?? ""), el("td", {}, [...n.chips].join(", ")),
      ...[n.devices, n.emulated, n.healthy, n.draining, n.failed, n.replicas].map((v) => el("td", { class: "num" }, v)))),
    { id: "nodes" }));
}

// ---------------------------------------------------------------- deployments
async function deploymentsPage(page) {
  const deployments = await api("/api/v1/deployments");
  page.append(el("h1", {}, "Deployments"),
    deployments.length ? table(["name", "model", "tenant", "status", { label: "running", num: 1 }, { label: "desired", num: 1 }, "policy", "reason"],
      deployments.map((d) => el("tr", {},
        el("td", {}, el("a", { href: `#/deployment/${encodeURIComponent(d.name)}` }, d.name)), el("td", {}, `${d.model} v${d.version}`),
        el("td", {}, d.tenant ?? ""), el("td", {}, d.status), el("td", { class: "num" }, d.running), el("td", { class: "num" }, d.replicas),
        el("td", {}, d.policy), el("td", {}, d.reason ?? ""))), { id: "deployments" })
      : el("p", { class: "note" }, "No deployments."));
  if (!canChange()) return;
  const models = await api("/v1/models").then((m) => m.data.map((x) => x.id)).catch(() => []);
  const message = el("div");
  const form = el("form", { class: "inline", id: "create-deployment" },
    el("input", { name: "model", placeholder: "model", list: "models", required: true }),
    el("datalist", { id: "models" }, models.map((m) => el("option", { value: m }))),
    el("input", { name: "name", placeholder: "name (default: the model's)" }),
    el("input", { name: "replicas", type: "number", min: 0, value: 1, style: "width:5rem" }),
    el("button", { type: "submit" }, "Create"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = new FormData(form);
    const body = { model: f.get("model"), replicas: Number(f.get("replicas")) };
    if (f.get("name")) body.name = f.get("name");
    try {
      const created = await api("/api/v1/deployments", { method: "POST", body });
      location.hash = `#/deployment/${encodeURIComponent(created.name)}`;
    } catch (error) { message.replaceChildren(errorBox(error)); }
  });
  page.append(el("h2", {}, "Create a deployment"), form, message);
}

async function deploymentPage(page, [name], current) {
  const enc = encodeURIComponent(name);
  const [d, explain, events] = await Promise.all([api(`/api/v1/deployments/${enc}`),
    api(`/api/v1/deployments/${enc}/placement`), api(`/api/v1/events?deployment=${enc}&limit=200`)]);
  const status = el("p", { id: "deployment-status" });
  const replicas = el("div");
  function drawState(d) {  // the status line and the replicas table, redrawn with the live figures
    status.replaceChildren(`${d.model} v${d.version} · ${d.status}`, d.tenant ? ` · tenant ${d.tenant}` : "",
      ` · ${d.running} of ${d.replicas} replicas running`, d.status !== "ready" && d.reason ? ` · ${d.reason}` : "");
    replicas.replaceChildren(table(["replica", "device", "node", "state", "serves", "started", "last error"],
      d.replica_list.map((r) => el("tr", {}, el("td", {}, r.id),
        el("td", {}, el("a", { href: `#/device/${encodeURIComponent(r.device)}` }, r.device), r.emulated ? " (emulated)" : "",
          r.stage_devices ? ` + ${r.stage_devices.slice(1).join(", ")}` : ""),
        el("td", {}, r.node), el("td", {}, r.state), el("td", {}, r.serves ?? ""), el("td", {}, when(r.started_at)),
        el("td", {}, r.last_error ?? ""))), { id: "replicas" }));
  }
  drawState(d);
  page.append(el("h1", {}, `Deployment ${d.name}`), status);
  if (canChange()) {
    const message = el("div");
    const scale = el("form", { class: "inline", id: "scale" },
      el("label", {}, "replicas ", el("input", { name: "replicas", type: "number", min: 0, value: d.replicas, style: "width:5rem" })),
      el("button", { type: "submit" }, "Scale"),
      el("button", { type: "button", class: "danger", id: "delete", onclick: async () => {
        if (!confirm(`Delete deployment ${d.name}? Its replicas stop.`)) return;
        try { await api(`/api/v1/deployments/${enc}`, { method: "DELETE" }); location.hash = "#/deployments"; }
        catch (error) { message.replaceChildren(errorBox(error)); }
      } }, "Delete"));
    scale.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api(`/api/v1/deployments/${enc}/scale`, { method: "POST", body: { replicas: Number(new FormData(scale).get("replicas")) } });
        route();
      } catch (error) { message.replaceChildren(errorBox(error)); }
    });
    page.append(scale, message);
  }
  const charts = { rate: el("div", { class: "plot", id: "chart-rate" }), latency: el("div", { class: "plot", id: "chart-latency" }),
    batch: el("div", { class: "plot", id: "chart-batch" }) };
  page.append(el("h2", {}, "Live"), el("div", { class: "plots" }, Object.values(charts)));
  const note = el("p", { class: "note" });
  page.append(note);
  async function drawLive() {
    const [s, now] = await Promise.all([api(`/api/v1/console/deployments/${enc}/live`), api(`/api/v1/deployments/${enc}`)]);
    if (!current()) return;
    drawState(now);
    note.textContent = `One point per ${s.tick_s} s. ${s.latency_note}.`;
    const x = s.t.map((t) => new Date(t * 1000));
    await plot(charts.rate, [{ x, y: s.requests_per_s || [], name: "requests/s", mode: "lines" },
      { x, y: s.errors_per_s || [], name: "errors/s", mode: "lines" }], { title: { text: "requests and errors per second", font: { size: 13 } } });
    await plot(charts.latency, [{ x, y: s.p50_ms || [], name: "p50", mode: "lines" }, { x, y: s.p99_ms || [], name: "p99", mode: "lines" }],
      { title: { text: "latency at the gateway (ms)", font: { size: 13 } } });
    await plot(charts.batch, [{ x, y: s.mean_batch_rows || [], name: "rows per batch", mode: "lines" }],
      { title: { text: "mean batch size (rows)", font: { size: 13 } } });
    if (s.engine) await drawEngine(s.engine);
  }
  const engineCharts = {};
  async function drawEngine(e) {  // a chat model: what its engines measure, one point per tick
    if (!engineCharts.ttft) {
      for (const id of ["ttft", "tokens", "queue"]) engineCharts[id] = el("div", { class: "plot", id: `chart-${id}` });
      page.insertBefore(el("div", { class: "plots", id: "engine-plots" }, Object.values(engineCharts)), note);
    }
    const x = e.t.map((t) => new Date(t * 1000));
    const line = (y, name) => ({ x, y: y || [], name, mode: "lines" });
    await plot(engineCharts.ttft, [line(e.ttft_p50_ms, "TTFT p50"), line(e.ttft_p99_ms, "TTFT p99"),
      line(e.inter_token_p50_ms, "inter-token p50")], { title: { text: "engine: time to first token and between tokens (ms)", font: { size: 13 } } });
    await plot(engineCharts.tokens, [line(e.output_tokens_per_s, "output tokens/s"), line(e.prompt_tokens_per_s, "prompt tokens/s")],
      { title: { text: "engine: tokens per second", font: { size: 13 } } });
    await plot(engineCharts.queue, [line(e.running, "running"), line(e.waiting, "waiting")],
      { title: { text: "engine: requests running and waiting", font: { size: 13 } } });
  }
  page.append(el("h2", {}, "Replicas"), replicas);
  if (explain.pipeline) {
    page.append(el("h2", {}, `Pipeline: ${explain.pipeline.stages.length} stages, balance ${fmt(explain.pipeline.balance)}`),
      table(["stage", { label: "cost share", num: 1 }, { label: "memory (modelled)", num: 1 }],
        explain.pipeline.stages.map((s) => el("tr", {}, el("td", {}, s.index), el("td", { class: "num" }, fmt(s.cost_share)),
          el("td", { class: "num" }, bytes(s.memory_bytes))))));
  }
  page.append(el("h2", {}, "Placement: why each replica is where it is"));
  for (const p of explain.placements) {
    page.append(el("p", {}, `${when(p.at)} · ${p.trigger} · policy ${p.policy} · placed ${p.placed} of ${p.requested} · ${p.outcome}`,
      p.reason ? ` · ${p.reason}` : ""),
    table(["device", { label: "chosen", num: 1 }, "eligible", { label: "score", num: 1 }, { label: "samples/J", num: 1 }, "reason"],
      p.candidates.map((c) => el("tr", {}, el("td", {}, c.device), el("td", { class: "num" }, c.chosen), el("td", {}, c.eligible ? "yes" : "no"),
        figure(c.score), figure(c.perf_per_watt, { modelled: c.perf_modelled }), el("td", {}, c.reason))), { id: `placement-${p.id}` }));
  }
  page.append(el("h2", {}, "Events"), table(["at", "kind", "device", "replica", "message"],
    events.slice().reverse().map((e) => el("tr", {}, el("td", {}, when(e.at)), el("td", {}, e.kind), el("td", {}, e.device ?? ""),
      el("td", {}, e.replica ?? ""), el("td", {}, e.message))), { id: "events" }));
  await drawLive();
  live(drawLive, LIVE_MS.deployment);
}

// ---------------------------------------------------------------- benchmarks
function validity(run) {
  if (run.error) return el("span", { class: "bad" }, "unreadable");
  if (!run.complete) return el("span", { class: "warn" }, "INCOMPLETE");
  if (!run.validity) return el("span", { class: "note" }, run.mode === "accuracy" ? "n/a (accuracy run)" : "");
  return el("span", { class: run.validity === "VALID" ? "ok" : "bad" }, run.validity);
}

async function benchPage(page) {
  const runs = await api("/api/v1/console/bench");
  const picked = [];
  const compare = el("button", { id: "compare", disabled: true, onclick: () => {
    location.hash = `#/compare/${encodeURIComponent(picked[0])}/${encodeURIComponent(picked[1])}`;
  } }, "Compare the two picked");
  page.append(el("h1", {}, "Benchmarks"),
    el("p", { class: "note" }, "kcloud bench run results on this server's machine. Validity is LoadGen's own verdict; " +
      "\"MLPerf rules\" says whether the run's settings followed MLPerf's (a VALID run may not have)."), compare,
    runs.length ? table(["", "written", "model", "scenario", "mode", "device", "LoadGen validity", "MLPerf rules", { label: "metric", num: 1 }],
      runs.map((r) => el("tr", {},
        el("td", {}, el("input", { type: "checkbox", "data-run": r.id, disabled: !!r.error, onchange: (e) => {
          if (e.target.checked) picked.push(r.id); else picked.splice(picked.indexOf(r.id), 1);
          compare.disabled = picked.length !== 2;
        } })),
        el("td", {}, el("a", { href: `#/run/${encodeURIComponent(r.id)}` }, when(r.written_at))),
        el("td", {}, r.error ? r.error : `${r.model} v${r.model_version ?? "?"}`), el("td", {}, r.scenario ?? ""), el("td", {}, r.mode ?? ""),
        el("td", {}, r.device ?? ""), el("td", {}, validity(r)), el("td", { class: r.rules_followed === false ? "warn" : "" }, r.mlperf_rules ?? ""),
        el("td", { class: "num" }, r.value === null || r.value === undefined ? "" : `${fmt(r.value)} ${r.unit ?? ""}`))), { id: "runs" })
      : el("p", { class: "note" }, "No results yet: kcloud bench run writes them."));
}

async function drawFigures(page, data, id = "bench-plots") {
  const plots = el("div", { class: "plots", id });
  page.append(el("h2", {}, "Plots"), plots, ...(data.figure_notes || []).map((n) => el("p", { class: "note" }, n)));
  for (const f of data.figures) {
    const node = el("div", { class: "plot" });
    plots.append(node);
    const title = typeof f.layout.title === "object" ? { ...f.layout.title, font: { size: 12 } } : f.layout.title;
    await plot(node, f.data, { ...f.layout, title, height: f.layout.height || 340 });
  }
}

async function runPage(page, [id]) {
  const run = await api(`/api/v1/console/bench/run/${runPath(id)}`);
  page.append(el("h1", {}, `Run ${run.id}`),
    el("p", {}, `${run.model} v${run.model_version ?? "?"} · ${run.scenario} / ${run.mode} · ${run.device} · `, validity(run),
      ` · MLPerf rules: ${run.mlperf_rules}`),
    table(["figure", { label: "value", num: 1 }], run.rows.map((r) => el("tr", {}, el("td", {}, r.label), figure(r.value))), { id: "run-figures" }),
    ...run.notes.map((n) => el("p", { class: "note" }, n)));
  await drawFigures(page, run);
}

async function comparePage(page, [a, b]) {
  const data = await api(`/api/v1/console/bench/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  const delta = (row) => {
    if (typeof row.a !== "number" || typeof row.b !== "number") return el("td");
    const diff = row.b - row.a;
    const better = diff === 0 ? "" : (diff < 0) === row.lower_is_better ? "better" : "worse";
    return el("td", { class: `num ${better}` }, `${diff > 0 ? "+" : ""}${fmt(diff)}${row.a ? ` (${((diff / row.a) * 100).toFixed(1)}%)` : ""}`);
  };
  page.append(el("h1", {}, "Two runs side by side"),
    table(["", "A", "B", "B − A"], [
      ["run", data.a.id, data.b.id], ["device", data.a.device, data.b.device], ["model", data.a.model, data.b.model],
      ["scenario / mode", `${data.a.scenario} / ${data.a.mode}`, `${data.b.scenario} / ${data.b.mode}`],
    ].map(([label, x, y]) => el("tr", {}, el("td", {}, label), el("td", {}, x), el("td", {}, y), el("td")))
      .concat([el("tr", {}, el("td", {}, "LoadGen validity"), el("td", {}, validity(data.a)), el("td", {}, validity(data.b)), el("td")),
        el("tr", {}, el("td", {}, "MLPerf rules"), el("td", {}, data.a.mlperf_rules), el("td", {}, data.b.mlperf_rules), el("td"))])
      .concat(data.rows.map((r) => el("tr", {}, el("td", {}, r.label), figure(r.a), figure(r.b), delta(r)))), { id: "compare-table" }),
    ...data.notes.map((n) => el("p", { class: "warn" }, n)));
  await drawFigures(page, data);
}

// ---------------------------------------------------------------- chat models
const CHAT_COLUMNS = [
  ["output_tokens_per_s", "output tokens/s", 1], ["prompt_tokens_per_s", "prompt tokens/s", 1],
  ["ttft_p50_ms", "TTFT p50 ms", 1], ["ttft_p99_ms", "TTFT p99 ms", 1], ["inter_token_p50_ms", "inter-token p50 ms", 1],
  ["finished_per_s", "finished/s", 2], ["running", "running", 0], ["waiting", "waiting", 0], ["kv_cache_usage", "KV cache", 3],
];

async function chatPage(page, _arg, current) {
  const body = el("tbody");
  const note = el("p", { class: "note" });
  page.append(el("h1", {}, "Chat models"), note,
    el("div", { class: "scroll" }, el("table", { id: "chat-models" },
      el("thead", {}, el("tr", {}, ["deployment", "model", "tenant", "status", "engine", { label: "replicas", num: 1 },
        ...CHAT_COLUMNS.map(([, label]) => ({ label, num: 1 }))].map((h) => el("th", { class: h.num ? "num" : null }, h.label ?? h)))),
      body)));
  async function draw() {
    const data = await api("/api/v1/console/chat");
    if (!current()) return;
    note.textContent = `Generative deployments served by an LLM engine. ${data.note}; one point per ${data.tick_s} s. ` +
      "Blank: no figure yet (an engine's rates need two scrapes) or one the engine does not report.";
    body.replaceChildren(...data.deployments.map((d) => el("tr", { "data-deployment": d.deployment },
      el("td", {}, el("a", { href: `#/deployment/${encodeURIComponent(d.deployment)}` }, d.deployment)),
      el("td", {}, `${d.model} v${d.version}`), el("td", {}, d.tenant ?? ""), el("td", {}, d.status), el("td", {}, d.engine ?? ""),
      el("td", { class: "num" }, `${d.running} / ${d.replicas}`),
      ...CHAT_COLUMNS.map(([key, , digits]) => figure(d.now ? d.now[key] : null,
        { reason: d.now ? "the engine does not report it, or nothing happened this tick" : "no engine figures yet",
          show: (v) => fmt(v, digits) })))));
    if (!data.deployments.length) body.append(el("tr", {}, el("td", { colspan: 6 + CHAT_COLUMNS.length, class: "note" },
      "No chat models are deployed.")));
  }
  await draw();
  live(draw, LIVE_MS.chat);
}

// ---------------------------------------------------------------- twin runs
async function twinPage(page) {
  const runs = await api("/api/v1/console/twin");
  page.append(el("h1", {}, "Digital-twin runs"),
    el("p", { class: "note" }, "kcloud twin run results on this server's machine. Every figure is modelled by the twin, " +
      "not measured (docs/twin.md says how close it comes to measured runs)."),
    runs.length ? table(["written", "farm", { label: "simulated s", num: 1 }, { label: "deployments", num: 1 },
      { label: "offered req/s", num: 1 }, { label: "answered req/s", num: 1 }, { label: "refused", num: 1 },
      { label: "mean W", num: 1 }, { label: "warnings", num: 1 }],
    runs.map((r) => el("tr", {},
      el("td", {}, el("a", { href: `#/twin-run/${runPath(r.id)}` }, when(r.written_at))),
      ...(r.error ? [el("td", { colspan: 8, class: "bad" }, r.error)] : [
        el("td", {}, r.farm), figure(r.duration_s), figure(r.deployments), figure(r.offered_rps, { modelled: true }),
        figure(r.throughput_rps, { modelled: true }), figure(r.refused, { modelled: true }),
        figure(r.mean_power_w, { modelled: true, reason: "no device with a known TDP" }), figure(r.warnings)]))), { id: "twin-runs" })
      : el("p", { class: "note" }, "No twin runs yet: kcloud twin run writes them."));
}

async function twinRunPage(page, rest) {
  const run = await api(`/api/v1/console/twin/run/${runPath(rest.join("/"))}`);
  const energy = run.energy;
  page.append(el("h1", {}, `Twin run ${run.id}`),
    el("p", {}, el("span", { class: "modelled-tag" }, "MODELLED"), ` ${run.farm} · ${fmt(run.duration_s)} s simulated · ` +
      `seed ${run.seed} · ${fmt(run.requests, 0)} requests · ${run.basis}`),
    el("h2", {}, "Deployments"),
    table(["deployment", "model", { label: "replicas", num: 1 }, { label: "offered req/s", num: 1 }, { label: "answered req/s", num: 1 },
      { label: "p50 ms", num: 1 }, { label: "p99 ms", num: 1 }, { label: "p99.9 ms", num: 1 }, { label: "429", num: 1 },
      { label: "504", num: 1 }, { label: "503", num: 1 }, { label: "502", num: 1 }, "placement"],
    run.deployments.map((d) => el("tr", {}, el("td", {}, d.name), el("td", {}, d.model), figure(d.replicas.length),
      ...[d.offered_rps, d.throughput_rps, d.latency_ms.p50, d.latency_ms.p99, d.latency_ms["p99.9"]].map((v) => figure(v, { modelled: true })),
      ...[d.shed_429, d.timed_out_504, d.no_replica_503 + (d.over_client_cap_503 || 0), d.failed_502].map((v) => figure(v, { modelled: true })),
      el("td", {}, d.placement))), { id: "twin-deployments" }),
    el("h2", {}, "Energy"),
    el("p", {}, `Farm energy ${fmt(energy.energy_j)} J, mean power ${fmt(energy.mean_power_w)} W, ` +
      `${fmt(energy.joules_per_answered_request)} J per answered request (modelled). ${energy.note ?? ""}`));
  await drawFigures(page, run, "twin-plots");
  page.append(el("h2", {}, `Devices (${run.devices.length} of ${run.devices_total}, those with replicas first)`),
    table(["device", "chip", "emulated", { label: "utilisation", num: 1 }, { label: "mean W", num: 1 }, { label: "energy J", num: 1 }, "power"],
      run.devices.map((d) => el("tr", {}, el("td", {}, d.uid), el("td", {}, d.chip), el("td", {}, d.emulated ? "yes" : "no"),
        figure(d.utilisation, { modelled: true }), figure(d.mean_power_w, { modelled: true, reason: "TDP unknown" }),
        figure(d.energy_j, { modelled: true, reason: "TDP unknown" }), el("td", {}, d.power_basis ?? ""))), { id: "twin-devices" }),
    el("h2", {}, "Placement and events"), el("ul", { id: "twin-events" }, run.events.map((e) => el("li", {}, e))));
  if (run.warning_list.length) page.append(el("h2", {}, "Warnings"), el("ul", {}, run.warning_list.map((w) => el("li", { class: "warn" }, w))));
}

// ---------------------------------------------------------------- usage, keys, audit
function csvCell(value) {
  let text = value === null || value === undefined ? "" : String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;  // a spreadsheet must not read a cell as a formula
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

const USAGE_FIELDS = ["day", "tenant", "key", "deployment", "requests", "samples", "errors", "device_seconds",
  "prompt_tokens", "completion_tokens", "energy_joules", "energy_joules_modelled"];

async function usagePage(page) {
  const since = el("input", { type: "date", id: "usage-since" });
  const until = el("input", { type: "date", id: "usage-until" });
  const out = el("div");
  const form = el("form", { class: "inline" }, el("label", {}, "from ", since), el("label", {}, "to ", until),
    el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (event) => { event.preventDefault(); draw().catch((e) => out.replaceChildren(errorBox(e))); });
  page.append(el("h1", {}, "Usage"), el("p", { class: "note" }, farmWide() ? "Every tenant's usage." : `Usage of tenant ${me.tenant}.`), form, out);
  if (farmWide()) {
    const tenants = await api("/api/v1/tenants");
    page.append(el("h2", {}, "Tenants"), table(["tenant", "description", "created", "quota", "reserved"],
      tenants.map((t) => el("tr", {}, el("td", {}, t.name), el("td", {}, t.description ?? ""), el("td", {}, when(t.created_at)),
        el("td", {}, Object.entries(t.quota).filter(([, v]) => v !== null).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ")),
        el("td", {}, t.reservations.length ? `${t.reservations.length} reservation(s)` : ""))), { id: "tenants" }));
  }
  async function draw() {
    const q = new URLSearchParams({ group_by: "day,tenant,key,deployment" });
    if (since.value) q.set("since", since.value);
    if (until.value) q.set("until", until.value);
    const records = await api(`/api/v1/usage?${q}`);
    const by = farmWide() ? "tenant" : "key";
    const series = new Map();
    for (const r of records) {
      const name = r[by] ?? "(operator)";
      const s = series.get(name) || new Map();
      s.set(r.day, (s.get(r.day) || 0) + r.requests);
      series.set(name, s);
    }
    const chart = el("div", { class: "plot", id: "usage-chart" });
    const csv = el("button", { class: "plain", id: "usage-csv", onclick: () => {
      const text = [USAGE_FIELDS.join(","), ...records.map((r) => USAGE_FIELDS.map((f) => csvCell(r[f])).join(","))].join("\n") + "\n";
      const link = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: "kcloud-usage.csv" });
      document.body.append(link); link.click(); link.remove();
    } }, "Export CSV");
    out.replaceChildren(chart, csv, table(USAGE_FIELDS.map((f) => f.replace(/_/g, " ")),
      records.map((r) => el("tr", {}, USAGE_FIELDS.map((f) => typeof r[f] === "number" ? figure(r[f], { modelled: f === "energy_joules_modelled" })
        : el("td", { class: r[f] === null && f.startsWith("energy") ? "unknown" : null }, r[f] ?? "")))), { id: "usage" }));
    await plot(chart, [...series].map(([name, s]) => ({ type: "bar", name, x: [...s.keys()], y: [...s.values()] })),
      { barmode: "stack", title: { text: `requests per day by ${by}`, font: { size: 13 } } });
  }
  await draw();
}

async function keysPage(page) {
  const keys = await api("/api/v1/keys");
  const message = el("div", { id: "key-message" });
  page.append(el("h1", {}, "API keys"), message, table(["prefix", "name", "role", "tenant", "created", "expires", "revoked", ""],
    keys.map((k) => el("tr", { "data-prefix": k.prefix }, el("td", {}, k.prefix), el("td", {}, k.name ?? ""), el("td", {}, k.role),
      el("td", {}, k.tenant ?? ""), el("td", {}, when(k.created_at)), el("td", {}, when(k.expires_at)), el("td", {}, when(k.revoked_at)),
      el("td", {}, canChange() && !k.revoked_at && (isAdmin() || k.role !== "admin") ? el("button", { class: "danger", "data-revoke": k.prefix,
        onclick: async () => {
          if (!confirm(`Revoke key ${k.prefix}? Requests with it are refused from now on.`)) return;
          try { await api(`/api/v1/keys/${encodeURIComponent(k.prefix)}`, { method: "DELETE" }); route(); }
          catch (error) { message.replaceChildren(errorBox(error)); }
        } }, "Revoke") : ""))), { id: "keys" }));
  if (!canChange()) return;
  const roles = isAdmin() ? ["member", "readonly", "admin"] : ["member", "readonly"];
  const form = el("form", { class: "inline", id: "create-key" },
    el("input", { name: "name", placeholder: "name (who or what uses it)", maxlength: 255 }),
    el("select", { name: "role" }, roles.map((r) => el("option", { value: r }, r))),
    isAdmin() ? el("input", { name: "tenant", placeholder: "tenant (not for admin keys)" }) : null,
    el("input", { name: "days", type: "number", min: 1, placeholder: "expires in days", style: "width:9rem" }),
    el("button", { type: "submit" }, "Create key"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = new FormData(form);
    const body = { role: f.get("role") };
    if (f.get("name")) body.name = f.get("name");
    if (f.get("days")) body.expires_in_days = Number(f.get("days"));
    const tenant = isAdmin() ? f.get("tenant") : me.tenant;
    if (tenant && body.role !== "admin") body.tenant = tenant;
    try {
      const created = await api("/api/v1/keys", { method: "POST", body });
      message.replaceChildren(el("p", {}, `Key ${created.info.prefix} created. Copy it now: it is shown only this once.`),
        el("div", { class: "secret", id: "new-key" }, created.key));
    } catch (error) { message.replaceChildren(errorBox(error)); }
  });
  page.append(el("h2", {}, "Create a key"), form);
}

async function auditPage(page) {
  const entries = await api("/api/v1/audit?limit=500");
  page.append(el("h1", {}, "Audit log"), table(["at", "actor", "role", "tenant", "action", "target", "status"],
    entries.map((a) => el("tr", {}, el("td", {}, when(a.at)), el("td", {}, a.actor), el("td", {}, a.actor_role ?? ""),
      el("td", {}, a.actor_tenant ?? ""), el("td", {}, a.action), el("td", {}, a.target ?? ""),
      el("td", { class: a.status >= 400 ? "bad" : "" }, a.status ?? ""))), { id: "audit" }));
}

// ---------------------------------------------------------------- start
$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  if (await signIn()) route();
});
$("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);

(async () => {
  // A server without authentication answers whoami without a key; otherwise a key from this tab.
  if (await signIn()) route();
})();
