/**
 * Streaming readers: each yields a dataset file's rows in batches, never holding the whole file.
 * A row that cannot be parsed is yielded with `error` set, so it can be rejected while the rest go on.
 */
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { StringDecoder } from 'node:string_decoder';
import { RecordBatchReader, Vector } from 'apache-arrow';
import type { Store } from '../store/store.js';

export interface SourceRow {
  /** 0-based row index in the file (for JSON Lines: the line index, blank lines included). */
  row: number;
  value?: unknown;
  /** The row's text as read, for the rejects table. */
  raw?: string;
  /** Why the row could not be parsed. */
  error?: string;
}

export interface RowBatch {
  rows: SourceRow[];
  /** Bytes of the file consumed so far (for progress). */
  bytesRead: number;
}

export const FILE_FORMATS = ['jsonl', 'json', 'parquet', 'arrow'] as const;
export type FileFormat = (typeof FILE_FORMATS)[number];

const CHUNK = 1 << 20;

/** The file format from the extension, or from the first bytes for .json files. */
export async function detectFileFormat(file: string): Promise<FileFormat> {
  const lower = file.toLowerCase();
  if (lower.endsWith('.parquet')) return 'parquet';
  if (/\.(arrow|arrows|ipc|feather)$/.test(lower)) return 'arrow';
  if (/\.(jsonl|ndjson)$/.test(lower)) return 'jsonl';
  const handle = await open(file, 'r');
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(4096), 0, 4096, 0);
    const head = buffer.subarray(0, bytesRead);
    if (head.subarray(0, 4).toString('latin1') === 'PAR1') return 'parquet';
    if (head.subarray(0, 6).toString('latin1') === 'ARROW1' || head.readUInt32LE(0) === 0xffffffff) return 'arrow';
    const first = head.toString('utf8').replace(/^\uFEFF/, '').trimStart()[0];
    if (first === '[') return 'json';
    if (first === '{') return 'jsonl';
  } finally {
    await handle.close();
  }
  throw new Error(`${file}: cannot tell its format from its name or first bytes; pass --format ${FILE_FORMATS.join('|')}`);
}

export function readRows(file: string, format: FileFormat, batchSize: number, store: Store): AsyncGenerator<RowBatch> {
  switch (format) {
    case 'jsonl': return readJsonLines(file, batchSize);
    case 'json': return readJsonArray(file, batchSize);
    case 'parquet': return readParquet(file, batchSize, store);
    case 'arrow': return readArrow(file, batchSize);
  }
}

function parseRow(row: number, raw: string): SourceRow {
  try {
    return { row, value: JSON.parse(raw), raw };
  } catch (error) {
    return { row, raw, error: `invalid JSON: ${(error as Error).message}` };
  }
}

/** One line of a JSON Lines file as a row (index = the line's 0-based index), or undefined for a blank line. */
export function lineRow(index: number, text: string): SourceRow | undefined {
  const trimmed = text.trim();
  return trimmed ? parseRow(index, index === 0 ? trimmed.replace(/^\uFEFF/, '') : trimmed) : undefined;
}

async function* readJsonLines(file: string, batchSize: number): AsyncGenerator<RowBatch> {
  let carry: Buffer = Buffer.alloc(0);
  let line = 0;
  let bytesRead = 0;
  let rows: SourceRow[] = [];
  const take = (text: string) => {
    const row = lineRow(line++, text);
    if (row) rows.push(row);
  };
  for await (const chunk of createReadStream(file, { highWaterMark: CHUNK })) {
    bytesRead += (chunk as Buffer).length;
    // Decode only whole lines, so a multi-byte character is never split.
    const buffer = carry.length ? Buffer.concat([carry, chunk as Buffer]) : (chunk as Buffer);
    const last = buffer.lastIndexOf(10);
    if (last === -1) {
      carry = buffer;
      continue;
    }
    const text = buffer.toString('utf8', 0, last);
    carry = buffer.subarray(last + 1);
    let from = 0;
    for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n', from)) {
      take(text.slice(from, nl));
      from = nl + 1;
    }
    take(text.slice(from));
    if (rows.length >= batchSize) {
      yield { rows, bytesRead };
      rows = [];
    }
  }
  if (carry.length) take(carry.toString('utf8'));
  if (rows.length) yield { rows, bytesRead };
}

/**
 * A JSON array read element by element: a small scanner finds where each top-level element ends
 * (tracking strings, escapes and nesting), so a file of any size streams.
 */
async function* readJsonArray(file: string, batchSize: number): AsyncGenerator<RowBatch> {
  const decoder = new StringDecoder('utf8');
  let buffer = '';
  let bytesRead = 0;
  let state = 'before-array' as 'before-array' | 'between' | 'in-element' | 'after-array';
  let depth = 0;
  let inString = false;
  let escaped = false;
  let start = 0;
  let index = 0;
  let i = 0; // scan position in buffer: each character is looked at once
  let rows: SourceRow[] = [];
  for await (const chunk of createReadStream(file, { highWaterMark: CHUNK })) {
    bytesRead += (chunk as Buffer).length;
    buffer += decoder.write(chunk as Buffer);
    for (; i < buffer.length; i++) {
      const ch = buffer[i]!;
      if (state === 'in-element') {
        if (inString) {
          if (escaped) escaped = false;
          else if (ch === '\\') escaped = true;
          else if (ch === '"') inString = false;
        } else if (ch === '"') inString = true;
        else if (ch === '{' || ch === '[') depth++;
        else if (ch === '}' || ch === ']') {
          if (depth === 0) { // the array closes right after a scalar element
            rows.push(parseRow(index++, buffer.slice(start, i).trim()));
            state = 'after-array';
          } else depth--;
        } else if (ch === ',' && depth === 0) {
          rows.push(parseRow(index++, buffer.slice(start, i).trim()));
          state = 'between';
        }
      } else if (/\s|\uFEFF/.test(ch)) {
        continue;
      } else if (state === 'before-array') {
        if (ch !== '[') throw new Error(`${file}: expected a JSON array, found "${ch}"`);
        state = 'between';
      } else if (state === 'between') {
        if (ch === ']') state = 'after-array';
        else if (ch !== ',') {
          state = 'in-element';
          start = i;
          depth = 0;
          i--; // rescan this character inside the element
        }
      } else {
        throw new Error(`${file}: unexpected "${ch}" after the end of the JSON array`);
      }
    }
    // Keep only the unfinished element.
    if (state === 'in-element') {
      buffer = buffer.slice(start);
      i -= start;
      start = 0;
    } else {
      buffer = '';
      i = 0;
    }
    if (rows.length >= batchSize) {
      yield { rows, bytesRead };
      rows = [];
    }
  }
  if (state === 'in-element') {
    rows.push({ row: index, raw: buffer.slice(start, start + 4096), error: 'the JSON array ends inside this element (file truncated?)' });
  } else if (state !== 'after-array') {
    throw new Error(`${file}: the JSON array is not closed (file truncated?)`);
  }
  if (rows.length) yield { rows, bytesRead };
}

/** Parquet through DuckDB's reader, streamed chunk by chunk. */
async function* readParquet(file: string, batchSize: number, store: Store): AsyncGenerator<RowBatch> {
  const result = await store.connection.stream('SELECT * FROM read_parquet(?)', [file]);
  let index = 0;
  let rows: SourceRow[] = [];
  for await (const objects of result.yieldRowObjectJs()) {
    for (const value of objects) rows.push({ row: index++, value: plainValue(value) });
    if (rows.length >= batchSize) {
      yield { rows, bytesRead: 0 };
      rows = [];
    }
  }
  if (rows.length) yield { rows, bytesRead: 0 };
}

/** Arrow IPC (file or stream format), batch by batch. */
async function* readArrow(file: string, batchSize: number): AsyncGenerator<RowBatch> {
  const reader = await RecordBatchReader.from(createReadStream(file));
  let index = 0;
  let rows: SourceRow[] = [];
  for await (const batch of reader) {
    for (const row of batch) rows.push({ row: index++, value: plainValue(row) });
    if (rows.length >= batchSize) {
      yield { rows, bytesRead: 0 };
      rows = [];
    }
  }
  if (rows.length) yield { rows, bytesRead: 0 };
}

/** Values from DuckDB or Arrow as plain JSON-like values: bytes stay Uint8Array, big integers become numbers. */
function plainValue(value: unknown): unknown {
  if (typeof value === 'bigint') return Number(value);
  if (value === null || typeof value !== 'object' || value instanceof Uint8Array) return value;
  if (value instanceof Vector || Array.isArray(value)) return Array.from(value as Iterable<unknown>, plainValue);
  const object = typeof (value as { toJSON?: unknown }).toJSON === 'function' && !(value instanceof Date)
    ? (value as { toJSON(): Record<string, unknown> }).toJSON() : value as Record<string, unknown>;
  return Object.fromEntries(Object.entries(object).map(([k, v]) => [k, plainValue(v)]));
}
