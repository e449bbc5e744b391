/**
 * Part 2: the twin runtime in process. 10,000 thermostats on a file-backed KV, then many
 * concurrent callers each sending one reading at a time with `runtime.telemetry` and awaiting
 * its durable commit. Reports durable messages per second and the commit batches behind them.
 * @module
 */
import type { Doppel } from "../../src/app.ts";
import {
  benchApp,
  cpuShare,
  deviceIds,
  fmt,
  removeDir,
  seedDevices,
  sleep,
  tempDir,
  threadCpu,
} from "./common.ts";

/** What the in-process run measured. */
export interface RuntimeResult {
  /** Devices registered. */
  devices: number;
  /** Seconds seeding devices and twins took. */
  seedSeconds: number;
  /** Concurrent callers. */
  concurrency: number;
  /** Durable telemetry messages per second in the measured window. */
  messagesPerSec: number;
  /** Messages completed in the window. */
  messages: number;
  /** Failed sends (any window). */
  errors: number;
  /** Commit batches in the window. */
  batches: number;
  /** Mean requests (twin turns) per commit batch in the window. */
  meanBatch: number;
  /** Mean ms per commit batch in the window. */
  meanCommitMs: number;
  /** Mean messages per twin turn (mailbox batching) in the window. */
  messagesPerTurn: number;
  /** Twins activated at the end. */
  activations: number;
  /** Commits allowed in flight. */
  maxInFlight: number;
  /** Every twin's head entry as the run left it: what the runtime wrote. */
  heads: Array<{ key: Deno.KvKey; value: unknown }>;
  /** CPU busy % in the window: the main (JavaScript) thread, other threads, the busiest ones. */
  cpu: { main: number; others: number; top: string } | null;
}

/** Settings for {@link runtimeThroughput}. */
export interface RuntimeOptions {
  /** Keep telemetry history and rollups (default true). */
  history?: boolean;
  /** Devices (default 10,000). */
  devices?: number;
  /** Concurrent callers (default 2,000). */
  concurrency?: number;
  /** Warm-up seconds (default 1). */
  warmupSeconds?: number;
  /** Measured seconds (default 5). */
  seconds?: number;
  /** Commits in flight for the runtime's batcher (default: the runtime's own default, 2). */
  maxInFlight?: number;
  /** Prints progress. */
  log?(line: string): void;
  /**
   * Called once the devices are seeded, before the load starts, with the app and the device ids;
   * returns what to call when the load has ended (live-stream clients attach here).
   */
  attach?(doppel: Doppel, ids: string[]): Promise<() => Promise<void>>;
}

/** Runs the in-process telemetry benchmark; see the module doc. */
export async function runtimeThroughput(options: RuntimeOptions = {}): Promise<RuntimeResult> {
  const count = options.devices ?? 10_000;
  const concurrency = options.concurrency ?? 2_000;
  const warmup = options.warmupSeconds ?? 1;
  const seconds = options.seconds ?? 5;
  const log = options.log ?? (() => {});
  const dir = await tempDir("runtime");
  const kv = await Deno.openKv(`${dir}/runtime.kv`);
  const doppel = await benchApp(kv, {
    history: options.history ?? true,
    ...(options.maxInFlight ? { batcher: { maxInFlight: options.maxInFlight } } : {}),
  });
  try {
    const ids = deviceIds("rt", count);
    const seedStarted = performance.now();
    await seedDevices(kv, ids);
    const seedSeconds = (performance.now() - seedStarted) / 1000;
    log(`  seeded ${fmt(count)} devices + twins in ${seedSeconds.toFixed(2)} s (direct batches)`);

    const detach = options.attach ? await options.attach(doppel, ids) : undefined;
    const { runtime } = doppel;
    let next = 0;
    let stop = false;
    let completed = 0;
    let errors = 0;
    let firstError: unknown;
    const caller = async (): Promise<void> => {
      while (!stop) {
        const i = next++;
        // 18.0-27.9 °C: below the thermostat's 30 °C limit, so no command or event is written.
        const temperature = 18 + (i % 100) / 10;
        try {
          await runtime.telemetry(ids[i % count], [{ temperature }]);
          completed++;
        } catch (error) {
          errors++;
          firstError ??= error;
        }
      }
    };
    const callers = Array.from({ length: concurrency }, caller);
    await sleep(warmup * 1000);
    const before = { ...runtime.stats, completed, sent: next };
    const cpuBefore = threadCpu();
    const t0 = performance.now();
    await sleep(seconds * 1000);
    const after = { ...runtime.stats, completed, sent: next };
    const elapsed = (performance.now() - t0) / 1000;
    const cpu = cpuShare(cpuBefore, threadCpu(), elapsed);
    stop = true;
    await Promise.all(callers);
    await detach?.();
    if (firstError) {
      const text = firstError instanceof Error
        ? firstError.stack ?? String(firstError)
        : String(firstError);
      log(`  first error: ${text.split("\n").slice(0, 6).join("\n    ")}`);
    }

    const heads: Array<{ key: Deno.KvKey; value: unknown }> = [];
    for await (const entry of kv.list({ prefix: ["twins"] })) {
      heads.push({ key: entry.key, value: entry.value });
    }
    const messages = after.completed - before.completed;
    const batches = after.batches - before.batches;
    const turns = after.batchedRequests - before.batchedRequests;
    return {
      devices: count,
      seedSeconds,
      concurrency,
      messagesPerSec: messages / elapsed,
      messages,
      errors,
      batches,
      meanBatch: batches ? turns / batches : 0,
      meanCommitMs: batches ? (after.commitMs - before.commitMs) / batches : 0,
      messagesPerTurn: turns ? messages / turns : 0,
      activations: runtime.activations,
      maxInFlight: options.maxInFlight ?? 2,
      heads,
      cpu,
    };
  } finally {
    await doppel.close();
    kv.close();
    await removeDir(dir);
  }
}
