/**
 * The experiment: does sentence-level ASPO beat DPO when the chosen responses are partly hallucinated?
 *
 * For each noise level (share of hallucinated sentences in chosen and rejected responses) a synthetic world is
 * generated, ingested, segmented, scored with the SFT reference (perplexity, and grounding similarity: the gain in
 * log-prob a sentence gets from its image) and sharded with the reference's log-probs. From the same reference,
 * every method trains for the same steps with each seed, and the trained policy is evaluated on held-out images:
 * hallucination rate of its greedy descriptions (judged against the true scenes), sentence accuracy on true/false
 * probes, and reward accuracy on the held-out pairs. The AUROC of the reference-time sentence weights against the
 * sentences' truth is computed on the training pairs.
 *
 *   npx tsc -p . && node dist/bench/aspo-vs-dpo.js [--quick] [--out bench-output/aspo-vs-dpo] [--seeds 3]
 *       [--noise 0.2,0.4] [--images 600] [--steps N] [--markdown docs/results-table.md]
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ingest } from '../src/ingest/ingest.js';
import { auroc } from '../src/report/stats.js';
import { loadReferenceModel, scoreReference } from '../src/score/perplexity.js';
import { segmentStage } from '../src/segment/stage.js';
import { openShardSet } from '../src/shard/read.js';
import { writeShards } from '../src/shard/stage.js';
import { withStore } from '../src/store/store.js';
import { evaluateGenerations } from '../src/synth/evaluate.js';
import { synthesize } from '../src/synth/synthesize.js';
import { initBackend } from '../src/train/backend.js';
import { lossConfig } from '../src/train/loss.js';
import { DEFAULT_PREFERENCE_OPTIONS, PreferenceTrainer, runPreference, type PreferenceObjective, type PreferenceOptions } from '../src/train/preference.js';
import type { VisionLanguageModel } from '../src/train/model.js';
import type { Tokenizer } from '../src/train/tokenizer.js';
import { DEFAULT_SFT_OPTIONS, readSftData, runSft, SftTrainer, type SftOptions } from '../src/train/sft.js';

export interface Method {
  name: string;
  objective: PreferenceObjective;
  /** Similarity vs perplexity in the sentence weights (ASPO only). */
  alpha?: number;
}

export const METHODS: readonly Method[] = [
  { name: 'DPO', objective: 'dpo' },
  { name: 'ASPO-P (α = 0, perplexity)', objective: 'aspo', alpha: 0 },
  { name: 'ASPO-S (α = 1, grounding similarity)', objective: 'aspo', alpha: 1 },
  { name: 'ASPO (α = 0.5)', objective: 'aspo', alpha: 0.5 },
];

export interface ExperimentConfig {
  out: string;
  noises: number[];
  seeds: number[];
  /** Training images (one pair each) and held-out images per world. */
  images: number;
  evalImages: number;
  /** SFT steps of the shared reference (default: DEFAULT_SFT_OPTIONS' epochs). */
  sftSteps?: number;
  /** Preference steps per run (default: DEFAULT_PREFERENCE_OPTIONS' epochs). */
  steps?: number;
  methods: readonly Method[];
  /** Overrides of the SFT and preference-training defaults (the quick variant shrinks the model). */
  sft?: Partial<SftOptions>;
  preference?: Partial<PreferenceOptions>;
  log?: (line: string) => void;
}

export interface Evaluation {
  hallucinationRate: number;
  unknownRate: number;
  sentenceAccuracy: number;
  rewardAccuracy: number;
}

export interface RunResult extends Evaluation {
  /** Reward accuracy on the held-out pairs before the first step (the policy is the reference: margins ≈ 0). */
  rewardAccuracyBefore: number;
  /** Reward accuracy over the last logged training window. */
  trainRewardAccuracy: number;
  noise: number;
  method: string;
  seed: number;
  seconds: number;
}

export interface ExperimentResult {
  config: Omit<ExperimentConfig, 'log' | 'methods' | 'sft' | 'preference'> & { methods: string[] };
  reference: Evaluation & { sftSeconds: number };
  /** AUROC of the reference-time sentence weights (low weight ⇒ hallucinated) on training chosen sentences, per noise and α. */
  weightAuroc: Array<{ noise: number; alpha: number; auroc: number; sentences: number }>;
  runs: RunResult[];
  seconds: number;
}

/** The synthetic world of one noise level, ingested, segmented, scored and sharded with the reference. */
async function prepareWorld(dir: string, noise: number, config: ExperimentConfig, reference: string) {
  const data = path.join(dir, 'data');
  const db = path.join(dir, 'store.duckdb');
  const shards = path.join(dir, 'shards');
  await rm(db, { force: true });
  await synthesize({ out: data, force: true, seed: 7, images: config.images, evalImages: config.evalImages, noise });
  const weightAuroc: ExperimentResult['weightAuroc'] = [];
  await withStore(db, async (store) => {
    await ingest(store, [path.join(data, 'pairs.jsonl')]);
    await segmentStage(store);
    const ref = await loadReferenceModel(reference);
    await scoreReference(store, ref, 'perplexity');
    await scoreReference(store, ref, 'grounding');
    ref.model.dispose();
    await writeShards(store, { out: shards, ref: reference, seed: 0 });
    for (const alpha of [0, 0.5, 1]) {
      const rows = await store.all<{ weight: number; hallucinated: boolean }>(`
        SELECT w.weight, EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = w.pair_id AND l.side = w.side
          AND l.start < s."end" AND l."end" > s.start AND l.label = 'hallucinated') AS hallucinated
        FROM sentence_weights(alpha := ${alpha}) w JOIN sentences s USING (pair_id, side, idx)
        WHERE w.side = 'chosen' AND w.weight IS NOT NULL`);
      weightAuroc.push({ noise, alpha, sentences: rows.length, auroc: auroc(rows.map((r) => -r.weight), rows.map((r) => r.hallucinated)) });
    }
  });
  return { data, shards, weightAuroc };
}

async function evaluateModel(model: VisionLanguageModel, tokenizer: Tokenizer, data: string): Promise<Pick<Evaluation, 'hallucinationRate' | 'unknownRate'>> {
  const result = await evaluateGenerations(model, tokenizer, data);
  return { hallucinationRate: result.hallucinationRate, unknownRate: result.unknownRate };
}

export async function runExperiment(config: ExperimentConfig): Promise<ExperimentResult> {
  const log = config.log ?? (() => {});
  const started = performance.now();
  await mkdir(config.out, { recursive: true });
  await initBackend('auto');

  // One reference for every world: the SFT records and held-out images depend on the seed, not on the noise.
  const sftData = path.join(config.out, 'sft-data');
  await synthesize({ out: sftData, force: true, seed: 7, images: config.images, evalImages: config.evalImages, noise: 0 });
  const reference = path.join(config.out, 'reference');
  await rm(reference, { recursive: true, force: true });
  const sft = await SftTrainer.create({ ...DEFAULT_SFT_OPTIONS, ...config.sft, data: sftData, out: reference, steps: config.sftSteps, evalEvery: 0 },
    await readSftData(sftData));
  const sftResult = await runSft(sft);
  const referenceGen = await evaluateModel(sft.model, sft.tokenizer, sftData);
  sft.dispose();
  log(`reference: SFT ${sftResult.steps} steps in ${sftResult.seconds.toFixed(0)} s, held-out sentence accuracy ` +
    `${(100 * (sftResult.eval?.sentenceAccuracy ?? NaN)).toFixed(1)}%, hallucination rate ${(100 * referenceGen.hallucinationRate).toFixed(1)}%`);

  const runs: RunResult[] = [];
  const weightAuroc: ExperimentResult['weightAuroc'] = [];
  for (const noise of config.noises) {
    const world = await prepareWorld(path.join(config.out, `noise-${noise}`), noise, config, reference);
    weightAuroc.push(...world.weightAuroc);
    log(`noise ${noise}: weight AUROC ${world.weightAuroc.map((w) => `α=${w.alpha} ${w.auroc.toFixed(3)}`).join(', ')}`);
    for (const seed of config.seeds) {
      for (const method of config.methods) {
        const out = path.join(config.out, `noise-${noise}`, `${method.objective}-${method.alpha ?? 'x'}-seed${seed}`);
        await rm(out, { recursive: true, force: true });
        const runStarted = performance.now();
        const trainer = await PreferenceTrainer.create({
          ...DEFAULT_PREFERENCE_OPTIONS, ...config.preference, objective: method.objective, shards: world.shards, ref: reference, out,
          probes: path.join(world.data, 'eval.jsonl'), steps: config.steps, seed, evalEvery: 0, saveEvery: 0,
          loss: lossConfig({ lossType: method.objective, ...(method.alpha === undefined ? {} : { alpha: method.alpha }) }),
        }, await openShardSet(world.shards));
        let rewardAccuracyBefore = NaN;
        const result = await runPreference(trainer, {
          onEval: (stats, at) => { if (at.step === 0) rewardAccuracyBefore = stats.metrics['rewards/accuracies'] ?? NaN; },
        });
        const generations = await evaluateModel(trainer.policy, trainer.tokenizer, world.data);
        trainer.dispose();
        const run: RunResult = {
          noise, method: method.name, seed, ...generations,
          sentenceAccuracy: result.eval?.sentenceAccuracy ?? NaN,
          rewardAccuracy: result.eval?.metrics['rewards/accuracies'] ?? NaN,
          rewardAccuracyBefore,
          trainRewardAccuracy: result.train['rewards/accuracies'] ?? NaN,
          seconds: (performance.now() - runStarted) / 1000,
        };
        runs.push(run);
        log(`noise ${noise} ${method.name} seed ${seed}: hallucination ${(100 * run.hallucinationRate).toFixed(1)}%, ` +
          `sentence accuracy ${(100 * run.sentenceAccuracy).toFixed(1)}%, reward accuracy ${(100 * run.rewardAccuracy).toFixed(1)}% ` +
          `(${run.seconds.toFixed(0)} s)`);
      }
    }
  }
  return {
    config: { out: config.out, noises: config.noises, seeds: config.seeds, images: config.images, evalImages: config.evalImages,
      sftSteps: config.sftSteps, steps: config.steps, methods: config.methods.map((m) => m.name) },
    reference: { ...referenceGen, sentenceAccuracy: sftResult.eval?.sentenceAccuracy ?? NaN, rewardAccuracy: NaN, sftSeconds: sftResult.seconds },
    weightAuroc,
    runs,
    seconds: (performance.now() - started) / 1000,
  };
}

function meanStd(values: number[]): string {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const std = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, values.length - 1));
  return `${(100 * mean).toFixed(1)} ± ${(100 * std).toFixed(1)}`;
}

/** The results as Markdown tables: per noise level, mean ± std over seeds (percentages). */
export function resultsTable(result: ExperimentResult): string {
  const lines: string[] = [];
  const r = result.reference;
  lines.push(`SFT reference: hallucination rate ${(100 * r.hallucinationRate).toFixed(1)}%, sentence accuracy ` +
    `${(100 * r.sentenceAccuracy).toFixed(1)}%, unreadable sentences ${(100 * r.unknownRate).toFixed(1)}%.`, '');
  for (const noise of result.config.noises) {
    lines.push(`**Noise ${noise}** (${result.config.seeds.length} seeds; mean ± std, %)`, '',
      '| method | hallucination rate ↓ | sentence accuracy ↑ | reward accuracy ↑ | unreadable |', '| --- | ---: | ---: | ---: | ---: |');
    for (const method of result.config.methods) {
      const runs = result.runs.filter((run) => run.noise === noise && run.method === method);
      if (!runs.length) continue;
      lines.push(`| ${method} | ${meanStd(runs.map((x) => x.hallucinationRate))} | ${meanStd(runs.map((x) => x.sentenceAccuracy))} | ` +
        `${meanStd(runs.map((x) => x.rewardAccuracy))} | ${meanStd(runs.map((x) => x.unknownRate))} |`);
    }
    lines.push('', `Sentence-weight AUROC against truth (training chosen sentences): ` +
      result.weightAuroc.filter((w) => w.noise === noise).map((w) => `α = ${w.alpha}: ${w.auroc.toFixed(3)} (${w.sentences})`).join(', '), '');
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      out: { type: 'string', default: path.join('bench-output', 'aspo-vs-dpo') },
      seeds: { type: 'string' }, noise: { type: 'string' }, images: { type: 'string' }, 'eval-images': { type: 'string' },
      steps: { type: 'string' }, 'sft-steps': { type: 'string' }, markdown: { type: 'string' },
    },
  });
  const quick = values.quick;
  const seedCount = Number(values.seeds ?? (quick ? 1 : 3));
  const config: ExperimentConfig = {
    out: values.out,
    noises: (values.noise ?? (quick ? '0.4' : '0.2,0.4')).split(',').map(Number),
    seeds: Array.from({ length: seedCount }, (_, i) => i + 1),
    images: Number(values.images ?? (quick ? 120 : 600)),
    evalImages: Number(values['eval-images'] ?? (quick ? 30 : 100)),
    steps: values.steps === undefined ? undefined : Number(values.steps),
    sftSteps: values['sft-steps'] === undefined ? undefined : Number(values['sft-steps']),
    methods: METHODS,
    log: (line) => process.stderr.write(`${line}\n`),
  };
  process.stderr.write(`aspo-vs-dpo: ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? ''}, Node ${process.version}\n`);
  const result = await runExperiment(config);
  await writeFile(path.join(config.out, 'results.json'), JSON.stringify(result, null, 2));
  const table = resultsTable(result);
  if (values.markdown) await writeFile(values.markdown, table + '\n');
  process.stdout.write(`${table}\nTotal ${(result.seconds / 60).toFixed(1)} min.\n`);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
