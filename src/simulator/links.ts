/**
 * One device's connection to Doppel, per protocol: MQTT, the WebSocket device channel, or plain
 * HTTP with a command long poll. Each {@link Link} sends telemetry (resolving once the server
 * acknowledged it), reports state and answers commands, hands pushed commands and desired changes
 * to its {@link LinkHandlers}, and reconnects by itself with backoff. Failures are
 * {@link LinkError}s whose `kind` is what the simulator counts them by.
 *
 * Links open nothing themselves: the network comes in as {@link Network} (from `main.ts`).
 * @module
 */
import type { IClientOptions, MqttClient } from "mqtt";
import type { JsonObject } from "./behaviour.ts";

/** A failure, counted by `kind`. */
export class LinkError extends Error {
  /** Short, stable category: `http 503`, `timeout`, `connection lost`, `not connected`, … */
  readonly kind: string;

  constructor(kind: string, message: string = kind) {
    super(message);
    this.name = "LinkError";
    this.kind = kind;
  }
}

/** The network a link uses, passed in by `main.ts`. */
export interface Network {
  /** HTTP requests. */
  fetch: typeof fetch;
  /** Opens a WebSocket with extra headers on the upgrade. */
  openWebSocket(url: string, headers: Record<string, string>): WebSocket;
  /** Opens an mqtt.js client. */
  connectMqtt(url: string, options: IClientOptions): MqttClient;
}

/** A command as the device receives it. */
export interface PushedCommand {
  /** Its id. */
  id: string;
  /** Its name. */
  name: string;
  /** Its payload. */
  payload: unknown;
}

/** What a link tells its device. */
export interface LinkHandlers {
  /** Connected (again); the device reports its state now. */
  connected(): void;
  /** The connection went away (it is being re-established). */
  disconnected(reason: string): void;
  /** The cloud handed over a command (already acknowledged at the protocol level). */
  command(command: PushedCommand): void;
  /** The cloud changed desired state: a merge patch, or the whole document with `full`. */
  desired(patch: JsonObject, full: boolean): void;
  /** A failure not tied to a request of the device's (a refused connection, a refusal notice). */
  error(error: LinkError): void;
}

/** A device's connection. */
export interface Link {
  /** Whether it can send now. */
  readonly connected: boolean;
  /** Starts connecting (and keeps reconnecting until {@link close}). */
  start(handlers: LinkHandlers): void;
  /** Sends one telemetry item; resolves once durable, rejects with a {@link LinkError}. */
  telemetry(item: JsonObject): Promise<void>;
  /** Sends a reported merge patch. */
  report(patch: JsonObject): Promise<void>;
  /** Returns a command's result. */
  answer(commandId: string, status: string, result: JsonObject): Promise<void>;
  /** Closes the connection cleanly and stops reconnecting. */
  close(): Promise<void>;
}

/** Who the device is and where it connects. */
export interface LinkTarget {
  /** Device id. */
  id: string;
  /** Device key. */
  key: string;
  /** Doppel's HTTP base URL. */
  url: string;
  /** The MQTT broker URL. */
  mqttUrl: string;
}

/** How long a request may wait for its answer (ms). */
export const REQUEST_TIMEOUT_MS = 15_000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15_000;

/** Exponential backoff with jitter: the wait before attempt `attempt` (1, 2, …). */
export function backoff(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.max(0, attempt - 1));
  return ceiling / 2 + (ceiling / 2) * random();
}

/** Creates the link for `protocol`. */
export function createLink(
  protocol: "mqtt" | "ws" | "http",
  target: LinkTarget,
  net: Network,
): Link {
  switch (protocol) {
    case "mqtt":
      return new MqttLink(target, net);
    case "ws":
      return new WsLink(target, net);
    case "http":
      return new HttpLink(target, net);
  }
}

/** Rejects with a `timeout` {@link LinkError} unless `promise` settles within `ms`. */
function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new LinkError("timeout", `${what}: no answer in ${ms} ms`)),
      ms,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function parseJson(bytes: Uint8Array | string): unknown {
  try {
    return JSON.parse(typeof bytes === "string" ? bytes : new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

const ONLINE = JSON.stringify({ status: "online" });
const OFFLINE = JSON.stringify({ status: "offline" });

/**
 * MQTT: client id = username = device id, password = key; subscribes to its commands and desired
 * changes at QoS 1, and publishes at QoS 1 (a PUBACK is the server's durable acknowledgement).
 * It announces its presence as bridge mode needs (retained online once subscribed, a retained
 * offline will, and a retained offline before a clean disconnect), which the embedded endpoint
 * checks and ignores.
 */
export class MqttLink implements Link {
  readonly #target: LinkTarget;
  readonly #net: Network;
  #client: MqttClient | undefined;
  #handlers: LinkHandlers | undefined;
  #ready = false;
  #closing = false;
  /** Rejecters of publishes waiting for their PUBACK, failed when the connection drops. */
  readonly #pending = new Set<(error: LinkError) => void>();

  constructor(target: LinkTarget, net: Network) {
    this.#target = target;
    this.#net = net;
  }

  get connected(): boolean {
    return this.#ready && (this.#client?.connected ?? false);
  }

  start(handlers: LinkHandlers): void {
    this.#handlers = handlers;
    const { id, key } = this.#target;
    const client = this.#net.connectMqtt(this.#target.mqttUrl, {
      clientId: id,
      username: id,
      password: key,
      protocolVersion: 4,
      clean: true,
      keepalive: 30,
      connectTimeout: 10_000,
      reconnectPeriod: 2_000,
      resubscribe: false,
      queueQoSZero: false,
      will: { topic: `devices/${id}/presence`, payload: OFFLINE, qos: 1, retain: true },
    });
    this.#client = client;
    const base = `devices/${id}/`;
    client.on("connect", async () => {
      try {
        const granted = await client.subscribeAsync(
          [`${base}commands/+`, `${base}twin/desired`, `${base}errors`],
          { qos: 1 },
        );
        if (granted.some((g) => g.qos === 0x80)) {
          handlers.error(new LinkError("mqtt subscription refused"));
        }
        await client.publishAsync(`${base}presence`, ONLINE, { qos: 1, retain: true });
        this.#ready = true;
        handlers.connected();
      } catch (error) {
        if (!this.#closing) handlers.error(new LinkError("mqtt subscribe failed", String(error)));
      }
    });
    client.on("close", () => {
      const was = this.#ready;
      this.#ready = false;
      this.#failPending(new LinkError("connection lost"));
      if (was && !this.#closing) {
        handlers.error(new LinkError("connection lost"));
        handlers.disconnected("connection lost");
      }
    });
    client.on("error", (error) => {
      if (this.#closing) return;
      const code = (error as Error & { code?: unknown }).code;
      handlers.error(
        new LinkError(
          typeof code === "number"
            ? `mqtt refused (code ${code})`
            : typeof code === "string"
            ? `mqtt ${code}`
            : "mqtt error",
          error.message,
        ),
      );
    });
    client.on("message", (topic, payload) => {
      if (!topic.startsWith(base)) return;
      const rest = topic.slice(base.length);
      const body = parseJson(payload);
      if (rest === "twin/desired") {
        if (isObject(body) && isObject(body.patch)) {
          handlers.desired(body.patch, body.full === true);
        }
      } else if (rest.startsWith("commands/")) {
        const commandId = rest.slice("commands/".length);
        if (isObject(body) && typeof body.name === "string") {
          handlers.command({ id: commandId, name: body.name, payload: body.payload });
        }
      } else if (rest === "errors") {
        const code = isObject(body) && isObject(body.error) ? String(body.error.code) : "unknown";
        handlers.error(new LinkError(`refused: ${code}`, JSON.stringify(body)));
      }
    });
  }

  telemetry(item: JsonObject): Promise<void> {
    return this.#publish(`devices/${this.#target.id}/telemetry`, item);
  }

  report(patch: JsonObject): Promise<void> {
    return this.#publish(`devices/${this.#target.id}/twin/reported`, patch);
  }

  answer(commandId: string, status: string, result: JsonObject): Promise<void> {
    return this.#publish(`devices/${this.#target.id}/commands/${commandId}/result`, {
      status,
      result,
    });
  }

  async close(): Promise<void> {
    this.#closing = true;
    const client = this.#client;
    if (!client) return;
    this.#failPending(new LinkError("closed"));
    if (client.connected) {
      // A clean disconnect sends no will: the offline announcement goes first.
      await withTimeout(
        client.publishAsync(`devices/${this.#target.id}/presence`, OFFLINE, {
          qos: 1,
          retain: true,
        }),
        3_000,
        "MQTT offline announcement",
      ).catch((error) =>
        this.#handlers?.error(new LinkError("mqtt offline announcement failed", String(error)))
      );
      await withTimeout(client.endAsync(), 3_000, "MQTT disconnect").catch(() =>
        client.endAsync(true)
      );
    } else {
      await client.endAsync(true);
    }
  }

  #publish(topic: string, body: JsonObject): Promise<void> {
    const client = this.#client;
    if (!client || !this.connected) {
      return Promise.reject(new LinkError("not connected"));
    }
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const fail = (error: LinkError) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#pending.delete(fail);
        reject(error);
      };
      const timer = setTimeout(
        () => fail(new LinkError("timeout", `No PUBACK for ${topic}`)),
        REQUEST_TIMEOUT_MS,
      );
      this.#pending.add(fail);
      client.publish(topic, JSON.stringify(body), { qos: 1 }, (error) => {
        if (error) return fail(new LinkError("mqtt publish failed", error.message));
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#pending.delete(fail);
        resolve();
      });
    });
  }

  #failPending(error: LinkError): void {
    for (const fail of [...this.#pending]) fail(error);
  }
}

/**
 * The WebSocket device channel (`/device/v1/ws`, HTTP Basic on the upgrade): every request
 * carries a `rid` answered by a `result` or `error` frame; pushes are acknowledged with `ack`.
 */
export class WsLink implements Link {
  readonly #target: LinkTarget;
  readonly #net: Network;
  #socket: WebSocket | undefined;
  #handlers: LinkHandlers | undefined;
  #ready = false;
  #closing = false;
  #attempt = 0;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #nextRid = 1;
  readonly #waiting = new Map<string, { resolve: () => void; fail: (e: LinkError) => void }>();
  #closed: Promise<void> = Promise.resolve();

  constructor(target: LinkTarget, net: Network) {
    this.#target = target;
    this.#net = net;
  }

  get connected(): boolean {
    return this.#ready;
  }

  start(handlers: LinkHandlers): void {
    this.#handlers = handlers;
    this.#open();
  }

  #open(): void {
    const handlers = this.#handlers!;
    const { id, key, url } = this.#target;
    const wsUrl = url.replace(/^http/, "ws") + "/device/v1/ws";
    let socket: WebSocket;
    try {
      socket = this.#net.openWebSocket(wsUrl, {
        authorization: `Basic ${btoa(`${id}:${key}`)}`,
      });
    } catch (error) {
      handlers.error(new LinkError("ws connect failed", String(error)));
      this.#scheduleRetry();
      return;
    }
    this.#socket = socket;
    let resolveClosed!: () => void;
    this.#closed = new Promise((resolve) => resolveClosed = resolve);
    let opened = false;
    socket.addEventListener("open", () => opened = true);
    socket.addEventListener("message", (event) => {
      const frame = parseJson(typeof event.data === "string" ? event.data : "");
      if (!isObject(frame)) return;
      this.#frame(frame, socket);
    });
    socket.addEventListener("error", () => {/* the close event follows */});
    socket.addEventListener("close", (event) => {
      resolveClosed();
      const was = this.#ready;
      this.#ready = false;
      for (const waiter of [...this.#waiting.values()]) {
        waiter.fail(new LinkError("connection lost"));
      }
      this.#waiting.clear();
      if (this.#closing) return;
      if (!opened) {
        handlers.error(new LinkError("ws connect failed", `close code ${event.code}`));
      } else if (event.code !== 1000) {
        const lost = event.code === 1006 || event.code === 0;
        handlers.error(
          new LinkError(lost ? "connection lost" : `ws closed (${event.code})`, event.reason),
        );
      }
      if (was) handlers.disconnected(`close ${event.code}`);
      this.#scheduleRetry();
    });
  }

  #scheduleRetry(): void {
    if (this.#closing) return;
    this.#attempt++;
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      if (!this.#closing) this.#open();
    }, backoff(this.#attempt));
  }

  #frame(frame: JsonObject, socket: WebSocket): void {
    const handlers = this.#handlers!;
    switch (frame.type) {
      case "hello":
        this.#ready = true;
        this.#attempt = 0;
        handlers.connected();
        return;
      case "result": {
        const waiter = this.#waiting.get(String(frame.rid));
        this.#waiting.delete(String(frame.rid));
        waiter?.resolve();
        return;
      }
      case "error": {
        const code = isObject(frame.error) ? String(frame.error.code) : "unknown";
        const error = new LinkError(`refused: ${code}`, JSON.stringify(frame.error));
        if (frame.rid === undefined) {
          handlers.error(error);
          return;
        }
        const waiter = this.#waiting.get(String(frame.rid));
        this.#waiting.delete(String(frame.rid));
        if (waiter) waiter.fail(error);
        else handlers.error(error);
        return;
      }
      case "command": {
        this.#ack(socket, frame.mid);
        const command = frame.command;
        if (
          isObject(command) && typeof command.id === "string" && typeof command.name === "string"
        ) {
          handlers.command({ id: command.id, name: command.name, payload: command.payload });
        }
        return;
      }
      case "desired":
        this.#ack(socket, frame.mid);
        if (isObject(frame.patch)) handlers.desired(frame.patch, frame.full === true);
        return;
    }
  }

  #ack(socket: WebSocket, mid: unknown): void {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "ack", mid }));
  }

  telemetry(item: JsonObject): Promise<void> {
    return this.#request({ type: "telemetry", data: item });
  }

  report(patch: JsonObject): Promise<void> {
    return this.#request({ type: "reported", patch });
  }

  answer(commandId: string, status: string, result: JsonObject): Promise<void> {
    return this.#request({ type: "command.result", commandId, status, result });
  }

  #request(frame: JsonObject): Promise<void> {
    const socket = this.#socket;
    if (!this.#ready || !socket || socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(new LinkError("not connected"));
    }
    const rid = String(this.#nextRid++);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(rid);
        reject(new LinkError("timeout", `No answer to frame ${rid}`));
      }, REQUEST_TIMEOUT_MS);
      this.#waiting.set(rid, {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        fail: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      socket.send(JSON.stringify({ ...frame, rid }));
    });
  }

  async close(): Promise<void> {
    this.#closing = true;
    if (this.#retry !== undefined) clearTimeout(this.#retry);
    const socket = this.#socket;
    if (!socket) return;
    if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) {
      socket.close(1000, "simulator stopping");
    }
    await withTimeout(this.#closed, 3_000, "WebSocket close").catch(() => {});
  }
}

/**
 * Plain HTTP: telemetry by `POST /device/v1/telemetry`, commands by long-polling
 * `GET /device/v1/commands?wait=20`, desired state by reading the twin now and then.
 */
export class HttpLink implements Link {
  readonly #target: LinkTarget;
  readonly #net: Network;
  readonly #auth: string;
  readonly #stop = new AbortController();
  #handlers: LinkHandlers | undefined;
  #ready = false;
  #poller: Promise<void> = Promise.resolve();
  /** The desired document last seen, as JSON, to notice changes. */
  #desiredSeen: string | undefined;
  #lastTwinAt = 0;

  /** How often the twin is read for desired changes (ms). */
  static readonly TWIN_INTERVAL_MS = 10_000;
  /** The long poll's `wait` (s). */
  static readonly POLL_WAIT_S = 20;

  constructor(target: LinkTarget, net: Network) {
    this.#target = target;
    this.#net = net;
    this.#auth = `Basic ${btoa(`${target.id}:${target.key}`)}`;
  }

  get connected(): boolean {
    return this.#ready;
  }

  start(handlers: LinkHandlers): void {
    this.#handlers = handlers;
    this.#poller = this.#pollLoop();
  }

  telemetry(item: JsonObject): Promise<void> {
    return this.#call("POST", "/device/v1/telemetry", item, 202);
  }

  report(patch: JsonObject): Promise<void> {
    return this.#call("PATCH", "/device/v1/twin/reported", patch, 200);
  }

  answer(commandId: string, status: string, result: JsonObject): Promise<void> {
    return this.#call(
      "POST",
      `/device/v1/commands/${encodeURIComponent(commandId)}/result`,
      { status, result },
      200,
    );
  }

  async close(): Promise<void> {
    this.#stop.abort();
    await this.#poller;
    this.#ready = false;
  }

  /** Long-polls commands and reads the twin now and then, until closed. */
  async #pollLoop(): Promise<void> {
    const handlers = this.#handlers!;
    let attempt = 0;
    let commanded = false;
    while (!this.#stop.signal.aborted) {
      try {
        // Desired state is read now and then, when the link (re)starts, and after commands (an
        // operator who commands a device has often just changed what it should be).
        if (
          commanded || !this.#ready ||
          Date.now() - this.#lastTwinAt >= HttpLink.TWIN_INTERVAL_MS
        ) {
          await this.#readTwin();
        }
        const body = await this.#send(
          "GET",
          `/device/v1/commands?wait=${HttpLink.POLL_WAIT_S}`,
          undefined,
          200,
          (HttpLink.POLL_WAIT_S + 10) * 1000,
        );
        attempt = 0;
        const items = isObject(body) && Array.isArray(body.items) ? body.items : [];
        commanded = items.length > 0;
        for (const item of items) {
          if (isObject(item) && typeof item.id === "string" && typeof item.name === "string") {
            handlers.command({ id: item.id, name: item.name, payload: item.payload });
          }
        }
      } catch (error) {
        if (this.#stop.signal.aborted) break;
        handlers.error(
          error instanceof LinkError ? error : new LinkError("http error", String(error)),
        );
        await this.#sleep(backoff(++attempt));
      }
    }
  }

  /** Reads the twin; a changed desired document is handed over whole. */
  async #readTwin(): Promise<void> {
    const twin = await this.#send("GET", "/device/v1/twin", undefined, 200);
    this.#lastTwinAt = Date.now();
    if (!isObject(twin) || !isObject(twin.desired)) return;
    const seen = JSON.stringify(twin.desired);
    if (seen !== this.#desiredSeen) {
      const first = this.#desiredSeen === undefined;
      this.#desiredSeen = seen;
      if (!first || Object.keys(twin.desired).length > 0) {
        this.#handlers!.desired(twin.desired, true);
      }
    }
  }

  async #call(method: string, path: string, body: JsonObject, expect: number): Promise<void> {
    await this.#send(method, path, body, expect);
  }

  /** One request; marks the link up on an answer, down on a network failure. */
  async #send(
    method: string,
    path: string,
    body: JsonObject | undefined,
    expect: number,
    timeoutMs: number = REQUEST_TIMEOUT_MS,
  ): Promise<unknown> {
    const signal = AbortSignal.any([this.#stop.signal, AbortSignal.timeout(timeoutMs)]);
    let res: Response;
    try {
      res = await this.#net.fetch(`${this.#target.url}${path}`, {
        method,
        headers: {
          authorization: this.#auth,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (error) {
      this.#down();
      if (this.#stop.signal.aborted) throw new LinkError("closed");
      if (error instanceof DOMException && error.name === "TimeoutError") {
        throw new LinkError("timeout", `${method} ${path}`);
      }
      throw new LinkError("network error", `${method} ${path}: ${error}`);
    }
    let text: string;
    try {
      text = await res.text();
    } catch (error) {
      throw new LinkError("network error", `${method} ${path}: ${error}`);
    }
    if (res.ok) this.#up();
    const parsed = text ? parseJson(text) : null;
    if (res.status !== expect) {
      const code = isObject(parsed) && isObject(parsed.error) ? ` ${parsed.error.code}` : "";
      throw new LinkError(`http ${res.status}${code}`, `${method} ${path}: ${text.slice(0, 300)}`);
    }
    return parsed;
  }

  #up(): void {
    if (this.#ready) return;
    this.#ready = true;
    this.#handlers?.connected();
  }

  #down(): void {
    if (!this.#ready) return;
    this.#ready = false;
    if (!this.#stop.signal.aborted) this.#handlers?.disconnected("request failed");
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      this.#stop.signal.addEventListener("abort", done, { once: true });
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
    });
  }
}
