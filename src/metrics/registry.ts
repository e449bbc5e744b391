/**
 * A small Prometheus metrics registry: counters and histograms kept in memory, gauges read at
 * scrape time, rendered in the text exposition format (version 0.0.4).
 * @module
 */

/** Label names and values. */
export type Labels = Record<string, string>;

interface Family {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  render(lines: string[]): void;
}

/** A monotonically increasing count, per label set. */
export class Counter {
  #values = new Map<string, { labels: Labels; value: number }>();
  // The key of each label object seen, so a caller reusing its label objects skips the sort.
  #keys = new WeakMap<Labels, string>();

  /** Adds `n` (default 1) for `labels`. */
  inc(labels: Labels = {}, n = 1): void {
    let key = this.#keys.get(labels);
    if (key === undefined) this.#keys.set(labels, key = labelKey(labels));
    const entry = this.#values.get(key);
    if (entry) entry.value += n;
    else this.#values.set(key, { labels, value: n });
  }

  /** The count for `labels` (0 if never counted). */
  get(labels: Labels = {}): number {
    return this.#values.get(labelKey(labels))?.value ?? 0;
  }

  /** The sum over every label set. */
  total(): number {
    let sum = 0;
    for (const { value } of this.#values.values()) sum += value;
    return sum;
  }

  /** @internal */
  entries(): Iterable<{ labels: Labels; value: number }> {
    return this.#values.values();
  }
}

/** Observations counted into cumulative buckets, per label set. */
export class Histogram {
  readonly #bounds: number[];
  #series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();

  /** Buckets are upper bounds, ascending (`+Inf` is added). */
  constructor(bounds: number[]) {
    this.#bounds = [...bounds].sort((a, b) => a - b);
  }

  /** Records one observation. */
  observe(value: number, labels: Labels = {}): void {
    const key = labelKey(labels);
    let series = this.#series.get(key);
    if (!series) {
      series = { labels, counts: this.#bounds.map(() => 0), sum: 0, count: 0 };
      this.#series.set(key, series);
    }
    for (let i = 0; i < this.#bounds.length; i++) if (value <= this.#bounds[i]) series.counts[i]++;
    series.sum += value;
    series.count++;
  }

  /** @internal */
  render(name: string, lines: string[]): void {
    for (const { labels, counts, sum, count } of this.#series.values()) {
      this.#bounds.forEach((bound, i) => {
        lines.push(`${name}_bucket${fmtLabels({ ...labels, le: String(bound) })} ${counts[i]}`);
      });
      lines.push(`${name}_bucket${fmtLabels({ ...labels, le: "+Inf" })} ${count}`);
      lines.push(`${name}_sum${fmtLabels(labels)} ${sum}`);
      lines.push(`${name}_count${fmtLabels(labels)} ${count}`);
    }
  }
}

/** Metric families by name. */
export class MetricsRegistry {
  #families: Family[] = [];

  /** Registers and returns a counter. */
  counter(name: string, help: string): Counter {
    const counter = new Counter();
    this.#families.push({
      name,
      help,
      type: "counter",
      render: (lines) => {
        for (const { labels, value } of counter.entries()) {
          lines.push(`${name}${fmtLabels(labels)} ${value}`);
        }
      },
    });
    return counter;
  }

  /** Registers and returns a histogram. */
  histogram(name: string, help: string, bounds: number[]): Histogram {
    const histogram = new Histogram(bounds);
    this.#families.push({
      name,
      help,
      type: "histogram",
      render: (l) => histogram.render(name, l),
    });
    return histogram;
  }

  /** Registers a gauge whose values are read when scraped. */
  gauge(name: string, help: string, read: () => Array<[Labels, number]> | number): void {
    this.#families.push({
      name,
      help,
      type: "gauge",
      render: (lines) => {
        const values = read();
        for (
          const [labels, value] of typeof values === "number" ? [[{}, values] as const] : values
        ) {
          lines.push(`${name}${fmtLabels(labels)} ${value}`);
        }
      },
    });
  }

  /** The exposition text. */
  render(): string {
    const lines: string[] = [];
    for (const family of this.#families) {
      lines.push(
        `# HELP ${family.name} ${family.help.replaceAll("\\", "\\\\").replaceAll("\n", "\\n")}`,
      );
      lines.push(`# TYPE ${family.name} ${family.type}`);
      family.render(lines);
    }
    return lines.join("\n") + "\n";
  }
}

function labelKey(labels: Labels): string {
  const names = Object.keys(labels);
  if (names.length === 0) return "";
  return names.sort().map((n) => `${n}=${labels[n]}`).join(",");
}

function fmtLabels(labels: Labels): string {
  const names = Object.keys(labels);
  if (names.length === 0) return "";
  const parts = names.map((n) =>
    `${n}="${labels[n].replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"')}"`
  );
  return `{${parts.join(",")}}`;
}
