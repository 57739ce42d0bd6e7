/**
 * Prometheus's own `promtool check metrics` (Debian's `prometheus`
 * package), for the tests of `/metrics`.
 */

import { toolMissing } from "./_helpers.ts";

/** Why promtool cannot run here, or undefined. */
export function promtoolUnavailable(): Promise<string | undefined> {
  return toolMissing("promtool", ["--version"], "prometheus");
}

/** `promtool check metrics` on `text`: its complaints, empty when clean. */
export async function promtoolCheck(text: string): Promise<string> {
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  const said = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  return code === 0 ? said.trim() : `exit ${code}: ${said}`;
}

/** The value of the series `name{labels}` (labels as rendered) in `text`. */
export function sample(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}
