/**
 * The WebSocket device channel `/device/v1/ws` through a real `Deno.serve` on port 0: the hello
 * frame, request frames answered by `result` frames with the same `rid`, refusals as `error`
 * frames on an open socket, desired catch-up, command push with `ack`, gateways, credentials on
 * upgrade, and presence.
 * @module
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import {
  type TransportFixture,
  until,
  waitConnection,
  waitStatus,
  withFixture as withBaseFixture,
} from "./transport_fixture.ts";

/** The WebSocket channel needs the HTTP listener. */
function withFixture(fn: (f: TransportFixture) => Promise<void>): Promise<void> {
  return withBaseFixture(fn, { http: true });
}
import { loadTwin } from "../src/storage/twin_store.ts";

Deno.test("ws: hello is the first frame; presence online on connect, offline on close", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "w1" });
    const ws = await f.ws(d);
    const hello = ws.frames[0];
    assertEquals(hello.type, "hello");
    assertEquals(hello.device, "w1");
    assert(typeof hello.sessionId === "string" && hello.sessionId.length > 0);
    const online = await waitConnection(f, "w1", "online");
    assertEquals(online.reason, "connect");
    await ws.close();
    const offline = await waitConnection(f, "w1", "offline");
    assertEquals(offline.reason, "disconnect");
  });
});

Deno.test("ws: telemetry, reported, twin.get and command.result are answered by result frames with their rid", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "w1" });
    const ws = await f.ws(d);

    const telemetry = await ws.request({ type: "telemetry", data: { temperature: 21 } });
    assertEquals(telemetry.type, "result");
    assertEquals(telemetry.body, { accepted: 1, duplicates: 0 });
    // The answer means durable.
    assertEquals((await loadTwin(f.kv, "w1"))?.state.telemetry.last, { temperature: 21 });
    const batch = await ws.request({
      type: "telemetry",
      data: [{ temperature: 22, id: "x" }, { temperature: 23, id: "x" }],
    });
    assertEquals(batch.body, { accepted: 1, duplicates: 1 });

    const reported = await ws.request({ type: "reported", patch: { firmware: "2.0.0" } });
    assertEquals(reported.type, "result");
    assertEquals(reported.body, { version: 2 });
    assertEquals((await f.twin("w1")).reported, { firmware: "2.0.0" });

    await f.op("PATCH", "/api/v1/twins/w1/desired", { targetTemperature: 20 });
    const got = await ws.request({ type: "twin.get" });
    assertEquals(got.type, "result");
    assertEquals(got.body, {
      desired: { targetTemperature: 20 },
      reported: { firmware: "2.0.0" },
      version: 3,
    });

    const waiting = f.op("POST", "/api/v1/devices/w1/commands?wait=5", {
      name: "reboot",
      payload: { delaySeconds: 3 },
    });
    const pushed = await ws.frame((x) => x.type === "command", "command frame");
    const command = pushed.command as { id: string };
    ws.send({ type: "ack", mid: pushed.mid });
    const result = await ws.request({
      type: "command.result",
      commandId: command.id,
      status: "succeeded",
      result: { rebootedIn: 3 },
    });
    assertEquals(result.type, "result");
    assertEquals(result.body, { id: command.id, status: "succeeded" });
    const res = await waiting;
    const finished = await res.json();
    assertEquals(res.status, 200, JSON.stringify(finished));
    assertEquals(finished.status, "succeeded");
    assertEquals(finished.result, { rebootedIn: 3 });
  });
});

Deno.test("ws: malformed JSON, unknown type, invalid data and an oversize frame get error frames; the socket stays open", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "w1" });
    const ws = await f.ws(d);
    const before = (await loadTwin(f.kv, "w1"))?.versionstamp;

    let seen = ws.frames.length;
    ws.send("{this is not json");
    const malformed = await ws.frame((x) => x.type === "error", "error for bad JSON", seen);
    assertEquals((malformed.error as { code: string }).code, "invalid_json");

    const unknown = await ws.request({ type: "teleport", to: "mars" });
    assertEquals(unknown.type, "error");
    assertEquals((unknown.error as { code: string }).code, "bad_request");
    // Names every JavaScript object inherits are no frame types either, and are answered too.
    for (const type of ["constructor", "toString", "__proto__"]) {
      const inherited = await ws.request({ type });
      assertEquals((inherited.error as { code: string }).code, "bad_request", type);
    }

    const invalid = await ws.request({ type: "telemetry", data: { temperature: "warm" } });
    assertEquals(invalid.type, "error");
    const error = invalid.error as { code: string; details: { fields: Array<{ field: string }> } };
    assertEquals(error.code, "validation_failed");
    assertEquals(error.details.fields.map((x) => x.field), ["temperature"]);

    const missing = await ws.request({ type: "telemetry" });
    assertEquals((missing.error as { code: string }).code, "validation_failed");

    seen = ws.frames.length;
    const huge = JSON.stringify({
      type: "telemetry",
      rid: "big",
      data: { temperature: 1, pad: "x".repeat(256 * 1024) },
    });
    assert(huge.length > 256 * 1024);
    ws.send(huge);
    const tooLarge = await ws.frame(
      (x) => x.type === "error",
      "error for the oversize frame",
      seen,
    );
    assertEquals((tooLarge.error as { code: string }).code, "payload_too_large");

    assert(ws.open, "the socket stays open");
    assertEquals((await loadTwin(f.kv, "w1"))?.versionstamp, before, "nothing was written");
    const ok = await ws.request({ type: "telemetry", data: { temperature: 19 } });
    assertEquals(ok.type, "result");
  });
});

Deno.test("ws: desired pushed live, then one coalesced catch-up on reconnect", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "w1" });
    let ws = await f.ws(d);
    const isDesired = (x: Record<string, unknown>) => x.type === "desired";
    await f.op("PATCH", "/api/v1/twins/w1/desired", { targetTemperature: 20, mode: "heat" });
    const live = await ws.frame(isDesired, "live desired frame");
    assertEquals(live.device, "w1");
    assertEquals(live.patch, { targetTemperature: 20, mode: "heat" });
    assertEquals(live.version, 2);
    assert(live.mid !== undefined);
    await until(
      async () => (await loadTwin(f.kv, "w1"))?.state.desiredAcked === 2,
      "desired ack of version 2",
    );
    await ws.close();
    await waitConnection(f, "w1", "offline");

    for (const patch of [{ targetTemperature: 22 }, { maxTemperature: 40 }, { mode: null }]) {
      assertEquals((await f.op("PATCH", "/api/v1/twins/w1/desired", patch)).status, 200);
    }
    ws = await f.ws(d);
    const catchUp = await ws.frame(isDesired, "catch-up frame");
    assertEquals(catchUp.patch, { targetTemperature: 22, maxTemperature: 40, mode: null });
    assertEquals(catchUp.version, 5);
    assertEquals(catchUp.full, undefined);
    await until(
      async () => (await loadTwin(f.kv, "w1"))?.state.desiredAcked === 5,
      "desired ack of version 5",
    );
    assertEquals(ws.frames.filter(isDesired).length, 1, "one coalesced frame");
  });
});

Deno.test("ws: a command is pushed live and is `delivered` only after the ack frame", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "w1" });
    const ws = await f.ws(d);
    const created = await f.sendCommand("w1", { name: "cool", payload: { targetTemperature: 18 } });
    const frame = await ws.frame((x) => x.type === "command", "command frame");
    assertEquals(frame.device, "w1");
    const command = frame.command as Record<string, unknown>;
    assertEquals(command.id, created.id);
    assertEquals(command.name, "cool");
    assertEquals(command.payload, { targetTemperature: 18 });
    assertEquals(typeof command.expiresAt, "string");
    for (let i = 0; i < 5; i++) {
      assertEquals((await f.command("w1", created.id)).status, "queued", "not acked yet");
    }
    // An ack for a push that does not exist changes nothing.
    ws.send({ type: "ack", mid: "no-such-mid" });
    ws.send({ type: "ack", mid: frame.mid });
    await waitStatus(f, "w1", created.id, "delivered");
  });
});

Deno.test("ws: commands queued while offline arrive on connect, oldest first", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "w1" });
    const ids: string[] = [];
    for (const delaySeconds of [1, 2, 3]) {
      ids.push((await f.sendCommand("w1", { name: "reboot", payload: { delaySeconds } })).id);
    }
    const ws = await f.ws(d);
    await until(() => ws.frames.filter((x) => x.type === "command").length === 3, "3 commands");
    const pushed = ws.frames.filter((x) => x.type === "command");
    assertEquals(pushed.map((x) => (x.command as { id: string }).id), ids);
    for (const frame of pushed) ws.send({ type: "ack", mid: frame.mid });
    for (const id of ids) await waitStatus(f, "w1", id, "delivered");
    // The session's first frame is its hello, before anything pushed on it.
    assertEquals(ws.frames.map((x) => x.type), ["hello", "command", "command", "command"]);
  });
});

Deno.test("ws gateway: frames with `device: child` work; a non-child gets `forbidden`", async () => {
  await withFixture(async (f) => {
    const gw = await f.register({ id: "gw" });
    await f.register({ id: "kid", parent: "gw" });
    await f.register({ id: "stranger" });
    const ws = await f.ws(gw);

    const telemetry = await ws.request({
      type: "telemetry",
      device: "kid",
      data: { temperature: 17 },
    });
    assertEquals(telemetry.type, "result");
    assertEquals((await loadTwin(f.kv, "kid"))?.state.telemetry.last, { temperature: 17 });
    assertEquals((await loadTwin(f.kv, "gw"))?.state.telemetry.last, {});
    await waitConnection(f, "kid", "online");

    const reported = await ws.request({ type: "reported", device: "kid", patch: { mode: "off" } });
    assertEquals(reported.body, { version: 2 });
    const got = await ws.request({ type: "twin.get", device: "kid" });
    assertEquals((got.body as { reported: unknown }).reported, { mode: "off" });

    // The child's commands come down the gateway's socket, named by `device`.
    const created = await f.sendCommand("kid", { name: "reboot", payload: {} });
    const frame = await ws.frame((x) => x.type === "command", "child command frame");
    assertEquals(frame.device, "kid");
    assertEquals((frame.command as { id: string }).id, created.id);
    ws.send({ type: "ack", mid: frame.mid });
    await waitStatus(f, "kid", created.id, "delivered");

    const offline = await ws.request({ type: "presence", device: "kid", status: "offline" });
    assertEquals(offline.body, { device: "kid", status: "offline" });
    assertEquals((await waitConnection(f, "kid", "offline")).reason, "gateway reported");
    await ws.request({ type: "presence", device: "kid", status: "online" });
    await waitConnection(f, "kid", "online");

    for (
      const frame of [
        { type: "telemetry", device: "stranger", data: { temperature: 1 } },
        { type: "reported", device: "stranger", patch: { mode: "off" } },
        { type: "twin.get", device: "stranger" },
        { type: "presence", device: "stranger", status: "online" },
        { type: "telemetry", device: "nobody", data: { temperature: 1 } },
      ]
    ) {
      const answer = await ws.request(frame);
      assertEquals(answer.type, "error", JSON.stringify(frame));
      assertEquals((answer.error as { code: string }).code, "forbidden", JSON.stringify(frame));
    }
    assert(ws.open);
    assertEquals((await loadTwin(f.kv, "stranger"))?.state.telemetry.last, {});
    assertEquals((await f.twin("stranger")).connection.status, "never");
  });
});

Deno.test("ws upgrade: no, wrong or unknown credentials → 401; disabled → 403", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "w1" });
    const off = await f.register({ id: "w-off" });
    await f.setEnabled("w-off", false);
    assertEquals(await f.wsUpgradeStatus(), 401, "no credentials");
    assertEquals(await f.wsUpgradeStatus({ id: "w1", key: "wrong" }), 401, "wrong key");
    assertEquals(await f.wsUpgradeStatus({ id: "nobody", key: d.key }), 401, "unknown device");
    assertEquals(await f.wsUpgradeStatus({ id: "w-off", key: off.key }), 403, "disabled device");
    // The same device with its key gets its channel.
    const ws = await f.ws(d);
    assertEquals(ws.frames[0].type, "hello");
  });
});

Deno.test("ws: a device disabled while connected is closed and refused", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "w1" });
    const ws = await f.ws(d);
    await f.setEnabled("w1", false);
    await ws.whenClosed();
    assertEquals(ws.closeCode, 4003);
    assertEquals((await waitConnection(f, "w1", "offline")).reason, "disabled");
    assertEquals(await f.wsUpgradeStatus({ id: "w1", key: d.key }), 403);
  });
});

Deno.test("ws and mqtt: a connection outlives one key rotation, and ends at the one that retires its key", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "w2" });
    const m = await f.register({ id: "m2" });
    const ws = await f.ws(d);
    const mq = await f.mqtt(m);
    const rotate = async (id: string) =>
      assertEquals((await f.op("POST", `/api/v1/devices/${id}/keys`)).status, 200);
    // One rotation: the key they connected with is the previous one, still valid.
    await rotate("w2");
    await rotate("m2");
    assert(ws.open && mq.client.connected, "both stay connected");
    assertEquals(
      (await ws.request({ type: "telemetry", data: { temperature: 20 } })).type,
      "result",
    );
    // The next one retires it: both connections end, and their devices go offline.
    await rotate("w2");
    await rotate("m2");
    await ws.whenClosed();
    await mq.whenClosed();
    assertEquals(ws.closeCode, 4003);
    assertEquals((await waitConnection(f, "w2", "offline")).reason, "key revoked");
    assertEquals((await waitConnection(f, "m2", "offline")).reason, "key revoked");
  });
});

Deno.test("ws: a socket that sends frames without waiting for their results is closed past 64 in flight, rather than holding them all", async () => {
  await withFixture(async (f) => {
    const d = await f.register({ id: "w9" });
    const ws = await f.ws(d);
    // Commits wait until the refusal has come, so no frame's result can arrive first and make
    // room however fast the store is: the 65th frame finds 64 in flight.
    let release!: () => void;
    const held = new Promise<void>((resolve) => release = resolve);
    const atomic = f.kv.atomic;
    f.kv.atomic = () => {
      const operation = atomic.call(f.kv);
      const commit = operation.commit.bind(operation);
      operation.commit = () => held.then(commit);
      return operation;
    };
    try {
      for (let i = 0; i < 400; i++) {
        ws.send({ type: "telemetry", rid: i, data: { temperature: 20 } });
      }
      const refused = await ws.frame(
        (x) => x.type === "error" && (x.error as { code: string }).code === "rate_limited",
        "the refusal",
      );
      assertMatch((refused.error as { message: string }).message, /At most 64 frames/);
    } finally {
      release();
      f.kv.atomic = atomic;
    }
    await ws.whenClosed(); // The server ends the connection (1008, as its client may see it).
    assert(!ws.open);
  });
});
