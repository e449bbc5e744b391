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
  // Listener lists are replaced, never changed in place, on (un)subscribe: publishing — once or
  // more per message — walks a plain array, and a listener that unsubscribes while being told
  // does not disturb the walk.
  #byDevice = new Map<string, Listener[]>();
  #all: Listener[] = [];
  #onError: (error: unknown, notice: Notice) => void;

  /**
   * A bus that tells `onError` when a listener throws: the other listeners are still told, and
   * the publisher (a twin's committed turn) never sees the error.
   */
  constructor(onError: (error: unknown, notice: Notice) => void) {
    this.#onError = onError;
  }

  /** Subscribes to one device's notices (or every device's with `"*"`); returns the unsubscribe. */
  subscribe(deviceId: string, listener: Listener): () => void {
    if (deviceId === "*") {
      this.#all = [...this.#all, listener];
      return () => {
        this.#all = without(this.#all, listener);
      };
    }
    this.#byDevice.set(deviceId, [...(this.#byDevice.get(deviceId) ?? []), listener]);
    return () => {
      const left = without(this.#byDevice.get(deviceId) ?? [], listener);
      if (left.length > 0) this.#byDevice.set(deviceId, left);
      else this.#byDevice.delete(deviceId);
    };
  }

  /** Delivers a notice to its device's subscribers and to the catch-all ones. */
  publish(notice: Notice): void {
    const deviceId = "deviceId" in notice ? notice.deviceId : notice.command.deviceId;
    const device = this.#byDevice.get(deviceId) ?? NONE;
    for (let i = 0; i < device.length; i++) this.#tell(device[i], notice);
    const all = this.#all;
    for (let i = 0; i < all.length; i++) this.#tell(all[i], notice);
  }

  #tell(listener: Listener, notice: Notice): void {
    try {
      listener(notice);
    } catch (error) {
      this.#onError(error, notice);
    }
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

const NONE: readonly Listener[] = [];

/** A copy of `list` without one occurrence of `listener` (a listener may be subscribed twice). */
function without(list: Listener[], listener: Listener): Listener[] {
  const i = list.indexOf(listener);
  return i < 0 ? list : [...list.slice(0, i), ...list.slice(i + 1)];
}
