/**
 * The actor core under load and contention: grouped commits, the activation bound, idle
 * collection, two runtimes writing the same twin, and the kinds loader refusing broken files.
 * @module
 */
import { testApp } from "./helpers.ts";
import { assert, assertEquals, assertMatch, assertRejects } from "./assert.ts";
import { ADMIN_TOKEN, KINDS } from "./helpers.ts";
import { type AppDeps, createApp, type Doppel } from "../src/app.ts";
import { type Clock, ManualClock } from "../src/clock.ts";
import type { CommandRecord } from "../src/commands/model.ts";
import { DoppelError } from "../src/errors.ts";
import { EventBus } from "../src/events/bus.ts";
import { silentLogger } from "../src/log.ts";
import { encodeTwin, loadTwin } from "../src/storage/twin_store.ts";
import { newTwinRecord, type TwinRecord } from "../src/twin/state.ts";
import { loadKinds } from "../src/twin/loader.ts";
import { TIMER_RETRY_MS } from "../src/twin/runtime.ts";

const wallClock: Clock = { now: () => Date.now() };

/** An app on `kv` (which the caller closes), built with createApp to reach runtime tuning. */
function app(kv: Deno.Kv, options: { clock?: Clock; runtime?: AppDeps["runtime"] } = {}) {
  return createApp({
    kv,
    clock: options.clock ?? wallClock,
    kinds: KINDS,
    secret: "test-secret-0123456789abcdef",
    adminToken: ADMIN_TOKEN,
    logger: silentLogger,
    runtime: options.runtime,
  });
}

/** Runs `fn` with an in-memory KV and the apps it makes, closing them all afterwards. */
async function withKv(
  fn: (kv: Deno.Kv, track: (d: Doppel) => Doppel) => Promise<void>,
): Promise<void> {
  const kv = await Deno.openKv(":memory:");
  const apps: Doppel[] = [];
  try {
    await fn(kv, (d) => {
      apps.push(d);
      return d;
    });
  } finally {
    for (const d of apps) await d.close();
    kv.close();
  }
}

async function registerMany(d: Doppel, ids: string[], kind = "thermostat"): Promise<void> {
  for (const id of ids) await d.registry.register({ id, kind });
}

const range = (n: number, prefix: string) => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

Deno.test("actor: 2,000 concurrent telemetry messages to 200 twins commit in few atomics", async () => {
  await withKv(async (kv, track) => {
    const d = track(await app(kv));
    const ids = range(200, "g");
    await registerMany(d, ids);
    // Registration runs one turn per twin (to set its timers); count from here.
    const before = { ...d.runtime.stats };

    const sends = Array.from(
      { length: 2_000 },
      (_, i) => d.runtime.telemetry(ids[i % 200], [{ id: `m${i}`, temperature: 10 + (i % 20) }]),
    );
    const replies = await Promise.all(sends);
    assert(replies.every((r) => r.accepted === 1 && r.duplicates === 0));

    const batches = d.runtime.stats.batches - before.batches;
    const batchedRequests = d.runtime.stats.batchedRequests - before.batchedRequests;
    assert(batches > 0);
    assert(batches <= 200, `expected grouped commits, got ${batches} atomics for 2,000 messages`);
    assert(batchedRequests <= 2_000);
    assertEquals(d.runtime.activations, 200);

    // All applied: one dedupe record per message id, and each twin shows its latest reading.
    let seen = 0;
    for await (const _ of kv.list({ prefix: ["dedupe"] })) seen++;
    assertEquals(seen, 2_000);
    for (const [n, id] of ids.entries()) {
      const twin = (await loadTwin(kv, id))!.state;
      // The last message sent to twin n was i = 1800 + n.
      assertEquals(twin.telemetry.last, { temperature: 10 + ((1_800 + n) % 20) }, id);
    }
    // A resend of everything is recognised as duplicates.
    const again = await Promise.all(
      Array.from(
        { length: 2_000 },
        (_, i) => d.runtime.telemetry(ids[i % 200], [{ id: `m${i}`, temperature: 99 }]),
      ),
    );
    assertEquals(again.reduce((sum, r) => sum + r.duplicates, 0), 2_000);
  });
});

Deno.test("actor: concurrent full-size telemetry batches to one twin all commit", async () => {
  await withKv(async (kv, track) => {
    const d = track(await app(kv));
    await d.registry.register({ id: "big", kind: "generic" });
    // Each batch alone is valid (500 items, the most allowed, each with an id). Sent together,
    // the second and third wait in the mailbox while the first commits and then share a turn.
    const batch = (m: number) =>
      Array.from({ length: 500 }, (_, i) => ({ id: `m${m}-${i}`, v: i }));
    const results = await Promise.allSettled(
      [0, 1, 2].map((m) => d.runtime.telemetry("big", batch(m))),
    );
    assertEquals(
      results.map((r) => r.status === "fulfilled" ? r.value : String(r.reason)),
      [0, 1, 2].map(() => ({ accepted: 500, duplicates: 0 })),
    );
    let seen = 0;
    for await (const _ of kv.list({ prefix: ["dedupe", "big"] })) seen++;
    assertEquals(seen, 1_500);
  });
});

Deno.test("actor: twins larger than one KV value round-trip through chunks, and shrink back", async () => {
  await withKv(async (kv, track) => {
    const a = track(await app(kv));
    const b = track(await app(kv));
    await a.registry.register({ id: "wide", kind: "generic" });
    const countChunks = async () => {
      let n = 0;
      for await (const _ of kv.list({ prefix: ["twin_chunks", "wide"] })) n++;
      return n;
    };
    // Astral characters are two UTF-16 code units; offsetting by one puts a chunk boundary in
    // the middle of a surrogate pair for one of the two alignments.
    for (const pad of ["", "x"]) {
      const desired = pad + "😀".repeat(7_900);
      const reported = "é".repeat(15_000);
      await a.runtime.patchDesired("wide", { text: desired });
      await a.runtime.patchReported("wide", { text: reported });
      assert(await countChunks() >= 1, "the record is split into chunks");
      const stored = (await loadTwin(kv, "wide"))!.state;
      assertEquals(stored.desired.text, desired);
      assertEquals(stored.reported.text, reported);
      // The other runtime reads it back whole and carries on from it.
      const { version } = await b.runtime.patchReported("wide", { n: pad.length });
      assertEquals(version, stored.version + 1);
    }
    await b.runtime.patchDesired("wide", { text: null });
    await b.runtime.patchReported("wide", { text: null });
    assertEquals(await countChunks(), 0, "leftover chunks are deleted when the record shrinks");
    const small = (await loadTwin(kv, "wide"))!.state;
    assertEquals(small.desired, {});
    assertEquals(small.reported, { n: 1 });
    // And the first runtime, whose cache is stale, still writes correctly on top.
    assertEquals((await a.runtime.patchReported("wide", { n: 2 })).version, small.version + 1);
  });
});

Deno.test("actor: concurrent reported patches to 200 twins lose no update", async () => {
  await withKv(async (kv, track) => {
    const d = track(await app(kv, { runtime: { maxActivations: 50 } }));
    const ids = range(200, "p");
    await registerMany(d, ids, "generic");
    await Promise.all(
      Array.from(
        { length: 2_000 },
        (_, i) => d.runtime.patchReported(ids[i % 200], { [`k${Math.floor(i / 200)}`]: i }),
      ),
    );
    assert(d.runtime.stats.batches < 2_000 / 4, `${d.runtime.stats.batches} atomics`);
    for (const [n, id] of ids.entries()) {
      const twin = (await loadTwin(kv, id))!.state;
      assertEquals(twin.version, 11, id);
      assertEquals(Object.keys(twin.reported).length, 10, id);
      assertEquals(twin.reported.k9, 1_800 + n);
    }
  });
});

Deno.test("actor: the activation bound holds as 50 twins are touched; evicted ones still work", async () => {
  await withKv(async (kv, track) => {
    const d = track(await app(kv, { runtime: { maxActivations: 10 } }));
    const ids = range(50, "b");
    await registerMany(d, ids);
    for (const id of ids) {
      const { version } = await d.runtime.patchReported(id, { firmware: "1.0" });
      assertEquals(version, 2);
      assert(d.runtime.activations <= 10, `${d.runtime.activations} activations`);
    }
    assertEquals(d.runtime.activations, 10);
    // The least recently used went first: the first twins are no longer in memory.
    assertEquals(d.runtime.peek("b0"), undefined);
    assert(d.runtime.peek("b49") !== undefined);

    // Evicted twins reload from KV and carry on from their stored version.
    for (const id of ids.slice(0, 20)) {
      const { version } = await d.runtime.patchReported(id, { firmware: "2.0" });
      assertEquals(version, 3, id);
      assert(d.runtime.activations <= 10);
    }
  });
});

Deno.test("actor: under the bound, a twin used again outlives one that was not", async () => {
  await withKv(async (kv, track) => {
    const d = track(await app(kv, { runtime: { maxActivations: 3 } }));
    await registerMany(d, ["a", "b", "c", "d"]);
    for (const id of ["a", "b", "c"]) await d.runtime.patchReported(id, { firmware: "1" });
    // `a` is the oldest activation but has just been used again: `b` is the least recently used.
    await d.runtime.patchReported("a", { firmware: "2" });
    await d.runtime.patchReported("d", { firmware: "1" });
    assertEquals(d.runtime.activations, 3);
    assert(d.runtime.peek("a") !== undefined, "a was used again and stays");
    assertEquals(d.runtime.peek("b"), undefined);
    assert(d.runtime.peek("c") !== undefined);
    assert(d.runtime.peek("d") !== undefined);
  });
});

Deno.test("actor: the activation bound is restored once a concurrent burst has settled", async () => {
  await withKv(async (kv, track) => {
    const d = track(await app(kv, { runtime: { maxActivations: 10 } }));
    const ids = range(50, "b");
    await registerMany(d, [...ids, "late"]);
    // 50 twins busy at once: all 50 need an activation while their turns run.
    await Promise.all(ids.map((id) => d.runtime.patchReported(id, { mode: "auto" })));
    for (const id of ids) {
      assertEquals((await loadTwin(kv, id))!.state.reported.mode, "auto", id);
    }
    // Every turn has committed and been answered: nothing is busy, so the bound should hold.
    assert(
      d.runtime.activations <= 10,
      `${d.runtime.activations} activations remain after the burst settled (max 10)`,
    );
    // Touching another twin trims the directory back within the bound in any case.
    await d.runtime.patchReported("late", { mode: "off" });
    assert(d.runtime.activations <= 10, `${d.runtime.activations} activations after a new touch`);
  });
});

Deno.test("actor: idle collection passivates twins unused for idleMs", async () => {
  await withKv(async (kv, track) => {
    const clock = new ManualClock();
    const d = track(await app(kv, { clock, runtime: { idleMs: 60_000 } }));
    await registerMany(d, ["i1", "i2", "i3"]);
    for (const id of ["i1", "i2", "i3"]) await d.runtime.patchReported(id, { firmware: "1" });
    assertEquals(d.runtime.activations, 3);
    assertEquals(d.runtime.collectIdle(), 0, "nothing is idle yet");

    clock.advance(30_000);
    await d.runtime.patchReported("i2", { firmware: "2" });
    clock.advance(30_001);
    // i1 and i3 have been idle 60.001 s; i2 only 30.001 s.
    assertEquals(d.runtime.collectIdle(), 2);
    assertEquals(d.runtime.activations, 1);
    assertEquals(d.runtime.peek("i1"), undefined);
    assertEquals(d.runtime.peek("i3"), undefined);
    assert(d.runtime.peek("i2") !== undefined);

    // A passivated twin comes back on its next message with its stored state.
    const { version } = await d.runtime.patchReported("i1", { firmware: "3" });
    assertEquals(version, 3);
    assertEquals(d.runtime.activations, 2);
    assertEquals((await loadTwin(kv, "i1"))!.state.reported, { firmware: "3" });

    clock.advance(60_001);
    assertEquals(d.runtime.collectIdle(), 2);
    assertEquals(d.runtime.activations, 0);
  });
});

Deno.test("actor: two runtimes on one KV patch one twin alternately without losing updates", async () => {
  await withKv(async (kv, track) => {
    const a = track(await app(kv));
    const b = track(await app(kv));
    await a.registry.register({ id: "shared", kind: "generic" });
    let last = 1;
    for (let i = 0; i < 20; i++) {
      const runtime = i % 2 === 0 ? a.runtime : b.runtime;
      const { version } = await runtime.patchReported("shared", { [`k${i}`]: i });
      assertEquals(version, last + 1, `patch ${i}`);
      last = version;
    }
    const twin = (await loadTwin(kv, "shared"))!.state;
    assertEquals(twin.version, 21);
    assertEquals(Object.keys(twin.reported).length, 20);
    // Metadata versions follow the patches one by one.
    for (let i = 0; i < 20; i++) {
      assertEquals((twin.metadata.reported[`k${i}`] as { version: number }).version, i + 2);
    }
  });
});

Deno.test("actor: two runtimes on one KV patch one twin concurrently without losing updates", async () => {
  await withKv(async (kv, track) => {
    const a = track(await app(kv));
    const b = track(await app(kv));
    await a.registry.register({ id: "shared", kind: "generic" });
    // Warm both caches so both start from the same versionstamp.
    await a.runtime.patchReported("shared", { warm: "a" });
    await b.runtime.patchReported("shared", { warm: "b" });

    const n = 60;
    const results = await Promise.all(
      Array.from(
        { length: n },
        (_, i) => (i % 2 === 0 ? a : b).runtime.patchReported("shared", { [`c${i}`]: i }),
      ),
    );
    const versions = results.map((r) => r.version);
    assertEquals(new Set(versions).size, n, "every patch got its own version");
    assertEquals(Math.min(...versions), 4);
    assertEquals(Math.max(...versions), 3 + n);
    // Within each runtime, later sends commit at later versions.
    for (const parity of [0, 1]) {
      const own = versions.filter((_, i) => i % 2 === parity);
      for (let i = 1; i < own.length; i++) {
        assert(own[i] > own[i - 1], `versions from runtime ${parity}: ${own}`);
      }
    }
    const twin = (await loadTwin(kv, "shared"))!.state;
    assertEquals(twin.version, 3 + n);
    for (let i = 0; i < n; i++) assertEquals(twin.reported[`c${i}`], i);
  });
});

Deno.test("actor: commands created from two runtimes at once all get their own queue position", async () => {
  await withKv(async (kv, track) => {
    const a = track(await app(kv));
    const b = track(await app(kv));
    await a.registry.register({ id: "q", kind: "thermostat" });
    const created = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        (i % 2 === 0 ? a : b).runtime.createCommand("q", {
          name: "reboot",
          payload: { delaySeconds: i },
        })),
    );
    const seqs = created.map((c) => c.command.seq).sort((x, y) => x - y);
    assertEquals(seqs, Array.from({ length: 30 }, (_, i) => i + 1));
    const stored: CommandRecord[] = [];
    for await (const entry of kv.list<CommandRecord>({ prefix: ["commands", "q"] })) {
      stored.push(entry.value);
    }
    assertEquals(stored.length, 30);
    const twin = (await loadTwin(kv, "q"))!.state;
    assertEquals(twin.commands.pending.length, 30);
    assertEquals(twin.commands.nextSeq, 31);
    // Every stored command is the one its creator was told about.
    for (const { command } of created) {
      assertEquals(stored.find((s) => s.seq === command.seq)?.id, command.id);
    }
  });
});

Deno.test("actor: a stale cache does not hide another runtime's command from delivery", async () => {
  await withKv(async (kv, track) => {
    const a = track(await app(kv));
    const b = track(await app(kv));
    await a.registry.register({ id: "s", kind: "thermostat" });
    // a caches the twin with no commands.
    assertEquals(await a.runtime.deliverCommands("s"), []);
    const { command } = await b.runtime.createCommand("s", { name: "reboot", payload: {} });
    // a's turn changes nothing on its cached state, so it must check it is still current.
    const delivered = await a.runtime.deliverCommands("s");
    assertEquals(delivered.map((c) => c.id), [command.id]);
    assertEquals((await b.runtime.getCommand("s", command.id))?.status, "delivered");
  });
});

Deno.test("actor: replays after conflicts keep handlers, dedupe and idempotency exact", async () => {
  await withKv(async (kv, track) => {
    const a = track(await app(kv));
    const b = track(await app(kv));
    await a.registry.register({ id: "x", kind: "thermostat" });
    await a.runtime.patchReported("x", { firmware: "1" });
    await b.runtime.patchReported("x", { firmware: "2" });

    // Hot readings through both: the thermostat cools once, not once per runtime.
    const hot = await Promise.all(
      [a, b, a, b].map((d) => d.runtime.telemetry("x", [{ temperature: 45 }])),
    );
    assert(hot.every((r) => r.accepted === 1));
    let twin = (await loadTwin(kv, "x"))!.state;
    assertEquals(twin.commands.pending.map((c) => c.name), ["cool"]);

    // The same message id through both: applied once.
    const same = await Promise.all(
      [a, b, a, b].map((d) => d.runtime.telemetry("x", [{ id: "same", temperature: 20 }])),
    );
    assertEquals(same.reduce((n, r) => n + r.accepted, 0), 1);
    assertEquals(same.reduce((n, r) => n + r.duplicates, 0), 3);

    // The same Idempotency-Key through both: one command.
    const created = await Promise.all(
      [a, b, a, b].map((d) =>
        d.runtime.createCommand("x", { name: "reboot", payload: {}, idempotencyKey: "k1" })
      ),
    );
    assertEquals(new Set(created.map((c) => c.command.id)).size, 1);
    assertEquals(created.filter((c) => c.created).length, 1);
    twin = (await loadTwin(kv, "x"))!.state;
    assertEquals(twin.commands.pending.map((c) => c.name), ["cool", "reboot"]);
  });
});

Deno.test("actor: If-Match is judged against the stored version, not a stale cache", async () => {
  await withKv(async (kv, track) => {
    const a = track(await app(kv));
    const b = track(await app(kv));
    await a.registry.register({ id: "m", kind: "thermostat" });
    await a.runtime.patchDesired("m", { mode: "heat" }); // a caches version 2
    const current = (await b.runtime.patchDesired("m", { mode: "cool" })).version; // 3
    assertEquals(current, 3);
    // a's cache says 2, but 3 is current: accepted.
    const next = await a.runtime.patchDesired("m", { mode: "off" }, current);
    assertEquals(next.version, 4);
    // b's cache says 3, but 4 is current: refused with 412, and nothing changes.
    const error = await assertRejects(() => b.runtime.patchDesired("m", { mode: "auto" }, current));
    assert(error instanceof DoppelError);
    assertEquals(error.code, "precondition_failed");
    const twin = (await loadTwin(kv, "m"))!.state;
    assertEquals([twin.version, twin.desired.mode], [4, "off"]);
  });
});

Deno.test("actor: messages to an unknown twin fail with not_found", async () => {
  await withKv(async (kv, track) => {
    const d = track(await app(kv));
    const error = await assertRejects(() => d.runtime.patchReported("nobody", { a: 1 }));
    assert(error instanceof DoppelError);
    assertEquals(error.code, "not_found");
  });
});

Deno.test("actor: a message whose turn fails unexpectedly fails alone; the others in its turn apply", async () => {
  await withKv(async (kv, track) => {
    const d = track(await app(kv));
    await d.registry.register({ id: "g1", kind: "generic" });
    // Nested far past what the transports let in (they refuse more than 32 levels), so walking
    // it overflows the stack inside the turn.
    const deep = JSON.parse("[".repeat(120_000) + "]".repeat(120_000));
    d.runtime.peek("g1")?.invalidate(); // The next turn loads first: the three share it.
    const [first, bad, last] = await Promise.allSettled([
      d.runtime.telemetry("g1", [{ t: 1 }]),
      d.runtime.telemetry("g1", [{ x: deep }]),
      d.runtime.telemetry("g1", [{ t: 2 }]),
    ]);
    assertEquals(first.status, "fulfilled");
    assertEquals(last.status, "fulfilled");
    assert(bad.status === "rejected" && bad.reason instanceof DoppelError, String(bad));
    assertEquals(bad.reason.code, "internal");
    assertEquals((await loadTwin(kv, "g1"))?.state.telemetry.last, { t: 2 });
  });
});

// ---------------------------------------------------------------------------------------------
// The kinds loader
// ---------------------------------------------------------------------------------------------

const VALID_KIND = (name: string) =>
  `import { defineTwin, z } from "doppel";
export default defineTwin({
  kind: "${name}",
  telemetry: z.object({ v: z.number() }),
  desired: z.object({}),
  reported: z.object({}),
});
`;

async function withKindsDir(
  files: Record<string, string>,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "doppel-kinds-" });
  try {
    for (const [name, text] of Object.entries(files)) {
      await Deno.writeTextFile(`${dir}/${name}`, text);
    }
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function loadError(dir: string): Promise<Error> {
  const error = await assertRejects(() => loadKinds(dir));
  assert(error instanceof Error, `not an Error: ${error}`);
  return error;
}

Deno.test("loader: a folder of valid kinds loads them all; tests and non-code are skipped", async () => {
  await withKindsDir({
    "alpha.ts": VALID_KIND("alpha"),
    "beta.ts": VALID_KIND("beta"),
    "alpha_test.ts": "throw new Error('a test file must not be imported');",
    "README.md": "# not code",
  }, async (dir) => {
    const kinds = await loadKinds(dir);
    assertEquals([...kinds.keys()].sort(), ["alpha", "beta"]);
    assertEquals(kinds.get("alpha")?.__doppelKind, true);
  });
});

Deno.test("loader: a kind file with a syntax error is named in the error", async () => {
  await withKindsDir({
    "good.ts": VALID_KIND("good"),
    "broken.ts":
      `import { defineTwin, z } from "doppel";\nexport default defineTwin({ kind: "x",, });\n`,
  }, async (dir) => {
    const error = await loadError(dir);
    assertMatch(error.message, /broken\.ts/);
  });
});

Deno.test("loader: a default export not made by defineTwin is named in the error", async () => {
  await withKindsDir({
    "plain.ts": `import { z } from "doppel";
export default { kind: "plain", telemetry: z.object({}), desired: z.object({}), reported: z.object({}) };
`,
  }, async (dir) => {
    const error = await loadError(dir);
    assertMatch(error.message, /plain\.ts/);
    assertMatch(error.message, /defineTwin/);
  });
  await withKindsDir({ "nodefault.ts": `export const kind = 1;\n` }, async (dir) => {
    assertMatch((await loadError(dir)).message, /nodefault\.ts/);
  });
});

Deno.test("loader: a kind file that throws while loading is named in the error", async () => {
  await withKindsDir({
    "badname.ts": VALID_KIND("Bad Name"),
  }, async (dir) => {
    const error = await loadError(dir);
    assertMatch(error.message, /badname\.ts/);
    assertMatch(error.message, /Bad Name/);
  });
  await withKindsDir({
    "missing.ts": `import { nothing } from "./not-there.ts";\nexport default nothing;\n`,
  }, async (dir) => {
    assertMatch((await loadError(dir)).message, /missing\.ts/);
  });
});

Deno.test("loader: two files defining the same kind, an empty folder, a missing folder", async () => {
  await withKindsDir({
    "a.ts": VALID_KIND("same"),
    "b.ts": VALID_KIND("same"),
  }, async (dir) => {
    const error = await loadError(dir);
    assertMatch(error.message, /b\.ts/);
    assertMatch(error.message, /"same"/);
  });
  await withKindsDir({}, async (dir) => {
    assertMatch((await loadError(dir)).message, /no kind files/);
  });
  const missing = await loadError("/nonexistent/doppel-twins-folder");
  assertMatch(missing.message, /doppel-twins-folder/);
});

Deno.test("actor: idle twins in a crowded directory keep their state packed and lose nothing", async () => {
  const t = await testApp({ runtime: { packAbove: 2 } });
  try {
    const ids = ["p1", "p2", "p3", "p4", "p5"];
    for (const id of ids) await t.register({ id });
    for (let round = 1; round <= 3; round++) {
      for (const id of ids) {
        const { version } = await t.runtime.patchReported(id, { firmware: `v${round}` });
        assertEquals(version, round + 1, `${id} round ${round}`);
      }
    }
    // Packed activations are still activations: nothing was reloaded from scratch or lost.
    assertEquals(t.runtime.activations, 5);
    for (const id of ids) {
      const twin = await (await t.op("GET", `/api/v1/twins/${id}`)).json();
      assertEquals(twin.reported, { firmware: "v3" });
    }
  } finally {
    await t.dispose();
  }
});

Deno.test("storage: a twin with every field away from its default loads back the same", async () => {
  await withKv(async (kv) => {
    const now = Date.parse("2026-11-27T06:00:00.000Z");
    const record: TwinRecord = {
      ...newTwinRecord("every", "generic", now),
      version: 7,
      desired: { target: 21 },
      reported: { target: 20 },
      metadata: {
        desired: { target: { updatedAt: "2026-11-27T06:00:01.000Z", version: 7 } },
        reported: { target: { updatedAt: "2026-11-27T06:00:02.000Z", version: 6 } },
      },
      telemetry: { last: { temperature: 20.5 }, lastAt: "2026-11-27T06:00:03.000Z" },
      connection: { status: "online", since: "2026-11-27T06:00:00.000Z", lastSeenAt: null },
      memory: { lastCoolAt: now },
      commands: { nextSeq: 3, pending: [] },
      eventSeq: 4,
      history: { p: { temperature: [1, 2, 3] }, s: 2 },
      rules: { hot: { active: false, since: null } },
      alarms: {},
      presence: { sessions: {}, httpUntil: now + 60_000 },
      desiredAcked: 5,
      desiredTombstones: [{ path: ["old"], version: 6 }],
      tombstoneHorizon: 2,
      timerAt: now + 1_000,
    };
    const { mutations } = encodeTwin(record, 1);
    const atomic = kv.atomic();
    for (const mutation of mutations) atomic.mutate(mutation);
    assert((await atomic.commit()).ok);
    assertEquals((await loadTwin(kv, "every"))!.state, record);
    // And one at every default stores none of them, and loads them back.
    const fresh = newTwinRecord("fresh", "generic", now);
    const [first] = encodeTwin(fresh, 1).mutations;
    assert(first.type === "set" && first.value instanceof Uint8Array, "the head is UTF-8 bytes");
    const head = new TextDecoder().decode(first.value);
    assertEquals(Object.keys(JSON.parse(head)).sort(), [
      "connection",
      "createdAt",
      "history",
      "id",
      "kind",
      "telemetry",
      "version",
    ]);
    await kv.set(["twins", "fresh"], first.value);
    assertEquals((await loadTwin(kv, "fresh"))!.state, fresh);
    // A head written as a string (before heads were bytes) still loads.
    await kv.set(["twins", "fresh"], head);
    assertEquals((await loadTwin(kv, "fresh"))!.state, fresh);
  });
});

Deno.test("storage: a record short enough for one value but not as UTF-8 bytes is stored as text", async () => {
  await withKv(async (kv) => {
    const now = Date.parse("2026-11-27T06:00:00.000Z");
    // 25,000 characters of three UTF-8 bytes each: 75,000 bytes, past KV's 64 KiB value cap,
    // while the same text as a string (two bytes a character) fits.
    const record: TwinRecord = {
      ...newTwinRecord("cjk", "generic", now),
      reported: { note: "中".repeat(25_000) },
    };
    const { mutations, chunks } = encodeTwin(record, 1);
    assertEquals(chunks, 1);
    assertEquals(mutations.length, 1);
    assert(mutations[0].type === "set" && !(mutations[0].value instanceof Uint8Array));
    const atomic = kv.atomic();
    for (const mutation of mutations) atomic.mutate(mutation);
    assert((await atomic.commit()).ok);
    assertEquals((await loadTwin(kv, "cjk"))!.state, record);
    // Back to a short record: bytes again, over the text head.
    const short = { ...record, reported: { note: "中" } };
    const again = encodeTwin(short, 1).mutations;
    assert(again[0].type === "set" && again[0].value instanceof Uint8Array);
    await kv.set(again[0].key, again[0].value);
    assertEquals((await loadTwin(kv, "cjk"))!.state, short);
  });
});

Deno.test("bus: a listener that throws is reported, and the listeners after it are still told", () => {
  const failures: string[] = [];
  const bus = new EventBus((error) => failures.push(String(error)));
  const told: string[] = [];
  bus.subscribe("d1", () => {
    throw new Error("listener bug");
  });
  bus.subscribe("d1", (notice) => told.push(`d1 ${notice.type}`));
  bus.subscribe("*", (notice) => told.push(`all ${notice.type}`));
  bus.publish({ type: "twin.changed", deviceId: "d1", version: 2, parts: ["reported"] });
  assertEquals(told, ["d1 twin.changed", "all twin.changed"]);
  assertEquals(failures, ["Error: listener bug"]);
});

Deno.test("timers: a tick that fails is tried again a minute later, not every sweep", async () => {
  await withKv(async (kv, track) => {
    const clock = new ManualClock(Date.parse("2026-01-01T00:00:00Z"));
    // Registered where thermostats are known: its no-data rule sets a timer.
    const first = track(await app(kv, { clock }));
    await first.registry.register({ id: "th1", kind: "thermostat" });
    const timers = async () => {
      const found: number[] = [];
      for await (const e of kv.list({ prefix: ["timers"] })) found.push(e.key[1] as number);
      return found;
    };
    const [dueAt] = await timers();
    assert(dueAt > clock.now(), "the twin has a timer");
    // A process without the thermostat kind cannot run its turn.
    const second = track(
      await createApp({
        kv,
        clock,
        kinds: new Map([...KINDS].filter(([name]) => name !== "thermostat")),
        secret: "test-secret-0123456789abcdef",
        adminToken: ADMIN_TOKEN,
        logger: silentLogger,
      }),
    );
    clock.advance(dueAt + 1 - clock.now());
    assertEquals(await second.runtime.runDueTimers(), 1);
    assertEquals(await timers(), [dueAt + 1 + TIMER_RETRY_MS], "moved a minute on");
    assertEquals(await second.runtime.runDueTimers(), 0, "not due again at once");
    // Where the kind is known, the moved tick still runs what was due (the no-data rule fires,
    // which needs no further timer), and the twin deletes the moved key as stale to it.
    clock.advance(TIMER_RETRY_MS + 1);
    assertEquals(await first.runtime.runDueTimers(), 1);
    const twin = (await loadTwin(kv, "th1"))!.state;
    assertEquals(twin.rules.silent?.active, true);
    assertEquals(await timers(), twin.timerAt === null ? [] : [twin.timerAt]);
  });
});
