/**
 * A fixture for dashboard browser tests: an app on an in-memory KV served by a real
 * `Deno.serve` on port 0, a headless Chromium (playwright-core) and helpers to sign in, talk to
 * the API as an operator or a device over real HTTP, and collect what went wrong in the page
 * (console errors, uncaught exceptions, CSP violations, `alert()` dialogs).
 * @module
 */
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { createApp, type Doppel } from "../src/app.ts";
import { systemClock } from "../src/clock.ts";
import { silentLogger } from "../src/log.ts";
import { ADMIN_TOKEN, KINDS } from "./helpers.ts";

/** A device's credentials. */
export type Creds = { id: string; key: string };

/** A response read whole. */
export interface Reply {
  /** HTTP status. */
  status: number;
  /** The body parsed as JSON, or the text when it is not JSON. */
  // deno-lint-ignore no-explicit-any
  body: any;
  /** Response headers. */
  headers: Headers;
}

/** What the fixture offers a test. */
export interface DashboardFixture {
  /** The app. */
  doppel: Doppel;
  /** The store. */
  kv: Deno.Kv;
  /** `http://127.0.0.1:<port>`. */
  base: string;
  /** The browser. */
  browser: Browser;
  /** A context 1280 px wide (cookies live here). */
  context: BrowserContext;
  /** Problems seen in any page so far: console errors, page errors, CSP violations, dialogs. */
  problems: string[];
  /** A raw request to the server; the body is read whole. */
  http(path: string, init?: RequestInit): Promise<Reply>;
  /** An operator request (bearer token, JSON body). */
  op(method: string, path: string, body?: unknown, headers?: HeadersInit): Promise<Reply>;
  /** A device request (HTTP Basic, JSON body). */
  dev(creds: Creds, method: string, path: string, body?: unknown): Promise<Reply>;
  /** Registers a device (thermostat unless told otherwise). */
  register(input: { id: string; kind?: string; tags?: Record<string, string> }): Promise<Creds>;
  /** Posts telemetry (one object or an array) and expects 202. */
  telemetry(creds: Creds, data: unknown): Promise<void>;
  /** Opens a page that reports its problems into `problems`. */
  page(): Promise<Page>;
  /** Signs in through the login form; the page lands on the overview. */
  signIn(page: Page): Promise<void>;
  /** Closes the browser, the server, the app and the KV (in that order). */
  close(): Promise<void>;
}

/** Chromium flags that work headless in a container. */
export const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/** Builds the fixture; call `close()` in a `finally`. */
export async function dashboardFixture(): Promise<DashboardFixture> {
  const kv = await Deno.openKv(":memory:");
  let doppel: Doppel | undefined;
  let server: Deno.HttpServer | undefined;
  let browser: Browser | undefined;
  const stop = new AbortController();
  const close = async () => {
    try {
      await browser?.close();
    } finally {
      stop.abort();
      try {
        await server?.finished;
      } finally {
        try {
          await doppel?.close();
        } finally {
          kv.close();
        }
      }
    }
  };
  try {
    doppel = await createApp({
      kv,
      clock: systemClock,
      kinds: KINDS,
      secret: "test-secret-0123456789abcdef",
      adminToken: ADMIN_TOKEN,
      logger: silentLogger,
    });
    const app = doppel;
    server = Deno.serve(
      { port: 0, hostname: "127.0.0.1", signal: stop.signal, onListen() {} },
      (request) => app.fetch(request),
    );
    const base = `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
    browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    context.setDefaultTimeout(8_000);
    // Runs before the page's scripts and outside its CSP: records policy violations.
    await context.addInitScript({
      content: `document.addEventListener("securitypolicyviolation", (e) => {
        console.error("CSP violation: " + e.violatedDirective + " " + e.blockedURI);
      });`,
    });
    const problems: string[] = [];

    const http = async (path: string, init: RequestInit = {}): Promise<Reply> => {
      const res = await fetch(`${base}${path}`, { redirect: "manual", ...init });
      const text = await res.text();
      let body: unknown = text;
      try {
        body = text ? JSON.parse(text) : null;
      } catch { /* not JSON */ }
      return { status: res.status, body, headers: res.headers };
    };
    const json = (body: unknown) => body === undefined ? undefined : JSON.stringify(body);
    const op: DashboardFixture["op"] = (method, path, body, headers = {}) =>
      http(path, {
        method,
        headers: {
          authorization: `Bearer ${ADMIN_TOKEN}`,
          "content-type": "application/json",
          ...headers,
        },
        body: json(body),
      });
    const dev: DashboardFixture["dev"] = (creds, method, path, body) =>
      http(path, {
        method,
        headers: {
          authorization: `Basic ${btoa(`${creds.id}:${creds.key}`)}`,
          "content-type": "application/json",
        },
        body: json(body),
      });

    return {
      doppel,
      kv,
      base,
      browser,
      context,
      problems,
      http,
      op,
      dev,
      async register(input) {
        const res = await op("POST", "/api/v1/devices", { kind: "thermostat", ...input });
        if (res.status !== 201) {
          throw new Error(`register: ${res.status} ${JSON.stringify(res.body)}`);
        }
        return { id: res.body.id, key: res.body.key };
      },
      async telemetry(creds, data) {
        const res = await dev(creds, "POST", "/device/v1/telemetry", data);
        if (res.status !== 202) {
          throw new Error(`telemetry: ${res.status} ${JSON.stringify(res.body)}`);
        }
      },
      async page() {
        const page = await context.newPage();
        const where = () => new URL(page.url() || base).pathname;
        page.on("console", (message) => {
          if (message.type() === "error") {
            problems.push(`console error on ${where()}: ${message.text()}`);
          }
        });
        page.on(
          "pageerror",
          (error) => problems.push(`page error on ${where()}: ${error.message}`),
        );
        page.on("dialog", (dialog) => {
          problems.push(`dialog on ${where()}: ${dialog.message()}`);
          dialog.dismiss().catch(() => {});
        });
        return page;
      },
      async signIn(page) {
        await page.goto(`${base}/login`);
        await page.fill('input[name="token"]', ADMIN_TOKEN);
        await Promise.all([
          page.waitForURL(`${base}/`),
          page.click('button[type="submit"]'),
        ]);
      },
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}

/**
 * Waits until `selector` matches an element (attached; visible or not). Playwright's selector
 * engine runs in its own isolated world, so this works under the dashboard's strict CSP, where
 * `page.waitForFunction` cannot: its predicate goes through `eval` in the page, which
 * `script-src 'self'` forbids (string and function predicates alike). Conditions are written
 * as selectors instead: attributes (`[data-points="5"]`), classes (`.ok`), and Playwright's
 * `:text-is()`, `:text-matches()` and `:has()`. No polling interval, no sleeps.
 */
export async function waitFor(page: Page, selector: string, timeout?: number): Promise<void> {
  await page.locator(selector).first().waitFor({ state: "attached", timeout });
}

/** Waits until the page's live stream said hello (`document.body.dataset.live === "1"`). */
export async function waitLive(page: Page): Promise<void> {
  await waitFor(page, 'body[data-live="1"]');
}

/** A JavaScript string literal, for predicates passed to `waitForFunction` as strings. */
export function js(value: unknown): string {
  return JSON.stringify(value);
}
