/**
 * Every reader keeps every row: files of well over 100,000 rows in each format, with many row groups or record
 * batches, ingested and compared row by row with the rows the file was written from.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { Table, tableToIPC, Utf8, vectorFromArray } from 'apache-arrow';
import { ingest, type IngestOptions } from '../../src/ingest/ingest.js';
import { withStore } from '../../src/store/store.js';
import { CLI, tempDir } from '../support.js';

const N = 120_000;
const BATCH = 10_000;

/** Row i of every test file (some non-ASCII text, so multi-byte characters cross the readers' chunk boundaries). */
const expected = (i: number) => ({
  prompt: `Describe picture ${i}.`,
  chosen: i % 3 ? `A cat ${i}. It sits.` : `Ein Café ${i}. Es ist grün 🐈.`,
  rejected: `A dog ${i}. It runs.`,
});

function column(from: number, to: number, field: 'prompt' | 'chosen' | 'rejected'): string[] {
  return Array.from({ length: to - from }, (_, k) => expected(from + k)[field]);
}

async function checkAllRows(file: string, options: IngestOptions = {}): Promise<void> {
  const db = path.join(path.dirname(file), `${path.basename(file)}.duckdb`);
  const summary = await withStore(db, (store) => ingest(store, [file], options));
  assert.deepEqual({ read: summary.read, ingested: summary.ingested, rejected: summary.rejected }, { read: N, ingested: N, rejected: 0 });
  const rows = await withStore(db, (store) => store.connection.runAndReadAll(
    'SELECT source_row, prompt, chosen, rejected FROM pairs ORDER BY source_row'), { readOnly: true });
  const [sourceRows, prompts, chosen, rejected] = rows.getColumnsJS() as [bigint[], string[], string[], string[]];
  assert.equal(sourceRows.length, N);
  for (let i = 0; i < N; i++) {
    const want = expected(i);
    if (Number(sourceRows[i]) !== i || prompts[i] !== want.prompt || chosen[i] !== want.chosen || rejected[i] !== want.rejected) {
      assert.fail(`row ${i} differs: ${JSON.stringify([Number(sourceRows[i]), prompts[i], chosen[i], rejected[i]])} vs ${JSON.stringify(want)}`);
    }
  }
}

test('Parquet with 12 row groups: every row kept (the reader no longer shares the ingest connection)', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'pairs.parquet');
  const instance = await DuckDBInstance.create(':memory:');
  const connection = await instance.connect();
  const jsonl = path.join(dir, 'rows.jsonl');
  writeFileSync(jsonl, Array.from({ length: N }, (_, i) => JSON.stringify(expected(i))).join('\n'));
  await connection.run(`COPY (SELECT * FROM read_json('${jsonl}', format = 'newline_delimited', columns = {prompt: 'VARCHAR', chosen: 'VARCHAR', rejected: 'VARCHAR'}))
    TO '${file}' (FORMAT parquet, ROW_GROUP_SIZE ${BATCH})`);
  const groups = Number((await connection.runAndReadAll(`SELECT count(DISTINCT row_group_id) FROM parquet_metadata('${file}')`)).getRowsJS()[0]![0]);
  connection.closeSync();
  instance.closeSync();
  assert.ok(groups >= 10, `expected several row groups, got ${groups}`);
  await checkAllRows(file, { batchSize: 1000 });
});

test('Arrow IPC file and stream with 12 record batches each: every row kept', async () => {
  const dir = tempDir();
  const batches = [];
  for (let from = 0; from < N; from += BATCH) {
    const text = (field: 'prompt' | 'chosen' | 'rejected') => vectorFromArray(column(from, from + BATCH, field), new Utf8());
    batches.push(...new Table({ prompt: text('prompt'), chosen: text('chosen'), rejected: text('rejected') }).batches);
  }
  const table = new Table(batches[0]!.schema, batches);
  assert.equal(table.batches.length, N / BATCH);
  for (const [name, kind] of [['pairs.arrow', 'file'], ['pairs.arrows', 'stream']] as const) {
    const file = path.join(dir, name);
    writeFileSync(file, tableToIPC(table, kind));
    await checkAllRows(file);
  }
});

test('a JSON array and JSON Lines (fast path and JavaScript path mixed) of 120,000 rows: every row kept', async () => {
  const dir = tempDir();
  const array = path.join(dir, 'pairs.json');
  writeFileSync(array, `[\n${Array.from({ length: N }, (_, i) => JSON.stringify(expected(i))).join(',\n')}\n]`);
  await checkAllRows(array);
  // Every seventh line has an extra field, so the JavaScript path takes it; the rest go through DuckDB's fast path.
  const lines = path.join(dir, 'pairs.jsonl');
  writeFileSync(lines, Array.from({ length: N }, (_, i) => JSON.stringify(i % 7 ? expected(i) : { ...expected(i), id: i })).join('\n'));
  await checkAllRows(lines);
});

test('the issue\'s reproduction: a 20,000-row Parquet file written by aspo export ingests 20,000 rows', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'p.parquet');
  const db = path.join(dir, 'aspo.duckdb');
  await withStore(db, async () => {});
  const make = spawnSync(process.execPath, [CLI, 'export', '--db', db, '--format', 'parquet', '--out', file, '--sql',
    "SELECT 'Describe '||i||'.' AS prompt, 'A cat. It sits.' AS chosen, 'A dog '||i||'. It runs.' AS rejected FROM range(20000) t(i)"],
    { encoding: 'utf8' });
  assert.equal(make.status, 0, make.stderr);
  const result = spawnSync(process.execPath, [CLI, 'ingest', file, '--db', path.join(dir, 'in.duckdb'), '--batch-size', '1000'], { encoding: 'utf8' });
  assert.equal(result.status, 0, result.stderr);
  assert.match(result.stderr + result.stdout, /read 20000, ingested 20000/);
});
