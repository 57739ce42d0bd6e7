/**
 * Counters, gauges and histograms rendered in the Prometheus text
 * exposition format (version 0.0.4): what `/metrics` serves. Small on
 * purpose: labels as plain objects, gauges read when rendered.
 *
 * @module
 */

/** Label names to values. */
export type Labels = Readonly<Record<string, string>>;

/** The content type of {@linkcode Metrics.render}'s output. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;

function escapeLabel(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"');
}

function escapeHelp(text: string): string {
  return text.replaceAll("\\", "\\\\").replaceAll("\n", "\\n");
}

function labelText(labels: Labels, extra?: [string, string]): string {
  const pairs = Object.entries(labels);
  if (extra) pairs.push(extra);
  if (pairs.length === 0) return "";
  return `{${pairs.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
}

function number(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

function key(labels: Labels): string {
  return JSON.stringify(Object.entries(labels).sort());
}

interface Family {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  render(out: string[]): void;
}

/** A monotonically increasing count, per label set. */
export class Counter {
  #values = new Map<string, { labels: Labels; value: number }>();

  /** Adds `by` (default 1) to the count of `labels`. */
  inc(labels: Labels = {}, by = 1): void {
    const k = key(labels);
    const entry = this.#values.get(k);
    if (entry) entry.value += by;
    else this.#values.set(k, { labels, value: by });
  }

  /** The count of `labels`. */
  get(labels: Labels = {}): number {
    return this.#values.get(key(labels))?.value ?? 0;
  }

  /** @ignore */
  samples(): Iterable<{ labels: Labels; value: number }> {
    return this.#values.values();
  }
}

/** Observations in cumulative buckets, with their sum and count, per label set. */
export class Histogram {
  /** Upper bounds of the buckets, ascending (`+Inf` implied). */
  readonly buckets: readonly number[];
  #values = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();

  /** Use {@linkcode Metrics.histogram}. */
  constructor(buckets: readonly number[]) {
    this.buckets = [...buckets].sort((a, b) => a - b);
  }

  /** Records one observation of `value` for `labels`. */
  observe(value: number, labels: Labels = {}): void {
    const k = key(labels);
    let entry = this.#values.get(k);
    if (!entry) {
      entry = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.#values.set(k, entry);
    }
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]) entry.counts[i]++;
    entry.sum += value;
    entry.count++;
  }

  /** @ignore */
  samples(): MapIterator<{ labels: Labels; counts: number[]; sum: number; count: number }> {
    return this.#values.values();
  }
}

/**
 * A set of metric families.
 *
 * @example
 * ```ts
 * const metrics = new Metrics();
 * const hits = metrics.counter("app_hits_total", "Requests served.");
 * hits.inc({ route: "/" });
 * metrics.gauge("app_sessions", "Sessions open now.", () => 3);
 * metrics.render(); // "# HELP app_hits_total Requests served.\n# TYPE app_hits_total counter\n..."
 * ```
 */
export class Metrics {
  #families: Family[] = [];

  #add(family: Family): void {
    if (!NAME.test(family.name)) throw new RangeError(`Cannot name a metric "${family.name}"`);
    if (this.#families.some((f) => f.name === family.name)) {
      throw new RangeError(`Cannot register metric "${family.name}" twice`);
    }
    this.#families.push(family);
  }

  /** A counter; its name should end in `_total`. */
  counter(name: string, help: string): Counter {
    const counter = new Counter();
    this.#add({
      name,
      help,
      type: "counter",
      render: (out) => {
        for (const { labels, value } of counter.samples()) {
          out.push(`${name}${labelText(labels)} ${number(value)}`);
        }
      },
    });
    return counter;
  }

  /** A gauge read when rendered: one value, or a value per label set. */
  gauge(name: string, help: string, read: () => number | [Labels, number][]): void {
    this.#read(name, help, "gauge", read);
  }

  /**
   * A counter whose values are read when rendered (for counts another
   * object keeps): one value, or a value per label set.
   */
  counterFrom(name: string, help: string, read: () => number | [Labels, number][]): void {
    this.#read(name, help, "counter", read);
  }

  #read(
    name: string,
    help: string,
    type: "gauge" | "counter",
    read: () => number | [Labels, number][],
  ): void {
    this.#add({
      name,
      help,
      type,
      render: (out) => {
        const value = read();
        const samples: [Labels, number][] = typeof value === "number" ? [[{}, value]] : value;
        for (const [labels, v] of samples) out.push(`${name}${labelText(labels)} ${number(v)}`);
      },
    });
  }

  /** A histogram with the given upper bounds (`+Inf` is added). */
  histogram(name: string, help: string, buckets: readonly number[]): Histogram {
    const histogram = new Histogram(buckets);
    this.#add({
      name,
      help,
      type: "histogram",
      render: (out) => {
        for (const { labels, counts, sum, count } of histogram.samples()) {
          histogram.buckets.forEach((le, i) =>
            out.push(`${name}_bucket${labelText(labels, ["le", number(le)])} ${counts[i]}`)
          );
          out.push(`${name}_bucket${labelText(labels, ["le", "+Inf"])} ${count}`);
          out.push(`${name}_sum${labelText(labels)} ${number(sum)}`);
          out.push(`${name}_count${labelText(labels)} ${count}`);
        }
      },
    });
    return histogram;
  }

  /** Every family in the text exposition format. */
  render(): string {
    const out: string[] = [];
    for (const family of this.#families) {
      out.push(`# HELP ${family.name} ${escapeHelp(family.help)}`);
      out.push(`# TYPE ${family.name} ${family.type}`);
      family.render(out);
    }
    return out.join("\n") + "\n";
  }
}
