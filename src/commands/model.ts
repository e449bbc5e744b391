/**
 * Cloud-to-device commands as data: their record, their status machine and the pure functions a
 * twin's turn uses to move them along. Statuses are honest: `queued` is not `delivered`, and
 * `delivered` is not done.
 * @module
 */
import type { Json } from "../twin/json.ts";

/** A command's status. The last four are terminal. */
export type CommandStatus =
  | "queued"
  | "delivered"
  | "succeeded"
  | "failed"
  | "expired"
  | "timed_out";

/** Statuses after which nothing more happens to a command. */
export const TERMINAL_STATUSES: ReadonlySet<CommandStatus> = new Set([
  "succeeded",
  "failed",
  "expired",
  "timed_out",
]);

/** One step in a command's life. */
export interface StatusChange {
  /** The status entered. */
  status: CommandStatus;
  /** When, as ISO 8601. */
  at: string;
}

/** A command as stored and returned by the API. */
export interface CommandRecord {
  /** Opaque id, unique per device. */
  id: string;
  /** Position in the device's queue; commands are delivered in this order. */
  seq: number;
  /** The device it is for. */
  deviceId: string;
  /** Command name, one the device's kind declares. */
  name: string;
  /** Payload, valid against the kind's schema for `name`. */
  payload: Json;
  /** Current status. */
  status: CommandStatus;
  /** Result the device returned, if any. */
  result?: Json;
  /** Who asked: an `operator`, or the `twin` itself (a rule or handler). */
  source: "operator" | "twin";
  /** When it was created. */
  createdAt: string;
  /** After this it is never delivered. */
  expiresAt: string;
  /** Seconds the device has, once delivered, to answer. */
  timeout: number;
  /** When it was delivered. */
  deliveredAt?: string;
  /** When the device must have answered by (set on delivery). */
  timeoutAt?: string;
  /** When it reached a terminal status. */
  completedAt?: string;
  /** Every status it went through. */
  history: StatusChange[];
}

/** Limits on commands. */
export const COMMAND_LIMITS = {
  /** Default seconds a command waits to be delivered. */
  defaultTtl: 86_400,
  /** Longest allowed TTL in seconds (7 days). */
  maxTtl: 604_800,
  /** Default seconds a device has to answer once a command is delivered. */
  defaultTimeout: 300,
  /** Longest allowed timeout in seconds (1 day). */
  maxTimeout: 86_400,
  /** Commands waiting (queued or delivered) per device. */
  maxPending: 100,
  /** Largest payload or result, in bytes of JSON. */
  maxPayloadBytes: 16_384,
  /**
   * Payload bytes of all commands waiting per device (192 KiB): waiting commands live in the
   * twin's record, which every commit rewrites whole, within KV's 800 KiB a commit.
   */
  maxPendingBytes: 196_608,
  /** Payload bytes handed to a device in one poll (96 KiB); the rest come with the next. */
  maxDeliverBytes: 98_304,
  /** How long finished commands stay queryable, in milliseconds (30 days). */
  keepFinishedMs: 30 * 86_400_000,
} as const;

/** Builds a command id that carries its queue position, so no index is needed to find it. */
export function commandId(seq: number, random: string): string {
  return `${seq.toString(36)}-${random}`;
}

/** The queue position in a command id, or `undefined` when the id is malformed. */
export function parseCommandSeq(id: string): number | undefined {
  const match = /^([0-9a-z]{1,11})-[0-9a-f]{8}$/.exec(id);
  if (!match) return undefined;
  const seq = parseInt(match[1], 36);
  return Number.isSafeInteger(seq) ? seq : undefined;
}

/** Returns the command moved to `status` at `now`, with the change recorded. */
export function transition(
  command: CommandRecord,
  status: CommandStatus,
  now: number,
  extra: Partial<CommandRecord> = {},
): CommandRecord {
  const at = new Date(now).toISOString();
  return {
    ...command,
    ...extra,
    status,
    ...(TERMINAL_STATUSES.has(status) ? { completedAt: at } : {}),
    history: [...command.history, { status, at }],
  };
}

/** The time a pending command next needs attention (expiry or timeout), in ms. */
export function commandDueAt(command: CommandRecord): number | undefined {
  if (command.status === "queued") return Date.parse(command.expiresAt);
  if (command.status === "delivered" && command.timeoutAt) return Date.parse(command.timeoutAt);
  return undefined;
}

/** Expires or times out the pending commands that are due at `now`. */
export function expireDue(
  pending: CommandRecord[],
  now: number,
): { pending: CommandRecord[]; finished: CommandRecord[] } {
  const keep: CommandRecord[] = [];
  const finished: CommandRecord[] = [];
  for (const command of pending) {
    const due = commandDueAt(command);
    if (due !== undefined && due <= now) {
      finished.push(
        transition(command, command.status === "queued" ? "expired" : "timed_out", now),
      );
    } else {
      keep.push(command);
    }
  }
  return { pending: keep, finished };
}
