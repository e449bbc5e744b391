/**
 * Structured logs: one JSON object a line, with level, component and, where there is one, the
 * device id. Passed in as a dependency; tests pass {@link silentLogger} or collect lines.
 * @module
 */

/** Log levels, least to most severe. */
export type LogLevel = "debug" | "info" | "warn" | "error";

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** Where log lines go. */
export interface Logger {
  /** Writes one line at `level` if the logger's level lets it through. */
  log(level: LogLevel, component: string, message: string, fields?: Record<string, unknown>): void;
}

/** A logger writing JSON lines to stderr at `level` and above. */
export function jsonLogger(level: LogLevel = "info"): Logger {
  const encoder = new TextEncoder();
  return {
    log(at, component, message, fields) {
      if (RANK[at] < RANK[level]) return;
      const line = JSON.stringify({
        time: new Date().toISOString(),
        level: at,
        component,
        message,
        ...fields,
      });
      Deno.stderr.writeSync(encoder.encode(line + "\n"));
    },
  };
}

/** A logger that drops everything. */
export const silentLogger: Logger = { log() {} };

/** Whether a string names a log level. */
export function isLogLevel(value: string): value is LogLevel {
  return value in RANK;
}
