/**
 * Declarative rules for twin kinds: threshold (with duration and hysteresis), rate of change,
 * no data for a while, and an online anomaly detector (EWMA z-score). Each fires into actions:
 * raise or clear an alarm, send a command, patch desired. Rules are data plus pure evaluation
 * over a small persisted state, so they run inside the twin's turn and commit with it.
 * @module
 */
import { parseDuration } from "../telemetry/history.ts";
import type { JsonObject } from "../twin/json.ts";
import type { Json } from "../twin/json.ts";
import { SEVERITIES, type Severity } from "./alarms.ts";

/** Something a rule does when it fires or clears. */
export type Action =
  | { command: string; payload?: Json; ttl?: number; timeout?: number }
  | { desired: JsonObject };

/** The alarm a rule raises while it fires (and clears when it stops). */
export interface AlarmSpec {
  /** Alarm type; defaults to the rule's name. */
  type?: string;
  /** Severity. */
  severity: Severity;
  /** A sentence for people. */
  message?: string;
}

interface RuleBase {
  /** Unique within the kind; names the rule's state and, by default, its alarm type. */
  name: string;
  /** Alarm raised while the rule fires. */
  alarm?: AlarmSpec;
  /** Actions when it starts firing. */
  onRaise?: Action[];
  /** Actions when it stops. */
  onClear?: Action[];
}

/** Fires when a metric stays beyond a bound for a duration; clears past a second bound. */
export interface ThresholdRule extends RuleBase {
  /** Rule kind. */
  rule: "threshold";
  /** The telemetry field. */
  metric: string;
  /** Fires above this… */
  above?: number;
  /** …or below this. */
  below?: number;
  /** For at least this long (ms), measured between readings (0: at once). */
  forMs: number;
  /** Clears once back below this (when firing on `above`; default: `above`). */
  clearBelow?: number;
  /** Clears once back above this (when firing on `below`; default: `below`). */
  clearAbove?: number;
  /** For at least this long (ms). */
  clearForMs: number;
}

/** Fires when a metric changes faster than a rate per minute. */
export interface RateRule extends RuleBase {
  /** Rule kind. */
  rule: "rate";
  /** The telemetry field. */
  metric: string;
  /** Fires when it rises faster than this per minute… */
  risingPerMinute?: number;
  /** …or falls faster than this per minute (a positive number). */
  fallingPerMinute?: number;
}

/** Fires when no telemetry (or none with `metric`) has come for a while; clears on the next. */
export interface NoDataRule extends RuleBase {
  /** Rule kind. */
  rule: "no_data";
  /** Only readings with this field count (default: any telemetry). */
  metric?: string;
  /** Silence that fires it (ms). */
  forMs: number;
}

/** Fires when a reading is more than `z` standard deviations from the EWMA of the metric. */
export interface AnomalyRule extends RuleBase {
  /** Rule kind. */
  rule: "anomaly";
  /** The telemetry field. */
  metric: string;
  /** Fire at this z-score. */
  z: number;
  /** Clear below this z-score. */
  clearZ: number;
  /** EWMA smoothing (0 < alpha ≤ 1). */
  alpha: number;
  /** Readings to learn from before judging. */
  warmup: number;
  /**
   * The least standard deviation a reading is judged against, in the metric's units (its noise
   * floor). With 0, readings after a perfectly flat baseline are never judged (any change would
   * be infinitely many deviations away).
   */
  minStd: number;
}

/** A rule. */
export type Rule = ThresholdRule | RateRule | NoDataRule | AnomalyRule;

/** What a rule remembers between turns. */
export interface RuleState {
  /** Whether it is firing. */
  active: boolean;
  /** Threshold: since when the condition (or the clear condition) has held. */
  since?: number | null;
  /** Rate and no-data: the last reading's time and value. */
  lastTs?: number;
  /** Rate: the last value. */
  lastValue?: number;
  /** Anomaly: readings seen, mean and variance. */
  n?: number;
  /** Anomaly: EWMA mean. */
  mean?: number;
  /** Anomaly: EWMA variance. */
  variance?: number;
}

/** What an evaluation decided. */
export interface Firing {
  /** `raise` when it starts firing, `clear` when it stops, `repeat` while firing (alarm count). */
  change: "raise" | "clear" | null;
  /** The next state. */
  state: RuleState;
  /** Facts for the alarm. */
  details?: JsonObject;
}

type Common = { name: string; alarm?: AlarmSpec; onRaise?: Action[]; onClear?: Action[] };

/** A threshold rule: `above` or `below`, `for` a duration, clearing past `clear` for `clearFor`. */
export function threshold(
  spec: Common & {
    metric: string;
    above?: number;
    below?: number;
    for?: string;
    clear?: { below?: number; above?: number; for?: string };
  },
): ThresholdRule {
  if ((spec.above === undefined) === (spec.below === undefined)) {
    throw new Error(`Rule "${spec.name}": give exactly one of above or below.`);
  }
  finite(spec.name, { above: spec.above, below: spec.below });
  finite(spec.name, { "clear.above": spec.clear?.above, "clear.below": spec.clear?.below });
  return {
    ...common(spec),
    rule: "threshold",
    metric: spec.metric,
    above: spec.above,
    below: spec.below,
    forMs: spec.for ? parseDuration(spec.for) : 0,
    clearBelow: spec.clear?.below,
    clearAbove: spec.clear?.above,
    clearForMs: spec.clear?.for ? parseDuration(spec.clear.for) : 0,
  };
}

/** A rate-of-change rule, in units per minute. */
export function rateOfChange(
  spec: Common & {
    metric: string;
    risingPerMinute?: number;
    fallingPerMinute?: number;
  },
): RateRule {
  if (spec.risingPerMinute === undefined && spec.fallingPerMinute === undefined) {
    throw new Error(`Rule "${spec.name}": give risingPerMinute or fallingPerMinute.`);
  }
  finite(spec.name, {
    risingPerMinute: spec.risingPerMinute,
    fallingPerMinute: spec.fallingPerMinute,
  });
  return { ...common(spec), rule: "rate", metric: spec.metric, ...rates(spec) };
}

/** A no-data rule: silence `for` a duration fires it. */
export function noData(spec: Common & { for: string; metric?: string }): NoDataRule {
  return { ...common(spec), rule: "no_data", metric: spec.metric, forMs: parseDuration(spec.for) };
}

/** An anomaly rule: EWMA z-score over a metric. */
export function anomaly(
  spec: Common & {
    metric: string;
    z?: number;
    clearZ?: number;
    alpha?: number;
    warmup?: number;
    minStd?: number;
  },
): AnomalyRule {
  const z = spec.z ?? 3;
  const alpha = spec.alpha ?? 0.1;
  const minStd = spec.minStd ?? 0;
  finite(spec.name, { z, clearZ: spec.clearZ });
  if (!(z > 0)) throw new Error(`Rule "${spec.name}": z must be above 0; got ${z}.`);
  if (spec.warmup !== undefined && !(Number.isInteger(spec.warmup) && spec.warmup >= 0)) {
    throw new Error(
      `Rule "${spec.name}": warmup must be a whole number of readings; got ${spec.warmup}.`,
    );
  }
  if (!(alpha > 0 && alpha <= 1)) throw new Error(`Rule "${spec.name}": alpha must be in (0, 1].`);
  if (!(minStd >= 0 && Number.isFinite(minStd))) {
    throw new Error(
      `Rule "${spec.name}": minStd must be a finite number of 0 or more; got ${spec.minStd}.`,
    );
  }
  return {
    ...common(spec),
    rule: "anomaly",
    metric: spec.metric,
    z,
    clearZ: spec.clearZ ?? z / 2,
    alpha,
    warmup: spec.warmup ?? 20,
    minStd,
  };
}

function common(spec: Common): Common {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(spec.name ?? "")) {
    throw new Error(
      `Rule name ${JSON.stringify(spec.name)} is invalid: use 1-64 of A-Z a-z 0-9 _ . -`,
    );
  }
  if (spec.alarm && !(SEVERITIES as readonly string[]).includes(spec.alarm.severity)) {
    throw new Error(
      `Rule "${spec.name}": alarm severity ${JSON.stringify(spec.alarm.severity)} is not one of ${
        SEVERITIES.join(", ")
      }.`,
    );
  }
  return { name: spec.name, alarm: spec.alarm, onRaise: spec.onRaise, onClear: spec.onClear };
}

/** Throws, naming the rule and field, for any of `values` given but not a finite number. */
function finite(rule: string, values: Record<string, number | undefined>): void {
  for (const [field, value] of Object.entries(values)) {
    if (value !== undefined && !Number.isFinite(value)) {
      throw new Error(`Rule "${rule}": ${field} must be a finite number; got ${value}.`);
    }
  }
}

function rates(spec: { risingPerMinute?: number; fallingPerMinute?: number }) {
  return { risingPerMinute: spec.risingPerMinute, fallingPerMinute: spec.fallingPerMinute };
}

/** Evaluates a rule on one reading (`value` undefined when the reading lacks the metric). */
export function onReading(
  rule: Rule,
  state: RuleState,
  ts: number,
  value: number | undefined,
): Firing {
  switch (rule.rule) {
    case "threshold":
      return value === undefined ? same(state) : evalThreshold(rule, state, ts, value);
    case "rate":
      return value === undefined ? same(state) : evalRate(rule, state, ts, value);
    case "anomaly":
      return value === undefined ? same(state) : evalAnomaly(rule, state, value);
    case "no_data": {
      if (rule.metric !== undefined && value === undefined) return same(state);
      const lastTs = Math.max(state.lastTs ?? ts, ts);
      return { change: state.active ? "clear" : null, state: { active: false, lastTs } };
    }
  }
}

/** Evaluates a rule on the passing of time (only no-data rules care). */
export function onTime(rule: Rule, state: RuleState, now: number): Firing {
  if (rule.rule !== "no_data" || state.active || state.lastTs === undefined) return same(state);
  if (now - state.lastTs < rule.forMs) return same(state);
  return {
    change: "raise",
    state: { ...state, active: true },
    details: { silentSince: new Date(state.lastTs).toISOString() },
  };
}

/** When a rule next needs a turn by itself (ms), if ever. */
export function ruleDue(rule: Rule, state: RuleState): number | null {
  if (rule.rule !== "no_data" || state.active || state.lastTs === undefined) return null;
  return state.lastTs + rule.forMs;
}

/** Starts a no-data rule's clock for a twin that has never reported (from its creation). */
export function initialState(rule: Rule, createdAt: number): RuleState {
  return rule.rule === "no_data" ? { active: false, lastTs: createdAt } : { active: false };
}

function same(state: RuleState): Firing {
  return { change: null, state };
}

function evalThreshold(rule: ThresholdRule, state: RuleState, ts: number, value: number): Firing {
  if (!state.active) {
    const beyond = rule.above !== undefined ? value > rule.above : value < rule.below!;
    if (!beyond) return quiet(state, false);
    const since = state.since ?? ts;
    if (ts - since >= rule.forMs) {
      return {
        change: "raise",
        state: { active: true, since: null },
        details: { metric: rule.metric, value },
      };
    }
    return { change: null, state: { active: false, since } };
  }
  // Firing: clear only once back past the clear bound (hysteresis) for clearFor.
  const back = rule.above !== undefined
    ? value < (rule.clearBelow ?? rule.above)
    : value > (rule.clearAbove ?? rule.below!);
  if (!back) return quiet(state, true);
  const since = state.since ?? ts;
  if (ts - since >= rule.clearForMs) {
    return {
      change: "clear",
      state: { active: false, since: null },
      details: { metric: rule.metric, value },
    };
  }
  return { change: null, state: { active: true, since } };
}

/** No change, with no pending `since`: the same state when it already says so (most readings). */
function quiet(state: RuleState, active: boolean): Firing {
  if (state.active === active && state.since === null) return same(state);
  return { change: null, state: { active, since: null } };
}

function evalRate(rule: RateRule, state: RuleState, ts: number, value: number): Firing {
  const next: RuleState = { active: state.active, lastTs: ts, lastValue: value };
  if (state.lastTs === undefined || state.lastValue === undefined || ts <= state.lastTs) {
    return { change: null, state: { ...next, lastTs: Math.max(ts, state.lastTs ?? ts) } };
  }
  const perMinute = (value - state.lastValue) / ((ts - state.lastTs) / 60_000);
  const fast = (rule.risingPerMinute !== undefined && perMinute > rule.risingPerMinute) ||
    (rule.fallingPerMinute !== undefined && -perMinute > rule.fallingPerMinute);
  const details = { metric: rule.metric, value, perMinute };
  if (fast && !state.active) return { change: "raise", state: { ...next, active: true }, details };
  if (!fast && state.active) return { change: "clear", state: { ...next, active: false }, details };
  return { change: null, state: next };
}

function evalAnomaly(rule: AnomalyRule, state: RuleState, value: number): Firing {
  const n = state.n ?? 0;
  const mean = state.mean ?? value;
  const variance = state.variance ?? 0;
  const std = Math.max(Math.sqrt(variance), rule.minStd);
  const z = n >= rule.warmup && std > 0 ? Math.abs(value - mean) / std : 0;
  // Learn from every reading (West's EWMA of mean and variance), so the baseline can drift.
  const diff = value - mean;
  const incr = rule.alpha * diff;
  const next: RuleState = {
    active: state.active,
    n: n + 1,
    mean: n === 0 ? value : mean + incr,
    variance: n === 0 ? 0 : (1 - rule.alpha) * (variance + diff * incr),
  };
  if (!state.active && z >= rule.z) {
    next.active = true;
    return { change: "raise", state: next, details: { metric: rule.metric, value, z, mean, std } };
  }
  if (state.active && z < rule.clearZ) {
    next.active = false;
    return { change: "clear", state: next, details: { metric: rule.metric, value, z, mean, std } };
  }
  return { change: null, state: next };
}
