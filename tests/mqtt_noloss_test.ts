/**
 * No-loss test of the embedded MQTT endpoint through the real server process: 100 devices
 * (mqtt.js, client id = device id) stream QoS 1 telemetry with unique ids, the server is killed
 * with SIGKILL mid-stream and restarted on the same KV file and ports, the clients reconnect by
 * themselves and resend what was not acknowledged, and every message whose PUBACK a device saw
 * must be applied exactly once (a counting twin kind: `desired.n` and one `mN` key per message).
 * @module
 */
import { assert, assertEquals } from "./assert.ts";
import {
  type Creds,
  DoppelProcess,
  freePort,
  MqttDevice,
  Operator,
  settle,
  writeKinds,
} from "./real_process.ts";
import mqtt from "mqtt";

const TOKEN = "noloss-test-admin-token-0123456789";
const DEVICES = 100;
/** Messages per device (desired holds one `mN` key each: well under the 32 KiB cap). */
const PER_DEVICE = 30;
/** QoS 1 publishes each device keeps in flight. */
const WINDOW = 3;
/** PUBACKs (all devices) after which the server is killed. */
const KILL_AFTER = 1_000;

/** Runs `fn` over `items` with at most `limit` at a time. */
async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

Deno.test("embedded MQTT, SIGKILL mid-stream: 100 devices' QoS 1 telemetry, every PUBACKed message applied exactly once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "doppel_noloss_test_" });
  const servers: DoppelProcess[] = [];
  const devices: MqttDevice[] = [];
  const httpPort = freePort();
  const mqttPort = freePort();
  const start = async () => {
    const server = await DoppelProcess.start({
      PORT: String(httpPort),
      MQTT_PORT: String(mqttPort),
      DOPPEL_KV: `${dir}/data/doppel.kv`,
      DOPPEL_TWINS: `${dir}/kinds`,
      DOPPEL_ADMIN_TOKEN: TOKEN,
    });
    servers.push(server);
    return server;
  };
  try {
    await writeKinds(dir);
    const first = await start();
    assertEquals(first.mqttPort, mqttPort);
    const op = new Operator(first.base, TOKEN);

    const ids = Array.from({ length: DEVICES }, (_, i) => `n${i}`);
    const creds: Creds[] = new Array(DEVICES);
    await pool(ids.map((id, i) => ({ id, i })), 10, async ({ id, i }) => {
      creds[i] = await op.register(id, "counter");
    });

    // Clients that reconnect by themselves (mqtt.js resends unacknowledged QoS 1 publishes).
    for (const c of creds) {
      devices.push(
        new MqttDevice(mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`, {
          clientId: c.id,
          username: c.id,
          password: c.key,
          protocolVersion: 4,
          clean: true,
          reconnectPeriod: 100,
          connectTimeout: 3_000,
        })),
      );
    }
    await Promise.all(
      devices.map((d) => d.when(() => d.client.connected, "the first connection", 20_000)),
    );

    const acked = creds.map(() => new Set<number>());
    let total = 0;
    let crash: Promise<void> | undefined;
    let ackedAtKill = -1;
    let killed: Deno.CommandStatus | undefined;
    const crashAndRestart = async () => {
      killed = await first.stop("SIGKILL");
      ackedAtKill = total;
      await start();
    };
    const send = async (i: number, seq: number) => {
      const device = devices[i];
      for (let attempt = 1;; attempt++) {
        try {
          await device.client.publishAsync(
            `devices/${creds[i].id}/telemetry`,
            JSON.stringify({ id: `m${seq}`, seq }),
            { qos: 1 },
          );
          break;
        } catch (error) {
          // A publish mqtt.js gave up on in a connection loss: send it again (same id) once
          // connected, as a device would.
          if (attempt >= 20) throw error;
          await device.when(() => device.client.connected, "reconnection", 30_000);
        }
      }
      acked[i].add(seq);
      total++;
      if (total >= KILL_AFTER && !crash) crash = crashAndRestart();
    };
    await Promise.all(devices.map(async (_, i) => {
      let next = 1;
      await Promise.all(Array.from({ length: WINDOW }, async () => {
        while (next <= PER_DEVICE) await send(i, next++);
      }));
    }));
    assert(crash, "the server was killed");
    await crash;
    assertEquals(killed?.signal, "SIGKILL", "the first server was killed, not exited");
    assert(
      ackedAtKill < DEVICES * PER_DEVICE,
      `killed mid-stream (${ackedAtKill} of ${DEVICES * PER_DEVICE} acknowledged)`,
    );
    const reconnected = devices.filter((d) => d.connects >= 2).length;
    assertEquals(reconnected, DEVICES, "every device reconnected to the restarted server");

    const second = servers[servers.length - 1];
    const { lost, twice } = await settle(new Operator(second.base, TOKEN), "n", acked, 10_000);
    assertEquals(lost, [], "every message a device saw acknowledged is in its twin");
    assertEquals(twice, [], "desired.n equals the distinct messages (none applied twice)");
    for (let i = 0; i < DEVICES; i++) {
      assertEquals(acked[i].size, PER_DEVICE, `n${i}: every message was acknowledged in the end`);
    }
  } catch (error) {
    for (const [i, server] of servers.entries()) {
      console.error(`--- doppel run ${i + 1} ---\n${server.lines.slice(-40).join("\n")}`);
    }
    throw error;
  } finally {
    await Promise.all(devices.map((d) => d.end()));
    for (const server of servers) await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
