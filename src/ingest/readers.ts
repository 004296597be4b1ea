/**
 * Streaming readers: each yields a dataset file's rows in batches, never holding the whole file.
 * A row that cannot be parsed is yielded with `error` set, so it can be rejected while the rest go on.
 */
import { isUtf8 } from 'node:buffer';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { DuckDBInstance } from '@duckdb/node-api';
import { RecordBatchReader, Vector } from 'apache-arrow';

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
  const head = await readHead(file, 4096);
  if (!head.length) throw new Error(`${file}: the file is empty (0 bytes); there is nothing to ingest`);
  {
    if (head.subarray(0, 4).toString('latin1') === 'PAR1') return 'parquet';
    if (looksLikeArrow(head)) return 'arrow';
    const first = head.toString('utf8').replace(/^\uFEFF/, '').trimStart()[0];
    if (first === '[') return 'json';
    if (first === '{') return 'jsonl';
  }
  throw new Error(`${file}: cannot tell its format from its name or first bytes; pass --format ${FILE_FORMATS.join('|')}`);
}

async function readHead(file: string, bytes: number): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(bytes), 0, bytes, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** An Arrow IPC file starts with its magic; a stream with a message's continuation marker (0xFFFFFFFF). */
function looksLikeArrow(head: Buffer): boolean {
  return head.subarray(0, 6).toString('latin1') === 'ARROW1' || (head.length >= 8 && head.readUInt32LE(0) === 0xffffffff);
}

/** Refuses a file whose first bytes cannot start a file of `format` (empty, truncated to nothing, another format). */
export async function checkFileHead(file: string, format: FileFormat): Promise<void> {
  const head = await readHead(file, 8);
  if (format === 'jsonl') return; // an empty JSON Lines file is a valid file of no rows
  if (!head.length) throw new Error(`${file}: the file is empty (0 bytes); there is nothing to ingest`);
  if (format === 'parquet' && head.subarray(0, 4).toString('latin1') !== 'PAR1') {
    throw new Error(`${file}: not a Parquet file (it does not start with PAR1); check the file, or pass the right --format`);
  }
  if (format === 'arrow' && !looksLikeArrow(head)) {
    throw new Error(`${file}: not an Arrow IPC file or stream (it does not start with ARROW1 or a stream message); ` +
      'check the file, or pass the right --format');
  }
}

/** Every row of `file`, in batches of about `batchSize`. The readers share nothing with the store: none of them reads
 *  through the store's DuckDB connection, on which the ingest writes between batches. */
export function readRows(file: string, format: FileFormat, batchSize: number): AsyncGenerator<RowBatch> {
  switch (format) {
    case 'jsonl': return readJsonLines(file, batchSize);
    case 'json': return readJsonArray(file, batchSize);
    case 'parquet': return readParquet(file, batchSize);
    case 'arrow': return readArrow(file, batchSize);
  }
}

const INVALID_UTF8 = 'invalid UTF-8 in this line (the bytes are not text in UTF-8; re-encode the file, e.g. with iconv)';

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
  const takeBytes = (bytes: Buffer) => {
    if (isUtf8(bytes)) take(bytes.toString('utf8'));
    else rows.push({ row: line++, raw: bytes.toString('utf8'), error: INVALID_UTF8 });
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
    const whole = buffer.subarray(0, last);
    carry = buffer.subarray(last + 1);
    if (isUtf8(whole)) {
      const text = whole.toString('utf8');
      let from = 0;
      for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n', from)) {
        take(text.slice(from, nl));
        from = nl + 1;
      }
      take(text.slice(from));
    } else {
      // Line by line in bytes, so that only the lines that are not UTF-8 are refused (and none is silently altered).
      let from = 0;
      for (let nl = whole.indexOf(10); ; nl = whole.indexOf(10, from)) {
        takeBytes(whole.subarray(from, nl === -1 ? whole.length : nl));
        if (nl === -1) break;
        from = nl + 1;
      }
    }
    if (rows.length >= batchSize) {
      yield { rows, bytesRead };
      rows = [];
    }
  }
  if (carry.length) takeBytes(carry);
  if (rows.length) yield { rows, bytesRead };
}

/**
 * A JSON array read element by element: a small scanner finds where each top-level element ends
 * (tracking strings, escapes and nesting), so a file of any size streams.
 */
async function* readJsonArray(file: string, batchSize: number): AsyncGenerator<RowBatch> {
  const decoder = new TextDecoder('utf-8', { fatal: true });
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
    try {
      buffer += decoder.decode(chunk as Buffer, { stream: true });
    } catch {
      throw new Error(`${file}: invalid UTF-8 in bytes ${bytesRead}–${bytesRead + (chunk as Buffer).length} (array element ${index}); ` +
        're-encode the file as UTF-8 (e.g. with iconv), or convert it to JSON Lines, where only the bad lines are rejected');
    }
    bytesRead += (chunk as Buffer).length;
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
  try {
    decoder.decode();
  } catch {
    throw new Error(`${file}: the file ends inside a UTF-8 character (truncated?)`);
  }
  if (state === 'before-array') throw new Error(`${file}: no JSON array in the file (it is empty or only whitespace)`);
  if (state === 'in-element') {
    rows.push({ row: index, raw: buffer.slice(start, start + 4096), error: 'the JSON array ends inside this element (file truncated?)' });
  } else if (state !== 'after-array') {
    throw new Error(`${file}: the JSON array is not closed (file truncated?)`);
  }
  if (rows.length) yield { rows, bytesRead };
}

/**
 * Parquet through DuckDB's reader, streamed chunk by chunk, on a DuckDB of its own: a streaming result ends early,
 * without an error, when its connection runs another statement, as the ingest's writes would.
 */
async function* readParquet(file: string, batchSize: number): AsyncGenerator<RowBatch> {
  const instance = await DuckDBInstance.create(':memory:', { threads: '1', memory_limit: '256MB' });
  const connection = await instance.connect();
  try {
    const expected = Number((await connection.runAndReadAll(
      'SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata(?)', [file])).getRowsJS()[0]?.[0] ?? 0);
    const result = await connection.stream('SELECT * FROM read_parquet(?)', [file]);
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
    // A guard against any other early end: the file's footer says how many rows it holds.
    if (index !== expected) throw new Error(`${file}: read ${index} rows but its Parquet metadata lists ${expected}; nothing of it was kept`);
  } finally {
    connection.closeSync();
    instance.closeSync();
  }
}

/** Arrow IPC (file or stream format), batch by batch. */
async function* readArrow(file: string, batchSize: number): AsyncGenerator<RowBatch> {
  await checkFileHead(file, 'arrow');
  let reader;
  try {
    reader = await (await RecordBatchReader.from(createReadStream(file))).open();
  } catch (error) {
    throw new Error(`${file}: unreadable Arrow IPC data: ${(error as Error).message}`);
  }
  if (!reader.schema) throw new Error(`${file}: the Arrow data ends before its schema (file truncated?)`);
  let index = 0;
  let rows: SourceRow[] = [];
  const batches = reader[Symbol.asyncIterator]();
  for (;;) {
    let next;
    try {
      next = await batches.next();
    } catch (error) {
      throw new Error(`${file}: unreadable Arrow IPC data after row ${index}: ${(error as Error).message}`);
    }
    if (next.done) break;
    for (const row of next.value) rows.push({ row: index++, value: plainValue(row) });
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
