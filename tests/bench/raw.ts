/**
 * Part 1: the raw Deno KV ceiling. On a fresh file-backed KV, overwrite the twin heads of 10,000
 * twins with the same bytes the runtime writes, as fast as KV takes them: plain atomics of as many
 * sets as fit (up to 1000; fewer when 1000 of the largest head would pass KV's size cap), with 1
 * and with 2 commits in flight, and checked atomics of 100 check+set pairs (the most a runtime
 * batch can carry, since each twin commit checks its head) with 2 in flight, as the runtime's
 * batcher does. The heads are those of twins after one reading, or those a runtime run wrote.
 * Each configuration is measured as the runtime is: a 1 s warm-up, then a 5 s window.
 * @module
 */
import {
  cpuShare,
  deviceIds,
  fmt,
  removeDir,
  sleep,
  storedBytes,
  tempDir,
  threadCpu,
  twinAfterTelemetry,
  twinHeadEntry,
} from "./common.ts";

/** One raw measurement. */
export interface RawResult {
  /** What was measured. */
  label: string;
  /** Entries written per atomic. */
  perAtomic: number;
  /** Atomics in flight. */
  inFlight: number;
  /** Whether each set carried a versionstamp check. */
  checked: boolean;
  /** Entries written per second. */
  entriesPerSec: number;
  /** Atomics committed. */
  commits: number;
  /** Mean milliseconds per commit. */
  meanCommitMs: number;
  /** CPU busy %: the main (JavaScript) thread, other threads, and the busiest threads. */
  cpu: { main: number; others: number; top: string } | null;
}

/** Settings for {@link rawKvCeiling}. */
export interface RawOptions {
  /** Twins whose heads are rewritten (default 10,000). */
  twins?: number;
  /**
   * Head entries to write instead of fresh ones from `encodeTwin(newTwinRecord(...))`: say, the
   * heads a runtime run left behind, so the values are exactly what it wrote.
   */
  entries?: Array<{ key: Deno.KvKey; value: unknown }>;
  /** Seconds per measurement (default 5, as the runtime's). */
  seconds?: number;
  /** Seconds each configuration runs before its measured window (default 1, as the runtime's). */
  warmupSeconds?: number;
  /**
   * Measure only the ceiling the runtime's target is against (bulk sets, 2 in flight), not the
   * other two configurations: for repeating it beside repeated runtime runs.
   */
  ceilingOnly?: boolean;
  /** Prints progress. */
  log?(line: string): void;
}

/** Measures raw KV write throughput with the runtime's twin values; see the module doc. */
export async function rawKvCeiling(options: RawOptions = {}): Promise<RawResult[]> {
  const twins = options.entries?.length ?? options.twins ?? 10_000;
  const seconds = options.seconds ?? 5;
  const warmup = options.warmupSeconds ?? 1;
  const log = options.log ?? (() => {});
  const dir = await tempDir("raw");
  const kv = await Deno.openKv(`${dir}/raw.kv`);
  try {
    const now = Date.now();
    const entries = options.entries ??
      deviceIds("raw", twins).map((id) => twinHeadEntry(twinAfterTelemetry(id, now)));
    const valueBytes = entries.reduce((sum, e) => sum + storedBytes(e.value), 0) / twins;
    const asBytes = entries.filter((e) => e.value instanceof Uint8Array).length;
    log(
      `  ${fmt(twins)} twin heads, ${valueBytes.toFixed(0)} bytes of JSON each on average, ` +
        (asBytes === twins ? "stored as UTF-8 bytes" : `${fmt(asBytes)} of them as UTF-8 bytes`) +
        (options.entries ? " (the heads the runtime wrote)" : " (fresh twins after one reading)"),
    );
    // Up to 1000 sets per atomic, fewer if 1000 of these values would pass KV's 800 KiB cap
    // (kept under it by the margin the runtime's batcher keeps: 760 KiB, 64 bytes a key).
    const largest = Math.max(...entries.map((e) => storedBytes(e.value)));
    const bulk = Math.min(1000, Math.floor(760 * 1024 / (largest + 64)));
    // Write every head once, remembering versionstamps for the checked runs.
    const stamps: string[] = new Array(twins);
    for (let i = 0; i < twins; i += bulk) {
      const atomic = kv.atomic();
      for (let j = i; j < Math.min(i + bulk, twins); j++) {
        atomic.set(entries[j].key, entries[j].value);
      }
      const result = await atomic.commit();
      if (!result.ok) throw new Error("Seeding the raw KV failed.");
      stamps.fill(result.versionstamp, i, Math.min(i + bulk, twins));
    }
    const runs: Array<Pick<RawResult, "label" | "perAtomic" | "inFlight" | "checked">> = [
      { label: `${bulk} sets/atomic, 1 in flight`, perAtomic: bulk, inFlight: 1, checked: false },
      { label: `${bulk} sets/atomic, 2 in flight`, perAtomic: bulk, inFlight: 2, checked: false },
      { label: "100 check+set/atomic, 2 in flight", perAtomic: 100, inFlight: 2, checked: true },
    ];
    const results: RawResult[] = [];
    for (const run of options.ceilingOnly ? [runs[1]] : runs) {
      const result = { ...run, ...(await measure(kv, entries, stamps, run, seconds, warmup)) };
      log(
        `  ${run.label.padEnd(36)} ${fmt(result.entriesPerSec).padStart(9)} entries/s ` +
          `(${fmt(result.commits)} commits, ${result.meanCommitMs.toFixed(2)} ms each` +
          (result.cpu
            ? `; CPU main thread ${result.cpu.main.toFixed(0)}%, others ${
              result.cpu.others.toFixed(0)
            }% [${result.cpu.top}])`
            : ")"),
      );
      results.push(result);
    }
    return results;
  } finally {
    kv.close();
    await removeDir(dir);
  }
}

async function measure(
  kv: Deno.Kv,
  entries: Array<{ key: Deno.KvKey; value: unknown }>,
  stamps: string[],
  run: { perAtomic: number; inFlight: number; checked: boolean },
  seconds: number,
  warmup: number,
): Promise<Pick<RawResult, "entriesPerSec" | "commits" | "meanCommitMs" | "cpu">> {
  // Chunks of `perAtomic` consecutive twins, taken round robin: the atomics in flight never
  // touch the same twin, so no check fails.
  const chunks = Math.floor(entries.length / run.perAtomic);
  let cursor = 0;
  let written = 0;
  let commits = 0;
  let commitMs = 0;
  // The window opens after the warm-up, as the runtime's does: what was written by then is left
  // out.
  let opened = { written, commits, commitMs, cpu: threadCpu(), at: performance.now() };
  const deadline = opened.at + (warmup + seconds) * 1000;
  const open = warmup > 0
    ? sleep(warmup * 1000).then(() => {
      opened = { written, commits, commitMs, cpu: threadCpu(), at: performance.now() };
    })
    : Promise.resolve();
  const lane = async (): Promise<void> => {
    while (performance.now() < deadline) {
      const from = (cursor++ % chunks) * run.perAtomic;
      const atomic = kv.atomic();
      for (let i = from; i < from + run.perAtomic; i++) {
        if (run.checked) atomic.check({ key: entries[i].key, versionstamp: stamps[i] });
        atomic.set(entries[i].key, entries[i].value);
      }
      const t0 = performance.now();
      const result = await atomic.commit();
      commitMs += performance.now() - t0;
      if (!result.ok) throw new Error("A raw checked atomic failed its checks.");
      stamps.fill(result.versionstamp, from, from + run.perAtomic);
      written += run.perAtomic;
      commits++;
    }
  };
  await Promise.all([open, ...Array.from({ length: run.inFlight }, lane)]);
  const elapsed = (performance.now() - opened.at) / 1000;
  const windowCommits = commits - opened.commits;
  return {
    entriesPerSec: (written - opened.written) / elapsed,
    commits: windowCommits,
    meanCommitMs: (commitMs - opened.commitMs) / windowCommits,
    cpu: cpuShare(opened.cpu, threadCpu(), elapsed),
  };
}
