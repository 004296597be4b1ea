import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CLI, ROOT, tempDir } from './support.js';

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
  assert.match(result.stderr, /must be a read-only query \(SELECT …\), got a INSERT statement/);
});

test('aspo --version prints the package version', () => {
  const { version } = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  for (const flag of ['--version', '-v']) {
    const result = spawnSync(process.execPath, [CLI, flag], { encoding: 'utf8' });
    assert.equal(result.status, 0);
    assert.equal(result.stdout, `${version}\n`);
  }
});

test('a mistyped command or option gets a "did you mean", and usage text only for usage errors', async () => {
  const command = spawnSync(process.execPath, [CLI, 'ingset', 'x.jsonl'], { encoding: 'utf8' });
  assert.equal(command.status, 2);
  assert.match(command.stderr, /unknown command "ingset"; did you mean "ingest"\?/);
  const option = spawnSync(process.execPath, [CLI, 'export', '--fromat', 'trl', '--out', 'x'], { encoding: 'utf8' });
  assert.equal(option.status, 2);
  assert.match(option.stderr, /unknown option --fromat; did you mean --format\?/);
  assert.match(option.stderr, /Usage: aspo export/);
  const far = spawnSync(process.execPath, [CLI, 'export', '--zzzzzz'], { encoding: 'utf8' });
  assert.doesNotMatch(far.stderr, /did you mean/);
  // An export folder in the way is not a usage error: the message says what to do, and no usage text follows.
  const { withStore } = await import('../src/store/store.js');
  const dir = tempDir();
  const db = path.join(dir, 'e.duckdb');
  await withStore(db, async () => undefined);
  const out = path.join(dir, 'out');
  mkdirSync(out);
  writeFileSync(path.join(out, 'train-00000-of-00001.parquet'), 'x');
  const inTheWay = spawnSync(process.execPath, [CLI, 'export', '--db', db, '--format', 'trl', '--out', out], { encoding: 'utf8' });
  assert.equal(inTheWay.status, 1);
  assert.match(inTheWay.stderr, /is not empty; pass --force/);
  assert.doesNotMatch(inTheWay.stderr, /Usage:/);
});

test('--json: one JSON object on stdout for ingest, segment and export; segment --strict fails on invalid lines', async () => {
  const dir = tempDir();
  const db = path.join(dir, 'j.duckdb');
  const data = path.join(dir, 'd.jsonl');
  writeFileSync(data, JSON.stringify({ prompt: 'p', chosen: 'A cat. A dog.', rejected: 'A cow.' }) + '\n{broken\n');
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  const ingested = run('ingest', data, '--db', db, '--json');
  assert.equal(ingested.status, 0, ingested.stderr);
  assert.deepEqual([JSON.parse(ingested.stdout).ingested, JSON.parse(ingested.stdout).rejected], [1, 1]);
  const segmented = run('segment', '--db', db, '--json');
  assert.equal(segmented.status, 0, segmented.stderr);
  assert.deepEqual([JSON.parse(segmented.stdout).pairs, JSON.parse(segmented.stdout).sentences], [1, 3]);
  const exported = run('export', '--db', db, '--table', 'sentences', '--format', 'csv', '--out', path.join(dir, 's.csv'), '--json');
  assert.equal(exported.status, 0, exported.stderr);
  assert.equal(exported.stdout.trim().split('\n').length, 1);
  assert.equal(JSON.parse(exported.stdout).rows, 3);
  const lines = '{"id":"a","text":"One. Two."}\nnot json\n';
  const lenient = spawnSync(process.execPath, [CLI, 'segment'], { input: lines, encoding: 'utf8' });
  assert.equal(lenient.status, 0);
  const strict = spawnSync(process.execPath, [CLI, 'segment', '--strict'], { input: lines, encoding: 'utf8' });
  assert.equal(strict.status, 3);
  assert.equal(strict.stdout.trim().split('\n').length, 2, 'every line is still answered');
});

test('npm pack ships the built library, its docs and README, not tests, benchmarks, CI or bundled model state', () => {
  const result = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(result.status, 0, result.stderr);
  const files = (JSON.parse(result.stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
  for (const needed of ['package.json', 'README.md', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/cli/main.js', 'docs/export.md']) {
    assert.ok(files.includes(needed), `${needed} is shipped`);
  }
  const unwanted = files.filter((f) => /^(dist\/(test|bench)|test|bench|src|\.ci|datasets)\//.test(f));
  assert.deepEqual(unwanted, []);
  // The native TensorFlow.js backends are optional peers (README, "GPU"), the ones initBackend tries.
  const manifest = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as Record<string, Record<string, unknown>>;
  for (const native of ['@tensorflow/tfjs-node', '@tensorflow/tfjs-node-gpu']) {
    assert.ok(manifest.peerDependencies![native]);
    assert.deepEqual(manifest.peerDependenciesMeta![native], { optional: true });
  }
});
