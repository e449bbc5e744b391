/**
 * Part 5: MQTT. Three figures, with the brokers and the load each in their own process:
 *
 * 1. Durable QoS 1 telemetry through Doppel's embedded endpoint: the real server process
 *    (`src/main.ts`, temp KV file, `DOPPEL_LOG_LEVEL=warn`), devices registered through the
 *    operator API, then a load generator process (`mqtt_load.ts telemetry`) with one mqtt.js
 *    client per device, each keeping several QoS 1 publishes in flight; PUBACKs are counted over
 *    a fixed window after a warm-up (Doppel PUBACKs only once the message is durable).
 * 2. The same load against a plain aedes broker with no hooks (`mqtt_load.ts broker`), which
 *    PUBACKs without storing anything: the ceiling Doppel's figure is compared with.
 * 3. Command round trips: devices (`mqtt_load.ts responder`) subscribed to their commands answer
 *    each with `succeeded`; the bench sends commands at a fixed rate (open loop) with
 *    `POST /api/v1/devices/{id}/commands?wait=5` and times each from sending the request to the
 *    200 response carrying `status: "succeeded"`.
 * @module
 */
import {
  BENCH_ADMIN_TOKEN,
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
import type { LoadConfig, ResponderResult, TelemetryResult } from "./mqtt_load.ts";

/** One telemetry run against a broker, with the broker's CPU over the window. */
export interface MqttThroughput extends TelemetryResult {
  /** Broker process CPU in the window: main (JS) thread %, other threads %, busiest threads. */
  brokerCpu: { main: number; others: number; top: string } | null;
  /** Busy % of all the machine's cores in the window. */
  machineBusy: number | null;
  /** CPU other processes (not the broker, the load generator or the bench) used, % of a core. */
  othersCpu: number | null;
}

/** Command round-trip figures. */
export interface CommandLatency {
  /** Devices connected and answering. */
  devices: number;
  /** Commands sent per second (target rate). */
  rate: number;
  /** Commands measured (after the warm-up). */
  count: number;
  /** Achieved send rate in the measured part, per second. */
  sentPerSec: number;
  /** Round trip, ms. */
  p50: number;
  p90: number;
  p99: number;
  max: number;
  /** Measured commands slower than 25 ms: how many, and when the first and last were sent (s). */
  slow: { count: number; from: number; to: number };
  /**
   * Where the time went, median ms per phase, for all measured commands and for the slow ones,
   * from the command's own timestamps (server clock = bench clock, ms resolution): request sent
   * → `createdAt` (HTTP, auth, the create turn) → `deliveredAt` (create commit, push, device
   * PUBACK, delivered turn) → `completedAt` (result publish, result turn) → response received
   * (result commit, waiter, HTTP).
   */
  phases: { all: number[]; slow: number[] };
  /** Measured commands that did not come back 200 with `succeeded` (or failed to send). */
  notSucceeded: number;
  /** Statuses of those, counted (`http 202 delivered`, `error: ...`). */
  failures: Record<string, number>;
  /** What the responder process counted. */
  responder: ResponderResult;
  /** Server CPU while commands ran. */
  serverCpu: { main: number; others: number; top: string } | null;
  /** CPU other processes (not the server, the responder or the bench) used, % of a core. */
  othersCpu: number | null;
  /** Ms some task stalled on I/O (Linux PSI `/proc/pressure/io`, `some`) while commands ran. */
  ioStallMs: number | null;
  /**
   * The disk under the KV file while commands ran: a probe writing 4 KiB and `fdatasync`ing it
   * every 10 ms, as each durable commit does. Its latency is the floor under every commit.
   */
  disk: { syncs: number; p50: number; p99: number; max: number };
}

/** What the MQTT part measured. */
export interface MqttResult {
  /** Devices registered for the telemetry runs. */
  devices: number;
  /** Seconds registering them through the operator API took. */
  registerSeconds: number;
  /** QoS 1 publishes in flight per client. */
  inFlight: number;
  /** Doppel's embedded endpoint. */
  doppel: MqttThroughput;
  /** Plain aedes, no hooks. */
  raw: MqttThroughput;
  /** Command round trips over MQTT. */
  commands: CommandLatency;
}

/** Settings for {@link mqttBench}. */
export interface MqttOptions {
  /** Devices (clients) for the telemetry runs (default 1,000). */
  devices?: number;
  /** QoS 1 publishes in flight per client (default 8). */
  inFlight?: number;
  /** Warm-up before each telemetry window, s (default 5: Doppel's rate still climbs at 3 s). */
  warmupSeconds?: number;
  /** Telemetry window, s (default 10). */
  seconds?: number;
  /** Devices answering commands (default 200). */
  commandDevices?: number;
  /** Commands per second (default 200). */
  commandRate?: number;
  /** Seconds of measured commands (default 10), after 1 s not measured. */
  commandSeconds?: number;
  /** Extra `deno run` flags for the Doppel server process (e.g. `--cpu-prof`), for exploring. */
  serverFlags?: string[];
  /** Prints progress. */
  log?(line: string): void;
}

const CHILD = new URL("./mqtt_load.ts", import.meta.url).pathname;

/** Runs the MQTT part; see the module doc. */
export async function mqttBench(options: MqttOptions = {}): Promise<MqttResult> {
  const count = options.devices ?? 1_000;
  const inFlight = options.inFlight ?? 8;
  const log = options.log ?? (() => {});
  const load = {
    inFlight,
    warmupMs: (options.warmupSeconds ?? 5) * 1000,
    windowMs: (options.seconds ?? 10) * 1000,
  };
  const dir = await tempDir("mqtt");
  const processes: Child[] = [];
  try {
    // Doppel, the real server process.
    const httpPort = freePort();
    const mqttPort = freePort();
    const base = `http://127.0.0.1:${httpPort}`;
    const server = spawn(
      serverArgs(options.serverFlags),
      serverEnv(httpPort, `${dir}/mqtt.kv`, { MQTT_PORT: String(mqttPort) }),
      "server",
    );
    processes.push(server);
    await waitHealthy(base, server);

    const t0 = performance.now();
    const devices = await registerDevices(base, count, 16, "mqtt");
    const registerSeconds = (performance.now() - t0) / 1000;
    log(
      `  Doppel server up (HTTP ${httpPort}, MQTT ${mqttPort}); registered ${fmt(count)} ` +
        `devices via the operator API in ${registerSeconds.toFixed(2)} s`,
    );

    const url = `mqtt://127.0.0.1:${mqttPort}`;
    log(
      `  [a] Doppel: ${fmt(count)} mqtt.js clients, ${inFlight} QoS 1 in flight each, ` +
        `${load.warmupMs / 1000} s warm-up + ${load.windowMs / 1000} s window`,
    );
    const doppel = await telemetryRun(dir, "doppel", { url, devices, ...load }, server, processes);
    logThroughput(log, doppel);

    const commandDevices = devices.slice(0, options.commandDevices ?? 200);
    const rate = options.commandRate ?? 200;
    const commandSeconds = options.commandSeconds ?? 10;
    log(
      `  [c] Commands: ${commandDevices.length} devices answering over MQTT; ${rate}/s for ` +
        `1 s (not measured) + ${commandSeconds} s via POST /api/v1/devices/{id}/commands?wait=5`,
    );
    const commands = await commandRun(
      dir,
      base,
      { url, devices: commandDevices },
      rate,
      commandSeconds,
      server,
      processes,
    );
    await stop(server);
    const serverErrors = server.stderrText().trim();
    if (serverErrors) log(`  Doppel stderr: ${serverErrors.slice(0, 3000)}`);

    // The raw broker, same load.
    const broker = spawn(["run", "--allow-all", CHILD, "broker"], {}, "raw broker");
    processes.push(broker);
    const listening = await broker.line((l) => l.startsWith("LISTENING "), 30_000);
    const rawUrl = `mqtt://127.0.0.1:${listening.slice("LISTENING ".length)}`;
    log(`  [b] Raw aedes broker (no hooks, own process), same load`);
    const raw = await telemetryRun(
      dir,
      "raw",
      { url: rawUrl, devices, ...load },
      broker,
      processes,
    );
    logThroughput(log, raw);
    await stop(broker);

    return { devices: count, registerSeconds, inFlight, doppel, raw, commands };
  } finally {
    for (const child of processes) await stop(child);
    await removeDir(dir);
  }
}

function logThroughput(log: (line: string) => void, r: MqttThroughput): void {
  log(
    `      ${fmt(r.perSec)} PUBACKs/s (${fmt(r.acked)} in ${r.windowSeconds.toFixed(1)} s); ` +
      `PUBACK latency p50 ${r.latency.p50.toFixed(1)} ms, p99 ${r.latency.p99.toFixed(1)} ms, ` +
      `max ${r.latency.max.toFixed(0)} ms; connect ${r.connectSeconds.toFixed(1)} s; ` +
      `publish errors ${r.publishErrors}, clients lost ${r.lostClients}` +
      (r.firstError ? ` (first error: ${r.firstError})` : ""),
  );
  const parts: string[] = [];
  if (r.brokerCpu) {
    parts.push(
      `broker main thread ${r.brokerCpu.main.toFixed(0)}% = ` +
        `${(r.brokerCpu.main / 100 / r.perSec * 1e6).toFixed(1)} µs/msg, other threads ` +
        `${r.brokerCpu.others.toFixed(0)}% [${r.brokerCpu.top}]`,
    );
  }
  if (r.cpu) {
    parts.push(
      `load generator ${r.cpu.main.toFixed(0)}% main + ${r.cpu.others.toFixed(0)}% other`,
    );
  }
  if (r.machineBusy !== null) parts.push(`machine ${r.machineBusy.toFixed(0)}% busy`);
  if (r.othersCpu !== null) {
    parts.push(
      `other processes ${r.othersCpu.toFixed(0)}% of a core` +
        (r.othersCpu > 20 ? " -- WARNING: the machine was not quiet, figure is noisy" : ""),
    );
  }
  if (parts.length) log(`      CPU: ${parts.join("; ")}`);
}

/** Runs the telemetry load child against a broker and measures the broker over the window. */
async function telemetryRun(
  dir: string,
  name: string,
  config: LoadConfig,
  broker: Child,
  processes: Child[],
): Promise<MqttThroughput> {
  const path = `${dir}/${name}-load.json`;
  await Deno.writeTextFile(path, JSON.stringify(config));
  const child = spawn(["run", "--allow-all", CHILD, "telemetry", path], {}, `${name} load`);
  processes.push(child);
  const timeout = 60_000 + (config.warmupMs ?? 0) + (config.windowMs ?? 0);
  await child.line((l) => l === "WINDOW_START", timeout);
  const cpuBefore = threadCpu(broker.process.pid);
  const others = othersMeter([broker, child]);
  const machineBefore = machineCpu();
  const t0 = performance.now();
  await child.line((l) => l === "WINDOW_END", timeout);
  const seconds = (performance.now() - t0) / 1000;
  const brokerCpu = cpuShare(cpuBefore, threadCpu(broker.process.pid), seconds);
  const othersCpu = others(seconds);
  const machineAfter = machineCpu();
  const result = JSON.parse(
    (await child.line((l) => l.startsWith("BENCH_RESULT "), 60_000)).slice(13),
  ) as TelemetryResult;
  await stop(child);
  return {
    ...result,
    brokerCpu,
    othersCpu,
    machineBusy: machineBefore && machineAfter
      ? (machineAfter.busy - machineBefore.busy) / (machineAfter.total - machineBefore.total) *
        100
      : null,
  };
}

/** Sends commands at `rate`/s (open loop) to responding devices and times each round trip. */
async function commandRun(
  dir: string,
  base: string,
  config: LoadConfig,
  rate: number,
  seconds: number,
  server: Child,
  processes: Child[],
): Promise<CommandLatency> {
  const path = `${dir}/responder.json`;
  await Deno.writeTextFile(path, JSON.stringify(config));
  const child = spawn(["run", "--allow-all", CHILD, "responder", path], {}, "responder", true);
  processes.push(child);
  await child.line((l) => l === "READY", 60_000);

  const warmupMs = 1_000;
  const total = Math.round(rate * (warmupMs / 1000 + seconds));
  const latencies: number[] = [];
  const slowAt: number[] = []; // Seconds since the first command, of those slower than 25 ms.
  const phasesAll: number[][] = [];
  const phasesSlow: number[][] = [];
  const failures: Record<string, number> = {};
  let notSucceeded = 0;
  const inFlight = new Set<Promise<void>>();
  const headers = {
    authorization: `Bearer ${BENCH_ADMIN_TOKEN}`,
    "content-type": "application/json",
  };
  const body = JSON.stringify({ name: "reboot" });
  const send = async (i: number, measured: boolean): Promise<void> => {
    const id = config.devices[i % config.devices.length].id;
    const started = performance.now();
    const sentWall = Date.now();
    let outcome: string;
    try {
      const res = await fetch(`${base}/api/v1/devices/${id}/commands?wait=5`, {
        method: "POST",
        headers,
        body,
      });
      const text = await res.text();
      const elapsed = performance.now() - started;
      const receivedWall = Date.now();
      let status = "?";
      let reply: Record<string, unknown> = {};
      try {
        reply = JSON.parse(text);
        status = String(reply.status ?? (reply.error as { code?: string })?.code ?? "?");
      } catch { /* not JSON */ }
      if (res.status === 200 && status === "succeeded") {
        if (measured) {
          latencies.push(elapsed);
          const at = [reply.createdAt, reply.deliveredAt, reply.completedAt].map((t) =>
            typeof t === "string" ? Date.parse(t) : NaN
          );
          const phase = [at[0] - sentWall, at[1] - at[0], at[2] - at[1], receivedWall - at[2]];
          if (phase.every(Number.isFinite)) phasesAll.push(phase);
          if (elapsed >= 25) {
            slowAt.push((started - t0) / 1000);
            if (phase.every(Number.isFinite)) phasesSlow.push(phase);
          }
        }
        return;
      }
      outcome = `http ${res.status} ${status}`;
    } catch (error) {
      outcome = `error: ${error instanceof Error ? error.message : error}`;
    }
    if (measured) {
      notSucceeded++;
      failures[outcome] = (failures[outcome] ?? 0) + 1;
    }
  };

  const t0 = performance.now();
  let sent = 0;
  let measuredFrom = 0;
  let cpuBefore: ReturnType<typeof threadCpu> = null;
  let others: (seconds: number) => number | null = () => null;
  let ioBefore: number | null = null;
  let stopProbe: (() => Promise<CommandLatency["disk"]>) | undefined;
  let m0 = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor((performance.now() - t0) / 1000 * rate) + 1);
    while (sent < due) {
      const measured = sent >= rate * warmupMs / 1000;
      if (measured && !measuredFrom) {
        measuredFrom = sent;
        cpuBefore = threadCpu(server.process.pid);
        others = othersMeter([server, child]);
        ioBefore = ioStallMicros();
        stopProbe = diskProbe(dir);
        m0 = performance.now();
      }
      const p = send(sent++, measured);
      inFlight.add(p);
      p.finally(() => inFlight.delete(p));
    }
    await sleep(2);
  }
  const sendSeconds = (performance.now() - m0) / 1000;
  await Promise.all(inFlight);
  const serverCpu = cpuShare(cpuBefore, threadCpu(server.process.pid), sendSeconds);
  const othersCpu = others(sendSeconds);
  const ioAfter = ioStallMicros();
  const ioStallMs = ioBefore === null || ioAfter === null ? null : (ioAfter - ioBefore) / 1000;
  const disk = await stopProbe!();
  child.process.stdin.close();
  const responder = JSON.parse(
    (await child.line((l) => l.startsWith("BENCH_RESULT "), 30_000)).slice(13),
  ) as ResponderResult;
  await stop(child);

  latencies.sort((a, b) => a - b);
  const at = (p: number) =>
    latencies.length
      ? latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))]
      : NaN;
  return {
    devices: config.devices.length,
    rate,
    count: total - measuredFrom,
    sentPerSec: (total - measuredFrom) / sendSeconds,
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    max: latencies.length ? latencies[latencies.length - 1] : NaN,
    slow: {
      count: slowAt.length,
      from: slowAt.length ? Math.min(...slowAt) : NaN,
      to: slowAt.length ? Math.max(...slowAt) : NaN,
    },
    phases: { all: medianPhases(phasesAll), slow: medianPhases(phasesSlow) },
    notSucceeded,
    failures,
    responder,
    serverCpu,
    othersCpu,
    ioStallMs,
    disk,
  };
}

/**
 * Starts timing `fdatasync` on a 4 KiB write next to the KV file every 10 ms, the same kind of
 * sync every durable KV commit waits for; the returned function stops it and gives the figures.
 */
function diskProbe(dir: string): () => Promise<CommandLatency["disk"]> {
  let stop = false;
  const times: number[] = [];
  const run = (async () => {
    using file = await Deno.open(`${dir}/disk_probe.bin`, { create: true, write: true });
    const block = new Uint8Array(4096);
    for (let i = 0; !stop; i++) {
      block[0] = i & 255;
      const started = performance.now();
      await file.write(block);
      await file.syncData();
      times.push(performance.now() - started);
      if (i % 256 === 255) await file.seek(0, Deno.SeekMode.Start);
      await sleep(10);
    }
  })();
  return async () => {
    stop = true;
    await run;
    times.sort((a, b) => a - b);
    const at = (p: number) =>
      times[Math.min(times.length - 1, Math.floor(times.length * p))] ?? NaN;
    return { syncs: times.length, p50: at(0.5), p99: at(0.99), max: times.at(-1) ?? NaN };
  };
}

/** Microseconds some task on the machine stalled on I/O since boot (PSI); `null` without PSI. */
function ioStallMicros(): number | null {
  try {
    const match = /^some .*total=(\d+)/m.exec(Deno.readTextFileSync("/proc/pressure/io"));
    return match ? Number(match[1]) : null;
  } catch {
    return null;
  }
}

/**
 * Starts measuring the CPU the rest of the machine uses: all busy time minus that of `children`
 * and of this process. The returned function gives it for the time since, as % of one core.
 */
function othersMeter(children: Child[]): (seconds: number) => number | null {
  const ours = (): number | null => {
    let sum = 0;
    for (const pid of [Deno.pid, ...children.map((c) => c.process.pid)]) {
      const cpu = threadCpu(pid);
      if (!cpu) return null;
      sum += cpu.main + cpu.others;
    }
    return sum;
  };
  const machineBefore = machineCpu();
  const oursBefore = ours();
  return (seconds) => {
    const machineAfter = machineCpu();
    const oursAfter = ours();
    if (!machineBefore || !machineAfter || oursBefore === null || oursAfter === null) return null;
    // /proc/stat counts in USER_HZ (100 per second) summed over all cores.
    const busy = (machineAfter.busy - machineBefore.busy) / 100;
    return Math.max(0, busy - (oursAfter - oursBefore)) / seconds * 100;
  };
}

/** Median of each phase over the rows. */
function medianPhases(rows: number[][]): number[] {
  if (rows.length === 0) return [];
  return rows[0].map((_, i) => {
    const column = rows.map((row) => row[i]).sort((a, b) => a - b);
    return column[Math.floor(column.length / 2)];
  });
}

/** A spawned Deno process whose stdout is read line by line. */
interface Child {
  name: string;
  process: Deno.ChildProcess;
  /** Resolves with the first line (from now on, or already seen and not taken) matching. */
  line(match: (line: string) => boolean, timeoutMs: number): Promise<string>;
  /** Everything it wrote to stderr so far. */
  stderrText(): string;
  /** Whether it has exited. */
  exited: boolean;
}

function spawn(args: string[], env: Record<string, string>, name: string, stdin = false): Child {
  const process = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env,
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  let stderr = "";
  const child: Child = {
    name,
    process,
    exited: false,
    stderrText: () => stderr,
    line: (match, timeoutMs) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          const i = lines.findIndex(match);
          if (i >= 0) {
            const [line] = lines.splice(0, i + 1).slice(-1);
            done();
            resolve(line);
          } else if (child.exited) {
            done();
            reject(new Error(`${name} exited (${stderr.trim().slice(-2000)})`));
          }
        };
        const done = (): void => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`${name}: timed out (${stderr.trim().slice(-2000)})`));
        }, timeoutMs);
        waiters.add(check);
        check();
      }),
  };
  const wake = (): void => {
    for (const waiter of [...waiters]) waiter();
  };
  (async () => {
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of process.stdout) {
      buffered += decoder.decode(chunk, { stream: true });
      const parts = buffered.split("\n");
      buffered = parts.pop()!;
      lines.push(...parts);
      wake();
    }
  })().catch(() => {});
  (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of process.stderr) {
      stderr += decoder.decode(chunk, { stream: true });
      if (stderr.length > 100_000) stderr = stderr.slice(-50_000);
    }
  })().catch(() => {});
  process.status.then(() => {
    child.exited = true;
    // Let the stdout reader deliver its last lines first.
    setTimeout(wake, 50);
  });
  return child;
}

/** Ends a child: SIGTERM, then SIGKILL after 5 s. */
async function stop(child: Child): Promise<void> {
  if (child.exited) {
    await child.process.status;
    return;
  }
  try {
    child.process.kill("SIGTERM");
  } catch { /* already gone */ }
  const ended = await Promise.race([child.process.status, sleep(5000).then(() => null)]);
  if (ended === null) {
    try {
      child.process.kill("SIGKILL");
    } catch { /* already gone */ }
    await child.process.status;
  }
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function waitHealthy(base: string, server: Child): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !server.exited) {
    try {
      const res = await fetch(`${base}/healthz`);
      await res.body?.cancel();
      if (res.ok) return;
    } catch { /* not listening yet */ }
    await sleep(100);
  }
  throw new Error(
    server.exited
      ? `The server exited during start-up: ${server.stderrText().slice(-2000)}`
      : "The server did not start.",
  );
}
