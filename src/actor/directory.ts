/**
 * The activation directory: at most one activation per actor id in this process, created on first
 * message, bounded in number (least recently used idle ones go first), and collected when idle.
 * @module
 */
import type { CommitBatcher } from "./commit_batcher.ts";
import { Activation, type ActivationContext, type Behavior, type Reply } from "./activation.ts";

/** Directory settings. */
export interface DirectoryOptions<S, M> {
  /** The actor behaviour. */
  behavior: Behavior<S, M>;
  /** Where commits go. */
  batcher: CommitBatcher;
  /** Most activations kept in memory. */
  maxActivations?: number;
  /** Activations unused this long (ms) are collected by {@link Directory.collectIdle}. */
  idleMs?: number;
  /** Above this many activations, idle ones keep their state packed (default 20,000). */
  packAbove?: number;
  /** Most messages in one turn. */
  maxBatch?: number;
  /** Replays after conflicts before a turn's messages fail. */
  maxReplays?: number;
  /** Current time in ms. */
  now(): number;
  /** Told every message's reply as its sender gets it (for metrics). */
  onReply?(message: M, reply: Reply): void;
}

/** Activations by id, in least-recently-used order. */
export class Directory<S, M> {
  #activations = new Map<string, Activation<S, M>>();
  #options: DirectoryOptions<S, M>;
  #max: number;
  #idleMs: number;
  #packAbove: number;
  #ctx: ActivationContext<S, M>;

  /** Creates an empty directory. */
  constructor(options: DirectoryOptions<S, M>) {
    this.#options = options;
    this.#max = options.maxActivations ?? 100_000;
    this.#idleMs = options.idleMs ?? 10 * 60_000;
    this.#packAbove = options.packAbove ?? 20_000;
    this.#ctx = {
      behavior: options.behavior,
      batcher: options.batcher,
      maxBatch: options.maxBatch ?? 64,
      maxReplays: options.maxReplays ?? 50,
      now: options.now,
      onReply: options.onReply,
      onIdle: (activation: Activation<S, M>) => {
        // Many activations: those not in use keep their state packed.
        if (this.#activations.size > this.#packAbove) activation.pack();
        // Over the bound because every activation was busy when new ones came: shed now.
        if (
          this.#activations.size > this.#max &&
          this.#activations.get(activation.id) === activation
        ) {
          this.#evictOverflow(0);
        }
      },
    };
  }

  /** Activations in memory. */
  get size(): number {
    return this.#activations.size;
  }

  /** Sends a message to actor `id`, activating it if needed. */
  send(id: string, message: M): Promise<unknown> {
    let activation = this.#activations.get(id);
    if (activation) {
      // Move to the back: most recently used.
      this.#activations.delete(id);
    } else {
      activation = new Activation(id, this.#ctx);
      this.#evictOverflow();
    }
    this.#activations.set(id, activation);
    return activation.send(message);
  }

  /** The activation for `id`, if one is in memory. */
  peek(id: string): Activation<S, M> | undefined {
    return this.#activations.get(id);
  }

  /** Drops the activation for `id` if it is idle (say, because the actor was deleted). */
  evict(id: string): void {
    const activation = this.#activations.get(id);
    if (activation?.idle) this.#activations.delete(id);
    else activation?.invalidate();
  }

  /** Collects activations idle for longer than the idle timeout; returns how many went. */
  collectIdle(): number {
    const cutoff = this.#options.now() - this.#idleMs;
    let collected = 0;
    for (const [id, activation] of this.#activations) {
      if (activation.lastUsed > cutoff) break; // LRU order: the rest are newer.
      if (activation.idle) {
        this.#activations.delete(id);
        collected++;
      }
    }
    return collected;
  }

  /** Drops least recently used idle activations until `room` more fit under the bound. */
  #evictOverflow(room = 1): void {
    if (this.#activations.size + room <= this.#max) return;
    for (const [id, activation] of this.#activations) {
      if (activation.idle) {
        this.#activations.delete(id);
        if (this.#activations.size + room <= this.#max) return;
      }
    }
  }
}
