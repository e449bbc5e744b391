/**
 * The in-process event bus: committed changes fan out from here to whoever waits on them (long
 * polls, `?wait=` calls, live streams). Only what has committed is ever published.
 * @module
 */
import type { Notice } from "../twin/turn.ts";

/** A listener for the notices of one device, or of all devices. */
export type Listener = (notice: Notice) => void;

/** Publishes committed notices to subscribers by device id. */
export class EventBus {
  #byDevice = new Map<string, Set<Listener>>();
  #all = new Set<Listener>();

  /** Subscribes to one device's notices (or every device's with `"*"`); returns the unsubscribe. */
  subscribe(deviceId: string, listener: Listener): () => void {
    if (deviceId === "*") {
      this.#all.add(listener);
      return () => this.#all.delete(listener);
    }
    let set = this.#byDevice.get(deviceId);
    if (!set) this.#byDevice.set(deviceId, set = new Set());
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.#byDevice.delete(deviceId);
    };
  }

  /** Delivers a notice to its device's subscribers and to the catch-all ones. */
  publish(notice: Notice): void {
    const deviceId = "deviceId" in notice ? notice.deviceId : notice.command.deviceId;
    for (const listener of this.#byDevice.get(deviceId) ?? []) listener(notice);
    for (const listener of this.#all) listener(notice);
  }

  /**
   * Resolves with the first notice for `deviceId` that `match` accepts, or `undefined` after
   * `ms` milliseconds or when `signal` aborts.
   */
  waitFor<T>(
    deviceId: string,
    match: (notice: Notice) => T | undefined,
    ms: number,
    signal?: AbortSignal,
  ): Promise<T | undefined> {
    return new Promise((resolve) => {
      if (signal?.aborted || ms <= 0) return resolve(undefined);
      const done = (value: T | undefined) => {
        clearTimeout(timer);
        unsubscribe();
        signal?.removeEventListener("abort", onAbort);
        resolve(value);
      };
      const onAbort = () => done(undefined);
      const timer = setTimeout(() => done(undefined), ms);
      const unsubscribe = this.subscribe(deviceId, (notice) => {
        const value = match(notice);
        if (value !== undefined) done(value);
      });
      signal?.addEventListener("abort", onAbort);
    });
  }
}
