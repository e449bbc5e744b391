/**
 * The device simulator: a fleet of devices streaming realistic telemetry to Doppel over MQTT, the
 * WebSocket channel or HTTP, answering every command and taking desired changes. The only file of
 * the simulator that reads flags and the environment, or opens sockets.
 *
 * ```sh
 * deno task simulate --devices 50 --rate 2 --protocol mqtt --token "$DOPPEL_ADMIN_TOKEN"
 * deno task simulate --devices 5 --rate 0.2 --protocol http --duration 60 --kind generic
 * deno task simulate --help
 * ```
 *
 * Devices are `${prefix}0…`; their keys are remembered in `--keys` (default
 * `./data/simulator-keys.json`, mode 0600) so a second run reuses them without the operator
 * token. A live progress line goes to stderr (refreshed each second on a terminal, a plain line
 * every 5 s otherwise); the summary goes to stdout when the run ends (Ctrl-C or `--duration`).
 * Exit status: 0 after a run (server errors are counted, not fatal), 1 when the fleet cannot be
 * prepared, 2 for a bad flag.
 * @module
 */
import mqtt from "mqtt";
import { createBehaviour } from "./behaviour.ts";
import { SimDevice } from "./device.ts";
import { FleetError, KeyStore, prepareFleet } from "./fleet.ts";
import { createLink, type Network } from "./links.ts";
import { parseOptions, type SimOptions, USAGE, UsageError } from "./options.ts";
import { formatSummary, Stats } from "./stats.ts";

/** How long a stopping run waits for unacknowledged messages (ms). */
const DRAIN_MS = 3_000;

const encoder = new TextEncoder();

function writeErr(text: string): void {
  Deno.stderr.writeSync(encoder.encode(text));
}

/** The real network. */
const network: Network = {
  fetch: (input, init) => fetch(input, init),
  openWebSocket: (url, headers) => new WebSocket(url, { headers }),
  connectMqtt: (url, options) => mqtt.connect(url, options),
};

async function run(options: SimOptions): Promise<number> {
  const stop = new AbortController();
  let interrupts = 0;
  const onSignal = () => {
    interrupts++;
    if (interrupts > 1) {
      writeErr("\nInterrupted twice: exiting without a clean shutdown.\n");
      Deno.exit(130);
    }
    stop.abort();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const tty = Deno.stderr.isTerminal();
  const stats = new Stats(Date.now);

  try {
    // 1. Devices and their keys.
    writeErr(
      `Preparing ${options.devices} ${options.kind} device(s) ${options.prefix}0… on ${options.url}\n`,
    );
    const store = await KeyStore.open(options.keysFile);
    let credentials;
    try {
      credentials = await prepareFleet({
        url: options.url,
        token: options.token,
        kind: options.kind,
        prefix: options.prefix,
        devices: options.devices,
        fetch: network.fetch,
        signal: stop.signal,
        onDevice: (_id, how) => stats[how]++,
      }, store);
    } catch (error) {
      if (stop.signal.aborted) return 130;
      throw error;
    }
    writeErr(
      `Devices ready: ${stats.registered} registered, ${stats.reused} reused, ${stats.rotated} keys rotated (keys in ${options.keysFile}).\n`,
    );

    // 2. Connect and stream.
    const devices = credentials.map((creds) => {
      const random = Math.random;
      const link = createLink(options.protocol, {
        id: creds.id,
        key: creds.key,
        url: options.url,
        mqttUrl: options.mqttUrl,
      }, network);
      const behaviour = createBehaviour(options.kind, {
        random,
        excursionRate: options.excursionRate,
      });
      return new SimDevice(creds.id, link, behaviour, stats, {
        rate: options.rate,
        now: Date.now,
        random,
      });
    });
    writeErr(
      `Streaming ${options.rate} msg/s per device over ${options.protocol}${
        options.duration ? ` for ${options.duration} s` : "; Ctrl-C to stop"
      }.\n`,
    );
    stats.start();
    for (const device of devices) device.start();

    const connected = () => devices.reduce((n, d) => n + (d.connected ? 1 : 0), 0);
    let ticks = 0;
    const progress = setInterval(() => {
      ticks++;
      const line = stats.progressLine(connected(), devices.length);
      if (tty) writeErr(`\r\x1b[2K${line}`);
      else if (ticks % 5 === 0) writeErr(`${line}\n`);
    }, 1000);

    await new Promise<void>((resolve) => {
      const timer = options.duration === undefined
        ? undefined
        : setTimeout(resolve, options.duration * 1000);
      stop.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });

    // 3. Stop cleanly: no new messages, wait for acknowledgements, close every connection.
    clearInterval(progress);
    if (tty) writeErr(`\r\x1b[2K`);
    writeErr(stop.signal.aborted ? "Interrupted; stopping…\n" : "Duration reached; stopping…\n");
    for (const device of devices) device.stopSending();
    stats.end();
    await Promise.all(devices.map((device) => device.drain(DRAIN_MS)));
    const unacknowledged = devices.reduce((n, d) => n + d.inFlight, 0);
    await Promise.all(devices.map((device) => device.close()));

    const summary = stats.summary(
      { protocol: options.protocol, kind: options.kind, devices: devices.length },
      unacknowledged,
    );
    console.log(options.json ? JSON.stringify(summary) : formatSummary(summary));
    return 0;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}

if (import.meta.main) {
  let options: SimOptions;
  try {
    options = parseOptions(Deno.args, (name) => Deno.env.get(name));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    writeErr(`simulate: ${error.message}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (options.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  try {
    Deno.exit(await run(options));
  } catch (error) {
    if (!(error instanceof FleetError)) writeErr(`simulate: unexpected failure\n`);
    writeErr(`simulate: ${error instanceof Error ? error.message : String(error)}\n`);
    Deno.exit(1);
  }
}
