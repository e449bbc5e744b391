/**
 * The OpenAPI 3.1 document of every HTTP route, built from the zod schemas that validate the
 * requests (`schemas.ts`, `alarms_api.ts`) and describe the responses (`api_schemas.ts`), and a
 * server-rendered reference page for `/docs` (no script, no external assets).
 *
 * Mount (before the operator API, so both are public):
 * ```ts
 * app.get("/api/v1/openapi.json", (c) => c.json(openApiDocument({ routes: app.routes })));
 * app.get("/docs", (c) => c.html(docsHtml({ routes: app.routes })));
 * ```
 * With `routes`, only the operations the app actually serves are listed (`/mqtt` only with the
 * embedded broker, the dashboard only when it is mounted).
 * @module
 */
import { z } from "zod";
import { PushSubscriptionBody } from "./alarms_api.ts";
import * as R from "./api_schemas.ts";
import { CommandResult, CreateCommand, RegisterDevice, UpdateDevice } from "./schemas.ts";
import { SESSION_COOKIE } from "./session.ts";
import { createHash } from "node:crypto";

/** A route as Hono lists it in `app.routes`. */
export interface RouteInfo {
  /** `GET`, `POST`, … (`ALL` for middleware). */
  method: string;
  /** Hono path, such as `/api/v1/devices/:id`. */
  path: string;
}

/** What to build the document for. */
export interface OpenApiOptions {
  /** Keep only operations served by these routes (pass `app.routes`). */
  routes?: readonly RouteInfo[];
  /** The server URL (default `/`: the host serving the document). */
  serverUrl?: string;
  /** Name of the dashboard's session cookie (default: the dashboard's). */
  sessionCookie?: string;
}

/** The request bodies the router validates, as named components. */
export const REQUEST_SCHEMAS = {
  RegisterDevice,
  UpdateDevice,
  CreateCommand,
  CommandResult,
  PushSubscription: PushSubscriptionBody,
} as const satisfies Record<string, z.ZodType>;

const API_VERSION = "1.0.0";

/** Descriptions of the main components (the zod schemas carry their fields' descriptions). */
const DESCRIPTIONS: Record<string, string> = {
  JsonValue: "Any JSON value.",
  Tags: "Labels: up to 32 names (1-64 of A-Z a-z 0-9 _ . -) with string values (≤ 256).",
  LeafMeta: "When a leaf last changed, and at which twin version.",
  Connection: "Presence of the device behind a twin.",
  Error: 'Every error response: `{"error": {code, message, details}}`.',
  ValidationDetails: "`details` of a `validation_failed` error.",
  Health: "Liveness.",
  Device: "A device as the API shows it: never its key.",
  DeviceWithKey: "A device with its key: only in answers to registration and rotation.",
  DeviceList: "A page of devices.",
  Twin: "The twin document: desired, reported, delta, metadata, telemetry, connection.",
  DeviceTwin: "What a device sees of its twin.",
  ReportedAccepted: "A reported patch was applied.",
  TelemetryBody: "One telemetry item or a batch of up to 500.",
  TelemetryAccepted: "Telemetry is durable.",
  HistoryPoint: "A raw history point.",
  HistoryBucket: "A rollup bucket over `[start, end)`.",
  HistoryPage: "A page of telemetry history, oldest first.",
  CommandStatus: "`queued` → `delivered` → `succeeded` | `failed`; or `expired`, `timed_out`.",
  StatusChange: "One step in a command's life.",
  Command: "A cloud-to-device command.",
  CommandList: "A page of commands, newest first.",
  DeviceCommand: "A command as a device receives it.",
  DeviceCommandList: "Commands handed to the device (now `delivered`).",
  CommandResultAccepted: "A command result was recorded.",
  TwinEvent: "Something that happened to a twin.",
  EventList: "A page of events, newest first.",
  Severity: "Alarm severities, most severe first.",
  Alarm: "An alarm raised by a rule or a handler.",
  AlarmList: "A page of alarms, newest first.",
  VapidPublicKey: "The VAPID public key for web push.",
  PushSubscriptionCreated: "A push subscription was stored.",
  PushSubscriptionInfo: "A stored push subscription (its keys are not shown).",
  PushSubscriptionList: "Every push subscription.",
  RegisterDevice: "Registers a device (`id` is generated when absent).",
  UpdateDevice: "Give `tags` (a merge patch: `null` removes one), `enabled`, or both.",
  CreateCommand: "`ttl`: seconds it may wait to be delivered (default 1 day); `timeout`: " +
    "seconds the device has once delivered (default 300).",
  CommandResult: "A device's answer to a command.",
  PushSubscription: "A browser's `PushSubscription.toJSON()`, with the severities wanted.",
};
const SCHEMA_PREFIX = "#/components/schemas/";

// ---------------------------------------------------------------------------------------------
// Components from zod

type JsonSchema = Record<string, unknown>;

const SAFE = Number.MAX_SAFE_INTEGER;

/** Drops zod's noise: the date-time regex next to `format`, the safe-integer bounds. */
function tidy(ctx: { jsonSchema: JsonSchema }): void {
  const s = ctx.jsonSchema;
  if (s.format === "date-time" && typeof s.pattern === "string") delete s.pattern;
  if (s.minimum === -SAFE) delete s.minimum;
  if (s.maximum === SAFE) delete s.maximum;
}

const BASE_PARAMS = {
  target: "draft-2020-12",
  io: "input",
  unrepresentable: "any",
  override: tidy as (ctx: unknown) => void,
} as const;

let componentCache: { schemas: Record<string, JsonSchema>; names: Map<z.ZodType, string> } | null =
  null;

/** `components.schemas`, converted once, and the name of each registered zod schema. */
function components(): { schemas: Record<string, JsonSchema>; names: Map<z.ZodType, string> } {
  if (componentCache) return componentCache;
  // A registry of our own: the shared schemas are not touched and the global one stays clean.
  const registry = z.registry<{ id: string; description?: string }>();
  const names = new Map<z.ZodType, string>();
  for (const [id, schema] of Object.entries({ ...R.RESPONSE_SCHEMAS, ...REQUEST_SCHEMAS })) {
    if (names.has(schema)) continue;
    const description = DESCRIPTIONS[id];
    registry.add(schema, description ? { id, description } : { id });
    names.set(schema, id);
  }
  const out = z.toJSONSchema(
    registry,
    {
      ...BASE_PARAMS,
      uri: (id) => `${SCHEMA_PREFIX}${id}`,
    } as Parameters<typeof z.toJSONSchema>[1],
  ) as { schemas: Record<string, JsonSchema> };
  const schemas: Record<string, JsonSchema> = {};
  for (const [id, schema] of Object.entries(out.schemas)) {
    const { $schema: _s, $id: _i, ...rest } = schema;
    if (id === "__shared") {
      // Unnamed schemas used by several components: give each a component of its own.
      for (const [def, value] of Object.entries((rest.$defs ?? {}) as Record<string, JsonSchema>)) {
        schemas[`Shared_${def}`] = value;
      }
    } else {
      schemas[id] = rest;
    }
  }
  componentCache = { schemas: rewriteSharedRefs(schemas) as typeof schemas, names };
  return componentCache;
}

/** `#/components/schemas/__shared#/$defs/x` → `#/components/schemas/Shared_x`. */
function rewriteSharedRefs(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(rewriteSharedRefs);
  if (value === null || typeof value !== "object") return value;
  const out: Record<string, unknown> = {};
  for (const [key, inner] of Object.entries(value)) {
    out[key] = key === "$ref" && typeof inner === "string"
      ? inner.replace(/__shared#\/\$defs\//, "Shared_")
      : rewriteSharedRefs(inner);
  }
  return out;
}

/** A schema for use in an operation: a `$ref` when the zod schema is a component, else inline. */
function schemaOf(schema: z.ZodType): JsonSchema {
  const { names } = components();
  const name = names.get(schema);
  if (name) return { $ref: `${SCHEMA_PREFIX}${name}` };
  const { $schema: _s, ...rest } = z.toJSONSchema(
    schema,
    BASE_PARAMS as Parameters<typeof z.toJSONSchema>[1],
  ) as JsonSchema;
  return rest;
}

// ---------------------------------------------------------------------------------------------
// Operations

/**
 * `operator`: the bearer token, or the dashboard's session cookie (with `X-CSRF-Token` on unsafe
 * methods); `bearer`: the bearer token only; `session`: the dashboard's cookie only.
 */
type Security = "operator" | "bearer" | "device" | "public" | "session" | "mqtt";
type ErrorStatus = 400 | 401 | 403 | 404 | 409 | 412 | 413 | 415 | 429;

interface Param {
  name: string;
  in: "path" | "query" | "header";
  description: string;
  schema: z.ZodType;
  required?: boolean;
  /** A query parameter that may repeat. */
  repeat?: boolean;
  example?: unknown;
}

interface Resp {
  description: string;
  schema?: z.ZodType;
  /** Content type of `schema` or of a non-JSON body. */
  type?: string;
  /** Headers set on this response. */
  headers?: Record<string, { description: string; schema: z.ZodType }>;
  example?: unknown;
}

interface Op {
  method: "get" | "post" | "put" | "patch" | "delete";
  path: string;
  operationId: string;
  tag: string;
  summary: string;
  description?: string;
  security: Security;
  params?: Param[];
  body?: {
    schema: z.ZodType;
    description?: string;
    types?: string[];
    example?: unknown;
  };
  responses: Record<string, Resp>;
  errors: ErrorStatus[];
  extensions?: Record<string, unknown>;
}

const str = z.string();
const Q = R.QuerySchemas;

const idParam: Param = {
  name: "id",
  in: "path",
  description: "device id",
  schema: str,
  example: "t1",
};
const commandIdParam: Param = {
  name: "commandId",
  in: "path",
  description: "command id",
  schema: str,
};
const alarmIdParam: Param = { name: "alarmId", in: "path", description: "alarm id", schema: str };
const cursorParam: Param = {
  name: "cursor",
  in: "query",
  description: "`cursor` of the previous page",
  schema: Q.cursor,
};
const limit = (max: number, fallback: number): Param => ({
  name: "limit",
  in: "query",
  description: `page size, 1–${max}`,
  schema: Q.limit(max, fallback),
});
const gatewayParam: Param = {
  name: "device",
  in: "query",
  description:
    "a gateway acting for one of its children names the child here (403 for any other device)",
  schema: str,
};
const etagHeader = {
  ETag: { description: 'the twin\'s version, quoted: `"7"`', schema: str },
};
const wsUpgrade = (what: string): Resp => ({
  description: `Switching Protocols: the ${what} is open.`,
});

/** Every operation Doppel serves (filtered by `routes` when given). */
function operations(): Op[] {
  return [
    // ----- devices
    {
      method: "post",
      path: "/api/v1/devices",
      operationId: "registerDevice",
      tag: "devices",
      summary: "Register a device",
      description: "Creates the device and its twin. The `key` is shown only in this response.",
      security: "operator",
      body: {
        schema: RegisterDevice,
        example: { id: "t1", kind: "thermostat", tags: { site: "lab" } },
      },
      responses: { 201: { description: "The device with its key.", schema: R.DeviceWithKey } },
      errors: [400, 401, 409, 413, 415],
    },
    {
      method: "get",
      path: "/api/v1/devices",
      operationId: "listDevices",
      tag: "devices",
      summary: "List devices",
      description: "Filters combine (all must match); pages in id order of the narrowest index.",
      security: "operator",
      params: [
        { name: "kind", in: "query", description: "only this kind", schema: str },
        {
          name: "tag",
          in: "query",
          description: "`name:value`; may repeat, all must match",
          schema: str,
          repeat: true,
          example: "site:lab",
        },
        {
          name: "status",
          in: "query",
          description: "only devices with this presence now",
          schema: Q.connectionStatus,
        },
        { name: "parent", in: "query", description: "only children of this gateway", schema: str },
        limit(1000, 50),
        cursorParam,
      ],
      responses: { 200: { description: "A page of devices.", schema: R.DeviceList } },
      errors: [400, 401],
    },
    {
      method: "get",
      path: "/api/v1/devices/{id}",
      operationId: "getDevice",
      tag: "devices",
      summary: "Get a device",
      description: "The device with its `connection`, never its key.",
      security: "operator",
      params: [idParam],
      responses: { 200: { description: "The device.", schema: R.Device } },
      errors: [401, 404],
    },
    {
      method: "patch",
      path: "/api/v1/devices/{id}",
      operationId: "updateDevice",
      tag: "devices",
      summary: "Update a device's tags or enabled flag",
      description:
        "Give `tags` (a merge patch: `null` removes a tag), `enabled`, or both. Disabling " +
        "refuses the device at once: its sessions end.",
      security: "operator",
      params: [idParam],
      body: { schema: UpdateDevice, example: { tags: { site: null, room: "2.14" } } },
      responses: { 200: { description: "The updated device.", schema: R.Device } },
      errors: [400, 401, 404, 409, 413, 415],
    },
    {
      method: "delete",
      path: "/api/v1/devices/{id}",
      operationId: "deleteDevice",
      tag: "devices",
      summary: "Delete a device",
      description:
        "Its twin, commands, events, history and dedupe records go too. 409 for a gateway that " +
        "still has children.",
      security: "operator",
      params: [idParam],
      responses: { 204: { description: "Deleted." } },
      errors: [401, 404, 409],
    },
    {
      method: "post",
      path: "/api/v1/devices/{id}/keys",
      operationId: "rotateDeviceKey",
      tag: "devices",
      summary: "Rotate a device's key",
      description: "The new `key` is returned; the previous key stays valid until the next " +
        "rotation.",
      security: "operator",
      params: [idParam],
      responses: { 200: { description: "The device with its new key.", schema: R.DeviceWithKey } },
      errors: [401, 404, 409],
    },
    // ----- twins
    {
      method: "get",
      path: "/api/v1/twins/{id}",
      operationId: "getTwin",
      tag: "twins",
      summary: "Get a twin",
      description: "Desired, reported, delta, metadata, last telemetry and connection.",
      security: "operator",
      params: [idParam, {
        name: "If-None-Match",
        in: "header",
        description: "an ETag from before: 304 if the twin is still at that version",
        schema: str,
      }],
      responses: {
        200: { description: "The twin document.", schema: R.Twin, headers: etagHeader },
        304: { description: "Not modified.", headers: etagHeader },
      },
      errors: [401, 404],
    },
    {
      method: "patch",
      path: "/api/v1/twins/{id}/desired",
      operationId: "patchDesired",
      tag: "twins",
      summary: "Merge-patch desired state",
      description:
        "The kind validates the whole desired document after the merge; over 32 KiB is refused " +
        "whole (413). The device is pushed the change.",
      security: "operator",
      params: [idParam, {
        name: "If-Match",
        in: "header",
        description: 'apply only at this version (the ETag, such as `"7"`); 412 otherwise',
        schema: str,
        example: '"1"',
      }],
      body: {
        schema: R.MergePatch,
        types: ["application/merge-patch+json", "application/json"],
        example: { targetTemperature: 21 },
      },
      responses: {
        200: { description: "The new twin.", schema: R.Twin, headers: etagHeader },
      },
      errors: [400, 401, 404, 412, 413, 415],
    },
    // ----- commands
    {
      method: "post",
      path: "/api/v1/devices/{id}/commands",
      operationId: "createCommand",
      tag: "commands",
      summary: "Send a command",
      description:
        "Queues the command (202, `status: queued`). With `?wait=N` the answer waits up to N " +
        "seconds and is 200 with the finished command if the device answers in time. At most " +
        "100 commands wait per device (409 beyond).",
      security: "operator",
      params: [idParam, {
        name: "wait",
        in: "query",
        description: "seconds to wait for the result, 0–300",
        schema: Q.wait(300),
      }, {
        name: "Idempotency-Key",
        in: "header",
        description: "1–128 characters; for 24 h a repeat returns the first command",
        schema: z.string().min(1).max(128),
      }],
      body: {
        schema: CreateCommand,
        example: { name: "cool", payload: { targetTemperature: 25 } },
      },
      responses: {
        200: { description: "The command, finished within `wait`.", schema: R.Command },
        202: { description: "The command, not finished yet.", schema: R.Command },
      },
      errors: [400, 401, 404, 409, 413, 415],
    },
    {
      method: "get",
      path: "/api/v1/devices/{id}/commands",
      operationId: "listCommands",
      tag: "commands",
      summary: "List a device's commands",
      description: "Newest first; finished commands stay for 30 days.",
      security: "operator",
      params: [
        idParam,
        {
          name: "status",
          in: "query",
          description: "only this status",
          schema: Q.commandStatus,
        },
        limit(1000, 50),
        cursorParam,
      ],
      responses: { 200: { description: "A page of commands.", schema: R.CommandList } },
      errors: [400, 401, 404],
    },
    {
      method: "get",
      path: "/api/v1/devices/{id}/commands/{commandId}",
      operationId: "getCommand",
      tag: "commands",
      summary: "Get a command",
      description: "Its `status`, `result` and `history` of `{status, at}`.",
      security: "operator",
      params: [idParam, commandIdParam],
      responses: { 200: { description: "The command.", schema: R.Command } },
      errors: [401, 404],
    },
    // ----- telemetry history and events
    {
      method: "get",
      path: "/api/v1/devices/{id}/telemetry",
      operationId: "getTelemetryHistory",
      tag: "telemetry",
      summary: "Telemetry history of one metric",
      description:
        "Raw points (`{ts, value}`) or, with `bucket`, rollups (`{start, end, min, max, avg, count, " +
        "last}`), oldest first. Default range: the last hour of points, or 1440 buckets.",
      security: "operator",
      params: [
        idParam,
        {
          name: "metric",
          in: "query",
          required: true,
          description: "a numeric telemetry field",
          schema: str,
          example: "temperature",
        },
        {
          name: "from",
          in: "query",
          description: "epoch ms or ISO 8601 (inclusive)",
          schema: Q.time,
        },
        {
          name: "to",
          in: "query",
          description: "epoch ms or ISO 8601 (inclusive; default now)",
          schema: Q.time,
        },
        {
          name: "bucket",
          in: "query",
          description: "rollup length; omit for raw points",
          schema: Q.bucket,
        },
        {
          name: "format",
          in: "query",
          description: "`items` (default): an object per point or bucket; `columns`: one array " +
            "per field, times as epoch ms (smaller and faster; what charts want)",
          schema: z.enum(["items", "columns"]),
        },
        limit(100_000, 1000),
        cursorParam,
      ],
      responses: { 200: { description: "A page of history.", schema: R.HistoryPage } },
      errors: [400, 401, 404],
    },
    {
      method: "get",
      path: "/api/v1/devices/{id}/events",
      operationId: "listEvents",
      tag: "events",
      summary: "A twin's events",
      description: "Newest first: desired and reported changes, presence, commands, rules, " +
        "alarms and the kind's own events.",
      security: "operator",
      params: [
        idParam,
        {
          name: "type",
          in: "query",
          description: "only this type or its subtypes (`presence` matches `presence.online`)",
          schema: str,
        },
        limit(1000, 100),
        cursorParam,
      ],
      responses: { 200: { description: "A page of events.", schema: R.EventList } },
      errors: [400, 401, 404],
    },
    // ----- alarms
    {
      method: "get",
      path: "/api/v1/alarms",
      operationId: "listAlarms",
      tag: "alarms",
      summary: "List alarms across the fleet",
      description: "Newest first.",
      security: "operator",
      params: [
        { name: "device", in: "query", description: "only this device's", schema: str },
        { name: "severity", in: "query", description: "only this severity", schema: Q.severity },
        { name: "state", in: "query", description: "only this state", schema: Q.alarmState },
        limit(1000, 50),
        cursorParam,
      ],
      responses: { 200: { description: "A page of alarms.", schema: R.AlarmList } },
      errors: [400, 401],
    },
    {
      method: "get",
      path: "/api/v1/alarms/{alarmId}",
      operationId: "getAlarm",
      tag: "alarms",
      summary: "Get an alarm",
      security: "operator",
      params: [alarmIdParam],
      responses: { 200: { description: "The alarm.", schema: R.Alarm } },
      errors: [401, 404],
    },
    {
      method: "post",
      path: "/api/v1/alarms/{alarmId}/acknowledge",
      operationId: "acknowledgeAlarm",
      tag: "alarms",
      summary: "Acknowledge an alarm",
      description: "It stays open (`acknowledged`) until cleared; 409 if it is not open.",
      security: "operator",
      params: [alarmIdParam],
      responses: { 200: { description: "The acknowledged alarm.", schema: R.Alarm } },
      errors: [401, 404, 409],
    },
    {
      method: "post",
      path: "/api/v1/alarms/{alarmId}/clear",
      operationId: "clearAlarm",
      tag: "alarms",
      summary: "Clear an alarm",
      description: "409 if it is not open.",
      security: "operator",
      params: [alarmIdParam],
      responses: { 200: { description: "The cleared alarm.", schema: R.Alarm } },
      errors: [401, 404, 409],
    },
    // ----- push
    {
      method: "get",
      path: "/api/v1/push/vapid-public-key",
      operationId: "getVapidPublicKey",
      tag: "push",
      summary: "The VAPID public key",
      description: "For `pushManager.subscribe({applicationServerKey})` in the browser.",
      security: "operator",
      responses: { 200: { description: "The key.", schema: R.VapidPublicKey } },
      errors: [401],
    },
    {
      method: "post",
      path: "/api/v1/push/subscriptions",
      operationId: "createPushSubscription",
      tag: "push",
      summary: "Subscribe a browser to alarm notifications",
      description:
        "The body is the browser's `PushSubscription.toJSON()`, optionally with the severities " +
        "wanted. Registering the same endpoint again replaces it.",
      security: "operator",
      body: { schema: PushSubscriptionBody },
      responses: {
        201: { description: "Subscribed.", schema: R.PushSubscriptionCreated },
      },
      errors: [400, 401, 413, 415],
    },
    {
      method: "get",
      path: "/api/v1/push/subscriptions",
      operationId: "listPushSubscriptions",
      tag: "push",
      summary: "List push subscriptions",
      security: "operator",
      responses: { 200: { description: "Every subscription.", schema: R.PushSubscriptionList } },
      errors: [401],
    },
    {
      method: "delete",
      path: "/api/v1/push/subscriptions/{id}",
      operationId: "deletePushSubscription",
      tag: "push",
      summary: "Remove a push subscription",
      security: "operator",
      params: [{ name: "id", in: "path", description: "subscription id", schema: str }],
      responses: { 204: { description: "Removed." } },
      errors: [401, 404],
    },
    // ----- live stream
    {
      method: "get",
      path: "/api/v1/stream",
      operationId: "streamEvents",
      tag: "stream",
      summary: "Live changes (Server-Sent Events)",
      description:
        "A `text/event-stream` that stays open. First `event: hello` (`{device}`); then, every " +
        "100 ms for a device (every 250 ms for the fleet), `event: notices` with a JSON array of " +
        "the changes committed since (for a device: telemetry, twin, commands, alarms, presence, " +
        "events; for the fleet: alarms and presence), and for the fleet `event: stats` every " +
        "second (`{messagesPerSecond, pointsPerSecond, activeTwins, connected}`).",
      security: "operator",
      params: [{
        name: "device",
        in: "query",
        description: "one device's changes (404 if it is not registered); omit for the fleet's",
        schema: str,
      }],
      responses: {
        200: { description: "The event stream.", type: "text/event-stream" },
      },
      errors: [401, 404],
    },
    // ----- device API
    {
      method: "post",
      path: "/device/v1/telemetry",
      operationId: "postTelemetry",
      tag: "device",
      summary: "Send telemetry",
      description:
        "One object or an array (≤ 500 items, ≤ 256 KiB); each item's fields are validated by " +
        "the device's kind. 202 once durable.",
      security: "device",
      params: [gatewayParam],
      body: {
        schema: R.TelemetryBody,
        example: { temperature: 34.5, ts: 1764151200000, id: "m-0001" },
      },
      responses: {
        202: { description: "Durable.", schema: R.TelemetryAccepted },
      },
      errors: [400, 401, 403, 413, 415],
    },
    {
      method: "get",
      path: "/device/v1/twin",
      operationId: "getDeviceTwin",
      tag: "device",
      summary: "Get the device's twin",
      security: "device",
      params: [gatewayParam],
      responses: {
        200: {
          description: "Desired, reported and their metadata.",
          schema: R.DeviceTwin,
          headers: etagHeader,
        },
      },
      errors: [401, 403, 404],
    },
    {
      method: "patch",
      path: "/device/v1/twin/reported",
      operationId: "patchReported",
      tag: "device",
      summary: "Merge-patch reported state",
      description: "The kind validates the whole reported document after the merge.",
      security: "device",
      params: [gatewayParam],
      body: {
        schema: R.MergePatch,
        types: ["application/merge-patch+json", "application/json"],
        example: { firmware: "1.2.0" },
      },
      responses: { 200: { description: "Applied.", schema: R.ReportedAccepted } },
      errors: [400, 401, 403, 413, 415],
    },
    {
      method: "get",
      path: "/device/v1/commands",
      operationId: "pollCommands",
      tag: "device",
      summary: "Take queued commands (long poll)",
      description:
        "Oldest first; returning them marks them `delivered` and starts their timeout. With " +
        "`wait` the answer waits up to that many seconds for a command.",
      security: "device",
      params: [gatewayParam, {
        name: "wait",
        in: "query",
        description: "seconds to wait, 0–60",
        schema: Q.wait(60),
      }, limit(100, 100)],
      responses: { 200: { description: "Commands (maybe none).", schema: R.DeviceCommandList } },
      errors: [400, 401, 403],
    },
    {
      method: "post",
      path: "/device/v1/commands/{commandId}/result",
      operationId: "postCommandResult",
      tag: "device",
      summary: "Answer a command",
      description: "409 if the command already finished (or expired, or timed out).",
      security: "device",
      params: [commandIdParam, gatewayParam],
      body: { schema: CommandResult, example: { status: "succeeded" } },
      responses: { 200: { description: "Recorded.", schema: R.CommandResultAccepted } },
      errors: [400, 401, 403, 404, 409, 413, 415],
    },
    {
      method: "get",
      path: "/device/v1/ws",
      operationId: "deviceWebSocket",
      tag: "device",
      summary: "WebSocket device channel",
      description:
        "Upgrade with HTTP Basic credentials. Frames up: `telemetry`, `reported`, `twin.get`, " +
        "`command.result`, `presence`, `ack` (each may carry `rid`, and from a gateway " +
        "`device`). Frames down: `hello`, `desired`, `command` (acknowledge each with " +
        '`{type: "ack", mid}`), `result`, `error`. Frames ≤ 256 KiB; pings every 60 s.',
      security: "device",
      params: [{
        name: "Upgrade",
        in: "header",
        required: true,
        description: "`websocket`",
        schema: z.literal("websocket"),
      }],
      responses: { 101: wsUpgrade("device channel") },
      errors: [400, 401, 403],
      extensions: { "x-websocket": true },
    },
    // ----- system
    {
      method: "get",
      path: "/healthz",
      operationId: "health",
      tag: "system",
      summary: "Liveness",
      security: "public",
      responses: { 200: { description: "Serving.", schema: R.Health } },
      errors: [],
    },
    {
      method: "get",
      path: "/metrics",
      operationId: "metrics",
      tag: "system",
      summary: "Prometheus metrics",
      description: "Text exposition format 0.0.4. Bearer: the operator token, or " +
        "`DOPPEL_METRICS_TOKEN` when set (for scrapers).",
      security: "bearer",
      responses: {
        200: { description: "Metrics.", type: "text/plain; version=0.0.4" },
      },
      errors: [401],
    },
    {
      method: "get",
      path: "/mqtt",
      operationId: "mqttWebSocket",
      tag: "system",
      summary: "MQTT over WebSocket",
      description:
        "The embedded broker (present when it runs). Subprotocol `mqtt` (or `mqttv3.1`); " +
        "authenticate in MQTT CONNECT (username device id, password key, client id device id).",
      security: "mqtt",
      params: [{
        name: "Upgrade",
        in: "header",
        required: true,
        description: "`websocket`",
        schema: z.literal("websocket"),
      }, {
        name: "Sec-WebSocket-Protocol",
        in: "header",
        description: "`mqtt`",
        schema: str,
      }],
      responses: { 101: wsUpgrade("MQTT connection") },
      errors: [400],
      extensions: { "x-websocket": true },
    },
    {
      method: "get",
      path: "/api/v1/openapi.json",
      operationId: "openApiDocument",
      tag: "system",
      summary: "This document (OpenAPI 3.1)",
      security: "public",
      responses: { 200: { description: "The OpenAPI document.", type: "application/json" } },
      errors: [],
    },
    {
      method: "get",
      path: "/docs",
      operationId: "docs",
      tag: "system",
      summary: "This reference as a web page",
      security: "public",
      responses: { 200: { description: "HTML.", type: "text/html" } },
      errors: [],
    },
    // ----- dashboard (HTML for people)
    ...dashboardPages(),
  ];
}

function dashboardPages(): Op[] {
  const html = (description: string): Resp => ({ description, type: "text/html" });
  const toLogin: Resp = { description: "Not signed in: redirect to `/login`." };
  const page = (path: string, operationId: string, summary: string, params?: Param[]): Op => ({
    method: "get",
    path,
    operationId,
    tag: "dashboard",
    summary,
    security: "session",
    params,
    responses: { 200: html("The page."), 303: toLogin },
    errors: [],
    extensions: { "x-dashboard": true },
  });
  const file = (
    path: string,
    operationId: string,
    summary: string,
    responses: Record<string, Resp>,
    params?: Param[],
  ): Op => ({
    method: "get",
    path,
    operationId,
    tag: "dashboard",
    summary,
    security: "public",
    params,
    responses,
    errors: [],
    extensions: { "x-dashboard": true },
  });
  return [
    page("/", "dashboardOverview", "Fleet overview"),
    page("/devices", "dashboardDevices", "Devices"),
    page("/devices/{id}", "dashboardDevice", "One device: twin, history, commands, alarms", [
      idParam,
    ]),
    page("/alarms", "dashboardAlarms", "Alarms"),
    {
      method: "get",
      path: "/login",
      operationId: "loginForm",
      tag: "dashboard",
      summary: "Sign-in form",
      description: "Sets a short-lived cookie holding the form's CSRF token.",
      security: "public",
      responses: { 200: html("The form.") },
      errors: [],
      extensions: { "x-dashboard": true },
    },
    {
      method: "post",
      path: "/login",
      operationId: "login",
      tag: "dashboard",
      summary: "Sign in with the operator token",
      description:
        "Exchanges the operator token for a session (HttpOnly, SameSite=Strict cookie, 12 h). " +
        "Ten failures from one address within a minute lock it out for a minute (429).",
      security: "public",
      body: {
        schema: z.object({
          token: z.string().max(200).describe("the operator token"),
          _csrf: z.string().describe("the token from the form (matches its cookie)"),
        }),
        types: ["application/x-www-form-urlencoded"],
      },
      responses: {
        303: { description: "Signed in: the session cookie is set; redirect to `/`." },
        401: html("Not the operator token: the form again, with the error."),
      },
      errors: [403, 429],
      extensions: { "x-dashboard": true },
    },
    {
      method: "post",
      path: "/logout",
      operationId: "logout",
      tag: "dashboard",
      summary: "Sign out",
      security: "session",
      body: {
        schema: z.object({ _csrf: z.string().describe("the session's CSRF token") }),
        types: ["application/x-www-form-urlencoded"],
      },
      responses: {
        303: { description: "Signed out: the session cookie is cleared; redirect to `/login`." },
      },
      errors: [403],
      extensions: { "x-dashboard": true },
    },
    file("/sw.js", "serviceWorker", "Service worker (web push notifications)", {
      200: { description: "JavaScript.", type: "text/javascript" },
    }),
    file("/favicon.ico", "favicon", "No icon", { 204: { description: "Nothing." } }),
    file(
      "/assets/{file}",
      "dashboardAsset",
      "Scripts and styles of the dashboard",
      { 200: { description: "The file (JavaScript or CSS); cached for 5 minutes." } },
      [{
        name: "file",
        in: "path",
        description: "one of the dashboard's files",
        schema: z.enum(DASHBOARD_ASSETS),
      }],
    ),
  ];
}

/** The files served under `/assets/`. */
const DASHBOARD_ASSETS = ["app.js", "app.css", "uplot.js", "uplot.css"] as const;

// ---------------------------------------------------------------------------------------------
// The document

const TAGS: Array<{ name: string; description: string }> = [
  { name: "devices", description: "The registry: devices, their tags and keys." },
  { name: "twins", description: "Twin documents: desired, reported, delta, metadata." },
  { name: "commands", description: "Cloud-to-device commands and their status." },
  { name: "telemetry", description: "Telemetry history: raw points and rollups." },
  { name: "events", description: "What happened to a twin." },
  { name: "alarms", description: "Alarms raised by rules and handlers, across the fleet." },
  { name: "push", description: "Web push of alarms to operators' browsers." },
  { name: "stream", description: "Live changes for dashboards (Server-Sent Events)." },
  { name: "device", description: "The device API (HTTP Basic `deviceId:key`)." },
  { name: "system", description: "Health, metrics, MQTT over WebSocket, this reference." },
  { name: "dashboard", description: "Pages for people (HTML), behind a session cookie." },
];

const ERRORS: Record<ErrorStatus, { name: string; description: string; codes: string[] }> = {
  400: {
    name: "BadRequest",
    description: "Bad input: `details.fields` names the bad fields.",
    codes: ["bad_request", "invalid_json", "validation_failed"],
  },
  401: {
    name: "Unauthorized",
    description: "No or bad credentials (an unknown device and a wrong key look the same).",
    codes: ["unauthorized"],
  },
  403: {
    name: "Forbidden",
    description: "Not allowed for this caller: a disabled device, a gateway naming a device " +
      "that is not its child, a dashboard request without its CSRF token or from another origin.",
    codes: ["forbidden"],
  },
  404: { name: "NotFound", description: "Unknown device, command or alarm.", codes: ["not_found"] },
  409: {
    name: "Conflict",
    description: "Conflict: the id exists, the command finished, the alarm is not open, …",
    codes: ["conflict"],
  },
  412: {
    name: "PreconditionFailed",
    description: "`If-Match` does not match the twin's version.",
    codes: ["precondition_failed"],
  },
  413: {
    name: "PayloadTooLarge",
    description: "The body, or the document after the patch, is too large.",
    codes: ["payload_too_large"],
  },
  415: {
    name: "UnsupportedMediaType",
    description: "Send JSON.",
    codes: ["unsupported_media_type"],
  },
  429: {
    name: "TooManyRequests",
    description: "Rate limited: retry after `Retry-After` seconds.",
    codes: ["rate_limited"],
  },
};

function errorResponses(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [status, e] of Object.entries(ERRORS)) {
    out[e.name] = {
      description: `${e.description} Codes: ${e.codes.map((c) => `\`${c}\``).join(", ")}.`,
      ...(status === "401"
        ? {
          headers: {
            "WWW-Authenticate": {
              description: '`Bearer realm="doppel"` (operator API) or `Basic realm="doppel"`',
              schema: { type: "string" },
            },
          },
        }
        : status === "429"
        ? {
          headers: {
            "Retry-After": { description: "seconds", schema: { type: "integer" } },
          },
        }
        : {}),
      content: {
        "application/json": {
          schema: { $ref: `${SCHEMA_PREFIX}Error` },
          example: {
            error: {
              code: e.codes.at(-1),
              message: e.description.split(":")[0].replace(/\.$/, "") + ".",
            },
          },
        },
      },
    };
  }
  out.InternalError = {
    description: "Something went wrong on the server; it was logged. Code `internal`.",
    content: { "application/json": { schema: { $ref: `${SCHEMA_PREFIX}Error` } } },
  };
  return out;
}

function securityOf(security: Security): Array<Record<string, string[]>> {
  switch (security) {
    case "operator":
      return [{ operator: [] }, { session: [] }];
    case "bearer":
      return [{ operator: [] }];
    case "device":
      return [{ device: [] }];
    case "session":
      return [{ session: [] }];
    case "public":
    case "mqtt":
      return [];
  }
}

function content(types: string[], schema: z.ZodType | undefined, example?: unknown) {
  const out: Record<string, unknown> = {};
  for (const type of types) {
    out[type] = {
      ...(schema ? { schema: schemaOf(schema) } : {}),
      ...(example === undefined ? {} : { example }),
    };
  }
  return out;
}

const csrfParam: Param = {
  name: "X-CSRF-Token",
  in: "header",
  description: "with the dashboard's session cookie (not with a bearer token): the session's " +
    "CSRF token; 403 without it",
  schema: str,
};

function operationObject(op: Op): Record<string, unknown> {
  const unsafe = op.method !== "get";
  const params = op.security === "operator" && unsafe
    ? [...(op.params ?? []), csrfParam]
    : op.params ?? [];
  const parameters = params.map((p) => {
    const schema = schemaOf(p.repeat ? z.array(p.schema) : p.schema);
    return {
      name: p.name,
      in: p.in,
      description: p.description,
      required: p.in === "path" ? true : p.required ?? false,
      schema,
      ...(p.repeat ? { style: "form", explode: true } : {}),
      ...(p.example === undefined ? {} : { example: p.repeat ? [p.example] : p.example }),
    };
  });
  const responses: Record<string, unknown> = {};
  for (const [status, r] of Object.entries(op.responses)) {
    const headers = r.headers
      ? Object.fromEntries(
        Object.entries(r.headers).map((
          [name, h],
        ) => [name, { description: h.description, schema: schemaOf(h.schema) }]),
      )
      : undefined;
    const types = r.schema ? [r.type ?? "application/json"] : r.type ? [r.type] : [];
    responses[status] = {
      description: r.description,
      ...(headers ? { headers } : {}),
      ...(types.length > 0 ? { content: content(types, r.schema, r.example) } : {}),
    };
  }
  const errors = op.security === "operator" && unsafe && !op.errors.includes(403)
    ? [...op.errors, 403 as const].sort()
    : op.errors;
  for (const status of errors) {
    responses[String(status)] = { $ref: `#/components/responses/${ERRORS[status].name}` };
  }
  if (op.security !== "public" || op.body || op.params?.length) {
    responses["500"] = { $ref: "#/components/responses/InternalError" };
  }
  return {
    operationId: op.operationId,
    tags: [op.tag],
    summary: op.summary,
    ...(op.description ? { description: op.description } : {}),
    security: securityOf(op.security),
    ...(parameters.length > 0 ? { parameters } : {}),
    ...(op.body
      ? {
        requestBody: {
          required: true,
          ...(op.body.description ? { description: op.body.description } : {}),
          content: content(op.body.types ?? ["application/json"], op.body.schema, op.body.example),
        },
      }
      : {}),
    responses,
    ...op.extensions,
  };
}

/** Hono's `/a/:id/*` → OpenAPI's `/a/{id}/{*}` (a wildcard matches any one template segment). */
export function openApiPath(honoPath: string): string {
  return honoPath
    .replace(/:([A-Za-z0-9_]+)(\{[^}]*\})?\??/g, "{$1}")
    .replace(/\*/g, "{*}");
}

/**
 * Whether `op` is served by a Hono route path: the same segments, a Hono parameter for each
 * template parameter, a Hono wildcard for any, or a literal the parameter's enum lists (such as
 * `/assets/app.js` for `/assets/{file}`).
 */
function sameShape(op: Op, honoPath: string): boolean {
  const a = op.path.split("/");
  const b = openApiPath(honoPath).split("/");
  if (a.length !== b.length) return false;
  return a.every((segment, i) => {
    if (segment === b[i]) return true;
    const param = /^\{(.+)\}$/.exec(segment)?.[1];
    if (param === undefined) return false;
    if (b[i] === "{*}") return true;
    const schema = op.params?.find((p) => p.in === "path" && p.name === param)?.schema;
    return schema instanceof z.ZodEnum && (schema.options as string[]).includes(b[i]);
  });
}

/** Whether `routes` serve `op` (middleware `ALL` entries do not count). */
function served(op: Op, routes: readonly RouteInfo[]): boolean {
  const method = op.method.toUpperCase();
  return routes.some((r) => r.method.toUpperCase() === method && sameShape(op, r.path));
}

/** Every operation with its OpenAPI object, built once. */
let builtOperations: Array<{ op: Op; object: Record<string, unknown> }> | undefined;

/** The OpenAPI 3.1 document. */
export function openApiDocument(options: OpenApiOptions = {}): Record<string, unknown> {
  builtOperations ??= operations().map((op) => ({ op, object: operationObject(op) }));
  const ops = options.routes
    ? builtOperations.filter(({ op }) => served(op, options.routes!))
    : builtOperations;
  const paths: Record<string, Record<string, unknown>> = {};
  for (const { op, object } of ops) {
    (paths[op.path] ??= {})[op.method] = object;
  }
  const usedTags = new Set(ops.map(({ op }) => op.tag));
  return structuredClone({
    openapi: "3.1.0",
    jsonSchemaDialect: "https://json-schema.org/draft/2020-12/schema",
    info: {
      title: "Doppel",
      version: API_VERSION,
      summary: "Digital twins for IoT fleets.",
      description:
        "Operators use `Authorization: Bearer <token>` on `/api/v1`; devices use HTTP Basic " +
        "`deviceId:key` on `/device/v1` (also over WebSocket at `/device/v1/ws` and MQTT). " +
        'Every error is `{"error": {"code", "message", "details"}}`. Desired and reported ' +
        "patches are JSON merge patches (RFC 7396).",
      license: { name: "MIT", identifier: "MIT" },
    },
    servers: [{ url: options.serverUrl ?? "/" }],
    tags: TAGS.filter((t) => usedTags.has(t.name)),
    paths,
    components: {
      schemas: components().schemas,
      responses: errorResponses(),
      securitySchemes: {
        operator: {
          type: "http",
          scheme: "bearer",
          description: "The operator token (printed once on first start, or DOPPEL_ADMIN_TOKEN).",
        },
        device: {
          type: "http",
          scheme: "basic",
          description: "`deviceId:key`; the key is shown on registration and rotation.",
        },
        session: {
          type: "apiKey",
          in: "cookie",
          name: options.sessionCookie ?? SESSION_COOKIE,
          description: "The dashboard's session, set by `POST /login`; it also opens the " +
            "operator API to the dashboard's scripts (with `X-CSRF-Token` on unsafe methods).",
        },
      },
    },
  });
}

// ---------------------------------------------------------------------------------------------
// The reference page

/** Methods with a colour of their own (`.m-get` … in the page's style); others are grey. */
const COLORED_METHODS = new Set(["get", "post", "patch", "put", "delete"]);

function esc(text: unknown): string {
  return String(text)
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

/** Backticks to `<code>`, the rest escaped. */
function prose(text: unknown): string {
  return esc(text).replace(/`([^`]+)`/g, "<code>$1</code>");
}

/** Pretty JSON, escaped, with `$ref`s as links to the schema section. */
function jsonBlock(value: unknown): string {
  const html = esc(JSON.stringify(value, null, 2)).replace(
    /&quot;#\/components\/(schemas|responses)\/([A-Za-z0-9_.-]+)&quot;/g,
    (_m, kind, name) =>
      `&quot;<a href="#${kind === "schemas" ? "schema" : "response"}-${name}">` +
      `#/components/${kind}/${name}</a>&quot;`,
  );
  return `<pre>${html}</pre>`;
}

function refName(value: unknown): string | undefined {
  const ref = (value as { $ref?: unknown } | undefined)?.$ref;
  return typeof ref === "string" ? ref.split("/").at(-1) : undefined;
}

function typeLabel(schema: JsonSchema | undefined): string {
  if (!schema) return "";
  const name = refName(schema);
  if (name) return `<a href="#schema-${esc(name)}">${esc(name)}</a>`;
  if (Array.isArray(schema.enum)) return schema.enum.map((v) => esc(JSON.stringify(v))).join(" | ");
  if (schema.const !== undefined) return esc(JSON.stringify(schema.const));
  if (schema.type === "array") return `${typeLabel(schema.items as JsonSchema)}[]`;
  if (Array.isArray(schema.anyOf)) {
    return (schema.anyOf as JsonSchema[]).map(typeLabel).join(" | ");
  }
  const bits = [String(schema.type ?? "any")];
  if (schema.minimum !== undefined || schema.maximum !== undefined) {
    bits.push(`${schema.minimum ?? ""}–${schema.maximum ?? ""}`);
  }
  if (schema.minLength !== undefined || schema.maxLength !== undefined) {
    bits.push(`length ${schema.minLength ?? 0}–${schema.maxLength ?? "∞"}`);
  }
  if (schema.default !== undefined) bits.push(`default ${JSON.stringify(schema.default)}`);
  return esc(bits.join(", "));
}

const SECURITY_LABEL: Record<string, string> = {
  operator: "operator bearer token",
  device: "device Basic credentials",
  session: "dashboard session",
};

/** A schema as JSON; a `$ref` also shows the component it names. */
function schemaBlock(schema: unknown, schemas: Record<string, unknown>): string {
  const name = refName(schema);
  if (name && schemas[name] !== undefined) {
    return `<p class="meta">schema <a href="#schema-${esc(name)}">${esc(name)}</a></p>` +
      jsonBlock(schemas[name]);
  }
  return jsonBlock(schema);
}

function renderOperation(
  path: string,
  method: string,
  op: Record<string, unknown>,
  schemas: Record<string, unknown>,
): string {
  const id = String(op.operationId);
  // A class, not a style attribute: the page's Content-Security-Policy allows only its <style>.
  const color = COLORED_METHODS.has(method) ? ` m-${method}` : "";
  const security = op.security as Array<Record<string, unknown>>;
  const auth = security.length === 0
    ? "none"
    : security.map((s) => Object.keys(s).map((k) => SECURITY_LABEL[k] ?? k).join(" + "))
      .join(" or ");
  const params = (op.parameters ?? []) as Array<Record<string, unknown>>;
  const body = op.requestBody as {
    content: Record<string, { schema?: unknown; example?: unknown }>;
  } | undefined;
  const responses = op.responses as Record<string, Record<string, unknown>>;
  const parts: string[] = [];
  parts.push(
    `<details class="op" id="op-${esc(id)}"><summary>` +
      `<span class="method${color}">${esc(method.toUpperCase())}</span>` +
      `<span class="path">${esc(path)}</span><span class="summary">${prose(op.summary)}</span>` +
      `</summary><div class="body">`,
  );
  if (op.description) parts.push(`<p>${prose(op.description)}</p>`);
  parts.push(`<p class="meta">operationId <code>${esc(id)}</code> · auth: ${esc(auth)}</p>`);
  if (params.length > 0) {
    parts.push(
      "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th>description</th></tr>",
    );
    for (const p of params) {
      parts.push(
        `<tr><td><code>${esc(p.name)}</code>${
          p.required ? ' <span class="req">required</span>' : ""
        }` +
          `</td><td>${esc(p.in)}</td><td>${typeLabel(p.schema as JsonSchema)}</td>` +
          `<td>${prose(p.description ?? "")}</td></tr>`,
      );
    }
    parts.push("</table>");
  }
  if (body) {
    parts.push(`<h4>Request body</h4>`);
    // Content types with the same schema and example are shown once.
    const groups = new Map<string, { types: string[]; schema?: unknown; example?: unknown }>();
    for (const [type, media] of Object.entries(body.content)) {
      const key = JSON.stringify([media.schema, media.example]);
      const group = groups.get(key) ?? groups.set(key, { ...media, types: [] }).get(key)!;
      group.types.push(type);
    }
    for (const group of groups.values()) {
      parts.push(
        `<p class="meta">${group.types.map((t) => `<code>${esc(t)}</code>`).join(", ")}</p>`,
      );
      if (group.schema) parts.push(schemaBlock(group.schema, schemas));
      if (group.example !== undefined) {
        parts.push(`<p class="meta">example</p>${jsonBlock(group.example)}`);
      }
    }
  }
  parts.push("<h4>Responses</h4><table><tr><th>status</th><th>body</th></tr>");
  for (const [status, response] of Object.entries(responses)) {
    const ref = refName(response);
    if (ref) {
      parts.push(
        `<tr><td><code>${esc(status)}</code></td><td><a href="#response-${esc(ref)}">${
          esc(ref)
        }</a>: <a href="#schema-Error">Error</a></td></tr>`,
      );
      continue;
    }
    const media = response.content as Record<string, { schema?: JsonSchema }> | undefined;
    const shown = media
      ? Object.entries(media).map(([type, m]) =>
        `<code>${esc(type)}</code>${m.schema ? ` ${typeLabel(m.schema)}` : ""}`
      ).join("<br>")
      : "";
    const headers = response.headers
      ? ` <span class="meta">headers: ${Object.keys(response.headers).map(esc).join(", ")}</span>`
      : "";
    const schema = media && Object.values(media).find((m) => m.schema)?.schema;
    const detail = schema
      ? `<details class="schema"><summary>schema</summary>${schemaBlock(schema, schemas)}</details>`
      : "";
    parts.push(
      `<tr><td><code>${esc(status)}</code></td><td>${prose(response.description)}` +
        `${shown ? `<br>${shown}` : ""}${headers}${detail}</td></tr>`,
    );
  }
  parts.push("</table></div></details>");
  return parts.join("\n");
}

const CSS = `
:root{color-scheme:light dark;--fg:#1f2328;--muted:#57606a;--bg:#fff;--panel:#f6f8fa;--line:#d0d7de}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--bg:#0d1117;--panel:#161b22;--line:#30363d}}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
a{color:#4493f8}
nav{position:fixed;top:0;left:0;bottom:0;width:270px;overflow:auto;padding:16px;border-right:1px solid var(--line);background:var(--panel)}
nav a{display:block;text-decoration:none;padding:2px 0}
nav .sub{font-size:12px;padding-left:10px;color:var(--muted);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
main{margin-left:270px;padding:24px 32px;max-width:1100px}
h1{margin-top:0} h2{border-bottom:1px solid var(--line);padding-bottom:4px;margin-top:40px}
code,pre{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:10px;overflow:auto;max-height:480px}
details.op{border:1px solid var(--line);border-radius:6px;margin:8px 0;background:var(--bg)}
details.op>summary{cursor:pointer;padding:8px 10px;display:flex;gap:10px;align-items:baseline;list-style:none}
details.op>summary::-webkit-details-marker{display:none}
details.op[open]>summary{border-bottom:1px solid var(--line);background:var(--panel)}
.method{color:#fff;background:#57606a;border-radius:4px;padding:1px 8px;font:600 12px ui-monospace,monospace;min-width:62px;text-align:center}
.m-get{background:#1f6feb}.m-post{background:#1a7f37}.m-patch{background:#9a6700}.m-put{background:#8250df}.m-delete{background:#cf222e}
.path{font:600 14px ui-monospace,monospace}
.summary{color:var(--muted)}
.body{padding:4px 14px 12px}
.meta{color:var(--muted);font-size:13px;margin:4px 0}
.req{color:#cf222e;font-size:12px}
details.schema>summary{cursor:pointer;color:var(--muted);font-size:13px}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}
th{background:var(--panel)}
@media (max-width:800px){nav{position:static;width:auto}main{margin-left:0;padding:16px}}
`;

/**
 * The `/docs` page's Content-Security-Policy: nothing but its own inline style (by hash), and
 * links.
 */
export const DOCS_CSP = [
  "default-src 'none'",
  `style-src 'sha256-${createHash("sha256").update(CSS).digest("base64")}'`,
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** The browsable reference for `/docs`: server-rendered, self-contained, no script. */
export function docsHtml(options: OpenApiOptions = {}): string {
  const doc = openApiDocument(options) as {
    info: { title: string; version: string; description: string };
    tags: Array<{ name: string; description: string }>;
    paths: Record<string, Record<string, Record<string, unknown>>>;
    components: {
      schemas: Record<string, unknown>;
      responses: Record<string, Record<string, unknown>>;
      securitySchemes: Record<string, Record<string, unknown>>;
    };
  };
  const byTag = new Map<string, string[]>();
  const navByTag = new Map<string, string[]>();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags as string[])[0];
      (byTag.get(tag) ?? byTag.set(tag, []).get(tag)!).push(
        renderOperation(path, method, op, doc.components.schemas),
      );
      (navByTag.get(tag) ?? navByTag.set(tag, []).get(tag)!).push(
        `<a class="sub" href="#op-${esc(op.operationId)}">${esc(method.toUpperCase())} ${
          esc(path)
        }</a>`,
      );
    }
  }
  const nav = [`<strong>${esc(doc.info.title)} API</strong>`, `<a href="#auth">Authentication</a>`];
  const sections: string[] = [];
  for (const tag of doc.tags) {
    nav.push(
      `<a href="#tag-${esc(tag.name)}">${esc(tag.name)}</a>`,
      ...(navByTag.get(tag.name) ?? []),
    );
    sections.push(
      `<section><h2 id="tag-${esc(tag.name)}">${esc(tag.name)}</h2><p>${
        prose(tag.description)
      }</p>` +
        (byTag.get(tag.name) ?? []).join("\n") + "</section>",
    );
  }
  nav.push(`<a href="#errors">Errors</a>`, `<a href="#schemas">Schemas</a>`);
  const auth = Object.entries(doc.components.securitySchemes).map(([name, s]) =>
    `<tr><td><code>${esc(name)}</code></td><td>${esc(s.type)} ${esc(s.scheme ?? s.in ?? "")}${
      s.name ? ` <code>${esc(s.name)}</code>` : ""
    }</td><td>${prose(s.description ?? "")}</td></tr>`
  ).join("");
  const errors = Object.entries(doc.components.responses).map(([name, r]) =>
    `<tr id="response-${esc(name)}"><td><code>${esc(name)}</code></td><td>${
      prose(r.description)
    }</td></tr>`
  ).join("");
  const schemas = Object.entries(doc.components.schemas).map(([name, s]) =>
    `<details class="op" id="schema-${esc(name)}"><summary><span class="path">${esc(name)}</span>` +
    `<span class="summary">${prose((s as JsonSchema).description ?? "")}</span></summary>` +
    `<div class="body">${jsonBlock(s)}</div></details>`
  ).join("\n");
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(doc.info.title)} API reference</title>
<style>${CSS}</style></head>
<body><nav>${nav.join("\n")}</nav><main>
<h1>${esc(doc.info.title)} API <span class="meta">v${
    esc(doc.info.version)
  } · OpenAPI 3.1</span></h1>
<p>${prose(doc.info.description)}</p>
<p>Machine-readable: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p>
<h2 id="auth">Authentication</h2><table><tr><th>scheme</th><th>type</th><th>use</th></tr>${auth}</table>
${sections.join("\n")}
<h2 id="errors">Errors</h2>
<p>Every error is <code>{"error": {"code", "message", "details"}}</code> (<a href="#schema-Error">Error</a>).</p>
<table><tr><th>response</th><th>meaning</th></tr>${errors}</table>
<h2 id="schemas">Schemas</h2>
${schemas}
</main></body></html>
`;
}
