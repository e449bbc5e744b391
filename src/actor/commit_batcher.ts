/**
 * Groups many activations' commits into few KV atomics. Requests that arrive while a commit is in
 * flight go out together in the next one, within Deno KV's limits, so throughput does not stop at
 * one KV commit per message. Each request keeps its own checks: when an atomic fails, the
 * requests whose checks no longer hold are answered `conflict` and the others are sent again.
 * It also paces its callers: `room()` hands out places in the queue (as many as the next atomics
 * can carry), so turns are planned just before an atomic can carry them, not long before.
 * @module
 */

/** One activation's share of an atomic: the checks it relies on and what it writes. */
export interface CommitRequest {
  /** Versionstamp checks, normally one: the twin's head key. */
  checks: Deno.AtomicCheck[];
  /** Writes to make if the checks hold. */
  mutations: Deno.KvMutation[];
  /**
   * Estimated bytes of its values, to keep an atomic under KV's size cap (the batcher adds what
   * its keys take).
   */
  bytes: number;
}

/** How a request ended: committed with a versionstamp, or refused because a check failed. */
export type CommitOutcome = { ok: true; versionstamp: string } | { ok: false };

/** Deno KV's limits on one atomic, and how the batcher uses them. */
export interface BatcherOptions {
  /** Mutations per atomic (KV: 1000). */
  maxMutations?: number;
  /** Checks per atomic (KV: 100). */
  maxChecks?: number;
  /** Bytes per atomic (KV: 800 KiB); kept below it for encoding overhead. */
  maxBytes?: number;
  /** Bytes of the keys an atomic writes values under (KV: 80 KiB). */
  maxKeyBytes?: number;
  /** Atomics in flight at once. */
  maxInFlight?: number;
  /** Attempts for an atomic that throws (such as `database is locked`) before giving up. */
  maxRetries?: number;
  /**
   * Requests queued behind the commits in flight before {@link CommitBatcher.room} asks callers
   * to wait (default: as many as the next atomics can carry, `maxInFlight` × `maxChecks`).
   */
  maxQueued?: number;
  /** Told about every committed atomic: requests in it and milliseconds it took. */
  onBatch?(requests: number, ms: number): void;
}

/**
 * Told how a request ended: its outcome, or `undefined` and the error when storage failed. Must
 * not throw: it is called in a loop that tells every request of an atomic.
 */
export type CommitDone = (outcome: CommitOutcome | undefined, error?: unknown) => void;

interface Pending {
  request: CommitRequest;
  done: CommitDone;
  // Encoded bytes of the keys it writes values under (KV caps their sum per atomic).
  keyBytes: number;
  // What it adds to KV's count of an atomic's size: its values' bytes and its keys.
  size: number;
}

/** KV's limit on one key written (encoded bytes). */
const MAX_KEY_BYTES = 2048;

/** A single request larger than one KV atomic may be. */
export class CommitTooLargeError extends RangeError {
  /** Describes the request that does not fit; `why` replaces the count of its sizes. */
  constructor(mutations: number, bytes: number, why?: string) {
    super(
      why ??
        `A commit of ${mutations} mutations and ${bytes} bytes exceeds what one KV atomic can hold.`,
    );
    this.name = "CommitTooLargeError";
  }
}

/** Packs commit requests into grouped atomics. */
export class CommitBatcher {
  #kv: Deno.Kv;
  #queue: Pending[] = [];
  #inFlight = 0;
  #idle: Array<() => void> = [];
  // Callers of room() waiting for the queue to shrink, oldest first.
  #waiting: Array<() => void> = [];
  // Callers room() has let through whose request is not queued yet (see giveBack).
  #given = 0;
  #options: Required<Omit<BatcherOptions, "onBatch">> & Pick<BatcherOptions, "onBatch">;

  /** Creates a batcher writing to `kv`. */
  constructor(kv: Deno.Kv, options: BatcherOptions = {}) {
    this.#kv = kv;
    this.#options = {
      maxMutations: options.maxMutations ?? 1000,
      maxChecks: options.maxChecks ?? 100,
      maxBytes: options.maxBytes ?? 760 * 1024,
      // KV's cap is 81,920: the estimate below is exact for the keys Doppel writes, and an
      // upper bound otherwise, so a small margin is enough.
      maxKeyBytes: options.maxKeyBytes ?? 80_000,
      maxInFlight: options.maxInFlight ?? 2,
      maxRetries: options.maxRetries ?? 100,
      maxQueued: options.maxQueued ?? (options.maxInFlight ?? 2) * (options.maxChecks ?? 100),
      onBatch: options.onBatch,
    };
  }

  /** Commits a request in the next atomic with room; resolves once it is durable or refused. */
  submit(request: CommitRequest): Promise<CommitOutcome> {
    return new Promise((resolve, reject) => {
      this.enqueue(request, (outcome, error) => outcome ? resolve(outcome) : reject(error));
    });
  }

  /**
   * As {@link submit}, but tells `done` instead of settling a promise (the activation's common
   * path, which runs a turn per message and would otherwise pay for a promise and an await).
   * Throws {@link CommitTooLargeError} at once for a request no atomic can hold.
   */
  enqueue(request: CommitRequest, done: CommitDone): void {
    const o = this.#options;
    if (request.checks.length > o.maxChecks || request.mutations.length > o.maxMutations) {
      throw new CommitTooLargeError(request.mutations.length, request.bytes);
    }
    // KV refuses a whole atomic whose keys are too long, failing every request in it: refuse
    // the one request here instead, and group the others within the cap.
    let keyBytes = 0;
    // KV's size of an atomic counts a written key twice and a checked key once, besides values:
    // with long ids that is hundreds of bytes a twin, so it is counted here, not guessed.
    let size = request.bytes;
    for (const mutation of request.mutations) {
      const bytes = encodedKeyBytes(mutation.key);
      if (bytes > MAX_KEY_BYTES) {
        throw new CommitTooLargeError(
          request.mutations.length,
          request.bytes,
          `A key of ${bytes} bytes exceeds KV's ${MAX_KEY_BYTES}-byte limit on one key.`,
        );
      }
      if (mutation.type !== "delete") keyBytes += bytes;
      size += 2 * bytes;
    }
    for (const check of request.checks) size += encodedKeyBytes(check.key);
    if (size > o.maxBytes) {
      throw new CommitTooLargeError(request.mutations.length, size);
    }
    if (keyBytes > o.maxKeyBytes) {
      throw new CommitTooLargeError(
        request.mutations.length,
        request.bytes,
        `Its keys take ${keyBytes} bytes, over the ${o.maxKeyBytes} one KV atomic can hold.`,
      );
    }
    this.#queue.push({ request, done, keyBytes, size });
    this.#pump();
  }

  /**
   * `true` when the queue has room for another request now; otherwise `false`, and `ready` is
   * called (in a later microtask) once it has; it must not throw, as the others let through with
   * it are called in the same loop. Either way the caller then holds a place, to hand
   * on with {@link giveBack}. Callers about to prepare a request wait here first, so work is not
   * prepared long before an atomic can take it: a request prepared late holds its memory for
   * less time, and messages that arrive meanwhile join the same request.
   */
  room(ready: () => void): boolean {
    if (this.#queue.length + this.#given + this.#waiting.length < this.#options.maxQueued) {
      this.#given++;
      return true;
    }
    // A callback, not a promise: under load most turns wait here, one each.
    this.#waiting.push(ready);
    return false;
  }

  /**
   * A caller {@link room} let through has queued its request, or will queue none (its turn had
   * nothing to write, or failed): its place goes to the next in line. Call it once per place.
   */
  giveBack(): void {
    this.#given--;
    this.#makeRoom();
  }

  /** Resolves once nothing is queued or in flight. */
  drain(): Promise<void> {
    if (this.#queue.length === 0 && this.#inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #pump(): void {
    while (this.#inFlight < this.#options.maxInFlight && this.#queue.length > 0) {
      const batch = this.#take();
      this.#inFlight++;
      this.#commit(batch);
    }
  }

  /**
   * An atomic is done with: its place goes to the next one at once, before its requests are told
   * (telling them runs their turns' follow-ups, and the store should not sit idle meanwhile).
   */
  #finished(): void {
    this.#inFlight--;
    this.#pump();
    if (this.#queue.length === 0 && this.#inFlight === 0) {
      for (const resolve of this.#idle.splice(0)) resolve();
    }
  }

  /** Takes as many queued requests as fit in one atomic. */
  #take(): Pending[] {
    const o = this.#options;
    let checks = 0, mutations = 0, bytes = 0, keyBytes = 0, count = 0;
    for (const pending of this.#queue) {
      const request = pending.request;
      if (
        checks + request.checks.length > o.maxChecks ||
        mutations + request.mutations.length > o.maxMutations ||
        bytes + pending.size > o.maxBytes ||
        keyBytes + pending.keyBytes > o.maxKeyBytes
      ) break;
      checks += request.checks.length;
      mutations += request.mutations.length;
      bytes += pending.size;
      keyBytes += pending.keyBytes;
      count++;
    }
    const taken = this.#queue.splice(0, count);
    this.#makeRoom();
    return taken;
  }

  /** Lets as many waiting callers go as the queue has room for. */
  #makeRoom(): void {
    // Places already given count as taken: a turn let through may still be planning.
    const free = this.#options.maxQueued - this.#queue.length - this.#given;
    if (free <= 0 || this.#waiting.length === 0) return;
    const released = this.#waiting.splice(0, free);
    this.#given += released.length;
    // Later, in one microtask, as a promise would: a turn let through plans and enqueues, which
    // must not run inside the batcher's own bookkeeping.
    queueMicrotask(() => {
      for (const ready of released) ready();
    });
  }

  /** Commits one atomic and tells its requests how it went. Never rejects. */
  async #commit(batch: Pending[]): Promise<void> {
    const started = performance.now();
    let result: Deno.KvCommitResult | Deno.KvCommitError;
    try {
      result = await this.#attempt(batch);
    } catch (error) {
      this.#finished();
      for (const item of batch) item.done(undefined, error);
      return;
    }
    if (result.ok) {
      this.#finished();
      this.#options.onBatch?.(batch.length, performance.now() - started);
      const outcome: CommitOutcome = { ok: true, versionstamp: result.versionstamp };
      for (const item of batch) item.done(outcome);
      return;
    }
    // Some check failed: find whose, refuse those, and send the rest again first in line.
    let failed: Set<Pending>;
    try {
      failed = await this.#failedChecks(batch);
    } catch (error) {
      this.#finished();
      for (const item of batch) item.done(undefined, error);
      return;
    }
    // If no check reads as failed now, someone wrote and rewrote in between: refuse all so each
    // activation reloads, rather than loop.
    if (failed.size === 0) failed = new Set(batch);
    this.#queue.unshift(...batch.filter((item) => !failed.has(item)));
    this.#finished();
    for (const item of batch) if (failed.has(item)) item.done({ ok: false });
  }

  async #attempt(batch: Pending[]): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
    for (let attempt = 0;; attempt++) {
      const atomic = this.#kv.atomic();
      for (const { request } of batch) {
        atomic.check(...request.checks);
        atomic.mutate(...request.mutations);
      }
      try {
        return await atomic.commit();
      } catch (error) {
        // Another process holding the same local KV file makes commits throw `database is
        // locked` under contention: transient, so retry with a growing pause.
        if (attempt >= this.#options.maxRetries || !isTransient(error)) throw error;
        await new Promise((resolve) => setTimeout(resolve, Math.min(5 + attempt * 5, 100)));
      }
    }
  }

  async #failedChecks(batch: Pending[]): Promise<Set<Pending>> {
    const all = batch.flatMap((item) => item.request.checks.map((check) => ({ item, check })));
    const failed = new Set<Pending>();
    for (let i = 0; i < all.length; i += 10) {
      const slice = all.slice(i, i + 10);
      const entries = await this.#kv.getMany(slice.map(({ check }) => check.key));
      entries.forEach((entry, j) => {
        if (entry.versionstamp !== slice[j].check.versionstamp) failed.add(slice[j].item);
      });
    }
    return failed;
  }
}

/**
 * The bytes KV's key encoding takes for `key`, or a little more: a tag and a terminator around
 * each string (UTF-8, NUL escaped) or byte array, a tag and 8 bytes for a number.
 */
export function encodedKeyBytes(key: Deno.KvKey): number {
  let size = 0;
  for (const part of key) {
    if (typeof part === "string") {
      size += 2 + part.length;
      // Characters past ASCII take 2-3 bytes (a surrogate pair 4, counted as 2 + 2); NUL 2.
      for (let i = 0; i < part.length; i++) {
        const c = part.charCodeAt(i);
        if (c === 0 || c > 0x7f) size += c > 0x7ff ? 2 : 1;
      }
    } else if (typeof part === "number") size += 9;
    else if (typeof part === "boolean") size += 1;
    else if (typeof part === "bigint") size += 3 + Math.ceil(part.toString(16).length / 2);
    else if (part instanceof Uint8Array) size += 2 + 2 * part.length;
    else size += 9;
  }
  return size;
}

function isTransient(error: unknown): boolean {
  const message = error instanceof Error ? error.message : String(error);
  return /database is locked|busy/i.test(message);
}
