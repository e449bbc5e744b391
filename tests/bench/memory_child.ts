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
import { benchApp, deviceIds, mb, seedDevices, sleep } from "./common.ts";

/** Memory figures at one moment, MiB. */
export interface MemorySample {
  /** Resident set size. */
  rss: number;
  /** V8 heap in use (live objects after the collection). */
  heapUsed: number;
  /** V8 heap committed. */
  heapTotal: number;
  /** Resident anonymous mappings other than the malloc `[heap]`: mostly V8's heap pages. */
  anon: number;
  /** Resident malloc main arena (`[heap]`). */
  malloc: number;
  /** Resident file-backed mappings: the deno binary and code caches. */
  file: number;
}

/** What the child reports. */
export interface MemoryChildResult {
  /** Right after start-up with the app built, before seeding. */
  start: MemorySample;
  /** Before any activation (after seeding in mode `both`), after a last-resort collection. */
  baseline: MemorySample;
  /**
   * Every twin activated, then left idle for 30 s with no forced collection: what `top` shows
   * for a settled server.
   */
  settled: MemorySample & { afterSeconds: number };
  /** Every twin activated and settled, then after ordinary full collections (`gc()` three times). */
  activated: MemorySample;
  /** Every twin activated, after a last-resort collection that also gives back free pages. */
  activatedCompacted: MemorySample;
  /** Twins in memory. */
  activations: number;
  /** Seconds seeding took (0 when another process seeded). */
  seedSeconds: number;
  /** Seconds activating took. */
  activateSeconds: number;
  /** Whether `globalThis.gc` was available. */
  gc: boolean;
  /** Telemetry sends that failed. */
  errors: number;
}

type Gc = (options?: { type?: string; execution?: string; flavor?: string }) => void;

/** Full collections; `lastResort` also shrinks the heap, giving free pages back to the OS. */
async function collectGarbage(lastResort: boolean): Promise<boolean> {
  const gc = (globalThis as { gc?: Gc }).gc;
  if (!gc) return false;
  for (let i = 0; i < 3; i++) {
    gc();
    await sleep(50);
  }
  if (lastResort) gc({ type: "major", execution: "sync", flavor: "last-resort" });
  return true;
}

/** Memory now, with resident memory by mapping kind from /proc smaps. */
async function sample(): Promise<MemorySample> {
  const usage = Deno.memoryUsage();
  let anon = 0, malloc = 0, file = 0;
  try {
    const smaps = await Deno.readTextFile(`/proc/${Deno.pid}/smaps`);
    for (const block of smaps.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
      const head = block.slice(0, block.indexOf("\n"));
      const kb = Number(/\nRss:\s+(\d+) kB/.exec(block)?.[1] ?? 0) * 1024;
      const name = head.trim().split(/\s+/)[5] ?? "";
      if (name === "[heap]") malloc += kb;
      else if (name === "" || name.startsWith("[")) anon += kb;
      else file += kb;
    }
  } catch { /* no /proc: leave zeros */ }
  return {
    rss: mb(usage.rss),
    heapUsed: mb(usage.heapUsed),
    heapTotal: mb(usage.heapTotal),
    anon: mb(anon),
    malloc: mb(malloc),
    file: mb(file),
  };
}

/**
 * Waits `seconds` doing nothing and returns a sample then. V8 gives memory back by itself once a
 * process goes quiet (its memory reducer starts some 10 s after allocation slows down), so this is
 * what `top` shows for a server that has settled.
 */
async function settle(seconds: number): Promise<MemorySample & { afterSeconds: number }> {
  await sleep(seconds * 1000);
  return { ...(await sample()), afterSeconds: seconds };
}

async function main(): Promise<void> {
  const [mode, path, countArg, concurrencyArg] = Deno.args;
  if (mode !== "seed" && mode !== "activate" && mode !== "both") {
    throw new Error(`Unknown mode ${JSON.stringify(mode)}.`);
  }
  const count = Number(countArg ?? 100_000);
  const concurrency = Number(concurrencyArg ?? 1_000);
  const kv = await Deno.openKv(path);
  const doppel = await benchApp(kv, { maxActivations: count + 10_000 });
  try {
    const { runtime } = doppel;
    await collectGarbage(true);
    const start = await sample();

    let t0 = performance.now();
    let seedSeconds = 0;
    if (mode !== "activate") {
      await seedDevices(kv, deviceIds("mem", count), { perAtomic: 300, inFlight: 2 });
      seedSeconds = (performance.now() - t0) / 1000;
    }
    if (mode === "seed") {
      console.log(`BENCH_RESULT ${JSON.stringify({ seedSeconds })}`);
      return;
    }
    const gc = await collectGarbage(true);
    const baseline = await sample();

    // Ids are built one at a time: a list of them is not part of the twins' memory.
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
    const settled = await settle(30);
    await collectGarbage(false);
    const activated = await sample();
    await collectGarbage(true);
    const activatedCompacted = await sample();
    const result: MemoryChildResult = {
      start,
      baseline,
      settled,
      activated,
      activatedCompacted,
      activations: runtime.activations,
      seedSeconds,
      activateSeconds,
      gc,
      errors,
    };
    console.log(`BENCH_RESULT ${JSON.stringify(result)}`);
  } finally {
    await doppel.close();
    kv.close();
  }
}

if (import.meta.main) await main();
