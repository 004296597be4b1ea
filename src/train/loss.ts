import { tf } from '../model/backend.js';
import {
  perplexityWeightsBackward, rowTotals, sentenceLayout, sentenceWeights, slotSums, type SentenceLayout, type SentenceWeights,
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

/** Which positions of a batch are real tokens, and where each chosen token goes; built once per batch from the data. */
export interface BatchLayout {
  batch: number;
  /** Padded lengths of the chosen and rejected responses (they may differ). */
  chosenLength: number;
  rejectedLength: number;
  /** The chosen tokens' sentence slots (−1 on padding). */
  sentences: SentenceLayout;
  /** [batch · rejectedLength]: 1 on real rejected tokens. */
  rejectedKeep: Uint8Array;
  /** [batch]: 1 for pairs with a token on either side; padding rows are left out of the mean. */
  pairMask: Uint8Array;
  /** Σ pairMask, at least 1 (the divisor of the mean). */
  pairs: number;
}

/** The layout from flat row-major arrays: sentence ids (−1 outside) and real-token flags of each side. */
export function buildLayout(input: {
  batch: number; numSentences: number;
  chosenLength: number; chosenIds: ArrayLike<number>; chosenKeep: ArrayLike<boolean | number>;
  rejectedLength: number; rejectedKeep: ArrayLike<boolean | number>;
}): BatchLayout {
  const { batch, chosenLength, rejectedLength } = input;
  const sentences = sentenceLayout(input.chosenIds, input.chosenKeep, batch, chosenLength, input.numSentences);
  const rejectedKeep = Uint8Array.from({ length: batch * rejectedLength }, (_, p) => (input.rejectedKeep[p] ? 1 : 0));
  const pairMask = new Uint8Array(batch);
  for (let p = 0; p < batch * chosenLength; p++) if (sentences.tokenSlot[p]! >= 0) pairMask[Math.floor(p / chosenLength)] = 1;
  for (let p = 0; p < batch * rejectedLength; p++) if (rejectedKeep[p]) pairMask[Math.floor(p / rejectedLength)] = 1;
  return { batch, chosenLength, rejectedLength, sentences, rejectedKeep, pairMask, pairs: Math.max(1, pairMask.reduce((a, b) => a + b, 0)) };
}

/**
 * A batch of preference pairs: per-token log-probs, row-major and padded to the layout's lengths. Padding is
 * never read, so padded positions may hold anything (even −Infinity or NaN). `P` is how the policy's
 * log-probs are held and `D` the data's (reference log-probs, similarity): plain arrays for `lossForward`;
 * for the differentiable `aspoLoss` the policy's are tensors and the data may be either.
 */
export interface LossInputs<P, D = ArrayLike<number>> {
  layout: BatchLayout;
  chosen: { policyLogps: P; refLogps: D };
  rejected: { policyLogps: P; refLogps: D };
  /** S_i per chosen sentence, [batch · K]; needed when alpha > 0. */
  similarity?: D;
}

export type LossArrays = LossInputs<ArrayLike<number>>;
/** What a trainer passes: the policy's log-probs as [batch, length] tensors from its forward pass. */
export type PreferenceBatch = LossInputs<tf.Tensor2D, ArrayLike<number> | tf.Tensor>;

/** How the chosen response is weighted, per slot [batch · (K + 1)] (K sentences, then the tokens outside them). */
export interface ChosenWeighting {
  sentences: SentenceWeights & {
    /** m = 1 + λ·w per slot (1 for the outside slot); `refMultipliers` those applied to the reference. */
    multipliers: Float64Array;
    refMultipliers: Float64Array;
  };
  /** N·m per slot: the factor on each of the slot's tokens in the margin (N = 1 unless normalize is "mass"). */
  slotMultipliers: Float64Array;
  /** The same for the reference log-probs; the same array unless refWeights is "own". */
  refSlotMultipliers: Float64Array;
  /** Per-slot sums of the chosen policy and reference log-probs. */
  policySums: Float64Array;
  refSums: Float64Array;
}

/** The loss's values for a batch; per-pair arrays are [batch], and padding rows have pairMask 0 and margin 0. */
export interface LossValues {
  /** Mean of −log σ(margin) over the real pairs. */
  loss: number;
  margins: Float64Array;
  /** β·(weighted) chosen log-ratio and β·rejected log-ratio; margins = chosenRewards − rejectedRewards. */
  chosenRewards: Float64Array;
  rejectedRewards: Float64Array;
  /** Σ log π of each side's real tokens. */
  chosenLogps: Float64Array;
  rejectedLogps: Float64Array;
  pairMask: Uint8Array;
  /** The chosen response's weighting; absent for DPO. */
  weighting?: ChosenWeighting;
}

/** dL/d(policy log-probs), row-major like the inputs; 0 on padding. */
export interface LossGradients {
  chosen: Float32Array;
  rejected: Float32Array;
}

/** Whether the weights can change with the policy's log-probs (and so carry a gradient unless detached). */
function weightsFollowPolicy(config: AspoLossConfig): boolean {
  return config.lossType === 'aspo' && config.pplSource === 'policy' && config.alpha < 1 && !config.detachWeights;
}

/** −log σ(M) = softplus(−M), stable for any M. */
function softplusOfNegative(margin: number): number {
  return margin > 0 ? Math.log1p(Math.exp(-margin)) : -margin + Math.log1p(Math.exp(margin));
}

/** Σ (log π − log π_ref) and Σ log π of each row's real rejected tokens, [batch] each, in one pass. */
function rejectedSums(inputs: LossArrays): { logratio: Float64Array; logps: Float64Array } {
  const { batch, rejectedLength, rejectedKeep } = inputs.layout;
  const { policyLogps, refLogps } = inputs.rejected;
  const logratio = new Float64Array(batch);
  const logps = new Float64Array(batch);
  for (let b = 0, p = 0; b < batch; b++) {
    for (let t = 0; t < rejectedLength; t++, p++) {
      if (!rejectedKeep[p]) continue;
      logratio[b] += policyLogps[p]! - refLogps[p]!;
      logps[b] += policyLogps[p]!;
    }
  }
  return { logratio, logps };
}

/** Spec steps 3–5 and the multipliers of step 6, from the per-slot sums of the chosen log-probs. */
function weightingOf(inputs: LossArrays, config: AspoLossConfig, policySums: Float64Array, refSums: Float64Array): ChosenWeighting {
  if (config.alpha > 0 && !inputs.similarity) {
    throw new Error(`similarity is required when alpha > 0 (alpha = ${config.alpha}); give it, or set alpha to 0`);
  }
  const layout = inputs.layout.sentences;
  const needsPerplexity = config.alpha < 1;
  const w = sentenceWeights({
    layout,
    pplSums: needsPerplexity ? (config.pplSource === 'policy' ? policySums : refSums) : undefined,
    ownRefSums: needsPerplexity && config.refWeights === 'own' && config.pplSource === 'policy' ? refSums : undefined,
    similarity: inputs.similarity,
    alpha: config.alpha,
  });
  const { slots, counts } = layout;
  const multipliersOf = (weights: Float64Array): [Float64Array, Float64Array] => {
    const multipliers = new Float64Array(weights.length);
    for (let s = 0; s < weights.length; s++) multipliers[s] = 1 + config.scale * weights[s]!;
    if (config.normalize === 'none') return [multipliers, multipliers];
    // N = Σ1 / Σm over the response's tokens; at least 1 in the denominator for empty rows.
    const scaled = new Float64Array(multipliers.length);
    for (let b = 0; b < layout.batch; b++) {
      const { tokens, mass } = rowMass(multipliers, counts, slots, b);
      for (let s = b * slots; s < (b + 1) * slots; s++) scaled[s] = multipliers[s]! * tokens / Math.max(mass, 1);
    }
    return [multipliers, scaled];
  };
  const [multipliers, slotMultipliers] = multipliersOf(w.weights);
  const [refMultipliers, refSlotMultipliers] = w.refWeights === w.weights ? [multipliers, slotMultipliers] : multipliersOf(w.refWeights);
  return { sentences: { ...w, multipliers, refMultipliers }, slotMultipliers, refSlotMultipliers, policySums, refSums };
}

/** One slot's term of the chosen log-ratio: N·m·Σ log π − N_ref·m^ref·Σ log π_ref. */
export function slotTerm(w: ChosenWeighting, slot: number): number {
  return w.slotMultipliers[slot]! * w.policySums[slot]! - w.refSlotMultipliers[slot]! * w.refSums[slot]!;
}

/** The weighted chosen log-ratio of each pair, the sum of its slots' terms, [batch]. */
function weightedLogratio(w: ChosenWeighting, layout: SentenceLayout): Float64Array {
  const { batch, slots } = layout;
  const totals = new Float64Array(batch);
  for (let b = 0, s = 0; b < batch; b++) {
    let total = 0;
    for (let k = 0; k < slots; k++, s++) total += slotTerm(w, s);
    totals[b] = total;
  }
  return totals;
}

/** Σ n_k (tokens) and Σ n_k·m_k (their multiplier mass) over row b's slots. */
function rowMass(multipliers: Float64Array, counts: Int32Array, slots: number, b: number): { tokens: number; mass: number } {
  let tokens = 0;
  let mass = 0;
  for (let s = b * slots; s < (b + 1) * slots; s++) {
    tokens += counts[s]!;
    mass += counts[s]! * multipliers[s]!;
  }
  return { tokens, mass };
}

/** Spec step 6 (or DPO) for a batch: the loss, per-pair margins and rewards, and the chosen weighting. */
export function lossForward(inputs: LossArrays, config: AspoLossConfig = DEFAULT_LOSS_CONFIG): LossValues {
  const { layout, chosen } = inputs;
  const { batch, sentences, pairMask, pairs } = layout;
  const { beta } = config;
  // DPO and ASPO make the same passes over the tokens; ASPO only reweights the per-slot sums.
  const sums = slotSums(chosen.policyLogps, chosen.refLogps, sentences);
  const rejected = rejectedSums(inputs);
  const chosenLogps = rowTotals(sums.policy, sentences);
  const weighting = config.lossType === 'aspo' ? weightingOf(inputs, config, sums.policy, sums.ref) : undefined;
  let chosenLogratio: Float64Array;
  if (weighting) {
    chosenLogratio = weightedLogratio(weighting, sentences);
  } else {
    const refTotals = rowTotals(sums.ref, sentences);
    chosenLogratio = chosenLogps.map((x, b) => x - refTotals[b]!);
  }
  const chosenRewards = chosenLogratio.map((x) => beta * x);
  const rejectedRewards = rejected.logratio.map((x) => beta * x);
  const margins = chosenRewards.map((c, b) => (pairMask[b] ? c - rejectedRewards[b]! : 0));
  let total = 0;
  for (let b = 0; b < batch; b++) if (pairMask[b]) total += softplusOfNegative(margins[b]!);
  return {
    loss: total / pairs,
    margins, chosenRewards, rejectedRewards,
    chosenLogps,
    rejectedLogps: rejected.logps,
    pairMask, weighting,
  };
}

/**
 * dL/d(policy log-probs) of `lossForward`'s loss, in closed form. With M = β·(C − R), dL/dM = −σ(−M) / pairs;
 * a rejected token gets −β·dL/dM, a chosen token of slot k β·dL/dM·N·m_k (1 for DPO), plus — when the weights
 * follow the policy and are not detached — the part through its slot's perplexity weight.
 */
export function lossGradients(inputs: LossArrays, config: AspoLossConfig, values: LossValues): LossGradients {
  const { layout } = inputs;
  const { batch, chosenLength, rejectedLength, sentences, pairs } = layout;
  // dL/d(chosen log-ratio) = β·dL/dM per pair; the rejected log-ratio gets its negative
  const dLogratio = values.margins.map((m, b) => (values.pairMask[b] ? -config.beta / (1 + Math.exp(m)) / pairs : 0));
  const rejected = new Float32Array(batch * rejectedLength);
  for (let b = 0, p = 0; b < batch; b++) {
    for (let t = 0; t < rejectedLength; t++, p++) if (layout.rejectedKeep[p]) rejected[p] = -dLogratio[b]!;
  }
  const { slots, tokenSlot } = sentences;
  const w = values.weighting;
  // dL/d(slot sum of the chosen policy log-probs), per slot
  const slotGrad = new Float64Array(batch * slots);
  for (let s = 0; s < slotGrad.length; s++) slotGrad[s] = dLogratio[Math.floor(s / slots)]! * (w ? w.slotMultipliers[s]! : 1);
  if (w && weightsFollowPolicy(config)) {
    const through = perplexityWeightsBackward(sentences, w.policySums, w.sentences, config.alpha, weightGradient(config, sentences, w, dLogratio));
    through.forEach((g, s) => { slotGrad[s]! += g; });
  }
  const chosen = new Float32Array(batch * chosenLength);
  for (let b = 0, p = 0; b < batch; b++) {
    for (let t = 0; t < chosenLength; t++, p++) {
      const slot = tokenSlot[p]!;
      if (slot >= 0) chosen[p] = slotGrad[b * slots + slot]!;
    }
  }
  return { chosen, rejected };
}

/**
 * dL/dw per slot for policy-dependent weights: C = N(m)·Σ_k m_k·A_k − (reference terms constant in m), with
 * A_k = Σπ − Σπ_ref when the reference shares the multipliers and Σπ otherwise, m = 1 + λ·w, and with
 * normalize "mass" N = Σn / Σ n·m, so dN/dm_k = −N·n_k / Σ n·m (0 where the mass is held at its floor of 1).
 */
function weightGradient(config: AspoLossConfig, layout: SentenceLayout, w: ChosenWeighting, dLogratio: Float64Array): Float64Array {
  const { slots, counts, present } = layout;
  const { multipliers } = w.sentences;
  const shared = w.refSlotMultipliers === w.slotMultipliers;
  const grad = new Float64Array(multipliers.length);
  for (let b = 0; b < layout.batch; b++) {
    if (dLogratio[b] === 0) continue;
    const a = (s: number) => (shared ? w.policySums[s]! - w.refSums[s]! : w.policySums[s]!);
    let n = 1;
    let dN = (_s: number) => 0;
    if (config.normalize === 'mass') {
      const { tokens, mass } = rowMass(multipliers, counts, slots, b);
      n = tokens / Math.max(mass, 1);
      if (mass > 1) dN = (s) => -n * counts[s]! / mass;
    }
    let weighted = 0;
    for (let s = b * slots; s < (b + 1) * slots; s++) weighted += multipliers[s]! * a(s);
    for (let s = b * slots; s < (b + 1) * slots; s++) {
      if (present[s]) grad[s] = dLogratio[b]! * config.scale * (n * a(s) + dN(s) * weighted);
    }
  }
  return grad;
}

/** Data given as a tensor, read back (row-major); arrays as they are. */
function hostValues(values: ArrayLike<number> | tf.Tensor): ArrayLike<number> {
  return values instanceof tf.Tensor ? values.dataSync() : values;
}

/** The differentiable loss plus its values (read back as numbers). */
export interface AspoLossOutput {
  loss: tf.Scalar;
  values: LossValues;
}

/**
 * The loss as one TensorFlow.js op, for the caller's gradient tape: the policy's log-probs in, a scalar out,
 * with `lossGradients` as its gradient. The maths runs on the host in float64 — O(tokens) work, where the same
 * maths as tensor ops costs dozens of kernel launches — and the tape records a single node.
 */
export function aspoLoss(batch: PreferenceBatch, config: AspoLossConfig = DEFAULT_LOSS_CONFIG): AspoLossOutput {
  let values: LossValues | undefined;
  const op = tf.customGrad(((policyChosen: tf.Tensor, policyRejected: tf.Tensor) => {
    const inputs: LossArrays = {
      layout: batch.layout,
      chosen: { policyLogps: policyChosen.dataSync(), refLogps: hostValues(batch.chosen.refLogps) },
      rejected: { policyLogps: policyRejected.dataSync(), refLogps: hostValues(batch.rejected.refLogps) },
      similarity: batch.similarity && hostValues(batch.similarity),
    };
    const forward = lossForward(inputs, config);
    values = forward;
    return {
      value: tf.scalar(forward.loss),
      gradFunc: (dy: tf.Tensor) => {
        const scale = dy.dataSync()[0]!;
        const grads = lossGradients(inputs, config, forward);
        if (scale !== 1) for (const g of [grads.chosen, grads.rejected]) g.forEach((v, i) => { g[i] = v * scale; });
        return [tf.tensor2d(grads.chosen, policyChosen.shape as [number, number]), tf.tensor2d(grads.rejected, policyRejected.shape as [number, number])];
      },
    };
  }) as never) as (chosen: tf.Tensor, rejected: tf.Tensor) => tf.Scalar;
  const loss = op(batch.chosen.policyLogps, batch.rejected.policyLogps);
  return { loss, values: values! };
}

/** The logged metrics: DPO's usual names, plus ASPO's weight statistics. */
export const DPO_METRICS = ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/margins', 'rewards/accuracies',
  'logps/chosen', 'logps/rejected'] as const;
export const ASPO_METRICS = ['aspo/weights_mean', 'aspo/weights_std', 'aspo/one_sentence_fraction'] as const;
export type LossMetrics = Record<(typeof DPO_METRICS)[number], number> & Partial<Record<(typeof ASPO_METRICS)[number], number>>;

/**
 * What the logged metrics are means of, as sums: over the real pairs (the loss, then each DPO metric), and over the
 * chosen sentences' weights. Sums of shards add up to the sums of their batch, so a batch computed in shards logs
 * what one pass over it would (`addMetricSums`).
 */
export interface LossMetricSums {
  pairs: number;
  /** Σ over real pairs of each DPO metric's per-pair value (the loss's: −log σ(margin)). */
  perPair: Record<(typeof DPO_METRICS)[number], number>;
  /** ASPO only: Σ w, Σ w², how many w, and how many pairs have at most one chosen sentence. */
  weights?: { count: number; sum: number; sumOfSquares: number; oneSentencePairs: number };
}

export function lossMetricSums(values: LossValues): LossMetricSums {
  const { pairMask } = values;
  const pairs = pairMask.reduce((a, b) => a + b, 0);
  const pairSum = (x: (b: number) => number) => {
    let sum = 0;
    for (let b = 0; b < pairMask.length; b++) if (pairMask[b]) sum += x(b);
    return sum;
  };
  const sums: LossMetricSums = {
    pairs,
    perPair: {
      // the mean loss times its divisor (which is at least 1, so a batch without real pairs sums to 0 here)
      loss: values.loss * pairs,
      'rewards/chosen': pairSum((b) => values.chosenRewards[b]!),
      'rewards/rejected': pairSum((b) => values.rejectedRewards[b]!),
      'rewards/margins': pairSum((b) => values.margins[b]!),
      'rewards/accuracies': pairSum((b) => (values.margins[b]! > 0 ? 1 : 0)),
      'logps/chosen': pairSum((b) => values.chosenLogps[b]!),
      'logps/rejected': pairSum((b) => values.rejectedLogps[b]!),
    },
  };
  const s = values.weighting?.sentences;
  if (s) {
    const slots = s.present.length / pairMask.length;
    const sentencesOf = new Float64Array(pairMask.length);
    const weights = { count: 0, sum: 0, sumOfSquares: 0, oneSentencePairs: 0 };
    s.present.forEach((present, i) => {
      if (!present) return;
      sentencesOf[Math.floor(i / slots)]!++;
      if (!pairMask[Math.floor(i / slots)]) return;
      weights.count++;
      weights.sum += s.weights[i]!;
      weights.sumOfSquares += s.weights[i]! ** 2;
    });
    weights.oneSentencePairs = pairSum((b) => (sentencesOf[b]! <= 1 ? 1 : 0));
    sums.weights = weights;
  }
  return sums;
}

/** The sums of a batch from its shards' sums. */
export function addMetricSums(parts: readonly LossMetricSums[]): LossMetricSums {
  const total: LossMetricSums = { pairs: 0, perPair: Object.fromEntries(DPO_METRICS.map((name) => [name, 0])) as LossMetricSums['perPair'] };
  for (const part of parts) {
    total.pairs += part.pairs;
    for (const name of DPO_METRICS) total.perPair[name] += part.perPair[name];
    if (part.weights) {
      const w = (total.weights ??= { count: 0, sum: 0, sumOfSquares: 0, oneSentencePairs: 0 });
      w.count += part.weights.count;
      w.sum += part.weights.sum;
      w.sumOfSquares += part.weights.sumOfSquares;
      w.oneSentencePairs += part.weights.oneSentencePairs;
    }
  }
  return total;
}

/** Batch means over the real pairs (weight statistics over their sentences), from the metric sums. */
export function metricsOfSums(sums: LossMetricSums): LossMetrics {
  const pairs = Math.max(1, sums.pairs);
  const metrics = Object.fromEntries(DPO_METRICS.map((name) => [name, sums.perPair[name] / pairs])) as LossMetrics;
  if (sums.weights) {
    const { count, sum, sumOfSquares, oneSentencePairs } = sums.weights;
    const mean = sum / Math.max(1, count);
    metrics['aspo/weights_mean'] = mean;
    metrics['aspo/weights_std'] = Math.sqrt(Math.max(0, sumOfSquares / Math.max(1, count) - mean * mean));
    metrics['aspo/one_sentence_fraction'] = oneSentencePairs / pairs;
  }
  return metrics;
}

/** Batch means over the real pairs (weight statistics over their sentences). */
export function lossMetrics(values: LossValues): LossMetrics {
  return metricsOfSums(lossMetricSums(values));
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
 * Pads pairs into a batch (right padding), with its layout built here once. K is the largest similarity length
 * or sentence id + 1, at least 1; similarity is padded with 0 (padded slots have no tokens, so they are absent)
 * and included only when every pair has it.
 */
export function packPairs(pairs: PairArrays[]): LossArrays {
  if (pairs.length === 0) throw new Error('packPairs needs at least one pair');
  pairs.forEach((pair, i) => checkPair(pair, `pairs[${i}].`));
  const numSentences = Math.max(1, ...pairs.map((p) => Math.max(p.chosen.similarity?.length ?? 0, ...p.chosen.sentenceIds.map((id) => id + 1))));
  const width = (rows: ArrayLike<number>[]) => Math.max(1, ...rows.map((r) => r.length));
  const chosenLength = width(pairs.map((p) => p.chosen.policyLogps));
  const rejectedLength = width(pairs.map((p) => p.rejected.policyLogps));
  const pad = (rows: ArrayLike<number>[], length: number, fill = 0): Float64Array => {
    const out = new Float64Array(rows.length * length).fill(fill);
    rows.forEach((row, b) => out.set(row, b * length));
    return out;
  };
  const keep = (rows: ArrayLike<number>[], length: number) => pad(rows.map((r) => new Array<number>(r.length).fill(1)), length);
  return {
    layout: buildLayout({
      batch: pairs.length, numSentences,
      chosenLength, chosenIds: pad(pairs.map((p) => p.chosen.sentenceIds), chosenLength, -1), chosenKeep: keep(pairs.map((p) => p.chosen.policyLogps), chosenLength),
      rejectedLength, rejectedKeep: keep(pairs.map((p) => p.rejected.policyLogps), rejectedLength),
    }),
    chosen: { policyLogps: pad(pairs.map((p) => p.chosen.policyLogps), chosenLength), refLogps: pad(pairs.map((p) => p.chosen.refLogps), chosenLength) },
    rejected: { policyLogps: pad(pairs.map((p) => p.rejected.policyLogps), rejectedLength), refLogps: pad(pairs.map((p) => p.rejected.refLogps), rejectedLength) },
    similarity: pairs.every((p) => p.chosen.similarity) ? pad(pairs.map((p) => p.chosen.similarity!), numSentences) : undefined,
  };
}

/** The same batch with the policy's log-probs as [batch, length] tensors, for `aspoLoss` (the caller disposes them). */
export function withPolicyTensors(arrays: LossArrays): PreferenceBatch {
  const { layout } = arrays;
  const tensor = (values: ArrayLike<number>, length: number) => tf.tensor2d(Float32Array.from(values), [layout.batch, length]);
  return {
    ...arrays,
    chosen: { ...arrays.chosen, policyLogps: tensor(arrays.chosen.policyLogps, layout.chosenLength) },
    rejected: { ...arrays.rejected, policyLogps: tensor(arrays.rejected.policyLogps, layout.rejectedLength) },
  };
}
