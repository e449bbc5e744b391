/**
 * The operator API under `/api/v1`, behind the bearer token.
 * @module
 */
import { Hono } from "hono";
import { TERMINAL_STATUSES } from "../commands/model.ts";
import { DoppelError, invalidCursor, validationError } from "../errors.ts";
import { queryHistory } from "../telemetry/query.ts";
import { BUCKET_MS, type Level, LEVELS } from "../telemetry/rollup.ts";
import type { TwinEvent } from "../twin/turn.ts";
import { alarmsApi } from "./alarms_api.ts";
import { CommandStatus, ConnectionStatus } from "./api_schemas.ts";
import { keys } from "../storage/keys.ts";
import { loadTwin } from "../storage/twin_store.ts";
import { publicTwin } from "../twin/state.ts";
import { requireOperator } from "./auth.ts";
import { BODY_LIMITS, intParam, listPage, parseWith, readJson } from "./http.ts";
import { CreateCommand, RegisterDevice, UpdateDevice } from "./schemas.ts";
import type { Services } from "./services.ts";
import type { CommandRecord } from "../commands/model.ts";
import type { Connection } from "../twin/state.ts";

// The filters' allowed values, as the published schemas list them.
const STATUSES: ReadonlySet<string> = new Set(ConnectionStatus.options);
const COMMAND_STATUSES: ReadonlySet<string> = new Set(CommandStatus.options);

/** Routes of the operator API. */
export function operatorApi(s: Services): Hono {
  const api = new Hono();
  api.use("*", async (c, next) => {
    await requireOperator(c, s.admin, s.logins);
    await next();
  });

  api.post("/devices", async (c) => {
    const body = parseWith(RegisterDevice, await readJson(c), "The device");
    const { device, key } = await s.registry.register(body);
    s.logger.log("info", "registry", "Device registered.", { deviceId: device.id });
    return c.json({ ...device, key }, 201);
  });

  api.get("/devices", async (c) => {
    const status = c.req.query("status");
    if (status !== undefined && !STATUSES.has(status)) {
      throw validationError(`Query parameter status=${JSON.stringify(status)} is invalid:`, [{
        field: "status",
        message: "must be online, offline or never",
      }]);
    }
    const tags = c.req.queries("tag")?.map((tag) => {
      const colon = tag.indexOf(":");
      if (colon < 1) {
        throw validationError(`Query parameter tag=${JSON.stringify(tag)} is invalid:`, [{
          field: "tag",
          message: "must be name:value",
        }]);
      }
      return [tag.slice(0, colon), tag.slice(colon + 1)] as [string, string];
    });
    return c.json(
      await s.registry.list({
        kind: c.req.query("kind") || undefined,
        parent: c.req.query("parent") || undefined,
        tags,
        status: status as Connection["status"] | undefined,
        limit: intParam(c, "limit", { min: 1, max: 1000, fallback: 50 }),
        cursor: c.req.query("cursor") || undefined,
      }),
    );
  });

  api.get("/devices/:id", async (c) => c.json(await s.registry.describe(c.req.param("id"))));

  api.patch("/devices/:id", async (c) => {
    const body = parseWith(UpdateDevice, await readJson(c), "The device update");
    const device = await s.registry.update(c.req.param("id"), body);
    return c.json(device);
  });

  api.delete("/devices/:id", async (c) => {
    await s.registry.delete(c.req.param("id"));
    s.logger.log("info", "registry", "Device deleted.", { deviceId: c.req.param("id") });
    return c.body(null, 204);
  });

  api.post("/devices/:id/keys", async (c) => {
    const { device, key } = await s.registry.rotateKey(c.req.param("id"));
    s.logger.log("info", "registry", "Device key rotated.", { deviceId: device.id });
    return c.json({ ...device, key });
  });

  api.get("/twins/:id", async (c) => {
    const stored = await loadTwin(s.kv, c.req.param("id"));
    if (!stored) {
      throw new DoppelError("not_found", `Device ${c.req.param("id")} is not registered.`);
    }
    const etag = `"${stored.state.version}"`;
    if (noneMatch(c.req.header("if-none-match"), stored.state.version)) {
      return c.body(null, 304, { etag });
    }
    c.header("etag", etag);
    return c.json(publicTwin(stored.state));
  });

  api.patch("/twins/:id/desired", async (c) => {
    const id = c.req.param("id");
    const ifMatch = parseIfMatch(c.req.header("if-match"));
    const patch = await readJson(c, BODY_LIMITS.patch);
    await requireDevice(s, id);
    const twin = await s.runtime.patchDesired(id, patch, ifMatch);
    c.header("etag", `"${twin.version}"`);
    return c.json(publicTwin(twin));
  });

  api.post("/devices/:id/commands", async (c) => {
    const id = c.req.param("id");
    const wait = intParam(c, "wait", { min: 0, max: 300, fallback: 0 });
    const idempotencyKey = c.req.header("idempotency-key");
    if (
      idempotencyKey !== undefined && (idempotencyKey.length < 1 || idempotencyKey.length > 128)
    ) {
      throw validationError("The Idempotency-Key header is invalid:", [{
        field: "Idempotency-Key",
        message: "must be 1 to 128 characters",
      }]);
    }
    const body = parseWith(CreateCommand, await readJson(c), "The command");
    await requireDevice(s, id);
    const { command, created } = await s.runtime.createCommand(id, { ...body, idempotencyKey });
    if (wait > 0 && !TERMINAL_STATUSES.has(command.status)) {
      const done = await s.waitForCommand(
        id,
        command.id,
        wait * 1000,
        c.req.raw.signal,
        created,
      );
      if (done) return c.json(done, 200);
    }
    const current = TERMINAL_STATUSES.has(command.status)
      ? command
      : (await s.runtime.getCommand(id, command.id)) ?? command;
    // 200 says "finished within the wait"; without one, the answer is 202 as for any command,
    // even a repeat (same Idempotency-Key) of one that has finished.
    return c.json(current, wait > 0 && TERMINAL_STATUSES.has(current.status) ? 200 : 202);
  });

  api.get("/devices/:id/commands", async (c) => {
    const id = c.req.param("id");
    await requireDevice(s, id);
    const limit = intParam(c, "limit", { min: 1, max: 1000, fallback: 50 });
    const status = c.req.query("status");
    if (status !== undefined && !COMMAND_STATUSES.has(status)) {
      throw validationError(`Query parameter status=${JSON.stringify(status)} is invalid:`, [{
        field: "status",
        message: `must be one of ${[...COMMAND_STATUSES].join(", ")}`,
      }]);
    }
    const iter = s.kv.list<CommandRecord>({ prefix: keys.commands(id) }, {
      reverse: true,
      cursor: c.req.query("cursor") || undefined,
      batchSize: Math.min(limit, 500),
    });
    return c.json(
      await listPage(
        iter,
        limit,
        (entry) => status === undefined || entry.value.status === status ? entry.value : undefined,
      ),
    );
  });

  api.get("/devices/:id/commands/:commandId", async (c) => {
    const { id, commandId } = c.req.param();
    const command = await s.runtime.getCommand(id, commandId);
    if (!command) throw new DoppelError("not_found", `Device ${id} has no command ${commandId}.`);
    return c.json(command);
  });

  api.get("/devices/:id/telemetry", async (c) => {
    const id = c.req.param("id");
    const device = await s.registry.get(id);
    if (!device) throw new DoppelError("not_found", `Device ${id} is not registered.`);
    const metric = c.req.query("metric");
    if (!metric) {
      throw validationError("Query parameter metric is required:", [{
        field: "metric",
        message: "name a numeric telemetry field, such as temperature",
      }]);
    }
    const bucket = c.req.query("bucket") || undefined;
    if (bucket !== undefined && !(LEVELS as readonly string[]).includes(bucket)) {
      throw validationError(`Query parameter bucket=${JSON.stringify(bucket)} is invalid:`, [{
        field: "bucket",
        message: "must be 1m, 1h or 1d (omit it for raw points)",
      }]);
    }
    const now = s.clock.now();
    const to = timeParam(c.req.query("to"), "to") ?? now;
    const span = bucket === undefined ? 3_600_000 : BUCKET_MS[bucket as Level] * 1440;
    const from = timeParam(c.req.query("from"), "from") ?? to - span;
    if (from > to) {
      throw validationError("The time range is empty:", [{
        field: "from",
        message: "must not be after to",
      }]);
    }
    const cursor = c.req.query("cursor");
    const after = cursor ? Number(cursor) : undefined;
    if (after !== undefined && !Number.isFinite(after)) throw invalidCursor();
    return c.json(
      await queryHistory(s.kv, {
        deviceId: id,
        metric,
        from,
        to,
        bucket: bucket as Level | undefined,
        limit: intParam(c, "limit", { min: 1, max: 100_000, fallback: 1000 }),
        after,
        now,
        format: historyFormat(c.req.query("format")),
        retention: s.runtime.kindOf(device.kind).retention,
      }),
    );
  });

  api.get("/devices/:id/events", async (c) => {
    const id = c.req.param("id");
    await requireDevice(s, id);
    const limit = intParam(c, "limit", { min: 1, max: 1000, fallback: 100 });
    const type = c.req.query("type");
    const iter = s.kv.list<TwinEvent>({ prefix: keys.events(id) }, {
      reverse: true,
      cursor: c.req.query("cursor") || undefined,
    });
    const wanted = (event: TwinEvent) =>
      !type || event.type === type || event.type.startsWith(`${type}.`);
    return c.json(
      await listPage(iter, limit, (entry) => wanted(entry.value) ? entry.value : undefined),
    );
  });

  api.route("/", alarmsApi(s));
  return api;
}

/** The `format` query parameter of a history query. */
function historyFormat(raw: string | undefined): "items" | "columns" {
  if (raw === undefined || raw === "" || raw === "items") return "items";
  if (raw === "columns") return "columns";
  throw validationError(`Query parameter format=${JSON.stringify(raw)} is invalid:`, [{
    field: "format",
    message: "must be items or columns",
  }]);
}

/** A time query parameter: epoch ms or ISO 8601. */
function timeParam(raw: string | undefined, name: string): number | undefined {
  if (raw === undefined || raw === "") return undefined;
  const ms = /^\d+$/.test(raw) ? Number(raw) : Date.parse(raw);
  if (!Number.isFinite(ms)) {
    throw validationError(`Query parameter ${name}=${JSON.stringify(raw)} is invalid:`, [{
      field: name,
      message: "must be epoch milliseconds or an ISO 8601 time",
    }]);
  }
  return ms;
}

async function requireDevice(s: Services, id: string): Promise<void> {
  // Cached: a read less on every operator call (a twin's own turn still refuses a deleted one).
  if (!(await s.registry.exists(id))) {
    throw new DoppelError("not_found", `Device ${id} is not registered.`);
  }
}

/**
 * Whether `If-None-Match` names `version`: a list of ETags (`"7"`, `W/"7"` or `7` each, as
 * `If-Match` takes them) or `*`.
 */
function noneMatch(header: string | undefined, version: number): boolean {
  if (header === undefined) return false;
  return header.split(",").some((tag) => {
    const trimmed = tag.trim();
    return trimmed === "*" || /^(?:W\/)?"?(\d{1,15})"?$/.exec(trimmed)?.[1] === String(version);
  });
}

/** `If-Match: "7"` (or `W/"7"`, or `7`) → 7; `*` or absent → undefined. */
function parseIfMatch(header: string | undefined): number | undefined {
  if (header === undefined || header.trim() === "*") return undefined;
  const match = /^\s*(?:W\/)?"?(\d{1,15})"?\s*$/.exec(header);
  if (!match) {
    throw validationError(`If-Match ${JSON.stringify(header)} is invalid:`, [{
      field: "If-Match",
      message: 'must be the twin\'s ETag, such as "7"',
    }]);
  }
  return Number(match[1]);
}
