/**
 * The export stage: store tables and queries to files other tools read (Parquet, Arrow IPC, CSV, JSON Lines), a TRL
 * preference dataset with the ASPO sentence columns, and the JSON layout of the ASPO authors' LLaVA-1.5 trainer.
 *
 * Everything streams: DuckDB's COPY writes Parquet, CSV and JSON as the query runs, and Arrow is written one DuckDB
 * chunk at a time, so an export never holds a table in memory. The store is only read.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { checkReadOnlySql } from '../store/read-only-sql.js';
import type { Store } from '../store/store.js';
import { filesUnder, StagedOutput, storeFiles } from '../util/safe-output.js';
import { writeArrow } from './arrow.js';
import { ExportError, quoteIdent, quoteString } from './output.js';
import {
  ASPO_REFERENCE_SCORES, aspoReferenceLeftOutSql, aspoReferenceSql, imageFileName, TRL_LAYOUTS, trlFeatures, trlShardSql, type AspoReferenceScores, type ShardRange, type TrlLayout,
} from './layouts.js';

export const TABLE_FORMATS = ['parquet', 'arrow', 'csv', 'jsonl'] as const;
export type TableFormat = (typeof TABLE_FORMATS)[number];

export const DEFAULT_ROWS_PER_SHARD = 5000;
const IMAGE_BATCH = 64;
/** DuckDB's memory limit while exporting: sorts and joins spill to a temporary folder beyond it. */
export const DEFAULT_EXPORT_MEMORY = '256MB';
/** Parquet row groups are cut by size, not row count: a row group is held in memory until written, and a default
 *  122,880-row group of image rows would be gigabytes. */
const PARQUET = "FORMAT parquet, ROW_GROUP_SIZE_BYTES '16MB'";

/** What to export: a table or view by name, or a read-only query. */
export type ExportSource = { table: string } | { sql: string };

export interface ExportCommon {
  out: string;
  /** Replace an existing output (a folder only when it holds nothing but export files). */
  force?: boolean;
  /** DuckDB's memory limit during the export (default 256MB). */
  duckdbMemory?: string;
}

export interface TableExportOptions extends ExportCommon {
  format: TableFormat;
  /** Hive-style partition columns (Parquet only): `out/col=value/…/data_0.parquet`. */
  partitionBy?: string[];
}

export interface TrlExportOptions extends ExportCommon {
  /** `conversational` (default): prompt and responses as message lists with an image part, as TRL's vision datasets
   *  have them; `plain`: the stored strings. */
  layout?: TrlLayout;
  rowsPerShard?: number;
  /** Passed to the `sentence_weights` table macro; its defaults (0.5, 1) when absent. */
  alpha?: number;
  scale?: number;
  /** Add `chosen_sentence_rewards` from `sentence_rewards` rows of this policy model. */
  policy?: string;
}

export interface ExportSummary {
  rows: number;
  /** Files written (Parquet shards or partitions, the JSON file and images, or the one output file). */
  files: string[];
  seconds: number;
  /** aspo-reference: the pairs its trainer cannot use, left out, by reason. */
  leftOut?: AspoReferenceLeftOut;
}

export interface AspoReferenceLeftOut {
  /** Pairs without an image: the trainer opens one for every element. */
  textOnly: number;
  /** Pairs with a response that has no sentences (not segmented yet, or empty). */
  noSentences: number;
  /** Pairs with a sentence that has no similarity (run `aspo score`): the trainer does arithmetic on every score. */
  unscored: number;
}

export interface AspoReferenceOptions extends ExportCommon {
  /** `normalized` (default): each response's scores min–max normalised, `(x − min) / (max − min + 1e−6)`, as the
   *  authors' pipeline does before training; `raw`: `sentence_scores.similarity` as stored. */
  scores?: AspoReferenceScores;
}

async function sourceQuery(store: Store, source: ExportSource): Promise<string> {
  if ('sql' in source) return checkReadOnlySql(store.connection, source.sql, '--sql');
  const known = await store.all<{ name: string }>(
    "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1");
  if (!known.some((t) => t.name === source.table)) {
    throw new ExportError(`no table or view "${source.table}" in the store; there are: ${known.map((t) => t.name).join(', ') || 'none'}`);
  }
  return `SELECT * FROM ${quoteIdent(source.table)}`;
}

/** Column names and DuckDB type names of a query, from preparing it (it is not run). */
async function describe(store: Store, sql: string): Promise<{ name: string; type: string }[]> {
  const prepared = await store.connection.prepare(sql);
  try {
    return Array.from({ length: prepared.columnCount }, (_, i) => ({ name: prepared.columnName(i), type: prepared.columnType(i).toString() }));
  } finally {
    prepared.destroySync();
  }
}

/**
 * Writes an output through a staging folder (see util/safe-output.ts): `write` gets the path to write, and the output
 * appears under its name only once complete. It never replaces the store, and replaces an existing output only with
 * force (a folder only when it holds nothing but `ours`).
 */
async function staged<T>(store: Store, options: ExportCommon, kind: 'file' | 'folder', ours: (file: string) => boolean,
  write: (target: string) => Promise<T>): Promise<T> {
  const output = await StagedOutput.create(options.out, kind, { force: options.force, inputs: storeFiles(store.path), ours });
  try {
    const result = await write(output.path);
    await output.commit();
    return result;
  } catch (error) {
    await output.discard();
    throw error;
  }
}

/** Runs `work` with DuckDB set up to stream within a memory budget, restoring its settings after. */
async function withExportSettings<T>(store: Store, options: ExportCommon, work: () => Promise<T>): Promise<T> {
  // Sorts and joins beyond the limit spill to DuckDB's temporary folder (`<store>.tmp`).
  const settings: Record<string, string> = {
    memory_limit: quoteString(options.duckdbMemory ?? DEFAULT_EXPORT_MEMORY),
    // Otherwise DuckDB buffers rows to keep a table's storage order, and cuts row groups only by count; an ORDER BY in
    // the query is still honoured.
    preserve_insertion_order: 'false',
    // A partitioned write buffers rows per partition: flush small, and keep few files open at once.
    partitioned_write_flush_threshold: '8192',
    partitioned_write_max_open_files: '32',
  };
  const names = Object.keys(settings);
  const previous = await store.one<Record<string, unknown>>(`SELECT ${names.map((n) => `current_setting('${n}')::VARCHAR AS ${n}`).join(', ')}`);
  try {
    for (const name of names) await store.run(`SET ${name} = ${settings[name]}`);
    return await work();
  } finally {
    for (const name of names) await store.run(`SET ${name} = ${quoteString(String(previous![name]))}`);
  }
}

async function copy(store: Store, sql: string, target: string, copyOptions: string): Promise<number> {
  // The newline keeps a trailing `--` comment in the query from swallowing the parenthesis.
  const count = await store.scalar<number | bigint>(`COPY (${sql}\n) TO ${quoteString(target)} (${copyOptions})`);
  return Number(count);
}

/** Every table export writes: `.parquet` files in Hive folders (a partitioned export's folder). */
const isParquet = (file: string) => file.endsWith('.parquet');

/** A table, view or query to one file (or, with partitionBy, a folder of Hive-partitioned Parquet files). */
export async function exportTable(store: Store, source: ExportSource, options: TableExportOptions): Promise<ExportSummary> {
  const started = performance.now();
  if (!(TABLE_FORMATS as readonly string[]).includes(options.format)) {
    throw new ExportError(`format must be one of ${TABLE_FORMATS.join(', ')}, trl or aspo-reference; got "${options.format}"`);
  }
  const sql = await sourceQuery(store, source);
  const columns = await describe(store, sql);
  const partitionBy = options.partitionBy ?? [];
  if (partitionBy.length && options.format !== 'parquet') throw new ExportError('--partition-by writes Parquet folders; use it with --format parquet');
  for (const column of partitionBy) {
    if (!columns.some((c) => c.name === column)) {
      throw new ExportError(`--partition-by: no column "${column}" in the result; its columns are ${columns.map((c) => c.name).join(', ')}`);
    }
  }
  return withExportSettings(store, options, async () => {
    const rows = await staged(store, options, partitionBy.length ? 'folder' : 'file', isParquet, async (out) => {
      if (partitionBy.length) return copy(store, sql, out, `${PARQUET}, PARTITION_BY (${partitionBy.map(quoteIdent).join(', ')})`);
      if (options.format === 'arrow') return writeArrow(store, sql, out);
      if (options.format === 'parquet') return copy(store, sql, out, PARQUET);
      // Bytes as base64, as `aspo query` prints them: text formats cannot hold raw bytes.
      const blobs = columns.filter((c) => c.type === 'BLOB').map((c) => `base64(${quoteIdent(c.name)}) AS ${quoteIdent(c.name)}`);
      const textSql = blobs.length ? `SELECT * REPLACE (${blobs.join(', ')}) FROM (${sql}\n)` : sql;
      return copy(store, textSql, out, options.format === 'csv' ? 'FORMAT csv, HEADER' : 'FORMAT json');
    });
    // A partitioned export is a folder: its files are the Parquet files DuckDB wrote under it.
    const out = path.resolve(options.out);
    const files = partitionBy.length ? filesUnder(out).filter(isParquet).map((f) => path.join(out, f)) : [out];
    return { rows, files, seconds: (performance.now() - started) / 1000 };
  });
}

/** The n-th of `count` TRL shard file names, as Hugging Face names split files. */
export function shardName(index: number, count: number): string {
  return `train-${String(index).padStart(5, '0')}-of-${String(count).padStart(5, '0')}.parquet`;
}

function checkNumber(value: number | undefined, name: string, valid: (n: number) => boolean, expected: string): void {
  if (value !== undefined && !(Number.isFinite(value) && valid(value))) throw new ExportError(`--${name} must be ${expected}, got ${value}`);
}

/**
 * Every pair as a TRL preference row with images and the ASPO sentence columns, in Parquet shards of
 * `rowsPerShard` pairs (consecutive pair_id ranges), with the Hugging Face features in each file's metadata.
 */
export async function exportTrl(store: Store, options: TrlExportOptions): Promise<ExportSummary> {
  const started = performance.now();
  const rowsPerShard = options.rowsPerShard ?? DEFAULT_ROWS_PER_SHARD;
  checkNumber(rowsPerShard, 'rows-per-shard', (n) => Number.isInteger(n) && n >= 1, 'a whole number ≥ 1');
  checkNumber(options.alpha, 'alpha', (n) => n >= 0 && n <= 1, 'between 0 and 1');
  checkNumber(options.scale, 'scale', (n) => n >= 0, '≥ 0');
  const layout = options.layout ?? 'conversational';
  if (!(TRL_LAYOUTS as readonly string[]).includes(layout)) throw new ExportError(`--layout must be one of ${TRL_LAYOUTS.join(', ')}, got "${layout}"`);
  if (options.policy !== undefined) await checkPolicy(store, options.policy);
  return withExportSettings(store, options, async () => {
    // Shard k holds the pairs from the k-th boundary (every rowsPerShard-th pair_id) up to the next one.
    const boundaries = (await store.all<{ pair_id: string }>(
      `SELECT pair_id FROM (SELECT pair_id, row_number() OVER (ORDER BY pair_id) - 1 AS n FROM pairs)
       WHERE n % ${rowsPerShard} = 0 ORDER BY pair_id`)).map((r) => r.pair_id);
    const count = Math.max(boundaries.length, 1);
    const features = trlFeatures(layout, options.policy !== undefined);
    const metadata = `KV_METADATA {huggingface: ${quoteString(JSON.stringify({ info: { features } }))}, ` +
      `aspo: ${quoteString(JSON.stringify({ layout, alpha: options.alpha ?? null, scale: options.scale ?? null, policy: options.policy ?? null }))}}`;
    const files: string[] = [];
    let rows = 0;
    await staged(store, options, 'folder', (f) => /^train-\d{5}-of-\d{5}\.parquet$/.test(f), async (out) => {
      for (let k = 0; k < count; k++) {
        const range: ShardRange = { from: boundaries[k], to: boundaries[k + 1] };
        rows += await copy(store, trlShardSql(range, { ...options, layout }), path.join(out, shardName(k, count)), `${PARQUET}, ${metadata}`);
        files.push(path.resolve(options.out, shardName(k, count)));
      }
    });
    return { rows, files, seconds: (performance.now() - started) / 1000 };
  });
}

async function checkPolicy(store: Store, policy: string): Promise<void> {
  if (!(await store.tableExists('sentence_rewards'))) {
    throw new ExportError('--policy needs the sentence_rewards table; compute rewards for a trained policy first (aspo rewards)');
  }
  const policies = (await store.all<{ policy_model: string }>('SELECT DISTINCT policy_model FROM sentence_rewards ORDER BY 1'))
    .map((r) => r.policy_model);
  if (!policies.includes(policy)) {
    throw new ExportError(`--policy: no sentence_rewards for "${policy}"; there are: ${policies.join(', ') || 'none'}`);
  }
}

/**
 * The ASPO authors' JSON layout: `out/pairs.json` (one array of objects, see docs/export.md) and each image once in
 * `out/images/`. Only pairs their trainer can load are written; the others are counted in `leftOut`.
 */
export async function exportAspoReference(store: Store, options: AspoReferenceOptions): Promise<ExportSummary> {
  const started = performance.now();
  const scores = options.scores ?? 'normalized';
  if (!(ASPO_REFERENCE_SCORES as readonly string[]).includes(scores)) {
    throw new ExportError(`--scores must be one of ${ASPO_REFERENCE_SCORES.join(', ')}, got "${scores}"`);
  }
  return withExportSettings(store, options, async () => {
    const sql = aspoReferenceSql(scores);
    const { rows, images } = await staged(store, options, 'folder', (f) => f === 'pairs.json' || /^images\/[^/]+$/.test(f), async (out) => ({
      rows: await copy(store, sql, path.join(out, 'pairs.json'), 'FORMAT json, ARRAY true'),
      images: (await writeImages(store, path.join(out, 'images'), `SELECT id FROM (${sql}\n)`)).map((name) => path.resolve(options.out, 'images', name)),
    }));
    const json = path.resolve(options.out, 'pairs.json');
    const counts = (await store.one<{ text_only: number; no_sentences: number; unscored: number }>(aspoReferenceLeftOutSql()))!;
    const leftOut = { textOnly: Number(counts.text_only), noSentences: Number(counts.no_sentences), unscored: Number(counts.unscored) };
    return { rows, files: [json, ...images], leftOut, seconds: (performance.now() - started) / 1000 };
  });
}

/** The image of each exported pair (`pairIds`: a query of pair ids) once, IMAGE_BATCH images per query, so that only
 *  a few images' bytes are in memory at a time. Returns the file names written. */
async function writeImages(store: Store, dir: string, pairIds: string): Promise<string[]> {
  const ids = (await store.all<{ image_id: string }>(`SELECT DISTINCT p.image_id FROM pairs p
    WHERE p.image_id IS NOT NULL AND p.pair_id IN (${pairIds}\n) ORDER BY 1`)).map((r) => r.image_id);
  const written: string[] = [];
  await mkdir(dir, { recursive: true });
  for (let from = 0; from < ids.length; from += IMAGE_BATCH) {
    const batch = ids.slice(from, from + IMAGE_BATCH);
    const rows = await store.all<{ name: string; bytes: Uint8Array }>(
      `SELECT ${imageFileName('i')} AS name, i.bytes FROM images i WHERE i.image_id IN (${batch.map(quoteString).join(', ')})`);
    for (const row of rows) {
      await writeFile(path.join(dir, row.name), row.bytes);
      written.push(row.name);
    }
  }
  return written;
}
