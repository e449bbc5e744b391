/**
 * What the HTTP routes work with, built once by `createApp` and passed to each route module.
 * @module
 */
import { type CommandRecord, TERMINAL_STATUSES } from "../commands/model.ts";
import type { EventBus } from "../events/bus.ts";
import type { Clock } from "../clock.ts";
import type { DoppelMetrics } from "../metrics/doppel.ts";
import type { Sessions } from "./session.ts";
import type { Logger } from "../log.ts";
import type { PushNotifier } from "../push/notifier.ts";
import type { AdminAuth } from "../registry/admin.ts";
import type { Registry } from "../registry/devices.ts";
import type { SessionHub } from "../transports/sessions.ts";
import type { TwinRuntime } from "../twin/runtime.ts";

/** The app's parts, as routes see them. */
export interface Services {
  /** The store. */
  kv: Deno.Kv;
  /** Time. */
  clock: Clock;
  /** Devices and their keys. */
  registry: Registry;
  /** Twin actors. */
  runtime: TwinRuntime;
  /** Open device sessions (WebSocket, MQTT). */
  sessions: SessionHub;
  /** Dashboard sign-in sessions. */
  logins: Sessions;
  /** Metrics. */
  metrics: DoppelMetrics;
  /** Open live-update streams (for metrics). */
  streams: { open: number };
  /** Operator token check. */
  admin: AdminAuth;
  /** Web push to operators. */
  push: PushNotifier;
  /** Committed notices. */
  bus: EventBus;
  /** Log lines. */
  logger: Logger;
  /** Aborts when the app closes, ending every wait. */
  shutdown: AbortSignal;
  /**
   * Waits up to `ms` for a command to finish; its final record, or `undefined`. `fresh`: the
   * command was created just now, so it cannot have finished before the wait began.
   */
  waitForCommand(
    deviceId: string,
    commandId: string,
    ms: number,
    signal: AbortSignal,
    fresh?: boolean,
  ): Promise<CommandRecord | undefined>;
}

/** Builds {@link Services.waitForCommand} over the bus and the store. */
export function commandWaiter(
  bus: EventBus,
  runtime: TwinRuntime,
  shutdown: AbortSignal,
): Services["waitForCommand"] {
  return async (deviceId, commandId, ms, signal, fresh = false) => {
    const stop = new AbortController();
    const signals = AbortSignal.any([signal, shutdown, stop.signal]);
    // Listen first, then look: a result that lands in between is seen either way.
    const waiting = bus.waitFor(
      deviceId,
      (notice) =>
        notice.type === "command.changed" && notice.command.id === commandId &&
          TERMINAL_STATUSES.has(notice.command.status)
          ? notice.command
          : undefined,
      ms,
      signals,
    );
    // A command created just now needs a result that commits after it was handed over: that
    // comes after this listener is in place, so only an older command is looked up.
    const now = fresh ? null : await runtime.getCommand(deviceId, commandId);
    if (now && TERMINAL_STATUSES.has(now.status)) {
      stop.abort();
      await waiting;
      return now;
    }
    return await waiting;
  };
}
