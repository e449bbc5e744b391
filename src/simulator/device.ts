/**
 * One simulated device: a {@link DeviceBehaviour} (what it measures and how it obeys) driven over
 * a {@link Link} (how it talks). It sends telemetry at its rate, reports its state on every
 * connect, answers every command and reports desired changes back, counting all of it in
 * {@link Stats}. It never throws on a server error: the error is counted and the device goes on.
 * @module
 */
import type { DeviceBehaviour, JsonObject } from "./behaviour.ts";
import { type Link, LinkError, type PushedCommand } from "./links.ts";
import type { Stats } from "./stats.ts";

/** How a device paces itself. */
export interface DeviceOptions {
  /** Telemetry messages per second (may be fractional). */
  rate: number;
  /** The clock (epoch ms). */
  now: () => number;
  /** Randomness, for the first send's offset. */
  random: () => number;
  /** At most this many telemetry messages unacknowledged at once; ticks beyond are skipped. */
  maxInFlight?: number;
}

/** How many answered command ids a device remembers, to answer a redelivery only once. */
const REMEMBERED_COMMANDS = 256;

/** A simulated device. */
export class SimDevice {
  /** Its id. */
  readonly id: string;
  readonly #link: Link;
  readonly #behaviour: DeviceBehaviour;
  readonly #stats: Stats;
  readonly #periodMs: number;
  readonly #maxInFlight: number;
  readonly #now: () => number;
  readonly #random: () => number;
  /** Everything under way (telemetry, reports, answers), for a clean stop. */
  readonly #pending = new Set<Promise<void>>();
  #telemetryInFlight = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #nextAt = 0;
  #sending = false;
  #connects = 0;
  readonly #answered = new Set<string>();
  /** Reports go out one after another, so the last one the server applies is the newest. */
  #reports: Promise<void> = Promise.resolve();

  constructor(
    id: string,
    link: Link,
    behaviour: DeviceBehaviour,
    stats: Stats,
    options: DeviceOptions,
  ) {
    this.id = id;
    this.#link = link;
    this.#behaviour = behaviour;
    this.#stats = stats;
    this.#periodMs = 1000 / options.rate;
    this.#maxInFlight = options.maxInFlight ?? Math.max(8, Math.ceil(options.rate * 10));
    this.#now = options.now;
    this.#random = options.random;
  }

  /** Whether its link is up. */
  get connected(): boolean {
    return this.#link.connected;
  }

  /** Telemetry messages sent and not yet acknowledged or failed. */
  get inFlight(): number {
    return this.#telemetryInFlight;
  }

  /** Connects; sending starts once connected, at a random point of the first period. */
  start(): void {
    this.#link.start({
      connected: () => this.#onConnected(),
      disconnected: () => {},
      command: (command) => this.#onCommand(command),
      desired: (patch, full) => this.#onDesired(patch, full),
      error: (error) => this.#stats.error(error.kind),
    });
    this.#sending = true;
  }

  /** Stops sending telemetry (commands are still answered until {@link close}). */
  stopSending(): void {
    this.#sending = false;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Waits until everything under way has settled, or `ms` passed. */
  async drain(ms: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<void>((resolve) => timer = setTimeout(resolve, ms));
    const settled = (async () => {
      while (this.#pending.size > 0) await Promise.allSettled([...this.#pending]);
    })();
    await Promise.race([settled, deadline]);
    clearTimeout(timer);
  }

  /** Stops sending and closes the link cleanly. */
  async close(): Promise<void> {
    this.stopSending();
    await this.#link.close();
  }

  #schedule(): void {
    if (!this.#sending) return;
    const now = this.#now();
    // Catch up at most one period: a stalled process does not burst afterwards.
    if (this.#nextAt < now - this.#periodMs) this.#nextAt = now;
    this.#timer = setTimeout(() => this.#tick(), Math.max(0, this.#nextAt - now));
  }

  #tick(): void {
    this.#timer = undefined;
    if (!this.#sending) return;
    this.#nextAt += this.#periodMs;
    this.#schedule();
    if (!this.#link.connected || this.#telemetryInFlight >= this.#maxInFlight) {
      this.#stats.skipped++;
      return;
    }
    const item = this.#behaviour.reading(this.#now());
    this.#stats.sent++;
    this.#telemetryInFlight++;
    this.#track(
      this.#link.telemetry(item).then(
        () => {
          this.#stats.acknowledged++;
        },
        (error) => this.#count(error),
      ).finally(() => this.#telemetryInFlight--),
    );
  }

  #onConnected(): void {
    this.#connects++;
    if (this.#connects > 1) this.#stats.reconnects++;
    else if (this.#sending) {
      // Pacing starts with the first connection, at a random point of the first period.
      this.#nextAt = this.#now() + this.#random() * Math.min(this.#periodMs, 1000);
      this.#schedule();
    }
    this.#report(this.#behaviour.initialReported());
  }

  #onCommand(command: PushedCommand): void {
    this.#stats.commandsReceived++;
    if (this.#answered.has(command.id)) return;
    this.#answered.add(command.id);
    if (this.#answered.size > REMEMBERED_COMMANDS) {
      this.#answered.delete(this.#answered.values().next().value!);
    }
    const outcome = this.#behaviour.command(command.name, command.payload, this.#now());
    this.#track(
      this.#link.answer(command.id, outcome.status, outcome.result).then(
        () => {
          this.#stats.commandsAnswered++;
          // A rebooted device announces itself again.
          if (command.name === "reboot") this.#report(this.#behaviour.initialReported());
        },
        (error) => this.#count(error),
      ),
    );
  }

  #onDesired(patch: JsonObject, full: boolean): void {
    const reported = this.#behaviour.desired(patch, full);
    this.#stats.desiredApplied++;
    if (Object.keys(reported).length > 0) this.#report(reported);
  }

  #report(patch: JsonObject): void {
    const next = this.#reports.then(() => this.#link.report(patch)).catch((error) =>
      this.#count(error)
    );
    this.#reports = next;
    this.#track(next);
  }

  #track(promise: Promise<void>): void {
    this.#pending.add(promise);
    const done = () => void this.#pending.delete(promise);
    promise.then(done, done);
  }

  #count(error: unknown): void {
    this.#stats.error(error instanceof LinkError ? error.kind : "unexpected");
  }
}
