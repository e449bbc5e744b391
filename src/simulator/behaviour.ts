/**
 * What a simulated device does, whatever it speaks: the readings it sends, the state it reports,
 * how it answers commands and how it takes desired changes. One {@link DeviceBehaviour} per
 * device; `thermostat` is backed by {@link ThermostatPhysics}, `generic` by a simple signal.
 * @module
 */
import type { SimKind } from "./options.ts";
import { GenericSignal, type Random, type ThermostatMode, ThermostatPhysics } from "./physics.ts";

/** A JSON object. */
export type JsonObject = Record<string, unknown>;

/** The firmware version simulated devices report. */
export const SIM_FIRMWARE = "sim-1.0.0";

/** How a device answers a command. */
export interface CommandOutcome {
  /** `succeeded` or `failed`. */
  status: "succeeded" | "failed";
  /** What the device returns with it. */
  result: JsonObject;
}

/** One simulated device's behaviour, independent of its protocol. */
export interface DeviceBehaviour {
  /** The next telemetry item at time `now` (epoch ms); carries `ts`. */
  reading(now: number): JsonObject;
  /** What the device reports when it connects. */
  initialReported(): JsonObject;
  /** Carries out a command; `now` is epoch ms. */
  command(name: string, payload: unknown, now: number): CommandOutcome;
  /**
   * Takes a desired merge patch (or, with `full`, the whole desired document) and returns the
   * reported patch that acknowledges it (empty when there is nothing to report).
   */
  desired(patch: JsonObject, full: boolean): JsonObject;
}

/** Options shared by behaviours. */
export interface BehaviourOptions {
  /** Randomness (one stream per device is fine, or shared). */
  random: Random;
  /** Chance per minute of a thermostat overheating. */
  excursionRate: number;
}

/** A behaviour of `kind`. */
export function createBehaviour(kind: SimKind, options: BehaviourOptions): DeviceBehaviour {
  return kind === "thermostat" ? new ThermostatBehaviour(options) : new GenericBehaviour(options);
}

const MODES: readonly ThermostatMode[] = ["heat", "cool", "auto", "off"];

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A thermostat as the `thermostat` twin kind describes it. */
export class ThermostatBehaviour implements DeviceBehaviour {
  /** The simulated room. */
  readonly physics: ThermostatPhysics;
  #boots = 1;

  constructor(options: BehaviourOptions) {
    this.physics = new ThermostatPhysics(options.random, { excursionRate: options.excursionRate });
  }

  reading(now: number): JsonObject {
    return { ts: now, ...this.physics.sample(now) };
  }

  initialReported(): JsonObject {
    return {
      firmware: SIM_FIRMWARE,
      mode: this.physics.mode,
      targetTemperature: this.physics.targetTemperature,
    };
  }

  command(name: string, payload: unknown, now: number): CommandOutcome {
    const args = isObject(payload) ? payload : {};
    if (name === "cool") {
      const target = typeof args.targetTemperature === "number"
        ? args.targetTemperature
        : this.physics.targetTemperature;
      const from = this.physics.temperature;
      this.physics.cool(target, now);
      return { status: "succeeded", result: { cooling: true, from, targetTemperature: target } };
    }
    if (name === "reboot") {
      this.physics.reboot();
      this.#boots++;
      const delaySeconds = typeof args.delaySeconds === "number" ? args.delaySeconds : 0;
      return {
        status: "succeeded",
        result: { rebooted: true, delaySeconds, boots: this.#boots, firmware: SIM_FIRMWARE },
      };
    }
    // The kind refuses other commands before they get here; answer anyway.
    return { status: "succeeded", result: { ignored: name } };
  }

  desired(patch: JsonObject, _full: boolean): JsonObject {
    const reported: JsonObject = {};
    const target = patch.targetTemperature;
    if (typeof target === "number") {
      this.physics.setTarget(target);
      reported.targetTemperature = target;
    }
    const max = patch.maxTemperature;
    if (typeof max === "number") {
      this.physics.maxTemperature = max;
      reported.maxTemperature = max;
    }
    const mode = patch.mode;
    if (typeof mode === "string" && (MODES as readonly string[]).includes(mode)) {
      this.physics.setMode(mode as ThermostatMode);
      reported.mode = mode;
    }
    return reported;
  }
}

/** Any device: a simple signal, every command succeeds, desired is echoed as reported. */
export class GenericBehaviour implements DeviceBehaviour {
  readonly #signal: GenericSignal;

  constructor(options: BehaviourOptions) {
    this.#signal = new GenericSignal(options.random);
  }

  reading(now: number): JsonObject {
    return { ts: now, ...this.#signal.sample(now) };
  }

  initialReported(): JsonObject {
    return { firmware: SIM_FIRMWARE, simulated: true };
  }

  command(name: string, payload: unknown, _now: number): CommandOutcome {
    return { status: "succeeded", result: { done: name, payload: payload ?? null } };
  }

  desired(patch: JsonObject, _full: boolean): JsonObject {
    return { ...patch };
  }
}
