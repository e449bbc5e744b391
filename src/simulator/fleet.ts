/**
 * The simulated fleet's credentials: devices `${prefix}0 … ${prefix}${n-1}`, registered through
 * the operator API the first time and remembered in a key file (mode 0600) so the next run reuses
 * them. A remembered key is checked with the device API; a device that exists but whose key is
 * unknown here (or no longer valid) gets a new one by key rotation.
 * @module
 */

/** A device's credentials. */
export interface DeviceCredentials {
  /** Device id. */
  id: string;
  /** Device key. */
  key: string;
}

/** How one device was obtained. */
export type Provenance = "registered" | "reused" | "rotated";

/** The key file: keys by server origin, then by device id. */
interface KeyFileContent {
  version: 1;
  servers: Record<string, Record<string, { key: string; kind: string }>>;
}

/** A fleet preparation failure that stops the run (exit status 1). */
export class FleetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FleetError";
  }
}

/** Remembered device keys, read from and written back to one JSON file. */
export class KeyStore {
  readonly #path: string;
  #content: KeyFileContent;
  #dirty = false;

  private constructor(path: string, content: KeyFileContent) {
    this.#path = path;
    this.#content = content;
  }

  /** Reads `path`; a missing file is an empty store, an unreadable one a {@link FleetError}. */
  static async open(path: string): Promise<KeyStore> {
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) {
        return new KeyStore(path, { version: 1, servers: {} });
      }
      throw new FleetError(`Cannot read the key file ${path}: ${(error as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new FleetError(
        `The key file ${path} is not JSON; move it away or pass another --keys.`,
      );
    }
    if (
      typeof parsed !== "object" || parsed === null ||
      typeof (parsed as KeyFileContent).servers !== "object" ||
      (parsed as KeyFileContent).servers === null
    ) {
      throw new FleetError(`The key file ${path} is not a simulator key file.`);
    }
    return new KeyStore(path, parsed as KeyFileContent);
  }

  /** The key remembered for `id` on `server`, with the kind it was registered as. */
  get(server: string, id: string): { key: string; kind: string } | undefined {
    return this.#content.servers[origin(server)]?.[id];
  }

  /** Remembers a key. */
  set(server: string, id: string, key: string, kind: string): void {
    (this.#content.servers[origin(server)] ??= {})[id] = { key, kind };
    this.#dirty = true;
  }

  /** Forgets a key. */
  delete(server: string, id: string): void {
    if (this.#content.servers[origin(server)]?.[id] === undefined) return;
    delete this.#content.servers[origin(server)][id];
    this.#dirty = true;
  }

  /** Writes the file if anything changed (atomically, mode 0600), creating its folder. */
  async save(): Promise<void> {
    if (!this.#dirty) return;
    const slash = this.#path.lastIndexOf("/");
    if (slash > 0) await Deno.mkdir(this.#path.slice(0, slash), { recursive: true });
    const temp = `${this.#path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    try {
      await Deno.writeTextFile(temp, JSON.stringify(this.#content, null, 2) + "\n", {
        mode: 0o600,
      });
      await Deno.chmod(temp, 0o600);
      await Deno.rename(temp, this.#path);
      this.#dirty = false;
    } catch (error) {
      await Deno.remove(temp).catch(() => {});
      throw new FleetError(`Cannot write the key file ${this.#path}: ${(error as Error).message}`);
    }
  }
}

/** What preparing the fleet needs. */
export interface FleetOptions {
  /** Doppel's HTTP base URL. */
  url: string;
  /** The operator token, if any (needed only to register or rotate). */
  token?: string;
  /** The twin kind. */
  kind: string;
  /** Device id prefix. */
  prefix: string;
  /** How many devices. */
  devices: number;
  /** HTTP requests (passed in by `main.ts`). */
  fetch: typeof fetch;
  /** Requests in flight at once while preparing (default 16). */
  concurrency?: number;
  /** Told about each device as it is ready. */
  onDevice?: (id: string, how: Provenance) => void;
  /** Stops preparing early (Ctrl-C). */
  signal?: AbortSignal;
}

/**
 * Makes sure devices `${prefix}0…` exist with keys known here: reuses remembered keys that still
 * work, registers missing devices, rotates the keys of existing devices whose key is unknown. The
 * store is saved even when preparing fails half-way, so no new key is lost.
 */
export async function prepareFleet(
  options: FleetOptions,
  store: KeyStore,
): Promise<DeviceCredentials[]> {
  const ids = Array.from({ length: options.devices }, (_, i) => `${options.prefix}${i}`);
  const result: DeviceCredentials[] = new Array(ids.length);
  let next = 0;
  const worker = async () => {
    while (next < ids.length) {
      if (options.signal?.aborted) throw new FleetError("Interrupted while preparing devices.");
      const index = next++;
      const id = ids[index];
      const { key, how } = await prepareOne(options, store, id);
      result[index] = { id, key };
      options.onDevice?.(id, how);
    }
  };
  try {
    const workers = Array.from(
      { length: Math.min(options.concurrency ?? 16, ids.length) },
      () => worker(),
    );
    const outcomes = await Promise.allSettled(workers);
    const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === "rejected");
    if (failed) throw failed.reason;
  } finally {
    await store.save();
  }
  return result;
}

async function prepareOne(
  options: FleetOptions,
  store: KeyStore,
  id: string,
): Promise<{ key: string; how: Provenance }> {
  const known = store.get(options.url, id);
  if (known) {
    if (known.kind !== options.kind) {
      throw new FleetError(
        `Device ${id} was registered as ${known.kind}, not ${options.kind}; use another --prefix.`,
      );
    }
    const status = await probe(options, id, known.key);
    if (status === 200) return { key: known.key, how: "reused" };
    if (status === 403) {
      throw new FleetError(`Device ${id} is disabled; enable it or use another --prefix.`);
    }
    if (status !== 401) {
      throw new FleetError(`Checking the key of ${id} failed: HTTP ${status}.`);
    }
    // Deleted, re-created or rotated elsewhere: treat the key as unknown.
    store.delete(options.url, id);
  }
  if (!options.token) {
    throw new FleetError(
      `Registering ${id} needs the operator token: pass --token or set DOPPEL_ADMIN_TOKEN.`,
    );
  }
  const created = await operator(options, "POST", "/api/v1/devices", {
    id,
    kind: options.kind,
    tags: { simulator: "doppel" },
  });
  if (created.status === 201) {
    const key = keyOf(created.body, id);
    store.set(options.url, id, key, options.kind);
    return { key, how: "registered" };
  }
  if (created.status !== 409) throw operatorFailure(`Registering ${id}`, created);
  const existing = await operator(options, "GET", `/api/v1/devices/${encodeURIComponent(id)}`);
  if (existing.status !== 200) throw operatorFailure(`Reading device ${id}`, existing);
  const kind = (existing.body as { kind?: unknown }).kind;
  if (kind !== options.kind) {
    throw new FleetError(
      `Device ${id} exists as ${JSON.stringify(kind)}, not ${options.kind}; use another --prefix.`,
    );
  }
  const rotated = await operator(
    options,
    "POST",
    `/api/v1/devices/${encodeURIComponent(id)}/keys`,
  );
  if (rotated.status !== 200) throw operatorFailure(`Rotating the key of ${id}`, rotated);
  const key = keyOf(rotated.body, id);
  store.set(options.url, id, key, options.kind);
  return { key, how: "rotated" };
}

/** Checks a device key with `GET /device/v1/twin`; the HTTP status. */
async function probe(options: FleetOptions, id: string, key: string): Promise<number> {
  const res = await request(options, `${options.url}/device/v1/twin`, {
    headers: { authorization: `Basic ${btoa(`${id}:${key}`)}` },
  });
  await res.body?.cancel();
  return res.status;
}

async function operator(
  options: FleetOptions,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: unknown }> {
  const res = await request(options, `${options.url}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${options.token}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch { /* not JSON: keep the text */ }
  if (res.status === 401) {
    throw new FleetError(`The operator token was refused (HTTP 401) on ${method} ${path}.`);
  }
  return { status: res.status, body: parsed };
}

async function request(options: FleetOptions, url: string, init: RequestInit): Promise<Response> {
  try {
    return await options.fetch(url, {
      ...init,
      signal: options.signal
        ? AbortSignal.any([options.signal, AbortSignal.timeout(15_000)])
        : AbortSignal.timeout(15_000),
    });
  } catch (error) {
    throw new FleetError(`Cannot reach Doppel at ${options.url}: ${(error as Error).message}`);
  }
}

function keyOf(body: unknown, id: string): string {
  const key = (body as { key?: unknown } | null)?.key;
  if (typeof key !== "string") throw new FleetError(`The server returned no key for ${id}.`);
  return key;
}

function operatorFailure(what: string, res: { status: number; body: unknown }): FleetError {
  const error = (res.body as { error?: { message?: string } } | null)?.error;
  return new FleetError(
    `${what} failed: HTTP ${res.status}${error?.message ? ` — ${error.message}` : ""}`,
  );
}

function origin(server: string): string {
  try {
    return new URL(server).origin;
  } catch {
    return server;
  }
}
