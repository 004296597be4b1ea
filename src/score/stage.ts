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


/**
 * Scores every sentence of every pair with an image by the image–text cosine similarity of `encoder`, writing
 * `sentence_scores` (similarity columns; the perplexity columns are left as they are) and `similarity_cache`.
 * Work is grouped by image (whole images per transaction), so each image is decoded and encoded once; each distinct text is
 * encoded once per transaction, and an (image, text) combination already in the cache is not recomputed. Each
 * transaction commits its cache and score rows together: a killed run resumes where it stopped.
 */
export async function scoreSimilarity(store: Store, encoder: ClipEncoder, options: ScoreOptions = {}): Promise<ScoreSummary> {
  const started = performance.now();
  const batchSize = options.batchSize ?? DEFAULT_SCORE_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
  const commitSentences = options.commitSentences ?? DEFAULT_COMMIT_SENTENCES;
  if (!Number.isInteger(commitSentences) || commitSentences < 1) throw new Error(`commitSentences must be a positive integer, got ${commitSentences}`);
  const model = encoder.modelId;
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
    model, device: encoder.device, sentences: 0, cacheHits: 0, computed: 0, images: 0, texts: 0, truncated: 0,
    imageErrors: 0, textOnlySentences: textOnly.sentences, textOnlyPairs: textOnly.pairs, unsegmentedPairs, alreadyDone,
    modelSeconds: 0, seconds: 0,
  };
  await store.run(`CREATE TEMP TABLE IF NOT EXISTS score_batch (pair_id VARCHAR, side VARCHAR, idx INTEGER,
    similarity DOUBLE, similarity_model VARCHAR, similarity_truncated BOOLEAN, similarity_error VARCHAR)`);

  for (const images of chunkImages(perImage, commitSentences)) {
    const first = images[0]!.image_id;
    const last = images[images.length - 1]!.image_id;
    const rows = await store.all<PendingSentence>(
      `SELECT s.pair_id, s.side, s.idx, s.text, p.image_id ${PENDING} AND p.image_id BETWEEN $2 AND $3`, [model, first, last]);
    const keys = rows.map((row) => sha256Hex(row.text));
    const cached = new Map<string, { similarity: number; truncated: boolean }>();
    for (const hit of await store.all<{ image_id: string; text_sha256: string; similarity: number; truncated: boolean }>(
      `SELECT image_id, text_sha256, similarity, truncated FROM similarity_cache
       WHERE model_id = $1 AND image_id BETWEEN $2 AND $3`, [model, first, last])) {
      cached.set(`${hit.image_id}:${hit.text_sha256}`, hit);
    }
    const misses = new Map<string, { imageId: string; textKey: string }>();
    const missTexts = new Map<string, string>();
    rows.forEach((row, i) => {
      const key = `${row.image_id}:${keys[i]}`;
      if (cached.has(key)) return;
      misses.set(key, { imageId: row.image_id, textKey: keys[i]! });
      missTexts.set(keys[i]!, row.text);
    });
    const computed = await computeSimilarities(store, encoder, misses, missTexts, batchSize, options, summary);

    const scoreRows: unknown[][] = [];
    rows.forEach((row, i) => {
      const key = `${row.image_id}:${keys[i]}`;
      const hit = cached.get(key);
      if (hit) summary.cacheHits++;
      const result = hit ?? computed.results.get(key);
      if (result) scoreRows.push([row.pair_id, row.side, row.idx, result.similarity, model, result.truncated, null]);
      else {
        summary.imageErrors++;
        scoreRows.push([row.pair_id, row.side, row.idx, null, model, null, computed.imageErrors.get(row.image_id)]);
      }
    });
    await store.transaction(async () => {
      await store.append('similarity_cache', CACHE_ROW_KINDS, [...computed.results].map(([key, r]) => {
        const { imageId, textKey: text } = misses.get(key)!;
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
    });
    summary.sentences += rows.length;
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

interface Computed {
  /** By `${image_id}:${text_sha256}`. */
  results: Map<string, { similarity: number; truncated: boolean }>;
  /** Images that could not be decoded, with the reason. */
  imageErrors: Map<string, string>;
}

/**
 * Embeds the distinct images and texts of `misses` in batches of `batchSize` and takes the cosine of each
 * combination. Images are decoded and preprocessed one batch ahead of the vision tower (several at a time, see
 * ClipLoadOptions.decodeConcurrency), so decoding overlaps the model calls with bounded memory.
 */
async function computeSimilarities(store: Store, encoder: ClipEncoder, misses: Map<string, { imageId: string; textKey: string }>,
  texts: Map<string, string>, batchSize: number, options: ScoreOptions, summary: ScoreSummary): Promise<Computed> {
  const computed: Computed = { results: new Map(), imageErrors: new Map() };
  if (misses.size === 0) return computed;
  const imageIds = [...new Set([...misses.values()].map((m) => m.imageId))];
  const imageBatches = chunk(imageIds, batchSize);
  // Bytes per batch, so that a transaction's images are never all in memory at once.
  const prepare = async (ids: string[]) => {
    const bytes = new Map((await store.all<{ image_id: string; bytes: Uint8Array }>(
      `SELECT image_id, bytes FROM images WHERE image_id IN (SELECT unnest(string_split($1, ',')))`, [ids.join(',')]))
      .map((row) => [row.image_id, row.bytes]));
    return { ids, bytes, ...await encoder.preprocessImages(ids.map((id) => bytes.get(id) ?? new Uint8Array())) };
  };
  // One image batch ahead: the first decodes while the text tower runs, each next one while the vision tower runs.
  const ahead = (b: number) => {
    if (b >= imageBatches.length) return undefined;
    const promise = prepare(imageBatches[b]!);
    promise.catch(() => undefined); // awaited in turn; not an unhandled rejection if a model call fails first
    return promise;
  };
  let next = ahead(0);

  const timed = async <T>(work: Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await work;
    } finally {
      summary.modelSeconds += (performance.now() - t0) / 1000;
    }
  };

  // Texts sorted by length, so that a batch pads little.
  const textEmbeddings = new Map<string, { embedding: Float32Array; truncated: boolean }>();
  const textKeys = [...texts.keys()].sort((a, b) => texts.get(a)!.length - texts.get(b)!.length);
  for (const keys of chunk(textKeys, batchSize)) {
    const batch = encoder.tokenize(keys.map((key) => texts.get(key)!));
    options.onModelCall?.({ kind: 'text', batch });
    const embeddings = await timed(encoder.embedTexts(batch));
    keys.forEach((key, i) => textEmbeddings.set(key, { embedding: embeddings[i]!, truncated: batch.truncated[i]! }));
    summary.texts += keys.length;
    summary.truncated += batch.truncated.filter(Boolean).length;
  }

  const imageEmbeddings = new Map<string, Float32Array>();
  for (let b = 0; b < imageBatches.length; b++) {
    const { ids, bytes, pixelValues, decoded, failures } = await next!;
    next = ahead(b + 1);
    for (const failure of failures) {
      const id = ids[failure.index]!;
      computed.imageErrors.set(id, bytes.has(id) ? `image could not be decoded: ${failure.reason}` : 'image missing from the images table');
    }
    if (!pixelValues) continue;
    options.onModelCall?.({ kind: 'image', pixelValues });
    const embeddings = await timed(encoder.embedImages(pixelValues));
    decoded.forEach((index, i) => imageEmbeddings.set(ids[index]!, embeddings[i]!));
    summary.images += decoded.length;
  }

  for (const [key, { imageId, textKey: text }] of misses) {
    const image = imageEmbeddings.get(imageId);
    if (!image) continue;
    const { embedding, truncated } = textEmbeddings.get(text)!;
    computed.results.set(key, { similarity: dot(image, embedding), truncated });
    summary.computed++;
  }
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
