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

/** Closed buckets of one chunk, stored as one KV value. */
export interface RollupChunk {
  /** Buckets in start order. */
  buckets: Bucket[];
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
    sum: bucket.sum + value,
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
    sum: a.sum + b.sum,
    count: a.count + b.count,
    last: later ? b.last : a.last,
    lastTs: later ? b.lastTs : a.lastTs,
  };
}

/** A chunk with `bucket` merged in (added, or combined with the one of the same start). */
export function mergeIntoChunk(chunk: RollupChunk | null, bucket: Bucket): RollupChunk {
  const buckets = [...(chunk?.buckets ?? [])];
  const i = buckets.findIndex((b) => b.start >= bucket.start);
  if (i < 0) buckets.push(bucket);
  else if (buckets[i].start === bucket.start) buckets[i] = mergeBuckets(buckets[i], bucket);
  else buckets.splice(i, 0, bucket);
  return { buckets };
}

/** A bucket as the API shows it. */
export function bucketView(level: Level, bucket: Bucket): {
  start: string;
  end: string;
  min: number;
  max: number;
  avg: number;
  count: number;
  last: number;
} {
  return {
    start: new Date(bucket.start).toISOString(),
    end: new Date(bucket.start + BUCKET_MS[level]).toISOString(),
    min: bucket.min,
    max: bucket.max,
    avg: bucket.sum / bucket.count,
    count: bucket.count,
    last: bucket.last,
  };
}
