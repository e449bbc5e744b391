/**
 * Assertions for tests (`@std/assert` lives on JSR, which this project cannot reach), over
 * `node:assert/strict`.
 * @module
 */
import nodeAssert from "node:assert/strict";

/** Fails unless `actual` deeply equals `expected`. */
export function assertEquals<T>(
  actual: unknown,
  expected: T,
  message?: string,
): asserts actual is T {
  if (message === undefined) nodeAssert.deepStrictEqual(actual, expected);
  else nodeAssert.deepStrictEqual(actual, expected, message);
}

/** Fails unless `value` is truthy. */
export function assert(value: unknown, message?: string): asserts value {
  if (message === undefined) nodeAssert.ok(value);
  else nodeAssert.ok(value, message);
}

/** Fails unless `text` matches `pattern`. */
export function assertMatch(text: string, pattern: RegExp, message?: string): void {
  if (message === undefined) nodeAssert.match(text, pattern);
  else nodeAssert.match(text, pattern, message);
}

/** Fails unless `fn` rejects (or throws); returns the error. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  message?: string,
): Promise<unknown> {
  try {
    await fn();
  } catch (error) {
    return error;
  }
  throw new nodeAssert.AssertionError({ message: message ?? "Expected a rejection." });
}
