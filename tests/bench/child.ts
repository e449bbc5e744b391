/**
 * Runs one in-process measurement in a fresh process and prints its result as JSON on the last
 * line, so comparisons (history on and off, with and without stream clients) do not inherit each
 * other's heap. Used by `main.ts`, with the V8 flags of `deno task start`; by hand:
 *
 * ```sh
 * deno run --allow-all --v8-flags=--max-semi-space-size=96,--no-allocation-site-pretenuring \
 *   tests/bench/child.ts runtime '{"history": false}'
 * ```
 * @module
 */
import { startV8Flags } from "./common.ts";
import { thirtyDayQuery } from "./history.ts";
import { runtimeThroughput } from "./runtime.ts";
import { sseClients } from "./sse.ts";

/** Runs `child.ts` for a measurement; resolves with its JSON result. */
export async function inChild<T>(measurement: string, options: unknown = {}): Promise<T> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      // The V8 flags `deno task start` runs the runtime with.
      startV8Flags(),
      new URL(import.meta.url).pathname,
      measurement,
      JSON.stringify(options),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) throw new Error(`bench child ${measurement} failed (${out.code}).`);
  return JSON.parse(text.split("\n").at(-1)!) as T;
}

if (import.meta.main) {
  const [name, options] = Deno.args;
  const opts = options ? JSON.parse(options) : {};
  const log = (line: string) => console.error(line);
  let result: unknown;
  if (name === "runtime") {
    const r = await runtimeThroughput({ ...opts, log: () => {} });
    result = { messagesPerSec: r.messagesPerSec, errors: r.errors, meanBatch: r.meanBatch };
  } else if (name === "sse") {
    let events = 0, clients = 0;
    const r = await runtimeThroughput({
      ...opts,
      attach: (doppel, ids) =>
        sseClients(doppel, ids, opts.clients ?? 50, (n) => events += n, () => clients++),
    });
    result = { messagesPerSec: r.messagesPerSec, errors: r.errors, events, clients };
  } else if (name === "query") {
    result = await thirtyDayQuery(log);
  } else {
    throw new Error(`Unknown measurement ${JSON.stringify(name)}; use runtime, sse or query.`);
  }
  console.log(JSON.stringify(result));
}
