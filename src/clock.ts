/**
 * Time as a dependency, so timers, TTLs and timestamps are testable without sleeping.
 * @module
 */

/** A source of the current time in milliseconds since the epoch. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
}

/** The wall clock. */
export const systemClock: Clock = { now: () => Date.now() };

/** A clock tests move by hand. */
export class ManualClock implements Clock {
  #now: number;

  /** Starts at `start` (ms since the epoch). */
  constructor(start = Date.parse("2026-11-26T10:00:00.000Z")) {
    this.#now = start;
  }

  /** The current manual time. */
  now(): number {
    return this.#now;
  }

  /** Moves time forward by `ms`. */
  advance(ms: number): void {
    this.#now += ms;
  }
}
