import { sha256Hex } from '../util/hash.js';
import type { Tensor as HfTensor } from '@huggingface/transformers';
import type { ColumnKind, Store } from '../store/store.js';
import { ClipEncoder, dot, type ClipDevice, type TextBatch } from './clip.js';

export const DEFAULT_SCORE_BATCH_SIZE = 32;
export const DEFAULT_COMMIT_SENTENCES = 2048;

export interface ScoreOptions {
  /** Images and texts per model call (default 32). */
  batchSize?: number;
  /**
   * Sentences per transaction, about (default 2048; whole images, so a transaction may hold a little more). Commits
   * cost a fixed time each (about 0.2 s here), so larger is faster; a killed run redoes at most this many sentences.
   */
  commitSentences?: number;
  /** Called once before the first batch. */
  onStart?: (info: { pending: number; textOnlySentences: number; alreadyDone: number }) => void;
  /** Called after each committed transaction with the sentences written so far. */
  onBatch?: (progress: { sentences: number; total: number }) => void;
  /** Sees every model call's input (the benchmark replays them as bare model calls). */
  onModelCall?: (call: { kind: 'text'; batch: TextBatch } | { kind: 'image'; pixelValues: HfTensor }) => void;
}

export interface ScoreSummary {
  model: string;
  device: string;
  /** Sentences given a similarity (or an image error) by this run. */
  sentences: number;
  /** Of those, taken from `similarity_cache` (same model, image and text scored before). */
  cacheHits: number;
  /** Distinct (image, text) combinations computed. */
  computed: number;
  /** Images and distinct texts run through the model. */
  images: number;
  texts: number;
  /** Distinct texts encoded by this run that were longer than the text encoder's context (cut to it, see fitToContext). */
  truncated: number;
  /** Sentences whose image could not be decoded (similarity NULL, similarity_error says why). */
  imageErrors: number;
  /** Images whose work failed for good (through a queue, after its retries): in `rejects`, their sentences unscored. */
  rejectedImages: number;
  /** Sentences of pairs without an image, skipped (similarity stays NULL), and their pairs. */
  textOnlySentences: number;
  textOnlyPairs: number;
  /** Pairs not segmented yet (they have no sentences to score: run `aspo segment --db` first). */
  unsegmentedPairs: number;
  /** Sentences already scored with this model by earlier runs. */
  alreadyDone: number;
  /** Seconds spent in model calls (text and vision towers), and in the whole stage. */
  modelSeconds: number;
  seconds: number;
}

/** Sentences of image pairs not yet scored with `$model` (positional parameter 1). */
const PENDING = `
  FROM sentences s JOIN pairs p ON p.pair_id = s.pair_id
  LEFT JOIN sentence_scores sc ON sc.pair_id = s.pair_id AND sc.side = s.side AND sc.idx = s.idx
  WHERE p.image_id IS NOT NULL AND sc.similarity_model IS DISTINCT FROM $1`;

const SCORE_ROW_KINDS: ColumnKind[] = ['varchar', 'varchar', 'integer', 'double', 'varchar', 'boolean', 'varchar'];
const CACHE_ROW_KINDS: ColumnKind[] = ['varchar', 'varchar', 'varchar', 'double', 'boolean'];

interface PendingSentence { pair_id: string; side: string; idx: number; text: string; image_id: string }


/** The (image, text) combinations of one transaction that are neither scored nor cached. */
export interface SimilarityWork {
  /** By `${image_id}:${text_sha256}`. */
  misses: Map<string, { imageId: string; textKey: string }>;
  /** The missing texts by their sha256. */
  texts: Map<string, string>;
}

/** What computing a SimilarityWork gave. */
export interface Computed {
  /** By `${image_id}:${text_sha256}`. */
  results: Map<string, { similarity: number; truncated: boolean }>;
  /** Images that could not be decoded, with the reason (their sentences get similarity NULL and the reason). */
  imageErrors: Map<string, string>;
  /** Images whose work failed for good (through a queue, after its retries): a `rejects` row each, sentences left unscored. */
  rejected: Map<string, string>;
  /** Images and texts run through the model, texts cut to the context, seconds in model calls. */
  images: number;
  texts: number;
  truncated: number;
  modelSeconds: number;
}

/** Stored image bytes and the sha256 recorded for them at ingest, by image id. */
export type ImageSource = (imageIds: readonly string[]) => Promise<Map<string, { bytes: Uint8Array; sha256: string }>>;

/**
 * Where similarities are computed: in this process (a ClipEncoder, see localSimilarities) or by workers through a
 * queue (`queueSimilarities` in distributed/). The stage around it (what is pending, the cache, the writes) is the same.
 */
export interface SimilarityExecutor {
  model: string;
  device: string;
  /** Transactions computed ahead of the one being written (a queue keeps its workers busy through a commit). */
  lookahead: number;
  /** Starts one transaction's work; `release` runs once its rows are committed. */
  start(work: SimilarityWork, images: ImageSource): Promise<{ done: Promise<Computed>; release?: () => Promise<void> }>;
}

/** The executor that runs `encoder` in this process. */
export function localSimilarities(encoder: ClipEncoder, options: Pick<ScoreOptions, 'batchSize' | 'onModelCall'> = {}): SimilarityExecutor {
  const batchSize = options.batchSize ?? DEFAULT_SCORE_BATCH_SIZE;
  return {
    model: encoder.modelId,
    device: encoder.device,
    lookahead: 0,
    start: async (work, images) => ({ done: computeSimilarities(encoder, work, images, batchSize, options.onModelCall) }),
  };
}

/**
 * Scores every sentence of every pair with an image by the image–text cosine similarity of `encoder`, writing
 * `sentence_scores` (similarity columns; the perplexity columns are left as they are) and `similarity_cache`.
 * Work is grouped by image (whole images per transaction), so each image is decoded and encoded once; each distinct text is
 * encoded once per transaction, and an (image, text) combination already in the cache is not recomputed. Each
 * transaction commits its cache and score rows together: a killed run resumes where it stopped. `encoder` may be
 * another SimilarityExecutor (workers through a queue): the rows written are the same.
 */
export async function scoreSimilarity(store: Store, encoder: ClipEncoder | SimilarityExecutor, options: ScoreOptions = {}): Promise<ScoreSummary> {
  const started = performance.now();
  const batchSize = options.batchSize ?? DEFAULT_SCORE_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
  const commitSentences = options.commitSentences ?? DEFAULT_COMMIT_SENTENCES;
  if (!Number.isInteger(commitSentences) || commitSentences < 1) throw new Error(`commitSentences must be a positive integer, got ${commitSentences}`);
  const executor = encoder instanceof ClipEncoder ? localSimilarities(encoder, options) : encoder;
  const model = executor.model;
  const textOnly = (await store.one<{ sentences: number; pairs: number }>(`
    SELECT count(*) AS sentences, count(DISTINCT s.pair_id) AS pairs
    FROM sentences s JOIN pairs p ON p.pair_id = s.pair_id WHERE p.image_id IS NULL`))!;
  const unsegmentedPairs = Number(await store.scalar(
    'SELECT count(*) FROM pairs p WHERE NOT EXISTS (SELECT 1 FROM segmented_pairs d WHERE d.pair_id = p.pair_id)'));
  const alreadyDone = Number(await store.scalar(`
    SELECT count(*) FROM sentence_scores sc JOIN pairs p ON p.pair_id = sc.pair_id
    WHERE p.image_id IS NOT NULL AND sc.similarity_model = $1`, [model]));
  const perImage = await store.all<{ image_id: string; n: number }>(
    `SELECT p.image_id, count(*) AS n ${PENDING} GROUP BY p.image_id ORDER BY p.image_id`, [model]);
  const pending = perImage.reduce((n, row) => n + row.n, 0);
  options.onStart?.({ pending, textOnlySentences: textOnly.sentences, alreadyDone });

  const summary: ScoreSummary = {
    model, device: executor.device, sentences: 0, cacheHits: 0, computed: 0, images: 0, texts: 0, truncated: 0,
    imageErrors: 0, rejectedImages: 0, textOnlySentences: textOnly.sentences, textOnlyPairs: textOnly.pairs, unsegmentedPairs,
    alreadyDone, modelSeconds: 0, seconds: 0,
  };
  await store.run(`CREATE TEMP TABLE IF NOT EXISTS score_batch (pair_id VARCHAR, side VARCHAR, idx INTEGER,
    similarity DOUBLE, similarity_model VARCHAR, similarity_truncated BOOLEAN, similarity_error VARCHAR)`);
  const images: ImageSource = async (ids) => new Map((await store.all<{ image_id: string; bytes: Uint8Array; sha256: string }>(
    `SELECT image_id, bytes, sha256 FROM images WHERE image_id IN (SELECT unnest(string_split($1, ',')))`, [ids.join(',')]))
    .map((row) => [row.image_id, { bytes: row.bytes, sha256: row.sha256 }]));

  /** Reads one transaction's sentences and cache hits, and starts computing the rest. */
  const prepare = async (chunk: Array<{ image_id: string }>) => {
    const first = chunk[0]!.image_id;
    const last = chunk[chunk.length - 1]!.image_id;
    const rows = await store.all<PendingSentence>(
      // Ordered, so that the model's batches (and so the bits of a batch-sensitive model's output) never vary.
      `SELECT s.pair_id, s.side, s.idx, s.text, p.image_id ${PENDING} AND p.image_id BETWEEN $2 AND $3
       ORDER BY p.image_id, s.pair_id, s.side, s.idx`, [model, first, last]);
    const keys = rows.map((row) => sha256Hex(row.text));
    const cached = new Map<string, { similarity: number; truncated: boolean }>();
    for (const hit of await store.all<{ image_id: string; text_sha256: string; similarity: number; truncated: boolean }>(
      `SELECT image_id, text_sha256, similarity, truncated FROM similarity_cache
       WHERE model_id = $1 AND image_id BETWEEN $2 AND $3`, [model, first, last])) {
      cached.set(`${hit.image_id}:${hit.text_sha256}`, hit);
    }
    const work: SimilarityWork = { misses: new Map(), texts: new Map() };
    rows.forEach((row, i) => {
      const key = `${row.image_id}:${keys[i]}`;
      if (cached.has(key)) return;
      work.misses.set(key, { imageId: row.image_id, textKey: keys[i]! });
      work.texts.set(keys[i]!, row.text);
    });
    const computing = work.misses.size ? await executor.start(work, images) : { done: Promise.resolve(emptyComputed()) };
    computing.done.catch(() => undefined); // awaited in turn; not unhandled if an earlier transaction fails first
    return { rows, keys, cached, work, computing };
  };

  const chunks = [...chunkImages(perImage, commitSentences)];
  const ahead: Array<ReturnType<typeof prepare>> = [];
  for (let c = 0; c < chunks.length; c++) {
    while (ahead.length <= executor.lookahead && c + ahead.length < chunks.length) {
      // Each prepared after the previous one's reads: one connection, no concurrent queries.
      const chunk = chunks[c + ahead.length]!;
      const previous = ahead[ahead.length - 1];
      const prepared = previous ? previous.then(() => prepare(chunk)) : prepare(chunk);
      prepared.catch(() => undefined);
      ahead.push(prepared);
    }
    const { rows, keys, cached, work, computing } = await ahead.shift()!;
    const computed = await computing.done;
    await Promise.all(ahead); // the next transactions' reads are done before this one writes
    summary.images += computed.images;
    summary.texts += computed.texts;
    summary.truncated += computed.truncated;
    summary.modelSeconds += computed.modelSeconds;
    summary.computed += computed.results.size;
    summary.rejectedImages += computed.rejected.size;

    const scoreRows: unknown[][] = [];
    rows.forEach((row, i) => {
      const key = `${row.image_id}:${keys[i]}`;
      const hit = cached.get(key);
      if (hit) summary.cacheHits++;
      const result = hit ?? computed.results.get(key);
      if (result) scoreRows.push([row.pair_id, row.side, row.idx, result.similarity, model, result.truncated, null]);
      else if (!computed.rejected.has(row.image_id)) {
        summary.imageErrors++;
        scoreRows.push([row.pair_id, row.side, row.idx, null, model, null, computed.imageErrors.get(row.image_id)]);
      }
    });
    await store.transaction(async () => {
      await store.append('similarity_cache', CACHE_ROW_KINDS, [...computed.results].map(([key, r]) => {
        const { imageId, textKey: text } = work.misses.get(key)!;
        return [model, imageId, text, r.similarity, r.truncated];
      }));
      await store.run('DELETE FROM score_batch');
      await store.append('score_batch', SCORE_ROW_KINDS, scoreRows, true);
      await store.run(`
        INSERT INTO sentence_scores (pair_id, side, idx, similarity, similarity_model, similarity_truncated, similarity_error)
        SELECT * FROM score_batch
        ON CONFLICT (pair_id, side, idx) DO UPDATE SET similarity = excluded.similarity,
          similarity_model = excluded.similarity_model, similarity_truncated = excluded.similarity_truncated,
          similarity_error = excluded.similarity_error`);
      for (const [imageId, reason] of computed.rejected) {
        await store.run(`INSERT OR REPLACE INTO rejects (stage, source, source_row, field, reason, raw)
          VALUES ('score', $1, -1, 'image', $2, NULL)`, [`image ${imageId}`, `${model}: ${reason}`]);
      }
    });
    await computing.release?.();
    summary.sentences += scoreRows.length;
    options.onBatch?.({ sentences: summary.sentences, total: pending });
  }
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}

/** Consecutive images (sorted by id) whose pending sentences add up to about `target` per chunk. */
function* chunkImages<T extends { n: number }>(perImage: T[], target: number): Generator<T[]> {
  let chunk: T[] = [];
  let size = 0;
  for (const image of perImage) {
    chunk.push(image);
    size += image.n;
    if (size >= target) {
      yield chunk;
      chunk = [];
      size = 0;
    }
  }
  if (chunk.length) yield chunk;
}

export function emptyComputed(): Computed {
  return { results: new Map(), imageErrors: new Map(), rejected: new Map(), images: 0, texts: 0, truncated: 0, modelSeconds: 0 };
}

/**
 * The model calls for `work`, as lists of keys: text batches (distinct texts sorted by length, so that a batch pads
 * little) and image batches (distinct images in order), `batchSize` each. A queue sends exactly these calls to its
 * workers: a model's output may depend on the other rows of its batch, so the same batches give the same bits.
 */
export function similarityBatches(work: SimilarityWork, batchSize: number): { texts: string[][]; images: string[][] } {
  const textKeys = [...work.texts.keys()].sort((a, b) => work.texts.get(a)!.length - work.texts.get(b)!.length || (a < b ? -1 : 1));
  const imageIds = [...new Set([...work.misses.values()].map((m) => m.imageId))];
  return { texts: chunk(textKeys, batchSize), images: chunk(imageIds, batchSize) };
}

/** The cosine of each missing combination from unit embeddings; combinations whose image has none are left out. */
export function combineSimilarities(work: SimilarityWork, texts: Map<string, { embedding: Float32Array; truncated: boolean }>,
  images: Map<string, Float32Array>, computed: Computed): void {
  for (const [key, { imageId, textKey }] of work.misses) {
    const image = images.get(imageId);
    if (!image) continue;
    const { embedding, truncated } = texts.get(textKey)!;
    computed.results.set(key, { similarity: dot(image, embedding), truncated });
  }
}

/**
 * Embeds the distinct images and texts of `work` (the batches of similarityBatches) and takes the cosine of each
 * combination. Images are decoded and preprocessed one batch ahead of the vision tower (several at a time, see
 * ClipLoadOptions.decodeConcurrency), so decoding overlaps the model calls with bounded memory.
 */
export async function computeSimilarities(encoder: ClipEncoder, work: SimilarityWork, source: ImageSource, batchSize: number,
  onModelCall?: ScoreOptions['onModelCall']): Promise<Computed> {
  const computed = emptyComputed();
  if (work.misses.size === 0) return computed;
  const batches = similarityBatches(work, batchSize);
  // Bytes per batch, so that a transaction's images are never all in memory at once.
  const prepare = async (ids: string[]) => {
    const stored = await source(ids);
    const bytes = new Map([...stored].map(([id, image]) => [id, image.bytes]));
    return { ids, bytes, ...await encoder.preprocessImages(ids.map((id) => bytes.get(id) ?? new Uint8Array())) };
  };
  // One image batch ahead: the first decodes while the text tower runs, each next one while the vision tower runs.
  const ahead = (b: number) => {
    if (b >= batches.images.length) return undefined;
    const promise = prepare(batches.images[b]!);
    promise.catch(() => undefined); // awaited in turn; not an unhandled rejection if a model call fails first
    return promise;
  };
  let next = ahead(0);

  const timed = async <T>(call: Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await call;
    } finally {
      computed.modelSeconds += (performance.now() - t0) / 1000;
    }
  };

  const textEmbeddings = new Map<string, { embedding: Float32Array; truncated: boolean }>();
  for (const keys of batches.texts) {
    const batch = encoder.tokenize(keys.map((key) => work.texts.get(key)!));
    onModelCall?.({ kind: 'text', batch });
    const embeddings = await timed(encoder.embedTexts(batch));
    keys.forEach((key, i) => textEmbeddings.set(key, { embedding: embeddings[i]!, truncated: batch.truncated[i]! }));
    computed.texts += keys.length;
    computed.truncated += batch.truncated.filter(Boolean).length;
  }

  const imageEmbeddings = new Map<string, Float32Array>();
  for (let b = 0; b < batches.images.length; b++) {
    const { ids, bytes, pixelValues, decoded, failures } = await next!;
    next = ahead(b + 1);
    for (const failure of failures) {
      const id = ids[failure.index]!;
      computed.imageErrors.set(id, bytes.has(id) ? `image could not be decoded: ${failure.reason}` : 'image missing from the images table');
    }
    if (!pixelValues) continue;
    onModelCall?.({ kind: 'image', pixelValues });
    const embeddings = await timed(encoder.embedImages(pixelValues));
    decoded.forEach((index, i) => imageEmbeddings.set(ids[index]!, embeddings[i]!));
    computed.images += decoded.length;
  }
  combineSimilarities(work, textEmbeddings, imageEmbeddings, computed);
  return computed;
}

function chunk<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Loads the CLIP model (`ClipEncoder.load`) and scores the store; the encoder is released afterwards. */
export async function scoreStore(store: Store, clip: string, options: ScoreOptions & { device?: ClipDevice } = {}):
  Promise<ScoreSummary> {
  const encoder = await ClipEncoder.load(clip, { device: options.device });
  try {
    return await scoreSimilarity(store, encoder, options);
  } finally {
    await encoder.dispose();
  }
}
