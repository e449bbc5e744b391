/**
 * The device API under `/device/v1`, with HTTP Basic `deviceId:key`. A gateway adds
 * `?device=<child>` to act for one of its children.
 * @module
 */
import { Hono } from "hono";
import type { CommandRecord } from "../commands/model.ts";
import { loadTwin } from "../storage/twin_store.ts";
import { DoppelError } from "../errors.ts";
import { type DeviceCaller, requireDevice } from "./auth.ts";
import { BODY_LIMITS, intParam, parseWith, readJson } from "./http.ts";
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

/** Routes of the device API. */
export function deviceApi(s: Services): Hono<Env> {
  const api = new Hono<Env>();
  api.use("*", async (c, next) => {
    c.set("caller", await requireDevice(c, s.registry));
    await next();
  });

  api.get("/ws", (c) => {
    if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
      throw new DoppelError("bad_request", "GET /device/v1/ws expects a WebSocket upgrade.");
    }
    const { device, target } = c.get("caller");
    if (target.id !== device.id) {
      throw new DoppelError(
        "bad_request",
        "A WebSocket session belongs to the connecting device; a gateway names children per frame.",
      );
    }
    const { socket, response } = Deno.upgradeWebSocket(c.req.raw, { idleTimeout: 60 });
    serveDeviceSocket(socket, device, s);
    return response;
  });

  api.post("/telemetry", async (c) => {
    const body = await readJson(c, BODY_LIMITS.telemetry);
    const items = Array.isArray(body) ? body : [body];
    const result = await s.runtime.telemetry(c.get("caller").target.id, items, "http");
    return c.json(result, 202);
  });

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
      // The poll waited: a device disabled meanwhile must not be handed anything.
      const { device, target } = c.get("caller");
      for (const who of new Set([device.id, target.id])) {
        if (!(await s.registry.get(who))?.enabled) {
          throw new DoppelError("forbidden", `Device ${who} is disabled.`);
        }
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
