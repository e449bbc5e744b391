/**
 * Builds a Doppel app from its dependencies: the Hono app serving every route, the twin runtime
 * and the registry. Opens no sockets and reads no environment: `main.ts` does that.
 * @module
 */
import { Hono } from "hono";
import type { Clock } from "./clock.ts";
import { DoppelError } from "./errors.ts";
import { EventBus } from "./events/bus.ts";
import type { Logger } from "./log.ts";
import { AdminAuth } from "./registry/admin.ts";
import { Registry, type RegistryEvent } from "./registry/devices.ts";
import { KeyVault } from "./registry/secrets.ts";
import { loadVapid, PushNotifier, type Vapid } from "./push/notifier.ts";
import type { Severity } from "./rules/alarms.ts";
import type { TwinKind } from "./twin/kind.ts";
import { createMqttEndpoint, type MqttEndpoint } from "./transports/mqtt_embedded.ts";
import { SessionHub, type SessionOptions } from "./transports/sessions.ts";
import { websocketStream } from "./transports/ws_stream.ts";
import { TwinRuntime, type TwinRuntimeOptions } from "./twin/runtime.ts";
import { deviceApi, fastTelemetry, isFastTelemetry } from "./web/device_api.ts";
import { DoppelMetrics } from "./metrics/doppel.ts";
import { timingSafeEqual } from "./registry/secrets.ts";
import type { TwinMessage } from "./twin/turn.ts";
import { requireOperator } from "./web/auth.ts";
import { CONTENT_SECURITY_POLICY, dashboardRoutes } from "./web/dashboard/routes.tsx";
import { Sessions } from "./web/session.ts";
import { serveStream } from "./web/stream.ts";
import { DOCS_CSP, docsHtml, openApiDocument } from "./web/openapi.ts";
import { errorResponse } from "./web/http.ts";
import { operatorApi } from "./web/operator_api.ts";
import { commandWaiter, type Services } from "./web/services.ts";

/** What an app is built from. */
export interface AppDeps {
  /** The store (tests: `Deno.openKv(":memory:")`). */
  kv: Deno.Kv;
  /** Time. */
  clock: Clock;
  /** Loaded twin kinds by name. */
  kinds: ReadonlyMap<string, TwinKind>;
  /** Server secret that encrypts device keys at rest. */
  secret: string;
  /** Operator token; when absent one is generated on first start and returned once. */
  adminToken?: string;
  /** Where log lines go. */
  logger: Logger;
  /** Session leases. */
  sessions?: SessionOptions;
  /** Runs the embedded MQTT endpoint (served by `mqtt.handle` and at `/mqtt`). */
  mqtt?: boolean;
  /** A token that may read `/metrics` besides the operator token. */
  metricsToken?: string;
  /**
   * Trust a reverse proxy's `X-Forwarded-Proto`, `-Host` and `-For` for the dashboard's origin
   * check, its cookies' `Secure` flag and the sign-in limiter (default false).
   */
  trustProxy?: boolean;
  /** Web push: VAPID keys (generated and kept in KV when absent), alarm severities pushed. */
  push?: { vapid?: Partial<Vapid>; severities?: Severity[]; fetch?: typeof fetch };
  /** Runtime tuning (activation bound, idle timeout, batching). */
  runtime?: Partial<
    Pick<
      TwinRuntimeOptions,
      | "maxActivations"
      | "idleMs"
      | "packAbove"
      | "batcher"
      | "randomId"
      | "httpTimeoutMs"
      | "history"
    >
  >;
}

/** A running app. */
export interface Doppel {
  /** The Hono app: call `app.request()` in tests. */
  app: Hono;
  /** What a server serves: the app, with the hottest device route taken straight. */
  fetch(request: Request, info?: Deno.ServeHandlerInfo): Response | Promise<Response>;
  /** The twin runtime. */
  runtime: TwinRuntime;
  /** The device registry. */
  registry: Registry;
  /** Open device sessions. */
  sessions: SessionHub;
  /** The embedded MQTT endpoint, when enabled: pass TCP connections to `mqtt.handle`. */
  mqtt?: MqttEndpoint;
  /** Web push to operators. */
  push: PushNotifier;
  /** Adds a follower of registry changes (such as the broker bridge's credential sync). */
  observe(observer: (event: RegistryEvent) => Promise<void>): void;
  /** The operator token, only when it was generated just now (print it once). */
  createdAdminToken?: string;
  /** Starts background loops (timers, idle collection). */
  start(): void;
  /** Ends waits and loops and lets commits in flight finish. Does not close the KV. */
  close(): Promise<void>;
}

/** Builds the app. */
export async function createApp(deps: AppDeps): Promise<Doppel> {
  const { kv, clock, logger } = deps;
  const bus = new EventBus((error, notice) =>
    logger.log("error", "bus", `A listener of ${notice.type} notices failed: ${error}`)
  );
  // Registry followers added after construction (the broker bridge's credential sync).
  const observers: Array<(event: RegistryEvent) => Promise<void>> = [];
  const shutdown = new AbortController();
  // Metrics are created below, once what they read exists; the runtime reports through this.
  let observe: (message: TwinMessage, outcome: string, reply: unknown) => void = () => {};
  const runtime = new TwinRuntime({
    kv,
    clock,
    kinds: deps.kinds,
    bus,
    logger,
    ...deps.runtime,
    observe: (message, outcome, reply) => observe(message, outcome, reply),
    batcher: {
      ...deps.runtime?.batcher,
      onBatch: (requests, ms) => {
        metrics.batch(requests, ms);
        deps.runtime?.batcher?.onBatch?.(requests, ms);
      },
    },
  });
  const vault = await KeyVault.fromSecret(deps.secret);
  const push = new PushNotifier({
    kv,
    vapid: await loadVapid(kv, vault, deps.push?.vapid ?? {}),
    logger,
    severities: deps.push?.severities ?? ["critical", "major"],
    fetch: deps.push?.fetch,
  });
  push.listen(bus);
  const registry = new Registry({
    kv,
    clock,
    vault,
    kinds: new Set(deps.kinds.keys()),
    onChange: async (event) => {
      const id = event.device.id;
      if (event.type === "deleted") runtime.evict(id);
      // A disabled device is offline at once, HTTP-only ones too (they hold no session to end).
      if (event.type === "updated" && !event.device.enabled) {
        await runtime.send(id, { type: "presence.end", reason: "disabled" });
      }
      // A new twin's first turn sets its timers (a no-data rule counts from registration).
      if (event.type === "registered") await runtime.send(id, { type: "wake" });
      // A disabled or deleted device is refused at once: its open sessions end, and followers
      // (the broker bridge) have applied the change before the operator gets an answer.
      await Promise.all([
        sessions.deviceChanged(id).catch((error) =>
          logger.log("error", "sessions", `Ending sessions of ${id} failed: ${error}`)
        ),
        ...observers.map((observer) => observer(event)),
      ]);
    },
  });
  const sessions: SessionHub = new SessionHub({
    runtime,
    registry,
    bus,
    kv,
    logger,
    options: deps.sessions,
  });
  const { auth: admin, created } = await AdminAuth.init(kv, deps.adminToken);
  const streams = { open: 0 };
  const metrics = new DoppelMetrics({
    activations: () => runtime.activations,
    sessions: () => sessions.counts(),
    push: () => push.stats,
    streams: () => streams.open,
  });
  const stopMetrics = metrics.listen(bus);
  observe = (message, outcome, reply) => metrics.message(message, outcome, reply);
  const services: Services = {
    kv,
    clock,
    logins: new Sessions(kv, () => admin.tokenHash, deps.trustProxy ?? false),
    metrics,
    streams,
    registry,
    runtime,
    admin,
    sessions,
    push,
    bus,
    logger,
    shutdown: shutdown.signal,
    waitForCommand: commandWaiter(bus, runtime, shutdown.signal),
  };

  const app = new Hono();
  // Every answer, API and pages alike: not sniffed, not framed, no referrer to elsewhere; pages
  // set their own Content-Security-Policy, anything else gets the dashboard's.
  app.use("*", async (c, next) => {
    await next();
    if (c.res.status === 101) return; // A WebSocket upgrade: its headers are sent already.
    const headers = c.res.headers;
    headers.set("x-content-type-options", "nosniff");
    headers.set("x-frame-options", "DENY");
    headers.set("referrer-policy", "same-origin");
    if (!headers.has("content-security-policy")) {
      headers.set("content-security-policy", CONTENT_SECURITY_POLICY);
    }
  });
  app.onError((error, c) => {
    if (!(error instanceof DoppelError)) {
      logger.log("error", "http", `${c.req.method} ${c.req.path} failed: ${error.stack ?? error}`);
    }
    const response = errorResponse(error);
    if (
      error instanceof DoppelError && error.code === "unauthorized" &&
      (c.req.path.startsWith("/api/") || c.req.path === "/metrics")
    ) {
      response.headers.set("www-authenticate", 'Bearer realm="doppel"');
    }
    return response;
  });
  app.notFound((c) =>
    errorResponse(new DoppelError("not_found", `No route for ${c.req.method} ${c.req.path}.`))
  );
  app.get("/healthz", (c) => c.json({ status: "ok" }));
  app.get("/metrics", async (c) => {
    const header = c.req.header("authorization") ?? "";
    const token = /^Bearer\s+(\S+)$/i.exec(header)?.[1];
    const metricsToken = deps.metricsToken;
    const allowed = token !== undefined &&
      ((metricsToken !== undefined && timingSafeEqual(token, metricsToken)) ||
        await admin.verify(token));
    if (!allowed) {
      throw new DoppelError(
        "unauthorized",
        "Send the operator token (or DOPPEL_METRICS_TOKEN) as Authorization: Bearer <token>.",
      );
    }
    return c.body(metrics.registry.render(), 200, {
      "content-type": "text/plain; version=0.0.4; charset=utf-8",
    });
  });
  app.get("/api/v1/stream", async (c) => {
    await requireOperator(c, admin, services.logins);
    const device = c.req.query("device");
    if (device && !(await registry.exists(device))) {
      throw new DoppelError("not_found", `Device ${device} is not registered.`);
    }
    return serveStream(c, services);
  });
  const mqtt = deps.mqtt
    ? await createMqttEndpoint({ runtime, registry, sessions, kv, logger })
    : undefined;
  if (mqtt) {
    // Gateways' subscriptions to a child's topics are judged again whenever the child changes.
    observers.push((event) => mqtt.deviceChanged(event.device.id));
    app.get("/mqtt", (c) => {
      if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
        throw new DoppelError(
          "bad_request",
          "GET /mqtt expects a WebSocket upgrade (MQTT over WebSocket).",
          { fields: [{ field: "Upgrade", message: "must be websocket" }] },
        );
      }
      const offered = c.req.header("sec-websocket-protocol")?.split(",").map((p) => p.trim());
      const protocol = offered?.find((p) => p === "mqtt" || p === "mqttv3.1");
      const { socket, response } = Deno.upgradeWebSocket(c.req.raw, { protocol });
      mqtt.handle(websocketStream(socket));
      return response;
    });
  }
  app.get("/api/v1/openapi.json", (c) => c.json(openApiDocument({ routes: app.routes })));
  app.get("/docs", (c) => {
    c.header("content-security-policy", DOCS_CSP);
    return c.html(docsHtml({ routes: app.routes }));
  });
  app.route("/api/v1", operatorApi(services));
  app.route("/device/v1", deviceApi(services));
  app.route("/", dashboardRoutes(services));

  return {
    app,
    fetch: (request, info) =>
      isFastTelemetry(request) ? fastTelemetry(services, request) : app.fetch(request, info),
    runtime,
    registry,
    createdAdminToken: created,
    sessions,
    mqtt,
    push,
    observe: (observer) => observers.push(observer),
    start: () => {
      runtime.start();
      sessions.start();
    },
    close: async () => {
      shutdown.abort();
      await sessions.close();
      await mqtt?.close();
      await runtime.close();
      await push.close();
      stopMetrics();
    },
  };
}
