/**
 * Zod schemas of the API's responses (and of the request bodies that kinds, not the router,
 * validate), registered under the component names of the OpenAPI document. Request bodies the
 * router validates live in `schemas.ts` and `alarms_api.ts`; `openapi.ts` documents those same
 * objects.
 *
 * Response objects are plain `z.object`s: parsing a response strips nothing the client needs,
 * and the JSON Schema leaves them open for fields added later. Tests compare `parse(body)` with
 * `body` to catch a field the server sends but these schemas do not name.
 * @module
 */
import { z } from "zod";
import { ERROR_STATUS } from "../errors.ts";
import { TagsSchema } from "../registry/devices.ts";
import { SEVERITIES } from "../rules/alarms.ts";
import { LEVELS } from "../telemetry/rollup.ts";
import type {
  JsonObject,
  LeafMeta as LeafMetaType,
  MetaTree as MetaTreeType,
} from "../twin/json.ts";
import { JsonValue } from "./schemas.ts";

/** An ISO 8601 UTC time as the server writes it (`2026-11-26T10:00:00.000Z`). */
const Time = z.iso.datetime().describe("ISO 8601 time, UTC");

/** Epoch milliseconds or ISO 8601. */
const TimeInput = z.union([z.number().int(), z.string()]);

// ---------------------------------------------------------------------------------------------
// Shared pieces

/** A JSON object (desired, reported, telemetry values, merge patches). */
export const JsonObjectSchema: z.ZodType<JsonObject> = z.record(z.string(), JsonValue).describe(
  "A JSON object.",
) as z.ZodType<JsonObject>;

/** A JSON merge patch (RFC 7396): `null` deletes a property. */
export const MergePatch = z.record(z.string(), JsonValue).describe(
  "JSON merge patch (RFC 7396): properties are merged into the document, `null` deletes one.",
);

/** When a leaf of desired or reported last changed, and at which twin version. */
export const LeafMeta: z.ZodType<LeafMetaType> = z.object({
  updatedAt: Time,
  version: z.number().int().min(1),
});

/** Metadata mirroring desired or reported down to their leaves. */
export const MetaTree: z.ZodType<MetaTreeType> = z.record(
  z.string(),
  z.union([LeafMeta, z.lazy(() => MetaTree)]),
).describe("Mirrors a document down to its leaves; each leaf is `{updatedAt, version}`.");

/** Presence of the device behind a twin. */
export const ConnectionStatus = z.enum(["online", "offline", "never"]);

/** Presence as the twin records it. */
export const Connection = z.object({
  status: ConnectionStatus.describe("`never` until the device first connects"),
  since: Time.nullable().describe("when the status last changed"),
  lastSeenAt: Time.nullable().describe("the last time the device was heard from"),
  reason: z.string().optional().describe(
    "why the status last changed: connect, request (an HTTP-only device), disconnect, " +
      "keepalive, connection lost, inactivity, lease expired, gateway reported, server shutdown, " +
      "disabled, deleted, key revoked",
  ),
});

/** Paging cursor: pass it back as `cursor`; `null` on the last page. */
const Cursor = z.string().nullable().describe(
  "pass as `cursor` for the next page; null at the end",
);

// ---------------------------------------------------------------------------------------------
// Errors and health

/** Contract error codes. */
export const ErrorCode = z.enum(
  Object.keys(ERROR_STATUS) as [keyof typeof ERROR_STATUS, ...(keyof typeof ERROR_STATUS)[]],
);

/** One field that failed validation. */
export const FieldIssue = z.object({
  field: z.string().describe(
    "where, such as `items[2].temperature`; `(body)` for the body as a whole, a header's name for a header",
  ),
  message: z.string(),
});

/** Every error response. */
export const ErrorBody = z.object({
  error: z.object({
    code: ErrorCode,
    message: z.string().describe("a sentence for people"),
    details: JsonValue.optional().describe(
      "extra structure; validation errors give `{fields: [{field, message}]}`",
    ),
  }),
});

/** `details` of a `validation_failed` error. */
export const ValidationDetails = z.object({ fields: z.array(FieldIssue) });

/** `GET /healthz`. */
export const Health = z.object({ status: z.literal("ok") });

// ---------------------------------------------------------------------------------------------
// Devices

/** A device as the API shows it: never its key. */
export const Device = z.object({
  id: z.string(),
  kind: z.string(),
  tags: z.record(z.string(), z.string()),
  parent: z.string().nullable().describe("the gateway it reaches the cloud through"),
  enabled: z.boolean().describe("a disabled device is refused everywhere"),
  createdAt: Time,
  updatedAt: Time,
  keyCreatedAt: Time.describe("when its current key was issued"),
  connection: Connection.optional().describe(
    "presence, from its twin (absent right after " +
      "registration and rotation)",
  ),
});

/** A device with its key: only in the answers to registration and key rotation. */
export const DeviceWithKey = Device.extend({
  key: z.string().describe("the device key (HTTP Basic password, MQTT password); shown only here"),
});

/** `GET /api/v1/devices`. */
export const DeviceList = z.object({ items: z.array(Device), cursor: Cursor });

// ---------------------------------------------------------------------------------------------
// Twins

/** The twin document of the contract. */
export const Twin = z.object({
  id: z.string(),
  kind: z.string(),
  version: z.number().int().min(1).describe("+1 on every change to desired or reported"),
  desired: JsonObjectSchema,
  reported: JsonObjectSchema,
  delta: JsonObjectSchema.describe("desired leaves that differ from reported"),
  metadata: z.object({ desired: MetaTree, reported: MetaTree }),
  telemetry: z.object({ last: JsonObjectSchema, lastAt: Time.nullable() }),
  connection: Connection,
});

/** `GET /device/v1/twin`: what a device sees of its twin. */
export const DeviceTwin = z.object({
  version: z.number().int().min(1),
  desired: JsonObjectSchema,
  reported: JsonObjectSchema,
  metadata: z.object({ desired: MetaTree, reported: MetaTree }),
});

/** `PATCH /device/v1/twin/reported`. */
export const ReportedAccepted = z.object({
  version: z.number().int().min(1).describe("the twin's version after the patch"),
});

// ---------------------------------------------------------------------------------------------
// Telemetry

/** One telemetry item; the kind's schema validates the rest of its fields. */
export const TelemetryItem = z.looseObject({
  ts: TimeInput.optional().describe(
    "when it was measured: epoch ms or ISO 8601 (more than 5 min ahead or 30 days behind: " +
      "arrival time)",
  ),
  id: z.string().min(1).max(128).optional().describe(
    "message id: applied once only within 24 hours",
  ),
}).describe("One reading; fields other than `ts` and `id` are validated by the device's kind.");

/** `POST /device/v1/telemetry`: one item or a batch. */
export const TelemetryBody = z.union([TelemetryItem, z.array(TelemetryItem).min(1).max(500)]);

/** `202` of `POST /device/v1/telemetry`. */
export const TelemetryAccepted = z.object({
  accepted: z.number().int().min(0).describe("items applied"),
  duplicates: z.number().int().min(0).describe("items whose `id` was already applied"),
});

/** A raw history point. */
export const HistoryPoint = z.object({ ts: Time, value: z.number() });

/** A rollup bucket, `[start, end)`. */
export const HistoryBucket = z.object({
  start: Time,
  end: Time.describe("exclusive: start + the bucket length"),
  min: z.number(),
  max: z.number(),
  avg: z.number(),
  count: z.number().int().min(1),
  last: z.number(),
});

/** `GET /api/v1/devices/{id}/telemetry`. */
export const HistoryPage = z.object({
  metric: z.string(),
  bucket: z.enum(["raw", ...LEVELS] as ["raw", ...string[]]).describe(
    "`raw`: items are points; else items are buckets of this length",
  ),
  items: z.array(z.union([HistoryPoint, HistoryBucket])).optional().describe(
    "with format=items (the default)",
  ),
  columns: z.record(z.string(), z.array(z.number())).optional().describe(
    "with format=columns: ts and value, or start, min, max, avg, count and last",
  ),
  cursor: Cursor,
});

// ---------------------------------------------------------------------------------------------
// Commands

/** A command's status; the last four are terminal. */
export const CommandStatus = z.enum([
  "queued",
  "delivered",
  "succeeded",
  "failed",
  "expired",
  "timed_out",
]);

/** One step in a command's life. */
export const StatusChange = z.object({ status: CommandStatus, at: Time });

/** A command as stored and returned by the operator API. */
export const Command = z.object({
  id: z.string(),
  seq: z.number().int().describe("position in the device's queue"),
  deviceId: z.string(),
  name: z.string(),
  payload: JsonValue,
  status: CommandStatus,
  result: JsonValue.optional().describe("what the device answered"),
  source: z.enum(["operator", "twin"]).describe("`twin`: queued by the kind's handler or a rule"),
  createdAt: Time,
  expiresAt: Time.describe("never delivered after this (`expired`)"),
  timeout: z.number().int().describe("seconds the device has to answer once delivered"),
  deliveredAt: Time.optional(),
  timeoutAt: Time.optional().describe("`timed_out` if no result by then"),
  completedAt: Time.optional(),
  history: z.array(StatusChange),
});

/** `GET /api/v1/devices/{id}/commands`. */
export const CommandList = z.object({ items: z.array(Command), cursor: Cursor });

/** A command as a device receives it. */
export const DeviceCommand = z.object({
  id: z.string(),
  name: z.string(),
  payload: JsonValue,
  expiresAt: Time,
  timeoutAt: Time.optional(),
});

/** `GET /device/v1/commands`. */
export const DeviceCommandList = z.object({ items: z.array(DeviceCommand) });

/** `POST /device/v1/commands/{commandId}/result`. */
export const CommandResultAccepted = z.object({ id: z.string(), status: CommandStatus });

// ---------------------------------------------------------------------------------------------
// Events and alarms

/** Something that happened to a twin. */
export const TwinEvent = z.object({
  seq: z.number().int(),
  type: z.string().describe("such as `desired.changed`, `presence.online` or a kind's own type"),
  at: Time,
  data: JsonValue.optional(),
});

/** `GET /api/v1/devices/{id}/events`. */
export const EventList = z.object({ items: z.array(TwinEvent), cursor: Cursor });

/** Alarm severities, most severe first. */
export const Severity = z.enum(SEVERITIES);

/** An alarm. */
export const Alarm = z.object({
  id: z.string(),
  deviceId: z.string(),
  type: z.string().describe(
    "what is wrong, such as `overheat`; one open alarm per device and type",
  ),
  severity: Severity,
  state: z.enum(["active", "acknowledged", "cleared"]),
  message: z.string(),
  details: JsonValue.optional(),
  count: z.number().int().min(1).describe("times raised while open"),
  raisedAt: Time,
  lastAt: Time,
  acknowledgedAt: Time.optional(),
  clearedAt: Time.optional(),
  clearedBy: z.string().optional().describe("`operator`, `rule <name>` or a handler"),
});

/** `GET /api/v1/alarms`. */
export const AlarmList = z.object({ items: z.array(Alarm), cursor: Cursor });

// ---------------------------------------------------------------------------------------------
// Web push

/** `GET /api/v1/push/vapid-public-key`. */
export const VapidPublicKey = z.object({
  publicKey: z.string().describe("base64url; the browser's `applicationServerKey`"),
});

/** `201` of `POST /api/v1/push/subscriptions`. */
export const PushSubscriptionCreated = z.object({
  id: z.string(),
  severities: z.array(Severity).nullable().describe("null: the server's configured severities"),
});

/** A stored push subscription (its keys are not shown). */
export const PushSubscriptionInfo = z.object({
  id: z.string(),
  endpoint: z.string(),
  severities: z.array(Severity).nullable(),
  createdAt: Time,
});

/** `GET /api/v1/push/subscriptions`. */
export const PushSubscriptionList = z.object({ items: z.array(PushSubscriptionInfo) });

// ---------------------------------------------------------------------------------------------
// Query parameters (documented from the same kind of schemas the handlers check by hand)

/** Query parameters' schemas. */
export const QuerySchemas = {
  limit: (max: number, fallback: number) => z.number().int().min(1).max(max).default(fallback),
  wait: (max: number) => z.number().int().min(0).max(max).default(0),
  cursor: z.string(),
  time: TimeInput,
  bucket: z.enum(LEVELS as [string, ...string[]]),
  connectionStatus: ConnectionStatus,
  commandStatus: CommandStatus,
  severity: Severity,
  alarmState: z.enum(["active", "acknowledged", "cleared"]),
} as const;

/** Every named component, by name: what `openapi.ts` registers under `components.schemas`. */
export const RESPONSE_SCHEMAS = {
  JsonValue,
  JsonObject: JsonObjectSchema,
  MergePatch,
  Tags: TagsSchema,
  LeafMeta,
  MetaTree,
  ConnectionStatus,
  Connection,
  ErrorCode,
  FieldIssue,
  Error: ErrorBody,
  ValidationDetails,
  Health,
  Device,
  DeviceWithKey,
  DeviceList,
  Twin,
  DeviceTwin,
  ReportedAccepted,
  TelemetryItem,
  TelemetryBody,
  TelemetryAccepted,
  HistoryPoint,
  HistoryBucket,
  HistoryPage,
  CommandStatus,
  StatusChange,
  Command,
  CommandList,
  DeviceCommand,
  DeviceCommandList,
  CommandResultAccepted,
  TwinEvent,
  EventList,
  Severity,
  Alarm,
  AlarmList,
  VapidPublicKey,
  PushSubscriptionCreated,
  PushSubscriptionInfo,
  PushSubscriptionList,
} as const satisfies Record<string, z.ZodType>;
