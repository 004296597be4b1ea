import {
  checkPair, LOSS_CONFIG_KEYS, lossConfig, lossForward, lossGradients, packPairs, slotTerm, type AspoLossConfig, type PairArrays,
} from './loss.js';
import { slotSums } from './weights.js';

/**
 * One loss "case" as `aspo loss` reads it: a single preference pair as plain JSON arrays plus loss
 * options, evaluated with the trainer's own functions. Parsing names the offending field.
 */

export interface LossCase {
  /** Echoed back so outputs can be matched to inputs. */
  id?: string | number;
  config: AspoLossConfig;
  pair: PairArrays;
  /** Text of each chosen sentence, for --explain. */
  sentenceTexts?: string[];
}

/** Everything one evaluation produces; `aspo loss` prints `result`, `--explain` also `sentences`. */
export interface LossCaseEvaluation {
  result: {
    id?: string | number;
    loss: number;
    margin: number;
    /** w_i per sentence slot (null for a slot with no token); empty for DPO. */
    weights: (number | null)[];
    /** m_i = 1 + scale·w_i per sentence slot; empty for DPO. */
    multipliers: (number | null)[];
    gradPolicyChosen: number[];
    gradPolicyRejected: number[];
  };
  sentences: SentenceExplanation[];
  /** Contribution to the margin of chosen tokens outside every sentence. */
  outsideContribution: number;
  /** −β·logr(y_r). */
  rejectedContribution: number;
}

export interface SentenceExplanation {
  index: number;
  text?: string;
  tokens: number;
  perplexity?: number;
  similarity?: number;
  similarityNorm?: number;
  perplexityNorm?: number;
  weight: number;
  multiplier: number;
  /** This sentence's share of the margin: β·Σ_{t∈s} of the chosen token terms. */
  contribution: number;
}

const CASE_KEYS = new Set<string>([...LOSS_CONFIG_KEYS, 'id', 'chosen', 'rejected']);
const CHOSEN_KEYS = new Set(['policyLogps', 'refLogps', 'sentenceIds', 'similarity', 'sentences']);
const REJECTED_KEYS = new Set(['policyLogps', 'refLogps']);

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function checkKeys(value: Record<string, unknown>, allowed: Set<string>, prefix: string): void {
  for (const key of Object.keys(value)) {
    if (!allowed.has(key)) throw new Error(`unknown field "${prefix}${key}" (expected one of ${[...allowed].join(', ')})`);
  }
}

function numbers(value: unknown, field: string): number[] {
  if (!Array.isArray(value)) throw new Error(`${field} must be an array of numbers`);
  value.forEach((v, i) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${field}[${i}] must be a finite number, got ${JSON.stringify(v)}`);
  });
  return value as number[];
}

/** Validates one JSON case; every option may be omitted and takes its default. */
export function parseLossCase(value: unknown): LossCase {
  if (!isRecord(value)) throw new Error('a case must be a JSON object');
  checkKeys(value, CASE_KEYS, '');
  const config = lossConfig(value);
  const { chosen, rejected, id } = value;
  if (id !== undefined && typeof id !== 'string' && typeof id !== 'number') throw new Error('id must be a string or a number');
  if (!isRecord(chosen)) throw new Error('chosen must be an object with policyLogps, refLogps, sentenceIds');
  if (!isRecord(rejected)) throw new Error('rejected must be an object with policyLogps, refLogps');
  checkKeys(chosen, CHOSEN_KEYS, 'chosen.');
  checkKeys(rejected, REJECTED_KEYS, 'rejected.');

  if (chosen.similarity === undefined && config.lossType === 'aspo' && config.alpha > 0) {
    throw new Error(`chosen.similarity is required when alpha > 0 (alpha = ${config.alpha}); give it, or set "alpha": 0`);
  }
  if (chosen.sentences !== undefined && (!Array.isArray(chosen.sentences) || !chosen.sentences.every((s) => typeof s === 'string'))) {
    throw new Error('chosen.sentences must be an array of strings (the text of each sentence)');
  }
  const pair: PairArrays = {
    chosen: {
      policyLogps: numbers(chosen.policyLogps, 'chosen.policyLogps'),
      refLogps: numbers(chosen.refLogps, 'chosen.refLogps'),
      sentenceIds: numbers(chosen.sentenceIds, 'chosen.sentenceIds'),
      similarity: chosen.similarity === undefined ? undefined : numbers(chosen.similarity, 'chosen.similarity'),
    },
    rejected: { policyLogps: numbers(rejected.policyLogps, 'rejected.policyLogps'), refLogps: numbers(rejected.refLogps, 'rejected.refLogps') },
  };
  checkPair(pair);
  return { id: id as string | number | undefined, config, pair, sentenceTexts: chosen.sentences as string[] | undefined };
}

/** Loss, margin, weights and gradients of one case, plus the per-sentence breakdown of its margin. */
export function evaluateLossCase(lossCase: LossCase): LossCaseEvaluation {
  const { config, pair } = lossCase;
  const batch = packPairs([pair]);
  const values = lossForward(batch, config);
  const grads = lossGradients(batch, config, values);
  const slots = batch.layout.sentences.numSentences;
  // Per-slot arrays have K + 1 entries (the last: tokens outside every sentence); report the K sentences.
  const row = (perSlot: Float64Array | undefined): number[] | undefined => (perSlot ? Array.from(perSlot.subarray(0, slots)) : undefined);
  const w = values.weighting;
  const s = w?.sentences;
  const present = s && Array.from(s.present.subarray(0, slots));
  const orNull = (list: number[] | undefined) => (list && present ? list.map((v, k) => (present[k] ? v : null)) : []);
  const weights = row(s?.weights);
  const multipliers = row(s?.multipliers);
  const length = pair.chosen.sentenceIds.length;

  // The margin split by slot (slot K: tokens outside every sentence): β × the chosen side's term of slot k, which
  // for DPO is the slot's log-ratio sum.
  const dpoSums = w ? undefined : slotSums(batch.chosen.policyLogps, batch.chosen.refLogps, batch.layout.sentences);
  const contribution = (k: number) => config.beta * (w ? slotTerm(w, k) : dpoSums!.policy[k]! - dpoSums!.ref[k]!);
  const perplexity = row(s?.perplexity);
  const similarityNorm = row(s?.similarityNorm);
  const perplexityNorm = row(s?.perplexityNorm);
  const sentences: SentenceExplanation[] = [];
  for (let k = 0; k < slots; k++) {
    const tokens = batch.layout.sentences.counts[k]!;
    if (tokens === 0) continue;
    sentences.push({
      index: k,
      text: lossCase.sentenceTexts?.[k],
      tokens,
      perplexity: perplexity?.[k],
      similarity: pair.chosen.similarity?.[k],
      similarityNorm: similarityNorm?.[k],
      perplexityNorm: perplexityNorm?.[k],
      weight: weights?.[k] ?? 0,
      multiplier: multipliers?.[k] ?? 1,
      contribution: contribution(k),
    });
  }
  const evaluation: LossCaseEvaluation = {
    result: {
      ...(lossCase.id !== undefined ? { id: lossCase.id } : {}),
      loss: values.loss,
      margin: values.margins[0]!,
      weights: orNull(weights),
      multipliers: orNull(multipliers),
      gradPolicyChosen: Array.from(grads.chosen.subarray(0, length)),
      gradPolicyRejected: Array.from(grads.rejected.subarray(0, pair.rejected.policyLogps.length)),
    },
    sentences,
    outsideContribution: contribution(slots),
    rejectedContribution: -values.rejectedRewards[0]!,
  };
  checkFinite(evaluation.result);
  return evaluation;
}

/** Refuses a result that overflowed float64 (JSON would print it as null): names the first field that did. */
function checkFinite(result: LossCaseEvaluation['result']): void {
  for (const [field, value] of Object.entries(result)) {
    const values = Array.isArray(value) ? value : [value];
    const bad = values.findIndex((v) => typeof v === 'number' && !Number.isFinite(v));
    if (bad !== -1) {
      throw new Error(`${field}${Array.isArray(value) ? `[${bad}]` : ''} is ${values[bad]}: the inputs overflow float64 arithmetic ` +
        '(log-probs are ≤ 0 and in practice within a few hundred of 0; values near ±1e308 cannot be summed)');
    }
  }
}
