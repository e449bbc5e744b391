/**
 * The device registry: who may connect, as what kind, with which key. Registering a device
 * creates its twin in the same atomic; deleting one removes its twin, commands and history.
 * @module
 */
import { z } from "zod";
import type { Clock } from "../clock.ts";
import { DoppelError, rethrowCursorError, validationError } from "../errors.ts";
import { deletePrefix, devicePrefixes, keys } from "../storage/keys.ts";
import { encodeTwin, headParts, loadTwin } from "../storage/twin_store.ts";
import { applyMergePatch, type JsonObject } from "../twin/json.ts";
import { type Connection, newTwinRecord, type TwinRecord, upgradeRecord } from "../twin/state.ts";
import { zodIssues } from "../twin/turn.ts";
import { type KeyVault, randomSecret, timingSafeEqual } from "./secrets.ts";
import type { AlarmRecord } from "../rules/alarms.ts";

/** How long a device record read for authentication is trusted (ms). */
export const AUTH_CACHE_MS = 1000;

/**
 * How long a registration of a deleted device's id waits for its data to be removed (409 meanwhile);
 * past it, the deleting process is taken to have stopped, and registration finishes the removal.
 */
const DELETION_GRACE_MS = 10 * 60_000;

/** Device ids: safe in URLs and MQTT topics. */
export const DEVICE_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const DEVICE_ID_RULE = "must be 1-128 of A-Z a-z 0-9 . _ : - starting with a letter or digit";

/** A device id, as requests give it. */
export const DeviceId = z.string().regex(DEVICE_ID, DEVICE_ID_RULE);

/** A tag's name. */
export const TagName = z.string().regex(
  /^[A-Za-z0-9_.-]{1,64}$/,
  "tag names are 1-64 of A-Z a-z 0-9 _ . -",
);

/** Tags: a few short string labels. */
export const TagsSchema = z.record(TagName, z.string().max(256))
  .refine((tags) => Object.keys(tags).length <= 32, "at most 32 tags");

/** A device key as stored: sealed under the server secret. */
export interface StoredKey {
  /** The key, encrypted (AES-GCM). */
  sealed: string;
  /** When it was issued. */
  createdAt: string;
}

/** A device as stored under `["devices", id]`. */
export interface DeviceRecord {
  /** The device id. */
  id: string;
  /** Its twin kind. */
  kind: string;
  /** Labels for finding it. */
  tags: Record<string, string>;
  /** The gateway it reaches the cloud through, if any. */
  parent: string | null;
  /** A disabled device is refused everywhere. */
  enabled: boolean;
  /** When it was registered. */
  createdAt: string;
  /** When it was last changed. */
  updatedAt: string;
  /** Valid keys, newest first: the current one and the one it replaced. */
  keys: StoredKey[];
}

/** A device as the API shows it: never its key. */
export interface PublicDevice {
  /** The device id. */
  id: string;
  /** Its twin kind. */
  kind: string;
  /** Labels. */
  tags: Record<string, string>;
  /** Its gateway, if any. */
  parent: string | null;
  /** Whether it may connect. */
  enabled: boolean;
  /** When it was registered. */
  createdAt: string;
  /** When it was last changed. */
  updatedAt: string;
  /** When its current key was issued. */
  keyCreatedAt: string;
  /** Presence, from its twin. */
  connection?: Connection;
}

/** Filters and paging for {@link Registry.list}. */
export interface ListQuery {
  /** Only this kind. */
  kind?: string;
  /** Only devices with all these tag values. */
  tags?: Array<[string, string]>;
  /** Only devices with this presence status. */
  status?: Connection["status"];
  /** Only the children of this gateway. */
  parent?: string;
  /** Page size. */
  limit: number;
  /** Where the previous page ended. */
  cursor?: string;
}

/** A committed registry change. Keys appear only where a new one was issued. */
export type RegistryEvent =
  | { type: "registered"; device: DeviceRecord; key: string }
  | { type: "updated"; device: DeviceRecord }
  | { type: "key_rotated"; device: DeviceRecord; key: string }
  | { type: "deleted"; device: DeviceRecord };

/** What the registry needs. */
export interface RegistryOptions {
  /** The store. */
  kv: Deno.Kv;
  /** Time. */
  clock: Clock;
  /** Seals and opens keys. */
  vault: KeyVault;
  /** Names of the loaded kinds. */
  kinds: ReadonlySet<string>;
  /** Told after every committed change, so sessions and an external broker can follow. */
  onChange?(event: RegistryEvent): void | Promise<void>;
}

/** Registers, finds, changes, deletes and authenticates devices. */
export class Registry {
  #kv: Deno.Kv;
  #clock: Clock;
  #vault: KeyVault;
  #kinds: ReadonlySet<string>;
  #onChange: RegistryOptions["onChange"];
  #authCache = new Map<string, { device: DeviceRecord; at: number }>();

  /** Creates a registry. */
  constructor(options: RegistryOptions) {
    this.#kv = options.kv;
    this.#clock = options.clock;
    this.#vault = options.vault;
    this.#kinds = options.kinds;
    this.#onChange = options.onChange;
  }

  /** Registers a device and creates its twin; returns it with its key, the only time it is shown. */
  async register(input: {
    id?: string;
    kind: string;
    tags?: Record<string, string>;
    parent?: string | null;
  }): Promise<{ device: PublicDevice; key: string }> {
    const id = input.id ?? crypto.randomUUID();
    if (!DEVICE_ID.test(id)) {
      throw validationError("Device id is invalid:", [{
        field: "id",
        message: DEVICE_ID_RULE,
      }]);
    }
    if (!this.#kinds.has(input.kind)) {
      throw validationError(`Kind "${input.kind}" is not loaded:`, [{
        field: "kind",
        message: `must be one of ${[...this.#kinds].join(", ")}`,
      }]);
    }
    const tags = parseTags(input.tags ?? {});
    const parent = input.parent ?? null;
    const parentEntry = parent === null
      ? null
      : await this.#kv.get<DeviceRecord>(keys.device(parent));
    if (parent !== null && parentEntry?.value === null) {
      throw validationError(`Parent ${parent} is not a registered device:`, [{
        field: "parent",
        message: "must be the id of a registered device",
      }]);
    }
    if (parent === id) {
      throw validationError("A device cannot be its own parent:", [{
        field: "parent",
        message: "must differ from id",
      }]);
    }
    const now = this.#clock.now();
    // A device of this id deleted a moment ago may still have data being removed, under keys a
    // new device would use too: wait for that, or finish it if whoever deleted it stopped.
    const deletion = await this.#kv.get<number>(keys.deviceDeletion(id));
    if (deletion.value !== null) {
      if (now - deletion.value < DELETION_GRACE_MS) {
        throw new DoppelError(
          "conflict",
          `Device ${id} is still being deleted; try again in a moment.`,
        );
      }
      await this.#purge(id);
    }
    const at = new Date(now).toISOString();
    const key = randomSecret(32);
    const device: DeviceRecord = {
      id,
      kind: input.kind,
      tags,
      parent,
      enabled: true,
      createdAt: at,
      updatedAt: at,
      keys: [{ sealed: await this.#vault.seal(key), createdAt: at }],
    };
    const twin = encodeTwin(newTwinRecord(id, input.kind, now), 0);
    const atomic = this.#kv.atomic()
      .check({ key: keys.device(id), versionstamp: null })
      .check({ key: keys.twin(id), versionstamp: null })
      .check({ key: keys.deviceDeletion(id), versionstamp: null })
      .set(keys.device(id), device)
      .set(keys.devicesByKind(device.kind, id), null);
    if (parentEntry) {
      // The parent's record is written again, unchanged, so its versionstamp moves: a delete of
      // the parent that found no children checks that versionstamp, and fails instead of leaving
      // this child without a parent.
      atomic.check(parentEntry)
        .set(keys.device(parent!), parentEntry.value)
        .set(keys.devicesByParent(parent!, id), null);
    }
    for (const [tag, value] of Object.entries(tags)) {
      atomic.set(keys.devicesByTag(tag, value, id), null);
    }
    atomic.mutate(...twin.mutations);
    const result = await atomic.commit();
    if (!result.ok) {
      throw new DoppelError("conflict", `Device ${id} already exists.`);
    }
    await this.#changed({ type: "registered", device, key });
    return { device: toPublic(device), key };
  }

  /** Every stored device, in id order (for reconciling an external broker). */
  async *all(): AsyncIterable<DeviceRecord> {
    for await (const entry of this.#kv.list<DeviceRecord>({ prefix: keys.devices() })) {
      yield entry.value;
    }
  }

  /** A device's valid keys in plain text, newest first (for an external broker's credentials). */
  async plainKeys(device: DeviceRecord): Promise<string[]> {
    return await Promise.all(device.keys.map((key) => this.#vault.open(key.sealed)));
  }

  /**
   * Whether a device is registered, from the short-lived authentication cache (a device deleted
   * by another process may still count for up to a second; its twin's turns refuse it anyway).
   */
  async exists(id: string): Promise<boolean> {
    return DEVICE_ID.test(id) && (await this.#cached(id)) !== null;
  }

  /** The ids of the devices registered under gateway `parent`. */
  async childIds(parent: string): Promise<string[]> {
    const ids: string[] = [];
    for await (const entry of this.#kv.list({ prefix: keys.devicesByParent(parent) })) {
      ids.push(entry.key[2] as string);
    }
    return ids;
  }

  /** The stored device, or `null`. */
  async get(id: string): Promise<DeviceRecord | null> {
    return (await this.#kv.get<DeviceRecord>(keys.device(id))).value;
  }

  /** The device as the API shows it, with its presence; 404 if unknown. */
  async describe(id: string): Promise<PublicDevice> {
    const device = await this.#require(id);
    const twin = await loadTwin(this.#kv, id);
    return toPublic(device, twin?.state);
  }

  /** Lists devices matching a query, a page at a time. */
  async list(query: ListQuery): Promise<{ items: PublicDevice[]; cursor: string | null }> {
    const tags = query.tags ?? [];
    let prefix: Deno.KvKey;
    let rest = tags;
    if (query.parent !== undefined) prefix = keys.devicesByParent(query.parent);
    else if (query.kind !== undefined) prefix = keys.devicesByKind(query.kind);
    else if (tags.length > 0) {
      prefix = keys.devicesByTag(tags[0][0], tags[0][1]);
      rest = tags.slice(1);
    } else prefix = keys.devices();
    const iter = this.#kv.list({ prefix }, { cursor: query.cursor, batchSize: 100 });
    const items: PublicDevice[] = [];
    let ids: string[] = [];
    let cursor: string | null = null;
    const flush = async () => {
      const found = await this.#fetch(ids);
      ids = [];
      for (const { device, twin } of found) {
        if (query.kind !== undefined && device.kind !== query.kind) continue;
        if (!rest.every(([tag, value]) => device.tags[tag] === value)) continue;
        if (query.status !== undefined && twin?.connection.status !== query.status) continue;
        items.push(toPublic(device, twin));
      }
    };
    let exhausted = true;
    try {
      for await (const entry of iter) {
        ids.push(entry.key[entry.key.length - 1] as string);
        cursor = iter.cursor;
        if (ids.length === 10) await flush();
        if (items.length >= query.limit) {
          exhausted = false;
          break;
        }
      }
    } catch (error) {
      rethrowCursorError(error);
    }
    if (ids.length > 0) await flush();
    if (items.length > query.limit) {
      // The last flush overshot: the page ends at the limit'th item; resume just after it.
      const last = items[query.limit - 1];
      items.length = query.limit;
      cursor = await this.#cursorAfter(prefix, last.id);
      exhausted = false;
    }
    return { items, cursor: exhausted ? null : cursor };
  }

  /** Changes tags (a merge patch: `null` removes one) or enabled. */
  async update(
    id: string,
    patch: { tags?: Record<string, string | null>; enabled?: boolean },
  ): Promise<PublicDevice> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const entry = await this.#kv.get<DeviceRecord>(keys.device(id));
      if (entry.value === null) throw notFound(id);
      const device = entry.value;
      const tags = patch.tags === undefined
        ? device.tags
        : parseTags(applyMergePatch(device.tags, patch.tags as JsonObject) as JsonObject);
      const next: DeviceRecord = {
        ...device,
        tags: tags as Record<string, string>,
        enabled: patch.enabled ?? device.enabled,
        updatedAt: new Date(this.#clock.now()).toISOString(),
      };
      const atomic = this.#kv.atomic().check(entry).set(keys.device(id), next);
      for (const [tag, value] of Object.entries(device.tags)) {
        if (next.tags[tag] !== value) atomic.delete(keys.devicesByTag(tag, value, id));
      }
      for (const [tag, value] of Object.entries(next.tags)) {
        if (device.tags[tag] !== value) atomic.set(keys.devicesByTag(tag, value, id), null);
      }
      if ((await atomic.commit()).ok) {
        await this.#changed({ type: "updated", device: next });
        return this.describe(id);
      }
    }
    throw new DoppelError("conflict", `Device ${id} is being changed by others; try again.`);
  }

  /** Issues a new key; the previous one stays valid until the next rotation. */
  async rotateKey(id: string): Promise<{ device: PublicDevice; key: string }> {
    const key = randomSecret(32);
    for (let attempt = 0; attempt < 10; attempt++) {
      const entry = await this.#kv.get<DeviceRecord>(keys.device(id));
      if (entry.value === null) throw notFound(id);
      const at = new Date(this.#clock.now()).toISOString();
      const next: DeviceRecord = {
        ...entry.value,
        keys: [{ sealed: await this.#vault.seal(key), createdAt: at }, entry.value.keys[0]],
        updatedAt: at,
      };
      if ((await this.#kv.atomic().check(entry).set(keys.device(id), next).commit()).ok) {
        await this.#changed({ type: "key_rotated", device: next, key });
        return { device: toPublic(next), key };
      }
    }
    throw new DoppelError("conflict", `Device ${id} is being changed by others; try again.`);
  }

  /** Deletes a device with its twin, commands and history. A gateway with children is refused. */
  async delete(id: string): Promise<void> {
    const entry = await this.#kv.get<DeviceRecord>(keys.device(id));
    if (entry.value === null) throw notFound(id);
    for await (const _ of this.#kv.list({ prefix: keys.devicesByParent(id) }, { limit: 1 })) {
      throw new DoppelError(
        "conflict",
        `Device ${id} is the parent of other devices; delete or re-register them first.`,
      );
    }
    const device = entry.value;
    const twin = await loadTwin(this.#kv, id);
    const atomic = this.#kv.atomic()
      .check(entry)
      .delete(keys.device(id))
      .delete(keys.twin(id))
      .set(keys.deviceDeletion(id), this.#clock.now())
      .delete(keys.devicesByKind(device.kind, id));
    if (device.parent) atomic.delete(keys.devicesByParent(device.parent, id));
    for (const [tag, value] of Object.entries(device.tags)) {
      atomic.delete(keys.devicesByTag(tag, value, id));
    }
    if (twin?.state.timerAt != null) atomic.delete(keys.timer(twin.state.timerAt, id));
    if (!(await atomic.commit()).ok) {
      throw new DoppelError("conflict", `Device ${id} changed while being deleted; try again.`);
    }
    await this.#changed({ type: "deleted", device });
    await this.#purge(id);
  }

  /** Removes a deleted device's data, then the mark that said it was being removed. */
  async #purge(id: string): Promise<void> {
    // Alarm indexes point at the device's alarms: remove them with the alarms.
    for await (const entry of this.#kv.list<AlarmRecord>({ prefix: keys.alarms(id) })) {
      const alarm = entry.value;
      await this.#kv.atomic()
        .delete(keys.alarmId(alarm.id))
        .delete(keys.alarmByState(alarm.state, Date.parse(alarm.raisedAt), id, alarm.id))
        .delete(keys.alarmByTime(Date.parse(alarm.raisedAt), id, alarm.id))
        .commit();
    }
    for (const prefix of devicePrefixes(id)) await deletePrefix(this.#kv, prefix);
    await this.#kv.delete(keys.deviceDeletion(id));
  }

  /**
   * Checks a device's credentials: unknown ids and wrong keys are `unauthorized` (the same answer,
   * so ids cannot be probed); a disabled device is `forbidden`.
   */
  async authenticate(id: string, key: string): Promise<DeviceRecord> {
    return (await this.authenticateKey(id, key)).device;
  }

  /**
   * As {@link authenticate}, also naming which of the device's keys matched (by its sealed form,
   * not a secret): a connection that outlives a rotation ends once its key is no longer valid.
   */
  async authenticateKey(id: string, key: string): Promise<{ device: DeviceRecord; keyId: string }> {
    const device = DEVICE_ID.test(id) ? await this.#cached(id) : null;
    let match: string | undefined;
    for (const stored of device?.keys ?? []) {
      // Every stored key is compared, so timing does not tell which one matched.
      if (timingSafeEqual(await this.#vault.open(stored.sealed), key)) match = stored.sealed;
    }
    if (!device || match === undefined) {
      throw new DoppelError("unauthorized", "The device id or key is wrong.");
    }
    if (!device.enabled) throw new DoppelError("forbidden", `Device ${id} is disabled.`);
    return { device, keyId: match };
  }

  /**
   * The device for authentication, from a short-lived cache: changes made through this registry
   * apply at once; changes made by another process within {@link AUTH_CACHE_MS}.
   */
  async #cached(id: string): Promise<DeviceRecord | null> {
    const now = performance.now();
    const hit = this.#authCache.get(id);
    if (hit && now - hit.at < AUTH_CACHE_MS) return hit.device;
    const device = await this.get(id);
    if (device) {
      if (this.#authCache.size >= 100_000) this.#authCache.clear();
      this.#authCache.set(id, { device, at: now });
    } else this.#authCache.delete(id);
    return device;
  }

  /** Tells followers of a committed change and waits for them, so it is in force everywhere. */
  async #changed(event: RegistryEvent): Promise<void> {
    this.#authCache.delete(event.device.id);
    await this.#onChange?.(event);
  }

  async #require(id: string): Promise<DeviceRecord> {
    const device = await this.get(id);
    if (!device) throw notFound(id);
    return device;
  }

  async #fetch(ids: string[]): Promise<Array<{ device: DeviceRecord; twin?: TwinRecord }>> {
    if (ids.length === 0) return [];
    const [devices, heads] = await Promise.all([
      this.#kv.getMany<DeviceRecord[]>(ids.map((id) => keys.device(id))),
      this.#kv.getMany<Parameters<typeof headParts>[0][]>(ids.map((id) => keys.twin(id))),
    ]);
    const out: Array<{ device: DeviceRecord; twin?: TwinRecord }> = [];
    devices.forEach((entry, i) => {
      if (entry.value === null) return;
      const head = heads[i].value;
      let twin: TwinRecord | undefined;
      if (head) {
        const { json, chunks } = headParts(head);
        if (chunks === 1) twin = upgradeRecord(JSON.parse(json));
      }
      out.push({ device: entry.value, twin });
    });
    // Twins too large for one chunk are rare; read them whole.
    for (const item of out) {
      if (!item.twin) item.twin = (await loadTwin(this.#kv, item.device.id))?.state;
    }
    return out;
  }

  async #cursorAfter(prefix: Deno.KvKey, id: string): Promise<string | null> {
    const iter = this.#kv.list({ prefix, start: [...prefix, id] }, { limit: 1 });
    for await (const _ of iter) return iter.cursor;
    return null;
  }
}

function parseTags(tags: unknown): Record<string, string> {
  const result = TagsSchema.safeParse(tags);
  if (!result.success) {
    throw validationError(
      "Tags are invalid:",
      zodIssues(result.error).map((i) => ({ ...i, field: `tags.${i.field}` })),
    );
  }
  return result.data;
}

function notFound(id: string): DoppelError {
  return new DoppelError("not_found", `Device ${id} is not registered.`);
}

/** The API's view of a device. */
export function toPublic(device: DeviceRecord, twin?: TwinRecord): PublicDevice {
  return {
    id: device.id,
    kind: device.kind,
    tags: device.tags,
    parent: device.parent,
    enabled: device.enabled,
    createdAt: device.createdAt,
    updatedAt: device.updatedAt,
    keyCreatedAt: device.keys[0].createdAt,
    ...(twin ? { connection: twin.connection } : {}),
  };
}
