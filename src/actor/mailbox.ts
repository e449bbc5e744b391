/**
 * An activation's mailbox: messages waiting for the next turn, each with the promise its sender
 * awaits.
 * @module
 */

/** A message and how to answer its sender. */
export interface Envelope<M> {
  /** The message. */
  message: M;
  /** Answers with a value. */
  resolve(value: unknown): void;
  /** Answers with an error. */
  reject(error: unknown): void;
}

/** A FIFO of envelopes. */
export class Mailbox<M> {
  #items: Envelope<M>[] = [];

  /** Messages waiting. */
  get size(): number {
    return this.#items.length;
  }

  /** Adds a message at the back. */
  push(envelope: Envelope<M>): void {
    this.#items.push(envelope);
  }

  /** Removes and returns up to `max` messages from the front. */
  take(max: number): Envelope<M>[] {
    // A copy of the few taken; the box keeps its own array and the room it has grown.
    return this.#items.splice(0, max);
  }

  /** Answers every waiting message with `error` and empties the box. */
  rejectAll(error: unknown): void {
    for (const envelope of this.#items.splice(0)) envelope.reject(error);
  }
}
