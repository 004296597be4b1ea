import { Table, tableToIPC, vectorFromArray, type Vector } from 'apache-arrow';

export type Row = Record<string, unknown>;
export const ROW_FORMATS = ['table', 'csv', 'json', 'arrow'] as const;
export type RowFormat = (typeof ROW_FORMATS)[number];

/** A value as one line of text: bytes are summarised, objects become JSON. */
function cellText(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (value instanceof Uint8Array) return `<${value.length} bytes>`;
  if (typeof value === 'object') return JSON.stringify(value, jsonReplacer);
  return String(value);
}

export function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Uint8Array) return Buffer.from(value).toString('base64');
  return value;
}

function csvField(value: unknown): string {
  if (value === null || value === undefined) return '';
  const text = value instanceof Uint8Array ? Buffer.from(value).toString('base64') : cellText(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/** A boxed, width-limited table for people; long cells are cut with "…". */
export function formatTable(columns: string[], rows: Row[], maxCell = 60): string {
  const cells = rows.map((row) => columns.map((c) => {
    const text = cellText(row[c]).replace(/\s+/g, ' ');
    return text.length > maxCell ? `${text.slice(0, maxCell - 1)}…` : text;
  }));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i]!.length)));
  const line = (parts: string[]) => `| ${parts.map((p, i) => p.padEnd(widths[i]!)).join(' | ')} |`;
  const rule = `+-${widths.map((w) => '-'.repeat(w)).join('-+-')}-+`;
  return [rule, line(columns), rule, ...cells.map(line), rule, `(${rows.length} row${rows.length === 1 ? '' : 's'})`].join('\n') + '\n';
}

export function formatCsv(columns: string[], rows: Row[]): string {
  return [columns.map(csvField).join(','), ...rows.map((row) => columns.map((c) => csvField(row[c])).join(','))].join('\n') + '\n';
}

/** JSON Lines: one object per row. */
export function formatJsonLines(rows: Row[]): string {
  return rows.map((row) => JSON.stringify(row, jsonReplacer)).join('\n') + (rows.length ? '\n' : '');
}

/** An Arrow IPC stream; column types are inferred from the values. */
export function formatArrow(columns: string[], rows: Row[]): Uint8Array {
  const vectors: Record<string, Vector> = {};
  for (const c of columns) {
    const values = rows.map((row) => row[c]);
    vectors[c] = values.every((v) => typeof v === 'number') ? vectorFromArray(Float64Array.from(values as number[]))
      : vectorFromArray(values.map((v) => (v === null || v === undefined ? null : typeof v === 'boolean' ? v : cellText(v))));
  }
  return tableToIPC(new Table(vectors), 'stream');
}
