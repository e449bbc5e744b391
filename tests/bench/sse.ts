/**
 * The dashboard's live stream under load: durable telemetry through the runtime in-process with
 * 50 open SSE clients (half watching the fleet, half watching devices that are being written to),
 * beside the same run with no clients.
 * @module
 */
import type { Doppel } from "../../src/app.ts";
import { BENCH_ADMIN_TOKEN, fmt } from "./common.ts";
import { inChild } from "./child.ts";

/** Throughput with and without stream clients, from one run. */
export interface SseResult {
  /** Messages/s with no clients. */
  without: number;
  /** Messages/s with the clients. */
  with: number;
  /** Clients that stayed connected to the end. */
  clients: number;
  /** SSE events the clients received while the load ran. */
  events: number;
  /** with / without. */
  ratio: number;
}

/** Runs the runtime benchmark twice, each in a fresh process: without stream clients, then with. */
export async function sseThroughput(log: (line: string) => void, clients = 50): Promise<SseResult> {
  const without = await inChild<Measured>("runtime", {});
  log(`  no stream clients:  ${fmt(without.messagesPerSec)} msg/s`);
  const withClients = await inChild<Measured & { events: number; clients: number }>("sse", {
    clients,
  });
  log(
    `  ${clients} stream clients: ${fmt(withClients.messagesPerSec)} msg/s ` +
      `(${fmt(withClients.events)} SSE events delivered to ${withClients.clients} clients)`,
  );
  return {
    without: without.messagesPerSec,
    with: withClients.messagesPerSec,
    clients: withClients.clients,
    events: withClients.events,
    ratio: withClients.messagesPerSec / without.messagesPerSec,
  };
}

/** A runtime measurement's figures. */
interface Measured {
  messagesPerSec: number;
}

/**
 * Opens `count` SSE streams on an in-process server for `doppel` (half on the fleet, half on
 * devices being written to); returns what closes them.
 */
export async function sseClients(
  doppel: Doppel,
  ids: string[],
  count: number,
  onEvents: (n: number) => void,
  onConnected: () => void,
): Promise<() => Promise<void>> {
  const stop = new AbortController();
  const serverStop = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: serverStop.signal, onListen() {} },
    doppel.fetch,
  );
  const base = `http://127.0.0.1:${server.addr.port}`;
  const readers = await Promise.all(Array.from({ length: count }, async (_, i) => {
    const query = i % 2 === 0 ? "" : `?device=${encodeURIComponent(ids[i % ids.length])}`;
    const res = await fetch(`${base}/api/v1/stream${query}`, {
      headers: { authorization: `Bearer ${BENCH_ADMIN_TOKEN}` },
      signal: stop.signal,
    });
    if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
    onConnected();
    const reader = res.body.getReader();
    // Aborting the fetch does not end a read already waiting: cancel the reader itself.
    stop.signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
    // Wrapped: returning the promise itself would make this wait for the stream to end.
    return {
      done: (async () => {
        const decoder = new TextDecoder();
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            onEvents(decoder.decode(value).split("\n\n").length - 1);
          }
        } catch {
          // Cancelled at the end of the run.
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
}
