/**
 * The twin runtime: twin actors over the generic actor core. It loads twins from KV, runs their
 * turns, commits through the grouped batcher, releases effects on the event bus after commit, and
 * wakes twins whose durable timers fall due.
 * @module
 */
import type { Activation, Behavior, Loaded, Plan } from "../actor/activation.ts";
import {
  type BatcherOptions,
  CommitBatcher,
  type CommitTooLargeError,
} from "../actor/commit_batcher.ts";
import { Directory } from "../actor/directory.ts";
import type { Clock } from "../clock.ts";
import { COMMAND_LIMITS, type CommandRecord, parseCommandSeq } from "../commands/model.ts";
import { DoppelError } from "../errors.ts";
import type { EventBus } from "../events/bus.ts";
import type { Logger } from "../log.ts";
import { keys } from "../storage/keys.ts";
import { chunkCount, encodeTwin, loadTwin, twinVersionstamp } from "../storage/twin_store.ts";
import type { TwinKind } from "./kind.ts";
import { type TwinRecord, upgradeRecord } from "./state.ts";
import type { Transport } from "./presence.ts";
import { runTurn, type TurnReads, type TurnResult, type TwinMessage } from "./turn.ts";
import type { TwinKind as Kind } from "./kind.ts";
import { ALARM_RETENTION_MS } from "../rules/alarms.ts";
import { keyId, rawKey, rollupExpiry } from "../telemetry/history.ts";
import type { RollupChunk } from "../telemetry/rollup.ts";

/** How long a telemetry message id is remembered, so a resend is not applied twice (24 h). */
export const DEDUPE_WINDOW_MS = 24 * 3_600_000;
/** How long an `Idempotency-Key` is remembered (24 h). */
export const IDEMPOTENCY_WINDOW_MS = 24 * 3_600_000;
/** How long twin events are kept (30 days). */
export const EVENT_RETENTION_MS = 30 * 86_400_000;
/** When a twin's timer tick failed, how long until it is tried again (1 minute). */
export const TIMER_RETRY_MS = 60_000;

/** What the runtime needs. */
export interface TwinRuntimeOptions {
  /** The store. */
  kv: Deno.Kv;
  /** Time. */
  clock: Clock;
  /** Kinds by name. */
  kinds: ReadonlyMap<string, TwinKind>;
  /** Where committed notices go. */
  bus: EventBus;
  /** Where log lines go. */
  logger: Logger;
  /** Most twins kept in memory (default 100,000). */
  maxActivations?: number;
  /** Idle twins are passivated after this many ms (default 10 minutes). */
  idleMs?: number;
  /** Above this many twins in memory, idle ones keep their state packed (default 20,000). */
  packAbove?: number;
  /** Commit batching. */
  batcher?: BatcherOptions;
  /** Random hex for ids (tests may fix it). */
  randomId?: () => string;
  /** An HTTP-only device counts as offline this long (ms) after its last request (default 5 min). */
  httpTimeoutMs?: number;
  /** Keep telemetry history and rollups (default true). */
  history?: boolean;
  /** Told the outcome of every message: `ok` or the error code (for metrics). */
  observe?(message: TwinMessage, outcome: string, reply: unknown): void;
}

/** Twin actors, their commits and their timers. */
export class TwinRuntime {
  #kv: Deno.Kv;
  #clock: Clock;
  #bus: EventBus;
  #logger: Logger;
  #kinds: ReadonlyMap<string, TwinKind>;
  #directory: Directory<TwinRecord, TwinMessage>;
  #batcher: CommitBatcher;
  // The start-up pass waking twins for new rules, and whether the runtime is closing.
  #waking: Promise<void> | undefined;
  #closing = false;
  #loops: ReturnType<typeof setInterval>[] = [];
  #timersRunning: Promise<number> | null = null;
  #stats = { batches: 0, batchedRequests: 0, commitMs: 0 };

  /** Creates a runtime; call {@link start} to run its timer and idle-collection loops. */
  constructor(options: TwinRuntimeOptions) {
    this.#kv = options.kv;
    this.#clock = options.clock;
    this.#bus = options.bus;
    this.#logger = options.logger;
    this.#kinds = options.kinds;
    const observe = options.observe;
    this.#batcher = new CommitBatcher(options.kv, {
      ...options.batcher,
      onBatch: (requests, ms) => {
        this.#stats.batches++;
        this.#stats.batchedRequests += requests;
        this.#stats.commitMs += ms;
        options.batcher?.onBatch?.(requests, ms);
      },
    });
    this.#directory = new Directory({
      behavior: new TwinBehavior(
        this,
        options.randomId ?? randomHex,
        options.httpTimeoutMs,
        options.history ?? true,
      ),
      batcher: this.#batcher,
      maxActivations: options.maxActivations,
      idleMs: options.idleMs,
      packAbove: options.packAbove,
      now: () => this.#clock.now(),
      // Metrics hear each reply from the activation as its sender gets it: no second promise.
      onReply: observe &&
        ((message, reply) =>
          observe(
            message,
            reply.ok ? "ok" : reply.error instanceof DoppelError ? reply.error.code : "error",
            reply.ok ? reply.value : undefined,
          )),
    });
  }

  /** The kinds this runtime knows. */
  get kinds(): ReadonlyMap<string, TwinKind> {
    return this.#kinds;
  }

  /** Commit statistics since start. */
  get stats(): Readonly<{ batches: number; batchedRequests: number; commitMs: number }> {
    return this.#stats;
  }

  /** Twins activated in memory. */
  get activations(): number {
    return this.#directory.size;
  }

  /** Sends a message to twin `id`; resolves with its reply once the turn has committed. */
  send(id: string, message: TwinMessage): Promise<unknown> {
    return this.#directory.send(id, message);
  }

  /** Applies telemetry items (already parsed JSON) to a twin. */
  telemetry(
    id: string,
    items: unknown[],
    via?: Transport,
  ): Promise<{ accepted: number; duplicates: number }> {
    return this.send(id, { type: "telemetry", items, via }) as Promise<
      { accepted: number; duplicates: number }
    >;
  }

  /** Merge-patches a twin's reported state. */
  patchReported(id: string, patch: unknown, via?: Transport): Promise<{ version: number }> {
    return this.send(id, { type: "reported", patch, via }) as Promise<{ version: number }>;
  }

  /** Merge-patches a twin's desired state, optionally only at version `ifMatch`. */
  patchDesired(id: string, patch: unknown, ifMatch?: number): Promise<TwinRecord> {
    return this.send(id, { type: "desired", patch, ifMatch }) as Promise<TwinRecord>;
  }

  /** Queues a command. */
  createCommand(
    id: string,
    command: Omit<Extract<TwinMessage, { type: "command.create" }>, "type">,
  ): Promise<{ command: CommandRecord; created: boolean }> {
    return this.send(id, { type: "command.create", ...command }) as Promise<
      { command: CommandRecord; created: boolean }
    >;
  }

  /** Hands the device its queued commands, marking them delivered. */
  deliverCommands(id: string, limit?: number, via?: Transport): Promise<CommandRecord[]> {
    return this.send(id, { type: "command.deliver", limit, via }) as Promise<CommandRecord[]>;
  }

  /** Records a command's result from the device. */
  completeCommand(
    id: string,
    commandId: string,
    status: "succeeded" | "failed",
    result?: unknown,
    via?: Transport,
  ): Promise<CommandRecord> {
    return this.send(id, {
      type: "command.result",
      commandId,
      status,
      result: result as CommandRecord["result"],
      via,
    }) as Promise<CommandRecord>;
  }

  /** Reads one command of a device from KV. */
  async getCommand(deviceId: string, commandId: string): Promise<CommandRecord | null> {
    const seq = parseCommandSeq(commandId);
    if (seq === undefined) return null;
    const entry = await this.#kv.get<CommandRecord>(keys.command(deviceId, seq));
    return entry.value?.id === commandId ? entry.value : null;
  }

  /** Forgets a twin held in memory (after its device was deleted). */
  evict(id: string): void {
    this.#directory.evict(id);
  }

  /** The in-memory activation of a twin, if any (for tests and diagnostics). */
  peek(id: string): Activation<TwinRecord, TwinMessage> | undefined {
    return this.#directory.peek(id);
  }

  /** Starts the timer loop (every `timerMs`) and idle collection (every `collectMs`). */
  start(timerMs = 1000, collectMs = 60_000): void {
    this.#waking = this.wakeForNewRules().catch((error) =>
      this.#logger.log("error", "timers", `Waking twins for new rules failed: ${error}`)
    ).then(() => {});
    this.#loops.push(setInterval(() => {
      this.runDueTimers().catch((error) =>
        this.#logger.log("error", "timers", `Timer sweep failed: ${error}`)
      );
    }, timerMs));
    this.#loops.push(setInterval(() => {
      this.#directory.collectIdle();
      this.sweepExpired().catch((error) =>
        this.#logger.log("error", "retention", `Retention sweep failed: ${error}`)
      );
    }, collectMs));
  }

  /**
   * Wakes every twin of a kind whose no-data rules changed since the last start, so each sets
   * the timer those rules need: a silent device gets a turn from nothing else. Returns how many
   * twins it woke. The rules each kind was last started with are kept under `["kind_rules", kind]`.
   */
  async wakeForNewRules(): Promise<number> {
    let woken = 0;
    for (const [name, kind] of this.#kinds) {
      const rules = kind.rules.filter((rule) => rule.rule === "no_data");
      if (rules.length === 0) continue;
      const signature = JSON.stringify(rules.map((r) => [r.name, r.forMs, r.metric ?? null]));
      const key: Deno.KvKey = ["kind_rules", name];
      if ((await this.#kv.get<string>(key)).value === signature) continue;
      const batch: Promise<unknown>[] = [];
      for await (const entry of this.#kv.list({ prefix: keys.devicesByKind(name) })) {
        if (this.#closing) return woken;
        const id = entry.key[entry.key.length - 1] as string;
        batch.push(
          this.send(id, { type: "wake" }).catch((error) => {
            if (!(error instanceof DoppelError && error.code === "not_found")) throw error;
          }),
        );
        woken++;
        // A few at a time: a large fleet is woken in the background without crowding out traffic.
        if (batch.length >= 50) await Promise.all(batch.splice(0));
      }
      await Promise.all(batch);
      await this.#kv.set(key, signature);
    }
    return woken;
  }

  /** Passivates twins idle past the timeout; returns how many. */
  collectIdle(): number {
    return this.#directory.collectIdle();
  }

  /** Sends a tick to every twin whose timer is due; returns how many were due. */
  runDueTimers(): Promise<number> {
    // One sweep at a time: a slow sweep must not overlap the next interval's.
    this.#timersRunning ??= this.#sweepTimers().finally(() => this.#timersRunning = null);
    return this.#timersRunning;
  }

  async #sweepTimers(): Promise<number> {
    const now = this.#clock.now();
    const due: Promise<unknown>[] = [];
    for await (
      const entry of this.#kv.list({ prefix: ["timers"], end: ["timers", now + 1] }, {
        limit: 1000,
      })
    ) {
      const [, dueAt, id] = entry.key as [string, number, string];
      due.push(
        this.send(id, { type: "tick", dueAt }).catch(async (error) => {
          if (error instanceof DoppelError && error.code === "not_found") {
            await this.#kv.delete(entry.key); // The twin is gone; so is its timer.
            return;
          }
          // Tried again in a minute (say, its kind is no longer loaded): the timer moves on, so
          // it neither fills the log every second nor keeps a place among the first 1,000 due
          // timers while the others wait. The tick at the new time is stale to the twin, which
          // then deletes it and sets its own.
          const retryAt = this.#clock.now() + TIMER_RETRY_MS;
          this.#logger.log(
            "error",
            "timers",
            `Timer for twin ${id} failed (tried again at ${
              new Date(retryAt).toISOString()
            }): ${error}`,
            { deviceId: id },
          );
          await this.#kv.atomic().check(entry).delete(entry.key)
            .set(keys.timer(retryAt, id), null).commit();
        }),
      );
    }
    await Promise.all(due);
    return due.length;
  }

  /**
   * Deletes what has fallen out of retention by now (history chunks), a batch at a time; returns
   * how many entries went. KV's `expireIn` would remove them too, but lazily.
   */
  async sweepExpired(): Promise<number> {
    const now = this.#clock.now();
    let removed = 0;
    for (;;) {
      const atomic = this.#kv.atomic();
      let n = 0;
      for await (
        const entry of this.#kv.list({ prefix: ["expiries"], end: ["expiries", now + 1] }, {
          limit: 400,
        })
      ) {
        atomic.delete(entry.key).delete(entry.key.slice(2));
        n++;
      }
      if (n === 0) return removed;
      await atomic.commit();
      removed += n;
    }
  }

  /** Stops the loops and waits for commits in flight. */
  async close(): Promise<void> {
    this.#closing = true;
    await this.#waking;
    for (const id of this.#loops.splice(0)) clearInterval(id);
    await this.#timersRunning;
    await this.#batcher.drain();
  }

  /** Reads a kind by name or fails with a sentence naming it. */
  kindOf(name: string): TwinKind {
    const kind = this.#kinds.get(name);
    if (!kind) throw new DoppelError("internal", `Twin kind "${name}" is not loaded.`);
    return kind;
  }

  /** @internal For {@link TwinBehavior}. */
  get internals(): { kv: Deno.Kv; clock: Clock; bus: EventBus; logger: Logger } {
    return { kv: this.#kv, clock: this.#clock, bus: this.#bus, logger: this.#logger };
  }
}

/**
 * What the runtime keeps beside a twin's state in its activation: the chunks its stored record
 * takes, so a shrinking record deletes its leftovers. A number, not an object and not the stored
 * text: whatever an activation keeps is copied by every garbage collection until the next turn.
 */
type StoredMeta = number;

/** Twins as actors: how to load, read for, run and encode a turn. */
class TwinBehavior implements Behavior<TwinRecord, TwinMessage> {
  #runtime: TwinRuntime;
  #randomId: () => string;
  #httpTimeoutMs: number | undefined;
  #history: boolean;
  // The last turn's time as ISO text: turns in the same millisecond share it.
  #iso = { ms: NaN, text: "" };

  constructor(
    runtime: TwinRuntime,
    randomId: () => string,
    httpTimeoutMs: number | undefined,
    history: boolean,
  ) {
    this.#runtime = runtime;
    this.#randomId = randomId;
    this.#httpTimeoutMs = httpTimeoutMs;
    this.#history = history;
  }

  async load(id: string): Promise<Loaded<TwinRecord> | null> {
    const stored = await loadTwin(this.#runtime.internals.kv, id);
    if (!stored) return null;
    const meta: StoredMeta = stored.chunks;
    return { state: stored.state, versionstamp: stored.versionstamp, meta };
  }

  async isCurrent(id: string, versionstamp: string): Promise<boolean> {
    return (await twinVersionstamp(this.#runtime.internals.kv, id)) === versionstamp;
  }

  pack(loaded: Loaded<TwinRecord>): unknown {
    return JSON.stringify(loaded.state);
  }

  unpack(packed: unknown): TwinRecord {
    return upgradeRecord(JSON.parse(packed as string));
  }

  tooLarge(error: CommitTooLargeError): Error {
    return new DoppelError(
      "payload_too_large",
      `The message needs more writes than one commit can hold (${error.message}); send it in smaller parts.`,
    );
  }

  notFound(id: string): Error {
    return new DoppelError("not_found", `Device ${id} has no twin (it may have been deleted).`);
  }

  plan(
    id: string,
    current: Loaded<TwinRecord>,
    messages: TwinMessage[],
  ): Plan<TwinRecord> | Promise<Plan<TwinRecord>> {
    // Most turns need nothing read first and are planned without a promise.
    const reading = this.#read(id, current.state, messages);
    if (reading instanceof Promise) {
      return reading.then((reads) => this.#planWith(id, current, messages, reads));
    }
    return this.#planWith(id, current, messages, reading);
  }

  #planWith(
    id: string,
    current: Loaded<TwinRecord>,
    messages: TwinMessage[],
    reads: TurnReads,
    now = this.#runtime.internals.clock.now(),
  ): Plan<TwinRecord> | Promise<Plan<TwinRecord>> {
    if (now !== this.#iso.ms) this.#iso = { ms: now, text: new Date(now).toISOString() };
    const kind = this.#runtime.kindOf(current.state.kind);
    const turn = runTurn(current.state, messages, reads, {
      kind,
      now,
      nowIso: this.#iso.text,
      randomId: this.#randomId,
      httpTimeoutMs: this.#httpTimeoutMs,
      history: this.#history,
    });
    if (turn.missing) return this.#readThenPlan(id, current, messages, reads, turn.missing, now);
    return this.#encode(id, current, turn, kind, now);
  }

  /** The turn closed a rollup bucket (or took a late point) whose stored chunk it needs. */
  async #readThenPlan(
    id: string,
    current: Loaded<TwinRecord>,
    messages: TwinMessage[],
    reads: TurnReads,
    missing: Deno.KvKey[],
    now: number,
  ): Promise<Plan<TwinRecord>> {
    const entries = await this.#runtime.internals.kv.getMany<RollupChunk[]>(missing);
    const chunks = new Map(reads.rollupChunks);
    entries.forEach((entry, i) => chunks.set(keyId(missing[i]), entry.value));
    // Run again at the same time, now with the chunk.
    return this.#planWith(id, current, messages, { ...reads, rollupChunks: chunks }, now);
  }

  /** The plan for a turn that has run: its writes, and what to release after commit. */
  #encode(
    id: string,
    current: Loaded<TwinRecord>,
    turn: TurnResult,
    kind: TwinKind,
    now: number,
  ): Plan<TwinRecord> {
    const { bus, logger } = this.#runtime.internals;
    // Notices go out once the turn is over: after its commit, or at once when it wrote nothing
    // (such a turn has only log lines to tell).
    const release = (): void => {
      for (const notice of turn.notices) {
        if (notice.type === "log") {
          logger.log(notice.level, "twin", notice.message, { deviceId: notice.deviceId });
        } else {
          bus.publish(notice);
        }
      }
    };
    if (!turn.changed) {
      return { state: current.state, replies: turn.replies, commit: null, release };
    }
    const state = turn.state;
    const previous = (current.meta as StoredMeta | undefined) ?? chunkCount(current.state);
    const encoded = encodeTwin(state, previous);
    const meta: StoredMeta = encoded.chunks;
    const mutations = encoded.mutations;
    let bytes = encoded.bytes;
    for (const command of turn.writes.commands) {
      const done = command.status !== "queued" && command.status !== "delivered";
      mutations.push({
        type: "set",
        key: keys.command(id, command.seq),
        value: command,
        ...(done ? { expireIn: COMMAND_LIMITS.keepFinishedMs } : {}),
      });
      bytes += 512 + JSON.stringify(command.payload ?? null).length +
        JSON.stringify(command.result ?? null).length;
    }
    for (const messageId of turn.writes.messageIds) {
      mutations.push({
        type: "set",
        key: keys.dedupe(id, messageId),
        value: 1,
        expireIn: DEDUPE_WINDOW_MS,
      });
      bytes += 64 + messageId.length;
    }
    for (const [key, commandId] of turn.writes.idempotency) {
      mutations.push({
        type: "set",
        key: keys.commandIdempotency(id, key),
        value: commandId,
        expireIn: IDEMPOTENCY_WINDOW_MS,
      });
      bytes += 128 + key.length;
    }
    for (const event of turn.writes.events) {
      mutations.push({
        type: "set",
        key: keys.event(id, event.seq),
        value: event,
        expireIn: EVENT_RETENTION_MS,
      });
      bytes += 256 + JSON.stringify(event.data ?? null).length;
    }
    const oldTimer = current.state.timerAt;
    if (oldTimer !== state.timerAt) {
      if (oldTimer !== null) mutations.push({ type: "delete", key: keys.timer(oldTimer, id) });
      if (state.timerAt !== null) {
        mutations.push({ type: "set", key: keys.timer(state.timerAt, id), value: null });
      }
    }
    const stale = turn.writes.staleTimer;
    if (stale !== null && stale !== state.timerAt) {
      mutations.push({ type: "delete", key: keys.timer(stale, id) });
    }
    bytes += encodeHistory(id, turn, kind, now, mutations);
    bytes += encodeAlarms(id, turn, mutations);
    return {
      state,
      meta,
      replies: turn.replies,
      commit: {
        checks: [{ key: keys.twin(id), versionstamp: current.versionstamp }],
        mutations,
        bytes,
      },
      release,
    };
  }

  /**
   * Reads what the turn needs: telemetry ids already seen, commands behind idempotency keys.
   * Most turns need nothing read, and get their answer without a promise.
   */
  #read(id: string, state: TwinRecord, messages: TwinMessage[]): TurnReads | Promise<TurnReads> {
    // The lists are made only when something needs reading: most turns find nothing.
    let messageIds: string[] | undefined;
    let idemKeys: string[] | undefined;
    let resultIds: string[] | undefined;
    for (const message of messages) {
      if (message.type === "telemetry") {
        for (const item of message.items) {
          const mid = (item as { id?: unknown } | null)?.id;
          if (typeof mid === "string" && mid.length > 0 && mid.length <= 128) {
            (messageIds ??= []).push(mid);
          }
        }
      } else if (message.type === "command.create" && message.idempotencyKey !== undefined) {
        (idemKeys ??= []).push(message.idempotencyKey);
      } else if (
        message.type === "command.result" &&
        !state.commands.pending.some((c) => c.id === message.commandId)
      ) {
        (resultIds ??= []).push(message.commandId);
      }
    }
    if (!messageIds && !idemKeys && !resultIds) return NO_READS;
    const kv = this.#runtime.internals.kv;
    const seenMessageIds = new Set<string>();
    const idempotent = new Map<string, CommandRecord>();
    const finishedCommandIds = new Set<string>();
    const reads: Promise<void>[] = [];
    const ids = messageIds ?? [];
    for (let i = 0; i < ids.length; i += 10) {
      const slice = ids.slice(i, i + 10);
      reads.push(
        kv.getMany(slice.map((mid) => keys.dedupe(id, mid))).then((entries) =>
          entries.forEach((entry, j) => {
            if (entry.versionstamp !== null) seenMessageIds.add(slice[j]);
          })
        ),
      );
    }
    for (const key of idemKeys ?? []) {
      reads.push((async () => {
        const entry = await kv.get<string>(keys.commandIdempotency(id, key));
        if (entry.value === null) return;
        const pending = state.commands.pending.find((c) => c.id === entry.value);
        const command = pending ?? await this.#runtime.getCommand(id, entry.value);
        if (command) idempotent.set(key, command);
      })());
    }
    for (const commandId of resultIds ?? []) {
      reads.push((async () => {
        if (await this.#runtime.getCommand(id, commandId)) finishedCommandIds.add(commandId);
      })());
    }
    return Promise.all(reads).then(() => ({ seenMessageIds, idempotent, finishedCommandIds }));
  }
}

/** What a turn that needs nothing read gets (never changed). */
const NO_READS: TurnReads = Object.freeze({
  seenMessageIds: new Set<string>(),
  idempotent: new Map<string, CommandRecord>(),
});

function randomHex(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(4));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Adds the writes for flushed raw chunks and changed rollup chunks; returns their bytes. */
function encodeHistory(
  id: string,
  turn: TurnResult,
  kind: Kind,
  now: number,
  mutations: Deno.KvMutation[],
): number {
  let bytes = 0;
  const expiring = (key: Deno.KvKey, value: unknown, expiresAt: number, size: number) => {
    // Data already past its retention is not written at all.
    if (expiresAt <= now) return;
    mutations.push({ type: "set", key, value, expireIn: expiresAt - now });
    mutations.push({ type: "set", key: keys.expiry(expiresAt, key), value: null });
    bytes += size + 2 * 96;
  };
  for (const chunk of turn.writes.rawChunks) {
    expiring(
      rawKey(id, chunk),
      chunk.points,
      chunk.lastTs + kind.retention.raw,
      chunk.points.length * 20,
    );
  }
  for (const { key, level, start, chunk } of turn.writes.rollupChunks) {
    expiring(key, chunk, rollupExpiry(level, start, kind.retention), chunk.start.length * 56 + 128);
  }
  return bytes;
}

/** Adds the writes for changed alarms and their indexes; returns their bytes. */
function encodeAlarms(id: string, turn: TurnResult, mutations: Deno.KvMutation[]): number {
  let bytes = 0;
  for (const { alarm, previous } of turn.writes.alarms) {
    const raisedAt = Date.parse(alarm.raisedAt);
    const keep = alarm.state === "cleared" ? { expireIn: ALARM_RETENTION_MS } : {};
    if (previous !== null && previous !== alarm.state) {
      mutations.push({ type: "delete", key: keys.alarmByState(previous, raisedAt, id, alarm.id) });
    }
    mutations.push(
      { type: "set", key: keys.alarm(id, alarm.id), value: alarm, ...keep },
      {
        type: "set",
        key: keys.alarmByState(alarm.state, raisedAt, id, alarm.id),
        value: null,
        ...keep,
      },
      { type: "set", key: keys.alarmId(alarm.id), value: id, ...keep },
      { type: "set", key: keys.alarmByTime(raisedAt, id, alarm.id), value: null, ...keep },
    );
    bytes += 1024 + JSON.stringify(alarm.details ?? null).length;
  }
  return bytes;
}
