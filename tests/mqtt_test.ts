/**
 * The embedded MQTT endpoint through real TCP connections (mqtt.js and the mosquitto CLI):
 * credentials, durable QoS 1 uplink, twin reads and patches, refusals on `devices/{id}/errors`,
 * disabling, desired catch-up, durable commands with PUBACK delivery, presence and gateways.
 * @module
 */
import { connect as netConnect, type Socket } from "node:net";
import { Buffer } from "node:buffer";
import { assert, assertEquals } from "./assert.ts";
import { type Creds, until, waitConnection, waitStatus, withFixture } from "./transport_fixture.ts";
import type { TransportFixture } from "./transport_fixture.ts";
import { run } from "./real_process.ts";
import { ManualClock } from "../src/clock.ts";
import { loadTwin } from "../src/storage/twin_store.ts";

const json = (value: unknown) => JSON.stringify(value);

async function status(f: TransportFixture, deviceId: string, commandId: string): Promise<string> {
  return (await f.command(deviceId, commandId)).status as string;
}

/** The desired version the twin has recorded as acknowledged by the device. */
async function desiredAcked(f: TransportFixture, id: string): Promise<number> {
  return (await loadTwin(f.kv, id))!.state.desiredAcked;
}

Deno.test("mqtt connect: good, wrong key, unknown device, disabled, wrong client id", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const off = await f.register({ id: "m-off" });
    await f.setEnabled("m-off", false);
    const cases: Array<[string, Record<string, unknown>, number]> = [
      ["good credentials", { clientId: "m1", username: "m1", password: d.key }, 0],
      ["wrong key", { clientId: "m1", username: "m1", password: "wrong" }, 4],
      ["unknown device", { clientId: "nobody", username: "nobody", password: d.key }, 4],
      ["no password", { clientId: "m1", username: "m1" }, 4],
      ["disabled device", { clientId: "m-off", username: "m-off", password: off.key }, 5],
      ["client id is not the device id", { clientId: "other", username: "m1", password: d.key }, 2],
    ];
    for (const [name, options, expected] of cases) {
      assertEquals(await f.mqttReturnCode(options), expected, name);
    }
  });
});

Deno.test("mqtt telemetry QoS 1: PUBACK only once durable; the twin shows it", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const c = await f.mqtt(d);
    for (const temperature of [20, 21.5, 23]) {
      await c.client.publishAsync("devices/m1/telemetry", json({ temperature }), { qos: 1 });
      // The PUBACK has arrived: the value must already be in KV, read straight from the store.
      const stored = await loadTwin(f.kv, "m1");
      assertEquals(stored?.state.telemetry.last, { temperature }, `durable before PUBACK`);
    }
    // A batch (array) is accepted as over HTTP.
    await c.client.publishAsync(
      "devices/m1/telemetry",
      json([{ temperature: 24, id: "a" }, { temperature: 25, humidity: 40, id: "b" }]),
      { qos: 1 },
    );
    assertEquals((await loadTwin(f.kv, "m1"))?.state.telemetry.last, {
      temperature: 25,
      humidity: 40,
    });
    const twin = await f.twin("m1");
    assertEquals((twin.telemetry as { last: unknown }).last, { temperature: 25, humidity: 40 });
  });
});

Deno.test("mqtt twin/get: answered on devices/{id}/twin with the rid; reported patch applies", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const c = await f.mqtt(d);
    await c.client.subscribeAsync("devices/m1/twin", { qos: 1 });

    await c.client.publishAsync("devices/m1/twin/reported", json({ firmware: "1.2.0" }), {
      qos: 1,
    });
    const afterPatch = await f.twin("m1");
    assertEquals(afterPatch.reported, { firmware: "1.2.0" });
    assertEquals(afterPatch.version, 2);

    await f.op("PATCH", "/api/v1/twins/m1/desired", { targetTemperature: 21 });
    await c.client.publishAsync("devices/m1/twin/get", json({ rid: "req-42" }), { qos: 1 });
    const answer = await c.nth("devices/m1/twin");
    assertEquals(answer.body, {
      desired: { targetTemperature: 21 },
      reported: { firmware: "1.2.0" },
      version: 3,
      rid: "req-42",
    });
    // An empty twin/get is answered too, without a rid.
    await c.client.publishAsync("devices/m1/twin/get", "", { qos: 1 });
    const second = await c.nth("devices/m1/twin", 2);
    assertEquals(second.body, {
      desired: { targetTemperature: 21 },
      reported: { firmware: "1.2.0" },
      version: 3,
    });
  });
});

Deno.test("mqtt refusals: bad JSON and schema violations → devices/{id}/errors, nothing written, still connected", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const c = await f.mqtt(d);
    await c.client.subscribeAsync("devices/m1/errors", { qos: 0 });
    await c.client.publishAsync("devices/m1/telemetry", json({ temperature: 20 }), { qos: 1 });
    const before = await loadTwin(f.kv, "m1");

    const bad: Array<[string, string, string]> = [
      ["devices/m1/telemetry", "{not json", "invalid_json"],
      ["devices/m1/telemetry", json({ temperature: "hot" }), "validation_failed"],
      ["devices/m1/telemetry", json({ temperature: 20, colour: "red" }), "validation_failed"],
      ["devices/m1/twin/reported", json({ firmware: 12 }), "validation_failed"],
      ["devices/m1/twin/reported", "[1, 2]", "bad_request"],
      ["devices/m1/commands/c0-nope/result", json({ status: "maybe" }), "validation_failed"],
    ];
    for (const [i, [topic, payload, code]] of bad.entries()) {
      // PUBACKed: the message will never be accepted, so the device must not resend it.
      await c.client.publishAsync(topic, payload, { qos: 1 });
      const error = await c.nth("devices/m1/errors", i + 1);
      const body = error.body as { topic: string; error: { code: string; message: string } };
      assertEquals(body.topic, topic, `${payload}`);
      assertEquals(body.error.code, code, `${payload}: ${body.error.message}`);
      assert(typeof body.error.message === "string" && body.error.message.length > 0);
    }
    const schemaError = c.on("devices/m1/errors")[1].body as {
      error: { details: { fields: Array<{ field: string }> } };
    };
    assertEquals(schemaError.error.details.fields.map((x) => x.field), ["temperature"]);

    // Nothing was written: the stored record is the same commit.
    const after = await loadTwin(f.kv, "m1");
    assertEquals(after?.versionstamp, before?.versionstamp);
    assertEquals(after?.state.reported, {});
    // The connection is still usable.
    assert(c.client.connected);
    await c.client.publishAsync("devices/m1/telemetry", json({ temperature: 22 }), { qos: 1 });
    assertEquals((await loadTwin(f.kv, "m1"))?.state.telemetry.last, { temperature: 22 });
  });
});

Deno.test("mqtt: a device disabled while connected is disconnected and cannot reconnect", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const c = await f.mqtt(d);
    await waitConnection(f, "m1", "online");
    await f.setEnabled("m1", false);
    await c.whenClosed();
    const connection = await waitConnection(f, "m1", "offline");
    assertEquals(connection.reason, "disabled");
    assertEquals(await f.mqttReturnCode({ clientId: "m1", username: "m1", password: d.key }), 5);
    // Enabled again, it may connect again.
    await f.setEnabled("m1", true);
    assertEquals(await f.mqttReturnCode({ clientId: "m1", username: "m1", password: d.key }), 0);
  });
});

/** Registers device `id` and connects it, online, with a will that reports `reported`. */
async function withWill(
  f: TransportFixture,
  id: string,
  reported: Record<string, unknown>,
): Promise<Awaited<ReturnType<TransportFixture["mqtt"]>>> {
  const d = await f.register({ id });
  const will = { topic: `devices/${id}/twin/reported`, payload: Buffer.from(json(reported)) };
  const c = await f.mqtt(d, { will: { ...will, qos: 1, retain: false } });
  await waitConnection(f, id, "online");
  return c;
}

Deno.test("mqtt: the will of a device disabled while connected is not applied", async () => {
  await withFixture(async (f) => {
    const c = await withWill(f, "m2", { firmware: "after-disable" });
    const before = await f.twin("m2");
    await f.setEnabled("m2", false);
    await c.whenClosed();
    await waitConnection(f, "m2", "offline");
    // A twin read is ordered after anything the broker applied while closing the connection.
    const after = await f.twin("m2");
    assertEquals(after.reported, before.reported);
    assertEquals(after.version, before.version);
  });
});

Deno.test("mqtt: the will of a connection lost without DISCONNECT is applied", async () => {
  await withFixture(async (f) => {
    const c = await withWill(f, "m3", { firmware: "lost" });
    (c.client as unknown as { stream: { destroy(): void } }).stream.destroy();
    await until(
      async () => (await loadTwin(f.kv, "m3"))?.state.reported.firmware === "lost",
      "the will applied",
    );
  });
});

Deno.test("mqtt desired: live pushes, then one coalesced catch-up with exactly the changes since the last ack", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const topic = "devices/m1/twin/desired";
    let c = await f.mqtt(d);
    await c.client.subscribeAsync(topic, { qos: 1 });
    // Nothing has changed yet: nothing is sent.
    const res = await f.op("PATCH", "/api/v1/twins/m1/desired", {
      targetTemperature: 20,
      mode: "heat",
    });
    assertEquals(res.status, 200);
    const live = await c.nth(topic);
    assertEquals(live.body, { patch: { targetTemperature: 20, mode: "heat" }, version: 2 });
    assertEquals(live.qos, 1);
    await until(async () => (await desiredAcked(f, "m1")) === 2, "desired ack of version 2");
    assertEquals(c.on(topic).length, 1);
    await c.end();

    // Offline: three changes, one of them a deletion.
    for (const patch of [{ targetTemperature: 22 }, { maxTemperature: 40 }, { mode: null }]) {
      assertEquals((await f.op("PATCH", "/api/v1/twins/m1/desired", patch)).status, 200);
    }
    c = await f.mqtt(d);
    await c.client.subscribeAsync(topic, { qos: 1 });
    const catchUp = await c.nth(topic);
    assertEquals(catchUp.body, {
      patch: { targetTemperature: 22, maxTemperature: 40, mode: null },
      version: 5,
    });
    await until(async () => (await desiredAcked(f, "m1")) === 5, "desired ack of version 5");
    assertEquals(c.on(topic).length, 1, "one coalesced message");

    // Live again: just the new change.
    await f.op("PATCH", "/api/v1/twins/m1/desired", { targetTemperature: 23 });
    const next = await c.nth(topic, 2);
    assertEquals(next.body, { patch: { targetTemperature: 23 }, version: 6 });
    await until(async () => (await desiredAcked(f, "m1")) === 6, "desired ack of version 6");
    assertEquals(c.on(topic).length, 2);
  });
});

Deno.test("mqtt commands: queued while offline are delivered in creation order on reconnect", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const ids: string[] = [];
    for (const delaySeconds of [1, 2, 3]) {
      ids.push((await f.sendCommand("m1", { name: "reboot", payload: { delaySeconds } })).id);
    }
    for (const id of ids) assertEquals(await status(f, "m1", id), "queued");
    const c = await f.mqtt(d);
    await c.client.subscribeAsync("devices/m1/commands/+", { qos: 1 });
    const isCommand = (t: string) => /^devices\/m1\/commands\/[^/]+$/.test(t);
    await c.nth(isCommand, 3);
    const received = c.on(isCommand);
    assertEquals(received.map((m) => m.topic), ids.map((id) => `devices/m1/commands/${id}`));
    assertEquals(received.map((m) => m.qos), [1, 1, 1]);
    const first = received[0].body as Record<string, unknown>;
    assertEquals(first.name, "reboot");
    assertEquals(first.payload, { delaySeconds: 1 });
    assertEquals(typeof first.expiresAt, "string");
    for (const id of ids) await waitStatus(f, "m1", id, "delivered");
    assertEquals(c.on(isCommand).length, 3, "each command is sent once");
  });
});

Deno.test("mqtt commands: one expired while offline (ttl 1, timers run) is never delivered", async () => {
  const clock = new ManualClock();
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const short = await f.sendCommand("m1", { name: "reboot", payload: {}, ttl: 1 });
    const long = await f.sendCommand("m1", { name: "reboot", payload: { delaySeconds: 5 } });
    clock.advance(2_000);
    assertEquals(await f.doppel.runtime.runDueTimers(), 1);
    assertEquals(await status(f, "m1", short.id), "expired");

    const c = await f.mqtt(d);
    await c.client.subscribeAsync("devices/m1/commands/+", { qos: 1 });
    await c.nth(`devices/m1/commands/${long.id}`);
    await waitStatus(f, "m1", long.id, "delivered");
    assertEquals(c.on((t) => t.startsWith("devices/m1/commands/")).map((m) => m.topic), [
      `devices/m1/commands/${long.id}`,
    ]);
    assertEquals(await status(f, "m1", short.id), "expired");
  }, { clock });
});

Deno.test("mqtt commands: a persistent session does not get a push again after its command expired", async () => {
  const clock = new ManualClock();
  await withFixture(async (f) => {
    const d = await f.register({ id: "p1" });
    const first = await f.mqtt(d, { clean: false });
    // This device takes messages but never acknowledges them (its link stalls).
    first.client.handleMessage = (_packet, _callback) => {};
    await first.client.subscribeAsync("devices/p1/commands/+", { qos: 1 });
    const command = await f.sendCommand("p1", { name: "reboot", payload: {}, ttl: 5 });
    await first.nth(`devices/p1/commands/${command.id}`);
    await first.end();
    await waitConnection(f, "p1", "offline");
    clock.advance(10_000);
    assertEquals(await f.doppel.runtime.runDueTimers(), 1);
    assertEquals(await status(f, "p1", command.id), "expired");

    // Back on the same session: the broker must not hand over what the twin has expired.
    const again = await f.mqtt(d, { clean: false });
    await again.client.publishAsync("devices/p1/telemetry", json({ temperature: 1 }), { qos: 1 });
    assertEquals(again.on((t) => t.startsWith("devices/p1/commands/")), []);
  }, { clock });
});

Deno.test("mqtt commands: `delivered` only after the device's PUBACK", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const c = await f.mqtt(d);
    // Hold the PUBACK of command messages until we release it.
    let release: (() => void) | undefined;
    const original = c.client.handleMessage.bind(c.client);
    c.client.handleMessage = (packet, callback) => {
      if (packet.topic.startsWith("devices/m1/commands/")) release = () => callback();
      else original(packet, callback);
    };
    await c.client.subscribeAsync("devices/m1/commands/+", { qos: 1 });
    const command = await f.sendCommand("m1", { name: "reboot", payload: {} });
    await c.nth(`devices/m1/commands/${command.id}`);
    await until(() => release, "the held PUBACK");
    // Received but not acknowledged: still queued, however often we look.
    for (let i = 0; i < 5; i++) assertEquals(await status(f, "m1", command.id), "queued");
    release!();
    await waitStatus(f, "m1", command.id, "delivered");
    const record = await f.command("m1", command.id);
    assertEquals(
      (record.history as Array<{ status: string }>).map((h) => h.status),
      ["queued", "delivered"],
    );
  });
});

Deno.test("mqtt commands: a QoS 0 subscription is refused, as delivery is counted on PUBACK", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "q0" });
    const c = await f.mqtt(d);
    const error = await c.client.subscribeAsync("devices/q0/commands/+", { qos: 0 })
      .then(() => null, (e) => e as { packet?: { granted?: number[] } });
    assertEquals(error?.packet?.granted, [128]);
    // Desired changes too: they count as seen on the PUBACK.
    const desired = await c.client.subscribeAsync("devices/q0/twin/desired", { qos: 0 })
      .then(() => null, (e) => e as { packet?: { granted?: number[] } });
    assertEquals(desired?.packet?.granted, [128]);
    const command = await f.sendCommand("q0", { name: "reboot", payload: {} });
    await c.client.publishAsync("devices/q0/telemetry", json({ temperature: 1 }), { qos: 1 });
    assertEquals(await status(f, "q0", command.id), "queued");
    // At QoS 1 it is delivered, once the device has it.
    await c.client.subscribeAsync("devices/q0/commands/+", { qos: 1 });
    await c.nth(`devices/q0/commands/${command.id}`);
    await waitStatus(f, "q0", command.id, "delivered");
  });
});

Deno.test("mqtt commands: result round trip answers the operator's ?wait=", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const c = await f.mqtt(d);
    await c.client.subscribeAsync("devices/m1/commands/+", { qos: 1 });
    const waiting = f.op("POST", "/api/v1/devices/m1/commands?wait=5", {
      name: "cool",
      payload: { targetTemperature: 19 },
    });
    const message = await c.nth((t) => /^devices\/m1\/commands\/[^/]+$/.test(t));
    const commandId = message.topic.split("/")[3];
    assertEquals((message.body as { payload: unknown }).payload, { targetTemperature: 19 });
    await c.client.publishAsync(
      `devices/m1/commands/${commandId}/result`,
      json({ status: "succeeded", result: { reached: 19 } }),
      { qos: 1 },
    );
    const res = await waiting;
    const body = await res.json();
    assertEquals(res.status, 200, JSON.stringify(body));
    assertEquals(body.id, commandId);
    assertEquals(body.status, "succeeded");
    assertEquals(body.result, { reached: 19 });
    // A second result is refused on the errors topic, not with a disconnect.
    await c.client.subscribeAsync("devices/m1/errors", { qos: 0 });
    await c.client.publishAsync(
      `devices/m1/commands/${commandId}/result`,
      json({ status: "failed" }),
      { qos: 1 },
    );
    const refusal = (await c.nth("devices/m1/errors")).body as { error: { code: string } };
    assertEquals(refusal.error.code, "conflict");
    assert(c.client.connected);
  });
});

Deno.test("mqtt presence: online on connect, offline with reason disconnect on a clean DISCONNECT", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    assertEquals((await f.twin("m1")).connection.status, "never");
    const c = await f.mqtt(d);
    const online = await waitConnection(f, "m1", "online");
    assertEquals(online.reason, "connect");
    assert(typeof online.since === "string");
    await c.end();
    const offline = await waitConnection(f, "m1", "offline");
    assertEquals(offline.reason, "disconnect");
    assert(Date.parse(offline.since as string) >= Date.parse(online.since as string));
  });
});

Deno.test("mqtt presence: a connection lost without DISCONNECT goes offline", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const c = await f.mqtt(d);
    await waitConnection(f, "m1", "online");
    c.client.stream.destroy();
    await c.whenClosed();
    const offline = await waitConnection(f, "m1", "offline");
    assert(offline.reason !== "disconnect", `reason ${offline.reason} claims a clean disconnect`);
  });
});

/** A hand-built MQTT 3.1.1 CONNECT (clean session) with the given keepalive in seconds. */
function connectPacket(creds: Creds, keepalive: number): Uint8Array {
  const str = (s: string) => {
    const bytes = Buffer.from(s, "utf8");
    return Buffer.concat([Buffer.from([bytes.length >> 8, bytes.length & 0xff]), bytes]);
  };
  const variable = Buffer.concat([
    str("MQTT"),
    Buffer.from([4, 0b1100_0010, keepalive >> 8, keepalive & 0xff]),
  ]);
  const payload = Buffer.concat([str(creds.id), str(creds.id), str(creds.key)]);
  const length = variable.length + payload.length;
  assert(length < 128);
  return Buffer.concat([Buffer.from([0x10, length]), variable, payload]);
}

Deno.test("mqtt presence: keepalive loss (a silent client) goes offline with reason keepalive", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const socket: Socket = netConnect(f.mqttPort, "127.0.0.1");
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    try {
      const connack = new Promise<Buffer>((resolve) => socket.once("data", resolve));
      await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
      socket.write(connectPacket(d, 1));
      assertEquals([...(await connack)], [0x20, 2, 0, 0]);
      await waitConnection(f, "m1", "online");
      // The client says nothing more: after 1.5 keepalives the broker gives up on it.
      await closed;
      const offline = await waitConnection(f, "m1", "offline");
      assertEquals(offline.reason, "keepalive");
    } finally {
      socket.destroy();
      await closed;
    }
  });
});

Deno.test("mqtt gateway: telemetry, commands and presence for its child", async () => {
  await withFixture(async (f) => {
    const gw = await f.register({ id: "gw" });
    await f.register({ id: "kid", parent: "gw" });
    const c = await f.mqtt(gw);

    await c.client.publishAsync("devices/kid/telemetry", json({ temperature: 18 }), { qos: 1 });
    assertEquals((await loadTwin(f.kv, "kid"))?.state.telemetry.last, { temperature: 18 });
    assertEquals((await loadTwin(f.kv, "gw"))?.state.telemetry.last, {});
    await waitConnection(f, "kid", "online");

    const granted = await c.client.subscribeAsync("devices/kid/commands/+", { qos: 1 });
    assertEquals(granted.map((g) => g.qos), [1]);
    const command = await f.sendCommand("kid", { name: "reboot", payload: {} });
    const message = await c.nth(`devices/kid/commands/${command.id}`);
    assertEquals((message.body as { name: string }).name, "reboot");
    await waitStatus(f, "kid", command.id, "delivered");
    await c.client.publishAsync(
      `devices/kid/commands/${command.id}/result`,
      json({ status: "succeeded" }),
      { qos: 1 },
    );
    assertEquals(await status(f, "kid", command.id), "succeeded");

    // The gateway reports its child's presence.
    await c.client.publishAsync("devices/kid/presence", json({ status: "offline" }), { qos: 1 });
    const offline = await waitConnection(f, "kid", "offline");
    assertEquals(offline.reason, "gateway reported");
    await c.client.publishAsync("devices/kid/presence", json({ status: "online" }), { qos: 1 });
    await waitConnection(f, "kid", "online");
    // A bad presence payload is refused on the child's errors topic.
    await c.client.subscribeAsync("devices/kid/errors", { qos: 0 });
    await c.client.publishAsync("devices/kid/presence", json({ status: "asleep" }), { qos: 1 });
    const refusal = (await c.nth("devices/kid/errors")).body as { error: { code: string } };
    assertEquals(refusal.error.code, "validation_failed");
    // The gateway going away takes its child's presence with it.
    await c.end();
    await waitConnection(f, "gw", "offline");
    await waitConnection(f, "kid", "offline");
  });
});

Deno.test("mqtt presence: a device's own announcements (as bridge mode needs) are checked and left, as its connection is its presence", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "self1" });
    const c = await f.mqtt(d);
    await waitConnection(f, "self1", "online");
    await c.client.subscribeAsync("devices/self1/errors", { qos: 0 });
    for (const status of ["online", "offline"]) {
      await c.client.publishAsync("devices/self1/presence", json({ status }), {
        qos: 1,
        retain: true,
      });
    }
    await c.client.publishAsync("devices/self1/presence", json({ status: "asleep" }), { qos: 1 });
    // The first refusal is the bad one's: the two announcements before it were taken.
    const refusal = (await c.nth("devices/self1/errors")).body as {
      topic: string;
      error: { code: string };
    };
    assertEquals([refusal.topic, refusal.error.code], [
      "devices/self1/presence",
      "validation_failed",
    ]);
    assertEquals((await loadTwin(f.kv, "self1"))?.state.connection.status, "online");
  });
});

Deno.test("mqtt gateway: cannot act for a non-child (SUBACK 0x80; publish ends the connection)", async () => {
  await withFixture(async (f) => {
    const gw = await f.register({ id: "gw" });
    await f.register({ id: "kid", parent: "gw" });
    await f.register({ id: "stranger" });
    const c = await f.mqtt(gw);
    const error = await c.client.subscribeAsync("devices/stranger/commands/+", { qos: 1 })
      .then(() => null, (e) => e as { packet?: { granted?: number[] } });
    assertEquals(error?.packet?.granted, [128]);
    assert(c.client.connected, "a refused subscription keeps the connection");
    // A command for the stranger never reaches the gateway.
    const command = await f.sendCommand("stranger", { name: "reboot", payload: {} });
    await c.client.publishAsync("devices/gw/telemetry", json({ temperature: 1 }), { qos: 1 });
    assertEquals(c.on((t) => t.startsWith("devices/stranger/")), []);
    assertEquals(await status(f, "stranger", command.id), "queued");

    c.client.publish("devices/stranger/telemetry", json({ temperature: 99 }), { qos: 0 });
    await c.whenClosed();
    assertEquals((await loadTwin(f.kv, "stranger"))?.state.telemetry.last, {});
    assertEquals((await f.twin("stranger")).connection.status, "never");
  });
});

Deno.test("mqtt gateway: a child deleted and registered again elsewhere no longer reaches the gateway's old subscription", async () => {
  await withFixture(async (f) => {
    const gw = await f.register({ id: "gw" });
    await f.register({ id: "kid", parent: "gw" });
    const c = await f.mqtt(gw);
    assertEquals((await c.client.subscribeAsync("devices/kid/commands/+", { qos: 1 })).length, 1);
    const first = await f.sendCommand("kid", { name: "reboot", payload: {} });
    await c.nth(`devices/kid/commands/${first.id}`);

    // The child is deleted and registered again with no parent, and connects itself: what the
    // broker now publishes on its topics is for it, not for the gateway's subscription from before.
    assertEquals((await f.op("DELETE", "/api/v1/devices/kid")).status, 204);
    const kid = await f.mqtt(await f.register({ id: "kid" }));
    await kid.client.subscribeAsync("devices/kid/commands/+", { qos: 1 });
    const second = await f.sendCommand("kid", { name: "reboot", payload: {} });
    await kid.nth(`devices/kid/commands/${second.id}`);
    await c.client.publishAsync("devices/gw/telemetry", json({ temperature: 1 }), { qos: 1 });
    assertEquals(c.on((t) => t === `devices/kid/commands/${second.id}`), []);
    assert(c.client.connected, "the gateway stays connected");
  });
});

Deno.test("mqtt ACL: wildcard filters over devices are refused; an unknown topic ends the connection", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "m1" });
    const c = await f.mqtt(d);
    for (const filter of ["#", "devices/#", "devices/+/commands/+", "+/m1/telemetry"]) {
      const error = await c.client.subscribeAsync(filter, { qos: 1 })
        .then(() => null, (e) => e as { packet?: { granted?: number[] } });
      assertEquals(error?.packet?.granted, [128], filter);
    }
    // Its own subtree with a wildcard is fine.
    const granted = await c.client.subscribeAsync("devices/m1/#", { qos: 1 });
    assertEquals(granted.map((g) => g.qos), [1]);
    assert(c.client.connected);
    c.client.publish("devices/m1/somewhere/else", "{}", { qos: 0 });
    await c.whenClosed();
  });
});

Deno.test("mqtt with the mosquitto CLI: mosquitto_pub telemetry, mosquitto_sub receives a command", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "cli1" });
    const common = [
      "-h",
      "127.0.0.1",
      "-p",
      String(f.mqttPort),
      "-i",
      d.id,
      "-u",
      d.id,
      "-P",
      d.key,
    ];
    const pub = await run("mosquitto_pub", [
      ...common,
      "-q",
      "1",
      "-t",
      "devices/cli1/telemetry",
      "-m",
      json({ temperature: 27.5 }),
    ]);
    assertEquals(pub.code, 0, pub.stderr);
    // mosquitto_pub exits after the PUBACK: the value is durable.
    assertEquals((await loadTwin(f.kv, "cli1"))?.state.telemetry.last, { temperature: 27.5 });

    const bad = await run("mosquitto_pub", [
      ...common.slice(0, -1),
      "wrong-key",
      "-q",
      "1",
      "-t",
      "devices/cli1/telemetry",
      "-m",
      json({ temperature: 1 }),
    ]);
    assert(bad.code !== 0, "a wrong key is refused");

    // Queued before the subscriber connects: handed over when it subscribes.
    const command = await f.sendCommand("cli1", {
      name: "cool",
      payload: { targetTemperature: 20 },
    });
    const sub = await run("mosquitto_sub", [
      ...common,
      "-q",
      "1",
      "-t",
      "devices/cli1/commands/+",
      "-C",
      "1",
      "-v",
      "-W",
      "10",
    ]);
    assertEquals(sub.code, 0, sub.stderr);
    const [topic, ...rest] = sub.stdout.trim().split(" ");
    assertEquals(topic, `devices/cli1/commands/${command.id}`);
    const body = JSON.parse(rest.join(" "));
    assertEquals(body.name, "cool");
    assertEquals(body.payload, { targetTemperature: 20 });
    await waitStatus(f, "cli1", command.id, "delivered");
    await waitConnection(f, "cli1", "offline");
  });
});
