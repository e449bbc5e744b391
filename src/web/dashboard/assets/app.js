// Doppel dashboard: live updates over SSE, charts (uPlot), desired editing, commands, alarms
// and push opt-in. Served from this origin only (the page's Content-Security-Policy forbids
// inline scripts); every change goes through the operator API with the session's CSRF token.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

/** Calls the operator API; resolves with `{status, body}`. */
async function api(method, path, body, headers = {}) {
  const res = await fetch(path, {
    method,
    headers: {
      "content-type": "application/json",
      "x-csrf-token": csrf,
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function time(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString();
}

function errorText(result) {
  const error = result.body && result.body.error;
  return error ? `${error.message}` : `HTTP ${result.status}`;
}

/** Opens the live stream; `onNotices` gets arrays of committed notices. */
function stream(query, handlers) {
  const source = new EventSource(`/api/v1/stream${query}`);
  source.addEventListener("notices", (e) => handlers.notices?.(JSON.parse(e.data)));
  source.addEventListener("stats", (e) => handlers.stats?.(JSON.parse(e.data)));
  source.addEventListener("hello", () => document.body.setAttribute("data-live", "1"));
  return source;
}

// ---- Alarms (tables on the alarms and device pages) ----------------------------------------

function bindAlarmButtons(root, after) {
  root.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const row = button.closest("tr[data-alarm]");
    const action = button.dataset.action;
    button.disabled = true;
    const result = await api(
      "POST",
      `/api/v1/alarms/${encodeURIComponent(row.dataset.alarm)}/${action}`,
    );
    if (result.status !== 200) {
      alert(errorText(result));
      button.disabled = false;
      return;
    }
    after(result.body, row);
  });
}

function alarmRow(alarm, withDevice) {
  const actions = el("td");
  if (alarm.state === "active") {
    actions.append(el("button", { type: "button", "data-action": "acknowledge" }, "Acknowledge"));
  }
  if (alarm.state !== "cleared") {
    actions.append(
      el("button", { type: "button", "data-action": "clear", class: "secondary" }, "Clear"),
    );
  }
  return el(
    "tr",
    { "data-alarm": alarm.id },
    withDevice
      ? el(
        "td",
        {},
        el("a", { href: `/devices/${encodeURIComponent(alarm.deviceId)}` }, alarm.deviceId),
      )
      : null,
    el("td", { title: alarm.message }, alarm.type),
    el("td", {}, el("span", { class: `sev ${alarm.severity}` }, alarm.severity)),
    el("td", { class: "state" }, alarm.state),
    el("td", {}, alarm.count),
    el("td", {}, time(alarm.raisedAt)),
    actions,
  );
}

// ---- Overview -------------------------------------------------------------------------------

function overviewPage() {
  const feed = document.getElementById("feed");
  stream("", {
    stats(stats) {
      document.getElementById("rate").textContent = stats.messagesPerSecond.toFixed(1);
      document.getElementById("active-twins").textContent = stats.activeTwins;
      const connected = Object.values(stats.connected).reduce((a, b) => a + b, 0);
      document.getElementById("connected").textContent = connected;
    },
    notices(notices) {
      for (const notice of notices) {
        let text;
        if (notice.type === "alarm.changed") {
          text =
            `${notice.alarm.severity} alarm ${notice.alarm.type} on ${notice.deviceId}: ${notice.change}`;
          const item = document.querySelector(
            `#alarms-by-severity [data-severity="${notice.alarm.severity}"] b`,
          );
          if (item && notice.change === "raised") {
            item.textContent = String(Number(item.textContent) + 1);
          }
          if (item && notice.change === "cleared") {
            item.textContent = String(Math.max(0, Number(item.textContent) - 1));
          }
        } else if (notice.type === "presence.changed") {
          text = `${notice.deviceId} is ${notice.connection.status} (${notice.connection.reason})`;
        } else continue;
        feed.prepend(el("li", {}, `${new Date().toLocaleTimeString()} · ${text}`));
        while (feed.children.length > 30) feed.lastChild.remove();
      }
    },
  });
}

// ---- Device page ----------------------------------------------------------------------------

function devicePage() {
  const root = document.getElementById("device");
  const id = root.dataset.id;
  const enc = encodeURIComponent(id);
  let version = Number(root.dataset.version);
  // The version the editor's text was loaded from: what a save is conditional on.
  let editorVersion = version;
  let metrics = JSON.parse(root.dataset.metrics);
  const charts = new Map();

  // Twin: desired / reported / delta with per-property timestamps.
  async function refreshTwin() {
    const result = await api("GET", `/api/v1/twins/${enc}`);
    if (result.status !== 200) return;
    const twin = result.body;
    version = twin.version;
    document.getElementById("twin-version").textContent = String(version);
    const state = document.getElementById("twin-state");
    state.replaceChildren(
      stateTable("Desired", twin.desired, twin.metadata.desired),
      stateTable("Reported", twin.reported, twin.metadata.reported),
      stateTable("Delta", twin.delta),
    );
    setPresence(twin.connection);
    const form = document.getElementById("desired-form");
    if (document.activeElement !== form.desired) {
      form.desired.value = JSON.stringify(twin.desired, null, 2);
      form.dataset.base = JSON.stringify(twin.desired);
      editorVersion = twin.version;
    }
    const fresh = Object.entries(twin.telemetry.last)
      .filter(([name, value]) => typeof value === "number" && !metrics.includes(name))
      .map(([name]) => name);
    if (fresh.length) {
      metrics = [...metrics, ...fresh].sort();
      loadCharts();
    }
  }

  function stateTable(title, doc, meta) {
    const body = el("tbody");
    const walk = (node, path) => {
      for (const [key, value] of Object.entries(node)) {
        if (value && typeof value === "object" && !Array.isArray(value)) {
          walk(value, [...path, key]);
        } else {
          let m = meta;
          for (const part of [...path, key]) m = m && m[part];
          body.append(el(
            "tr",
            {},
            el("th", {}, [...path, key].join(".")),
            el("td", {}, el("code", {}, JSON.stringify(value))),
            meta
              ? el("td", { class: "muted" }, m ? `v${m.version} · ${time(m.updatedAt)}` : "")
              : null,
          ));
        }
      }
    };
    walk(doc, []);
    if (!body.children.length) body.append(el("tr", {}, el("td", { class: "muted" }, "(empty)")));
    return el(
      "table",
      { class: "state", "data-part": title.toLowerCase() },
      el("caption", {}, title),
      body,
    );
  }

  function setPresence(connection) {
    document.getElementById("presence").className = `dot ${connection.status}`;
    document.getElementById("presence-text").textContent = connection.status;
  }

  // Desired editing: the textarea's document becomes a merge patch (removed keys → null),
  // sent with If-Match so a change made meanwhile is refused, not overwritten.
  const desiredForm = document.getElementById("desired-form");
  desiredForm.dataset.base = desiredForm.desired.value
    ? JSON.stringify(JSON.parse(desiredForm.desired.value))
    : "{}";
  desiredForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = document.getElementById("desired-status");
    let next;
    try {
      next = JSON.parse(desiredForm.desired.value);
    } catch (error) {
      status.className = "status error";
      status.textContent = `Not JSON: ${error.message}`;
      return;
    }
    const patch = mergePatch(JSON.parse(desiredForm.dataset.base || "{}"), next);
    const result = await api("PATCH", `/api/v1/twins/${enc}/desired`, patch, {
      "if-match": `"${editorVersion}"`,
    });
    if (result.status === 200) {
      status.className = "status ok";
      status.textContent = `Saved: version ${result.body.version}.`;
      desiredForm.dataset.base = JSON.stringify(result.body.desired);
      editorVersion = result.body.version;
      await refreshTwin();
    } else if (result.status === 412) {
      status.className = "status error";
      status.textContent =
        "Someone changed this twin meanwhile; it was reloaded. Review and save again.";
      desiredForm.desired.blur();
      await refreshTwin();
    } else {
      status.className = "status error";
      status.textContent = errorText(result);
    }
  });

  function mergePatch(before, after) {
    const patch = {};
    for (const key of Object.keys(before)) if (!(key in after)) patch[key] = null;
    for (const [key, value] of Object.entries(after)) {
      const old = before[key];
      if (
        value && typeof value === "object" && !Array.isArray(value) && old &&
        typeof old === "object" && !Array.isArray(old)
      ) {
        const inner = mergePatch(old, value);
        if (Object.keys(inner).length) patch[key] = inner;
      } else if (JSON.stringify(old) !== JSON.stringify(value)) patch[key] = value;
    }
    return patch;
  }

  // Commands: send, and watch their status change live.
  const commandRows = new Map();
  const commandSteps = new Map();
  function showCommand(command) {
    // Answers and live updates may arrive out of order: never show an older state.
    const steps = command.history ? command.history.length : 0;
    if ((commandSteps.get(command.id) ?? -1) > steps) return;
    commandSteps.set(command.id, steps);
    const row = el(
      "tr",
      { "data-command": command.id },
      el("td", {}, command.name),
      el("td", { class: "status-cell" }, command.status),
      el("td", {}, command.result === undefined ? "" : JSON.stringify(command.result)),
      el("td", {}, time(command.createdAt)),
    );
    const old = commandRows.get(command.id);
    if (old) old.replaceWith(row);
    else document.querySelector("#commands tbody").prepend(row);
    commandRows.set(command.id, row);
  }
  api("GET", `/api/v1/devices/${enc}/commands?limit=20`).then((result) => {
    if (result.status === 200) { for (const c of result.body.items.reverse()) showCommand(c); }
  });
  const commandForm = document.getElementById("command-form");
  commandForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = document.getElementById("command-status");
    let payload;
    try {
      payload = JSON.parse(commandForm.payload.value || "{}");
    } catch (error) {
      status.className = "status error";
      status.textContent = `Payload is not JSON: ${error.message}`;
      return;
    }
    const result = await api("POST", `/api/v1/devices/${enc}/commands`, {
      name: commandForm.name.value,
      payload,
    });
    if (result.status === 202 || result.status === 200) {
      status.className = "status ok";
      status.textContent = `Queued ${result.body.id}.`;
      showCommand(result.body);
    } else {
      status.className = "status error";
      status.textContent = errorText(result);
    }
  });

  // Charts: one per numeric metric, over the chosen range, raw points or rollups.
  const range = document.getElementById("range");
  range.addEventListener("change", loadCharts);
  let chartGeneration = 0;
  async function loadCharts() {
    // A newer load (a new metric, another range) replaces an older one still under way.
    const generation = ++chartGeneration;
    const [level, span] = range.value.split(":");
    const to = Date.now();
    const from = to - Number(span);
    const box = document.getElementById("charts");
    box.replaceChildren();
    charts.clear();
    for (const metric of metrics) {
      const params = new URLSearchParams({
        metric,
        from: String(from),
        to: String(to),
        limit: "100000",
      });
      if (level !== "raw") params.set("bucket", level);
      const result = await api("GET", `/api/v1/devices/${enc}/telemetry?${params}`);
      if (generation !== chartGeneration) return;
      if (result.status !== 200) continue;
      const xs = [], ys = [], mins = [], maxs = [];
      for (const item of result.body.items) {
        if (level === "raw") {
          xs.push(Date.parse(item.ts) / 1000);
          ys.push(item.value);
        } else {
          xs.push(Date.parse(item.start) / 1000);
          ys.push(item.avg);
          mins.push(item.min);
          maxs.push(item.max);
        }
      }
      const holder = el("div", { class: "chart", "data-metric": metric }, el("h3", {}, metric));
      box.append(holder);
      const series = [{}, {
        label: level === "raw" ? metric : `${metric} (avg)`,
        stroke: "#2f6fde",
        width: 2,
      }];
      const data = [xs, ys];
      if (level !== "raw") {
        series.push({ label: "min", stroke: "#9fb8e8" }, { label: "max", stroke: "#e8a89f" });
        data.push(mins, maxs);
      }
      const plot = new uPlot(
        { width: Math.min(box.clientWidth || 900, 1200), height: 220, series },
        data,
        holder,
      );
      holder.dataset.points = String(xs.length);
      charts.set(metric, { plot, data, level, span: Number(span) });
    }
  }

  function addPoints(items) {
    for (const [metric, chart] of charts) {
      if (chart.level !== "raw") continue;
      let added = 0;
      for (const item of items) {
        const value = item.values[metric];
        if (typeof value !== "number") continue;
        chart.data[0].push(item.ts / 1000);
        chart.data[1].push(value);
        added++;
      }
      if (!added) continue;
      const horizon = Date.now() / 1000 - chart.span / 1000;
      while (chart.data[0].length && chart.data[0][0] < horizon) {
        chart.data[0].shift();
        chart.data[1].shift();
      }
      chart.plot.setData(chart.data);
      chart.plot.root.parentElement.dataset.points = String(chart.data[0].length);
    }
  }

  // Alarms and presence history.
  let alarmGeneration = 0;
  async function refreshAlarms() {
    const generation = ++alarmGeneration;
    const result = await api("GET", `/api/v1/alarms?device=${enc}&limit=20`);
    if (result.status !== 200 || generation !== alarmGeneration) return;
    document.querySelector("#device-alarms tbody").replaceChildren(
      ...result.body.items.map((alarm) => alarmRow(alarm, false)),
    );
  }
  bindAlarmButtons(document.getElementById("device-alarms"), () => refreshAlarms());
  async function refreshPresence() {
    const result = await api("GET", `/api/v1/devices/${enc}/events?type=presence&limit=20`);
    if (result.status !== 200) return;
    document.getElementById("presence-history").replaceChildren(
      ...result.body.items.map((event) =>
        el(
          "li",
          {},
          `${time(event.at)} · ${event.type.replace("presence.", "")} · ${
            event.data?.reason ?? ""
          }${event.data?.transport ? ` (${event.data.transport})` : ""}`,
        )
      ),
    );
  }

  let twinTimer = null;
  stream(`?device=${enc}`, {
    notices(notices) {
      const points = [];
      for (const notice of notices) {
        if (notice.type === "telemetry") points.push(...notice.items);
        else if (notice.type === "command.changed") showCommand(notice.command);
        else if (notice.type === "alarm.changed") refreshAlarms();
        else if (notice.type === "presence.changed") {
          setPresence(notice.connection);
          refreshPresence();
        }
        if (notice.type === "twin.changed" || notice.type === "telemetry") {
          clearTimeout(twinTimer);
          twinTimer = setTimeout(refreshTwin, 300);
        }
      }
      if (points.length) addPoints(points);
    },
  });
  loadCharts();
  refreshAlarms();
  refreshPresence();
}

// ---- Alarms page ----------------------------------------------------------------------------

function alarmsPage() {
  const table = document.getElementById("alarms");
  bindAlarmButtons(table, (alarm, row) => row.replaceWith(alarmRow(alarm, true)));
  stream("", {
    notices(notices) {
      for (const notice of notices) {
        if (notice.type !== "alarm.changed") continue;
        const row = table.querySelector(`tr[data-alarm="${CSS.escape(notice.alarm.id)}"]`);
        const fresh = alarmRow(notice.alarm, true);
        if (row) row.replaceWith(fresh);
        else table.querySelector("tbody").prepend(fresh);
      }
    },
  });
}

// ---- Push opt-in ----------------------------------------------------------------------------

function setupPush() {
  const button = document.getElementById("push-optin");
  if (!button || !("serviceWorker" in navigator) || !("PushManager" in window)) return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    try {
      const permission = await Notification.requestPermission();
      if (permission !== "granted") throw new Error("notifications were not allowed");
      const registration = await navigator.serviceWorker.register("/sw.js");
      const key = await api("GET", "/api/v1/push/vapid-public-key");
      const subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: key.body.publicKey,
      });
      const result = await api("POST", "/api/v1/push/subscriptions", subscription.toJSON());
      if (result.status !== 201) throw new Error(errorText(result));
      button.textContent = "Alarm notifications on";
      button.disabled = true;
    } catch (error) {
      button.textContent = `Notifications unavailable: ${error.message}`;
    }
  });
}

const page = document.body.dataset.page;
if (page === "overview") overviewPage();
else if (page === "device") devicePage();
else if (page === "alarms") alarmsPage();
if (page !== "login") setupPush();
