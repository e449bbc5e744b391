/**
 * How a twin record is laid out in KV. A record is stored as its JSON text, as UTF-8 bytes, under
 * `["twins", id]`. A record of more than 30,000 characters, or whose UTF-8 would pass KV's 64 KiB
 * value cap, is stored as text instead: the head holds the first 30,000 characters and the number
 * of chunks, and the rest goes in numbered chunks under `["twin_chunks", id, n]`, written in the
 * same atomic. The head is what every commit checks.
 * @module
 */
import { type TwinRecord, upgradeRecord } from "../twin/state.ts";
import { keys } from "./keys.ts";

/** Characters per chunk: a string of two-byte characters stays under KV's 64 KiB value cap. */
const CHUNK_CHARS = 30_000;
/** Largest byte head: KV's 64 KiB value cap. */
const MAX_HEAD_BYTES = 65_536;
/** Bytes in each buffer {@link utf8} encodes into. */
const SLAB_BYTES = 64 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
let slab = new Uint8Array(SLAB_BYTES);
let slabUsed = 0;

/**
 * `text` as UTF-8, in a view of a buffer shared with the heads encoded before it: an ArrayBuffer
 * of its own for every head costs more than encoding it. Module state, but nothing a caller can
 * see: a view is never written again once handed out, and a buffer is dropped with its last view.
 * KV copies a value's bytes when its atomic is committed; until then (and for a commit sent again
 * after a conflict) the view holds the very bytes encoded.
 */
function utf8(text: string): Uint8Array {
  const most = text.length * 3;
  if (most > SLAB_BYTES / 8) return encoder.encode(text);
  if (SLAB_BYTES - slabUsed < most) {
    slab = new Uint8Array(SLAB_BYTES);
    slabUsed = 0;
  }
  const { written } = encoder.encodeInto(text, slab.subarray(slabUsed));
  const view = slab.subarray(slabUsed, slabUsed + written);
  slabUsed += written;
  return view;
}

/**
 * The head entry's value: the record's JSON text as UTF-8 bytes when it fits in one value (most
 * do; bytes are the cheapest value to store), else its first chunk and the number of chunks. A
 * plain string is a head written by a build from before heads were bytes, and is still read.
 */
type Head = Uint8Array | string | {
  /** JSON text of the record's first chunk. */
  json: string;
  /** Chunks in all, counting this one. */
  chunks: number;
};

/** The JSON text in a head and how many chunks the record has. */
export function headParts(head: Head): { json: string; chunks: number } {
  if (head instanceof Uint8Array) return { json: decoder.decode(head), chunks: 1 };
  return typeof head === "string" ? { json: head, chunks: 1 } : head;
}

/** A record read from KV with its head's versionstamp. */
export interface StoredTwin {
  /** The record. */
  state: TwinRecord;
  /** The head's versionstamp. */
  versionstamp: string;
  /** Chunks the record is stored in (1 when the head holds all of it). */
  chunks: number;
}

/** Reads a twin record, or `null` if there is none. */
export async function loadTwin(kv: Deno.Kv, id: string): Promise<StoredTwin | null> {
  for (;;) {
    const head = await kv.get<Head>(keys.twin(id));
    if (head.versionstamp === null) return null;
    const { json, chunks: count } = headParts(head.value);
    if (count <= 1) {
      return { state: upgradeRecord(JSON.parse(json)), versionstamp: head.versionstamp, chunks: 1 };
    }
    // Read the head again with its chunks in consistent snapshots of 10 keys; if the head moved
    // meanwhile, start over.
    const parts = [json];
    let moved = false;
    for (let i = 1; i < count && !moved; i += 9) {
      const wanted: [Deno.KvKey, ...Deno.KvKey[]] = [keys.twin(id)];
      for (let j = i; j < Math.min(i + 9, count); j++) {
        wanted.push(keys.twinChunk(id, j));
      }
      const [again, ...chunks] = await kv.getMany<unknown[]>(wanted);
      if (again.versionstamp !== head.versionstamp) moved = true;
      else for (const chunk of chunks) parts.push(chunk.value as string);
    }
    if (!moved) {
      return {
        state: upgradeRecord(JSON.parse(parts.join(""))),
        versionstamp: head.versionstamp,
        chunks: count,
      };
    }
  }
}

/** The head's versionstamp now, or `null` if the twin is gone. */
export async function twinVersionstamp(kv: Deno.Kv, id: string): Promise<string | null> {
  return (await kv.get(keys.twin(id))).versionstamp;
}

/** Mutations writing `record` over a stored one that had `previousChunks` chunks. */
export function encodeTwin(
  record: TwinRecord,
  previousChunks: number,
): { mutations: Deno.KvMutation[]; bytes: number; chunks: number } {
  const json = JSON.stringify(storedForm(record));
  const chunks = Math.max(1, Math.ceil(json.length / CHUNK_CHARS));
  // A record in one value is stored as UTF-8 bytes: KV keeps a byte array as it is, where a
  // string would go through V8's serializer first (about 1 µs a head, on every turn).
  const bytes = chunks === 1 ? utf8(json) : null;
  const head: Head = bytes && bytes.length <= MAX_HEAD_BYTES
    ? bytes
    : { json: json.slice(0, CHUNK_CHARS), chunks };
  const mutations: Deno.KvMutation[] = [{ type: "set", key: keys.twin(record.id), value: head }];
  for (let i = 1; i < chunks; i++) {
    mutations.push({
      type: "set",
      key: keys.twinChunk(record.id, i),
      value: json.slice(i * CHUNK_CHARS, (i + 1) * CHUNK_CHARS),
    });
  }
  for (let i = chunks; i < previousChunks; i++) {
    mutations.push({ type: "delete", key: keys.twinChunk(record.id, i) });
  }
  // Bytes are for the batcher's size cap: for text, count two per character, as for a two-byte
  // string.
  const size = head instanceof Uint8Array ? head.length + 64 : json.length * 2 + 64 * chunks;
  return { mutations, bytes: size, chunks };
}

/**
 * The record as stored: fields at their defaults left out (`upgradeRecord`
 * puts them back), to keep the value — rewritten on every turn — small. Small matters: past
 * about 1,000 bytes SQLite moves a value to overflow pages and KV writes of it get ~3× slower.
 */
function storedForm(r: TwinRecord): Record<keyof TwinRecord, unknown> {
  // One object literal, the same shape every time, with fields at their defaults `undefined`
  // (JSON.stringify leaves those out): V8 writes a stable shape fastest, and it is built without
  // a loop. The return type makes leaving a TwinRecord field out of it a type error.
  const { metadata, commands, presence } = r;
  return {
    id: r.id,
    kind: r.kind,
    version: r.version,
    desired: isEmpty(r.desired) ? undefined : r.desired,
    reported: isEmpty(r.reported) ? undefined : r.reported,
    metadata: isEmpty(metadata.desired) && isEmpty(metadata.reported) ? undefined : metadata,
    telemetry: r.telemetry,
    connection: r.connection,
    memory: isEmpty(r.memory) ? undefined : r.memory,
    commands: commands.nextSeq === 1 && commands.pending.length === 0 ? undefined : commands,
    eventSeq: r.eventSeq || undefined,
    history: r.history,
    rules: isEmpty(r.rules) ? undefined : r.rules,
    alarms: isEmpty(r.alarms) ? undefined : r.alarms,
    presence: presence.httpUntil === null && isEmpty(presence.sessions) ? undefined : presence,
    desiredAcked: r.desiredAcked || undefined,
    desiredTombstones: r.desiredTombstones.length === 0 ? undefined : r.desiredTombstones,
    tombstoneHorizon: r.tombstoneHorizon || undefined,
    timerAt: r.timerAt ?? undefined,
    createdAt: r.createdAt,
  };
}

function isEmpty(object: object): boolean {
  for (const _ in object) return false;
  return true;
}

/** How many chunks the stored form of `record` takes, at most (counted on the whole record). */
export function chunkCount(record: TwinRecord): number {
  return Math.max(1, Math.ceil(JSON.stringify(record).length / CHUNK_CHARS));
}
