/**
 * Sentence-weight maths of ASPO (spec steps 3–5) on plain arrays, for a batch of chosen responses, with the
 * vector–Jacobian products the loss's backward pass needs. Each pair has a row of `K + 1` slots: its K
 * sentences, then one slot for the chosen tokens outside every sentence (which keep multiplier 1). Per-slot
 * arrays are row-major, [batch · (K + 1)]; values are computed in float64.
 */

/** Min–max normaliser of the spec: (v − min v) / (max v − min v + ε), within one response. */
export const MIN_MAX_EPSILON = 1e-6;

/**
 * Mean per-token negative log-likelihood is capped here before `exp`, so a pathological sentence
 * cannot overflow (e^60 ≈ 1e26); real sentences sit far below (ln of the vocabulary size).
 */
export const MAX_SENTENCE_NLL = 60;

/**
 * Where every chosen token goes in the per-pair slot table. It depends only on the data (sentence ids
 * and which positions are real tokens), so a collator builds it once per batch (`packPairs` does).
 */
export interface SentenceLayout {
  batch: number;
  /** T, the padded length of the chosen responses. */
  length: number;
  /** K, the sentence slots per row. */
  numSentences: number;
  /** K + 1: the K sentence slots, then the slot of the tokens outside every sentence. */
  slots: number;
  /** [batch · T]: the slot (0 … K) of each chosen position within its row; −1 on padding. */
  tokenSlot: Int32Array;
  /** [batch · slots]: tokens per slot. */
  counts: Int32Array;
  /** [batch · slots]: 1 for the sentence slots holding at least one token (never the outside slot). */
  present: Uint8Array;
}

/**
 * Builds the layout from flat row-major arrays: `ids` the sentence id of each chosen position (−1 outside
 * any sentence) and `keep` whether the position is a real token (not padding). Ids must be < numSentences.
 */
export function sentenceLayout(ids: ArrayLike<number>, keep: ArrayLike<boolean | number>, batch: number, length: number,
  numSentences: number): SentenceLayout {
  const slots = numSentences + 1;
  const tokenSlot = new Int32Array(batch * length).fill(-1);
  const counts = new Int32Array(batch * slots);
  for (let p = 0; p < batch * length; p++) {
    if (!keep[p]) continue;
    const id = ids[p]!;
    if (id >= numSentences) throw new Error(`chosen.sentenceIds holds sentence ${id} but numSentences is ${numSentences}`);
    const slot = id < 0 ? numSentences : id;
    tokenSlot[p] = slot;
    counts[Math.floor(p / length) * slots + slot]!++;
  }
  const present = new Uint8Array(batch * slots);
  for (let s = 0; s < batch * slots; s++) present[s] = counts[s]! > 0 && s % slots < numSentences ? 1 : 0;
  return { batch, length, numSentences, slots, tokenSlot, counts, present };
}

/** Σ log π and Σ log π_ref of the chosen tokens per slot, [batch · slots] each, in one pass; padding is never read. */
export function slotSums(policy: ArrayLike<number>, ref: ArrayLike<number>, layout: SentenceLayout): { policy: Float64Array; ref: Float64Array } {
  const { batch, length, slots, tokenSlot } = layout;
  const policySums = new Float64Array(batch * slots);
  const refSums = new Float64Array(batch * slots);
  for (let b = 0, p = 0; b < batch; b++) {
    const row = b * slots;
    for (let t = 0; t < length; t++, p++) {
      const slot = tokenSlot[p]!;
      if (slot < 0) continue;
      policySums[row + slot] += policy[p]!;
      refSums[row + slot] += ref[p]!;
    }
  }
  return { policy: policySums, ref: refSums };
}

/** Per-row totals of a per-slot array, [batch]. */
export function rowTotals(perSlot: ArrayLike<number>, layout: SentenceLayout): Float64Array {
  const { batch, slots } = layout;
  const totals = new Float64Array(batch);
  for (let b = 0, s = 0; b < batch; b++) {
    let total = 0;
    for (let k = 0; k < slots; k++, s++) total += perSlot[s]!;
    totals[b] = total;
  }
  return totals;
}

/** The slot's mean NLL, −Σ log p / n (n at least 1). */
function meanNll(sum: number, count: number): number {
  return -sum / Math.max(count, 1);
}

/** PPL_k = exp(mean NLL over the slot's tokens, capped) of every slot of row `row`; 1 for slots without tokens. */
function rowPerplexity(logpSums: Float64Array, counts: Int32Array, row: number, slots: number, out: Float64Array): void {
  for (let s = row; s < row + slots; s++) out[s] = Math.exp(Math.min(meanNll(logpSums[s]!, counts[s]!), MAX_SENTENCE_NLL));
}

/**
 * Min–max normalisation of one row's present entries, of sign·values (sign −1: lower is better): reads
 * values[from + k] and present[to + k] and writes out[to + k] for k < length; absent entries are left at 0.
 * One-entry and all-equal rows give 0.
 */
function normalizeRow(values: ArrayLike<number>, from: number, sign: 1 | -1, present: Uint8Array, to: number, length: number,
  out: Float64Array): void {
  let low = Infinity;
  let high = -Infinity;
  for (let k = 0; k < length; k++) {
    if (!present[to + k]) continue;
    const v = sign * values[from + k]!;
    if (v < low) low = v;
    if (v > high) high = v;
  }
  const range = high - low + MIN_MAX_EPSILON;
  for (let k = 0; k < length; k++) if (present[to + k]) out[to + k] = (sign * values[from + k]! - low) / range;
}

/**
 * dL/dx of x' = normalizeRow(x) for row `row` (sign 1), from dL/dx'. The row's min and max pass their gradient
 * to every entry equal to them (as TensorFlow's min and max reductions do at ties).
 */
function normalizeRowBackward(values: ArrayLike<number>, present: Uint8Array, row: number, length: number,
  upstream: ArrayLike<number>, grad: Float64Array): void {
  let low = Infinity;
  let high = -Infinity;
  for (let s = row; s < row + length; s++) {
    if (!present[s]) continue;
    low = Math.min(low, values[s]!);
    high = Math.max(high, values[s]!);
  }
  if (low > high) return;
  const r = high - low + MIN_MAX_EPSILON;
  // x'_k = (x_k − low) / r, so ∂x'_k/∂low = ((x_k − low) − r) / r² and ∂x'_k/∂high = −(x_k − low) / r².
  let sumU = 0;
  let sumUX = 0;
  for (let s = row; s < row + length; s++) {
    if (!present[s]) continue;
    sumU += upstream[s]!;
    sumUX += upstream[s]! * (values[s]! - low);
  }
  const dLow = sumUX / (r * r) - sumU / r;
  const dHigh = -sumUX / (r * r);
  for (let s = row; s < row + length; s++) {
    if (present[s]) grad[s] = upstream[s]! / r + (values[s] === low ? dLow : 0) + (values[s] === high ? dHigh : 0);
  }
}

/** What the fused weights were made of, per slot [batch · (K + 1)]; the outside slot and absent sentences hold w = 0. */
export interface SentenceWeights {
  /** 1 where the slot is a sentence with at least one token. */
  present: Uint8Array;
  /** w = α·S' + (1 − α)·P' of the perplexity source. */
  weights: Float64Array;
  /** w computed with the reference's own perplexity (refWeights "own"); the same array as `weights` otherwise. */
  refWeights: Float64Array;
  /** PPL of the perplexity source, and P' from it; undefined when alpha = 1 (not needed). */
  perplexity?: Float64Array;
  perplexityNorm?: Float64Array;
  /** S'; undefined when alpha = 0. */
  similarityNorm?: Float64Array;
}

export interface SentenceWeightInputs {
  layout: SentenceLayout;
  /** Per-slot sums of the log-probs the perplexity is computed from (per `pplSource`); needed when alpha < 1. */
  pplSums?: Float64Array;
  /** Per-slot sums of the reference's log-probs, when the reference needs its own weights; else undefined. */
  ownRefSums?: Float64Array;
  /** S_i, [batch · K]; required when alpha > 0. */
  similarity?: ArrayLike<number>;
  alpha: number;
}

/** Spec steps 3–5: per-sentence perplexity, min–max normalisation within each response, fusion; one row at a time. */
export function sentenceWeights(inputs: SentenceWeightInputs): SentenceWeights {
  const { layout, pplSums, ownRefSums, similarity, alpha } = inputs;
  const { batch, numSentences, slots, present, counts } = layout;
  if (alpha > 0 && !similarity) throw new Error('similarity is required when alpha > 0');
  if (alpha < 1 && !pplSums) throw new Error('per-slot log-prob sums are required for the perplexity when alpha < 1');
  const size = batch * slots;
  const similarityNorm = alpha > 0 ? new Float64Array(size) : undefined;
  const perplexity = alpha < 1 ? new Float64Array(size) : undefined;
  const perplexityNorm = alpha < 1 ? new Float64Array(size) : undefined;
  const own = alpha < 1 && ownRefSums ? { perplexity: new Float64Array(size), norm: new Float64Array(size) } : undefined;
  const weights = alpha > 0 && alpha < 1 ? new Float64Array(size) : (similarityNorm ?? perplexityNorm)!;
  const refWeights = own ? (alpha > 0 ? new Float64Array(size) : own.norm) : weights;
  for (let b = 0; b < batch; b++) {
    const row = b * slots;
    if (similarityNorm) normalizeRow(similarity!, b * numSentences, 1, present, row, numSentences, similarityNorm);
    if (perplexity && perplexityNorm) {
      rowPerplexity(pplSums!, counts, row, slots, perplexity);
      normalizeRow(perplexity, row, -1, present, row, numSentences, perplexityNorm);
    }
    if (own) {
      rowPerplexity(ownRefSums!, counts, row, slots, own.perplexity);
      normalizeRow(own.perplexity, row, -1, present, row, numSentences, own.norm);
    }
    if (similarityNorm && perplexityNorm) {
      for (let s = row; s < row + numSentences; s++) {
        weights[s] = alpha * similarityNorm[s]! + (1 - alpha) * perplexityNorm[s]!;
        if (own) refWeights[s] = alpha * similarityNorm[s]! + (1 - alpha) * own.norm[s]!;
      }
    }
  }
  return { present, weights, refWeights, perplexity, perplexityNorm, similarityNorm };
}

/**
 * dL/d(per-slot log-prob sums of the perplexity source) from dL/dw, through w = … + (1 − α)·P',
 * P' = minmax(−PPL) and PPL = exp(min(−sum / n, cap)) (no gradient where the cap applies).
 */
export function perplexityWeightsBackward(layout: SentenceLayout, pplSums: Float64Array, weights: SentenceWeights, alpha: number,
  dWeights: ArrayLike<number>): Float64Array {
  const { batch, numSentences, present, slots, counts } = layout;
  const perplexity = weights.perplexity!;
  const negPerplexity = new Float64Array(perplexity.length);
  const upstream = new Float64Array(perplexity.length);
  for (let s = 0; s < perplexity.length; s++) {
    negPerplexity[s] = -perplexity[s]!;
    upstream[s] = (1 - alpha) * dWeights[s]!;
  }
  const grad = new Float64Array(perplexity.length);
  for (let b = 0; b < batch; b++) normalizeRowBackward(negPerplexity, present, b * slots, numSentences, upstream, grad);
  for (let s = 0; s < grad.length; s++) {
    // d(−PPL)/dsum = PPL / n; 0 where the cap holds the perplexity
    grad[s] = !present[s] || meanNll(pplSums[s]!, counts[s]!) > MAX_SENTENCE_NLL ? 0 : grad[s]! * perplexity[s]! / Math.max(counts[s]!, 1);
  }
  return grad;
}
