/**
 * Live updates for the dashboard over Server-Sent Events, `GET /api/v1/stream`. With
 * `?device=<id>`, that device's committed changes (telemetry points, twin, commands, alarms,
 * presence, events) as they happen; without, the fleet's alarm and presence changes and a stats
 * line every second. Events are batched (every 100 ms for a device, 250 ms for the fleet), so a
 * stream costs the same however fast devices report.
 * @module
 */
import type { Context } from "hono";
import { streamSSE } from "hono/streaming";
import type { Notice } from "../twin/turn.ts";
import type { Services } from "./services.ts";

/** Serves one stream until the client goes away or the app closes. */
export function serveStream(c: Context, s: Services): Response {
  const device = c.req.query("device") || undefined;
  return streamSSE(c, async (stream) => {
    const stop = new AbortController();
    stream.onAbort(() => stop.abort());
    // A stream opened with a dashboard session lasts only as long as the session: signing out,
    // its expiry or a new operator token ends it (checked every 10 s).
    const signedIn = c.req.header("authorization") ? null : await s.logins.fromRequest(c);
    let checkedAt = performance.now();
    // Removed when the stream ends: the app's shutdown signal lives as long as the process, and a
    // listener left on it would keep every closed stream's context alive.
    const onShutdown = () => stop.abort();
    s.shutdown.addEventListener("abort", onShutdown, { once: true });
    s.streams.open++;
    let pending: Notice[] = [];
    const unsubscribe = s.bus.subscribe(device ?? "*", (notice) => {
      if (device || notice.type === "alarm.changed" || notice.type === "presence.changed") {
        pending.push(notice);
        // A client that cannot keep up loses the oldest, not the process its memory.
        if (pending.length > 5_000) pending = pending.slice(-2_500);
      }
    });
    try {
      await stream.writeSSE({ event: "hello", data: JSON.stringify({ device: device ?? null }) });
      let lastStats = 0;
      let lastMessages = s.metrics.messages.total();
      let lastPoints = s.metrics.points.total();
      while (!stop.signal.aborted) {
        await sleep(device ? 100 : 250, stop.signal);
        if (stop.signal.aborted) break;
        if (pending.length > 0) {
          const batch = pending;
          pending = [];
          await stream.writeSSE({ event: "notices", data: JSON.stringify(batch) });
        }
        const now = performance.now();
        if (signedIn && now - checkedAt >= 10_000) {
          checkedAt = now;
          if (!(await s.logins.get(signedIn.id))) break;
        }
        if (!device && now - lastStats >= 1000) {
          const messages = s.metrics.messages.total();
          const points = s.metrics.points.total();
          const seconds = lastStats === 0 ? 1 : (now - lastStats) / 1000;
          await stream.writeSSE({
            event: "stats",
            data: JSON.stringify({
              messagesPerSecond: lastStats === 0 ? 0 : (messages - lastMessages) / seconds,
              pointsPerSecond: lastStats === 0 ? 0 : (points - lastPoints) / seconds,
              activeTwins: s.runtime.activations,
              connected: s.sessions.counts(),
            }),
          });
          lastStats = now;
          lastMessages = messages;
          lastPoints = points;
        }
      }
    } finally {
      s.shutdown.removeEventListener("abort", onShutdown);
      unsubscribe();
      s.streams.open--;
    }
  });
}

/** Waits `ms`, or less if `signal` aborts (so a closed stream leaves no timer behind). */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
