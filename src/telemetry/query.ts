/**
 * Reading telemetry history: raw points or rollup buckets of one metric over a time range, from
 * the stored chunks plus what the twin still holds (its unflushed points and open buckets).
 * @module
 */
import { loadTwin } from "../storage/twin_store.ts";
import { FLUSH_SPAN_MS } from "./history.ts";
import {
  type Bucket,
  BUCKET_MS,
  bucketView,
  chunkStart,
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
  const held = twin?.state.history.metrics[q.metric];
  const from = q.after !== undefined ? Math.max(q.from, q.after + 1) : q.from;
  if (!q.bucket) {
    const points: Array<[number, number]> = [];
    for await (
      const entry of kv.list<Array<[number, number]>>({
        start: ["telemetry", q.deviceId, q.metric, from - FLUSH_SPAN_MS],
        end: ["telemetry", q.deviceId, q.metric, q.to + 1],
      })
    ) {
      for (const point of entry.value) if (point[0] >= from && point[0] <= q.to) points.push(point);
    }
    for (const point of held?.buffer ?? []) {
      if (point[0] >= from && point[0] <= q.to) points.push(point);
    }
    points.sort((a, b) => a[0] - b[0]);
    const page = pageOf(points, q.limit, (p) => p[0]);
    return {
      metric: q.metric,
      bucket: "raw",
      items: page.items.map(([ts, value]) => ({ ts: new Date(ts).toISOString(), value })),
      cursor: page.cursor,
    };
  }
  const level = q.bucket;
  const byStart = new Map<number, Bucket>();
  const add = (bucket: Bucket) => {
    // Buckets that overlap [from, to].
    if (bucket.start > q.to || bucket.start + BUCKET_MS[level] <= from) return;
    const had = byStart.get(bucket.start);
    byStart.set(bucket.start, had ? mergeBuckets(had, bucket) : bucket);
  };
  for await (
    const entry of kv.list<RollupChunk>({
      start: ["rollups", q.deviceId, q.metric, level, chunkStart(level, from)],
      end: ["rollups", q.deviceId, q.metric, level, q.to + 1],
    })
  ) {
    for (const bucket of entry.value.buckets) add(bucket);
  }
  const open = held?.open[level];
  if (open) add(open);
  const buckets = [...byStart.values()].sort((a, b) => a.start - b.start);
  const page = pageOf(buckets, q.limit, (b) => b.start);
  return {
    metric: q.metric,
    bucket: level,
    items: page.items.map((bucket) => bucketView(level, bucket)),
    cursor: page.cursor,
  };
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
