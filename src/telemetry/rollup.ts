/**
 * Rollup buckets: min, max, avg (as sum and count), count and last value of a metric over a
 * `1m`, `1h` or `1d` bucket, kept incrementally as points arrive and never by rescanning.
 * Closed buckets are stored many to a KV value ("chunks"), so a month of minutes is a few hundred
 * reads, not forty thousand.
 * @module
 */

/** Rollup levels. */
export type Level = "1m" | "1h" | "1d";

/** Every level, finest first. */
export const LEVELS: readonly Level[] = ["1m", "1h", "1d"];

/** Bucket length per level, in ms. */
export const BUCKET_MS: Record<Level, number> = {
  "1m": 60_000,
  "1h": 3_600_000,
  "1d": 86_400_000,
};

/** Time a chunk of closed buckets spans, per level (360 buckets for 1m and 1h, a year of days). */
export const CHUNK_MS: Record<Level, number> = {
  "1m": 6 * 3_600_000,
  "1h": 15 * 86_400_000,
  "1d": 366 * 86_400_000,
};

/** One bucket's aggregate. */
export interface Bucket {
  /** Bucket start (ms). */
  start: number;
  /** Smallest value. */
  min: number;
  /** Largest value. */
  max: number;
  /** Sum of values (avg = sum / count). */
  sum: number;
  /** Number of points. */
  count: number;
  /** Value of the latest point. */
  last: number;
  /** Time of the latest point (ms). */
  lastTs: number;
}

/**
 * Closed buckets of one chunk, stored as one KV value in columns of numbers (a typed array is
 * copied in one piece when KV reads it, where an array of objects is rebuilt object by object).
 */
export interface RollupChunk {
  /** Bucket starts, ascending. */
  start: Float64Array;
  /** Minimums. */
  min: Float64Array;
  /** Maximums. */
  max: Float64Array;
  /** Sums. */
  sum: Float64Array;
  /** Counts. */
  count: Float64Array;
  /** Last values. */
  last: Float64Array;
  /** Times of the last values. */
  lastTs: Float64Array;
}

const COLUMNS = ["start", "min", "max", "sum", "count", "last", "lastTs"] as const;

/** The buckets of a chunk, in start order. */
export function chunkBuckets(chunk: RollupChunk): Bucket[] {
  const out: Bucket[] = [];
  for (let i = 0; i < chunk.start.length; i++) out.push(bucketAt(chunk, i));
  return out;
}

/** The `i`th bucket of a chunk. */
export function bucketAt(chunk: RollupChunk, i: number): Bucket {
  return {
    start: chunk.start[i],
    min: chunk.min[i],
    max: chunk.max[i],
    sum: chunk.sum[i],
    count: chunk.count[i],
    last: chunk.last[i],
    lastTs: chunk.lastTs[i],
  };
}

/** A chunk holding `buckets` (in start order). */
export function toChunk(buckets: Bucket[]): RollupChunk {
  const chunk = {} as RollupChunk;
  for (const column of COLUMNS) chunk[column] = Float64Array.from(buckets, (b) => b[column]);
  return chunk;
}

/** Start of the bucket holding `ts`. */
export function bucketStart(level: Level, ts: number): number {
  return Math.floor(ts / BUCKET_MS[level]) * BUCKET_MS[level];
}

/** Start of the chunk holding the bucket that starts at `start`. */
export function chunkStart(level: Level, start: number): number {
  return Math.floor(start / CHUNK_MS[level]) * CHUNK_MS[level];
}

/** A bucket of one point. */
export function newBucket(level: Level, ts: number, value: number): Bucket {
  return {
    start: bucketStart(level, ts),
    min: value,
    max: value,
    sum: value,
    count: 1,
    last: value,
    lastTs: ts,
  };
}

/** A bucket with one more point. */
export function addPoint(bucket: Bucket, ts: number, value: number): Bucket {
  const later = ts >= bucket.lastTs;
  return {
    start: bucket.start,
    min: Math.min(bucket.min, value),
    max: Math.max(bucket.max, value),
    sum: finiteSum(bucket.sum + value),
    count: bucket.count + 1,
    last: later ? value : bucket.last,
    lastTs: later ? ts : bucket.lastTs,
  };
}

/** Two aggregates of the same bucket combined. */
export function mergeBuckets(a: Bucket, b: Bucket): Bucket {
  const later = b.lastTs >= a.lastTs;
  return {
    start: a.start,
    min: Math.min(a.min, b.min),
    max: Math.max(a.max, b.max),
    sum: finiteSum(a.sum + b.sum),
    count: a.count + b.count,
    last: later ? b.last : a.last,
    lastTs: later ? b.lastTs : a.lastTs,
  };
}

/**
 * `sum`, or the largest double of its sign if it overflowed: JSON would store Infinity as null,
 * and the bucket's average with it.
 */
export function finiteSum(sum: number): number {
  return sum === Infinity ? Number.MAX_VALUE : sum === -Infinity ? -Number.MAX_VALUE : sum;
}

/** A chunk with `bucket` merged in (added, or combined with the one of the same start). */
export function mergeIntoChunk(chunk: RollupChunk | null, bucket: Bucket): RollupChunk {
  const buckets = chunk ? chunkBuckets(chunk) : [];
  const i = buckets.findIndex((b) => b.start >= bucket.start);
  if (i < 0) buckets.push(bucket);
  else if (buckets[i].start === bucket.start) buckets[i] = mergeBuckets(buckets[i], bucket);
  else buckets.splice(i, 0, bucket);
  return toChunk(buckets);
}

/** A bucket as the API shows it. */
export interface BucketView {
  /** Start. */
  start: string;
  /** End (exclusive): the next bucket's start. */
  end: string;
  /** Smallest value. */
  min: number;
  /** Largest value. */
  max: number;
  /** Mean value. */
  avg: number;
  /** Number of points. */
  count: number;
  /** Latest value. */
  last: number;
}

let isoDay = NaN;
let isoDayPrefix = "";

/**
 * `new Date(ms).toISOString()`, faster for runs of times on the same day (a month of minute
 * buckets is 43,200 of them): the date part is formatted once per day.
 */
export function isoTime(ms: number): string {
  const day = Math.floor(ms / 86_400_000);
  if (day !== isoDay || !Number.isInteger(ms)) {
    const iso = new Date(ms).toISOString();
    if (!Number.isInteger(ms)) return iso;
    isoDay = day;
    isoDayPrefix = iso.slice(0, 11);
  }
  const inDay = ms - day * 86_400_000;
  const h = Math.floor(inDay / 3_600_000);
  const m = Math.floor(inDay / 60_000) % 60;
  const sec = Math.floor(inDay / 1000) % 60;
  const milli = inDay % 1000;
  return `${isoDayPrefix}${h < 10 ? "0" : ""}${h}:${m < 10 ? "0" : ""}${m}:${
    sec < 10 ? "0" : ""
  }${sec}.${milli < 10 ? "00" : milli < 100 ? "0" : ""}${milli}Z`;
}
