/**
 * History benchmarks: durable telemetry with history and rollups on beside the same run with them
 * off, and a 30-day query of one-minute buckets for one metric.
 * @module
 */
import { seedMinuteRollups } from "./history_seed.ts";
import {
  BENCH_ADMIN_TOKEN,
  benchApp,
  deviceIds,
  fmt,
  removeDir,
  seedDevices,
  tempDir,
} from "./common.ts";
import { inChild } from "./child.ts";

/** Telemetry throughput with and without history, each measured in a fresh process. */
export interface HistoryThroughput {
  /** Messages/s with history and rollups on (the pairs' median). */
  on: number;
  /** Messages/s with them off (the pairs' median). */
  off: number;
  /** The median of the pairs' on / off. */
  ratio: number;
  /** Each pair's on / off, in the order run. */
  ratios: number[];
}

/** Pairs of runs (history off and on) the ratio is judged on. */
const PAIRS = 3;

/**
 * Runs the in-process runtime benchmark with history off and on, each in its own process, in
 * {@link PAIRS} alternating pairs (off first, then on first, …), and takes the median: one pair
 * runs seconds apart, and this VM's speed drifts by 15-30 % over seconds.
 */
export async function historyThroughput(log: (line: string) => void): Promise<HistoryThroughput> {
  const run = async (history: boolean) =>
    (await inChild<{ messagesPerSec: number }>("runtime", { history })).messagesPerSec;
  const ons: number[] = [], offs: number[] = [], ratios: number[] = [];
  for (let i = 0; i < PAIRS; i++) {
    let off: number, on: number;
    if (i % 2 === 0) {
      off = await run(false);
      on = await run(true);
    } else {
      on = await run(true);
      off = await run(false);
    }
    log(
      `  pair ${i + 1}: history off ${fmt(off)} msg/s, on ${fmt(on)} msg/s = ` +
        `${(on / off * 100).toFixed(1)}%`,
    );
    ons.push(on);
    offs.push(off);
    ratios.push(on / off);
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return { on: median(ons), off: median(offs), ratio: median(ratios), ratios };
}

/** Timing of a 30-day one-minute-bucket query. */
export interface QueryTiming {
  /** Buckets returned. */
  buckets: number;
  /** Median over the runs with `format=columns` (ms). */
  medianMs: number;
  /** Slowest of those runs (ms). */
  maxMs: number;
  /** Median with `format=items`, an object per bucket (ms). */
  itemsMedianMs: number;
}

/**
 * Seeds 30 days of one-minute buckets for one device and metric (as the runtime stores them:
 * chunks of 360 buckets), then times `GET /api/v1/devices/{id}/telemetry?bucket=1m` over them,
 * from the request to the last byte of the answer.
 */
export async function thirtyDayQuery(log: (line: string) => void): Promise<QueryTiming> {
  const dir = await tempDir("history");
  const kv = await Deno.openKv(`${dir}/history.kv`);
  const doppel = await benchApp(kv);
  try {
    const [id] = deviceIds("hist", 1);
    const to = Date.now();
    const from = to - 30 * 86_400_000;
    await seedDevices(kv, [id]);
    const written = await seedMinuteRollups(kv, id, "temperature", from, to);
    log(`  seeded ${fmt(written)} one-minute buckets (30 days) for one metric`);
    const url =
      `/api/v1/devices/${id}/telemetry?metric=temperature&bucket=1m&from=${from}&to=${to}&limit=100000`;
    const headers = { authorization: `Bearer ${BENCH_ADMIN_TOKEN}` };
    const time = async (
      format: string,
    ): Promise<{ median: number; max: number; buckets: number }> => {
      const times: number[] = [];
      let buckets = 0;
      for (let i = 0; i < 12; i++) {
        const started = performance.now();
        const res = await doppel.app.request(`${url}&format=${format}`, { headers });
        // Timed to the last byte of the answer; parsing it is the client's business.
        const text = await res.text();
        const ms = performance.now() - started;
        const body = JSON.parse(text) as { items?: unknown[]; columns?: { start: unknown[] } };
        buckets = body.items?.length ?? body.columns?.start.length ?? 0;
        if (i >= 2) times.push(ms); // The first runs warm the code up.
      }
      times.sort((a, b) => a - b);
      return { median: times[Math.floor(times.length / 2)], max: times.at(-1)!, buckets };
    };
    const columns = await time("columns");
    const items = await time("items");
    return {
      buckets: columns.buckets,
      medianMs: columns.median,
      maxMs: columns.max,
      itemsMedianMs: items.median,
    };
  } finally {
    await doppel.close();
    kv.close();
    await removeDir(dir);
  }
}
