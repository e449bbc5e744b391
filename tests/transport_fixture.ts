/**
 * A fixture for transport tests (MQTT, WebSocket, HTTP): an app on an in-memory KV with the
 * embedded MQTT endpoint behind a `node:net` listener on port 0, optionally a real `Deno.serve`
 * on port 0 for WebSockets, and clients that are tracked so `close()` ends everything.
 * @module
 */
import { createServer, type Server } from "node:net";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { createApp, type Doppel } from "../src/app.ts";
import { type Clock, systemClock } from "../src/clock.ts";
import { silentLogger } from "../src/log.ts";
import { ADMIN_TOKEN, KINDS, requesters } from "./helpers.ts";
import { connackCode, until as pollUntil } from "./real_process.ts";

/** A device's credentials. */
export type Creds = { id: string; key: string };

/** One message an MQTT client received. */
export interface Received {
  /** The topic. */
  topic: string;
  /** The payload parsed as JSON (or the raw text when it is not JSON). */
  body: unknown;
  /** The QoS it came with. */
  qos: number;
}

/**
 * Waits until `check` returns a truthy value: {@link pollUntil} with the in-process fixtures'
 * short deadline (3 s) and quick polling (5 ms).
 */
export function until<T>(
  check: () => T | Promise<T>,
  what = "condition",
  timeoutMs = 3_000,
): Promise<NonNullable<T>> {
  return pollUntil(check, what, timeoutMs, 5);
}

/** An mqtt.js client that records every message it receives. */
export class MqttDevice {
  /** Everything received so far, in order. */
  readonly messages: Received[] = [];
  /** Set once the connection closed. */
  closed = false;
  #closedWaiters: Array<() => void> = [];

  constructor(readonly client: MqttClient) {
    client.on("message", (topic, payload, packet) => {
      const text = new TextDecoder().decode(payload);
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch { /* not JSON */ }
      this.messages.push({ topic, body, qos: packet.qos });
    });
    client.on("close", () => {
      this.closed = true;
      for (const waiter of this.#closedWaiters.splice(0)) waiter();
    });
  }

  /** Messages on `topic` (exact) or matching the predicate. */
  on(topic: string | ((topic: string) => boolean)): Received[] {
    const match = typeof topic === "string" ? (t: string) => t === topic : topic;
    return this.messages.filter((m) => match(m.topic));
  }

  /** Waits for the `n`-th (1-based) message on `topic`. */
  async nth(topic: string | ((topic: string) => boolean), n = 1): Promise<Received> {
    await until(() => this.on(topic).length >= n, `message #${n} on ${topic}`);
    return this.on(topic)[n - 1];
  }

  /** Resolves once the connection closed (the server ended it, or we did). */
  whenClosed(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => this.#closedWaiters.push(resolve));
  }

  /** Ends the client cleanly (DISCONNECT), or forcefully when the socket is already gone. */
  async end(): Promise<void> {
    if (this.client.disconnected || this.closed) {
      await this.client.endAsync(true);
    } else {
      await this.client.endAsync();
    }
  }
}

/** A WebSocket device connection with a frame log. */
export class WsDevice {
  /** Every frame received so far, parsed. */
  readonly frames: Array<Record<string, unknown>> = [];
  /** The close event's code, once closed. */
  closeCode: number | undefined;
  /** Push frame types (`desired`, `command`) answered with an `ack` frame as they arrive. */
  autoAck: Set<string> = new Set(["desired"]);
  #closed: Promise<void>;
  #nextRid = 1;

  constructor(readonly socket: WebSocket) {
    socket.addEventListener("message", (event) => {
      const frame = JSON.parse(String(event.data));
      this.frames.push(frame);
      if (this.autoAck.has(frame.type) && frame.mid !== undefined) {
        this.send({ type: "ack", mid: frame.mid });
      }
    });
    this.#closed = new Promise((resolve) =>
      socket.addEventListener("close", (event) => {
        this.closeCode = event.code;
        resolve();
      }, { once: true })
    );
  }

  /** Whether the socket is open. */
  get open(): boolean {
    return this.socket.readyState === WebSocket.OPEN;
  }

  /** Sends a frame as JSON (or a raw string). */
  send(frame: Record<string, unknown> | string): void {
    this.socket.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** Waits for the first frame after index `from` that satisfies `match`. */
  async frame(
    match: (frame: Record<string, unknown>) => boolean,
    what = "frame",
    from = 0,
  ): Promise<Record<string, unknown>> {
    return await until(() => this.frames.slice(from).find(match), what);
  }

  /** Sends a frame with a fresh `rid` and waits for its `result` or `error` answer. */
  async request(frame: Record<string, unknown>): Promise<Record<string, unknown>> {
    const rid = `r${this.#nextRid++}`;
    this.send({ ...frame, rid });
    return await this.frame(
      (f) => (f.type === "result" || f.type === "error") && f.rid === rid,
      `answer to ${rid}`,
    );
  }

  /** Resolves once closed. */
  whenClosed(): Promise<void> {
    return this.#closed;
  }

  /** Closes the socket and waits for the close. */
  async close(): Promise<void> {
    if (this.socket.readyState !== WebSocket.CLOSED) this.socket.close();
    await this.#closed;
  }
}

/** The app with its listeners and clients. */
export interface TransportFixture {
  /** The app. */
  doppel: Doppel;
  /** The store. */
  kv: Deno.Kv;
  /** The MQTT port (TCP, 127.0.0.1). */
  mqttPort: number;
  /** The HTTP port, when `http: true`. */
  httpPort: number;
  /** An operator request. */
  op(method: string, path: string, body?: unknown, headers?: HeadersInit): Promise<Response>;
  /** A device request (HTTP Basic). */
  dev(creds: Creds, method: string, path: string, body?: unknown): Promise<Response>;
  /** Registers a device; returns its credentials. */
  register(input: { id: string; kind?: string; parent?: string }): Promise<Creds>;
  /** The twin document (operator view). */
  twin(id: string): Promise<Record<string, unknown> & { connection: Record<string, unknown> }>;
  /** One command (operator view). */
  command(deviceId: string, commandId: string): Promise<Record<string, unknown>>;
  /** Creates a command; returns its body (202). */
  sendCommand(deviceId: string, body: Record<string, unknown>): Promise<{ id: string }>;
  /** Enables or disables a device. */
  setEnabled(id: string, enabled: boolean): Promise<void>;
  /** Connects with mqtt.js (no auto-reconnect); rejects if CONNACK refuses. */
  mqtt(creds: Creds, options?: IClientOptions): Promise<MqttDevice>;
  /** Tries to connect with mqtt.js and returns the CONNACK return code (0 = accepted). */
  mqttReturnCode(options: IClientOptions): Promise<number>;
  /** Opens the WebSocket channel; resolves after the `hello` frame. */
  ws(creds: Creds): Promise<WsDevice>;
  /** Sends a WebSocket upgrade request (with these credentials, if any); returns the status. */
  wsUpgradeStatus(creds?: Creds): Promise<number>;
  /** Ends clients, the app, the listeners and the KV. */
  close(): Promise<void>;
}

/** Builds the fixture. */
export async function transportFixture(
  options: { clock?: Clock; http?: boolean } = {},
): Promise<TransportFixture> {
  const kv = await Deno.openKv(":memory:");
  const doppel = await createApp({
    kv,
    clock: options.clock ?? systemClock,
    kinds: KINDS,
    secret: "test-secret-0123456789abcdef",
    adminToken: ADMIN_TOKEN,
    logger: silentLogger,
    mqtt: true,
  });
  const endpoint = doppel.mqtt!;
  const netServer: Server = createServer((socket) => endpoint.handle(socket));
  await new Promise<void>((resolve, reject) => {
    netServer.once("error", reject);
    netServer.listen(0, "127.0.0.1", () => resolve());
  });
  const mqttPort = (netServer.address() as { port: number }).port;

  let httpPort = 0;
  const stop = new AbortController();
  let server: Deno.HttpServer | undefined;
  if (options.http) {
    server = Deno.serve(
      { port: 0, hostname: "127.0.0.1", signal: stop.signal, onListen() {} },
      doppel.app.fetch,
    );
    httpPort = (server.addr as Deno.NetAddr).port;
  }

  const mqttClients = new Set<MqttDevice>();
  const wsClients = new Set<WsDevice>();

  const { op, dev } = requesters(doppel.app);

  const expectJson = async (res: Response, status: number) => {
    const body = await res.json();
    if (res.status !== status) {
      throw new Error(`expected ${status}, got ${res.status}: ${JSON.stringify(body)}`);
    }
    return body;
  };

  const baseOptions = (creds: Creds): IClientOptions => ({
    clientId: creds.id,
    username: creds.id,
    password: creds.key,
    reconnectPeriod: 0,
    connectTimeout: 5_000,
    protocolVersion: 4,
  });

  const fixture: TransportFixture = {
    doppel,
    kv,
    mqttPort,
    httpPort,
    op,
    dev,
    async register(input) {
      const body = await expectJson(
        await op("POST", "/api/v1/devices", { kind: "thermostat", ...input }),
        201,
      );
      return { id: body.id, key: body.key };
    },
    async twin(id) {
      return await expectJson(await op("GET", `/api/v1/twins/${id}`), 200);
    },
    async command(deviceId, commandId) {
      return await expectJson(
        await op("GET", `/api/v1/devices/${deviceId}/commands/${commandId}`),
        200,
      );
    },
    async sendCommand(deviceId, body) {
      return await expectJson(await op("POST", `/api/v1/devices/${deviceId}/commands`, body), 202);
    },
    async setEnabled(id, enabled) {
      await expectJson(await op("PATCH", `/api/v1/devices/${id}`, { enabled }), 200);
    },
    async mqtt(creds, extra = {}) {
      const client = mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`, {
        ...baseOptions(creds),
        ...extra,
      });
      const device = new MqttDevice(client);
      mqttClients.add(device);
      await new Promise<void>((resolve, reject) => {
        const onConnect = () => {
          client.off("error", onError);
          resolve();
        };
        const onError = (error: Error) => {
          client.off("connect", onConnect);
          reject(error);
        };
        client.once("connect", onConnect);
        client.once("error", onError);
      }).catch(async (error) => {
        mqttClients.delete(device);
        await client.endAsync(true);
        throw error;
      });
      return device;
    },
    mqttReturnCode(clientOptions) {
      return connackCode(`mqtt://127.0.0.1:${mqttPort}`, clientOptions);
    },
    async ws(creds) {
      const socket = new WebSocket(`ws://127.0.0.1:${httpPort}/device/v1/ws`, {
        headers: { authorization: `Basic ${btoa(`${creds.id}:${creds.key}`)}` },
      });
      const device = new WsDevice(socket);
      wsClients.add(device);
      await until(
        () => device.frames.some((f) => f.type === "hello") || device.closeCode !== undefined,
        "hello frame",
      );
      if (!device.frames.some((f) => f.type === "hello")) {
        wsClients.delete(device);
        throw new Error(`WebSocket closed before hello (code ${device.closeCode}).`);
      }
      return device;
    },
    async wsUpgradeStatus(creds) {
      const res = await fetch(`http://127.0.0.1:${httpPort}/device/v1/ws`, {
        headers: {
          upgrade: "websocket",
          connection: "Upgrade",
          "sec-websocket-version": "13",
          "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
          ...(creds ? { authorization: `Basic ${btoa(`${creds.id}:${creds.key}`)}` } : {}),
        },
      });
      await res.body?.cancel();
      return res.status;
    },
    async close() {
      for (const device of mqttClients) await device.end().catch(() => {});
      for (const device of wsClients) await device.close().catch(() => {});
      await doppel.close();
      await new Promise<void>((resolve) => netServer.close(() => resolve()));
      if (server) {
        stop.abort();
        await server.finished;
      }
      kv.close();
    },
  };
  return fixture;
}

/** Runs `fn` with a fresh fixture (see {@link transportFixture}) and always closes it. */
export async function withFixture(
  fn: (f: TransportFixture) => Promise<void>,
  options: { clock?: Clock; http?: boolean } = {},
): Promise<void> {
  const f = await transportFixture(options);
  try {
    await fn(f);
  } finally {
    await f.close();
  }
}

/** Waits until the twin's connection status is `expected`; returns the connection. */
export async function waitConnection(
  f: TransportFixture,
  deviceId: string,
  expected: string,
): Promise<Record<string, unknown>> {
  return await until(async () => {
    const connection = (await f.twin(deviceId)).connection;
    return connection.status === expected ? connection : null;
  }, `${deviceId} to be ${expected}`);
}

/** Waits until a command's status is `expected`. */
export async function waitStatus(
  f: TransportFixture,
  deviceId: string,
  commandId: string,
  expected: string,
): Promise<void> {
  await until(
    async () => (await f.command(deviceId, commandId)).status === expected,
    `command ${commandId} to be ${expected}`,
  );
}
