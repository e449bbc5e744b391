/**
 * Who is calling: operators with the bearer token, devices with HTTP Basic `deviceId:key`, and a
 * gateway acting for one of its children.
 * @module
 */
import type { Context } from "hono";
import { DoppelError } from "../errors.ts";
import type { AdminAuth } from "../registry/admin.ts";
import type { DeviceRecord, Registry } from "../registry/devices.ts";
import { checkCsrf, type Sessions } from "./session.ts";

/**
 * Refuses the request unless it carries the operator token (`Authorization: Bearer`) or, from
 * the dashboard, a session cookie with its CSRF token for anything that changes state.
 */
export async function requireOperator(
  c: Context,
  admin: AdminAuth,
  sessions?: Sessions,
): Promise<void> {
  const header = c.req.header("authorization");
  if (header === undefined && sessions) {
    const found = await sessions.fromRequest(c);
    if (found) return await checkCsrf(c, found.session, sessions.trustProxy);
  }
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? "");
  if (!match) {
    throw new DoppelError(
      "unauthorized",
      "Send the operator token as Authorization: Bearer <token>.",
    );
  }
  if (!(await admin.verify(match[1]))) {
    throw new DoppelError("unauthorized", "The operator token is wrong.");
  }
}

/** The device that made the request and the device it acts for (itself, or a child). */
export interface DeviceCaller {
  /** The authenticated device. */
  device: DeviceRecord;
  /** The device the request is about. */
  target: DeviceRecord;
  /** Which of the device's keys it used (see {@link Registry.authenticateKey}). */
  keyId: string;
}

/** Parses HTTP Basic credentials, or `null`. */
export function basicCredentials(header: string | undefined): [string, string] | null {
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? "");
  if (!match) return null;
  let decoded: string;
  try {
    decoded = atob(match[1]);
  } catch {
    return null;
  }
  const colon = decoded.indexOf(":");
  return colon < 0 ? null : [decoded.slice(0, colon), decoded.slice(colon + 1)];
}

/** Authenticates a device request; `?device=<child>` lets a gateway act for its child. */
export async function requireDevice(c: Context, registry: Registry): Promise<DeviceCaller> {
  const credentials = basicCredentials(c.req.header("authorization"));
  if (!credentials) {
    throw new DoppelError("unauthorized", "Send device credentials as HTTP Basic deviceId:key.");
  }
  const { device, keyId } = await registry.authenticateKey(credentials[0], credentials[1]);
  const child = c.req.query("device");
  if (child === undefined || child === device.id) return { device, target: device, keyId };
  return { device, target: await actFor(registry, device, child), keyId };
}

/** The child a gateway wants to act for, if it may. */
export async function actFor(
  registry: Registry,
  gateway: DeviceRecord,
  childId: string,
): Promise<DeviceRecord> {
  const child = await registry.get(childId);
  if (!child || child.parent !== gateway.id) {
    throw new DoppelError(
      "forbidden",
      `Device ${gateway.id} may not act for ${childId}: it is not its child.`,
    );
  }
  if (!child.enabled) throw new DoppelError("forbidden", `Device ${childId} is disabled.`);
  return child;
}
