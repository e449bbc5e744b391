/**
 * The MQTT topic contract: which topics a device publishes to, which it may subscribe to, and the
 * topics the cloud publishes on. Shared by the embedded broker and the bridge.
 * @module
 */
import type { UplinkOp } from "./uplink.ts";

/** What a device → cloud topic asks for. */
export interface UplinkTopic {
  /** The device the message is about (the publisher, or a gateway's child). */
  deviceId: string;
  /** The operation, or `presence` for a gateway reporting a child. */
  op: UplinkOp | "presence";
  /** For command results: which command. */
  commandId?: string;
}

const SEGMENT = "([A-Za-z0-9][A-Za-z0-9._:-]{0,127})";
const UPLINK = new RegExp(
  `^devices/${SEGMENT}/(telemetry|twin/reported|twin/get|presence|commands/([^/]{1,64})/result)$`,
);

/** Parses a device → cloud topic; `null` if it is not one. */
export function parseUplinkTopic(topic: string): UplinkTopic | null {
  const match = UPLINK.exec(topic);
  if (!match) return null;
  const [, deviceId, rest, commandId] = match;
  switch (rest) {
    case "telemetry":
      return { deviceId, op: "telemetry" };
    case "twin/reported":
      return { deviceId, op: "reported" };
    case "twin/get":
      return { deviceId, op: "twin.get" };
    case "presence":
      return { deviceId, op: "presence" };
    default:
      return { deviceId, op: "command.result", commandId };
  }
}

/** The device a subscription filter is under, if it names one exactly (`devices/{id}/…`). */
export function filterDevice(filter: string): string | null {
  const match = new RegExp(`^devices/${SEGMENT}/`).exec(filter);
  return match ? match[1] : null;
}

/** Whether an MQTT topic filter matches a topic (`+` one level, `#` the rest). */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

/** Cloud → device topics. */
export const downTopic = {
  /** Answers to `twin/get`. */
  twin: (id: string): string => `devices/${id}/twin`,
  /** Desired changes and catch-up. */
  desired: (id: string): string => `devices/${id}/twin/desired`,
  /** One command. */
  command: (id: string, commandId: string): string => `devices/${id}/commands/${commandId}`,
  /** Refusals of what the device published, with the reason. */
  errors: (id: string): string => `devices/${id}/errors`,
} as const;

/**
 * Device → cloud topics the cloud publishes on itself: a gateway's children's presence, set
 * offline (retained) when the gateway goes.
 */
export const upTopic = {
  /** A device's presence announcement. */
  presence: (id: string): string => `devices/${id}/presence`,
} as const;
