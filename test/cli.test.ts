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
