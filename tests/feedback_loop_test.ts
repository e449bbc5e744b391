/**
 * The thermostat's feedback loop end to end, through the real server process: a simulated
 * thermostat over MQTT runs hot for 30 s of device time, the `overheat` rule raises a major alarm
 * that an operator's push subscription receives (decrypted here as a browser would) and sends the
 * device `cool`; the device answers `succeeded`, cools down below 28 °C for 30 s, and the alarm
 * clears by itself.
 * @module
 */
import { assert, assertEquals } from "./assert.ts";
import {
  connectDevice,
  DoppelProcess,
  freePort,
  type MqttDevice,
  Operator,
  until,
} from "./real_process.ts";
import { browserKeys, decryptPush } from "./push_receiver.ts";

const TOKEN = "feedback-loop-admin-token-0123456789";

// deno-lint-ignore no-explicit-any
type Json = any;

/** A push endpoint on a local port: records every POST it gets and answers 201. */
class PushReceiver {
  readonly received: Array<{ path: string; headers: Headers; body: Uint8Array<ArrayBuffer> }> = [];
  readonly server: Deno.HttpServer<Deno.NetAddr>;

  constructor() {
    this.server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
      const body = new Uint8Array(await req.arrayBuffer());
      this.received.push({ path: new URL(req.url).pathname, headers: req.headers, body });
      return new Response(null, { status: 201 });
    });
  }

  get origin(): string {
    return `http://127.0.0.1:${this.server.addr.port}`;
  }

  async close(): Promise<void> {
    await this.server.shutdown();
    await this.server.finished;
  }
}

Deno.test("feedback loop (real process, MQTT): hot → major alarm pushed + cool command → succeeded → cools → alarm clears by itself", async () => {
  const dir = await Deno.makeTempDir({ prefix: "doppel_feedback_test_" });
  const receiver = new PushReceiver();
  let server: DoppelProcess | undefined;
  let device: MqttDevice | undefined;
  try {
    server = await DoppelProcess.start({
      MQTT_PORT: String(freePort()),
      DOPPEL_KV: `${dir}/data/doppel.kv`,
      DOPPEL_ADMIN_TOKEN: TOKEN,
    });
    const op = new Operator(server.base, TOKEN);
    const id = "loop-t1";
    const creds = await op.register(id, "thermostat");

    // An operator's browser subscribes to pushes.
    const keys = await browserKeys();
    await op.expect(201, "POST", "/api/v1/push/subscriptions", {
      endpoint: `${receiver.origin}/push/abc`,
      keys: keys.json,
    });

    // The thermostat connects and listens for commands.
    device = await connectDevice(`mqtt://127.0.0.1:${server.mqttPort}`, creds);
    await device.client.subscribeAsync(`devices/${id}/commands/+`, { qos: 1 });

    // Hot (33 °C: over 30, under the 40 °C emergency limit) for 30 s of device time.
    const now = Date.now();
    for (const ago of [90, 80, 70]) {
      await device.publish(`devices/${id}/telemetry`, { ts: now - ago * 1000, temperature: 33 });
    }
    assertEquals(
      (await op.expect(200, "GET", `/api/v1/alarms?device=${id}`)).items,
      [],
      "20 s hot: no alarm yet",
    );
    await device.publish(`devices/${id}/telemetry`, { ts: now - 60_000, temperature: 33.5 });

    // The device is told to cool, and answers.
    const command = await device.message(
      (topic) => /^devices\/loop-t1\/commands\/[^/]+$/.test(topic),
      "the cool command",
    );
    const body = command.body as Json;
    assertEquals([body.name, body.payload], ["cool", { targetTemperature: 22 }]);
    const commandId = command.topic.split("/")[3];
    await device.publish(`${command.topic}/result`, {
      status: "succeeded",
      result: { mode: "cool" },
    });

    // The alarm is open, and the operator got it pushed.
    const [alarm] = (await op.expect(200, "GET", `/api/v1/alarms?device=${id}`)).items;
    assertEquals(
      [alarm.type, alarm.severity, alarm.state, alarm.count],
      ["overheat", "major", "active", 1],
    );
    const push = await until(() => receiver.received[0], "the alarm push", 10_000);
    assertEquals(push.path, "/push/abc");
    assertEquals(push.headers.get("content-encoding"), "aes128gcm");
    assert(/^vapid t=/.test(push.headers.get("authorization") ?? ""), "VAPID authorization");
    const payload = JSON.parse(await decryptPush(push.body, keys));
    assertEquals(
      [payload.alarm.id, payload.alarm.type, payload.alarm.severity, payload.alarm.deviceId],
      [alarm.id, "overheat", "major", id],
    );

    // Cooling down: still between the bounds (29 °C) changes nothing…
    await device.publish(`devices/${id}/telemetry`, { ts: now - 55_000, temperature: 29 });
    // …then under 28 °C for 30 s of device time clears the alarm by itself.
    for (const ago of [50, 40, 30, 20]) {
      await device.publish(`devices/${id}/telemetry`, { ts: now - ago * 1000, temperature: 25 });
    }
    const cleared = await until(async () => {
      const items = (await op.expect(200, "GET", `/api/v1/alarms?device=${id}`)).items;
      return items.length === 1 && items[0].state === "cleared" ? items[0] : null;
    }, "the alarm to clear");
    assertEquals([cleared.id, cleared.clearedBy], [alarm.id, "rule overheat"]);
    assertEquals(
      (await op.expect(200, "GET", `/api/v1/alarms?device=${id}&state=active`)).items,
      [],
    );

    const done = await op.expect(200, "GET", `/api/v1/devices/${id}/commands/${commandId}`);
    assertEquals([done.name, done.status, done.result], ["cool", "succeeded", { mode: "cool" }]);
    const commands = (await op.expect(200, "GET", `/api/v1/devices/${id}/commands`)).items;
    assertEquals(commands.length, 1, "one cool command: the rule fired once");
    const events = (await op.expect(200, "GET", `/api/v1/devices/${id}/events?type=alarm`)).items;
    assertEquals(events.map((e: Json) => e.type).reverse(), ["alarm.raised", "alarm.cleared"]);
    const twin = await op.twin(id);
    assertEquals(twin.telemetry.last.temperature, 25);
    assertEquals(receiver.received.length, 1, "one push: clearing is not pushed");
  } catch (error) {
    if (server) console.error(`--- doppel ---\n${server.lines.slice(-40).join("\n")}`);
    throw error;
  } finally {
    await device?.end();
    await server?.stop();
    await receiver.close();
    await Deno.remove(dir, { recursive: true });
  }
});
