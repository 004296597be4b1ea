/**
 * Silent wrong values: a checkpoint with NaN weights and a loss that overflows float64 each give a clear error
 * instead of NaN or null with exit 0.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { initBackend } from '../../src/model/backend.js';
import { loadCheckpoint, saveCheckpoint } from '../../src/model/checkpoint.js';
import { VisionLanguageModel, type ModelConfig } from '../../src/model/model.js';
import { Tokenizer } from '../../src/model/tokenizer.js';
import { CLI, tempDir } from '../support.js';

before(async () => {
  await initBackend('auto');
});

test('a checkpoint whose weights hold NaN is refused on load, naming the weight; aspo score stops with that error', async () => {
  const tokenizer = Tokenizer.build(['A red circle.', 'A blue square.', 'Describe the image.']);
  const config: ModelConfig = {
    vocabSize: tokenizer.vocabSize, width: 16, layers: 1, heads: 2, mlpRatio: 2, context: 4 + 16, imageSize: 8, patchSize: 4, channels: 3, stemChannels: 0,
  };
  const model = VisionLanguageModel.init(config, 3);
  const weights = await model.values();
  const name = Object.keys(weights)[1]!;
  weights[name]![5] = Number.NaN;
  const dir = tempDir();
  const checkpoint = path.join(dir, 'diverged');
  await saveCheckpoint(checkpoint, { config, tokenizer, weights });
  await assert.rejects(loadCheckpoint(checkpoint), new RegExp(`weight ${name.replace(/[[\]().]/g, '\\$&')}\\[5\\] is NaN`));

  writeFileSync(path.join(dir, 'data.jsonl'), JSON.stringify({ prompt: 'Describe the image.', chosen: 'A red circle.', rejected: 'A blue square.' }));
  const db = path.join(dir, 'aspo.duckdb');
  for (const args of [['ingest', path.join(dir, 'data.jsonl')], ['segment']]) {
    assert.equal(spawnSync(process.execPath, [CLI, ...args, '--db', db], { encoding: 'utf8' }).status, 0);
  }
  const score = spawnSync(process.execPath, [CLI, 'score', '--db', db, '--ref', checkpoint, '--backend', 'cpu'], { encoding: 'utf8' });
  assert.notEqual(score.status, 0);
  assert.match(score.stderr, /is NaN \(weights\.bin\)/);
});

test('aspo loss: inputs that overflow float64 give an error naming the field, exit 1 (not "loss": null)', () => {
  const cases = [
    { alpha: 0, chosen: { policyLogps: [-1e308, -1e308], refLogps: [0, 0], sentenceIds: [0, 0] }, rejected: { policyLogps: [0], refLogps: [0] } },
    { alpha: 0, chosen: { policyLogps: [-1.5, -0.5], refLogps: [-1, -1], sentenceIds: [0, 0] }, rejected: { policyLogps: [-2], refLogps: [-1] } },
  ];
  const result = spawnSync(process.execPath, [CLI, 'loss'], { input: cases.map((c) => JSON.stringify(c)).join('\n'), encoding: 'utf8' });
  assert.equal(result.status, 1);
  const [overflow, fine] = result.stdout.trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
  assert.equal(overflow!.line, 1);
  assert.match(String(overflow!.error), /^(loss|margin) is -?Infinity: the inputs overflow float64/);
  assert.equal(typeof fine!.loss, 'number');
  assert.ok(Number.isFinite(fine!.loss));
});
