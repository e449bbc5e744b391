/**
 * The WebSocket device channel, `GET /device/v1/ws`: the device API as JSON frames both ways.
 *
 * Up (device → cloud), each may carry `rid` (answered by a `result` or `error` frame with the same
 * `rid`) and, from a gateway, `device` (a child's id):
 * `{type: "telemetry", data}`, `{type: "reported", patch}`, `{type: "twin.get"}`,
 * `{type: "command.result", commandId, status, result?}`, `{type: "presence", device, status}`
 * (a gateway's child going `online` or `offline`), and `{type: "ack", mid}` for a push.
 *
 * Down (cloud → device): `{type: "hello", device, sessionId}`, `{type: "result", rid, body}`,
 * `{type: "error", rid?, error}`, `{type: "desired", mid, device, patch, version, full?}` and
 * `{type: "command", mid, device, command}`. A command is `delivered` when its `ack` arrives.
 * @module
 */
import type { CommandRecord } from "../commands/model.ts";
import { DoppelError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { DeviceRecord, Registry } from "../registry/devices.ts";
import type { TwinRuntime } from "../twin/runtime.ts";
import { actFor } from "../web/auth.ts";
import { deviceCommand } from "../web/device_api.ts";
import { isObject } from "../twin/json.ts";
import type { DesiredUpdate } from "../twin/presence.ts";
import type { DeviceSession, Downlink, SessionHub } from "./sessions.ts";
import { applyUplink, MAX_UPLINK_BYTES, parseBody, type UplinkOp } from "./uplink.ts";

/** The refusal of a frame over {@link MAX_UPLINK_BYTES}. */
function frameTooLarge(): DoppelError {
  return new DoppelError("payload_too_large", `A frame may be at most ${MAX_UPLINK_BYTES} bytes.`);
}

/** Frames one socket may have waiting for their results before it is closed. */
const MAX_FRAMES_IN_FLIGHT = 64;

/**
 * How long a desired push waits for its `ack` frame before it counts as not handed over (ms). A
 * command push waits as long as the socket is open: it is `delivered` on its ack, however late.
 */
const ACK_TIMEOUT_MS = 30_000;

const OPS: Record<string, UplinkOp> = {
  "telemetry": "telemetry",
  "reported": "reported",
  "twin.get": "twin.get",
  "command.result": "command.result",
};

/** What a WebSocket channel needs. */
export interface ChannelDeps {
  /** Twin actors. */
  runtime: TwinRuntime;
  /** Devices. */
  registry: Registry;
  /** Session bookkeeping. */
  sessions: SessionHub;
  /** The store. */
  kv: Deno.Kv;
  /** Log lines. */
  logger: Logger;
}

/** Serves one authenticated device over an upgraded WebSocket. */
export function serveDeviceSocket(
  socket: WebSocket,
  device: DeviceRecord,
  deps: ChannelDeps,
  keyId?: string,
): void {
  const acks = new Map<string, (ok: boolean) => void>();
  let nextMid = 1;
  let session: DeviceSession | undefined;
  const opening: Promise<void> = new Promise((resolve) => {
    socket.addEventListener("open", () => resolve(), { once: true });
  });

  const send = (frame: Record<string, unknown>) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  };
  const push = (frame: Record<string, unknown>, untilClosed = false): Promise<boolean> => {
    if (socket.readyState !== WebSocket.OPEN) return Promise.resolve(false);
    const mid = String(nextMid++);
    return new Promise((resolve) => {
      const timer = untilClosed ? undefined : setTimeout(() => settle(false), ACK_TIMEOUT_MS);
      const settle = (ok: boolean) => {
        clearTimeout(timer);
        acks.delete(mid);
        resolve(ok);
      };
      acks.set(mid, settle);
      send({ ...frame, mid });
    });
  };
  const downlink: Downlink = {
    transport: "ws",
    ready: () => socket.readyState === WebSocket.OPEN,
    pushDesired: (deviceId: string, update: DesiredUpdate) =>
      push({ type: "desired", device: deviceId, ...update }),
    pushCommand: (deviceId: string, command: CommandRecord) =>
      push({ type: "command", device: deviceId, command: deviceCommand(command) }, true),
    kick: (reason: string) => socket.close(4003, reason),
  };
  const log = (message: string, fields: Record<string, unknown> = {}) =>
    deps.logger.log("warn", "ws", message, { deviceId: device.id, ...fields });

  const ready = opening.then(async () => {
    // Hello first: the session pushes what waited as soon as it opens.
    const sessionId = crypto.randomUUID();
    send({ type: "hello", device: device.id, sessionId });
    session = await deps.sessions.open(device, downlink, { id: sessionId, keyId });
  }).catch((error) => {
    log(`Opening the session failed: ${error}`);
    socket.close(1011, "session failed");
  });

  // Frames being handled now: a device may send the next before the last is answered, but not
  // without bound (each holds its bytes until its turn commits).
  let inFlight = 0;
  socket.addEventListener("message", async (event) => {
    let rid: unknown;
    // A string has at least as many UTF-8 bytes as characters: one too long is refused uncopied.
    const size = typeof event.data === "string"
      ? event.data.length
      : (event.data as ArrayBuffer).byteLength;
    if (size > MAX_UPLINK_BYTES) {
      log(`Frame of ${size} bytes refused.`);
      send({ type: "error", error: frameTooLarge().toJSON().error });
      return;
    }
    if (inFlight >= MAX_FRAMES_IN_FLIGHT) {
      log("Too many frames in flight; closing.");
      const error = new DoppelError(
        "rate_limited",
        `At most ${MAX_FRAMES_IN_FLIGHT} frames may wait for their results; closing.`,
      );
      send({ type: "error", error: error.toJSON().error });
      socket.close(1008, "too many frames in flight");
      return;
    }
    inFlight++;
    try {
      const bytes = typeof event.data === "string"
        ? new TextEncoder().encode(event.data)
        : new Uint8Array(event.data as ArrayBuffer);
      // Characters past ASCII take more than a byte: a string can pass the count above and not
      // this one.
      if (bytes.byteLength > MAX_UPLINK_BYTES) throw frameTooLarge();
      const frame = parseBody(bytes, "The frame");
      if (!isObject(frame)) {
        throw new DoppelError("bad_request", "A frame must be a JSON object with a type.");
      }
      rid = frame.rid;
      await ready;
      const body = await handleFrame(frame);
      if (body !== undefined) send({ type: "result", rid, body });
    } catch (error) {
      if (!(error instanceof DoppelError)) {
        deps.logger.log("error", "ws", `Frame failed: ${error}`, { deviceId: device.id });
      } else {
        log(`Frame refused: ${error.message}`, { code: error.code });
      }
      const body = error instanceof DoppelError
        ? error.toJSON().error
        : { code: "internal", message: "Something went wrong on our side; it was logged." };
      send({ type: "error", ...(rid === undefined ? {} : { rid }), error: body });
    } finally {
      inFlight--;
    }
  });

  socket.addEventListener("close", (event) => {
    for (const settle of [...acks.values()]) settle(false);
    const reason = event.code === 1006 ? "connection lost" : "disconnect";
    ready.then(() => session?.close(reason)).catch((error) => log(`Close failed: ${error}`));
  });

  async function handleFrame(frame: Record<string, unknown>): Promise<unknown> {
    const type = frame.type;
    if (type === "ack") {
      acks.get(String(frame.mid))?.(true);
      return undefined;
    }
    const target = await targetOf(frame.device);
    if (type === "presence") {
      if (target.id === device.id) {
        throw new DoppelError("bad_request", "A presence frame names a child device in `device`.");
      }
      if (frame.status === "online") await session!.attach(target);
      else if (frame.status === "offline") await session!.detach(target.id, "gateway reported");
      else throw new DoppelError("validation_failed", 'status must be "online" or "offline".');
      return { device: target.id, status: frame.status };
    }
    const op = typeof type === "string" && Object.hasOwn(OPS, type) ? OPS[type] : undefined;
    if (!op) {
      throw new DoppelError(
        "bad_request",
        `Unknown frame type ${JSON.stringify(type)}; use ${
          Object.keys(OPS).join(", ")
        }, presence or ack.`,
      );
    }
    // A gateway speaking for a child makes the child present through this session.
    if (target.id !== device.id && !session!.serves(target.id)) await session!.attach(target);
    const body = op === "telemetry"
      ? frame.data
      : op === "reported"
      ? frame.patch
      : op === "command.result"
      ? { status: frame.status, result: frame.result }
      : undefined;
    if (op === "telemetry" && body === undefined) {
      throw new DoppelError(
        "validation_failed",
        "A telemetry frame carries its readings in `data`.",
        {
          fields: [{ field: "data", message: "is required" }],
        },
      );
    }
    return await applyUplink(
      deps,
      target.id,
      op,
      body,
      "ws",
      typeof frame.commandId === "string" ? frame.commandId : undefined,
    );
  }

  async function targetOf(child: unknown): Promise<DeviceRecord> {
    if (child === undefined || child === device.id) return device;
    if (typeof child !== "string") {
      throw new DoppelError("validation_failed", "`device` must be a device id.");
    }
    return await actFor(deps.registry, device, child);
  }
}
