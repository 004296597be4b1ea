import { tf } from './backend.js';

/**
 * Sentence-weight maths of ASPO (spec steps 3–5), vectorised over a batch of chosen responses:
 * tokens are mapped to sentences with a one-hot matrix [batch, T, K], so per-sentence sums are
 * one batched matMul and spreading a per-sentence value back to tokens is another.
 */

/** Min–max normaliser of the spec: (v − min v) / (max v − min v + ε), within one response. */
export const MIN_MAX_EPSILON = 1e-6;

/**
 * Mean per-token negative log-likelihood is capped here before `exp`, so a pathological sentence
 * cannot overflow float32 (e^60 ≈ 1e26); real sentences sit far below (ln of the vocabulary size).
 */
export const MAX_SENTENCE_NLL = 60;

/** Pushes absent sentences out of the row-wise min/max: above any capped perplexity, yet finite in float32. */
const ABSENT_FILL = 1e30;

/** Identity whose gradient is zero: the weights are treated as weights, not as a second objective. */
export const stopGradient = tf.customGrad(
  ((x: tf.Tensor) => ({ value: tf.clone(x), gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy) })) as never,
) as <T extends tf.Tensor>(x: T) => T;

/**
 * [batch, T, K] float32: 1 where token t of row b belongs to sentence k. Padding tokens (mask 0) and
 * tokens outside every sentence (id −1) get an all-zero row, hence multiplier 1.
 */
export function sentenceOneHot(sentenceIds: tf.Tensor2D, mask: tf.Tensor2D, numSentences: number): tf.Tensor3D {
  return tf.tidy(() => {
    // Slot 0 collects "no sentence" and is cut off; it also keeps the depth ≥ 2 that tf.oneHot requires.
    const ids = tf.where(tf.greater(mask, 0), tf.add(tf.cast(sentenceIds, 'int32'), tf.scalar(1, 'int32')), tf.zerosLike(sentenceIds).toInt());
    // int32 then cast: the wasm kernel writes integer bits into a float32 output (tfjs 4.22).
    const oneHot = tf.oneHot(ids as tf.Tensor2D, numSentences + 1);
    return tf.cast(tf.slice(oneHot, [0, 0, 1], [-1, -1, numSentences]), 'float32') as tf.Tensor3D;
  });
}

/** The same one-hot built on the CPU from padded id rows (−1 = outside or padding), as a collator would. */
export function sentenceMembership(ids: number[][], numSentences: number): tf.Tensor3D {
  const length = Math.max(1, ...ids.map((row) => row.length));
  const values = new Float32Array(ids.length * length * numSentences);
  ids.forEach((row, b) => row.forEach((id, t) => {
    if (id >= 0 && id < numSentences) values[(b * length + t) * numSentences + id] = 1;
  }));
  return tf.tensor3d(values, [ids.length, length, numSentences]);
}

/** Per-sentence sums Σ_{t∈s_k} x_t, [batch, K], from per-token values [batch, T]. */
export function sentenceSums(tokenValues: tf.Tensor2D, oneHot: tf.Tensor3D): tf.Tensor2D {
  const [batch, , k] = oneHot.shape;
  return tf.reshape(tf.matMul(tf.expandDims(tokenValues, 1), oneHot), [batch, k]) as tf.Tensor2D;
}

/** Spreads per-sentence values [batch, K] back onto tokens [batch, T]; 0 outside sentences. */
export function spreadToTokens(sentenceValues: tf.Tensor2D, oneHot: tf.Tensor3D): tf.Tensor2D {
  const [batch, t] = oneHot.shape;
  return tf.reshape(tf.matMul(oneHot, tf.expandDims(sentenceValues, 2)), [batch, t]) as tf.Tensor2D;
}

/** PPL_k = exp(−mean log p over the sentence's tokens), [batch, K]; 1 for sentences without tokens. */
export function sentencePerplexity(logps: tf.Tensor2D, oneHot: tf.Tensor3D, tokenCounts: tf.Tensor2D): tf.Tensor2D {
  const meanNll = tf.div(tf.neg(sentenceSums(logps, oneHot)), tf.clipByValue(tokenCounts, 1, Infinity));
  return tf.exp(tf.minimum(meanNll, MAX_SENTENCE_NLL)) as tf.Tensor2D;
}

/**
 * Min–max normalisation along the last axis over the present entries only (`present` is 1/0 and
 * broadcasts against `values`); absent entries come out 0. One-entry rows and all-equal rows give 0.
 * Every intermediate stays finite, so gradients stay finite even for rows without sentences.
 */
export function minMaxNormalize(values: tf.Tensor, present: tf.Tensor): tf.Tensor {
  // Pushing absent entries out of range is cheaper than selecting with tf.where.
  const absentOffset = tf.mul(tf.sub(1, present), ABSENT_FILL);
  const low = tf.min(tf.add(values, absentOffset), -1, true);
  const high = tf.max(tf.sub(values, absentOffset), -1, true);
  return tf.mul(tf.div(tf.sub(values, low), tf.add(tf.sub(high, low), MIN_MAX_EPSILON)), present);
}

/** What the fused weights were made of, per sentence [batch, K]; absent sentences hold 0 (PPL 1). */
export interface SentenceWeights {
  /** 1 where the sentence has at least one (unmasked) token. */
  present: tf.Tensor2D;
  /** w = α·S' + (1 − α)·P' of the perplexity source. */
  weights: tf.Tensor2D;
  /** w computed with the reference's own perplexity (refWeights "own"); same tensor as `weights` otherwise. */
  refWeights: tf.Tensor2D;
  /** PPL of the perplexity source, and P' from it; undefined when alpha = 1 (not needed). */
  perplexity?: tf.Tensor2D;
  perplexityNorm?: tf.Tensor2D;
  /** S' ; undefined when alpha = 0. */
  similarityNorm?: tf.Tensor2D;
}

export interface SentenceWeightInputs {
  oneHot: tf.Tensor3D;
  /** Per-token log-probs the perplexity is computed from (policy or reference, per `pplSource`); needed when alpha < 1. */
  pplLogps?: tf.Tensor2D;
  /** The reference's per-token log-probs, when the reference needs its own weights; else undefined. */
  ownRefLogps?: tf.Tensor2D;
  /** S_i, [batch, K]; required when alpha > 0. */
  similarity?: tf.Tensor2D;
  alpha: number;
}

/** Spec steps 3–5: per-sentence perplexity, min–max normalisation within each response, fusion. */
export function sentenceWeights(inputs: SentenceWeightInputs): SentenceWeights {
  const { oneHot, pplLogps, ownRefLogps, similarity, alpha } = inputs;
  if (alpha > 0 && !similarity) throw new Error('similarity is required when alpha > 0');
  const tokenCounts = tf.sum(oneHot, 1) as tf.Tensor2D;
  const present = tf.cast(tf.greater(tokenCounts, 0), 'float32') as tf.Tensor2D;

  // Normalise S, −PPL (and the reference's −PPL) together: one min, one max for all of them.
  const rows: tf.Tensor2D[] = [];
  if (alpha > 0) rows.push(similarity!);
  let perplexity: tf.Tensor2D | undefined;
  if (alpha < 1) {
    if (!pplLogps) throw new Error('per-token log-probs are required for the perplexity when alpha < 1');
    perplexity = sentencePerplexity(pplLogps, oneHot, tokenCounts);
    rows.push(tf.neg(perplexity));
    if (ownRefLogps) rows.push(tf.neg(sentencePerplexity(ownRefLogps, oneHot, tokenCounts)));
  }
  const stacked = minMaxNormalize(tf.stack(rows), present);
  // Slices rather than tf.unstack, whose gradient fails when some outputs are unused.
  const normalized = rows.map((_, i) => tf.reshape(tf.slice(stacked, [i, 0, 0], [1, -1, -1]), present.shape) as tf.Tensor2D);
  const similarityNorm = alpha > 0 ? normalized.shift() : undefined;
  const fuse = (pNorm: tf.Tensor2D | undefined): tf.Tensor2D => {
    if (!pNorm) return similarityNorm!;
    if (!similarityNorm) return pNorm;
    return tf.add(tf.mul(similarityNorm, alpha), tf.mul(pNorm, 1 - alpha));
  };
  const perplexityNorm = normalized[0];
  const weights = fuse(perplexityNorm);
  const refWeights = ownRefLogps && alpha < 1 ? fuse(normalized[1]) : weights;
  return { present, weights, refWeights, perplexity, perplexityNorm, similarityNorm };
}
