/**
 * The few operations a device performs, whatever the transport: telemetry, a reported patch, a
 * twin read and a command result. WebSocket frames and MQTT topics translate to these.
 * @module
 */
import { DoppelError, validationError } from "../errors.ts";
import { loadTwin } from "../storage/twin_store.ts";
import { isObject, type Json, parseJsonDocument } from "../twin/json.ts";
import type { Transport } from "../twin/presence.ts";
import type { TwinRuntime } from "../twin/runtime.ts";

/** An operation a device sends up. */
export type UplinkOp = "telemetry" | "reported" | "twin.get" | "command.result";

/** Largest uplink message, in bytes: the HTTP telemetry limit. */
export const MAX_UPLINK_BYTES = 256 * 1024;

/** Runs one uplink operation for `deviceId`; resolves once it is durable, with its answer. */
export async function applyUplink(
  deps: { runtime: TwinRuntime; kv: Deno.Kv },
  deviceId: string,
  op: UplinkOp,
  body: unknown,
  transport: Transport,
  commandId?: string,
): Promise<unknown> {
  switch (op) {
    case "telemetry":
      return await deps.runtime.telemetry(
        deviceId,
        Array.isArray(body) ? body : [body],
        transport,
      );
    case "reported":
      return await deps.runtime.patchReported(deviceId, body, transport);
    case "twin.get": {
      const stored = await loadTwin(deps.kv, deviceId);
      if (!stored) throw new DoppelError("not_found", `Device ${deviceId} has no twin.`);
      const { desired, reported, version } = stored.state;
      return { desired, reported, version };
    }
    case "command.result": {
      if (!isObject(body)) {
        throw validationError("The command result is invalid:", [{
          field: "(body)",
          message: "must be a JSON object {status, result?}",
        }]);
      }
      const { status, result } = body;
      if (status !== "succeeded" && status !== "failed") {
        throw validationError("The command result is invalid:", [{
          field: "status",
          message: 'must be "succeeded" or "failed"',
        }]);
      }
      if (!commandId) {
        throw validationError("The command result is invalid:", [{
          field: "commandId",
          message: "is required",
        }]);
      }
      const command = await deps.runtime.completeCommand(
        deviceId,
        commandId,
        status,
        result as Json | undefined,
        transport,
      );
      return { id: command.id, status: command.status };
    }
  }
}

/** Parses a message body as JSON, or throws `invalid_json`; an empty body is `undefined`. */
export function parseBody(bytes: Uint8Array, what: string): unknown {
  if (bytes.byteLength > MAX_UPLINK_BYTES) {
    throw new DoppelError(
      "payload_too_large",
      `${what} is ${bytes.byteLength} bytes, over the limit of ${MAX_UPLINK_BYTES}.`,
    );
  }
  if (bytes.byteLength === 0) return undefined;
  return parseJsonDocument(bytes, what);
}
