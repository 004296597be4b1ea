/**
 * `aspo query` and `aspo export --sql` run one read-only query on a store they cannot change, and nothing that writes
 * files, attaches databases, loads extensions, changes settings or reads files outside the store: every attack from
 * issue 14, each checked for its refusal and for the damage it would have done.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, linkSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { withStore } from '../../src/store/store.js';
import { CLI, tempDir } from '../support.js';

const aspo = (cwd: string, ...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8' });

/** A folder with a store of 3 pairs (aspo.duckdb), another store (other.duckdb) and a hard link to the first. */
function setup(): string {
  const dir = tempDir();
  writeFileSync(path.join(dir, 'data.jsonl'), [0, 1, 2].map((i) => JSON.stringify({ prompt: `Q${i}?`, chosen: `Yes ${i}. Sure.`, rejected: `No ${i}. Never.` })).join('\n'));
  for (const db of ['aspo.duckdb', 'other.duckdb']) assert.equal(aspo(dir, 'ingest', 'data.jsonl', '--db', db).status, 0);
  linkSync(path.join(dir, 'aspo.duckdb'), path.join(dir, 'link.duckdb'));
  return dir;
}

async function pairs(db: string): Promise<number> {
  return withStore(db, (store) => store.scalar<number>('SELECT count(*) FROM pairs'), { readOnly: true });
}

const ATTACKS: Array<[string, RegExp]> = [
  ["COPY (SELECT 'x') TO 'aspo.duckdb' (FORMAT csv)", /COPY writes files; to write query results to a file, use aspo export/],
  ["COPY pairs TO 'out.csv'", /got a COPY statement[\s\S]*aspo export --sql/],
  ["ATTACH 'other.duckdb' AS o (READ_WRITE); DELETE FROM o.pairs", /one query, got 2 statements/],
  ["ATTACH 'other.duckdb' AS o (READ_WRITE)", /got a ATTACH statement: ATTACH opens other databases/],
  ["ATTACH 'link.duckdb' AS o (READ_WRITE)", /ATTACH opens other databases/],
  ["SELECT 1; COPY (SELECT 1) TO 'out.csv'", /one query, got 2 statements/],
  ["SELECT * FROM read_csv('/etc/passwd')", /Cannot access file "\/etc\/passwd"[\s\S]*Only the store can be read here/],
  ["SELECT * FROM read_text('/etc/hostname')", /Cannot access file[\s\S]*Only the store can be read here/],
  ["SELECT * FROM glob('/etc/*')", /Cannot access file/],
  ["FROM 'data.jsonl'", /data\.jsonl/],
  ["INSTALL httpfs", /extensions cannot be installed or loaded here/],
  ["LOAD httpfs", /extensions cannot be installed or loaded here/],
  ["SET memory_limit = '1GB'", /settings (and variables )?cannot be changed here/],
  ["SET VARIABLE x = 1", /cannot be changed here/],
  ['PRAGMA version', /PRAGMA statements are not run here/],
  ["EXPORT DATABASE 'dump'", /EXPORT DATABASE writes files; to write query results to a file, use aspo export/],
  ['DELETE FROM pairs', /got a DELETE statement: the store is changed only by the aspo stages/],
  ['CREATE TABLE t AS SELECT 1', /got a CREATE statement/],
  ['CALL checkpoint()', /CALL is not run here|got a/],
];

test('aspo query refuses every attack of issue 14 with a clear message, and nothing is written or changed', async () => {
  const dir = setup();
  const store = readFileSync(path.join(dir, 'aspo.duckdb'));
  for (const [sql, message] of ATTACKS) {
    const result = aspo(dir, 'query', sql);
    assert.notEqual(result.status, 0, `${sql} ran: ${result.stdout}`);
    assert.match(result.stderr, message, sql);
  }
  assert.deepEqual(readFileSync(path.join(dir, 'aspo.duckdb')), store, 'the store changed');
  assert.equal(await pairs(path.join(dir, 'other.duckdb')), 3);
  for (const file of ['out.csv', 'dump']) assert.equal(existsSync(path.join(dir, file)), false, `${file} was written`);
  // Read-only queries still work, FROM-first, DESCRIBE and SUMMARIZE included.
  for (const sql of ['SELECT count(*) AS n FROM pairs', 'FROM pairs SELECT count(*) AS n;', 'DESCRIBE pairs', 'SUMMARIZE pairs']) {
    const result = aspo(dir, 'query', sql, '--format', 'csv');
    assert.equal(result.status, 0, `${sql}: ${result.stderr}`);
  }
  assert.equal(aspo(dir, 'query', 'SELECT count(*) AS n FROM pairs', '--format', 'csv').stdout, 'n\n3\n');
});

test('aspo export --sql is at least as strict: the same refusals, and no output file', () => {
  const dir = setup();
  for (const [sql, message] of ATTACKS.filter(([sql]) => !sql.startsWith('FROM '))) {
    const result = aspo(dir, 'export', '--sql', sql, '--format', 'csv', '--out', 'result.csv');
    assert.notEqual(result.status, 0, `${sql} ran`);
    assert.match(result.stderr, message, sql);
    assert.equal(existsSync(path.join(dir, 'result.csv')), false);
  }
  // A subquery reading a file is refused by DuckDB itself, the store having been opened confined.
  const nested = aspo(dir, 'export', '--sql', "SELECT * FROM pairs, (SELECT count(*) FROM read_csv('/etc/passwd'))", '--format', 'csv', '--out', 'result.csv');
  assert.notEqual(nested.status, 0);
  assert.match(nested.stderr, /Cannot access file "\/etc\/passwd"[\s\S]*Only the store can be read here/);
  const ok = aspo(dir, 'export', '--sql', 'SELECT prompt FROM pairs ORDER BY prompt', '--format', 'csv', '--out', 'result.csv');
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(readFileSync(path.join(dir, 'result.csv'), 'utf8'), 'prompt\nQ0?\nQ1?\nQ2?\n');
});
