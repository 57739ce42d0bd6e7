/**
 * What the benchmarks share: their flags, a median, and the machine's state
 * they report beside every figure.
 *
 * @module
 */

/** The number after `name` on the command line, else `fallback`. */
export function numberFlag(name: string, fallback: number): number {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Number(Deno.args[i + 1]) : fallback;
}

/** The word after `name` on the command line, else `fallback`. */
export function stringFlag(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : fallback;
}

/** The median (the mean of the middle two for an even count). */
export function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** When and on what a benchmark ran, taken at its start. */
export function machineState(started = new Date()) {
  return {
    date: started.toISOString(),
    cores: navigator.hardwareConcurrency,
    loadavg_before: Deno.loadavg(),
    deno: Deno.version.deno,
  };
}

/** The `p` quantile (0–1) of `xs`, nearest rank; NaN for none. */
export function percentile(xs: number[], p: number): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : NaN;
}

/** One line of a benchmark's results, against its target where it has one. */
export interface BenchRow {
  scenario?: string;
  metric: string;
  value: number | string;
  target?: string;
  met?: boolean;
}

/** Keeps `row` in `rows` and prints it at once (stderr), ✓/✗ against its target. */
export function recordRow(rows: BenchRow[], row: BenchRow): void {
  rows.push(row);
  const mark = row.met === undefined ? "" : row.met ? "  ✓" : "  ✗";
  console.error(
    `${row.scenario ? `${row.scenario}: ` : ""}${row.metric} = ${row.value}${
      row.target ? ` (target ${row.target})` : ""
    }${mark}`,
  );
}
