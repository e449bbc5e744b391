/**
 * Bridge mode against a real Mosquitto (2.0, dynamic-security plugin) and the real Doppel server
 * process: the broker is started by the test in a temp folder with a configuration derived from
 * `deploy/mosquitto/`, Doppel bridges to it (`MQTT_URL`, `MQTT_DYNSEC=1`, no embedded listener),
 * and devices talk to the broker with mqtt.js and the mosquitto CLI. Covers the credential sync
 * (register, wrong key, disable, rotate, delete), the topic ACL, QoS 1 telemetry, presence with
 * desired catch-up and queued commands, command results, and a broker restart mid-stream.
 * @module
 */
import { assert, assertEquals } from "./assert.ts";
import { Mosquitto } from "./mosquitto.ts";
import {
  connectCode,
  connectDevice,
  type Creds,
  DoppelProcess,
  MqttDevice,
  Operator,
  run,
  settle,
  until,
  writeKinds,
} from "./real_process.ts";
import type { IClientOptions } from "mqtt";

const TOKEN = "bridge-test-admin-token-0123456789";
/** How Doppel's bridge is set up. */
interface BridgeSetup {
  /** MQTT_BRIDGE_CONNECTIONS (default 3). */
  connections?: number;
  /** MQTT_BRIDGE_GROUP (default: none, one unshared persistent session). */
  group?: string;
}

/** A running broker, Doppel bridging to it, and the devices a test opened. */
interface System {
  broker: Mosquitto;
  doppel: DoppelProcess;
  op: Operator;
  /** Connects a device to the broker (tracked: ended after the test). */
  device(creds: Creds, extra?: IClientOptions): Promise<MqttDevice>;
  /** Waits until the broker accepts the device's credentials (the dynsec sync is asynchronous). */
  accepted(creds: Creds): Promise<void>;
  /**
   * Registers a device; the answer comes once the broker has it, which `accepted` confirms.
   */
  register(id: string, kind?: string): Promise<Creds>;
  /** Bridge connections Doppel opens. */
  connections: number;
  /**
   * Stops Doppel (SIGKILL, unless `signal` says otherwise) and starts it again on the same KV,
   * running `meanwhile` (given the KV file's path) while it is down; waits for the bridge to be up.
   */
  restartDoppel(
    meanwhile?: (kvPath: string) => Promise<void>,
    signal?: Deno.Signal,
  ): Promise<DoppelProcess>;
}

/** Starts Mosquitto and Doppel in bridge mode, runs `fn`, and always tears everything down. */
async function withSystem(
  fn: (s: System) => Promise<void>,
  setup: BridgeSetup = {},
): Promise<void> {
  // Without a shared group the bridge opens one connection (several would each get everything).
  const connections = setup.group ? setup.connections ?? 3 : 1;
  const dir = await Deno.makeTempDir({ prefix: "doppel_bridge_test_" });
  const devices = new Set<MqttDevice>();
  let broker: Mosquitto | undefined;
  let doppel: DoppelProcess | undefined;
  try {
    const kinds = await writeKinds(dir);
    broker = await Mosquitto.create(dir);
    const url = broker.adminUrl;
    const startDoppel = async () => {
      const started = await DoppelProcess.start({
        DOPPEL_KV: `${dir}/data/doppel.kv`,
        DOPPEL_TWINS: kinds,
        DOPPEL_ADMIN_TOKEN: TOKEN,
        MQTT_PORT: "0",
        MQTT_URL: url,
        MQTT_DYNSEC: "1",
        MQTT_BRIDGE_ID: "doppel-bridge-test",
        MQTT_BRIDGE_CONNECTIONS: String(connections),
        ...(setup.group === undefined ? {} : { MQTT_BRIDGE_GROUP: setup.group }),
      });
      try {
        await started.waitFor(/Broker credentials reconciled for \d+ devices/);
        for (let i = 0; i < connections; i++) {
          await started.waitFor(new RegExp(`Bridge connection doppel-bridge-test-${i} is up`));
        }
      } catch (error) {
        await started.stop();
        throw error;
      }
      return started;
    };
    doppel = await startDoppel();
    const op = new Operator(doppel.base, TOKEN);
    const b = broker;
    const system: System = {
      broker: b,
      connections,
      doppel,
      op,
      async device(creds, extra = {}) {
        const device = await connectDevice(b.url, creds, extra);
        devices.add(device);
        return device;
      },
      async accepted(creds) {
        await until(
          async () => (await connectCode(b.url, creds)) === 0,
          `the broker to accept ${creds.id}`,
        );
      },
      async register(id, kind = "thermostat") {
        // Registration answers once the broker has the device (the registry waits for the sync).
        const creds = await system.op.register(id, kind);
        await system.accepted(creds);
        return creds;
      },
      async restartDoppel(meanwhile, signal) {
        await system.doppel.stop(signal);
        await meanwhile?.(`${dir}/data/doppel.kv`);
        system.doppel = doppel = await startDoppel();
        system.op = new Operator(doppel.base, TOKEN);
        return doppel;
      },
    };
    await fn(system);
  } catch (error) {
    console.error(`--- doppel log ---\n${doppel?.lines.slice(-80).join("\n")}`);
    const notable = (broker?.log() ?? "").split("\n").filter((line) =>
      /dynsec|administrative|Error|Warning|running|terminating|as doppel-bridge/.test(line)
    );
    console.error(`--- mosquitto log (notable lines) ---\n${notable.slice(-80).join("\n")}`);
    // DOPPEL_TEST_LOGS=<folder> keeps the whole logs of a failed test.
    const keep = Deno.env.get("DOPPEL_TEST_LOGS");
    if (keep) {
      await Deno.mkdir(keep, { recursive: true });
      await Deno.writeTextFile(`${keep}/doppel.log`, doppel?.lines.join("\n") ?? "");
      await Deno.writeTextFile(`${keep}/mosquitto.log`, broker?.log() ?? "");
    }
    throw error;
  } finally {
    for (const device of devices) await device.end();
    await doppel?.stop();
    await broker?.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** The SUBACK codes for `topic`: granted QoS, or 128 when refused. */
async function subscribeCodes(device: MqttDevice, topic: string): Promise<number[]> {
  try {
    const granted = await device.client.subscribeAsync(topic, { qos: 1 });
    return granted.map((g) => g.qos);
  } catch (error) {
    const packet = (error as { packet?: { granted?: number[] } }).packet;
    if (packet?.granted) return packet.granted;
    throw error;
  }
}

/** A command's status (operator view). */
async function commandStatus(op: Operator, deviceId: string, id: string): Promise<string> {
  return (await op.expect(200, "GET", `/api/v1/devices/${deviceId}/commands/${id}`)).status;
}

/** Online-announcing device options: the will says offline (retained, if `retain`). */
function presenceWill(id: string, retain = false): IClientOptions {
  return {
    will: {
      topic: `devices/${id}/presence`,
      payload: new TextEncoder().encode(JSON.stringify({ status: "offline" })) as never,
      qos: 1,
      retain,
    },
  };
}

/** Announces `id` online, retained, as a device does so a restarted bridge knows it is there. */
async function announceRetained(device: MqttDevice, id: string): Promise<void> {
  await device.client.publishAsync(
    `devices/${id}/presence`,
    JSON.stringify({ status: "online" }),
    { qos: 1, retain: true },
  );
}

/** The twin's connection status. */
async function status(op: Operator, id: string): Promise<string> {
  return (await op.twin(id)).connection.status;
}

Deno.test("bridge dynsec: a registered device connects with its key, wrong keys and strangers are refused, QoS 1 telemetry lands, the ACL holds", async () => {
  await withSystem(async ({ broker, op, device, register }) => {
    const t1 = await register("t1");
    const t2 = await register("t2");

    assert(await connectCode(broker.url, { id: "t1", key: "wrong-key" }) !== 0, "wrong key");
    assert(await connectCode(broker.url, { id: "t1", key: t2.key }) !== 0, "another's key");
    assert(await connectCode(broker.url, { id: "nobody", key: t1.key }) !== 0, "unknown device");

    const c1 = await device(t1);
    await c1.publish("devices/t1/telemetry", { temperature: 22.5, id: "a1" });
    const twin = await until(async () => {
      const twin = await op.twin("t1");
      return twin.telemetry?.last?.temperature === 22.5 ? twin : null;
    }, "t1's telemetry in its twin");
    assertEquals(twin.telemetry.last, { temperature: 22.5 });

    // Its own topics may be subscribed; another device's may not.
    assertEquals(await subscribeCodes(c1, "devices/t1/twin/desired"), [1]);
    assertEquals(await subscribeCodes(c1, "devices/t2/#"), [128], "subscribing to t2's topics");
    assertEquals(await subscribeCodes(c1, "devices/+/commands/+"), [128], "wildcard over devices");
    assertEquals(await subscribeCodes(c1, "#"), [128], "everything");

    // Publishing as another device is dropped by the broker: t2's twin never sees it, while t1's
    // later message (sent after it) arrives.
    await c1.publish("devices/t2/telemetry", { temperature: 99 });
    await c1.publish("devices/t1/telemetry", { temperature: 23.5 });
    await until(
      async () => (await op.twin("t1")).telemetry?.last?.temperature === 23.5,
      "t1's second reading",
    );
    const t2twin = await op.twin("t2");
    assertEquals(t2twin.telemetry?.lastAt ?? null, null, "t2 got no telemetry");
    assertEquals(t2twin.telemetry?.last ?? {}, {}, "t2 got no telemetry");

    // A device cannot connect under another's client id with its own credentials.
    assert(await connectCode(broker.url, t1, "t2") !== 0, "t1's credentials under client id t2");
  });
});

Deno.test("bridge dynsec: disabling refuses the next connection at once; rotation switches the broker to the new key; deleting removes the device", async () => {
  await withSystem(async ({ broker, op, device, register, accepted }) => {
    /** Checks that should hold as soon as the operator's request was answered. */
    const notAtOnce: string[] = [];
    const refusedAtOnce = async (creds: Creds, what: string) => {
      if (await connectCode(broker.url, creds) === 0) {
        const started = Date.now();
        await until(async () => (await connectCode(broker.url, creds)) !== 0, `${what} refused`);
        notAtOnce.push(
          `${what}: the first connection right after the answer was accepted; refused only ` +
            `${Date.now() - started} ms later`,
        );
      }
    };

    const d1 = await register("d1");
    const c1 = await device(d1);

    await op.expect(200, "PATCH", "/api/v1/devices/d1", { enabled: false });
    await refusedAtOnce(d1, "disabled device");
    await c1.when(() => !c1.client.connected, "the connected device to be disconnected", 5_000);

    await op.expect(200, "PATCH", "/api/v1/devices/d1", { enabled: true });
    await accepted(d1);

    const rotated = await op.expect(200, "POST", "/api/v1/devices/d1/keys");
    const fresh: Creds = { id: "d1", key: rotated.key };
    assert(fresh.key && fresh.key !== d1.key, "a new key");
    await accepted(fresh);
    const c2 = await device(fresh);
    await c2.publish("devices/d1/telemetry", { temperature: 30 });
    await until(
      async () => (await op.twin("d1")).telemetry?.last?.temperature === 30,
      "telemetry sent with the new key",
    );

    const res = await op.request("DELETE", "/api/v1/devices/d1");
    assertEquals(res.status, 204);
    await refusedAtOnce(fresh, "deleted device");
    await c2.when(() => !c2.client.connected, "the deleted device to be disconnected", 5_000);
    assert(await connectCode(broker.url, fresh) !== 0, "the deleted device stays refused");
    assert(await connectCode(broker.url, d1) !== 0, "with its first key too");

    assertEquals(notAtOnce, [], "disabled and deleted devices are refused at once (CONTRACT)");
  });
});

Deno.test("bridge presence: announcing online brings desired catch-up and queued commands; results round-trip; the will marks it offline", async () => {
  await withSystem(async ({ op, device, register }) => {
    const creds = await register("p1b");
    // While p1b is offline: a desired change and a queued command.
    await op.expect(200, "PATCH", "/api/v1/twins/p1b/desired", { targetTemperature: 21 });
    const queued = await op.expect(202, "POST", "/api/v1/devices/p1b/commands", {
      name: "cool",
      payload: { targetTemperature: 20 },
    });
    assertEquals(queued.status, "queued");
    assertEquals((await op.twin("p1b")).connection.status, "never");

    const c = await device(creds, { clean: false, ...presenceWill("p1b") });
    await c.client.subscribeAsync(["devices/p1b/twin/desired", "devices/p1b/commands/+"], {
      qos: 1,
    });
    // Subscribed first, then the announcement: the bridge pushes only to announced devices.
    await c.publish("devices/p1b/presence", { status: "online" });

    const catchUp = await c.message((t) => t === "devices/p1b/twin/desired", "twin/desired");
    const update = catchUp.body as { patch: Record<string, unknown>; version: number };
    assertEquals(update.patch, { targetTemperature: 21 });
    assert(typeof update.version === "number" && update.version >= 2, JSON.stringify(update));

    const first = await c.message(
      (t) => t === `devices/p1b/commands/${queued.id}`,
      "the queued command",
    );
    const body = first.body as Record<string, unknown>;
    assertEquals(body.name, "cool");
    assertEquals(body.payload, { targetTemperature: 20 });
    assert(typeof body.expiresAt === "string", JSON.stringify(body));
    await until(
      async () => (await commandStatus(op, "p1b", queued.id)) === "delivered",
      "the queued command to be delivered",
    );
    const online = await until(async () => {
      const twin = await op.twin("p1b");
      return twin.connection.status === "online" ? twin : null;
    }, "p1b online");
    assertEquals(online.connection.status, "online");

    // The device answers the queued command.
    await c.publish(`devices/p1b/commands/${queued.id}/result`, {
      status: "succeeded",
      result: { done: 1 },
    });
    await until(
      async () => (await commandStatus(op, "p1b", queued.id)) === "succeeded",
      "the first command to succeed",
    );

    // Round trip: the operator waits while the device is handed the command and answers it.
    const from = c.messages.length;
    const waiting = op.request("POST", "/api/v1/devices/p1b/commands?wait=10", {
      name: "cool",
      payload: { targetTemperature: 19 },
    });
    const live = await c.message(
      (t) => t.startsWith("devices/p1b/commands/") && !t.endsWith(queued.id),
      "the live command",
      from,
    );
    const liveId = live.topic.split("/").pop()!;
    await c.publish(`devices/p1b/commands/${liveId}/result`, {
      status: "failed",
      result: { reason: "busy" },
    });
    const answered = await waiting;
    assertEquals(answered.status, 200, JSON.stringify(answered.body));
    assertEquals(answered.body.id, liveId);
    assertEquals(answered.body.status, "failed");
    assertEquals(answered.body.result, { reason: "busy" });

    // A live desired change is pushed too.
    const before = c.messages.length;
    await op.expect(200, "PATCH", "/api/v1/twins/p1b/desired", { targetTemperature: 23 });
    const pushed = await c.message((t) => t === "devices/p1b/twin/desired", "live desired", before);
    assertEquals((pushed.body as { patch: unknown }).patch, { targetTemperature: 23 });

    // The connection is lost without DISCONNECT: the broker publishes the will.
    c.client.stream.destroy();
    await until(
      async () => (await op.twin("p1b")).connection.status === "offline",
      "p1b offline after its will",
    );
  });
});

Deno.test("bridge with the mosquitto CLI: mosquitto_pub telemetry lands in the twin, mosquitto_sub -C 1 receives a command", async () => {
  await withSystem(async ({ broker, op, register }) => {
    const d = await register("cli1");
    const common = [
      "-h",
      "127.0.0.1",
      "-p",
      String(broker.port),
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
      JSON.stringify({ temperature: 27.5, id: "cli-1" }),
    ]);
    assertEquals(pub.code, 0, pub.stderr);
    await until(
      async () => (await op.twin("cli1")).telemetry?.last?.temperature === 27.5,
      "mosquitto_pub's reading in the twin",
    );

    const bad = await run("mosquitto_pub", [
      ...common.slice(0, -1),
      "wrong-key",
      "-q",
      "1",
      "-t",
      "devices/cli1/telemetry",
      "-m",
      JSON.stringify({ temperature: 1 }),
    ]);
    assert(bad.code !== 0, "a wrong key is refused");

    // The device keeps a persistent session (-c) subscribed to its commands, announces itself
    // (mosquitto_pub disconnects cleanly: no will, it stays online) and goes away; a command
    // sent meanwhile waits in its session at the broker, and mosquitto_sub -C 1 gets it.
    const persistent = [...common, "-c", "-q", "1"];
    const subscribe = await run("mosquitto_sub", [
      ...persistent,
      "-t",
      "devices/cli1/commands/+",
      "-E",
    ]);
    assertEquals(subscribe.code, 0, subscribe.stderr);
    const announce = await run("mosquitto_pub", [
      ...persistent,
      "-t",
      "devices/cli1/presence",
      "-m",
      JSON.stringify({ status: "online" }),
    ]);
    assertEquals(announce.code, 0, announce.stderr);
    await until(
      async () => (await op.twin("cli1")).connection.status === "online",
      "cli1 online",
    );
    const command = await op.expect(202, "POST", "/api/v1/devices/cli1/commands", {
      name: "cool",
      payload: { targetTemperature: 18 },
    });
    // Delivered = the broker acknowledged it into the device's persistent session.
    await until(
      async () => (await commandStatus(op, "cli1", command.id)) === "delivered",
      "the command to be delivered",
    );
    const sub = await run("mosquitto_sub", [
      ...persistent,
      "-t",
      "devices/cli1/commands/+",
      "-C",
      "1",
      "-v",
      "-W",
      "10",
    ]);
    assertEquals(sub.code, 0, sub.stderr);
    const match = /^devices\/cli1\/commands\/(\S+) (.*)$/.exec(sub.stdout.trim());
    assert(match, `mosquitto_sub printed ${JSON.stringify(sub.stdout)}`);
    assertEquals(match[1], command.id);
    const body = JSON.parse(match[2]);
    assertEquals(body.name, "cool");
    assertEquals(body.payload, { targetTemperature: 18 });

    // The result goes back with mosquitto_pub.
    const result = await run("mosquitto_pub", [
      ...common,
      "-q",
      "1",
      "-t",
      `devices/cli1/commands/${command.id}/result`,
      "-m",
      JSON.stringify({ status: "succeeded", result: { cooled: true } }),
    ]);
    assertEquals(result.code, 0, result.stderr);
    const done = await until(async () => {
      const c = await op.expect(200, "GET", `/api/v1/devices/cli1/commands/${command.id}`);
      return c.status === "succeeded" ? c : null;
    }, "the command to succeed");
    assertEquals(done.result, { cooled: true });
  });
});

Deno.test("bridge dynsec: a device disabled right after it was registered is refused by the broker", async () => {
  await withSystem(async ({ broker, op }) => {
    const creds = await op.register("quick", "thermostat");
    await op.expect(200, "PATCH", "/api/v1/devices/quick", { enabled: false });
    // Whatever order the two syncs run in, the broker must end up refusing the device.
    await until(
      async () => (await connectCode(broker.url, creds)) !== 0,
      "the broker to refuse the disabled device",
      5_000,
    );
    const device = await op.expect(200, "GET", "/api/v1/devices/quick");
    assertEquals(device.enabled, false);
  });
});

Deno.test("bridge: restarting Doppel leaves devices connected to the broker, and the bridge serves them again", async () => {
  await withSystem(async (system) => {
    const creds = await system.register("stay1");
    const c = await system.device(creds);
    await system.restartDoppel();
    await system.doppel.waitFor(/Broker credentials reconciled for 1 devices/);
    await c.publish("devices/stay1/telemetry", { temperature: 17 });
    await until(
      async () => (await system.op.twin("stay1")).telemetry?.last?.temperature === 17,
      "telemetry through the restarted bridge",
    );
    assert(c.client.connected, "the device is still connected after Doppel restarted");
    assertEquals(c.connects, 1, "and never had to reconnect");
  });
});

Deno.test("bridge presence: retained announcements tell a restarted Doppel who is connected: a device still there is served at once, one whose will fired meanwhile goes offline", async () => {
  await withSystem(async (system) => {
    const stay = await system.register("here1");
    const gone = await system.register("gone1");
    const s = await system.device(stay, { clean: false, ...presenceWill("here1", true) });
    const g = await system.device(gone, { clean: false, ...presenceWill("gone1", true) });
    await s.client.subscribeAsync("devices/here1/commands/+", { qos: 1 });
    await announceRetained(s, "here1");
    await announceRetained(g, "gone1");
    for (const id of ["here1", "gone1"]) {
      await until(async () => (await status(system.op, id)) === "online", `${id} online`);
    }
    // Doppel restarts (SIGTERM); meanwhile gone1's connection is lost, so the broker keeps its
    // will.
    await system.restartDoppel(async () => {
      g.client.stream.destroy();
      await g.when(() => !g.client.connected, "gone1 disconnected");
    }, "SIGTERM");
    // gone1's session would have lasted its 90 s lease: the retained will ends it now.
    await until(async () => (await status(system.op, "gone1")) === "offline", "gone1 offline");
    // here1 never announced again, yet the restarted bridge serves it: a command reaches it.
    const command = await system.op.expect(202, "POST", "/api/v1/devices/here1/commands", {
      name: "reboot",
      payload: {},
    });
    await s.message((t) => t === `devices/here1/commands/${command.id}`, "the command");
    assertEquals(s.connects, 1, "here1 never reconnected");
    // Nor did it show offline while Doppel restarted: it was connected all along.
    const events = await system.op.expect(200, "GET", "/api/v1/devices/here1/events?type=presence");
    assertEquals((events.items as Array<{ type: string }>).map((e) => e.type), ["presence.online"]);
  });
});

Deno.test("bridge presence: a gateway's children go offline with its will, also one that fired while Doppel was down, and their retained announcements do not bring them back", async () => {
  await withSystem(async (system) => {
    const gw = await system.register("gw2");
    for (const id of ["kid2", "kid3"]) {
      const kid = await system.op.expect(201, "POST", "/api/v1/devices", {
        id,
        kind: "thermostat",
        parent: "gw2",
      });
      await system.accepted({ id, key: kid.key });
    }
    const other = await system.device(await system.register("other2"));
    const g = await system.device(gw, { clean: false, ...presenceWill("gw2", true) });
    // kid3 is announced before its gateway (as retained announcements may come after a restart):
    // it waits for the gateway. (The bridge handles this connection's messages in order: once
    // the gateway's reading is in, the announcement before it has been handled.)
    await announceRetained(g, "kid3");
    await g.publish("devices/gw2/telemetry", { temperature: 1 });
    await until(
      async () => (await system.op.twin("gw2")).telemetry?.last?.temperature === 1,
      "gw2's reading",
    );
    assertEquals(await status(system.op, "kid3"), "never");
    await announceRetained(g, "gw2");
    await announceRetained(g, "kid2");
    for (const id of ["gw2", "kid2", "kid3"]) {
      await until(async () => (await status(system.op, id)) === "online", `${id} online`);
    }
    g.client.stream.destroy();
    for (const id of ["kid2", "kid3"]) {
      await until(async () => (await status(system.op, id)) === "offline", `${id} offline`);
    }
    assertEquals(await status(system.op, "gw2"), "offline");
    // kid3 was online from its gateway's announcement until the gateway's will.
    const events = await system.op.expect(200, "GET", "/api/v1/devices/kid3/events?type=presence");
    assertEquals(
      (events.items as Array<{ type: string }>).map((e) => e.type),
      ["presence.offline", "presence.online"], // Newest first.
    );

    await system.restartDoppel();
    // The retained presence messages come with the bridge's subscription, before anything
    // published after it: once other2's reading is in, they have been applied.
    await other.publish("devices/other2/telemetry", { temperature: 5 });
    await until(
      async () => (await system.op.twin("other2")).telemetry?.last?.temperature === 5,
      "other2's reading",
    );
    for (const id of ["gw2", "kid2", "kid3"]) assertEquals(await status(system.op, id), "offline");

    // The gateway comes back with kid2; then it is lost while Doppel is down: the restarted
    // bridge finds its retained will, and kid2 goes offline with it too.
    const again = await system.device(gw, { clean: false, ...presenceWill("gw2", true) });
    await announceRetained(again, "gw2");
    await announceRetained(again, "kid2");
    await until(async () => (await status(system.op, "kid2")) === "online", "kid2 online again");
    await system.restartDoppel(async () => {
      again.client.stream.destroy();
      await again.when(() => !again.client.connected, "the gateway disconnected");
    });
    for (const id of ["gw2", "kid2"]) {
      await until(async () => (await status(system.op, id)) === "offline", `${id} offline`);
    }
  });
});

Deno.test("bridge presence: a device disabled while online is not brought back by its old retained announcement once enabled again", async () => {
  await withSystem(async (system) => {
    const creds = await system.register("dis1");
    const d = await system.device(creds, { ...presenceWill("dis1", true), reconnectPeriod: 0 });
    await announceRetained(d, "dis1");
    await until(async () => (await status(system.op, "dis1")) === "online", "dis1 online");
    await system.op.expect(200, "PATCH", "/api/v1/devices/dis1", { enabled: false });
    await d.when(() => !d.client.connected, "the broker ends dis1's connection");
    await system.op.expect(200, "PATCH", "/api/v1/devices/dis1", { enabled: true });
    await system.restartDoppel();
    const other = await system.device(await system.register("other3"));
    await other.publish("devices/other3/telemetry", { temperature: 3 });
    await until(
      async () => (await system.op.twin("other3")).telemetry?.last?.temperature === 3,
      "other3's reading (the retained announcements are in before it)",
    );
    assertEquals(await status(system.op, "dis1"), "offline");
  });
});

Deno.test("bridge presence with a shared group: a retained announcement, which every connection of the group gets, opens one session, and a restart does not call the device offline", async () => {
  await withSystem(async (system) => {
    const creds = await system.register("grp1");
    const d = await system.device(creds, { clean: false, ...presenceWill("grp1", true) });
    await d.client.subscribeAsync("devices/grp1/commands/+", { qos: 1 });
    await announceRetained(d, "grp1");
    await until(async () => (await status(system.op, "grp1")) === "online", "grp1 online");
    await system.restartDoppel(undefined, "SIGTERM");
    const command = await system.op.expect(202, "POST", "/api/v1/devices/grp1/commands", {
      name: "reboot",
      payload: {},
    });
    const topic = `devices/grp1/commands/${command.id}`;
    await d.message((t) => t === topic, "the command");
    await until(
      async () => (await commandStatus(system.op, "grp1", command.id)) === "delivered",
      "the command delivered",
    );
    // Once the device's own round trip is through, a second push would be in too.
    await d.publish("devices/grp1/telemetry", { temperature: 2 });
    await until(
      async () => (await system.op.twin("grp1")).telemetry?.last?.temperature === 2,
      "grp1's reading",
    );
    assertEquals(d.messages.filter((m) => m.topic === topic).length, 1, "pushed once");
    const events = await system.op.expect(200, "GET", "/api/v1/devices/grp1/events?type=presence");
    assertEquals((events.items as Array<{ type: string }>).map((e) => e.type), ["presence.online"]);
  }, { group: "doppel", connections: 3 });
});

Deno.test("bridge: retained uplinks are not applied again on restart; reconcile removes broker clients the registry lost", async () => {
  await withSystem(async (system) => {
    const keep = await system.register("keep1");
    const lost = await system.register("lost1");
    const c = await system.device(keep);
    // A device publishes its reported state once retained, then a newer one.
    const firmware = async () => (await system.op.twin("keep1")).reported?.firmware;
    await c.client.publishAsync(
      "devices/keep1/twin/reported",
      JSON.stringify({ firmware: "1.0" }),
      { qos: 1, retain: true },
    );
    await c.publish("devices/keep1/twin/reported", { firmware: "2.0" });
    await until(async () => (await firmware()) === "2.0", "the newer report");
    // While Doppel is down its registry loses lost1 (as when it is deleted with the broker away).
    await system.restartDoppel(async (kvPath) => {
      const kv = await Deno.openKv(kvPath);
      await kv.delete(["devices", lost.id]);
      kv.close();
    });
    await system.doppel.waitFor(/Broker credentials reconciled for 1 devices/);
    assertEquals(await connectCode(system.broker.url, lost), 5, "lost1's client is gone");
    // The bridge subscribed again and got the retained 1.0: it is not applied over 2.0.
    await c.publish("devices/keep1/telemetry", { temperature: 17 });
    await until(
      async () => (await system.op.twin("keep1")).telemetry?.last?.temperature === 17,
      "telemetry through the restarted bridge",
    );
    assertEquals(await firmware(), "2.0");
  });
});

Deno.test("bridge dynsec: a gateway's subscription to a child deleted and registered again elsewhere carries nothing more", async () => {
  await withSystem(async (system) => {
    const gw = await system.register("gw1");
    const op = system.op;
    const kidCreds = await op.expect(201, "POST", "/api/v1/devices", {
      id: "kid1",
      kind: "thermostat",
      parent: "gw1",
    });
    // A persistent session: it keeps its subscriptions when the broker drops the connection (it
    // does when a client's roles change, as the gateway's do when its child goes).
    const g = await system.device(gw, { clean: false, reconnectPeriod: 100 });
    assertEquals(await subscribeCodes(g, "devices/kid1/commands/+"), [1]);
    await op.expect(204, "DELETE", "/api/v1/devices/kid1");
    await g.when(() => g.connects >= 2 && g.client.connected, "the gateway back", 10_000);
    assert(kidCreds.key);
    const kid = await system.device(await system.register("kid1"));
    assertEquals(await subscribeCodes(kid, "devices/kid1/commands/+"), [1]);
    await kid.publish("devices/kid1/presence", { status: "online" });
    const command = await op.expect(202, "POST", "/api/v1/devices/kid1/commands", {
      name: "reboot",
      payload: {},
    });
    await kid.message((t) => t === `devices/kid1/commands/${command.id}`, "the command");
    // The gateway's own round trip: what the broker sent it before is in by then.
    await g.publish("devices/gw1/telemetry", { temperature: 1 });
    assertEquals(g.messages.filter((m) => m.topic.startsWith("devices/kid1/")), []);
  });
});

Deno.test("bridge dynsec: registering a device while the broker is away keeps Doppel up, and the broker catches up", async () => {
  await withSystem(async (system) => {
    const mark = system.doppel.lines.length;
    await system.broker.stop();
    // The registry answers (after its bounded wait for the broker); the dynsec commands left
    // waiting time out later, with the broker still away: that must not end the process.
    const creds = await system.op.register("away1", "thermostat");
    const deadline = Date.now() + 12_000;
    await until(() => Date.now() >= deadline, "the dynsec commands' timeouts to pass", 15_000);
    assert(system.doppel.running, "Doppel is still running");
    const health = await fetch(`${system.doppel.base}/healthz`);
    await health.body?.cancel();
    assertEquals(health.status, 200);
    // Back, the bridge reconnects and reconciles: the device gets its broker client.
    await system.broker.start();
    await system.doppel.waitFor(/Broker credentials reconciled for 1 devices/, 30_000, mark);
    await system.accepted(creds);
  });
});

/**
 * Devices stream QoS 1 telemetry with unique ids while Mosquitto is restarted (SIGTERM, then
 * started again on the same port and persistence folder); devices and bridge reconnect by
 * themselves. Every message Mosquitto acknowledged must be applied exactly once.
 */
async function brokerRestartMidStream(system: System): Promise<void> {
  const { broker, doppel } = system;
  const DEVICES = 4;
  const PER_DEVICE = 150;
  /** QoS 1 publishes each device keeps in flight. */
  const WINDOW = 8;
  /** Broker PUBACKs (all devices) after which Mosquitto is restarted. */
  const RESTART_AFTER = 150;
  const creds: Creds[] = [];
  for (let i = 0; i < DEVICES; i++) creds.push(await system.register(`r${i}`, "counter"));
  const devices = await Promise.all(
    creds.map((c) =>
      system.device(c, { clean: false, reconnectPeriod: 100, connectTimeout: 3_000 })
    ),
  );

  const acked = creds.map(() => new Set<number>());
  let total = 0;
  let restart: Promise<void> | undefined;
  let ackedAtStop = -1;
  let doppelMark = 0;
  let brokerStopped: Deno.CommandStatus | undefined;
  const restartBroker = async () => {
    doppelMark = doppel.lines.length;
    brokerStopped = await broker.stop();
    ackedAtStop = total;
    await broker.start();
  };
  const send = async (i: number, seq: number) => {
    const device = devices[i];
    for (let attempt = 1;; attempt++) {
      try {
        await device.client.publishAsync(
          `devices/r${i}/telemetry`,
          JSON.stringify({ id: `m${seq}`, seq }),
          { qos: 1 },
        );
        break;
      } catch (error) {
        // mqtt.js fails a publish caught in a connection loss while it was resending: send it
        // again (same id) once connected, as a device would.
        if (attempt >= 20) throw error;
        await device.when(() => device.client.connected, "reconnection", 20_000);
      }
    }
    acked[i].add(seq);
    total++;
    if (total >= RESTART_AFTER && !restart) restart = restartBroker();
  };
  await Promise.all(devices.map(async (_, i) => {
    let next = 1;
    await Promise.all(Array.from({ length: WINDOW }, async () => {
      while (next <= PER_DEVICE) await send(i, next++);
    }));
  }));
  assert(restart, "the broker was restarted");
  await restart;
  assertEquals(brokerStopped?.success, true, "Mosquitto stopped cleanly on SIGTERM");
  assert(
    ackedAtStop < DEVICES * PER_DEVICE,
    `the broker went down mid-stream (${ackedAtStop} of ${DEVICES * PER_DEVICE} acknowledged)`,
  );
  for (const device of devices) assert(device.connects >= 2, "each device reconnected");

  // The bridge reconnected by itself, to its persistent sessions, in the same Doppel process.
  for (let i = 0; i < system.connections; i++) {
    await doppel.waitFor(
      new RegExp(`Bridge connection doppel-bridge-test-${i} is up.*"sessionPresent":true`),
      20_000,
      doppelMark,
    );
  }
  assert(doppel.running, "Doppel was not restarted");
  assert(system.doppel === doppel, "Doppel was not restarted");

  // Every acknowledged message arrives, each applied once.
  const missing = await settle(system.op, "r", acked, 10_000);
  assertEquals(missing.lost, [], "every message Mosquitto acknowledged reached its twin");
  assertEquals(missing.twice, [], "desired.n equals the distinct messages (none applied twice)");
  for (let i = 0; i < DEVICES; i++) {
    assertEquals(acked[i].size, PER_DEVICE, `r${i}: every message was acknowledged in the end`);
  }
}

Deno.test("bridge broker restart mid-stream (the default: one persistent session): devices and bridge reconnect by themselves; every message Mosquitto acknowledged is applied exactly once", async () => {
  await withSystem(brokerRestartMidStream);
});

Deno.test("bridge with a shared subscription group: three connections split the traffic and every QoS 1 message lands", async () => {
  await withSystem(async (system) => {
    const creds = await system.register("sh1");
    const device = await system.device(creds);
    for (let i = 0; i < 30; i++) {
      await device.publish(`devices/sh1/telemetry`, { id: `m${i}`, temperature: 20 + i % 5 });
    }
    // The group's connections work in parallel, so the messages may be applied in any order:
    // count them in the history rather than wait for the last one to be `last`.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const history = await system.op.expect(
        200,
        "GET",
        `/api/v1/devices/sh1/telemetry?metric=temperature&from=0&limit=1000`,
      );
      if (history.items.length === 30) break;
      if (Date.now() > deadline) {
        throw new Error(`${history.items.length} of 30 messages landed through the shared group`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }, { connections: 3, group: "doppel" });
});
