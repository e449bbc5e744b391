/**
 * A real Mosquitto for tests: a temp folder with a configuration derived from
 * `deploy/mosquitto/mosquitto.conf` (its own port, dynsec file and persistence folder) and the
 * dynamic-security file made by `deploy/mosquitto/setup.sh`. It can be stopped (SIGTERM: it saves
 * its persistence) and started again on the same port and folder.
 * @module
 */
import { freePort, LineProcess, ROOT, run } from "./real_process.ts";

const MOSQUITTO = "/usr/sbin/mosquitto";

/** A Mosquitto broker in its own folder. */
export class Mosquitto {
  /** The folder (configuration, dynsec file, persistence). */
  readonly dir: string;
  /** The listener port on 127.0.0.1. */
  readonly port: number;
  /** The dynsec admin user's password (user `doppel-admin`). */
  readonly adminPassword: string;
  /** The running process, if any. */
  process: LineProcess | undefined;
  /** Every process started, for the log. */
  readonly runs: LineProcess[] = [];

  private constructor(dir: string, port: number, adminPassword: string) {
    this.dir = dir;
    this.port = port;
    this.adminPassword = adminPassword;
  }

  /** `mqtt://127.0.0.1:<port>`. */
  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** The bridge's broker URL with the dynsec admin credentials. */
  get adminUrl(): string {
    return `mqtt://doppel-admin:${encodeURIComponent(this.adminPassword)}@127.0.0.1:${this.port}`;
  }

  /** Prepares a folder under `parent` and starts the broker. */
  static async create(parent: string): Promise<Mosquitto> {
    const dir = `${parent}/mosquitto`;
    await Deno.mkdir(dir, { recursive: true });
    const broker = new Mosquitto(dir, freePort(), `admin-${crypto.randomUUID()}`);
    const deployed = await Deno.readTextFile(`${ROOT}deploy/mosquitto/mosquitto.conf`);
    const conf = deployed
      .replace(/^listener 1883$/m, `listener ${broker.port} 127.0.0.1`)
      .replaceAll("/var/lib/mosquitto/dynamic-security.json", `${dir}/dynamic-security.json`)
      .replace(/^persistence_location .*$/m, `persistence_location ${dir}/`);
    if (conf === deployed || !conf.includes(`listener ${broker.port} `)) {
      throw new Error("deploy/mosquitto/mosquitto.conf no longer has the expected lines.");
    }
    await Deno.writeTextFile(`${dir}/mosquitto.conf`, conf);
    const setup = await run("bash", [
      `${ROOT}deploy/mosquitto/setup.sh`,
      broker.adminPassword,
      `${dir}/dynamic-security.json`,
    ]);
    if (setup.code !== 0) {
      // Not root: setup.sh's chown to user mosquitto fails after the file was made; the broker
      // then runs as this user and reads the file as it is.
      const made = await Deno.stat(`${dir}/dynamic-security.json`).then(() => true, () => false);
      if (Deno.uid() === 0 || !made) {
        throw new Error(`setup.sh failed (${setup.code}): ${setup.stderr}${setup.stdout}`);
      }
    }
    if (Deno.uid() === 0) {
      // Started as root, Mosquitto switches to user mosquitto: it must own its folder.
      const chown = await run("chown", ["-R", "mosquitto:", parent]);
      if (chown.code !== 0) throw new Error(`chown failed: ${chown.stderr}`);
    }
    await broker.start();
    return broker;
  }

  /** Starts the broker (again) on the same port and folder; waits for its "running" line. */
  async start(): Promise<void> {
    if (this.process?.running) throw new Error("Mosquitto is already running.");
    const process = new LineProcess(
      "mosquitto",
      new Deno.Command(MOSQUITTO, {
        args: ["-c", `${this.dir}/mosquitto.conf`],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }),
    );
    this.process = process;
    this.runs.push(process);
    try {
      await process.waitFor(/mosquitto version [\d.]+ running/, 10_000);
    } catch (error) {
      await process.stop();
      throw error;
    }
  }

  /** Stops the broker with SIGTERM (it saves its persistence) and waits for it to exit. */
  async stop(): Promise<Deno.CommandStatus | undefined> {
    return await this.process?.stop("SIGTERM");
  }

  /** Lines the running broker has logged so far (to wait for later ones only). */
  get mark(): number {
    return this.process?.lines.length ?? 0;
  }

  /** Waits for a line of the running broker matching `pattern` (from line `from`). */
  async waitLog(pattern: RegExp, from = 0, timeoutMs = 10_000): Promise<RegExpExecArray> {
    if (!this.process) throw new Error("Mosquitto is not running.");
    return await this.process.waitFor(pattern, timeoutMs, from);
  }

  /** The broker's output, all runs. */
  log(): string {
    return this.runs.map((p) => p.lines.join("\n")).join("\n--- restart ---\n");
  }
}
