/**
 * Alarms: one active alarm per device and type (a repeat bumps its count and last time, never
 * floods), raised by rules or handlers, acknowledged and cleared by operators or cleared by the
 * rule that raised it. Pure record transitions; the twin's turn applies them.
 * @module
 */
import type { Json } from "../twin/json.ts";

/** Alarm severities, most severe first. */
export const SEVERITIES = ["critical", "major", "minor", "warning"] as const;

/** An alarm severity. */
export type Severity = typeof SEVERITIES[number];

/** Where an alarm is in its life. */
export type AlarmState = "active" | "acknowledged" | "cleared";

/** An alarm as stored under `["alarms", deviceId, id]` and returned by the API. */
export interface AlarmRecord {
  /** Unique id. */
  id: string;
  /** The device. */
  deviceId: string;
  /** What is wrong, such as `overheat`; one open alarm per device and type. */
  type: string;
  /** How bad. */
  severity: Severity;
  /** Active, acknowledged (still open) or cleared. */
  state: AlarmState;
  /** A sentence for people. */
  message: string;
  /** Extra facts, such as the reading that raised it. */
  details?: Json;
  /** How many times it was raised while open. */
  count: number;
  /** When it was first raised. */
  raisedAt: string;
  /** When it was last raised. */
  lastAt: string;
  /** When an operator acknowledged it. */
  acknowledgedAt?: string;
  /** When it was cleared. */
  clearedAt?: string;
  /** Who cleared it: the rule, a handler or an operator. */
  clearedBy?: string;
}

/** How long cleared alarms are kept (90 days, ms). */
export const ALARM_RETENTION_MS = 90 * 86_400_000;

/** Whether `a` is more severe than `b`. */
export function moreSevere(a: Severity, b: Severity): boolean {
  return SEVERITIES.indexOf(a) < SEVERITIES.indexOf(b);
}

/** A new active alarm. */
export function newAlarm(
  id: string,
  deviceId: string,
  type: string,
  severity: Severity,
  message: string,
  details: Json | undefined,
  now: number,
): AlarmRecord {
  const at = new Date(now).toISOString();
  return {
    id,
    deviceId,
    type,
    severity,
    state: "active",
    message,
    ...(details === undefined ? {} : { details }),
    count: 1,
    raisedAt: at,
    lastAt: at,
  };
}

/** An open alarm raised again: count and last time bumped, severity only ever raised. */
export function repeatAlarm(
  alarm: AlarmRecord,
  severity: Severity,
  message: string,
  details: Json | undefined,
  now: number,
): AlarmRecord {
  return {
    ...alarm,
    severity: moreSevere(severity, alarm.severity) ? severity : alarm.severity,
    message,
    ...(details === undefined ? {} : { details }),
    count: alarm.count + 1,
    lastAt: new Date(now).toISOString(),
  };
}
