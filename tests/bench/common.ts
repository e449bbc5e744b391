/**
 * Shared pieces of the benchmark: the twin kinds, fast seeding of devices and twins straight into
 * KV (the same entries `Registry.register` writes, many devices per atomic), the exact twin value
 * the runtime writes, and small timing and formatting helpers.
 * @module
 */
import { type AppDeps, createApp, type Doppel } from "../../src/app.ts";
import { systemClock } from "../../src/clock.ts";
import { silentLogger } from "../../src/log.ts";
import type { DeviceRecord } from "../../src/registry/devices.ts";
import { KeyVault, randomSecret } from "../../src/registry/secrets.ts";
import { keys } from "../../src/storage/keys.ts";
import { encodeTwin } from "../../src/storage/twin_store.ts";
import type { TwinKind } from "../../src/twin/kind.ts";
import { loadKinds } from "../../src/twin/loader.ts";
import { newTwinRecord, type TwinRecord } from "../../src/twin/state.ts";

/** The project root (where `deno.json` is). */
export const ROOT: string = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** The project's twin kinds folder. */
export const TWINS_DIR: string = `${ROOT}/twins`;

/** The server secret every bench app uses. */
export const BENCH_SECRET = "bench-secret-0123456789abcdef";

/** The operator token of every app and server the benchmark starts. */
export const BENCH_ADMIN_TOKEN = "bench-admin-token-0123456789";

/**
 * `deno run` arguments starting the server as `deno task start` does, read from `deno.json` so the
 * two cannot drift apart (`flags` go before the script).
 */
export function serverArgs(flags: string[] = []): string[] {
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`));
  const [deno, ...args] = String(config.tasks.start).trim().split(/\s+/);
  const script = args.pop();
  if (deno !== "deno" || args[0] !== "run" || script !== "src/main.ts") {
    throw new Error(
      `deno.json's start task is not "deno run … src/main.ts": ${config.tasks.start}`,
    );
  }
  return [...args, ...flags, script];
}

/** The V8 flags `deno task start` runs with, plus `extra` (for a child that runs the runtime). */
export function startV8Flags(extra: string[] = []): string {
  const set = serverArgs().find((arg) => arg.startsWith("--v8-flags="));
  const flags = [...(set ? set.slice("--v8-flags=".length).split(",") : []), ...extra];
  return `--v8-flags=${flags.join(",")}`;
}

/**
 * A bench server's environment: HTTP on `port` of loopback, its own KV file, the bench's secret,
 * token and kinds, warnings only in the log; `env` adds or overrides.
 */
export function serverEnv(
  port: number,
  kvPath: string,
  env: Record<string, string> = {},
): Record<string, string> {
  return {
    PORT: String(port),
    DOPPEL_HOSTNAME: "127.0.0.1",
    DOPPEL_KV: kvPath,
    DOPPEL_ADMIN_TOKEN: BENCH_ADMIN_TOKEN,
    DOPPEL_SECRET: BENCH_SECRET,
    DOPPEL_TWINS: TWINS_DIR,
    DOPPEL_LOG_LEVEL: "warn",
    ...env,
  };
}

/** Loads the project's twin kinds. */
export function benchKinds(): Promise<Map<string, TwinKind>> {
  return loadKinds(TWINS_DIR);
}

/** An app on `kv` as the benchmark runs it in process: the project's kinds, silent logs. */
export async function benchApp(kv: Deno.Kv, runtime?: AppDeps["runtime"]): Promise<Doppel> {
  return await createApp({
    kv,
    clock: systemClock,
    kinds: await benchKinds(),
    secret: BENCH_SECRET,
    adminToken: BENCH_ADMIN_TOKEN,
    logger: silentLogger,
    ...(runtime ? { runtime } : {}),
  });
}

/** Device ids `prefix-000000` .. for `count` devices. */
export function deviceIds(prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}-${String(i).padStart(6, "0")}`);
}

/**
 * A twin record as the runtime stores it after one thermostat reading: a fresh record with
 * `telemetry.last`, `telemetry.lastAt` and `connection.lastSeenAt` filled in.
 */
export function twinAfterTelemetry(id: string, now: number): TwinRecord {
  const record = newTwinRecord(id, "thermostat", now);
  const at = new Date(now).toISOString();
  return {
    ...record,
    telemetry: { last: { temperature: 21.5 }, lastAt: at },
    connection: { ...record.connection, lastSeenAt: at },
  };
}

/** The head entry (key and value) the runtime writes for a twin record, via `encodeTwin`. */
export function twinHeadEntry(record: TwinRecord): { key: Deno.KvKey; value: unknown } {
  const { mutations } = encodeTwin(record, 1);
  if (mutations.length !== 1 || mutations[0].type !== "set") {
    throw new Error(`Twin ${record.id} does not encode to one set.`);
  }
  return { key: mutations[0].key, value: mutations[0].value };
}

/**
 * The bytes a KV value takes as the runtime writes it: a byte array's length (twin heads are JSON
 * text encoded as UTF-8), a string's length, anything else the length of its JSON.
 */
export function storedBytes(value: unknown): number {
  if (value instanceof Uint8Array) return value.length;
  return typeof value === "string" ? value.length : JSON.stringify(value).length;
}

/** Options for {@link seedDevices}. */
export interface SeedOptions {
  /** Twin kind of every device (default `thermostat`). */
  kind?: string;
  /** Server secret keys are sealed under (default {@link BENCH_SECRET}). */
  secret?: string;
  /** Registration time in ms (default now). */
  now?: number;
  /** Devices per atomic (3 mutations each; default 300). */
  perAtomic?: number;
  /** Atomics in flight (default 2). */
  inFlight?: number;
}

/**
 * Writes devices and their twins straight into KV, many per atomic: per device the entries
 * `Registry.register` writes for a device without tags or parent (`["devices", id]`,
 * `["devices_by_kind", kind, id]` and the twin head from `encodeTwin(newTwinRecord(...))`), with a
 * freshly sealed key each. Meant for an empty KV: it does not check that ids are free.
 */
export async function seedDevices(
  kv: Deno.Kv,
  ids: readonly string[],
  options: SeedOptions = {},
): Promise<void> {
  const kind = options.kind ?? "thermostat";
  const now = options.now ?? Date.now();
  const at = new Date(now).toISOString();
  const perAtomic = options.perAtomic ?? 300;
  const inFlight = options.inFlight ?? 2;
  // A vault of our own, dropped when seeding ends: its cache of sealed keys must not stay alive.
  let vault: KeyVault | null = await KeyVault.fromSecret(options.secret ?? BENCH_SECRET);
  let next = 0;
  const writer = async (): Promise<void> => {
    while (next < ids.length) {
      const slice = ids.slice(next, next + perAtomic);
      next += slice.length;
      const sealed = await Promise.all(slice.map(() => vault!.seal(randomSecret(32))));
      const atomic = kv.atomic();
      slice.forEach((id, i) => {
        const device: DeviceRecord = {
          id,
          kind,
          tags: {},
          parent: null,
          enabled: true,
          createdAt: at,
          updatedAt: at,
          keys: [{ sealed: sealed[i], createdAt: at }],
        };
        atomic
          .set(keys.device(id), device)
          .set(keys.devicesByKind(kind, id), null)
          .mutate(...encodeTwin(newTwinRecord(id, kind, now), 0).mutations);
      });
      const result = await atomic.commit();
      if (!result.ok) throw new Error("Seeding atomic failed.");
    }
  };
  await Promise.all(Array.from({ length: inFlight }, writer));
  vault = null;
}

/** A fresh temp dir for one bench part; remove it with {@link removeDir}. */
export function tempDir(part: string): Promise<string> {
  return Deno.makeTempDir({ prefix: `doppel-bench-${part}-` });
}

/** Removes a dir and everything in it, ignoring a dir already gone. */
export async function removeDir(dir: string): Promise<void> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Formats a rate or count with thousands separators and no decimals. */
export function fmt(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

/** Megabytes (MiB) of a byte count, one decimal. */
export function mb(bytes: number): number {
  return Math.round(bytes / 1024 / 1024 * 10) / 10;
}

/** CPU seconds a process has used, split into its main thread and the rest (Linux only). */
export interface ThreadCpu {
  /** The main thread: all JavaScript runs here. */
  main: number;
  /** Every other thread (KV's SQLite writer, Tokio workers, V8 helpers). */
  others: number;
  /** Seconds by thread name, the main thread as `main`. */
  byName: Record<string, number>;
}

/** CPU time of process `pid` (default this one) by thread, from /proc; `null` without /proc. */
export function threadCpu(pid: number = Deno.pid): ThreadCpu | null {
  const ticks = 100; // USER_HZ, 100 on Linux.
  // Threads come and go while the list is read: try again rather than give up.
  for (let attempt = 0; attempt < 5; attempt++) {
    const out: ThreadCpu = { main: 0, others: 0, byName: {} };
    let tasks: string[];
    try {
      tasks = Array.from(Deno.readDirSync(`/proc/${pid}/task`), (entry) => entry.name);
    } catch {
      continue;
    }
    for (const task of tasks) {
      let stat: string;
      try {
        stat = Deno.readTextFileSync(`/proc/${pid}/task/${task}/stat`);
      } catch {
        continue; // The thread ended.
      }
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the name.
      const seconds = (Number(fields[11]) + Number(fields[12])) / ticks;
      const main = Number(task) === pid;
      if (main) out.main += seconds;
      else out.others += seconds;
      const label = main ? "main" : name;
      out.byName[label] = (out.byName[label] ?? 0) + seconds;
    }
    return out;
  }
  return null;
}

/** CPU used between two {@link threadCpu} readings, as percent of `seconds` of wall time. */
export function cpuShare(
  before: ThreadCpu | null,
  after: ThreadCpu | null,
  seconds: number,
): { main: number; others: number; top: string } | null {
  if (!before || !after) return null;
  const busiest = Object.entries(after.byName)
    .filter(([name]) => name !== "main")
    .map(([name, s]) => [name, s - (before.byName[name] ?? 0)] as const)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 3)
    .map(([name, s]) => `${name} ${Math.round(s / seconds * 100)}%`)
    .join(", ");
  return {
    main: (after.main - before.main) / seconds * 100,
    others: (after.others - before.others) / seconds * 100,
    top: busiest,
  };
}

/** CPU seconds of this process's finished, waited-for children (from /proc/self/stat). */
export function childrenCpuSeconds(): number | null {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 16 and 17 of stat (cutime, cstime) are 13 and 14 after the name.
    return (Number(fields[13]) + Number(fields[14])) / 100;
  } catch {
    return null;
  }
}

/** Busy and total CPU time of the whole machine, in clock ticks (from /proc/stat). */
export function machineCpu(): { busy: number; total: number } | null {
  try {
    const line = Deno.readTextFileSync("/proc/stat").split("\n")[0];
    const ticks = line.trim().split(/\s+/).slice(1).map(Number);
    const total = ticks.reduce((a, b) => a + b, 0);
    const idle = ticks[3] + (ticks[4] ?? 0); // idle + iowait
    return { busy: total - idle, total };
  } catch {
    return null;
  }
}

/**
 * Registers `count` thermostats through the operator API of the server at `base`, `parallel`
 * requests at a time (ids `<prefix>-000000`…); returns their ids and keys.
 */
export async function registerDevices(
  base: string,
  count: number,
  parallel: number,
  prefix: string,
): Promise<Array<{ id: string; key: string }>> {
  const out: Array<{ id: string; key: string }> = new Array(count);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      const id = `${prefix}-${String(i).padStart(6, "0")}`;
      const res = await fetch(`${base}/api/v1/devices`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${BENCH_ADMIN_TOKEN}`,
          "content-type": "application/json",
        },
        body: JSON.stringify({ id, kind: "thermostat" }),
      });
      const body = await res.json();
      if (res.status !== 201) {
        throw new Error(`Registering ${id}: ${res.status} ${JSON.stringify(body)}`);
      }
      out[i] = { id, key: body.key };
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return out;
}
