/**
 * The dashboard's routes: sign-in and sign-out, the pages, the service worker and the static
 * assets, all with a strict Content-Security-Policy (scripts and styles from this origin only).
 * Pages need a session; everything they change goes through the operator API with the
 * session's CSRF token.
 * @module
 */
import { type Context, Hono } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import type { CookieOptions } from "hono/utils/cookie";
import uplotCss from "uplot/dist/uPlot.min.css" with { type: "text" };
import uplotJs from "uplot/dist/uPlot.iife.min.js" with { type: "text" };
import { DoppelError } from "../../errors.ts";
import { randomSecret, timingSafeEqual } from "../../registry/secrets.ts";
import type { AlarmRecord } from "../../rules/alarms.ts";
import { keys } from "../../storage/keys.ts";
import { loadTwin } from "../../storage/twin_store.ts";
import { publicTwin } from "../../twin/state.ts";
import { readForm } from "../http.ts";
import { clientAddress, isSecure, publicOrigin } from "../origin.ts";
import type { Services } from "../services.ts";
import { SESSION_COOKIE, SESSION_MS } from "../session.ts";
import appCss from "./assets/app.css" with { type: "text" };
import appJs from "./assets/app.js" with { type: "text" };
import swJs from "./assets/sw.js" with { type: "text" };
import {
  AlarmsPage,
  DevicePage,
  DevicesPage,
  LoginPage,
  type Overview,
  OverviewPage,
  type PageContext,
} from "./pages.tsx";

/** The policy every dashboard response carries. */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "worker-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

const LOGIN_COOKIE = "doppel_login";
/** The sign-in and sign-out forms are a token and a CSRF field: a few hundred bytes. */
const FORM_LIMIT = 4096;
/** Failed sign-ins allowed per client address per minute. */
const MAX_FAILURES = 10;

type Env = { Variables: { page: PageContext } };

/** Dashboard routes. */
export function dashboardRoutes(s: Services): Hono<Env> {
  const ui = new Hono<Env>();
  const failures = new Map<string, { count: number; since: number }>();
  const trust = s.logins.trustProxy;
  let overviewCache: { at: number; value: Overview } | undefined;

  ui.use("*", async (c, next) => {
    await next();
    c.header("content-security-policy", CONTENT_SECURITY_POLICY);
    // Pages hold the session's CSRF token and device state: no cache keeps them.
    if (c.res.headers.get("content-type")?.startsWith("text/html")) {
      c.header("cache-control", "no-store");
    }
  });

  const serve = (path: string, body: string, type: string) =>
    ui.get(
      path,
      (c) => c.body(body, 200, { "content-type": type, "cache-control": "public, max-age=300" }),
    );
  serve("/assets/uplot.js", uplotJs, "text/javascript; charset=utf-8");
  serve("/assets/uplot.css", uplotCss, "text/css; charset=utf-8");
  serve("/assets/app.js", appJs, "text/javascript; charset=utf-8");
  serve("/assets/app.css", appCss, "text/css; charset=utf-8");
  ui.get("/favicon.ico", (c) => c.body(null, 204));
  // The service worker must be served from the root to control the whole dashboard.
  ui.get("/sw.js", (c) =>
    c.body(swJs, 200, {
      "content-type": "text/javascript; charset=utf-8",
      "cache-control": "no-cache",
    }));

  ui.get("/login", (c) => {
    const csrf = randomSecret(18);
    setCookie(c, LOGIN_COOKIE, csrf, cookieOptions(c, trust, 600));
    return c.html(<LoginPage csrf={csrf} />);
  });

  ui.post("/login", async (c) => {
    // Counted per client address: as the server sees it, or as a trusted proxy says (behind
    // one, every client would otherwise share the proxy's address, and one could lock all out).
    const address = clientAddress(c, trust);
    const now = Date.now();
    let record = failures.get(address);
    if (!record || now - record.since >= 60_000) record = { count: 0, since: now };
    if (record.count >= MAX_FAILURES) {
      throw new DoppelError("rate_limited", "Too many failed sign-ins; wait a minute.", {
        retryAfter: 60,
      });
    }
    // Every attempt counts as failed until it succeeds, and is counted before anything is
    // awaited: attempts sent at once each take a place, so parallel guesses cannot pass the cap.
    record.count++;
    if (failures.size >= 10_000) {
      for (const [key, old] of failures) if (now - old.since >= 60_000) failures.delete(key);
    }
    failures.set(address, record);
    const origin = c.req.header("origin");
    if (origin !== undefined && origin !== publicOrigin(c, trust)) {
      throw new DoppelError("forbidden", `Sign-in from origin ${origin} is not allowed.`);
    }
    // Read with a cap, before anything else: the route is open to anyone.
    const form = await readForm(c.req.raw, FORM_LIMIT);
    const expected = getCookie(c, LOGIN_COOKIE);
    const csrf = form.get("_csrf");
    if (!expected || csrf === null || !timingSafeEqual(csrf, expected)) {
      throw new DoppelError("forbidden", "The sign-in form expired or was not ours; reload it.");
    }
    const token = form.get("token") ?? "";
    if (!token || token.length > 200 || !(await s.admin.verify(token))) {
      const csrf = randomSecret(18);
      setCookie(c, LOGIN_COOKIE, csrf, cookieOptions(c, trust, 600));
      return c.html(<LoginPage csrf={csrf} error="That is not the operator token." />, 401);
    }
    failures.delete(address);
    const { id } = await s.logins.create();
    deleteCookie(c, LOGIN_COOKIE, { path: "/" });
    setCookie(c, SESSION_COOKIE, id, cookieOptions(c, trust, SESSION_MS / 1000));
    s.logger.log("info", "dashboard", "Operator signed in.");
    return c.redirect("/", 303);
  });

  ui.post("/logout", async (c) => {
    const found = await s.logins.fromRequest(c);
    if (found) {
      const csrf = (await readForm(c.req.raw, FORM_LIMIT)).get("_csrf");
      if (csrf === null || !timingSafeEqual(csrf, found.session.csrf)) {
        throw new DoppelError("forbidden", "The CSRF token is missing or wrong; reload the page.");
      }
      await s.logins.delete(found.id);
    }
    deleteCookie(c, SESSION_COOKIE, { path: "/" });
    return c.redirect("/login", 303);
  });

  // Pages: a session is needed.
  for (const path of ["/", "/devices", "/devices/:id", "/alarms"]) {
    ui.use(path, async (c, next) => {
      const found = await s.logins.fromRequest(c);
      if (!found) return c.redirect("/login", 303);
      c.set("page", { csrf: found.session.csrf, current: "none" });
      await next();
    });
  }

  ui.get("/", async (c) => {
    if (!overviewCache || Date.now() - overviewCache.at > 5_000) {
      overviewCache = { at: Date.now(), value: await overview(s) };
    }
    return c.html(
      <OverviewPage
        ctx={{ ...c.get("page"), current: "overview" }}
        overview={overviewCache.value}
      />,
    );
  });

  ui.get("/devices", async (c) => {
    const filter = {
      q: c.req.query("q") || undefined,
      kind: c.req.query("kind") || undefined,
      tag: c.req.query("tag") || undefined,
      status: c.req.query("status") || undefined,
    };
    const tag = filter.tag?.includes(":")
      ? [
        [
          filter.tag.slice(0, filter.tag.indexOf(":")),
          filter.tag.slice(filter.tag.indexOf(":") + 1),
        ] as [
          string,
          string,
        ],
      ]
      : undefined;
    const status = ["online", "offline", "never"].includes(filter.status ?? "")
      ? filter.status as "online" | "offline" | "never"
      : undefined;
    // A text search filters ids on the server, a page at a time.
    let cursor = c.req.query("cursor") || undefined;
    const items = [];
    let next: string | null = null;
    for (let round = 0; round < 20; round++) {
      const page = await s.registry.list({
        kind: filter.kind,
        tags: tag,
        status,
        limit: 100,
        cursor,
      });
      for (const device of page.items) {
        if (!filter.q || device.id.toLowerCase().includes(filter.q.toLowerCase())) {
          items.push(device);
        }
      }
      next = page.cursor;
      if (!next || items.length >= 50) break;
      cursor = next;
    }
    return c.html(
      <DevicesPage
        ctx={{ ...c.get("page"), current: "devices" }}
        devices={items}
        filter={filter}
        kinds={[...s.runtime.kinds.keys()]}
        next={next}
      />,
    );
  });

  ui.get("/devices/:id", async (c) => {
    const id = c.req.param("id");
    const device = await s.registry.describe(id);
    const stored = await loadTwin(s.kv, id);
    if (!stored) throw new DoppelError("not_found", `Device ${id} has no twin.`);
    const twin = publicTwin(stored.state);
    const metrics = new Set(Object.keys(stored.state.history.p));
    for (const [name, value] of Object.entries(twin.telemetry.last)) {
      if (typeof value === "number") metrics.add(name);
    }
    return c.html(
      <DevicePage
        ctx={{ ...c.get("page"), current: "devices" }}
        device={device}
        twin={twin}
        commands={Object.keys(s.runtime.kindOf(device.kind).commands)}
        metrics={[...metrics].sort()}
      />,
    );
  });

  ui.get("/alarms", async (c) => {
    const state = c.req.query("state") || undefined;
    const prefix: Deno.KvKey = state && ["active", "acknowledged", "cleared"].includes(state)
      ? ["alarms_by_state", state]
      : ["alarms_by_time"];
    const alarms: AlarmRecord[] = [];
    for await (const entry of s.kv.list({ prefix }, { reverse: true, limit: 200 })) {
      const [deviceId, alarmId] = entry.key.slice(-2) as [string, string];
      const alarm = (await s.kv.get<AlarmRecord>(keys.alarm(deviceId, alarmId))).value;
      if (alarm) alarms.push(alarm);
    }
    return c.html(
      <AlarmsPage ctx={{ ...c.get("page"), current: "alarms" }} alarms={alarms} state={state} />,
    );
  });

  return ui;
}

/** Counts for the overview (up to 100,000 devices and 10,000 open alarms). */
async function overview(s: Services): Promise<Overview> {
  const byStatus: Record<string, number> = {};
  const byKind: Record<string, number> = {};
  let total = 0;
  let cursor: string | undefined;
  do {
    const page = await s.registry.list({ limit: 1000, cursor });
    for (const device of page.items) {
      total++;
      const status = device.connection?.status ?? "never";
      byStatus[status] = (byStatus[status] ?? 0) + 1;
      byKind[device.kind] = (byKind[device.kind] ?? 0) + 1;
    }
    cursor = page.cursor ?? undefined;
  } while (cursor && total < 100_000);
  const alarmsBySeverity: Record<string, number> = {};
  let seen = 0;
  for (const state of ["active", "acknowledged"]) {
    for await (
      const entry of s.kv.list({ prefix: ["alarms_by_state", state] }, { limit: 10_000 })
    ) {
      const [deviceId, alarmId] = entry.key.slice(-2) as [string, string];
      const alarm = (await s.kv.get<AlarmRecord>(keys.alarm(deviceId, alarmId))).value;
      if (alarm) alarmsBySeverity[alarm.severity] = (alarmsBySeverity[alarm.severity] ?? 0) + 1;
      if (++seen >= 10_000) break;
    }
  }
  return { byStatus, byKind, alarmsBySeverity, total };
}

/** A dashboard cookie's attributes: `Secure` whenever the browser came over TLS. */
function cookieOptions(c: Context, trust: boolean, maxAge: number): CookieOptions {
  return {
    path: "/",
    httpOnly: true,
    sameSite: "Strict" as const,
    secure: isSecure(c, trust),
    maxAge: Math.floor(maxAge),
  };
}
