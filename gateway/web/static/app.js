// The command picture in the browser: a map of the jurisdiction with its warnings, incidents, units,
// stations and terminals, live lists beside it, detail views, filters and a time slider. Plain
// modern JS (no build step); ECharts draws the map and charts. All data comes from /picture/api,
// already limited by the node to what the signed-in identity may see.
"use strict";

(function () {
  const API = "/picture/api";
  const t = (key, values) => window.i18n.t(key, values);

  const SEVERITY_COLOUR = { blue: "#1e90ff", yellow: "#ffd700", orange: "#ff8c00", red: "#e60000" };
  const SEVERITY_RANK = { blue: 1, yellow: 2, orange: 3, red: 4 };
  const GRADE_COLOUR = { general: "#1e90ff", larger: "#ffd700", major: "#ff8c00", extraordinary: "#e60000" };
  const GRADE_RANK = { general: 1, larger: 2, major: 3, extraordinary: 4 };
  const LEVEL_COLOUR = { normal: "#2ecc71", warn: "#ff8c00", alarm: "#e60000", sos: "#e60000", unknown: "#7a7a7a" };
  const TERMINAL_COLOUR = { alive: "#2ecc71", stale: "#8a8a8a", dead: "#555555" };
  const PLAIN_AREA = "#15314b";
  const PLAIN_LABEL = "#9fb8cc";
  const ALL_KINDS = ["alert", "incident", "observation", "position", "heartbeat"];

  const ALARMS_KEPT = 200; // the alarm list is "the latest"; older ones live in the log
  const LIST_ROWS = 150; // rows drawn per list; the header shows the full count
  const MAP_RENDER_MS = 250; // the map redraws at most four times a second, however fast updates come
  const LIST_RENDER_MS = 200;
  const APPLY_BUDGET_MS = 8; // per frame, so a burst of updates never stalls the page
  const REOPEN_MAX_MS = 8000;

  // -- talking to the node --------------------------------------------------------------------

  let csrf = "";

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(API + path, {
        method,
        headers,
        credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      // fetch rejects with a TypeError when the node cannot be reached at all: status 0 here.
      if (!(err instanceof TypeError)) throw err;
      throw new ApiError(0, t("conn.down"), null);
    }
    if (response.status === 204) return null;
    let payload = null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) payload = await response.json();
    if (!response.ok) {
      if (response.status === 401 && document.body.dataset.page === "picture") {
        window.location.assign("/picture/login");
      }
      const message = (payload && payload.error) || `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, message, payload);
    }
    return payload;
  }

  function toast(message) {
    const box = document.getElementById("toast");
    box.textContent = message;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => {
      box.hidden = true;
    }, 6000);
  }

  // -- small helpers --------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [name, value] of Object.entries(attrs)) {
        if (value === undefined || value === null || value === false) continue;
        if (name === "class") node.className = value;
        else if (name === "style") node.style.cssText = value;
        else if (name.startsWith("data-")) node.setAttribute(name, value);
        else node[name] = value;
      }
    }
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(ms) {
    if (ms === null || ms === undefined) return "";
    const d = new Date(ms);
    return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  /** A reading for people: at most two decimals, no trailing zeros. */
  function fmtNumber(value) {
    return typeof value === "number" ? String(Number(value.toFixed(2))) : String(value ?? "-");
  }

  function regionName(code) {
    const region = state.regions.get(code);
    return region ? region.name : code;
  }

  // -- the picture's state ----------------------------------------------------------------------

  const state = {
    identity: null,
    regions: new Map(), // code -> {code, name, parent}
    children: new Map(), // code -> [child codes]
    filter: { region: "", agency: "", kinds: ALL_KINDS.slice(), severity: "", window_h: 24 },
    at: null, // a replay time (ms), or null when live
    offset: 0, // the next log offset the picture expects: everything before it is applied
    warnings: new Map(),
    incidents: new Map(),
    alarms: new Map(),
    stations: new Map(),
    terminals: new Map(),
    units: new Map(),
    links: new Map(),
    mapName: "",
    mapFeatures: new Map(), // code -> name of the map's areas
  };

  // Figures the tests and the benchmark read; nothing on the page depends on them.
  const stats = { applied: 0, duplicates: 0, batches: 0, listRenders: 0, mapRenders: 0, reconnects: 0, snapshots: 0 };

  const COLLECTIONS = {
    warning: "warnings",
    incident: "incidents",
    alarm: "alarms",
    station: "stations",
    terminal: "terminals",
    unit: "units",
    link: "links",
  };

  const dirty = new Set(); // names of the lists (and "map") to draw again

  function keyOf(type, item) {
    if (type === "link") return item.name;
    if (type === "incident") return item.chain || item.id;
    return item.id;
  }

  function clearPicture() {
    for (const name of Object.values(COLLECTIONS)) state[name].clear();
  }

  function loadSnapshot(snapshot) {
    clearPicture();
    const lists = {
      warning: snapshot.warnings,
      incident: snapshot.incidents,
      alarm: snapshot.alarms,
      station: snapshot.stations,
      terminal: snapshot.terminals,
      unit: snapshot.units,
      link: snapshot.links,
    };
    for (const [type, items] of Object.entries(lists)) {
      for (const item of items || []) put(type, item);
    }
    trimAlarms();
    state.offset = snapshot.offset;
    stats.snapshots += 1;
    for (const name of Object.values(COLLECTIONS)) touched(name);
  }

  // Which map layer each collection is drawn on; only layers whose data changed are sent to ECharts.
  const LAYER_OF = {
    warnings: "warning-areas",
    incidents: "incidents",
    alarms: "alarms",
    stations: "stations",
    terminals: "terminals",
    units: "units",
  };
  const dirtyLayers = new Set();

  function touched(name) {
    dirty.add(name);
    const layer = LAYER_OF[name];
    if (layer) {
      dirtyLayers.add(layer);
      dirty.add("map");
    }
  }

  function put(type, item) {
    const name = COLLECTIONS[type];
    if (!name) return false; // a type this page does not know yet: newer server, older page
    state[name].set(keyOf(type, item), item);
    touched(name);
    return true;
  }

  function removeItem(of, id) {
    const name = COLLECTIONS[of];
    if (!name) return;
    const collection = state[name];
    if (!collection.delete(id)) {
      // An incident is kept by its chain; a removal may name the chain or its latest report.
      for (const [key, item] of collection) {
        if (item.id === id || item.chain === id) {
          collection.delete(key);
          break;
        }
      }
    }
    touched(name);
  }

  function trimAlarms() {
    if (state.alarms.size <= ALARMS_KEPT) return;
    const newest = [...state.alarms.values()].sort((a, b) => b.at - a.at).slice(0, ALARMS_KEPT);
    state.alarms = new Map(newest.map((a) => [a.id, a]));
  }

  /** Applies one stream batch: items below the picture's offset were seen already (a resumed
   * stream may repeat the tail of the last one) and are skipped; link health (offset -1) always applies. */
  function applyBatch(batch) {
    const floor = state.offset;
    let highest = floor - 1;
    for (const item of batch.items) {
      if (item.offset >= 0) {
        if (item.offset < floor) {
          stats.duplicates += 1;
          continue;
        }
        if (item.offset > highest) highest = item.offset;
      }
      if (item.type === "remove") removeItem(item.of, item.id);
      else put(item.type, item);
      stats.applied += 1;
    }
    state.offset = Math.max(state.offset, highest + 1, typeof batch.next === "number" ? batch.next : 0);
    stats.batches += 1;
    if (state.alarms.size > ALARMS_KEPT * 1.5) trimAlarms();
  }

  // -- frames: updates are queued and applied once per animation frame --------------------------

  let pending = [];
  let frameRequested = false;
  let lastMapRender = -Infinity;
  let lastListRender = -Infinity;

  function schedule() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(frame);
  }

  function frame(now) {
    frameRequested = false;
    const started = performance.now();
    while (pending.length && performance.now() - started < APPLY_BUDGET_MS) {
      applyBatch(pending.shift());
    }
    const listsDirty = [...dirty].some((name) => name !== "map");
    if (listsDirty && now - lastListRender >= LIST_RENDER_MS) {
      renderLists();
      lastListRender = now;
    }
    if (dirty.has("map") && chart && now - lastMapRender >= MAP_RENDER_MS) {
      dirty.delete("map");
      renderMap();
      lastMapRender = now;
    }
    if (pending.length || dirty.size) schedule();
  }

  // -- the live stream --------------------------------------------------------------------------

  let source = null;
  let reopenTimer = null;
  let reopenDelay = 500;

  function filterParams() {
    const params = new URLSearchParams();
    const f = state.filter;
    if (f.region) params.set("region", f.region);
    if (f.agency) params.set("agency", f.agency);
    if (f.kinds.length !== ALL_KINDS.length) params.set("kind", f.kinds.join(","));
    if (f.severity) params.set("severity", f.severity);
    params.set("window_h", String(f.window_h));
    return params;
  }

  function setConnection(which) {
    const box = document.getElementById("conn");
    box.dataset.state = which;
    box.dataset.i18n = `conn.${which}`;
    box.textContent = t(`conn.${which}`);
  }

  function closeStream() {
    clearTimeout(reopenTimer);
    if (source) {
      source.close();
      source = null;
    }
  }

  function openStream() {
    closeStream();
    const params = filterParams();
    params.set("from", String(state.offset));
    const stream = new EventSource(`${API}/stream?${params}`);
    source = stream;
    setConnection("connecting");
    stream.addEventListener("open", () => {
      if (stream !== source) return;
      reopenDelay = 500;
      setConnection("open");
    });
    stream.addEventListener("batch", (event) => {
      if (stream !== source) return;
      pending.push(JSON.parse(event.data));
      schedule();
    });
    stream.addEventListener("error", () => {
      if (stream !== source) return;
      // EventSource would retry by itself, but with its original URL: the from= of the first
      // connection comes back along with Last-Event-ID, and a server that reads from= first sends
      // everything again. So the page reopens the stream itself from its own offset, which is the
      // id of the last event it applied (the same position Last-Event-ID names).
      setConnection("down");
      stats.reconnects += 1;
      reopenLater();
    });
  }

  function reopenLater() {
    if (source) {
      source.close();
      source = null;
    }
    clearTimeout(reopenTimer);
    const delay = reopenDelay * (0.75 + Math.random() * 0.5);
    reopenDelay = Math.min(reopenDelay * 2, REOPEN_MAX_MS);
    reopenTimer = setTimeout(async () => {
      if (state.at !== null) return;
      // Ask who we are first: a session that ended sends the officer to the login page (api() does)
      // instead of retrying a stream that will only ever answer 401.
      try {
        await api("/me");
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        if (err.status !== 401) reopenLater(); // unreachable or failing: try again later
        return;
      }
      if (state.at === null && source === null) openStream();
    }, delay);
  }

  // -- loading ----------------------------------------------------------------------------------

  let loadGeneration = 0;

  /** Loads the picture for the current filters (and replay time), then follows the stream when live. */
  async function reload() {
    const generation = ++loadGeneration;
    closeStream();
    pending = [];
    const params = filterParams();
    if (state.at !== null) params.set("at", String(Math.round(state.at)));
    try {
      await ensureMap(state.filter.region || state.identity.region);
      const snapshot = await api(`/snapshot?${params}`);
      if (generation !== loadGeneration) return; // a newer filter choice overtook this one
      loadSnapshot(snapshot);
      renderCounts();
      schedule();
      if (state.at === null) openStream();
      else setConnection("open");
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      toast(t("error.load", { msg: err.message }));
      if (err.status === 0) {
        // The node is out of reach: try the whole load again, unless another one has begun meanwhile.
        setConnection("down");
        setTimeout(() => generation === loadGeneration && reload(), 2000 + Math.random() * 1000);
      }
    }
  }

  // -- the map ----------------------------------------------------------------------------------

  let chart = null;
  const registeredMaps = new Set();

  async function ensureMap(region) {
    const name = `yiwang-${region}`;
    if (!registeredMaps.has(name)) {
      const geojson = await api(`/map/${encodeURIComponent(region)}`);
      window.echarts.registerMap(name, geojson);
      registeredMaps.add(name);
      ensureMap.features[name] = new Map(geojson.features.map((f) => [f.properties.code, f.properties.name]));
    }
    if (state.mapName === name) return;
    state.mapName = name;
    state.mapFeatures = ensureMap.features[name];
    setBaseOption();
  }
  ensureMap.features = {};

  function setBaseOption() {
    const point = (id, labelKey, symbol, z) => ({
      id,
      name: t(labelKey),
      type: "scatter",
      coordinateSystem: "geo",
      symbol,
      symbolSize: 10,
      z,
      // Only units move; animating everything else would cost frames for nothing on a busy screen.
      animation: id === "units",
      animationDurationUpdate: 600,
      data: [],
    });
    chart.setOption(
      {
        backgroundColor: "transparent",
        tooltip: { trigger: "item", confine: true, formatter: tooltipOf },
        geo: {
          map: state.mapName,
          roam: true,
          zoom: 1.1,
          label: { show: true, color: PLAIN_LABEL, fontSize: 11 },
          itemStyle: { areaColor: PLAIN_AREA, borderColor: "#3f6f95", borderWidth: 1 },
          emphasis: { label: { color: "#fff" }, itemStyle: { areaColor: "#24507a" } },
          select: { disabled: true },
          regions: [],
        },
        series: [
          {
            id: "warning-areas",
            name: t("map.warnings"),
            type: "custom",
            coordinateSystem: "geo",
            renderItem: renderWarningShape,
            z: 2,
            silent: false,
            data: [],
          },
          point("stations", "map.stations", "triangle", 3),
          point("terminals", "map.terminals", "rect", 3),
          point("units", "map.units", "arrow", 4),
          point("incidents", "map.incidents", "pin", 5),
          point("alarms", "map.alarms", "diamond", 6),
        ],
      },
      true,
    );
    areasShown = "";
    for (const layer of Object.values(LAYER_OF)) dirtyLayers.add(layer);
    dirty.add("map");
  }

  /** The map areas a region code falls on: itself, its city, or every area under it. */
  function areasOf(code) {
    const features = state.mapFeatures;
    if (!code) return [];
    if (features.has(code)) return [code];
    const city = `${code.slice(0, 4)}00`;
    if (features.has(city)) return [city];
    let prefix = null;
    if (code.endsWith("0000")) prefix = code.slice(0, 2);
    else if (code.endsWith("00")) prefix = code.slice(0, 4);
    if (prefix === null) return [];
    return [...features.keys()].filter((area) => area.startsWith(prefix));
  }

  function warningAreas() {
    const strongest = new Map(); // area code -> warning of the highest severity on it
    for (const warning of state.warnings.values()) {
      const codes = new Set(warning.regions && warning.regions.length ? warning.regions : [warning.region]);
      for (const code of codes) {
        for (const area of areasOf(code)) {
          const held = strongest.get(area);
          if (!held || SEVERITY_RANK[warning.severity] > SEVERITY_RANK[held.severity]) strongest.set(area, warning);
        }
      }
    }
    // Every area is listed, the plain ones too: ECharts merges regions by name, so an area whose
    // warning ended must be told its plain colour again.
    const regions = [];
    for (const [area, name] of state.mapFeatures) {
      const warning = strongest.get(area);
      regions.push(
        warning
          ? {
              name,
              itemStyle: { areaColor: warning.colour || SEVERITY_COLOUR[warning.severity], opacity: 0.85 },
              label: { color: "#111" },
            }
          : { name, itemStyle: { areaColor: PLAIN_AREA, opacity: 1 }, label: { color: PLAIN_LABEL } },
      );
    }
    return regions;
  }

  function rings(geometry) {
    if (!geometry) return [];
    if (geometry.type === "Polygon") return [geometry.coordinates[0]];
    if (geometry.type === "MultiPolygon") return geometry.coordinates.map((polygon) => polygon[0]);
    if (geometry.type === "GeometryCollection") return geometry.geometries.flatMap(rings);
    return [];
  }

  function renderWarningShape(params, shapeApi) {
    const item = warningShapes[params.dataIndex];
    if (!item) return null;
    return {
      type: "group",
      children: item.rings.map((ring) => ({
        type: "polygon",
        shape: { points: ring.map((p) => shapeApi.coord(p)) },
        style: { fill: item.colour, opacity: 0.45, stroke: item.colour, lineWidth: 2 },
      })),
    };
  }
  let warningShapes = [];

  function mapPoint(kind, key, lon, lat, colour, extra) {
    return Object.assign({ kind, key, value: [lon, lat], itemStyle: { color: colour } }, extra);
  }

  let areasShown = ""; // the warning colours last sent to the map, to skip sending them again

  function renderMap() {
    stats.mapRenders += 1;
    const has = (item) => typeof item.lat === "number" && typeof item.lon === "number";
    const layers = new Map();
    if (dirtyLayers.has("warning-areas")) {
      warningShapes = [];
      for (const warning of state.warnings.values()) {
        const shapes = rings(warning.geometry);
        if (shapes.length) {
          warningShapes.push({ id: warning.id, rings: shapes, colour: warning.colour || SEVERITY_COLOUR[warning.severity] });
        }
      }
      layers.set("warning-areas", warningShapes.map((w) => ({ value: 0, kind: "warning", key: w.id })));
    }
    if (dirtyLayers.has("incidents")) {
      layers.set(
        "incidents",
        [...state.incidents.values()].filter(has).map((i) =>
          mapPoint("incident", keyOf("incident", i), i.lon, i.lat, GRADE_COLOUR[i.grade] || "#fff", {
            name: i.headline,
            symbolSize: 14 + 4 * (GRADE_RANK[i.grade] || 1),
          }),
        ),
      );
    }
    if (dirtyLayers.has("stations")) {
      layers.set(
        "stations",
        [...state.stations.values()].filter(has).map((x) =>
          mapPoint("station", x.id, x.lon, x.lat, LEVEL_COLOUR[x.level] || LEVEL_COLOUR.unknown, { name: x.name }),
        ),
      );
    }
    if (dirtyLayers.has("terminals")) {
      layers.set(
        "terminals",
        [...state.terminals.values()].filter(has).map((x) =>
          mapPoint("terminal", x.id, x.lon, x.lat, TERMINAL_COLOUR[x.state] || TERMINAL_COLOUR.stale, { name: x.id }),
        ),
      );
    }
    if (dirtyLayers.has("units")) {
      layers.set(
        "units",
        [...state.units.values()].filter(has).map((u) =>
          mapPoint("unit", u.id, u.lon, u.lat, "#3fb6ff", {
            name: u.callsign || u.id,
            symbolRotate: -(u.course_deg || 0),
            symbolSize: 12,
          }),
        ),
      );
    }
    if (dirtyLayers.has("alarms")) {
      layers.set(
        "alarms",
        [...state.alarms.values()].filter(has).map((a) =>
          mapPoint("alarm", a.id, a.lon, a.lat, LEVEL_COLOUR[a.level] || "#e60000", { name: a.text, symbolSize: 12 }),
        ),
      );
    }
    dirtyLayers.clear();
    const option = { series: [...layers].map(([id, data]) => ({ id, data })) };
    if (layers.has("warning-areas")) {
      // Recolouring areas makes ECharts lay the whole map out again: only when the colours changed.
      const regions = warningAreas();
      const shown = JSON.stringify(regions.map((r) => r.itemStyle.areaColor));
      if (shown !== areasShown) {
        option.geo = { regions };
        areasShown = shown;
      }
    }
    if (option.series.length || option.geo) chart.setOption(option, { lazyUpdate: true });
  }

  function tooltipOf(params) {
    const data = params.data || {};
    if (params.componentType === "geo") return params.name;
    const item = lookup(data.kind, data.key);
    if (!item) return params.name || "";
    const escape = (s) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
    switch (data.kind) {
      case "incident":
        return `${escape(item.grade_label)} ${escape(item.stage_label)}<br>${escape(item.headline)}`;
      case "station":
        return `${escape(item.name)}<br>${escape(item.metric_name)} ${fmtNumber(item.value)} ${escape(item.unit)}`;
      case "terminal":
        return `${escape(item.id)}<br>${escape(t(`state.${item.state}`))} · ${escape(item.link)}`;
      case "unit":
        return `${escape(item.callsign || item.id)} (${escape(item.type)})<br>${escape(t("speed", { v: item.speed_mps }))}`;
      case "alarm":
        return escape(item.text);
      case "warning":
        return escape(item.headline);
      default:
        return params.name || "";
    }
  }

  function lookup(kind, key) {
    const name = COLLECTIONS[kind];
    return name ? state[name].get(key) : undefined;
  }

  // -- lists ------------------------------------------------------------------------------------

  function fillList(id, rows, total) {
    const list = document.getElementById(id);
    const fragment = document.createDocumentFragment();
    if (!rows.length) fragment.append(el("li", { class: "empty" }, t("empty")));
    for (const row of rows.slice(0, LIST_ROWS)) fragment.append(row);
    list.replaceChildren(fragment);
    const count = document.getElementById(id.replace("-list", "-count"));
    if (count) count.textContent = String(total);
  }

  function warningRow(w) {
    const colour = w.colour || SEVERITY_COLOUR[w.severity];
    return el(
      "li",
      { "data-id": w.id, "data-kind": "warning", "data-severity": w.severity },
      el("span", { class: "chip", style: `background:${colour}` }, t(`sev.${w.severity}`)),
      el("span", { class: "headline" }, w.headline),
      el(
        "div",
        { class: "meta" },
        `${t("issuer", { s: w.issuer || w.agency })} · ${w.expires ? t("expires", { t: fmtTime(w.expires) }) : t("no.expiry")} · ${regionName(w.region)}`,
      ),
    );
  }

  function incidentRow(i) {
    const c = i.casualties || {};
    return el(
      "li",
      { "data-id": i.id, "data-kind": "incident", class: i.overdue ? "overdue" : "" },
      el("span", { class: "chip", style: `background:${GRADE_COLOUR[i.grade] || "#ccc"}` }, t(`grade.${i.grade}`)),
      el("span", { class: "stage" }, `[${t(`stage.${i.stage}`)}] `),
      el("span", { class: "headline" }, i.headline),
      i.overdue ? el("span", { class: "tag-overdue", title: i.overdue_note || "" }, t("overdue")) : null,
      el(
        "div",
        { class: "meta" },
        `${fmtTime(i.at)} · ${regionName(i.region)} · ${t("casualties", {
          dead: c.dead ?? 0,
          missing: c.missing ?? 0,
          injured: c.injured ?? 0,
          trapped: c.trapped ?? 0,
        })}`,
      ),
      i.overdue && i.overdue_note ? el("div", { class: "meta" }, i.overdue_note) : null,
    );
  }

  function alarmRow(a) {
    return el(
      "li",
      { "data-id": a.id, "data-kind": "alarm" },
      el("span", { class: `dot ${a.level}` }),
      el("span", null, a.text),
      el("div", { class: "meta" }, `${fmtTime(a.at)} · ${t(`level.${a.level}`)} · ${regionName(a.region)}`),
    );
  }

  function linkRow(l) {
    const figures = [];
    if (l.lag !== null && l.lag !== undefined) figures.push(t("lag", { n: l.lag }));
    if (l.backlog !== null && l.backlog !== undefined) figures.push(t("backlog", { n: l.backlog }));
    return el(
      "li",
      { "data-name": l.name, "data-kind": "link", "data-up": String(l.up), title: l.detail || "" },
      el("span", { class: `dot ${l.up ? "up" : "down"}` }),
      `${l.name} (${t(`linkkind.${l.kind}`)}) ${t(l.up ? "link.up" : "link.down")}`,
      figures.length ? el("span", { class: "meta" }, ` · ${figures.join(" · ")}`) : null,
    );
  }

  function terminalRow(x) {
    const drops = Object.values(x.drops || {}).reduce((sum, n) => sum + n, 0);
    return el(
      "li",
      { "data-id": x.id, "data-kind": "terminal", "data-state": x.state },
      el("span", { class: `dot ${x.state}` }),
      `${x.id} · ${t(`state.${x.state}`)} · ${x.link || "-"}`,
      drops ? el("span", { class: "meta" }, ` · ${t("drops")} ${drops}`) : null,
    );
  }

  function stationRow(s) {
    return el(
      "li",
      { "data-id": s.id, "data-kind": "station", "data-level": s.level },
      el("span", { class: `dot ${s.level}` }),
      `${s.name} · ${s.metric_name} ${fmtNumber(s.value)} ${s.unit}`,
      el("span", { class: "meta" }, ` · ${t(`level.${s.level}`)}`),
    );
  }

  const LEVEL_RANK = { alarm: 3, warn: 2, unknown: 1, normal: 0, dead: 3, stale: 2, alive: 0 };

  function renderLists() {
    stats.listRenders += 1;
    if (dirty.delete("warnings")) {
      const rows = [...state.warnings.values()].sort(
        (a, b) => SEVERITY_RANK[b.severity] - SEVERITY_RANK[a.severity] || b.at - a.at,
      );
      fillList("warnings-list", rows.slice(0, LIST_ROWS).map(warningRow), rows.length);
    }
    if (dirty.delete("incidents")) {
      const rows = [...state.incidents.values()].sort(
        (a, b) => Number(b.overdue) - Number(a.overdue) || (GRADE_RANK[b.grade] || 0) - (GRADE_RANK[a.grade] || 0) || b.at - a.at,
      );
      fillList("incidents-list", rows.slice(0, LIST_ROWS).map(incidentRow), rows.length);
    }
    if (dirty.delete("alarms")) {
      const rows = [...state.alarms.values()].sort((a, b) => b.at - a.at);
      fillList("alarms-list", rows.slice(0, LIST_ROWS).map(alarmRow), rows.length);
    }
    if (dirty.delete("links")) {
      const rows = [...state.links.values()].sort((a, b) => Number(a.up) - Number(b.up) || a.name.localeCompare(b.name));
      fillList("links-list", rows.map(linkRow), rows.length);
    }
    if (dirty.delete("terminals")) {
      const rows = [...state.terminals.values()].sort(
        (a, b) => (LEVEL_RANK[b.state] || 0) - (LEVEL_RANK[a.state] || 0) || a.id.localeCompare(b.id),
      );
      fillList("terminals-list", rows.slice(0, LIST_ROWS).map(terminalRow), rows.length);
    }
    if (dirty.delete("stations")) {
      const rows = [...state.stations.values()].sort(
        (a, b) => (LEVEL_RANK[b.level] || 0) - (LEVEL_RANK[a.level] || 0) || a.name.localeCompare(b.name),
      );
      fillList("stations-list", rows.slice(0, LIST_ROWS).map(stationRow), rows.length);
    }
    dirty.delete("units"); // units are on the map only
    renderCounts();
  }

  function renderCounts() {
    document.getElementById("counts").textContent = t("counts", {
      w: state.warnings.size,
      i: state.incidents.size,
      s: state.stations.size,
      t: state.terminals.size,
      u: state.units.size,
    });
  }

  // -- detail views -----------------------------------------------------------------------------

  let detailChart = null;

  function openDrawer(title) {
    const drawer = document.getElementById("detail");
    drawer.hidden = false;
    document.getElementById("detail-title").textContent = title;
    document.getElementById("detail-chart-box").hidden = true;
    document.getElementById("detail-provenance-box").hidden = false;
    document.getElementById("detail-history-box").hidden = false;
    for (const id of ["detail-summary", "detail-provenance", "detail-history", "detail-content"]) {
      document.getElementById(id).replaceChildren();
    }
  }

  function closeDrawer() {
    document.getElementById("detail").hidden = true;
    if (detailChart) {
      detailChart.dispose();
      detailChart = null;
    }
  }

  function definitionList(pairs) {
    const list = el("dl");
    for (const [term, value] of pairs) {
      if (value === undefined || value === null || value === "") continue;
      list.append(el("dt", null, term), el("dd", null, value));
    }
    return list;
  }

  function summaryOf(item) {
    const f = (name) => t(`field.${name}`);
    const pairs = [];
    if (item.headline) pairs.push([f("headline"), item.headline]);
    if (item.severity) pairs.push([f("severity"), t(`sev.${item.severity}`)]);
    if (item.event) pairs.push([f("event"), item.event]);
    if (item.issuer) pairs.push([f("issuer"), item.issuer]);
    if (item.grade) pairs.push([f("grade"), t(`grade.${item.grade}`)]);
    if (item.stage) pairs.push([f("stage"), t(`stage.${item.stage}`)]);
    if (item.casualties) pairs.push([f("casualties"), t("casualties", item.casualties)]);
    if (item.overdue) pairs.push([t("overdue"), item.overdue_note || t("overdue")]);
    if (item.text) pairs.push([f("text"), item.text]);
    if (item.region) pairs.push([f("region"), `${regionName(item.region)} (${item.region})`]);
    if (item.at) pairs.push([f("at"), fmtTime(item.at)]);
    if (item.expires) pairs.push([f("expires"), fmtTime(item.expires)]);
    if (item.status) pairs.push([f("status"), item.status]);
    return definitionList(pairs);
  }

  function stepLabel(step) {
    if (step.stage) return t(`stage.${step.stage}`);
    return step.msg_type ? t(`msg.${step.msg_type}`) : "";
  }

  async function openItem(id) {
    openDrawer(t("detail.title"));
    let detail;
    try {
      detail = await api(`/item/${encodeURIComponent(id)}`);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      document.getElementById("detail-summary").replaceChildren(t("detail.missing"));
      return;
    }
    const item = detail.item || {};
    document.getElementById("detail-title").textContent = item.headline || item.text || id;
    document.getElementById("detail-summary").replaceChildren(summaryOf(item));
    const p = detail.provenance || {};
    const origin = p.origin || {};
    const signature = p.signature || null;
    const box = document.getElementById("detail-provenance");
    box.replaceChildren(
      el(
        "p",
        { class: "origin" },
        t("detail.origin", {
          agency: origin.agency || "-",
          system: origin.system || "-",
          region: origin.region ? regionName(origin.region) : "-",
          format: origin.format || "-",
        }),
      ),
      el("h4", null, t("detail.hops")),
      el("ol", { class: "hops" }, ...(p.hops || []).map((h) => el("li", null, `${h.node} · ${fmtTime(h.at)}`))),
      el("h4", null, t("detail.signature")),
      signature
        ? el(
            "p",
            { class: signature.verified ? "verified signature" : "unverified signature" },
            t("detail.signed.by", {
              signer: signature.signer || "-",
              by: signature.verified_by || "-",
              ok: t(signature.verified ? "detail.verified" : "detail.unverified"),
            }),
          )
        : el("p", { class: "meta signature" }, t("detail.unsigned")),
    );
    document
      .getElementById("detail-history")
      .replaceChildren(
        ...(detail.history || []).map((h) =>
          el("li", { "data-id": h.id }, `${fmtTime(h.at)} · ${stepLabel(h)} · ${h.headline || ""}`),
        ),
      );
    document.getElementById("detail-content").textContent = JSON.stringify(detail.envelope, null, 2);
  }

  async function openStation(id) {
    const station = state.stations.get(id);
    openDrawer(station ? station.name : id);
    document.getElementById("detail-provenance-box").hidden = true;
    document.getElementById("detail-history-box").hidden = true;
    let series;
    try {
      series = await api(`/station/${encodeURIComponent(id)}/series?hours=${state.filter.window_h}`);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      document.getElementById("detail-summary").replaceChildren(t("error.load", { msg: err.message }));
      return;
    }
    const s = series.station || station || {};
    document.getElementById("detail-summary").replaceChildren(
      definitionList([
        [t("field.station"), `${s.name} (${s.id})`],
        [t("field.agency"), s.agency],
        [t("field.region"), s.region ? regionName(s.region) : ""],
        [s.metric_name, `${fmtNumber(s.value)} ${s.unit}`],
        [t("field.level"), t(`level.${s.level}`)],
        [t("field.at"), fmtTime(s.at)],
      ]),
    );
    const box = document.getElementById("detail-chart-box");
    box.hidden = false;
    detailChart = window.echarts.init(document.getElementById("detail-chart"), null, { renderer: "canvas" });
    const metrics = series.series.map((one) => one.metric);
    const axes = metrics.map((metric, index) => ({
      type: "value",
      name: `${series.series[index].name} (${series.series[index].unit})`,
      position: index === 0 ? "left" : "right",
      scale: true,
      axisLabel: { color: "#9fb8cc" },
      splitLine: { show: index === 0, lineStyle: { color: "#1f3a52" } },
    }));
    document.getElementById("detail-content").textContent = JSON.stringify(s, null, 2);
    detailChart.setOption({
      backgroundColor: "transparent",
      animation: false,
      tooltip: { trigger: "axis" },
      legend: { textStyle: { color: "#d8e6f3" } },
      grid: { left: 50, right: 50, top: 40, bottom: 30 },
      xAxis: { type: "time", axisLabel: { color: "#9fb8cc" } },
      yAxis: axes.length ? axes : [{ type: "value" }],
      series: series.series.map((one, index) => ({
        name: one.name,
        type: one.unit === "mm" ? "bar" : "line",
        yAxisIndex: index,
        showSymbol: false,
        data: one.points,
        markLine: {
          symbol: "none",
          data: series.thresholds
            .filter((th) => th.metric === one.metric)
            .map((th) => ({
              yAxis: th.value,
              name: th.label || t(`threshold.${th.level}`),
              lineStyle: { color: th.level === "alarm" ? "#e60000" : "#ff8c00", type: "dashed" },
              label: { formatter: `${th.label || t(`threshold.${th.level}`)} ${th.value}`, color: "#d8e6f3" },
            })),
        },
      })),
    });
  }

  function openTerminal(id) {
    const x = state.terminals.get(id);
    openDrawer(`${t("panel.terminal")} ${id}`);
    document.getElementById("detail-provenance-box").hidden = true;
    document.getElementById("detail-history-box").hidden = true;
    if (!x) return;
    document.getElementById("detail-summary").replaceChildren(
      definitionList([
        [t("field.terminal"), x.id],
        [t("field.state"), t(`state.${x.state}`)],
        [t("link"), x.link || "-"],
        [t("session"), x.session ?? "-"],
        [t("field.region"), x.region ? regionName(x.region) : ""],
        [t("field.last_seen"), fmtTime(x.last_seen)],
        [
          t("drops"),
          Object.entries(x.drops || {})
            .map(([priority, n]) => `${priority}: ${n}`)
            .join(", ") || "0",
        ],
      ]),
    );
    document.getElementById("detail-content").textContent = JSON.stringify(x, null, 2);
  }

  function openByKind(kind, key) {
    if (kind === "station") return openStation(key);
    if (kind === "terminal") return openTerminal(key);
    if (kind === "link") return undefined;
    const item = lookup(kind, key);
    return openItem(item ? item.id : key);
  }

  // -- filters and the time slider --------------------------------------------------------------

  function renderRegionPicker() {
    const root = state.identity.region;
    const current = state.filter.region || root;
    const chain = [];
    for (let code = current; code; code = code === root ? null : state.regions.get(code)?.parent) {
      chain.unshift(code);
      if (!state.regions.has(code)) break;
    }
    const crumbs = document.getElementById("region-crumbs");
    crumbs.replaceChildren(...chain.map((code) => el("a", { "data-code": code, href: "#" }, regionName(code))));
    const select = document.getElementById("region-child");
    const children = state.children.get(current) || [];
    select.replaceChildren(
      el("option", { value: "", "data-i18n": "filter.children" }, t("filter.children")),
      ...children.map((code) => el("option", { value: code }, regionName(code))),
    );
    select.hidden = children.length === 0;
  }

  function setRegion(code) {
    if (!code || code === (state.filter.region || state.identity.region)) return;
    state.filter.region = code;
    renderRegionPicker();
    reload();
  }

  function readFilters() {
    const form = document.getElementById("filters");
    state.filter.agency = form.elements.agency.value;
    state.filter.severity = form.elements.severity.value;
    state.filter.window_h = Number(form.elements.window_h.value);
    state.filter.kinds = [...form.querySelectorAll('input[name="kind"]:checked')].map((box) => box.value);
    const slider = document.getElementById("slider");
    slider.min = String(-state.filter.window_h * 60);
  }

  function sliderTime() {
    const minutes = Number(document.getElementById("slider").value);
    return minutes === 0 ? null : Date.now() + minutes * 60000;
  }

  function showMode() {
    const badge = document.getElementById("mode");
    const label = document.getElementById("slider-label");
    const live = state.at === null;
    badge.className = `badge ${live ? "live" : "replay"}`;
    badge.dataset.i18n = live ? "live" : "replay";
    badge.textContent = t(live ? "live" : "replay");
    label.textContent = live ? t("live") : t("replay.at", { t: fmtTime(state.at) });
    document.getElementById("live").disabled = live;
  }

  /** Shows the picture as it stood at `at` (ms), or live again when `at` is null. */
  function replay(at) {
    state.at = at;
    const slider = document.getElementById("slider");
    slider.value = at === null ? "0" : String(Math.min(-1, Math.round((at - Date.now()) / 60000)));
    showMode();
    return reload();
  }

  function wireControls() {
    const form = document.getElementById("filters");
    form.addEventListener("submit", (event) => event.preventDefault());
    form.addEventListener("change", (event) => {
      if (event.target.id === "region-child") {
        setRegion(event.target.value);
        return;
      }
      readFilters();
      reload();
    });
    document.getElementById("region-crumbs").addEventListener("click", (event) => {
      const link = event.target.closest("a[data-code]");
      if (!link) return;
      event.preventDefault();
      const code = link.dataset.code;
      state.filter.region = code === state.identity.region ? "" : code;
      renderRegionPicker();
      reload();
    });
    const slider = document.getElementById("slider");
    slider.addEventListener("input", () => {
      const at = sliderTime();
      document.getElementById("slider-label").textContent = at === null ? t("live") : t("replay.at", { t: fmtTime(at) });
    });
    slider.addEventListener("change", () => replay(sliderTime()));
    document.getElementById("live").addEventListener("click", () => replay(null));
    for (const id of ["warnings-list", "incidents-list", "alarms-list", "terminals-list", "stations-list"]) {
      document.getElementById(id).addEventListener("click", (event) => {
        const row = event.target.closest("li[data-id]");
        if (row) openByKind(row.dataset.kind, row.dataset.id);
      });
    }
    document.getElementById("detail-close").addEventListener("click", closeDrawer);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") closeDrawer();
    });
    document.getElementById("lang").addEventListener("click", () => {
      window.i18n.toggle();
      languageChanged();
    });
    document.getElementById("logout").addEventListener("click", async () => {
      closeStream();
      try {
        await api("/logout", { method: "POST" });
      } finally {
        window.location.assign("/picture/login");
      }
    });
    window.addEventListener("resize", () => chart && chart.resize());
    chart.on("click", (params) => {
      if (params.componentType === "geo") {
        const code = [...state.mapFeatures].find(([, name]) => name === params.name)?.[0];
        if (code && state.regions.has(code)) setRegion(code);
        return;
      }
      const data = params.data || {};
      if (data.kind) openByKind(data.kind, data.key);
    });
  }

  function languageChanged() {
    for (const name of Object.values(COLLECTIONS)) dirty.add(name);
    renderRegionPicker();
    showMode();
    if (chart) setBaseOption();
    renderIdentity();
    schedule();
  }

  function renderIdentity() {
    const who = state.identity;
    document.getElementById("identity").textContent = `${who.name} · ${who.agency} · ${regionName(who.region)}`;
  }

  function tickClock() {
    const now = new Date();
    document.getElementById("clock").textContent =
      `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())} ${pad(now.getHours())}:${pad(now.getMinutes())}:${pad(now.getSeconds())}`;
  }

  // -- start ------------------------------------------------------------------------------------

  async function startPicture() {
    window.i18n.apply(document);
    const me = await api("/me");
    csrf = me.csrf || "";
    state.identity = me.identity;
    document.getElementById("logout").hidden = !me.login;
    const { regions } = await api("/regions");
    for (const region of regions) {
      state.regions.set(region.code, region);
      if (region.parent) {
        if (!state.children.has(region.parent)) state.children.set(region.parent, []);
        state.children.get(region.parent).push(region.code);
      }
    }
    chart = window.echarts.init(document.getElementById("map"), null, { renderer: "canvas", useDirtyRect: true });
    renderIdentity();
    renderRegionPicker();
    readFilters();
    showMode();
    wireControls();
    tickClock();
    setInterval(tickClock, 1000);
    await reload();
  }

  function startLogin() {
    window.i18n.apply(document);
    const form = document.getElementById("login");
    const error = document.getElementById("login-error");
    document.getElementById("lang").addEventListener("click", () => window.i18n.toggle());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const button = document.getElementById("login-submit");
      button.disabled = true;
      try {
        await api("/login", {
          method: "POST",
          body: { user: form.elements.user.value, password: form.elements.password.value },
        });
        window.location.assign("/picture/");
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        if (err.status === 401) error.textContent = t("login.failed");
        else if (err.status === 429) error.textContent = t("login.limited", { s: err.body?.retry_after_s ?? "?" });
        else error.textContent = t("login.error", { msg: err.message });
        error.hidden = false;
      } finally {
        button.disabled = false;
      }
    });
  }

  // Test and benchmark hooks: read-only views of what the page holds and draws.
  window.yiwangPicture = {
    stats,
    state,
    get chart() {
      return chart;
    },
    replay,
    /** What the map draws now, read back from the chart: area colours by region code and point counts. */
    mapView() {
      if (!chart) return null;
      const option = chart.getOption();
      const byName = new Map([...state.mapFeatures].map(([code, name]) => [name, code]));
      const areas = {};
      for (const region of option.geo[0].regions || []) {
        const colour = region.itemStyle && region.itemStyle.areaColor;
        if (colour && colour !== PLAIN_AREA) areas[byName.get(region.name)] = colour;
      }
      const points = {};
      for (const series of option.series) points[series.id] = series.data.length;
      return { map: option.geo[0].map, areas, points };
    },
  };

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "picture") {
      startPicture().catch((err) => {
        if (!(err instanceof ApiError)) throw err;
        if (err.status !== 401) toast(t("error.load", { msg: err.message }));
      });
    }
    else if (page === "login") startLogin();
  });
})();
