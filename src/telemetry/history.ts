/**
 * Telemetry history as part of the twin's turn: every numeric point goes into a small buffer kept
 * in the twin record (flushed as one KV value of many points) and into the open rollup bucket of
 * each level (written into its chunk when the bucket closes). So history rides the twin's own
 * commit and costs a few writes per hundred points, never one write per point.
 * @module
 */
import {
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

/**
 * A rollup bucket as the record keeps it: `[start, min, max, sum, count, last, lastTs - start]`.
 */
export type PackedBucket = [number, number, number, number, number, number, number];

/**
 * One metric's history in the record: `[buffer, open1m, open1h, open1d]`. The buffer holds the
 * points not yet flushed, in arrival order, as `[t0, v0, dt1, v1, …]` (each time relative to the
 * one before); each level's open bucket is a {@link PackedBucket}, or 0 when none is open.
 */
export type MetricHistory = [number[], PackedBucket | 0, PackedBucket | 0, PackedBucket | 0];

/**
 * The history part of a twin record. It is kept in memory in the form it is stored in (short
 * names, arrays of numbers): a record is rewritten on every turn, so the form costs nothing to
 * encode, few objects to keep, and few bytes in KV, where writes slow down sharply past about
 * 1 KB a value.
 */
export interface HistoryState {
  /** Per metric. */
  p: Record<string, MetricHistory>;
  /** Counter that keeps raw chunk keys unique. */
  s: number;
}

/** A metric's history decoded: its unflushed points and open buckets (for queries and tests). */
export interface MetricView {
  /** `[ts, value]` pairs in arrival order. */
  buffer: Array<[number, number]>;
  /** The latest bucket of each level, still open. */
  open: Partial<Record<Level, Bucket>>;
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
  return { p: {}, s: 0 };
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
    for (const metric in history.p) {
      if (keep.has(metric)) continue;
      if (out === history) out = { p: { ...history.p }, s: history.s };
      delete out.p[metric];
    }
    if (out !== history) this.#owned = undefined;
    return out;
  }

  /** Adds one point of `metric` to `history`; returns the new history. */
  add(history: HistoryState, metric: string, ts: number, value: number): HistoryState {
    // The first point of a metric in this turn copies its arrays; later ones change them in
    // place (the stored state is never changed, so a turn run again after a conflict starts
    // clean).
    if (history !== this.#owned) {
      history = { p: { ...history.p }, s: history.s };
      this.#owned = history;
      this.#ownedMetrics = [];
    }
    let current = history.p[metric];
    if (!this.#ownedMetrics.includes(metric)) {
      // The buffer is copied with each point below; the open buckets are copied here once.
      current = current
        ? [current[0], copyBucket(current[1]), copyBucket(current[2]), copyBucket(current[3])]
        : [EMPTY_BUFFER, 0, 0, 0];
      history.p[metric] = current;
      this.#ownedMetrics.push(metric);
    }
    const buffer = current[0];
    // A chunk spans less than FLUSH_SPAN_MS, so a range query knows how far back to look: a
    // point that would stretch it further starts the next chunk.
    let previous = 0; // The time of the buffer's latest point: the next one is relative to it.
    let first = ts, last = ts;
    for (let i = 0; i < buffer.length; i += 2) {
      previous += buffer[i];
      if (previous < first) first = previous;
      if (previous > last) last = previous;
    }
    if (buffer.length > 0 && last - first >= FLUSH_SPAN_MS) {
      this.#flush(history, metric, buffer);
      current[0] = [ts, value];
    } else {
      // A new array of the right size, never one the stored state shares.
      const next = new Array<number>(buffer.length + 2);
      for (let i = 0; i < buffer.length; i++) next[i] = buffer[i];
      next[buffer.length] = ts - previous;
      next[buffer.length + 1] = value;
      if (next.length >= 2 * FLUSH_POINTS) {
        this.#flush(history, metric, next);
        current[0] = EMPTY_BUFFER;
      } else current[0] = next;
    }
    for (let l = 0; l < LEVELS.length; l++) {
      const level = LEVELS[l];
      const open = current[l + 1] as PackedBucket | 0;
      const start = bucketStart(level, ts);
      if (open === 0) current[l + 1] = packBucket(newBucket(level, ts, value));
      else if (start === open[0]) addToPacked(open, ts, value);
      else if (start > open[0]) {
        this.#merge(metric, level, unpackBucket(open));
        current[l + 1] = packBucket(newBucket(level, ts, value));
      } else {
        // A late point for a bucket already closed: into its stored chunk.
        this.#merge(metric, level, newBucket(level, ts, value));
      }
    }
    return history;
  }

  /** Writes a buffer's points as one raw chunk, in time order. */
  #flush(history: HistoryState, metric: string, buffer: number[]): void {
    const points = decodeBuffer(buffer).sort((a, b) => a[0] - b[0]);
    const firstTs = points[0][0];
    const lastTs = points[points.length - 1][0];
    this.raw.push({ metric, firstTs, lastTs, seq: ++history.s, points });
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

/** A metric's history decoded into points and bucket objects, or `undefined` if it has none. */
export function metricView(history: HistoryState, metric: string): MetricView | undefined {
  const packed = history.p[metric];
  if (!packed) return undefined;
  const open: MetricView["open"] = {};
  LEVELS.forEach((level, i) => {
    const bucket = packed[i + 1];
    if (bucket) open[level] = unpackBucket(bucket as PackedBucket);
  });
  return { buffer: decodeBuffer(packed[0]), open };
}

/** History as records written before it was kept packed hold it. */
interface LegacyHistory {
  metrics: Record<string, MetricView>;
  chunkSeq: number;
}

/** The history a stored record holds, as it is kept (older records hold it unpacked). */
export function upgradeHistory(stored: HistoryState | LegacyHistory | undefined): HistoryState {
  if (!stored) return emptyHistory();
  if ("p" in stored) return stored;
  const p: HistoryState["p"] = {};
  for (const [metric, { buffer, open }] of Object.entries(stored.metrics)) {
    const flat: number[] = [];
    let previous = 0;
    for (const [ts, value] of buffer) {
      flat.push(ts - previous, value);
      previous = ts;
    }
    p[metric] = [
      flat,
      open["1m"] ? packBucket(open["1m"]) : 0,
      open["1h"] ? packBucket(open["1h"]) : 0,
      open["1d"] ? packBucket(open["1d"]) : 0,
    ];
  }
  return { p, s: stored.chunkSeq };
}

/** The buffer of a metric with no unflushed points (never changed: buffers are replaced). */
const EMPTY_BUFFER: number[] = [];

function decodeBuffer(buffer: number[]): Array<[number, number]> {
  const points = new Array<[number, number]>(buffer.length / 2);
  let ts = 0;
  for (let i = 0; i < buffer.length; i += 2) {
    ts += buffer[i];
    points[i / 2] = [ts, buffer[i + 1]];
  }
  return points;
}

function packBucket(b: Bucket): PackedBucket {
  return [b.start, b.min, b.max, b.sum, b.count, b.last, b.lastTs - b.start];
}

function unpackBucket(b: PackedBucket): Bucket {
  return {
    start: b[0],
    min: b[1],
    max: b[2],
    sum: b[3],
    count: b[4],
    last: b[5],
    lastTs: b[0] + b[6],
  };
}

function copyBucket(b: PackedBucket | 0): PackedBucket | 0 {
  return b === 0 ? 0 : b.slice() as PackedBucket;
}

/** Adds a point to a packed bucket in place (as `addPoint` does to a copy). */
function addToPacked(b: PackedBucket, ts: number, value: number): void {
  if (value < b[1]) b[1] = value;
  if (value > b[2]) b[2] = value;
  b[3] += value;
  b[4] += 1;
  if (ts >= b[0] + b[6]) {
    b[5] = value;
    b[6] = ts - b[0];
  }
}
