/**
 * Server-rendered dashboard pages (Hono JSX). Pages carry their data in the markup and in
 * `data-*` attributes; `assets/app.js` adds live updates, charts and forms.
 * @module
 */
import type { Child, FC } from "hono/jsx";
import { raw } from "hono/html";
import type { AlarmRecord } from "../../rules/alarms.ts";
import type { PublicDevice } from "../../registry/devices.ts";
import type { PublicTwin } from "../../twin/state.ts";

/** What every page needs. */
export interface PageContext {
  /** The session's CSRF token, for forms and scripts. */
  csrf: string;
  /** Which nav item is current. */
  current: "overview" | "devices" | "alarms" | "none";
}

const Layout: FC<{ ctx: PageContext; title: string; page: string; children?: Child }> = (
  { ctx, title, page, children },
) => (
  <>
    {raw("<!DOCTYPE html>")}
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="csrf-token" content={ctx.csrf} />
        <title>{title} · Doppel</title>
        <link rel="stylesheet" href="/assets/uplot.css" />
        <link rel="stylesheet" href="/assets/app.css" />
        <script src="/assets/uplot.js" defer></script>
        <script src="/assets/app.js" defer></script>
      </head>
      <body data-page={page}>
        <header>
          <a class="brand" href="/">Doppel</a>
          <nav>
            <a href="/" class={ctx.current === "overview" ? "current" : ""}>Overview</a>
            <a href="/devices" class={ctx.current === "devices" ? "current" : ""}>Devices</a>
            <a href="/alarms" class={ctx.current === "alarms" ? "current" : ""}>Alarms</a>
            <a href="/docs">API</a>
          </nav>
          <button type="button" id="push-optin" class="secondary" hidden>
            Notify me of alarms
          </button>
          <form method="post" action="/logout" class="inline">
            <input type="hidden" name="_csrf" value={ctx.csrf} />
            <button type="submit" class="secondary">Sign out</button>
          </form>
        </header>
        <main>{children}</main>
      </body>
    </html>
  </>
);

/** The sign-in page. */
export const LoginPage: FC<{ csrf: string; error?: string }> = ({ csrf, error }) => (
  <>
    {raw("<!DOCTYPE html>")}
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>Sign in · Doppel</title>
        <link rel="stylesheet" href="/assets/app.css" />
      </head>
      <body data-page="login">
        <main class="login">
          <h1>Doppel</h1>
          <p>Sign in with the operator token (printed once when Doppel first started).</p>
          {error ? <p class="error" role="alert">{error}</p> : null}
          <form method="post" action="/login">
            <input type="hidden" name="_csrf" value={csrf} />
            <label>
              Operator token
              <input type="password" name="token" autocomplete="current-password" required />
            </label>
            <button type="submit">Sign in</button>
          </form>
        </main>
      </body>
    </html>
  </>
);

/** Fleet counts for the overview. */
export interface Overview {
  /** Devices by presence status. */
  byStatus: Record<string, number>;
  /** Devices by kind. */
  byKind: Record<string, number>;
  /** Open alarms by severity. */
  alarmsBySeverity: Record<string, number>;
  /** Devices counted. */
  total: number;
}

/** The fleet overview. */
export const OverviewPage: FC<{ ctx: PageContext; overview: Overview }> = (
  { ctx, overview },
) => (
  <Layout ctx={ctx} title="Overview" page="overview">
    <h1>Fleet</h1>
    <section class="cards">
      <div class="card">
        <h2>Devices</h2>
        <p class="big" id="count-total">{overview.total}</p>
        <ul class="counts" id="by-status">
          {["online", "offline", "never"].map((status) => (
            <li data-status={status}>
              <span class={`dot ${status}`}></span>
              {status} <b>{overview.byStatus[status] ?? 0}</b>
            </li>
          ))}
        </ul>
      </div>
      <div class="card">
        <h2>By kind</h2>
        <ul class="counts">
          {Object.entries(overview.byKind).map(([kind, n]) => (
            <li>
              <a href={`/devices?kind=${encodeURIComponent(kind)}`}>{kind}</a> <b>{n}</b>
            </li>
          ))}
        </ul>
      </div>
      <div class="card">
        <h2>Open alarms</h2>
        <ul class="counts" id="alarms-by-severity">
          {["critical", "major", "minor", "warning"].map((severity) => (
            <li data-severity={severity}>
              <span class={`sev ${severity}`}>{severity}</span>{" "}
              <b>{overview.alarmsBySeverity[severity] ?? 0}</b>
            </li>
          ))}
        </ul>
      </div>
      <div class="card">
        <h2>Messages per second</h2>
        <p class="big" id="rate">–</p>
        <p class="muted">
          <span id="active-twins">–</span> twins active · <span id="connected">–</span> sessions
        </p>
      </div>
    </section>
    <h2>Recent alarm and presence changes</h2>
    <ul id="feed" class="feed"></ul>
  </Layout>
);

/** Query of the device list. */
export interface DeviceFilter {
  /** Text the id must contain. */
  q?: string;
  /** Kind. */
  kind?: string;
  /** `name:value`. */
  tag?: string;
  /** Presence. */
  status?: string;
}

/** The device list. */
export const DevicesPage: FC<{
  ctx: PageContext;
  devices: PublicDevice[];
  filter: DeviceFilter;
  kinds: string[];
  next: string | null;
}> = ({ ctx, devices, filter, kinds, next }) => (
  <Layout ctx={ctx} title="Devices" page="devices">
    <h1>Devices</h1>
    <form method="get" action="/devices" class="filters">
      <input type="search" name="q" placeholder="Search ids" value={filter.q ?? ""} />
      <select name="kind">
        <option value="">Any kind</option>
        {kinds.map((kind) => <option value={kind} selected={filter.kind === kind}>{kind}</option>)}
      </select>
      <input type="text" name="tag" placeholder="tag name:value" value={filter.tag ?? ""} />
      <select name="status">
        <option value="">Any status</option>
        {["online", "offline", "never"].map((status) => (
          <option value={status} selected={filter.status === status}>{status}</option>
        ))}
      </select>
      <button type="submit">Filter</button>
    </form>
    <table class="list">
      <thead>
        <tr>
          <th>Device</th>
          <th>Kind</th>
          <th>Status</th>
          <th>Last seen</th>
          <th>Tags</th>
        </tr>
      </thead>
      <tbody>
        {devices.map((device) => (
          <tr>
            <td>
              <a href={`/devices/${encodeURIComponent(device.id)}`}>{device.id}</a>
              {device.enabled ? null : <span class="badge">disabled</span>}
            </td>
            <td>{device.kind}</td>
            <td>
              <span class={`dot ${device.connection?.status ?? "never"}`}></span>
              {device.connection?.status ?? "never"}
            </td>
            <td>
              <time datetime={device.connection?.lastSeenAt ?? ""}>
                {device.connection?.lastSeenAt ?? "—"}
              </time>
            </td>
            <td>{Object.entries(device.tags).map(([k, v]) => `${k}:${v}`).join(", ")}</td>
          </tr>
        ))}
      </tbody>
    </table>
    {devices.length === 0 ? <p class="muted">No devices match.</p> : null}
    {next
      ? (
        <p>
          <a href={`/devices?${new URLSearchParams({ ...clean(filter), cursor: next })}`}>
            Next page →
          </a>
        </p>
      )
      : null}
  </Layout>
);

/** One device: its twin, commands, charts, presence and alarms. */
export const DevicePage: FC<{
  ctx: PageContext;
  device: PublicDevice;
  twin: PublicTwin;
  commands: string[];
  metrics: string[];
}> = ({ ctx, device, twin, commands, metrics }) => (
  <Layout ctx={ctx} title={device.id} page="device">
    <div
      id="device"
      data-id={device.id}
      data-version={String(twin.version)}
      data-metrics={JSON.stringify(metrics)}
    >
      <h1>
        {device.id} <span class="muted">{device.kind}</span>{" "}
        <span id="presence" class={`dot ${twin.connection.status}`} title={twin.connection.status}>
        </span>
        <span id="presence-text" class="muted">{twin.connection.status}</span>
      </h1>
      <section class="grid">
        <div class="card">
          <h2>
            Twin{" "}
            <span class="muted">
              version <span id="twin-version">{twin.version}</span>
            </span>
          </h2>
          <div id="twin-state">
            <StateTable title="Desired" doc={twin.desired} meta={twin.metadata.desired} />
            <StateTable title="Reported" doc={twin.reported} meta={twin.metadata.reported} />
            <StateTable title="Delta" doc={twin.delta} />
          </div>
          <form id="desired-form">
            <label>
              Edit desired (JSON; properties you remove are deleted)
              <textarea name="desired" rows={6} spellcheck={false}>
                {JSON.stringify(twin.desired, null, 2)}
              </textarea>
            </label>
            <button type="submit">Save desired</button>
            <p id="desired-status" class="status" role="status"></p>
          </form>
        </div>
        <div class="card">
          <h2>Commands</h2>
          <form id="command-form">
            <label>
              Command
              <select name="name">
                {commands.map((name) => <option value={name}>{name}</option>)}
              </select>
              {commands.length === 0 ? <input name="name" placeholder="name" /> : null}
            </label>
            <label>
              Payload (JSON)
              <textarea name="payload" rows={3} spellcheck={false}>{"{}"}</textarea>
            </label>
            <button type="submit">Send command</button>
            <p id="command-status" class="status" role="status"></p>
          </form>
          <table class="list" id="commands">
            <thead>
              <tr>
                <th>Command</th>
                <th>Status</th>
                <th>Result</th>
                <th>Created</th>
              </tr>
            </thead>
            <tbody></tbody>
          </table>
        </div>
      </section>
      <section class="card">
        <h2>
          Telemetry{" "}
          <select id="range">
            <option value="raw:3600000">last hour (raw)</option>
            <option value="1m:86400000">24 hours (1 min)</option>
            <option value="1h:604800000">7 days (1 hour)</option>
            <option value="1h:2592000000">30 days (1 hour)</option>
            <option value="1d:31536000000">1 year (1 day)</option>
          </select>
        </h2>
        <div id="charts">
          {metrics.length === 0 ? <p class="muted">No numeric telemetry yet.</p> : null}
        </div>
      </section>
      <section class="grid">
        <div class="card">
          <h2>Alarms</h2>
          <table class="list" id="device-alarms">
            <AlarmHead />
            <tbody></tbody>
          </table>
        </div>
        <div class="card">
          <h2>Presence</h2>
          <ul id="presence-history" class="feed"></ul>
        </div>
      </section>
    </div>
  </Layout>
);

/** Alarms across the fleet. */
export const AlarmsPage: FC<{ ctx: PageContext; alarms: AlarmRecord[]; state?: string }> = (
  { ctx, alarms, state },
) => (
  <Layout ctx={ctx} title="Alarms" page="alarms">
    <h1>Alarms</h1>
    <form method="get" action="/alarms" class="filters">
      <select name="state">
        <option value="">Open and cleared</option>
        {["active", "acknowledged", "cleared"].map((s) => (
          <option value={s} selected={state === s}>{s}</option>
        ))}
      </select>
      <button type="submit">Filter</button>
    </form>
    <AlarmTable alarms={alarms} withDevice />
  </Layout>
);

/** The columns of an alarm table (the device page's rows are filled in by the client script). */
const AlarmHead: FC<{ withDevice?: boolean }> = ({ withDevice }) => (
  <thead>
    <tr>
      {withDevice ? <th>Device</th> : null}
      <th>Alarm</th>
      <th>Severity</th>
      <th>State</th>
      <th>Count</th>
      <th>Raised</th>
      <th></th>
    </tr>
  </thead>
);

/** A table of alarms with acknowledge and clear buttons. */
export const AlarmTable: FC<{ alarms: AlarmRecord[]; withDevice?: boolean }> = (
  { alarms, withDevice },
) => (
  <table class="list" id="alarms">
    <AlarmHead withDevice={withDevice} />
    <tbody>
      {alarms.map((alarm) => (
        <tr data-alarm={alarm.id}>
          {withDevice
            ? (
              <td>
                <a href={`/devices/${encodeURIComponent(alarm.deviceId)}`}>{alarm.deviceId}</a>
              </td>
            )
            : null}
          <td title={alarm.message}>{alarm.type}</td>
          <td>
            <span class={`sev ${alarm.severity}`}>{alarm.severity}</span>
          </td>
          <td class="state">{alarm.state}</td>
          <td>{alarm.count}</td>
          <td>
            <time datetime={alarm.raisedAt}>
              {new Date(alarm.raisedAt).toLocaleString("en-GB")}
            </time>
          </td>
          <td>
            {alarm.state === "active"
              ? <button type="button" data-action="acknowledge">Acknowledge</button>
              : null}
            {alarm.state !== "cleared"
              ? <button type="button" data-action="clear" class="secondary">Clear</button>
              : null}
          </td>
        </tr>
      ))}
    </tbody>
  </table>
);

const StateTable: FC<
  { title: string; doc: Record<string, unknown>; meta?: Record<string, unknown> }
> = ({ title, doc, meta }) => (
  <table class="state" data-part={title.toLowerCase()}>
    <caption>{title}</caption>
    <tbody>
      {leaves(doc).map(([path, value]) => {
        const m = meta ? leafMeta(meta, path) : undefined;
        return (
          <tr>
            <th>{path.join(".")}</th>
            <td>
              <code>{JSON.stringify(value)}</code>
            </td>
            {meta
              ? (
                <td class="muted">
                  {m ? `v${m.version} · ` : ""}
                  <time datetime={m?.updatedAt ?? ""}>{m?.updatedAt ?? ""}</time>
                </td>
              )
              : null}
          </tr>
        );
      })}
      {Object.keys(doc).length === 0
        ? (
          <tr>
            <td class="muted">(empty)</td>
          </tr>
        )
        : null}
    </tbody>
  </table>
);

function leaves(doc: Record<string, unknown>, path: string[] = []): Array<[string[], unknown]> {
  const out: Array<[string[], unknown]> = [];
  for (const [key, value] of Object.entries(doc)) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      out.push(...leaves(value as Record<string, unknown>, [...path, key]));
    } else out.push([[...path, key], value]);
  }
  return out;
}

function leafMeta(
  meta: Record<string, unknown>,
  path: string[],
): { updatedAt: string; version: number } | undefined {
  let node: unknown = meta;
  for (const key of path) node = (node as Record<string, unknown> | undefined)?.[key];
  const leaf = node as { updatedAt?: unknown; version?: unknown } | undefined;
  return typeof leaf?.updatedAt === "string" && typeof leaf?.version === "number"
    ? { updatedAt: leaf.updatedAt, version: leaf.version }
    : undefined;
}

function clean(filter: DeviceFilter): Record<string, string> {
  return Object.fromEntries(Object.entries(filter).filter(([, v]) => v)) as Record<string, string>;
}
