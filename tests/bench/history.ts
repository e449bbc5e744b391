/**
 * History benchmarks: durable telemetry with history and rollups on beside the same run with them
 * off, and a 30-day query of one-minute buckets for one metric.
 * @module
 */
import { createApp } from "../../src/app.ts";
import { systemClock } from "../../src/clock.ts";
import { silentLogger } from "../../src/log.ts";
import { seedMinuteRollups } from "./history_seed.ts";
import {
  BENCH_SECRET,
  benchKinds,
  deviceIds,
  fmt,
  removeDir,
  seedDevices,
  tempDir,
} from "./common.ts";
import { type RuntimeResult, runtimeThroughput } from "./runtime.ts";

/** Telemetry throughput with and without history, from one run. */
export interface HistoryThroughput {
  /** History and rollups on. */
  on: RuntimeResult;
  /** History and rollups off. */
  off: RuntimeResult;
  /** on / off. */
  ratio: number;
}

/** Runs the in-process runtime benchmark twice: history off, then on. */
export async function historyThroughput(log: (line: string) => void): Promise<HistoryThroughput> {
  const off = await runtimeThroughput({ history: false });
  log(`  history off: ${fmt(off.messagesPerSec)} msg/s`);
  const on = await runtimeThroughput({ history: true });
  log(`  history on:  ${fmt(on.messagesPerSec)} msg/s`);
  return { on, off, ratio: on.messagesPerSec / off.messagesPerSec };
}

/** Timing of a 30-day one-minute-bucket query. */
export interface QueryTiming {
  /** Buckets returned. */
  buckets: number;
  /** Median over the runs (ms). */
  medianMs: number;
  /** Slowest run (ms). */
  maxMs: number;
}

/**
 * Seeds 30 days of one-minute buckets for one device and metric (as the runtime stores them:
 * chunks of 360 buckets), then times `GET /api/v1/devices/{id}/telemetry?bucket=1m` over them,
 * from the request to the last byte of the answer.
 */
export async function thirtyDayQuery(log: (line: string) => void): Promise<QueryTiming> {
  const dir = await tempDir("history");
  const kv = await Deno.openKv(`${dir}/history.kv`);
  const doppel = await createApp({
    kv,
    clock: systemClock,
    kinds: await benchKinds(),
    secret: BENCH_SECRET,
    adminToken: "bench-admin-token-0123456789",
    logger: silentLogger,
  });
  try {
    const [id] = deviceIds("hist", 1);
    const to = Date.now();
    const from = to - 30 * 86_400_000;
    await seedDevices(kv, [id]);
    const written = await seedMinuteRollups(kv, id, "temperature", from, to);
    log(`  seeded ${fmt(written)} one-minute buckets (30 days) for one metric`);
    const url =
      `/api/v1/devices/${id}/telemetry?metric=temperature&bucket=1m&from=${from}&to=${to}&limit=100000`;
    const headers = { authorization: "Bearer bench-admin-token-0123456789" };
    const times: number[] = [];
    let buckets = 0;
    for (let i = 0; i < 12; i++) {
      const started = performance.now();
      const res = await doppel.app.request(url, { headers });
      // Timed to the last byte of the answer; parsing it is the client's business.
      const text = await res.text();
      const ms = performance.now() - started;
      buckets = (JSON.parse(text) as { items: unknown[] }).items.length;
      if (i >= 2) times.push(ms); // The first runs warm the code up.
    }
    times.sort((a, b) => a - b);
    return { buckets, medianMs: times[Math.floor(times.length / 2)], maxMs: times.at(-1)! };
  } finally {
    await doppel.close();
    kv.close();
    await removeDir(dir);
  }
}
