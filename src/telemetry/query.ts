/**
 * Reading telemetry history: raw points or rollup buckets of one metric over a time range, from
 * the stored chunks plus what the twin still holds (its unflushed points and open buckets).
 * @module
 */
import { loadTwin } from "../storage/twin_store.ts";
import { FLUSH_SPAN_MS, type Retention, rollupExpiry } from "./history.ts";
import {
  type Bucket,
  BUCKET_MS,
  bucketAt,
  type BucketView,
  bucketView,
  chunkStart,
  isoTime,
  type Level,
  mergeBuckets,
  type RollupChunk,
} from "./rollup.ts";

/** A history query. */
export interface HistoryQuery {
  /** The device. */
  deviceId: string;
  /** The metric (a numeric telemetry field). */
  metric: string;
  /** From this time (ms, inclusive). */
  from: number;
  /** To this time (ms, inclusive). */
  to: number;
  /** Raw points when absent, else buckets of this level. */
  bucket?: Level;
  /** Most items in the page. */
  limit: number;
  /** Resume after this time (ms): the cursor of the previous page. */
  after?: number;
  /** The current time (ms), to leave out what the twin holds past `retention`. */
  now: number;
  /** The kind's retention. */
  retention: Retention;
}

/** One page of a history query. */
export interface HistoryPage {
  /** The metric. */
  metric: string;
  /** The bucket level, or `raw`. */
  bucket: Level | "raw";
  /** Points (`{ts, value}`) or buckets (`{start, end, min, max, avg, count, last}`). */
  items: unknown[];
  /** Pass as `cursor` for the next page, or `null` at the end. */
  cursor: string | null;
}

/** Runs a history query. */
export async function queryHistory(kv: Deno.Kv, q: HistoryQuery): Promise<HistoryPage> {
  const twin = await loadTwin(kv, q.deviceId);
  const history = twin?.state.history.metrics[q.metric];
  // What the twin still holds (points not yet flushed, open buckets) obeys retention too.
  const held = history && {
    buffer: history.buffer.filter(([ts]) => ts + q.retention.raw > q.now),
    open: Object.fromEntries(
      Object.entries(history.open).filter(([level, bucket]) =>
        rollupExpiry(level as Level, bucket!.start, q.retention) > q.now
      ),
    ) as typeof history.open,
  };
  const from = q.after !== undefined ? Math.max(q.from, q.after + 1) : q.from;
  if (!q.bucket) {
    const points: Array<[number, number]> = [];
    for await (
      const entry of kv.list<Array<[number, number]>>({
        start: ["telemetry", q.deviceId, q.metric, from - FLUSH_SPAN_MS],
        end: ["telemetry", q.deviceId, q.metric, q.to + 1],
      })
    ) {
      for (const point of entry.value) {
        // Past retention and not yet swept: gone all the same.
        if (point[0] >= from && point[0] <= q.to && point[0] + q.retention.raw > q.now) {
          points.push(point);
        }
      }
    }
    for (const point of held?.buffer ?? []) {
      if (point[0] >= from && point[0] <= q.to) points.push(point);
    }
    points.sort((a, b) => a[0] - b[0]);
    const page = pageOf(points, q.limit, (p) => p[0]);
    return {
      metric: q.metric,
      bucket: "raw",
      items: page.items.map(([ts, value]) => ({ ts: isoTime(ts), value })),
      cursor: page.cursor,
    };
  }
  const level = q.bucket;
  const length = BUCKET_MS[level];
  // Chunks partition time and list in order, so their buckets come sorted; only the twin's open
  // bucket can share a start with a stored one (late points for it went to its chunk).
  const views: BucketView[] = [];
  const starts: number[] = [];
  const open = held?.open[level];
  // A page resumes after the last bucket start it showed.
  const after = q.after ?? -Infinity;
  const openIn = open !== undefined && open.start <= q.to && open.start + length > q.from &&
    open.start > after;
  for await (
    const entry of kv.list<RollupChunk>({
      start: ["rollups", q.deviceId, q.metric, level, chunkStart(level, from)],
      end: ["rollups", q.deviceId, q.metric, level, q.to + 1],
    })
  ) {
    const c = entry.value;
    if (rollupExpiry(level, entry.key[4] as number, q.retention) <= q.now) continue;
    for (let i = 0; i < c.start.length; i++) {
      const start = c.start[i];
      if (start > q.to || start + length <= q.from || start <= after) continue;
      if (openIn && start === open.start) continue; // Merged with the open one below.
      starts.push(start);
      views.push({
        start: isoTime(start),
        end: isoTime(start + length),
        min: c.min[i],
        max: c.max[i],
        avg: c.sum[i] / c.count[i],
        count: c.count[i],
        last: c.last[i],
      });
    }
  }
  if (openIn) {
    // Rarely, late points of the open bucket's start went to its chunk: fold them in.
    const stored = await storedBucket(kv, q.deviceId, q.metric, level, open.start);
    const bucket = stored ? mergeBuckets(stored, open) : open;
    let i = starts.findIndex((s) => s > open.start);
    if (i < 0) i = starts.length;
    starts.splice(i, 0, open.start);
    views.splice(i, 0, bucketView(level, bucket));
  }
  const page = pageOf(starts.map((start, i) => [start, i] as const), q.limit, (p) => p[0]);
  return {
    metric: q.metric,
    bucket: level,
    items: page.items.length === views.length ? views : page.items.map(([, i]) => views[i]),
    cursor: page.cursor,
  };
}

/** One stored bucket, if its chunk has it. */
async function storedBucket(
  kv: Deno.Kv,
  deviceId: string,
  metric: string,
  level: Level,
  start: number,
): Promise<Bucket | null> {
  const chunk =
    (await kv.get<RollupChunk>(["rollups", deviceId, metric, level, chunkStart(level, start)]))
      .value;
  if (!chunk) return null;
  const i = chunk.start.indexOf(start);
  return i < 0 ? null : bucketAt(chunk, i);
}

/** The first `limit` items, never splitting items of the same time across pages. */
function pageOf<T>(items: T[], limit: number, time: (item: T) => number): {
  items: T[];
  cursor: string | null;
} {
  if (items.length <= limit) return { items, cursor: null };
  let end = limit;
  while (end < items.length && time(items[end]) === time(items[end - 1])) end++;
  if (end >= items.length) return { items, cursor: null };
  return { items: items.slice(0, end), cursor: String(time(items[end - 1])) };
}
