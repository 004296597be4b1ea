import { withStore } from '../../store/store.js';
import { SHARD_FORMATS, type ShardFormat } from '../../shard/columns.js';
import {
  DEFAULT_EVAL_FRACTION, DEFAULT_PAIRS_PER_SHARD, OVER_LENGTH_POLICIES, SPLIT_BY, ShardInputError, writeShards,
  type OverLength, type SplitBy,
} from '../../shard/stage.js';
import { DEFAULT_REF_BATCH_SIZE } from '../../model/logprobs.js';
import { writeModelShards } from '../../shard/model-shards.js';
import { DEFAULT_VLM_BATCH_SIZE, VLM_DEVICES, VLM_DTYPE_SUFFIX, VlmModelError, type VlmDevice, type VlmDtype } from '../../score/vlm.js';
import { initBackend } from '../../model/backend.js';
import { backendOption } from '../model-options.js';
import { Progress } from '../progress.js';
import { DB_OPTION, JSON_OPTION, numberOption, parse, printJson, UsageError, type Command } from '../command.js';

function oneOf<T extends string>(value: string, allowed: readonly T[], name: string): T {
  if (!(allowed as readonly string[]).includes(value)) throw new UsageError(`--${name} must be one of ${allowed.join(', ')}, got "${value}"`);
  return value as T;
}

export const command: Command = {
  usage: `aspo shard --db PATH --tokenizer CHECKPOINT --out DIR [--ref CHECKPOINT] [--pairs-per-shard N] [--format arrow|parquet]
           [--max-length N] [--over-length drop|truncate] [--eval-fraction F] [--split-by image|pair] [--seed N]
           [--similarity-model ID] [--batch-size N] [--backend auto|wasm|cpu|tensorflow|tensorflow-gpu]

  Writes training shards of every segmented pair (run \`aspo segment --db\` first) into DIR: train-00000.arrow ...,
  eval-00000.arrow ..., images.arrow (encoded image bytes) and manifest.json (sha256 per file, counts, options, a
  fingerprint of the inputs). Rerunning with unchanged inputs and options does nothing; otherwise the set is rewritten
  and files of the old set that are no longer listed are removed.
  --tokenizer CHECKPOINT: the model checkpoint whose tokenizer encodes prompt + response (default: --ref).
  --ref CHECKPOINT: also store the reference model's log-prob of every response token and of EOS.
  --pairs-per-shard N: pairs per file (default ${DEFAULT_PAIRS_PER_SHARD}). --format: Arrow IPC (default) or Parquet.
  --max-length N: text positions a row may use, BOS + prompt + response (default: the model's text context, its
  context minus the image tokens). --over-length drop (default): longer pairs are left out and listed in the rejects
  table with their lengths; truncate: the response tail is cut (the prompt and image never are) and the row flagged.
  --eval-fraction F: share of pairs held out (default ${DEFAULT_EVAL_FRACTION}); --split-by image (default: every pair of
  an image on the same side) or pair. --seed N (default 0): the split and the order of pairs in each split.
  --similarity-model ID: which similarity to store when the store has several (see sentence_scores.similarity_model).
  --batch-size N: responses per reference-model call (default ${DEFAULT_REF_BATCH_SIZE}).
  Prints one JSON summary line on stdout. Dropped pairs:
    aspo query "SELECT source, source_row, field, reason FROM rejects WHERE stage = 'shard'"

aspo shard --db PATH --model MODEL --out DIR [--ref-logps] [--alpha A] [--scale L] [--device auto|cpu|cuda|webgpu]
           [--dtype fp32|fp16|q8|q4|...] [--pairs-per-shard N] [--eval-fraction F] [--split-by image|pair] [--seed N]
           [--batch-size N]

  Shards for a Hugging Face vision-language model (a Hub id or a local folder in transformers.js layout, as
  \`aspo score --vlm\` takes): Parquet, one row per pair, each side encoded with the model's chat template, processor
  and tokenizer as \`aspo score --vlm\` encodes it: *_input_ids, *_attention_mask, *_response_mask, *_sentence_ids,
  chosen_multipliers (the ASPO multiplier of each token's sentence from sentence_weights(alpha, scale), defaults 0.5
  and 1), and with --ref-logps *_ref_logps (the model's log-prob of each response token; it runs the model,
  --batch-size rows per pass, default ${DEFAULT_VLM_BATCH_SIZE}). images.parquet holds the image bytes. See docs/shard.md.`,
  async run(argv) {
    const { values } = parse(argv, {
      ...DB_OPTION,
      ...JSON_OPTION,
      tokenizer: { type: 'string' },
      ref: { type: 'string' },
      out: { type: 'string' },
      'pairs-per-shard': { type: 'string' },
      format: { type: 'string', default: 'arrow' },
      'max-length': { type: 'string' },
      'over-length': { type: 'string', default: 'drop' },
      'eval-fraction': { type: 'string' },
      'split-by': { type: 'string', default: 'image' },
      seed: { type: 'string' },
      'similarity-model': { type: 'string' },
      'batch-size': { type: 'string' },
      backend: { type: 'string', default: 'auto' },
      model: { type: 'string' },
      'ref-logps': { type: 'boolean', default: false },
      alpha: { type: 'string' },
      scale: { type: 'string' },
      device: { type: 'string', default: 'auto' },
      dtype: { type: 'string', default: 'fp32' },
    });
    if (!values.out) throw new UsageError('--out DIR is required (the folder the shard set is written to)');
    if (values.model) return modelShards(values as ModelShardFlags);
    if (!values.tokenizer && !values.ref) throw new UsageError('--tokenizer CHECKPOINT is required (a model checkpoint folder), or --ref CHECKPOINT, or --model MODEL');
    const format = oneOf<ShardFormat>(values.format, SHARD_FORMATS, 'format');
    const overLength = oneOf<OverLength>(values['over-length'], OVER_LENGTH_POLICIES, 'over-length');
    const splitBy = oneOf<SplitBy>(values['split-by'], SPLIT_BY, 'split-by');
    const backend = backendOption(values.backend);
    const integer = (name: string, value: string | undefined) => {
      const n = numberOption(value, name, Number.NaN);
      if (value !== undefined && !Number.isInteger(n)) throw new UsageError(`--${name} must be an integer, got "${value}"`);
      return value === undefined ? undefined : n;
    };
    const options = {
      out: values.out, tokenizer: values.tokenizer, ref: values.ref, format, overLength, splitBy,
      pairsPerShard: integer('pairs-per-shard', values['pairs-per-shard']),
      maxLength: integer('max-length', values['max-length']),
      evalFraction: values['eval-fraction'] === undefined ? undefined : numberOption(values['eval-fraction'], 'eval-fraction', 0),
      seed: integer('seed', values.seed),
      similarityModel: values['similarity-model'],
      batchSize: integer('batch-size', values['batch-size']),
    };
    // The model is built even without --ref (its id is the tokenizer's id), so a backend is always needed.
    await initBackend(backend);
    const progress = new Progress({ label: 'shard', unit: 'pairs' });
    const summary = await withStore(values.db, async (store) => {
      try {
        return await writeShards(store, {
          ...options,
          onPhase: (phase, total) => {
            progress.setTotal(total);
            progress.at(0, phase);
          },
          onProgress: (done) => progress.at(done),
        });
      } catch (error) {
        if (error instanceof ShardInputError) throw new UsageError(error.message);
        throw error;
      }
    });
    const { counts } = summary;
    progress.done(summary.unchanged
      ? `${summary.out} is up to date (same inputs and options, files verified): nothing written`
      : `${counts.train} train + ${counts.eval} eval pairs in ${summary.files} files → ${summary.out}; ` +
        `${counts.dropped} dropped, ${counts.truncated} truncated, ${counts.images} images, in ${progress.seconds.toFixed(1)} s`);
    printJson(summary);  // always: --json is accepted for symmetry with the other commands
    return 0;
  },
};

interface ModelShardFlags {
  db: string; out: string; model: string; 'ref-logps': boolean; alpha?: string; scale?: string; device: string; dtype: string;
  'pairs-per-shard'?: string; 'eval-fraction'?: string; 'split-by': string; seed?: string; 'batch-size'?: string;
  tokenizer?: string; ref?: string;
}

async function modelShards(values: ModelShardFlags): Promise<number> {
  if (values.tokenizer || values.ref) throw new UsageError('--model shards use the model\'s own tokenizer: drop --tokenizer and --ref (use --ref-logps)');
  const device = oneOf<VlmDevice>(values.device, VLM_DEVICES, 'device');
  const dtype = oneOf<VlmDtype>(values.dtype, Object.keys(VLM_DTYPE_SUFFIX) as VlmDtype[], 'dtype');
  const splitBy = oneOf<SplitBy>(values['split-by'], SPLIT_BY, 'split-by');
  const optional = (name: keyof ModelShardFlags) => {
    const value = values[name] as string | undefined;
    return value === undefined ? undefined : numberOption(value, name, Number.NaN);
  };
  const progress = new Progress({ label: 'shard', unit: 'pairs' });
  const summary = await withStore(values.db, async (store) => {
    try {
      return await writeModelShards(store, {
        out: values.out, model: values.model, device, dtype, refLogps: values['ref-logps'], splitBy,
        alpha: optional('alpha'), scale: optional('scale'), pairsPerShard: optional('pairs-per-shard'),
        evalFraction: optional('eval-fraction'), seed: optional('seed'), batchSize: optional('batch-size'),
        onPhase: (phase, total) => {
          progress.setTotal(total);
          progress.at(0, phase);
        },
        onProgress: (done) => progress.at(done),
      });
    } catch (error) {
      if (error instanceof ShardInputError || error instanceof VlmModelError) throw new UsageError(error.message);
      throw error;
    }
  });
  const { counts } = summary;
  progress.done(`${counts.train} train + ${counts.eval} eval pairs for ${summary.model} in ${summary.files} Parquet files → ` +
    `${summary.out}; ${counts.dropped} dropped, ${counts.images} images, reference log-probs ` +
    `${summary.referenceModel ? 'stored' : 'not stored (--ref-logps)'}, in ${progress.seconds.toFixed(1)} s`);
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  return 0;
}
