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
 * `--setting on-policy` builds the pairs from the reference's own answers instead (`aspo synth --on-policy`): it
 * describes every training image K times (sampled once per experiment and shared by the noise levels), the world's
 * truth judges every sentence, each label flipped with probability = the noise level (an imperfect annotator), and
 * the sample with the fewest hallucinated sentences is chosen over the one with the most.
 *
 *   npx tsc -p . && node dist/bench/aspo-vs-dpo.js [--quick] [--out bench-output/aspo-vs-dpo] [--seeds 3]
 *       [--noise 0.2,0.4] [--images 1000] [--steps N] [--reference CHECKPOINT] [--jobs 2]
 *       [--methods dpo,aspo-p,aspo-s,aspo,aspo-mass] [--markdown FILE] [--setting template|on-policy]
 *       [--samples 4] [--samples-from samples.jsonl]
 */
import { spawn } from 'node:child_process';
import '../src/schema.js'; // every stage's tables, for the store
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ingest } from '../src/ingest/ingest.js';
import { auroc } from '../src/report/stats.js';
import { scoreReference } from '../src/score/perplexity.js';
import { loadModel } from '../src/model/checkpoint.js';
import { segmentStage } from '../src/segment/stage.js';
import { openShardSet } from '../src/shard/read.js';
import { writeShards } from '../src/shard/stage.js';
import { withStore } from '../src/store/store.js';
import { evaluateGenerations } from '../src/synth/evaluate.js';
import { ON_POLICY_DEFAULTS, onPolicyPairs } from '../src/synth/on-policy.js';
import { synthesize } from '../src/synth/synthesize.js';
import { initBackend } from '../src/model/backend.js';
import { lossConfig, type AspoLossConfig } from '../src/train/loss.js';
import { DEFAULT_PREFERENCE_OPTIONS, PreferenceTrainer, runPreference, type PreferenceObjective, type PreferenceOptions } from '../src/train/preference.js';
import type { VisionLanguageModel } from '../src/model/model.js';
import type { Tokenizer } from '../src/model/tokenizer.js';
import { DEFAULT_SFT_OPTIONS, readSftData, runSft, SftTrainer, type SftOptions } from '../src/train/sft.js';

export interface Method {
  /** Short name for --methods. */
  key: string;
  name: string;
  objective: PreferenceObjective;
  /** Loss options beyond the defaults (ASPO only). */
  loss?: Partial<Pick<AspoLossConfig, 'alpha' | 'normalize' | 'scale'>>;
}

export const METHODS: readonly Method[] = [
  { key: 'dpo', name: 'DPO', objective: 'dpo' },
  { key: 'aspo-p', name: 'ASPO-P (α = 0, perplexity)', objective: 'aspo', loss: { alpha: 0 } },
  { key: 'aspo-s', name: 'ASPO-S (α = 1, grounding similarity)', objective: 'aspo', loss: { alpha: 1 } },
  { key: 'aspo', name: 'ASPO (α = 0.5)', objective: 'aspo', loss: { alpha: 0.5 } },
  // Not in the paper's grid: the multipliers rescaled to mean 1 over the response, so low-weight sentences count < 1.
  { key: 'aspo-mass', name: 'ASPO (α = 0.5, normalize mass)', objective: 'aspo', loss: { alpha: 0.5, normalize: 'mass' } },
];
const DEFAULT_METHODS = ['dpo', 'aspo-p', 'aspo-s', 'aspo'];

export interface ExperimentConfig {
  out: string;
  /** Seed of the synthetic worlds (the SFT data and held-out images depend on it, not on the noise). */
  worldSeed: number;
  /** An SFT checkpoint trained on this world's sft.jsonl (same seed and image count); default: train one here. */
  reference?: string;
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
  /** Where the pairs come from: the world's templates (default), or the reference's own sampled answers. */
  setting?: 'template' | 'on-policy';
  /** On-policy: responses sampled per image (default ON_POLICY_DEFAULTS.samples), and samples.jsonl of an earlier sampling to reuse. */
  samples?: number;
  samplesFrom?: string;
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

/** The folder of the experiment's runs at one noise level. */
const noiseDir = (config: ExperimentConfig, noise: number) => path.join(config.out, `${config.setting === 'on-policy' ? 'on-policy-' : ''}noise-${noise}`);

/**
 * The on-policy setting's samples: the reference describes every training image of the (noise-free) world K times,
 * once per experiment; each noise level judges these same samples again. Returns the world and samples.jsonl.
 */
export async function onPolicySamples(config: ExperimentConfig, reference: string): Promise<{ world: string; samples: string }> {
  const world = path.join(config.out, 'on-policy-world');
  if (config.samplesFrom) return { world, samples: config.samplesFrom };
  await synthesize({ out: world, force: true, seed: config.worldSeed, images: config.images, evalImages: config.evalImages });
  const out = path.join(config.out, 'on-policy-samples');
  const summary = await onPolicyPairs({
    ...ON_POLICY_DEFAULTS, ref: reference, world, out, samples: config.samples ?? ON_POLICY_DEFAULTS.samples, seed: config.worldSeed, force: true,
  });
  config.log?.(`on-policy samples: ${summary.samples} of ${summary.prompts} images in ${summary.seconds.toFixed(0)} s, ` +
    `hallucinated sentences ${(100 * summary.sampleHallucinationRate).toFixed(1)}%`);
  return { world, samples: path.join(out, 'samples.jsonl') };
}

/** The synthetic world of one noise level, ingested, segmented, scored and sharded with the reference. */
async function prepareWorld(dir: string, noise: number, config: ExperimentConfig, reference: string) {
  const db = path.join(dir, 'store.duckdb');
  const shards = path.join(dir, 'shards');
  await rm(db, { force: true });
  let data = path.join(dir, 'data');
  let pairs = path.join(data, 'pairs.jsonl');
  if (config.setting === 'on-policy') {
    const sampled = await onPolicySamples(config, reference);
    data = sampled.world;
    const judged = path.join(dir, 'pairs');
    const summary = await onPolicyPairs({
      ...ON_POLICY_DEFAULTS, ref: reference, world: data, out: judged, seed: config.worldSeed,
      samplesFrom: sampled.samples, labelNoise: noise, force: true,
    });
    config.log?.(`on-policy noise ${noise}: ${summary.pairs} pairs, hallucinated sentences chosen ${(100 * summary.chosenHallucinationRate).toFixed(1)}%, ` +
      `rejected ${(100 * summary.rejectedHallucinationRate).toFixed(1)}%, labels flipped ${(100 * summary.flippedLabels).toFixed(1)}%`);
    pairs = path.join(judged, 'pairs.jsonl');
  } else {
    await synthesize({ out: data, force: true, seed: config.worldSeed, images: config.images, evalImages: config.evalImages, noise });
  }
  const weightAuroc: ExperimentResult['weightAuroc'] = [];
  await withStore(db, async (store) => {
    await ingest(store, [pairs]);
    await segmentStage(store);
    const ref = await loadModel(reference);
    await scoreReference(store, ref, 'perplexity');
    await scoreReference(store, ref, 'grounding');
    ref.model.dispose();
    await writeShards(store, { out: shards, ref: reference, seed: 0 });
    for (const alpha of [0, 0.5, 1]) {
      const rows = await store.all<{ weight: number; hallucinated: boolean }>(`
        SELECT w.weight, EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = w.pair_id AND l.side = w.side
          AND l.char_start < s.char_end AND l.char_end > s.char_start AND l.label = 'hallucinated') AS hallucinated
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

/** The SFT reference every method starts from: the one given, or one trained here on the world's true descriptions. */
async function prepareReference(config: ExperimentConfig): Promise<{ dir: string; sftSeconds: number }> {
  if (config.reference) return { dir: config.reference, sftSeconds: 0 };
  const sftData = path.join(config.out, 'sft-data');
  await synthesize({ out: sftData, force: true, seed: config.worldSeed, images: config.images, evalImages: config.evalImages, noise: 0 });
  const dir = path.join(config.out, 'reference');
  await rm(dir, { recursive: true, force: true });
  const sft = await SftTrainer.create({ ...DEFAULT_SFT_OPTIONS, ...config.sft, data: sftData, out: dir, steps: config.sftSteps, evalEvery: 0 },
    await readSftData(sftData));
  const result = await runSft(sft);
  sft.dispose();
  return { dir, sftSeconds: result.seconds };
}

export async function runExperiment(config: ExperimentConfig): Promise<ExperimentResult> {
  const log = config.log ?? (() => {});
  const started = performance.now();
  await mkdir(config.out, { recursive: true });
  await initBackend('auto');
  const { dir: reference, sftSeconds } = await prepareReference(config);
  let referenceEval: Evaluation | undefined;

  const runs: RunResult[] = [];
  const weightAuroc: ExperimentResult['weightAuroc'] = [];
  for (const noise of config.noises) {
    const world = await prepareWorld(noiseDir(config, noise), noise, config, reference);
    weightAuroc.push(...world.weightAuroc);
    if (!referenceEval) {
      const ref = await loadModel(reference);
      referenceEval = { ...await evaluateModel(ref.model, ref.tokenizer, world.data), sentenceAccuracy: NaN, rewardAccuracy: NaN };
      ref.model.dispose();
    }
    log(`noise ${noise}: weight AUROC ${world.weightAuroc.map((w) => `α=${w.alpha} ${w.auroc.toFixed(3)}`).join(', ')}`);
    for (const seed of config.seeds) {
      for (const method of config.methods) {
        const out = path.join(noiseDir(config, noise), `${method.key}-seed${seed}`);
        await rm(out, { recursive: true, force: true });
        const runStarted = performance.now();
        const trainer = await PreferenceTrainer.create({
          ...DEFAULT_PREFERENCE_OPTIONS, ...config.preference, objective: method.objective, shards: world.shards, ref: reference, out,
          probes: path.join(world.data, 'eval.jsonl'), steps: config.steps, seed, evalEvery: 0, saveEvery: 0,
          loss: lossConfig({ lossType: method.objective, ...method.loss }),
        }, await openShardSet(world.shards));
        let rewardAccuracyBefore = NaN;
        const result = await runPreference(trainer, {
          onEval: (stats, at) => {
            if (at.step > 0) return;
            rewardAccuracyBefore = stats.metrics['rewards/accuracies'] ?? NaN;
            if (referenceEval && Number.isNaN(referenceEval.sentenceAccuracy)) referenceEval.sentenceAccuracy = stats.sentenceAccuracy ?? NaN;
          },
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
  if (referenceEval) {
    log(`reference: hallucination rate ${(100 * referenceEval.hallucinationRate).toFixed(1)}%, ` +
      `held-out sentence accuracy ${(100 * referenceEval.sentenceAccuracy).toFixed(1)}%`);
  }
  return {
    config: { out: config.out, worldSeed: config.worldSeed, reference: config.reference, noises: config.noises, seeds: config.seeds,
      setting: config.setting ?? 'template', samples: config.samples, samplesFrom: config.samplesFrom,
      images: config.images, evalImages: config.evalImages, sftSteps: config.sftSteps, steps: config.steps, methods: config.methods.map((m) => m.name) },
    reference: { ...(referenceEval ?? { hallucinationRate: NaN, unknownRate: NaN, sentenceAccuracy: NaN, rewardAccuracy: NaN }), sftSeconds },
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
    const title = result.config.setting === 'on-policy' ? `On-policy pairs, label noise ${noise}` : `Noise ${noise}`;
    lines.push(`**${title}** (${result.config.seeds.length} seeds; mean ± std, %)`, '',
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

/** Merges the results of runs over disjoint noise levels (one child process each). */
function mergeResults(parts: ExperimentResult[], noises: number[], seconds: number): ExperimentResult {
  const [first] = parts;
  return {
    config: { ...first!.config, noises },
    reference: first!.reference,
    weightAuroc: parts.flatMap((p) => p.weightAuroc),
    runs: parts.flatMap((p) => p.runs),
    seconds,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      out: { type: 'string', default: path.join('bench-output', 'aspo-vs-dpo') },
      reference: { type: 'string' }, 'world-seed': { type: 'string', default: '1' }, jobs: { type: 'string', default: '1' },
      seeds: { type: 'string' }, noise: { type: 'string' }, images: { type: 'string' }, 'eval-images': { type: 'string' },
      steps: { type: 'string' }, 'sft-steps': { type: 'string' }, markdown: { type: 'string' }, 'results-json': { type: 'string' },
      methods: { type: 'string', default: DEFAULT_METHODS.join(',') },
      setting: { type: 'string', default: 'template' }, samples: { type: 'string', default: String(ON_POLICY_DEFAULTS.samples) },
      'samples-from': { type: 'string' },
    },
  });
  if (values.setting !== 'template' && values.setting !== 'on-policy') throw new Error(`--setting must be template or on-policy, got ${values.setting}`);
  const quick = values.quick;
  const seedCount = Number(values.seeds ?? (quick ? 1 : 3));
  const config: ExperimentConfig = {
    out: path.resolve(values.out),
    worldSeed: Number(values['world-seed']),
    reference: values.reference && path.resolve(values.reference),
    noises: (values.noise ?? (quick ? '0.4' : '0.2,0.4')).split(',').map(Number),
    seeds: Array.from({ length: seedCount }, (_, i) => i + 1),
    images: Number(values.images ?? (quick ? 120 : 1000)),
    evalImages: Number(values['eval-images'] ?? (quick ? 30 : 200)),
    steps: values.steps === undefined ? undefined : Number(values.steps),
    sftSteps: values['sft-steps'] === undefined ? undefined : Number(values['sft-steps']),
    methods: values.methods.split(',').map((key) => {
      const method = METHODS.find((m) => m.key === key);
      if (!method) throw new Error(`--methods: unknown method "${key}" (known: ${METHODS.map((m) => m.key).join(', ')})`);
      return method;
    }),
    setting: values.setting,
    samples: Number(values.samples),
    samplesFrom: values['samples-from'] && path.resolve(values['samples-from']),
    log: (line) => process.stderr.write(`${line}\n`),
  };
  const jobs = Math.min(Number(values.jobs), config.noises.length);
  process.stderr.write(`aspo-vs-dpo: ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? ''}, Node ${process.version}, ${jobs} job(s)\n`);
  const started = performance.now();
  let result: ExperimentResult;
  if (jobs > 1) {
    // The wasm backend runs on one thread: one child process per noise level uses the other cores.
    await mkdir(config.out, { recursive: true });
    const reference = config.reference ?? (await prepareReference(config)).dir;
    // on-policy: sampled once here, judged by each child at its noise level
    const shared = config.setting === 'on-policy' ? ['--samples-from', (await onPolicySamples(config, reference)).samples] : [];
    const owned = ['--jobs', '--noise', '--markdown', '--results-json', '--reference', '--samples-from'];
    const argv = [...process.argv.slice(2).filter((a, i, all) => !owned.includes(a) && !owned.includes(all[i - 1] ?? '')), ...shared];
    const parts = await Promise.all(config.noises.map(async (noise) => {
      const file = path.join(config.out, `results-noise-${noise}.json`);
      await new Promise<void>((resolve, reject) => {
        const child = spawn(process.execPath, [process.argv[1]!, ...argv, '--noise', String(noise), '--reference', reference,
          '--out', config.out, '--results-json', file], { stdio: ['ignore', 'ignore', 'inherit'] });
        child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`noise ${noise}: exit code ${code}`))));
      });
      return JSON.parse(await readFile(file, 'utf8')) as ExperimentResult;
    }));
    result = mergeResults(parts, config.noises, (performance.now() - started) / 1000);
  } else {
    result = await runExperiment(config);
  }
  await writeFile(values['results-json'] ?? path.join(config.out, 'results.json'), JSON.stringify(result, null, 2));
  const table = resultsTable(result);
  if (values.markdown) await writeFile(values.markdown, table + '\n');
  process.stdout.write(`${table}\nTotal ${(result.seconds / 60).toFixed(1)} min.\n`);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
