/**
 * An independent float64 implementation of the ASPO / DPO loss (spec ../shared/spec/aspo-method.md),
 * written with plain JavaScript numbers and loops, one pair at a time, for checking the TensorFlow.js
 * code. It shares nothing with src/train except the option names.
 */

export interface RefConfig {
  lossType: 'aspo' | 'dpo';
  beta: number;
  alpha: number;
  scale: number;
  normalize: 'none' | 'mass';
  detachWeights: boolean;
  refWeights: 'shared' | 'own';
  pplSource: 'policy' | 'reference';
}

export interface RefPair {
  chosen: { policyLogps: number[]; refLogps: number[]; sentenceIds: number[]; similarity?: number[] };
  rejected: { policyLogps: number[]; refLogps: number[] };
}

export interface RefPairResult {
  margin: number;
  loss: number;
  /** Per sentence slot; null where the sentence has no token. */
  weights: (number | null)[];
  multipliers: (number | null)[];
  perplexity: (number | null)[];
}

const EPS = 1e-6;
const NLL_CAP = 60;

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

/** −log σ(x) = log(1 + e^{−x}), without overflow. */
export function negLogSigmoid(x: number): number {
  return x >= 0 ? Math.log1p(Math.exp(-x)) : -x + Math.log1p(Math.exp(x));
}

function minMax(values: (number | null)[]): (number | null)[] {
  const present = values.filter((v): v is number => v !== null);
  if (present.length === 0) return values;
  const lo = Math.min(...present);
  const hi = Math.max(...present);
  return values.map((v) => (v === null ? null : (v - lo) / (hi - lo + EPS)));
}

function perplexities(logps: number[], ids: number[], slots: number): (number | null)[] {
  const out: (number | null)[] = [];
  for (let k = 0; k < slots; k++) {
    const members = logps.filter((_, t) => ids[t] === k);
    out.push(members.length === 0 ? null : Math.exp(Math.min(-sum(members) / members.length, NLL_CAP)));
  }
  return out;
}

function fuse(alpha: number, sNorm: (number | null)[] | undefined, pNorm: (number | null)[] | undefined, slots: number): (number | null)[] {
  const w: (number | null)[] = [];
  for (let k = 0; k < slots; k++) {
    const s = sNorm?.[k];
    const p = pNorm?.[k];
    if (s === null || p === null || (s === undefined && p === undefined)) { w.push(null); continue; }
    w.push((alpha > 0 ? alpha * s! : 0) + (alpha < 1 ? (1 - alpha) * p! : 0));
  }
  return w;
}

/**
 * One pair. `weightPolicyLogps` are the chosen policy log-probs the weights are computed from; by
 * default the same as `pair.chosen.policyLogps`. Holding them fixed while perturbing the policy is
 * exactly what a stop-gradient on the weights means, which is how finite differences check detachWeights.
 */
export function referencePair(pair: RefPair, c: RefConfig, weightPolicyLogps = pair.chosen.policyLogps): RefPairResult {
  const { chosen, rejected } = pair;
  const rejectedLogratio = sum(rejected.policyLogps.map((p, t) => p - rejected.refLogps[t]!));
  const slots = Math.max(1, chosen.similarity?.length ?? 0, ...chosen.sentenceIds.map((id) => id + 1));
  if (c.lossType === 'dpo') {
    const margin = c.beta * (sum(chosen.policyLogps.map((p, t) => p - chosen.refLogps[t]!)) - rejectedLogratio);
    const none = new Array<null>(slots).fill(null);
    return { margin, loss: negLogSigmoid(margin), weights: none, multipliers: none, perplexity: none };
  }
  const ids = chosen.sentenceIds;
  const present = Array.from({ length: slots }, (_, k) => ids.includes(k));
  const sNorm = c.alpha > 0
    ? minMax(present.map((p, k) => (p ? chosen.similarity![k]! : null)))
    : undefined;
  const weightsFrom = (logps: number[]) => {
    const ppl = perplexities(logps, ids, slots);
    const pNorm = c.alpha < 1 ? minMax(ppl.map((v) => (v === null ? null : -v))) : undefined;
    return { ppl, w: fuse(c.alpha, sNorm, pNorm, slots) };
  };
  const own = weightsFrom(c.pplSource === 'policy' ? weightPolicyLogps : chosen.refLogps);
  const refSide = c.refWeights === 'own' && c.pplSource === 'policy' ? weightsFrom(chosen.refLogps) : own;
  const tokenMultiplier = (w: (number | null)[], t: number) => (ids[t]! >= 0 ? 1 + c.scale * w[ids[t]!]! : 1);
  const weightedSum = (w: (number | null)[], logps: number[]) => {
    const terms = logps.map((x, t) => tokenMultiplier(w, t) * x);
    const norm = c.normalize === 'mass' && logps.length > 0 ? logps.length / sum(logps.map((_, t) => tokenMultiplier(w, t))) : 1;
    return norm * sum(terms);
  };
  const chosenTerm = weightedSum(own.w, chosen.policyLogps) - weightedSum(refSide.w, chosen.refLogps);
  const margin = c.beta * (chosenTerm - rejectedLogratio);
  return {
    margin,
    loss: negLogSigmoid(margin),
    weights: own.w,
    multipliers: own.w.map((w) => (w === null ? null : 1 + c.scale * w)),
    perplexity: own.ppl,
  };
}

/** Batch loss: mean over the pairs that have at least one token (all-empty rows are padding). */
export function referenceLoss(pairs: RefPair[], c: RefConfig, weightPolicyLogps?: number[][]): number {
  let total = 0;
  let count = 0;
  pairs.forEach((pair, i) => {
    if (pair.chosen.policyLogps.length + pair.rejected.policyLogps.length === 0) return;
    total += referencePair(pair, c, weightPolicyLogps?.[i]).loss;
    count++;
  });
  return count === 0 ? 0 : total / count;
}

/**
 * Central finite differences of `referenceLoss` with respect to every chosen and rejected policy
 * log-prob. With detachWeights the weights stay at the unperturbed policy.
 */
export function finiteDifferenceGradients(pairs: RefPair[], c: RefConfig, h = 1e-6): { chosen: number[][]; rejected: number[][] } {
  const frozen = pairs.map((p) => [...p.chosen.policyLogps]);
  const evaluate = (perturbed: RefPair[]) =>
    referenceLoss(perturbed, c, c.detachWeights ? frozen : perturbed.map((p) => p.chosen.policyLogps));
  const derivative = (i: number, side: 'chosen' | 'rejected', t: number): number => {
    const at = (delta: number) => {
      const copy = structuredClone(pairs);
      const logps = copy[i]![side].policyLogps;
      logps[t] = logps[t]! + delta;
      return evaluate(copy);
    };
    return (at(h) - at(-h)) / (2 * h);
  };
  return {
    chosen: pairs.map((p, i) => p.chosen.policyLogps.map((_, t) => derivative(i, 'chosen', t))),
    rejected: pairs.map((p, i) => p.rejected.policyLogps.map((_, t) => derivative(i, 'rejected', t))),
  };
}
