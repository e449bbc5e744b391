/**
 * Every Deno KV key Doppel uses, in one place. Keys are tuples, collection first; indexes point
 * at the main key and hold no copies.
 * @module
 */

/** Key builders. */
export const keys = {
  /** A twin's head entry (its record, or the first chunk of it). */
  twin: (id: string): Deno.KvKey => ["twins", id],
  /** Further chunks of a twin record too large for one KV value. */
  twinChunk: (id: string, index: number): Deno.KvKey => ["twin_chunks", id, index],
  /** All of a twin's chunks. */
  twinChunks: (id: string): Deno.KvKey => ["twin_chunks", id],
  /** A registered device. */
  device: (id: string): Deno.KvKey => ["devices", id],
  /** A deleted device whose data (commands, history, events…) is still being removed: when. */
  deviceDeletion: (id: string): Deno.KvKey => ["device_deletions", id],
  /** All devices. */
  devices: (): Deno.KvKey => ["devices"],
  /** Devices of one kind. */
  devicesByKind: (kind: string, id?: string): Deno.KvKey =>
    id === undefined ? ["devices_by_kind", kind] : ["devices_by_kind", kind, id],
  /** Devices with one tag value. */
  devicesByTag: (tag: string, value: string, id?: string): Deno.KvKey =>
    id === undefined ? ["devices_by_tag", tag, value] : ["devices_by_tag", tag, value, id],
  /** A gateway's children. */
  devicesByParent: (parent: string, id?: string): Deno.KvKey =>
    id === undefined ? ["devices_by_parent", parent] : ["devices_by_parent", parent, id],
  /**
   * Bridge mode: a child announced online while its gateway was offline, waiting for the gateway
   * (whichever instance opens the gateway's session serves it then).
   */
  bridgeWaiting: (gateway: string, child?: string): Deno.KvKey =>
    child === undefined ? ["bridge_waiting", gateway] : ["bridge_waiting", gateway, child],
  /** One command of a device, by queue position. */
  command: (deviceId: string, seq: number): Deno.KvKey => ["commands", deviceId, seq],
  /** All commands of a device. */
  commands: (deviceId: string): Deno.KvKey => ["commands", deviceId],
  /** An `Idempotency-Key` used to create a command: points at the command's id. */
  commandIdempotency: (
    deviceId: string,
    key: string,
  ): Deno.KvKey => ["command_idempotency", deviceId, key],
  /** A telemetry message id already applied. */
  dedupe: (deviceId: string, messageId: string): Deno.KvKey => ["dedupe", deviceId, messageId],
  /** A twin's events. */
  events: (deviceId: string): Deno.KvKey => ["events", deviceId],
  /** A twin event. */
  event: (deviceId: string, seq: number): Deno.KvKey => ["events", deviceId, seq],
  /** A twin's timer: when it next needs a turn by itself. */
  timer: (dueAt: number, id: string): Deno.KvKey => ["timers", dueAt, id],
  /** An alarm of a device. */
  alarm: (deviceId: string, alarmId: string): Deno.KvKey => ["alarms", deviceId, alarmId],
  /** A device's alarms. */
  alarms: (deviceId: string): Deno.KvKey => ["alarms", deviceId],
  /** Alarms by state, oldest raised first. */
  alarmByState: (
    state: string,
    raisedAt: number,
    deviceId: string,
    alarmId: string,
  ): Deno.KvKey => ["alarms_by_state", state, raisedAt, deviceId, alarmId],
  /** Every alarm, by when it was raised. */
  alarmByTime: (
    raisedAt: number,
    deviceId: string,
    alarmId: string,
  ): Deno.KvKey => ["alarms_by_time", raisedAt, deviceId, alarmId],
  /** Which device an alarm id belongs to. */
  alarmId: (alarmId: string): Deno.KvKey => ["alarm_ids", alarmId],
  /** When a stored entry falls out of retention: points at the entry's key. */
  expiry: (expiresAt: number, key: Deno.KvKey): Deno.KvKey => ["expiries", expiresAt, ...key],
  /** Raw telemetry chunks of one device and metric. */
  telemetry: (deviceId: string, metric: string): Deno.KvKey => ["telemetry", deviceId, metric],
  /** Rollup chunks of one device, metric and level. */
  rollups: (
    deviceId: string,
    metric: string,
    level: string,
  ): Deno.KvKey => ["rollups", deviceId, metric, level],
  /** Web push subscriptions of operators. */
  pushSubscription: (id: string): Deno.KvKey => ["push_subscriptions", id],
  /** The VAPID key pair. */
  vapid: (): Deno.KvKey => ["push", "vapid"],
  /** The operator token's hash. */
  adminToken: (): Deno.KvKey => ["admin", "token"],
} as const;

/** Prefixes holding a device's data, all removed when the device is deleted. */
export function devicePrefixes(deviceId: string): Deno.KvKey[] {
  return [
    ["commands", deviceId],
    ["command_idempotency", deviceId],
    ["dedupe", deviceId],
    ["events", deviceId],
    ["twin_chunks", deviceId],
    ["telemetry", deviceId],
    ["rollups", deviceId],
    ["alarms", deviceId],
    ["bridge_waiting", deviceId],
  ];
}

/** Deletes every entry under `prefix`, a few hundred per atomic. */
export async function deletePrefix(kv: Deno.Kv, prefix: Deno.KvKey): Promise<number> {
  let removed = 0;
  for (;;) {
    const atomic = kv.atomic();
    let n = 0;
    for await (const entry of kv.list({ prefix }, { limit: 500 })) {
      atomic.delete(entry.key);
      n++;
    }
    if (n === 0) return removed;
    await atomic.commit();
    removed += n;
  }
}
