import { tf } from './backend.js';
import { sentenceMembership, sentenceOneHot, sentenceWeights, spreadToTokens, stopGradient, type SentenceWeights } from './weights.js';

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

/** A batch of preference pairs. The chosen and rejected sides may have different lengths T. */
export interface PreferenceBatch {
  chosen: ResponseSide & {
    /** [batch, T] int32: the sentence index of each token, −1 outside any sentence. */
    sentenceIds: tf.Tensor2D;
    /**
     * Optional [batch, T, K] float32 one-hot of `sentenceIds` (0 on padding). It depends only on the
     * data, so a collator can build it once per batch (packPairs does); otherwise it is built per call.
     */
    membership?: tf.Tensor3D;
  };
  rejected: ResponseSide;
  /** S_i per chosen sentence, [batch, K]; needed when alpha > 0. */
  similarity?: tf.Tensor2D;
  /** K, the number of sentence slots per row (ids are < K). */
  numSentences: number;
}

/** How the chosen response is weighted: per sentence, and spread onto its tokens. */
export interface ChosenWeighting {
  sentences: SentenceWeights & {
    /** m = 1 + λ·w per sentence, [batch, K]; `refMultipliers` those applied to the reference. */
    multipliers: tf.Tensor2D;
    refMultipliers: tf.Tensor2D;
  };
  /** N·m_t per token, [batch, T] (N = 1 unless normalize is "mass"; m_t = 1 outside sentences). */
  tokenMultipliers: tf.Tensor2D;
  /** The same for the reference log-probs; the same tensor unless refWeights is "own". */
  refTokenMultipliers: tf.Tensor2D;
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

/**
 * A response's log-probs with padding set to 0. Padding may hold any value (even −Infinity or NaN from
 * a model's padded positions); zeroing it before any product keeps every value, and so every gradient,
 * finite.
 */
class MaskedSide {
  readonly keep: tf.Tensor2D;
  private readonly zeros: tf.Tensor2D;

  constructor(readonly side: ResponseSide) {
    this.keep = tf.greater(side.mask, 0) as tf.Tensor2D;
    this.zeros = tf.zerosLike(side.mask) as tf.Tensor2D;
  }

  masked(x: tf.Tensor2D): tf.Tensor2D {
    return tf.where(this.keep, x, this.zeros) as tf.Tensor2D;
  }

  /** log π − log π_ref per token, 0 on padding. */
  logratio(): tf.Tensor2D {
    return this.masked(tf.sub(this.side.policyLogps, this.side.refLogps));
  }
}

/** Whether the weights can change with the policy's log-probs (and so carry a gradient unless detached). */
function weightsDependOnPolicy(config: AspoLossConfig): boolean {
  return config.pplSource === 'policy' && config.alpha < 1;
}

/**
 * Spec steps 3–5 and the multipliers of step 6 for a batch. Inside a gradient tape the result is
 * differentiable; with detachWeights it is cut off from the tape.
 */
export function chosenWeighting(batch: PreferenceBatch, config: AspoLossConfig): ChosenWeighting {
  return tf.tidy(() => weightingOf(batch, new MaskedSide(batch.chosen), config) as never);
}

function weightingOf(batch: PreferenceBatch, chosen: MaskedSide, config: AspoLossConfig): ChosenWeighting {
  if (config.alpha > 0 && !batch.similarity) {
    throw new Error(`similarity is required when alpha > 0 (alpha = ${config.alpha}); give it, or set alpha to 0`);
  }
  const { sentenceIds, mask, policyLogps, refLogps } = batch.chosen;
  const membership = batch.chosen.membership ?? sentenceOneHot(sentenceIds, mask, batch.numSentences);
  const needsPerplexity = config.alpha < 1;
  let w = sentenceWeights({
    oneHot: membership,
    pplLogps: needsPerplexity ? chosen.masked(config.pplSource === 'policy' ? policyLogps : refLogps) : undefined,
    ownRefLogps: needsPerplexity && config.refWeights === 'own' && config.pplSource === 'policy' ? chosen.masked(refLogps) : undefined,
    similarity: batch.similarity,
    alpha: config.alpha,
  });
  if (config.detachWeights && weightsDependOnPolicy(config)) {
    const detached = stopGradient(w.weights);
    w = { ...w, weights: detached, refWeights: w.refWeights === w.weights ? detached : stopGradient(w.refWeights) };
  }
  const spread = (sentenceWeights: tf.Tensor2D): [tf.Tensor2D, tf.Tensor2D] => {
    const multipliers = tf.add(tf.mul(sentenceWeights, config.scale), 1) as tf.Tensor2D;
    const perToken = tf.add(tf.mul(spreadToTokens(sentenceWeights, membership), config.scale), 1) as tf.Tensor2D;
    if (config.normalize === 'none') return [multipliers, perToken];
    // N = Σ1 / Σm over the response's tokens; at least 1 in the denominator for empty rows.
    const mass = tf.clipByValue(tf.sum(tf.mul(perToken, mask), 1, true), 1, Infinity);
    return [multipliers, tf.mul(perToken, tf.div(tf.sum(mask, 1, true), mass)) as tf.Tensor2D];
  };
  const [multipliers, tokenMultipliers] = spread(w.weights);
  const [refMultipliers, refTokenMultipliers] = w.refWeights === w.weights ? [multipliers, tokenMultipliers] : spread(w.refWeights);
  return { sentences: { ...w, multipliers, refMultipliers }, tokenMultipliers, refTokenMultipliers };
}

/**
 * The loss of spec step 6 (or DPO). `weighting` may be passed precomputed — e.g. computed before a
 * gradient tape starts when the weights are detached anyway; otherwise it is computed here.
 */
export function aspoLoss(batch: PreferenceBatch, config: AspoLossConfig = DEFAULT_LOSS_CONFIG,
  weighting?: ChosenWeighting): AspoLossOutput {
  const chosen = new MaskedSide(batch.chosen);
  const rejected = new MaskedSide(batch.rejected);
  const { beta } = config;
  const pairMask = tf.cast(tf.logicalOr(tf.any(chosen.keep, 1), tf.any(rejected.keep, 1)), 'float32') as tf.Tensor1D;
  const rejectedLogratio = tf.sum(rejected.logratio(), 1);
  const used = config.lossType === 'aspo' ? weighting ?? weightingOf(batch, chosen, config) : undefined;
  const chosenLogratio = tf.sum(used ? weightedChosenTerms(chosen, used) : chosen.logratio(), 1);
  const chosenRewards = tf.mul(chosenLogratio, beta) as tf.Tensor1D;
  const rejectedRewards = tf.mul(rejectedLogratio, beta) as tf.Tensor1D;
  const margins = tf.mul(tf.sub(chosenRewards, rejectedRewards), pairMask) as tf.Tensor1D;
  // −log σ(M) = softplus(−M): stable for any M (tf.logSigmoid's gradient is broken in tfjs 4.22).
  const perPair = tf.mul(tf.softplus(tf.neg(margins)), pairMask);
  const loss = tf.div(tf.sum(perPair), tf.clipByValue(tf.sum(pairMask), 1, Infinity)) as tf.Scalar;
  return { loss, margins, chosenRewards, rejectedRewards, pairMask, weighting: used };
}

/**
 * The chosen response's per-token terms of the margin (before β): N·m_t·(log π − log π_ref)_t with
 * refWeights "shared", N·m_t·log π_t − N_ref·m^ref_t·log π_ref,t with "own"; 0 on padding.
 */
export function chosenTokenTerms(batch: PreferenceBatch, weighting: ChosenWeighting): tf.Tensor2D {
  return tf.tidy(() => weightedChosenTerms(new MaskedSide(batch.chosen), weighting));
}

function weightedChosenTerms(chosen: MaskedSide, weighting: ChosenWeighting): tf.Tensor2D {
  const { tokenMultipliers, refTokenMultipliers } = weighting;
  if (refTokenMultipliers === tokenMultipliers) return tf.mul(tokenMultipliers, chosen.logratio());
  const { policyLogps, refLogps } = chosen.side;
  return tf.sub(tf.mul(tokenMultipliers, chosen.masked(policyLogps)), tf.mul(refTokenMultipliers, chosen.masked(refLogps)));
}

/** The loss and its gradients with respect to the policy's chosen and rejected per-token log-probs. */
export interface LossAndGradients {
  output: AspoLossOutput;
  gradPolicyChosen: tf.Tensor2D;
  gradPolicyRejected: tf.Tensor2D;
}

/**
 * One loss evaluation plus dL/d(policy log-probs). Detached or policy-independent weights are computed
 * before the tape starts, so the backward pass does not walk through the weight maths at all.
 */
export function aspoLossAndGradients(batch: PreferenceBatch, config: AspoLossConfig = DEFAULT_LOSS_CONFIG): LossAndGradients {
  const precomputed = config.lossType === 'aspo' && (config.detachWeights || !weightsDependOnPolicy(config))
    ? chosenWeighting(batch, config) : undefined;
  let output: AspoLossOutput | undefined;
  const lossAndGrads = tf.valueAndGrads((policyChosen: tf.Tensor, policyRejected: tf.Tensor) => {
    const result = aspoLoss({
      ...batch,
      chosen: { ...batch.chosen, policyLogps: policyChosen as tf.Tensor2D },
      rejected: { ...batch.rejected, policyLogps: policyRejected as tf.Tensor2D },
    }, config, precomputed);
    output = keepOutput(result);
    return result.loss;
  });
  const { value, grads } = lossAndGrads([batch.chosen.policyLogps, batch.rejected.policyLogps]);
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
    all.push(s.present, s.weights, s.refWeights, s.multipliers, s.refMultipliers, w.tokenMultipliers, w.refTokenMultipliers);
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
 * Pads pairs into a batch (right padding, mask 0), with the sentence one-hot built here once.
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
  return {
    chosen: {
      ...side(pairs.map((p) => p.chosen)),
      sentenceIds: tf.tensor2d(ids, undefined, 'int32'),
      membership: sentenceMembership(ids, numSentences),
    },
    rejected: side(pairs.map((p) => p.rejected)),
    similarity: withSimilarity
      ? tf.tensor2d(pairs.map((p) => [...p.chosen.similarity!, ...new Array<number>(numSentences - p.chosen.similarity!.length).fill(0)]))
      : undefined,
    numSentences,
  };
}

/** Frees a batch's tensors. */
export function disposeBatch(batch: PreferenceBatch): void {
  const { chosen, rejected } = batch;
  tf.dispose([chosen.policyLogps, chosen.refLogps, chosen.mask, chosen.sentenceIds, rejected.policyLogps, rejected.refLogps, rejected.mask]);
  if (chosen.membership) chosen.membership.dispose();
  if (batch.similarity) batch.similarity.dispose();
}
