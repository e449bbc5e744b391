/**
 * The simulator's counters, its live progress line and its final summary (text or JSON).
 * @module
 */

/** Whole-run figures, as `--json` prints them. */
export interface Summary {
  /** The protocol the devices spoke. */
  protocol: string;
  /** Their twin kind. */
  kind: string;
  /** How many devices were simulated. */
  devices: number;
  /** Devices registered by this run. */
  registered: number;
  /** Devices whose remembered key still worked. */
  reused: number;
  /** Devices that existed with no usable key here and got a new one. */
  rotated: number;
  /** Seconds spent streaming. */
  seconds: number;
  /** Telemetry messages sent. */
  sent: number;
  /** Telemetry messages the server acknowledged as durable. */
  acknowledged: number;
  /** Sent but neither acknowledged nor failed when the run ended. */
  unacknowledged: number;
  /** Ticks skipped because the device was not connected or too much was in flight. */
  skipped: number;
  /** Acknowledged messages per second over the run. */
  meanRate: number;
  /** Errors in all. */
  errorCount: number;
  /** Errors by kind (`http 503`, `timeout`, `connection lost`, …). */
  errors: Record<string, number>;
  /** Commands received. */
  commandsReceived: number;
  /** Commands answered (the server took the result). */
  commandsAnswered: number;
  /** Desired changes applied and reported back. */
  desiredApplied: number;
  /** Connections (re)established after the first one of each device. */
  reconnects: number;
}

/** Counters of one run; every device adds to the same instance. */
export class Stats {
  /** Telemetry messages sent. */
  sent = 0;
  /** Telemetry messages acknowledged. */
  acknowledged = 0;
  /** Ticks skipped (device offline, or its window of in-flight messages full). */
  skipped = 0;
  /** Commands received. */
  commandsReceived = 0;
  /** Commands answered. */
  commandsAnswered = 0;
  /** Desired changes applied. */
  desiredApplied = 0;
  /** Reconnections. */
  reconnects = 0;
  /** Devices registered, reused and rotated while preparing the fleet. */
  registered = 0;
  /** See {@link registered}. */
  reused = 0;
  /** See {@link registered}. */
  rotated = 0;
  /** Errors by kind. */
  readonly errors: Map<string, number> = new Map();

  readonly #now: () => number;
  /** When streaming started (epoch ms), once it has. */
  #startedAt: number | undefined;
  #endedAt: number | undefined;
  /** Recent (time, acknowledged) samples for the current rate. */
  #samples: Array<[number, number]> = [];

  constructor(now: () => number) {
    this.#now = now;
  }

  /** Counts one error of `kind`. */
  error(kind: string): void {
    this.errors.set(kind, (this.errors.get(kind) ?? 0) + 1);
  }

  /** Errors in all. */
  get errorCount(): number {
    let total = 0;
    for (const n of this.errors.values()) total += n;
    return total;
  }

  /** Marks the start of streaming. */
  start(): void {
    this.#startedAt = this.#now();
    this.#samples = [[this.#startedAt, this.acknowledged]];
  }

  /** Marks its end. */
  end(): void {
    this.#endedAt ??= this.#now();
  }

  /** Seconds streamed so far (or in all, once ended). */
  get seconds(): number {
    if (this.#startedAt === undefined) return 0;
    return ((this.#endedAt ?? this.#now()) - this.#startedAt) / 1000;
  }

  /** Acknowledged messages per second over the last few seconds; call about once a second. */
  currentRate(): number {
    const now = this.#now();
    this.#samples.push([now, this.acknowledged]);
    while (this.#samples.length > 2 && now - this.#samples[1][0] >= 5_000) this.#samples.shift();
    const [t0, a0] = this.#samples[0];
    const span = (now - t0) / 1000;
    return span > 0 ? (this.acknowledged - a0) / span : 0;
  }

  /** The live progress line (no newline). */
  progressLine(connected: number, devices: number): string {
    const errors = this.errorCount;
    return [
      `${formatSeconds(this.seconds)}`,
      `connected ${connected}/${devices}`,
      `sent ${this.sent}`,
      `acked ${this.acknowledged}`,
      `${this.currentRate().toFixed(1)} msg/s`,
      `commands ${this.commandsAnswered}`,
      `errors ${errors}${errors ? ` (${topErrors(this.errors, 2)})` : ""}`,
    ].join(" | ");
  }

  /** The whole-run figures; `unacknowledged` is what was still in flight at the end. */
  summary(
    meta: { protocol: string; kind: string; devices: number },
    unacknowledged: number,
  ): Summary {
    const seconds = this.seconds;
    return {
      ...meta,
      registered: this.registered,
      reused: this.reused,
      rotated: this.rotated,
      seconds: Math.round(seconds * 1000) / 1000,
      sent: this.sent,
      acknowledged: this.acknowledged,
      unacknowledged,
      skipped: this.skipped,
      meanRate: seconds > 0 ? Math.round((this.acknowledged / seconds) * 100) / 100 : 0,
      errorCount: this.errorCount,
      errors: Object.fromEntries([...this.errors].sort((a, b) => b[1] - a[1])),
      commandsReceived: this.commandsReceived,
      commandsAnswered: this.commandsAnswered,
      desiredApplied: this.desiredApplied,
      reconnects: this.reconnects,
    };
  }
}

/** The summary as text, a few aligned lines. */
export function formatSummary(s: Summary): string {
  const errors = s.errorCount === 0
    ? "none"
    : `${s.errorCount} (${Object.entries(s.errors).map(([k, n]) => `${k}: ${n}`).join(", ")})`;
  const lines = [
    `Simulated ${s.devices} ${s.kind} device${s.devices === 1 ? "" : "s"} over ${s.protocol} for ${
      s.seconds.toFixed(1)
    } s.`,
    `  devices       registered ${s.registered}, reused ${s.reused}, keys rotated ${s.rotated}`,
    `  telemetry     sent ${s.sent}, acknowledged ${s.acknowledged}, unacknowledged ${s.unacknowledged}, skipped ${s.skipped}`,
    `  mean rate     ${s.meanRate.toFixed(2)} msg/s`,
    `  commands      answered ${s.commandsAnswered} of ${s.commandsReceived} received; desired changes applied ${s.desiredApplied}`,
    `  reconnects    ${s.reconnects}`,
    `  errors        ${errors}`,
  ];
  return lines.join("\n");
}

function topErrors(errors: Map<string, number>, n: number): string {
  return [...errors].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, c]) => `${k}: ${c}`).join(
    ", ",
  );
}

function formatSeconds(seconds: number): string {
  const s = Math.floor(seconds);
  const m = Math.floor(s / 60);
  const h = Math.floor(m / 60);
  const pad = (x: number) => String(x).padStart(2, "0");
  return `${h}:${pad(m % 60)}:${pad(s % 60)}`;
}
