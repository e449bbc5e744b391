/**
 * The activation's rare paths, with a counter behaviour of its own: a batch whose writes do not
 * fit in one atomic runs in halves, a single message too large for any atomic gets the
 * behaviour's error, and a storage failure reaches every sender with nothing released.
 * @module
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { type Behavior, type Loaded, type Plan } from "../src/actor/activation.ts";
import {
  type BatcherOptions,
  CommitBatcher,
  type CommitOutcome,
  type CommitRequest,
  type CommitTooLargeError,
} from "../src/actor/commit_batcher.ts";
import { Directory } from "../src/actor/directory.ts";
import { encodeTwin } from "../src/storage/twin_store.ts";
import { newTwinRecord } from "../src/twin/state.ts";

/** A message asks for `writes` KV sets; the state counts messages applied. */
interface Msg {
  writes: number;
  /** Changes nothing and writes nothing (answered with the count). */
  noop?: boolean;
  /** Its turn is planned only after a wait, as for a KV read. */
  read?: boolean;
  /** Its turn checks a versionstamp that is never current: its every commit conflicts. */
  clash?: boolean;
}

/** A counter actor stored under `["counter", id]`; each message writes `writes` extra keys. */
class Counter implements Behavior<number, Msg> {
  released = 0;
  /** Messages in each turn planned, in order. */
  turns: number[] = [];
  /** Turns planning (waiting for their read) now, and the most at once. */
  planning = 0;
  maxPlanning = 0;
  #kv: Deno.Kv;

  constructor(kv: Deno.Kv) {
    this.#kv = kv;
  }

  async load(id: string): Promise<Loaded<number>> {
    const entry = await this.#kv.get<number>(["counter", id]);
    return { state: entry.value ?? 0, versionstamp: entry.versionstamp ?? "" };
  }

  isCurrent(): Promise<boolean> {
    return Promise.resolve(true);
  }

  plan(id: string, current: Loaded<number>, messages: Msg[]): Plan<number> | Promise<Plan<number>> {
    this.turns.push(messages.length);
    if (!messages.some((m) => m.read)) return this.#plan(id, current, messages);
    return (async () => {
      this.maxPlanning = Math.max(this.maxPlanning, ++this.planning);
      await this.#kv.get(["elsewhere"]);
      this.planning--;
      return this.#plan(id, current, messages);
    })();
  }

  #plan(id: string, current: Loaded<number>, messages: Msg[]): Plan<number> {
    if (messages.every((m) => m.noop)) {
      const replies = messages.map(() => ({ ok: true as const, value: current.state }));
      return { state: current.state, replies, commit: null, release() {} };
    }
    const state = current.state + messages.length;
    const mutations: Deno.KvMutation[] = [{ type: "set", key: ["counter", id], value: state }];
    messages.forEach((m, i) => {
      for (let w = 0; w < m.writes; w++) {
        mutations.push({ type: "set", key: ["extra", id, state, i, w], value: w });
      }
    });
    return {
      state,
      replies: messages.map(() => ({ ok: true, value: state })),
      commit: {
        checks: [{
          key: ["counter", id],
          versionstamp: messages.some((m) => m.clash)
            ? "00000000000000000001"
            : current.versionstamp || null,
        }],
        mutations,
        bytes: 64 * mutations.length,
      },
      release: () => {
        this.released++;
      },
    };
  }

  notFound(id: string): Error {
    return new Error(`No ${id}.`);
  }

  tooLarge(error: CommitTooLargeError): Error {
    return new RangeError(`Too large: ${error.message}`);
  }
}

async function withDirectory(
  fn: (d: Directory<number, Msg>, behavior: Counter, kv: Deno.Kv) => Promise<void>,
  kvOverride?: (kv: Deno.Kv) => Deno.Kv,
  options: BatcherOptions = {},
  maxReplays?: number,
): Promise<void> {
  const kv = await Deno.openKv(":memory:");
  try {
    const behavior = new Counter(kv);
    // At most 10 mutations an atomic, so a few messages of 3 writes each overflow it.
    const batcher = new CommitBatcher(kvOverride ? kvOverride(kv) : kv, {
      maxMutations: 10,
      ...options,
    });
    const directory = new Directory<number, Msg>({
      behavior,
      batcher,
      maxReplays,
      now: () => Date.now(),
    });
    await fn(directory, behavior, kv);
    await batcher.drain();
  } finally {
    kv.close();
  }
}

Deno.test("activation: a batch too large for one atomic runs in halves, in order, each applied once", async () => {
  await withDirectory(async (directory, behavior, kv) => {
    // The first message starts a turn alone; the next five wait and form one batch of 5 × 4
    // mutations (with the head), more than 10: it must be split until each part fits.
    const replies = await Promise.all(
      Array.from({ length: 6 }, () => directory.send("a", { writes: 3 })),
    );
    // 1 alone; then 5 (16 mutations) refused whole and run as 3 (10) and 2 (7), in order.
    assertEquals(replies, [1, 4, 4, 4, 6, 6]);
    assertEquals(behavior.turns, [1, 5, 3, 2]);
    assertEquals(behavior.released, 3, "the refused turn released nothing");
    assertEquals((await kv.get(["counter", "a"])).value, 6);
    let extras = 0;
    for await (const _ of kv.list({ prefix: ["extra", "a"] })) extras++;
    assertEquals(extras, 18, "every message's writes landed once");
  });
});

Deno.test("activation: with the batcher's queue full, a turn waits to plan, and messages arriving meanwhile join it", async () => {
  await withDirectory(
    async (directory, behavior) => {
      await Promise.all(["a", "b", "c"].map((id) => directory.send(id, { writes: 0 })));
      behavior.turns = [];
      // a's commit goes in flight and b's plan fills the queue (one request), so c waits before
      // planning: its later messages join its first in one turn, rather than a turn of 1 then 3.
      const replies = await Promise.all([
        directory.send("a", { writes: 0 }),
        directory.send("b", { writes: 0 }),
        ...Array.from({ length: 4 }, () => directory.send("c", { writes: 0 })),
      ]);
      assertEquals(behavior.turns, [1, 1, 4]);
      assertEquals(replies, [2, 2, 5, 5, 5, 5]);
    },
    undefined,
    { maxInFlight: 1, maxQueued: 1 },
  );
});

Deno.test("activation: many actors waiting for the batcher's room all get their turn", async () => {
  await withDirectory(
    async (directory) => {
      const ids = Array.from({ length: 50 }, (_, i) => `w${i}`);
      await Promise.all(ids.map((id) => directory.send(id, { writes: 0 })));
      // Three messages each, far more than the one queued request the batcher makes room for: a
      // turn given room must take it, or those given room queue again behind the rest and nothing
      // is left to commit and make room.
      const sends = ids.flatMap((id) => [1, 2, 3].map(() => directory.send(id, { writes: 0 })));
      // And turns with nothing to write, which queue nothing that could make room.
      const idle = ids.map((id) => `i${id}`);
      await Promise.all(idle.map((id) => directory.send(id, { writes: 0 })));
      sends.push(...idle.map((id) => directory.send(id, { writes: 0, noop: true })));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stuck = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("Turns waiting for room never ran.")), 10_000);
      });
      try {
        const replies = await Promise.race([Promise.all(sends), stuck]) as number[];
        assertEquals(replies.length, 200);
        for (const id of ids) assertEquals(await directory.send(id, { writes: 0 }), 5);
      } finally {
        clearTimeout(timer);
      }
    },
    undefined,
    { maxInFlight: 1, maxQueued: 1 },
  );
});

Deno.test("activation: one message too large for any atomic gets the behaviour's error; the actor goes on", async () => {
  await withDirectory(async (directory, _behavior, kv) => {
    const error = await assertRejects(() => directory.send("b", { writes: 20 }));
    assert(error instanceof RangeError && error.message.startsWith("Too large:"), String(error));
    assertEquals((await kv.get(["counter", "b"])).value, null, "nothing written");
    assertEquals(await directory.send("b", { writes: 1 }), 1);
  });
});

/** `kv`, but an atomic's commit throws a disk error whenever `fails()` says so at commit time. */
function failingCommits(kv: Deno.Kv, fails: () => boolean): Deno.Kv {
  return new Proxy(kv, {
    get(target, name) {
      if (name !== "atomic") return Reflect.get(target, name, target);
      return () => {
        const atomic = target.atomic();
        const commit = atomic.commit.bind(atomic);
        atomic.commit = () => fails() ? Promise.reject(new Error("disk I/O error")) : commit();
        return atomic;
      };
    },
  });
}

Deno.test("activation: a storage failure reaches every sender of the batch, and nothing is released", async () => {
  let fail = true;
  // A KV whose atomics throw (a disk error, say) until told otherwise.
  const failing = (kv: Deno.Kv): Deno.Kv => failingCommits(kv, () => fail);
  await withDirectory(async (directory, behavior, kv) => {
    const sends = Array.from({ length: 3 }, () => directory.send("c", { writes: 0 }));
    const outcomes = await Promise.allSettled(sends);
    assert(
      outcomes.every((o) => o.status === "rejected" && /disk I\/O error/.test(String(o.reason))),
      JSON.stringify(outcomes.map((o) => o.status)),
    );
    assertEquals(behavior.released, 0);
    assertEquals((await kv.get(["counter", "c"])).value, null);
    fail = false;
    // The activation reloads and carries on once storage works again.
    assertEquals(await directory.send("c", { writes: 0 }), 1);
  }, failing);
});

Deno.test("activation: when storage fails for the first half of a split batch, the second half fails with it", async () => {
  let commits = 0;
  // The first atomic commits; every later one fails (a disk error, say).
  const failingAfterOne = (kv: Deno.Kv): Deno.Kv => failingCommits(kv, () => ++commits > 1);
  await withDirectory(async (directory, behavior, kv) => {
    // 1 alone commits; then 5 (too large) split into 3, which fails, and 2, which must not run.
    const outcomes = await Promise.allSettled(
      Array.from({ length: 6 }, () => directory.send("d", { writes: 3 })),
    );
    assertEquals(outcomes.map((o) => o.status), [
      "fulfilled",
      "rejected",
      "rejected",
      "rejected",
      "rejected",
      "rejected",
    ]);
    assertEquals(behavior.turns, [1, 5, 3], "the second half was never run");
    assertEquals((await kv.get(["counter", "d"])).value, 1);
  }, failingAfterOne);
});

Deno.test("activation: turns let through the batcher's room hold their place until their request is queued", async () => {
  await withDirectory(
    async (directory, behavior) => {
      const ids = Array.from({ length: 40 }, (_, i) => `a${i}`);
      await Promise.all([...ids, "s0", "s1"].map((id) => directory.send(id, { writes: 0 })));
      // s0's commit goes in flight and s1 fills the queue; 40 turns whose plans must wait for a
      // read wait for room. Let through one by one, they must not all be planning at once.
      await Promise.all([
        directory.send("s0", { writes: 0 }),
        directory.send("s1", { writes: 0 }),
        ...ids.map((id) => directory.send(id, { writes: 0, read: true })),
      ]);
      assert(behavior.maxPlanning <= 2, `${behavior.maxPlanning} turns were planning at once`);
    },
    undefined,
    { maxInFlight: 1, maxQueued: 1 },
  );
});

for (const maxReplays of [0, 2]) {
  Deno.test(`activation: with maxReplays ${maxReplays}, a turn that always conflicts is planned ${maxReplays + 1} time${maxReplays === 0 ? "" : "s"}`, async () => {
    await withDirectory(
      async (directory, behavior) => {
        await directory.send("a", { writes: 0 }); // Loaded: the next turn is planned at once.
        behavior.turns = [];
        await assertRejects(() => directory.send("a", { writes: 0, clash: true }));
        assertEquals(behavior.turns.length, maxReplays + 1);
      },
      undefined,
      {},
      maxReplays,
    );
  });
}

/**
 * Submits `requests` all at once to a batcher with one commit in flight, on a fresh KV; returns
 * their outcomes, how many atomics they took and how many entries are stored under `prefix`.
 */
async function commitAll(
  requests: CommitRequest[],
  prefix: Deno.KvKey,
): Promise<{ outcomes: CommitOutcome[]; atomics: number; stored: number }> {
  const kv = await Deno.openKv(":memory:");
  let atomics = 0;
  const batcher = new CommitBatcher(kv, { maxInFlight: 1, onBatch: () => atomics++ });
  try {
    const outcomes = await Promise.all(requests.map((request) => batcher.submit(request)));
    let stored = 0;
    for await (const _ of kv.list({ prefix })) stored++;
    return { outcomes, atomics, stored };
  } finally {
    await batcher.drain();
    kv.close();
  }
}

Deno.test("batcher: requests whose keys together pass KV's 80 KiB of keys go out in separate atomics, all committed", async () => {
  // 40 requests of 10 keys of ~300 bytes each (message ids as long as the contract allows, on a
  // long device id): about 120 KB of keys in all, well under the other limits.
  const requests = Array.from({ length: 40 }, (_, r) => ({
    checks: [],
    mutations: Array.from({ length: 10 }, (_, i): Deno.KvMutation => ({
      type: "set",
      key: ["dedupe", "d".repeat(128), `${r}-${i}-`.padEnd(128, "m")],
      value: 1,
    })),
    bytes: 10 * 64,
  }));
  const { outcomes, atomics, stored } = await commitAll(requests, ["dedupe"]);
  assert(outcomes.every((o) => o.ok), "every request committed");
  assert(atomics >= 3, `the keys needed at least 3 atomics, took ${atomics}`);
  assertEquals(stored, 400);
});

Deno.test("batcher: twin heads near the size cap on the longest ids all commit: keys count toward KV's 800 KiB too", async () => {
  // 100 twins with ids as long as the contract allows, each head about 7.2 KB of UTF-8 bytes and
  // a dedupe entry under a message id as long as allowed: KV counts each written key twice and
  // each checked key once, about 1.2 KB a request here beyond the values.
  const now = Date.parse("2026-11-27T06:00:00.000Z");
  const requests = Array.from({ length: 100 }, (_, i) => {
    const id = `twin-${i}-`.padEnd(128, "d");
    const record = { ...newTwinRecord(id, "generic", now), reported: { blob: "x".repeat(7200) } };
    const { mutations, bytes } = encodeTwin(record, 1);
    const messageId = `m-${i}-`.padEnd(128, "m");
    mutations.push({ type: "set", key: ["dedupe", id, messageId], value: 1, expireIn: 60_000 });
    return { checks: [{ key: ["twins", id], versionstamp: null }], mutations, bytes: bytes + 64 };
  });
  const { outcomes, atomics, stored } = await commitAll(requests, ["twins"]);
  assert(outcomes.every((o) => o.ok), "every request committed");
  assert(atomics >= 2, `the sizes needed at least 2 atomics, took ${atomics}`);
  assertEquals(stored, 100);
});

Deno.test("batcher: a request with a key past KV's 2 KiB, or keys past 80 KiB, is refused alone", async () => {
  const kv = await Deno.openKv(":memory:");
  const batcher = new CommitBatcher(kv);
  try {
    const longKey = batcher.submit({
      checks: [],
      mutations: [{ type: "set", key: ["telemetry", "d1", "m".repeat(2100)], value: 1 }],
      bytes: 64,
    });
    const manyKeys = batcher.submit({
      checks: [],
      mutations: Array.from({ length: 300 }, (_, i): Deno.KvMutation => ({
        type: "set",
        key: ["dedupe", "d".repeat(128), `${i}`.padEnd(128, "m")],
        value: 1,
      })),
      bytes: 300 * 64,
    });
    const fine = batcher.submit({
      checks: [],
      mutations: [{ type: "set", key: ["counter", "ok"], value: 1 }],
      bytes: 64,
    });
    const one = await assertRejects(() => longKey);
    assert((one as CommitTooLargeError).name === "CommitTooLargeError", String(one));
    assert(/2048-byte limit/.test((one as Error).message), (one as Error).message);
    const all = await assertRejects(() => manyKeys);
    assert(/over the 80000/.test((all as Error).message), (all as Error).message);
    assertEquals((await fine).ok, true, "the request beside them commits");
    assertEquals((await kv.get(["counter", "ok"])).value, 1);
  } finally {
    await batcher.drain();
    kv.close();
  }
});

Deno.test("activation: between the halves of a split batch the actor is not idle, so it is not dropped", async () => {
  await withDirectory(async (directory) => {
    const first = directory.send("a", { writes: 0 });
    // These two wait for the first and share a turn of 1 + 5 + 5 mutations: more than 10, so it
    // runs in halves.
    const half1 = directory.send("a", { writes: 5 });
    const half2 = directory.send("a", { writes: 5 });
    let idleBetween: boolean | undefined;
    // The first half's sender hears back before the second half has started.
    const observed = half1.then(() => (idleBetween = directory.peek("a")?.idle));
    assertEquals(await Promise.all([first, half1, half2]), [1, 2, 3]);
    await observed;
    assertEquals(idleBetween, false);
  });
});
