/**
 * Bridge mode (`MQTT_URL`): Doppel connects to an external broker (Mosquitto, EMQX) as a client and
 * serves the device topics from there. Each bridge connection is a persistent session (clean =
 * false) subscribed at QoS 1; with a shared subscription (`$share/<group>/…`) several
 * connections — of this process or of other instances — split the traffic. A message is
 * acknowledged (PUBACK) only once it is durable; if storage fails the connection is dropped, so
 * the broker sends the message again.
 *
 * Authentication and the topic ACL are the broker's job here; with `dynsec`, the registry keeps
 * Mosquitto's dynamic-security clients and roles in step. The broker cannot tell Doppel when a
 * device connects, so devices announce themselves: `devices/{id}/presence` `{"status":"online"}`
 * on connect, with the same topic and `{"status":"offline"}` as their will, both retained, so a
 * bridge that subscribes again (after a restart) learns who is connected. An online device gets
 * its desired catch-up and queued commands; a command counts as `delivered` when the broker has
 * acknowledged it (QoS 1), which with a persistent device session is the broker's promise to
 * deliver it.
 * @module
 */
import mqtt, { type IPublishPacket, type MqttClient } from "mqtt";
import type { CommandRecord } from "../commands/model.ts";
import { DoppelError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { DeviceRecord, Registry, RegistryEvent } from "../registry/devices.ts";
import { isObject } from "../twin/json.ts";
import type { DesiredUpdate } from "../twin/presence.ts";
import type { TwinRuntime } from "../twin/runtime.ts";
import { DynsecSync } from "./dynsec.ts";
import { downTopic, parseUplinkTopic, upTopic } from "./mqtt_topics.ts";
import { BridgePresence } from "./bridge_presence.ts";
import type { Downlink, SessionHub } from "./sessions.ts";
import { applyUplink, parseBody } from "./uplink.ts";

/** Bridge settings. */
export interface BridgeOptions {
  /** Broker URL, such as `mqtt://user:pass@broker:1883`. */
  url: string;
  /** Client id prefix; stable across restarts so the persistent sessions resume. */
  clientId?: string;
  /**
   * Shared subscription group, to split traffic over `connections` connections and over
   * instances; `""` (the default) is one unshared persistent session. Mosquitto 2.0 does not keep
   * shared subscriptions across its own restart, so messages published while it comes back are
   * lost to a shared group: use one only with a broker that keeps them, or accept that window.
   */
  group?: string;
  /** Parallel bridge connections (each handles its messages one at a time). */
  connections?: number;
  /** Keep Mosquitto's dynamic-security plugin in step with the registry. */
  dynsec?: boolean;
}

/** What the bridge needs. */
export interface BridgeDeps {
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

/** A running bridge. */
export interface MqttBridge {
  /** Whether at least one connection to the broker is up. */
  readonly connected: boolean;
  /** Resolves once every connection has connected (and dynsec, if on, is reconciled). */
  ready: Promise<void>;
  /** Follows registry changes (credential sync); resolves once the broker has them. */
  onRegistry(event: RegistryEvent): Promise<void>;
  /** Disconnects. */
  close(): Promise<void>;
}

const UPLINK_TOPICS = [
  "devices/+/telemetry",
  "devices/+/twin/reported",
  "devices/+/twin/get",
  "devices/+/presence",
  "devices/+/commands/+/result",
];

/** Connects to the broker and starts serving device topics. */
export function startBridge(deps: BridgeDeps, options: BridgeOptions): MqttBridge {
  const { logger } = deps;
  const group = options.group ?? "";
  const prefix = options.clientId ?? "doppel-bridge";
  // Unshared, several connections would each get every message: one then.
  const count = group ? Math.max(1, options.connections ?? 4) : 1;
  const log = (level: "info" | "warn" | "error", message: string, fields = {}) =>
    logger.log(level, "bridge", message, fields);

  const clients: MqttClient[] = [];
  // When each connection last subscribed: the retained messages it gets then are as old as that.
  const subscribedAt: number[] = new Array(count).fill(Date.now());
  for (let i = 0; i < count; i++) {
    const client = mqtt.connect(options.url, {
      clientId: `${prefix}-${i}`,
      // A persistent session: what arrives while the bridge is away waits for it.
      clean: false,
      reconnectPeriod: 500,
      connectTimeout: 5_000,
      queueQoSZero: false,
    });
    // mqtt.js sends the PUBACK once this calls back, and handles a connection's messages one at
    // a time: acknowledge only after the commit is durable.
    client.handleMessage = (packet, done) => {
      handle(packet, subscribedAt[i]).then(() => done(), (error) => {
        log("error", `Message on ${packet.topic} failed; reconnecting so it comes again: ${error}`);
        client.stream?.destroy();
      });
    };
    client.on("connect", (connack) => {
      const topics = UPLINK_TOPICS.map((t) => (group ? `$share/${group}/${t}` : t));
      // Subscribing again on every connect: a persistent session keeps plain subscriptions,
      // but not (on Mosquitto 2.0) shared ones. "Up" is logged once messages can flow.
      subscribedAt[i] = Date.now();
      announcements.subscribed(subscribedAt);
      client.subscribeAsync(topics, { qos: 1 }).then((granted) => {
        const refused = granted.filter((g) => g.qos === 128).map((g) => g.topic);
        if (refused.length > 0) {
          log("error", `The broker refused the bridge's subscriptions: ${refused.join(", ")}`);
          return;
        }
        log("info", `Bridge connection ${client.options.clientId} is up.`, {
          sessionPresent: connack.sessionPresent,
        });
      }).catch((error) => log("error", `Subscribing failed: ${error}`));
    });
    client.on("error", (error) => log("warn", `Bridge connection error: ${error.message}`));
    clients.push(client);
  }
  const admin = clients[0];
  const dynsec = options.dynsec ? new DynsecSync(admin, deps.registry, logger) : undefined;
  if (dynsec) {
    admin.on("connect", () => {
      const user = new URL(options.url).username;
      (async () => {
        if (user) await dynsec.grantBridge(decodeURIComponent(user));
        const n = await dynsec.reconcile();
        log("info", `Broker credentials reconciled for ${n} devices.`);
      })().catch((error) => log("error", `Dynsec reconcile failed: ${error}`));
    });
  }
  const ready = Promise.all(
    clients.map((client) =>
      client.connected
        ? Promise.resolve()
        : new Promise<void>((resolve) => client.once("connect", () => resolve()))
    ),
  ).then(() => {});

  /** Publishes `body` as JSON (a string as it is); `false` if no connection took it. */
  function publish(topic: string, body: unknown, qos: 0 | 1, retain = false): Promise<boolean> {
    const client = clients.find((c) => c.connected);
    if (!client) return Promise.resolve(false);
    const payload = typeof body === "string" ? body : JSON.stringify(body);
    return client.publishAsync(topic, payload, { qos, retain }).then(() => true, () => false);
  }

  const downlink: Downlink = {
    transport: "bridge",
    ready: () => clients.some((c) => c.connected),
    pushDesired: (deviceId: string, update: DesiredUpdate) =>
      publish(downTopic.desired(deviceId), update, 1),
    pushCommand: (deviceId: string, command: CommandRecord) =>
      publish(downTopic.command(deviceId, command.id), {
        name: command.name,
        payload: command.payload,
        expiresAt: command.expiresAt,
      }, 1),
    kick: () => {}, // The broker owns the connection; dynsec disables the client.
  };

  const announcements = new BridgePresence({
    runtime: deps.runtime,
    registry: deps.registry,
    sessions: deps.sessions,
    downlink,
    logger,
    kv: deps.kv,
    leaseMs: deps.sessions.deps.leaseMs,
    now: () => Date.now(),
  });

  async function handle(packet: IPublishPacket, subscribed: number): Promise<void> {
    const topic = parseUplinkTopic(packet.topic);
    if (!topic) return; // Not ours (a subscription overlap): acknowledge and ignore.
    // A retained message comes again with every new subscription (each bridge restart): it was
    // applied when it was published, and must not be again. Presence is the exception: it is
    // state, not an event, and a retained announcement (with a retained will) is how a restarted
    // bridge learns who is connected.
    if (packet.retain && topic.op !== "presence") {
      log("warn", `Retained message on ${packet.topic} ignored: uplinks are applied once, live.`);
      return;
    }
    const device = await deps.registry.get(topic.deviceId);
    if (!device || !device.enabled) {
      log(
        "warn",
        `Message on ${packet.topic} dropped: the device is ${device ? "disabled" : "unknown"}.`,
      );
      return;
    }
    try {
      if (topic.op === "presence") {
        return await presence(device, packet.payload as Uint8Array, packet.retain, subscribed);
      }
      const body = parseBody(packet.payload as Uint8Array, `The message on ${topic.op}`);
      const result = await applyUplink(deps, device.id, topic.op, body, "bridge", topic.commandId);
      if (topic.op === "twin.get") {
        const rid = isObject(body) ? body.rid : undefined;
        await publish(downTopic.twin(device.id), {
          ...(result as Record<string, unknown>),
          ...(rid === undefined ? {} : { rid }),
        }, 0);
      }
    } catch (error) {
      if (!(error instanceof DoppelError)) throw error;
      log("warn", `Message on ${packet.topic} refused: ${error.message}`, {
        deviceId: device.id,
        code: error.code,
      });
      await publish(downTopic.errors(device.id), { topic: packet.topic, ...error.toJSON() }, 0);
    }
  }

  async function presence(
    device: DeviceRecord,
    payload: Uint8Array,
    retained: boolean,
    subscribedAt: number,
  ): Promise<void> {
    // An empty retained message clears the announcement at the broker (as Doppel does for a
    // deleted device): nothing to apply.
    if (payload.length === 0) return;
    const body = parseBody(payload, "The presence message");
    const status = isObject(body) ? body.status : undefined;
    if (status !== "online" && status !== "offline") {
      throw new DoppelError(
        "validation_failed",
        'A presence message is {"status": "online" | "offline"}.',
        { fields: [{ field: "status", message: 'must be "online" or "offline"' }] },
      );
    }
    await announcements.announce({ device, status, retained, subscribedAt });
  }

  return {
    get connected() {
      return clients.some((c) => c.connected);
    },
    ready,
    async onRegistry(event) {
      if (event.type === "deleted" || (event.type === "updated" && !event.device.enabled)) {
        await announcements.ended(event.device, event.type === "deleted" ? "deleted" : "disabled");
      }
      if (event.type === "deleted" || (event.type === "updated" && !event.device.enabled)) {
        // Its last announcement must not speak for it once enabled again, or for a device
        // registered later under its id: the broker sends no will when it ends the connection.
        // Not waited for: the broker's answer may queue behind a message being handled.
        const id = event.device.id;
        const body = event.type === "deleted" ? "" : { status: "offline" };
        publish(upTopic.presence(id), body, 1, true).then((sent) => {
          if (!sent) {
            log("warn", `The retained presence of ${id} was not reset.`, { deviceId: id });
          }
        });
      }
      // Waited for (within a bound), so a device disabled or deleted is refused by the broker
      // before the operator hears it is done; a broker that is away catches up on reconcile.
      await dynsec?.apply(event, 5_000).catch((error) =>
        log("error", `Broker credential sync for ${event.device.id} failed: ${error}`, {
          deviceId: event.device.id,
        })
      );
    },
    async close() {
      await announcements.close();
      await Promise.all(clients.map((c) => c.endAsync()));
    },
  };
}
