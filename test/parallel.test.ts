import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { initBackend } from '../src/model/backend.js';
import { combineShards, GradientWorkers, shardBatch, type ShardGradient } from '../src/train/parallel.js';
import { encodePromptResponse } from '../src/model/encode.js';
import { PixelCache } from '../src/model/images.js';
import { batchOf, DEFAULT_SFT_OPTIONS, readSftData, shardGradient, SftTrainer, type SftOptions } from '../src/train/sft.js';
import { Tokenizer } from '../src/model/tokenizer.js';
import { VisionLanguageModel } from '../src/model/model.js';
import { writeShapesDataset } from './model-fixture.js';
import { tempDir } from './support.js';

let dataDir: string;
let backend: string;

before(async () => {
  backend = await initBackend('auto');
  dataDir = tempDir();
  await writeShapesDataset(dataDir, 2);
});

function tinyOptions(out: string, overrides: Partial<SftOptions> = {}): SftOptions {
  return {
    ...DEFAULT_SFT_OPTIONS,
    data: dataDir, out, batchSize: 7, lr: 1e-2, warmupSteps: 2, evalEvery: 0, saveEvery: 0, logEvery: 5, steps: 4,
    model: { ...DEFAULT_SFT_OPTIONS.model, width: 32, layers: 1, heads: 2, mlpRatio: 2, context: 16 + 12, imageSize: 64, patchSize: 16, stemChannels: 0 },
    ...overrides,
  };
}

function maxAbsDifference(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

test('shards: rows split whole and in order, never an empty shard', () => {
  const batch = { images: [null, null, null, null, null], promptIds: [[1], [2], [3], [4], [5]], responseIds: [[1], [1, 2], [1], [1, 2, 3], [1]] };
  assert.deepEqual(shardBatch(batch, 2).map((s) => s.promptIds.flat()), [[1, 2], [3, 4, 5]]);
  assert.deepEqual(shardBatch(batch, 3).map((s) => s.promptIds.flat()), [[1], [2, 3], [4, 5]]);
  assert.deepEqual(shardBatch(batch, 9).map((s) => s.promptIds.flat()), [[1], [2], [3], [4], [5]]);
  assert.deepEqual(shardBatch(batch, 1)[0], batch);
});

test('combining shards weighs each by its tokens: a hand-worked example', () => {
  const shards: ShardGradient[] = [
    { grads: { w: Float32Array.of(1, 2) }, loss: 3, count: 1 },
    { grads: { w: Float32Array.of(4, -2), b: Float32Array.of(8) }, loss: 1, count: 3 },
  ];
  const combined = combineShards(shards);
  assert.equal(combined.count, 4);
  assert.equal(combined.loss, 0.25 * 3 + 0.75 * 1);
  assert.deepEqual([...combined.grads.w!], [0.25 * 1 + 0.75 * 4, 0.25 * 2 + 0.75 * -2]);
  // a weight only one shard has a gradient for counts as zero in the others
  assert.deepEqual([...combined.grads.b!], [0.75 * 8]);
});

test('the gradient combined from shards equals the gradient of the whole batch', async () => {
  const data = await readSftData(dataDir);
  const tokenizer = Tokenizer.build(data.train.flatMap((e) => [e.prompt, e.response]), { vocabSize: 256 });
  const options = tinyOptions('unused');
  const model = VisionLanguageModel.init({ ...options.model, vocabSize: tokenizer.vocabSize }, 3);
  const images = await new PixelCache().all(data.train.map((e) => e.image), options.model.imageSize);
  const rows = data.train.slice(0, 7).map((e) => ({ image: e.image, ...encodePromptResponse(tokenizer, e.prompt, e.response) }));
  const batch = batchOf(rows, images);
  const whole = await shardGradient(model, batch);
  for (const count of [2, 3]) {
    const combined = combineShards(await Promise.all(shardBatch(batch, count).map((s) => shardGradient(model, s))));
    assert.ok(Math.abs(combined.loss - whole.loss) < 1e-5 * whole.loss, `${count} shards: loss ${combined.loss} vs ${whole.loss}`);
    for (const [name, g] of Object.entries(whole.grads)) {
      const scale = Math.max(...g.map(Math.abs));
      assert.ok(maxAbsDifference(combined.grads[name]!, g) <= 1e-4 * scale + 1e-7, `${count} shards: ${name}`);
    }
  }
  model.dispose();
});

test('training with a gradient worker follows the single-thread run, and is deterministic', async () => {
  const data = await readSftData(dataDir);
  const run = async (workers: number) => {
    const trainer = await SftTrainer.create(tinyOptions(path.join(tempDir(), 'ckpt')), { train: data.train }, 'run');
    await trainer.useWorkers(workers, backend);
    const losses: number[] = [];
    while (trainer.step < trainer.totalSteps) losses.push((await trainer.trainStep()).loss);
    const weights = await trainer.model.values();
    trainer.dispose();
    return { losses, weights };
  };
  const single = await run(0);
  const parallel = await run(1);
  const again = await run(1);
  assert.ok(single.losses.at(-1)! < single.losses[0]!, 'the loss falls');
  single.losses.forEach((loss, i) => assert.ok(Math.abs(parallel.losses[i]! - loss) < 1e-4 * loss, `step ${i}: ${parallel.losses[i]} vs ${loss}`));
  for (const [name, w] of Object.entries(single.weights)) {
    assert.ok(maxAbsDifference(parallel.weights[name]!, w) < 1e-4, name);
    assert.deepEqual(new Uint32Array(again.weights[name]!.buffer), new Uint32Array(parallel.weights[name]!.buffer), `${name} is reproducible`);
  }
});

test('a worker that fails reports why, naming the weight', async () => {
  const workers = await GradientWorkers.start(1, { config: { ...tinyOptions('unused').model, vocabSize: 64 }, backend });
  try {
    const shard = { images: [null], promptIds: [[5]], responseIds: [[6, 7]] };
    const good = VisionLanguageModel.init({ ...tinyOptions('unused').model, vocabSize: 64 }, 1);
    const weights = await good.values();
    good.dispose();
    const [result] = await workers.gradients(weights, [shard]);
    assert.ok(Number.isFinite(result!.loss) && result!.count === 3);
    const { [Object.keys(weights)[0]!]: dropped, ...missing } = weights;
    assert.ok(dropped);
    await assert.rejects(workers.gradients(missing, [shard]), new RegExp(`gradient worker: weights for ${Object.keys(weights)[0]} are missing`));
  } finally {
    await workers.close();
  }
});

test('workers that cannot load the backend fail to start, with the reason, and leave no thread behind', async () => {
  const config = { ...tinyOptions('unused').model, vocabSize: 64 };
  await assert.rejects(GradientWorkers.start(2, { config, backend: 'no-such-backend' }), /gradient worker could not start: unknown TensorFlow.js backend "no-such-backend"/);
});
