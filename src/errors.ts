/**
 * The error every layer throws for a caller's mistake; transports map it to their own form
 * (an HTTP status, an MQTT refusal, a WebSocket error frame).
 * @module
 */

/** Contract error codes and the HTTP status each maps to. */
export const ERROR_STATUS = {
  bad_request: 400,
  invalid_json: 400,
  validation_failed: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  precondition_failed: 412,
  payload_too_large: 413,
  unsupported_media_type: 415,
  rate_limited: 429,
  handler_failed: 500,
  internal: 500,
  unavailable: 503,
} as const;

/** One of the contract's error codes. */
export type ErrorCode = keyof typeof ERROR_STATUS;

/**
 * A 400 about a request body (or frame, or message) as a whole: its details name the field
 * `(body)`, as every 400's details name a field.
 */
export function bodyError(
  code: "invalid_json" | "bad_request",
  message: string,
  fieldMessage: string,
): DoppelError {
  return new DoppelError(code, message, { fields: [{ field: "(body)", message: fieldMessage }] });
}

/** An error that reaches the caller as `{"error": {code, message, details}}`. */
export class DoppelError extends Error {
  /** The machine-readable code. */
  readonly code: ErrorCode;
  /** Extra structure for the caller, such as the fields that failed validation. */
  readonly details: unknown;

  /** Creates an error with a code, a sentence for people, and optional details. */
  constructor(code: ErrorCode, message: string, details?: unknown) {
    super(message);
    this.name = "DoppelError";
    this.code = code;
    this.details = details;
  }

  /** The HTTP status for this error's code. */
  get status(): number {
    return ERROR_STATUS[this.code];
  }

  /** The contract's JSON body for this error. */
  toJSON(): { error: { code: string; message: string; details?: unknown } } {
    return {
      error: {
        code: this.code,
        message: this.message,
        ...(this.details === undefined ? {} : { details: this.details }),
      },
    };
  }
}

/** One field that failed validation: a dotted path and what was wrong. */
export interface FieldIssue {
  /** Where the bad value is, such as `items[2].temperature`. */
  field: string;
  /** What was wrong with it. */
  message: string;
}

/** Builds a `validation_failed` error whose message names the first bad field. */
export function validationError(prefix: string, issues: FieldIssue[]): DoppelError {
  const first = issues[0];
  const where = first ? ` ${first.field || "(root)"}: ${first.message}` : "";
  return new DoppelError("validation_failed", `${prefix}${where}`, { fields: issues });
}

/** The error for a paging cursor that did not come from a previous page. */
export function invalidCursor(): DoppelError {
  return validationError("The cursor is invalid:", [{
    field: "cursor",
    message: "must be a cursor from a previous page",
  }]);
}

/** Maps Deno KV's `invalid cursor` TypeError to {@link invalidCursor}; rethrows anything else. */
export function rethrowCursorError(error: unknown): never {
  if (error instanceof TypeError && /cursor/i.test(error.message)) throw invalidCursor();
  throw error;
}
