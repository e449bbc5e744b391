/**
 * Rules and alarms through the twin runtime with a manual clock: threshold with duration and
 * hysteresis (no flapping), rate of change, no data (timers, also across a restart on a KV file),
 * the EWMA anomaly detector; alarm de-duplication, the alarms API (filters, acknowledge, clear,
 * 404 and 409) and alarm changes as twin events.
 * @module
 */
import { seededRandom } from "../src/simulator/physics.ts";
import { assert, assertEquals, assertMatch, assertRejects } from "./assert.ts";
import { type TestApp, testApp } from "./helpers.ts";
import { ManualClock } from "../src/clock.ts";
import { anomaly, defineTwin, noData, rateOfChange, type Rule, threshold, z } from "../src/mod.ts";
import type { TwinDefinition, TwinKind } from "../src/twin/kind.ts";

const SEC = 1000;
const MIN = 60 * SEC;

// deno-lint-ignore no-explicit-any
type Json = any;

function kinds(
  rules: Rule[],
  handlers?: TwinDefinition["handlers"],
): Map<string, TwinKind> {
  const kind = defineTwin({
    kind: "sensor",
    telemetry: z.object({
      temp: z.number().optional(),
      level: z.number().optional(),
      noise: z.number().optional(),
      door: z.boolean().optional(),
    }),
    desired: z.object({}),
    reported: z.object({}),
    rules,
    ...(handlers ? { handlers } : {}),
  });
  return new Map([["sensor", kind]]);
}

/** Sends one reading stamped with the clock's time, then moves the clock on by `stepMs`. */
async function reading(
  app: TestApp,
  clock: ManualClock,
  id: string,
  values: Record<string, unknown>,
  stepMs = 0,
): Promise<void> {
  await app.runtime.telemetry(id, [{ ts: clock.now(), ...values }]);
  clock.advance(stepMs);
}

async function getJson(app: TestApp, path: string, status = 200): Promise<Json> {
  const res = await app.op("GET", path);
  const body = await res.json();
  assertEquals(res.status, status, `GET ${path}: ${JSON.stringify(body)}`);
  return body;
}

async function alarmsOf(app: TestApp, id: string): Promise<Json[]> {
  return (await getJson(app, `/api/v1/alarms?device=${id}`)).items;
}

async function openAlarms(app: TestApp, id: string): Promise<Json[]> {
  return (await alarmsOf(app, id)).filter((a: Json) => a.state !== "cleared");
}

/** The device's events of `type` (or `type.*`), oldest first. */
async function events(app: TestApp, id: string, type: string): Promise<Json[]> {
  const body = await getJson(app, `/api/v1/devices/${id}/events?type=${type}&limit=1000`);
  return body.items.reverse();
}

Deno.test("threshold: fires only after `for` has elapsed beyond the bound", async () => {
  const clock = new ManualClock();
  const app = await testApp({
    clock,
    kinds: kinds([threshold({
      name: "hot",
      metric: "temp",
      above: 30,
      for: "30s",
      clear: { below: 28, for: "30s" },
      alarm: { severity: "major", message: "Too hot." },
    })]),
  });
  try {
    await app.register({ id: "s1", kind: "sensor" });
    // 25 s above, then one reading at the bound (not above): the clock restarts.
    for (let i = 0; i < 6; i++) await reading(app, clock, "s1", { temp: 31 }, 5 * SEC);
    await reading(app, clock, "s1", { temp: 30 }, 5 * SEC);
    assertEquals(await alarmsOf(app, "s1"), [], "no alarm: never 30 s above in a row");
    // Readings without the metric change nothing.
    await reading(app, clock, "s1", { level: 1 }, 0);
    // 29.9 s above is not enough…
    const start = clock.now();
    await reading(app, clock, "s1", { temp: 35 }, 10 * SEC);
    await reading(app, clock, "s1", { temp: 35 }, 10 * SEC);
    await reading(app, clock, "s1", { temp: 35 }, 9_900);
    await reading(app, clock, "s1", { temp: 35 }, 100);
    assertEquals(await alarmsOf(app, "s1"), [], "no alarm before 30 s");
    // …30 s is.
    assertEquals(clock.now() - start, 30 * SEC);
    await reading(app, clock, "s1", { temp: 33 }, 0);
    const [alarm] = await alarmsOf(app, "s1");
    assertEquals(
      [alarm.type, alarm.severity, alarm.state, alarm.count, alarm.message],
      ["hot", "major", "active", 1, "Too hot."],
    );
    assertEquals(alarm.details.value, 33);
    assertEquals(alarm.raisedAt, new Date(clock.now()).toISOString());
  } finally {
    await app.dispose();
  }
});

Deno.test("threshold hysteresis: no flapping between the bounds; clears only after clear.for below the clear bound", async () => {
  const clock = new ManualClock();
  const app = await testApp({
    clock,
    kinds: kinds([threshold({
      name: "hot",
      metric: "temp",
      above: 30,
      for: "30s",
      clear: { below: 28, for: "30s" },
      alarm: { severity: "major" },
    })]),
  });
  try {
    await app.register({ id: "s2", kind: "sensor" });
    for (let i = 0; i <= 6; i++) await reading(app, clock, "s2", { temp: 32 }, 5 * SEC);
    assertEquals((await openAlarms(app, "s2")).length, 1, "raised");

    // Ten minutes oscillating around the fire bound, never below the clear bound.
    const wave = [29.5, 30.5, 28.1, 31, 29.9, 30.01, 28.5, 33, 28.0001, 29];
    for (let i = 0; i < 120; i++) {
      await reading(app, clock, "s2", { temp: wave[i % wave.length] }, 5 * SEC);
    }
    let open = await openAlarms(app, "s2");
    assertEquals(open.length, 1, "still open while between the bounds");
    assertEquals([open[0].state, open[0].count], ["active", 1], "not raised again");

    // Below the clear bound but interrupted before 30 s: still open.
    for (let i = 0; i < 5; i++) await reading(app, clock, "s2", { temp: 27 }, 5 * SEC);
    await reading(app, clock, "s2", { temp: 28 }, 5 * SEC); // at the bound is not below it
    for (let i = 0; i < 6; i++) await reading(app, clock, "s2", { temp: 25 }, 5 * SEC);
    open = await openAlarms(app, "s2");
    assertEquals(open.length, 1, "not cleared: 25 s below the clear bound");
    // The seventh reading completes 30 s below 28.
    await reading(app, clock, "s2", { temp: 25 }, 5 * SEC);
    const [alarm] = await alarmsOf(app, "s2");
    assertEquals([alarm.state, alarm.clearedBy], ["cleared", "rule hot"]);

    // Back between the bounds after clearing: nothing (it must exceed 30 again for 30 s).
    for (let i = 0; i < 20; i++) await reading(app, clock, "s2", { temp: 29.9 }, 5 * SEC);
    assertEquals(await openAlarms(app, "s2"), []);

    const raised = await events(app, "s2", "alarm.raised");
    const cleared = await events(app, "s2", "alarm.cleared");
    assertEquals([raised.length, cleared.length], [1, 1], "one raise and one clear: no flapping");
    assertEquals((await events(app, "s2", "alarm.repeated")).length, 0);
  } finally {
    await app.dispose();
  }
});

Deno.test("threshold below with clear.above, and without an alarm: rule events and actions", async () => {
  const clock = new ManualClock();
  const app = await testApp({
    clock,
    kinds: kinds([threshold({
      name: "cold",
      metric: "temp",
      below: 5,
      clear: { above: 8 },
      onRaise: [{ command: "heat", payload: { to: 20 } }],
    })]),
  });
  try {
    await app.register({ id: "s3", kind: "sensor" });
    await reading(app, clock, "s3", { temp: 4 }, SEC); // for 0: at once
    await reading(app, clock, "s3", { temp: 7 }, SEC); // between the bounds
    await reading(app, clock, "s3", { temp: 3 }, SEC);
    await reading(app, clock, "s3", { temp: 9 }, SEC); // clears
    const fired = await events(app, "s3", "rule");
    assertEquals(
      fired.map((e: Json) => [e.type, e.data.value]),
      [["rule.fired", 4], ["rule.cleared", 9]],
    );
    const commands = (await getJson(app, "/api/v1/devices/s3/commands")).items;
    assertEquals(commands.map((c: Json) => [c.name, c.payload]), [["heat", { to: 20 }]]);
    assertEquals(await alarmsOf(app, "s3"), []);
  } finally {
    await app.dispose();
  }
});

Deno.test("rate of change: fires rising or falling faster than the rate per minute, clears when it slows", async () => {
  const clock = new ManualClock();
  const app = await testApp({
    clock,
    kinds: kinds([rateOfChange({
      name: "surge",
      metric: "level",
      risingPerMinute: 10,
      fallingPerMinute: 20,
      alarm: { severity: "minor" },
    })]),
  });
  try {
    await app.register({ id: "r1", kind: "sensor" });
    await reading(app, clock, "r1", { level: 0 }, MIN);
    await reading(app, clock, "r1", { level: 10 }, MIN); // exactly 10/min: not faster
    await reading(app, clock, "r1", { level: 15 }, 30 * SEC); // 5/min
    assertEquals(await alarmsOf(app, "r1"), []);
    await reading(app, clock, "r1", { level: 21 }, 30 * SEC); // 6 in 30 s: 12/min
    let [alarm] = await alarmsOf(app, "r1");
    assertEquals([alarm.type, alarm.state, alarm.severity], ["surge", "active", "minor"]);
    assert(Math.abs(alarm.details.perMinute - 12) < 1e-9, `perMinute ${alarm.details.perMinute}`);
    await reading(app, clock, "r1", { level: 50 }, MIN); // still rising fast: no second alarm
    assertEquals((await alarmsOf(app, "r1"))[0].count, 1);
    await reading(app, clock, "r1", { level: 51 }, MIN); // slow: clears
    [alarm] = await alarmsOf(app, "r1");
    assertEquals(alarm.state, "cleared");
    // Falling: 15/min is within the falling rate, 25/min is not.
    await reading(app, clock, "r1", { level: 36 }, MIN);
    assertEquals(await openAlarms(app, "r1"), []);
    await reading(app, clock, "r1", { level: 11 }, MIN);
    const open = await openAlarms(app, "r1");
    assertEquals(open.length, 1, "falling fast raises a new alarm");
    assertEquals(open[0].details.perMinute, -25);
    // A late reading (older than the last) is no rate at all.
    await app.runtime.telemetry("r1", [{ ts: clock.now() - 10 * MIN, level: 1000 }]);
    assertEquals((await openAlarms(app, "r1"))[0].count, 1);
  } finally {
    await app.dispose();
  }
});

Deno.test("no data: fires through runDueTimers after silence, clears on the next reading", async () => {
  const clock = new ManualClock();
  const app = await testApp({
    clock,
    kinds: kinds([noData({ name: "silent", for: "5m", alarm: { severity: "warning" } })]),
  });
  try {
    await app.register({ id: "n1", kind: "sensor" });
    await reading(app, clock, "n1", { temp: 20 }, 4 * MIN);
    await app.runtime.runDueTimers();
    assertEquals(await alarmsOf(app, "n1"), [], "4 min of silence is not 5");
    clock.advance(MIN - 1);
    await app.runtime.runDueTimers();
    assertEquals(await alarmsOf(app, "n1"), [], "1 ms short");
    clock.advance(1);
    assertEquals(await app.runtime.runDueTimers(), 1, "the twin was due");
    const [alarm] = await alarmsOf(app, "n1");
    assertEquals([alarm.type, alarm.severity, alarm.state], ["silent", "warning", "active"]);
    // No second alarm while still silent, however often the sweep runs.
    clock.advance(30 * MIN);
    await app.runtime.runDueTimers();
    await app.runtime.runDueTimers();
    assertEquals((await alarmsOf(app, "n1")).map((a: Json) => a.count), [1]);
    // The next reading clears it, and the clock starts again.
    await reading(app, clock, "n1", { temp: 20 }, 0);
    assertEquals((await alarmsOf(app, "n1"))[0].state, "cleared");
    clock.advance(5 * MIN);
    await app.runtime.runDueTimers();
    assertEquals((await openAlarms(app, "n1")).length, 1, "fires again after new silence");
  } finally {
    await app.dispose();
  }
});

Deno.test("no data: a device that never reported fires after `for` from its registration", async () => {
  const clock = new ManualClock();
  const app = await testApp({
    clock,
    kinds: kinds([noData({ name: "silent", for: "5m", alarm: { severity: "warning" } })]),
  });
  try {
    await app.register({ id: "n0", kind: "sensor" });
    clock.advance(6 * MIN);
    await app.runtime.runDueTimers();
    const open = await openAlarms(app, "n0");
    assertEquals(
      open.map((a: Json) => a.type),
      ["silent"],
      "a registered device silent for 6 min has a no-data alarm",
    );
  } finally {
    await app.dispose();
  }
});

Deno.test("no data: fires after a restart on the same KV file (durable timer)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "doppel_rules_test_" });
  const path = `${dir}/doppel.kv`;
  const clock = new ManualClock();
  const kindMap = kinds([noData({ name: "silent", for: "5m", alarm: { severity: "warning" } })]);
  try {
    const first = await testApp({ clock, kv: await Deno.openKv(path), kinds: kindMap });
    try {
      await first.register({ id: "n2", kind: "sensor" });
      await reading(first, clock, "n2", { temp: 20 }, MIN);
      await first.runtime.runDueTimers();
      assertEquals(await alarmsOf(first, "n2"), []);
    } finally {
      await first.dispose();
    }
    // The process is gone; time passes; a new one starts on the same file.
    clock.advance(10 * MIN);
    const second = await testApp({ clock, kv: await Deno.openKv(path), kinds: kindMap });
    try {
      assertEquals(await second.runtime.runDueTimers(), 1, "the stored timer is due");
      const [alarm] = await alarmsOf(second, "n2");
      assertEquals([alarm.type, alarm.state], ["silent", "active"]);
      assertEquals(alarm.details.silentSince, new Date(clock.now() - 11 * MIN).toISOString());
      await reading(second, clock, "n2", { temp: 21 }, 0);
      assertEquals((await alarmsOf(second, "n2"))[0].state, "cleared");
    } finally {
      await second.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("anomaly: steady noisy data raises nothing, a spike raises, a return to normal clears", async () => {
  const clock = new ManualClock();
  const app = await testApp({
    clock,
    kinds: kinds([anomaly({
      name: "odd",
      metric: "noise",
      z: 4,
      alpha: 0.1,
      warmup: 20,
      alarm: { severity: "minor" },
    })]),
  });
  try {
    await app.register({ id: "a1", kind: "sensor" });
    const random = seededRandom(7);
    // During warm-up even wild values are not judged.
    await reading(app, clock, "a1", { noise: 20 }, 10 * SEC);
    await reading(app, clock, "a1", { noise: 90 }, 10 * SEC);
    for (let i = 0; i < 200; i++) {
      await reading(app, clock, "a1", { noise: 20 + (random() - 0.5) }, 10 * SEC);
    }
    assertEquals(await alarmsOf(app, "a1"), [], "no alarm on steady noise");
    await reading(app, clock, "a1", { noise: 40 }, 10 * SEC);
    const [alarm] = await alarmsOf(app, "a1");
    assertEquals([alarm.type, alarm.state, alarm.severity], ["odd", "active", "minor"]);
    assert(alarm.details.z >= 4, `z = ${alarm.details.z}`);
    assertEquals(alarm.details.value, 40);
    await reading(app, clock, "a1", { noise: 20.1 }, 10 * SEC);
    assertEquals((await alarmsOf(app, "a1"))[0].state, "cleared", "back to normal clears");
    assertEquals((await alarmsOf(app, "a1")).length, 1);
  } finally {
    await app.dispose();
  }
});

Deno.test("anomaly: after a perfectly flat spell, a jump raises against the rule's noise floor (minStd), and is not judged without one", async () => {
  const clock = new ManualClock();
  const rule = (name: string, minStd?: number) =>
    anomaly({
      name,
      metric: "level",
      z: 4,
      warmup: 5,
      ...(minStd === undefined ? {} : { minStd }),
      alarm: { severity: "minor" },
    });
  const app = await testApp({ clock, kinds: kinds([rule("floored", 0.5), rule("bare")]) });
  try {
    for (const id of ["f1", "f2"]) {
      await app.register({ id, kind: "sensor" });
      for (let i = 0; i < 30; i++) await reading(app, clock, id, { level: 20 }, 10 * SEC);
    }
    // Within the floor's 4 × 0.5: nothing.
    await reading(app, clock, "f1", { level: 21.5 }, 10 * SEC);
    assertEquals(await alarmsOf(app, "f1"), []);
    await reading(app, clock, "f2", { level: 25 }, 10 * SEC);
    const alarms = await alarmsOf(app, "f2");
    assertEquals(alarms.map((a) => [a.type, a.state]), [["floored", "active"]]);
    assertEquals([alarms[0].details.z, alarms[0].details.std], [10, 0.5]);
  } finally {
    await app.dispose();
  }
  const error = await assertRejects(() => Promise.resolve().then(() => rule("bad", -1)));
  assertMatch(String(error), /Rule "bad": minStd must be a finite number of 0 or more; got -1\./);
});

/** A kind whose handler raises a `door` alarm on every reading with the door open. */
const doorKinds = kinds(
  [threshold({ name: "hot", metric: "temp", above: 30, alarm: { severity: "major" } })],
  {
    onTelemetry(ctx, item) {
      const reading = item as { door?: boolean };
      if (reading.door === true) ctx.raiseAlarm("door", "minor", "Door open.", { at: ctx.now });
      if (reading.door === false) ctx.clearAlarm("door");
    },
  },
);

Deno.test("alarms: raising the same type again is one alarm with a count and lastAt", async () => {
  const clock = new ManualClock();
  const app = await testApp({ clock, kinds: doorKinds });
  try {
    await app.register({ id: "d1", kind: "sensor" });
    const first = clock.now();
    for (let i = 0; i < 5; i++) await reading(app, clock, "d1", { door: true }, 7 * SEC);
    // Three more in one batch (one turn).
    const last = clock.now();
    await app.runtime.telemetry("d1", [1, 2, 3].map((i) => ({ ts: last - i, door: true })));
    const alarms = await alarmsOf(app, "d1");
    assertEquals(alarms.length, 1, "one alarm for the type");
    const [alarm] = alarms;
    assertEquals([alarm.type, alarm.state, alarm.count], ["door", "active", 8]);
    assertEquals(alarm.raisedAt, new Date(first).toISOString());
    assertEquals(alarm.lastAt, new Date(last).toISOString());
    assertEquals(alarm.details, { at: last });
    // The handler clears it; raised again later, it is a new alarm.
    await reading(app, clock, "d1", { door: false }, SEC);
    await reading(app, clock, "d1", { door: true }, SEC);
    const after = await alarmsOf(app, "d1");
    assertEquals(after.length, 2);
    const open = after.filter((a: Json) => a.state === "active");
    assertEquals(open.length, 1);
    assert(open[0].id !== alarm.id, "a new id");
    assertEquals(open[0].count, 1);
    assertEquals(after.find((a: Json) => a.id === alarm.id).clearedBy, "handler");
  } finally {
    await app.dispose();
  }
});

Deno.test("alarms API: filters, acknowledge then clear, 409 and 404, events", async () => {
  const clock = new ManualClock();
  const app = await testApp({ clock, kinds: doorKinds });
  try {
    await app.register({ id: "x1", kind: "sensor" });
    await app.register({ id: "x2", kind: "sensor" });
    await reading(app, clock, "x1", { temp: 35, door: true }, SEC); // major hot + minor door
    await reading(app, clock, "x2", { door: true }, SEC); // minor door
    const list = async (query: string) =>
      (await getJson(app, `/api/v1/alarms?${query}`)).items.map((a: Json) =>
        `${a.deviceId}:${a.type}`
      )
        .sort();
    assertEquals(await list(""), ["x1:door", "x1:hot", "x2:door"]);
    assertEquals(await list("device=x1"), ["x1:door", "x1:hot"]);
    assertEquals(await list("device=x2"), ["x2:door"]);
    assertEquals(await list("severity=minor"), ["x1:door", "x2:door"]);
    assertEquals(await list("severity=major"), ["x1:hot"]);
    assertEquals(await list("device=x1&severity=major"), ["x1:hot"]);
    assertEquals(await list("state=active"), ["x1:door", "x1:hot", "x2:door"]);
    assertEquals(await list("state=cleared"), []);
    assertEquals(await list("device=nobody"), []);
    assertEquals((await app.op("GET", "/api/v1/alarms?severity=huge")).status, 400);
    assertEquals((await app.op("GET", "/api/v1/alarms?state=open")).status, 400);
    assertEquals((await app.dev({ id: "x1", key: "nope" }, "GET", "/api/v1/alarms")).status, 401);

    const door = (await alarmsOf(app, "x1")).find((a: Json) => a.type === "door");
    assertEquals((await getJson(app, `/api/v1/alarms/${door.id}`)).deviceId, "x1");

    // Acknowledge: still open, another state.
    const acked = await app.op("POST", `/api/v1/alarms/${door.id}/acknowledge`);
    assertEquals(acked.status, 200);
    const ackBody = await acked.json();
    assertEquals(ackBody.state, "acknowledged");
    assertEquals(ackBody.acknowledgedAt, new Date(clock.now()).toISOString());
    assertEquals(await list("state=acknowledged"), ["x1:door"]);
    assertEquals(await list("state=active"), ["x1:hot", "x2:door"]);
    assertEquals(await list("device=x1&state=acknowledged"), ["x1:door"]);
    // Acknowledging again is harmless.
    assertEquals((await app.op("POST", `/api/v1/alarms/${door.id}/acknowledge`)).status, 200);
    // Raised again while acknowledged: counted, still the same alarm.
    await reading(app, clock, "x1", { door: true }, SEC);
    const repeated = await getJson(app, `/api/v1/alarms/${door.id}`);
    assertEquals([repeated.state, repeated.count], ["acknowledged", 2]);

    // Clear by the operator.
    clock.advance(MIN);
    const cleared = await app.op("POST", `/api/v1/alarms/${door.id}/clear`);
    assertEquals(cleared.status, 200);
    const clearBody = await cleared.json();
    assertEquals([clearBody.state, clearBody.clearedBy], ["cleared", "operator"]);
    assertEquals(clearBody.clearedAt, new Date(clock.now()).toISOString());
    assertEquals(await list("state=cleared"), ["x1:door"]);
    assertEquals(await list("state=acknowledged"), []);
    assertEquals((await getJson(app, `/api/v1/alarms/${door.id}`)).state, "cleared");

    // Clearing (or acknowledging) a cleared alarm: 409. Unknown ids: 404.
    const again = await app.op("POST", `/api/v1/alarms/${door.id}/clear`);
    assertEquals(again.status, 409);
    assertEquals((await again.json()).error.code, "conflict");
    assertEquals((await app.op("POST", `/api/v1/alarms/${door.id}/acknowledge`)).status, 409);
    for (
      const [method, path] of [
        ["GET", "/api/v1/alarms/nope123"],
        ["POST", "/api/v1/alarms/nope123/acknowledge"],
        ["POST", "/api/v1/alarms/nope123/clear"],
      ]
    ) {
      const res = await app.op(method, path);
      assertEquals(res.status, 404, `${method} ${path}`);
      assertEquals((await res.json()).error.code, "not_found");
    }

    // The twin's events tell the alarm's story.
    const story = (await events(app, "x1", "alarm"))
      .filter((e: Json) => e.data.alarmId === door.id)
      .map((e: Json) => [e.type, e.data.type, e.data.count]);
    assertEquals(story, [
      ["alarm.raised", "door", 1],
      ["alarm.acknowledged", "door", 1],
      ["alarm.repeated", "door", 2],
      ["alarm.cleared", "door", 2],
    ]);
    const hot = (await events(app, "x1", "alarm.raised")).find((e: Json) => e.data.type === "hot");
    assertEquals(hot.data.severity, "major");
  } finally {
    await app.dispose();
  }
});

Deno.test("rules: a refused action is recorded, and the alarm it came with is raised and cleared all the same", async () => {
  const clock = new ManualClock();
  const rule = threshold({
    name: "hot",
    metric: "temp",
    above: 30,
    alarm: { severity: "major" },
    onRaise: [{ command: "fan", payload: {} }],
    onClear: [{ command: "fan", payload: {} }],
  });
  const app = await testApp({ clock, kinds: kinds([rule]) });
  try {
    const { id } = await app.register({ id: "r1", kind: "sensor" });
    // The pending command queue is full, so every action the rule asks for is refused.
    for (let i = 0; i < 100; i++) {
      await app.runtime.send(id, { type: "command.create", name: "other", payload: {} });
    }
    await reading(app, clock, id, { temp: 35 }, SEC);
    assertEquals((await openAlarms(app, id)).map((a: Json) => a.type), ["hot"]);
    await reading(app, clock, id, { temp: 20 }, SEC);
    assertEquals(await openAlarms(app, id), []);
    assertEquals((await events(app, id, "rule.failed")).length, 2, "both refusals recorded");
  } finally {
    await app.dispose();
  }
});

Deno.test("rules: a late reading (stamped before the latest) goes to history, not to the rules", async () => {
  const clock = new ManualClock();
  const rule = threshold({ name: "hot", metric: "temp", above: 30, for: "1m" });
  const rate = rateOfChange({ name: "fall", metric: "temp", fallingPerMinute: 5 });
  const app = await testApp({ clock, kinds: kinds([rule, rate]) });
  try {
    const { id } = await app.register({ id: "r2", kind: "sensor" });
    await reading(app, clock, id, { temp: 20 }, SEC);
    // A hot reading stamped a minute ago arrives late, then a hot one now: `for` (1 min) has not
    // passed since the readings turned hot, and the late one is no fall of 15 a second.
    await app.runtime.telemetry(id, [{ ts: clock.now() - MIN, temp: 35 }]);
    await reading(app, clock, id, { temp: 35 }, SEC);
    await reading(app, clock, id, { temp: 35 }, SEC);
    assertEquals(await openAlarms(app, id), []);
    assertEquals(await events(app, id, "rule"), []);
  } finally {
    await app.dispose();
  }
});

Deno.test("no data: silence is measured from arrival, so a device whose clock is behind is not silent", async () => {
  const clock = new ManualClock();
  const rule = noData({ name: "silent", for: "1m", alarm: { severity: "warning" } });
  const app = await testApp({ clock, kinds: kinds([rule]) });
  try {
    const { id } = await app.register({ id: "r3", kind: "sensor" });
    // Readings every 10 s, stamped by a device clock 20 minutes behind.
    for (let i = 0; i < 12; i++) {
      await app.runtime.telemetry(id, [{ ts: clock.now() - 20 * MIN, temp: 20 }]);
      clock.advance(10 * SEC);
      await app.runtime.runDueTimers();
    }
    assertEquals(await alarmsOf(app, id), []);
  } finally {
    await app.dispose();
  }
});

Deno.test("no data: a rule added to a kind wakes its twins at the next start; silent ones fire, one that spoke lately waits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "doppel_rules_test_" });
  const path = `${dir}/doppel.kv`;
  const clock = new ManualClock();
  try {
    // First started without a no-data rule: two devices, one of them reporting.
    const first = await testApp({ clock, kv: await Deno.openKv(path), kinds: kinds([]) });
    try {
      await first.register({ id: "old1", kind: "sensor" });
      await first.register({ id: "old2", kind: "sensor" });
      clock.advance(30 * MIN);
      await reading(first, clock, "old2", { temp: 20 }, 0);
    } finally {
      await first.dispose();
    }
    // Restarted with one: the start-up pass gives every twin of the kind its timer, once.
    const rule = noData({ name: "silent", for: "5m", alarm: { severity: "warning" } });
    const second = await testApp({ clock, kv: await Deno.openKv(path), kinds: kinds([rule]) });
    try {
      assertEquals(await second.runtime.wakeForNewRules(), 2);
      assertEquals(await second.runtime.wakeForNewRules(), 0, "not again for the same rules");
      await second.runtime.runDueTimers();
      assertEquals((await openAlarms(second, "old1")).map((a: Json) => a.type), ["silent"]);
      assertEquals(await openAlarms(second, "old2"), [], "it spoke just now");
      clock.advance(6 * MIN);
      await second.runtime.runDueTimers();
      assertEquals((await openAlarms(second, "old2")).map((a: Json) => a.type), ["silent"]);
    } finally {
      await second.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("rules that could never behave stop the kind loading, naming the rule and what is wrong", async () => {
  const cases: Array<[() => unknown, RegExp]> = [
    [() => threshold({ name: "t1", metric: "temp", above: NaN }), /"t1": above must be a finite/],
    [
      () => threshold({ name: "t2", metric: "temp", above: 30, clear: { below: Infinity } }),
      /"t2": clear\.below must be a finite number; got Infinity/,
    ],
    [
      () => rateOfChange({ name: "r1", metric: "temp", risingPerMinute: NaN }),
      /"r1": risingPerMinute must be a finite/,
    ],
    [() => anomaly({ name: "a1", metric: "temp", z: 0 }), /"a1": z must be above 0/],
    [() => anomaly({ name: "a2", metric: "temp", warmup: -1 }), /"a2": warmup must be a whole/],
    [
      () =>
        threshold({
          name: "s1",
          metric: "temp",
          above: 1,
          alarm: { severity: "fatal" as "major" },
        }),
      /"s1": alarm severity "fatal" is not one of critical, major, minor, warning/,
    ],
    [
      () => kinds([threshold({ name: "m1", metric: "tmep", above: 30 })]),
      /rule "m1" watches "tmep", which its telemetry schema does not have/,
    ],
  ];
  for (const [make, message] of cases) {
    const error = await assertRejects(() => Promise.resolve().then(make));
    assertMatch(String(error), message);
  }
  // A kind that declares commands: a rule's action must name one of them.
  const error = await assertRejects(() =>
    Promise.resolve().then(() =>
      defineTwin({
        kind: "cooler",
        telemetry: z.object({ temp: z.number() }),
        desired: z.object({}),
        reported: z.object({}),
        commands: { cool: z.object({}) },
        rules: [
          threshold({ name: "hot", metric: "temp", above: 30, onRaise: [{ command: "coool" }] }),
        ],
      })
    )
  );
  assertMatch(String(error), /rule "hot" sends command "coool", which the kind does not declare/);
  const bare = await assertRejects(() =>
    Promise.resolve().then(() =>
      defineTwin({
        kind: "bare",
        telemetry: z.number(),
        desired: z.object({}),
        reported: z.object({}),
      })
    )
  );
  assertMatch(String(bare), /"bare" telemetry schema must describe an object/);
});
