/**
 * The simulator's command line: flags parsed from the arguments and an environment passed in
 * (only `main.ts` reads the real ones). A bad flag is a {@link UsageError} naming it.
 * @module
 */

/** The protocols a simulated device can speak. */
export const PROTOCOLS = ["mqtt", "ws", "http"] as const;

/** One of {@link PROTOCOLS}. */
export type Protocol = typeof PROTOCOLS[number];

/** The device kinds the simulator knows how to play. */
export const KINDS = ["thermostat", "generic"] as const;

/** One of {@link KINDS}. */
export type SimKind = typeof KINDS[number];

/** Everything the simulator was asked to do. */
export interface SimOptions {
  /** Doppel's HTTP base URL, without a trailing slash. */
  url: string;
  /** The MQTT broker URL (`mqtt://host:port`). */
  mqttUrl: string;
  /** The operator token; needed only to register devices or rotate their keys. */
  token?: string;
  /** How many devices. */
  devices: number;
  /** Telemetry messages per second per device (may be fractional). */
  rate: number;
  /** The protocol every device speaks. */
  protocol: Protocol;
  /** The twin kind of the devices. */
  kind: SimKind;
  /** Device ids are `${prefix}${n}`, n from 0. */
  prefix: string;
  /** Seconds to stream before stopping; until interrupted when absent. */
  duration?: number;
  /** The file remembering device keys between runs. */
  keysFile: string;
  /** Chance per device per minute of a thermostat running hot for ~45 s. */
  excursionRate: number;
  /** Print the final summary as one JSON object on stdout instead of text. */
  json: boolean;
  /** `--help` was given. */
  help: boolean;
}

/** A bad command line: the message names the flag. Exit status 2. */
export class UsageError extends Error {
  /** The flag at fault (with its dashes), or the stray argument. */
  readonly flag: string;

  constructor(flag: string, message: string) {
    super(message);
    this.name = "UsageError";
    this.flag = flag;
  }
}

/** How to run the simulator, for `--help` and after a usage error. */
export const USAGE = `Usage: deno task simulate [flags]

Simulates a fleet of devices talking to a Doppel server.

  --url URL             Doppel's HTTP address (default $DOPPEL_URL or http://localhost:8000)
  --mqtt-url URL        MQTT broker (default $DOPPEL_MQTT_URL or mqtt://<host of --url>:1883)
  --token TOKEN         operator token, needed to register devices (default $DOPPEL_ADMIN_TOKEN)
  --devices N           number of devices (default 10)
  --rate R              telemetry messages per second per device, fractional allowed (default 1)
  --protocol P          mqtt, ws or http (default mqtt)
  --kind K              thermostat or generic (default thermostat)
  --prefix P            device id prefix (default "sim-")
  --duration S          stop after S seconds (default: run until Ctrl-C)
  --keys FILE           where device keys are remembered (default ./data/simulator-keys.json)
  --excursion-rate P    chance per device per minute of running hot for ~45 s (default 0.05)
  --json                print the final summary as JSON on stdout
  --help                show this text
`;

/** Flags that take a value. */
const VALUE_FLAGS = new Set([
  "url",
  "mqtt-url",
  "token",
  "devices",
  "rate",
  "protocol",
  "kind",
  "prefix",
  "duration",
  "keys",
  "excursion-rate",
]);

/** Flags that stand alone. */
const SWITCHES = new Set(["json", "help"]);

const DEVICE_ID_PREFIX = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,100}$/;

/**
 * Parses `args` (`--flag value` or `--flag=value`) with defaults from `env`; throws a
 * {@link UsageError} naming the flag at fault.
 */
export function parseOptions(
  args: readonly string[],
  env: (name: string) => string | undefined,
): SimOptions {
  // An empty variable counts as unset.
  const fromEnv = (name: string) => env(name) || undefined;
  const given = new Map<string, string>();
  const switches = new Set<string>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const match = /^--([a-z][a-z-]*)(?:=(.*))?$/s.exec(arg);
    if (!match) {
      throw new UsageError(
        arg,
        `Unexpected argument ${JSON.stringify(arg)}; flags look like --devices 10.`,
      );
    }
    const [, name, inline] = match;
    if (SWITCHES.has(name)) {
      if (inline !== undefined && inline !== "true") {
        throw new UsageError(`--${name}`, `--${name} takes no value.`);
      }
      switches.add(name);
      continue;
    }
    if (!VALUE_FLAGS.has(name)) {
      throw new UsageError(`--${name}`, `Unknown flag --${name}.`);
    }
    let value = inline;
    if (value === undefined) {
      const next = args[i + 1];
      if (next === undefined || (next.startsWith("--") && next.length > 2)) {
        throw new UsageError(`--${name}`, `--${name} needs a value.`);
      }
      value = next;
      i++;
    }
    if (given.has(name)) throw new UsageError(`--${name}`, `--${name} is given twice.`);
    given.set(name, value);
  }

  const url = parseHttpUrl(given.get("url") ?? fromEnv("DOPPEL_URL") ?? "http://localhost:8000");
  const mqttUrl = parseMqttUrl(
    given.get("mqtt-url") ?? fromEnv("DOPPEL_MQTT_URL") ?? `mqtt://${new URL(url).hostname}:1883`,
  );
  const token = given.get("token") ?? fromEnv("DOPPEL_ADMIN_TOKEN");
  const devices = integer("devices", given.get("devices") ?? "10", 1, 100_000);
  const rate = positive("rate", given.get("rate") ?? "1", 1000);
  const protocol = oneOf("protocol", given.get("protocol") ?? "mqtt", PROTOCOLS);
  const kind = oneOf("kind", given.get("kind") ?? "thermostat", KINDS);
  const prefix = given.get("prefix") ?? "sim-";
  if (!DEVICE_ID_PREFIX.test(prefix)) {
    throw new UsageError(
      "--prefix",
      `--prefix ${
        JSON.stringify(prefix)
      } is not a device id start: 1-100 of A-Z a-z 0-9 . _ : -, starting with a letter or digit.`,
    );
  }
  const durationText = given.get("duration");
  const duration = durationText === undefined
    ? undefined
    : positive("duration", durationText, 365 * 86_400);
  const keysFile = given.get("keys") ?? "./data/simulator-keys.json";
  if (keysFile === "") throw new UsageError("--keys", "--keys needs a file path.");
  const excursionRate = fraction("excursion-rate", given.get("excursion-rate") ?? "0.05");
  if (token !== undefined && token.length === 0) {
    throw new UsageError("--token", "--token is empty.");
  }
  return {
    url,
    mqttUrl,
    token,
    devices,
    rate,
    protocol,
    kind,
    prefix,
    duration,
    keysFile,
    excursionRate,
    json: switches.has("json"),
    help: switches.has("help"),
  };

  function parseHttpUrl(text: string): string {
    let parsed: URL;
    try {
      parsed = new URL(text);
    } catch {
      throw new UsageError("--url", `--url ${JSON.stringify(text)} is not a URL.`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      throw new UsageError("--url", `--url ${JSON.stringify(text)} must be http:// or https://.`);
    }
    return parsed.origin + parsed.pathname.replace(/\/+$/, "");
  }

  function parseMqttUrl(text: string): string {
    let parsed: URL;
    try {
      parsed = new URL(text);
    } catch {
      throw new UsageError("--mqtt-url", `--mqtt-url ${JSON.stringify(text)} is not a URL.`);
    }
    if (!["mqtt:", "mqtts:", "ws:", "wss:"].includes(parsed.protocol)) {
      throw new UsageError(
        "--mqtt-url",
        `--mqtt-url ${JSON.stringify(text)} must be mqtt://, mqtts://, ws:// or wss://.`,
      );
    }
    return text;
  }
}

function integer(flag: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new UsageError(
      `--${flag}`,
      `--${flag} ${JSON.stringify(text)} must be a whole number from ${min} to ${max}.`,
    );
  }
  return value;
}

function positive(flag: string, text: string, max: number): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || value <= 0 || value > max) {
    throw new UsageError(
      `--${flag}`,
      `--${flag} ${JSON.stringify(text)} must be a number above 0 and at most ${max}.`,
    );
  }
  return value;
}

function fraction(flag: string, text: string): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || value < 0 || value > 1) {
    throw new UsageError(
      `--${flag}`,
      `--${flag} ${JSON.stringify(text)} must be a probability from 0 to 1.`,
    );
  }
  return value;
}

function oneOf<T extends string>(flag: string, text: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(text)) {
    throw new UsageError(
      `--${flag}`,
      `--${flag} ${JSON.stringify(text)} must be one of ${allowed.join(", ")}.`,
    );
  }
  return text as T;
}
