import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { initBackend, tf } from '../src/model/backend.js';
import { DEFAULT_SFT_OPTIONS, readSftData, runSft, SftTrainer } from '../src/train/sft.js';
import { encodePromptResponse } from '../src/model/encode.js';
import { loadCheckpoint, saveCheckpoint, loadModel, type LoadedModel } from '../src/model/checkpoint.js';
import { loadImagePixels, stackImages } from '../src/model/images.js';
import { DEFAULT_LOSS_CONFIG, lossConfig, lossForward, packPairs, type AspoLossConfig } from '../src/train/loss.js';
import { encodeWithSentences } from '../src/segment/align.js';
import { segment } from '../src/segment/segment.js';
import { Store, withStore } from '../src/store/store.js';
import type { ShardManifest, ShardPair, ShardSet, ShardSplit } from '../src/shard/types.js';
import { savedLossConfig, sentenceRewards, writeSentenceRewards, type PairLogProbs, type RewardsOptions, type RewardsSummary, type SideLogProbs } from '../src/rewards/rewards.js';
import { ShardWriter, writeManifest } from '../src/shard/write.js';
import { referencePair, type RefConfig } from './loss-reference.js';
import { COLOURS, renderShape, SHAPES } from './model-fixture.js';
import { CLI, tempDir } from './support.js';

const PROMPT = 'Describe the image.';
const colours = Object.keys(COLOURS);
const caption = (colour: string, shape: string) => `A ${colour} ${shape}. The ${shape} is ${colour}.`;
/** The loss options the policy checkpoint is saved with (as the preference trainer saves them). */
const SAVED_LOSS: AspoLossConfig = { ...DEFAULT_LOSS_CONFIG, beta: 0.2, alpha: 0.5, scale: 1.5 };

interface FixturePair {
  pair: ShardPair;
  response: { chosen: string; rejected: string };
  /** Sentence idxs that are false, per side. */
  falseIdx: { chosen: number[]; rejected: number[] };
}

let refDir: string;
let policyDir: string;
let ref: LoadedModel;
let policy: LoadedModel;
let fixtures: FixturePair[];
const images = new Map<string, Uint8Array>();

/** Two-sentence true captions of every (colour, shape), twice, as an SFT dataset folder. */
async function writeCaptionDataset(dir: string): Promise<void> {
  mkdirSync(path.join(dir, 'images'), { recursive: true });
  const rows: string[] = [];
  for (const colour of colours) {
    for (const shape of SHAPES) {
      const name = `${colour}-${shape}.png`;
      writeFileSync(path.join(dir, 'images', name), await renderShape(shape, colour));
      for (let c = 0; c < 2; c++) rows.push(JSON.stringify({ image: `images/${name}`, prompt: PROMPT, response: caption(colour, shape) }));
    }
  }
  writeFileSync(path.join(dir, 'sft.jsonl'), rows.join('\n') + '\n');
}

async function sft(data: string, out: string, steps: number): Promise<void> {
  const trainer = await SftTrainer.create({
    // Every option that shapes the result pinned here, so that changes to the defaults do not change these models.
    ...DEFAULT_SFT_OPTIONS, data, out, steps, batchSize: 12, lr: 1e-2, warmupSteps: 5, minLrRatio: 0.1, weightDecay: 0.01,
    clipNorm: 1, seed: 0, vocabSize: 512, evalEvery: 0, saveEvery: 0, logEvery: steps,
    model: { width: 32, layers: 1, heads: 2, mlpRatio: 2, context: 16 + 24, imageSize: 64, patchSize: 16, channels: 3, stemChannels: 0 },
  }, await readSftData(data));
  await runSft(trainer);
  trainer.dispose();
}

/** A shard pair built as `aspo shard` builds one: one tokenization of prompt + response, sentence ids by alignment. */
function shardPair(pairId: string, imageId: string | null, chosen: string, rejected: string, similarity: Array<number | null>): ShardPair {
  const side = (response: string) => {
    const { promptIds, responseIds } = encodePromptResponse(ref.tokenizer, PROMPT, response);
    const { sentenceIds } = encodeWithSentences(ref.tokenizer, PROMPT, response);
    return { promptIds, responseIds, sentenceIds: sentenceIds.slice(promptIds.length) };
  };
  const c = side(chosen);
  const r = side(rejected);
  return {
    pairId, imageId, promptIds: c.promptIds, chosenIds: c.responseIds, rejectedIds: r.responseIds,
    chosenSentenceIds: c.sentenceIds, rejectedSentenceIds: r.sentenceIds, chosenSimilarity: similarity,
    chosenRefLogps: null, rejectedRefLogps: null, truncated: false,
  };
}

function memoryShardSet(pairs: ShardPair[], referenceModel: string | null = null, evalCount = 2): ShardSet {
  const split: Record<ShardSplit, ShardPair[]> = { train: pairs.slice(0, pairs.length - evalCount), eval: pairs.slice(pairs.length - evalCount) };
  const manifest: ShardManifest = {
    format: 'aspo-shards/1', tokenizer: ref.modelId, referenceModel, similarityModel: 'test', options: {},
    counts: { train: split.train.length, eval: split.eval.length, dropped: 0, truncated: 0, images: images.size },
    fingerprint: 'test', shards: [], images: null, createdAt: new Date(0).toISOString(),
  };
  return {
    dir: '<memory>', manifest,
    async *pairs(s: ShardSplit) { yield* split[s]; },
    images: async () => images,
    verify: async () => undefined,
  };
}

before(async () => {
  await initBackend('auto');
  const data = tempDir();
  await writeCaptionDataset(data);
  refDir = path.join(tempDir(), 'ref');
  policyDir = path.join(tempDir(), 'policy');
  // The reference has barely started (it writes captions but has not tied colours to images); the policy went on
  // to learn them, so it penalises sentences whose colour contradicts the image.
  await sft(data, refDir, 25);
  const trained = path.join(tempDir(), 'trained');
  await sft(data, trained, 80);
  const contents = await loadCheckpoint(trained);
  await saveCheckpoint(policyDir, { ...contents, trainer: { ...contents.trainer, options: { loss: SAVED_LOSS } } });
  ref = await loadModel(refDir);
  policy = await loadModel(policyDir);

  fixtures = [];
  let n = 0;
  for (const [colour, shape] of [['red', 'circle'], ['green', 'square'], ['blue', 'triangle'], ['yellow', 'circle'], ['red', 'square']] as const) {
    const png = await renderShape(shape, colour);
    const imageId = createHash('sha256').update(png).digest('hex');
    images.set(imageId, png);
    const wrong = colours[(colours.indexOf(colour) + 1 + (n % 3)) % colours.length]!;
    // The chosen response has one false sentence (first or second); the rejected one is false throughout.
    const falseFirst = n % 2 === 0;
    const chosen = falseFirst ? `A ${wrong} ${shape}. The ${shape} is ${colour}.` : `A ${colour} ${shape}. The ${shape} is ${wrong}.`;
    const rejected = caption(wrong, shape);
    fixtures.push({
      pair: shardPair(`pair-${n}`, imageId, chosen, rejected, falseFirst ? [0.12, 0.31] : [0.29, 0.08]),
      response: { chosen, rejected }, falseIdx: { chosen: [falseFirst ? 0 : 1], rejected: [0, 1] },
    });
    n++;
  }
  // Text-only (a similarity from a text-only scorer).
  const chosen = 'A blue square. The square is blue.';
  const rejected = 'A green circle.';
  fixtures.push({ pair: shardPair('text-only', null, chosen, rejected, [0.22, 0.27]), response: { chosen, rejected }, falseIdx: { chosen: [], rejected: [] } });
});

after(() => {
  policy?.model.dispose();
  ref?.model.dispose();
});

/** Per-token log-probs (response tokens, then EOS) of one response, from a direct call on a model, alone in its batch. */
async function directLogps(model: LoadedModel, pair: ShardPair, side: 'chosen' | 'rejected'): Promise<number[]> {
  const png = pair.imageId ? images.get(pair.imageId)! : null;
  const image = png ? await loadImagePixels(Buffer.from(png), model.model.config.imageSize) : null;
  const imageTensor = image ? stackImages([image], model.model.config.imageSize) : null;
  const responseIds = side === 'chosen' ? pair.chosenIds : pair.rejectedIds;
  const { logps, mask } = model.model.responseLogProbs({ images: imageTensor, hasImage: [Boolean(image)], promptIds: [pair.promptIds], responseIds: [responseIds] });
  const values = Array.from(await logps.data());
  tf.dispose([logps, mask]);
  imageTensor?.dispose();
  assert.equal(values.length, responseIds.length + 1);
  return values;
}

interface ExpectedRow { n: number; logratio: number; weight: number | null; multiplier: number; reward: number }

/**
 * The rows computed independently in float64: per-sentence sums of the direct per-token log-probs, weights and
 * multipliers from the float64 reference of the loss (test/loss-reference.ts), N of normalize "mass" written out.
 */
async function expectedRows(config: AspoLossConfig): Promise<Map<string, ExpectedRow>> {
  const out = new Map<string, ExpectedRow>();
  for (const { pair } of fixtures) {
    const logps = {
      chosen: { policy: await directLogps(policy, pair, 'chosen'), ref: await directLogps(ref, pair, 'chosen') },
      rejected: { policy: await directLogps(policy, pair, 'rejected'), ref: await directLogps(ref, pair, 'rejected') },
    };
    const ids = { chosen: pair.chosenSentenceIds, rejected: pair.rejectedSentenceIds };
    const refConfig: RefConfig = config;
    const chosenIds = [...ids.chosen, -1];
    const weighting = referencePair({
      chosen: { policyLogps: logps.chosen.policy, refLogps: logps.chosen.ref, sentenceIds: chosenIds,
        similarity: pair.chosenSimilarity as number[] },
      rejected: { policyLogps: logps.rejected.policy, refLogps: logps.rejected.ref },
    }, refConfig);
    const tokenM = chosenIds.map((k) => (k >= 0 ? weighting.multipliers[k]! : 1));
    const N = config.normalize === 'mass' ? tokenM.length / tokenM.reduce((a, b) => a + b, 0) : 1;
    for (const side of ['chosen', 'rejected'] as const) {
      const count = Math.max(...ids[side]) + 1;
      for (let k = 0; k < count; k++) {
        let logratio = 0;
        let n = 0;
        ids[side].forEach((id, t) => {
          if (id !== k) return;
          logratio += logps[side].policy[t]! - logps[side].ref[t]!;
          n++;
        });
        const weight = side === 'chosen' ? weighting.weights[k]! : null;
        const multiplier = side === 'chosen' ? N * weighting.multipliers[k]! : 1;
        out.set(`${pair.pairId}/${side}/${k}`, { n, logratio, weight, multiplier, reward: multiplier * config.beta * logratio });
      }
    }
  }
  return out;
}

interface RewardRow {
  policy_model: string; ref_model: string; pair_id: string; side: string; idx: number; n_tokens: number;
  policy_logp_sum: number; ref_logp_sum: number; logratio_sum: number; weight: number | null; multiplier: number;
  ref_multiplier: number; reward: number; beta: number; alpha: number; scale: number; loss_config: string;
}

async function rows(store: Store, policyModel = policy.modelId): Promise<Map<string, RewardRow>> {
  const list = await store.all<RewardRow>('SELECT * FROM sentence_rewards WHERE policy_model = $1', [policyModel]);
  return new Map(list.map((r) => [`${r.pair_id}/${r.side}/${r.idx}`, r]));
}

const run = (store: Store, shards: ShardSet, config: AspoLossConfig, extra: Partial<RewardsOptions> = {}) =>
  writeSentenceRewards(store, shards, { policy, ref, config, batchSize: 4, ...extra });

const close = (actual: number, expected: number, tolerance: number, what: string) =>
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what}: ${actual} vs ${expected}`);

test('the policy checkpoint\'s saved loss options are read and checked', async () => {
  assert.deepEqual(await savedLossConfig(policyDir), SAVED_LOSS);
  assert.equal(await savedLossConfig(refDir), undefined, 'an SFT checkpoint has no loss options');
  const bad = path.join(tempDir(), 'bad');
  await saveCheckpoint(bad, { ...(await loadCheckpoint(refDir)), optimizer: undefined, trainer: { options: { loss: { beta: -1 } } } });
  await assert.rejects(savedLossConfig(bad), /trainer\.json: options\.loss\.beta must be a number > 0/);
});

for (const [name, config] of [
  ['the saved ASPO options (alpha 0.5, scale 1.5)', SAVED_LOSS],
  ['perplexity of the reference, normalize "mass"', lossConfig({ alpha: 0, normalize: 'mass', pplSource: 'reference', beta: 0.1 })],
] as const) {
  test(`rewards equal an independent float64 computation: ${name}`, async () => {
    const expected = await expectedRows(config);
    await withStore(path.join(tempDir(), 'r.duckdb'), async (store) => {
      const tensors = tf.memory().numTensors;
      const summary = await run(store, memoryShardSet(fixtures.map((f) => f.pair)), config);
      assert.equal(tf.memory().numTensors, tensors, 'no tensor leaks');
      const actual = await rows(store);
      assert.equal(actual.size, expected.size);
      assert.equal(summary.sentences, expected.size);
      assert.equal(summary.pairs, fixtures.length);
      assert.equal(summary.refLogps.fromModel, fixtures.length);
      for (const [key, e] of expected) {
        const r = actual.get(key);
        assert.ok(r, `row ${key}`);
        assert.equal(r.n_tokens, e.n, `${key} n_tokens`);
        assert.ok(e.n > 0);
        close(r.logratio_sum, e.logratio, 1e-4, `${key} logratio_sum`);
        close(r.policy_logp_sum - r.ref_logp_sum, r.logratio_sum, 1e-12, `${key} sums`);
        if (e.weight === null) assert.equal(r.weight, null, `${key} weight`);
        else close(r.weight!, e.weight, 1e-4, `${key} weight`);
        close(r.multiplier, e.multiplier, 1e-4, `${key} multiplier`);
        assert.equal(r.ref_multiplier, r.multiplier);
        close(r.reward, e.reward, 1e-4, `${key} reward`);
        assert.equal(r.reward, r.multiplier * r.beta * r.logratio_sum, `${key}: reward = multiplier · β · logratio_sum`);
        assert.equal(r.beta, config.beta);
        assert.equal(r.policy_model, policy.modelId);
        assert.equal(r.ref_model, ref.modelId);
        assert.deepEqual(JSON.parse(r.loss_config), config);
      }
      // The weights really vary with the sentence (not all multipliers 1) in the multi-sentence chosen responses.
      assert.ok([...actual.values()].some((r) => r.side === 'chosen' && r.multiplier > 1.01));
      const chosen = [...actual.values()].filter((r) => r.side === 'chosen');
      close(summary.meanRewardChosen!, chosen.reduce((a, r) => a + r.reward, 0) / chosen.length, 1e-9, 'mean chosen reward');
    });
  });
}

test('each pair\'s sentence rewards add up, with its tokens outside every sentence, to the loss\'s chosen and rejected rewards', async () => {
  const inputs: PairLogProbs[] = [];
  for (const { pair } of fixtures) {
    inputs.push({
      pairId: pair.pairId,
      chosen: { policy: await directLogps(policy, pair, 'chosen'), ref: await directLogps(ref, pair, 'chosen'),
        sentenceIds: pair.chosenSentenceIds, similarity: pair.chosenSimilarity },
      rejected: { policy: await directLogps(policy, pair, 'rejected'), ref: await directLogps(ref, pair, 'rejected'), sentenceIds: pair.rejectedSentenceIds },
    });
  }
  // Policy and reference disagree about which sentence is the more confident one: "own" weights differ.
  inputs.push({
    pairId: 'opposed',
    chosen: { policy: [-0.1, -0.2, -2, -1.5, -0.3], ref: [-2, -1.8, -0.2, -0.1, -0.4], sentenceIds: [0, 0, 1, 1], similarity: [0.5, 0.4] },
    rejected: { policy: [-1, -1], ref: [-0.5, -0.7], sentenceIds: [0] },
  });
  for (const config of [lossConfig({ refWeights: 'own', alpha: 0.3, scale: 2 }), lossConfig({ normalize: 'mass', beta: 0.5 })]) {
    const rewards = sentenceRewards(inputs, config);
    const batch = packPairs(inputs.map((p) => ({
      chosen: { policyLogps: Array.from(p.chosen.policy), refLogps: Array.from(p.chosen.ref), sentenceIds: [...p.chosen.sentenceIds, -1],
        similarity: p.chosen.similarity as number[] },
      rejected: { policyLogps: Array.from(p.rejected.policy), refLogps: Array.from(p.rejected.ref) },
    })));
    const { chosenRewards, rejectedRewards } = lossForward(batch, config);
    inputs.forEach((p, i) => {
      const mine = rewards.filter((r) => r.pairId === p.pairId);
      const chosen = mine.filter((r) => r.side === 'chosen');
      // N of normalize "mass" from any sentence row: multiplier = N · (1 + scale · weight).
      const n = config.normalize === 'mass' ? chosen[0]!.multiplier / (1 + config.scale * chosen[0]!.weight!) : 1;
      const outside = (side: SideLogProbs, factor: number) =>
        [...side.sentenceIds, -1].reduce((sum, k, t) => sum + (k < 0 ? factor * config.beta * (side.policy[t]! - side.ref[t]!) : 0), 0);
      const sum = (list: typeof mine) => list.reduce((a, r) => a + r.reward, 0);
      if (config.refWeights === 'own' && p.pairId === 'opposed') {
        assert.ok(chosen.every((r) => Math.abs(r.refMultiplier - r.multiplier) > 0.5), 'own reference weights differ');
      }
      close(sum(chosen) + outside(p.chosen, n), chosenRewards[i]!, 1e-4, `${p.pairId} chosen`);
      close(sum(mine.filter((r) => r.side === 'rejected')) + outside(p.rejected, 1), rejectedRewards[i]!, 1e-4, `${p.pairId} rejected`);
    });
  }
});

test('with scale 0 every multiplier is 1 and the reward is β times the log-ratio', async () => {
  await withStore(path.join(tempDir(), 'r.duckdb'), async (store) => {
    await run(store, memoryShardSet(fixtures.map((f) => f.pair)), { ...SAVED_LOSS, scale: 0 });
    const all = [...(await rows(store)).values()];
    assert.ok(all.length > 0);
    for (const r of all) {
      assert.equal(r.multiplier, 1);
      close(r.reward, SAVED_LOSS.beta * r.logratio_sum, 1e-12, `${r.pair_id}/${r.side}/${r.idx}`);
      if (r.side === 'chosen') assert.notEqual(r.weight, null);
    }
  });
});

test('identical policy and reference give zero rewards', async () => {
  await withStore(path.join(tempDir(), 'r.duckdb'), async (store) => {
    await writeSentenceRewards(store, memoryShardSet(fixtures.map((f) => f.pair)), { policy: ref, ref, config: SAVED_LOSS });
    const all = [...(await rows(store, ref.modelId)).values()];
    assert.ok(all.length > 0);
    for (const r of all) {
      assert.equal(r.logratio_sum, 0);
      assert.equal(r.reward, 0);
    }
  });
});

test('a re-run, and a run after an interrupted one, leave exactly one row per sentence', async () => {
  const shards = memoryShardSet(fixtures.map((f) => f.pair));
  const expectedCount = fixtures.reduce((n, { pair }) =>
    n + Math.max(...pair.chosenSentenceIds) + 1 + Math.max(...pair.rejectedSentenceIds) + 1, 0);
  await withStore(path.join(tempDir(), 'r.duckdb'), async (store) => {
    await assert.rejects(run(store, shards, SAVED_LOSS, {
      batchSize: 2, onBatch: () => { throw new Error('killed'); },
    }), /killed/);
    const partial = (await rows(store)).size;
    assert.ok(partial > 0 && partial < expectedCount, `${partial} rows after the interrupted run`);
    await run(store, shards, SAVED_LOSS, { batchSize: 2 });
    const first = await rows(store);
    assert.equal(first.size, expectedCount);
    // Another configuration for the same policy replaces the rows rather than adding to them.
    await run(store, shards, { ...SAVED_LOSS, beta: 0.5 });
    const second = await rows(store);
    assert.equal(second.size, expectedCount);
    assert.equal(await store.scalar('SELECT count(*) FROM sentence_rewards'), expectedCount);
    for (const [key, r] of second) {
      assert.equal(r.beta, 0.5);
      close(r.reward, first.get(key)!.reward * 0.5 / SAVED_LOSS.beta, 1e-9, key);
    }
  });
});

test('SQL: the sentences the trained policy penalises most are the false ones', async () => {
  await withStore(path.join(tempDir(), 'r.duckdb'), async (store) => {
    // The sentences and truth labels the store would hold for these pairs (segment stage, synthetic labels).
    for (const { pair, response, falseIdx } of fixtures) {
      for (const side of ['chosen', 'rejected'] as const) {
        for (const [idx, s] of segment(response[side]).entries()) {
          await store.run(`INSERT INTO sentences VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, false)`,
            [pair.pairId, side, idx, s.start, s.end, s.text]);
          await store.run('INSERT INTO labels VALUES ($1, $2, $3, $4, $5)',
            [pair.pairId, side, s.start, s.end, falseIdx[side].includes(idx) ? 'hallucinated' : 'true']);
        }
      }
    }
    const summary = await run(store, memoryShardSet(fixtures.map((f) => f.pair)), SAVED_LOSS);
    const worst = await store.all<{ pair_id: string; side: string; idx: number; text: string; reward: number }>(`
      SELECT pair_id, side, idx, text, reward FROM sentence_rewards_text
      WHERE policy_model = $1 AND side = 'chosen' ORDER BY reward LIMIT 3`, [policy.modelId]);
    assert.equal(worst.length, 3);
    for (const w of worst) {
      const fixture = fixtures.find((f) => f.pair.pairId === w.pair_id)!;
      assert.ok(fixture.falseIdx.chosen.includes(w.idx), `most penalised chosen sentences: ${JSON.stringify(worst)}`);
      assert.equal(w.text, segment(fixture.response.chosen)[w.idx]!.text);
    }
    assert.ok(worst[0]!.reward < 0, 'the policy penalises the worst sentence');
    assert.ok(summary.mostPenalised && summary.mostPenalised.text !== null);
    const byLabel = new Map((await store.all<{ label: string; mean_reward: number }>(`
      SELECT l.label, avg(r.reward) AS mean_reward
      FROM sentence_rewards_text r
      JOIN labels l ON l.pair_id = r.pair_id AND l.side = r.side AND l.char_start < r.char_end AND r.char_start < l.char_end
      WHERE r.policy_model = $1 GROUP BY l.label`, [policy.modelId])).map((r) => [r.label, r.mean_reward]));
    assert.ok(byLabel.get('hallucinated')! < byLabel.get('true')! - 0.5, JSON.stringify([...byLabel]));
  });
});

test('stored reference log-probs are used when the shards hold them for this reference, and agree with a reference pass', async () => {
  const withStored = await Promise.all(fixtures.map(async ({ pair }) => ({
    ...pair, chosenRefLogps: await directLogps(ref, pair, 'chosen'), rejectedRefLogps: await directLogps(ref, pair, 'rejected'),
  })));
  await withStore(path.join(tempDir(), 'r.duckdb'), async (store) => {
    const stored = await run(store, memoryShardSet(withStored, ref.modelId), SAVED_LOSS);
    assert.deepEqual(stored.refLogps, { fromShards: fixtures.length, fromModel: 0 });
    const fromShards = await rows(store);
    const recomputed = await run(store, memoryShardSet(fixtures.map((f) => f.pair), ref.modelId), SAVED_LOSS);
    assert.deepEqual(recomputed.refLogps, { fromShards: 0, fromModel: fixtures.length });
    const fromModel = await rows(store);
    for (const [key, r] of fromShards) {
      close(r.ref_logp_sum, fromModel.get(key)!.ref_logp_sum, 1e-4, key);
      close(r.reward, fromModel.get(key)!.reward, 1e-4, key);
    }
    // Shards written with another reference model are not used for this one.
    const other = await run(store, memoryShardSet(withStored, 'another@0123456789abcdef'), SAVED_LOSS);
    assert.deepEqual(other.refLogps, { fromShards: 0, fromModel: fixtures.length });
    // And the stored values are really what is used: shifting them shifts every log-ratio.
    const shifted = withStored.map((p) => ({ ...p, chosenRefLogps: p.chosenRefLogps.map((v) => v - 1) }));
    await run(store, memoryShardSet(shifted, ref.modelId), { ...SAVED_LOSS, scale: 0 });
    for (const [key, r] of await rows(store)) {
      if (!key.includes('/chosen/')) continue;
      close(r.logratio_sum, fromShards.get(key)!.logratio_sum + r.n_tokens, 1e-4, key);
    }
  });
});

test('bad shard data gives errors naming the pair and field', async () => {
  const [first] = fixtures.map((f) => f.pair);
  await withStore(path.join(tempDir(), 'r.duckdb'), async (store) => {
    const partial = { ...first!, chosenSimilarity: [0.2, null] };
    await assert.rejects(run(store, memoryShardSet([partial], null, 0), SAVED_LOSS), /pair pair-0 has no similarity for chosen sentence 1/);
    // As in training: without similarity, only alpha 0 (perplexity alone) can weight the sentences.
    const unscored = { ...first!, chosenSimilarity: [] };
    await assert.rejects(run(store, memoryShardSet([unscored], null, 0), SAVED_LOSS), /pair pair-0 has no similarity for chosen sentence 0/);
    assert.throws(() => sentenceRewards([{
      pairId: 'q', chosen: { policy: [0, 0], ref: [0, 0], sentenceIds: [0], similarity: [null] }, rejected: { policy: [0], ref: [0], sentenceIds: [] },
    }], SAVED_LOSS), /pair q has no similarity for chosen sentence 0/);
    assert.equal(await store.scalar('SELECT count(*) FROM sentence_rewards'), 0);
    const perplexityOnly = await run(store, memoryShardSet([unscored], null, 0), { ...SAVED_LOSS, alpha: 0 });
    assert.equal(perplexityOnly.pairs, 1);
    await store.run('DELETE FROM sentence_rewards');
    const foreign = { ...first!, chosenIds: [...first!.chosenIds.slice(0, -1), 100000] };
    await assert.rejects(run(store, memoryShardSet([foreign], null, 0), SAVED_LOSS), /pair pair-0: chosenIds\[\d+\] = 100000 is not a token id/);
    const short = { ...first!, chosenRefLogps: [-1] };
    await assert.rejects(run(store, memoryShardSet([short], ref.modelId, 0), SAVED_LOSS), /pair pair-0: chosenRefLogps has 1 entries/);
    assert.equal(await store.scalar('SELECT count(*) FROM sentence_rewards'), 0);
  });
  assert.throws(() => sentenceRewards([{
    pairId: 'p', chosen: { policy: [0, 0], ref: [0], sentenceIds: [0] }, rejected: { policy: [0], ref: [0], sentenceIds: [] },
  }], SAVED_LOSS), /pair p: chosen\.ref has 1 log-probs for 1 tokens \+ EOS/);
});

test('aspo rewards: shards on disk in, rows and a JSON summary out; loss options from the policy unless given', async () => {
  const dir = tempDir();
  const shardDir = path.join(dir, 'shards');
  mkdirSync(shardDir);
  const pairs = fixtures.map((f) => f.pair);
  const files = [
    { file: 'train-00000.arrow', split: 'train' as const, list: pairs.slice(0, 4) },
    { file: 'eval-00000.arrow', split: 'eval' as const, list: pairs.slice(4) },
  ];
  const writer = await ShardWriter.open('arrow');
  const shards = [];
  for (const { file, split, list } of files) {
    shards.push({ file, split, pairs: list.length, sha256: await writer.writePairs(path.join(shardDir, file), list) });
  }
  const imagesSha = await writer.writeImages(path.join(shardDir, 'images.arrow'), [...images].map(([imageId, bytes]) => ({ imageId, bytes })));
  writer.close();
  await writeManifest(shardDir, {
    ...memoryShardSet(pairs).manifest, counts: { train: 4, eval: pairs.length - 4, dropped: 0, truncated: 0, images: images.size },
    shards, images: { file: 'images.arrow', split: 'train', pairs: 0, sha256: imagesSha },
  });
  const db = path.join(dir, 'cli.duckdb');
  const cli = (...args: string[]) => spawnSync(process.execPath,
    [CLI, 'rewards', '--policy', policyDir, '--ref', refDir, '--shards', shardDir, '--db', db, '--backend', 'wasm', ...args],
    { encoding: 'utf8' });

  // Loss options: the policy checkpoint's, with the ones given on the command line on top.
  const config = { ...SAVED_LOSS, beta: 0.3 };
  const result = cli('--split', 'eval', '--beta', '0.3');
  assert.equal(result.status, 0, result.stderr);
  const lines = result.stdout.trim().split('\n');
  assert.equal(lines.length, 1, 'stdout holds only the JSON summary');
  const summary = JSON.parse(lines[0]!) as RewardsSummary;
  assert.equal(summary.pairs, pairs.length - 4);
  assert.deepEqual(summary.config, config);
  assert.match(result.stderr, /rewards: \d+ sentences of 2 pairs/);
  // The library on the same pairs gives the same rows.
  const expected = await withStore(path.join(dir, 'lib.duckdb'), async (store) => {
    await run(store, memoryShardSet(pairs.slice(4), null, 0), config);
    return rows(store);
  });
  const fromCli = await withStore(db, (store) => rows(store));
  assert.equal(fromCli.size, expected.size);
  for (const [key, r] of expected) close(fromCli.get(key)!.reward, r.reward, 1e-6, key);

  const badOption = cli('--normalize', 'sometimes');
  assert.equal(badOption.status, 2);
  assert.match(badOption.stderr, /normalize must be one of none, mass/);
});
