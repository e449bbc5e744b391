/**
 * The device API under `/device/v1`, with HTTP Basic `deviceId:key`. A gateway adds
 * `?device=<child>` to act for one of its children.
 * @module
 */
import { Hono } from "hono";
import type { CommandRecord } from "../commands/model.ts";
import { loadTwin } from "../storage/twin_store.ts";
import { DoppelError } from "../errors.ts";
import { basicCredentials, type DeviceCaller, requireDevice } from "./auth.ts";
import {
  BODY_LIMITS,
  errorResponse,
  intParam,
  parseWith,
  readJson,
  readJsonRequest,
} from "./http.ts";
import { CommandResult } from "./schemas.ts";
import type { Services } from "./services.ts";
import { serveDeviceSocket } from "../transports/websocket.ts";

type Env = { Variables: { caller: DeviceCaller } };

/** A command as a device receives it. */
export function deviceCommand(command: CommandRecord): Record<string, unknown> {
  return {
    id: command.id,
    name: command.name,
    payload: command.payload,
    expiresAt: command.expiresAt,
    ...(command.timeoutAt ? { timeoutAt: command.timeoutAt } : {}),
  };
}

/** `POST /device/v1/telemetry` for an authenticated device: 202 once durable. */
export async function postTelemetry(
  s: Services,
  deviceId: string,
  request: Request,
): Promise<Response> {
  const body = await readJsonRequest(request, BODY_LIMITS.telemetry);
  const result = await s.runtime.telemetry(deviceId, Array.isArray(body) ? body : [body], "http");
  return new Response(JSON.stringify(result), {
    status: 202,
    headers: { "content-type": "application/json" },
  });
}

/**
 * The hottest route served without the router: a device posting its own telemetry. Same
 * function, same checks and answers as through Hono, with less work per request.
 */
export async function fastTelemetry(s: Services, request: Request): Promise<Response> {
  try {
    const credentials = basicCredentials(request.headers.get("authorization") ?? undefined);
    if (!credentials) {
      throw new DoppelError("unauthorized", "Send device credentials as HTTP Basic deviceId:key.");
    }
    const device = await s.registry.authenticate(credentials[0], credentials[1]);
    return await postTelemetry(s, device.id, request);
  } catch (error) {
    if (!(error instanceof DoppelError)) {
      s.logger.log("error", "http", `POST /device/v1/telemetry failed: ${error}`);
    }
    return errorResponse(error);
  }
}

/** Whether a request is one {@link fastTelemetry} serves: exactly `POST /device/v1/telemetry`. */
export function isFastTelemetry(request: Request): boolean {
  if (request.method !== "POST") return false;
  const url = request.url;
  const path = "/device/v1/telemetry";
  return url.endsWith(path) && url.indexOf("/", url.indexOf("//") + 2) === url.length - path.length;
}

/** Routes of the device API. */
export function deviceApi(s: Services): Hono<Env> {
  const api = new Hono<Env>();
  api.use("*", async (c, next) => {
    c.set("caller", await requireDevice(c, s.registry));
    await next();
  });

  api.get("/ws", (c) => {
    if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
      throw new DoppelError("bad_request", "GET /device/v1/ws expects a WebSocket upgrade.", {
        fields: [{ field: "Upgrade", message: "must be websocket" }],
      });
    }
    const { device, target } = c.get("caller");
    if (target.id !== device.id) {
      throw new DoppelError(
        "bad_request",
        "A WebSocket session belongs to the connecting device; a gateway names children per frame.",
        {
          fields: [{ field: "device", message: "is not accepted here; name the child per frame" }],
        },
      );
    }
    const { socket, response } = Deno.upgradeWebSocket(c.req.raw, { idleTimeout: 60 });
    serveDeviceSocket(socket, device, s, c.get("caller").keyId);
    return response;
  });

  api.post(
    "/telemetry",
    async (c) => await postTelemetry(s, c.get("caller").target.id, c.req.raw),
  );

  api.get("/twin", async (c) => {
    const id = c.get("caller").target.id;
    const stored = await loadTwin(s.kv, id);
    if (!stored) throw new DoppelError("not_found", `Device ${id} has no twin.`);
    const twin = stored.state;
    c.header("etag", `"${twin.version}"`);
    return c.json({
      version: twin.version,
      desired: twin.desired,
      reported: twin.reported,
      metadata: twin.metadata,
    });
  });

  api.patch("/twin/reported", async (c) => {
    const patch = await readJson(c, BODY_LIMITS.patch);
    return c.json(await s.runtime.patchReported(c.get("caller").target.id, patch, "http"));
  });

  api.get("/commands", async (c) => {
    const id = c.get("caller").target.id;
    const wait = intParam(c, "wait", { min: 0, max: 60, fallback: 0 });
    const limit = intParam(c, "limit", { min: 1, max: 100, fallback: 100 });
    const deadline = Date.now() + wait * 1000;
    for (;;) {
      // Listen before looking, so a command queued in between wakes this poll.
      const stop = new AbortController();
      const signal = AbortSignal.any([c.req.raw.signal, s.shutdown, stop.signal]);
      const queued = s.bus.waitFor(
        id,
        (n) => n.type === "command.changed" && n.command.status === "queued" ? true : undefined,
        deadline - Date.now(),
        signal,
      );
      const delivered = await s.runtime.deliverCommands(id, limit, "http");
      if (delivered.length > 0 || Date.now() >= deadline) {
        stop.abort();
        await queued;
        return c.json({ items: delivered.map(deviceCommand) });
      }
      if (!(await queued)) return c.json({ items: [] });
      // The poll waited: what let it in is checked again (a device disabled, a key retired, a
      // child deleted and registered under another gateway, an id registered anew) before it
      // is handed anything.
      const { device, target } = c.get("caller");
      const again = await requireDevice(c, s.registry);
      if (
        again.device.createdAt !== device.createdAt || again.target.createdAt !== target.createdAt
      ) {
        throw new DoppelError(
          "unauthorized",
          `Device ${target.id} was registered again while the poll waited; poll again.`,
        );
      }
    }
  });

  api.post("/commands/:commandId/result", async (c) => {
    const body = parseWith(CommandResult, await readJson(c), "The command result");
    const command = await s.runtime.completeCommand(
      c.get("caller").target.id,
      c.req.param("commandId"),
      body.status,
      body.result,
      "http",
    );
    return c.json({ id: command.id, status: command.status });
  });

  return api;
}
