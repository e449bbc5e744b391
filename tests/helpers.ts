/**
 * Test helpers: an app on an in-memory KV with a known operator token, and shortcuts for the
 * requests most tests make.
 * @module
 */
import { type AppDeps, createApp, type Doppel } from "../src/app.ts";
import type { Clock } from "../src/clock.ts";
import { silentLogger } from "../src/log.ts";
import { loadKinds } from "../src/twin/loader.ts";
import type { TwinKind } from "../src/twin/kind.ts";
import type { Downlink } from "../src/transports/sessions.ts";
import type { Transport } from "../src/twin/presence.ts";

/** The operator token test apps use. */
export const ADMIN_TOKEN = "test-admin-token-0123456789";

/** The project's twin kinds, loaded once. */
export const KINDS: Map<string, TwinKind> = await loadKinds(
  new URL("../twins", import.meta.url).pathname,
);

/** A test app and its KV; `close()` ends both. */
export interface TestApp extends Doppel {
  /** The store. */
  kv: Deno.Kv;
  /** Makes an operator request (JSON body, bearer token). */
  op(method: string, path: string, body?: unknown, headers?: HeadersInit): Promise<Response>;
  /** Makes a device request (JSON body, Basic auth). */
  dev(
    creds: { id: string; key: string },
    method: string,
    path: string,
    body?: unknown,
    headers?: HeadersInit,
  ): Promise<Response>;
  /** Registers a device and returns its id and key. */
  register(
    input: { id?: string; kind?: string; tags?: Record<string, string>; parent?: string },
  ): Promise<{ id: string; key: string }>;
  /** Closes the app and its KV. */
  dispose(): Promise<void>;
}

/** Operator (bearer token) and device (HTTP Basic) requests with JSON bodies, through `app`. */
export function requesters(app: Doppel["app"]): Pick<TestApp, "op" | "dev"> {
  const request = async (
    method: string,
    path: string,
    body: unknown,
    headers: HeadersInit,
  ): Promise<Response> =>
    await app.request(path, {
      method,
      headers: { "content-type": "application/json", ...headers },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
  return {
    op: (method, path, body, headers = {}) =>
      request(method, path, body, { authorization: `Bearer ${ADMIN_TOKEN}`, ...headers }),
    dev: (creds, method, path, body, headers = {}) =>
      request(method, path, body, {
        authorization: `Basic ${btoa(`${creds.id}:${creds.key}`)}`,
        ...headers,
      }),
  };
}

/** Builds an app on `:memory:` (or the given KV) for one test. */
export async function testApp(
  options: {
    kv?: Deno.Kv;
    clock?: Clock;
    kinds?: Map<string, TwinKind>;
    runtime?: AppDeps["runtime"];
    trustProxy?: boolean;
  } = {},
): Promise<TestApp> {
  const kv = options.kv ?? await Deno.openKv(":memory:");
  const doppel = await createApp({
    kv,
    clock: options.clock ?? { now: () => Date.now() },
    kinds: options.kinds ?? KINDS,
    secret: "test-secret-0123456789abcdef",
    adminToken: ADMIN_TOKEN,
    logger: silentLogger,
    runtime: options.runtime,
    trustProxy: options.trustProxy,
  });
  const { op, dev } = requesters(doppel.app);
  return {
    ...doppel,
    kv,
    op,
    dev,
    async register(input) {
      const res = await op("POST", "/api/v1/devices", { kind: "thermostat", ...input });
      if (res.status !== 201) throw new Error(`register failed: ${await res.text()}`);
      const body = await res.json();
      return { id: body.id, key: body.key };
    },
    async dispose() {
      await doppel.close();
      kv.close();
    },
  };
}

/** A downlink whose device takes every push at once and is never kicked off. */
export function acceptingDownlink(transport: Transport): Downlink {
  return {
    transport,
    ready: () => true,
    pushDesired: () => Promise.resolve(true),
    pushCommand: () => Promise.resolve(true),
    kick: () => {},
  };
}
