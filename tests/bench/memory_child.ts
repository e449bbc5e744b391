/**
 * Child process of part 4 (run by `memory.ts`, not by hand). Mode `seed` only writes `count`
 * devices and twins to a file-backed KV and exits. Mode `activate` opens that KV, builds the app,
 * activates every twin by sending it one reading, and prints one line `BENCH_RESULT {json}` with
 * resident memory before and after. Mode `both` seeds and activates in the same process. Run with
 * `--v8-flags=--expose-gc` so it can collect garbage before each reading.
 *
 * Args: `<seed|activate|both> <kv path> <count> <concurrency>`.
 * @module
 */
import { createApp } from "../../src/app.ts";
import { systemClock } from "../../src/clock.ts";
import { silentLogger } from "../../src/log.ts";
import { BENCH_SECRET, benchKinds, deviceIds, mb, seedDevices, sleep } from "./common.ts";

/** What the child reports. */
export interface MemoryChildResult {
  /** RSS (MiB) right after start-up, app built, nothing seeded. */
  startRssMb: number;
  /** RSS (MiB) after seeding, before any activation. */
  baselineRssMb: number;
  /** RSS (MiB) with every twin activated. */
  activatedRssMb: number;
  /** V8 heap used (MiB) before and after activation. */
  heapBeforeMb: number;
  /** V8 heap used (MiB) with every twin activated. */
  heapAfterMb: number;
  /** Twins in memory. */
  activations: number;
  /** Seconds seeding took. */
  seedSeconds: number;
  /** Seconds activating took. */
  activateSeconds: number;
  /** Whether `globalThis.gc` was available. */
  gc: boolean;
  /** Telemetry sends that failed. */
  errors: number;
}

async function collectGarbage(): Promise<boolean> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) return false;
  for (let i = 0; i < 3; i++) {
    gc();
    await sleep(50);
  }
  return true;
}

async function main(): Promise<void> {
  const [mode, path, countArg, concurrencyArg] = Deno.args;
  if (mode !== "seed" && mode !== "activate" && mode !== "both") {
    throw new Error(`Unknown mode ${JSON.stringify(mode)}.`);
  }
  const count = Number(countArg ?? 100_000);
  const concurrency = Number(concurrencyArg ?? 1_000);
  const kv = await Deno.openKv(path);
  const doppel = await createApp({
    kv,
    clock: systemClock,
    kinds: await benchKinds(),
    secret: BENCH_SECRET,
    adminToken: "bench-admin-token-0123456789",
    logger: silentLogger,
    runtime: { maxActivations: count + 10_000 },
  });
  const { runtime } = doppel;
  await collectGarbage();
  const startRssMb = mb(Deno.memoryUsage().rss);

  let t0 = performance.now();
  let seedSeconds = 0;
  if (mode !== "activate") {
    await seedDevices(kv, deviceIds("mem", count), { perAtomic: 300, inFlight: 2 });
    seedSeconds = (performance.now() - t0) / 1000;
  }
  if (mode === "seed") {
    console.log(`BENCH_RESULT ${JSON.stringify({ seedSeconds })}`);
    await doppel.close();
    kv.close();
    return;
  }
  // Ids are built one at a time below: a list of them is not part of the twins' memory.
  const gc = await collectGarbage();
  const baselineRssMb = mb(Deno.memoryUsage().rss);
  const heapBeforeMb = mb(Deno.memoryUsage().heapUsed);

  t0 = performance.now();
  let next = 0;
  let errors = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const id = `mem-${String(next++).padStart(6, "0")}`;
      try {
        await runtime.telemetry(id, [{ temperature: 21.5 }]);
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const activateSeconds = (performance.now() - t0) / 1000;
  await collectGarbage();
  const usage = Deno.memoryUsage();
  const result: MemoryChildResult = {
    startRssMb,
    baselineRssMb,
    activatedRssMb: mb(usage.rss),
    heapBeforeMb,
    heapAfterMb: mb(usage.heapUsed),
    activations: runtime.activations,
    seedSeconds,
    activateSeconds,
    gc,
    errors,
  };
  console.log(`BENCH_RESULT ${JSON.stringify(result)}`);
  await doppel.close();
  kv.close();
}

if (import.meta.main) await main();
