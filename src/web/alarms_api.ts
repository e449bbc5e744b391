/**
 * Operator routes for alarms across the fleet and for web push subscriptions, under `/api/v1`
 * (mounted behind the operator token by the operator API).
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import { DoppelError, validationError } from "../errors.ts";
import { type AlarmRecord, SEVERITIES, type Severity } from "../rules/alarms.ts";
import { isAuthSecret, isP256PublicKey } from "../push/notifier.ts";
import { keys } from "../storage/keys.ts";
import { intParam, listPage, parseWith, readJson } from "./http.ts";
import type { Services } from "./services.ts";

const STATES = new Set(["active", "acknowledged", "cleared"]);

/**
 * Whether Doppel may post alarms to `url`: push services are https; plain http only on this
 * machine, or an operator's subscription could make Doppel post into its own network (a cloud's
 * metadata address, say) on every alarm.
 */
function isPushEndpoint(url: string): boolean {
  const { protocol, hostname } = new URL(url);
  return protocol === "https:" || hostname === "localhost" || hostname === "[::1]" ||
    /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

/** `POST /api/v1/push/subscriptions`: a browser's `PushSubscription.toJSON()`. */
export const PushSubscriptionBody = z.strictObject({
  endpoint: z.url({ protocol: /^https?$/ }).max(2048).refine(
    isPushEndpoint,
    "must be an https URL (http only to this machine, as for a local test receiver)",
  ).describe("the push service's URL: https (plain http only to this machine)"),
  keys: z.object({
    // What web push encrypts to: a P-256 public key, uncompressed (65 bytes, first 0x04), and a
    // 16-byte secret, each base64url. Anything else could never be sent to.
    p256dh: z.string().max(256).refine(
      isP256PublicKey,
      "must be a base64url P-256 public key (65 bytes, uncompressed)",
    ),
    auth: z.string().max(64).refine(isAuthSecret, "must be a base64url 16-byte secret"),
  }),
  expirationTime: z.number().nullable().optional(),
  severities: z.array(z.enum(SEVERITIES)).min(1).optional(),
});

/** Routes for alarms and push subscriptions. */
export function alarmsApi(s: Services): Hono {
  const api = new Hono();

  api.get("/alarms", async (c) => {
    const device = c.req.query("device") || undefined;
    const severity = c.req.query("severity") || undefined;
    const state = c.req.query("state") || undefined;
    if (severity !== undefined && !(SEVERITIES as readonly string[]).includes(severity)) {
      throw validationError(`Query parameter severity=${JSON.stringify(severity)} is invalid:`, [{
        field: "severity",
        message: `must be one of ${SEVERITIES.join(", ")}`,
      }]);
    }
    if (state !== undefined && !STATES.has(state)) {
      throw validationError(`Query parameter state=${JSON.stringify(state)} is invalid:`, [{
        field: "state",
        message: "must be active, acknowledged or cleared",
      }]);
    }
    const limit = intParam(c, "limit", { min: 1, max: 1000, fallback: 50 });
    // Newest first, from the narrowest index the filters allow.
    const prefix: Deno.KvKey = device !== undefined
      ? keys.alarms(device)
      : state !== undefined
      ? ["alarms_by_state", state]
      : ["alarms_by_time"];
    const iter = s.kv.list({ prefix }, {
      reverse: true,
      cursor: c.req.query("cursor") || undefined,
      batchSize: 100,
    });
    return c.json(
      await listPage(iter, limit, async (entry) => {
        const alarm = device !== undefined ? entry.value as AlarmRecord : await readAlarm(
          s,
          entry.key[entry.key.length - 2] as string,
          entry.key.at(-1) as string,
        );
        if (!alarm) return undefined;
        if (state !== undefined && alarm.state !== state) return undefined;
        if (severity !== undefined && alarm.severity !== severity) return undefined;
        return alarm;
      }),
    );
  });

  api.get("/alarms/:alarmId", async (c) => c.json(await requireAlarm(s, c.req.param("alarmId"))));

  for (const action of ["acknowledge", "clear"] as const) {
    api.post(`/alarms/:alarmId/${action}`, async (c) => {
      const alarm = await requireAlarm(s, c.req.param("alarmId"));
      const type = action === "acknowledge" ? "alarm.acknowledge" : "alarm.clear";
      const changed = await s.runtime.send(alarm.deviceId, { type, alarmId: alarm.id });
      return c.json(changed);
    });
  }

  api.get("/push/vapid-public-key", (c) => c.json({ publicKey: s.push.publicKey }));

  api.post("/push/subscriptions", async (c) => {
    const body = parseWith(PushSubscriptionBody, await readJson(c), "The push subscription");
    const stored = await s.push.subscribe(body, body.severities as Severity[] | undefined);
    return c.json({ id: stored.id, severities: stored.severities ?? null }, 201);
  });

  api.get("/push/subscriptions", async (c) => {
    const items = (await s.push.list()).map((sub) => ({
      id: sub.id,
      endpoint: sub.endpoint,
      severities: sub.severities ?? null,
      createdAt: sub.createdAt,
    }));
    return c.json({ items });
  });

  api.delete("/push/subscriptions/:id", async (c) => {
    if (!(await s.push.unsubscribe(c.req.param("id")))) {
      throw new DoppelError("not_found", `No push subscription ${c.req.param("id")}.`);
    }
    return c.body(null, 204);
  });

  return api;
}

async function readAlarm(
  s: Services,
  deviceId: string,
  alarmId: string,
): Promise<AlarmRecord | null> {
  return (await s.kv.get<AlarmRecord>(keys.alarm(deviceId, alarmId))).value;
}

async function requireAlarm(s: Services, alarmId: string): Promise<AlarmRecord> {
  const owner = await s.kv.get<string>(keys.alarmId(alarmId));
  const alarm = owner.value === null ? null : await readAlarm(s, owner.value, alarmId);
  if (!alarm) throw new DoppelError("not_found", `No alarm ${alarmId}.`);
  return alarm;
}
