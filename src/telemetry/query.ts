/**
 * Reading telemetry history: raw points or rollup buckets of one metric over a time range, from
 * the stored chunks plus what the twin still holds (its unflushed points and open buckets).
 * @module
 */
import { loadTwin } from "../storage/twin_store.ts";
import { FLUSH_SPAN_MS, metricView, type Retention, rollupExpiry } from "./history.ts";
import {
  type Bucket,
  BUCKET_MS,
  bucketAt,
  type BucketView,
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
  /**
   * `items` (default): an object per point or bucket, times as ISO 8601. `columns`: one array per
   * field, times as epoch ms — smaller and faster, what charts want.
   */
  format?: "items" | "columns";
}

/** One page of a history query. */
export interface HistoryPage {
  /** The metric. */
  metric: string;
  /** The bucket level, or `raw`. */
  bucket: Level | "raw";
  /** Points (`{ts, value}`) or buckets (`{start, end, min, max, avg, count, last}`). */
  items?: unknown[];
  /** With `format=columns`: `{ts, value}` or `{start, min, max, avg, count, last}` arrays. */
  columns?: Record<string, number[]>;
  /** Pass as `cursor` for the next page, or `null` at the end. */
  cursor: string | null;
}

/** Runs a history query. */
export async function queryHistory(kv: Deno.Kv, q: HistoryQuery): Promise<HistoryPage> {
  const twin = await loadTwin(kv, q.deviceId);
  const history = twin && metricView(twin.state.history, q.metric);
  // What the twin still holds (points not yet flushed, open buckets) obeys retention too.
  const held = history && {
    buffer: history.buffer.filter(([ts]) => ts + q.retention.raw > q.now),
    open: Object.fromEntries(
      Object.entries(history.open).filter(([level, bucket]) =>
        bucketKept(level as Level, bucket!.start, q)
      ),
    ) as typeof history.open,
  };
  const from = q.after !== undefined ? Math.max(q.from, q.after + 1) : q.from;
  if (!q.bucket) {
    const points: Array<[number, number]> = [];
    for (const point of held?.buffer ?? []) {
      if (point[0] >= from && point[0] <= q.to) points.push(point);
    }
    // Chunks list by their earliest point, and each spans less than FLUSH_SPAN_MS: once a page's
    // worth of points is in hand and the next chunk starts after the last of them, no later
    // chunk can change the page. So a page reads the chunks it needs, not the whole range.
    let more = false;
    for await (
      const entry of kv.list<Array<[number, number]>>({
        start: ["telemetry", q.deviceId, q.metric, from - FLUSH_SPAN_MS],
        end: ["telemetry", q.deviceId, q.metric, q.to + 1],
      })
    ) {
      if (points.length >= q.limit) {
        points.sort((a, b) => a[0] - b[0]);
        if ((entry.key[3] as number) > points[q.limit - 1][0]) {
          more = true;
          break;
        }
      }
      for (const point of entry.value) {
        // Past retention and not yet swept: gone all the same.
        if (point[0] >= from && point[0] <= q.to && point[0] + q.retention.raw > q.now) {
          points.push(point);
        }
      }
    }
    points.sort((a, b) => a[0] - b[0]);
    const page = pageOf(points, q.limit, (p) => p[0]);
    // Stopped before the end: there is more after this page even if nothing read shows it.
    if (more && page.cursor === null && page.items.length > 0) {
      page.cursor = String(page.items[page.items.length - 1][0]);
    }
    if (q.format === "columns") {
      return {
        metric: q.metric,
        bucket: "raw",
        columns: { ts: page.items.map((p) => p[0]), value: page.items.map((p) => p[1]) },
        cursor: page.cursor,
      };
    }
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
  // bucket can share a start with a stored one (late points for it went to its chunk). Buckets
  // are gathered as columns of numbers; objects are made only for the page answered as items.
  const col = {
    start: [] as number[],
    min: [] as number[],
    max: [] as number[],
    avg: [] as number[],
    count: [] as number[],
    last: [] as number[],
  };
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
      // A chunk is deleted once its last bucket is past retention; its earlier ones go sooner.
      if (!bucketKept(level, start, q)) continue;
      if (openIn && start === open.start) continue; // Merged with the open one below.
      col.start.push(start);
      col.min.push(c.min[i]);
      col.max.push(c.max[i]);
      col.avg.push(c.sum[i] / c.count[i]);
      col.count.push(c.count[i]);
      col.last.push(c.last[i]);
    }
  }
  if (openIn) {
    // Rarely, late points of the open bucket's start went to its chunk: fold them in.
    const stored = await storedBucket(kv, q.deviceId, q.metric, level, open.start);
    const b = stored ? mergeBuckets(stored, open) : open;
    let i = col.start.findIndex((s) => s > open.start);
    if (i < 0) i = col.start.length;
    col.start.splice(i, 0, b.start);
    col.min.splice(i, 0, b.min);
    col.max.splice(i, 0, b.max);
    col.avg.splice(i, 0, b.sum / b.count);
    col.count.splice(i, 0, b.count);
    col.last.splice(i, 0, b.last);
  }
  // The page: the first `limit` buckets (starts are unique, so no tie to keep together).
  const n = Math.min(q.limit, col.start.length);
  const cursor = n < col.start.length ? String(col.start[n - 1]) : null;
  if (q.format === "columns") {
    return {
      metric: q.metric,
      bucket: level,
      columns: Object.fromEntries(
        Object.entries(col).map((
          [name, values],
        ) => [name, n < values.length ? values.slice(0, n) : values]),
      ),
      cursor,
    };
  }
  const items: BucketView[] = new Array(n);
  for (let i = 0; i < n; i++) {
    items[i] = {
      start: isoTime(col.start[i]),
      end: isoTime(col.start[i] + length),
      min: col.min[i],
      max: col.max[i],
      avg: col.avg[i],
      count: col.count[i],
      last: col.last[i],
    };
  }
  return { metric: q.metric, bucket: level, items, cursor };
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
/** Whether a bucket of `level` starting at `start` is still within retention at `q.now`. */
function bucketKept(level: Level, start: number, q: HistoryQuery): boolean {
  return start + BUCKET_MS[level] + q.retention[level] > q.now;
}

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
