/**
 * Presence and desired-state catch-up, as pure functions over a twin record. Sessions (MQTT,
 * WebSocket) hold leases the transport renews, so a session whose process died expires by itself;
 * HTTP-only devices count as online until an inactivity timeout after their last request.
 * @module
 */
import { isObject, type Json, type JsonObject, type MetaTree } from "./json.ts";
import type { TwinRecord } from "./state.ts";

/** How a device reaches its twin. */
export type Transport = "http" | "ws" | "mqtt" | "bridge";

/** One open session, as the twin records it. */
export interface SessionInfo {
  /** The transport carrying it. */
  transport: Transport;
  /** The device that holds the session (a gateway, for its children). */
  via: string;
  /** When it opened (ms). */
  openedAt: number;
  /** It counts as gone after this (ms) unless renewed. */
  leaseUntil: number;
}

/** What the twin keeps about the device's sessions. */
export interface PresenceState {
  /** Open sessions by id. */
  sessions: Record<string, SessionInfo>;
  /** An HTTP-only device counts as online until this time (ms). */
  httpUntil: number | null;
}

/** Desired deletions remembered for catch-up: which leaf, and at which version. */
export interface Tombstone {
  /** Path of the deleted property. */
  path: string[];
  /** The version that deleted it. */
  version: number;
}

/** Tombstones kept per twin; older deletions are summarised by a full resend. */
export const MAX_TOMBSTONES = 200;

/** A desired catch-up message: one coalesced merge patch and the version it brings the device to. */
export interface DesiredUpdate {
  /** Merge patch from what the device last acknowledged to now. */
  patch: JsonObject;
  /** The twin version after applying it. */
  version: number;
  /** Set when the patch is the whole desired document: the device should replace, not merge. */
  full?: true;
}

/** Whether a record's presence makes it online at `now`. */
export function isOnline(presence: PresenceState, now: number): boolean {
  if (Object.keys(presence.sessions).length > 0) return true;
  return presence.httpUntil !== null && presence.httpUntil > now;
}

/** Sessions whose lease ended by `now`, removed; with the ids that went. */
export function expireSessions(
  presence: PresenceState,
  now: number,
): { presence: PresenceState; expired: string[] } {
  const expired = Object.entries(presence.sessions)
    .filter(([, session]) => session.leaseUntil <= now)
    .map(([id]) => id);
  if (expired.length === 0) return { presence, expired };
  const sessions = { ...presence.sessions };
  for (const id of expired) delete sessions[id];
  return { presence: { ...presence, sessions }, expired };
}

/** When presence next needs a turn by itself (a lease or the HTTP timeout ending), in ms. */
export function presenceDue(presence: PresenceState): number | null {
  let due: number | null = presence.httpUntil;
  for (const session of Object.values(presence.sessions)) {
    if (due === null || session.leaseUntil < due) due = session.leaseUntil;
  }
  return due;
}

/**
 * What changed in desired since the device acknowledged version `acked`, as one merge patch.
 * `null` when it is up to date.
 */
export function desiredSince(record: TwinRecord, acked: number): DesiredUpdate | null {
  if (acked >= record.version) return null;
  if (acked < record.tombstoneHorizon) {
    // Deletions this old were forgotten: send everything, for the device to replace.
    return { patch: record.desired, version: record.version, full: true };
  }
  const patch = changedLeaves(record.desired, record.metadata.desired, acked);
  for (const tombstone of record.desiredTombstones) {
    if (tombstone.version > acked && !hasPath(record.desired, tombstone.path)) {
      setPath(patch, tombstone.path, null);
    }
  }
  if (Object.keys(patch).length === 0) return null;
  return { patch, version: record.version };
}

/**
 * Tombstones for the deletions in a merge patch, added to `existing` (newest kept), and the
 * version up to which dropped ones leave catch-up blind (0 if none were dropped).
 */
export function addTombstones(
  existing: Tombstone[],
  patch: JsonObject,
  version: number,
  before: JsonObject = {},
): { tombstones: Tombstone[]; horizon: number } {
  const added: Tombstone[] = [];
  // Only what was there is deleted: a null for a missing property leaves no tombstone (else a
  // patch of many such nulls would push out the real ones).
  const walk = (node: JsonObject, old: JsonObject | undefined, path: string[]) => {
    for (const [key, value] of Object.entries(node)) {
      const was = old && Object.hasOwn(old, key) ? old[key] : undefined;
      if (value === null) {
        if (was !== undefined) added.push({ path: [...path, key], version });
      } else if (isObject(value)) walk(value, isObject(was) ? was : undefined, [...path, key]);
    }
  };
  walk(patch, before, []);
  if (added.length === 0) return { tombstones: existing, horizon: 0 };
  const all = [...existing, ...added];
  const dropped = Math.max(0, all.length - MAX_TOMBSTONES);
  // Tombstones are in version order: the newest one dropped sets the horizon.
  return { tombstones: all.slice(dropped), horizon: dropped > 0 ? all[dropped - 1].version : 0 };
}

function changedLeaves(desired: JsonObject, meta: MetaTree, acked: number): JsonObject {
  const patch: JsonObject = {};
  for (const [key, value] of Object.entries(desired)) {
    const m = meta[key];
    if (m === undefined) continue;
    if (isObject(value) && !("version" in m && typeof m.version === "number")) {
      const inner = changedLeaves(value, m as MetaTree, acked);
      if (Object.keys(inner).length > 0) patch[key] = inner;
    } else if ((m as { version: number }).version > acked) {
      patch[key] = value;
    }
  }
  return patch;
}

function hasPath(doc: JsonObject, path: string[]): boolean {
  let node: Json = doc;
  for (const key of path) {
    if (!isObject(node) || !Object.hasOwn(node, key)) return false;
    node = node[key];
  }
  return true;
}

function setPath(doc: JsonObject, path: string[], value: Json): void {
  let node = doc;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    // A value set over this path later already replaces whatever was deleted beneath it.
    if (next !== undefined && !isObject(next)) return;
    if (next === undefined) node[key] = {};
    node = node[key] as JsonObject;
  }
  node[path[path.length - 1]] = value;
}
