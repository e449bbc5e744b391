/**
 * JSON helpers for the twin model: documents from outside parsed within limits, merge patches
 * (RFC 7396), deltas and per-leaf metadata. Every function here returns new objects and never
 * mutates its inputs, so a turn can drop a message's changes by simply not keeping them.
 * @module
 */
import { bodyError, DoppelError } from "../errors.ts";

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | JsonObject;
/** A JSON object. */
export type JsonObject = { [key: string]: Json };

/** Per-leaf metadata: when a property last changed and at which twin version. */
export interface LeafMeta {
  /** ISO 8601 time of the last change. */
  updatedAt: string;
  /** The twin version that made the change. */
  version: number;
}

/** A metadata tree mirroring a document: objects nest, every other value has a {@link LeafMeta}. */
export type MetaTree = { [key: string]: LeafMeta | MetaTree };

/** Whether a value is a plain JSON object (not an array, not null). */
export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The path of the first property named `__proto__` in `value`, or `undefined` if it has none.
 * JSON may name a property so, but an object assigned one by name has its prototype replaced
 * instead, so the value would vanish: such documents are refused rather than changed silently.
 */
export function protoKeyPath(value: unknown, path = ""): string | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = protoKeyPath(value[i], `${path}[${i}]`);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  if (Object.hasOwn(value, "__proto__")) return path ? `${path}.__proto__` : "__proto__";
  for (const key in value) {
    const found = protoKeyPath((value as JsonObject)[key], path ? `${path}.${key}` : key);
    if (found !== undefined) return found;
  }
  return undefined;
}

/** How deep a JSON document from outside may nest (objects and arrays). */
export const MAX_JSON_DEPTH = 32;

/**
 * Whether `value` nests objects or arrays more than `max` levels deep. Documents from outside
 * are checked once parsed: code that walks them recursively (merge patches, schemas, encoding)
 * would otherwise overflow the stack on a small body nested a hundred thousand levels deep.
 */
export function nestedDeeperThan(value: unknown, max: number): boolean {
  if (typeof value !== "object" || value === null) return false;
  if (max === 0) return true;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      if (nestedDeeperThan(value[i], max - 1)) return true;
    }
    return false;
  }
  for (const key in value) {
    if (nestedDeeperThan((value as JsonObject)[key], max - 1)) return true;
  }
  return false;
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A JSON document from outside (a body, a frame, an MQTT payload; `what` names it in errors):
 * UTF-8, not empty, valid JSON, nested at most {@link MAX_JSON_DEPTH} levels — or a 400 whose
 * details name the field `(body)`.
 */
export function parseJsonDocument(bytes: Uint8Array, what: string): unknown {
  let text: string;
  try {
    text = UTF8.decode(bytes);
  } catch {
    throw bodyError("invalid_json", `${what} is not valid UTF-8.`, "must be valid UTF-8");
  }
  if (text.trim() === "") {
    throw bodyError("invalid_json", `${what} is empty; send a JSON document.`, "must be JSON");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw bodyError(
      "invalid_json",
      `${what} is not valid JSON: ${(error as Error).message}`,
      "must be valid JSON",
    );
  }
  if (nestedDeeperThan(value, MAX_JSON_DEPTH)) {
    throw bodyError(
      "bad_request",
      `${what} nests deeper than ${MAX_JSON_DEPTH} levels.`,
      `must nest at most ${MAX_JSON_DEPTH} levels`,
    );
  }
  // Anywhere in a document (tags, payloads, patches): assigned by name, it would vanish.
  // (A top-level array is a batch: its items are named `items[i]`, as everywhere else.)
  const proto = protoKeyPath(value, Array.isArray(value) ? "items" : "");
  if (proto !== undefined) {
    throw new DoppelError("validation_failed", `${what} has a property named __proto__.`, {
      fields: [{ field: proto, message: "a property may not be named __proto__" }],
    });
  }
  return value;
}

/** Applies an RFC 7396 merge patch to `target`, returning the result. */
export function applyMergePatch(target: Json | undefined, patch: Json): Json {
  if (!isObject(patch)) return patch;
  const base: JsonObject = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete base[key];
    else base[key] = applyMergePatch(base[key], value);
  }
  return base;
}

/** Deep equality of two JSON values. */
export function jsonEqual(a: Json | undefined, b: Json | undefined): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((item, i) => jsonEqual(item, b[i]));
  }
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((key) => Object.hasOwn(b, key) && jsonEqual(a[key], b[key]));
}

/** The desired leaves that differ from reported: what the device still has to do. */
export function computeDelta(desired: JsonObject, reported: JsonObject): JsonObject {
  const delta: JsonObject = {};
  for (const [key, want] of Object.entries(desired)) {
    const have = reported[key];
    if (isObject(want) && isObject(have)) {
      const inner = computeDelta(want, have);
      if (Object.keys(inner).length > 0) delta[key] = inner;
    } else if (!jsonEqual(want, have)) {
      delta[key] = want;
    }
  }
  return delta;
}

/**
 * Updates a metadata tree for the leaves a merge patch touched: deleted properties lose their
 * metadata, set ones get `{updatedAt, version}`.
 */
export function updateMeta(
  meta: MetaTree,
  patch: JsonObject,
  stamp: LeafMeta,
  before?: Json,
): MetaTree {
  const next: MetaTree = { ...meta };
  const old = isObject(before) ? before : undefined;
  for (const [key, value] of Object.entries(patch)) {
    const was = old && Object.hasOwn(old, key) ? old[key] : undefined;
    if (value === null) {
      delete next[key];
    } else if (isObject(value)) {
      const current = Object.hasOwn(next, key) ? next[key] : undefined;
      const inner = current && !isLeafMeta(current) ? current : {};
      next[key] = updateMeta(inner, value, stamp, isObject(was) ? was : undefined);
    } else if (!jsonEqual(was, value) || !Object.hasOwn(next, key)) {
      // A leaf set to the value it had keeps its metadata: it did not change.
      next[key] = stamp;
    }
  }
  return next;
}

/**
 * Whether a merge patch changes the shape of `before`, not only its leaves: an object replaced by
 * a value or deleted, or a value replaced by an object. A device that missed such a change cannot
 * be brought up to date with the changed leaves alone (the old children would stay).
 */
export function reshapes(before: Json | undefined, patch: JsonObject): boolean {
  const old = isObject(before) ? before : undefined;
  for (const [key, value] of Object.entries(patch)) {
    const was = old && Object.hasOwn(old, key) ? old[key] : undefined;
    if (isObject(value)) {
      if (was !== undefined && !isObject(was)) return true;
      if (reshapes(was, value)) return true;
    } else if (isObject(was)) return true;
  }
  return false;
}

function isLeafMeta(value: LeafMeta | MetaTree): value is LeafMeta {
  return typeof value.updatedAt === "string" && typeof value.version === "number";
}

/** UTF-8 byte length of a value's JSON text. */
export function jsonBytes(value: unknown): number {
  const text = JSON.stringify(value) ?? "";
  // Fast path: pure ASCII is one byte a character.
  // deno-lint-ignore no-control-regex
  return /^[\x00-\x7f]*$/.test(text) ? text.length : new TextEncoder().encode(text).length;
}
