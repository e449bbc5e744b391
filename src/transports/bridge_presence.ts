/**
 * Presence in bridge mode. The external broker cannot tell Doppel who is connected, so devices
 * announce themselves on `devices/{id}/presence` (`online` on connect, `offline` as their will,
 * both retained), and gateways announce their children. This keeps the sessions those
 * announcements call for:
 * - A device's session has the same id in every process (`bridge:{id}`): a process started after
 *   another's end takes it over, and ends one the other left (until its lease would have).
 * - A child is served only through its gateway's session, so it goes offline with the gateway;
 *   announced while its gateway is not online here, it waits for the gateway.
 * - Announcements of one family (a gateway and its children) are applied one at a time, in order:
 *   they may come on several connections at once (a shared group gives every member each retained
 *   message when it subscribes).
 * @module
 */
import type { DeviceRecord, Registry } from "../registry/devices.ts";
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
  /** How the bridge reaches devices. */
  downlink: Downlink;
  /** How long a session outlives its process (the hub's lease, ms; default 90 s). */
  leaseMs?: number;
  /** Current time in ms. */
  now(): number;
}

/** The id of a device's bridge session, the same in every process. */
export function bridgeSessionId(deviceId: string): string {
  return `bridge:${deviceId}`;
}

/** The bridge's sessions, kept as devices announce themselves; see the module doc. */
export class BridgePresence {
  #deps: BridgePresenceDeps;
  // Sessions of gateways and of devices without a gateway, by device id.
  #sessions = new Map<string, DeviceSession>();
  // Children announced online while their gateway is not, by gateway id.
  #waiting = new Map<string, Map<string, DeviceRecord>>();
  // Devices whose offline this process has applied: repeats (each resubscription brings the
  // retained ones again) have nothing left to do.
  #gone = new Set<string>();
  #queues = new Map<string, Promise<void>>();
  // Until then a session an earlier process opened may still be alive (its lease).
  #earlierUntil: number;
  #closed = false;

  /** Starts with no sessions. */
  constructor(deps: BridgePresenceDeps) {
    this.#deps = deps;
    this.#earlierUntil = deps.now() + (deps.leaseMs ?? 90_000);
  }

  /** Applies `device`'s announcement, after any earlier one of its family. */
  announce(device: DeviceRecord, status: "online" | "offline"): Promise<void> {
    return this.#inOrder(
      device.parent ?? device.id,
      () => status === "online" ? this.#online(device) : this.#offline(device),
    );
  }

  /** `device` was disabled or deleted: its session ends, and it waits for no gateway. */
  ended(device: DeviceRecord, reason: string): Promise<void> {
    return this.#inOrder(device.parent ?? device.id, async () => {
      if (device.parent !== null) this.#waiting.get(device.parent)?.delete(device.id);
      this.#waiting.delete(device.id);
      const own = this.#sessions.get(device.id);
      this.#sessions.delete(device.id);
      await own?.close(reason);
    });
  }

  /**
   * Once the announcements under way are applied, leaves every session to its lease: the devices
   * stay connected to the broker, and the next process takes the sessions over.
   */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#queues.values());
    for (const session of this.#sessions.values()) session.abandon();
    this.#sessions.clear();
    this.#waiting.clear();
  }

  async #online(device: DeviceRecord): Promise<void> {
    this.#gone.delete(device.id);
    if (device.parent !== null) {
      const gateway = this.#sessions.get(device.parent);
      if (gateway) return await gateway.attach(device);
      const waiting = this.#waiting.get(device.parent) ?? new Map<string, DeviceRecord>();
      this.#waiting.set(device.parent, waiting.set(device.id, device));
      return;
    }
    if (this.#sessions.has(device.id)) return;
    const session: DeviceSession = await this.#deps.sessions.open(device, this.#deps.downlink, {
      id: bridgeSessionId(device.id),
      // Ended elsewhere (another instance applied an offline): the next online opens it again.
      onLapsed: () => {
        if (this.#sessions.get(device.id) === session) this.#sessions.delete(device.id);
      },
    });
    this.#sessions.set(device.id, session);
    const children = this.#waiting.get(device.id);
    this.#waiting.delete(device.id);
    for (const child of children?.values() ?? []) await session.attach(child);
  }

  async #offline(device: DeviceRecord): Promise<void> {
    if (device.parent !== null) {
      this.#waiting.get(device.parent)?.delete(device.id);
      const gateway = this.#sessions.get(device.parent);
      if (gateway?.serves(device.id)) return await gateway.detach(device.id, "disconnect");
      return await this.#endEarlier(device.id, device.parent, []);
    }
    this.#waiting.delete(device.id);
    const own = this.#sessions.get(device.id);
    if (own) {
      this.#sessions.delete(device.id);
      this.#gone.add(device.id);
      return await own.close("disconnect"); // Its children's sessions go with it.
    }
    await this.#endEarlier(device.id, device.id, await this.#childIdsIfEarly(device.id));
  }

  /**
   * Ends the session an earlier process held for `deviceId` (as `holder`'s session), and for
   * the children it served, if one may still be alive; once per device.
   */
  async #endEarlier(deviceId: string, holder: string, children: string[]): Promise<void> {
    if (this.#deps.now() >= this.#earlierUntil || this.#gone.has(deviceId)) return;
    this.#gone.add(deviceId);
    const sessionId = bridgeSessionId(holder);
    for (const id of [deviceId, ...children]) {
      await this.#deps.runtime.send(id, { type: "session.close", sessionId, reason: "disconnect" });
    }
  }

  async #childIdsIfEarly(deviceId: string): Promise<string[]> {
    if (this.#deps.now() >= this.#earlierUntil || this.#gone.has(deviceId)) return [];
    return await this.#deps.registry.childIds(deviceId);
  }

  /** Runs `work` after the family's earlier work; what it throws goes to the caller. */
  #inOrder(family: string, work: () => Promise<void>): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const run = (this.#queues.get(family) ?? Promise.resolve()).then(work);
    const settled = run.catch(() => {});
    this.#queues.set(family, settled);
    settled.then(() => {
      if (this.#queues.get(family) === settled) this.#queues.delete(family);
    });
    return run;
  }
}
