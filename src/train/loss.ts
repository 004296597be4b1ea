import { tf } from './backend.js';
import {
  disposeSentenceLayout, sentenceLayout, sentenceWeights, slotSums, spreadSlots, type SentenceLayout, type SentenceWeights,
} from './weights.js';

/**
 * The ASPO loss (sentence-level preference optimization, arXiv 2505.19100) and plain DPO through the
 * same code: padded, masked per-token log-probs in, a scalar loss out, differentiable with respect
 * to the policy's log-probs. Formulas and defaults: ../shared/spec/aspo-method.md.
 */

export const LOSS_TYPES = ['aspo', 'dpo'] as const;
export const NORMALIZE_MODES = ['none', 'mass'] as const;
export const REF_WEIGHT_MODES = ['shared', 'own'] as const;
export const PPL_SOURCES = ['policy', 'reference'] as const;

export interface AspoLossConfig {
  /** "dpo" ignores every sentence option and gives plain DPO. */
  lossType: (typeof LOSS_TYPES)[number];
  /** DPO temperature, > 0. */
  beta: number;
  /** Similarity vs perplexity in w = α·S' + (1 − α)·P', in [0, 1]. */
  alpha: number;
  /** λ in the multiplier m = 1 + λ·w, ≥ 0; 0 gives exact DPO. */
  scale: number;
  /** "mass" multiplies the chosen term by Σ1 / Σm so the average multiplier is 1. */
  normalize: (typeof NORMALIZE_MODES)[number];
  /** Stop the gradient through the weights (they depend on the policy when pplSource is "policy"). */
  detachWeights: boolean;
  /** "shared": the policy's multipliers on both log-probs; "own": the reference weighted by its own perplexity. */
  refWeights: (typeof REF_WEIGHT_MODES)[number];
  /** Which log-probs the sentence perplexity comes from. */
  pplSource: (typeof PPL_SOURCES)[number];
}

/** The spec's defaults, declared once. */
export const DEFAULT_LOSS_CONFIG: Readonly<AspoLossConfig> = Object.freeze({
  lossType: 'aspo',
  beta: 0.1,
  alpha: 0.5,
  scale: 1,
  normalize: 'none',
  detachWeights: true,
  refWeights: 'shared',
  pplSource: 'policy',
});

export const LOSS_CONFIG_KEYS = Object.keys(DEFAULT_LOSS_CONFIG) as (keyof AspoLossConfig)[];

/** Fills defaults and checks every field (values may come from JSON); errors name the field. */
export function lossConfig(options: Partial<Record<keyof AspoLossConfig, unknown>> = {}): AspoLossConfig {
  const config = { ...DEFAULT_LOSS_CONFIG } as AspoLossConfig;
  const pick = <K extends keyof AspoLossConfig>(key: K, valid: (v: unknown) => boolean, expected: string): void => {
    const value = options[key];
    if (value === undefined) return;
    if (!valid(value)) throw new Error(`${key} must be ${expected}, got ${JSON.stringify(value)}`);
    config[key] = value as AspoLossConfig[K];
  };
  const number = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
  const oneOf = (list: readonly string[]) => (v: unknown) => typeof v === 'string' && list.includes(v);
  pick('lossType', oneOf(LOSS_TYPES), `one of ${LOSS_TYPES.join(', ')}`);
  pick('beta', (v) => number(v) && v > 0, 'a number > 0');
  pick('alpha', (v) => number(v) && v >= 0 && v <= 1, 'a number in [0, 1]');
  pick('scale', (v) => number(v) && v >= 0, 'a number ≥ 0');
  pick('normalize', oneOf(NORMALIZE_MODES), `one of ${NORMALIZE_MODES.join(', ')}`);
  pick('detachWeights', (v) => typeof v === 'boolean', 'true or false');
  pick('refWeights', oneOf(REF_WEIGHT_MODES), `one of ${REF_WEIGHT_MODES.join(', ')}`);
  pick('pplSource', oneOf(PPL_SOURCES), `one of ${PPL_SOURCES.join(', ')}`);
  return config;
}

/** One side of a batch of pairs: [batch, T] float32, padded; mask is 1 on response tokens, 0 on padding. */
export interface ResponseSide {
  policyLogps: tf.Tensor2D;
  refLogps: tf.Tensor2D;
  mask: tf.Tensor2D;
}

/** Which positions of one side are real tokens (mask > 0). */
export interface RowLayout {
  /** Flat positions b·T + t of the real tokens, then a sentinel (position 0). */
  tokens: tf.Tensor1D;
  /** Their rows b (non-decreasing), then the sentinel row `batch`, cut off after summing. */
  rows: tf.Tensor1D;
  /** 1 on real tokens, 0 on padding, [batch, T]. */
  keep: tf.Tensor2D;
}

/**
 * Everything about a batch's shape the loss needs: it depends only on the masks and sentence ids, so
 * a collator builds it once per batch (packPairs does). Padding is never read: sums run over the
 * listed real tokens only, so padded positions may hold anything (even −Infinity or NaN).
 */
export interface BatchLayout {
  chosen: RowLayout;
  rejected: RowLayout;
  sentences: SentenceLayout;
  /** 1 for pairs with a token on either side, [batch]; padding rows are left out of the mean. */
  pairMask: tf.Tensor1D;
  /** Σ pairMask, at least 1 (the divisor of the mean). */
  pairs: number;
}

/** A batch of preference pairs. The chosen and rejected sides may have different lengths T. */
export interface PreferenceBatch {
  chosen: ResponseSide & {
    /** [batch, T] int32: the sentence index of each token, −1 outside any sentence. */
    sentenceIds: tf.Tensor2D;
  };
  rejected: ResponseSide;
  /** S_i per chosen sentence, [batch, K]; needed when alpha > 0. */
  similarity?: tf.Tensor2D;
  /** K, the number of sentence slots per row (ids are < K). */
  numSentences: number;
  /** Optional precomputed layout (packPairs builds it); otherwise each call reads the masks and ids back to build one. */
  layout?: BatchLayout;
}

/** The layout from flat row-major arrays: sentence ids (−1 outside) and real-token flags of each side. */
export function buildLayout(input: {
  batch: number; numSentences: number;
  chosenLength: number; chosenIds: ArrayLike<number>; chosenKeep: ArrayLike<boolean | number>;
  rejectedLength: number; rejectedKeep: ArrayLike<boolean | number>;
}): BatchLayout {
  const { batch } = input;
  const hasToken = new Uint8Array(batch);
  const rowLayout = (keep: ArrayLike<boolean | number>, length: number): RowLayout => {
    const tokens: number[] = [];
    const rows: number[] = [];
    const keepValues = new Float32Array(batch * length);
    for (let p = 0; p < batch * length; p++) {
      if (!keep[p]) continue;
      const row = Math.floor(p / length);
      tokens.push(p);
      rows.push(row);
      keepValues[p] = 1;
      hasToken[row] = 1;
    }
    return {
      tokens: tf.tensor1d([...tokens, 0], 'int32'),
      rows: tf.tensor1d([...rows, batch], 'int32'),
      keep: tf.tensor2d(keepValues, [batch, length]),
    };
  };
  // First: it checks the ids, before any tensor is made.
  const sentences = sentenceLayout(input.chosenIds, input.chosenKeep, batch, input.chosenLength, input.numSentences);
  const chosen = rowLayout(input.chosenKeep, input.chosenLength);
  const rejected = rowLayout(input.rejectedKeep, input.rejectedLength);
  return {
    chosen,
    rejected,
    sentences,
    pairMask: tf.tensor1d(Float32Array.from(hasToken)),
    pairs: Math.max(1, hasToken.reduce((a, b) => a + b, 0)),
  };
}

/** The layout of a batch given as tensors only: reads its masks and sentence ids back (data, not model output). */
export function batchLayout(batch: PreferenceBatch): BatchLayout {
  const [size, chosenLength] = batch.chosen.mask.shape;
  const positive = (mask: tf.Tensor2D) => Array.from(mask.dataSync(), (v) => v > 0);
  return buildLayout({
    batch: size, numSentences: batch.numSentences,
    chosenLength, chosenIds: batch.chosen.sentenceIds.dataSync(), chosenKeep: positive(batch.chosen.mask),
    rejectedLength: batch.rejected.mask.shape[1], rejectedKeep: positive(batch.rejected.mask),
  });
}

export function disposeLayout(layout: BatchLayout): void {
  for (const side of [layout.chosen, layout.rejected]) tf.dispose([side.tokens, side.rows, side.keep]);
  disposeSentenceLayout(layout.sentences);
  layout.pairMask.dispose();
}

/** Σ_t x_t over each row's real tokens, [batch]; padding is never read. */
function rowSums(x: tf.Tensor2D, layout: RowLayout): tf.Tensor1D {
  const op = tf.customGrad(((values: tf.Tensor, save: tf.GradSaveFunc) => {
    save([layout.keep]);
    const [batch] = values.shape;
    return {
      value: tf.slice(tf.sparse.sparseSegmentSum(tf.reshape(values, [-1]), layout.tokens, layout.rows), 0, batch),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.mul(tf.reshape(dy, [-1, 1]), saved[0]!),
    };
  }) as never) as (values: tf.Tensor) => tf.Tensor;
  return op(x) as tf.Tensor1D;
}

/** How the chosen response is weighted, per slot [batch, K + 1] (K sentences, then the tokens outside them). */
export interface ChosenWeighting {
  sentences: SentenceWeights & {
    /** m = 1 + λ·w per slot (1 for the outside slot); `refMultipliers` those applied to the reference. */
    multipliers: tf.Tensor2D;
    refMultipliers: tf.Tensor2D;
  };
  /** N·m per slot: the factor on each of the slot's tokens in the margin (N = 1 unless normalize is "mass"). */
  slotMultipliers: tf.Tensor2D;
  /** The same for the reference log-probs; the same tensor unless refWeights is "own". */
  refSlotMultipliers: tf.Tensor2D;
  /**
   * The chosen response's terms of the margin before β, per slot: N·m·Σ(log π − log π_ref) with
   * refWeights "shared", N·m·Σ log π − N_ref·m^ref·Σ log π_ref with "own".
   */
  slotTerms: tf.Tensor2D;
}

/** Per-pair results, [batch]; padding rows (no token on either side) have pairMask 0 and margin 0. */
export interface AspoLossOutput {
  /** Mean of −log σ(margin) over the real pairs. */
  loss: tf.Scalar;
  margins: tf.Tensor1D;
  /** β·(weighted) chosen log-ratio and β·rejected log-ratio; margins = chosenRewards − rejectedRewards. */
  chosenRewards: tf.Tensor1D;
  rejectedRewards: tf.Tensor1D;
  pairMask: tf.Tensor1D;
  /** The chosen response's weighting; absent for DPO. */
  weighting?: ChosenWeighting;
}

/** Whether the weights can change with the policy's log-probs (and so carry a gradient unless detached). */
function weightsDependOnPolicy(config: AspoLossConfig): boolean {
  return config.pplSource === 'policy' && config.alpha < 1;
}

/** Spec steps 3–5 and the multipliers of step 6 for a batch, outside any gradient tape. */
export function chosenWeighting(batch: PreferenceBatch, config: AspoLossConfig): ChosenWeighting {
  const layout = batch.layout ?? batchLayout(batch);
  const weighting = tf.tidy(() => {
    const { policyLogps, refLogps } = batch.chosen;
    return weightingOf(batch, layout, config, slotSums(policyLogps, layout.sentences), slotSums(refLogps, layout.sentences)) as never;
  }) as ChosenWeighting;
  if (!batch.layout) disposeLayout(layout);
  return weighting;
}

/** The weighting from the per-slot sums of the chosen policy and reference log-probs. */
function weightingOf(batch: PreferenceBatch, layout: BatchLayout, config: AspoLossConfig,
  policySums: tf.Tensor2D, refSums: tf.Tensor2D): ChosenWeighting {
  if (config.alpha > 0 && !batch.similarity) {
    throw new Error(`similarity is required when alpha > 0 (alpha = ${config.alpha}); give it, or set alpha to 0`);
  }
  const needsPerplexity = config.alpha < 1;
  const w = sentenceWeights({
    layout: layout.sentences,
    pplSums: needsPerplexity ? (config.pplSource === 'policy' ? policySums : refSums) : undefined,
    ownRefSums: needsPerplexity && config.refWeights === 'own' && config.pplSource === 'policy' ? refSums : undefined,
    similarity: batch.similarity,
    alpha: config.alpha,
  });
  const { counts } = layout.sentences;
  const multipliersOf = (sentenceWeights: tf.Tensor2D): [tf.Tensor2D, tf.Tensor2D] => {
    const multipliers = tf.add(tf.mul(sentenceWeights, config.scale), 1) as tf.Tensor2D;
    if (config.normalize === 'none') return [multipliers, multipliers];
    // N = Σ1 / Σm over the response's tokens; at least 1 in the denominator for empty rows.
    const mass = tf.clipByValue(tf.sum(tf.mul(multipliers, counts), 1, true), 1, Infinity);
    return [multipliers, tf.mul(multipliers, tf.div(tf.sum(counts, 1, true), mass)) as tf.Tensor2D];
  };
  const [multipliers, slotMultipliers] = multipliersOf(w.weights);
  const [refMultipliers, refSlotMultipliers] = w.refWeights === w.weights ? [multipliers, slotMultipliers] : multipliersOf(w.refWeights);
  const slotTerms = (refSlotMultipliers === slotMultipliers
    ? tf.mul(slotMultipliers, tf.sub(policySums, refSums))
    : tf.sub(tf.mul(slotMultipliers, policySums), tf.mul(refSlotMultipliers, refSums))) as tf.Tensor2D;
  return { sentences: { ...w, multipliers, refMultipliers }, slotMultipliers, refSlotMultipliers, slotTerms };
}

/** Spec step 6 (or DPO) from the policy's log-probs; differentiable through every op. */
function lossForward(batch: PreferenceBatch, layout: BatchLayout, config: AspoLossConfig,
  policyChosen: tf.Tensor2D, policyRejected: tf.Tensor2D): AspoLossOutput {
  const { beta } = config;
  const rejectedLogratio = rowSums(tf.sub(policyRejected, batch.rejected.refLogps), layout.rejected);
  let weighting: ChosenWeighting | undefined;
  let chosenLogratio: tf.Tensor1D;
  if (config.lossType === 'aspo') {
    const sentences = layout.sentences;
    weighting = weightingOf(batch, layout, config, slotSums(policyChosen, sentences), slotSums(batch.chosen.refLogps, sentences));
    chosenLogratio = tf.sum(weighting.slotTerms, 1);
  } else {
    chosenLogratio = rowSums(tf.sub(policyChosen, batch.chosen.refLogps), layout.chosen);
  }
  const chosenRewards = tf.mul(chosenLogratio, beta) as tf.Tensor1D;
  const rejectedRewards = tf.mul(rejectedLogratio, beta) as tf.Tensor1D;
  const pairMask = tf.clone(layout.pairMask);
  const margins = tf.mul(tf.sub(chosenRewards, rejectedRewards), pairMask) as tf.Tensor1D;
  // −log σ(M) = softplus(−M): stable for any M (tf.logSigmoid's gradient is broken in tfjs 4.22).
  const loss = tf.mul(tf.sum(tf.mul(tf.softplus(tf.neg(margins)), pairMask)), 1 / layout.pairs) as tf.Scalar;
  return { loss, margins, chosenRewards, rejectedRewards, pairMask, weighting };
}

/**
 * The loss of spec step 6 (or DPO), to be called inside the caller's gradient tape. When the weights
 * are constants for the gradient (detachWeights, or weights that do not depend on the policy) the
 * loss carries its gradient in closed form, dL/dπ_c,t = −σ(−M)·β·N·m_t / pairs and
 * dL/dπ_r,t = σ(−M)·β / pairs, so the backward pass is a handful of kernels and never walks the
 * weight maths. Otherwise it is differentiated through every op (the gradient also flows through
 * the perplexity weights).
 */
export function aspoLoss(batch: PreferenceBatch, config: AspoLossConfig = DEFAULT_LOSS_CONFIG): AspoLossOutput {
  const layout = batch.layout ?? batchLayout(batch);
  const { policyLogps: policyChosen } = batch.chosen;
  const { policyLogps: policyRejected } = batch.rejected;
  if (config.lossType === 'aspo' && weightsDependOnPolicy(config) && !config.detachWeights) {
    return lossForward(batch, layout, config, policyChosen, policyRejected);
  }
  const { beta } = config;
  let forward: AspoLossOutput | undefined;
  // The forward runs inside the custom op, where the caller's tape records nothing (no tape nodes,
  // no saved inputs); its outputs other than the loss are kept there and handed to the caller below.
  const withGradient = tf.customGrad(((_chosen: tf.Tensor, _rejected: tf.Tensor, save: tf.GradSaveFunc) => {
    forward = lossForward(batch, layout, config, policyChosen, policyRejected);
    for (const t of outputTensors(forward)) if (t !== forward.loss) tf.keep(t);
    const factors = forward.weighting?.slotMultipliers;
    const { sentences } = layout;
    save([forward.margins, forward.pairMask, layout.rejected.keep, factors ?? layout.chosen.keep, sentences.tokenSlots]);
    return {
      value: forward.loss,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [margins, pairMask, rejectedKeep, chosenFactors, tokenSlots] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor2D];
        // dL/dM per pair, [batch, 1]: −σ(−M)·pairMask / pairs (padding rows have M = 0, hence the mask).
        const perPair = tf.reshape(tf.mul(tf.mul(tf.sigmoid(tf.neg(margins)), pairMask), tf.mul(dy, -beta / layout.pairs)), [-1, 1]);
        const gradChosen = factors
          ? spreadSlots(tf.mul(perPair, chosenFactors) as tf.Tensor2D, { ...sentences, tokenSlots })
          : tf.mul(perPair, chosenFactors);
        return [gradChosen, tf.mul(tf.neg(perPair), rejectedKeep)];
      },
    };
  }) as never) as (chosen: tf.Tensor, rejected: tf.Tensor) => tf.Scalar;
  const loss = withGradient(policyChosen, policyRejected);
  return { ...adoptKept(forward!), loss };
}

/**
 * Replaces each kept tensor of an output by a clone owned by the current scope (a clone shares the
 * data; no copy), so the caller's tf.tidy or tf.dispose frees it like any other result.
 */
function adoptKept(output: AspoLossOutput): AspoLossOutput {
  const clones = new Map<tf.Tensor, tf.Tensor>();
  const adopt = <T extends tf.Tensor | undefined>(t: T): T => {
    if (!t) return t;
    if (!clones.has(t)) {
      clones.set(t, tf.clone(t));
      t.dispose();
    }
    return clones.get(t) as T;
  };
  const w = output.weighting;
  return {
    loss: output.loss,
    margins: adopt(output.margins),
    chosenRewards: adopt(output.chosenRewards),
    rejectedRewards: adopt(output.rejectedRewards),
    pairMask: adopt(output.pairMask),
    weighting: w && {
      sentences: {
        present: adopt(w.sentences.present),
        weights: adopt(w.sentences.weights),
        refWeights: adopt(w.sentences.refWeights),
        perplexity: adopt(w.sentences.perplexity),
        perplexityNorm: adopt(w.sentences.perplexityNorm),
        similarityNorm: adopt(w.sentences.similarityNorm),
        multipliers: adopt(w.sentences.multipliers),
        refMultipliers: adopt(w.sentences.refMultipliers),
      },
      slotMultipliers: adopt(w.slotMultipliers),
      refSlotMultipliers: adopt(w.refSlotMultipliers),
      slotTerms: adopt(w.slotTerms),
    },
  };
}

/** The loss and its gradients with respect to the policy's chosen and rejected per-token log-probs. */
export interface LossAndGradients {
  output: AspoLossOutput;
  gradPolicyChosen: tf.Tensor2D;
  gradPolicyRejected: tf.Tensor2D;
}

/** One loss evaluation plus dL/d(policy log-probs). */
export function aspoLossAndGradients(batch: PreferenceBatch, config: AspoLossConfig = DEFAULT_LOSS_CONFIG): LossAndGradients {
  const layout = batch.layout ?? batchLayout(batch);
  let output: AspoLossOutput | undefined;
  const lossAndGrads = tf.valueAndGrads((policyChosen: tf.Tensor, policyRejected: tf.Tensor) => {
    const result = aspoLoss({
      ...batch,
      layout,
      chosen: { ...batch.chosen, policyLogps: policyChosen as tf.Tensor2D },
      rejected: { ...batch.rejected, policyLogps: policyRejected as tf.Tensor2D },
    }, config);
    output = keepOutput(result);
    return result.loss;
  });
  const { value, grads } = lossAndGrads([batch.chosen.policyLogps, batch.rejected.policyLogps]);
  if (!batch.layout) disposeLayout(layout);
  return {
    output: { ...output!, loss: value as tf.Scalar },
    gradPolicyChosen: grads[0] as tf.Tensor2D,
    gradPolicyRejected: grads[1] as tf.Tensor2D,
  };
}

/** Every tensor an output holds (for tf.dispose). */
export function outputTensors(output: AspoLossOutput): tf.Tensor[] {
  const w = output.weighting;
  const all: tf.Tensor[] = [output.loss, output.margins, output.chosenRewards, output.rejectedRewards, output.pairMask];
  if (w) {
    const s = w.sentences;
    all.push(s.present, s.weights, s.refWeights, s.multipliers, s.refMultipliers, w.slotMultipliers, w.refSlotMultipliers, w.slotTerms);
    for (const t of [s.perplexity, s.perplexityNorm, s.similarityNorm]) if (t) all.push(t);
  }
  return [...new Set(all)];
}

function keepOutput(output: AspoLossOutput): AspoLossOutput {
  for (const t of outputTensors(output)) tf.keep(t);
  return output;
}

/** The logged metrics: DPO's usual names, plus ASPO's weight statistics. */
export const DPO_METRICS = ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/margins', 'rewards/accuracies',
  'logps/chosen', 'logps/rejected'] as const;
export const ASPO_METRICS = ['aspo/weights_mean', 'aspo/weights_std', 'aspo/one_sentence_fraction'] as const;
export type LossMetrics = Record<(typeof DPO_METRICS)[number], number> & Partial<Record<(typeof ASPO_METRICS)[number], number>>;

/** Batch means over the real pairs (weight statistics over their sentences), read back as numbers. */
export async function lossMetrics(batch: PreferenceBatch, output: AspoLossOutput): Promise<LossMetrics> {
  const scalars = tf.tidy(() => {
    const pairs = tf.clipByValue(tf.sum(output.pairMask), 1, Infinity);
    const pairMean = (x: tf.Tensor1D) => tf.div(tf.sum(tf.mul(x, output.pairMask)), pairs);
    const summedLogps = (side: ResponseSide) => tf.sum(tf.where(tf.greater(side.mask, 0), side.policyLogps, tf.zerosLike(side.policyLogps)), 1) as tf.Tensor1D;
    const values: tf.Scalar[] = [
      output.loss,
      pairMean(output.chosenRewards),
      pairMean(output.rejectedRewards),
      pairMean(output.margins),
      pairMean(tf.cast(tf.greater(output.margins, 0), 'float32') as tf.Tensor1D),
      pairMean(summedLogps(batch.chosen)),
      pairMean(summedLogps(batch.rejected)),
    ].map((t) => t as tf.Scalar);
    const s = output.weighting?.sentences;
    if (s) {
      const present = tf.mul(s.present, tf.expandDims(output.pairMask, 1));
      const count = tf.clipByValue(tf.sum(present), 1, Infinity);
      const mean = tf.div(tf.sum(tf.mul(s.weights, present)), count);
      const variance = tf.div(tf.sum(tf.mul(tf.square(tf.sub(s.weights, mean)), present)), count);
      const oneSentence = tf.cast(tf.lessEqual(tf.sum(s.present, 1), 1), 'float32') as tf.Tensor1D;
      values.push(mean as tf.Scalar, tf.sqrt(variance) as tf.Scalar, pairMean(oneSentence) as tf.Scalar);
    }
    return tf.stack(values);
  });
  const numbers = Array.from(await scalars.data());
  scalars.dispose();
  const names = [...DPO_METRICS, ...(output.weighting ? ASPO_METRICS : [])];
  return Object.fromEntries(names.map((name, i) => [name, numbers[i]!])) as LossMetrics;
}

/** One pair as plain arrays (what `aspo loss` reads, and what tests build batches from). */
export interface PairArrays {
  chosen: { policyLogps: number[]; refLogps: number[]; sentenceIds: number[]; similarity?: number[] };
  rejected: { policyLogps: number[]; refLogps: number[] };
}

/**
 * Checks a pair's arrays agree: equal lengths per side, sentence ids integers ≥ −1, and a similarity
 * score (when given) for every sentence used. Errors name the field, after `prefix` (e.g. "pairs[3].").
 */
export function checkPair(pair: PairArrays, prefix = ''): void {
  const same = (a: number[], aName: string, b: number[], bName: string) => {
    if (a.length !== b.length) throw new Error(`${prefix}${aName} has ${a.length} entries but ${prefix}${bName} has ${b.length}`);
  };
  const { chosen, rejected } = pair;
  same(chosen.refLogps, 'chosen.refLogps', chosen.policyLogps, 'chosen.policyLogps');
  same(chosen.sentenceIds, 'chosen.sentenceIds', chosen.policyLogps, 'chosen.policyLogps');
  same(rejected.refLogps, 'rejected.refLogps', rejected.policyLogps, 'rejected.policyLogps');
  chosen.sentenceIds.forEach((id, i) => {
    if (!Number.isInteger(id) || id < -1) {
      throw new Error(`${prefix}chosen.sentenceIds[${i}] must be an integer ≥ −1 (−1 = outside any sentence), got ${id}`);
    }
    if (chosen.similarity && id >= chosen.similarity.length) {
      throw new Error(`${prefix}chosen.similarity has ${chosen.similarity.length} entries but ${prefix}chosen.sentenceIds[${i}] is sentence ${id}`);
    }
  });
}

/**
 * Pads pairs into a batch (right padding, mask 0), with its layout built here once.
 * K is the largest similarity length or sentence id + 1, at least 1; similarity is padded with 0
 * (padded slots have no tokens, so they are absent). Similarity is included only when every pair has it.
 */
export function packPairs(pairs: PairArrays[]): PreferenceBatch {
  if (pairs.length === 0) throw new Error('packPairs needs at least one pair');
  pairs.forEach((pair, i) => checkPair(pair, `pairs[${i}].`));
  const numSentences = Math.max(1, ...pairs.map((p) => Math.max(p.chosen.similarity?.length ?? 0, ...p.chosen.sentenceIds.map((id) => id + 1))));
  const pad = (rows: number[][], fill: number): number[][] => {
    const width = Math.max(1, ...rows.map((r) => r.length));
    return rows.map((r) => [...r, ...new Array<number>(width - r.length).fill(fill)]);
  };
  const side = (sides: { policyLogps: number[]; refLogps: number[] }[]): ResponseSide => ({
    policyLogps: tf.tensor2d(pad(sides.map((s) => s.policyLogps), 0)),
    refLogps: tf.tensor2d(pad(sides.map((s) => s.refLogps), 0)),
    mask: tf.tensor2d(pad(sides.map((s) => s.policyLogps.map(() => 1)), 0)),
  });
  const withSimilarity = pairs.every((p) => p.chosen.similarity);
  const ids = pad(pairs.map((p) => p.chosen.sentenceIds), -1);
  const keep = (lengths: number[], width: number) => lengths.flatMap((n) => Array.from({ length: width }, (_, t) => t < n));
  const chosenLength = ids[0]!.length;
  const rejectedLength = Math.max(1, ...pairs.map((p) => p.rejected.policyLogps.length));
  return {
    chosen: { ...side(pairs.map((p) => p.chosen)), sentenceIds: tf.tensor2d(ids, undefined, 'int32') },
    rejected: side(pairs.map((p) => p.rejected)),
    similarity: withSimilarity
      ? tf.tensor2d(pairs.map((p) => [...p.chosen.similarity!, ...new Array<number>(numSentences - p.chosen.similarity!.length).fill(0)]))
      : undefined,
    numSentences,
    layout: buildLayout({
      batch: pairs.length, numSentences,
      chosenLength, chosenIds: ids.flat(), chosenKeep: keep(pairs.map((p) => p.chosen.policyLogps.length), chosenLength),
      rejectedLength, rejectedKeep: keep(pairs.map((p) => p.rejected.policyLogps.length), rejectedLength),
    }),
  };
}

/** Frees a batch's tensors. */
export function disposeBatch(batch: PreferenceBatch): void {
  const { chosen, rejected } = batch;
  tf.dispose([chosen.policyLogps, chosen.refLogps, chosen.mask, chosen.sentenceIds, rejected.policyLogps, rejected.refLogps, rejected.mask]);
  if (batch.layout) disposeLayout(batch.layout);
  if (batch.similarity) batch.similarity.dispose();
}
