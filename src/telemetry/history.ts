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
  finiteSum,
  type Level,
  LEVELS,
  mergeIntoChunk,
  newBucket,
  type RollupChunk,
} from "./rollup.ts";

/**
 * One metric's history in the record, as one array of numbers: the open bucket of each level
 * (`1m`, `1h`, `1d`), {@link BUCKET_SLOTS} numbers each — `start, min, max, sum, count, last,
 * lastTs - start`, count 0 when none is open — then the points not yet flushed, in arrival order,
 * as `t0, v0, dt1, v1, …` (each time relative to the one before).
 */
export type MetricHistory = number[];

/** Numbers per bucket in a {@link MetricHistory}. */
const BUCKET_SLOTS = 7;
/** Where a {@link MetricHistory}'s buffer starts: after the three buckets. */
const BUFFER_AT = 3 * BUCKET_SLOTS;

/**
 * The history part of a twin record. It is kept in memory in the form it is stored in (short
 * names, one array of numbers per metric): a record is replaced on every turn, and what it keeps
 * costs garbage collection in objects and KV writes in bytes (they slow down sharply past about
 * 1 KB a value), so this form has few of either and costs nothing to encode.
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
export class NeedsRead {
  // Not an Error: it is thrown for every twin at a rollup boundary and always caught by the turn,
  // so capturing a stack trace for it would be waste.
  /** The KV key to read. */
  readonly key: Deno.KvKey;
  /** Names the missing key. */
  constructor(key: Deno.KvKey) {
    this.key = key;
  }

  /** What it asks for, should one ever escape the turn. */
  get message(): string {
    return `The turn needs ${JSON.stringify(this.key)} read first.`;
  }

  /** The message, for logs that print what was thrown. */
  toString(): string {
    return this.message;
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

/** A rollup chunk to rewrite: its key, level, start and new contents. */
export interface RollupChunkWrite {
  /** The chunk's key. */
  key: Deno.KvKey;
  /** Its level. */
  level: Level;
  /** Its start (ms). */
  start: number;
  /** Its buckets. */
  chunk: RollupChunk;
}

/** What a {@link HistoryWriter} had collected at one point of a turn. */
export interface HistoryMark {
  /** Raw chunks flushed by then. */
  raw: number;
  /** Rollup chunks changed by then. */
  rollups: Map<string, RollupChunkWrite> | undefined;
}

/** Collects a turn's history changes: raw chunks to write and rollup chunks to rewrite. */
export class HistoryWriter {
  /** Raw chunks flushed in this turn. */
  readonly raw: RawChunk[] = [];
  // Rollup chunks changed in this turn, by key id (made on the first: most turns change none).
  #rollups: Map<string, RollupChunkWrite> | undefined;
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

  /** What it has collected so far: to go back to if the message about to apply fails. */
  mark(): HistoryMark {
    return { raw: this.raw.length, rollups: this.#rollups && new Map(this.#rollups) };
  }

  /** Forgets what it collected since `mark` (that message failed and its state was rolled back). */
  restore(mark: HistoryMark): void {
    this.raw.length = mark.raw;
    this.#rollups = mark.rollups;
    this.#owned = undefined;
  }

  /** Rollup chunks changed in this turn. */
  rollupChunks(): RollupChunkWrite[] {
    return this.#rollups ? [...this.#rollups.values()] : [];
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
    // The first point of a metric in this turn copies its array; later ones change it in place
    // (the stored state is never changed, so a turn run again after a conflict starts clean).
    if (history !== this.#owned) {
      history = { p: { ...history.p }, s: history.s };
      this.#owned = history;
      this.#ownedMetrics = [];
    }
    const before = Object.hasOwn(history.p, metric) ? history.p[metric] : NO_METRIC;
    let m: MetricHistory;
    if (this.#ownedMetrics.includes(metric)) m = before;
    else {
      // A copy with room for this point, made in one go.
      m = new Array<number>(before.length + 2);
      for (let i = 0; i < before.length; i++) m[i] = before[i];
      m.length = before.length;
      history.p[metric] = m;
      this.#ownedMetrics.push(metric);
    }
    // A chunk spans less than FLUSH_SPAN_MS, so a range query knows how far back to look: a
    // point that would stretch it further starts the next chunk.
    let previous = 0; // The time of the buffer's latest point: the next one is relative to it.
    let first = ts, last = ts;
    for (let i = BUFFER_AT; i < m.length; i += 2) {
      previous += m[i];
      if (previous < first) first = previous;
      if (previous > last) last = previous;
    }
    if (m.length > BUFFER_AT && last - first >= FLUSH_SPAN_MS) {
      this.#flush(history, metric, m);
      previous = 0;
    }
    m.push(ts - previous, value);
    if (m.length - BUFFER_AT >= 2 * FLUSH_POINTS) this.#flush(history, metric, m);
    for (let l = 0; l < LEVELS.length; l++) {
      const level = LEVELS[l];
      const at = l * BUCKET_SLOTS;
      const start = bucketStart(level, ts);
      if (!m[at + 4]) setBucket(m, at, newBucket(level, ts, value));
      else if (start === m[at]) {
        if (value < m[at + 1]) m[at + 1] = value;
        if (value > m[at + 2]) m[at + 2] = value;
        // A sum past the largest double would be Infinity here and null once stored as JSON.
        m[at + 3] = finiteSum(m[at + 3] + value);
        m[at + 4] += 1;
        if (ts >= m[at] + m[at + 6]) {
          m[at + 5] = value;
          m[at + 6] = ts - m[at];
        }
      } else if (start > m[at]) {
        this.#merge(metric, level, bucketOf(m, at));
        setBucket(m, at, newBucket(level, ts, value));
      } else {
        // A late point for a bucket already closed: into its stored chunk.
        this.#merge(metric, level, newBucket(level, ts, value));
      }
    }
    return history;
  }

  /** Writes the buffer of `m` as one raw chunk, in time order, and empties it. */
  #flush(history: HistoryState, metric: string, m: MetricHistory): void {
    const points = decodeBuffer(m).sort((a, b) => a[0] - b[0]);
    m.length = BUFFER_AT;
    const firstTs = points[0][0];
    const lastTs = points[points.length - 1][0];
    this.raw.push({ metric, firstTs, lastTs, seq: ++history.s, points });
  }

  #merge(metric: string, level: Level, bucket: Bucket): void {
    const start = chunkStart(level, bucket.start);
    const key = rollupKey(this.#deviceId, metric, level, start);
    const id = keyId(key);
    const pending = this.#rollups?.get(id);
    let base: RollupChunk | null;
    if (pending) base = pending.chunk;
    else if (this.#stored.has(id)) base = this.#stored.get(id) ?? null;
    else throw new NeedsRead(key);
    (this.#rollups ??= new Map()).set(id, {
      key,
      level,
      start,
      chunk: mergeIntoChunk(base, bucket),
    });
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
  if (!Object.hasOwn(history.p, metric)) return undefined;
  const m = history.p[metric];
  const open: MetricView["open"] = {};
  LEVELS.forEach((level, l) => {
    if (m[l * BUCKET_SLOTS + 4]) open[level] = bucketOf(m, l * BUCKET_SLOTS);
  });
  return { buffer: decodeBuffer(m), open };
}

/** History as records written before it was kept in one array per metric hold it. */
type OlderHistory =
  | { metrics: Record<string, MetricView>; chunkSeq: number }
  | { p: Record<string, [number[], ...(number[] | 0)[]]>; s: number };

/** The history a stored record holds, as it is kept (older records hold it in older forms). */
export function upgradeHistory(stored: HistoryState | OlderHistory | undefined): HistoryState {
  if (!stored) return emptyHistory();
  const p: HistoryState["p"] = {};
  if ("p" in stored) {
    const first = Object.values(stored.p)[0];
    if (first === undefined || !Array.isArray(first[0])) return stored as HistoryState;
    // [buffer, bucket1m, bucket1h, bucket1d], each bucket as its 7 numbers or 0.
    for (const [metric, [buffer, ...buckets]] of Object.entries(stored.p)) {
      p[metric] = [...LEVELS.flatMap((_, l) => buckets[l] || EMPTY_BUCKET), ...buffer];
    }
    return { p, s: stored.s };
  }
  for (const [metric, { buffer, open }] of Object.entries(stored.metrics)) {
    const m: number[] = [];
    for (const level of LEVELS) {
      const b = open[level];
      m.push(
        ...(b ? [b.start, b.min, b.max, b.sum, b.count, b.last, b.lastTs - b.start] : EMPTY_BUCKET),
      );
    }
    let previous = 0;
    for (const [ts, value] of buffer) {
      m.push(ts - previous, value);
      previous = ts;
    }
    p[metric] = m;
  }
  return { p, s: stored.chunkSeq };
}

/** A metric with nothing yet: three buckets of count 0, no points. */
const NO_METRIC: MetricHistory = new Array(BUFFER_AT).fill(0);
const EMPTY_BUCKET = new Array(BUCKET_SLOTS).fill(0);

/** The unflushed points of `m` as `[ts, value]` pairs, in arrival order. */
function decodeBuffer(m: MetricHistory): Array<[number, number]> {
  const points = new Array<[number, number]>((m.length - BUFFER_AT) / 2);
  let ts = 0;
  for (let i = BUFFER_AT; i < m.length; i += 2) {
    ts += m[i];
    points[(i - BUFFER_AT) / 2] = [ts, m[i + 1]];
  }
  return points;
}

function bucketOf(m: MetricHistory, at: number): Bucket {
  return {
    start: m[at],
    min: m[at + 1],
    max: m[at + 2],
    sum: m[at + 3],
    count: m[at + 4],
    last: m[at + 5],
    lastTs: m[at] + m[at + 6],
  };
}

function setBucket(m: MetricHistory, at: number, b: Bucket): void {
  m[at] = b.start;
  m[at + 1] = b.min;
  m[at + 2] = b.max;
  m[at + 3] = b.sum;
  m[at + 4] = b.count;
  m[at + 5] = b.last;
  m[at + 6] = b.lastTs - b.start;
}
