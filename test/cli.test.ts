import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';
import { CLI, tempDir } from './support.js';

test('aspo --help lists the subcommands', () => {
  const out = execFileSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' });
  for (const name of ['ingest', 'query', 'run']) assert.match(out, new RegExp(`^  ${name} `, 'm'));
});

test('an unknown subcommand exits 2 and says so', () => {
  const result = spawnSync(process.execPath, [CLI, 'frobnicate'], { encoding: 'utf8' });
  assert.equal(result.status, 2);
  assert.match(result.stderr, /unknown command "frobnicate"/);
});

test('aspo query on a missing store explains what to do', () => {
  const db = path.join(tempDir(), 'missing.duckdb');
  const result = spawnSync(process.execPath, [CLI, 'query', 'SELECT 1', '--db', db], { encoding: 'utf8' });
  assert.equal(result.status, 1);
  assert.match(result.stderr, /aspo ingest/);
});

test('aspo query prints csv, JSON Lines and Arrow IPC that read back to the same values', async () => {
  const { tableFromIPC } = await import('apache-arrow');
  const { withStore } = await import('../src/store/store.js');
  const db = path.join(tempDir(), 'q.duckdb');
  await withStore(db, (store) => store.run(`CREATE TABLE t AS SELECT * FROM (VALUES (1, 'plain', 0.5), (2, 'has, comma and "quotes"', NULL)) v(id, name, score)`));
  const run = (format: string) => execFileSync(process.execPath, [CLI, 'query', 'SELECT * FROM t ORDER BY id', '--db', db, '--format', format]);
  assert.equal(run('csv').toString(), 'id,name,score\n1,plain,0.5\n2,"has, comma and ""quotes""",\n');
  const json = run('json').toString().trim().split('\n').map((line) => JSON.parse(line));
  assert.deepEqual(json, [{ id: 1, name: 'plain', score: 0.5 }, { id: 2, name: 'has, comma and "quotes"', score: null }]);
  const table = tableFromIPC(run('arrow'));
  assert.deepEqual(table.getChild('name')!.toArray(), ['plain', 'has, comma and "quotes"']);
  assert.equal(table.numRows, 2);
  const text = run('table').toString();
  assert.match(text, /\| id \| name +\| score \|/);
  assert.match(text, /\(2 rows\)/);
});

test('aspo query refuses to write: the store is opened read-only', async () => {
  const { withStore } = await import('../src/store/store.js');
  const db = path.join(tempDir(), 'ro.duckdb');
  await withStore(db, (store) => store.run('CREATE TABLE t (x INTEGER)'));
  const result = spawnSync(process.execPath, [CLI, 'query', 'INSERT INTO t VALUES (1)', '--db', db], { encoding: 'utf8' });
  assert.equal(result.status, 1);
  assert.match(result.stderr, /read-only/i);
});
