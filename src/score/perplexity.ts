/**
 * Reference-model signals from the toolkit's own TF.js vision-language model (a checkpoint folder):
 * per-sentence perplexity in context (with the per-sentence sums of reference log-probs, so the trainer can skip the
 * reference pass), and the grounding similarity (mean per-token log-prob gain of a sentence given its image over
 * the same model given no image). Each response is encoded exactly as training encodes it (`encodePromptResponse`).
 */
import { sha256Hex } from '../util/hash.js';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { ColumnKind, Store } from '../store/store.js';
import { alignTokens, type Span } from '../segment/align.js';
import { loadModel } from '../train/checkpoint.js';
import { loadImagePixels, stackImages } from '../train/images.js';
import { textContext, type VisionLanguageModel } from '../train/model.js';
import { encodePromptResponse } from '../train/sft.js';
import type { Tokenizer } from '../train/tokenizer.js';
import { tf } from '../train/backend.js';

export const DEFAULT_REF_BATCH_SIZE = 16;

/** Which signal a run writes: `perplexity` fills ppl/ref_logp_sum/n_tokens/ppl_model; `grounding` the similarity. */
export type ReferenceSignal = 'perplexity' | 'grounding';

export interface ReferenceModel {
  model: VisionLanguageModel;
  tokenizer: Tokenizer;
  /** Folder name @ first 16 hex digits of the sha256 over the config, tokenizer and weights digests of the manifest. */
  modelId: string;
}

/** Options of the scorers that run a model over whole responses (`--ref`, `--lm`). */
export interface ReferenceScoreOptions {
  /** Responses (pair sides) per model call (default DEFAULT_REF_BATCH_SIZE, or DEFAULT_LM_BATCH_SIZE for --lm). */
  batchSize?: number;
  onStart?: (info: { pendingResponses: number }) => void;
  onBatch?: (progress: { responses: number; sentences: number; total: number }) => void;
}

/** What a scorer that runs a model over whole responses (`--ref`, `--lm`) did. */
export interface ResponseScoreSummary {
  /** The model id written (`ppl_model`, or `similarity_model` for grounding). */
  model: string;
  /** Responses and sentences written by this run. */
  responses: number;
  sentences: number;
  /** Sentences given no token of their own (a token straddling the boundary): n_tokens 0, ppl NULL. */
  emptySentences: number;
  /** Responses skipped because they exceed the model's context (never truncated). */
  tooLong: number;
  modelSeconds: number;
  seconds: number;
}

export interface ReferenceScoreSummary extends ResponseScoreSummary {
  signal: ReferenceSignal;
  /** Responses skipped because they cannot be encoded as training does (prompt running into the response inside a token). */
  unencodable: number;
  /** Responses skipped because their image cannot be decoded. */
  imageErrors: number;
  /** Responses of pairs without an image: run without an image (perplexity) or not scored (grounding). */
  textOnlyResponses: number;
}

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

/** Loads a checkpoint folder as a reference model, with an id that changes whenever its weights do. */
export async function loadReferenceModel(dir: string): Promise<ReferenceModel> {
  const { model, tokenizer } = await loadModel(dir);
  const manifest = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8')) as { files: Record<string, string> };
  const digest = sha256Hex(['config.json', 'tokenizer.json', 'weights.json', 'weights.bin'].map((f) => `${f}:${manifest.files[f]}`).join('\n'));
  return { model, tokenizer, modelId: `${path.basename(path.resolve(dir))}@${digest.slice(0, 16)}` };
}

/** A response (pair side) with at least one sentence not yet scored by the model in question. */
export interface PendingResponse { pair_id: string; side: string; prompt: string; response: string; image_id: string | null }

/** Responses having a sentence whose `column` (ppl_model or similarity_model) is not `model`, in a stable order. */
export async function pendingResponses(store: Store, column: 'ppl_model' | 'similarity_model', model: string): Promise<PendingResponse[]> {
  return store.all<PendingResponse>(`
    SELECT p.pair_id, r.side, p.prompt, CASE r.side WHEN 'chosen' THEN p.chosen ELSE p.rejected END AS response, p.image_id
    FROM pairs p JOIN (
      SELECT DISTINCT s.pair_id, s.side FROM sentences s
      LEFT JOIN sentence_scores sc ON sc.pair_id = s.pair_id AND sc.side = s.side AND sc.idx = s.idx
      WHERE sc.${column} IS DISTINCT FROM $1) r ON r.pair_id = p.pair_id
    ORDER BY p.pair_id, r.side`, [model]);
}

/** One `sentence_scores` perplexity row (see writePerplexityRows) for sentence `idx` of a response. */
export function perplexityRow(response: { pair_id: string; side: string }, idx: number, s: SentenceLogProb, model: string): unknown[] {
  return [response.pair_id, response.side, idx, perplexity(s), s.n > 0 ? s.sum : null, s.n, model];
}

/**
 * Upserts perplexity rows in one transaction, touching only ppl, ref_logp_sum, n_tokens and ppl_model, so that a
 * similarity already stored for the sentence stays.
 */
export async function writePerplexityRows(store: Store, rows: unknown[][]): Promise<void> {
  await store.run(`CREATE TEMP TABLE IF NOT EXISTS ppl_batch (pair_id VARCHAR, side VARCHAR, idx INTEGER, ppl DOUBLE,
    ref_logp_sum DOUBLE, n_tokens INTEGER, ppl_model VARCHAR)`);
  await store.transaction(async () => {
    await store.run('DELETE FROM ppl_batch');
    await store.append('ppl_batch', PPL_ROW_KINDS, rows, true);
    await store.run(`INSERT INTO sentence_scores (pair_id, side, idx, ppl, ref_logp_sum, n_tokens, ppl_model) SELECT * FROM ppl_batch
      ON CONFLICT (pair_id, side, idx) DO UPDATE SET ppl = excluded.ppl, ref_logp_sum = excluded.ref_logp_sum,
        n_tokens = excluded.n_tokens, ppl_model = excluded.ppl_model`);
  });
}

/** A response ready for the model: token ids and the sentence of each response token. */
interface EncodedResponse {
  row: PendingResponse;
  promptIds: number[];
  responseIds: number[];
  sentenceIds: number[];
  idxs: number[];
  image: Float32Array | null;
}

const PPL_ROW_KINDS: ColumnKind[] = ['varchar', 'varchar', 'integer', 'double', 'double', 'integer', 'varchar'];
const GROUNDING_ROW_KINDS: ColumnKind[] = ['varchar', 'varchar', 'integer', 'double', 'varchar'];

/**
 * Scores every response (pair side) with a sentence not yet scored for `signal` under `ref`, `batchSize` responses
 * per model call and one transaction per batch, so a killed run resumes where it stopped. Rows that already have
 * the other signal keep it (upsert of the signal's columns only).
 */
export async function scoreReference(store: Store, ref: ReferenceModel, signal: ReferenceSignal,
  options: ReferenceScoreOptions = {}): Promise<ReferenceScoreSummary> {
  const started = performance.now();
  const batchSize = options.batchSize ?? DEFAULT_REF_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
  const model = signal === 'grounding' ? `grounding:${ref.modelId}` : ref.modelId;
  const column = signal === 'grounding' ? 'similarity_model' : 'ppl_model';
  const pending = await pendingResponses(store, column, model);
  const summary: ReferenceScoreSummary = {
    signal, model, responses: 0, sentences: 0, emptySentences: 0, tooLong: 0, unencodable: 0, imageErrors: 0,
    textOnlyResponses: pending.filter((r) => r.image_id === null).length, modelSeconds: 0, seconds: 0,
  };
  const todo = signal === 'grounding' ? pending.filter((r) => r.image_id !== null) : pending;
  options.onStart?.({ pendingResponses: todo.length });
  const table = 'grounding_batch';
  if (signal === 'grounding') {
    await store.run(`CREATE TEMP TABLE IF NOT EXISTS ${table} (pair_id VARCHAR, side VARCHAR, idx INTEGER, similarity DOUBLE, similarity_model VARCHAR)`);
  }
  const limit = textContext(ref.model.config);

  for (let b = 0; b < todo.length; b += batchSize) {
    const encoded: EncodedResponse[] = [];
    const images = new Map<string, Promise<Float32Array>>(); // chosen and rejected share their pair's image
    for (const row of todo.slice(b, b + batchSize)) {
      const item = await encodeResponse(store, ref, row, limit, images, summary);
      if (item) encoded.push(item);
    }
    const rows: unknown[][] = [];
    if (encoded.length) {
      const t0 = performance.now();
      const withImage = logProbRows(ref.model, encoded, true);
      const withoutImage = signal === 'grounding' ? logProbRows(ref.model, encoded, false) : undefined;
      summary.modelSeconds += (performance.now() - t0) / 1000;
      encoded.forEach((item, i) => {
        const sums = sentenceLogProbs(withImage[i]!, item.sentenceIds, item.idxs.length);
        const base = withoutImage && sentenceLogProbs(withoutImage[i]!, item.sentenceIds, item.idxs.length);
        sums.forEach((s, k) => {
          if (s.n === 0) summary.emptySentences++;
          rows.push(base
            ? [item.row.pair_id, item.row.side, item.idxs[k], groundingGain(s, base[k]!), model]
            : perplexityRow(item.row, item.idxs[k]!, s, model));
        });
      });
    }
    if (signal === 'grounding') {
      await store.transaction(async () => {
        await store.run(`DELETE FROM ${table}`);
        await store.append(table, GROUNDING_ROW_KINDS, rows, true);
        await store.run(`INSERT INTO sentence_scores (pair_id, side, idx, similarity, similarity_model) SELECT * FROM ${table}
           ON CONFLICT (pair_id, side, idx) DO UPDATE SET similarity = excluded.similarity,
             similarity_model = excluded.similarity_model, similarity_truncated = NULL, similarity_error = NULL`);
      });
    } else await writePerplexityRows(store, rows);
    summary.responses += encoded.length;
    summary.sentences += rows.length;
    options.onBatch?.({ responses: Math.min(b + batchSize, todo.length), sentences: summary.sentences, total: todo.length });
  }
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}

/** Tokenizes one response as training does and decodes its image; undefined (counted in `summary`) when it cannot run. */
async function encodeResponse(store: Store, ref: ReferenceModel, row: PendingResponse, limit: number,
  images: Map<string, Promise<Float32Array>>, summary: ReferenceScoreSummary): Promise<EncodedResponse | undefined> {
  let ids: { promptIds: number[]; responseIds: number[] };
  try {
    ids = encodePromptResponse(ref.tokenizer, row.prompt, row.response);
  } catch {
    summary.unencodable++;
    return undefined;
  }
  if (1 + ids.promptIds.length + ids.responseIds.length > limit) {
    summary.tooLong++;
    return undefined;
  }
  const sentences = await store.all<Span & { idx: number }>(
    'SELECT idx, char_start AS start, char_end AS end FROM sentences WHERE pair_id = $1 AND side = $2 ORDER BY idx', [row.pair_id, row.side]);
  const text = row.prompt + row.response;
  const { offsets } = ref.tokenizer.encode(text);
  const sentenceIds = alignTokens(text, offsets, sentences, row.prompt.length).slice(ids.promptIds.length);
  let image: Float32Array | null = null;
  if (row.image_id !== null) {
    const imageId = row.image_id;
    if (!images.has(imageId)) {
      const decoding = (async () => {
        const bytes = await store.scalar('SELECT bytes FROM images WHERE image_id = $1', [imageId]) as Uint8Array | null;
        if (!bytes) throw new Error('image missing from the images table');
        return loadImagePixels(Buffer.from(bytes), ref.model.config.imageSize);
      })();
      decoding.catch(() => undefined); // awaited below; a failure is counted there
      images.set(imageId, decoding);
    }
    try {
      image = await images.get(imageId)!;
    } catch {
      summary.imageErrors++;
      return undefined;
    }
  }
  return { row, ...ids, sentenceIds, idxs: sentences.map((s) => s.idx), image };
}

/** Per response, the log-prob of each response token (EOS column dropped), with the images or with none. */
function logProbRows(model: VisionLanguageModel, batch: EncodedResponse[], useImages: boolean): Float32Array[] {
  const images = useImages ? batch.map((item) => item.image) : batch.map(() => null);
  const imageTensor = images.some(Boolean) ? stackImages(images, model.config.imageSize) : null;
  try {
    const { logps, mask } = model.responseLogProbs({
      images: imageTensor, hasImage: images.map(Boolean),
      promptIds: batch.map((item) => item.promptIds), responseIds: batch.map((item) => item.responseIds),
    });
    const values = logps.dataSync() as Float32Array;
    const width = logps.shape[1];
    tf.dispose([logps, mask]);
    return batch.map((item, i) => values.slice(i * width, i * width + item.responseIds.length));
  } finally {
    imageTensor?.dispose();
  }
}
