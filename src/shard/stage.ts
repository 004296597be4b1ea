/**
 * The shard stage: segmented pairs of the store → a shard set (token ids, sentence ids, similarities, optional
 * reference log-probs, image bytes) that a training run reads without the store. Token ids and sentence ids are
 * computed exactly as the perplexity scorer and training compute them (`encodePromptResponse`, then the offsets of
 * the same `prompt + response` string aligned to the stored sentences).
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Store } from '../store/store.js';
import { encodeWithSentences, type Span } from '../segment/align.js';
import { loadModel, type LoadedModel } from '../model/checkpoint.js';
import { PixelCache } from '../model/images.js';
import { DEFAULT_REF_BATCH_SIZE, tokenLogProbs } from '../model/logprobs.js';
import { textContext, visualTokenCount, type VisionLanguageModel } from '../model/model.js';
import { encodePromptResponse } from '../model/encode.js';
import type { Tokenizer } from '../model/tokenizer.js';
import { deriveSeed, Rng } from '../util/random.js';
import { imagesFileName, SHARD_SET_FILE, shardFileName, type ShardFormat } from './columns.js';
import { MANIFEST_FILE, readManifest, SHARD_FORMAT_ID, verifyShardSet } from './read.js';
import { checkNotInput, LOCK_FILE, lockFolder, OutputError, storeFiles } from '../util/safe-output.js';
import { ShardWriter, writeManifest } from './write.js';
import type { ShardFile, ShardManifest, ShardPair, ShardSplit } from './types.js';

export const DEFAULT_PAIRS_PER_SHARD = 1024;
export const DEFAULT_EVAL_FRACTION = 0.1;
export const OVER_LENGTH_POLICIES = ['drop', 'truncate'] as const;
export type OverLength = (typeof OVER_LENGTH_POLICIES)[number];
export const SPLIT_BY = ['image', 'pair'] as const;
export type SplitBy = (typeof SPLIT_BY)[number];

export interface ShardOptions {
  /** Output folder (created if absent). */
  out: string;
  /** Checkpoint folder whose tokenizer encodes the text; default: `ref`. */
  tokenizer?: string;
  /** Checkpoint folder of the reference model whose per-token log-probs the shards store. */
  ref?: string;
  pairsPerShard?: number;
  format?: ShardFormat;
  /** Text positions a row may use: BOS + prompt + response (default: the model's text context). */
  maxLength?: number;
  overLength?: OverLength;
  evalFraction?: number;
  splitBy?: SplitBy;
  seed?: number;
  /** Required when the store holds similarities from several models. */
  similarityModel?: string;
  /** Responses per reference-model call (default DEFAULT_REF_BATCH_SIZE). */
  batchSize?: number;
  onPhase?: (phase: 'encode' | 'reference' | 'write', total: number) => void;
  onProgress?: (done: number) => void;
}

/** The options recorded in the manifest (defaults resolved). */
export interface ResolvedShardOptions {
  pairsPerShard: number;
  format: ShardFormat;
  maxLength: number;
  overLength: OverLength;
  evalFraction: number;
  splitBy: SplitBy;
  seed: number;
}

export interface ShardSummary {
  out: string;
  /** The inputs and options were those of the shard set already in `out`, whose files verified: nothing written. */
  unchanged: boolean;
  counts: ShardManifest['counts'];
  files: number;
  tokenizer: string;
  referenceModel: string | null;
  similarityModel: string | null;
  fingerprint: string;
  seconds: number;
}

/** A stage input error the user can fix (bad option, missing prerequisite). */
export class ShardInputError extends Error {}

// ---------------------------------------------------------------------------------------------------------------
// Pure parts

/** A pair with the text and sentence spans it is encoded from. */
export interface PairText {
  prompt: string;
  chosen: string;
  rejected: string;
  /** Stored sentences of each side, ordered by idx. */
  chosenSentences: ReadonlyArray<Span & { idx: number }>;
  rejectedSentences: ReadonlyArray<Span & { idx: number }>;
}

export interface EncodedPair {
  promptIds: number[];
  chosenIds: number[];
  rejectedIds: number[];
  chosenSentenceIds: number[];
  rejectedSentenceIds: number[];
  truncated: boolean;
}

/** Why a pair cannot go into the shards: the field to blame and a reason naming the lengths. */
export interface DropReason { field: 'prompt' | 'chosen' | 'rejected'; reason: string }

/**
 * Token ids of one response as training encodes it, and the sentence idx of each response token, aligned on the
 * offsets of the same `prompt + response` string (as the perplexity scorer aligns them).
 */
export function encodeSide(tokenizer: Tokenizer, prompt: string, response: string,
  sentences: ReadonlyArray<Span & { idx: number }>): { promptIds: number[]; responseIds: number[]; sentenceIds: number[] } {
  const { promptIds, responseIds } = encodePromptResponse(tokenizer, prompt, response);
  const { sentenceIds } = encodeWithSentences(tokenizer, prompt, response, sentences);
  return { promptIds, responseIds, sentenceIds: sentenceIds.slice(promptIds.length).map((k) => (k < 0 ? -1 : sentences[k]!.idx)) };
}

/**
 * Encodes a pair for the shards, or says why it cannot be: a row must fit `maxLength` text positions
 * (BOS + prompt + response; the final EOS is only predicted). With `truncate`, only the response tail is cut.
 */
export function encodePair(tokenizer: Tokenizer, pair: PairText, maxLength: number, overLength: OverLength): EncodedPair | DropReason {
  const sides = [] as Array<ReturnType<typeof encodeSide>>;
  for (const side of ['chosen', 'rejected'] as const) {
    try {
      sides.push(encodeSide(tokenizer, pair.prompt, pair[side], side === 'chosen' ? pair.chosenSentences : pair.rejectedSentences));
    } catch (error) {
      return { field: side, reason: `cannot be encoded as training encodes it: ${(error as Error).message}` };
    }
  }
  const [chosen, rejected] = sides as [ReturnType<typeof encodeSide>, ReturnType<typeof encodeSide>];
  if (chosen.promptIds.join() !== rejected.promptIds.join()) {
    return { field: 'prompt', reason: 'the prompt tokenizes differently before the chosen and the rejected response' };
  }
  const p = chosen.promptIds.length;
  const budget = maxLength - 1 - p;
  if (budget < 1) {
    return { field: 'prompt', reason: `BOS + ${p} prompt tokens leave no room for a response within max-length ${maxLength}` };
  }
  const over = (['chosen', 'rejected'] as const).filter((_, k) => sides[k]!.responseIds.length > budget);
  if (over.length && overLength === 'drop') {
    const lengths = over.map((side) => {
      const r = (side === 'chosen' ? chosen : rejected).responseIds.length;
      return `${side}: BOS + ${p} prompt + ${r} response tokens = ${1 + p + r}`;
    });
    return { field: over[0]!, reason: `${lengths.join('; ')} > max-length ${maxLength}` };
  }
  return {
    promptIds: chosen.promptIds,
    chosenIds: chosen.responseIds.slice(0, budget),
    rejectedIds: rejected.responseIds.slice(0, budget),
    chosenSentenceIds: chosen.sentenceIds.slice(0, budget),
    rejectedSentenceIds: rejected.sentenceIds.slice(0, budget),
    truncated: over.length > 0,
  };
}

/**
 * Splits items into train and eval by group (an image, or the pair itself): whole groups, taken in an order shuffled
 * by the seed, go to eval while that brings the eval count closer to `fraction` of all items.
 */
export function splitByGroup<T>(items: readonly T[], groupOf: (item: T) => string, fraction: number, seed: number): { train: T[]; eval: T[] } {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const key = groupOf(item);
    const members = groups.get(key);
    if (members) members.push(item);
    else groups.set(key, [item]);
  }
  const target = Math.round(fraction * items.length);
  const evalGroups = new Set<string>();
  let evalCount = 0;
  const keys = [...groups.keys()].sort();
  for (const key of new Rng(deriveSeed(seed, 'shard-split')).shuffle(keys)) {
    const size = groups.get(key)!.length;
    if (Math.abs(evalCount + size - target) < Math.abs(evalCount - target) || (evalCount === 0 && target > 0)) {
      evalGroups.add(key);
      evalCount += size;
    }
  }
  return {
    train: items.filter((item) => !evalGroups.has(groupOf(item))),
    eval: items.filter((item) => evalGroups.has(groupOf(item))),
  };
}

/** The items in the order the seed gives for a split (independent of the input order). */
export function shuffleSplit<T>(items: readonly T[], keyOf: (item: T) => string, seed: number, split: ShardSplit): T[] {
  const sorted = [...items].sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : keyOf(a) > keyOf(b) ? 1 : 0));
  return new Rng(deriveSeed(seed, 'shard-order', split)).shuffle(sorted);
}

// ---------------------------------------------------------------------------------------------------------------
// The stage

interface StoredPair {
  pair_id: string;
  source: string;
  source_row: number;
  prompt: string;
  chosen: string;
  rejected: string;
  image_id: string | null;
  image_sha256: string | null;
}

interface Prepared {
  row: StoredPair;
  text: PairText;
  similarity: Array<number | null>;
}

/** Writes the shard set of every segmented pair into `options.out` (a no-op when inputs and options are unchanged). */
export async function writeShards(store: Store, options: ShardOptions): Promise<ShardSummary> {
  const started = performance.now();
  const resolvedPaths = { tokenizer: options.tokenizer ?? options.ref, ref: options.ref };
  if (!resolvedPaths.tokenizer) throw new ShardInputError('a tokenizer checkpoint is required (--tokenizer CHECKPOINT, or --ref CHECKPOINT)');
  const pairsPerShard = options.pairsPerShard ?? DEFAULT_PAIRS_PER_SHARD;
  if (!Number.isInteger(pairsPerShard) || pairsPerShard < 1) throw new ShardInputError(`pairs-per-shard must be a positive integer, got ${pairsPerShard}`);
  const evalFraction = options.evalFraction ?? DEFAULT_EVAL_FRACTION;
  if (!(evalFraction >= 0 && evalFraction < 1)) throw new ShardInputError(`eval-fraction must be in [0, 1), got ${evalFraction}`);
  const seed = options.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed > 2 ** 32 - 1) throw new ShardInputError(`seed must be an integer from 0 to 2^32-1, got ${seed}`);
  const batchSize = options.batchSize ?? DEFAULT_REF_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 2) throw new ShardInputError(`batch size must be an integer ≥ 2 (a pair is two responses), got ${batchSize}`);

  const unsegmented = Number(await store.scalar('SELECT count(*) FROM pairs WHERE pair_id NOT IN (SELECT pair_id FROM segmented_pairs)'));
  if (unsegmented > 0) throw new ShardInputError(`${unsegmented} pair(s) are not segmented yet: run \`aspo segment --db ${store.path}\` first`);
  const similarityModel = await chooseSimilarityModel(store, options.similarityModel);

  const models = await loadModels(resolvedPaths.tokenizer, resolvedPaths.ref);
  let release: (() => void) | undefined;
  try {
    const limit = Math.min(...models.contexts);
    const maxLength = options.maxLength ?? limit;
    if (!Number.isInteger(maxLength) || maxLength < 2) throw new ShardInputError(`max-length must be an integer ≥ 2, got ${maxLength}`);
    if (maxLength > limit) {
      throw new ShardInputError(`max-length ${maxLength} exceeds the model's ${limit} text positions (its context minus ` +
        `${models.visualTokens} image tokens); image tokens are never cut`);
    }
    const resolved: ResolvedShardOptions = {
      pairsPerShard, format: options.format ?? 'arrow', maxLength, overLength: options.overLength ?? 'drop',
      evalFraction, splitBy: options.splitBy ?? 'image', seed,
    };
    const prepared = await loadPairs(store, similarityModel);
    if (prepared.length === 0) throw new ShardInputError('the store has no pairs: run `aspo ingest` and `aspo segment` first');
    const fingerprint = fingerprintOf(prepared, {
      tokenizer: models.tokenizerId, referenceModel: models.ref?.modelId ?? null, similarityModel, options: resolved,
    });
    const out = path.resolve(options.out);
    // Never into the store, the tokenizer or reference checkpoint, or a folder holding anything but a shard set; and
    // one writer at a time.
    checkNotInput(out, [...storeFiles(store.path), resolvedPaths.tokenizer, ...(resolvedPaths.ref ? [resolvedPaths.ref] : [])]);
    await fs.mkdir(out, { recursive: true });
    release = lockFolder(out, 'aspo shard');
    await checkShardFolder(out);
    const summaryOf = (manifest: ShardManifest, unchanged: boolean): ShardSummary => ({
      out, unchanged, counts: manifest.counts, files: manifest.shards.length + (manifest.images ? 1 : 0),
      tokenizer: manifest.tokenizer, referenceModel: manifest.referenceModel, similarityModel: manifest.similarityModel,
      fingerprint, seconds: (performance.now() - started) / 1000,
    });
    const existing = await existingManifest(out);
    if (existing?.fingerprint === fingerprint && await verifies(out, existing)) return summaryOf(existing, true);

    // Encode, dropping (or truncating) what does not fit.
    options.onPhase?.('encode', prepared.length);
    const kept: Array<{ prepared: Prepared; encoded: EncodedPair }> = [];
    const rejects: Record<string, unknown>[] = [];
    prepared.forEach((item, i) => {
      const encoded = encodePair(models.tokenizer, item.text, maxLength, resolved.overLength);
      if ('reason' in encoded) {
        rejects.push({
          stage: 'shard', source: item.row.source, source_row: item.row.source_row, field: encoded.field,
          reason: encoded.reason, raw: JSON.stringify({ pair_id: item.row.pair_id, out }),
        });
      } else kept.push({ prepared: item, encoded });
      if (i % 256 === 0) options.onProgress?.(i);
    });
    options.onProgress?.(prepared.length);

    const imageBytes = await loadImageBytes(store, kept.map((k) => k.prepared.row.image_id));
    const refLogps = models.ref ? await referenceLogProbs(models.ref.model, kept, imageBytes, batchSize, options) : null;

    const pairs: ShardPair[] = kept.map(({ prepared: { row, similarity }, encoded }, i) => ({
      pairId: row.pair_id, imageId: row.image_id, ...encoded, chosenSimilarity: similarity,
      chosenRefLogps: refLogps?.[i]?.chosen ?? null, rejectedRefLogps: refLogps?.[i]?.rejected ?? null,
    }));
    const groupOf = (pair: ShardPair) => (resolved.splitBy === 'image' && pair.imageId !== null ? `image:${pair.imageId}` : `pair:${pair.pairId}`);
    const split = splitByGroup(pairs, groupOf, evalFraction, seed);

    options.onPhase?.('write', pairs.length);
    await fs.rm(path.join(out, MANIFEST_FILE), { force: true }); // the old manifest must not describe half-replaced files
    const shards: ShardFile[] = [];
    let images: ShardFile | null = null;
    const imageIds = [...new Set(pairs.map((p) => p.imageId).filter((id): id is string => id !== null))].sort();
    const writer = await ShardWriter.open(resolved.format);
    try {
      let written = 0;
      for (const name of ['train', 'eval'] as const) {
        const ordered = shuffleSplit(split[name], (p) => p.pairId, seed, name);
        for (let s = 0; s * pairsPerShard < ordered.length; s++) {
          const chunk = ordered.slice(s * pairsPerShard, (s + 1) * pairsPerShard);
          const file = shardFileName(name, s, resolved.format);
          shards.push({ file, split: name, pairs: chunk.length, sha256: await writer.writePairs(path.join(out, file), chunk) });
          written += chunk.length;
          options.onProgress?.(written);
        }
      }
      if (imageIds.length) {
        const file = imagesFileName(resolved.format);
        const sha256 = await writer.writeImages(path.join(out, file), imageIds.map((id) => ({ imageId: id, bytes: imageBytes.get(id)! })));
        // The images file serves both splits; `split` is required by ShardFile and says nothing here.
        images = { file, split: 'train', pairs: imageIds.length, sha256 };
      }
    } finally {
      writer.close();
    }
    const manifest: ShardManifest = {
      format: SHARD_FORMAT_ID,
      tokenizer: models.tokenizerId,
      referenceModel: models.ref?.modelId ?? null,
      similarityModel,
      options: { ...resolved },
      counts: {
        train: split.train.length, eval: split.eval.length, dropped: rejects.length,
        truncated: pairs.filter((p) => p.truncated).length, images: imageIds.length,
      },
      fingerprint,
      shards,
      images,
      createdAt: new Date().toISOString(),
    };
    await removeStaleFiles(out, new Set([...shards.map((s) => s.file), ...(images ? [images.file] : [])]));
    await writeRejects(store, out, rejects);
    await writeManifest(out, manifest);
    return summaryOf(manifest, false);
  } finally {
    release?.();
    models.dispose();
  }
}

async function chooseSimilarityModel(store: Store, requested: string | undefined): Promise<string | null> {
  const models = (await store.all<{ m: string }>(`SELECT DISTINCT similarity_model AS m FROM sentence_scores
    WHERE side = 'chosen' AND similarity_model IS NOT NULL ORDER BY 1`)).map((r) => r.m);
  if (requested !== undefined) {
    if (!models.includes(requested)) {
      throw new ShardInputError(`similarity model "${requested}" has no scores in the store` +
        (models.length ? ` (it has: ${models.join(', ')})` : ' (run `aspo score` first)'));
    }
    return requested;
  }
  if (models.length > 1) {
    throw new ShardInputError(`the store holds similarities from ${models.length} models (${models.join(', ')}): choose one with --similarity-model`);
  }
  return models[0] ?? null;
}

interface Models {
  tokenizer: Tokenizer;
  tokenizerId: string;
  ref: LoadedModel | null;
  /** Text context of each model loaded. */
  contexts: number[];
  visualTokens: number;
  dispose(): void;
}

/** Loads the tokenizer checkpoint and the reference model; their tokenizers must be the same. */
async function loadModels(tokenizerDir: string, refDir: string | undefined): Promise<Models> {
  const ref = refDir ? await loadModel(refDir) : null;
  const sameFolder = refDir !== undefined && path.resolve(refDir) === path.resolve(tokenizerDir);
  let source: LoadedModel;
  try {
    source = sameFolder ? ref! : await loadModel(tokenizerDir);
  } catch (error) {
    ref?.model.dispose();
    throw error;
  }
  const loaded = [...new Set([source, ...(ref ? [ref] : [])])];
  const dispose = () => loaded.forEach((m) => m.model.dispose());
  if (ref && JSON.stringify(ref.tokenizer.toJSON()) !== JSON.stringify(source.tokenizer.toJSON())) {
    dispose();
    throw new ShardInputError(`--ref ${refDir} and --tokenizer ${tokenizerDir} have different tokenizers: the stored log-probs would not match the ids`);
  }
  return {
    tokenizer: source.tokenizer,
    tokenizerId: source.modelId,
    ref,
    contexts: loaded.map((m) => textContext(m.model.config)),
    visualTokens: Math.max(...loaded.map((m) => visualTokenCount(m.model.config))),
    dispose,
  };
}

async function loadPairs(store: Store, similarityModel: string | null): Promise<Prepared[]> {
  const rows = await store.all<StoredPair>(`
    SELECT p.pair_id, p.source, p.source_row, p.prompt, p.chosen, p.rejected, p.image_id, i.sha256 AS image_sha256
    FROM pairs p JOIN segmented_pairs USING (pair_id) LEFT JOIN images i USING (image_id) ORDER BY p.pair_id`);
  const sentences = new Map<string, Array<Span & { idx: number }>>();
  for (const s of await store.all<{ pair_id: string; side: string; idx: number; start: number; end: number }>(
    'SELECT pair_id, side, idx, char_start AS start, char_end AS end FROM sentences ORDER BY pair_id, side, idx')) {
    const key = `${s.pair_id}\u0000${s.side}`;
    const list = sentences.get(key) ?? [];
    list.push({ idx: s.idx, start: s.start, end: s.end });
    sentences.set(key, list);
  }
  const similarity = new Map<string, number | null>();
  if (similarityModel !== null) {
    for (const s of await store.all<{ pair_id: string; idx: number; similarity: number | null }>(
      `SELECT pair_id, idx, similarity FROM sentence_scores WHERE side = 'chosen' AND similarity_model = $1`, [similarityModel])) {
      similarity.set(`${s.pair_id}\u0000${s.idx}`, s.similarity);
    }
  }
  return rows.map((row) => {
    const chosenSentences = sentences.get(`${row.pair_id}\u0000chosen`) ?? [];
    const rejectedSentences = sentences.get(`${row.pair_id}\u0000rejected`) ?? [];
    const count = chosenSentences.reduce((n, s) => Math.max(n, s.idx + 1), 0);
    return {
      row,
      text: { prompt: row.prompt, chosen: row.chosen, rejected: row.rejected, chosenSentences, rejectedSentences },
      similarity: similarityModel === null ? []
        : Array.from({ length: count }, (_, idx) => similarity.get(`${row.pair_id}\u0000${idx}`) ?? null),
    };
  });
}

/** sha256 over everything the shard set is a function of, one JSON line per pair after a header. */
function fingerprintOf(prepared: readonly Prepared[], header: Record<string, unknown>): string {
  const hash = createHash('sha256');
  hash.update(`${JSON.stringify({ format: SHARD_FORMAT_ID, ...header })}\n`);
  for (const { row, text, similarity } of prepared) {
    hash.update(`${JSON.stringify([row.pair_id, row.prompt, row.chosen, row.rejected, row.image_id, row.image_sha256,
      text.chosenSentences, text.rejectedSentences, similarity])}\n`);
  }
  return hash.digest('hex');
}

async function existingManifest(out: string): Promise<ShardManifest | null> {
  try {
    return await readManifest(out);
  } catch {
    return null;
  }
}

async function verifies(out: string, manifest: ShardManifest): Promise<boolean> {
  try {
    await verifyShardSet(out, manifest);
    return true;
  } catch {
    return false;
  }
}

export async function loadImageBytes(store: Store, ids: ReadonlyArray<string | null>): Promise<Map<string, Uint8Array>> {
  const wanted = [...new Set(ids.filter((id): id is string => id !== null))];
  const bytes = new Map<string, Uint8Array>();
  const chunk = 256;
  for (let i = 0; i < wanted.length; i += chunk) {
    const part = wanted.slice(i, i + chunk);
    const rows = await store.all<{ image_id: string; bytes: Uint8Array }>(
      `SELECT image_id, bytes FROM images WHERE image_id IN (${part.map((_, k) => `$${k + 1}`).join(', ')})`, part);
    for (const row of rows) bytes.set(row.image_id, new Uint8Array(row.bytes));
  }
  const missing = wanted.find((id) => !bytes.has(id));
  if (missing) throw new Error(`image ${missing} is referenced by a pair but missing from the images table`);
  return bytes;
}

/** Per kept pair, the reference log-prob of each response token and of EOS (chosen and rejected in one batch). */
async function referenceLogProbs(model: VisionLanguageModel, kept: ReadonlyArray<{ prepared: Prepared; encoded: EncodedPair }>,
  imageBytes: Map<string, Uint8Array>, batchSize: number, options: ShardOptions): Promise<Array<{ chosen: number[]; rejected: number[] }>> {
  options.onPhase?.('reference', kept.length);
  const out: Array<{ chosen: number[]; rejected: number[] }> = [];
  const pairsPerBatch = Math.floor(batchSize / 2);
  for (let b = 0; b < kept.length; b += pairsPerBatch) {
    const batch = kept.slice(b, b + pairsPerBatch);
    const pixels = new PixelCache(async (imageId) => imageBytes.get(imageId)!); // per batch: memory stays bounded
    const rows = (await Promise.all(batch.map(async ({ prepared, encoded }) => {
      let image: Float32Array | null = null;
      if (prepared.row.image_id !== null) {
        try {
          image = await pixels.get(prepared.row.image_id, model.config.imageSize);
        } catch (error) {
          throw new Error(`pair ${prepared.row.pair_id}: image ${prepared.row.image_id} cannot be decoded for the reference model (${(error as Error).message})`);
        }
      }
      return [
        { promptIds: encoded.promptIds, responseIds: encoded.chosenIds, image },
        { promptIds: encoded.promptIds, responseIds: encoded.rejectedIds, image },
      ];
    }))).flat();
    const logps = tokenLogProbs(model, rows);
    batch.forEach((_, i) => out.push({ chosen: Array.from(logps[2 * i]!), rejected: Array.from(logps[2 * i + 1]!) }));
    options.onProgress?.(out.length);
  }
  return out;
}

/** A temporary file of a shard set's writer: `.<name>.aspo-partial-<pid>` (or `.<name>.<pid>.tmp`, as older runs named them). */
const PARTIAL_FILE = /^\.(.+)\.(?:aspo-partial-(\d+)|(\d+)\.tmp)$/;

/**
 * Refuses a folder that holds anything a shard set does not (a checkpoint, a dataset, a store), and removes the
 * temporary files of killed runs, so none is left after a kill and a re-run.
 */
async function checkShardFolder(out: string): Promise<void> {
  for (const name of await fs.readdir(out)) {
    if (SHARD_SET_FILE.test(name) || name === LOCK_FILE) continue;
    if (name === MANIFEST_FILE) {
      try {
        await readManifest(out);
        continue;
      } catch {
        // not a shard set's manifest: refused below
      }
    }
    const partial = PARTIAL_FILE.exec(name);
    if (partial && Number(partial[2] ?? partial[3]) !== process.pid) {
      await fs.rm(path.join(out, name), { force: true });
      continue;
    }
    throw new OutputError(`refusing to write a shard set into ${out}: it holds ${name}, which is not part of a shard set ` +
      '(is it a checkpoint or a dataset folder?); choose another --out');
  }
}

/** Deletes shard-set files of an earlier run that the new manifest does not list (other files are left alone). */
export async function removeStaleFiles(out: string, keep: Set<string>): Promise<void> {
  for (const name of await fs.readdir(out)) {
    if (SHARD_SET_FILE.test(name) && !keep.has(name)) await fs.rm(path.join(out, name), { force: true });
  }
}

/** Replaces the `rejects` rows of earlier shard runs into the same folder with this run's. */
export async function writeRejects(store: Store, out: string, rows: Record<string, unknown>[]): Promise<void> {
  await store.transaction(async () => {
    await store.run(`DELETE FROM rejects WHERE stage = 'shard' AND json_extract_string(raw, '$.out') = $1`, [out]);
    // One row per (source, source_row), the key of `rejects`.
    await store.upsert('rejects', [...new Map(rows.map((row) => [`${row.source}\u0000${row.source_row}`, row])).values()]);
  });
}
