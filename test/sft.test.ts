import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { initBackend } from '../src/model/backend.js';
import {
  batchIndices, DEFAULT_SFT_OPTIONS, learningRate, readEvalFile, readSftData, readSftFile, runSft, SftTrainer, type SftOptions,
} from '../src/train/sft.js';
import { MemoryMetrics } from '../src/train/metrics.js';
import { withStore } from '../src/store/store.js';
import { writeShapesDataset } from './model-fixture.js';
import { CLI, tempDir } from './support.js';

let dataDir: string;

before(async () => {
  await initBackend('auto');
  dataDir = tempDir();
  await writeShapesDataset(dataDir, 2);
});

/** Tiny model: 16 visual tokens of the 64×64 fixture images, 12 text positions. */
function tinyOptions(out: string, overrides: Partial<SftOptions> = {}): SftOptions {
  return {
    ...DEFAULT_SFT_OPTIONS,
    data: dataDir, out, batchSize: 12, lr: 1e-2, warmupSteps: 5, evalEvery: 0, saveEvery: 0, logEvery: 5,
    model: {
      ...DEFAULT_SFT_OPTIONS.model, width: 32, layers: 1, heads: 2, mlpRatio: 2, context: 16 + 12, imageSize: 64, patchSize: 16, stemChannels: 0,
    },
    ...overrides,
  };
}

test('SFT on the shapes world learns in seconds: loss falls, held-out sentence accuracy well above chance', async () => {
  const out = path.join(tempDir(), 'ckpt');
  const data = await readSftData(dataDir);
  assert.equal(data.train.length, 24);
  assert.equal(data.eval?.length, 12);
  const trainer = await SftTrainer.create(tinyOptions(out, { steps: 40 }), data);
  const metrics = new MemoryMetrics();
  const result = await runSft(trainer, { metrics });
  const initial = metrics.rows.find((r) => r.split === 'eval' && r.name === 'sentence_accuracy' && r.step === 0);
  const losses = metrics.series('train', 'loss');
  assert.ok(losses.at(-1)! < 0.5 * losses[0]!, `loss ${losses[0]} → ${losses.at(-1)}`);
  assert.ok(initial, 'evaluated before training');
  assert.equal(result.eval!.probes, 24);
  assert.ok(result.eval!.sentenceAccuracy >= 0.7, `held-out sentence accuracy ${result.eval!.sentenceAccuracy}`);
  assert.ok(metrics.series('train', 'tokens_per_s').every((v) => v > 0));
  assert.equal(metrics.status, 'finished');
  trainer.dispose();
});

test('held-out accuracy is broken down by probe kind when the eval file names the kinds', async () => {
  // the fixture's probes change the colour (first) or the shape (second); label them so
  const evalFile = path.join(tempDir(), 'eval.jsonl');
  const labelled = readFileSync(path.join(dataDir, 'eval.jsonl'), 'utf8').trim().split('\n').map((line) => {
    const row = JSON.parse(line) as { image: string; probes: Array<Record<string, string>> };
    row.image = path.join(dataDir, row.image);
    row.probes[0]!.kind = 'colour';
    row.probes[1]!.kind = 'shape';
    return JSON.stringify(row);
  });
  writeFileSync(evalFile, labelled.join('\n') + '\n');
  const data = await readSftData(dataDir, evalFile);
  assert.deepEqual(data.eval![0]!.probes.map((p) => p.kind), ['colour', 'shape']);
  const trainer = await SftTrainer.create(tinyOptions(path.join(tempDir(), 'ckpt'), { steps: 10, eval: evalFile }), data);
  const metrics = new MemoryMetrics();
  const result = await runSft(trainer, { metrics });
  const { byKind, sentenceAccuracy, probes } = result.eval!;
  assert.deepEqual(Object.keys(byKind), ['colour', 'shape']);
  assert.equal(byKind.colour!.probes, 12);
  assert.equal(byKind.shape!.probes, 12);
  // every probe has a kind here, so the overall figure is the probe-weighted mean of the kinds'
  const weighted = (byKind.colour!.accuracy * 12 + byKind.shape!.accuracy * 12) / probes;
  assert.ok(Math.abs(weighted - sentenceAccuracy) < 1e-12, `${weighted} vs ${sentenceAccuracy}`);
  const logged = metrics.rows.filter((r) => r.split === 'eval' && r.step === 10 && r.name.startsWith('sentence_accuracy.'));
  assert.deepEqual(logged.map((r) => [r.name, r.value]).sort(),
    [['sentence_accuracy.colour', byKind.colour!.accuracy], ['sentence_accuracy.shape', byKind.shape!.accuracy]]);
  // without kinds (the fixture's own file) there is no breakdown
  const plain = await SftTrainer.create(tinyOptions(path.join(tempDir(), 'ckpt')), await readSftData(dataDir));
  assert.deepEqual((await plain.evaluate())!.byKind, {});
  trainer.dispose();
  plain.dispose();
});

test('resuming from a checkpoint ends with exactly the weights of an uninterrupted run', async () => {
  const data = await readSftData(dataDir);
  const dir = tempDir();
  // batch 5 of 24 rows: 4 steps per epoch, so the run crosses an epoch boundary after the restart
  const options = (out: string) => tinyOptions(out, { steps: 6, batchSize: 5, data: dataDir, eval: undefined });
  const straight = await SftTrainer.create(options(path.join(dir, 'a')), { train: data.train }, 'run-a');
  for (let i = 0; i < 6; i++) await straight.trainStep();
  const expected = await straight.model.values();
  straight.dispose();

  const first = await SftTrainer.create(options(path.join(dir, 'b')), { train: data.train }, 'run-b');
  for (let i = 0; i < 3; i++) await first.trainStep();
  await first.save();
  first.dispose();
  const resumed = await SftTrainer.resume(path.join(dir, 'b'), { train: data.train });
  assert.equal(resumed.step, 3);
  assert.equal(resumed.runId, 'run-b');
  while (resumed.step < 6) await resumed.trainStep();
  const actual = await resumed.model.values();
  for (const name of Object.keys(expected)) {
    assert.deepEqual(new Uint32Array(actual[name]!.buffer), new Uint32Array(expected[name]!.buffer), name);
  }
  resumed.dispose();
});

test('data order: each epoch visits every row once, in an order fixed by the seed', () => {
  // 11 rows in batches of 2: 5 steps per epoch, one row left out of each epoch
  const epoch = (e: number, seed: number) => [0, 1, 2, 3, 4].flatMap((k) => batchIndices(e * 5 + k, 11, 2, seed));
  for (const e of [0, 1]) {
    const rows = epoch(e, 7);
    assert.equal(new Set(rows).size, 10);
    assert.ok(rows.every((i) => i >= 0 && i < 11));
  }
  assert.deepEqual(epoch(0, 7), epoch(0, 7));
  assert.notDeepEqual(epoch(0, 7), epoch(1, 7));
  assert.notDeepEqual(epoch(0, 7), epoch(0, 8));
});

test('learning rate: linear warm-up to the peak, cosine down to the floor', () => {
  const options = { lr: 1, warmupSteps: 10, minLrRatio: 0.1 };
  assert.equal(learningRate(0, 100, options), 0.1);
  assert.equal(learningRate(9, 100, options), 1);
  assert.ok(Math.abs(learningRate(55, 100, options) - 0.55) < 1e-12); // halfway through the decay: (1 + 0.1) / 2
  assert.ok(Math.abs(learningRate(100, 100, options) - 0.1) < 1e-12);
});

test('bad data files give errors naming the file, line and field', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'sft.jsonl');
  writeFileSync(file, '{"image": "a.png", "prompt": "Hi.", "response": "Yo."}\n{"image": "a.png", "prompt": 3, "response": "x"}\n');
  await assert.rejects(readSftFile(file), /sft\.jsonl:2: field "prompt" must be a string/);
  writeFileSync(file, '{"prompt": "Hi."}\n');
  await assert.rejects(readSftFile(file), /sft\.jsonl:1: field "response" is missing/);
  writeFileSync(file, 'not json\n');
  await assert.rejects(readSftFile(file), /sft\.jsonl:1: not JSON/);
  const evalFile = path.join(dir, 'eval.jsonl');
  writeFileSync(evalFile, '{"image": null, "prompt": "Hi.", "response": "Yo.", "probes": [{"true": "Yo."}]}\n');
  await assert.rejects(readEvalFile(evalFile), /eval\.jsonl:1: field "false" is missing/);
  writeFileSync(evalFile, '{"image": null, "prompt": "Hi.", "response": "Yo.", "probes": [{"true": "Yo.", "false": "No.", "kind": 3}]}\n');
  await assert.rejects(readEvalFile(evalFile), /eval\.jsonl:1: field "kind" must be a string/);
  const rows = await readSftFile(path.join(dataDir, 'sft.jsonl'));
  assert.equal(rows[0]!.image, path.join(dataDir, 'images', path.basename(rows[0]!.image!)));
});

test('aspo train --objective sft writes a checkpoint, runs and train_metrics rows, and a JSON summary', () => {
  const dir = tempDir();
  const out = path.join(dir, 'ckpt');
  const db = path.join(dir, 'aspo.duckdb');
  const args = [CLI, 'train', '--objective', 'sft', '--data', dataDir, '--out', out, '--db', db, '--steps', '4',
    '--batch-size', '8', '--width', '16', '--layers', '1', '--heads', '2', '--context', '28', '--stem-channels', '4',
    '--image-heads', '1', '--log-every', '2', '--backend', 'wasm'];
  const run = spawnSync(process.execPath, args, { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stderr, /backend wasm/);
  const summary = JSON.parse(run.stdout.trim());
  assert.equal(summary.steps, 4);
  assert.equal(summary.eval.probes, 24);

  const again = spawnSync(process.execPath, args, { encoding: 'utf8' });
  assert.equal(again.status, 2);
  assert.match(again.stderr, /already holds a checkpoint; pass --resume/);

  return withStore(db, async (store) => {
    const runs = await store.all<{ run_id: string; objective: string; status: string; steps: number }>(
      "SELECT run_id, objective, status, config->>'$.batchSize' AS batch FROM runs");
    assert.equal(runs.length, 1);
    assert.equal(runs[0]!.run_id, summary.runId);
    assert.equal(runs[0]!.status, 'finished');
    assert.equal(await store.scalar("SELECT config->>'$.model.stemChannels' FROM runs"), '4');
    assert.equal(await store.scalar("SELECT config->>'$.model.imageHeads' FROM runs"), '1');
    const steps = await store.all<{ step: number }>(
      "SELECT step FROM train_metrics WHERE split = 'train' AND name = 'loss' ORDER BY step");
    assert.deepEqual(steps.map((r) => r.step), [2, 4]);
    const evalRows = await store.scalar<number>("SELECT count(*) FROM train_metrics WHERE split = 'eval' AND name = 'sentence_accuracy'");
    assert.equal(evalRows, 2); // before training and at the end
  }, { readOnly: true });
});

test('aspo train explains what is missing', () => {
  const noObjective = spawnSync(process.execPath, [CLI, 'train', '--data', 'x'], { encoding: 'utf8' });
  assert.equal(noObjective.status, 2);
  assert.match(noObjective.stderr, /give --objective/);
  const unknown = spawnSync(process.execPath, [CLI, 'train', '--objective', 'ppo'], { encoding: 'utf8' });
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /--objective must be one of sft/);
});
