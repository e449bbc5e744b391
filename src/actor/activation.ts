/**
 * One in-memory activation of an actor: its state as last committed, its mailbox, and the loop
 * that runs one turn at a time. What a turn means is the {@link Behavior}'s business; this file
 * only knows that a turn's writes must commit (with their versionstamp checks) before its replies
 * and effects are released, and that a conflict means reload and run the same messages again.
 * @module
 */
import { type CommitBatcher, type CommitRequest, CommitTooLargeError } from "./commit_batcher.ts";
import { type Envelope, Mailbox } from "./mailbox.ts";

/** State loaded from storage with the versionstamp it was read at. */
export interface Loaded<S> {
  /** The actor's state. */
  state: S;
  /** The versionstamp of the key the state lives under. */
  versionstamp: string;
  /** Whatever the behaviour keeps beside this state (how it was stored, say); opaque here. */
  meta?: unknown;
}

/** The reply to one message. */
export type Reply = { ok: true; value: unknown } | { ok: false; error: unknown };

/** What a turn decided, ready to commit. */
export interface Plan<S> {
  /** The state once the commit lands. */
  state: S;
  /** One reply per message, released after the commit. */
  replies: Reply[];
  /** Writes to commit, or `null` when the turn changed nothing. */
  commit: CommitRequest | null;
  /**
   * Releases the turn's effects; called once, only after the commit is durable (or, for a turn
   * with nothing to commit, once its replies are given).
   */
  release(): void;
  /** Kept beside the new state once committed, and handed back with it (see {@link Loaded}). */
  meta?: unknown;
}

/** The actor-specific part: how to load state and plan a turn over a batch of messages. */
export interface Behavior<S, M> {
  /** Reads the actor's state, or `null` if it does not exist. */
  load(id: string): Promise<Loaded<S> | null>;
  /** Whether `versionstamp` is still current in storage (checked before trusting a no-op turn). */
  isCurrent(id: string, versionstamp: string): Promise<boolean>;
  /** Reads what the turn needs and runs it (a promise only if it had to wait). Must not write. */
  plan(id: string, current: Loaded<S>, messages: M[]): Plan<S> | Promise<Plan<S>>;
  /** The error for messages to an actor that does not exist. */
  notFound(id: string): Error;
  /** The error for one message whose writes cannot fit in one atomic. */
  tooLarge(error: CommitTooLargeError): Error;
  /** A compact form of the state, for activations kept in memory but not in use. */
  pack?(loaded: Loaded<S>): unknown;
  /** The state back from {@link pack}'s form. */
  unpack?(packed: unknown): S;
}

/** Settings an activation shares with its directory. */
export interface ActivationContext<S, M> {
  /** The actor behaviour. */
  behavior: Behavior<S, M>;
  /** Where commits go. */
  batcher: CommitBatcher;
  /** Most messages in one turn. */
  maxBatch: number;
  /** Times a turn is replayed after conflicts before its messages fail. */
  maxReplays: number;
  /** Current time in ms, for idle tracking. */
  now(): number;
  /** Told when an activation has finished its work, so an over-full directory can drop it. */
  onIdle(activation: Activation<S, M>): void;
  /** Told every message's reply as its sender gets it (for metrics). */
  onReply?(message: M, reply: Reply): void;
}

/** One actor in memory. */
export class Activation<S, M> {
  /** The actor id. */
  readonly id: string;
  #ctx: ActivationContext<S, M>;
  #mailbox = new Mailbox<M>();
  #loaded: Loaded<S> | null | undefined;
  // The state in its packed form while the activation sits idle in a crowded directory.
  #packed: { data: unknown; versionstamp: string; meta: unknown } | undefined;
  #running = false;
  #inTurn = false;
  // Split batches (too large for one atomic) still running their halves.
  #splits = 0;
  // Whether this turn holds a place the batcher's room() gave it (handed back once its request
  // is queued, or when the turn ends).
  #holding = false;
  #lastUsed: number;

  /** Creates an idle, not yet loaded activation. */
  constructor(id: string, ctx: ActivationContext<S, M>) {
    this.id = id;
    this.#ctx = ctx;
    this.#lastUsed = ctx.now();
  }

  /**
   * Whether it has nothing to do: no turn under way and no message waiting. (Its loop may still be
   * winding down; dropping it then is safe, since the loop only exits.)
   */
  get idle(): boolean {
    return !this.#inTurn && this.#splits === 0 && this.#mailbox.size === 0;
  }

  /** When it last received a message (ms). */
  get lastUsed(): number {
    return this.#lastUsed;
  }

  /** The state as last committed or loaded, if loaded. */
  get state(): S | undefined {
    return this.#loaded?.state;
  }

  /** Queues a message; resolves with its reply once the turn that handled it has committed. */
  send(message: M): Promise<unknown> {
    this.#lastUsed = this.#ctx.now();
    return new Promise((resolve, reject) => {
      this.#mailbox.push({ message, resolve, reject } as Envelope<M>);
      if (!this.#running) this.#run();
    });
  }

  /** Forgets the loaded state, so the next turn reads it again. */
  invalidate(): void {
    this.#loaded = undefined;
    this.#packed = undefined;
  }

  /** Keeps an idle activation's state packed (smaller), to unpack on its next turn. */
  pack(): void {
    const { behavior } = this.#ctx;
    if (!this.idle || !this.#loaded || !behavior.pack) return;
    this.#packed = {
      data: behavior.pack(this.#loaded),
      versionstamp: this.#loaded.versionstamp,
      meta: this.#loaded.meta,
    };
    this.#loaded = undefined;
  }

  /** Runs turns until the mailbox is empty: each turn, when it has ended, calls this again. */
  #run(): void {
    this.#running = true;
    if (this.#mailbox.size === 0) {
      this.#running = false;
      return;
    }
    // Plan only when the batcher can take the commit soon: a plan waiting in its queue holds
    // memory, and messages arriving meanwhile join this turn.
    this.#inTurn = true;
    this.#holding = true;
    // Once given room, take it: asking again would queue this turn behind later ones.
    if (this.#ctx.batcher.room(() => this.#takeTurn())) this.#takeTurn();
  }

  #takeTurn(): void {
    const batch = this.#mailbox.take(this.#ctx.maxBatch);
    if (batch.length > 0) this.#begin(batch);
    else {
      this.#inTurn = false;
      this.#ended();
    }
  }

  /**
   * Starts a turn. The common one — state in memory, planned without waiting, something to
   * write — is planned here and handed to the batcher with a callback: no promise and no await
   * per message. Anything else (loading, reads, nothing to write, a conflict) takes
   * {@link #turn}.
   */
  #begin(batch: Envelope<M>[]): void {
    const { behavior, batcher } = this.#ctx;
    const loaded = this.#loaded;
    if (!loaded) {
      this.#after(this.#turn(batch), batch);
      return;
    }
    let planned: Plan<S> | Promise<Plan<S>>;
    try {
      planned = behavior.plan(this.id, loaded, batch.map((envelope) => envelope.message));
    } catch (error) {
      this.#afterError(batch, error);
      return;
    }
    if (planned instanceof Promise || planned.commit === null) {
      this.#after(this.#turn(batch, planned), batch);
      return;
    }
    const plan = planned;
    try {
      batcher.enqueue(plan.commit!, (outcome, error) => {
        if (outcome?.ok) {
          try {
            this.#committed(batch, loaded, plan, outcome.versionstamp);
          } catch (settleError) {
            this.#afterError(batch, settleError);
            return;
          }
          this.#ended();
        } else if (outcome) {
          this.#loaded = undefined; // Another writer got there first: reload and replay.
          this.#after(this.#turn(batch, undefined, 1), batch);
        } else this.#afterError(batch, error);
      });
      this.#giveBack(); // Its request is in the queue now.
    } catch (error) {
      this.#afterError(batch, error);
    }
  }

  /** Goes on once a turn that took the long way has ended, failed or not. */
  #after(turn: Promise<void>, batch: Envelope<M>[]): void {
    turn.catch((error) => this.#failed(batch, error)).then(() => this.#ended());
  }

  /** Goes on after a turn that failed before it got as far as a promise. */
  #afterError(batch: Envelope<M>[], error: unknown): void {
    this.#failed(batch, error).then(() => this.#ended());
  }

  /** After a turn: tells the directory when there is nothing left to do, then runs the next. */
  #ended(): void {
    this.#giveBack();
    if (this.idle) this.#ctx.onIdle(this);
    this.#run();
  }

  /** Hands the place room() gave this turn to the next in line, if it still holds it. */
  #giveBack(): void {
    if (!this.#holding) return;
    this.#holding = false;
    this.#ctx.batcher.giveBack();
  }

  /** A turn's commit is durable: keep its state, answer its messages, release its effects. */
  #committed(batch: Envelope<M>[], loaded: Loaded<S>, plan: Plan<S>, versionstamp: string): void {
    // Updated in place, not replaced: one object fewer per turn for the collector to copy.
    loaded.state = plan.state;
    loaded.versionstamp = versionstamp;
    loaded.meta = plan.meta;
    this.#inTurn = false;
    this.#settle(batch, plan.replies);
    plan.release();
  }

  /**
   * After a turn threw: one whose writes are too many for one atomic runs again in halves, in
   * order. Any other error (storage failed) goes to the senders of every message not yet
   * answered, and nothing is released; it is returned so a caller splitting a batch stops too.
   */
  async #failed(batch: Envelope<M>[], error: unknown): Promise<{ error: unknown } | undefined> {
    if (!(error instanceof CommitTooLargeError)) {
      this.#inTurn = false;
      this.#loaded = undefined;
      this.#fail(batch, error);
      return { error };
    }
    if (batch.length === 1) {
      this.#inTurn = false;
      this.#fail(batch, this.#ctx.behavior.tooLarge(error));
      return undefined;
    }
    const half = Math.ceil(batch.length / 2);
    const parts = [batch.slice(0, half), batch.slice(half)];
    // Between the halves no turn is under way, but the actor is not idle: dropping it then would
    // let a second activation commit against the same state as the second half.
    this.#splits++;
    try {
      for (let p = 0; p < parts.length; p++) {
        this.#inTurn = true;
        let stopped: { error: unknown } | undefined;
        try {
          await this.#turn(parts[p]);
        } catch (partError) {
          stopped = await this.#failed(parts[p], partError);
        }
        if (stopped) {
          // As for a batch that failed whole: the messages after it fail with it, in order.
          const rest = parts.slice(p + 1).flat();
          if (rest.length > 0) this.#fail(rest, stopped.error);
          return stopped;
        }
      }
      return undefined;
    } finally {
      this.#splits--;
    }
  }

  /**
   * Runs a turn the long way: loading, waiting for its plan, replaying after conflicts (counting
   * from `replayed`, for a turn whose first commit already conflicted).
   */
  async #turn(
    batch: Envelope<M>[],
    first?: Plan<S> | Promise<Plan<S>>,
    replayed = 0,
  ): Promise<void> {
    const { behavior, batcher, maxReplays } = this.#ctx;
    const messages = batch.map((envelope) => envelope.message);
    for (let replay = replayed; replay <= maxReplays; replay++) {
      if (this.#loaded === undefined && this.#packed && behavior.unpack) {
        this.#loaded = {
          state: behavior.unpack(this.#packed.data),
          versionstamp: this.#packed.versionstamp,
          meta: this.#packed.meta,
        };
      }
      this.#packed = undefined;
      if (this.#loaded === undefined) this.#loaded = await behavior.load(this.id);
      const loaded = this.#loaded;
      if (loaded === null) {
        this.#loaded = undefined;
        this.#inTurn = false;
        this.#fail(batch, behavior.notFound(this.id));
        return;
      }
      // The plan #begin already made for the state in memory, the first time round.
      const planned = first ?? behavior.plan(this.id, loaded, messages);
      first = undefined;
      const plan = planned instanceof Promise ? await planned : planned;
      if (plan.commit === null) {
        // Nothing to write, but the answers were computed from cached state: make sure no other
        // process has moved the actor on since, or they could be stale.
        if (!(await behavior.isCurrent(this.id, loaded.versionstamp))) {
          this.#loaded = undefined;
          continue;
        }
        this.#inTurn = false;
        this.#settle(batch, plan.replies);
        plan.release();
        return;
      }
      const submitted = batcher.submit(plan.commit);
      this.#giveBack();
      const outcome = await submitted;
      if (outcome.ok) {
        this.#committed(batch, loaded, plan, outcome.versionstamp);
        return;
      }
      this.#loaded = undefined; // Another writer got there first: reload and replay.
    }
    throw new Error(
      `Actor ${this.id} kept conflicting with other writers after ${maxReplays} replays.`,
    );
  }

  /** Answers each message with its reply. */
  #settle(batch: Envelope<M>[], replies: Reply[]): void {
    const onReply = this.#ctx.onReply;
    for (let i = 0; i < batch.length; i++) {
      const envelope = batch[i];
      const reply = replies[i];
      onReply?.(envelope.message, reply);
      if (reply.ok) envelope.resolve(reply.value);
      else envelope.reject(reply.error);
    }
  }

  /** Answers every message with `error`. */
  #fail(batch: Envelope<M>[], error: unknown): void {
    this.#settle(batch, batch.map(() => ({ ok: false, error })));
  }
}
