/**
 * Device sessions, whatever the transport: a session tells the twin it is open (and keeps its
 * lease renewed), pushes desired changes and commands down as they commit, and reports each
 * hand-over back to the twin (a command becomes `delivered` only when the transport confirms it:
 * MQTT PUBACK, WebSocket ack frame). A gateway's session also serves its children.
 * @module
 */
import type { CommandRecord } from "../commands/model.ts";
import type { EventBus } from "../events/bus.ts";
import type { Logger } from "../log.ts";
import type { DeviceRecord, Registry } from "../registry/devices.ts";
import { loadTwin } from "../storage/twin_store.ts";
import { desiredSince, type DesiredUpdate, type Transport } from "../twin/presence.ts";
import type { TwinRuntime } from "../twin/runtime.ts";
import type { Notice, SessionOpened } from "../twin/turn.ts";

/** What a transport does to reach a device. */
export interface Downlink {
  /** The transport's name. */
  readonly transport: Transport;
  /** Whether the device listens for this kind of push now (an MQTT device must subscribe). */
  ready(deviceId: string, what: "desired" | "commands"): boolean;
  /** Sends a desired update; resolves `true` once the device acknowledged it. */
  pushDesired(deviceId: string, update: DesiredUpdate): Promise<boolean>;
  /** Hands a command over; resolves `true` once the device acknowledged it. */
  pushCommand(deviceId: string, command: CommandRecord): Promise<boolean>;
  /** Ends the connection, say because the device was disabled. */
  kick(reason: string): void;
}

/** Session settings. */
export interface SessionOptions {
  /** A session not renewed for this long counts as gone (ms; default 90 s). */
  leaseMs?: number;
  /** How often open sessions renew their leases (ms; default 30 s). */
  renewMs?: number;
}

/** How a session is opened. */
export interface SessionOpenOptions {
  /** Its id, when the transport has one (default: a random one). */
  id?: string;
  /** The key it authenticated with: it ends once a rotation retires that key. */
  keyId?: string;
  /**
   * Called with the device whose twin no longer knows the session (a renewal found it ended by
   * someone else): that device is then no longer served here (the whole session, if it is the
   * session's own), without telling the twin again.
   */
  onLapsed?(deviceId: string): void;
}

interface Served {
  device: DeviceRecord;
  unsubscribe: () => void;
  /** Commands handed to the transport and not yet acknowledged or failed. */
  inFlight: Set<string>;
  /** Whether a desired push is under way, and whether another is needed after it. */
  desiredBusy: boolean;
  desiredDirty: boolean;
}

/** All open sessions of this process. */
export class SessionHub {
  #runtime: TwinRuntime;
  #registry: Registry;
  #bus: EventBus;
  #kv: Deno.Kv;
  #logger: Logger;
  #leaseMs: number;
  #renewMs: number;
  #sessions = new Set<DeviceSession>();
  #timer: ReturnType<typeof setInterval> | undefined;

  /** Creates the hub; {@link start} begins lease renewal. */
  constructor(deps: {
    runtime: TwinRuntime;
    registry: Registry;
    bus: EventBus;
    kv: Deno.Kv;
    logger: Logger;
    options?: SessionOptions;
  }) {
    this.#runtime = deps.runtime;
    this.#registry = deps.registry;
    this.#bus = deps.bus;
    this.#kv = deps.kv;
    this.#logger = deps.logger;
    this.#leaseMs = deps.options?.leaseMs ?? 90_000;
    this.#renewMs = deps.options?.renewMs ?? 30_000;
  }

  /** Sessions open now, by transport. */
  counts(): Record<string, number> {
    const counts: Record<string, number> = {};
    for (const session of this.#sessions) {
      counts[session.transport] = (counts[session.transport] ?? 0) + 1;
    }
    return counts;
  }

  /** Opens a session for an authenticated device; see {@link SessionOpenOptions}. */
  async open(
    device: DeviceRecord,
    downlink: Downlink,
    options: SessionOpenOptions = {},
  ): Promise<DeviceSession> {
    const session = new DeviceSession(this, device, downlink, options);
    this.#sessions.add(session);
    try {
      await session.attach(device);
    } catch (error) {
      this.#sessions.delete(session);
      throw error;
    }
    // The device was authenticated a moment ago: a change made since (disabled, deleted, its key
    // retired) found no session to end. Registered now, it is ended by any later change, and
    // here for an earlier one.
    const ended = endedBy(await this.#registry.get(device.id), options.keyId);
    if (ended) session.kick(ended);
    return session;
  }

  /** Starts renewing leases. */
  start(): void {
    // Each session renews on its own schedule (set at random when it opened), checked every
    // second: renewing every lease at one tick would be a burst of writes every renewal period.
    this.#timer ??= setInterval(() => {
      const now = performance.now();
      for (const session of this.#sessions) {
        if (session.renewAt <= now) {
          session.renew();
          session.renewAt = now + this.#renewMs;
        }
      }
    }, 1000);
  }

  /**
   * Ends every session whose device (or one it serves) is `deviceId`, if it may no longer connect,
   * and the device's sessions whose key a rotation retired.
   */
  async deviceChanged(deviceId: string): Promise<void> {
    const device = await this.#registry.get(deviceId);
    if (device?.enabled) {
      for (const session of this.#sessions) {
        if (session.deviceId !== deviceId) continue;
        const ended = endedBy(device, session.keyId);
        if (ended) session.kick(ended);
      }
      return;
    }
    for (const session of this.#sessions) {
      if (session.deviceId === deviceId) {
        session.kick(device ? "disabled" : "deleted");
      } else if (session.serves(deviceId)) {
        await session.detach(deviceId, device ? "disabled" : "deleted");
      }
    }
  }

  /** Closes every session (on shutdown) and stops renewal. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await Promise.all([...this.#sessions].map((s) => s.close("server shutdown")));
  }

  /** How often a session renews its leases (ms). */
  get renewMs(): number {
    return this.#renewMs;
  }

  /** @internal */
  get deps(): {
    runtime: TwinRuntime;
    bus: EventBus;
    kv: Deno.Kv;
    logger: Logger;
    leaseMs: number;
  } {
    return {
      runtime: this.#runtime,
      bus: this.#bus,
      kv: this.#kv,
      logger: this.#logger,
      leaseMs: this.#leaseMs,
    };
  }

  /** @internal */
  forget(session: DeviceSession): void {
    this.#sessions.delete(session);
  }
}

/** One device connection and the twins it serves (itself, and a gateway's attached children). */
export class DeviceSession {
  /** Unique id of this session. */
  readonly id: string;
  /** When (performance.now() ms) its leases are next renewed; spread at random across sessions. */
  renewAt: number;
  /** The connected device. */
  readonly deviceId: string;
  /** Which of its keys it authenticated with, when the server checked one. */
  readonly keyId: string | undefined;
  #hub: SessionHub;
  #downlink: Downlink;
  #served = new Map<string, Served>();
  #closed = false;
  #onLapsed: ((deviceId: string) => void) | undefined;

  /** Use {@link SessionHub.open}. */
  constructor(
    hub: SessionHub,
    device: DeviceRecord,
    downlink: Downlink,
    options: SessionOpenOptions,
  ) {
    this.id = options.id ?? crypto.randomUUID();
    this.#onLapsed = options.onLapsed;
    this.keyId = options.keyId;
    this.renewAt = performance.now() + hub.renewMs * (0.5 + Math.random() / 2);
    this.#hub = hub;
    this.deviceId = device.id;
    this.#downlink = downlink;
  }

  /** The transport. */
  get transport(): Transport {
    return this.#downlink.transport;
  }

  /** Whether this session serves `deviceId` (itself or an attached child). */
  serves(deviceId: string): boolean {
    return this.#served.has(deviceId);
  }

  /**
   * Starts serving a device on this session: itself, or a gateway's child. One served already is
   * opened again at its twin (another process may have ended it there meanwhile).
   */
  async attach(device: DeviceRecord): Promise<void> {
    if (this.#closed) return;
    if (this.#served.has(device.id)) return await this.#reopen(this.#served.get(device.id)!);
    const { bus } = this.#hub.deps;
    const served: Served = {
      device,
      unsubscribe: () => {},
      inFlight: new Set(),
      desiredBusy: false,
      desiredDirty: false,
    };
    this.#served.set(device.id, served);
    // Listen before opening, so nothing committed in between is missed.
    served.unsubscribe = bus.subscribe(device.id, (notice) => this.#onNotice(served, notice));
    try {
      await this.#reopen(served);
    } catch (error) {
      served.unsubscribe();
      this.#served.delete(device.id);
      throw error;
    }
  }

  /**
   * Tells a served device's twin the session is open (again: a no-op for a twin that knew) and
   * pushes what waits for the device.
   */
  async #reopen(served: Served): Promise<void> {
    const { runtime, leaseMs } = this.#hub.deps;
    const opened = await runtime.send(served.device.id, {
      type: "session.open",
      sessionId: this.id,
      transport: this.transport,
      via: this.deviceId,
      leaseMs,
    }) as SessionOpened;
    this.#pushCommands(served, opened.commands);
    if (opened.desired) this.#pushDesired(served);
  }

  /** Stops serving a child (the gateway reported it offline, or it was disabled). */
  async detach(deviceId: string, reason: string): Promise<void> {
    const served = this.#served.get(deviceId);
    if (!served) return;
    served.unsubscribe();
    this.#served.delete(deviceId);
    await this.#hub.deps.runtime.send(deviceId, {
      type: "session.close",
      sessionId: this.id,
      reason,
    }).catch((error) => this.#log(deviceId, `Closing the session failed: ${error}`));
  }

  /** Pushes what is waiting for a device now that it listens (an MQTT subscription arrived). */
  async flush(deviceId: string): Promise<void> {
    const served = this.#served.get(deviceId);
    if (!served || this.#closed) return;
    const { runtime } = this.#hub.deps;
    const queued = await runtime.send(deviceId, { type: "command.peek" }) as CommandRecord[];
    this.#pushCommands(served, queued);
    this.#pushDesired(served);
  }

  /** Renews the leases of every twin this session serves. */
  renew(): void {
    const { runtime, leaseMs } = this.#hub.deps;
    for (const deviceId of this.#served.keys()) {
      runtime.send(deviceId, { type: "session.renew", sessionId: this.id, leaseMs })
        .then((answer) => {
          if ((answer as { renewed: boolean }).renewed || !this.#onLapsed) return;
          if (deviceId === this.deviceId) this.abandon();
          else {
            this.#served.get(deviceId)?.unsubscribe();
            this.#served.delete(deviceId);
          }
          this.#onLapsed(deviceId);
        })
        .catch((error) => this.#log(deviceId, `Renewing the session lease failed: ${error}`));
    }
  }

  /** Closes the connection from our side. */
  kick(reason: string): void {
    this.#downlink.kick(reason);
    this.close(reason).catch((error) => this.#log(this.deviceId, `Close failed: ${error}`));
  }

  /**
   * Stops serving without telling the twins: the connection lives on elsewhere (at an external
   * broker), so the session is left to its lease, which a process that takes it over (by its id)
   * renews, and which otherwise runs out.
   */
  abandon(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#hub.forget(this);
    for (const served of this.#served.values()) served.unsubscribe();
    this.#served.clear();
  }

  /** Ends the session: every served twin learns it is closed, with `reason`. */
  async close(reason: string): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#hub.forget(this);
    await Promise.all([...this.#served.keys()].map((id) => this.detach(id, reason)));
  }

  #onNotice(served: Served, notice: Notice): void {
    if (this.#closed) return;
    if (notice.type === "command.changed" && notice.command.status === "queued") {
      this.#pushCommands(served, [notice.command]);
    } else if (notice.type === "desired.changed") {
      this.#pushDesired(served);
    }
  }

  #pushCommands(served: Served, commands: CommandRecord[]): void {
    const id = served.device.id;
    if (!this.#downlink.ready(id, "commands")) return;
    const { runtime } = this.#hub.deps;
    for (const command of commands) {
      if (command.status !== "queued" || served.inFlight.has(command.id)) continue;
      served.inFlight.add(command.id);
      this.#downlink.pushCommand(id, command).then(async (acked) => {
        if (acked) await runtime.send(id, { type: "command.ack", commandId: command.id });
      }).catch((error) => this.#log(id, `Delivering command ${command.id} failed: ${error}`))
        .finally(() => served.inFlight.delete(command.id));
    }
  }

  /** Pushes desired changes since the device's last acknowledged version, one push at a time. */
  #pushDesired(served: Served): void {
    const id = served.device.id;
    if (!this.#downlink.ready(id, "desired")) return;
    if (served.desiredBusy) {
      served.desiredDirty = true;
      return;
    }
    served.desiredBusy = true;
    const { runtime, kv } = this.#hub.deps;
    (async () => {
      try {
        do {
          served.desiredDirty = false;
          const stored = await loadTwin(kv, id);
          if (this.#closed) return;
          // Nothing new in what was read does not end the loop: a change that committed after
          // the read marked the push dirty, and is sent on the next round.
          const update = stored && desiredSince(stored.state, stored.state.desiredAcked);
          if (update && await this.#downlink.pushDesired(id, update)) {
            await runtime.send(id, { type: "desired.ack", version: update.version });
          }
        } while (served.desiredDirty && !this.#closed);
      } finally {
        // In the same step as the last check of `desiredDirty`, so no change slips in between.
        served.desiredBusy = false;
      }
    })().catch((error) => this.#log(id, `Pushing desired state failed: ${error}`));
  }

  #log(deviceId: string, message: string): void {
    this.#hub.deps.logger.log("warn", "sessions", message, {
      deviceId,
      transport: this.transport,
    });
  }
}

/**
 * Why a session of `device` (as the registry has it now, `null` if deleted) that signed in with
 * key `keyId` may go on no longer, or `null` if it may.
 */
function endedBy(device: DeviceRecord | null, keyId: string | undefined): string | null {
  if (!device) return "deleted";
  if (!device.enabled) return "disabled";
  if (keyId && !device.keys.some((k) => k.sealed === keyId)) return "key revoked";
  return null;
}
