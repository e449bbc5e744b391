/**
 * Telemetry history as part of the twin's turn: every numeric point goes into a small buffer kept
 * in the twin record (flushed as one KV value of many points) and into the open rollup bucket of
 * each level (written into its chunk when the bucket closes). So history rides the twin's own
 * commit and costs a few writes per hundred points, never one write per point.
 * @module
 */
import {
  addPoint,
  type Bucket,
  bucketStart,
  CHUNK_MS,
  chunkStart,
  type Level,
  LEVELS,
  mergeIntoChunk,
  newBucket,
  type RollupChunk,
} from "./rollup.ts";

/** Points of one metric not yet flushed, and its open buckets. */
export interface MetricHistory {
  /** `[ts, value]` pairs in arrival order. */
  buffer: Array<[number, number]>;
  /** The latest bucket of each level, still open. */
  open: Partial<Record<Level, Bucket>>;
}

/** The history part of a twin record. */
export interface HistoryState {
  /** Per metric. */
  metrics: Record<string, MetricHistory>;
  /** Counter that keeps raw chunk keys unique. */
  chunkSeq: number;
}

/** How long data is kept, in ms: raw points and each rollup level. */
export interface Retention {
  /** Raw points. */
  raw: number;
  /** Minute buckets. */
  "1m": number;
  /** Hour buckets. */
  "1h": number;
  /** Day buckets. */
  "1d": number;
}

const DAY = 86_400_000;

/** Default retention: raw 7 days, minutes 35 days, hours 400 days, days 5 years. */
export const DEFAULT_RETENTION: Retention = {
  raw: 7 * DAY,
  "1m": 35 * DAY,
  "1h": 400 * DAY,
  "1d": 1826 * DAY,
};

/** A raw chunk is flushed at this many points… */
export const FLUSH_POINTS = 20;
/** …or before its points would span this long (ms). */
export const FLUSH_SPAN_MS = 15 * 60_000;

/** An empty history. */
export function emptyHistory(): HistoryState {
  return { metrics: {}, chunkSeq: 0 };
}

/** A raw chunk to write: many points of one metric. */
export interface RawChunk {
  /** The metric. */
  metric: string;
  /** Earliest point time (part of the key). */
  firstTs: number;
  /** Latest point time (sets the expiry). */
  lastTs: number;
  /** Keeps the key unique. */
  seq: number;
  /** `[ts, value]` pairs in time order. */
  points: Array<[number, number]>;
}

/** Thrown inside a turn that needs a stored rollup chunk it was not given. */
export class NeedsRead extends Error {
  /** The KV key to read. */
  readonly key: Deno.KvKey;
  /** Names the missing key. */
  constructor(key: Deno.KvKey) {
    super(`The turn needs ${JSON.stringify(key)} read first.`);
    this.key = key;
  }
}

/** The key of a stored rollup chunk. */
export function rollupKey(
  deviceId: string,
  metric: string,
  level: Level,
  start: number,
): Deno.KvKey {
  return ["rollups", deviceId, metric, level, start];
}

/** The key of a raw chunk. */
export function rawKey(deviceId: string, chunk: RawChunk): Deno.KvKey {
  return ["telemetry", deviceId, chunk.metric, chunk.firstTs, chunk.seq];
}

/** The string a key is known by in maps. */
export function keyId(key: Deno.KvKey): string {
  return JSON.stringify(key);
}

/** Collects a turn's history changes: raw chunks to write and rollup chunks to rewrite. */
export class HistoryWriter {
  /** Raw chunks flushed in this turn. */
  readonly raw: RawChunk[] = [];
  /** Rollup chunks changed in this turn, by key id. */
  readonly rollups = new Map<
    string,
    { key: Deno.KvKey; level: Level; start: number; chunk: RollupChunk }
  >();
  #deviceId: string;
  #stored: ReadonlyMap<string, RollupChunk | null>;
  // The history state this turn made (a turn threads one through), and the metrics it copied.
  #owned: HistoryState | undefined;
  #ownedMetrics: string[] = [];

  /** For one twin, with the rollup chunks read before the turn. */
  constructor(deviceId: string, stored: ReadonlyMap<string, RollupChunk | null>) {
    this.#deviceId = deviceId;
    this.#stored = stored;
  }

  /**
   * Forgets which history state it made, so the next point copies again: the turn calls this at
   * each message's checkpoint, which keeps the current state to go back to.
   */
  checkpoint(): void {
    this.#owned = undefined;
  }

  /** `history` without the metrics `keep` leaves out (the kind stopped keeping them). */
  keepOnly(history: HistoryState, keep: ReadonlySet<string>): HistoryState {
    let out = history;
    for (const metric in history.metrics) {
      if (keep.has(metric)) continue;
      if (out === history) out = { metrics: { ...history.metrics }, chunkSeq: history.chunkSeq };
      delete out.metrics[metric];
    }
    if (out !== history) this.#owned = undefined;
    return out;
  }

  /** Adds one point of `metric` to `history`; returns the new history. */
  add(history: HistoryState, metric: string, ts: number, value: number): HistoryState {
    // The first point of a metric in this turn copies its state; later ones add in place (the
    // stored state is never changed, so a turn run again after a conflict starts clean).
    if (history !== this.#owned) {
      history = { metrics: { ...history.metrics }, chunkSeq: history.chunkSeq };
      this.#owned = history;
      this.#ownedMetrics = [];
    }
    let current = history.metrics[metric];
    if (!this.#ownedMetrics.includes(metric)) {
      current = current
        ? { buffer: [...current.buffer], open: { ...current.open } }
        : { buffer: [], open: {} };
      history.metrics[metric] = current;
      this.#ownedMetrics.push(metric);
    }
    const buffer = current.buffer;
    const flush = () => {
      const points = buffer.splice(0).sort((a, b) => a[0] - b[0]);
      const firstTs = points[0][0];
      const lastTs = points[points.length - 1][0];
      this.raw.push({ metric, firstTs, lastTs, seq: ++history.chunkSeq, points });
    };
    // A chunk spans less than FLUSH_SPAN_MS, so a range query knows how far back to look: a
    // point that would stretch it further starts the next chunk.
    if (buffer.length > 0) {
      let first = ts, last = ts;
      for (const [t] of buffer) {
        if (t < first) first = t;
        if (t > last) last = t;
      }
      if (last - first >= FLUSH_SPAN_MS) flush();
    }
    buffer.push([ts, value]);
    if (buffer.length >= FLUSH_POINTS) flush();
    for (const level of LEVELS) {
      current.open[level] = this.#roll(metric, level, current.open[level], ts, value);
    }
    return history;
  }

  /** The open bucket after a point: added to it, or it closes and a new one opens. */
  #roll(metric: string, level: Level, open: Bucket | undefined, ts: number, value: number): Bucket {
    const start = bucketStart(level, ts);
    if (!open) return newBucket(level, ts, value);
    if (start === open.start) return addPoint(open, ts, value);
    if (start > open.start) {
      this.#merge(metric, level, open);
      return newBucket(level, ts, value);
    }
    // A late point for a bucket already closed: into its stored chunk.
    this.#merge(metric, level, newBucket(level, ts, value));
    return open;
  }

  #merge(metric: string, level: Level, bucket: Bucket): void {
    const start = chunkStart(level, bucket.start);
    const key = rollupKey(this.#deviceId, metric, level, start);
    const id = keyId(key);
    const pending = this.rollups.get(id);
    let base: RollupChunk | null;
    if (pending) base = pending.chunk;
    else if (this.#stored.has(id)) base = this.#stored.get(id) ?? null;
    else throw new NeedsRead(key);
    this.rollups.set(id, { key, level, start, chunk: mergeIntoChunk(base, bucket) });
  }
}

/** When a rollup chunk's data falls out of retention (ms). */
export function rollupExpiry(level: Level, start: number, retention: Retention): number {
  return start + CHUNK_MS[level] + retention[level];
}

/** Numeric values of a telemetry item: numbers as they are, booleans as 0 or 1. */
export function numericFields(values: Record<string, unknown>): Array<[string, number]> {
  const out: Array<[string, number]> = [];
  for (const [name, value] of Object.entries(values)) {
    if (typeof value === "number" && Number.isFinite(value)) out.push([name, value]);
    else if (typeof value === "boolean") out.push([name, value ? 1 : 0]);
  }
  return out;
}

/** Parses a duration such as `90s`, `15m`, `12h`, `7d` or `2w` to ms. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$/.exec(text.trim());
  if (!match) {
    throw new Error(
      `Duration ${JSON.stringify(text)} is invalid: use a number and ms, s, m, h, d, w or y.`,
    );
  }
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: DAY, w: 7 * DAY, y: 365 * DAY }[
    match[2] as "ms"
  ];
  return Number(match[1]) * unit;
}

/** {@link HistoryState} as stored: short names and number arrays (a twin record is rewritten on
 * every turn, and KV writes slow down sharply past about 1 KB a value). */
export interface PackedHistory {
  /** Per metric: `[buffer, open1m, open1h, open1d]`. */
  p: Record<string, [number[], ...(number[] | 0)[]]>;
  /** `chunkSeq`. */
  s: number;
}

/** Packs history for storage: buffers as `[t0, v0, dt1, v1, …]`, buckets as number arrays. */
export function packHistory(history: HistoryState): PackedHistory {
  // Runs on every commit of a twin with history: sized arrays and plain loops, no iterators.
  const p: PackedHistory["p"] = {};
  for (const metric in history.metrics) {
    const { buffer, open } = history.metrics[metric];
    const flat = new Array<number>(buffer.length * 2);
    let previous = 0;
    for (let i = 0; i < buffer.length; i++) {
      const [ts, value] = buffer[i];
      flat[2 * i] = ts - previous;
      flat[2 * i + 1] = value;
      previous = ts;
    }
    p[metric] = [flat, packBucket(open["1m"]), packBucket(open["1h"]), packBucket(open["1d"])];
  }
  return { p, s: history.chunkSeq };
}

function packBucket(b: Bucket | undefined): number[] | 0 {
  return b ? [b.start, b.min, b.max, b.sum, b.count, b.last, b.lastTs - b.start] : 0;
}

/** The history a stored record holds, packed or (as older records have it) not. */
export function unpackHistory(stored: HistoryState | PackedHistory | undefined): HistoryState {
  if (!stored) return emptyHistory();
  if (!("p" in stored)) return stored;
  const metrics: Record<string, MetricHistory> = {};
  for (const [metric, [flat, ...levels]] of Object.entries(stored.p)) {
    const buffer: Array<[number, number]> = [];
    let ts = 0;
    for (let i = 0; i < flat.length; i += 2) {
      ts += flat[i];
      buffer.push([ts, flat[i + 1]]);
    }
    const open: Partial<Record<Level, Bucket>> = {};
    LEVELS.forEach((level, i) => {
      const b = levels[i];
      if (b) {
        open[level] = {
          start: b[0],
          min: b[1],
          max: b[2],
          sum: b[3],
          count: b[4],
          last: b[5],
          lastTs: b[0] + b[6],
        };
      }
    });
    metrics[metric] = { buffer, open };
  }
  return { metrics, chunkSeq: stored.s };
}
