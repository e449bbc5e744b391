/**
 * The twin model without I/O: merge patches, deltas, per-leaf metadata, and the pure turn run
 * directly against kinds made by `defineTwin`.
 * @module
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { DoppelError } from "../src/errors.ts";
import {
  applyMergePatch,
  computeDelta,
  type Json,
  type JsonObject,
  type LeafMeta,
  type MetaTree,
  updateMeta,
} from "../src/twin/json.ts";
import { defineTwin, type TwinKind, z } from "../src/mod.ts";
import { newTwinRecord, type TwinRecord } from "../src/twin/state.ts";
import { desiredSince } from "../src/twin/presence.ts";
import { emptyHistory, HistoryWriter, metricView } from "../src/telemetry/history.ts";
import { runTurn, type TurnReads, type TurnResult, type TwinMessage } from "../src/twin/turn.ts";
import thermostat from "../twins/thermostat.ts";

const T0 = Date.parse("2026-11-26T10:00:00.000Z");
const iso = (ms: number) => new Date(ms).toISOString();

// ---------------------------------------------------------------------------------------------
// Merge patch (RFC 7396)
// ---------------------------------------------------------------------------------------------

Deno.test("merge patch: the RFC 7396 appendix A examples", () => {
  const cases: Array<[Json, Json, Json]> = [
    [{ a: "b" }, { a: "c" }, { a: "c" }],
    [{ a: "b" }, { b: "c" }, { a: "b", b: "c" }],
    [{ a: "b" }, { a: null }, {}],
    [{ a: "b", b: "c" }, { a: null }, { b: "c" }],
    [{ a: ["b"] }, { a: "c" }, { a: "c" }],
    [{ a: "c" }, { a: ["b"] }, { a: ["b"] }],
    [{ a: { b: "c" } }, { a: { b: "d", c: null } }, { a: { b: "d" } }],
    [{ a: [{ b: "c" }] }, { a: [1] }, { a: [1] }],
    [["a", "b"], ["c", "d"], ["c", "d"]],
    [{ a: "b" }, ["c"], ["c"]],
    [{ a: "foo" }, null, null],
    [{ a: "foo" }, "bar", "bar"],
    [{ e: null }, { a: 1 }, { e: null, a: 1 }],
    [[1, 2], { a: "b", c: null }, { a: "b" }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
  ];
  for (const [target, patch, expected] of cases) {
    assertEquals(
      applyMergePatch(target, patch),
      expected,
      `${JSON.stringify(target)} + ${JSON.stringify(patch)}`,
    );
  }
});

Deno.test("merge patch: null deletes, nested objects merge, arrays replace whole", () => {
  const target: JsonObject = {
    mode: "auto",
    schedule: { mon: { from: 8, to: 17 }, tue: { from: 9, to: 18 } },
    zones: [1, 2, 3],
  };
  const patch: JsonObject = {
    mode: null,
    schedule: { mon: { to: 16 }, tue: null, wed: { from: 7 } },
    zones: [4],
  };
  assertEquals(applyMergePatch(target, patch), {
    schedule: { mon: { from: 8, to: 16 }, wed: { from: 7 } },
    zones: [4],
  });
  // Deleting an absent key is a no-op, and null never lands in the document.
  assertEquals(applyMergePatch({ a: 1 }, { b: null }), { a: 1 });
  // A patch applied to undefined starts from an empty object.
  assertEquals(applyMergePatch(undefined, { a: { b: null, c: 1 } }), { a: { c: 1 } });
});

Deno.test("merge patch: inputs are never mutated", () => {
  const target: JsonObject = { a: { b: 1, c: [1, 2] }, d: "x" };
  const patch: JsonObject = { a: { b: null, c: [3] }, d: null, e: { f: 1 } };
  const targetCopy = structuredClone(target);
  const patchCopy = structuredClone(patch);
  const result = applyMergePatch(target, patch) as JsonObject;
  assertEquals(target, targetCopy);
  assertEquals(patch, patchCopy);
  // The result does not alias the patch's nested objects either.
  (result.e as JsonObject).f = 2;
  assertEquals(patch, patchCopy);
});

// ---------------------------------------------------------------------------------------------
// Delta
// ---------------------------------------------------------------------------------------------

Deno.test("computeDelta: desired leaves that differ from reported, nested", () => {
  const desired: JsonObject = {
    target: 21,
    same: "x",
    schedule: { mon: { from: 8, to: 17 }, tue: { from: 9 } },
    zones: [1, 2],
    sameZones: [1, 2],
    missing: true,
    shape: { a: 1 },
  };
  const reported: JsonObject = {
    target: 19,
    same: "x",
    schedule: { mon: { from: 8, to: 16 }, tue: { from: 9 } },
    zones: [2, 1],
    sameZones: [1, 2],
    firmware: "1.0.0",
    shape: 5,
  };
  assertEquals(computeDelta(desired, reported), {
    target: 21,
    schedule: { mon: { to: 17 } },
    zones: [1, 2],
    missing: true,
    shape: { a: 1 },
  });
  assertEquals(computeDelta({}, { a: 1 }), {});
  assertEquals(computeDelta({ a: { b: 1 } }, { a: { b: 1, c: 2 } }), {});
});

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

Deno.test("updateMeta: per-leaf updatedAt and version, nested, deletion removes metadata", () => {
  const s1: LeafMeta = { updatedAt: iso(T0), version: 2 };
  const s2: LeafMeta = { updatedAt: iso(T0 + 1000), version: 3 };
  const s3: LeafMeta = { updatedAt: iso(T0 + 2000), version: 4 };
  let meta: MetaTree = {};
  meta = updateMeta(meta, { target: 21, schedule: { mon: { from: 8, to: 17 } }, zones: [1] }, s1);
  assertEquals(meta, {
    target: s1,
    schedule: { mon: { from: s1, to: s1 } },
    zones: s1,
  });
  // Only the touched leaves move on; siblings keep their stamp.
  const before = meta;
  meta = updateMeta(meta, { schedule: { mon: { to: 16 } }, mode: "cool" }, s2);
  assertEquals(meta, {
    target: s1,
    schedule: { mon: { from: s1, to: s2 } },
    zones: s1,
    mode: s2,
  });
  assertEquals(before.schedule, { mon: { from: s1, to: s1 } }, "the input tree is not mutated");
  // Deleting removes the metadata of the leaf, or of a whole subtree.
  meta = updateMeta(meta, { target: null, schedule: { mon: null } }, s3);
  assertEquals(meta, { schedule: {}, zones: s1, mode: s2 });
  meta = updateMeta(meta, { schedule: null }, s3);
  assertEquals(meta, { zones: s1, mode: s2 });
  // A leaf replaced by an object gets per-leaf metadata below it, and the other way round.
  meta = updateMeta(meta, { mode: { primary: "cool" } }, s3);
  assertEquals(meta.mode, { primary: s3 });
  meta = updateMeta(meta, { mode: "off" }, s3);
  assertEquals(meta.mode, s3);
});

// ---------------------------------------------------------------------------------------------
// The turn
// ---------------------------------------------------------------------------------------------

/** A test kind whose handlers do what each test's telemetry asks. */
const lamp: TwinKind = defineTwin({
  kind: "lamp",
  telemetry: z.strictObject({
    lux: z.number().min(0).max(100_000),
    action: z.enum(["none", "throw", "act", "send-then-throw"]).optional(),
  }),
  desired: z.strictObject({
    on: z.boolean().optional(),
    level: z.number().int().min(0).max(100).optional(),
    label: z.string().optional(),
    note: z.string().optional(),
    schedule: z.record(z.string(), z.json()).optional(),
  }),
  reported: z.record(z.string(), z.json()),
  commands: {
    blink: z.strictObject({ times: z.number().int().min(1) }),
  },
  handlers: {
    onTelemetry(ctx, item) {
      if (item.action === "throw") throw new Error("lamp handler exploded");
      if (item.action === "send-then-throw") {
        ctx.sendCommand("blink", { times: 1 });
        ctx.patchDesired({ on: false });
        ctx.setMemory({ poisoned: true });
        throw new Error("after sending");
      }
      if (item.action === "act") {
        ctx.sendCommand("blink", { times: 3 }, { ttl: 120, timeout: 30 });
        ctx.patchDesired({ on: true, level: 40 });
        ctx.setMemory({ ...ctx.memory, acted: (Number(ctx.memory.acted ?? 0)) + 1 });
        ctx.recordEvent("lamp.acted", { lux: item.lux });
      }
    },
  },
});

const NO_READS: TurnReads = { seenMessageIds: new Set(), idempotent: new Map() };

let counter = 0;
function turn(
  record: TwinRecord,
  messages: TwinMessage[],
  options: { now?: number; kind?: TwinKind; reads?: TurnReads } = {},
): TurnResult {
  return runTurn(record, messages, options.reads ?? NO_READS, {
    kind: options.kind ?? lamp,
    now: options.now ?? T0,
    randomId: () => (counter++).toString(16).padStart(8, "0"),
    // History has its own tests (it needs stored rollup chunks read for the turn).
    history: false,
  });
}

function fresh(kind = "lamp"): TwinRecord {
  return newTwinRecord("d1", kind, T0 - 60_000);
}

function okValue(result: TurnResult, index = 0): unknown {
  const reply = result.replies[index];
  if (!reply.ok) throw new Error(`reply ${index} failed: ${reply.error.message}`);
  return reply.value;
}

function errorOf(result: TurnResult, index = 0): DoppelError {
  const reply = result.replies[index];
  if (reply.ok) throw new Error(`reply ${index} succeeded: ${JSON.stringify(reply.value)}`);
  assert(reply.error instanceof DoppelError);
  return reply.error;
}

function fieldsOf(error: DoppelError): string[] {
  return ((error.details as { fields?: Array<{ field: string }> })?.fields ?? []).map((f) =>
    f.field
  );
}

Deno.test("turn: desired and reported patches each bump the version by one, with metadata", () => {
  const r0 = fresh();
  assertEquals(r0.version, 1);
  const t1 = turn(r0, [{ type: "desired", patch: { on: true, level: 50 } }]);
  assert(t1.changed);
  assertEquals(t1.state.version, 2);
  assertEquals(t1.state.desired, { on: true, level: 50 });
  assertEquals(t1.state.metadata.desired, {
    on: { updatedAt: iso(T0), version: 2 },
    level: { updatedAt: iso(T0), version: 2 },
  });
  assert(
    t1.notices.some((n) => n.type === "desired.changed" && n.version === 2),
    "a desired.changed notice is released",
  );

  const t2 = turn(t1.state, [{ type: "reported", patch: { on: true, firmware: "1.2.0" } }], {
    now: T0 + 1000,
  });
  assertEquals(okValue(t2), { version: 3 });
  assertEquals(t2.state.version, 3);
  assertEquals(t2.state.reported, { on: true, firmware: "1.2.0" });
  assertEquals(t2.state.metadata.reported.firmware, { updatedAt: iso(T0 + 1000), version: 3 });
  assertEquals(t2.state.metadata.desired, t1.state.metadata.desired, "desired meta untouched");
  assertEquals(t2.state.connection.lastSeenAt, iso(T0 + 1000));

  // Several patches in one turn: one version each, in order.
  const t3 = turn(t2.state, [
    { type: "desired", patch: { level: 60 } },
    { type: "reported", patch: { level: 60 } },
    { type: "desired", patch: { level: null } },
  ], { now: T0 + 2000 });
  assertEquals(t3.state.version, 6);
  assertEquals((okValue(t3, 0) as TwinRecord).version, 4);
  assertEquals(okValue(t3, 1), { version: 5 });
  assertEquals(t3.state.desired, { on: true });
  assertEquals(t3.state.metadata.desired, { on: { updatedAt: iso(T0), version: 2 } });
  assertEquals(t3.state.metadata.reported.level, { updatedAt: iso(T0 + 2000), version: 5 });

  // A patch that changes nothing does not bump the version.
  const t4 = turn(t3.state, [{ type: "desired", patch: { on: true } }]);
  assertEquals(t4.state.version, 6);
  assertEquals(t4.changed, false);
  assert(t4.state === t3.state);
});

Deno.test("turn: the input record is never mutated", () => {
  const r0 = fresh();
  const copy = structuredClone(r0);
  turn(r0, [
    { type: "desired", patch: { on: true } },
    { type: "reported", patch: { x: 1 } },
    { type: "telemetry", items: [{ lux: 5, action: "act" }] },
    { type: "command.create", name: "blink", payload: { times: 1 } },
  ]);
  assertEquals(r0, copy);
});

Deno.test("turn: a validation failure leaves state untouched and names the field", () => {
  const t0 = turn(fresh(), [{ type: "desired", patch: { on: true } }]);
  const r1 = t0.state;

  const bad = turn(r1, [{ type: "desired", patch: { level: 500, on: false } }]);
  const error = errorOf(bad);
  assertEquals(error.code, "validation_failed");
  assertEquals(error.status, 400);
  assertMatch(error.message, /level/);
  assertEquals(fieldsOf(error), ["level"]);
  assertEquals(bad.changed, false);
  assert(bad.state === r1, "the record is the same object");
  assertEquals(bad.state.desired, { on: true }, "the valid part of the patch is not applied");
  assertEquals(bad.notices, []);

  // An unknown property (strict schema) names it too.
  const unknown = errorOf(turn(r1, [{ type: "desired", patch: { colour: "red" } }]));
  assertEquals(unknown.code, "validation_failed");
  assertMatch(unknown.message + JSON.stringify(unknown.details), /colour/);

  // Not an object at all.
  const notObject = errorOf(turn(r1, [{ type: "reported", patch: [1, 2] }]));
  assertEquals(notObject.code, "bad_request");

  // A failed message in a batch does not undo the good ones around it.
  const mixed = turn(r1, [
    { type: "desired", patch: { level: 10 } },
    { type: "desired", patch: { level: -1 } },
    { type: "desired", patch: { label: "hall" } },
  ]);
  assert(mixed.replies[0].ok && !mixed.replies[1].ok && mixed.replies[2].ok);
  assertEquals(mixed.state.desired, { on: true, level: 10, label: "hall" });
  assertEquals(mixed.state.version, r1.version + 2);
  // Also when the first one fails: the turn goes back to where it started, then goes on.
  // (Over HTTP, the bad reading first marks the device seen and online: that goes back too.)
  const firstBad = turn(r1, [
    { type: "telemetry", items: [{ lux: "bright" }], via: "http" },
    { type: "desired", patch: { label: "hall" } },
  ]);
  assert(!firstBad.replies[0].ok && firstBad.replies[1].ok);
  assertEquals(firstBad.state.desired, { on: true, label: "hall" });
  assertEquals(firstBad.state.version, r1.version + 1);
  assertEquals(firstBad.state.connection, r1.connection);
  assertEquals(firstBad.state.presence, r1.presence);
  assertEquals(firstBad.writes.events, [], "no presence event from the refused reading");
  assertEquals(r1.desired, { on: true }, "the record the turn started from is untouched");

  // Telemetry failing validation names the field and changes nothing.
  const tele = turn(r1, [{ type: "telemetry", items: [{ lux: "bright" }] }]);
  const teleError = errorOf(tele);
  assertEquals(teleError.code, "validation_failed");
  assertEquals(fieldsOf(teleError), ["lux"]);
  assert(tele.state === r1);
  assertEquals(tele.writes.messageIds, []);
});

Deno.test("turn: the 32 KiB cap refuses a patch whole", () => {
  const r0 = fresh();
  // Over the cap in one patch: nothing of it lands, not even the small valid part.
  const big = turn(r0, [{ type: "desired", patch: { on: true, note: "x".repeat(33_000) } }]);
  const error = errorOf(big);
  assertEquals(error.code, "payload_too_large");
  assertEquals(error.status, 413);
  assert(big.state === r0);
  assertEquals(big.state.desired, {});
  assertEquals(big.state.version, 1);

  // Under the cap twice, over it together: the second patch is refused whole.
  const t1 = turn(r0, [{ type: "desired", patch: { label: "a".repeat(20_000) } }]);
  assertEquals(t1.state.version, 2);
  const t2 = turn(t1.state, [{
    type: "desired",
    patch: { on: true, note: "b".repeat(20_000) },
  }]);
  assertEquals(errorOf(t2).code, "payload_too_large");
  assert(t2.state === t1.state);
  assertEquals(Object.keys(t2.state.desired), ["label"]);

  // Multi-byte characters count as bytes, not characters: 12,000 × "é" (2 bytes) + 12,000 ×
  // "€" (3 bytes) is 60 KB in UTF-8 although only 24,000 characters.
  const wide = turn(r0, [{
    type: "reported",
    patch: { a: "é".repeat(12_000), b: "€".repeat(12_000) },
  }]);
  assertEquals(errorOf(wide).code, "payload_too_large");
  assertEquals(wide.state.reported, {});

  // A patch that shrinks a document back under the cap is accepted.
  const t3 = turn(t1.state, [{ type: "desired", patch: { label: null, note: "small" } }]);
  assertEquals(t3.state.desired, { note: "small" });
});

Deno.test("turn: a telemetry batch with one bad item is refused whole", () => {
  const r0 = fresh();
  const result = turn(r0, [{
    type: "telemetry",
    items: [
      { id: "m1", lux: 10 },
      { id: "m2", lux: -5 },
      { id: "m3", lux: 30 },
      "not an object",
    ],
  }]);
  const error = errorOf(result);
  assertEquals(error.code, "validation_failed");
  assertEquals(fieldsOf(error), ["items[1].lux", "items[3]"]);
  assertMatch(error.message, /items\[1\]\.lux/);
  assertEquals(result.changed, false);
  assert(result.state === r0);
  assertEquals(result.state.telemetry, { last: {}, lastAt: null });
  assertEquals(result.writes.messageIds, [], "no id is marked seen");

  // Bad envelope fields count too.
  const badTs = errorOf(
    turn(r0, [{ type: "telemetry", items: [{ lux: 1 }, { lux: 2, ts: "?" }] }]),
  );
  assertEquals(fieldsOf(badTs), ["items[1].ts"]);
  const badId = errorOf(turn(r0, [{ type: "telemetry", items: [{ lux: 1, id: "" }] }]));
  assertEquals(fieldsOf(badId), ["id"]);
  const longId = errorOf(
    turn(r0, [{ type: "telemetry", items: [{ lux: 1, id: "x".repeat(129) }] }]),
  );
  assertEquals(fieldsOf(longId), ["id"]);

  // Too many items or none at all.
  const many = Array.from({ length: 501 }, () => ({ lux: 1 }));
  assertEquals(errorOf(turn(r0, [{ type: "telemetry", items: many }])).code, "payload_too_large");
  assertEquals(errorOf(turn(r0, [{ type: "telemetry", items: [] }])).code, "bad_request");
});

Deno.test("turn: telemetry ids are deduplicated within a batch and against seen ids", () => {
  const r0 = fresh();
  const result = turn(r0, [{
    type: "telemetry",
    items: [
      { id: "a", lux: 1, ts: T0 - 3000 },
      { id: "a", lux: 2, ts: T0 - 2000 },
      { id: "b", lux: 3, ts: T0 - 1000 },
      { lux: 4, ts: T0 - 500 }, // no id: always applied
    ],
  }]);
  assertEquals(okValue(result), { accepted: 3, duplicates: 1 });
  assertEquals(result.writes.messageIds, ["a", "b"]);
  assertEquals(result.state.telemetry.last, { lux: 4 });

  // Across two messages of the same turn.
  const twice = turn(r0, [
    { type: "telemetry", items: [{ id: "x", lux: 7 }] },
    { type: "telemetry", items: [{ id: "x", lux: 8 }] },
  ]);
  assertEquals(okValue(twice, 0), { accepted: 1, duplicates: 0 });
  assertEquals(okValue(twice, 1), { accepted: 0, duplicates: 1 });
  assertEquals(twice.state.telemetry.last, { lux: 7 });
  assertEquals(twice.writes.messageIds, ["x"]);

  // Ids the runtime read as already applied.
  const reads: TurnReads = { seenMessageIds: new Set(["a"]), idempotent: new Map() };
  const seen = turn(r0, [{
    type: "telemetry",
    items: [{ id: "a", lux: 50 }, { id: "c", lux: 60 }],
  }], { reads });
  assertEquals(okValue(seen), { accepted: 1, duplicates: 1 });
  assertEquals(seen.writes.messageIds, ["c"]);
  assertEquals(seen.state.telemetry.last, { lux: 60 });

  // A resend of only seen ids applies nothing but is still acknowledged.
  const resend = turn(r0, [{ type: "telemetry", items: [{ id: "a", lux: 99 }] }], { reads });
  assertEquals(okValue(resend), { accepted: 0, duplicates: 1 });
  assertEquals(resend.state.telemetry.last, {});
  assertEquals(resend.writes.messageIds, []);
});

Deno.test("turn: `last` never goes back in time for an older ts", () => {
  const r0 = fresh();
  const t1 = turn(r0, [{ type: "telemetry", items: [{ lux: 10, ts: T0 - 1000 }] }]);
  assertEquals(t1.state.telemetry, { last: { lux: 10 }, lastAt: iso(T0 - 1000) });

  // An older reading is accepted (it counts) but does not replace `last`.
  const t2 = turn(t1.state, [{ type: "telemetry", items: [{ lux: 99, ts: T0 - 5000 }] }], {
    now: T0 + 10,
  });
  assertEquals(okValue(t2), { accepted: 1, duplicates: 0 });
  assertEquals(t2.state.telemetry, { last: { lux: 10 }, lastAt: iso(T0 - 1000) });
  assertEquals(t2.state.connection.lastSeenAt, iso(T0 + 10), "the device was still heard");

  // Within one batch, out of order: the newest wins. ISO strings are accepted as ts.
  const t3 = turn(r0, [{
    type: "telemetry",
    items: [
      { lux: 1, ts: iso(T0 - 100) },
      { lux: 2, ts: T0 - 900 },
      { lux: 3, ts: T0 - 50 },
    ],
  }]);
  assertEquals(t3.state.telemetry, { last: { lux: 3 }, lastAt: iso(T0 - 50) });

  // An equal ts replaces (the later arrival wins a tie).
  const t4 = turn(t1.state, [{ type: "telemetry", items: [{ lux: 11, ts: T0 - 1000 }] }]);
  assertEquals(t4.state.telemetry.last, { lux: 11 });
});

Deno.test("turn: an insane ts is replaced by the arrival time", () => {
  const r0 = fresh();
  const future = turn(r0, [{ type: "telemetry", items: [{ lux: 1, ts: T0 + 6 * 60_000 }] }]);
  assertEquals(future.state.telemetry.lastAt, iso(T0));

  const ancient = turn(r0, [{ type: "telemetry", items: [{ lux: 2, ts: 0 }] }]);
  assertEquals(ancient.state.telemetry.lastAt, iso(T0));

  const old = turn(r0, [{ type: "telemetry", items: [{ lux: 3, ts: T0 - 31 * 86_400_000 }] }]);
  assertEquals(old.state.telemetry.lastAt, iso(T0));

  // A sane but skewed ts (4 minutes ahead) is kept.
  const skewed = turn(r0, [{ type: "telemetry", items: [{ lux: 4, ts: T0 + 4 * 60_000 }] }]);
  assertEquals(skewed.state.telemetry.lastAt, iso(T0 + 4 * 60_000));

  // No ts at all: arrival time.
  const none = turn(r0, [{ type: "telemetry", items: [{ lux: 5 }] }]);
  assertEquals(none.state.telemetry.lastAt, iso(T0));

  // A far-future ts must not lock `last`: a later sane reading still replaces it.
  const next = turn(future.state, [{ type: "telemetry", items: [{ lux: 6 }] }], { now: T0 + 1 });
  assertEquals(next.state.telemetry.last, { lux: 6 });
});

Deno.test("turn: a handler that throws records handler.failed and keeps the message applied", () => {
  const r0 = fresh();
  const result = turn(r0, [{ type: "telemetry", items: [{ lux: 42, action: "throw" }] }]);
  assertEquals(okValue(result), { accepted: 1, duplicates: 0 });
  assertEquals(result.state.telemetry.last, { lux: 42, action: "throw" });
  assertEquals(result.writes.events.length, 1);
  const event = result.writes.events[0];
  assertEquals(event.type, "handler.failed");
  assertEquals(event.seq, 1);
  assertEquals(event.at, iso(T0));
  assertEquals(event.data, { handler: "onTelemetry", message: "lamp handler exploded" });
  assertEquals(result.state.eventSeq, 1);
  assert(
    result.notices.some((n) =>
      n.type === "log" && n.level === "error" && /lamp handler exploded/.test(n.message)
    ),
    "an error is logged",
  );

  // The wishes it made before throwing are dropped.
  const partial = turn(r0, [{
    type: "telemetry",
    items: [{ lux: 1, action: "send-then-throw" }],
  }]);
  assert(partial.replies[0].ok);
  assertEquals(partial.state.commands.pending, []);
  assertEquals(partial.writes.commands, []);
  assertEquals(partial.state.desired, {});
  assertEquals(partial.state.memory, {});
  assertEquals(partial.state.version, 1);
  assertEquals(partial.writes.events.map((e) => e.type), ["handler.failed"]);
});

Deno.test("turn: handlers' sendCommand, patchDesired, setMemory and recordEvent are applied", () => {
  const r0 = fresh();
  const result = turn(r0, [{ type: "telemetry", items: [{ lux: 700, action: "act" }] }]);
  assertEquals(okValue(result), { accepted: 1, duplicates: 0 });
  // sendCommand
  assertEquals(result.state.commands.pending.length, 1);
  const command = result.state.commands.pending[0];
  assertEquals(command.name, "blink");
  assertEquals(command.payload, { times: 3 });
  assertEquals(command.source, "twin");
  assertEquals(command.status, "queued");
  assertEquals(command.expiresAt, iso(T0 + 120_000));
  assertEquals(command.timeout, 30);
  assertEquals(result.writes.commands, [command]);
  assertEquals(result.state.timerAt, T0 + 120_000, "the expiry timer is set");
  // patchDesired
  assertEquals(result.state.desired, { on: true, level: 40 });
  assertEquals(result.state.version, 2);
  assertEquals(result.state.metadata.desired.level, { updatedAt: iso(T0), version: 2 });
  // setMemory
  assertEquals(result.state.memory, { acted: 1 });
  // recordEvent
  assertEquals(result.writes.events.map((e) => [e.type, e.data]), [["lamp.acted", { lux: 700 }]]);
  assert(result.notices.some((n) => n.type === "command.changed" && n.command.id === command.id));

  // Memory carries over to the next turn.
  const again = turn(result.state, [{ type: "telemetry", items: [{ lux: 700, action: "act" }] }]);
  assertEquals(again.state.memory, { acted: 2 });
  assertEquals(again.state.commands.pending.length, 2);
  assertEquals(again.state.commands.pending.map((c) => c.seq), [1, 2]);
});

Deno.test("turn: thermostat's handler cools a far-too-hot device at once, at most once a minute", () => {
  // The kind's rules (the sustained-overheat alarm) have their own tests; here only the handler.
  const handlerOnly = defineTwin({
    kind: "thermostat",
    telemetry: thermostat.telemetry,
    desired: thermostat.desired,
    reported: thermostat.reported,
    commands: thermostat.commands,
    handlers: thermostat.handlers,
  });
  const r0 = fresh("thermostat");
  const opts = (now: number) => ({ kind: handlerOnly, now });

  // A normal (or merely warm) reading sends nothing.
  const calm = turn(r0, [{ type: "telemetry", items: [{ temperature: 35 }] }], opts(T0));
  assertEquals(calm.state.commands.pending, []);

  const hot = turn(r0, [{ type: "telemetry", items: [{ temperature: 45 }] }], opts(T0));
  assertEquals(hot.state.commands.pending.length, 1);
  const cool = hot.state.commands.pending[0];
  assertEquals(cool.name, "cool");
  assertEquals(cool.payload, { targetTemperature: 22 });
  assertEquals(cool.source, "twin");
  assertEquals(cool.expiresAt, iso(T0 + 300_000));
  assertEquals(cool.timeout, 60);
  assertEquals(hot.state.memory, { lastCoolAt: T0 });
  assertEquals(hot.writes.events.map((e) => e.type), ["overheat"]);

  // Still hot 30 s and 59.999 s later: no second command.
  const t30 = turn(
    hot.state,
    [{ type: "telemetry", items: [{ temperature: 46 }] }],
    opts(T0 + 30_000),
  );
  assertEquals(t30.state.commands.pending.length, 1);
  assertEquals(t30.writes.commands, []);
  const t59 = turn(t30.state, [{ type: "telemetry", items: [{ temperature: 47 }] }], {
    kind: handlerOnly,
    now: T0 + 59_999,
  });
  assertEquals(t59.state.commands.pending.length, 1);

  // Two hot readings in one batch: one command only.
  const batch = turn(r0, [{
    type: "telemetry",
    items: [{ temperature: 50, ts: T0 - 10 }, { temperature: 51 }],
  }], opts(T0));
  assertEquals(batch.state.commands.pending.length, 1);

  // After 60 s it may cool again.
  const t60 = turn(t59.state, [{ type: "telemetry", items: [{ temperature: 46 }] }], {
    kind: handlerOnly,
    now: T0 + 60_000,
  });
  assertEquals(t60.state.commands.pending.length, 2);
  assertEquals(t60.state.commands.pending[1].name, "cool");
  assertEquals(t60.state.memory, { lastCoolAt: T0 + 60_000 });

  // desired.maxTemperature raises the threshold, desired.targetTemperature is the target.
  const tuned = turn(r0, [
    { type: "desired", patch: { maxTemperature: 50, targetTemperature: 20 } },
    { type: "telemetry", items: [{ temperature: 45 }] },
    { type: "telemetry", items: [{ temperature: 51 }] },
  ], opts(T0));
  assertEquals(tuned.state.commands.pending.map((c) => c.payload), [{ targetTemperature: 20 }]);
});

Deno.test("turn: command lifecycle, expiry and the pending cap in the pure turn", () => {
  const r0 = fresh();
  const t1 = turn(r0, [
    { type: "command.create", name: "blink", payload: { times: 1 }, ttl: 10, timeout: 5 },
    { type: "command.create", name: "blink", payload: { times: 2 } },
  ]);
  const first = (okValue(t1, 0) as { command: { id: string } }).command;
  assertEquals(t1.state.timerAt, T0 + 10_000);
  assertEquals(t1.state.commands.nextSeq, 3);

  // Unknown name and bad payload are refused with the field named.
  const bad = turn(t1.state, [
    { type: "command.create", name: "explode" },
    { type: "command.create", name: "blink", payload: { times: 0 } },
  ]);
  assertEquals(fieldsOf(errorOf(bad, 0)), ["name"]);
  assertEquals(fieldsOf(errorOf(bad, 1)), ["payload.times"]);

  // Delivery marks both delivered; the timer moves to the earliest timeout.
  const t2 = turn(t1.state, [{ type: "command.deliver" }], { now: T0 + 1000 });
  const delivered = okValue(t2) as Array<{ id: string; status: string }>;
  assertEquals(delivered.map((c) => c.status), ["delivered", "delivered"]);
  assertEquals(t2.state.timerAt, T0 + 6000);

  // The first answers, the second times out.
  const t3 = turn(t2.state, [{
    type: "command.result",
    commandId: first.id,
    status: "succeeded",
    result: { ok: 1 },
  }], { now: T0 + 2000 });
  assertEquals((okValue(t3) as { status: string }).status, "succeeded");
  assertEquals(t3.state.commands.pending.length, 1);
  // The runtime reads finished commands from KV for the turn: a late result is a conflict…
  const again = turn(
    t3.state,
    [{ type: "command.result", commandId: first.id, status: "failed" }],
    { reads: { ...NO_READS, finishedCommandIds: new Set([first.id]) } },
  );
  assertEquals(errorOf(again).code, "conflict");
  // …and an id that was never issued is unknown.
  const never = turn(t3.state, [{
    type: "command.result",
    commandId: "1-00000000",
    status: "failed",
  }]);
  assertEquals(errorOf(never).code, "not_found");

  // Pending cap: 100.
  let state = r0;
  const creates: TwinMessage[] = Array.from({ length: 100 }, () => ({
    type: "command.create" as const,
    name: "blink",
    payload: { times: 1 },
  }));
  state = turn(state, creates).state;
  assertEquals(state.commands.pending.length, 100);
  const over = turn(state, [{ type: "command.create", name: "blink", payload: { times: 1 } }]);
  assertEquals(errorOf(over).code, "conflict");
  assertEquals(errorOf(over).status, 409);
});

Deno.test("turn: a handler's command refused by the pending cap fails the handler, not the reading", () => {
  const creates: TwinMessage[] = Array.from({ length: 100 }, () => ({
    type: "command.create" as const,
    name: "reboot",
    payload: {},
  }));
  const full = turn(fresh("thermostat"), creates, { kind: thermostat }).state;
  assertEquals(full.commands.pending.length, 100);
  const result = turn(full, [{ type: "telemetry", items: [{ temperature: 45 }] }], {
    kind: thermostat,
  });
  assertEquals(okValue(result), { accepted: 1, duplicates: 0 });
  assertEquals(result.state.telemetry.last, { temperature: 45 });
  assertEquals(result.state.commands.pending.length, 100);
  assertEquals(result.state.memory, {}, "the handler's memory update is dropped with it");
  assertEquals(result.writes.events.map((e) => e.type), ["handler.failed"]);
  assertMatch(JSON.stringify(result.writes.events[0].data), /100 commands waiting/);
});

Deno.test("turn: a handler may destructure its context; a call it keeps for later is ignored", () => {
  let kept: (() => void) | undefined;
  const keeper = defineTwin({
    kind: "keeper",
    telemetry: z.strictObject({ lux: z.number() }),
    desired: z.strictObject({ on: z.boolean().optional() }),
    reported: z.record(z.string(), z.json()),
    commands: { blink: z.strictObject({ times: z.number().int().min(1) }) },
    handlers: {
      onTelemetry({ sendCommand, recordEvent, memory, now }, item) {
        sendCommand("blink", { times: 2 });
        recordEvent("seen", { lux: item.lux, at: now, memory });
        kept = () => recordEvent("too.late");
      },
    },
  });
  const result = turn(fresh("keeper"), [{ type: "telemetry", items: [{ lux: 5 }] }], {
    kind: keeper,
  });
  assertEquals(result.state.commands.pending.map((c) => c.name), ["blink"]);
  assertEquals(result.writes.events.map((e) => e.type), ["seen"]);
  assertEquals(result.writes.events[0].data, { lux: 5, at: T0, memory: {} });
  // The turn is over: a late call neither throws (it would reach no one but the process) nor
  // changes anything.
  kept!();
  assertEquals(result.writes.events.map((e) => e.type), ["seen"]);
});

Deno.test("turn: an async handler is refused as handler.failed; what it asked for is dropped, the reading kept", async () => {
  let later: Promise<void> | undefined;
  const eager = defineTwin({
    kind: "eager",
    telemetry: z.strictObject({ lux: z.number() }),
    desired: z.strictObject({}),
    reported: z.record(z.string(), z.json()),
    handlers: {
      onTelemetry(ctx) {
        ctx.recordEvent("before.await");
        later = (async () => {
          await Promise.resolve();
          ctx.recordEvent("after.await");
        })();
        return later;
      },
    },
  });
  const result = turn(fresh("eager"), [{ type: "telemetry", items: [{ lux: 7 }] }], {
    kind: eager,
  });
  assertEquals(okValue(result), { accepted: 1, duplicates: 0 });
  assertEquals(result.state.telemetry.last, { lux: 7 });
  assertEquals(result.writes.events.map((e) => e.type), ["handler.failed"]);
  assertMatch(JSON.stringify(result.writes.events[0].data), /must be synchronous/);
  await later; // Its late call is ignored, without an unhandled error.
  assertEquals(result.writes.events.map((e) => e.type), ["handler.failed"]);
});

Deno.test("turn: the telemetry notice carries the items applied, not the duplicates", () => {
  const reads: TurnReads = { seenMessageIds: new Set(["m1"]), idempotent: new Map() };
  const result = turn(fresh(), [{
    type: "telemetry",
    items: [{ id: "m0", lux: 1 }, { id: "m1", lux: 2 }, { id: "m2", lux: 3 }, { id: "m0", lux: 4 }],
  }], { reads });
  assertEquals(okValue(result), { accepted: 2, duplicates: 2 });
  const notice = result.notices.find((n) => n.type === "telemetry");
  assert(notice?.type === "telemetry");
  assertEquals(notice.items.map((item) => item.values.lux), [1, 3]);
});

Deno.test("turn: a kind that stops keeping history for a field drops what its twins held for it", () => {
  const schemas = {
    kind: "meter",
    telemetry: z.object({ power: z.number(), extra: z.number() }),
    desired: z.object({}),
    reported: z.object({}),
  };
  const both = defineTwin(schemas);
  const powerOnly = defineTwin({ ...schemas, history: ["power"] });
  const env = (kind: TwinKind) => ({ kind, now: T0, randomId: () => "00000000", history: true });
  const reading = (power: number): TwinMessage[] => [{
    type: "telemetry",
    items: [{ power, extra: power * 10 }],
  }];
  const first = runTurn(fresh("meter"), reading(1), NO_READS, env(both));
  assertEquals(Object.keys(first.state.history.p).sort(), ["extra", "power"]);
  const second = runTurn(first.state, reading(2), NO_READS, env(powerOnly));
  assertEquals(Object.keys(second.state.history.p), ["power"]);
  assertEquals(metricView(second.state.history, "power")?.buffer.map(([, v]) => v), [1, 2]);
  assertEquals(
    Object.keys(first.state.history.p).sort(),
    ["extra", "power"],
    "the state the turn started from is untouched",
  );
});

Deno.test("history writer: restore goes back to a mark, forgetting the rollups and raw chunks since", () => {
  const writer = new HistoryWriter("d1", { has: () => true, get: () => null } as never);
  let history = emptyHistory();
  history = writer.add(history, "power", T0, 1);
  const mark = writer.mark();
  writer.checkpoint();
  // A point two minutes on closes the open minute (a rollup write); twenty flush raw points.
  let next = history;
  for (let i = 1; i <= 20; i++) next = writer.add(next, "power", T0 + 120_000 + i, i);
  assert(writer.rollupChunks().length > 0 && writer.raw.length > 0);
  writer.restore(mark);
  assertEquals(writer.rollupChunks(), []);
  assertEquals(writer.raw, []);
  // The history it had is untouched, and goes on from there.
  assertEquals(metricView(history, "power")?.buffer.map(([, v]) => v), [1]);
  assertEquals(metricView(writer.add(history, "power", T0 + 1, 2), "power")?.buffer.length, 2);
});

const free = defineTwin({
  kind: "free",
  telemetry: z.record(z.string(), z.json()),
  desired: z.record(z.string(), z.json()),
  reported: z.record(z.string(), z.json()),
});

/** Applies desired patches one turn each, from a fresh twin of the `free` kind. */
function desiredPatches(patches: JsonObject[]): TwinRecord {
  let record = fresh("free");
  for (const patch of patches) {
    const result = turn(record, [{ type: "desired", patch }], { kind: free });
    okValue(result);
    record = result.state;
  }
  return record;
}

Deno.test("desired catch-up: a device that missed a change of shape gets the whole document", () => {
  const seen = desiredPatches([{ cfg: { x: 1, y: 2 }, s: 5, o: { k: 1 } }]);
  const device = structuredClone(seen.desired) as JsonObject;
  const now = desiredPatches([
    { cfg: { x: 1, y: 2 }, s: 5, o: { k: 1 } },
    { cfg: null },
    { cfg: { z: 1 } },
    { s: {} },
    { o: 7 },
    { o: { n: 1 } },
  ]);
  const update = desiredSince(now, seen.version);
  assert(update);
  const applied = update.full ? update.patch : applyMergePatch(device, update.patch);
  assertEquals(applied, now.desired);
  assertEquals(update.full, true);
});

Deno.test("desired metadata: a leaf set to the value it had keeps its version; nulls for missing keys leave no tombstone", () => {
  const record = desiredPatches([{ a: 1, b: 1 }, { a: 1, b: 2 }, { gone: null, never: null }]);
  assertEquals(record.metadata.desired.a, { updatedAt: new Date(T0).toISOString(), version: 2 });
  assertEquals((record.metadata.desired.b as { version: number }).version, 3);
  assertEquals(record.desiredTombstones, []);
  // Catch-up from version 2 carries only what changed since.
  assertEquals(desiredSince(record, 2)?.patch, { b: 2 });
});

Deno.test("turn: a handler cannot change the twin in place (what it is shown is frozen), nor pass a command an invalid ttl or timeout", () => {
  const meddler = defineTwin({
    kind: "meddler",
    telemetry: z.strictObject({ lux: z.number(), how: z.string() }),
    desired: z.strictObject({ level: z.number().max(10).optional() }),
    reported: z.strictObject({ firmware: z.string().optional() }),
    commands: { blink: z.strictObject({}) },
    handlers: {
      onTelemetry(ctx, item) {
        if (item.how === "desired") (ctx.desired as Record<string, unknown>).level = 999;
        if (item.how === "reported") (ctx.reported as Record<string, unknown>).hacked = true;
        if (item.how === "memory") (ctx.memory as Record<string, unknown>).sneaky = 1;
        if (item.how === "ttl") ctx.sendCommand("blink", {}, { timeout: NaN });
        if (item.how === "negative") ctx.sendCommand("blink", {}, { ttl: -5 });
      },
    },
  });
  const start = turn(fresh("meddler"), [{ type: "desired", patch: { level: 3 } }], {
    kind: meddler,
  }).state;
  for (const how of ["desired", "reported", "memory", "ttl", "negative"]) {
    const result = turn(start, [{ type: "telemetry", items: [{ lux: 1, how }] }], {
      kind: meddler,
    });
    assertEquals(result.writes.events.map((e) => e.type), ["handler.failed"], how);
    assertEquals(result.state.desired, { level: 3 }, how);
    assertEquals(result.state.reported, {}, how);
    assertEquals(result.state.memory, {}, how);
    assertEquals(result.state.commands.pending, [], how);
  }
  assertEquals(start.desired, { level: 3 }, "the stored state before the turn is untouched");
});
