/**
 * The embedded MQTT endpoint (aedes): devices connect with username = device id and password =
 * key; the connect hook checks the registry, the publish and subscribe hooks enforce the topic
 * ACL, and QoS 1 messages are acknowledged only once the twin commit is durable (aedes sends the
 * PUBACK after `authorizePublish` calls back). Commands and desired changes go down at QoS 1 and
 * count as handed over on the device's PUBACK.
 *
 * This module opens no sockets: `handle(stream)` serves one connection, from a TCP listener or a
 * WebSocket (`/mqtt`).
 * @module
 */
import { Aedes, type AuthenticateError, type Client, type Connection } from "aedes";
import { Buffer } from "node:buffer";
import type { CommandRecord } from "../commands/model.ts";
import { bodyError, DoppelError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { DeviceRecord, Registry } from "../registry/devices.ts";
import type { TwinRuntime } from "../twin/runtime.ts";
import { actFor } from "../web/auth.ts";
import { isObject } from "../twin/json.ts";
import type { DesiredUpdate } from "../twin/presence.ts";
import { downTopic, filterDevice, parseUplinkTopic, topicMatches } from "./mqtt_topics.ts";
import type { DeviceSession, Downlink, SessionHub } from "./sessions.ts";
import { applyUplink, parseBody } from "./uplink.ts";

/**
 * How long a desired push waits for the device's PUBACK before it counts as not handed over (ms).
 * A command push waits as long as the connection lasts: it is `delivered` on its PUBACK, however
 * late.
 */
const ACK_TIMEOUT_MS = 30_000;

/** What the endpoint needs. */
export interface MqttDeps {
  /** Twin actors. */
  runtime: TwinRuntime;
  /** Devices. */
  registry: Registry;
  /** Session bookkeeping. */
  sessions: SessionHub;
  /** The store. */
  kv: Deno.Kv;
  /** Log lines. */
  logger: Logger;
}

/** A running embedded broker. */
export interface MqttEndpoint {
  /** Serves one client connection (a TCP socket or a WebSocket stream). */
  handle(stream: Connection): void;
  /** Connected MQTT clients. */
  readonly connected: number;
  /**
   * Device `deviceId` was changed in the registry: gateways subscribed to its topics keep
   * receiving them only while it is still their enabled child.
   */
  deviceChanged(deviceId: string): Promise<void>;
  /** Disconnects everyone and stops. */
  close(): Promise<void>;
}

/** The part of aedes's persistence the endpoint watches for PUBACKs. */
interface Persistence {
  outgoingClearMessageId(
    client: Client,
    packet: { cmd: string; messageId?: number },
  ): Promise<unknown>;
}

interface Conn {
  device: DeviceRecord;
  session?: DeviceSession;
  opening?: Promise<void>;
  // Why the connection ended or is ending (keepalive, disabled, …), for presence.
  reason?: string;
  // The server is closing it (device disabled, deleted, key retired): nothing it sends counts.
  kicked?: boolean;
  // Which of the device's keys it connected with.
  keyId: string;
  // A gateway's children it subscribed for, and whether each may still get their messages: a
  // subscription is authorized once, and outlives the child being deleted or moved.
  children: Map<string, boolean>;
}

/** Creates the embedded broker. */
export async function createMqttEndpoint(deps: MqttDeps): Promise<MqttEndpoint> {
  const { logger } = deps;
  const broker = await Aedes.createBroker({ heartbeatInterval: 60_000 });
  const conns = new Map<Client, Conn>();
  // Pushes waiting for their PUBACK, by client id and packet id.
  const waiting = new Map<string, (ok: boolean) => void>();
  // The packet id each of our pushes is sent with, by payload buffer: aedes only remembers what
  // it sent to persistent sessions, so we pick the ids ourselves to match PUBACKs for all.
  const stamps = new WeakMap<Buffer, { clientId: string; messageId: number }>();
  const nextIds = new WeakMap<Client, number>();
  const log = (level: "info" | "warn" | "error", message: string, fields = {}) =>
    logger.log(level, "mqtt", message, fields);

  broker.authenticate = (client, username, password, done) => {
    const refuse = (code: number, message: string) => {
      log("warn", `Connection refused: ${message}`, { clientId: client.id, deviceId: username });
      const error = new Error(message) as AuthenticateError;
      error.returnCode = code;
      done(error, null);
    };
    if (!username || !password) {
      return refuse(4, "username (device id) and password (key) are required");
    }
    deps.registry.authenticateKey(username, password.toString()).then(({ device, keyId }) => {
      // The client id is the device id, so no device can take over another's session.
      if (client.id !== device.id) {
        return refuse(2, `client id ${JSON.stringify(client.id)} must equal the device id`);
      }
      // A client that went away while its key was checked is not recorded: its disconnect has
      // been and gone, and nothing would ever remove it.
      if (client.closed) return refuse(3, "the connection closed during sign-in");
      conns.set(client, { device, keyId, children: new Map() });
      done(null, true);
    }, (error) => {
      if (error instanceof DoppelError && error.code === "forbidden") refuse(5, error.message);
      else if (error instanceof DoppelError) refuse(4, error.message);
      else {
        log("error", `Authentication failed: ${error}`, { deviceId: username });
        refuse(3, "server unavailable");
      }
    });
  };

  broker.authorizeSubscribe = (client, subscription, done) => {
    const conn = conns.get(client);
    const owner = filterDevice(subscription.topic);
    // Commands count as delivered, and desired changes as seen, on the device's PUBACK: at QoS 0
    // there is none to count on (a lost packet would never be sent again).
    if (
      owner !== null && subscription.qos === 0 &&
      (topicMatches(subscription.topic, downTopic.command(owner, "x")) ||
        topicMatches(subscription.topic, downTopic.desired(owner)))
    ) {
      log("warn", `Subscription to ${subscription.topic} at QoS 0 refused: it needs QoS 1.`, {
        deviceId: conn?.device.id,
      });
      return done(null, null);
    }
    allowed(conn, owner).then((ok) => {
      if (ok && owner !== conn!.device.id) conn!.children.set(owner!, true);
      if (ok) return done(null, subscription);
      log("warn", `Subscription to ${subscription.topic} refused.`, { deviceId: conn?.device.id });
      done(null, null);
    }, (error) => done(error as Error));
  };

  broker.authorizePublish = (client, packet, done) => {
    const conn = client ? conns.get(client) : undefined;
    if (!client || !conn) return done(null); // The broker's own publishes.
    // A client the server is closing (its device was disabled or deleted) is refused: aedes
    // publishes its will on close, and that would otherwise still reach the twin.
    if (conn.kicked) return done(new Error(`the connection is closing (${conn.reason})`));
    const topic = parseUplinkTopic(packet.topic);
    const device = conn.device;
    if (!topic) {
      log("warn", `Publish to unknown topic ${packet.topic} refused; disconnecting.`, {
        deviceId: device.id,
      });
      return done(new Error(`unknown topic ${packet.topic}`));
    }
    handlePublish(conn, topic, packet.payload as Buffer).then(() => done(null), (error) => {
      if (error instanceof DoppelError) {
        if (error.code === "forbidden" || error.code === "unauthorized") {
          log("warn", `Publish to ${packet.topic} refused: ${error.message}`, {
            deviceId: device.id,
          });
          return done(error); // Not its topic: the connection ends, nothing was written.
        }
        // Refused input: acknowledged (it will never be accepted), nothing written, reason sent.
        log("warn", `Message on ${packet.topic} refused: ${error.message}`, {
          deviceId: device.id,
          code: error.code,
        });
        publish(downTopic.errors(topic.deviceId), { topic: packet.topic, ...error.toJSON() }, 0);
        return done(null);
      }
      // Storage failed: no PUBACK, so the device sends it again.
      log("error", `Message on ${packet.topic} failed: ${error}`, { deviceId: device.id });
      done(error as Error);
    });
  };

  // Device → cloud messages are for the twin, not for other subscribers.
  // Our pushes go out with the packet id we chose for them.
  broker.authorizeForward = (client, packet) => {
    if (parseUplinkTopic(packet.topic)) return null;
    // A child's messages reach a gateway only while it is still its child.
    const owner = filterDevice(packet.topic);
    const conn = conns.get(client);
    if (conn && owner !== null && owner !== conn.device.id && !conn.children.get(owner)) {
      return null;
    }
    const stamp = stamps.get(packet.payload as Buffer);
    if (!stamp || stamp.clientId !== client.id || packet.qos === 0) return packet;
    return Object.assign(Object.create(Object.getPrototypeOf(packet)), packet, {
      messageId: stamp.messageId,
    });
  };
  // Every PUBACK passes here (for clean sessions too, where aedes's `ack` event has no packet).
  const persistence = (broker as unknown as { persistence: Persistence }).persistence;
  const clearMessageId = persistence.outgoingClearMessageId.bind(persistence);
  persistence.outgoingClearMessageId = (client, packet) => {
    const result = clearMessageId(client, packet);
    if (packet.cmd === "puback") waiting.get(`${client.id}|${packet.messageId}`)?.(true);
    return result;
  };

  broker.on("clientReady", (client) => {
    const conn = conns.get(client);
    if (!conn) return;
    const options = { keyId: conn.keyId };
    conn.opening = deps.sessions.open(conn.device, downlink(client, conn), options).then(
      (session) => {
        conn.session = session;
      },
    ).catch((error) => {
      log("error", `Opening the session failed: ${error}`, { deviceId: conn.device.id });
      client.close();
    });
  });

  broker.on("subscribe", (subscriptions, client) => {
    const conn = conns.get(client);
    if (!conn) return;
    const devices = new Set(
      subscriptions.filter((s) => (s.qos as number) !== 128).map((s) => filterDevice(s.topic)),
    );
    conn.opening?.then(async () => {
      for (const id of devices) {
        if (!id || !conn.session) continue;
        if (!conn.session.serves(id)) {
          await conn.session.attach(await actFor(deps.registry, conn.device, id));
        }
        await conn.session.flush(id);
      }
    }).catch((error) =>
      log("warn", `Flush after subscribe failed: ${error}`, { deviceId: conn.device.id })
    );
  });

  broker.on("keepaliveTimeout", (client) => {
    const conn = conns.get(client);
    if (conn) conn.reason = "keepalive";
  });
  broker.on("clientError", (client, error) => {
    const conn = conns.get(client);
    if (conn) conn.reason ??= "error";
    log("warn", `Client error: ${error.message}`, { deviceId: conn?.device.id });
  });

  broker.on("clientDisconnect", (client) => {
    const conn = conns.get(client);
    if (!conn) return;
    conns.delete(client);
    // A connection that ended without a DISCONNECT packet was lost, not closed.
    if (!(client as unknown as { _disconnected?: boolean })._disconnected) {
      conn.reason ??= "connection lost";
    }
    for (const [key, settle] of waiting) {
      if (!key.startsWith(`${client.id}|`)) continue;
      settle(false);
      // A persistent session keeps the unacknowledged push, and the broker would send it again on
      // reconnect — even once the command has expired or finished. It is dropped here: the twin
      // sends what is still queued when the device is back.
      const messageId = Number(key.slice(client.id.length + 1));
      clearMessageId(client, { cmd: "dropped", messageId }).catch((error) =>
        log("warn", `Dropping an unacknowledged push failed: ${error}`, {
          deviceId: conn.device.id,
        })
      );
    }
    conn.opening?.then(() => conn.session?.close(conn.reason ?? "disconnect"))
      .catch((error) => log("warn", `Close failed: ${error}`, { deviceId: conn.device.id }));
  });

  function publish(topic: string, body: unknown, qos: 0 | 1, payload?: Buffer): Promise<void> {
    return new Promise((resolve, reject) =>
      broker.publish({
        cmd: "publish",
        topic,
        payload: payload ?? Buffer.from(JSON.stringify(body)),
        qos,
        retain: false,
        dup: false,
      }, (error) => (error ? reject(error) : resolve()))
    );
  }

  function downlink(client: Client, conn: Conn): Downlink {
    const subscriptionQos = (topic: string): number | undefined => {
      let best: number | undefined;
      // aedes keeps a client's granted subscriptions here; its types do not declare it.
      const subs = (client as unknown as { subscriptions?: Record<string, { qos: number }> })
        .subscriptions ?? {};
      for (const [filter, sub] of Object.entries(subs)) {
        const qos = sub.qos;
        if (qos !== 128 && topicMatches(filter, topic)) best = Math.max(best ?? 0, qos);
      }
      return best;
    };
    const push = (
      topic: string,
      body: Record<string, unknown>,
      untilClosed = false,
    ): Promise<boolean> => {
      const qos = subscriptionQos(topic);
      if (qos === undefined || client.closed) return Promise.resolve(false);
      // Commands and desired changes count as handed over on a PUBACK: subscriptions to them at
      // QoS 0 are refused, and nothing is counted without one.
      if (qos === 0) return Promise.resolve(false);
      const messageId = nextIds.get(client) ?? 1;
      nextIds.set(client, messageId >= 65535 ? 1 : messageId + 1);
      const payload = Buffer.from(JSON.stringify(body));
      stamps.set(payload, { clientId: client.id, messageId });
      const key = `${client.id}|${messageId}`;
      return new Promise((resolve) => {
        const timer = untilClosed ? undefined : setTimeout(() => settle(false), ACK_TIMEOUT_MS);
        const settle = (ok: boolean) => {
          clearTimeout(timer);
          waiting.delete(key);
          resolve(ok);
        };
        waiting.set(key, settle);
        publish(topic, body, 1, payload).catch(() => settle(false));
      });
    };
    return {
      transport: "mqtt",
      ready: (deviceId, what) =>
        subscriptionQos(
          what === "desired" ? downTopic.desired(deviceId) : downTopic.command(deviceId, "x"),
        ) !== undefined,
      pushDesired: (deviceId: string, update: DesiredUpdate) =>
        push(downTopic.desired(deviceId), { ...update }),
      pushCommand: (deviceId: string, command: CommandRecord) =>
        push(downTopic.command(deviceId, command.id), {
          name: command.name,
          payload: command.payload,
          expiresAt: command.expiresAt,
        }, true),
      kick: (reason) => {
        conn.reason = reason;
        conn.kicked = true;
        client.close();
      },
    };
  }

  /** Whether a connection may use topics of `deviceId` (its own, or a child's). */
  async function allowed(conn: Conn | undefined, deviceId: string | null): Promise<boolean> {
    if (!conn || !deviceId) return false;
    if (deviceId === conn.device.id) return true;
    try {
      await actFor(deps.registry, conn.device, deviceId);
      return true;
    } catch (error) {
      if (error instanceof DoppelError) return false;
      throw error;
    }
  }

  async function handlePublish(
    conn: Conn,
    topic: NonNullable<ReturnType<typeof parseUplinkTopic>>,
    payload: Buffer,
  ): Promise<void> {
    const device = conn.device;
    const target = topic.deviceId === device.id
      ? device
      : await actFor(deps.registry, device, topic.deviceId);
    await conn.opening;
    const session = conn.session;
    if (topic.op === "presence") {
      const body = parseBody(payload, "The presence message");
      const status = isObject(body) ? body.status : undefined;
      // A device's own announcement (as bridge mode needs) is checked and then left: here its
      // connection is its presence, so the same firmware works on either endpoint.
      if (target.id === device.id && (status === "online" || status === "offline")) return;
      if (status === "online") await session?.attach(target);
      else if (status === "offline") await session?.detach(target.id, "gateway reported");
      else {
        throw new DoppelError(
          "validation_failed",
          'A presence message is {"status": "online" | "offline"}.',
          {
            fields: [{ field: "status", message: 'must be "online" or "offline"' }],
          },
        );
      }
      return;
    }
    if (target.id !== device.id && session && !session.serves(target.id)) {
      await session.attach(target);
    }
    const body = parseBody(payload, `The message on ${topic.op}`);
    if (topic.op === "telemetry" && body === undefined) {
      throw bodyError(
        "invalid_json",
        "A telemetry message needs a JSON body.",
        "must be a JSON document",
      );
    }
    const result = await applyUplink(deps, target.id, topic.op, body, "mqtt", topic.commandId);
    if (topic.op === "twin.get") {
      const rid = isObject(body) ? body.rid : undefined;
      await publish(downTopic.twin(target.id), {
        ...(result as Record<string, unknown>),
        ...(rid === undefined ? {} : { rid }),
      }, 0);
    }
  }

  return {
    handle: (stream) => {
      broker.handle(stream);
    },
    get connected() {
      return broker.connectedClients;
    },
    deviceChanged: async (deviceId) => {
      const checks: Promise<void>[] = [];
      for (const conn of conns.values()) {
        if (!conn.children.has(deviceId)) continue;
        checks.push(
          allowed(conn, deviceId).then((ok) => {
            if (conn.children.has(deviceId)) conn.children.set(deviceId, ok);
          }),
        );
      }
      await Promise.all(checks);
    },
    close: () =>
      new Promise((resolve) => {
        for (const client of conns.keys()) client.close();
        broker.close(() => resolve());
      }),
  };
}
