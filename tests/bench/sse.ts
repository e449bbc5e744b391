/**
 * The dashboard's live stream under load: durable telemetry through the runtime in-process with
 * 50 open SSE clients (half watching the fleet, half watching devices that are being written to),
 * beside the same run with no clients.
 * @module
 */
import type { Doppel } from "../../src/app.ts";
import { fmt } from "./common.ts";
import { type RuntimeResult, runtimeThroughput } from "./runtime.ts";

/** Throughput with and without stream clients, from one run. */
export interface SseResult {
  /** No clients. */
  without: RuntimeResult;
  /** 50 clients. */
  with: RuntimeResult;
  /** Clients that stayed connected to the end. */
  clients: number;
  /** SSE events the clients received while the load ran. */
  events: number;
  /** with / without. */
  ratio: number;
}

const TOKEN = "bench-admin-token-0123456789";

/** Runs the runtime benchmark twice: without stream clients, then with 50. */
export async function sseThroughput(log: (line: string) => void, clients = 50): Promise<SseResult> {
  const without = await runtimeThroughput({});
  log(`  no stream clients:  ${fmt(without.messagesPerSec)} msg/s`);
  let events = 0;
  let connected = 0;
  const withClients = await runtimeThroughput({
    attach: async (doppel: Doppel, ids: string[]) => {
      const stop = new AbortController();
      const serverStop = new AbortController();
      const server = Deno.serve(
        { port: 0, hostname: "127.0.0.1", signal: serverStop.signal, onListen() {} },
        doppel.fetch,
      );
      const base = `http://127.0.0.1:${server.addr.port}`;
      const readers = await Promise.all(Array.from({ length: clients }, async (_, i) => {
        const query = i % 2 === 0 ? "" : `?device=${encodeURIComponent(ids[i % ids.length])}`;
        const res = await fetch(`${base}/api/v1/stream${query}`, {
          headers: { authorization: `Bearer ${TOKEN}` },
          signal: stop.signal,
        });
        if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
        connected++;
        const reader = res.body.getReader();
        // Aborting the fetch does not end a read already waiting: cancel the reader itself.
        stop.signal.addEventListener("abort", () => reader.cancel().catch(() => {}), {
          once: true,
        });
        // Wrapped: returning the promise itself would make this wait for the stream to end.
        return {
          done: (async () => {
            const decoder = new TextDecoder();
            try {
              for (;;) {
                const { done, value } = await reader.read();
                if (done) break;
                events += decoder.decode(value).split("\n\n").length - 1;
              }
            } catch {
              // Aborted at the end of the run.
            }
          })(),
        };
      }));
      return async () => {
        // Clients go first; their streams end on the server as they leave.
        stop.abort();
        await Promise.all(readers.map((r) => r.done));
        serverStop.abort();
        await server.finished;
      };
    },
  });
  log(
    `  ${clients} stream clients: ${fmt(withClients.messagesPerSec)} msg/s (${
      fmt(events)
    } SSE events delivered)`,
  );
  return {
    without,
    with: withClients,
    clients: connected,
    events,
    ratio: withClients.messagesPerSec / without.messagesPerSec,
  };
}
