/**
 * Bridge presence (`BridgePresence`) without a broker: several instances on one store, as a shared
 * subscription group over several Doppel processes gives, and the orders announcements can come
 * in. The same over a real Mosquitto is in `bridge_test.ts`.
 * @module
 */
import { assertEquals } from "./assert.ts";
import { acceptingDownlink, type TestApp, testApp } from "./helpers.ts";
import { silentLogger } from "../src/log.ts";
import { type Announcement, BridgePresence } from "../src/transports/bridge_presence.ts";

const downlink = acceptingDownlink("bridge");

/** A test app with bridge instances on it, and a clock they share. */
async function withInstances(
  count: number,
  fn: (t: TestApp, instances: BridgePresence[], clock: { now: number }) => Promise<void>,
): Promise<void> {
  const t = await testApp();
  const clock = { now: Date.now() };
  const instances = Array.from({ length: count }, () =>
    new BridgePresence({
      runtime: t.runtime,
      registry: t.registry,
      sessions: t.sessions,
      kv: t.kv,
      downlink,
      logger: silentLogger,
      now: () => clock.now,
    }));
  try {
    await fn(t, instances, clock);
  } finally {
    for (const instance of instances) await instance.close();
    await t.dispose();
  }
}

/** A live announcement of `id`, or a retained one replayed to a subscription made at `at`. */
async function say(
  t: TestApp,
  instance: BridgePresence,
  id: string,
  status: Announcement["status"],
  retained?: { subscribedAt: number },
): Promise<void> {
  const device = await t.registry.get(id);
  if (!device) throw new Error(`No device ${id}.`);
  await instance.announce({
    device,
    status,
    retained: retained !== undefined,
    subscribedAt: retained?.subscribedAt ?? 0,
  });
  await instance.settled(); // Children going offline with a gateway, queued after it.
}

/** Registers gateway `g1` and its child `k1`, and announces them online: `g1` on one instance, `k1` on another. */
async function gatewayAndChildOnline(
  t: TestApp,
  gatewayOn: BridgePresence,
  childOn: BridgePresence,
): Promise<void> {
  await t.register({ id: "g1" });
  await t.register({ id: "k1", parent: "g1" });
  await say(t, gatewayOn, "g1", "online");
  await say(t, childOn, "k1", "online");
}

async function statuses(t: TestApp, ...ids: string[]): Promise<string[]> {
  return await Promise.all(ids.map(async (id) => {
    const res = await t.op("GET", `/api/v1/twins/${id}`);
    return (await res.json()).connection.status;
  }));
}

Deno.test("bridge presence, two instances: an offline that reaches the instance not holding the session still ends it, long after start", async () => {
  await withInstances(2, async (t, [a, b], clock) => {
    await t.register({ id: "x1" });
    await say(t, a, "x1", "online");
    clock.now += 10 * 60_000;
    await say(t, b, "x1", "offline");
    assertEquals(await statuses(t, "x1"), ["offline"]);
  });
});

Deno.test("bridge presence, two instances: a child announced on the instance that does not hold its gateway comes online, and goes with the gateway", async () => {
  await withInstances(2, async (t, [a, b]) => {
    await gatewayAndChildOnline(t, a, b);
    assertEquals(await statuses(t, "g1", "k1"), ["online", "online"]);
    await say(t, a, "g1", "offline");
    assertEquals(await statuses(t, "g1", "k1"), ["offline", "offline"]);
  });
});

Deno.test("bridge presence: nested gateways serve their grandchildren, who go offline with the top gateway", async () => {
  await withInstances(1, async (t, [a]) => {
    await t.register({ id: "g1" });
    await t.register({ id: "g2", parent: "g1" });
    await t.register({ id: "k2", parent: "g2" });
    for (const id of ["g1", "g2", "k2"]) await say(t, a, id, "online");
    assertEquals(await statuses(t, "g1", "g2", "k2"), ["online", "online", "online"]);
    await say(t, a, "g1", "offline");
    assertEquals(await statuses(t, "g1", "g2", "k2"), ["offline", "offline", "offline"]);
  });
});

Deno.test("bridge presence: a child announced while its gateway is offline waits for the gateway", async () => {
  await withInstances(1, async (t, [a]) => {
    await t.register({ id: "g1" });
    await t.register({ id: "k1", parent: "g1" });
    await say(t, a, "k1", "online");
    assertEquals(await statuses(t, "k1"), ["never"]);
    await say(t, a, "g1", "online");
    assertEquals(await statuses(t, "g1", "k1"), ["online", "online"]);
  });
});

Deno.test("bridge presence: a retained online replayed to a subscription older than a live offline is dropped", async () => {
  await withInstances(1, async (t, [a], clock) => {
    await t.register({ id: "r1" });
    await say(t, a, "r1", "online");
    const subscribedAt = clock.now; // A connection subscribes; its replay is queued...
    clock.now += 5;
    await say(t, a, "r1", "offline"); // ...while another applies the device's will.
    clock.now += 5;
    await say(t, a, "r1", "online", { subscribedAt });
    assertEquals(await statuses(t, "r1"), ["offline"]);
    // A replay to a later subscription is the broker's current word.
    await say(t, a, "r1", "online", { subscribedAt: Math.max(clock.now, Date.now()) + 1 });
    assertEquals(await statuses(t, "r1"), ["online"]);
  });
});

Deno.test("bridge presence: a disabled gateway's children go offline with it, wherever served", async () => {
  await withInstances(2, async (t, [a, b]) => {
    await gatewayAndChildOnline(t, a, b);
    const gateway = await t.registry.get("g1");
    await a.ended(gateway!, "disabled");
    await a.settled();
    assertEquals(await statuses(t, "g1", "k1"), ["offline", "offline"]);
  });
});

Deno.test("bridge presence: after close, announcements are refused (so they are not acknowledged, and come again)", async () => {
  await withInstances(1, async (t, [a]) => {
    await t.register({ id: "z1" });
    await a.close();
    let refused = false;
    await say(t, a, "z1", "online").catch(() => refused = true);
    assertEquals(refused, true);
  });
});

Deno.test("bridge presence, two instances: a device whose will went to one instance and whose next online went to the other (which still held its session) is online", async () => {
  await withInstances(2, async (t, [a, b]) => {
    await t.register({ id: "x2" });
    await t.register({ id: "g2" });
    await t.register({ id: "k2", parent: "g2" });
    for (const id of ["x2", "g2", "k2"]) await say(t, a, id, "online");
    await say(t, b, "x2", "offline");
    await say(t, b, "k2", "offline");
    assertEquals(await statuses(t, "x2", "k2"), ["offline", "offline"]);
    await say(t, a, "x2", "online");
    await say(t, a, "k2", "online");
    assertEquals(await statuses(t, "x2", "k2"), ["online", "online"]);
  });
});

Deno.test("bridge presence, two instances: a child announced on one before its gateway's session opened on the other is served once it has", async () => {
  await withInstances(2, async (t, [a, b]) => {
    await t.register({ id: "g3" });
    await t.register({ id: "k3", parent: "g3" });
    await say(t, b, "k3", "online"); // The gateway is not online anywhere yet: k3 waits.
    assertEquals(await statuses(t, "k3"), ["never"]);
    await say(t, a, "g3", "online");
    assertEquals(await statuses(t, "g3", "k3"), ["online", "online"]);
    await say(t, a, "g3", "offline");
    assertEquals(await statuses(t, "k3"), ["offline"]);
  });
});

Deno.test("bridge presence, two instances: a retained online replayed on one after the other applied a newer live offline is dropped", async () => {
  await withInstances(2, async (t, [a, b], clock) => {
    await t.register({ id: "s4" });
    await say(t, a, "s4", "online");
    const subscribedAt = Date.now() - 1_000; // A's connection subscribed before the will came.
    clock.now += 5;
    await say(t, b, "s4", "offline");
    await say(t, a, "s4", "online", { subscribedAt });
    assertEquals(await statuses(t, "s4"), ["offline"]);
  });
});

Deno.test("bridge presence: a child waiting for its gateway that was deleted meanwhile does not keep the others waiting", async () => {
  await withInstances(1, async (t, [a]) => {
    await t.register({ id: "g5" });
    for (const id of ["k5a", "k5b", "k5c"]) await t.register({ id, parent: "g5" });
    for (const id of ["k5a", "k5b", "k5c"]) await say(t, a, id, "online");
    assertEquals((await t.op("DELETE", "/api/v1/devices/k5b")).status, 204);
    await say(t, a, "g5", "online");
    assertEquals(await statuses(t, "g5", "k5a", "k5c"), ["online", "online", "online"]);
  });
});

Deno.test("bridge presence: a retained online replayed after the device's lease ran out (not an offline announcement) opens its session again", async () => {
  await withInstances(1, async (t, [a]) => {
    await t.register({ id: "l1" });
    const subscribedAt = Date.now() - 1_000;
    // An earlier process held the session; its lease runs out while the replay is on its way.
    await t.runtime.send("l1", {
      type: "session.open",
      sessionId: "bridge:l1",
      transport: "bridge",
      via: "l1",
      leaseMs: 90_000,
    });
    await t.runtime.send("l1", {
      type: "session.close",
      sessionId: "bridge:l1",
      reason: "lease expired",
    });
    assertEquals(await statuses(t, "l1"), ["offline"]);
    await say(t, a, "l1", "online", { subscribedAt });
    assertEquals(await statuses(t, "l1"), ["online"]);
  });
});
