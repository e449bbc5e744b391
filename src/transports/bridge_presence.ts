/**
 * Presence in bridge mode. The external broker cannot tell Doppel who is connected, so devices
 * announce themselves on `devices/{id}/presence` (`online` on connect, `offline` as their will,
 * both retained), and gateways announce their children. This keeps the sessions those
 * announcements call for:
 * - A device's session has the same id in every process and instance (`bridge:{id}`): a process
 *   started after another's end takes it over, and any instance can end it. An instance that finds
 *   at renewal that its session was ended elsewhere drops it.
 * - A child is served through the session of the gateway it came through, when that session is
 *   here, so it goes offline with the gateway; when the gateway is online elsewhere, on a session
 *   of its own; when the gateway is offline, not at all: it waits for the gateway (in KV, so the
 *   instance that opens the gateway's session serves it). A gateway going offline takes its
 *   registered children (and theirs) with it, wherever they are served.
 * - Announcements of one family (a gateway, its children and theirs) are applied one at a time,
 *   in order of arrival, however many connections they come on; a retained one that a connection
 *   gets when it subscribes is dropped if a live one for the device has been applied since (here,
 *   or by another instance, as the twin's presence tells).
 * @module
 */
import { DoppelError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { DeviceRecord, Registry } from "../registry/devices.ts";
import { deletePrefix, keys } from "../storage/keys.ts";
import { loadTwin } from "../storage/twin_store.ts";
import type { TwinRuntime } from "../twin/runtime.ts";
import type { DeviceSession, Downlink, SessionHub } from "./sessions.ts";

/** What bridge presence needs. */
export interface BridgePresenceDeps {
  /** Twin actors. */
  runtime: TwinRuntime;
  /** Devices. */
  registry: Registry;
  /** Session bookkeeping. */
  sessions: SessionHub;
  /** The store (to see whether a gateway is online elsewhere). */
  kv: Deno.Kv;
  /** How the bridge reaches devices. */
  downlink: Downlink;
  /** Log lines (for work done after the announcement that caused it was acknowledged). */
  logger: Logger;
  /** How long a session outlives its process (the hub's lease, ms; default 90 s). */
  leaseMs?: number;
  /** Current time in ms. */
  now(): number;
}

/** One announcement as it came. */
export interface Announcement {
  /** Whom it is about. */
  device: DeviceRecord;
  /** What it says. */
  status: "online" | "offline";
  /** Whether the broker replayed it (retained) to a subscription made at `subscribedAt`. */
  retained: boolean;
  /** When (ms, `now()`) the connection it came on last subscribed. */
  subscribedAt: number;
}

/** The id of a device's bridge session, the same in every process. */
export function bridgeSessionId(deviceId: string): string {
  return `bridge:${deviceId}`;
}

/** The family an announcement is ordered in: its topmost gateway, or the device itself. */
function rootOf(device: DeviceRecord, ancestors: readonly string[]): string {
  return ancestors[ancestors.length - 1] ?? device.id;
}

/** Gateways above gateways: deeper chains are cut here. */
const MAX_DEPTH = 8;

/** How long a child waits for its gateway before it must be announced again (ms). */
const WAIT_MS = 24 * 60 * 60_000;

/** The bridge's sessions, kept as devices announce themselves; see the module doc. */
export class BridgePresence {
  #deps: BridgePresenceDeps;
  // Sessions held here, by the device they were opened for.
  #sessions = new Map<string, DeviceSession>();
  // Children served on another device's session here: which, and their registered parent.
  #attached = new Map<string, { session: DeviceSession; parent: string }>();
  // When a live announcement was last applied, by device (older than every connection's last
  // subscription, an entry is forgotten).
  #liveAt = new Map<string, number>();
  // Devices whose retained offline was applied while sessions of an earlier process may live.
  #gone = new Set<string>();
  #queues = new Map<string, Promise<void>>();
  #earlierUntil: number;
  #closed = false;

  /** Starts with no sessions. */
  constructor(deps: BridgePresenceDeps) {
    this.#deps = deps;
    this.#earlierUntil = deps.now() + (deps.leaseMs ?? 90_000);
  }

  /**
   * Applies an announcement, after any earlier one of its family. After {@link close} it rejects,
   * so the message is not acknowledged and comes again to the next process.
   */
  async announce(a: Announcement): Promise<void> {
    const family = await this.#ancestors(a.device);
    await this.#inOrder(rootOf(a.device, family), async () => {
      const { device, status } = a;
      if (a.retained && (this.#liveAt.get(device.id) ?? -Infinity) > a.subscribedAt) return;
      if (!a.retained) this.#liveAt.set(device.id, this.#deps.now());
      if (status === "online") await this.#online(device, family, a);
      else await this.#offline(device, family, !a.retained);
    });
  }

  /**
   * Told each connection's last subscription time (ms, `now()`) whenever one subscribes: what is
   * known of live announcements before all of them is of no more use.
   */
  subscribed(connections: readonly number[]): void {
    const oldest = Math.min(...connections);
    for (const [id, at] of this.#liveAt) if (at < oldest) this.#liveAt.delete(id);
  }

  /** `device` was disabled or deleted: its session ends, and it waits for no gateway. */
  async ended(device: DeviceRecord, reason: string): Promise<void> {
    const family = await this.#ancestors(device);
    await this.#inOrder(rootOf(device, family), async () => {
      await this.#stopWaiting(device);
      this.#gone.delete(device.id);
      this.#liveAt.delete(device.id);
      await this.#endHere(device.id, reason);
      this.#childrenLater(rootOf(device, family), device.id); // They lose it.
    });
  }

  /**
   * Once the announcements under way are applied, leaves every session to its lease: the devices
   * stay connected to the broker, and the next process takes the sessions over.
   */
  async close(): Promise<void> {
    this.#closed = true;
    await this.settled();
    for (const session of this.#sessions.values()) session.abandon();
    this.#sessions.clear();
    this.#attached.clear();
  }

  async #online(device: DeviceRecord, ancestors: string[], a: Announcement): Promise<void> {
    const held = this.#holderOf(device.id);
    if (held) {
      // A live one opens it again at the twin: another instance may have applied an offline
      // meanwhile (a shared group hands a device's will and its next online to different ones).
      if (!a.retained) await held.attach(device);
      return;
    }
    if (a.retained && (await this.#wentOfflineSince(device.id, a.subscribedAt))) return;
    const parent = ancestors[0];
    if (parent !== undefined) {
      const holder = this.#holderOf(parent);
      if (holder) return await this.#attach(holder, device);
      if (!(await this.#onlineElsewhere(parent))) {
        await this.#deps.kv.set(keys.bridgeWaiting(parent, device.id), true, { expireIn: WAIT_MS });
        // The gateway may have come online elsewhere between the look and the write.
        if (!(await this.#onlineElsewhere(parent))) return;
        await this.#deps.kv.delete(keys.bridgeWaiting(parent, device.id));
      }
    }
    const session: DeviceSession = await this.#deps.sessions.open(device, this.#deps.downlink, {
      id: bridgeSessionId(device.id),
      // Ended elsewhere (another instance applied an offline): the next online opens it again.
      onLapsed: (lapsed) => {
        if (lapsed !== device.id) this.#attached.delete(lapsed);
        else if (this.#sessions.get(device.id) === session) this.#forget(device.id, session);
      },
    });
    this.#sessions.set(device.id, session);
    await this.#drainWaiting(session, device.id);
  }

  async #attach(session: DeviceSession, device: DeviceRecord): Promise<void> {
    await session.attach(device);
    this.#attached.set(device.id, { session, parent: device.parent! });
    await this.#drainWaiting(session, device.id);
  }

  /**
   * Children waiting for `gatewayId`, now online on `session`, are served there. Each waits on
   * until it is; what one failure throws is thrown once the others are done.
   */
  async #drainWaiting(session: DeviceSession, gatewayId: string): Promise<void> {
    let failure: unknown;
    for await (const entry of this.#deps.kv.list({ prefix: keys.bridgeWaiting(gatewayId) })) {
      const child = await this.#deps.registry.get(entry.key[2] as string);
      try {
        if (child?.enabled && child.parent === gatewayId) await this.#attach(session, child);
      } catch (error) {
        // A child deleted since it was announced has no twin: it waits for nothing.
        if (!(error instanceof DoppelError && error.code === "not_found")) {
          failure ??= error;
          continue;
        }
      }
      await this.#deps.kv.delete(entry.key);
    }
    if (failure !== undefined) throw failure;
  }

  /**
   * `device` waits for its gateway no more, and its children wait for it no more (gone, it
   * announces them again when it is back).
   */
  async #stopWaiting(device: DeviceRecord): Promise<void> {
    if (device.parent !== null) {
      await this.#deps.kv.delete(keys.bridgeWaiting(device.parent, device.id));
    }
    await deletePrefix(this.#deps.kv, keys.bridgeWaiting(device.id));
  }

  async #offline(device: DeviceRecord, ancestors: string[], live: boolean): Promise<void> {
    await this.#stopWaiting(device);
    await this.#endHere(device.id, "disconnect");
    // Sessions held elsewhere: another instance's, or an earlier process's (which a retained
    // offline ends only while their lease may run, and once). No write where there is none.
    if (!live && !this.#earlierMayLive(device.id)) return;
    await this.#closeElsewhere(device.id, [device.id, ...ancestors]);
    this.#childrenLater(rootOf(device, ancestors), device.id);
  }

  /**
   * Takes a gateway's children offline next in its family's order, without holding up the
   * connection the announcement came on (a gateway may have thousands).
   */
  #childrenLater(family: string, gatewayId: string): void {
    this.#inOrder(family, () => this.#childrenGo(gatewayId, 1), true).catch((error) =>
      this.#deps.logger.log(
        "error",
        "bridge",
        `Taking the children of ${gatewayId} offline failed; their leases end them: ${error}`,
        { deviceId: gatewayId },
      )
    );
  }

  /** Resolves once the work queued so far (children going offline with a gateway) is done. */
  async settled(): Promise<void> {
    while (this.#queues.size > 0) await Promise.all(this.#queues.values());
  }

  /** A gateway went offline: its registered children (and theirs) go with it, wherever served. */
  async #childrenGo(gatewayId: string, depth: number): Promise<void> {
    if (depth > MAX_DEPTH) return;
    for (const child of await this.#deps.registry.childIds(gatewayId)) {
      await this.#endHere(child, "disconnect");
      await this.#closeElsewhere(child, [child, gatewayId]);
      await this.#childrenGo(child, depth + 1);
    }
  }

  /** Ends what serves `deviceId` here, and the children attached under it. */
  async #endHere(deviceId: string, reason: string): Promise<void> {
    const own = this.#sessions.get(deviceId);
    if (own) {
      this.#forget(deviceId, own);
      return await own.close(reason); // Tells its children's twins too.
    }
    const attached = this.#attached.get(deviceId);
    if (!attached) return;
    this.#attached.delete(deviceId);
    await attached.session.detach(deviceId, reason);
    // Its own children came through it: they go too.
    for (const [id, at] of this.#attached) {
      if (at.parent === deviceId) await this.#endHere(id, reason);
    }
  }

  /** Forgets `deviceId`'s own session here, and the children attached to it. */
  #forget(deviceId: string, session: DeviceSession): void {
    this.#sessions.delete(deviceId);
    for (const [id, at] of this.#attached) if (at.session === session) this.#attached.delete(id);
  }

  /** Ends sessions of `deviceId` that other processes hold, by their ids (no write if none). */
  async #closeElsewhere(deviceId: string, holders: string[]): Promise<void> {
    for (const holder of holders) {
      await this.#deps.runtime.send(deviceId, {
        type: "session.close",
        sessionId: bridgeSessionId(holder),
        reason: "disconnect",
      });
    }
  }

  /** Whether a session an earlier process held for `deviceId` may still live; asked once. */
  #earlierMayLive(deviceId: string): boolean {
    if (this.#deps.now() >= this.#earlierUntil) {
      this.#gone.clear();
      return false;
    }
    if (this.#gone.has(deviceId)) return false;
    this.#gone.add(deviceId);
    return true;
  }

  /** The session here that serves `deviceId` (its own, or one it is attached to). */
  #holderOf(deviceId: string): DeviceSession | undefined {
    return this.#sessions.get(deviceId) ?? this.#attached.get(deviceId)?.session;
  }

  /**
   * Whether `deviceId`'s twin went offline by an announcement after `time` (a live offline applied
   * by any instance since a connection subscribed and got an older retained online). A lease that
   * ran out meanwhile does not count: the replay is what renews it.
   */
  async #wentOfflineSince(deviceId: string, time: number): Promise<boolean> {
    const connection = (await loadTwin(this.#deps.kv, deviceId))?.state.connection;
    return connection?.status === "offline" && connection.reason === "disconnect" &&
      connection.since !== null && Date.parse(connection.since) > time;
  }

  /** Whether `deviceId`'s twin counts it online (through another instance, say). */
  async #onlineElsewhere(deviceId: string): Promise<boolean> {
    const stored = await loadTwin(this.#deps.kv, deviceId);
    return stored?.state.connection.status === "online";
  }

  /** `device`'s parent, its parent's parent and so on, nearest first. */
  async #ancestors(device: DeviceRecord): Promise<string[]> {
    const chain: string[] = [];
    let parent = device.parent;
    while (parent !== null && chain.length < MAX_DEPTH && !chain.includes(parent)) {
      chain.push(parent);
      parent = (await this.#deps.registry.get(parent))?.parent ?? null;
    }
    return chain;
  }

  /** Runs `work` after the family's earlier work; what it throws goes to the caller. */
  #inOrder(family: string, work: () => Promise<void>, evenClosing = false): Promise<void> {
    if (this.#closed && !evenClosing) return Promise.reject(new Error("The bridge is closing."));
    const run = (this.#queues.get(family) ?? Promise.resolve()).then(work);
    const settled = run.catch(() => {}); // The caller gets the error from `run`.
    this.#queues.set(family, settled);
    settled.then(() => {
      if (this.#queues.get(family) === settled) this.#queues.delete(family);
    });
    return run;
  }
}
