/**
 * Runs one in-process measurement in a fresh process and prints its result as JSON on the last
 * line, so comparisons (the runtime and its raw ceiling, history on and off, with and without
 * stream clients) do not inherit each other's heap. Used by `main.ts`, `history.ts` and `sse.ts`, with the V8 flags of `deno task start`; by hand:
 *
 * ```sh
 * deno run --allow-all --v8-flags=--max-semi-space-size=96,--no-allocation-site-pretenuring \
 *   tests/bench/child.ts runtime '{"history": false}'
 * ```
 * @module
 */
import { startV8Flags } from "./common.ts";
import { thirtyDayQuery } from "./history.ts";
import { rawKvCeiling } from "./raw.ts";
import { runtimeThroughput } from "./runtime.ts";
import { sseClients } from "./sse.ts";

/** A twin head as a line of a heads file: its key, and its value as text or JSON. */
type HeadLine = { key: Deno.KvKey; utf8?: string; text?: string; json?: unknown };

/**
 * Writes heads (as a runtime run left them) to `path`, one JSON line each, so a raw ceiling run
 * in another process writes the very same values: byte heads as their UTF-8 text, turned back
 * into bytes there.
 */
async function writeHeads(
  path: string,
  heads: Array<{ key: Deno.KvKey; value: unknown }>,
): Promise<void> {
  const decoder = new TextDecoder();
  const lines = heads.map(({ key, value }): string => {
    const line: HeadLine = value instanceof Uint8Array
      ? { key, utf8: decoder.decode(value) }
      : typeof value === "string"
      ? { key, text: value }
      : { key, json: value };
    return JSON.stringify(line);
  });
  await Deno.writeTextFile(path, lines.join("\n"));
}

/** Reads what {@link writeHeads} wrote. */
async function readHeads(path: string): Promise<Array<{ key: Deno.KvKey; value: unknown }>> {
  const encoder = new TextEncoder();
  return (await Deno.readTextFile(path)).split("\n").map((text) => {
    const line = JSON.parse(text) as HeadLine;
    const value = line.utf8 !== undefined
      ? encoder.encode(line.utf8)
      : line.text !== undefined
      ? line.text
      : line.json;
    return { key: line.key, value };
  });
}

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
    if (opts.headsFile) await writeHeads(opts.headsFile, r.heads);
    result = { messagesPerSec: r.messagesPerSec, errors: r.errors, meanBatch: r.meanBatch };
  } else if (name === "raw") {
    // The raw ceiling the runtime's target is against, with the heads a runtime child wrote.
    if (typeof opts.headsFile !== "string") {
      throw new Error('The raw measurement needs {"headsFile": path}, as a runtime one wrote.');
    }
    const [r] = await rawKvCeiling({
      entries: await readHeads(opts.headsFile),
      ceilingOnly: true,
      seconds: opts.seconds,
      warmupSeconds: opts.warmupSeconds,
    });
    result = { entriesPerSec: r.entriesPerSec, perAtomic: r.perAtomic };
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
    throw new Error(
      `Unknown measurement ${JSON.stringify(name)}; use runtime, raw, sse or query.`,
    );
  }
  console.log(JSON.stringify(result));
}
