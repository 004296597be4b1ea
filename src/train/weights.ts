import { tf } from './backend.js';

/**
 * Sentence-weight maths of ASPO (spec steps 3–5), vectorised over a batch of chosen responses.
 * Each pair has a table of `K + 1` slots: its K sentences, then one slot for the chosen tokens
 * outside every sentence (which keep multiplier 1). Per-slot sums of per-token values are one
 * SparseSegmentSum, and spreading per-slot values back onto tokens one GatherNd, over a layout built
 * once per batch from the sentence ids: a few kernels whatever K is, where a [batch, T, K] one-hot
 * matMul costs several times more on the wasm backend.
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

/**
 * Where every chosen token goes in the per-pair slot table. It depends only on the data (sentence
 * ids and mask), so a collator builds it once per batch (`packPairs` does).
 */
export interface SentenceLayout {
  batch: number;
  /** T, the padded length of the chosen responses. */
  length: number;
  /** K + 1: the K sentence slots, then the slot of the tokens outside every sentence. */
  slots: number;
  /** Flat positions b·T + t of the real chosen tokens in slot order, then a sentinel (position 0). */
  slotTokens: tf.Tensor1D;
  /** Their slots b·slots + k (non-decreasing), then the sentinel slot batch·slots, cut off after summing. */
  slotIds: tf.Tensor1D;
  /** Slot of every chosen position, [batch·T, 1]; padding points one past the table (batch·slots), to a 0. */
  tokenSlots: tf.Tensor2D;
  /** Tokens per slot, [batch, slots]; and −max(count, 1), the divisor turning a slot's log-prob sum into its mean NLL. */
  counts: tf.Tensor2D;
  nllDivisor: tf.Tensor2D;
  /** 1 for the sentence slots holding at least one token, else 0 (always 0 for the outside slot), [batch, slots]. */
  present: tf.Tensor2D;
  /** The same mask in additive form for the row-wise min/max: 0 where present, ABSENT_FILL elsewhere. */
  absentOffset: tf.Tensor2D;
}

/**
 * Builds the layout from flat row-major arrays: `ids` the sentence id of each chosen position
 * (−1 outside any sentence) and `keep` whether the position is a real token (not padding).
 * Ids must be < numSentences.
 */
export function sentenceLayout(ids: ArrayLike<number>, keep: ArrayLike<boolean | number>, batch: number, length: number,
  numSentences: number): SentenceLayout {
  const slots = numSentences + 1;
  const slotOf = new Int32Array(batch * length).fill(batch * slots);
  const counts = new Float32Array(batch * slots);
  for (let p = 0; p < batch * length; p++) {
    if (!keep[p]) continue;
    const id = ids[p]!;
    if (id >= numSentences) throw new Error(`chosen.sentenceIds holds sentence ${id} but numSentences is ${numSentences}`);
    const slot = Math.floor(p / length) * slots + (id < 0 ? numSentences : id);
    slotOf[p] = slot;
    counts[slot]!++;
  }
  // Counting sort of the real tokens by slot (stable, so positions stay increasing within a slot).
  const start = new Int32Array(batch * slots + 1);
  for (let s = 0; s < batch * slots; s++) start[s + 1] = start[s]! + counts[s]!;
  const real = start[batch * slots]!;
  const slotTokens = new Int32Array(real + 1);
  const slotIds = new Int32Array(real + 1);
  const next = start.slice(0, batch * slots);
  for (let p = 0; p < batch * length; p++) {
    const slot = slotOf[p]!;
    if (slot === batch * slots) continue;
    const at = next[slot]!++;
    slotTokens[at] = p;
    slotIds[at] = slot;
  }
  slotIds[real] = batch * slots;
  const present = counts.map((count, s) => (count > 0 && s % slots < numSentences ? 1 : 0));
  return {
    batch, length, slots,
    slotTokens: tf.tensor1d(slotTokens, 'int32'),
    slotIds: tf.tensor1d(slotIds, 'int32'),
    tokenSlots: tf.tensor2d(slotOf, [batch * length, 1], 'int32'),
    counts: tf.tensor2d(counts, [batch, slots]),
    nllDivisor: tf.tensor2d(counts.map((count) => -Math.max(count, 1)), [batch, slots]),
    present: tf.tensor2d(present, [batch, slots]),
    absentOffset: tf.tensor2d(present.map((p) => (p ? 0 : ABSENT_FILL)), [batch, slots]),
  };
}

export function disposeSentenceLayout(layout: SentenceLayout): void {
  tf.dispose([layout.slotTokens, layout.slotIds, layout.tokenSlots, layout.counts, layout.nllDivisor, layout.present, layout.absentOffset]);
}

/** Σ_{t ∈ slot} x_t per slot, [batch, slots], from per-token values [batch, T]; padding is never read. */
export function slotSums(x: tf.Tensor2D, layout: SentenceLayout): tf.Tensor2D {
  const op = tf.customGrad(((values: tf.Tensor, save: tf.GradSaveFunc) => {
    save([layout.tokenSlots]);
    const { batch, slots } = layout;
    const sums = tf.sparse.sparseSegmentSum(tf.reshape(values, [-1]), layout.slotTokens, layout.slotIds);
    return {
      value: tf.reshape(tf.slice(sums, 0, batch * slots), [batch, slots]),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => spread(dy as tf.Tensor2D, layout, saved[0]!),
    };
  }) as never) as (values: tf.Tensor) => tf.Tensor;
  return op(x) as tf.Tensor2D;
}

/** Each token gets its slot's value, [batch, T]; padding gets 0. */
export function spreadSlots(slotValues: tf.Tensor2D, layout: SentenceLayout): tf.Tensor2D {
  const op = tf.customGrad(((values: tf.Tensor, save: tf.GradSaveFunc) => {
    save([layout.slotTokens, layout.slotIds]);
    return {
      value: spread(values as tf.Tensor2D, layout, layout.tokenSlots),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const sums = tf.sparse.sparseSegmentSum(tf.reshape(dy, [-1]), saved[0] as tf.Tensor1D, saved[1] as tf.Tensor1D);
        return tf.reshape(tf.slice(sums, 0, layout.batch * layout.slots), [layout.batch, layout.slots]);
      },
    };
  }) as never) as (values: tf.Tensor) => tf.Tensor;
  return op(slotValues) as tf.Tensor2D;
}

/** The gather behind spreadSlots (GatherNd: GatherV2 checks every index in JavaScript and is ten times slower on wasm). */
function spread(slotValues: tf.Tensor2D, layout: SentenceLayout, tokenSlots: tf.Tensor): tf.Tensor2D {
  const table = tf.concat([tf.reshape(slotValues, [-1]), tf.zeros([1])]);
  return tf.reshape(tf.gatherND(table, tokenSlots), [layout.batch, layout.length]) as tf.Tensor2D;
}

/** PPL_k = exp(−mean log p over the slot's tokens), [batch, slots]; 1 for slots without tokens. */
export function sentencePerplexity(slotLogpSums: tf.Tensor2D, layout: SentenceLayout): tf.Tensor2D {
  const meanNll = tf.div(slotLogpSums, layout.nllDivisor);
  return tf.exp(tf.clipByValue(meanNll, -Infinity, MAX_SENTENCE_NLL)) as tf.Tensor2D;
}

/**
 * Min–max normalisation along the last axis over the present entries only (`present` is 1/0,
 * `absentOffset` the same mask as 0/ABSENT_FILL; both broadcast against `values`); absent entries
 * come out 0. One-entry rows and all-equal rows give 0. Every intermediate stays finite, so
 * gradients stay finite even for rows without sentences.
 */
export function minMaxNormalize(values: tf.Tensor, present: tf.Tensor, absentOffset: tf.Tensor): tf.Tensor {
  // Pushing absent entries out of range is cheaper than selecting with tf.where.
  const low = tf.min(tf.add(values, absentOffset), -1, true);
  const high = tf.max(tf.sub(values, absentOffset), -1, true);
  return tf.mul(tf.div(tf.sub(values, low), tf.add(tf.sub(high, low), MIN_MAX_EPSILON)), present);
}

/** What the fused weights were made of, per slot [batch, K + 1]; the outside slot and absent sentences hold w = 0. */
export interface SentenceWeights {
  /** 1 where the slot is a sentence with at least one (unmasked) token. */
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
  layout: SentenceLayout;
  /** Per-slot sums of the log-probs the perplexity is computed from (per `pplSource`); needed when alpha < 1. */
  pplSums?: tf.Tensor2D;
  /** Per-slot sums of the reference's log-probs, when the reference needs its own weights; else undefined. */
  ownRefSums?: tf.Tensor2D;
  /** S_i, [batch, K]; required when alpha > 0. */
  similarity?: tf.Tensor2D;
  alpha: number;
}

/** Spec steps 3–5: per-sentence perplexity, min–max normalisation within each response, fusion. */
export function sentenceWeights(inputs: SentenceWeightInputs): SentenceWeights {
  const { layout, pplSums, ownRefSums, similarity, alpha } = inputs;
  if (alpha > 0 && !similarity) throw new Error('similarity is required when alpha > 0');
  const present = tf.clone(layout.present);

  const normalize = (values: tf.Tensor) => minMaxNormalize(values, present, layout.absentOffset) as tf.Tensor2D;
  // Each score normalised on its own: stacking them to share one min and one max costs more kernels than it saves.
  // The outside slot gets a 0 score; it is absent from the normalisation anyway.
  const similarityNorm = alpha > 0 ? normalize(tf.pad(similarity!, [[0, 0], [0, 1]])) : undefined;
  let perplexity: tf.Tensor2D | undefined;
  let perplexityNorm: tf.Tensor2D | undefined;
  let refPerplexityNorm: tf.Tensor2D | undefined;
  if (alpha < 1) {
    if (!pplSums) throw new Error('per-slot log-prob sums are required for the perplexity when alpha < 1');
    perplexity = sentencePerplexity(pplSums, layout);
    perplexityNorm = normalize(tf.neg(perplexity));
    if (ownRefSums) refPerplexityNorm = normalize(tf.neg(sentencePerplexity(ownRefSums, layout)));
  }
  const fuse = (pNorm: tf.Tensor2D | undefined): tf.Tensor2D => {
    if (!pNorm) return similarityNorm!;
    if (!similarityNorm) return pNorm;
    return tf.add(tf.mul(similarityNorm, alpha), tf.mul(pNorm, 1 - alpha));
  };
  const weights = fuse(perplexityNorm);
  const refWeights = refPerplexityNorm ? fuse(refPerplexityNorm) : weights;
  return { present, weights, refWeights, perplexity, perplexityNorm, similarityNorm };
}
