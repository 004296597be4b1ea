/**
 * Shards for a Hugging Face vision-language model (`aspo shard --model`): every segmented pair encoded with the
 * model's own chat template, processor and tokenizer exactly as `aspo score --vlm` encodes it, one Parquet row per
 * pair with the columns a PyTorch data loader reads without this toolkit: input ids, attention mask, response mask,
 * per-token sentence ids and ASPO multipliers, and (with `refLogps`) the model's per-token reference log-probs.
 * Images travel as their encoded bytes (images.parquet); the trainer runs the model's processor on them.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Store } from '../store/store.js';
import type { Span } from '../segment/align.js';
import { DEFAULT_VLM_BATCH_SIZE, VisionLanguageScorer, type EncodedPrompt, type RowToScore, type VlmDevice, type VlmDtype } from '../score/vlm.js';
import { imagesFileName, shardFileName, type ColumnSpec } from './columns.js';
import { MANIFEST_FILE } from './read.js';
import { DEFAULT_EVAL_FRACTION, DEFAULT_PAIRS_PER_SHARD, loadImageBytes, removeStaleFiles, ShardInputError, shuffleSplit,
  splitByGroup, writeRejects, type SplitBy } from './stage.js';
import type { ShardFile } from './types.js';
import { ShardWriter, writeManifest } from './write.js';

export const MODEL_SHARD_FORMAT_ID = 'aspo-model-shards/1';

const side = (prefix: 'chosen' | 'rejected'): ColumnSpec[] => [
  { name: `${prefix}_input_ids`, type: 'int32', list: true, nullable: false },
  { name: `${prefix}_attention_mask`, type: 'int32', list: true, nullable: false },
  { name: `${prefix}_response_mask`, type: 'int32', list: true, nullable: false },
  { name: `${prefix}_sentence_ids`, type: 'int32', list: true, nullable: false },
  ...(prefix === 'chosen' ? [{ name: 'chosen_multipliers', type: 'float32', list: true, nullable: false } as ColumnSpec] : []),
  { name: `${prefix}_ref_logps`, type: 'float32', list: true, nullable: true },
];

/** One row per pair; every list column of a side has one entry per token of that side's input_ids. */
export const MODEL_PAIR_COLUMNS: readonly ColumnSpec[] = [
  { name: 'pair_id', type: 'utf8', list: false, nullable: false },
  { name: 'image_id', type: 'utf8', list: false, nullable: true },
  ...side('chosen'),
  ...side('rejected'),
];

export interface ModelShardOptions {
  /** Output folder (created if absent). */
  out: string;
  /** A Hugging Face model id or a local folder in the transformers.js layout (see docs/score.md). */
  model: string;
  device?: VlmDevice;
  dtype?: VlmDtype;
  /** Run the model and store its per-token log-probs of each response (default false: only its tokenizer runs). */
  refLogps?: boolean;
  /** The multipliers' α and λ, as in `sentence_weights(alpha, scale)` (defaults 0.5 and 1). */
  alpha?: number;
  scale?: number;
  pairsPerShard?: number;
  evalFraction?: number;
  splitBy?: SplitBy;
  seed?: number;
  /** Rows per forward pass and images per vision-encoder call with refLogps (default DEFAULT_VLM_BATCH_SIZE). */
  batchSize?: number;
  onPhase?: (phase: 'encode' | 'reference' | 'write', total: number) => void;
  onProgress?: (done: number) => void;
}

export interface ModelShardManifest {
  format: typeof MODEL_SHARD_FORMAT_ID;
  /** Model whose tokenizer, chat template and processor encoded the rows (its `ppl_model` id). */
  model: string;
  /** The same model when its log-probs are stored, else null. */
  referenceModel: string | null;
  options: { alpha: number; scale: number; pairsPerShard: number; evalFraction: number; splitBy: SplitBy; seed: number; dtype: VlmDtype };
  counts: { train: number; eval: number; dropped: number; images: number };
  shards: ShardFile[];
  images: ShardFile | null;
  createdAt: string;
}

export interface ModelShardSummary {
  out: string;
  model: string;
  referenceModel: string | null;
  counts: ModelShardManifest['counts'];
  files: number;
  seconds: number;
}

/** One side of a pair as stored: per token of input_ids. */
export interface ModelShardSide {
  inputIds: number[];
  responseMask: number[];
  sentenceIds: number[];
  multipliers: number[];
  refLogps: number[] | null;
}

/**
 * The columns of one side from its encoding (pure): prompt tokens get response mask 0, sentence id −1 and
 * multiplier 1; the response's tokens and the turn's end get mask 1; a token of sentence `idx` gets that sentence's
 * multiplier (`multipliers.get(idx)`, 1 when absent: tokens in no sentence keep weight 1); log-probs, when given for
 * the tokens after the prompt, are placed at their tokens and 0 on the prompt.
 */
export function sideColumns(prompt: readonly number[], response: { ids: readonly number[]; sentenceIds: readonly number[] },
  end: readonly number[], sentenceIdx: readonly number[], multipliers: ReadonlyMap<number, number>,
  logps: ArrayLike<number> | null): ModelShardSide {
  const inputIds = [...prompt, ...response.ids, ...end];
  const sentenceIds = [...prompt.map(() => -1), ...response.sentenceIds.map((k) => (k < 0 ? -1 : sentenceIdx[k]!)), ...end.map(() => -1)];
  return {
    inputIds,
    responseMask: inputIds.map((_, t) => (t < prompt.length ? 0 : 1)),
    sentenceIds,
    multipliers: sentenceIds.map((idx) => (idx < 0 ? 1 : multipliers.get(idx) ?? 1)),
    refLogps: logps ? inputIds.map((_, t) => (t < prompt.length ? 0 : logps[t - prompt.length]!)) : null,
  };
}

interface PairRow { pair_id: string; source: string; source_row: number; prompt: string; chosen: string; rejected: string; image_id: string | null }

interface EncodedSide { response: { ids: number[]; sentenceIds: number[] }; idxs: number[] }
interface EncodedModelPair { pair: PairRow; prompt: EncodedPrompt; chosen: EncodedSide; rejected: EncodedSide }

/** Writes the shard set of every segmented pair for `options.model` into `options.out`, replacing an earlier one. */
export async function writeModelShards(store: Store, options: ModelShardOptions): Promise<ModelShardSummary> {
  const started = performance.now();
  const alpha = options.alpha ?? 0.5;
  const scale = options.scale ?? 1;
  if (!(alpha >= 0 && alpha <= 1)) throw new ShardInputError(`alpha must be between 0 and 1, got ${alpha}`);
  if (!(scale >= 0)) throw new ShardInputError(`scale must be >= 0, got ${scale}`);
  const pairsPerShard = options.pairsPerShard ?? DEFAULT_PAIRS_PER_SHARD;
  if (!Number.isInteger(pairsPerShard) || pairsPerShard < 1) throw new ShardInputError(`pairs-per-shard must be a positive integer, got ${pairsPerShard}`);
  const evalFraction = options.evalFraction ?? DEFAULT_EVAL_FRACTION;
  if (!(evalFraction >= 0 && evalFraction < 1)) throw new ShardInputError(`eval-fraction must be in [0, 1), got ${evalFraction}`);
  const seed = options.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed > 2 ** 32 - 1) throw new ShardInputError(`seed must be an integer from 0 to 2^32-1, got ${seed}`);
  const batchSize = options.batchSize ?? DEFAULT_VLM_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new ShardInputError(`batch size must be a positive integer, got ${batchSize}`);
  const splitBy = options.splitBy ?? 'image';
  const dtype = options.dtype ?? 'fp32';
  const unsegmented = Number(await store.scalar('SELECT count(*) FROM pairs WHERE pair_id NOT IN (SELECT pair_id FROM segmented_pairs)'));
  if (unsegmented > 0) throw new ShardInputError(`${unsegmented} pair(s) are not segmented yet: run \`aspo segment --db ${store.path}\` first`);
  const pairs = await store.all<PairRow>('SELECT pair_id, source, source_row, prompt, chosen, rejected, image_id FROM pairs ORDER BY pair_id');
  if (pairs.length === 0) throw new ShardInputError('the store has no pairs: run `aspo ingest` and `aspo segment` first');

  const vlm = await VisionLanguageScorer.load(options.model, { device: options.device, dtype, sessions: options.refLogps === true });
  try {
    const out = path.resolve(options.out);
    const multipliers = new Map<string, Map<number, number>>();
    for (const row of await store.all<{ pair_id: string; idx: number; multiplier: number }>(
      `SELECT pair_id, idx, multiplier FROM sentence_weights(alpha := $1, scale := $2) WHERE side = 'chosen'`, [alpha, scale])) {
      if (!multipliers.has(row.pair_id)) multipliers.set(row.pair_id, new Map());
      multipliers.get(row.pair_id)!.set(row.idx, row.multiplier);
    }
    const imageBytes = await loadImageBytes(store, pairs.map((p) => p.image_id));

    options.onPhase?.('encode', pairs.length);
    const kept: EncodedModelPair[] = [];
    const rejects: Record<string, unknown>[] = [];
    const reject = (pair: PairRow, field: string, reason: string) =>
      rejects.push({ stage: 'shard', source: pair.source, source_row: pair.source_row, field, reason, raw: JSON.stringify({ pair_id: pair.pair_id, out }) });
    for (const [i, pair] of pairs.entries()) {
      let prompt: EncodedPrompt;
      try {
        prompt = await vlm.encodePrompt(pair.prompt, pair.image_id === null ? null : imageBytes.get(pair.image_id)!);
      } catch (error) {
        reject(pair, 'image_id', `the model's processor cannot read the image: ${(error as Error).message}`);
        continue;
      }
      const encoded = {} as Record<'chosen' | 'rejected', EncodedSide>;
      let fits = true;
      for (const name of ['chosen', 'rejected'] as const) {
        const sentences = await store.all<Span & { idx: number }>(
          'SELECT idx, char_start AS start, char_end AS end FROM sentences WHERE pair_id = $1 AND side = $2 ORDER BY idx', [pair.pair_id, name]);
        const response = vlm.encodeResponse(prompt, pair[name], sentences);
        const length = prompt.ids.length + response.ids.length + prompt.endIds.length;
        if (fits && length > vlm.maxLength) {
          reject(pair, name, `${length} tokens (${prompt.ids.length} prompt with image slots + ${response.ids.length} response + ` +
            `${prompt.endIds.length} end) exceed the model's context of ${vlm.maxLength}`);
          fits = false;
        }
        encoded[name] = { response, idxs: sentences.map((s) => s.idx) };
      }
      if (fits) kept.push({ pair, prompt, ...encoded });
      if (i % 64 === 0) options.onProgress?.(i);
    }
    options.onProgress?.(pairs.length);

    let logps: Float64Array[] | null = null;
    if (options.refLogps) {
      options.onPhase?.('reference', kept.length * 2);
      const items: RowToScore[] = kept.flatMap((k) => (['chosen', 'rejected'] as const).map((name) => ({
        imageId: k.pair.image_id, vision: k.prompt.vision,
        row: { ids: [...k.prompt.ids, ...k[name].response.ids, ...k.prompt.endIds], from: k.prompt.ids.length, features: null },
      })));
      logps = await vlm.scoreRows(items, { batchSize });
      options.onProgress?.(kept.length * 2);
    }

    const rows = kept.map((k, i) => {
      const columns = (name: 'chosen' | 'rejected', j: number) => sideColumns(k.prompt.ids, k[name].response, k.prompt.endIds,
        k[name].idxs, name === 'chosen' ? multipliers.get(k.pair.pair_id) ?? new Map() : new Map(), logps?.[2 * i + j] ?? null);
      return { pairId: k.pair.pair_id, imageId: k.pair.image_id, chosen: columns('chosen', 0), rejected: columns('rejected', 1) };
    });
    const groupOf = (row: (typeof rows)[number]) => (splitBy === 'image' && row.imageId !== null ? `image:${row.imageId}` : `pair:${row.pairId}`);
    const split = splitByGroup(rows, groupOf, evalFraction, seed);

    options.onPhase?.('write', rows.length);
    await fs.mkdir(out, { recursive: true });
    await fs.rm(path.join(out, MANIFEST_FILE), { force: true }); // the old manifest must not describe half-replaced files
    const shards: ShardFile[] = [];
    let images: ShardFile | null = null;
    const imageIds = [...new Set(rows.map((r) => r.imageId).filter((id): id is string => id !== null))].sort();
    const writer = await ShardWriter.open('parquet');
    try {
      let written = 0;
      for (const name of ['train', 'eval'] as const) {
        const ordered = shuffleSplit(split[name], (r) => r.pairId, seed, name);
        for (let s = 0; s * pairsPerShard < ordered.length; s++) {
          const chunk = ordered.slice(s * pairsPerShard, (s + 1) * pairsPerShard);
          const file = shardFileName(name, s, 'parquet');
          const sha256 = await writer.writeRows(path.join(out, file), MODEL_PAIR_COLUMNS, chunk.map((r) => ({
            pair_id: r.pairId, image_id: r.imageId,
            ...sideRecord('chosen', r.chosen), ...sideRecord('rejected', r.rejected),
          })));
          shards.push({ file, split: name, pairs: chunk.length, sha256 });
          written += chunk.length;
          options.onProgress?.(written);
        }
      }
      if (imageIds.length) {
        const file = imagesFileName('parquet');
        const sha256 = await writer.writeImages(path.join(out, file), imageIds.map((id) => ({ imageId: id, bytes: imageBytes.get(id)! })));
        images = { file, split: 'train', pairs: imageIds.length, sha256 };
      }
    } finally {
      writer.close();
    }
    const manifest: ModelShardManifest = {
      format: MODEL_SHARD_FORMAT_ID,
      model: vlm.modelId,
      referenceModel: options.refLogps ? vlm.modelId : null,
      options: { alpha, scale, pairsPerShard, evalFraction, splitBy, seed, dtype },
      counts: { train: split.train.length, eval: split.eval.length, dropped: rejects.length, images: imageIds.length },
      shards,
      images,
      createdAt: new Date().toISOString(),
    };
    await removeStaleFiles(out, new Set([...shards.map((s) => s.file), ...(images ? [images.file] : [])]));
    await writeRejects(store, out, rejects);
    await writeManifest(out, manifest);
    return {
      out, model: manifest.model, referenceModel: manifest.referenceModel, counts: manifest.counts,
      files: shards.length + (images ? 1 : 0), seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await vlm.dispose();
  }
}

function sideRecord(prefix: 'chosen' | 'rejected', s: ModelShardSide): Record<string, unknown> {
  return {
    [`${prefix}_input_ids`]: s.inputIds,
    [`${prefix}_attention_mask`]: s.inputIds.map(() => 1),
    [`${prefix}_response_mask`]: s.responseMask,
    [`${prefix}_sentence_ids`]: s.sentenceIds,
    ...(prefix === 'chosen' ? { chosen_multipliers: s.multipliers } : {}),
    [`${prefix}_ref_logps`]: s.refLogps,
  };
}
