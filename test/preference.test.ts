import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { initBackend, tf } from '../src/model/backend.js';
import { DEFAULT_SFT_OPTIONS, readSftData, runSft, SftTrainer } from '../src/train/sft.js';
import { encodePromptResponse } from '../src/model/encode.js';
import { addMetricSums, lossConfig, metricsOfSums, type AspoLossConfig } from '../src/train/loss.js';
import {
  collatePairs, DEFAULT_PREFERENCE_OPTIONS, PreferenceTrainer, preferenceShardGradient, runPreference, type PreferenceObjective, type PreferenceOptions,
} from '../src/train/preference.js';
import { combineShards, evenSlices } from '../src/train/parallel.js';
import { VisionLanguageModel } from '../src/model/model.js';
import { loadCheckpoint, loadModel, type LoadedModel } from '../src/model/checkpoint.js';
import { loadImagePixels } from '../src/model/images.js';
import { MemoryMetrics } from '../src/train/metrics.js';
import { encodeWithSentences } from '../src/segment/align.js';
import { openShardSet } from '../src/shard/read.js';
import { writeImagesFile, writeManifest, writeShardFile } from '../src/shard/write.js';
import { imagesFileName, shardFileName } from '../src/shard/columns.js';
import type { ShardFile, ShardManifest, ShardPair, ShardSplit } from '../src/shard/types.js';
import { withStore } from '../src/store/store.js';
import { sha256Hex } from '../src/util/hash.js';
import { COLOURS, renderShape, SHAPES, writeShapesDataset } from './model-fixture.js';
import { CLI, tempDir } from './support.js';

const PROMPT = 'Describe the image.';
/** Similarity of a true and of a hallucinated sentence (the world's truth, as an oracle scorer would give). */
const TRUE_SIMILARITY = 0.8;
const FALSE_SIMILARITY = 0.2;

let dataDir: string;
let refDir: string;
let ref: LoadedModel;
/** Shard sets of the same pairs: without reference log-probs, and with them stored for `ref`. */
let plainShards: string;
let storedShards: string;

interface WorldPair { pair: Omit<ShardPair, 'chosenRefLogps' | 'rejectedRefLogps'>; image: Buffer; split: ShardSplit }

/**
 * Preference pairs of the shapes world: chosen = the true caption, then a second sentence that is true for half
 * the pairs and hallucinated (another colour) for the rest; rejected = a caption with the colour and shape wrong.
 */
async function worldPairs(reference: LoadedModel): Promise<WorldPair[]> {
  const colours = Object.keys(COLOURS);
  const out: WorldPair[] = [];
  let n = 0;
  for (const colour of colours) {
    for (const shape of SHAPES) {
      const image = await renderShape(shape, colour);
      const imageId = sha256Hex(image);
      for (const noisy of [false, true]) {
        const other = colours[(colours.indexOf(colour) + 1 + (n % 3)) % colours.length]!;
        const chosen = `A ${colour} ${shape}. A ${noisy ? other : colour} ${shape}.`;
        const rejected = `A ${other} ${SHAPES[(SHAPES.indexOf(shape) + 1) % SHAPES.length]}.`;
        const c = encodeWithSentences(reference.tokenizer, PROMPT, chosen);
        const r = encodeWithSentences(reference.tokenizer, PROMPT, rejected);
        const { promptIds, responseIds: chosenIds } = encodePromptResponse(reference.tokenizer, PROMPT, chosen);
        const rejectedIds = encodePromptResponse(reference.tokenizer, PROMPT, rejected).responseIds;
        out.push({
          image,
          split: n % 6 === 5 ? 'eval' : 'train',
          pair: {
            pairId: `p${String(n).padStart(3, '0')}`, imageId, promptIds, chosenIds, rejectedIds,
            chosenSentenceIds: c.sentenceIds.slice(promptIds.length),
            rejectedSentenceIds: r.sentenceIds.slice(promptIds.length),
            chosenSimilarity: [TRUE_SIMILARITY, noisy ? FALSE_SIMILARITY : TRUE_SIMILARITY],
            truncated: false,
          },
        });
        n++;
      }
    }
  }
  return out;
}

/** Per-token log-probs (EOS included) of one response under the reference, computed alone (no batch padding). */
function referenceLogps(reference: LoadedModel, image: Float32Array, promptIds: number[], responseIds: number[]): number[] {
  return tf.tidy(() => {
    const images = tf.tensor4d(image, [1, reference.model.config.imageSize, reference.model.config.imageSize, 3]);
    return Array.from(reference.model.responseLogProbs({ images, promptIds: [promptIds], responseIds: [responseIds] }).logps.dataSync());
  });
}

/** Writes a real shard set (Arrow files, images file, manifest) of the world's pairs. */
async function writeWorldShards(dir: string, reference: LoadedModel, options: { storeRefs: boolean; similarity: boolean }): Promise<string> {
  await mkdir(dir, { recursive: true });
  const pairs = await worldPairs(reference);
  const shards: ShardFile[] = [];
  for (const split of ['train', 'eval'] as const) {
    const rows: ShardPair[] = [];
    for (const { pair, image } of pairs.filter((p) => p.split === split)) {
      const pixels = options.storeRefs ? await loadImagePixels(image, reference.model.config.imageSize) : undefined;
      rows.push({
        ...pair,
        chosenSimilarity: options.similarity ? pair.chosenSimilarity : [],
        chosenRefLogps: pixels ? referenceLogps(reference, pixels, pair.promptIds, pair.chosenIds) : null,
        rejectedRefLogps: pixels ? referenceLogps(reference, pixels, pair.promptIds, pair.rejectedIds) : null,
      });
    }
    const file = shardFileName(split, 0, 'arrow');
    shards.push({ file, split, pairs: rows.length, sha256: await writeShardFile(path.join(dir, file), rows, 'arrow') });
  }
  const images = [...new Map(pairs.map((p) => [p.pair.imageId!, p.image])).entries()].map(([imageId, bytes]) => ({ imageId, bytes }));
  const imagesFile = imagesFileName('arrow');
  const manifest: ShardManifest = {
    format: 'aspo-shards/1',
    tokenizer: reference.modelId,
    referenceModel: options.storeRefs ? reference.modelId : null,
    similarityModel: options.similarity ? 'oracle' : null,
    options: {},
    counts: { train: shards[0]!.pairs, eval: shards[1]!.pairs, dropped: 0, truncated: 0, images: images.length },
    fingerprint: `test-${options.storeRefs}-${options.similarity}`,
    shards,
    images: { file: imagesFile, split: 'train', pairs: images.length, sha256: await writeImagesFile(path.join(dir, imagesFile), images, 'arrow') },
    createdAt: new Date().toISOString(),
  };
  await writeManifest(dir, manifest);
  return dir;
}

before(async () => {
  await initBackend('auto');
  dataDir = tempDir();
  await writeShapesDataset(dataDir, 1);
  refDir = path.join(tempDir(), 'sft');
  // A tiny SFT reference: 16 visual tokens, 16 text positions (two-sentence responses fit).
  const sft = await SftTrainer.create({
    ...DEFAULT_SFT_OPTIONS, data: dataDir, out: refDir, steps: 30, batchSize: 12, lr: 1e-2, warmupSteps: 5,
    evalEvery: 0, saveEvery: 0, logEvery: 10,
    model: { ...DEFAULT_SFT_OPTIONS.model, width: 32, layers: 1, heads: 2, mlpRatio: 2, context: 16 + 16 },
  }, await readSftData(dataDir));
  await runSft(sft);
  sft.dispose();
  ref = await loadModel(refDir);
  const shardRoot = tempDir();
  plainShards = await writeWorldShards(path.join(shardRoot, 'plain'), ref, { storeRefs: false, similarity: true });
  storedShards = await writeWorldShards(path.join(shardRoot, 'stored'), ref, { storeRefs: true, similarity: true });
});

function options(objective: PreferenceObjective, overrides: Partial<PreferenceOptions> = {}, loss: Partial<AspoLossConfig> = {}): PreferenceOptions {
  return {
    ...DEFAULT_PREFERENCE_OPTIONS,
    objective, shards: plainShards, ref: refDir, out: path.join(tempDir(), 'out'),
    loss: lossConfig({ lossType: objective, ...loss }),
    batchSize: 8, lr: 3e-3, warmupSteps: 2, evalEvery: 0, saveEvery: 0, logEvery: 2,
    ...overrides,
  };
}

async function trainer(opts: PreferenceOptions, runId?: string): Promise<PreferenceTrainer> {
  return PreferenceTrainer.create(opts, await openShardSet(opts.shards), runId);
}

async function trainPairs(dir: string): Promise<ShardPair[]> {
  const pairs: ShardPair[] = [];
  for await (const pair of (await openShardSet(dir)).pairs('train')) pairs.push(pair);
  return pairs;
}

test('DPO on the shapes world raises reward accuracy on the training pairs and lowers the loss', async () => {
  const t = await trainer(options('dpo', { steps: 12, probes: path.join(dataDir, 'eval.jsonl'), evalEvery: 6 }));
  assert.equal(t.refSource, 'model');
  assert.equal(t.trainPairs, 20);
  const pairs = await trainPairs(plainShards);
  const before = await t.lossOf(pairs);
  // The policy starts as the reference: every margin is 0, the loss log 2.
  assert.ok(Math.abs(before.loss - Math.log(2)) < 1e-6, `initial loss ${before.loss}`);
  assert.equal(before['rewards/margins'], 0);
  const metrics = new MemoryMetrics();
  const result = await runPreference(t, { metrics });
  const after = await t.lossOf(pairs);
  assert.ok(after['rewards/accuracies'] >= 0.8, `reward accuracy after training ${after['rewards/accuracies']}`);
  assert.ok(after.loss < 0.6, `loss after training ${after.loss}`);
  assert.ok(after['rewards/chosen'] > after['rewards/rejected']);
  assert.equal(result.steps, 12);
  assert.equal(metrics.status, 'finished');
  assert.deepEqual(metrics.rows.filter((r) => r.split === 'train' && r.name === 'loss').map((r) => r.step), [2, 4, 6, 8, 10, 12]);
  for (const name of ['rewards/margins', 'rewards/accuracies', 'logps/chosen', 'logps/rejected', 'lr', 'grad_norm', 'pairs_per_s']) {
    assert.equal(metrics.series('train', name).length, 6, name);
  }
  assert.deepEqual([...new Set(metrics.rows.filter((r) => r.split === 'eval').map((r) => r.step))], [0, 6, 12]);
  assert.equal(metrics.series('eval', 'sentence_accuracy').length, 3);
  assert.equal(metrics.series('train', 'aspo/weights_mean').length, 0);
  assert.equal((metrics.run!.config.loss as AspoLossConfig).lossType, 'dpo');
  assert.equal(metrics.run!.config.refSource, 'model');
  t.dispose();
});

test('ASPO with scale 0 makes the DPO update; with scale 1 a different one', async () => {
  const start = await ref.model.values();
  const step = async (objective: PreferenceObjective, loss: Partial<AspoLossConfig>) => {
    const t = await trainer(options(objective, { steps: 2, weightDecay: 0 }, loss));
    await t.trainStep(); // the policy moves off the reference: log-ratios are no longer all 0
    const stats = await t.trainStep();
    const values = await t.policy.values();
    t.dispose();
    const update = Object.fromEntries(Object.entries(values).map(([name, v]) => [name, v.map((x, i) => x - start[name]![i]!)]));
    return { metrics: stats.metrics, update, gradNorm: stats.gradNorm };
  };
  const norm = (a: Record<string, Float32Array>, b?: Record<string, Float32Array>) =>
    Math.sqrt(Object.keys(a).reduce((sum, name) => sum + a[name]!.reduce((s, x, i) => s + (x - (b ? b[name]![i]! : 0)) ** 2, 0), 0));
  const dpo = await step('dpo', {});
  const reduced = await step('aspo', { scale: 0 });
  const weighted = await step('aspo', { scale: 1 });
  for (const name of ['loss', 'rewards/chosen', 'rewards/rejected', 'logps/chosen'] as const) {
    assert.ok(Math.abs(dpo.metrics[name] - reduced.metrics[name]) < 1e-6, `${name}: ${dpo.metrics[name]} vs ${reduced.metrics[name]}`);
  }
  assert.ok(Math.abs(dpo.gradNorm - reduced.gradNorm) < 1e-5 * dpo.gradNorm, `gradient norm ${dpo.gradNorm} vs ${reduced.gradNorm}`);
  // Adam divides by the gradient's own scale, so weights whose gradient is at rounding level move by ±lr either way:
  // compare the updates as vectors.
  const reducedGap = norm(dpo.update, reduced.update) / norm(dpo.update);
  const weightedGap = norm(dpo.update, weighted.update) / norm(dpo.update);
  assert.ok(reducedGap < 1e-3, `scale 0: update differs from DPO's by ${reducedGap} of its norm`);
  assert.ok(weightedGap > 1e-2, `scale 1: update differs from DPO's by only ${weightedGap} of its norm`);
});

function maxAbsDifference(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

test('the preference gradient combined from shards (weighted by pairs) equals the gradient of the whole batch', async () => {
  const pairs = (await trainPairs(plainShards)).slice(0, 7);
  const images = new Map<string, Float32Array>();
  for (const { pair, image } of await worldPairs(ref)) images.set(pair.imageId!, await loadImagePixels(image, ref.model.config.imageSize));
  const shard = (part: ShardPair[]) => ({
    host: collatePairs(part, { similarity: true, storedRefs: false }), pixels: part.map((p) => images.get(p.imageId!)!),
  });
  // a policy off the reference, so that margins, weights and gradients are not those of the first step
  const policy = VisionLanguageModel.fromValues(ref.model.config, Object.fromEntries(Object.entries(await ref.model.values())
    .map(([name, w]) => [name, w.map((x, i) => x + 0.02 * Math.sin(i + name.length))])));
  for (const loss of [lossConfig({ lossType: 'dpo' }), lossConfig({ lossType: 'aspo', alpha: 0.5 }), lossConfig({ lossType: 'aspo', normalize: 'mass', detachWeights: false })]) {
    const whole = await preferenceShardGradient(policy, ref.model, shard(pairs), loss);
    assert.equal(whole.count, 7);
    for (const count of [2, 3]) {
      const parts = await Promise.all(evenSlices(pairs, count).map((part) => preferenceShardGradient(policy, ref.model, shard(part), loss)));
      assert.deepEqual(parts.map((p) => p.count), count === 2 ? [3, 4] : [2, 2, 3]);
      const combined = combineShards(parts);
      const what = `${loss.lossType}/${loss.normalize}, ${count} shards`;
      assert.ok(Math.abs(combined.loss - whole.loss) < 1e-5 * whole.loss, `${what}: loss ${combined.loss} vs ${whole.loss}`);
      for (const [name, g] of Object.entries(whole.grads)) {
        const scale = Math.max(...g.map(Math.abs));
        assert.ok(scale > 0, `${name} has a gradient`);
        assert.ok(maxAbsDifference(combined.grads[name]!, g) <= 1e-4 * scale + 1e-7, `${what}: ${name}`);
      }
      const merged = metricsOfSums(addMetricSums(parts.map((p) => p.metrics!)));
      for (const [name, value] of Object.entries(metricsOfSums(whole.metrics!))) {
        assert.ok(Math.abs((merged as Record<string, number>)[name]! - value) < 1e-4 * Math.max(1, Math.abs(value)), `${what}: ${name}`);
      }
    }
  }
  policy.dispose();
});

test('preference training with a gradient worker follows the single-thread run, and is bit-reproducible', async () => {
  for (const [objective, shards] of [['dpo', plainShards], ['aspo', storedShards]] as const) {
    const run = async (workers: number) => {
      const t = await trainer(options(objective, { shards, steps: 4 }, objective === 'aspo' ? { alpha: 0.5 } : {}), 'run');
      await t.useWorkers(workers, tf.getBackend());
      assert.equal(t.threads, 1 + workers);
      const steps = [];
      while (t.step < t.totalSteps) steps.push(await t.trainStep());
      const weights = await t.policy.values();
      t.dispose();
      return { steps, weights };
    };
    const single = await run(0);
    const parallel = await run(1);
    const again = await run(1);
    assert.ok(single.steps.at(-1)!.metrics.loss < single.steps[0]!.metrics.loss, `${objective}: the loss falls`);
    single.steps.forEach((s, i) => {
      const p = parallel.steps[i]!;
      assert.equal(p.pairs, s.pairs);
      for (const [name, value] of Object.entries(s.metrics)) {
        assert.ok(Math.abs((p.metrics as Record<string, number>)[name]! - value) < 1e-4 * Math.max(1, Math.abs(value)), `${objective} step ${i}: ${name}`);
      }
      assert.ok(Math.abs(p.gradNorm - s.gradNorm) < 1e-4 * s.gradNorm, `${objective} step ${i}: gradient norm ${p.gradNorm} vs ${s.gradNorm}`);
    });
    // Adam divides by each gradient's own scale, so a weight whose gradient is at rounding level can move by ±lr
    // either way: compare the whole update as one vector.
    const start = await ref.model.values();
    let gap = 0;
    let size = 0;
    for (const [name, w] of Object.entries(single.weights)) {
      w.forEach((x, i) => {
        gap += (parallel.weights[name]![i]! - x) ** 2;
        size += (x - start[name]![i]!) ** 2;
      });
    }
    assert.ok(Math.sqrt(gap / size) < 2e-3, `${objective}: the update differs from the single-thread one by ${Math.sqrt(gap / size)} of its norm`);
    for (const name of Object.keys(single.weights)) {
      assert.deepEqual(new Uint32Array(again.weights[name]!.buffer), new Uint32Array(parallel.weights[name]!.buffer), `${objective}: ${name} is reproducible`);
    }
  }
});

test('stored reference log-probs give the same losses as the reference forward pass', async () => {
  const run = async (shards: string) => {
    const t = await trainer(options('aspo', { shards, steps: 2 }, { alpha: 0.5 }));
    const source = t.refSource;
    await t.trainStep();
    const tensors = tf.memory().numTensors;
    await t.trainStep();
    assert.equal(tf.memory().numTensors, tensors, 'a step leaves no tensors behind');
    const metrics = await t.lossOf(await trainPairs(shards));
    assert.equal(tf.memory().numTensors, tensors, 'an evaluation leaves no tensors behind');
    t.dispose();
    return { source, metrics };
  };
  const model = await run(plainShards);
  const stored = await run(storedShards);
  assert.equal(model.source, 'model');
  assert.equal(stored.source, 'shards');
  assert.ok(Math.abs(model.metrics['rewards/margins']) > 1e-3, 'the policy has moved from the reference');
  for (const [name, value] of Object.entries(model.metrics)) {
    assert.ok(Math.abs(value - (stored.metrics as Record<string, number>)[name]!) < 1e-4, `${name}: ${value} vs ${(stored.metrics as Record<string, number>)[name]}`);
  }
});

test('ASPO logs its sentence-weight statistics (similarity only: w is the normalised similarity)', async () => {
  const t = await trainer(options('aspo', { steps: 2 }, { alpha: 1 }));
  const metrics = new MemoryMetrics();
  await runPreference(t, { metrics });
  const mean = metrics.series('train', 'aspo/weights_mean');
  assert.equal(mean.length, 1);
  // α = 1: w = S' — 0 and 1 (≈) on the noisy pairs (0.2 vs 0.8), 0 on the clean ones (equal similarity): mean near 1/4.
  assert.ok(mean[0]! > 0.1 && mean[0]! < 0.4, `weights mean ${mean[0]}`);
  assert.ok(metrics.series('eval', 'aspo/weights_std').length >= 1);
  t.dispose();
});

test('clear errors: ASPO with similarity but none scored, a reference that did not tokenize the shards', async () => {
  const dir = await writeWorldShards(path.join(tempDir(), 'nosim'), ref, { storeRefs: false, similarity: false });
  await assert.rejects(trainer(options('aspo', { shards: dir })), /no similarity for chosen sentence 0.*run `aspo score`.*--alpha 0/);
  const perplexityOnly = await trainer(options('aspo', { shards: dir }, { alpha: 0 }));
  perplexityOnly.dispose();
  const otherRef = path.join(tempDir(), 'other');
  const sft = await SftTrainer.create({
    ...DEFAULT_SFT_OPTIONS, data: dataDir, out: otherRef, steps: 1, batchSize: 12, evalEvery: 0, saveEvery: 0, logEvery: 1,
    model: { ...DEFAULT_SFT_OPTIONS.model, width: 16, layers: 1, heads: 2, mlpRatio: 2, context: 16 + 16 },
  }, await readSftData(dataDir));
  await sft.save();
  sft.dispose();
  await assert.rejects(trainer(options('dpo', { ref: otherRef })), /tokenized for sft@.*but --ref .* is other@/);
});

/** Final weights of a checkpoint as raw bits. */
async function weightBits(dir: string): Promise<Record<string, Uint32Array>> {
  const { weights } = await loadCheckpoint(dir);
  return Object.fromEntries(Object.entries(weights).map(([name, w]) => [name, new Uint32Array(w.buffer, w.byteOffset, w.length)]));
}

test('aspo train --objective aspo: killed with SIGKILL after a checkpoint and resumed, it ends with the weights of an uninterrupted run', async () => {
  const dir = tempDir();
  const db = path.join(dir, 'aspo.duckdb');
  const args = (out: string) => [CLI, 'train', '--objective', 'aspo', '--shards', storedShards, '--ref', refDir, '--out', out,
    '--db', db, '--steps', '12', '--batch-size', '6', '--lr', '3e-3', '--warmup-steps', '2', '--save-every', '2',
    '--log-every', '2', '--eval-every', '6', '--alpha', '0.5', '--normalize', 'mass', '--backend', 'wasm'];
  const straight = spawnSync(process.execPath, args(path.join(dir, 'straight')), { encoding: 'utf8' });
  assert.equal(straight.status, 0, straight.stderr);
  assert.match(straight.stderr, /reference log-probs stored in the shards/);
  const summary = JSON.parse(straight.stdout.trim());
  assert.equal(summary.steps, 12);
  assert.equal(summary.refSource, 'shards');

  const out = path.join(dir, 'killed');
  const child = spawn(process.execPath, args(out), { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  while (!existsSync(path.join(out, 'manifest.json'))) await new Promise((resolve) => setTimeout(resolve, 5));
  child.kill('SIGKILL');
  await exited;
  const killedAt = (await loadCheckpoint(out)).trainer!.step as number;
  assert.ok(killedAt < 12, `killed at step ${killedAt}`);
  const resumed = spawnSync(process.execPath, [CLI, 'train', '--objective', 'aspo', '--out', out, '--db', db, '--resume', '--backend', 'wasm'],
    { encoding: 'utf8' });
  assert.equal(resumed.status, 0, resumed.stderr);
  assert.match(resumed.stderr, new RegExp(`step ${killedAt} of 12`));
  const expected = await weightBits(path.join(dir, 'straight'));
  const actual = await weightBits(out);
  for (const name of Object.keys(expected)) assert.deepEqual(actual[name], expected[name], name);

  // The checkpoint carries the loss config for `aspo rewards`.
  const state = JSON.parse(readFileSync(path.join(out, 'trainer.json'), 'utf8'));
  assert.deepEqual(state.options.loss, lossConfig({ lossType: 'aspo', normalize: 'mass' }));
  await withStore(db, async (store) => {
    const runs = await store.all<{ objective: string; status: string; ref_source: string; beta: string }>(
      "SELECT objective, status, config->>'$.refSource' AS ref_source, config->>'$.loss.beta' AS beta FROM runs");
    assert.deepEqual(runs.map((r) => [r.objective, r.status, r.ref_source, r.beta]), [['aspo', 'finished', 'shards', '0.1'], ['aspo', 'finished', 'shards', '0.1']]);
    const resumedRun = JSON.parse(resumed.stdout.trim()).runId;
    const steps = await store.all<{ step: number }>(
      "SELECT step FROM train_metrics WHERE run_id = ? AND split = 'train' AND name = 'aspo/weights_mean' ORDER BY step", [resumedRun]);
    assert.equal(steps.at(-1)!.step, 12);
    const names = await store.all<{ name: string }>("SELECT DISTINCT name FROM train_metrics WHERE split = 'eval' ORDER BY name");
    assert.ok(names.some((r) => r.name === 'rewards/accuracies'));
  }, { readOnly: true });
});

test('aspo train --objective dpo|aspo explains what is missing or wrong', () => {
  const run = (...extra: string[]) => spawnSync(process.execPath, [CLI, 'train', ...extra], { encoding: 'utf8' });
  const out = path.join(tempDir(), 'out');
  assert.match(run('--objective', 'dpo', '--out', out, '--ref', refDir).stderr, /give --shards/);
  const badAlpha = run('--objective', 'aspo', '--out', out, '--shards', plainShards, '--ref', refDir, '--alpha', '2');
  assert.equal(badAlpha.status, 2);
  assert.match(badAlpha.stderr, /--alpha must be a number in \[0, 1\], got 2/);
  // --alpha is an aspo option only
  assert.equal(run('--objective', 'dpo', '--out', out, '--shards', plainShards, '--ref', refDir, '--alpha', '0').status, 2);
});

test('collatePairs pads both sides to one width: EOS kept, outside every sentence; similarity only when asked', () => {
  const pair = (id: string, chosen: number, rejected: number, sentences: number[], similarity: Array<number | null>): ShardPair => ({
    pairId: id, imageId: null, promptIds: [5, 6], chosenIds: Array(chosen).fill(7), rejectedIds: Array(rejected).fill(8),
    chosenSentenceIds: sentences, rejectedSentenceIds: Array(rejected).fill(0), chosenSimilarity: similarity,
    chosenRefLogps: Array(chosen + 1).fill(-1), rejectedRefLogps: Array(rejected + 1).fill(-2), truncated: false,
  });
  const host = collatePairs([pair('a', 3, 1, [0, 0, 1], [0.5, 0.25]), pair('b', 1, 4, [-1], [])], { similarity: true, storedRefs: true });
  assert.equal(host.width, 5); // longest response (4) + EOS
  assert.equal(host.numSentences, 2);
  assert.deepEqual([...host.chosenSentenceIds], [0, 0, 1, -1, -1, -1, -1, -1, -1, -1]);
  assert.deepEqual([...host.chosenKeep], [1, 1, 1, 1, 0, 1, 1, 0, 0, 0]);
  assert.deepEqual([...host.rejectedKeep], [1, 1, 0, 0, 0, 1, 1, 1, 1, 1]);
  assert.deepEqual([...host.similarity!], [0.5, 0.25, 0, 0]);
  assert.deepEqual([...host.chosenRefLogps!], [-1, -1, -1, -1, 0, -1, -1, 0, 0, 0]);
  assert.deepEqual([...host.rejectedRefLogps!], [-2, -2, 0, 0, 0, -2, -2, -2, -2, -2]);
  const plain = collatePairs([pair('a', 3, 1, [0, 0, 1], [])], { similarity: false, storedRefs: false });
  assert.equal(plain.similarity, undefined);
  assert.equal(plain.chosenRefLogps, undefined);
});
