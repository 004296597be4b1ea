/**
 * Bad input files and misplaced --db paths: each gets a clear error naming the file (and row), or a counted outcome,
 * and leaves nothing behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { withStore } from '../../src/store/store.js';
import { CLI, tempDir } from '../support.js';

const aspo = (cwd: string, ...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8' });
const good = (i: number) => JSON.stringify({ prompt: `Question ${i}?`, chosen: `Yes ${i}. Sure.`, rejected: `No ${i}. Never.` });

test('invalid UTF-8 in a JSON Lines file: that line is rejected with the reason and counted, the others are kept intact', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'data.jsonl');
  const bad = Buffer.concat([Buffer.from('{"prompt":"Caf'), Buffer.from([0xe9]), Buffer.from('?","chosen":"Oui. Bon.","rejected":"Non. Mal."}')]);
  writeFileSync(file, Buffer.concat([Buffer.from(`${good(0)}\n`), bad, Buffer.from(`\n${good(2)}\n{"prompt":"Grün?","chosen":"Ja. Gut.","rejected":"Nein. Schlecht."}\n`)]));
  const result = aspo(dir, 'ingest', file, '--db', 'aspo.duckdb');
  assert.equal(result.status, 0, result.stderr);
  assert.match(result.stderr, /read 4, ingested 3, duplicates 0, rejected 1/);
  await withStore(path.join(dir, 'aspo.duckdb'), async (store) => {
    const rejects = await store.all<{ source_row: number; reason: string }>('SELECT source_row, reason FROM rejects');
    assert.deepEqual(rejects.map((r) => r.source_row), [1]);
    assert.match(rejects[0]!.reason, /invalid UTF-8/);
    // A line next to the bad one keeps its (valid) non-ASCII text exactly.
    assert.equal(await store.scalar('SELECT prompt FROM pairs WHERE source_row = 3'), 'Grün?');
    assert.equal(Number(await store.scalar("SELECT count(*) FROM pairs WHERE contains(prompt || chosen || rejected, '\uFFFD')")), 0);
  }, { readOnly: true });
});

test('invalid UTF-8 in a JSON array: a clear error naming the file and element, no store left behind', () => {
  const dir = tempDir();
  writeFileSync(path.join(dir, 'data.json'), Buffer.concat([Buffer.from(`[${good(0)},{"prompt":"Caf`), Buffer.from([0xff]), Buffer.from('","chosen":"a. b.","rejected":"c. d."}]')]));
  const result = aspo(dir, 'ingest', 'data.json', '--db', 'aspo.duckdb');
  assert.equal(result.status, 1);
  assert.match(result.stderr, /data\.json: invalid UTF-8 .*array element/);
  assert.equal(existsSync(path.join(dir, 'aspo.duckdb')), false);
});

for (const [name, bytes, message] of [
  ['empty.json', '', /empty\.json: the file is empty \(0 bytes\)/],
  ['one.json', '[', /one\.json: the JSON array is not closed/],
  ['two.json', '{}', /two\.json: expected a JSON array/],
  ['three.json', ' \n', /three\.json: cannot tell its format/],
  ['zero.arrow', '', /zero\.arrow: the file is empty/],
  ['garbage.arrow', 'this is not arrow data at all', /garbage\.arrow: not an Arrow IPC file or stream/],
  ['stub.arrow', Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), /stub\.arrow: the Arrow data ends before its schema/],
  ['garbage.parquet', 'not parquet', /garbage\.parquet: not a Parquet file/],
] as const) {
  test(`${name}: a clear error naming the file, exit 1, no empty store created`, () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, name), bytes);
    const result = aspo(dir, 'ingest', name, '--format', name.endsWith('.json') && name !== 'three.json' ? 'json' : 'auto');
    assert.equal(result.status, 1, result.stderr);
    assert.match(result.stderr, message);
    assert.equal(existsSync(path.join(dir, 'aspo.duckdb')), false, 'a failed ingest left a store behind');
  });
}

test('an ingest of a missing file creates no store', () => {
  const dir = tempDir();
  const result = aspo(dir, 'ingest', 'missing.jsonl', '--db', 'new.duckdb');
  assert.equal(result.status, 1);
  assert.match(result.stderr, /missing\.jsonl: no such file/);
  assert.equal(existsSync(path.join(dir, 'new.duckdb')), false);
});

test('--db naming a dataset file (or a folder) is refused and the file is left untouched', () => {
  const dir = tempDir();
  const data = `${good(0)}\n${good(1)}\n`;
  writeFileSync(path.join(dir, 'train.jsonl'), data);
  for (const args of [['ingest', 'train.jsonl', '--db', 'train.jsonl'], ['query', 'SELECT 1', '--db', 'train.jsonl'],
    ['segment', '--db', 'train.jsonl'], ['ingest', 'train.jsonl', '--db', '.']]) {
    const result = aspo(dir, ...args);
    assert.equal(result.status, 1, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, /--db \S+ is (not a DuckDB database|a folder)/);
  }
  assert.equal(readFileSync(path.join(dir, 'train.jsonl'), 'utf8'), data);
});
