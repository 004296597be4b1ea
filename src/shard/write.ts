/**
 * Writing a shard set's files: shards of pairs and the images file as Arrow IPC (file format) or Parquet (through
 * DuckDB COPY), and the manifest. Every file is written under a temporary name, fsynced and renamed into place, so a
 * reader never sees half a file; the manifest goes last, so it only ever names complete files.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import {
  Binary, Bool, Field, Float32, Float64, Int32, List, Table, Utf8, tableToIPC, vectorFromArray, type DataType,
} from 'apache-arrow';
import { sha256Hex } from '../util/hash.js';
import { commitFile, writeFileAtomic } from '../util/safe-output.js';
import { IMAGE_COLUMNS, PAIR_COLUMNS, type ColumnSpec, type ColumnType, type ShardFormat } from './columns.js';
import type { ShardManifest, ShardPair } from './types.js';

type Row = Record<string, unknown>;

/** A ShardPair as a row of PAIR_COLUMNS. */
export function pairRow(pair: ShardPair): Row {
  return {
    pair_id: pair.pairId,
    image_id: pair.imageId,
    prompt_ids: pair.promptIds,
    chosen_ids: pair.chosenIds,
    rejected_ids: pair.rejectedIds,
    chosen_sentence_ids: pair.chosenSentenceIds,
    rejected_sentence_ids: pair.rejectedSentenceIds,
    chosen_similarity: pair.chosenSimilarity,
    chosen_ref_logps: pair.chosenRefLogps,
    rejected_ref_logps: pair.rejectedRefLogps,
    truncated: pair.truncated,
  };
}

/**
 * Writes the files of one shard set in one format; for Parquet it keeps one DuckDB connection for all of them.
 * Every write returns the sha256 of the file written. Call close() when done.
 */
export class ShardWriter {
  private constructor(readonly format: ShardFormat, private readonly duckdb: DuckDBConnection | null,
    private readonly instance: DuckDBInstance | null) {}

  static async open(format: ShardFormat): Promise<ShardWriter> {
    if (format === 'arrow') return new ShardWriter(format, null, null);
    const instance = await DuckDBInstance.create(':memory:', { threads: '1' });
    return new ShardWriter(format, await instance.connect(), instance);
  }

  async writePairs(file: string, pairs: readonly ShardPair[]): Promise<string> {
    return this.writeRows(file, PAIR_COLUMNS, pairs.map(pairRow));
  }

  /** The images file: image_id → encoded bytes, as stored. */
  async writeImages(file: string, images: ReadonlyArray<{ imageId: string; bytes: Uint8Array }>): Promise<string> {
    return this.writeRows(file, IMAGE_COLUMNS, images.map((image) => ({ image_id: image.imageId, bytes: image.bytes })));
  }

  close(): void {
    this.duckdb?.closeSync();
    this.instance?.closeSync();
  }

  /** Any table of `columns` (a shard of another layout); returns the sha256 of the file written. */
  async writeRows(file: string, columns: readonly ColumnSpec[], rows: readonly Row[]): Promise<string> {
    if (!this.duckdb) {
      const bytes = tableToIPC(arrowTable(columns, rows), 'file');
      await writeFileAtomic(file, bytes);
      return sha256Hex(bytes);
    }
    const temporary = temporaryName(file);
    try {
      await writeParquet(this.duckdb, temporary, columns, rows);
      const digest = sha256Hex(await fs.readFile(temporary));
      await commitFile(temporary, file);
      return digest;
    } catch (error) {
      await fs.rm(temporary, { force: true });
      throw error;
    }
  }
}

/** Writes one shard of pairs in a file of its own; returns the sha256 of the file written. */
export async function writeShardFile(file: string, pairs: readonly ShardPair[], format: ShardFormat): Promise<string> {
  const writer = await ShardWriter.open(format);
  try {
    return await writer.writePairs(file, pairs);
  } finally {
    writer.close();
  }
}

/** Writes an images file (image_id → encoded bytes, as stored); returns its sha256. */
export async function writeImagesFile(file: string, images: ReadonlyArray<{ imageId: string; bytes: Uint8Array }>,
  format: ShardFormat): Promise<string> {
  const writer = await ShardWriter.open(format);
  try {
    return await writer.writeImages(file, images);
  } finally {
    writer.close();
  }
}

/** Writes manifest.json atomically (temporary file, then rename). */
export async function writeManifest(dir: string, manifest: ShardManifest | object): Promise<void> {
  await writeFileAtomic(path.join(dir, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}
`);
}

// ---------------------------------------------------------------------------------------------------------------
// Arrow IPC

function arrowType(type: ColumnType): DataType {
  switch (type) {
    case 'utf8': return new Utf8();
    case 'bool': return new Bool();
    case 'int32': return new Int32();
    case 'float32': return new Float32();
    case 'float64': return new Float64();
    case 'binary': return new Binary();
  }
}

function arrowTable(columns: readonly ColumnSpec[], rows: readonly Row[]): Table {
  const vectors = Object.fromEntries(columns.map((column) => {
    const element = arrowType(column.type);
    const type = column.list ? new List(new Field('item', element, column.nullItems ?? false)) : element;
    return [column.name, vectorFromArray(rows.map((row) => row[column.name]), type)];
  }));
  return new Table(vectors);
}

// ---------------------------------------------------------------------------------------------------------------
// Parquet: rows go through a JSON Lines file into DuckDB's COPY (one thread, so the bytes are a function of the rows)

const DUCKDB_TYPE: Record<ColumnType, string> = {
  utf8: 'VARCHAR', bool: 'BOOLEAN', int32: 'INTEGER', float32: 'FLOAT', float64: 'DOUBLE', binary: 'BLOB',
};

function jsonValue(column: ColumnSpec, value: unknown): unknown {
  if (value === null || value === undefined) return null;
  if (column.type === 'binary') return Buffer.from(value as Uint8Array).toString('base64');
  if (column.list && (column.type === 'float32' || column.type === 'float64')) {
    (value as Array<number | null>).forEach((x) => {
      if (x !== null && !Number.isFinite(x)) throw new Error(`shard column ${column.name}: ${x} cannot be written to Parquet`);
    });
  }
  return value;
}

async function writeParquet(connection: DuckDBConnection, file: string, columns: readonly ColumnSpec[], rows: readonly Row[]): Promise<void> {
  const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'aspo-shard-'));
  try {
    const jsonl = path.join(scratch, 'rows.jsonl');
    await fs.writeFile(jsonl, rows.map((row) =>
      JSON.stringify(Object.fromEntries(columns.map((c) => [c.name, jsonValue(c, row[c.name])])))).join('\n'));
    // Binary travels as base64 text and is decoded in the SELECT.
    const jsonType = (c: ColumnSpec) => `${c.type === 'binary' ? 'VARCHAR' : DUCKDB_TYPE[c.type]}${c.list ? '[]' : ''}`;
    const select = columns.map((c) => c.type === 'binary' ? `from_base64(${c.name}) AS ${c.name}` : c.name);
    const source = rows.length
        ? `read_json(${sqlString(jsonl)}, format = 'newline_delimited', columns = {${columns.map((c) => `${c.name}: '${jsonType(c)}'`).join(', ')}})`
        : `(SELECT ${columns.map((c) => `NULL::${jsonType(c)} AS ${c.name}`).join(', ')} LIMIT 0)`;
    await connection.run(`COPY (SELECT ${select.join(', ')} FROM ${source}) TO ${sqlString(file)} (FORMAT parquet)`);
  } finally {
    await fs.rm(scratch, { recursive: true, force: true });
  }
}

export function sqlString(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

// ---------------------------------------------------------------------------------------------------------------

function temporaryName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.aspo-partial-${process.pid}`);
}
