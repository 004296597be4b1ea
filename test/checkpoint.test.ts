import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdirSync, cpSync, rmSync } from 'node:fs';
import path from 'node:path';
import { initBackend, tf } from '../src/model/backend.js';
import { VisionLanguageModel, type ModelConfig } from '../src/model/model.js';
import { Tokenizer } from '../src/model/tokenizer.js';
import { AdamW } from '../src/train/optimizer.js';
import { hasCheckpoint, loadCheckpoint, loadModel, saveCheckpoint } from '../src/model/checkpoint.js';
import { ROOT, tempDir } from './support.js';

before(async () => {
  await initBackend('auto');
});

const tokenizer = Tokenizer.build(['A red circle.', 'A blue square.', 'Describe the image.']);
const CONFIG: ModelConfig = {
  vocabSize: tokenizer.vocabSize, width: 16, layers: 2, heads: 2, mlpRatio: 2, context: 4 + 16, imageSize: 8, patchSize: 4, channels: 3, stemChannels: 0,
};

/** A model whose optimizer has taken a few real steps, so moments are non-trivial. */
async function trainedState() {
  const model = VisionLanguageModel.init(CONFIG, 21);
  const optimizer = new AdamW(model.weights);
  const names = new Map(Object.entries(model.weights).map(([n, w]) => [w.name, n]));
  for (let step = 0; step < 3; step++) {
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => {
      const { logps, mask } = model.responseLogProbs({ images: null, promptIds: [[5, 6]], responseIds: [[7, 8, 9]] });
      return tf.neg(tf.sum(tf.mul(logps, mask))) as tf.Scalar;
    }), Object.values(model.weights));
    const byName = Object.fromEntries(Object.entries(grads).map(([k, g]) => [names.get(k)!, g]));
    optimizer.apply(byName, 1e-2);
    tf.dispose([value, ...Object.values(grads)]);
  }
  return { model, optimizer };
}

function bits(values: Float32Array): Uint32Array {
  return new Uint32Array(values.buffer, values.byteOffset, values.length);
}

test('save → load is bit-identical: weights, optimizer moments, tokenizer, config, trainer state', async () => {
  const dir = path.join(tempDir(), 'ckpt');
  const { model, optimizer } = await trainedState();
  const weights = await model.values();
  const state = await optimizer.state();
  await saveCheckpoint(dir, { config: CONFIG, tokenizer, weights, optimizer: state, trainer: { step: 3, note: 'x' } });
  const loaded = await loadCheckpoint(dir);
  assert.deepEqual(loaded.config, CONFIG);
  assert.deepEqual(loaded.tokenizer.vocab, tokenizer.vocab);
  assert.deepEqual(loaded.trainer, { step: 3, note: 'x' });
  assert.equal(loaded.optimizer!.step, 3);
  for (const name of Object.keys(weights)) {
    assert.deepEqual(bits(loaded.weights[name]!), bits(weights[name]!), name);
    assert.deepEqual(bits(loaded.optimizer!.m[name]!), bits(state.m[name]!), `m ${name}`);
    assert.deepEqual(bits(loaded.optimizer!.v[name]!), bits(state.v[name]!), `v ${name}`);
  }
  // the reloaded model computes exactly what the original does
  const { model: again } = await loadModel(dir);
  const batch = { images: null, promptIds: [[5]], responseIds: [[6, 7]] };
  const a = model.responseLogProbs(batch);
  const b = again.responseLogProbs(batch);
  assert.deepEqual(bits(a.logps.dataSync() as Float32Array), bits(b.logps.dataSync() as Float32Array));
  tf.dispose([a.logps, a.mask, b.logps, b.mask]);
  model.dispose();
  again.dispose();
  optimizer.dispose();
});

test('saving over a checkpoint replaces it and leaves no temporary folders', async () => {
  const parent = tempDir();
  const dir = path.join(parent, 'ckpt');
  const model = VisionLanguageModel.init(CONFIG, 1);
  await saveCheckpoint(dir, { config: CONFIG, tokenizer, weights: await model.values(), trainer: { step: 1 } });
  await saveCheckpoint(dir, { config: CONFIG, tokenizer, weights: await model.values(), trainer: { step: 2 } });
  assert.deepEqual((await loadCheckpoint(dir)).trainer, { step: 2 });
  assert.deepEqual(readdirSync(parent), ['ckpt']);
  model.dispose();
});

test('a folder that is incomplete or altered does not load', async () => {
  const parent = tempDir();
  const good = path.join(parent, 'good');
  const model = VisionLanguageModel.init(CONFIG, 1);
  await saveCheckpoint(good, { config: CONFIG, tokenizer, weights: await model.values() });
  model.dispose();

  const noManifest = path.join(parent, 'no-manifest');
  cpSync(good, noManifest, { recursive: true });
  rmSync(path.join(noManifest, 'manifest.json'));
  assert.equal(await hasCheckpoint(noManifest), false);
  await assert.rejects(loadCheckpoint(noManifest), /manifest.json is missing/);

  const flipped = path.join(parent, 'flipped');
  cpSync(good, flipped, { recursive: true });
  const bytes = readFileSync(path.join(flipped, 'weights.bin'));
  bytes[100] ^= 1;
  writeFileSync(path.join(flipped, 'weights.bin'), bytes);
  await assert.rejects(loadCheckpoint(flipped), /weights.bin does not match its sha256/);

  const truncated = path.join(parent, 'truncated');
  cpSync(good, truncated, { recursive: true });
  writeFileSync(path.join(truncated, 'optimizer.bin'), Buffer.alloc(8));
  const manifest = JSON.parse(readFileSync(path.join(truncated, 'manifest.json'), 'utf8'));
  assert.equal(manifest.files['optimizer.bin'], undefined); // saved without optimizer: not listed, so ignored
  assert.ok(await loadCheckpoint(truncated));

  const empty = path.join(parent, 'empty');
  mkdirSync(empty);
  await assert.rejects(loadCheckpoint(empty), /not a valid checkpoint/);
});

test('a save killed at a random moment never leaves a folder that loads as something else', async () => {
  const parent = tempDir();
  const dir = path.join(parent, 'ckpt');
  const script = path.join(parent, 'saver.mjs');
  const dist = path.join(ROOT, 'dist', 'src', 'model');
  // The child saves bigger and bigger checkpoints over `dir`, each tagged with its generation.
  writeFileSync(script, `
    import { initBackend } from ${JSON.stringify(path.join(dist, 'backend.js'))};
    import { VisionLanguageModel } from ${JSON.stringify(path.join(dist, 'model.js'))};
    import { Tokenizer } from ${JSON.stringify(path.join(dist, 'tokenizer.js'))};
    import { saveCheckpoint } from ${JSON.stringify(path.join(dist, 'checkpoint.js'))};
    await initBackend('cpu');
    const tokenizer = Tokenizer.build(['a b c']);
    const config = { vocabSize: tokenizer.vocabSize, width: 64, layers: 2, heads: 2, mlpRatio: 4, context: 40, imageSize: 16, patchSize: 4, channels: 3 };
    const weights = await VisionLanguageModel.init(config, 1).values();
    for (let generation = 0; ; generation++) {
      for (const w of Object.values(weights)) w.fill(generation);
      await saveCheckpoint(${JSON.stringify(dir)}, { config, tokenizer, weights, trainer: { generation } });
      if (generation === 0) process.stdout.write('saved\\n');
    }
  `);
  for (let attempt = 0; attempt < 3; attempt++) {
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    await new Promise((resolve) => setTimeout(resolve, 50 + 97 * attempt));
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));
    // Whatever is on disk: a folder that loads holds one whole generation, everything else is refused.
    for (const name of readdirSync(parent).filter((n) => n !== 'saver.mjs')) {
      const folder = path.join(parent, name);
      const loaded = await loadCheckpoint(folder).catch((error: Error) => error);
      if (loaded instanceof Error) {
        assert.match(loaded.message, /not a valid checkpoint/);
        assert.notEqual(name, 'ckpt', 'the target folder itself must never be half-written');
        continue;
      }
      const generation = loaded.trainer!.generation as number;
      for (const values of Object.values(loaded.weights)) assert.ok(values.every((v) => v === generation), `${name} mixes generations`);
    }
    assert.ok(existsSync(dir) || readdirSync(parent).some((n) => n.includes('.old-')), 'the last complete checkpoint vanished');
  }
});
