/**
 * Part 3: HTTP end to end. Starts the real server process on a temp KV file, registers devices
 * through the operator API, then drives `POST /device/v1/telemetry` with `wrk` and a generated
 * Lua script that rotates over the devices' Basic credentials and counts non-2xx answers.
 * @module
 */
import {
  childrenCpuSeconds,
  cpuShare,
  fmt,
  machineCpu,
  registerDevices,
  removeDir,
  ROOT,
  serverArgs,
  serverEnv,
  sleep,
  tempDir,
  threadCpu,
} from "./common.ts";

/** What the HTTP run measured, or why it was skipped. */
export type HttpResult =
  | { skipped: string }
  | {
    /** Devices registered through the API. */
    devices: number;
    /** Seconds the registrations took. */
    registerSeconds: number;
    /** wrk's Requests/sec. */
    requestsPerSec: number;
    /** Requests wrk completed. */
    requests: number;
    /** Responses outside 200-299, counted by the Lua script. */
    non2xx: number;
    /** wrk socket errors (connect, read, write, timeout). */
    socketErrors: number;
    /** wrk's latency line (avg, stdev, max). */
    latency: string;
    /** Peak resident memory of the server process, MiB, if readable. */
    serverRssMb?: number;
    /** Server CPU busy % during wrk: main (JavaScript) thread, other threads, busiest threads. */
    serverCpu: { main: number; others: number; top: string } | null;
    /** CPU % wrk itself used (of one core), if readable. */
    wrkCpu: number | null;
    /** Busy % of all the machine's cores during wrk, if readable. */
    machineBusy: number | null;
  };

/** Settings for {@link httpThroughput}. */
export interface HttpOptions {
  /** Devices to register (default 1,000). */
  devices?: number;
  /** wrk threads (default 2). */
  threads?: number;
  /** wrk connections (default 50). */
  connections?: number;
  /** wrk seconds (default 10). */
  seconds?: number;
  /** Prints progress. */
  log?(line: string): void;
}

/** Runs the HTTP benchmark; see the module doc. */
export async function httpThroughput(options: HttpOptions = {}): Promise<HttpResult> {
  const count = options.devices ?? 1_000;
  const log = options.log ?? (() => {});
  const wrk = await findWrk();
  if (!wrk) return { skipped: "wrk is not installed (apt-get install wrk); HTTP part skipped" };

  const dir = await tempDir("http");
  const port = freePort();
  const base = `http://127.0.0.1:${port}`;
  const server = new Deno.Command(Deno.execPath(), {
    args: serverArgs(),
    cwd: ROOT,
    // No MQTT listener: avoids clashing on port 1883.
    env: serverEnv(port, `${dir}/http.kv`, { MQTT_PORT: "0" }),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = collect(server.stderr);
  try {
    await waitHealthy(base, server.status);

    const started = performance.now();
    const credentials = await registerDevices(base, count, 16, "http");
    const registerSeconds = (performance.now() - started) / 1000;
    log(
      `  registered ${fmt(count)} devices via the operator API in ${registerSeconds.toFixed(2)} s`,
    );

    const script = `${dir}/telemetry.lua`;
    await Deno.writeTextFile(script, luaScript(credentials));
    const args = [
      `-t${options.threads ?? 2}`,
      `-c${options.connections ?? 50}`,
      `-d${options.seconds ?? 10}s`,
      "--latency",
      "-s",
      script,
      `${base}/device/v1/telemetry`,
    ];
    log(`  wrk ${args.join(" ")}`);
    const cpuBefore = threadCpu(server.pid);
    const childrenBefore = childrenCpuSeconds();
    const machineBefore = machineCpu();
    const wrkStarted = performance.now();
    const run = await new Deno.Command(wrk, { args, stdout: "piped", stderr: "piped" }).output();
    const wrkSeconds = (performance.now() - wrkStarted) / 1000;
    const serverCpu = cpuShare(cpuBefore, threadCpu(server.pid), wrkSeconds);
    const childrenAfter = childrenCpuSeconds();
    const wrkCpu = childrenBefore === null || childrenAfter === null
      ? null
      : (childrenAfter - childrenBefore) / wrkSeconds * 100;
    const machineAfter = machineCpu();
    const machineBusy = machineBefore === null || machineAfter === null
      ? null
      : (machineAfter.busy - machineBefore.busy) / (machineAfter.total - machineBefore.total) * 100;
    const out = new TextDecoder().decode(run.stdout);
    if (!run.success) {
      throw new Error(`wrk failed: ${new TextDecoder().decode(run.stderr)}\n${out}`);
    }
    const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
    const total = /(\d+) requests in/.exec(out);
    const non2xx = /BENCH_NON2XX (\d+)/.exec(out);
    if (!rps || !total || !non2xx) throw new Error(`Cannot parse wrk's output:\n${out}`);
    const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
    const latency = /Latency\s+(\S+)\s+(\S+)\s+(\S+)/.exec(out);
    return {
      devices: count,
      registerSeconds,
      requestsPerSec: Number(rps[1]),
      requests: Number(total[1]),
      non2xx: Number(non2xx[1]),
      socketErrors: socket ? socket.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0,
      latency: latency ? `avg ${latency[1]}, stdev ${latency[2]}, max ${latency[3]}` : "?",
      serverRssMb: await peakRssMb(server.pid),
      serverCpu,
      wrkCpu,
      machineBusy,
    };
  } finally {
    try {
      server.kill("SIGTERM");
    } catch { /* already gone */ }
    const ended = await Promise.race([server.status, sleep(5000).then(() => null)]);
    if (ended === null) {
      server.kill("SIGKILL");
      await server.status;
    }
    const errors = (await stderr).trim();
    if (errors) log(`  server stderr: ${errors.slice(0, 2000)}`);
    await removeDir(dir);
  }
}

async function findWrk(): Promise<string | null> {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      const path = `${dir}/wrk`;
      if ((await Deno.stat(path)).isFile) return path;
    } catch { /* not here */ }
  }
  return null;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<string> {
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
  return text;
}

async function waitHealthy(base: string, exited: Promise<Deno.CommandStatus>): Promise<void> {
  let gone = false;
  exited.then(() => gone = true);
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !gone) {
    try {
      const res = await fetch(`${base}/healthz`);
      await res.body?.cancel();
      if (res.ok) return;
    } catch { /* not listening yet */ }
    await sleep(100);
  }
  throw new Error(gone ? "The server exited during start-up." : "The server did not start.");
}

/** The wrk script: rotates Basic credentials per request; counts answers outside 2xx. */
function luaScript(credentials: Array<{ id: string; key: string }>): string {
  const headers = credentials.map(({ id, key }) => `  "Basic ${btoa(`${id}:${key}`)}",`);
  return `-- Generated by tests/bench/http.ts.
local auth = {
${headers.join("\n")}
}
local threads = {}
local started = 0

function setup(thread)
  thread:set("offset", started * 7919)
  started = started + 1
  table.insert(threads, thread)
end

function init(args)
  i = offset
  non2xx = 0
  wrk.method = "POST"
  wrk.body = '{"temperature": 21.5}'
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  i = i + 1
  wrk.headers["Authorization"] = auth[(i % #auth) + 1]
  return wrk.format(nil, nil)
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("non2xx") end
  io.write(string.format("BENCH_NON2XX %d\\n", total))
end
`;
}

/** The peak resident memory (VmHWM) of a process in MiB, from /proc. */
async function peakRssMb(pid: number): Promise<number | undefined> {
  try {
    const status = await Deno.readTextFile(`/proc/${pid}/status`);
    const match = /VmHWM:\s+(\d+) kB/.exec(status);
    return match ? Math.round(Number(match[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}
