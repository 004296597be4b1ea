/**
 * The main job behind `npm start`, as a library function: synthesise the default data (first run) → ingest → segment →
 * SFT reference (first run) → score (perplexity and grounding under the reference) → shard → sentence-level ASPO
 * training → sentence rewards, then the reference and the trained policy compared on held-out images. Every stage is
 * incremental: a second run reuses what the first made.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { formatIngestSummary, ingest, type IngestSummary } from '../ingest/ingest.js';
import { initBackend } from '../model/backend.js';
import { hasCheckpoint, loadModel, readTrainerState } from '../model/checkpoint.js';
import { savedLossConfig, writeSentenceRewards, type RewardsSummary } from '../rewards/rewards.js';
import { scoreReference } from '../score/perplexity.js';
import type { ResponseScoreSummary } from '../score/scorer.js';
import { segmentStage, type SegmentStageResult } from '../segment/stage.js';
import { openShardSet } from '../shard/read.js';
import { writeShards, type ShardSummary } from '../shard/stage.js';
import { withStore, type Store } from '../store/store.js';
import { evaluateGenerations, type GenerationEval } from '../synth/evaluate.js';
import { synthesize } from '../synth/synthesize.js';
import { lossConfig } from '../train/loss.js';
import { StoreMetrics } from '../train/metrics.js';
import { DEFAULT_PREFERENCE_OPTIONS, PreferenceTrainer, runPreference } from '../train/preference.js';
import { DEFAULT_SFT_OPTIONS, readSftData, runSft, SftTrainer } from '../train/sft.js';
import type { OnProgress } from '../util/progress.js';

/** Where the embedded default data lives: generated deterministically on the first run, then reused. */
export const DEFAULT_DATASET = path.join('datasets', 'synthetic-default');
/** The SFT reference model of the default data, trained on the first run, then reused. */
export const DEFAULT_REFERENCE = path.join('datasets', 'reference-default');
/** Shards and the trained policy. */
export const DEFAULT_OUTPUT = 'aspo-output';

export interface PipelineOptions {
  /** The store (default aspo.duckdb). */
  db: string;
  /** Synthetic dataset folder, generated when it has no manifest.json (default DEFAULT_DATASET). */
  data: string;
  /** SFT reference checkpoint, trained when absent and resumed when unfinished (default DEFAULT_REFERENCE). */
  reference: string;
  /** Shards (`shards/`) and the trained policy (`policy/`) (default DEFAULT_OUTPUT). */
  output: string;
  /** Held-out images each model describes for the hallucination rate (default 100). */
  evalImages: number;
  /** Training images when the data is generated (default: the synthesiser's, 1000). */
  images?: number;
  /** SFT steps when the reference is trained (default: the SFT defaults' epochs). */
  sftSteps?: number;
  /** ASPO steps (default: the preference defaults' epochs). */
  trainSteps?: number;
  /** One line per stage, as it finishes. */
  log?: (line: string) => void;
  /** Training steps as they run (phases "reference (SFT)" and "train (ASPO)"). */
  onProgress?: OnProgress;
}

export const PIPELINE_DEFAULTS: PipelineOptions = {
  db: 'aspo.duckdb', data: DEFAULT_DATASET, reference: DEFAULT_REFERENCE, output: DEFAULT_OUTPUT, evalImages: 100,
};

/** A metric of the trained policy's run, at its first and last evaluation. */
export interface BeforeAfter { before: number | undefined; after: number | undefined }

export interface PipelineResult {
  /** Absolute paths of what the run used and made. */
  db: string;
  data: string;
  reference: string;
  shards: string;
  policy: string;
  /** The ASPO training run's id (`runs.run_id`), when there is one. */
  policyRunId: string | undefined;
  backend: string;
  ingest: IngestSummary;
  segment: SegmentStageResult;
  score: ResponseScoreSummary[];
  shard: ShardSummary;
  rewards: RewardsSummary;
  /** Rows per table of the store after the run. */
  counts: Record<string, number>;
  rewardAccuracy: BeforeAfter;
  sentenceAccuracy: BeforeAfter;
  /** Greedy descriptions of held-out images by the reference (before) and the trained policy (after). */
  hallucination: { before: GenerationEval; after: GenerationEval };
  seconds: number;
}

const percent = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? 'n/a' : `${(100 * x).toFixed(1)}%`);

/** Whether the checkpoint in `dir` is a run that reached its last step (read without loading its weights). */
async function finished(dir: string): Promise<boolean> {
  if (!await hasCheckpoint(dir)) return false;
  const state = await readTrainerState(dir) as { step?: number; totalSteps?: number } | undefined;
  return state?.step !== undefined && state.step >= (state.totalSteps ?? Infinity);
}

async function trainReference(store: Store, data: string, out: string, options: PipelineOptions): Promise<void> {
  if (await finished(out)) return;
  const trainer = await hasCheckpoint(out)
    ? await SftTrainer.resume(out)
    : await SftTrainer.create({ ...DEFAULT_SFT_OPTIONS, data, out, steps: options.sftSteps }, await readSftData(data));
  const phase = 'reference (SFT)';
  const total = trainer.totalSteps - trainer.step;
  let done = 0;
  options.onProgress?.({ phase, done, total, unit: 'steps' });
  const result = await runSft(trainer, {
    metrics: new StoreMetrics(store),
    onStep: () => options.onProgress?.({ phase, done: ++done, total, unit: 'steps' }),
  });
  trainer.dispose();
  options.log?.(`${phase}: ${result.steps} steps, held-out sentence accuracy ${percent(result.eval?.sentenceAccuracy)} in ${result.seconds.toFixed(0)} s → ${out}`);
}

async function trainPolicy(store: Store, shards: string, reference: string, probes: string, out: string, options: PipelineOptions): Promise<void> {
  if (await finished(out)) return;
  const trainer = await hasCheckpoint(out)
    ? await PreferenceTrainer.resume(out, openShardSet)
    : await PreferenceTrainer.create({
      ...DEFAULT_PREFERENCE_OPTIONS, objective: 'aspo', shards, ref: reference, out, probes, steps: options.trainSteps,
      loss: lossConfig({ lossType: 'aspo' }),
    }, await openShardSet(shards));
  options.log?.(`train: sentence-level ASPO (α ${trainer.options.loss.alpha}, β ${trainer.options.loss.beta}), reference log-probs from ${trainer.refSource}`);
  const phase = 'train (ASPO)';
  const total = trainer.totalSteps - trainer.step;
  let done = 0;
  options.onProgress?.({ phase, done, total, unit: 'steps' });
  const result = await runPreference(trainer, {
    metrics: new StoreMetrics(store),
    onStep: () => options.onProgress?.({ phase, done: ++done, total, unit: 'steps' }),
  });
  trainer.dispose();
  options.log?.(`${phase}: ${result.steps} steps in ${result.seconds.toFixed(0)} s → ${out}`);
}

async function hallucination(checkpoint: string, data: string, limit: number): Promise<GenerationEval> {
  const { model, tokenizer } = await loadModel(checkpoint);
  try {
    return await evaluateGenerations(model, tokenizer, data, { limit });
  } finally {
    model.dispose();
  }
}

/** Runs the whole pipeline into the store (see the module comment); options not given take PIPELINE_DEFAULTS. */
export async function runPipeline(given: Partial<PipelineOptions> = {}): Promise<PipelineResult> {
  const options: PipelineOptions = { ...PIPELINE_DEFAULTS };
  for (const [key, value] of Object.entries(given)) if (value !== undefined) (options as unknown as Record<string, unknown>)[key] = value;
  for (const name of ['evalImages', 'images', 'sftSteps', 'trainSteps'] as const) {
    const n = options[name];
    if (n !== undefined && (!Number.isInteger(n) || n < 1)) throw new Error(`${name} must be a positive integer, got ${n}`);
  }
  const log = options.log ?? (() => undefined);
  const started = performance.now();
  const data = path.resolve(options.data);
  const reference = path.resolve(options.reference);
  const shards = path.resolve(options.output, 'shards');
  const policy = path.resolve(options.output, 'policy');
  if (!existsSync(path.join(data, 'manifest.json'))) {
    const synth = await synthesize({ out: data, force: true, seed: 1, ...(options.images ? { images: options.images } : {}) });
    log(`synth: ${synth.trainImages} training + ${synth.evalImages} evaluation images, ${synth.pairs} pairs → ${path.relative(process.cwd(), data)} (${synth.seconds.toFixed(1)} s)`);
  } else {
    log(`synth: using ${path.relative(process.cwd(), data)}`);
  }
  const backend = await initBackend('auto');
  log(`TensorFlow.js backend: ${backend}`);
  return withStore(options.db, async (store) => {
    const ingested = await ingest(store, [path.join(data, 'pairs.jsonl')]);
    log(`ingest: ${formatIngestSummary(ingested)}`);
    const segmented = await segmentStage(store);
    log(`segment: ${segmented.pairs} pairs → ${segmented.sentences} sentences (${segmented.alreadyDone} pairs done before)`);
    await trainReference(store, data, reference, options);
    const ref = await loadModel(reference);
    const scored: ResponseScoreSummary[] = [];
    for (const signal of ['perplexity', 'grounding'] as const) {
      const summary = await scoreReference(store, ref, signal);
      scored.push(summary);
      log(`score: ${signal}: ${summary.sentences} sentences of ${summary.responses} responses in ${summary.seconds.toFixed(1)} s`);
    }
    const sharded = await writeShards(store, { out: shards, ref: reference });
    log(`shard: ${sharded.unchanged ? 'unchanged' : 'written'}: ${sharded.counts.train} train + ${sharded.counts.eval} eval pairs → ${path.relative(process.cwd(), shards)}`);
    await trainPolicy(store, shards, reference, path.join(data, 'eval.jsonl'), policy, options);
    const trainedPolicy = await loadModel(policy);
    let rewards: RewardsSummary;
    try {
      rewards = await writeSentenceRewards(store, await openShardSet(shards), {
        policy: trainedPolicy, ref, config: await savedLossConfig(policy) ?? lossConfig({ lossType: 'aspo' }),
      });
    } finally {
      trainedPolicy.model.dispose();
      ref.model.dispose();
    }
    log(`rewards: ${rewards.sentences} sentences of ${rewards.pairs} pairs → sentence_rewards`);

    const before = await hallucination(reference, data, options.evalImages);
    const after = await hallucination(policy, data, options.evalImages);
    const policyRun = await store.one<{ run_id: string }>(
      'SELECT run_id FROM runs WHERE checkpoint = ? ORDER BY started_at DESC LIMIT 1', [policy]);
    const metric = async (name: string): Promise<BeforeAfter> => {
      const at = async (order: 'ASC' | 'DESC') => (await store.one<{ value: number }>(
        `SELECT value FROM train_metrics WHERE run_id = ? AND split = 'eval' AND name = ? ORDER BY step ${order} LIMIT 1`,
        [policyRun?.run_id ?? '', name]))?.value;
      return { before: await at('ASC'), after: await at('DESC') };
    };
    const counts = (await store.one<Record<string, number>>(`SELECT
      (SELECT count(*) FROM pairs) AS pairs, (SELECT count(*) FROM images) AS images,
      (SELECT count(*) FROM sentences) AS sentences, (SELECT count(*) FROM labels) AS labels,
      (SELECT count(*) FROM sentence_scores) AS sentence_scores, (SELECT count(*) FROM sentence_rewards) AS sentence_rewards,
      (SELECT count(*) FROM rejects) AS rejects`))!;
    return {
      db: path.resolve(options.db), data, reference, shards, policy, policyRunId: policyRun?.run_id, backend,
      ingest: ingested, segment: segmented, score: scored, shard: sharded, rewards, counts,
      rewardAccuracy: await metric('rewards/accuracies'), sentenceAccuracy: await metric('sentence_accuracy'),
      hallucination: { before, after }, seconds: (performance.now() - started) / 1000,
    };
  });
}
