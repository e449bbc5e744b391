/**
 * Helpers for tests that run real processes (the Doppel server, Mosquitto) and talk to them over
 * real sockets: a child process whose output is read line by line, the Doppel server started as
 * the `start` task does, an operator API client, mqtt.js devices that record what they receive,
 * and the counting twin kind the crash tests use.
 *
 * Every helper here is leak-free under the op and resource sanitizers when its `stop`/`end` is
 * awaited: children are reaped and their stdout and stderr read to the end.
 * @module
 */
import { serverArgs } from "./bench/common.ts";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";

/** The project root. */
export const ROOT: string = new URL("..", import.meta.url).pathname;

/** Resolves after `ms` (for bounded polling only, never as synchronisation). */
function tick(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Waits until `check` returns a truthy value, polling every `intervalMs` up to `timeoutMs`.
 * A bounded poll on a condition: it returns as soon as the condition holds.
 */
export async function until<T>(
  check: () => T | Promise<T>,
  what: string,
  timeoutMs = 10_000,
  intervalMs = 20,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}.`);
    }
    await tick(intervalMs);
  }
}

/** A free TCP port on 127.0.0.1 (listen on 0, note the port, close). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** A line of a child's output, numbered in arrival order. */
interface LineWaiter {
  pattern: RegExp;
  from: number;
  resolve: (match: RegExpExecArray) => void;
}

/** A child process whose stdout and stderr are read line by line into {@link lines}. */
export class LineProcess {
  /** The child. */
  readonly child: Deno.ChildProcess;
  /** Every output line so far (stdout and stderr interleaved as they arrive). */
  readonly lines: string[] = [];
  /** What the process is, for messages. */
  readonly name: string;
  /** Set once the process exited. */
  exited: Deno.CommandStatus | undefined;
  #waiters = new Set<LineWaiter>();
  #drained: Promise<void>;
  #ended = false;

  constructor(name: string, command: Deno.Command) {
    this.name = name;
    this.child = command.spawn();
    const read = async (stream: ReadableStream<Uint8Array>) => {
      let buffered = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buffered += chunk;
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          this.#push(buffered.slice(0, nl));
          buffered = buffered.slice(nl + 1);
        }
      }
      if (buffered) this.#push(buffered);
    };
    this.#drained = Promise.all([read(this.child.stdout), read(this.child.stderr)]).then(() => {});
    this.child.status.then((status) => {
      this.exited = status;
    });
    // Once both streams ended, nothing more can match: wake the waiters so they fail fast.
    this.#drained.then(() => {
      this.#ended = true;
      for (const waiter of this.#waiters) this.#check(waiter);
    });
  }

  #push(line: string): void {
    this.lines.push(line);
    for (const waiter of this.#waiters) this.#check(waiter);
  }

  #check(waiter: LineWaiter): void {
    for (let i = waiter.from; i < this.lines.length; i++) {
      const match = waiter.pattern.exec(this.lines[i]);
      if (match) {
        this.#waiters.delete(waiter);
        waiter.resolve(match);
        return;
      }
    }
    if (this.#ended) {
      this.#waiters.delete(waiter);
      waiter.resolve(null as unknown as RegExpExecArray);
    }
  }

  /** Whether the process is still running. */
  get running(): boolean {
    return this.exited === undefined;
  }

  /**
   * Waits for a line matching `pattern` among lines `from` onwards (default: all); fails when the
   * process ends first or after `timeoutMs`.
   */
  async waitFor(pattern: RegExp, timeoutMs = 20_000, from = 0): Promise<RegExpExecArray> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let waiter: LineWaiter | undefined;
    const found = new Promise<RegExpExecArray>((resolve) => {
      waiter = { pattern, from, resolve };
      this.#waiters.add(waiter);
      this.#check(waiter);
    });
    const timeout = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), timeoutMs);
    });
    const match = await Promise.race([found, timeout]);
    clearTimeout(timer);
    if (waiter) this.#waiters.delete(waiter);
    if (!match) {
      let why = `timed out after ${timeoutMs} ms`;
      if (this.#ended) {
        const status = await this.child.status;
        why = `the process ended: code ${status.code}, signal ${status.signal}`;
      }
      throw new Error(
        `${this.name}: no line matching ${pattern} (${why}). Output:\n${
          this.lines.slice(-60).join("\n")
        }`,
      );
    }
    return match;
  }

  /** Sends `signal` (if still running), reaps the child and reads its output to the end. */
  async stop(signal: Deno.Signal = "SIGKILL"): Promise<Deno.CommandStatus> {
    if (this.running) {
      try {
        this.child.kill(signal);
      } catch { /* already gone */ }
    }
    const status = await this.child.status;
    await this.#drained;
    return status;
  }
}

/** The Doppel server (`src/main.ts`) as a child process. */
export class DoppelProcess extends LineProcess {
  /** `http://127.0.0.1:<port>`. */
  base = "";
  /** The embedded MQTT port, when it listens. */
  mqttPort = 0;

  /**
   * Starts the server with `env` (plus `DOPPEL_HOSTNAME=127.0.0.1`, `PORT=0` unless given) and
   * waits for its HTTP listening line, and its MQTT one unless `MQTT_PORT` is `0`.
   */
  static async start(env: Record<string, string>): Promise<DoppelProcess> {
    const server = new DoppelProcess(
      "doppel",
      new Deno.Command(Deno.execPath(), {
        args: serverArgs(),
        cwd: ROOT,
        env: {
          PORT: "0",
          DOPPEL_HOSTNAME: "127.0.0.1",
          DOPPEL_LOG_LEVEL: "info",
          NO_COLOR: "1",
          ...env,
        },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }),
    );
    try {
      const http = await server.waitFor(/Doppel listening on http:\/\/[^\s"]*:(\d+)/, 60_000);
      server.base = `http://127.0.0.1:${http[1]}`;
      if (env.MQTT_PORT !== "0") {
        const m = await server.waitFor(/MQTT listening on mqtt:\/\/[^\s"]*:(\d+)/, 20_000);
        server.mqttPort = Number(m[1]);
      }
    } catch (error) {
      await server.stop();
      throw error;
    }
    return server;
  }
}

/** A JSON response. */
export interface JsonResponse {
  /** HTTP status. */
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
}

/** The operator API of a running server. */
export class Operator {
  constructor(readonly base: string, readonly token: string) {}

  /** One request with a JSON body; the body of the answer parsed (or `null` when empty). */
  async request(
    method: string,
    path: string,
    body?: unknown,
    headers: HeadersInit = {},
  ): Promise<JsonResponse> {
    const res = await fetch(`${this.base}${path}`, {
      method,
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${this.token}`,
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  }

  /** Like {@link request}, failing unless the status is `expected`. */
  // deno-lint-ignore no-explicit-any
  async expect(expected: number, method: string, path: string, body?: unknown): Promise<any> {
    const res = await this.request(method, path, body);
    if (res.status !== expected) {
      throw new Error(
        `${method} ${path}: expected ${expected}, got ${res.status} ${JSON.stringify(res.body)}`,
      );
    }
    return res.body;
  }

  /** Registers a device; returns its credentials. */
  async register(id: string, kind: string): Promise<Creds> {
    const body = await this.expect(201, "POST", "/api/v1/devices", { id, kind });
    return { id: body.id, key: body.key };
  }

  /** The twin document. */
  // deno-lint-ignore no-explicit-any
  async twin(id: string): Promise<any> {
    return await this.expect(200, "GET", `/api/v1/twins/${id}`);
  }
}

/** A device's credentials. */
export interface Creds {
  /** Device id (also the MQTT username and client id). */
  id: string;
  /** Its key (the MQTT password). */
  key: string;
}

/** One message a device received. */
export interface Received {
  /** Topic. */
  topic: string;
  /** Payload parsed as JSON, or the text. */
  body: unknown;
}

/** An mqtt.js client that records what it receives; {@link end} always ends it. */
export class MqttDevice {
  /** Everything received so far. */
  readonly messages: Received[] = [];
  /** Errors the client emitted (connection refused, broker gone). */
  readonly errors: Error[] = [];
  /** How many times it (re)connected. */
  connects = 0;
  #waiters = new Set<() => void>();

  constructor(readonly client: MqttClient) {
    client.on("message", (topic, payload) => {
      const text = new TextDecoder().decode(payload);
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch { /* not JSON */ }
      this.messages.push({ topic, body });
      this.#wake();
    });
    client.on("connect", () => {
      this.connects++;
      this.#wake();
    });
    client.on("error", (error) => {
      this.errors.push(error);
      this.#wake();
    });
    client.on("close", () => this.#wake());
  }

  #wake(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }

  /** Waits (event-driven, bounded) until `check` holds after any client event. */
  async when<T>(check: () => T, what: string, timeoutMs = 10_000): Promise<NonNullable<T>> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let waiter: (() => void) | undefined;
    try {
      return await new Promise<NonNullable<T>>((resolve, reject) => {
        waiter = () => {
          const value = check();
          if (value) resolve(value as NonNullable<T>);
        };
        this.#waiters.add(waiter);
        timer = setTimeout(
          () => reject(new Error(`${this.client.options.clientId}: timed out waiting for ${what}`)),
          timeoutMs,
        );
        waiter();
      });
    } finally {
      clearTimeout(timer);
      if (waiter) this.#waiters.delete(waiter);
    }
  }

  /**
   * Publishes JSON (or a string) and waits for the PUBACK (QoS 1) or the write (QoS 0), failing
   * when not connected or after `timeoutMs` (a disconnected mqtt.js client would queue it forever).
   */
  async publish(topic: string, body: unknown, qos: 0 | 1 = 1, timeoutMs = 10_000): Promise<void> {
    if (!this.client.connected) {
      throw new Error(`${this.client.options.clientId} is not connected (publishing to ${topic}).`);
    }
    const payload = typeof body === "string" ? body : JSON.stringify(body);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        this.client.publishAsync(topic, payload, { qos }),
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`No PUBACK for ${topic} within ${timeoutMs} ms.`)),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Waits for the first message on a topic matching `match` (after index `from`). */
  async message(match: (topic: string) => boolean, what: string, from = 0): Promise<Received> {
    return await this.when(
      () => this.messages.slice(from).find((m) => match(m.topic)),
      `a message on ${what}`,
    );
  }

  /** Ends the client: cleanly while connected, forcefully otherwise (stops reconnecting too). */
  async end(): Promise<void> {
    if (this.client.connected) {
      await this.client.endAsync().catch(() => this.client.endAsync(true));
    } else {
      await this.client.endAsync(true);
    }
  }
}

/**
 * Connects with mqtt.js; resolves once connected, or rejects with the refusal (the client is
 * ended then). Extra options override the defaults (no auto-reconnect, MQTT 3.1.1).
 */
export async function connectDevice(
  url: string,
  creds: Creds,
  extra: IClientOptions = {},
): Promise<MqttDevice> {
  const device = new MqttDevice(
    mqtt.connect(url, {
      clientId: creds.id,
      username: creds.id,
      password: creds.key,
      reconnectPeriod: 0,
      connectTimeout: 5_000,
      protocolVersion: 4,
      ...extra,
    }),
  );
  try {
    await device.when(
      () => {
        if (device.client.connected) return true;
        if (device.errors.length) throw device.errors[0];
        return false;
      },
      "CONNACK",
    );
  } catch (error) {
    await device.client.endAsync(true);
    throw error;
  }
  return device;
}

/** Tries to connect; returns the CONNACK return code (0 accepted, 4 bad credentials, 5 refused). */
export function connectCode(
  url: string,
  creds: Creds,
  clientId: string = creds.id,
): Promise<number> {
  return connackCode(url, { clientId, username: creds.id, password: creds.key });
}

/** Connects once with `options` (MQTT 3.1.1, no reconnect); the CONNACK return code. */
export async function connackCode(url: string, options: IClientOptions): Promise<number> {
  const client = mqtt.connect(url, {
    reconnectPeriod: 0,
    connectTimeout: 5_000,
    protocolVersion: 4,
    ...options,
  });
  try {
    return await new Promise<number>((resolve, reject) => {
      client.once("connect", (connack) => resolve(connack.returnCode ?? 0));
      client.once("error", (error) => {
        const code = (error as Error & { code?: number }).code;
        if (typeof code === "number") resolve(code);
        else reject(error);
      });
    });
  } finally {
    await client.endAsync(true);
  }
}

/** Runs a command to completion; its exit code and output. */
export async function run(
  cmd: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  return {
    code: output.code,
    stdout: new TextDecoder().decode(output.stdout),
    stderr: new TextDecoder().decode(output.stderr),
  };
}

/** A counting kind: each telemetry item bumps `desired.n` and marks `desired["m" + seq]`. */
export const COUNTER_KIND = `import { defineTwin, z } from "doppel";

export default defineTwin({
  kind: "counter",
  description: "Counts telemetry applications (real-process tests).",
  telemetry: z.object({ seq: z.number().int() }),
  desired: z.record(z.string(), z.json()),
  reported: z.record(z.string(), z.json()),
  handlers: {
    onTelemetry(ctx, item) {
      const n = typeof ctx.twin.desired.n === "number" ? ctx.twin.desired.n : 0;
      ctx.patchDesired({ n: n + 1, ["m" + item.seq]: true });
    },
  },
});
`;

/** Writes a twins folder holding the project's kinds plus the counting kind; returns its path. */
export async function writeKinds(dir: string): Promise<string> {
  const kinds = `${dir}/kinds`;
  await Deno.mkdir(kinds, { recursive: true });
  for (const name of ["thermostat.ts", "generic.ts"]) {
    // Kinds import "doppel" through the project's import map, so a copy anywhere works.
    await Deno.copyFile(`${ROOT}twins/${name}`, `${kinds}/${name}`);
  }
  await Deno.writeTextFile(`${kinds}/counter.ts`, COUNTER_KIND);
  return kinds;
}

/** The `mN` keys of a counting twin's desired as numbers, and `n`. */
export function applied(desired: Record<string, unknown>): { seqs: Set<number>; n: number } {
  const seqs = new Set<number>();
  for (const key of Object.keys(desired)) {
    const match = /^m(\d+)$/.exec(key);
    if (match) seqs.add(Number(match[1]));
  }
  return { seqs, n: typeof desired.n === "number" ? desired.n : 0 };
}

/**
 * Waits (bounded poll) until every acknowledged seq of device `${prefix}${i}` is in its counting
 * twin; returns what is still lost and which twins applied something twice (`n` above the count).
 */
export async function settle(
  op: Operator,
  prefix: string,
  acked: Set<number>[],
  timeoutMs = 20_000,
): Promise<{ lost: string[]; twice: string[] }> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const lost: string[] = [];
    const twice: string[] = [];
    for (let i = 0; i < acked.length; i++) {
      const { seqs, n } = applied((await op.twin(`${prefix}${i}`)).desired);
      const gone = [...acked[i]].filter((seq) => !seqs.has(seq));
      if (gone.length) lost.push(`${prefix}${i}: ${gone.length} lost (m${gone.join(", m")})`);
      if (n !== seqs.size) twice.push(`${prefix}${i}: n = ${n} for ${seqs.size} distinct`);
    }
    if (!lost.length || Date.now() > deadline) return { lost, twice };
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
