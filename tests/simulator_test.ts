/**
 * The device simulator (`deno task simulate`) against the real server process: for each protocol
 * it registers devices, streams telemetry that lands in their twins and exits 0 with a clean
 * summary; a second run reuses the devices; forgotten keys are rotated; devices answer commands
 * and take desired changes, and Ctrl-C closes their connections; bad flags exit 2 naming the flag.
 *
 * The simulator runs with exactly the permissions of the `simulate` task (read from deno.json).
 * @module
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { DoppelProcess, freePort, LineProcess, Operator, ROOT, until } from "./real_process.ts";

const TOKEN = "simulator-test-admin-token-0123456789";
const PROTOCOLS = ["mqtt", "ws", "http"] as const;

// deno-lint-ignore no-explicit-any
type Json = any;

/** `deno run <permissions> src/simulator/main.ts`, as the `simulate` task has it. */
async function taskArgs(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  const parts = String(config.tasks.simulate).split(/\s+/);
  assertEquals(parts[0], "deno");
  return parts.slice(1);
}

/** A finished simulator run. */
interface SimRun {
  code: number;
  signal: Deno.Signal | null;
  lines: string[];
  /** The `--json` summary, when the run printed one. */
  summary: Json;
}

/** The simulator as a child process. */
class Simulator {
  readonly proc: LineProcess;

  constructor(args: string[], task: string[], env: Record<string, string> = {}) {
    this.proc = new LineProcess(
      "simulate",
      new Deno.Command(Deno.execPath(), {
        args: [...task, ...args],
        cwd: ROOT,
        env: { NO_COLOR: "1", ...env },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }),
    );
  }

  /** Waits for it to end (killing it after `timeoutMs`); its status, output and summary. */
  async finish(timeoutMs = 30_000): Promise<SimRun> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    const outcome = await Promise.race([this.proc.child.status, timedOut]);
    clearTimeout(timer);
    const status = await this.proc.stop();
    if (outcome === "timeout") {
      throw new Error(
        `The simulator did not finish in ${timeoutMs} ms:\n${this.proc.lines.join("\n")}`,
      );
    }
    const jsonLine = this.proc.lines.find((line) => line.startsWith("{"));
    return {
      code: status.code,
      signal: status.signal,
      lines: this.proc.lines,
      summary: jsonLine ? JSON.parse(jsonLine) : undefined,
    };
  }
}

/** Fails with the run's output unless it exited 0 with acknowledged telemetry and no errors. */
function assertCleanRun(run: SimRun, what: string): void {
  const output = run.lines.join("\n");
  assertEquals(run.code, 0, `${what}: exit code ${run.code}\n${output}`);
  assert(run.summary, `${what}: no JSON summary\n${output}`);
  assert(run.summary.acknowledged > 0, `${what}: nothing acknowledged\n${output}`);
  assertEquals(run.summary.errorCount, 0, `${what}: errors\n${output}`);
  assertEquals(run.summary.errors, {}, `${what}: errors\n${output}`);
}

async function deviceIds(op: Operator): Promise<string[]> {
  const body = await op.expect(200, "GET", "/api/v1/devices?limit=1000");
  return body.items.map((d: Json) => d.id).sort();
}

Deno.test("simulator: streams, reuses devices, answers commands, exits cleanly", async (t) => {
  const task = await taskArgs();
  const dir = await Deno.makeTempDir({ prefix: "doppel-sim-" });
  const server = await DoppelProcess.start({
    MQTT_PORT: String(freePort()),
    DOPPEL_KV: `${dir}/doppel.kv`,
    DOPPEL_ADMIN_TOKEN: TOKEN,
  });
  const op = new Operator(server.base, TOKEN);
  const keys = `${dir}/keys.json`;
  const common = (protocol: string, prefix: string, keysFile = keys) => [
    "--url",
    server.base,
    "--mqtt-url",
    `mqtt://127.0.0.1:${server.mqttPort}`,
    "--protocol",
    protocol,
    "--prefix",
    prefix,
    "--keys",
    keysFile,
  ];
  // The token comes from the environment, as a user's shell would give it.
  const env = { DOPPEL_ADMIN_TOKEN: TOKEN };

  try {
    for (const protocol of PROTOCOLS) {
      await t.step(`${protocol}: 3 devices at 5 msg/s for 3 s`, async () => {
        const run = await new Simulator(
          [
            ...common(protocol, `${protocol}-`),
            "--devices",
            "3",
            "--rate",
            "5",
            "--duration",
            "3",
            "--json",
          ],
          task,
          env,
        ).finish();
        assertCleanRun(run, protocol);
        assertEquals(run.summary.registered, 3);
        assertEquals(run.summary.protocol, protocol);
        // ~45 messages; allow for connection time and a slow machine.
        assert(run.summary.acknowledged >= 10, `only ${run.summary.acknowledged} acknowledged`);
        assertEquals(run.summary.unacknowledged, 0);
        for (let i = 0; i < 3; i++) {
          const twin = await op.twin(`${protocol}-${i}`);
          const last = twin.telemetry.last;
          assertEquals(typeof last.temperature, "number", JSON.stringify(twin));
          assert(last.temperature > 15 && last.temperature < 40, `temperature ${last.temperature}`);
          assert(last.humidity >= 35 && last.humidity <= 50, `humidity ${last.humidity}`);
          assertEquals(twin.reported.firmware, "sim-1.0.0");
          assert(["heat", "cool", "auto", "off"].includes(twin.reported.mode));
          assertEquals(typeof twin.reported.targetTemperature, "number");
        }
      });
    }

    await t.step("a second run reuses the devices (text summary)", async () => {
      const before = await deviceIds(op);
      assertEquals(before.length, 9);
      const run = await new Simulator(
        [...common("mqtt", "mqtt-"), "--devices", "3", "--rate", "5", "--duration", "2"],
        task,
        // No token: reusing remembered keys needs none.
        { DOPPEL_ADMIN_TOKEN: "" },
      ).finish();
      const output = run.lines.join("\n");
      assertEquals(run.code, 0, output);
      assertMatch(output, /registered 0, reused 3, keys rotated 0/);
      const acked = /acknowledged (\d+)/.exec(output);
      assert(acked && Number(acked[1]) > 0, output);
      assertMatch(output, /errors\s+none/);
      assertEquals(await deviceIds(op), before);
      const info = await Deno.stat(keys);
      assertEquals(info.mode! & 0o777, 0o600);
    });

    await t.step("devices whose keys are unknown here get rotated keys", async () => {
      const before = await deviceIds(op);
      const run = await new Simulator(
        [
          ...common("ws", "ws-", `${dir}/other-keys.json`),
          "--devices",
          "3",
          "--rate",
          "5",
          "--duration",
          "1",
          "--json",
        ],
        task,
        env,
      ).finish();
      assertCleanRun(run, "rotation");
      assertEquals(run.summary.registered, 0);
      assertEquals(run.summary.rotated, 3);
      assertEquals(await deviceIds(op), before);
    });

    await t.step("a generic device streams its simple payload", async () => {
      const run = await new Simulator(
        [
          ...common("ws", "gen-"),
          "--kind",
          "generic",
          "--devices",
          "1",
          "--rate",
          "5",
          "--duration",
          "1",
          "--json",
        ],
        task,
        env,
      ).finish();
      assertCleanRun(run, "generic");
      const twin = await op.twin("gen-0");
      assertEquals(twin.kind, "generic");
      assertEquals(typeof twin.telemetry.last.value, "number");
    });

    for (const protocol of PROTOCOLS) {
      await t.step(`${protocol}: commands, desired changes, and Ctrl-C`, async () => {
        const sim = new Simulator(
          [...common(protocol, `${protocol}-`), "--devices", "2", "--rate", "2", "--json"],
          task,
          env,
        );
        let run: SimRun | undefined;
        try {
          await sim.proc.waitFor(/^Streaming /m, 30_000);
          const id = `${protocol}-1`;
          // Connected, and streaming in this run.
          const since = Date.now();
          await until(
            async () => {
              const twin = await op.twin(id);
              return twin.connection.status === "online" &&
                Date.parse(twin.telemetry.lastAt) >= since;
            },
            `${id} online and streaming`,
            15_000,
            50,
          );
          const desired = await op.expect(200, "PATCH", `/api/v1/twins/${id}/desired`, {
            targetTemperature: 19.5,
            mode: "cool",
          });
          assertEquals(desired.desired.targetTemperature, 19.5);
          const command = await op.expect(
            200,
            "POST",
            `/api/v1/devices/${id}/commands?wait=15`,
            { name: "reboot", payload: { delaySeconds: 0 } },
          );
          assertEquals(command.status, "succeeded");
          assertEquals(command.result.rebooted, true);
          const cool = await op.expect(
            200,
            "POST",
            `/api/v1/devices/${id}/commands?wait=15`,
            { name: "cool", payload: { targetTemperature: 20 } },
          );
          assertEquals(cool.status, "succeeded");
          assertEquals(cool.result.targetTemperature, 20);
          await until(
            async () => {
              const twin = await op.twin(id);
              return twin.reported.targetTemperature === 19.5 && twin.reported.mode === "cool";
            },
            `${id} reporting its desired state`,
            15_000,
            50,
          );
        } finally {
          if (sim.proc.running) sim.proc.child.kill("SIGINT");
          run = await sim.finish();
        }
        assertEquals(run.signal, null, run.lines.join("\n"));
        assertCleanRun(run, `${protocol} interrupted`);
        assertEquals(run.summary.commandsAnswered, 2);
        assert(run.summary.desiredApplied >= 1, JSON.stringify(run.summary));
        if (protocol !== "http") {
          // The connections were closed, not dropped.
          for (const id of [`${protocol}-0`, `${protocol}-1`]) {
            const device = await until(async () => {
              const d = await op.expect(200, "GET", `/api/v1/devices/${id}`);
              return d.connection?.status === "offline" ? d : undefined;
            }, `${id} offline`);
            assertEquals(device.connection.reason, "disconnect");
          }
        }
      });
    }

    await t.step("registering without a token fails with a message naming --token", async () => {
      const run = await new Simulator(
        [...common("mqtt", "fresh-"), "--devices", "1", "--duration", "1"],
        task,
        { DOPPEL_ADMIN_TOKEN: "" },
      ).finish();
      assertEquals(run.code, 1, run.lines.join("\n"));
      assertMatch(run.lines.join("\n"), /--token/);
    });
  } finally {
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("simulator: a bad flag exits 2 with a message naming it", async () => {
  const task = await taskArgs();
  const cases: Array<[string[], RegExp]> = [
    [["--rate", "fast"], /--rate "fast"/],
    [["--devices", "0"], /--devices "0"/],
    [["--protocol", "carrier-pigeon"], /--protocol "carrier-pigeon" must be one of mqtt, ws, http/],
    [["--duration", "-1"], /--duration "-1"/],
    [["--kind", "toaster"], /--kind "toaster"/],
    [["--bogus", "1"], /Unknown flag --bogus/],
    [["--url", "ftp://x"], /--url "ftp:\/\/x"/],
    [["--devices"], /--devices needs a value/],
  ];
  for (const [args, message] of cases) {
    const run = await new Simulator(args, task).finish();
    const output = run.lines.join("\n");
    assertEquals(run.code, 2, `${args.join(" ")}: exit ${run.code}\n${output}`);
    assertMatch(output, message);
  }
});
