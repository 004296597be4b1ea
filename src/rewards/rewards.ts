/**
 * Per-sentence implicit rewards of a trained policy (`aspo rewards`): for each sentence of both responses of a pair,
 * its part of the sentence-level (ASPO) or DPO margin, β · multiplier · Σ_t (log π_θ − log π_ref) over its tokens.
 * The sentence weights and multipliers come from the loss's own code (lossForward), so they are the ones the
 * trainer used; this module only sums per sentence, and reads and writes.
 */
import path from 'node:path';
import type { Store } from '../store/store.js';
import { SHARD_SPLITS, type ShardPair, type ShardSet, type ShardSplit } from '../shard/types.js';
import { lossConfig, lossForward, packPairs, type AspoLossConfig, type PairArrays } from '../train/loss.js';
import { readTrainerState, type LoadedModel } from '../model/checkpoint.js';
import { tokenLogProbs, type TokenRow } from '../model/logprobs.js';
import { textContext, type VisionLanguageModel } from '../model/model.js';
import { shardPixelCache } from '../shard/read.js';
import { checkShardPair, checkSimilarity } from '../train/preference.js';

export const DEFAULT_REWARDS_BATCH_SIZE = 16;
export const REWARD_SPLITS = [...SHARD_SPLITS, 'all'] as const;
export type RewardSplit = (typeof REWARD_SPLITS)[number];

// ---------------------------------------------------------------------------------------------------------------
// The maths (pure)

/** One response's per-token log-probs: its response tokens, then EOS (length = sentenceIds.length + 1). */
export interface SideLogProbs {
  policy: ArrayLike<number>;
  ref: ArrayLike<number>;
  /** Per response token (EOS excluded), its sentence idx, −1 outside any sentence. */
  sentenceIds: readonly number[];
}

export interface PairLogProbs {
  pairId: string;
  /** `similarity` is S_i by sentence idx (null or missing: not scored); needed for the weights when alpha > 0. */
  chosen: SideLogProbs & { similarity?: ReadonlyArray<number | null> };
  rejected: SideLogProbs;
}

/** One `sentence_rewards` row before the model ids and configuration columns. */
export interface SentenceReward {
  pairId: string;
  side: 'chosen' | 'rejected';
  idx: number;
  nTokens: number;
  policyLogpSum: number;
  refLogpSum: number;
  logratioSum: number;
  /** w_i of a chosen sentence with tokens under an ASPO configuration; null otherwise. */
  weight: number | null;
  /** N·m_i on the sentence's policy log-probs (1 on the rejected side and under DPO). */
  multiplier: number;
  /** The factor on its reference log-probs: the same as `multiplier` unless refWeights is "own". */
  refMultiplier: number;
  /** β·(multiplier·policyLogpSum − refMultiplier·refLogpSum), i.e. multiplier·β·logratioSum when they are equal. */
  reward: number;
}

interface SentenceSums { policy: number[]; ref: number[]; n: number[] }

/** Σ log π_θ, Σ log π_ref and the token count per sentence idx 0..count−1 (float64 sums). */
function sentenceSums(pairId: string, name: string, side: SideLogProbs, count: number): SentenceSums {
  const tokens = side.sentenceIds.length;
  for (const key of ['policy', 'ref'] as const) {
    if (side[key].length !== tokens + 1) {
      throw new Error(`pair ${pairId}: ${name}.${key} has ${side[key].length} log-probs for ${tokens} tokens + EOS`);
    }
  }
  const zeros = () => new Array<number>(count).fill(0);
  const sums: SentenceSums = { policy: zeros(), ref: zeros(), n: zeros() };
  side.sentenceIds.forEach((k, t) => {
    if (!Number.isInteger(k) || k < -1) throw new Error(`pair ${pairId}: ${name}.sentenceIds[${t}] must be an integer ≥ −1, got ${k}`);
    if (k < 0) return;
    sums.policy[k] = sums.policy[k]! + side.policy[t]!;
    sums.ref[k] = sums.ref[k]! + side.ref[t]!;
    sums.n[k] = sums.n[k]! + 1;
  });
  return sums;
}

function sentenceCount(ids: readonly number[], atLeast = 0): number {
  return Math.max(atLeast, ...ids.map((k) => k + 1));
}

/** How the chosen sentences of a pair are weighted: per idx, w (null: absent), N·m and the reference's factor. */
interface ChosenFactors { weight: (number | null)[]; multiplier: number[]; refMultiplier: number[] }

/**
 * With alpha > 0 the weights fuse the similarity of every chosen sentence that has tokens, so each needs one (the
 * trainer refuses such pairs too: checkSimilarity in preference.ts). Throws naming the pair and sentence.
 */
function checkSimilarityOf(pair: PairLogProbs): void {
  const missing = pair.chosen.sentenceIds.find((k) => k >= 0 && !Number.isFinite(pair.chosen.similarity?.[k] ?? NaN));
  if (missing !== undefined) {
    throw new Error(`pair ${pair.pairId} has no similarity for chosen sentence ${missing}, but alpha > 0 uses it: ` +
      'score the sentences (aspo score) before `aspo shard`, or use --alpha 0 (perplexity only)');
  }
}

/** The loss's weighting of a batch of pairs, read back per pair. */
function chosenFactors(pairs: readonly PairLogProbs[], config: AspoLossConfig): ChosenFactors[] {
  const arrays: PairArrays[] = pairs.map((p) => {
    const count = sentenceCount(p.chosen.sentenceIds, p.chosen.similarity?.length ?? 0);
    return {
      chosen: {
        policyLogps: Array.from(p.chosen.policy),
        refLogps: Array.from(p.chosen.ref),
        sentenceIds: [...p.chosen.sentenceIds, -1], // EOS: outside every sentence
        // Sentences without tokens are absent from the weighting, so their placeholder 0 is never read.
        similarity: config.alpha > 0 ? Array.from({ length: count }, (_, k) => p.chosen.similarity?.[k] ?? 0) : undefined,
      },
      rejected: { policyLogps: Array.from(p.rejected.policy), refLogps: Array.from(p.rejected.ref) },
    };
  });
  const batch = packPairs(arrays);
  const weighting = lossForward(batch, config).weighting!;
  const { numSentences, slots } = batch.layout.sentences;
  return pairs.map((_, b) => {
    const ks = Array.from({ length: numSentences }, (_, k) => b * slots + k);
    return {
      weight: ks.map((s) => (weighting.sentences.present[s] ? weighting.sentences.weights[s]! : null)),
      multiplier: ks.map((s) => weighting.slotMultipliers[s]!),
      refMultiplier: ks.map((s) => weighting.refSlotMultipliers[s]!),
    };
  });
}

/**
 * Every sentence's reward, both sides, for a batch of pairs. Chosen sentences get the loss's multipliers
 * (N·m_i, with N = 1 unless normalize is "mass"); rejected sentences keep the plain DPO term (multiplier 1).
 * Tokens outside every sentence (EOS, whitespace) belong to no row, so a pair's rows sum to its chosen or
 * rejected reward less those tokens' part.
 */
export function sentenceRewards(pairs: readonly PairLogProbs[], config: AspoLossConfig): SentenceReward[] {
  // Sums first: they check every pair's arrays before any tensor is made.
  const sums = pairs.map((pair) => ({
    chosen: sentenceSums(pair.pairId, 'chosen', pair.chosen, sentenceCount(pair.chosen.sentenceIds, pair.chosen.similarity?.length ?? 0)),
    rejected: sentenceSums(pair.pairId, 'rejected', pair.rejected, sentenceCount(pair.rejected.sentenceIds)),
  }));
  let factors: ChosenFactors[] | undefined;
  if (config.lossType === 'aspo' && pairs.length) {
    if (config.alpha > 0) pairs.forEach(checkSimilarityOf);
    factors = chosenFactors(pairs, config);
  }
  const { beta } = config;
  const rows: SentenceReward[] = [];
  pairs.forEach((pair, i) => {
    const f = factors?.[i];
    for (const side of ['chosen', 'rejected'] as const) {
      const s = sums[i]![side];
      for (let k = 0; k < s.n.length; k++) {
        const weighted = side === 'chosen' && f !== undefined;
        const multiplier = weighted ? f.multiplier[k]! : 1;
        const refMultiplier = weighted ? f.refMultiplier[k]! : 1;
        const logratioSum = s.policy[k]! - s.ref[k]!;
        rows.push({
          pairId: pair.pairId, side, idx: k, nTokens: s.n[k]!,
          policyLogpSum: s.policy[k]!, refLogpSum: s.ref[k]!, logratioSum,
          weight: weighted ? f.weight[k]! : null,
          multiplier, refMultiplier,
          reward: multiplier === refMultiplier
            ? multiplier * beta * logratioSum
            : beta * (multiplier * s.policy[k]! - refMultiplier * s.ref[k]!),
        });
      }
    }
  });
  return rows;
}

// ---------------------------------------------------------------------------------------------------------------
// The stage: shards in, model passes, rows out

/**
 * The loss configuration a policy checkpoint was trained with (`options.loss` of its trainer state), checked;
 * undefined when the checkpoint holds none (an SFT checkpoint, or one saved without trainer state).
 */
export async function savedLossConfig(checkpoint: string): Promise<AspoLossConfig | undefined> {
  const file = path.join(checkpoint, 'trainer.json');
  const state = await readTrainerState(checkpoint) as { options?: { loss?: unknown } } | undefined;
  const saved = state?.options?.loss;
  if (saved === undefined) return undefined;
  if (typeof saved !== 'object' || saved === null) throw new Error(`${file}: options.loss must be an object`);
  try {
    return lossConfig(saved as Record<string, unknown>);
  } catch (error) {
    throw new Error(`${file}: options.loss.${(error as Error).message}`);
  }
}

export interface RewardsOptions {
  /** The trained policy and its reference (checkpoints loaded with loadModel, which gives their ids). */
  policy: LoadedModel;
  ref: LoadedModel;
  config: AspoLossConfig;
  /** Default "all": train then eval. */
  split?: RewardSplit;
  /** Pairs per model call (default DEFAULT_REWARDS_BATCH_SIZE); each batch is one transaction. */
  batchSize?: number;
  onStart?: (info: { pairs: number }) => void;
  onBatch?: (progress: { pairs: number; sentences: number }) => void;
}

export interface RewardsSummary {
  policyModel: string;
  refModel: string;
  config: AspoLossConfig;
  split: RewardSplit;
  /** Pairs and sentence rows written. */
  pairs: number;
  sentences: number;
  chosenSentences: number;
  rejectedSentences: number;
  /** Mean reward over the sentences with at least one token; null without any. */
  meanRewardChosen: number | null;
  meanRewardRejected: number | null;
  /** The lowest reward of this run, with the sentence's text when the store has it. */
  mostPenalised: { pairId: string; side: string; idx: number; reward: number; text: string | null } | null;
  /** Pairs whose reference log-probs came from the shards, and from running the reference model. */
  refLogps: { fromShards: number; fromModel: number };
  /** Pairs skipped because a response does not fit a model's context (never truncated). */
  tooLong: number;
  seconds: number;
}

/** Replaces the policy's rows of the batch's pairs by `rows`, in one transaction. */
async function writeRewardRows(store: Store, policyModel: string, pairIds: readonly string[], rows: Record<string, unknown>[]): Promise<void> {
  await store.transaction(async () => {
    // Pair ids are hex digests: a comma never occurs in one.
    await store.run(`DELETE FROM sentence_rewards WHERE policy_model = $1 AND pair_id IN (SELECT unnest(string_split($2, ',')))`,
      [policyModel, pairIds.join(',')]);
    await store.upsert('sentence_rewards', rows);
  });
}

/**
 * Writes `sentence_rewards` for every pair of the chosen split(s): the policy's log-probs from a model pass, the
 * reference's from the shards when they hold them for this very reference model (manifest.referenceModel equals
 * its id), else from a reference pass. Each batch replaces the policy's rows of its pairs in one transaction, so a
 * re-run (or a run after a kill) leaves exactly one row per sentence.
 */
export async function writeSentenceRewards(store: Store, shards: ShardSet, options: RewardsOptions): Promise<RewardsSummary> {
  const started = performance.now();
  const { policy, ref, config } = options;
  const split = options.split ?? 'all';
  if (!(REWARD_SPLITS as readonly string[]).includes(split)) throw new Error(`split must be one of ${REWARD_SPLITS.join(', ')}, got ${split}`);
  const batchSize = options.batchSize ?? DEFAULT_REWARDS_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
  if (JSON.stringify(policy.tokenizer.toJSON()) !== JSON.stringify(ref.tokenizer.toJSON())) {
    throw new Error(`the policy ${policy.modelId} and the reference ${ref.modelId} have different tokenizers`);
  }
  const useStoredRef = shards.manifest.referenceModel !== null && shards.manifest.referenceModel === ref.modelId;
  const splits: ShardSplit[] = split === 'all' ? [...SHARD_SPLITS] : [split];
  options.onStart?.({ pairs: splits.reduce((n, s) => n + shards.manifest.counts[s], 0) });

  const summary: RewardsSummary = {
    policyModel: policy.modelId, refModel: ref.modelId, config, split, pairs: 0, sentences: 0, chosenSentences: 0,
    rejectedSentences: 0, meanRewardChosen: null, meanRewardRejected: null, mostPenalised: null,
    refLogps: { fromShards: 0, fromModel: 0 }, tooLong: 0, seconds: 0,
  };
  const totals = { chosen: { sum: 0, n: 0 }, rejected: { sum: 0, n: 0 } };
  let lowest: SentenceReward | undefined;
  const configJson = JSON.stringify(config);
  const pixels = shardPixelCache(shards);
  const imageOf = async (pair: ShardPair, model: VisionLanguageModel): Promise<Float32Array | null> => {
    if (pair.imageId === null) return null;
    try {
      return await pixels.get(pair.imageId, model.config.imageSize);
    } catch (error) {
      throw new Error(`pair ${pair.pairId}: ${(error as Error).message}`);
    }
  };
  const fits = (pair: ShardPair, model: VisionLanguageModel) =>
    [pair.chosenIds, pair.rejectedIds].every((ids) => 1 + pair.promptIds.length + ids.length <= textContext(model.config));

  const run = async (batch: ShardPair[]): Promise<void> => {
    const pairs = batch.filter((pair) => {
      checkShardPair(pair);
      checkTokenIds(pair, policy.model.config.vocabSize);
      const ok = fits(pair, policy.model) && fits(pair, ref.model);
      if (!ok) summary.tooLong++;
      return ok;
    });
    if (!pairs.length) return;
    checkSimilarity(pairs, config);
    const rowsOf = async (model: VisionLanguageModel, list: ShardPair[], side: 'chosen' | 'rejected'): Promise<TokenRow[]> =>
      Promise.all(list.map(async (p) => ({
        promptIds: p.promptIds, responseIds: side === 'chosen' ? p.chosenIds : p.rejectedIds, image: await imageOf(p, model),
      })));
    const policyChosen = tokenLogProbs(policy.model, await rowsOf(policy.model, pairs, 'chosen'));
    const policyRejected = tokenLogProbs(policy.model, await rowsOf(policy.model, pairs, 'rejected'));
    const stored = (p: ShardPair) => useStoredRef && p.chosenRefLogps !== null && p.rejectedRefLogps !== null;
    const toRun = pairs.filter((p) => !stored(p));
    const refRun = new Map<ShardPair, { chosen: ArrayLike<number>; rejected: ArrayLike<number> }>();
    if (toRun.length) {
      const chosen = tokenLogProbs(ref.model, await rowsOf(ref.model, toRun, 'chosen'));
      const rejected = tokenLogProbs(ref.model, await rowsOf(ref.model, toRun, 'rejected'));
      toRun.forEach((p, i) => refRun.set(p, { chosen: chosen[i]!, rejected: rejected[i]! }));
    }
    summary.refLogps.fromModel += toRun.length;
    summary.refLogps.fromShards += pairs.length - toRun.length;
    const inputs: PairLogProbs[] = pairs.map((p, i) => {
      const refLogps = refRun.get(p) ?? { chosen: p.chosenRefLogps!, rejected: p.rejectedRefLogps! };
      return {
        pairId: p.pairId,
        chosen: { policy: policyChosen[i]!, ref: refLogps.chosen, sentenceIds: p.chosenSentenceIds, similarity: p.chosenSimilarity },
        rejected: { policy: policyRejected[i]!, ref: refLogps.rejected, sentenceIds: p.rejectedSentenceIds },
      };
    });
    const rewards = sentenceRewards(inputs, config);
    await writeRewardRows(store, policy.modelId, pairs.map((p) => p.pairId), rewards.map((r) => ({
      policy_model: policy.modelId, ref_model: ref.modelId, pair_id: r.pairId, side: r.side, idx: r.idx, n_tokens: r.nTokens,
      policy_logp_sum: r.policyLogpSum, ref_logp_sum: r.refLogpSum, logratio_sum: r.logratioSum, weight: r.weight,
      multiplier: r.multiplier, ref_multiplier: r.refMultiplier, reward: r.reward, beta: config.beta, alpha: config.alpha,
      scale: config.scale, loss_config: configJson,
    })));
    for (const r of rewards) {
      summary[r.side === 'chosen' ? 'chosenSentences' : 'rejectedSentences']++;
      if (r.nTokens === 0) continue;
      totals[r.side].sum += r.reward;
      totals[r.side].n++;
      if (!lowest || r.reward < lowest.reward) lowest = r;
    }
    summary.pairs += pairs.length;
    summary.sentences += rewards.length;
  };

  let seen = 0;
  for (const s of splits) {
    let batch: ShardPair[] = [];
    for await (const pair of shards.pairs(s)) {
      batch.push(pair);
      if (batch.length < batchSize) continue;
      await run(batch);
      seen += batch.length;
      batch = [];
      options.onBatch?.({ pairs: seen, sentences: summary.sentences });
    }
    if (batch.length) {
      await run(batch);
      seen += batch.length;
      options.onBatch?.({ pairs: seen, sentences: summary.sentences });
    }
  }

  const mean = ({ sum, n }: { sum: number; n: number }) => (n > 0 ? sum / n : null);
  summary.meanRewardChosen = mean(totals.chosen);
  summary.meanRewardRejected = mean(totals.rejected);
  if (lowest) {
    const text = await store.scalar<string | null>('SELECT text FROM sentences WHERE pair_id = $1 AND side = $2 AND idx = $3',
      [lowest.pairId, lowest.side, lowest.idx]);
    summary.mostPenalised = { pairId: lowest.pairId, side: lowest.side, idx: lowest.idx, reward: lowest.reward, text: text ?? null };
  }
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}

/** Checks what the model passes rely on beyond the trainer's own checks; errors name the pair and the field. */
function checkTokenIds(pair: ShardPair, vocabSize: number): void {
  for (const field of ['promptIds', 'chosenIds', 'rejectedIds'] as const) {
    const bad = pair[field].findIndex((id) => !Number.isInteger(id) || id < 0 || id >= vocabSize);
    if (bad >= 0) {
      throw new Error(`pair ${pair.pairId}: ${field}[${bad}] = ${pair[field][bad]} is not a token id of the model's ` +
        `${vocabSize}-token vocabulary (shards written for another tokenizer?)`);
    }
  }
}
