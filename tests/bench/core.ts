/**
 * Part 2, bound: the actor core's own ceiling. The same `Directory`, activations and
 * `CommitBatcher` as the runtime, under the same load (2,000 callers over 10,000 twins), but each
 * turn does no twin work: it writes the head the runtime wrote for that twin, with the versionstamp
 * check every twin commit carries. So it measures what the runtime cannot go above on this KV,
 * whatever its turns cost: KV takes at most 100 checks a commit, so checked twin commits carry at
 * most 100 twins where the raw ceiling's atomics carry up to 1,000 sets.
 * @module
 */
import type { Behavior, Loaded, Plan } from "../../src/actor/activation.ts";
import { CommitBatcher } from "../../src/actor/commit_batcher.ts";
import { Directory } from "../../src/actor/directory.ts";
import { cpuShare, removeDir, sleep, storedBytes, tempDir, threadCpu } from "./common.ts";

/** What the core run measured. */
export interface CoreResult {
  /** Durable messages per second in the measured window. */
  messagesPerSec: number;
  /** Mean twins per commit. */
  meanBatch: number;
  /** CPU busy % in the window. */
  cpu: { main: number; others: number; top: string } | null;
}

/** Settings for {@link coreCeiling}. */
export interface CoreOptions {
  /** Each twin's head key and the value to write for it (the runtime's heads). */
  entries: Array<{ key: Deno.KvKey; value: unknown }>;
  /** Concurrent callers (default 2,000). */
  concurrency?: number;
  /** Measured seconds (default 4). */
  seconds?: number;
}

/** A twin whose turn only rewrites its head: the state is the head's value. */
class HeadOnly implements Behavior<unknown, null> {
  #kv: Deno.Kv;
  #heads: Map<string, { key: Deno.KvKey; value: unknown }>;

  constructor(kv: Deno.Kv, heads: Map<string, { key: Deno.KvKey; value: unknown }>) {
    this.#kv = kv;
    this.#heads = heads;
  }

  async load(id: string): Promise<Loaded<unknown> | null> {
    const head = this.#heads.get(id)!;
    const entry = await this.#kv.get(head.key);
    return entry.versionstamp === null
      ? null
      : { state: entry.value, versionstamp: entry.versionstamp };
  }

  isCurrent(): Promise<boolean> {
    return Promise.resolve(true);
  }

  plan(id: string, current: Loaded<unknown>, messages: null[]): Plan<unknown> {
    const { key, value } = this.#heads.get(id)!;
    return {
      state: value,
      replies: messages.map(() => ({ ok: true, value: null })),
      commit: {
        checks: [{ key, versionstamp: current.versionstamp }],
        mutations: [{ type: "set", key, value }],
        bytes: storedBytes(value) + 64,
      },
      release() {},
    };
  }

  notFound(id: string): Error {
    return new Error(`Twin ${id} has no head.`);
  }

  tooLarge(): Error {
    return new Error("A head does not fit in one commit.");
  }
}

/** Runs the core with empty turns; see the module doc. */
export async function coreCeiling(options: CoreOptions): Promise<CoreResult> {
  const dir = await tempDir("core");
  const kv = await Deno.openKv(`${dir}/core.kv`);
  const heads = new Map(options.entries.map((e) => [String(e.key[e.key.length - 1]), e]));
  const ids = [...heads.keys()];
  let batches = 0;
  let batched = 0;
  const batcher = new CommitBatcher(kv, {
    onBatch(requests) {
      batches++;
      batched += requests;
    },
  });
  try {
    for (let i = 0; i < options.entries.length; i += 500) {
      const atomic = kv.atomic();
      for (const { key, value } of options.entries.slice(i, i + 500)) atomic.set(key, value);
      await atomic.commit();
    }
    const directory = new Directory<unknown, null>({
      behavior: new HeadOnly(kv, heads),
      batcher,
      now: () => Date.now(),
    });
    let next = 0;
    let completed = 0;
    let stop = false;
    const caller = async (): Promise<void> => {
      while (!stop) {
        await directory.send(ids[next++ % ids.length], null);
        completed++;
      }
    };
    const callers = Array.from({ length: options.concurrency ?? 2_000 }, caller);
    await sleep(1000);
    const before = { completed, batches, batched };
    const cpuBefore = threadCpu();
    const t0 = performance.now();
    await sleep((options.seconds ?? 4) * 1000);
    const elapsed = (performance.now() - t0) / 1000;
    const cpu = cpuShare(cpuBefore, threadCpu(), elapsed);
    const after = { completed, batches, batched };
    stop = true;
    await Promise.all(callers);
    return {
      messagesPerSec: (after.completed - before.completed) / elapsed,
      meanBatch: (after.batched - before.batched) / Math.max(1, after.batches - before.batches),
      cpu,
    };
  } finally {
    await batcher.drain();
    kv.close();
    await removeDir(dir);
  }
}
