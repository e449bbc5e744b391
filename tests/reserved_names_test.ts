/**
 * Names in input that JavaScript or KV cannot take as they are: those every JavaScript object
 * inherits (`constructor`, `toString`) or sets its prototype with (`__proto__`), and names too
 * long for a KV key. They must neither pass a lookup they do not belong to, nor be lost, nor turn
 * into a 500 or a twin that can no longer commit.
 * @module
 */
import { assertEquals } from "./assert.ts";
import { expectInvalid, json, test } from "./api_assertions.ts";

test("input: command names JavaScript objects inherit are not a kind's commands", async (t) => {
  const d = await t.register({ id: "rn1", kind: "thermostat" });
  for (const name of ["constructor", "toString", "hasOwnProperty", "__proto__"]) {
    await expectInvalid(await t.op("POST", `/api/v1/devices/${d.id}/commands`, { name }), "name");
  }
  const list = await json(await t.op("GET", `/api/v1/devices/${d.id}/commands`), 200);
  assertEquals(list.items, [], "no command was queued");
});

test("input: a metric named like an inherited property keeps every point; one never sent has none", async (t) => {
  const d = await t.register({ id: "rn2", kind: "generic" });
  const start = Date.now() - 60_000;
  for (const [i, value] of [10, 20, 30].entries()) {
    const item = { constructor: value, ts: start + i * 1000 };
    await json(await t.dev(d, "POST", "/device/v1/telemetry", item), 202);
  }
  const raw = await json(
    await t.op("GET", `/api/v1/devices/${d.id}/telemetry?metric=constructor`),
    200,
  );
  assertEquals(raw.items.map((x: { value: number }) => x.value), [10, 20, 30]);
  const never = await t.op("GET", `/api/v1/devices/${d.id}/telemetry?metric=toString&bucket=1m`);
  assertEquals((await json(never, 200)).items, []);
});

test("input: a property named __proto__ is refused in telemetry, reported and desired, and nothing is written", async (t) => {
  const d = await t.register({ id: "rn3", kind: "generic" });
  const before = await json(await t.op("GET", `/api/v1/twins/${d.id}`), 200);
  // Sent as text: JSON.stringify of an object literal would not keep a `__proto__` key.
  const telemetry = await t.dev(d, "POST", "/device/v1/telemetry", '{"__proto__":{"x":1},"t":2}');
  await expectInvalid(telemetry, "__proto__");
  const batch = await t.dev(d, "POST", "/device/v1/telemetry", '[{"t":1},{"__proto__":5}]');
  await expectInvalid(batch, "items[1].__proto__");
  const reported = '{"fw":{"__proto__":{"polluted":true}}}';
  await expectInvalid(
    await t.dev(d, "PATCH", "/device/v1/twin/reported", reported),
    "fw.__proto__",
  );
  const desired = '{"modes":[{"__proto__":1}]}';
  await expectInvalid(
    await t.op("PATCH", `/api/v1/twins/${d.id}/desired`, desired),
    "modes[0].__proto__",
  );
  const after = await json(await t.op("GET", `/api/v1/twins/${d.id}`), 200);
  assertEquals(after.version, before.version);
  assertEquals(after.telemetry, before.telemetry);
  // An ordinary property of the same documents still goes through.
  await json(await t.dev(d, "PATCH", "/device/v1/twin/reported", { fw: { v: 1 } }), 200);
});

test("input: a telemetry field name past 256 characters is refused, naming it", async (t) => {
  const d = await t.register({ id: "rn4", kind: "generic" });
  const long = "m".repeat(2100);
  const error = await expectInvalid(
    await t.dev(d, "POST", "/device/v1/telemetry", { [long]: 1, ok: 2 }),
    `${"m".repeat(64)}…`,
  );
  assertEquals(error.details?.fields?.length, 1);
  await json(await t.dev(d, "POST", "/device/v1/telemetry", { ["m".repeat(256)]: 1 }), 202);
});

test("input: a tag named __proto__ is refused, naming it, rather than dropped", async (t) => {
  const body = '{"id":"rn7","kind":"generic","tags":{"__proto__":"x","site":"a"}}';
  await expectInvalid(await t.op("POST", "/api/v1/devices", body), "tags.__proto__");
  await t.register({ id: "rn8", kind: "generic" });
  await expectInvalid(
    await t.op("PATCH", "/api/v1/devices/rn8", '{"tags":{"__proto__":"x"}}'),
    "tags.__proto__",
  );
});
