/**
 * The scorer interface. A scorer takes responses (a pair's side, with its sentences' offsets and its image's bytes)
 * and returns rows for `sentence_scores`: the pair key and the columns of the one signal it computes. It never
 * touches the store, so the same scorer runs in this process or in a remote worker; `scoreResponses` finds the
 * pending work, batches it, hands each batch to an executor (by default the scorer itself) and upserts the rows.
 * See docs/architecture.md.
 */
import type { Store } from '../store/store.js';
import type { OnProgress } from '../util/progress.js';

/** Which columns of `sentence_scores` a scorer fills: similarity (+ _model, _truncated, _error) or perplexity (ppl, ref_logp_sum, n_tokens, ppl_model). */
export type ScoreSignal = 'similarity' | 'perplexity';

/** The column naming the model that gave a signal; a sentence is pending for a scorer while it holds another model id. */
export const SIGNAL_MODEL_COLUMN = { similarity: 'similarity_model', perplexity: 'ppl_model' } as const satisfies Record<ScoreSignal, string>;

/** A sentence of a response: its idx and character offsets into `prompt + response`'s response part. */
export interface SentenceSpan { idx: number; start: number; end: number }

/** One response to score. */
export interface ResponseToScore {
  pairId: string;
  side: string;
  prompt: string;
  response: string;
  /** `images.image_id`, null for a text-only pair. */
  imageId: string | null;
  /** In idx order. */
  sentences: SentenceSpan[];
}

/** A batch of work, self-contained: the responses and the bytes of the images they name (absent: not in the store). */
export interface ScoreBatch {
  responses: ResponseToScore[];
  images: Map<string, Uint8Array>;
}

/** A `sentence_scores` row: pair_id, side, idx and the scorer's signal columns, by column name. */
export type SentenceScoreRow = Record<string, unknown>;

/** Why a response was not scored. */
export type SkipReason = 'tooLong' | 'unencodable' | 'imageErrors';

/** What a scorer gives back for a batch. */
export interface ScoredBatch {
  rows: SentenceScoreRow[];
  /** Responses of the batch that got no rows, by reason. */
  skipped: Partial<Record<SkipReason, number>>;
  /** Sentences given no token of their own (a token straddling the boundary): n_tokens 0, signal NULL. */
  emptySentences: number;
  /** Seconds spent in model calls. */
  modelSeconds: number;
}

/** A scorer of whole responses (the TF.js model's perplexity and grounding, a causal LM, a VLM). */
export interface ResponseScorer {
  readonly signal: ScoreSignal;
  /** Written to the signal's model column, e.g. `tiny@0123…` or `grounding:tiny@0123…`. */
  readonly modelId: string;
  /** Responses per batch when the caller gives none. */
  readonly defaultBatchSize: number;
  /** Responses of text-only pairs: scored without an image ('run') or left alone ('skip'). */
  readonly textOnly: 'run' | 'skip';
  scoreBatch(batch: ScoreBatch): Promise<ScoredBatch>;
}

/** Runs a batch: the scorer here, or anything that gets the same rows elsewhere (a queue of workers). */
export type ScoreExecutor = (scorer: ResponseScorer, batch: ScoreBatch) => Promise<ScoredBatch>;

export interface ScoreResponsesOptions {
  /** Responses per batch (default: the scorer's); each batch is one model call and one transaction. */
  batchSize?: number;
  /** Default: `scorer.scoreBatch(batch)`. */
  execute?: ScoreExecutor;
  /** Unit: responses. */
  onProgress?: OnProgress;
}

/** What a run of a response scorer did. */
export interface ResponseScoreSummary {
  signal: ScoreSignal;
  /** The model id written. */
  model: string;
  /** Responses and sentences written by this run. */
  responses: number;
  sentences: number;
  emptySentences: number;
  /** Responses skipped: longer than the model's context (never truncated), not encodable as training encodes them, image undecodable. */
  tooLong: number;
  unencodable: number;
  imageErrors: number;
  /** Responses of pairs without an image: run without one, or not scored (see ResponseScorer.textOnly). */
  textOnlyResponses: number;
  modelSeconds: number;
  seconds: number;
}

/** A response (pair side) with at least one sentence not yet scored by the model in question. */
export interface PendingResponse { pair_id: string; side: string; prompt: string; response: string; image_id: string | null }

/** Responses having a sentence whose `column` is not `model`, in a stable order. */
export async function pendingResponses(store: Store, column: string, model: string): Promise<PendingResponse[]> {
  return store.all<PendingResponse>(`
    SELECT p.pair_id, r.side, p.prompt, CASE r.side WHEN 'chosen' THEN p.chosen ELSE p.rejected END AS response, p.image_id
    FROM pairs p JOIN (
      SELECT DISTINCT s.pair_id, s.side FROM sentences s
      LEFT JOIN sentence_scores sc ON sc.pair_id = s.pair_id AND sc.side = s.side AND sc.idx = s.idx
      WHERE sc.${column} IS DISTINCT FROM $1) r ON r.pair_id = p.pair_id
    ORDER BY p.pair_id, r.side`, [model]);
}

/** The sentences and image bytes of a slice of pending responses, as a self-contained batch. */
async function loadBatch(store: Store, pending: readonly PendingResponse[]): Promise<ScoreBatch> {
  const responses: ResponseToScore[] = [];
  for (const row of pending) {
    const sentences = await store.all<SentenceSpan>(
      'SELECT idx, char_start AS start, char_end AS end FROM sentences WHERE pair_id = $1 AND side = $2 ORDER BY idx', [row.pair_id, row.side]);
    responses.push({ pairId: row.pair_id, side: row.side, prompt: row.prompt, response: row.response, imageId: row.image_id, sentences });
  }
  const ids = [...new Set(pending.map((r) => r.image_id).filter((id): id is string => id !== null))];
  const images = new Map<string, Uint8Array>();
  if (ids.length) {
    for (const row of await store.all<{ image_id: string; bytes: Uint8Array }>(
      `SELECT image_id, bytes FROM images WHERE image_id IN (SELECT unnest(string_split($1, ',')))`, [ids.join(',')])) {
      images.set(row.image_id, row.bytes);
    }
  }
  return { responses, images };
}

/**
 * Scores every response with a sentence not yet scored by `scorer`'s model, a batch per model call and one transaction
 * per batch, so a killed run resumes where it stopped. The rows name only the scorer's signal columns, so the other
 * signal already stored for a sentence stays.
 */
export async function scoreResponses(store: Store, scorer: ResponseScorer, options: ScoreResponsesOptions = {}): Promise<ResponseScoreSummary> {
  const started = performance.now();
  const batchSize = options.batchSize ?? scorer.defaultBatchSize;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
  const execute = options.execute ?? ((s, batch) => s.scoreBatch(batch));
  const pending = await pendingResponses(store, SIGNAL_MODEL_COLUMN[scorer.signal], scorer.modelId);
  const summary: ResponseScoreSummary = {
    signal: scorer.signal, model: scorer.modelId, responses: 0, sentences: 0, emptySentences: 0, tooLong: 0, unencodable: 0,
    imageErrors: 0, textOnlyResponses: pending.filter((r) => r.image_id === null).length, modelSeconds: 0, seconds: 0,
  };
  const todo = scorer.textOnly === 'skip' ? pending.filter((r) => r.image_id !== null) : pending;
  const report = (done: number) => options.onProgress?.({ phase: scorer.signal, done, total: todo.length, unit: 'responses' });
  report(0);
  for (let b = 0; b < todo.length; b += batchSize) {
    const slice = todo.slice(b, b + batchSize);
    const scored = await execute(scorer, await loadBatch(store, slice));
    await store.upsert('sentence_scores', scored.rows);
    const skipped = (scored.skipped.tooLong ?? 0) + (scored.skipped.unencodable ?? 0) + (scored.skipped.imageErrors ?? 0);
    summary.tooLong += scored.skipped.tooLong ?? 0;
    summary.unencodable += scored.skipped.unencodable ?? 0;
    summary.imageErrors += scored.skipped.imageErrors ?? 0;
    summary.responses += slice.length - skipped;
    summary.sentences += scored.rows.length;
    summary.emptySentences += scored.emptySentences;
    summary.modelSeconds += scored.modelSeconds;
    report(b + slice.length);
  }
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}
