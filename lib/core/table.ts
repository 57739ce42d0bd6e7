/**
 * Plain-text tables for terminals: columns padded to their widest cell,
 * two spaces apart, optionally a rule of dashes under the header.
 *
 * @module
 */

/**
 * `rows` (the first is the header) as lines of padded columns.
 *
 * @example
 * ```ts
 * formatTable([["peer", "path"], ["w2", "direct"]], { rule: true });
 * // "peer  path\n----  ------\nw2    direct"
 * ```
 */
export function formatTable(rows: readonly string[][], options: { rule?: boolean } = {}): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  const lines = rows.map(line);
  if (options.rule) lines.splice(1, 0, line(widths.map((w) => "-".repeat(w))));
  return lines.join("\n");
}
