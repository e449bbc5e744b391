/**
 * Command lifecycle through the app, with a manual clock: queued → delivered → done, TTL expiry,
 * delivery timeouts, the pending cap, delivery order, and durability across a restart.
 * @module
 */
import { assert, assertEquals } from "./assert.ts";
import { type TestApp, testApp } from "./helpers.ts";
import { ManualClock } from "../src/clock.ts";
import type { CommandRecord } from "../src/commands/model.ts";

const iso = (ms: number) => new Date(ms).toISOString();

type Creds = { id: string; key: string };

async function createCommand(
  t: TestApp,
  deviceId: string,
  body: Record<string, unknown>,
  headers?: HeadersInit,
): Promise<CommandRecord> {
  const res = await t.op("POST", `/api/v1/devices/${deviceId}/commands`, body, headers);
  const json = await res.json();
  assertEquals(res.status, 202, JSON.stringify(json));
  return json;
}

async function getCommand(t: TestApp, deviceId: string, id: string): Promise<CommandRecord> {
  const res = await t.op("GET", `/api/v1/devices/${deviceId}/commands/${id}`);
  const json = await res.json();
  assertEquals(res.status, 200, JSON.stringify(json));
  return json;
}

async function poll(
  t: TestApp,
  creds: Creds,
  query = "",
): Promise<Array<{ id: string; name: string; payload: unknown; expiresAt: string }>> {
  const res = await t.dev(creds, "GET", `/device/v1/commands${query}`);
  const json = await res.json();
  assertEquals(res.status, 200, JSON.stringify(json));
  return json.items;
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "doppel-commands-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("commands: queued → delivered → succeeded, with history timestamps", async () => {
  const clock = new ManualClock();
  const t0 = clock.now();
  const t = await testApp({ clock });
  try {
    const d = await t.register({ id: "c1" });
    const created = await createCommand(t, "c1", {
      name: "reboot",
      payload: { delaySeconds: 5 },
    });
    assertEquals(created.status, "queued");
    assertEquals(created.name, "reboot");
    assertEquals(created.source, "operator");
    assertEquals(created.createdAt, iso(t0));
    assertEquals(created.expiresAt, iso(t0 + 86_400_000), "default TTL is a day");
    assertEquals(created.history, [{ status: "queued", at: iso(t0) }]);
    assertEquals((await getCommand(t, "c1", created.id)).status, "queued");

    clock.advance(1_000);
    const items = await poll(t, d);
    assertEquals(items.length, 1);
    assertEquals(items[0].id, created.id);
    assertEquals(items[0].name, "reboot");
    assertEquals(items[0].payload, { delaySeconds: 5 });
    assertEquals(items[0].expiresAt, created.expiresAt);

    const delivered = await getCommand(t, "c1", created.id);
    assertEquals(delivered.status, "delivered");
    assertEquals(delivered.deliveredAt, iso(t0 + 1_000));
    assertEquals(delivered.timeoutAt, iso(t0 + 1_000 + 300_000), "default timeout is 300 s");
    assertEquals(delivered.completedAt, undefined);

    // Delivered commands are not handed out twice.
    assertEquals(await poll(t, d), []);

    clock.advance(2_000);
    const res = await t.dev(d, "POST", `/device/v1/commands/${created.id}/result`, {
      status: "succeeded",
      result: { uptime: 1 },
    });
    assertEquals(res.status, 200);
    assertEquals(await res.json(), { id: created.id, status: "succeeded" });

    const done = await getCommand(t, "c1", created.id);
    assertEquals(done.status, "succeeded");
    assertEquals(done.result, { uptime: 1 });
    assertEquals(done.completedAt, iso(t0 + 3_000));
    assertEquals(done.history, [
      { status: "queued", at: iso(t0) },
      { status: "delivered", at: iso(t0 + 1_000) },
      { status: "succeeded", at: iso(t0 + 3_000) },
    ]);

    // A second result for a finished command is a conflict; an unknown id is 404.
    const again = await t.dev(d, "POST", `/device/v1/commands/${created.id}/result`, {
      status: "failed",
    });
    assertEquals(again.status, 409);
    assertEquals((await again.json()).error.code, "conflict");
    const unknown = await t.dev(d, "POST", `/device/v1/commands/zz-0000abcd/result`, {
      status: "failed",
    });
    assertEquals(unknown.status, 404);

    // The list shows it, newest first.
    const list = await (await t.op("GET", "/api/v1/devices/c1/commands")).json();
    assertEquals(list.items.map((c: CommandRecord) => [c.id, c.status]), [
      [created.id, "succeeded"],
    ]);
    // A finished command is left alone by later timer sweeps (other timers, such as presence,
    // may still fire for the twin).
    clock.advance(86_400_000 * 2);
    await t.runtime.runDueTimers();
    assertEquals(await getCommand(t, "c1", created.id), done);
  } finally {
    await t.dispose();
  }
});

Deno.test("commands: a failed result is recorded as failed", async () => {
  const clock = new ManualClock();
  const t = await testApp({ clock });
  try {
    const d = await t.register({ id: "c1" });
    const created = await createCommand(t, "c1", { name: "reboot", payload: {} });
    await poll(t, d);
    const res = await t.dev(d, "POST", `/device/v1/commands/${created.id}/result`, {
      status: "failed",
      result: { reason: "busy" },
    });
    assertEquals(res.status, 200);
    const done = await getCommand(t, "c1", created.id);
    assertEquals(done.status, "failed");
    assertEquals(done.result, { reason: "busy" });
    assertEquals(done.history.map((h) => h.status), ["queued", "delivered", "failed"]);
  } finally {
    await t.dispose();
  }
});

Deno.test("commands: TTL expiry through runDueTimers; a poll never returns it", async () => {
  const clock = new ManualClock();
  const t0 = clock.now();
  const t = await testApp({ clock });
  try {
    const d = await t.register({ id: "c1" });
    const created = await createCommand(t, "c1", { name: "reboot", payload: {}, ttl: 60 });
    assertEquals(created.expiresAt, iso(t0 + 60_000));

    // Not due yet.
    clock.advance(59_999);
    assertEquals(await t.runtime.runDueTimers(), 0);
    assertEquals((await getCommand(t, "c1", created.id)).status, "queued");

    clock.advance(2);
    assertEquals(await t.runtime.runDueTimers(), 1);
    const expired = await getCommand(t, "c1", created.id);
    assertEquals(expired.status, "expired");
    assertEquals(expired.completedAt, iso(t0 + 60_001));
    assertEquals(expired.history, [
      { status: "queued", at: iso(t0) },
      { status: "expired", at: iso(t0 + 60_001) },
    ]);
    // The timer is consumed: a second sweep has nothing to do.
    assertEquals(await t.runtime.runDueTimers(), 0);
    assertEquals(await poll(t, d), []);
    // The result of an expired command is refused.
    const late = await t.dev(d, "POST", `/device/v1/commands/${created.id}/result`, {
      status: "succeeded",
    });
    assertEquals(late.status, 409);
  } finally {
    await t.dispose();
  }
});

Deno.test("commands: a poll after expiresAt but before any timer sweep never returns it", async () => {
  const clock = new ManualClock();
  const t = await testApp({ clock });
  try {
    const d = await t.register({ id: "c1" });
    const short = await createCommand(t, "c1", { name: "reboot", payload: {}, ttl: 10 });
    const long = await createCommand(t, "c1", { name: "reboot", payload: {}, ttl: 100 });
    clock.advance(10_001);
    const items = await poll(t, d);
    assertEquals(items.map((c) => c.id), [long.id]);
    assertEquals((await getCommand(t, "c1", short.id)).status, "expired");
    assertEquals((await getCommand(t, "c1", long.id)).status, "delivered");
  } finally {
    await t.dispose();
  }
});

Deno.test("commands: delivery timeout through runDueTimers → timed_out", async () => {
  const clock = new ManualClock();
  const t0 = clock.now();
  const t = await testApp({ clock });
  try {
    const d = await t.register({ id: "c1" });
    const created = await createCommand(t, "c1", {
      name: "reboot",
      payload: {},
      ttl: 60,
      timeout: 30,
    });
    clock.advance(5_000);
    assertEquals((await poll(t, d)).length, 1);
    const delivered = await getCommand(t, "c1", created.id);
    assertEquals(delivered.timeoutAt, iso(t0 + 35_000));

    // Past the TTL but before the timeout: a delivered command does not expire.
    clock.advance(29_000);
    assertEquals(await t.runtime.runDueTimers(), 0);
    assertEquals((await getCommand(t, "c1", created.id)).status, "delivered");

    clock.advance(1_001);
    assertEquals(await t.runtime.runDueTimers(), 1);
    const timedOut = await getCommand(t, "c1", created.id);
    assertEquals(timedOut.status, "timed_out");
    assertEquals(timedOut.completedAt, iso(t0 + 35_001));
    assertEquals(timedOut.history.map((h) => h.status), ["queued", "delivered", "timed_out"]);

    const late = await t.dev(d, "POST", `/device/v1/commands/${created.id}/result`, {
      status: "succeeded",
    });
    assertEquals(late.status, 409);
    assertEquals((await getCommand(t, "c1", created.id)).status, "timed_out");
  } finally {
    await t.dispose();
  }
});

Deno.test("commands: the pending cap (100) answers 409, and frees up as commands finish", async () => {
  const clock = new ManualClock();
  const t = await testApp({ clock });
  try {
    const d = await t.register({ id: "c1" });
    for (let i = 0; i < 100; i++) {
      await createCommand(t, "c1", { name: "reboot", payload: { delaySeconds: i } });
    }
    const over = await t.op("POST", "/api/v1/devices/c1/commands", {
      name: "reboot",
      payload: {},
    });
    assertEquals(over.status, 409);
    const body = await over.json();
    assertEquals(body.error.code, "conflict");

    // Delivered commands still count as pending.
    const items = await poll(t, d, "?limit=1");
    assertEquals(items.length, 1);
    const still = await t.op("POST", "/api/v1/devices/c1/commands", {
      name: "reboot",
      payload: {},
    });
    assertEquals(still.status, 409);

    // Once one finishes there is room for one more.
    const res = await t.dev(d, "POST", `/device/v1/commands/${items[0].id}/result`, {
      status: "succeeded",
    });
    assertEquals(res.status, 200);
    await createCommand(t, "c1", { name: "reboot", payload: {} });
    const full = await t.op("POST", "/api/v1/devices/c1/commands", { name: "reboot", payload: {} });
    assertEquals(full.status, 409);
  } finally {
    await t.dispose();
  }
});

Deno.test("commands: delivered in creation order, also when created concurrently", async () => {
  const clock = new ManualClock();
  const t = await testApp({ clock });
  try {
    const d = await t.register({ id: "c1" });
    const sequential: string[] = [];
    for (let i = 0; i < 5; i++) {
      sequential.push(
        (await createCommand(t, "c1", { name: "reboot", payload: { delaySeconds: i } })).id,
      );
    }
    const first = await poll(t, d, "?limit=2");
    const rest = await poll(t, d);
    assertEquals([...first, ...rest].map((c) => c.id), sequential);
    assertEquals(
      [...first, ...rest].map((c) => c.payload),
      [0, 1, 2, 3, 4].map((i) => ({ delaySeconds: i })),
    );

    // Concurrent creations: delivery follows the queue position each one was given.
    const concurrent = await Promise.all(
      Array.from(
        { length: 20 },
        (_, i) => createCommand(t, "c1", { name: "reboot", payload: { delaySeconds: 100 + i } }),
      ),
    );
    const bySeq = [...concurrent].sort((a, b) => a.seq - b.seq).map((c) => c.id);
    assertEquals(new Set(bySeq).size, 20, "every command got its own id");
    const delivered = await poll(t, d);
    assertEquals(delivered.map((c) => c.id), bySeq);
  } finally {
    await t.dispose();
  }
});

Deno.test("commands: Idempotency-Key returns the same command, not a second one", async () => {
  const clock = new ManualClock();
  const t = await testApp({ clock });
  try {
    const d = await t.register({ id: "c1" });
    const headers = { "idempotency-key": "op-1" };
    const [a, b] = await Promise.all([
      createCommand(t, "c1", { name: "reboot", payload: {} }, headers),
      createCommand(t, "c1", { name: "reboot", payload: {} }, headers),
    ]);
    assertEquals(a.id, b.id);
    const c = await createCommand(t, "c1", { name: "reboot", payload: {} }, headers);
    assertEquals(c.id, a.id);
    assertEquals((await poll(t, d)).map((x) => x.id), [a.id]);
    const answered = await t.dev(d, "POST", `/device/v1/commands/${a.id}/result`, {
      status: "succeeded",
    });
    assertEquals(answered.status, 200);
    // A repeat after it finished is the same command, with its result: 202 as for any command
    // (200 means "finished within ?wait=", as it is then at once).
    const repeat = await createCommand(t, "c1", { name: "reboot", payload: {} }, headers);
    assertEquals([repeat.id, repeat.status], [a.id, "succeeded"]);
    const waited = await t.op("POST", "/api/v1/devices/c1/commands?wait=5", {
      name: "reboot",
      payload: {},
    }, headers);
    assertEquals([waited.status, (await waited.json()).status], [200, "succeeded"]);
  } finally {
    await t.dispose();
  }
});

Deno.test("commands: queued commands survive a restart on a file-backed KV", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/doppel.kv`;
    const clock = new ManualClock();
    let creds: Creds;
    let id: string;
    const first = await testApp({ clock, kv: await Deno.openKv(path) });
    try {
      creds = await first.register({ id: "c1" });
      id = (await createCommand(first, "c1", { name: "reboot", payload: { delaySeconds: 9 } })).id;
      // Activate the twin in this process so the restart has something to lose.
      assertEquals((await first.runtime.patchReported("c1", { firmware: "1.0" })).version, 2);
    } finally {
      await first.dispose();
    }

    clock.advance(1_000);
    const second = await testApp({ clock, kv: await Deno.openKv(path) });
    try {
      const items = await poll(second, creds);
      assertEquals(items.map((c) => [c.id, c.payload]), [[id, { delaySeconds: 9 }]]);
      const res = await second.dev(creds, "POST", `/device/v1/commands/${id}/result`, {
        status: "succeeded",
      });
      assertEquals(res.status, 200);
      assertEquals((await getCommand(second, "c1", id)).status, "succeeded");
    } finally {
      await second.dispose();
    }
  });
});

Deno.test("commands: timers fire after a restart (TTL and timeout)", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/doppel.kv`;
    const clock = new ManualClock();
    const t0 = clock.now();
    let ttlId: string;
    let timeoutId: string;
    const first = await testApp({ clock, kv: await Deno.openKv(path) });
    try {
      const d = await first.register({ id: "c1" });
      await first.register({ id: "c2" });
      const toDeliver = await createCommand(first, "c1", {
        name: "reboot",
        payload: {},
        timeout: 30,
      });
      assertEquals((await poll(first, d)).length, 1);
      timeoutId = toDeliver.id;
      ttlId = (await createCommand(first, "c2", { name: "reboot", payload: {}, ttl: 60 })).id;
    } finally {
      await first.dispose();
    }

    const second = await testApp({ clock, kv: await Deno.openKv(path) });
    try {
      assertEquals(await second.runtime.runDueTimers(), 0);
      clock.advance(61_000);
      assert((await second.runtime.runDueTimers()) >= 2, "both twins' timers fire");
      const expired = await getCommand(second, "c2", ttlId);
      assertEquals(expired.status, "expired");
      assertEquals(expired.completedAt, iso(t0 + 61_000));
      assertEquals((await getCommand(second, "c1", timeoutId)).status, "timed_out");
      assertEquals(second.runtime.activations, 2);
    } finally {
      await second.dispose();
    }
  });
});

Deno.test("commands: a twin's own command (thermostat cool) expires by timer too", async () => {
  const clock = new ManualClock();
  const t = await testApp({ clock });
  try {
    const d = await t.register({ id: "hot" });
    const res = await t.dev(d, "POST", "/device/v1/telemetry", { temperature: 45 });
    assertEquals(res.status, 202);
    const list = await (await t.op("GET", "/api/v1/devices/hot/commands")).json();
    assertEquals(list.items.length, 1);
    const cool: CommandRecord = list.items[0];
    assertEquals([cool.name, cool.source, cool.status], ["cool", "twin", "queued"]);
    clock.advance(300_001);
    assert((await t.runtime.runDueTimers()) >= 1);
    assertEquals((await getCommand(t, "hot", cool.id)).status, "expired");
    assert((await poll(t, d)).length === 0);
  } finally {
    await t.dispose();
  }
});

Deno.test("commands: large payloads waiting are capped in bytes (409), and a poll hands over what one commit holds", async () => {
  const t = await testApp();
  try {
    const d = await t.register({ id: "big", kind: "generic" });
    const payload = { blob: "x".repeat(16_000) };
    const created: string[] = [];
    for (;;) {
      const res = await t.op("POST", "/api/v1/devices/big/commands", { name: "upload", payload });
      const body = await res.json();
      if (res.status !== 202) {
        assertEquals([res.status, body.error.code], [409, "conflict"], JSON.stringify(body));
        break;
      }
      created.push(body.id);
    }
    assert(created.length >= 10, `only ${created.length} fitted`);
    // A poll without a limit answers (200), oldest first, with part of them; the next, the rest.
    const first = await poll(t, d);
    assert(first.length > 0 && first.length < created.length, `first poll: ${first.length}`);
    const second = await poll(t, d);
    assertEquals([...first, ...second].map((c) => c.id), created);
  } finally {
    await t.dispose();
  }
});
