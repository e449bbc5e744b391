/**
 * Doppel's metrics: what flows through the runtime (messages by transport and outcome, commit
 * batches), what is open (twins, sessions, SSE clients), and what happened (commands by status,
 * alarms by severity, pushes by result). Served at `/metrics` in the Prometheus text format.
 * @module
 */
import type { EventBus } from "../events/bus.ts";
import type { PushStats } from "../push/notifier.ts";
import type { TwinMessage } from "../twin/turn.ts";
import { type Counter, type Histogram, type Labels, MetricsRegistry } from "./registry.ts";

/** Where the gauges read from. */
export interface MetricSources {
  /** Twins in memory. */
  activations(): number;
  /** Open device sessions by transport. */
  sessions(): Record<string, number>;
  /** Push outcomes. */
  push(): PushStats;
  /** Open live-update streams. */
  streams(): number;
}

/** The registry and the instruments code reports to. */
export class DoppelMetrics {
  /** The registry to render. */
  readonly registry = new MetricsRegistry();
  /** Messages handled by twins, by transport, type and outcome. */
  readonly messages: Counter;
  /** Telemetry points, accepted or duplicate. */
  readonly points: Counter;
  #batchSize: Histogram;
  #commitSeconds: Histogram;
  #commands: Counter;
  #alarms: Counter;

  /** Creates the instruments; gauges read `sources` when scraped. */
  constructor(sources: MetricSources) {
    const r = this.registry;
    this.messages = r.counter(
      "doppel_messages_total",
      "Messages handled by twins, by transport, message type and outcome (ok or an error code).",
    );
    this.points = r.counter(
      "doppel_telemetry_points_total",
      "Telemetry points by transport and result (accepted or duplicate).",
    );
    this.#batchSize = r.histogram(
      "doppel_commit_batch_size",
      "Twin turns committed together in one KV atomic.",
      [1, 2, 5, 10, 20, 50, 100],
    );
    this.#commitSeconds = r.histogram(
      "doppel_commit_duration_seconds",
      "Time from sending a grouped KV atomic to its durable commit.",
      [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1],
    );
    this.#commands = r.counter("doppel_commands_total", "Command status changes, by status.");
    this.#alarms = r.counter("doppel_alarms_total", "Alarm changes, by severity and change.");
    r.gauge("doppel_twins_active", "Twins activated in memory.", () => sources.activations());
    r.gauge(
      "doppel_devices_connected",
      "Open device sessions, by transport.",
      () => Object.entries(sources.sessions()).map(([transport, n]) => [{ transport }, n]),
    );
    r.gauge("doppel_push_results_total", "Web push results since start, by result.", () => {
      const stats = sources.push();
      return [
        [{ result: "sent" }, stats.sent],
        [{ result: "failed" }, stats.failed],
        [{ result: "removed" }, stats.removed],
      ];
    });
    r.gauge("doppel_streams_open", "Open live-update (SSE) streams.", () => sources.streams());
    r.gauge(
      "doppel_process_resident_memory_bytes",
      "Resident memory of the process.",
      () => Deno.memoryUsage().rss,
    );
  }

  // Label sets by transport, type and outcome, so the hot path neither builds them nor a key
  // string per message.
  #labels = new Map<string, Map<string, Map<string, Labels>>>();

  /** Counts one message's outcome. */
  message(message: TwinMessage, outcome: string, reply: unknown): void {
    // A session's own transport is its `transport` (its `via` names the device serving it, which
    // would make every device a label value); other messages say theirs in `via`.
    const transport = message.type === "session.open"
      ? message.transport
      : ("via" in message && message.via) || "internal";
    const { type } = message;
    const byType = cached(this.#labels, transport, newMap<string, Map<string, Labels>>);
    const byOutcome = cached(byType, type, newMap<string, Labels>);
    this.messages.inc(cached(byOutcome, outcome, () => ({ transport, type, outcome })));
    if (type === "telemetry" && outcome === "ok") {
      const { accepted, duplicates } = reply as { accepted: number; duplicates: number };
      if (accepted) this.points.inc(this.#pointLabels(transport, "accepted"), accepted);
      if (duplicates) this.points.inc(this.#pointLabels(transport, "duplicate"), duplicates);
    }
  }

  #points = new Map<string, Map<string, Labels>>();

  #pointLabels(transport: string, result: string): Labels {
    return cached(
      cached(this.#points, transport, newMap<string, Labels>),
      result,
      () => ({ transport, result }),
    );
  }

  /** Records one committed batch. */
  batch(size: number, ms: number): void {
    this.#batchSize.observe(size);
    this.#commitSeconds.observe(ms / 1000);
  }

  /** Counts command and alarm changes as they commit. */
  listen(bus: EventBus): () => void {
    return bus.subscribe("*", (notice) => {
      if (notice.type === "command.changed") this.#commands.inc({ status: notice.command.status });
      else if (notice.type === "alarm.changed") {
        this.#alarms.inc({ severity: notice.alarm.severity, change: notice.change });
      }
    });
  }
}

/** The value under `key` in `map`, made by `make` and kept the first time it is asked for. */
function cached<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let value = map.get(key);
  if (value === undefined) map.set(key, value = make());
  return value;
}

function newMap<K, V>(): Map<K, V> {
  return new Map();
}
