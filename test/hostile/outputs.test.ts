/**
 * Outputs never clobber: no command overwrites an existing file or a folder it did not write without --force, none
 * overwrites its own input (the store, even through a hard link; a checkpoint) even with --force, a shard set has one
 * writer at a time, and a killed export leaves nothing under the output's name.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { tableFromIPC } from 'apache-arrow';
import { DuckDBInstance } from '@duckdb/node-api';
import { synthesize } from '../../src/synth/synthesize.js';
import { withStore } from '../../src/store/store.js';
import { Tokenizer } from '../../src/model/tokenizer.js';
import { DEFAULT_MODEL_CONFIG, initialValues, validateModelConfig } from '../../src/model/model.js';
import { loadCheckpoint, saveCheckpoint } from '../../src/model/checkpoint.js';
import { openShardSet } from '../../src/shard/read.js';
import { CLI, tempDir } from '../support.js';

const aspo = (cwd: string, ...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8' });

let dir: string;
let db: string;
let checkpoint: string;

before(async () => {
  dir = tempDir();
  const data = path.join(dir, 'data');
  await synthesize({ out: data, seed: 3, images: 6, evalImages: 1, sftPerImage: 1, pairsPerImage: 2, maxSentences: 3 });
  db = path.join(dir, 'aspo.duckdb');
  for (const args of [['ingest', path.join(data, 'pairs.jsonl')], ['segment']]) {
    const result = aspo(dir, ...args, '--db', db);
    assert.equal(result.status, 0, result.stderr);
  }
  const lines = readFileSync(path.join(data, 'pairs.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>);
  const tokenizer = Tokenizer.build(lines.flatMap((l) => [l.prompt!, l.chosen!, l.rejected!]), { vocabSize: 200 });
  const config = validateModelConfig({ ...DEFAULT_MODEL_CONFIG, vocabSize: tokenizer.vocabSize, width: 16, layers: 1, heads: 2, mlpRatio: 2, context: 16 + 80 });
  checkpoint = path.join(dir, 'tiny');
  await saveCheckpoint(checkpoint, { config, tokenizer, weights: initialValues(config, 7) });
});

test('report --out: an existing file needs --force; the store (or a hard link to it) is never replaced', () => {
  const store = readFileSync(db);
  linkSync(db, path.join(dir, 'link.duckdb'));
  writeFileSync(path.join(dir, 'old.html'), 'mine');
  const refused = aspo(dir, 'report', '--db', db, '--out', 'old.html');
  assert.equal(refused.status, 1);
  assert.match(refused.stderr, /old\.html exists; pass --force to overwrite it/);
  assert.equal(readFileSync(path.join(dir, 'old.html'), 'utf8'), 'mine');
  for (const out of ['aspo.duckdb', 'link.duckdb', `${db}.wal`]) {
    const result = aspo(dir, 'report', '--db', db, '--out', out, '--force');
    assert.equal(result.status, 1, out);
    assert.match(result.stderr, /would overwrite this command's input/);
  }
  assert.deepEqual(readFileSync(db), store);
  const forced = aspo(dir, 'report', '--db', db, '--out', 'old.html', '--force');
  assert.equal(forced.status, 0, forced.stderr);
  assert.match(readFileSync(path.join(dir, 'old.html'), 'utf8'), /<html/);
});

test('export: the store, a hard link to it, or a folder holding it is never an output, even with --force', () => {
  const store = readFileSync(db);
  linkSync(db, path.join(dir, 'hard.duckdb'));
  for (const [format, out] of [['csv', 'aspo.duckdb'], ['parquet', 'hard.duckdb'], ['trl', '.'], ['aspo-reference', dir]]) {
    const args = format === 'trl' || format === 'aspo-reference' ? [] : ['--table', 'pairs'];
    const result = aspo(dir, 'export', '--db', db, ...args, '--format', format, '--out', out, '--force');
    assert.equal(result.status, 1, `${format} ${out}: ${result.stderr}`);
    assert.match(result.stderr, /would overwrite this command's input/);
  }
  assert.deepEqual(readFileSync(db), store);
});

test('shard --out: a checkpoint folder (its own tokenizer, or another) is refused and still loads; so is a folder of other files', async () => {
  const other = path.join(dir, 'other-ckpt');
  const { config, tokenizer, weights } = await loadCheckpoint(checkpoint);
  await saveCheckpoint(other, { config, tokenizer, weights });
  for (const out of [checkpoint, other]) {
    const result = aspo(dir, 'shard', '--db', db, '--tokenizer', checkpoint, '--out', out, '--backend', 'cpu');
    assert.equal(result.status, 1, result.stderr);
    assert.match(result.stderr, out === checkpoint ? /would overwrite this command's input/ : /holds (manifest\.json|config\.json|\S+), which is not part of a shard set/);
    await loadCheckpoint(out);
  }
  const notes = path.join(dir, 'notes');
  mkdirSync(notes);
  writeFileSync(path.join(notes, 'todo.txt'), 'keep me');
  assert.match(aspo(dir, 'shard', '--db', db, '--tokenizer', checkpoint, '--out', notes, '--backend', 'cpu').stderr, /holds todo\.txt/);
  assert.equal(readFileSync(path.join(notes, 'todo.txt'), 'utf8'), 'keep me');
});

test('shard: one writer at a time (a live lock refuses a second run); a killed run\'s lock and temporary files are cleared by the next', async () => {
  const out = path.join(dir, 'shards');
  const first = aspo(dir, 'shard', '--db', db, '--tokenizer', checkpoint, '--out', out, '--backend', 'cpu');
  assert.equal(first.status, 0, first.stderr);
  // A live process holds the lock: refused, and the set is untouched.
  const sleeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
  try {
    writeFileSync(path.join(out, '.aspo-lock'), `${sleeper.pid}\n`);
    const second = aspo(dir, 'shard', '--db', db, '--tokenizer', checkpoint, '--out', out, '--backend', 'cpu', '--seed', '1');
    assert.equal(second.status, 1);
    assert.match(second.stderr, new RegExp(`being written by another aspo shard \\(process ${sleeper.pid}\\)`));
  } finally {
    sleeper.kill('SIGKILL');
  }
  await new Promise((resolve) => sleeper.once('exit', resolve));
  // The holder is gone (as after kill -9), and it left temporary files: the next run takes over and clears them.
  writeFileSync(path.join(out, '.train-00000.arrow.999999.tmp'), 'partial');
  writeFileSync(path.join(out, `.images.arrow.aspo-partial-${sleeper.pid}`), 'partial');
  const third = aspo(dir, 'shard', '--db', db, '--tokenizer', checkpoint, '--out', out, '--backend', 'cpu', '--seed', '1');
  assert.equal(third.status, 0, third.stderr);
  assert.deepEqual(readdirSync(out).filter((f) => f.startsWith('.')), []);
  const set = await openShardSet(out);
  assert.equal(set.manifest.options.seed, 1);
});

test('two shard runs (of two stores) into one --out at once: never both write; the set left behind verifies', async () => {
  const out = path.join(dir, 'race');
  const copies = ['2', '3'].map((seed) => {
    const copy = path.join(dir, `copy-${seed}.duckdb`);
    copyFileSync(db, copy);
    return copy;
  });
  const run = (seed: string) => new Promise<{ status: number | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [CLI, 'shard', '--db', copies[Number(seed) - 2]!, '--tokenizer', checkpoint, '--out', out, '--backend', 'cpu', '--seed', seed]);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('exit', (status) => resolve({ status, stderr }));
  });
  const results = await Promise.all([run('2'), run('3')]);
  assert.ok(results.some((r) => r.status === 0), results.map((r) => r.stderr).join('\n'));
  for (const r of results) if (r.status !== 0) assert.match(r.stderr, /being written by another aspo shard/);
  const set = await openShardSet(out);
  const winners = results.flatMap((r, i) => (r.status === 0 ? [i === 0 ? 2 : 3] : []));
  assert.ok(winners.includes(Number(set.manifest.options.seed)), `the set's seed ${set.manifest.options.seed} is not a successful run's`);
});

/** Starts `aspo export`, SIGKILLs it once its staging folder holds `files` files, and returns whether it was killed. */
async function killMidway(args: string[], out: string, files: number): Promise<boolean> {
  const child = spawn(process.execPath, [CLI, 'export', '--db', db, ...args, '--out', out], { cwd: dir, stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let done = false;
  void exited.then(() => { done = true; });
  const staging = path.join(path.dirname(out), `.${path.basename(out)}.aspo-partial-${child.pid}`);
  while (!done) {
    const inside = existsSync(staging) ? readdirSync(staging, { recursive: true }).length : 0;
    if (inside >= files) {
      await new Promise((resolve) => setTimeout(resolve, 150)); // let it write a little
      child.kill('SIGKILL');
      await exited;
      return child.signalCode === 'SIGKILL'; // false when the export finished during the wait: nothing was killed
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return false;
}

const BIG = "SELECT i, repeat('x', 100) || i AS text FROM range(1500000) t(i)";

test('a killed export (kill -9) leaves nothing under the output name; the re-run clears its leftovers and writes a complete file', async () => {
  for (const [format, name] of [['arrow', 'big.arrow'], ['parquet', 'big.parquet'], ['jsonl', 'big.jsonl']] as const) {
    const out = path.join(dir, name);
    const killed = await killMidway(['--sql', BIG, '--format', format], out, 1);
    assert.ok(killed, `${format}: the export finished before it could be killed`);
    assert.equal(existsSync(out), false, `${format}: a partial ${name} appeared`);
    const again = aspo(dir, 'export', '--db', db, '--sql', BIG, '--format', format, '--out', out);
    assert.equal(again.status, 0, again.stderr);
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('aspo-partial')), [], 'a staging folder was left behind');
    if (format === 'arrow') assert.equal(tableFromIPC(readFileSync(out)).numRows, 1_500_000);
    else {
      const instance = await DuckDBInstance.create(':memory:');
      const connection = await instance.connect();
      const reader = format === 'parquet' ? 'read_parquet' : 'read_json';
      const n = (await connection.runAndReadAll(`SELECT count(*) FROM ${reader}('${out}')`)).getRowsJS()[0]![0];
      connection.closeSync();
      instance.closeSync();
      assert.equal(Number(n), 1_500_000, format);
    }
  }
});

test('a killed TRL export leaves no shard under the output folder; the re-run writes them all', async () => {
  const out = path.join(dir, 'trl');
  const killed = await killMidway(['--format', 'trl', '--rows-per-shard', '1'], out, 2);
  if (killed) assert.equal(existsSync(out), false, 'a partial TRL folder appeared');
  else rmSync(out, { recursive: true, force: true }); // a quiet machine can finish this small export before the kill
  const again = aspo(dir, 'export', '--db', db, '--format', 'trl', '--rows-per-shard', '1', '--out', out);
  assert.equal(again.status, 0, again.stderr);
  const pairs = await withStore(db, (store) => store.scalar<number>('SELECT count(*) FROM pairs'), { readOnly: true });
  assert.equal(readdirSync(out).length, pairs);
  assert.deepEqual(readdirSync(dir).filter((f) => f.includes('aspo-partial')), []);
});
