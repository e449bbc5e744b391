/**
 * Doppel's process entry: reads the environment (and flags of the same meaning), opens the KV
 * store, loads twin kinds, and serves HTTP. The only file that touches the environment or sockets.
 *
 * ```sh
 * deno task start                  # PORT=8000, DOPPEL_KV=./data/doppel.kv, DOPPEL_TWINS=./twins
 * deno task start --port 9000 --kv :memory:
 * ```
 * @module
 */
import { createServer, type Server } from "node:net";
import { createApp } from "./app.ts";
import { SEVERITIES, type Severity } from "./rules/alarms.ts";
import { type MqttBridge, startBridge } from "./transports/mqtt_bridge.ts";
import { systemClock } from "./clock.ts";
import { isLogLevel, jsonLogger } from "./log.ts";
import { randomSecret } from "./registry/secrets.ts";
import { loadKinds } from "./twin/loader.ts";

/** Settings from the environment and flags. */
export interface Config {
  /** HTTP port (`PORT`, default 8000). */
  port: number;
  /** Embedded MQTT port (`MQTT_PORT`, default 1883). */
  mqttPort: number;
  /** External broker for bridge mode (`MQTT_URL`). */
  mqttUrl?: string;
  /** KV path or URL (`DOPPEL_KV`). */
  kvPath: string;
  /** Twin kinds folder (`DOPPEL_TWINS`). */
  twinsDir: string;
  /** Operator token (`DOPPEL_ADMIN_TOKEN`). */
  adminToken?: string;
  /** Server secret (`DOPPEL_SECRET`). */
  secret?: string;
  /** Log level (`DOPPEL_LOG_LEVEL`). */
  logLevel: string;
  /** Address to listen on (`DOPPEL_HOSTNAME`). */
  hostname: string;
}

/**
 * The settings `args` (flags) and the environment (`env`, by default the process's) give: a flag
 * wins over its variable, and an empty variable counts as unset.
 */
export function readConfig(
  args: string[],
  env: (name: string) => string | undefined = (name) => Deno.env.get(name),
): Config {
  const flags = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const match = /^--([a-z-]+)(?:=(.*))?$/.exec(args[i]);
    if (!match) throw new Error(`Unknown argument ${JSON.stringify(args[i])}.`);
    flags.set(match[1], match[2] ?? args[++i] ?? "");
  }
  // An empty variable counts as unset (`PORT=` in a unit file means the default, not port 0).
  const get = (flag: string, name: string) => flags.get(flag) ?? (env(name) || undefined);
  const port = Number(get("port", "PORT") ?? 8000);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`PORT ${JSON.stringify(get("port", "PORT"))} is not a port number.`);
  }
  const mqttPort = Number(get("mqtt-port", "MQTT_PORT") ?? 1883);
  if (!Number.isInteger(mqttPort) || mqttPort < 0 || mqttPort > 65535) {
    throw new Error(
      `MQTT_PORT ${JSON.stringify(get("mqtt-port", "MQTT_PORT"))} is not a port number.`,
    );
  }
  return {
    port,
    mqttPort,
    mqttUrl: get("mqtt-url", "MQTT_URL"),
    kvPath: get("kv", "DOPPEL_KV") ?? "./data/doppel.kv",
    twinsDir: get("twins", "DOPPEL_TWINS") ?? "./twins",
    adminToken: get("admin-token", "DOPPEL_ADMIN_TOKEN"),
    secret: get("secret", "DOPPEL_SECRET"),
    logLevel: get("log-level", "DOPPEL_LOG_LEVEL") ?? "info",
    hostname: get("hostname", "DOPPEL_HOSTNAME") ?? "0.0.0.0",
  };
}

/** The server secret: configured, or generated once and kept beside the KV file (mode 0600). */
async function serverSecret(config: Config, local: boolean): Promise<string> {
  if (config.secret) return config.secret;
  if (!local) {
    throw new Error("DOPPEL_SECRET must be set when DOPPEL_KV is not a local file.");
  }
  if (config.kvPath === ":memory:") return randomSecret(32);
  const path = `${dirname(config.kvPath)}/doppel.secret`;
  try {
    return (await Deno.readTextFile(path)).trim();
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  const secret = randomSecret(32);
  await Deno.writeTextFile(path, secret + "\n", { mode: 0o600, createNew: true });
  return secret;
}

/** Seconds an HTTP-only device stays online after its last request (default 300), in ms. */
function httpPresenceTimeout(raw: string | undefined): number {
  if (raw === undefined || raw.trim() === "") return 300_000;
  const seconds = Number(raw);
  if (!Number.isFinite(seconds) || seconds < 1 || seconds > 86_400) {
    throw new Error(
      `DOPPEL_HTTP_PRESENCE_TIMEOUT ${
        JSON.stringify(raw)
      } is not a number of seconds from 1 to 86400.`,
    );
  }
  return seconds * 1000;
}

/** The alarm severities pushed to operators (default critical and major). */
function pushSeverities(raw: string | undefined): Severity[] {
  if (raw === undefined || raw.trim() === "") return ["critical", "major"];
  const list = raw.split(",").map((s) => s.trim());
  for (const severity of list) {
    if (!(SEVERITIES as readonly string[]).includes(severity)) {
      throw new Error(
        `DOPPEL_PUSH_SEVERITIES names ${JSON.stringify(severity)}, not one of ${
          SEVERITIES.join(", ")
        }.`,
      );
    }
  }
  return list as Severity[];
}

function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

async function main(): Promise<void> {
  const config = readConfig(Deno.args);
  if (!isLogLevel(config.logLevel)) {
    throw new Error(
      `DOPPEL_LOG_LEVEL ${JSON.stringify(config.logLevel)} is not one of debug, info, warn, error.`,
    );
  }
  const logger = jsonLogger(config.logLevel);
  const remote = /^https?:\/\//.test(config.kvPath);
  if (!remote && config.kvPath !== ":memory:") {
    await Deno.mkdir(dirname(config.kvPath), { recursive: true });
  }
  const kinds = await loadKinds(config.twinsDir);
  const kv = await Deno.openKv(config.kvPath);
  const doppel = await createApp({
    kv,
    clock: systemClock,
    kinds,
    secret: await serverSecret(config, !remote),
    adminToken: config.adminToken,
    logger,
    mqtt: true,
    metricsToken: Deno.env.get("DOPPEL_METRICS_TOKEN") || undefined,
    trustProxy: flagSetting("DOPPEL_TRUST_PROXY", Deno.env.get("DOPPEL_TRUST_PROXY")),
    runtime: { httpTimeoutMs: httpPresenceTimeout(Deno.env.get("DOPPEL_HTTP_PRESENCE_TIMEOUT")) },
    push: {
      vapid: {
        publicKey: Deno.env.get("DOPPEL_VAPID_PUBLIC_KEY"),
        privateKey: Deno.env.get("DOPPEL_VAPID_PRIVATE_KEY"),
        subject: Deno.env.get("DOPPEL_VAPID_SUBJECT"),
      },
      severities: pushSeverities(Deno.env.get("DOPPEL_PUSH_SEVERITIES")),
    },
  });
  if (doppel.createdAdminToken) {
    // Shown once, on first start; only its hash is kept.
    console.log(`\nOperator token (shown only now, keep it safe): ${doppel.createdAdminToken}\n`);
  }
  doppel.start();
  const stop = new AbortController();
  const server = Deno.serve({
    port: config.port,
    hostname: config.hostname,
    signal: stop.signal,
    onListen: ({ hostname, port }) => {
      logger.log("info", "main", `Doppel listening on http://${hostname}:${port}`, {
        port,
        kv: remote ? "remote" : config.kvPath,
        kinds: [...kinds.keys()],
      });
    },
  }, doppel.fetch);
  let stopping = false;
  let mqttServer: Server | undefined;
  if (config.mqttPort !== 0 && doppel.mqtt) {
    const endpoint = doppel.mqtt;
    mqttServer = createServer((socket) => endpoint.handle(socket));
    await new Promise<void>((resolve, reject) => {
      mqttServer!.once("error", reject);
      mqttServer!.listen(config.mqttPort, config.hostname, () => resolve());
    });
    const address = mqttServer.address();
    logger.log(
      "info",
      "main",
      `MQTT listening on mqtt://${config.hostname}:${
        typeof address === "object" && address ? address.port : config.mqttPort
      }`,
      {
        mqttPort: typeof address === "object" && address ? address.port : config.mqttPort,
      },
    );
  }
  let bridge: MqttBridge | undefined;
  if (config.mqttUrl) {
    const broker = brokerUrl(config.mqttUrl);
    bridge = startBridge({
      runtime: doppel.runtime,
      registry: doppel.registry,
      sessions: doppel.sessions,
      kv,
      logger,
    }, {
      url: config.mqttUrl,
      clientId: Deno.env.get("MQTT_BRIDGE_ID") ?? "doppel-bridge",
      group: Deno.env.get("MQTT_BRIDGE_GROUP") ?? "",
      connections: bridgeConnections(Deno.env.get("MQTT_BRIDGE_CONNECTIONS")),
      dynsec: Deno.env.get("MQTT_DYNSEC") === "1",
    });
    doppel.observe((event) => bridge!.onRegistry(event));
    logger.log("info", "main", "Bridging to an external MQTT broker.", {
      broker: broker.host,
    });
  }
  const shutdown = async () => {
    if (stopping) return;
    stopping = true;
    logger.log("info", "main", "Shutting down.");
    // New connections are refused; requests under way get their answers (what they wrote is
    // durable, and a client told nothing would send it again). Waits and streams end with the
    // app; anything still open after 10 s is cut.
    const drained = server.shutdown();
    const cut = setTimeout(() => stop.abort(), 10_000);
    mqttServer?.close();
    await bridge?.close();
    await doppel.close();
    await drained;
    clearTimeout(cut);
    await server.finished;
    kv.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", shutdown);
  Deno.addSignalListener("SIGTERM", shutdown);
}

/** MQTT_BRIDGE_CONNECTIONS: a whole number of connections, 1 or more (default 4). */
/** A setting that is `1` (on) or `0`, empty or unset (off); anything else stops start-up. */
function flagSetting(name: string, text: string | undefined): boolean {
  if (text === undefined || text === "" || text === "0") return false;
  if (text === "1") return true;
  throw new Error(`${name} ${JSON.stringify(text)} must be 1 (on) or 0 (off).`);
}

function bridgeConnections(text: string | undefined): number {
  if (!text) return 4;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 64) {
    throw new Error(
      `MQTT_BRIDGE_CONNECTIONS ${JSON.stringify(text)} is not a number from 1 to 64.`,
    );
  }
  return n;
}

/** MQTT_URL parsed; if it does not parse, an error that does not repeat it (it holds a password). */
function brokerUrl(text: string): URL {
  try {
    return new URL(text);
  } catch {
    throw new Error(
      "MQTT_URL is not a valid URL (it is not shown, as it holds a password): percent-encode " +
        "characters such as / @ : in the user name and password.",
    );
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    console.error(`doppel: ${error instanceof Error ? error.message : error}`);
    Deno.exit(1);
  }
}
