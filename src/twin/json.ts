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

/** How deep a JSON document from outside may nest (objects and arrays). */
export const MAX_JSON_DEPTH = 32;

/**
 * What is wrong with a document's shape, walking it once: `"deep"` if it nests objects or arrays
 * more than `maxDepth` levels (code that walks documents recursively would overflow the stack on
 * a small body nested a hundred thousand levels deep), else the path of the first property named
 * `__proto__` (JSON may name a property so, but assigned by name it replaces the prototype and
 * vanishes), else `null`. Path segments are kept on a stack and joined only when one is found.
 */
function shapeIssue(value: unknown, maxDepth: number): "deep" | Array<string | number> | null {
  const path: Array<string | number> = [];
  const walk = (node: unknown, depth: number): "deep" | Array<string | number> | null => {
    if (typeof node !== "object" || node === null) return null;
    if (depth === maxDepth) return "deep";
    if (Array.isArray(node)) {
      for (let i = 0; i < node.length; i++) {
        path.push(i);
        const found = walk(node[i], depth + 1);
        if (found) return found;
        path.pop();
      }
      return null;
    }
    if (Object.hasOwn(node, "__proto__")) return [...path, "__proto__"];
    for (const key in node) {
      path.push(key);
      const found = walk((node as JsonObject)[key], depth + 1);
      if (found) return found;
      path.pop();
    }
    return null;
  };
  return walk(value, 0);
}

/** A path as fields are named in errors: `a.b[2].c`, under `prefix` (say `items`). */
function fieldPath(segments: Array<string | number>, prefix = ""): string {
  let out = prefix;
  for (const segment of segments) {
    out += typeof segment === "number" ? `[${segment}]` : out ? `.${segment}` : segment;
  }
  return out;
}

/**
 * The path of the first property named `__proto__` in `value` (which nests at most
 * {@link MAX_JSON_DEPTH} levels), or `undefined` if it has none.
 */
export function protoKeyPath(value: unknown): string | undefined {
  const issue = shapeIssue(value, Infinity);
  return Array.isArray(issue) ? fieldPath(issue) : undefined;
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A JSON document from outside (a body, a frame, an MQTT payload; `what` names it in errors):
 * UTF-8, not empty, valid JSON, nested at most {@link MAX_JSON_DEPTH} levels, no property named
 * `__proto__` — or a 400 whose details name the field.
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
  const issue = shapeIssue(value, MAX_JSON_DEPTH);
  if (issue === "deep") {
    throw bodyError(
      "bad_request",
      `${what} nests deeper than ${MAX_JSON_DEPTH} levels.`,
      `must nest at most ${MAX_JSON_DEPTH} levels`,
    );
  }
  if (issue) {
    // Anywhere in a document (tags, payloads, patches): assigned by name, it would vanish. (A
    // top-level array is a batch: its items are named `items[i]`, as everywhere else.)
    const field = fieldPath(issue, Array.isArray(value) ? "items" : "");
    throw new DoppelError("validation_failed", `${what} has a property named __proto__.`, {
      fields: [{ field, message: "a property may not be named __proto__" }],
    });
  }
  return value;
}

/**
 * A deep copy of a JSON value, frozen throughout: what a kind's handler is shown of the twin, so
 * it cannot change stored state except by asking (`patchDesired`, `setMemory`, …).
 */
export function frozenCopy<T>(value: T): T {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return Object.freeze(value.map((item) => frozenCopy(item))) as T;
  const copy: Record<string, unknown> = {};
  for (const key in value) {
    if (Object.hasOwn(value, key)) copy[key] = frozenCopy(value[key]);
  }
  return Object.freeze(copy) as T;
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
