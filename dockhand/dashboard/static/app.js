// dockhand dashboard: plain JavaScript, no build step.
// State arrives over one EventSource (/api/events): a whole "snapshot" first on every
// (re)connection, then changes. The DOM stays bounded: host rows are kept and updated in place,
// a host's workspaces are shown only when it is expanded (PAGE at a time, "Show more"), the
// services list is capped the same way and the feed shows its last FEED_SHOWN entries.
"use strict";
(() => {
  const PAGE = 50;
  const FEED_SHOWN = 100;
  const STALE_MS = 5000; // the server ticks every second: this much silence means a dead stream
  const SEVERITY = { unhealthy: 0, silent: 1, degraded: 2, healthy: 3 };

  const S = {
    hosts: new Map(), // host id -> host
    ws: new Map(), // host id -> Map(workspace id -> row)
    services: new Map(), // host id -> [service]
    feed: [],
    bus: { state: "connecting", detail: "" },
    offset: 0, // browser clock minus server clock, seconds
    stream: "connecting",
    open: new Set(), // expanded hosts
    shown: new Map(), // host id -> workspaces shown
    servicesShown: PAGE,
    filter: "",
    failuresOnly: false,
    lastMessage: 0,
  };
  const dirty = { hosts: new Set(), allHosts: true, ws: new Set(), services: true, feed: true };
  const rows = new Map(); // host id -> {row, detail, cells}
  let source = null;
  let frame = 0;

  const $ = (id) => document.getElementById(id);
  const natural = (a, b) => a.localeCompare(b, "en", { numeric: true });
  const serverNow = () => Date.now() / 1000 - S.offset;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // --- formatting --------------------------------------------------------------------------

  function ago(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "never";
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return `${s} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }

  function until(iso) {
    if (!iso) return "";
    const t = /^\d+(\.\d+)?$/.test(String(iso)) ? Number(iso) * 1000 : Date.parse(iso); // epoch seconds or RFC 3339
    if (isNaN(t)) return String(iso);
    const s = Math.round(t / 1000 - serverNow());
    if (s <= 0) return "expired";
    if (s < 90) return `in ${s} s`;
    if (s < 5400) return `in ${Math.round(s / 60)} min`;
    return `in ${Math.round(s / 3600)} h`;
  }

  function clock(epoch) {
    const d = new Date((epoch + S.offset) * 1000);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function latency(host) {
    const docker = host.docker || {};
    if (docker.reachable === false) return "unreachable";
    if (docker.latency_ms === null || docker.latency_ms === undefined) return "–";
    return `${Number(docker.latency_ms).toFixed(docker.latency_ms < 10 ? 1 : 0)} ms`;
  }

  function commands(host) {
    const c = host.commands || {};
    const parts = [`${c.succeeded || 0} ok`, `${c.failed || 0} failed`, `${c.rejected || 0} rejected`];
    if (c.expired) parts.push(`${c.expired} expired`);
    if (c.in_flight) parts.push(`${c.in_flight} in flight`);
    return parts.join(" · ");
  }

  const SVG = "http://www.w3.org/2000/svg";
  function sparkline(values, label) {
    const nums = values.map((v) => (v === null || v === undefined ? null : Number(v)));
    const known = nums.filter((v) => v !== null);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", "80");
    svg.setAttribute("height", "18");
    svg.setAttribute("viewBox", "0 0 80 18");
    svg.setAttribute("role", "img");
    if (known.length < 2) {
      svg.setAttribute("aria-label", `${label}: not enough samples yet`);
      return svg;
    }
    const lo = Math.min(...known);
    const hi = Math.max(...known);
    const span = hi - lo || 1;
    const step = 80 / Math.max(1, nums.length - 1);
    const points = [];
    nums.forEach((v, i) => {
      if (v !== null) points.push(`${(i * step).toFixed(1)},${(16 - ((v - lo) / span) * 14).toFixed(1)}`);
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
    const summary = `${label} over the last ${known.length} heartbeats: ${round(lo)} to ${round(hi)}`;
    svg.setAttribute("aria-label", summary);
    const title = document.createElementNS(SVG, "title");
    title.textContent = summary;
    svg.prepend(title);
    return svg;
  }
  const round = (v) => (Math.abs(v) < 10 ? Math.round(v * 10) / 10 : Math.round(v));

  function statusBadge(status, extra) {
    return el(
      "span",
      { class: `status s-${status}`, "data-status": status },
      el("span", { class: "dot", "aria-hidden": "true" }),
      el("span", { class: "word", text: status + (extra || "") }),
    );
  }

  // --- the stream --------------------------------------------------------------------------

  function connect() {
    if (source) source.close();
    S.stream = "connecting";
    source = new EventSource("/api/events");
    const on = (kind, handle) =>
      source.addEventListener(kind, (e) => {
        S.lastMessage = Date.now();
        handle(JSON.parse(e.data));
        schedule();
      });
    on("snapshot", load);
    on("host", (host) => {
      S.hosts.set(host.host_id, host);
      dirty.hosts.add(host.host_id);
    });
    on("workspaces", (d) => {
      const map = S.ws.get(d.host_id) || new Map();
      S.ws.set(d.host_id, map);
      for (const id of d.remove) map.delete(id);
      for (const row of d.upsert) map.set(row.workspace_id, row);
      dirty.hosts.add(d.host_id);
      dirty.ws.add(d.host_id);
    });
    on("forget", (d) => {
      // silent for a long time: gone from the fleet
      S.hosts.delete(d.host_id);
      S.ws.delete(d.host_id);
      S.services.delete(d.host_id);
      const entry = rows.get(d.host_id);
      if (entry) {
        entry.row.remove();
        entry.detail.remove();
        rows.delete(d.host_id);
      }
      dirty.services = true;
    });
    on("services", (d) => {
      S.services.set(d.host_id, d.services);
      dirty.services = true;
    });
    on("feed", (item) => {
      S.feed.push(item);
      if (S.feed.length > 400) S.feed.splice(0, S.feed.length - 400);
      dirty.feed = true;
    });
    on("bus", (bus) => {
      S.bus = bus;
    });
    let ticks = 0;
    on("tick", (d) => {
      S.offset = Date.now() / 1000 - d.now;
      dirty.allHosts = true; // the ages
      if (++ticks % 10 === 0) {
        // "expires in ..." moves on: the open lists that show an expiry
        for (const h of S.open) {
          const map = S.ws.get(h);
          if (map && [...map.values()].some((w) => w.expires_at)) dirty.ws.add(h);
        }
      }
    });
    source.onopen = () => {
      S.lastMessage = Date.now();
    };
    source.onerror = () => {
      S.stream = "reconnecting";
      schedule();
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 1500);
    };
  }

  function load(snap) {
    S.offset = Date.now() / 1000 - snap.now;
    S.bus = snap.bus;
    S.hosts = new Map(snap.hosts.map((h) => [h.host_id, h]));
    S.ws = new Map(Object.entries(snap.workspaces).map(([h, list]) => [h, new Map(list.map((w) => [w.workspace_id, w]))]));
    S.services = new Map(Object.entries(snap.services));
    S.feed = snap.feed.slice();
    S.stream = "open";
    dirty.allHosts = true;
    dirty.services = true;
    dirty.feed = true;
    for (const h of S.hosts.keys()) dirty.ws.add(h);
    if (!window.__dashboard.snapshots++) window.__dashboard.snapshotAt = performance.now();
  }

  // A tab that slept (timers frozen, the stream dead without an error) starts again from a
  // snapshot as soon as it runs: the server ticks every second, so silence means a dead stream.
  setInterval(() => {
    if (S.stream === "open" && Date.now() - S.lastMessage > STALE_MS) {
      S.stream = "reconnecting";
      schedule();
      connect();
    }
  }, 1000);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && Date.now() - S.lastMessage > STALE_MS) connect();
  });

  // --- rendering ---------------------------------------------------------------------------

  function schedule() {
    if (!frame) frame = requestAnimationFrame(render);
  }

  function render() {
    frame = 0;
    renderConn();
    renderHosts();
    if (dirty.services) renderServices();
    if (dirty.feed) renderFeed();
    renderSummary();
    dirty.services = dirty.feed = false;
    if (!window.__dashboard.rendered && S.stream === "open") {
      window.__dashboard.rendered = performance.now();
    }
  }

  function renderConn() {
    const conn = $("conn");
    let state;
    let text;
    if (S.stream !== "open") {
      state = "reconnecting";
      text = "reconnecting to the dashboard…";
    } else if (S.bus.state === "reconnecting") {
      state = "reconnecting";
      text = `reconnecting to RabbitMQ… ${S.bus.detail || ""}`.trim();
    } else if (S.bus.state === "connected") {
      state = "live";
      text = "live";
    } else {
      state = "connecting";
      text = "connecting to RabbitMQ…";
    }
    if (conn.dataset.state !== state || conn.textContent !== text) {
      conn.dataset.state = state;
      conn.textContent = text;
    }
  }

  function matches(hostId) {
    if (!S.filter) return true;
    if (hostId.includes(S.filter)) return true;
    const map = S.ws.get(hostId);
    if (!map) return false;
    for (const id of map.keys()) if (id.includes(S.filter)) return true;
    return false;
  }

  function hostRow(hostId) {
    let entry = rows.get(hostId);
    if (entry) return entry;
    const cells = {};
    const cell = (name, tag = "td") => (cells[name] = el(tag, { "data-field": name }));
    const toggle = el("button", {
      type: "button",
      class: "toggle",
      "aria-expanded": "false",
      "aria-controls": `ws-${hostId}`,
      "data-focus": `toggle:${hostId}`,
      onclick: () => {
        if (S.open.has(hostId)) S.open.delete(hostId);
        else S.open.add(hostId);
        dirty.ws.add(hostId);
        dirty.hosts.add(hostId);
        schedule();
      },
    });
    cells.toggle = toggle;
    const head = cell("host", "th");
    head.setAttribute("scope", "row");
    head.textContent = hostId;
    const row = el("tr", { "data-host": hostId, class: "host" }, head, cell("status"), cell("role"), cell("latency"), cell("running"), cell("commands"), cell("seen"), el("td", {}, toggle));
    const detail = el("tr", { class: "detail", id: `ws-${hostId}`, hidden: true }, el("td", { colspan: 8 }));
    entry = { row, detail, cells, status: null, sparkAt: null };
    rows.set(hostId, entry);
    return entry;
  }

  function renderHosts() {
    const body = $("host-rows");
    const ids = [...S.hosts.keys()].sort(natural);
    $("no-hosts").hidden = ids.length > 0;
    for (const [id, entry] of rows) {
      if (!S.hosts.has(id)) {
        // forgotten (a snapshot without it)
        entry.row.remove();
        entry.detail.remove();
        rows.delete(id);
      }
    }
    // Kept in host id order (a row does not move when its status changes: focus stays put).
    let cursor = body.firstChild;
    for (const id of ids) {
      const entry = hostRow(id);
      if (entry.row !== cursor) body.insertBefore(entry.row, cursor);
      if (entry.detail !== entry.row.nextSibling) body.insertBefore(entry.detail, entry.row.nextSibling);
      cursor = entry.detail.nextSibling;
      const visible = matches(id);
      entry.row.hidden = !visible;
      if (dirty.allHosts || dirty.hosts.has(id)) updateHost(id, entry);
      entry.detail.hidden = !visible || !S.open.has(id);
      if (dirty.ws.has(id) && S.open.has(id)) renderWorkspaces(id, entry);
    }
    dirty.hosts.clear();
    dirty.ws.clear();
    dirty.allHosts = false;
  }

  function updateHost(id, entry) {
    const host = S.hosts.get(id);
    const c = entry.cells;
    const age = host.seen_at ? serverNow() - host.seen_at : null;
    if (entry.status !== host.status) {
      c.status.replaceChildren(statusBadge(host.status));
      entry.status = host.status;
      entry.row.dataset.status = host.status;
    }
    let role = host.role || "–";
    if (host.role === "active" && host.broker && host.broker.consuming === false) role += ", not consuming";
    if (host.standbys) role += ` (+${host.standbys} standby)`;
    if (c.role.textContent !== role) c.role.textContent = role;
    const node = host.broker && host.broker.node ? `broker node ${host.broker.node}` : "";
    if (c.role.title !== node) c.role.title = node;
    const sparkKey = host.spark.t.length ? host.spark.t[host.spark.t.length - 1] : null;
    if (entry.sparkAt !== sparkKey || !c.latency.firstChild) {
      entry.sparkAt = sparkKey;
      c.latency.replaceChildren(el("span", { class: "num", text: latency(host) }), sparkline(host.spark.latency_ms, "Docker latency (ms)"));
      const running = host.docker && host.docker.containers_running;
      c.running.replaceChildren(el("span", { class: "num", text: running === null || running === undefined ? "–" : String(running) }), sparkline(host.spark.running, "running containers"));
    } else {
      c.latency.firstChild.textContent = latency(host);
    }
    const cmds = commands(host);
    if (c.commands.textContent !== cmds) c.commands.textContent = cmds;
    const seen = ago(age);
    if (c.seen.textContent !== seen) c.seen.textContent = seen;
    const map = S.ws.get(id);
    const count = map ? map.size : 0;
    const label = `${count} workspace${count === 1 ? "" : "s"} ${S.open.has(id) ? "▾" : "▸"}`;
    if (c.toggle.textContent !== label) c.toggle.textContent = label;
    c.toggle.setAttribute("aria-expanded", String(S.open.has(id)));
  }

  function renderWorkspaces(id, entry) {
    const td = entry.detail.firstChild;
    const focused = document.activeElement && td.contains(document.activeElement) ? document.activeElement.dataset.focus : null;
    const map = S.ws.get(id) || new Map();
    let list = [...map.values()].sort((a, b) => natural(a.workspace_id, b.workspace_id));
    if (S.filter && !id.includes(S.filter)) list = list.filter((w) => w.workspace_id.includes(S.filter));
    const shown = S.shown.get(id) || PAGE;
    const body = el("tbody");
    for (const w of list.slice(0, shown)) {
      body.append(
        el(
          "tr",
          { "data-workspace": w.workspace_id },
          el("th", { scope: "row", text: w.workspace_id }),
          el("td", {}, statusBadge(w.state, w.health ? ` (${w.health})` : "")),
          el("td", { class: "image", text: w.image }),
          el("td", { text: w.ports.join(", ") || "–" }),
          el("td", { text: w.expires_at ? until(w.expires_at) : "–", title: w.expires_at || null }),
          el("td", { text: [w.project, w.stage].filter(Boolean).join(" / ") || "–" }),
        ),
      );
    }
    const parts = [];
    if (list.length) {
      parts.push(
        el(
          "table",
          { class: "workspaces", "aria-label": `Workspaces of ${id}` },
          el("thead", {}, el("tr", {}, ...["Workspace", "State", "Image", "Ports", "Expires", "Project / stage"].map((h) => el("th", { scope: "col", text: h })))),
          body,
        ),
      );
    } else {
      parts.push(el("p", { class: "empty", text: "No workspace." }));
    }
    if (list.length > shown) {
      parts.push(
        el("button", {
          type: "button",
          class: "more",
          "data-focus": `more:${id}`,
          text: `Show ${Math.min(PAGE, list.length - shown)} more (${list.length - shown} not shown)`,
          onclick: () => {
            S.shown.set(id, shown + PAGE);
            dirty.ws.add(id);
            schedule();
          },
        }),
      );
    }
    td.replaceChildren(...parts);
    if (focused) {
      const again = td.querySelector(`[data-focus="${CSS.escape(focused)}"]`);
      if (again) again.focus();
      else entry.cells.toggle.focus();
    }
  }

  function renderServices() {
    const all = [];
    for (const [host, list] of S.services) for (const s of list) all.push({ host, ...s });
    all.sort((a, b) => (a.domain + a.host < b.domain + b.host ? -1 : 1));
    const body = $("service-rows");
    body.replaceChildren(
      ...all.slice(0, S.servicesShown).map((s) =>
        el(
          "tr",
          { "data-domain": s.domain },
          el("th", { scope: "row", text: s.domain }),
          el("td", { text: s.addresses.join(", ") || "–" }),
          el("td", { text: s.host_ports.join(", ") || "–" }),
          el("td", { text: s.host }),
          el("td", { text: s.container_name || s.container_id }),
          el("td", { text: s.health || "–" }),
        ),
      ),
    );
    $("no-services").hidden = all.length > 0;
    const more = $("services-more");
    more.hidden = all.length <= S.servicesShown;
    more.textContent = `Show ${Math.min(PAGE, all.length - S.servicesShown)} more (${all.length - S.servicesShown} not shown)`;
  }

  function renderFeed() {
    const items = S.feed.filter((i) => !S.failuresOnly || i.kind === "failure").slice(-FEED_SHOWN).reverse();
    $("feed-list").replaceChildren(
      ...items.map((i) =>
        el(
          "li",
          { class: `f-${i.kind}`, "data-kind": i.kind, "data-type": i.type },
          el("time", { text: clock(i.t) }),
          el("span", { class: "host", text: i.host_id }),
          el("span", { class: "type", text: i.kind === "failure" ? `${i.type} ${i.status}` : i.type }),
          i.code ? el("code", { class: "code", text: i.code }) : null,
          el("span", { class: "text", text: i.text }),
        ),
      ),
    );
    $("no-feed").hidden = items.length > 0;
  }

  function renderSummary() {
    const counts = { healthy: 0, degraded: 0, unhealthy: 0, silent: 0 };
    for (const h of S.hosts.values()) counts[h.status] = (counts[h.status] || 0) + 1;
    let total = 0;
    let running = 0;
    for (const map of S.ws.values()) {
      total += map.size;
      for (const w of map.values()) if (w.state === "running") running++;
    }
    let services = 0;
    for (const list of S.services.values()) services += list.length;
    const failures = S.feed.filter((i) => i.kind === "failure").length;
    const n = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;
    const text =
      `${n(S.hosts.size, "host")}: ` +
      Object.entries(counts)
        .sort((a, b) => SEVERITY[a[0]] - SEVERITY[b[0]])
        .map(([k, v]) => `${v} ${k}`)
        .join(", ") +
      ` · ${n(total, "workspace")} (${running} running) · ${n(services, "service")} · ${n(failures, "recent failure")}`;
    const summary = $("summary");
    if (summary.textContent !== text) summary.textContent = text;
  }

  // --- controls ----------------------------------------------------------------------------

  window.__dashboard = { snapshots: 0, rendered: 0, state: S };
  document.addEventListener("DOMContentLoaded", () => {
    $("filter").addEventListener("input", (e) => {
      S.filter = e.target.value.trim();
      dirty.allHosts = true;
      for (const h of S.open) dirty.ws.add(h);
      schedule();
    });
    $("failures-only").addEventListener("change", (e) => {
      S.failuresOnly = e.target.checked;
      dirty.feed = true;
      schedule();
    });
    $("services-more").addEventListener("click", () => {
      S.servicesShown += PAGE;
      dirty.services = true;
      schedule();
    });
    connect();
  });
})();
