/**
 * Child processes of the MQTT part (run by `mqtt.ts`, not by hand), so that the load and the
 * broker under test each get their own core. Three modes:
 *
 * - `broker`: a plain aedes broker (`Aedes.createBroker()` + a `node:net` server, no hooks) on a
 *   free port of 127.0.0.1; prints `LISTENING <port>` and runs until SIGTERM.
 * - `telemetry <config.json>`: connects one mqtt.js client per device (client id = username =
 *   device id, password = key), then each keeps `inFlight` QoS 1 publishes of
 *   `{"temperature": 21.5}` to `devices/{id}/telemetry` outstanding, sending the next on each
 *   PUBACK. After the warm-up it prints `WINDOW_START`, counts PUBACKs for the window, prints
 *   `WINDOW_END`, drains, disconnects and prints `BENCH_RESULT {json}` ({@link TelemetryResult}).
 * - `responder <config.json>`: connects the devices, subscribes each to `devices/{id}/commands/+`
 *   at QoS 1 and answers every command with `{"status": "succeeded"}` on
 *   `devices/{id}/commands/{commandId}/result` at QoS 1. Prints `READY` once all are subscribed;
 *   when its stdin closes it disconnects and prints `BENCH_RESULT {json}` ({@link ResponderResult}).
 * @module
 */
import { Aedes } from "aedes";
import mqtt, { type MqttClient } from "mqtt";
import { Buffer } from "node:buffer";
import { createServer } from "node:net";
import { threadCpu } from "./common.ts";

/** What the parent passes to the `telemetry` and `responder` modes (as a JSON file). */
export interface LoadConfig {
  /** Broker URL, `mqtt://127.0.0.1:port`. */
  url: string;
  /** Device credentials; one client each. */
  devices: Array<{ id: string; key: string }>;
  /** QoS 1 publishes outstanding per client (telemetry). */
  inFlight?: number;
  /** Warm-up before the window, ms (telemetry). */
  warmupMs?: number;
  /** Measured window, ms (telemetry). */
  windowMs?: number;
  /** Connections opened at a time (default 50). */
  connectParallel?: number;
}

/** What the `telemetry` mode reports. */
export interface TelemetryResult {
  /** Clients connected. */
  clients: number;
  /** Seconds connecting them took. */
  connectSeconds: number;
  /** PUBACKs received in the window. */
  acked: number;
  /** Window length, s (measured). */
  windowSeconds: number;
  /** PUBACKs per second in the window. */
  perSec: number;
  /** PUBACK latency in the window, ms (publish call to PUBACK callback). */
  latency: { p50: number; p99: number; max: number };
  /** Publishes that failed (callback with an error), all run. */
  publishErrors: number;
  /** Clients that closed or errored before the end. */
  lostClients: number;
  /** First client error, if any. */
  firstError?: string;
  /** This process's CPU over the window: % of one core, main (JS) thread and others. */
  cpu: { main: number; others: number } | null;
}

/** What the `responder` mode reports. */
export interface ResponderResult {
  /** Clients connected and subscribed. */
  clients: number;
  /** Command messages received. */
  commands: number;
  /** Results whose PUBACK arrived. */
  answered: number;
  /** Result publishes that failed. */
  errors: number;
  /** Clients that closed or errored before the end. */
  lostClients: number;
}

const PAYLOAD = Buffer.from('{"temperature": 21.5}');
const RESULT = Buffer.from('{"status":"succeeded"}');

function connect(url: string, id: string, key: string): Promise<MqttClient> {
  const client = mqtt.connect(url, {
    clientId: id,
    username: id,
    password: key,
    protocolVersion: 4,
    clean: true,
    keepalive: 120,
    reconnectPeriod: 0,
    connectTimeout: 30_000,
  });
  return new Promise((resolve, reject) => {
    client.once("connect", () => resolve(client));
    client.once("error", (error) => {
      client.end(true);
      reject(new Error(`${id}: ${error.message}`));
    });
    client.once("close", () => reject(new Error(`${id}: closed before CONNACK`)));
  });
}

/** Connects every device, `parallel` at a time, in order. */
async function connectAll(config: LoadConfig): Promise<MqttClient[]> {
  const clients: MqttClient[] = new Array(config.devices.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < config.devices.length) {
      const i = next++;
      const { id, key } = config.devices[i];
      clients[i] = await connect(config.url, id, key);
    }
  };
  await Promise.all(Array.from({ length: config.connectParallel ?? 50 }, worker));
  return clients;
}

async function endAll(clients: MqttClient[]): Promise<void> {
  await Promise.all(clients.map((c) =>
    Promise.race([
      c.endAsync(),
      new Promise((resolve) => setTimeout(resolve, 3_000)),
    ]).then(() => c.end(true))
  ));
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function telemetry(config: LoadConfig): Promise<TelemetryResult> {
  const inFlight = config.inFlight ?? 8;
  const t0 = performance.now();
  const clients = await connectAll(config);
  const connectSeconds = (performance.now() - t0) / 1000;
  let lostClients = 0;
  let firstError: string | undefined;
  let ending = false;
  for (const client of clients) {
    client.on("error", (error) => {
      firstError ??= `${client.options.clientId}: ${error.message}`;
    });
    client.once("close", () => {
      if (!ending) lostClients++;
    });
  }

  let running = true;
  let counting = false;
  let acked = 0;
  let outstanding = 0;
  let publishErrors = 0;
  // PUBACK latencies in the window (ms); grown as needed.
  let latencies = new Float64Array(1 << 18);
  let nLatencies = 0;
  const pump = (client: MqttClient, topic: string): void => {
    const sent = performance.now();
    outstanding++;
    client.publish(topic, PAYLOAD, { qos: 1 }, (error) => {
      outstanding--;
      if (error) {
        publishErrors++;
        firstError ??= `${client.options.clientId} publish: ${error.message}`;
        if (!client.connected) return; // Stop pumping a dead client.
      } else if (counting) {
        acked++;
        if (nLatencies === latencies.length) {
          const grown = new Float64Array(latencies.length * 2);
          grown.set(latencies);
          latencies = grown;
        }
        latencies[nLatencies++] = performance.now() - sent;
      }
      if (running) pump(client, topic);
    });
  };
  config.devices.forEach(({ id }, i) => {
    const topic = `devices/${id}/telemetry`;
    for (let k = 0; k < inFlight; k++) pump(clients[i], topic);
  });

  await sleep(config.warmupMs ?? 3_000);
  const cpuBefore = threadCpu();
  counting = true;
  const w0 = performance.now();
  console.log("WINDOW_START");
  await sleep(config.windowMs ?? 10_000);
  counting = false;
  const windowSeconds = (performance.now() - w0) / 1000;
  const cpuAfter = threadCpu();
  console.log("WINDOW_END");
  running = false;
  const drainUntil = Date.now() + 10_000;
  while (outstanding > 0 && Date.now() < drainUntil) await sleep(20);
  ending = true;
  await endAll(clients);

  const sorted = latencies.slice(0, nLatencies).sort();
  return {
    clients: clients.length,
    connectSeconds,
    acked,
    windowSeconds,
    perSec: acked / windowSeconds,
    latency: {
      p50: percentile(sorted, 0.5),
      p99: percentile(sorted, 0.99),
      max: nLatencies ? sorted[nLatencies - 1] : NaN,
    },
    publishErrors,
    lostClients,
    firstError,
    cpu: cpuBefore && cpuAfter
      ? {
        main: (cpuAfter.main - cpuBefore.main) / windowSeconds * 100,
        others: (cpuAfter.others - cpuBefore.others) / windowSeconds * 100,
      }
      : null,
  };
}

async function responder(config: LoadConfig): Promise<ResponderResult> {
  const clients = await connectAll(config);
  let commands = 0;
  let answered = 0;
  let errors = 0;
  let lostClients = 0;
  let ending = false;
  await Promise.all(clients.map(async (client, i) => {
    const id = config.devices[i].id;
    const prefix = `devices/${id}/commands/`;
    client.on("message", (topic) => {
      if (!topic.startsWith(prefix) || topic.endsWith("/result")) return;
      commands++;
      client.publish(`${topic}/result`, RESULT, { qos: 1 }, (error) => {
        if (error) errors++;
        else answered++;
      });
    });
    client.once("close", () => {
      if (!ending) lostClients++;
    });
    await client.subscribeAsync(`${prefix}+`, { qos: 1 });
  }));
  console.log("READY");
  // Run until the parent closes our stdin.
  for await (const _ of Deno.stdin.readable) { /* ignore */ }
  ending = true;
  await endAll(clients);
  return { clients: clients.length, commands, answered, errors, lostClients };
}

async function broker(): Promise<void> {
  const aedes = await Aedes.createBroker();
  const server = createServer((socket) => aedes.handle(socket));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.address();
  console.log(`LISTENING ${typeof address === "object" && address ? address.port : "?"}`);
  const stop = () => {
    server.close();
    aedes.close(() => Deno.exit(0));
    setTimeout(() => Deno.exit(0), 2_000);
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
}

if (import.meta.main) {
  const [mode, configPath] = Deno.args;
  const config = (): Promise<LoadConfig> =>
    Deno.readTextFile(configPath).then((text) => JSON.parse(text));
  try {
    if (mode === "broker") await broker();
    else if (mode === "telemetry") {
      console.log(`BENCH_RESULT ${JSON.stringify(await telemetry(await config()))}`);
      Deno.exit(0);
    } else if (mode === "responder") {
      console.log(`BENCH_RESULT ${JSON.stringify(await responder(await config()))}`);
      Deno.exit(0);
    } else throw new Error(`Unknown mode ${JSON.stringify(mode)}.`);
  } catch (error) {
    console.error(`mqtt_load ${mode}: ${error instanceof Error ? error.stack : error}`);
    Deno.exit(1);
  }
}
