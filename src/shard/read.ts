/**
 * Reading a shard set written by `aspo shard`: the manifest, the pairs of a split shard by shard, the images, and a
 * check of every file against the sha256 the manifest records.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { tableFromIPC } from 'apache-arrow';
import { sha256Hex } from '../util/hash.js';
import { PixelCache } from '../model/images.js';
import { formatOf, IMAGE_COLUMNS, PAIR_COLUMNS, type ColumnSpec } from './columns.js';
import { sqlString } from './write.js';
import { SHARD_SPLITS, type ShardFile, type ShardManifest, type ShardPair, type ShardSet, type ShardSplit } from './types.js';

export const MANIFEST_FILE = 'manifest.json';
export const SHARD_FORMAT_ID = 'aspo-shards/1';

type Row = Record<string, unknown>;

/** Opens the shard set in `dir` (reads and checks its manifest; files are read when iterated). */
export async function openShardSet(dir: string): Promise<ShardSet> {
  const manifest = await readManifest(dir);
  return {
    dir,
    manifest,
    pairs: (split) => readPairs(dir, manifest, split),
    images: () => readImages(dir, manifest),
    verify: () => verifyShardSet(dir, manifest),
  };
}

/** Reads and checks `dir/manifest.json`. */
export async function readManifest(dir: string): Promise<ShardManifest> {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    throw new Error(`${file} not found: ${dir} is not a shard set (write one with \`aspo shard\`)`);
  }
  let manifest: ShardManifest;
  try {
    manifest = JSON.parse(text) as ShardManifest;
  } catch (error) {
    throw new Error(`${file}: not JSON (${(error as Error).message})`);
  }
  if (manifest?.format !== SHARD_FORMAT_ID) throw new Error(`${file}: field "format" must be "${SHARD_FORMAT_ID}"`);
  if (typeof manifest.tokenizer !== 'string') throw new Error(`${file}: field "tokenizer" must be a string`);
  if (!Array.isArray(manifest.shards)) throw new Error(`${file}: field "shards" must be an array`);
  manifest.shards.forEach((shard, i) => checkFileEntry(shard, `${file}: shards[${i}]`));
  if (manifest.images !== null) checkFileEntry(manifest.images, `${file}: images`);
  return manifest;
}

function checkFileEntry(entry: ShardFile, where: string): void {
  if (typeof entry?.file !== 'string' || entry.file.includes('/') || entry.file.includes('\\')) {
    throw new Error(`${where}: field "file" must be a file name inside the shard set folder`);
  }
  formatOf(entry.file);
  if (!(SHARD_SPLITS as readonly string[]).includes(entry.split)) {
    throw new Error(`${where}: field "split" must be one of ${SHARD_SPLITS.join(', ')}`);
  }
  if (!/^[0-9a-f]{64}$/.test(entry.sha256)) throw new Error(`${where}: field "sha256" must be 64 hex digits`);
}

async function* readPairs(dir: string, manifest: ShardManifest, split: ShardSplit): AsyncIterable<ShardPair> {
  if (!(SHARD_SPLITS as readonly string[]).includes(split)) throw new Error(`split must be one of ${SHARD_SPLITS.join(', ')}, got ${split}`);
  for (const shard of manifest.shards.filter((s) => s.split === split)) {
    const rows = await readRows(path.join(dir, shard.file), PAIR_COLUMNS);
    if (rows.length !== shard.pairs) {
      throw new Error(`shard file ${shard.file}: holds ${rows.length} pairs but the manifest says ${shard.pairs}`);
    }
    for (const row of rows) yield pairOf(row);
  }
}

async function readImages(dir: string, manifest: ShardManifest): Promise<Map<string, Uint8Array>> {
  const images = new Map<string, Uint8Array>();
  if (!manifest.images) return images;
  for (const row of await readRows(path.join(dir, manifest.images.file), IMAGE_COLUMNS)) {
    images.set(row.image_id as string, row.bytes as Uint8Array);
  }
  return images;
}

/** Throws naming the first file that is missing or whose sha256 differs from the manifest. */
export async function verifyShardSet(dir: string, manifest: ShardManifest): Promise<void> {
  for (const entry of [...manifest.shards, ...(manifest.images ? [manifest.images] : [])]) {
    const digest = await fileSha256(path.join(dir, entry.file));
    if (digest === null) throw new Error(`shard file ${entry.file} is missing from ${dir}`);
    if (digest !== entry.sha256) throw new Error(`shard file ${entry.file}: sha256 ${digest} differs from the manifest's ${entry.sha256}`);
  }
}

export async function fileSha256(file: string): Promise<string | null> {
  try {
    return sha256Hex(await fs.readFile(file));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}

function pairOf(row: Row): ShardPair {
  return {
    pairId: row.pair_id as string,
    imageId: (row.image_id as string | null) ?? null,
    promptIds: row.prompt_ids as number[],
    chosenIds: row.chosen_ids as number[],
    rejectedIds: row.rejected_ids as number[],
    chosenSentenceIds: row.chosen_sentence_ids as number[],
    rejectedSentenceIds: row.rejected_sentence_ids as number[],
    chosenSimilarity: row.chosen_similarity as Array<number | null>,
    chosenRefLogps: (row.chosen_ref_logps as number[] | null) ?? null,
    rejectedRefLogps: (row.rejected_ref_logps as number[] | null) ?? null,
    truncated: row.truncated as boolean,
  };
}

/** Rows of a shard or images file as plain objects (lists as number arrays, binary as Uint8Array). */
async function readRows(file: string, columns: readonly ColumnSpec[]): Promise<Row[]> {
  const name = path.basename(file);
  let rows: Row[];
  let present: string[];
  try {
    ({ rows, present } = formatOf(file) === 'arrow' ? await readArrow(file, columns) : await readParquet(file));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`shard file ${name} is missing from ${path.dirname(file)}`);
    throw new Error(`shard file ${name}: cannot be read (${(error as Error).message})`);
  }
  const missing = columns.find((c) => !present.includes(c.name));
  if (missing) throw new Error(`shard file ${name}: column "${missing.name}" is missing`);
  return rows;
}

async function readArrow(file: string, columns: readonly ColumnSpec[]): Promise<{ rows: Row[]; present: string[] }> {
  const table = tableFromIPC(await fs.readFile(file));
  const present = table.schema.fields.map((f) => f.name);
  const vectors = columns.filter((c) => present.includes(c.name)).map((c) => [c, table.getChild(c.name)!] as const);
  const rows: Row[] = [];
  for (let i = 0; i < table.numRows; i++) {
    const row: Row = {};
    for (const [column, vector] of vectors) {
      const value: unknown = vector.get(i);
      row[column.name] = value === null || value === undefined ? null
        : column.list ? Array.from(value as Iterable<number | null>)
          : column.type === 'binary' ? new Uint8Array(value as Uint8Array) : value;
    }
    rows.push(row);
  }
  return { rows, present };
}

async function readParquet(file: string): Promise<{ rows: Row[]; present: string[] }> {
  await fs.access(file);
  const instance = await DuckDBInstance.create(':memory:', { threads: '1' });
  const connection = await instance.connect();
  try {
    const reader = await connection.runAndReadAll(`SELECT * FROM read_parquet(${sqlString(file)})`);
    const rows = reader.getRowObjectsJS() as Row[];
    for (const row of rows) {
      for (const [key, value] of Object.entries(row)) if (Buffer.isBuffer(value)) row[key] = new Uint8Array(value);
    }
    return { rows, present: reader.columnNames() };
  } finally {
    connection.closeSync();
    instance.closeSync();
  }
}

/**
 * The shard set's images as a pixel cache: the image file is read once, on first use, and each image decoded once
 * per size. An image a pair names but the set lacks is an error naming it.
 */
export function shardPixelCache(set: ShardSet): PixelCache {
  let bytes: Promise<Map<string, Uint8Array>> | undefined;
  return new PixelCache(async (imageId) => {
    const data = (await (bytes ??= set.images())).get(imageId);
    if (!data) throw new Error(`image ${imageId} is used by a pair but missing from the shard set's images`);
    return data;
  });
}
