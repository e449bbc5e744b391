/**
 * The twin's turn: given its record, a batch of messages and what was read for them, compute the
 * next record, a reply per message, the writes that must commit with it, and the notices to
 * release once it has. Pure: no I/O, no clock, no randomness but what is passed in, so a turn can
 * be replayed after a conflict and kinds are trivial to test.
 * @module
 */
import type { z } from "zod";
import {
  COMMAND_LIMITS,
  commandDueAt,
  commandId,
  type CommandRecord,
  type CommandStatus,
  expireDue,
  transition,
} from "../commands/model.ts";
import { bodyError, DoppelError, type FieldIssue, validationError } from "../errors.ts";
import {
  applyMergePatch,
  frozenCopy,
  isObject,
  type Json,
  jsonBytes,
  type JsonObject,
  protoKeyPath,
  reshapes,
  updateMeta,
} from "./json.ts";
import type { CommandOptions, TwinContext, TwinKind } from "./kind.ts";
import {
  type AlarmRecord,
  type AlarmState,
  newAlarm,
  repeatAlarm,
  type Severity,
} from "../rules/alarms.ts";
import {
  type Action,
  type Firing,
  initialState,
  onReading,
  onTime,
  type Rule,
  ruleDue,
} from "../rules/rules.ts";
import {
  HistoryWriter,
  NeedsRead,
  type RawChunk,
  type RollupChunkWrite,
} from "../telemetry/history.ts";
import type { RollupChunk } from "../telemetry/rollup.ts";
import { type Connection, type PublicTwin, publicTwin, type TwinRecord } from "./state.ts";
import {
  addTombstones,
  desiredSince,
  type DesiredUpdate,
  expireSessions,
  isOnline,
  presenceDue,
  type Transport,
} from "./presence.ts";

/** Limits on twin documents and telemetry. */
export const TWIN_LIMITS = {
  /** Largest desired or reported document, in bytes of JSON. */
  maxStateBytes: 32_768,
  /** Most items in one telemetry batch. */
  maxBatchItems: 500,
  /** Longest telemetry message `id`. */
  maxMessageIdLength: 128,
  /**
   * Longest telemetry field name. A field's name is part of its history's KV keys, and KV takes
   * keys of at most 2 KiB.
   */
  maxFieldNameLength: 256,
  /** A device `ts` further ahead than this (ms) is not sane; arrival time is used. */
  maxFutureSkewMs: 5 * 60_000,
  /** A device `ts` older than this (ms) is not sane; arrival time is used. */
  maxPastSkewMs: 30 * 86_400_000,
} as const;

/** A message to a twin. */
export type TwinMessage =
  | { type: "telemetry"; items: unknown[]; via?: Transport }
  | { type: "reported"; patch: unknown; via?: Transport }
  | { type: "desired"; patch: unknown; ifMatch?: number }
  | {
    type: "command.create";
    name: string;
    payload?: Json;
    ttl?: number;
    timeout?: number;
    idempotencyKey?: string;
  }
  | { type: "command.deliver"; limit?: number; via?: Transport }
  | {
    type: "command.result";
    commandId: string;
    status: "succeeded" | "failed";
    result?: Json;
    via?: Transport;
  }
  | { type: "command.peek"; limit?: number }
  | { type: "command.ack"; commandId: string }
  | { type: "session.open"; sessionId: string; transport: Transport; via: string; leaseMs: number }
  | { type: "session.renew"; sessionId: string; leaseMs: number }
  | { type: "session.close"; sessionId: string; reason: string }
  /** The device may no longer connect (disabled): its HTTP presence ends now, not at its timeout. */
  | { type: "presence.end"; reason: string }
  | { type: "desired.ack"; version: number }
  | { type: "alarm.acknowledge"; alarmId: string }
  | { type: "alarm.clear"; alarmId: string }
  | { type: "wake" }
  | { type: "tick"; dueAt: number };

/** What a session gets when it opens: what it must push to the device straight away. */
export interface SessionOpened {
  /** Desired changes since the device last acknowledged, coalesced; `null` if none. */
  desired: DesiredUpdate | null;
  /** Commands waiting to be handed over, oldest first. */
  commands: CommandRecord[];
}

/** What was read from KV for a batch before its turn: the only I/O a turn depends on. */
export interface TurnReads {
  /** Telemetry message ids already applied. */
  seenMessageIds: ReadonlySet<string>;
  /** Commands already created under an `Idempotency-Key`, by key. */
  idempotent: ReadonlyMap<string, CommandRecord>;
  /** Ids of finished commands that results were sent for (so a late result is 409, not 404). */
  finishedCommandIds?: ReadonlySet<string>;
  /** Stored rollup chunks the turn asked for, by key id (`null`: none stored). */
  rollupChunks?: ReadonlyMap<string, RollupChunk | null>;
}

/** What the turn gets from outside besides the record. */
export interface TurnEnv {
  /** The device's kind. */
  kind: TwinKind;
  /** The turn's time in ms. */
  now: number;
  /** `now` as an ISO 8601 string, when the caller has it already (many turns share a ms). */
  nowIso?: string;
  /** 8 random hex characters, for command ids. */
  randomId(): string;
  /** An HTTP-only device counts as offline this long (ms) after its last request. */
  httpTimeoutMs?: number;
  /** Keep telemetry history and rollups (default true; the kind may also turn it off). */
  history?: boolean;
}

/** Default HTTP inactivity timeout: 5 minutes. */
export const DEFAULT_HTTP_TIMEOUT_MS = 5 * 60_000;

/** An event in a twin's history, stored under `["events", deviceId, seq]`. */
export interface TwinEvent {
  /** Position in the twin's event history. */
  seq: number;
  /** What happened, such as `desired.changed` or a kind's own type. */
  type: string;
  /** When. */
  at: string;
  /** Details. */
  data?: Json;
}

/** Something to release once the turn has committed. */
export type Notice =
  | { type: "twin.changed"; deviceId: string; version: number; parts: string[] }
  | { type: "desired.changed"; deviceId: string; version: number; patch: JsonObject }
  | { type: "command.changed"; command: CommandRecord }
  | { type: "event"; deviceId: string; event: TwinEvent }
  | { type: "presence.changed"; deviceId: string; connection: Connection }
  | { type: "telemetry"; deviceId: string; items: Array<{ ts: number; values: JsonObject }> }
  | {
    type: "alarm.changed";
    deviceId: string;
    alarm: AlarmRecord;
    change: "raised" | "repeated" | "acknowledged" | "cleared";
  }
  | { type: "log"; level: "warn" | "error"; message: string; deviceId: string };

/** The reply to one message: a value or an error. */
export type Reply = { ok: true; value: unknown } | { ok: false; error: DoppelError };

/** Everything a turn decided. */
export interface TurnResult {
  /** The next record. */
  state: TwinRecord;
  /** One reply per message, in order. */
  replies: Reply[];
  /** Whether anything must be committed. */
  changed: boolean;
  /** Records to commit beside the twin. */
  writes: {
    /** Commands created or changed. */
    commands: CommandRecord[];
    /** Telemetry message ids applied now. */
    messageIds: string[];
    /** Idempotency keys used now, with the command each created. */
    idempotency: Array<[string, string]>;
    /** Events recorded. */
    events: TwinEvent[];
    /** A stale `["timers"]` entry to remove, besides the record's own. */
    staleTimer: number | null;
    /** Alarms raised or changed, with the state each was in before (for its index). */
    alarms: AlarmWrite[];
    /** Raw telemetry chunks flushed. */
    rawChunks: RawChunk[];
    /** Rollup chunks changed. */
    rollupChunks: RollupChunkWrite[];
  };
  /** What to release after commit. */
  notices: Notice[];
  /** Stored data the turn needs read first; when set, nothing else in the result counts. */
  missing?: Deno.KvKey[];
}

/** An alarm to write, and the state it was stored in before (`null` when new). */
export interface AlarmWrite {
  /** The alarm now. */
  alarm: AlarmRecord;
  /** Its stored state before this turn. */
  previous: AlarmState | null;
}

/** Runs one turn over a batch of messages. */
export function runTurn(
  record: TwinRecord,
  messages: readonly TwinMessage[],
  reads: TurnReads,
  env: TurnEnv,
): TurnResult {
  const turn = new Turn(record, reads, env);
  try {
    const replies = new Array<Reply>(messages.length);
    for (let i = 0; i < messages.length; i++) replies[i] = turn.apply(messages[i]);
    return turn.finish(replies, record);
  } catch (error) {
    if (!(error instanceof NeedsRead)) throw error;
    return {
      state: record,
      replies: [],
      changed: false,
      writes: {
        commands: [],
        messageIds: [],
        idempotency: [],
        events: [],
        staleTimer: null,
        alarms: [],
        rawChunks: [],
        rollupChunks: [],
      },
      notices: [],
      missing: [error.key],
    };
  }
}

type Draft = {
  state: TwinRecord;
  /** Whether `state` is this message's own copy, safe to assign to in place. */
  owned: boolean;
  /** Whether `state.rules` was made since the last checkpoint, safe to assign to in place. */
  ownedRules: boolean;
  /** Replaced, never changed in place, so a checkpoint can keep the old one. */
  commands: Map<number, CommandRecord>;
  /** Replaced, never changed in place. */
  alarms: Map<string, AlarmWrite>;
  messageIds: string[];
  idempotency: Array<[string, string]>;
  events: TwinEvent[];
  notices: Notice[];
  changed: boolean;
};

class Turn {
  #draft: Draft;
  #reads: TurnReads;
  #env: TurnEnv;
  #staleTimer: number | null = null;
  #seen: Set<string> | undefined;
  #idem: Map<string, CommandRecord> | undefined;
  #history: HistoryWriter | undefined;
  #nowIso: string;
  #record: TwinRecord;
  #applied = 0;

  constructor(record: TwinRecord, reads: TurnReads, env: TurnEnv) {
    this.#record = record;
    this.#nowIso = env.nowIso ?? new Date(env.now).toISOString();
    this.#draft = {
      state: record,
      owned: false,
      ownedRules: false,
      commands: NO_COMMANDS,
      alarms: NO_ALARMS,
      messageIds: [],
      idempotency: [],
      events: [],
      notices: [],
      changed: false,
    };
    this.#reads = reads;
    this.#env = env;
  }

  /** Applies one message on a copy of the draft; the copy is kept only if it succeeds. */
  apply(message: TwinMessage): Reply {
    const draft = this.#draft;
    // The first message (most turns have one) goes back, if it fails, to the turn's start,
    // which needs no checkpoint taken.
    const saved = this.#applied++ === 0 ? undefined : checkpoint(draft);
    draft.owned = false;
    draft.ownedRules = false;
    this.#history?.checkpoint();
    // History writes (raw chunks flushed, rollups merged) go back with the message too.
    const historyMark = this.#history?.mark();
    try {
      const value = this.#dispatch(draft, message);
      return { ok: true, value };
    } catch (error) {
      rollback(draft, saved ?? startOf(this.#record));
      if (historyMark) this.#history!.restore(historyMark);
      else this.#history = undefined; // Made by this message: all of it was this message's.
      if (error instanceof DoppelError) return { ok: false, error };
      if (error instanceof NeedsRead) throw error;
      // Anything else (a bug, or input past what the turn can take) fails this message alone:
      // the others in the turn still apply. It is logged, as nobody else will see it.
      draft.notices.push({
        type: "log",
        level: "error",
        message: `A ${message.type} message could not be applied: ${describe(error)}`,
        deviceId: draft.state.id,
      });
      return {
        ok: false,
        error: new DoppelError("internal", `The ${message.type} message could not be applied.`),
      };
    }
  }

  /** Sets fields of the draft's record, copying it first if this message has not yet. */
  #update(draft: Draft, fields: Partial<TwinRecord>): void {
    if (draft.owned) Object.assign(draft.state, fields);
    else {
      draft.state = { ...draft.state, ...fields };
      draft.owned = true;
    }
  }

  /** Sets one field of the draft's record (as {@link #update}, without a fields object). */
  #set<K extends keyof TwinRecord>(draft: Draft, name: K, value: TwinRecord[K]): void {
    if (!draft.owned) {
      draft.state = { ...draft.state };
      draft.owned = true;
    }
    draft.state[name] = value;
  }

  finish(replies: Reply[], original: TwinRecord): TurnResult {
    const draft = this.#draft;
    let state = draft.state;
    let due = minDue(nextDue(state.commands.pending), presenceDue(state.presence));
    for (const rule of this.#env.kind.rules) {
      due = minDue(due, ruleDue(rule, this.#ruleState(state, rule)));
    }
    // A timer already set earlier than needed is kept: it fires, finds little or nothing due, and
    // sets the next one. Moving it on every message (each reading pushes a no-data deadline and
    // an HTTP device's inactivity timeout later) would cost two writes a message.
    const keep = state.timerAt !== null && state.timerAt > this.#env.now &&
      (due === null || state.timerAt <= due);
    if (!keep && due !== state.timerAt) {
      state = { ...state, timerAt: due };
      draft.changed = true;
    }
    if (this.#staleTimer !== null) draft.changed = true;
    return {
      state: draft.changed ? state : original,
      replies,
      changed: draft.changed,
      writes: {
        commands: draft.commands.size ? [...draft.commands.values()] : [],
        messageIds: draft.messageIds,
        idempotency: draft.idempotency,
        events: draft.events,
        staleTimer: this.#staleTimer,
        alarms: draft.alarms.size ? [...draft.alarms.values()] : [],
        rawChunks: this.#history?.raw ?? [],
        rollupChunks: this.#history?.rollupChunks() ?? [],
      },
      notices: draft.notices,
    };
  }

  #dispatch(draft: Draft, message: TwinMessage): unknown {
    if ("via" in message && message.via === "http") this.#httpActivity(draft);
    switch (message.type) {
      case "telemetry":
        return this.#telemetry(draft, message.items);
      case "reported":
        return this.#reported(draft, message.patch);
      case "desired":
        return this.#desired(draft, message.patch, message.ifMatch);
      case "command.create":
        return this.#createCommand(draft, message);
      case "command.deliver":
        return this.#deliver(draft, message.limit ?? COMMAND_LIMITS.maxPending);
      case "command.result":
        return this.#result(draft, message.commandId, message.status, message.result);
      case "command.peek":
        this.#expire(draft);
        return draft.state.commands.pending
          .filter((c) => c.status === "queued")
          .slice(0, message.limit ?? COMMAND_LIMITS.maxPending);
      case "command.ack":
        return this.#ack(draft, message.commandId);
      case "session.open":
        return this.#openSession(draft, message);
      case "session.renew":
        return this.#renewSession(draft, message.sessionId, message.leaseMs);
      case "session.close":
        return this.#closeSession(draft, message.sessionId, message.reason);
      case "presence.end":
        if (draft.state.presence.httpUntil !== null) {
          this.#update(draft, { presence: { ...draft.state.presence, httpUntil: null } });
          draft.changed = true;
        }
        this.#settlePresence(draft, message.reason);
        return {};
      case "alarm.acknowledge":
        return this.#acknowledgeAlarm(draft, message.alarmId);
      case "alarm.clear": {
        const open = Object.values(draft.state.alarms).find((a) => a.id === message.alarmId);
        if (!open) throw alarmNotOpen(message.alarmId);
        return this.#clearAlarm(draft, open.type, "operator");
      }
      case "desired.ack":
        if (message.version > draft.state.desiredAcked) {
          this.#update(draft, {
            desiredAcked: Math.min(message.version, draft.state.version),
          });
          draft.changed = true;
        }
        return { acked: draft.state.desiredAcked };
      case "wake":
        return {}; // Only for the turn's end: timers set from the state as it is.
      case "tick":
        return this.#tick(draft, message.dueAt);
    }
  }

  #httpActivity(draft: Draft): void {
    const now = this.#env.now;
    const timeout = this.#env.httpTimeoutMs ?? DEFAULT_HTTP_TIMEOUT_MS;
    this.#update(draft, {
      presence: { ...draft.state.presence, httpUntil: now + timeout },
      connection: { ...draft.state.connection, lastSeenAt: this.#nowIso },
    });
    draft.changed = true;
    this.#settlePresence(draft, "request", "http");
  }

  #openSession(
    draft: Draft,
    message: Extract<TwinMessage, { type: "session.open" }>,
  ): SessionOpened {
    const now = this.#env.now;
    const state = draft.state;
    this.#update(draft, {
      presence: {
        ...state.presence,
        sessions: {
          ...state.presence.sessions,
          [message.sessionId]: {
            transport: message.transport,
            via: message.via,
            openedAt: now,
            leaseUntil: now + message.leaseMs,
          },
        },
      },
      connection: { ...state.connection, lastSeenAt: this.#nowIso },
    });
    draft.changed = true;
    this.#settlePresence(draft, "connect", message.transport);
    this.#expire(draft);
    return {
      desired: desiredSince(draft.state, draft.state.desiredAcked),
      commands: draft.state.commands.pending.filter((c) => c.status === "queued"),
    };
  }

  #renewSession(draft: Draft, sessionId: string, leaseMs: number): { renewed: boolean } {
    const session = draft.state.presence.sessions[sessionId];
    if (!session) return { renewed: false };
    const now = this.#env.now;
    this.#update(draft, {
      presence: {
        ...draft.state.presence,
        sessions: {
          ...draft.state.presence.sessions,
          [sessionId]: { ...session, leaseUntil: now + leaseMs },
        },
      },
    });
    draft.changed = true;
    return { renewed: true };
  }

  #closeSession(draft: Draft, sessionId: string, reason: string): { closed: boolean } {
    if (!(sessionId in draft.state.presence.sessions)) return { closed: false };
    const sessions = { ...draft.state.presence.sessions };
    const transport = sessions[sessionId].transport;
    delete sessions[sessionId];
    this.#update(draft, {
      presence: { ...draft.state.presence, sessions },
      connection: { ...draft.state.connection, lastSeenAt: this.#nowIso },
    });
    draft.changed = true;
    this.#settlePresence(draft, reason, transport);
    return { closed: true };
  }

  /** A rule's remembered state, or its initial one. */
  #ruleState(state: TwinRecord, rule: Rule): RuleStateOf {
    // A rule new to this twin counts from its last contact (or its registration): a no-data rule
    // added to a kind does not call a device silent that spoke a minute ago.
    return state.rules[rule.name] ??
      initialState(rule, Date.parse(state.connection.lastSeenAt ?? state.createdAt));
  }

  /** Stores a rule's new state and, if it started or stopped firing, does what it says. */
  #applyFiring(draft: Draft, rule: Rule, firing: Firing): void {
    const before = draft.state.rules[rule.name];
    if (before !== firing.state) {
      if (draft.ownedRules && draft.owned) draft.state.rules[rule.name] = firing.state;
      else {
        this.#set(draft, "rules", { ...draft.state.rules, [rule.name]: firing.state });
        draft.ownedRules = true;
      }
      draft.changed = true;
    }
    if (!firing.change) return;
    const type = rule.alarm?.type ?? rule.name;
    // The alarm (or event) first, in a step of its own: a refused action must not take it back,
    // since the rule's state has moved on and would not raise or clear it again.
    this.#ruleStep(draft, rule, () => {
      if (firing.change === "raise") {
        if (rule.alarm) {
          this.#raiseAlarm(
            draft,
            type,
            rule.alarm.severity,
            rule.alarm.message ?? `Rule ${rule.name} fired.`,
            { rule: rule.name, ...firing.details },
          );
        } else this.#recordEvent(draft, "rule.fired", { rule: rule.name, ...firing.details });
      } else {
        if (rule.alarm) this.#clearAlarm(draft, type, `rule ${rule.name}`);
        else this.#recordEvent(draft, "rule.cleared", { rule: rule.name, ...firing.details });
      }
    });
    const actions = firing.change === "raise" ? rule.onRaise : rule.onClear;
    if (actions && actions.length > 0) {
      this.#ruleStep(draft, rule, () => {
        for (const action of actions) this.#act(draft, action);
      });
    }
  }

  /** Runs one step of a firing rule; if it is refused, undoes the step and records why. */
  #ruleStep(draft: Draft, rule: Rule, step: () => void): void {
    const saved = checkpoint(draft);
    try {
      step();
    } catch (error) {
      // A rule whose action is refused (say, a command over the pending cap) does not lose the
      // reading: its state moves on, the refusal is recorded.
      rollback(draft, saved);
      const message = describe(error);
      this.#recordEvent(draft, "rule.failed", { rule: rule.name, message });
      draft.notices.push({
        type: "log",
        level: "warn",
        message: `Rule ${rule.name} could not act: ${message}`,
        deviceId: draft.state.id,
      });
    }
  }

  #act(draft: Draft, action: Action): void {
    if ("command" in action) {
      this.#newCommand(draft, action.command, action.payload ?? null, action, "twin");
    } else {
      this.#patchState(draft, "desired", action.desired, this.#env.kind.desired);
    }
  }

  #raiseAlarm(
    draft: Draft,
    type: string,
    severity: Severity,
    message: string,
    details: Json | undefined,
  ): void {
    const now = this.#env.now;
    const open = draft.state.alarms[type];
    const alarm = open ? repeatAlarm(open, severity, message, details, now) : newAlarm(
      // Time first, so a device's alarms list in the order they were raised.
      `${now.toString(36).padStart(9, "0")}${this.#env.randomId()}`,
      draft.state.id,
      type,
      severity,
      message,
      details,
      now,
    );
    this.#writeAlarm(draft, alarm, open ? "repeated" : "raised");
  }

  #clearAlarm(draft: Draft, type: string, by: string): AlarmRecord | null {
    const open = draft.state.alarms[type];
    if (!open) return null;
    const alarm: AlarmRecord = {
      ...open,
      state: "cleared",
      clearedAt: this.#nowIso,
      clearedBy: by,
    };
    this.#writeAlarm(draft, alarm, "cleared");
    return alarm;
  }

  #acknowledgeAlarm(draft: Draft, alarmId: string): AlarmRecord {
    const open = Object.values(draft.state.alarms).find((a) => a.id === alarmId);
    if (!open) throw alarmNotOpen(alarmId);
    if (open.state === "acknowledged") return open;
    const alarm: AlarmRecord = {
      ...open,
      state: "acknowledged",
      acknowledgedAt: this.#nowIso,
    };
    this.#writeAlarm(draft, alarm, "acknowledged");
    return alarm;
  }

  /** Records an alarm change: the twin's open alarms, the write, an event and a notice. */
  #writeAlarm(
    draft: Draft,
    alarm: AlarmRecord,
    change: "raised" | "repeated" | "acknowledged" | "cleared",
  ): void {
    const alarms = { ...draft.state.alarms };
    if (alarm.state === "cleared") delete alarms[alarm.type];
    else alarms[alarm.type] = alarm;
    const stored = draft.alarms.get(alarm.id);
    const previous = stored
      ? stored.previous
      : change === "raised"
      ? null
      : draft.state.alarms[alarm.type]?.state ?? null;
    this.#update(draft, { alarms });
    draft.alarms = new Map(draft.alarms).set(alarm.id, { alarm, previous });
    draft.changed = true;
    this.#recordEvent(draft, `alarm.${change}`, {
      alarmId: alarm.id,
      type: alarm.type,
      severity: alarm.severity,
      count: alarm.count,
    });
    draft.notices.push({ type: "alarm.changed", deviceId: alarm.deviceId, alarm, change });
  }

  /** Moves `connection.status` to what presence now says, recording the change and its reason. */
  #settlePresence(draft: Draft, reason: string, transport?: Transport): void {
    const now = this.#env.now;
    const online = isOnline(draft.state.presence, now);
    const current = draft.state.connection.status;
    if (online === (current === "online")) return;
    const status = online ? "online" : "offline";
    const at = this.#nowIso;
    const connection: Connection = { ...draft.state.connection, status, since: at, reason };
    this.#update(draft, { connection });
    draft.changed = true;
    this.#recordEvent(draft, `presence.${status}`, {
      reason,
      ...(transport ? { transport } : {}),
    });
    draft.notices.push({ type: "presence.changed", deviceId: draft.state.id, connection });
  }

  #ack(draft: Draft, id: string): CommandRecord | null {
    this.#expire(draft);
    const command = draft.state.commands.pending.find((c) => c.id === id);
    // Only a queued command becomes delivered; one that expired meanwhile stays expired.
    if (!command || command.status !== "queued") return null;
    const now = this.#env.now;
    const next = transition(command, "delivered", now, {
      deliveredAt: this.#nowIso,
      timeoutAt: new Date(now + command.timeout * 1000).toISOString(),
    });
    this.#update(draft, {
      commands: {
        ...draft.state.commands,
        pending: draft.state.commands.pending.map((c) => (c.id === id ? next : c)),
      },
    });
    this.#recordCommand(draft, next);
    return next;
  }

  #telemetry(draft: Draft, items: unknown[]): { accepted: number; duplicates: number } {
    const { kind, now } = this.#env;
    if (items.length === 0) {
      throw bodyError(
        "bad_request",
        "The telemetry batch is empty.",
        "must hold at least one item",
      );
    }
    if (items.length > TWIN_LIMITS.maxBatchItems) {
      throw new DoppelError(
        "payload_too_large",
        `A telemetry batch holds at most ${TWIN_LIMITS.maxBatchItems} items; got ${items.length}.`,
      );
    }
    const batch = items.length > 1;
    // Items as the telemetry notice carries them, and their message ids beside them.
    // Sized up front: most batches are one reading, and a grown array wastes its spare room.
    const parsed = new Array<{ ts: number; values: JsonObject }>(items.length);
    const ids = new Array<string | undefined>(items.length);
    let count = 0;
    let issues: FieldIssue[] | undefined;
    for (let index = 0; index < items.length; index++) {
      const item = items[index];
      const prefix = batch ? `items[${index}]` : "";
      if (!isObject(item)) {
        (issues ??= []).push({ field: prefix || "(body)", message: "must be a JSON object" });
        continue;
      }
      if (Object.hasOwn(item, "__proto__")) {
        (issues ??= []).push({
          field: fieldAt(prefix, "__proto__"),
          message: "a field may not be named __proto__",
        });
        continue;
      }
      for (const field in item) {
        if (field.length > TWIN_LIMITS.maxFieldNameLength) {
          (issues ??= []).push({
            field: fieldAt(prefix, `${field.slice(0, 64)}…`),
            message: `field names are at most ${TWIN_LIMITS.maxFieldNameLength} characters`,
          });
        }
      }
      const { ts, id } = item;
      const values = "ts" in item || "id" in item ? withoutTsAndId(item) : item;
      if (
        id !== undefined && (typeof id !== "string" || id.length === 0 ||
          id.length > TWIN_LIMITS.maxMessageIdLength)
      ) {
        (issues ??= []).push({
          field: fieldAt(prefix, "id"),
          message: "must be a string of 1 to 128 characters",
        });
      }
      const time = parseTs(ts);
      if (time === null) {
        (issues ??= []).push({
          field: fieldAt(prefix, "ts"),
          message: "must be epoch milliseconds or an ISO 8601 time",
        });
      }
      const result = kind.telemetry.safeParse(values);
      if (!result.success) {
        for (const issue of zodIssues(result.error)) {
          (issues ??= []).push({
            field: fieldAt(prefix, issue.field) || "(body)",
            message: issue.message,
          });
        }
      }
      if (issues === undefined && result.success) {
        const sane = time !== undefined && time !== null &&
          time <= now + TWIN_LIMITS.maxFutureSkewMs && time >= now - TWIN_LIMITS.maxPastSkewMs;
        parsed[count] = { ts: sane ? time : now, values: result.data as JsonObject };
        ids[count++] = id as string | undefined;
      }
    }
    if (issues !== undefined) {
      throw validationError(
        batch ? "Telemetry batch refused whole:" : "Telemetry refused:",
        issues,
      );
    }
    let accepted = 0;
    let duplicates = 0;
    // What the live views get: the items applied now, not the duplicates.
    let applied = parsed;
    const keepHistory = kind.history && this.#env.history !== false;
    for (let i = 0; i < parsed.length; i++) {
      const item = parsed[i];
      const id = ids[i];
      if (id !== undefined) {
        if (this.#reads.seenMessageIds.has(id) || this.#seen?.has(id)) {
          duplicates++;
          if (applied === parsed) applied = parsed.slice(0, i);
          continue;
        }
        (this.#seen ??= new Set()).add(id);
        draft.messageIds.push(id);
      }
      accepted++;
      if (applied !== parsed) applied.push(item);
      const telemetry = draft.state.telemetry;
      const at = item.ts === now ? this.#nowIso : new Date(item.ts).toISOString();
      // An item older than what is already shown goes to history only: `last` never goes back.
      // (ISO 8601 times of the same form compare as text, without parsing one per reading.)
      // Rules follow the readings in order too: a late one (backfill, a resend) would otherwise
      // start or end a duration from the past, or compare a rate against the wrong reading.
      const late = telemetry.lastAt !== null && at < telemetry.lastAt;
      if (!late) {
        this.#set(draft, "telemetry", { last: { ...telemetry.last, ...item.values }, lastAt: at });
      }
      if (keepHistory) this.#keepHistory(draft, item.ts, item.values);
      for (const rule of late ? NO_RULES : kind.rules) {
        const metric = "metric" in rule ? rule.metric : undefined;
        const value = metric === undefined ? undefined : numericValue(item.values[metric]);
        if (rule.rule === "no_data" && metric !== undefined && value === undefined) continue;
        // Silence is measured on the server's clock, from when readings arrive: a device whose
        // clock is behind is not silent, and the timer that wakes the twin runs on this clock.
        const time = rule.rule === "no_data" ? now : item.ts;
        this.#applyFiring(
          draft,
          rule,
          onReading(rule, this.#ruleState(draft.state, rule), time, value),
        );
      }
      const onTelemetry = kind.handlers.onTelemetry;
      if (onTelemetry) {
        this.#runHandler(
          draft,
          "onTelemetry",
          (ctx) => onTelemetry(ctx, frozenCopy({ ...item.values, ts: item.ts })),
        );
      }
    }
    this.#set(draft, "connection", { ...draft.state.connection, lastSeenAt: this.#nowIso });
    if (accepted > 0) {
      draft.notices.push({
        type: "telemetry",
        deviceId: draft.state.id,
        items: applied,
      });
    }
    draft.changed = true;
    return { accepted, duplicates };
  }

  /** Adds a reading's numeric values (booleans as 0 or 1) to the twin's history. */
  #keepHistory(draft: Draft, ts: number, values: JsonObject): void {
    const fields = this.#env.kind.historyFields;
    const before = draft.state.history;
    let history = before;
    for (const metric in values) {
      const value = numericValue(values[metric]);
      if (value === undefined || (fields && !fields.has(metric))) continue;
      if (!this.#history) {
        this.#history = new HistoryWriter(draft.state.id, this.#reads.rollupChunks ?? NO_CHUNKS);
      }
      // With the first point kept: fields the kind no longer keeps history for go (a no-op once
      // they have).
      if (fields && history === before) history = this.#history.keepOnly(history, fields);
      history = this.#history.add(history, metric, ts, value);
    }
    if (history !== before) this.#set(draft, "history", history);
  }

  #reported(draft: Draft, patch: unknown): { version: number } {
    const { kind } = this.#env;
    const result = this.#patchState(draft, "reported", patch, kind.reported);
    this.#update(draft, {
      connection: { ...draft.state.connection, lastSeenAt: this.#nowIso },
    });
    draft.changed = true;
    if (result) {
      this.#runHandler(
        draft,
        "onReported",
        (ctx) => kind.handlers.onReported?.(ctx, frozenCopy(result), ctx.reported),
      );
    }
    return { version: draft.state.version };
  }

  #desired(draft: Draft, patch: unknown, ifMatch: number | undefined): TwinRecord {
    const { kind } = this.#env;
    if (ifMatch !== undefined && ifMatch !== draft.state.version) {
      throw new DoppelError(
        "precondition_failed",
        `If-Match version ${ifMatch} does not match the twin's version ${draft.state.version}.`,
        { version: draft.state.version },
      );
    }
    const result = this.#patchState(draft, "desired", patch, kind.desired);
    if (result) {
      this.#runHandler(
        draft,
        "onDesired",
        (ctx) => kind.handlers.onDesired?.(ctx, frozenCopy(result), ctx.desired),
      );
    }
    return draft.state;
  }

  /** Applies a merge patch to desired or reported; returns the patch, or null if it was a no-op. */
  #patchState(
    draft: Draft,
    part: "desired" | "reported",
    patch: unknown,
    schema: z.ZodType,
  ): JsonObject | null {
    if (!isObject(patch)) {
      throw new DoppelError("bad_request", `A ${part} patch must be a JSON object.`, {
        fields: [{ field: "(body)", message: "must be a JSON object" }],
      });
    }
    const proto = protoKeyPath(patch);
    if (proto !== undefined) {
      throw validationError(`The ${part} patch is invalid:`, [{
        field: proto,
        message: "a property may not be named __proto__",
      }]);
    }
    const state = draft.state;
    const next = applyMergePatch(state[part], patch) as JsonObject;
    const bytes = jsonBytes(next);
    if (bytes > TWIN_LIMITS.maxStateBytes) {
      throw new DoppelError(
        "payload_too_large",
        `The ${part} document would be ${bytes} bytes, over the cap of ${TWIN_LIMITS.maxStateBytes}.`,
      );
    }
    const checked = schema.safeParse(next);
    if (!checked.success) {
      const issues = zodIssues(checked.error).map((issue) => ({
        field: issue.field || "(body)",
        message: issue.message,
      }));
      throw validationError(`The ${part} patch is invalid:`, issues);
    }
    if (JSON.stringify(next) === JSON.stringify(state[part])) return null;
    const version = state.version + 1;
    const stamp = { updatedAt: this.#nowIso, version };
    this.#update(draft, {
      version,
      [part]: next,
      metadata: {
        ...state.metadata,
        [part]: updateMeta(state.metadata[part], patch, stamp, state[part]),
      },
    });
    if (part === "desired") {
      const { tombstones, horizon } = addTombstones(
        state.desiredTombstones,
        patch,
        version,
        state.desired,
      );
      // A device that missed a change of shape gets the whole document on catch-up.
      const reshaped = reshapes(state.desired, patch) ? version : 0;
      this.#update(draft, {
        desiredTombstones: tombstones,
        tombstoneHorizon: Math.max(state.tombstoneHorizon, horizon, reshaped),
      });
    }
    draft.changed = true;
    draft.notices.push({
      type: "twin.changed",
      deviceId: state.id,
      version,
      parts: [part],
    });
    if (part === "desired") {
      draft.notices.push({ type: "desired.changed", deviceId: state.id, version, patch });
    }
    return patch;
  }

  #createCommand(
    draft: Draft,
    message: Extract<TwinMessage, { type: "command.create" }>,
  ): { command: CommandRecord; created: boolean } {
    if (message.idempotencyKey !== undefined) {
      const earlier = this.#idem?.get(message.idempotencyKey) ??
        this.#reads.idempotent.get(message.idempotencyKey);
      if (earlier) return { command: earlier, created: false };
    }
    const command = this.#newCommand(draft, message.name, message.payload ?? null, {
      ttl: message.ttl,
      timeout: message.timeout,
    }, "operator");
    if (message.idempotencyKey !== undefined) {
      (this.#idem ??= new Map()).set(message.idempotencyKey, command);
      draft.idempotency.push([message.idempotencyKey, command.id]);
    }
    return { command, created: true };
  }

  #newCommand(
    draft: Draft,
    name: string,
    payload: Json,
    options: CommandOptions,
    source: CommandRecord["source"],
  ): CommandRecord {
    const { kind, now } = this.#env;
    const schemas = kind.commands;
    const declared = Object.keys(schemas);
    // Own names only: `constructor` or `toString` are no kind's commands.
    const known = Object.hasOwn(schemas, name);
    if (declared.length > 0 && !known) {
      throw new DoppelError(
        "validation_failed",
        `Command "${name}" is not one kind "${kind.kind}" declares (${declared.join(", ")}).`,
        { fields: [{ field: "name", message: `must be one of ${declared.join(", ")}` }] },
      );
    }
    const schema = known ? schemas[name] : undefined;
    if (schema) {
      let checked = schema.safeParse(payload ?? undefined);
      if (!checked.success && payload === null) {
        // An omitted payload stands for `{}` when the schema is an object whose fields are optional.
        const empty = schema.safeParse({});
        if (empty.success) {
          checked = empty;
          payload = {};
        }
      }
      if (!checked.success) {
        const issues = zodIssues(checked.error).map((issue) => ({
          field: issue.field ? `payload.${issue.field}` : "payload",
          message: issue.message,
        }));
        throw validationError(`The payload of command "${name}" is invalid:`, issues);
      }
    }
    if (jsonBytes(payload) > COMMAND_LIMITS.maxPayloadBytes) {
      throw new DoppelError(
        "payload_too_large",
        `A command payload may be at most ${COMMAND_LIMITS.maxPayloadBytes} bytes.`,
      );
    }
    const state = draft.state;
    if (state.commands.pending.length >= COMMAND_LIMITS.maxPending) {
      throw new DoppelError(
        "conflict",
        `Device ${state.id} already has ${COMMAND_LIMITS.maxPending} commands waiting; wait for some to finish.`,
      );
    }
    let waiting = jsonBytes(payload ?? null);
    for (const pending of state.commands.pending) waiting += jsonBytes(pending.payload);
    if (waiting > COMMAND_LIMITS.maxPendingBytes) {
      throw new DoppelError(
        "conflict",
        `Device ${state.id} would have ${waiting} bytes of command payloads waiting, over ${COMMAND_LIMITS.maxPendingBytes}; wait for some to finish.`,
      );
    }
    // Checked here too, not only by the operator API: handlers and rule actions pass these, and
    // a NaN or negative one would make the command's times invalid.
    const ttl = commandSeconds(
      "ttl",
      options.ttl,
      COMMAND_LIMITS.defaultTtl,
      COMMAND_LIMITS.maxTtl,
    );
    const timeout = commandSeconds(
      "timeout",
      options.timeout,
      COMMAND_LIMITS.defaultTimeout,
      COMMAND_LIMITS.maxTimeout,
    );
    const seq = state.commands.nextSeq;
    const at = this.#nowIso;
    const command: CommandRecord = {
      id: commandId(seq, this.#env.randomId()),
      seq,
      deviceId: state.id,
      name,
      payload: payload ?? null,
      status: "queued",
      source,
      createdAt: at,
      expiresAt: new Date(now + ttl * 1000).toISOString(),
      timeout,
      history: [{ status: "queued", at }],
    };
    this.#update(draft, {
      commands: { nextSeq: seq + 1, pending: [...state.commands.pending, command] },
    });
    this.#recordCommand(draft, command);
    return command;
  }

  #deliver(draft: Draft, limit: number): CommandRecord[] {
    const now = this.#env.now;
    this.#expire(draft);
    const delivered: CommandRecord[] = [];
    // Handed over oldest first, up to `limit`, and within a byte budget (at least one): what a
    // poll marks delivered is written in one commit.
    let bytes = 0;
    const pending = draft.state.commands.pending.map((command) => {
      if (command.status !== "queued" || delivered.length >= limit) return command;
      if (delivered.length > 0 && bytes > COMMAND_LIMITS.maxDeliverBytes) return command;
      bytes += jsonBytes(command.payload);
      const next = transition(command, "delivered", now, {
        deliveredAt: this.#nowIso,
        timeoutAt: new Date(now + command.timeout * 1000).toISOString(),
      });
      delivered.push(next);
      this.#recordCommand(draft, next);
      return next;
    });
    if (delivered.length > 0) {
      this.#update(draft, { commands: { ...draft.state.commands, pending } });
    }
    return delivered;
  }

  #result(
    draft: Draft,
    id: string,
    status: "succeeded" | "failed",
    result: Json | undefined,
  ): CommandRecord {
    this.#expire(draft);
    const state = draft.state;
    const command = state.commands.pending.find((c) => c.id === id);
    if (!command) {
      const finishedNow = [...draft.commands.values()].some((c) => c.id === id);
      if (finishedNow || this.#reads.finishedCommandIds?.has(id)) {
        throw new DoppelError("conflict", `Command ${id} has already finished.`);
      }
      throw new DoppelError("not_found", `Device ${state.id} has no command ${id}.`);
    }
    if (result !== undefined && jsonBytes(result) > COMMAND_LIMITS.maxPayloadBytes) {
      throw new DoppelError(
        "payload_too_large",
        `A command result may be at most ${COMMAND_LIMITS.maxPayloadBytes} bytes.`,
      );
    }
    const now = this.#env.now;
    // A result proves the device had the command, even if its hand-over ack has not come yet.
    const handed = command.status === "queued"
      ? transition(command, "delivered", now, { deliveredAt: this.#nowIso })
      : command;
    const done = transition(handed, status, now, result === undefined ? {} : { result });
    this.#update(draft, {
      commands: {
        ...state.commands,
        pending: state.commands.pending.filter((c) => c.id !== id),
      },
    });
    this.#recordCommand(draft, done);
    return done;
  }

  #tick(draft: Draft, dueAt: number): { expired: number } {
    if (dueAt !== draft.state.timerAt) this.#staleTimer = dueAt;
    const now = this.#env.now;
    const { presence, expired } = expireSessions(draft.state.presence, now);
    const httpOver = presence.httpUntil !== null && presence.httpUntil <= now;
    if (expired.length > 0 || httpOver) {
      this.#update(draft, {
        presence: httpOver ? { ...presence, httpUntil: null } : presence,
      });
      draft.changed = true;
      this.#settlePresence(draft, expired.length > 0 ? "lease expired" : "inactivity");
    }
    for (const rule of this.#env.kind.rules) {
      this.#applyFiring(draft, rule, onTime(rule, this.#ruleState(draft.state, rule), now));
    }
    return { expired: this.#expire(draft) };
  }

  #expire(draft: Draft): number {
    const { pending, finished } = expireDue(draft.state.commands.pending, this.#env.now);
    if (finished.length === 0) return 0;
    this.#update(draft, { commands: { ...draft.state.commands, pending } });
    for (const command of finished) this.#recordCommand(draft, command);
    return finished.length;
  }

  #recordCommand(draft: Draft, command: CommandRecord): void {
    draft.commands = new Map(draft.commands).set(command.seq, command);
    draft.notices.push({ type: "command.changed", command });
    draft.changed = true;
  }

  #recordEvent(draft: Draft, type: string, data?: Json): void {
    const seq = draft.state.eventSeq + 1;
    const event: TwinEvent = {
      seq,
      type,
      at: this.#nowIso,
      ...(data === undefined ? {} : { data }),
    };
    this.#update(draft, { eventSeq: seq });
    draft.events.push(event);
    draft.notices.push({ type: "event", deviceId: draft.state.id, event });
    draft.changed = true;
  }

  /**
   * Runs a kind handler. Its wishes are applied only if it returns normally; a handler that
   * throws leaves the message applied and records a `handler.failed` event instead.
   */
  #runHandler(draft: Draft, name: string, call: (ctx: TwinContext) => unknown): void {
    const ctx = new HandlerContext(draft.state, this.#env.now);
    // The handler only records wishes; the draft changes when they are applied, so the
    // checkpoint to return to (when one fails) is taken only if there are any.
    let saved: Checkpoint | undefined;
    try {
      const returned = call(ctx);
      const wishes = ctx.close();
      if (isThenable(returned)) {
        // What it asks for after an await would come after its turn committed: refuse it all.
        returned.then(undefined, () => {}); // Its own failure is reported below, once.
        throw new Error("handlers must be synchronous (this one returned a promise)");
      }
      if (wishes.length > 0) {
        saved = checkpoint(draft);
        for (const wish of wishes) this.#grant(draft, wish);
      }
    } catch (error) {
      ctx.close();
      if (saved) rollback(draft, saved);
      const message = describe(error);
      this.#recordEvent(draft, "handler.failed", { handler: name, message });
      draft.notices.push({
        type: "log",
        level: "error",
        message: `Kind "${this.#env.kind.kind}" handler ${name} failed: ${message}`,
        deviceId: draft.state.id,
      });
    }
  }

  /** Does what a handler asked for. */
  #grant(draft: Draft, wish: Wish): void {
    switch (wish.type) {
      case "command":
        this.#newCommand(draft, wish.name, wish.payload, wish.options, "twin");
        return;
      case "desired":
        this.#patchState(draft, "desired", wish.patch, this.#env.kind.desired);
        return;
      case "event":
        this.#recordEvent(draft, wish.event, wish.data);
        return;
      case "alarm.raise":
        this.#raiseAlarm(draft, wish.alarm, wish.severity, wish.message, wish.details);
        return;
      case "alarm.clear":
        this.#clearAlarm(draft, wish.alarm, "handler");
        return;
      case "memory":
        this.#update(draft, { memory: wish.memory });
        draft.changed = true;
        return;
    }
  }
}

type RuleStateOf = TwinRecord["rules"][string];

/** Something a handler asked for, done once it has returned. */
type Wish =
  | { type: "command"; name: string; payload: Json; options: CommandOptions }
  | { type: "desired"; patch: JsonObject }
  | { type: "event"; event: string; data: Json | undefined }
  | {
    type: "alarm.raise";
    alarm: string;
    severity: Severity;
    message: string;
    details: Json | undefined;
  }
  | { type: "alarm.clear"; alarm: string }
  | { type: "memory"; memory: JsonObject };

/**
 * What a handler gets: the twin as it stood before the handler, and calls that record wishes.
 * Built for every handler call, so it holds little: the twin document is made on first use, and
 * each call is handed out as a function only when asked for (a handler may destructure them).
 */
class HandlerContext implements TwinContext {
  readonly now: number;
  #wishes: Wish[] = [];
  #before: TwinRecord;
  #view: PublicTwin | undefined;
  #desired: JsonObject | undefined;
  #reported: JsonObject | undefined;
  #memory: JsonObject | undefined;
  #open = true;

  constructor(before: TwinRecord, now: number) {
    this.#before = before;
    this.now = now;
  }

  /**
   * Ends the handler's call and returns what it asked for, in order. Calls made later (from a
   * callback the handler left behind) are ignored: its turn is over, and throwing there would
   * reach no one but the process.
   */
  close(): readonly Wish[] {
    this.#open = false;
    return this.#wishes;
  }

  // What the handler is shown are frozen copies, made when first asked for: it changes the twin
  // only through the wishes it records (a change made in place would skip the schemas).
  get twin(): PublicTwin {
    return this.#view ??= frozenCopy(publicTwin(this.#before));
  }

  get desired(): JsonObject {
    return this.#desired ??= frozenCopy(this.#before.desired);
  }

  get reported(): JsonObject {
    return this.#reported ??= frozenCopy(this.#before.reported);
  }

  get memory(): JsonObject {
    return this.#memory ??= frozenCopy(this.#before.memory);
  }

  get sendCommand(): TwinContext["sendCommand"] {
    return (name, payload, options) =>
      this.#wish({ type: "command", name, payload: payload ?? null, options: options ?? {} });
  }

  get patchDesired(): TwinContext["patchDesired"] {
    return (patch) => this.#wish({ type: "desired", patch });
  }

  get recordEvent(): TwinContext["recordEvent"] {
    return (event, data) => this.#wish({ type: "event", event, data });
  }

  get raiseAlarm(): TwinContext["raiseAlarm"] {
    return (alarm, severity, message, details) =>
      this.#wish({ type: "alarm.raise", alarm, severity, message: message ?? alarm, details });
  }

  get clearAlarm(): TwinContext["clearAlarm"] {
    return (alarm) => this.#wish({ type: "alarm.clear", alarm });
  }

  get setMemory(): TwinContext["setMemory"] {
    return (memory) => this.#wish({ type: "memory", memory });
  }

  #wish(wish: Wish): void {
    if (this.#open) this.#wishes.push(wish);
  }
}

function alarmNotOpen(alarmId: string): DoppelError {
  return new DoppelError(
    "conflict",
    `Alarm ${alarmId} is not open (it was cleared, or is not this device's).`,
  );
}

/** Where a draft stood, to go back to if what follows fails. */
interface Checkpoint {
  state: TwinRecord;
  changed: boolean;
  commands: Map<number, CommandRecord>;
  alarms: Map<string, AlarmWrite>;
  lengths: [number, number, number, number];
}

/** Where a turn's draft starts (see `Turn`'s constructor). */
function startOf(record: TwinRecord): Checkpoint {
  return {
    state: record,
    changed: false,
    commands: NO_COMMANDS,
    alarms: NO_ALARMS,
    lengths: [0, 0, 0, 0],
  };
}

/** Marks where a draft stands; from here on its record is copied before it is changed. */
function checkpoint(draft: Draft): Checkpoint {
  draft.owned = false;
  draft.ownedRules = false;
  return {
    state: draft.state,
    changed: draft.changed,
    commands: draft.commands,
    alarms: draft.alarms,
    lengths: [
      draft.messageIds.length,
      draft.idempotency.length,
      draft.events.length,
      draft.notices.length,
    ],
  };
}

/** Undoes what happened to a draft since `saved` (lists only ever grow, maps are replaced). */
function rollback(draft: Draft, saved: Checkpoint): void {
  draft.state = saved.state;
  draft.owned = false;
  draft.ownedRules = false;
  draft.changed = saved.changed;
  draft.commands = saved.commands;
  draft.alarms = saved.alarms;
  draft.messageIds.length = saved.lengths[0];
  draft.idempotency.length = saved.lengths[1];
  draft.events.length = saved.lengths[2];
  draft.notices.length = saved.lengths[3];
}

const NO_CHUNKS: ReadonlyMap<string, RollupChunk | null> = new Map();
const NO_RULES: readonly Rule[] = [];
// A draft starts with these and replaces them on its first write (they are never changed in place).
const NO_COMMANDS: Map<number, CommandRecord> = new Map();
const NO_ALARMS: Map<string, AlarmWrite> = new Map();

/** Whether a handler returned a promise (or anything awaitable). */
function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as { then?: unknown } | null)?.then === "function";
}

/** A telemetry item's own values: all but `ts` and `id`. */
function withoutTsAndId(item: Record<string, unknown>): Record<string, unknown> {
  const { ts: _ts, id: _id, ...values } = item;
  return values;
}

/** A telemetry value as history and rules take it: a finite number, or a boolean as 0 or 1. */
function numericValue(value: unknown): number | undefined {
  if (typeof value === "number") return Number.isFinite(value) ? value : undefined;
  if (typeof value === "boolean") return value ? 1 : 0;
  return undefined;
}

/** The field name an issue gets: within `items[i]` for a batch, else as it is. */
/** A command's `ttl` or `timeout` in seconds: `fallback` if absent, else an integer 1…`max`. */
function commandSeconds(
  field: "ttl" | "timeout",
  value: number | undefined,
  fallback: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw validationError(`The command's ${field} ${value} is invalid:`, [{
      field,
      message: `must be a whole number of seconds from 1 to ${max}`,
    }]);
  }
  return value;
}

function fieldAt(prefix: string, field: string): string {
  return prefix && field ? `${prefix}.${field}` : prefix || field;
}

function minDue(a: number | null, b: number | null): number | null {
  return a === null ? b : b === null ? a : Math.min(a, b);
}

function nextDue(pending: CommandRecord[]): number | null {
  let due: number | null = null;
  for (const command of pending) {
    const at = commandDueAt(command);
    if (at !== undefined && (due === null || at < due)) due = at;
  }
  return due;
}

/** What was thrown, as text, whatever it is (kind code may throw anything, even what String() refuses). */
function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  try {
    return String(error);
  } catch {
    return Object.prototype.toString.call(error);
  }
}

/** `undefined` when absent, `null` when present but unreadable, else epoch ms. */
function parseTs(ts: unknown): number | undefined | null {
  if (ts === undefined) return undefined;
  // Whole milliseconds, as ISO times have: a query's cursor steps from one millisecond to the next.
  if (typeof ts === "number") return Number.isFinite(ts) ? Math.round(ts) : null;
  if (typeof ts === "string") {
    const ms = Date.parse(ts);
    return Number.isNaN(ms) ? null : ms;
  }
  return null;
}

/** Zod issues as contract field issues, with dotted paths. */
export function zodIssues(error: z.ZodError): FieldIssue[] {
  const path = (parts: PropertyKey[]) =>
    parts.map((p, i) => typeof p === "number" ? `[${p}]` : `${i === 0 ? "" : "."}${String(p)}`)
      .join("");
  return error.issues.flatMap((issue) =>
    // An unknown key is named itself, not its parent object.
    issue.code === "unrecognized_keys"
      ? issue.keys.map((key) => ({
        field: path([...issue.path, key]),
        message: "is not a known field",
      }))
      : [{ field: path(issue.path), message: issue.message }]
  );
}

/** Statuses a device may report for a command. */
export const RESULT_STATUSES: ReadonlySet<CommandStatus> = new Set(["succeeded", "failed"]);
