/**
 * HTTP helpers shared by the API routes: the contract's error body, size-limited JSON bodies,
 * request validation with zod, and abortable waits.
 * @module
 */
import type { Context } from "hono";
import type { z } from "zod";
import { bodyError, DoppelError, rethrowCursorError, validationError } from "../errors.ts";
import { parseJsonDocument } from "../twin/json.ts";
import { zodIssues } from "../twin/turn.ts";

/** Body size limits, in bytes. */
export const BODY_LIMITS = {
  /** Telemetry (a batch of up to 500 items). */
  telemetry: 256 * 1024,
  /** Desired and reported patches: the 32 KiB document cap plus room. */
  patch: 64 * 1024,
  /** Everything else. */
  default: 32 * 1024,
} as const;

/** Reads a JSON body of at most `limit` bytes; a clear 4xx for anything else. */
export function readJson(c: Context, limit: number = BODY_LIMITS.default): Promise<unknown> {
  return readJsonRequest(c.req.raw, limit);
}

/** {@link readJson} for a plain `Request`. */
export async function readJsonRequest(
  request: Request,
  limit: number = BODY_LIMITS.default,
): Promise<unknown> {
  // Any declared type is read as JSON (curl and small devices often send none or a form type),
  // except multipart, which is certainly not JSON.
  const type = request.headers.get("content-type") ?? "";
  if (/^multipart\//i.test(type)) {
    throw new DoppelError(
      "unsupported_media_type",
      `Content-Type ${type} is not supported; send application/json.`,
    );
  }
  if (!request.body) {
    throw bodyError(
      "bad_request",
      "The request has no body; send a JSON document.",
      "must be a JSON document",
    );
  }
  return parseJsonDocument(await readBody(request, limit), "The body");
}

/**
 * A small form body (`application/x-www-form-urlencoded`, as the dashboard's sign-in and
 * buttons send) of at most `limit` bytes: 413 past it, 415 for any other type.
 */
export async function readForm(request: Request, limit: number): Promise<URLSearchParams> {
  const type = request.headers.get("content-type") ?? "";
  if (!/^application\/x-www-form-urlencoded\b/i.test(type)) {
    throw new DoppelError(
      "unsupported_media_type",
      `Content-Type ${type || "(none)"} is not supported; send a form.`,
    );
  }
  const bytes = await readBody(request, limit);
  return new URLSearchParams(new TextDecoder().decode(bytes));
}

/** The body's bytes, reading no more than `limit` of them (413 past it, 400 for none). */
async function readBody(request: Request, limit: number): Promise<Uint8Array> {
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > limit) throw tooLarge(limit);
  const body = request.body;
  if (!body) throw bodyError("bad_request", "The request has no body.", "is missing");
  if (body.locked) {
    // Read already (a form's CSRF field was taken from it): what it holds is not for this route.
    throw bodyError(
      "bad_request",
      "The request's body was read as a form; send JSON.",
      "must be a JSON document, not a form",
    );
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      throw tooLarge(limit);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

function tooLarge(limit: number): DoppelError {
  return new DoppelError("payload_too_large", `The body is larger than ${limit} bytes.`);
}

/** Validates `value` against `schema`, or throws `validation_failed` naming the fields. */
export function parseWith<S extends z.ZodType>(
  schema: S,
  value: unknown,
  what: string,
): z.output<S> {
  const result = schema.safeParse(value);
  if (!result.success) {
    // An issue with the document as a whole is named `(body)`, as everywhere else.
    const issues = zodIssues(result.error).map((issue) => ({
      field: issue.field || "(body)",
      message: issue.message,
    }));
    throw validationError(`${what} is invalid:`, issues);
  }
  return result.data;
}

/** Parses an integer query parameter within bounds, or throws naming it. */
export function intParam(
  c: Context,
  name: string,
  { min, max, fallback }: { min: number; max: number; fallback: number },
): number {
  const raw = c.req.query(name);
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw validationError(`Query parameter ${name}=${JSON.stringify(raw)} is invalid:`, [{
      field: name,
      message: `must be an integer from ${min} to ${max}`,
    }]);
  }
  return value;
}

/** The contract's error response for any thrown value. */
export function errorResponse(error: unknown): Response {
  if (error instanceof DoppelError) {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (error.code === "unauthorized") headers["www-authenticate"] = 'Basic realm="doppel"';
    if (error.code === "rate_limited") {
      const seconds = (error.details as { retryAfter?: number } | undefined)?.retryAfter ?? 1;
      headers["retry-after"] = String(seconds);
    }
    return new Response(JSON.stringify(error), { status: error.status, headers });
  }
  return new Response(
    JSON.stringify({
      error: { code: "internal", message: "Something went wrong on our side; it was logged." },
    }),
    { status: 500, headers: { "content-type": "application/json" } },
  );
}

/**
 * One page of a KV listing: the entries `pick` keeps (it skips one by returning `undefined`), at
 * most `limit`, and the cursor to resume after the last one (`null` when the listing ran out). A
 * cursor that did not come from an earlier page is a 400 naming `cursor`.
 */
export async function listPage<V, T>(
  iter: Deno.KvListIterator<V>,
  limit: number,
  pick: (entry: Deno.KvEntry<V>) => T | undefined | Promise<T | undefined>,
): Promise<{ items: T[]; cursor: string | null }> {
  const items: T[] = [];
  try {
    for await (const entry of iter) {
      const item = await pick(entry);
      if (item === undefined) continue;
      items.push(item);
      if (items.length >= limit) return { items, cursor: iter.cursor };
    }
  } catch (error) {
    rethrowCursorError(error);
  }
  return { items, cursor: null };
}
