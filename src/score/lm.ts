/**
 * Perplexity under a Hugging Face causal language model through `@huggingface/transformers` (ONNX): per sentence,
 * Σ log p(token | all previous tokens) over its tokens, their count and exp(−Σ/n), written to `sentence_scores`
 * exactly as the TF.js reference model's perplexity is (see perplexity.ts). Text only: each response is fed as the
 * one string `prompt + response`, tokenized with the model's tokenizer and its special tokens (e.g. BOS), as
 * trainers feed it; a chat template, if the tokenizer has one, is not applied.
 */
import path from 'node:path';
import type { PreTrainedModel, PreTrainedTokenizer, Tensor as HfTensor } from '@huggingface/transformers';
import type { Store } from '../store/store.js';
import { encodeWithSentences, hfOffsetTokenizer, type OffsetTokenizer } from '../segment/align.js';
import { checkModelFolder, isLocalModel, modelId } from '../model/hf-folder.js';
import { perplexityRow, sentenceLogProbs } from './perplexity.js';
import { scoreResponses, type ResponseScorer, type ResponseScoreSummary, type ScoredBatch, type ScoreResponsesOptions } from './scorer.js';

export const DEFAULT_LM_BATCH_SIZE = 8;

/** Files of a local causal LM folder (the transformers.js layout of e.g. Xenova/gpt2 or onnx-community/*). */
export const LM_MODEL_FILES = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'onnx/model.onnx'] as const;

export class LmModelError extends Error {}

/** A loaded causal LM: scores token rows, knows its context length and its id in `ppl_model`. */
export interface CausalLm {
  modelId: string;
  /** Longest token row (special tokens included) the model takes. */
  maxLength: number;
  tokenizer: OffsetTokenizer;
  /** Per row, log p(ids[t] | ids[<t]) for t = 1..n−1 (one model call; rows padded on the right). */
  tokenLogProbs(rows: readonly number[][]): Promise<Float64Array[]>;
  dispose(): Promise<void>;
}

/**
 * log p(ids[t] | ids[<t]) for t = from..length−1 of one row (default from 1: every token with a context), from
 * row-major logits [rows, width, vocab] (position t−1 predicts token t), log-softmax accumulated in float64. Pure.
 */
export function rowTokenLogProbs(logits: ArrayLike<number>, row: number, width: number, vocab: number,
  ids: readonly number[], from = 1): Float64Array {
  if (from < 1) throw new Error(`rowTokenLogProbs: the first token has no context (from = ${from})`);
  const out = new Float64Array(Math.max(ids.length - from, 0));
  for (let t = from; t < ids.length; t++) {
    const base = (row * width + t - 1) * vocab;
    let max = -Infinity;
    for (let v = 0; v < vocab; v++) max = Math.max(max, logits[base + v]!);
    let sum = 0;
    for (let v = 0; v < vocab; v++) sum += Math.exp(logits[base + v]! - max);
    out[t - from] = logits[base + ids[t]!]! - max - Math.log(sum);
  }
  return out;
}

/** The model's context: the smallest of the config's position limits and the tokenizer's model_max_length. */
export function contextLength(config: Record<string, unknown>, tokenizerMax: unknown): number {
  const limits = ['max_position_embeddings', 'n_positions', 'n_ctx', 'max_sequence_length']
    .map((key) => config[key]).concat(tokenizerMax)
    .filter((v): v is number => typeof v === 'number' && Number.isFinite(v) && v > 0);
  return limits.length ? Math.min(...limits) : Infinity;
}

/**
 * Loads `model` (a local folder in transformers.js layout, or a Hub id the library downloads where the network
 * allows) with AutoTokenizer + AutoModelForCausalLM on the CPU in fp32.
 */
export async function loadCausalLm(model: string): Promise<CausalLm> {
  const local = isLocalModel(model);
  if (local) {
    checkModelFolder(model, LM_MODEL_FILES, 'causal LM',
      `A causal LM folder needs ${LM_MODEL_FILES.join(', ')} (the layout of e.g. Xenova/gpt2 on the Hugging Face Hub).`,
      (message) => new LmModelError(`--lm: ${message}`));
  }
  const source = local ? path.resolve(model) : model;
  const hf = await import('@huggingface/transformers');
  hf.env.logLevel = hf.LogLevel.ERROR;
  const pretrained = { local_files_only: local };
  let tokenizer: PreTrainedTokenizer;
  let lm: PreTrainedModel;
  try {
    tokenizer = await hf.AutoTokenizer.from_pretrained(source, pretrained);
    lm = await hf.AutoModelForCausalLM.from_pretrained(source, { ...pretrained, device: 'cpu', dtype: 'fp32' });
  } catch (error) {
    throw new LmModelError(local
      ? `--lm: cannot load the causal LM in ${source}: ${(error as Error).message}`
      : `--lm: cannot load "${model}" from the Hugging Face Hub or the cache (${hf.env.cacheDir}): ${(error as Error).message}. ` +
        'Without network access, download the model repository elsewhere and pass its folder.');
  }
  const maxLength = contextLength(lm.config as unknown as Record<string, unknown>, tokenizer.model_max_length);
  if (!Number.isFinite(maxLength)) {
    throw new LmModelError(`--lm: cannot tell the context length of ${source}: set max_position_embeddings (or n_positions) in config.json`);
  }
  const padId = Number(tokenizer.pad_token_id ?? tokenizer.eos_token_id ?? 0); // padded positions are masked out
  return {
    modelId: await modelId(model, LM_MODEL_FILES),
    maxLength,
    tokenizer: hfOffsetTokenizer(tokenizer),
    async tokenLogProbs(rows) {
      if (rows.length === 0) return [];
      const width = Math.max(...rows.map((r) => r.length));
      const ids = new BigInt64Array(rows.length * width).fill(BigInt(padId));
      const mask = new BigInt64Array(rows.length * width);
      rows.forEach((row, r) => row.forEach((id, t) => {
        ids[r * width + t] = BigInt(id);
        mask[r * width + t] = 1n;
      }));
      const { logits } = await lm({
        input_ids: new hf.Tensor('int64', ids, [rows.length, width]),
        attention_mask: new hf.Tensor('int64', mask, [rows.length, width]),
      }) as { logits?: HfTensor };
      if (!logits || logits.dims.length !== 3 || logits.dims[0] !== rows.length || logits.dims[1] !== width) {
        throw new LmModelError(`--lm: the model returned no logits [batch, ${width}, vocab] (got ${logits ? `[${logits.dims.join(', ')}]` : 'none'})`);
      }
      const data = logits.data as Float32Array;
      const vocab = logits.dims[2]!;
      return rows.map((row, r) => rowTokenLogProbs(data, r, width, vocab, row));
    },
    async dispose() {
      await lm.dispose();
    },
  };
}

/**
 * The perplexity scorer of a causal LM. Responses longer than the model's context are skipped. A token gets a log-prob
 * only when something precedes it, so without a BOS token and with an empty prompt, the first token of the response
 * is not counted.
 */
export function lmScorer(lm: CausalLm): ResponseScorer {
  return {
    signal: 'perplexity',
    modelId: lm.modelId,
    defaultBatchSize: DEFAULT_LM_BATCH_SIZE,
    textOnly: 'run',
    async scoreBatch(batch) {
      const scored: ScoredBatch = { rows: [], skipped: {}, emptySentences: 0, modelSeconds: 0 };
      const encoded = batch.responses.flatMap((response) => {
        const { ids, sentenceIds } = encodeWithSentences(lm.tokenizer, response.prompt, response.response, response.sentences);
        if (ids.length <= lm.maxLength) return [{ response, ids, sentenceIds }];
        scored.skipped.tooLong = (scored.skipped.tooLong ?? 0) + 1;
        return [];
      });
      if (!encoded.length) return scored;
      const t0 = performance.now();
      const logps = await lm.tokenLogProbs(encoded.map((e) => e.ids));
      scored.modelSeconds = (performance.now() - t0) / 1000;
      encoded.forEach(({ response, sentenceIds }, i) => {
        // logps[i][t − 1] belongs to token t: the first token has no context and no log-prob.
        sentenceLogProbs(logps[i]!, sentenceIds.slice(1), response.sentences.length).forEach((s, k) => {
          if (s.n === 0) scored.emptySentences++;
          scored.rows.push(perplexityRow(response, response.sentences[k]!.idx, s, lm.modelId));
        });
      });
      return scored;
    },
  };
}

/** Scores every response with a sentence whose ppl_model is not this model (see scoreResponses and lmScorer). */
export async function scoreLm(store: Store, lm: CausalLm, options: ScoreResponsesOptions = {}): Promise<ResponseScoreSummary> {
  return scoreResponses(store, lmScorer(lm), options);
}
