/**
 * The twin's stored record and the public document built from it.
 * @module
 */
import type { CommandRecord } from "../commands/model.ts";
import { computeDelta, type JsonObject, type MetaTree } from "./json.ts";
import type { PresenceState, Tombstone } from "./presence.ts";
import type { AlarmRecord } from "../rules/alarms.ts";
import type { RuleState } from "../rules/rules.ts";
import { emptyHistory, type HistoryState, upgradeHistory } from "../telemetry/history.ts";

/** Presence of the device behind a twin. */
export type ConnectionStatus = "online" | "offline" | "never";

/** Presence as the twin records it. */
export interface Connection {
  /** Whether a session is open now; `never` until the device first connects. */
  status: ConnectionStatus;
  /** When the status last changed. */
  since: string | null;
  /** The last time the device was heard from. */
  lastSeenAt: string | null;
  /** Why the status last changed: `connect`, `disconnect`, `keepalive`, `inactivity`, … */
  reason?: string;
}

/** Everything the runtime keeps for one twin, stored under `["twins", id]`. */
export interface TwinRecord {
  /** The device id. */
  id: string;
  /** The device's kind. */
  kind: string;
  /** +1 on every change to desired or reported state. */
  version: number;
  /** What operators (and rules) want. */
  desired: JsonObject;
  /** What the device says it has. */
  reported: JsonObject;
  /** Per-leaf `updatedAt` and `version`. */
  metadata: { desired: MetaTree; reported: MetaTree };
  /** Last telemetry values and when they were measured. */
  telemetry: { last: JsonObject; lastAt: string | null };
  /** Presence. */
  connection: Connection;
  /** The kind's private memory. */
  memory: JsonObject;
  /** Queue position counter and the commands not yet finished, oldest first. */
  commands: { nextSeq: number; pending: CommandRecord[] };
  /** Counter for event keys. */
  eventSeq: number;
  /** Telemetry not yet flushed to history, and open rollup buckets. */
  history: HistoryState;
  /** What each rule remembers, by rule name. */
  rules: Record<string, RuleState>;
  /** Open (active or acknowledged) alarms, by type. */
  alarms: Record<string, AlarmRecord>;
  /** Sessions and HTTP activity behind `connection`. */
  presence: PresenceState;
  /** The desired version the device last acknowledged. */
  desiredAcked: number;
  /** Recent desired deletions, for catch-up patches. */
  desiredTombstones: Tombstone[];
  /** Devices that acknowledged a version older than this get the whole desired document. */
  tombstoneHorizon: number;
  /** Due time (ms) of this twin's entry in `["timers"]`, if it has one. */
  timerAt: number | null;
  /** When the twin was created. */
  createdAt: string;
}

/** The twin document of the contract. */
export interface PublicTwin {
  /** The device id. */
  id: string;
  /** The device's kind. */
  kind: string;
  /** +1 on every change to desired or reported state. */
  version: number;
  /** What operators want. */
  desired: JsonObject;
  /** What the device reports. */
  reported: JsonObject;
  /** Desired leaves that differ from reported. */
  delta: JsonObject;
  /** Per-leaf timestamps and versions. */
  metadata: { desired: MetaTree; reported: MetaTree };
  /** Last telemetry. */
  telemetry: { last: JsonObject; lastAt: string | null };
  /** Presence. */
  connection: Connection;
}

/** A fresh twin for a newly registered device. */
export function newTwinRecord(id: string, kind: string, now: number): TwinRecord {
  return {
    id,
    kind,
    version: 1,
    desired: {},
    reported: {},
    metadata: { desired: {}, reported: {} },
    telemetry: { last: {}, lastAt: null },
    connection: { status: "never", since: null, lastSeenAt: null },
    memory: {},
    commands: { nextSeq: 1, pending: [] },
    eventSeq: 0,
    history: emptyHistory(),
    rules: {},
    alarms: {},
    presence: { sessions: {}, httpUntil: null },
    desiredAcked: 0,
    desiredTombstones: [],
    tombstoneHorizon: 0,
    timerAt: null,
    createdAt: new Date(now).toISOString(),
  };
}

/** The contract's twin document for a record. */
export function publicTwin(record: TwinRecord): PublicTwin {
  return {
    id: record.id,
    kind: record.kind,
    version: record.version,
    desired: record.desired,
    reported: record.reported,
    delta: computeDelta(record.desired, record.reported),
    metadata: record.metadata,
    telemetry: record.telemetry,
    connection: record.connection,
  };
}

/** Fills fields left out of a stored record (at their defaults, or added since it was written). */
export function upgradeRecord(record: TwinRecord): TwinRecord {
  record.desired ??= {};
  record.reported ??= {};
  record.metadata ??= { desired: {}, reported: {} };
  record.commands ??= { nextSeq: 1, pending: [] };
  record.timerAt ??= null;
  record.presence ??= { sessions: {}, httpUntil: null };
  record.history = upgradeHistory(record.history);
  record.memory ??= {};
  record.eventSeq ??= 0;
  record.rules ??= {};
  record.alarms ??= {};
  record.desiredAcked ??= 0;
  record.desiredTombstones ??= [];
  record.tombstoneHorizon ??= 0;
  return record;
}
