/**
 * Twin kinds: what a device of some kind may say and be told, and what its twin does about it.
 * A kind is user code in `twins/`, written with {@link defineTwin}.
 * @module
 */
import { z } from "zod";
import type { Json, JsonObject } from "./json.ts";
import type { PublicTwin } from "./state.ts";
import type { Severity } from "../rules/alarms.ts";
import type { Rule } from "../rules/rules.ts";
import { DEFAULT_RETENTION, parseDuration, type Retention } from "../telemetry/history.ts";

/** Options for a command a handler sends. */
export interface CommandOptions {
  /** Seconds the command may wait to be delivered before it expires. */
  ttl?: number;
  /** Seconds the device has, once the command is delivered, to return a result. */
  timeout?: number;
}

/** What a handler sees and may do inside the twin's turn. Handlers do no I/O. */
export interface TwinContext {
  /** The twin as it stands, before this handler's own changes. */
  readonly twin: Readonly<PublicTwin>;
  /** Desired state (cheaper than `twin.desired`, which builds the whole document). */
  readonly desired: Readonly<JsonObject>;
  /** Reported state. */
  readonly reported: Readonly<JsonObject>;
  /** The kind's private memory, persisted with the twin; replace it with {@link setMemory}. */
  readonly memory: Readonly<JsonObject>;
  /** The turn's time, in milliseconds since the epoch. */
  readonly now: number;
  /** Queues a command to the device; it leaves only once the turn has committed. */
  sendCommand(name: string, payload?: Json, options?: CommandOptions): void;
  /** Merge-patches desired state (validated against the kind's desired schema). */
  patchDesired(patch: JsonObject): void;
  /** Records an event in the twin's history. */
  recordEvent(type: string, data?: Json): void;
  /** Raises (or repeats) the device's alarm of `type`. */
  raiseAlarm(type: string, severity: Severity, message?: string, details?: Json): void;
  /** Clears the device's open alarm of `type`, if any. */
  clearAlarm(type: string): void;
  /** Replaces the kind's private memory. */
  setMemory(memory: JsonObject): void;
}

/** Handlers that run inside the twin's turn, after the change they react to is applied. */
export interface TwinHandlers<T, D, R> {
  /** After a telemetry item is accepted. */
  onTelemetry?(ctx: TwinContext, item: T & { ts: number }): void;
  /** After the device patched its reported state. */
  onReported?(ctx: TwinContext, patch: JsonObject, reported: R): void;
  /** After an operator (or a handler) patched desired state. */
  onDesired?(ctx: TwinContext, patch: JsonObject, desired: D): void;
}

/** The definition a kind file writes. */
export interface TwinDefinition<
  T extends z.ZodType = z.ZodType,
  D extends z.ZodType = z.ZodType,
  R extends z.ZodType = z.ZodType,
> {
  /** The kind's name, as devices are registered with it. */
  kind: string;
  /** A sentence for people: what this kind of device is. */
  description?: string;
  /** Schema of one telemetry item (without the envelope fields `ts` and `id`). */
  telemetry: T;
  /** Schema of the whole desired document. */
  desired: D;
  /** Schema of the whole reported document. */
  reported: R;
  /** One payload schema per command name. */
  commands?: Record<string, z.ZodType>;
  /** Code that runs in the twin's turn. */
  handlers?: TwinHandlers<z.output<T>, z.output<D>, z.output<R>>;
  /** Declarative rules (`threshold`, `rateOfChange`, `noData`, `anomaly`), run in the turn. */
  rules?: Rule[];
  /** How long history is kept, per level, as durations (`"7d"`); defaults otherwise. */
  retention?: Partial<Record<keyof Retention, string>>;
  /**
   * Which telemetry fields keep history and rollups: `true` (the default) every numeric field,
   * `false` none, or a list of field names. Each field kept adds to the twin's stored head, which
   * is rewritten on every message, so a kind with many numeric fields lists the ones it charts.
   */
  history?: boolean | readonly string[];
}

/** A loaded kind, as the runtime uses it. */
export interface TwinKind {
  /** Marks objects made by {@link defineTwin}. */
  readonly __doppelKind: true;
  /** The kind's name. */
  readonly kind: string;
  /** What this kind of device is. */
  readonly description: string;
  /** Telemetry item schema. */
  readonly telemetry: z.ZodType;
  /** Desired document schema. */
  readonly desired: z.ZodType;
  /** Reported document schema. */
  readonly reported: z.ZodType;
  /** Command payload schemas, by name. */
  readonly commands: Readonly<Record<string, z.ZodType>>;
  /** Turn handlers. */
  readonly handlers: TwinHandlers<unknown, unknown, unknown>;
  /** Rules. */
  readonly rules: readonly Rule[];
  /** History retention, in ms. */
  readonly retention: Retention;
  /** Whether history and rollups are kept (for some fields at least). */
  readonly history: boolean;
  /** The fields history is kept for; `null` when it is every numeric field. */
  readonly historyFields: ReadonlySet<string> | null;
}

const KIND_NAME = /^[a-z][a-z0-9_-]{0,63}$/;

/** Declares a twin kind: its schemas and the handlers that run in its turns. */
export function defineTwin<T extends z.ZodType, D extends z.ZodType, R extends z.ZodType>(
  definition: TwinDefinition<T, D, R>,
): TwinKind {
  if (!KIND_NAME.test(definition.kind ?? "")) {
    throw new Error(
      `Kind name ${
        JSON.stringify(definition.kind)
      } is invalid: use lower-case letters, digits, '-' or '_', starting with a letter.`,
    );
  }
  for (const field of ["telemetry", "desired", "reported"] as const) {
    if (!(definition[field] instanceof z.ZodType)) {
      throw new Error(`Kind "${definition.kind}" needs a zod schema for ${field}.`);
    }
  }
  // Telemetry items are JSON objects: a schema that takes a bare number (or string) describes
  // something no device can send, and every message would be refused.
  if (definition.telemetry.safeParse(0).success || definition.telemetry.safeParse("x").success) {
    throw new Error(
      `Kind "${definition.kind}" telemetry schema must describe an object (its fields); it accepts a bare value.`,
    );
  }
  const names = new Set<string>();
  const shape = closedShape(definition.telemetry);
  const commands = Object.keys(definition.commands ?? {});
  for (const rule of definition.rules ?? []) {
    if (names.has(rule.name)) {
      throw new Error(`Kind "${definition.kind}" has two rules named "${rule.name}".`);
    }
    names.add(rule.name);
    const metric = "metric" in rule ? rule.metric : undefined;
    if (shape && metric !== undefined && !(metric in shape)) {
      throw new Error(
        `Kind "${definition.kind}" rule "${rule.name}" watches "${metric}", which its telemetry schema does not have.`,
      );
    }
    // A kind that declares its commands gets only those: a rule's action must name one.
    for (const action of [...(rule.onRaise ?? []), ...(rule.onClear ?? [])]) {
      if ("command" in action && commands.length > 0 && !commands.includes(action.command)) {
        throw new Error(
          `Kind "${definition.kind}" rule "${rule.name}" sends command "${action.command}", which the kind does not declare.`,
        );
      }
    }
  }
  const retention = { ...DEFAULT_RETENTION };
  for (const [level, text] of Object.entries(definition.retention ?? {})) {
    if (!(level in retention)) {
      throw new Error(
        `Kind "${definition.kind}" retention level "${level}" is not raw, 1m, 1h or 1d.`,
      );
    }
    retention[level as keyof Retention] = parseDuration(text as string);
  }
  for (const [name, schema] of Object.entries(definition.commands ?? {})) {
    if (!(schema instanceof z.ZodType)) {
      throw new Error(`Kind "${definition.kind}" command "${name}" needs a zod payload schema.`);
    }
  }
  const historyFields = Array.isArray(definition.history)
    ? checkHistoryFields(definition.kind, definition.telemetry, definition.history)
    : null;
  return Object.freeze({
    __doppelKind: true as const,
    kind: definition.kind,
    description: definition.description ?? "",
    telemetry: definition.telemetry,
    desired: definition.desired,
    reported: definition.reported,
    commands: Object.freeze({ ...definition.commands }),
    handlers: (definition.handlers ?? {}) as TwinHandlers<unknown, unknown, unknown>,
    rules: Object.freeze([...(definition.rules ?? [])]),
    retention,
    history: historyFields ? historyFields.size > 0 : definition.history !== false,
    historyFields,
  });
}

/** The history field list as a set, or an error naming the field that is not telemetry. */
function checkHistoryFields(
  kind: string,
  telemetry: z.ZodType,
  fields: readonly string[],
): ReadonlySet<string> {
  const shape = closedShape(telemetry);
  for (const field of fields) {
    if (typeof field !== "string" || field.length === 0) {
      throw new Error(`Kind "${kind}" history lists ${JSON.stringify(field)}, not a field name.`);
    }
    if (shape && !(field in shape)) {
      throw new Error(
        `Kind "${kind}" keeps history for "${field}", which its telemetry schema does not have.`,
      );
    }
  }
  return new Set(fields);
}

/**
 * The fields of a telemetry schema that knows every field it lets through (a strict or stripping
 * object); `undefined` for a loose one, a record or a transformed schema, which may let others.
 */
function closedShape(telemetry: z.ZodType): Record<string, unknown> | undefined {
  const def = (telemetry as { _zod?: { def?: { type?: string; catchall?: z.ZodType } } })._zod
    ?.def;
  const closed = def?.type === "object" &&
    (def.catchall === undefined || def.catchall instanceof z.ZodNever);
  return closed ? (telemetry as { shape?: Record<string, unknown> }).shape : undefined;
}

/** Whether a module export is a kind made by {@link defineTwin}. */
export function isTwinKind(value: unknown): value is TwinKind {
  return typeof value === "object" && value !== null &&
    (value as { __doppelKind?: unknown }).__doppelKind === true;
}
