/**
 * Reference-model signals from the toolkit's own TF.js vision-language model (a checkpoint folder):
 * per-sentence perplexity in context (with the per-sentence sums of reference log-probs, so the trainer can skip the
 * reference pass), and the grounding similarity (mean per-token log-prob gain of a sentence given its image over
 * the same model given no image). Each response is encoded exactly as training encodes it (`encodePromptResponse`).
 */
import type { Store } from '../store/store.js';
import { alignTokens } from '../segment/align.js';
import type { LoadedModel } from '../model/checkpoint.js';
import { PixelCache } from '../model/images.js';
import { DEFAULT_REF_BATCH_SIZE, tokenLogProbs } from '../model/logprobs.js';
import { textContext } from '../model/model.js';
import { encodePromptResponse } from '../model/encode.js';
import {
  scoreResponses, type ResponseScorer, type ResponseScoreSummary, type ResponseToScore, type ScoredBatch, type ScoreResponsesOptions,
  type SentenceScoreRow,
} from './scorer.js';


/** Which signal a run writes: `perplexity` fills ppl/ref_logp_sum/n_tokens/ppl_model; `grounding` the similarity. */
export type ReferenceSignal = 'perplexity' | 'grounding';

/** Per sentence of a response: Σ log p over its tokens and their count. */
export interface SentenceLogProb { sum: number; n: number }

/**
 * Sums per-token log-probs of a response into its sentences. `sentenceIds[j]` is the sentence of response token j
 * (-1: none, e.g. whitespace); `logps[j]` its log-prob. Pure.
 */
export function sentenceLogProbs(logps: ArrayLike<number>, sentenceIds: readonly number[], sentenceCount: number): SentenceLogProb[] {
  const out = Array.from({ length: sentenceCount }, () => ({ sum: 0, n: 0 }));
  sentenceIds.forEach((k, j) => {
    if (k < 0) return;
    out[k]!.sum += logps[j]!;
    out[k]!.n++;
  });
  return out;
}

/** exp(−Σ log p / n); null for a sentence without tokens. */
export function perplexity({ sum, n }: SentenceLogProb): number | null {
  return n > 0 ? Math.exp(-sum / n) : null;
}

/** Mean per-token log-prob gain with the image over without it; null for a sentence without tokens. */
export function groundingGain(withImage: SentenceLogProb, withoutImage: SentenceLogProb): number | null {
  if (withImage.n !== withoutImage.n) throw new Error('grounding: token counts differ between the two passes');
  return withImage.n > 0 ? (withImage.sum - withoutImage.sum) / withImage.n : null;
}

/**
 * One `sentence_scores` perplexity row for sentence `idx` of a response. It names only ppl, ref_logp_sum, n_tokens
 * and ppl_model, so upserting it keeps a similarity already stored for the sentence.
 */
export function perplexityRow(response: { pairId: string; side: string }, idx: number, s: SentenceLogProb, model: string): SentenceScoreRow {
  return { pair_id: response.pairId, side: response.side, idx, ppl: perplexity(s), ref_logp_sum: s.n > 0 ? s.sum : null, n_tokens: s.n, ppl_model: model };
}

/** A response ready for the model: token ids and the sentence of each response token. */
interface EncodedResponse {
  response: ResponseToScore;
  promptIds: number[];
  responseIds: number[];
  sentenceIds: number[];
  image: Float32Array | null;
}

/**
 * The scorer of `signal` under `ref`: perplexity runs every response (text-only ones without an image); grounding
 * runs the responses with an image twice, with and without it.
 */
export function referenceScorer(ref: LoadedModel, signal: ReferenceSignal): ResponseScorer {
  const modelId = signal === 'grounding' ? `grounding:${ref.modelId}` : ref.modelId;
  const limit = textContext(ref.model.config);
  return {
    signal: signal === 'grounding' ? 'similarity' : 'perplexity',
    modelId,
    defaultBatchSize: DEFAULT_REF_BATCH_SIZE,
    textOnly: signal === 'grounding' ? 'skip' : 'run',
    async scoreBatch(batch) {
      const scored: ScoredBatch = { rows: [], skipped: {}, emptySentences: 0, modelSeconds: 0 };
      const skip = (reason: keyof ScoredBatch['skipped']) => { scored.skipped[reason] = (scored.skipped[reason] ?? 0) + 1; };
      // Chosen and rejected share their pair's image: decoded once per batch.
      const pixels = new PixelCache(async (imageId) => {
        const bytes = batch.images.get(imageId);
        if (!bytes) throw new Error('image missing from the images table');
        return bytes;
      });
      const encoded: EncodedResponse[] = [];
      for (const response of batch.responses) {
        const item = await encodeResponse(ref, response, limit, pixels);
        if (typeof item === 'string') skip(item);
        else encoded.push(item);
      }
      if (!encoded.length) return scored;
      const t0 = performance.now();
      const run = (useImages: boolean) => tokenLogProbs(ref.model, encoded.map((item) => ({
        promptIds: item.promptIds, responseIds: item.responseIds, image: useImages ? item.image : null,
      })));
      const withImage = run(true);
      const withoutImage = signal === 'grounding' ? run(false) : undefined;
      scored.modelSeconds = (performance.now() - t0) / 1000;
      encoded.forEach((item, i) => {
        const { response } = item;
        const count = response.sentences.length;
        const sums = sentenceLogProbs(withImage[i]!, item.sentenceIds, count);
        const base = withoutImage && sentenceLogProbs(withoutImage[i]!, item.sentenceIds, count);
        sums.forEach((s, k) => {
          if (s.n === 0) scored.emptySentences++;
          const idx = response.sentences[k]!.idx;
          scored.rows.push(base
            ? {
              pair_id: response.pairId, side: response.side, idx, similarity: groundingGain(s, base[k]!),
              similarity_model: modelId, similarity_truncated: null, similarity_error: null,
            }
            : perplexityRow(response, idx, s, modelId));
        });
      });
      return scored;
    },
  };
}

/**
 * Scores every response (pair side) with a sentence not yet scored for `signal` under `ref` (see scoreResponses):
 * `batchSize` responses per model call and one transaction per batch. Rows that already have the other signal keep it.
 */
export async function scoreReference(store: Store, ref: LoadedModel, signal: ReferenceSignal,
  options: ScoreResponsesOptions = {}): Promise<ResponseScoreSummary> {
  return scoreResponses(store, referenceScorer(ref, signal), options);
}

/** Tokenizes one response as training does and decodes its image; the reason when it cannot run. */
async function encodeResponse(ref: LoadedModel, response: ResponseToScore, limit: number, pixels: PixelCache):
  Promise<EncodedResponse | 'unencodable' | 'tooLong' | 'imageErrors'> {
  let ids: { promptIds: number[]; responseIds: number[] };
  try {
    ids = encodePromptResponse(ref.tokenizer, response.prompt, response.response);
  } catch {
    return 'unencodable';
  }
  if (1 + ids.promptIds.length + ids.responseIds.length > limit) return 'tooLong';
  const text = response.prompt + response.response;
  const { offsets } = ref.tokenizer.encode(text);
  const sentenceIds = alignTokens(text, offsets, response.sentences, response.prompt.length).slice(ids.promptIds.length);
  let image: Float32Array | null = null;
  if (response.imageId !== null) {
    try {
      image = await pixels.get(response.imageId, ref.model.config.imageSize);
    } catch {
      return 'imageErrors';
    }
  }
  return { response, ...ids, sentenceIds, image };
}
