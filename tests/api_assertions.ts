/**
 * Assertions shared by the HTTP API tests: a test on a fresh app, JSON bodies with their status,
 * and errors of the contract's shape.
 * @module
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { type TestApp, testApp } from "./helpers.ts";

/** A contract error body. */
export interface ApiError {
  code: string;
  message: string;
  details?: { fields?: Array<{ field: string; message: string }> } & Record<string, unknown>;
}

/** Runs `fn` against a fresh app, always disposing of it. */
export function test(name: string, fn: (t: TestApp) => Promise<void>): void {
  Deno.test(name, async () => {
    const t = await testApp();
    try {
      await fn(t);
    } finally {
      await t.dispose();
    }
  });
}

/** Asserts the status and returns the parsed JSON body. */
// deno-lint-ignore no-explicit-any
export async function json(res: Response, status: number): Promise<any> {
  const text = await res.text();
  assertEquals(res.status, status, `expected ${status}, got ${res.status}: ${text}`);
  return text === "" ? undefined : JSON.parse(text);
}

/** Asserts an error response of the contract's shape; returns its `error` object. */
export async function expectError(res: Response, status: number, code: string): Promise<ApiError> {
  const text = await res.text();
  assertEquals(res.status, status, `expected ${status} ${code}, got ${res.status}: ${text}`);
  assertMatch(res.headers.get("content-type") ?? "", /application\/json/);
  const body = JSON.parse(text);
  assertEquals(Object.keys(body), ["error"], `error body: ${text}`);
  const error = body.error as ApiError;
  assertEquals(error.code, code, `error code in ${text}`);
  assert(
    typeof error.message === "string" && error.message.length > 0,
    `message in ${text}`,
  );
  for (const key of Object.keys(error)) {
    assert(["code", "message", "details"].includes(key), `unexpected key ${key} in ${text}`);
  }
  return error;
}

/** The field names of a validation error's details. */
export function fields(error: ApiError): string[] {
  assert(Array.isArray(error.details?.fields), `details.fields in ${JSON.stringify(error)}`);
  return error.details!.fields!.map((f) => f.field);
}

/** Asserts a 400 `validation_failed` whose details name `field`. */
export async function expectInvalid(res: Response, field: string): Promise<ApiError> {
  const error = await expectError(res, 400, "validation_failed");
  assert(
    fields(error).includes(field),
    `expected details.fields to name ${field}: ${JSON.stringify(error.details)}`,
  );
  return error;
}
