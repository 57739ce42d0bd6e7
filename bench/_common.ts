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
