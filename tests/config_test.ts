/**
 * The process's settings from flags and the environment (`readConfig` in `src/main.ts`).
 * @module
 */
import { assertEquals, assertMatch, assertRejects } from "./assert.ts";
import { readConfig } from "../src/main.ts";

const envOf = (vars: Record<string, string>) => (name: string): string | undefined => vars[name];

Deno.test("config: an empty PORT or MQTT_PORT (as `PORT=` in a unit file) means the default, not port 0", () => {
  const config = readConfig([], envOf({ PORT: "", MQTT_PORT: "", DOPPEL_KV: "" }));
  assertEquals([config.port, config.mqttPort, config.kvPath], [8000, 1883, "./data/doppel.kv"]);
});

Deno.test("config: a flag wins over its variable, and a bad port stops start-up naming it", async () => {
  const config = readConfig(["--port", "9001", "--mqtt-port=0"], envOf({ PORT: "7000" }));
  assertEquals([config.port, config.mqttPort], [9001, 0]);
  const error = await assertRejects(() =>
    Promise.resolve().then(() => readConfig([], envOf({ MQTT_PORT: "70000" })))
  );
  assertMatch(String(error), /MQTT_PORT "70000" is not a port number\./);
});
