/**
 * Plausible readings for simulated devices. A thermostat's room temperature wanders around its
 * target (an Ornstein–Uhlenbeck process: pulled back to the target, pushed by noise), humidity
 * wanders between 35 and 50 %, and now and then the room overheats above 31 °C for about 45 s —
 * long enough for Doppel's overheat rule (above 30 °C for 30 s) to trip. Told to cool, the room
 * heads back to the target. Time and randomness are passed in, so runs can be replayed.
 * @module
 */

/** A source of uniform random numbers in [0, 1). */
export type Random = () => number;

/** A standard normal sample (Box–Muller). */
export function gaussian(random: Random): number {
  const u = Math.max(random(), Number.MIN_VALUE);
  const v = random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** A seeded generator (mulberry32), for reproducible runs and tests. */
export function seededRandom(seed: number): Random {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Thermostat operating modes, as the `thermostat` kind names them. */
export type ThermostatMode = "heat" | "cool" | "auto" | "off";

/** One thermostat reading. */
export interface ThermostatReading {
  /** °C, two decimals. */
  temperature: number;
  /** Relative humidity in %, one decimal. */
  humidity: number;
}

/** How a {@link ThermostatPhysics} behaves; every field has a default. */
export interface ThermostatSettings {
  /** Chance per minute that the room starts overheating (default 0.05). */
  excursionRate?: number;
  /** How long an overheating lasts, in seconds (default 45). */
  excursionSeconds?: number;
  /** The target the device starts with (default: uniform in 21–23 °C). */
  targetTemperature?: number;
}

/** Time constants (seconds) of the room. */
const DRIFT_TAU = 120;
const DRIFT_SIGMA = 0.6;
const HUMIDITY_TAU = 300;
const HUMIDITY_SIGMA = 3;
const HEAT_UP_TAU = 3;
const COOL_DOWN_TAU = 15;
const SENSOR_NOISE = 0.05;
const AMBIENT = 25;
/** How long a cooled room stays calm (ms). */
export const CALM_MS = 120_000;

/**
 * A simulated room with a thermostat: call {@link sample} for each reading (at any spacing), and
 * {@link cool}, {@link setTarget}, {@link setMode} when the cloud says so.
 */
export class ThermostatPhysics {
  /** The target temperature the device holds. */
  targetTemperature: number;
  /** The operating mode. */
  mode: ThermostatMode = "auto";
  /** Above this the device considers itself too hot (reported as `maxTemperature`). */
  maxTemperature = 30;

  readonly #random: Random;
  readonly #excursionRate: number;
  readonly #excursionMs: number;
  /** The room's true temperature, before sensor noise. */
  #room: number;
  /** Slow wander of the room around the target. */
  #offset = 0;
  #humidity: number;
  #humidityBase: number;
  #lastAt: number | undefined;
  /** While overheating: when it ends, and how hot it gets. */
  #excursion: { until: number; peak: number } | undefined;
  /** After a `cool` command, no new overheating starts before this time (epoch ms). */
  #calmUntil = 0;
  /** Where a `cool` command sends the room while calm. */
  #coolTarget = 0;

  constructor(random: Random, settings: ThermostatSettings = {}) {
    this.#random = random;
    this.#excursionRate = settings.excursionRate ?? 0.05;
    this.#excursionMs = (settings.excursionSeconds ?? 45) * 1000;
    this.targetTemperature = settings.targetTemperature ?? round(21 + 2 * random(), 1);
    this.#room = this.targetTemperature + gaussian(random) * 0.3;
    this.#humidityBase = 38 + 9 * random();
    this.#humidity = this.#humidityBase;
  }

  /** The room's temperature as of the last sample (°C, two decimals). */
  get temperature(): number {
    return round(this.#room, 2);
  }

  /** Whether the room is overheating now. */
  get overheating(): boolean {
    return this.#excursion !== undefined;
  }

  /** The reading at time `now` (epoch ms), advancing the room since the previous one. */
  sample(now: number): ThermostatReading {
    const dt = this.#lastAt === undefined ? 1 : Math.max(0, (now - this.#lastAt) / 1000);
    this.#lastAt = now;
    const random = this.#random;

    if (this.#excursion && now >= this.#excursion.until) this.#excursion = undefined;
    if (
      !this.#excursion && this.#excursionRate > 0 && this.mode !== "off" && now >= this.#calmUntil
    ) {
      const chance = 1 - Math.pow(1 - this.#excursionRate, dt / 60);
      if (random() < chance) this.#startExcursion(now);
    }

    // The slow wander: mean-reverting noise, exact for any step dt.
    const keep = Math.exp(-dt / DRIFT_TAU);
    this.#offset = this.#offset * keep +
      DRIFT_SIGMA * Math.sqrt(1 - keep * keep) * gaussian(random);

    const goal = this.#excursion
      ? this.#excursion.peak
      : now < this.#calmUntil
      ? this.#coolTarget + this.#offset
      : this.mode === "off"
      ? AMBIENT + this.#offset
      : this.targetTemperature + this.#offset;
    const tau = this.#excursion ? HEAT_UP_TAU : this.#room > goal + 1 ? COOL_DOWN_TAU : 30;
    this.#room = goal + (this.#room - goal) * Math.exp(-dt / tau);

    const hKeep = Math.exp(-dt / HUMIDITY_TAU);
    const hGoal = this.#humidityBase - (this.#room - this.targetTemperature) * 0.8;
    this.#humidity = hGoal + (this.#humidity - hGoal) * hKeep +
      HUMIDITY_SIGMA * Math.sqrt(1 - hKeep * hKeep) * gaussian(random);
    this.#humidity = Math.min(50, Math.max(35, this.#humidity));

    return {
      temperature: round(this.#room + SENSOR_NOISE * gaussian(random), 2),
      humidity: round(this.#humidity, 1),
    };
  }

  /** Makes the room overheat from now on (as a random excursion would). */
  overheat(now: number): void {
    this.#startExcursion(now);
  }

  /**
   * Cools towards `target` from time `now`: any overheating ends, the room heads down to
   * `target` and stays there for {@link CALM_MS}, with no new overheating meanwhile; then it
   * returns to following {@link targetTemperature} (which a `cool` does not change).
   */
  cool(target: number, now: number): void {
    this.#excursion = undefined;
    this.#calmUntil = now + CALM_MS;
    this.#coolTarget = target;
  }

  /** A new target temperature. */
  setTarget(target: number): void {
    this.targetTemperature = target;
  }

  /** A new operating mode. */
  setMode(mode: ThermostatMode): void {
    this.mode = mode;
  }

  /** Restarts the device: the room is unchanged, an overheating is not. */
  reboot(): void {
    this.#excursion = undefined;
  }

  #startExcursion(now: number): void {
    // Peak 32–34 °C: above 31 °C within seconds, and well above the rule's 30 °C.
    this.#excursion = { until: now + this.#excursionMs, peak: 32 + 2 * this.#random() };
  }
}

/** A generic device's reading: a value on a slow sine with noise, and a counter. */
export class GenericSignal {
  readonly #random: Random;
  readonly #phase: number;
  #count = 0;

  constructor(random: Random) {
    this.#random = random;
    this.#phase = random() * 2 * Math.PI;
  }

  /** The reading at time `now` (epoch ms). */
  sample(now: number): { value: number; count: number } {
    this.#count++;
    const value = 50 + 20 * Math.sin(now / 60_000 * 2 * Math.PI + this.#phase) +
      2 * gaussian(this.#random);
    return { value: round(value, 2), count: this.#count };
  }
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
