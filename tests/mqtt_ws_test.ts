import mqtt from "mqtt";
import { assertEquals } from "./assert.ts";
import { transportFixture, until } from "./transport_fixture.ts";
import { loadTwin } from "../src/storage/twin_store.ts";

Deno.test("MQTT over WebSocket at /mqtt: same auth, durable QoS 1, and commands pushed", async () => {
  const f = await transportFixture({ http: true });
  const clients: mqtt.MqttClient[] = [];
  try {
    const d = await f.register({ id: "mw1" });
    const url = `ws://127.0.0.1:${f.httpPort}/mqtt`;
    // A wrong key is refused at CONNECT, as over TCP.
    const refused = await mqtt.connectAsync(url, {
      clientId: "mw1",
      username: "mw1",
      password: "wrong",
      reconnectPeriod: 0,
    }).then(() => "connected", (error) => String(error));
    assertEquals(/Bad username or password|Not authorized/i.test(refused), true, refused);

    const client = await mqtt.connectAsync(url, {
      clientId: "mw1",
      username: "mw1",
      password: d.key,
      reconnectPeriod: 0,
    });
    clients.push(client);
    const received: Array<{ topic: string; body: Record<string, unknown> }> = [];
    client.on(
      "message",
      (topic, payload) => received.push({ topic, body: JSON.parse(String(payload)) }),
    );
    await client.subscribeAsync("devices/mw1/commands/+", { qos: 1 });
    // PUBACK only once durable: the twin shows the reading when publishAsync resolves.
    await client.publishAsync("devices/mw1/telemetry", JSON.stringify({ temperature: 23.5 }), {
      qos: 1,
    });
    assertEquals((await loadTwin(f.kv, "mw1"))?.state.telemetry.last, { temperature: 23.5 });

    const { id } = await f.sendCommand("mw1", { name: "reboot" });
    await until(
      () => received.find((m) => m.topic === `devices/mw1/commands/${id}`),
      "the command",
    );
    await until(async () => (await f.command("mw1", id)).status === "delivered", "delivered");
  } finally {
    for (const client of clients) await client.endAsync();
    await f.close();
  }
});
