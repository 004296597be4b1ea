import { existsSync } from 'node:fs';
import path from 'node:path';
import { ingest } from '../../ingest/ingest.js';
import { savedLossConfig, writeSentenceRewards } from '../../rewards/rewards.js';
import { scoreReference } from '../../score/perplexity.js';
import { segmentStage } from '../../segment/stage.js';
import { openShardSet } from '../../shard/read.js';
import { writeShards } from '../../shard/stage.js';
import { withStore, type Store } from '../../store/store.js';
import { evaluateGenerations, type GenerationEval } from '../../synth/evaluate.js';
import { synthesize } from '../../synth/synthesize.js';
import { initBackend } from '../../model/backend.js';
import { hasCheckpoint, loadCheckpoint, loadModel } from '../../model/checkpoint.js';
import { lossConfig } from '../../train/loss.js';
import { StoreMetrics } from '../../train/metrics.js';
import { DEFAULT_PREFERENCE_OPTIONS, PreferenceTrainer, runPreference } from '../../train/preference.js';
import { DEFAULT_SFT_OPTIONS, readSftData, runSft, SftTrainer } from '../../train/sft.js';
import { DB_OPTION, parse, UsageError, type Command } from '../command.js';
import { Progress } from '../progress.js';
import { formatSummary } from './ingest.js';

/** Where the embedded default data lives: generated deterministically on the first run, then reused. */
export const DEFAULT_DATASET = path.join('datasets', 'synthetic-default');
/** The SFT reference model of the default data, trained on the first run, then reused. */
export const DEFAULT_REFERENCE = path.join('datasets', 'reference-default');
/** Shards and the trained policy. */
export const DEFAULT_OUTPUT = 'aspo-output';

const log = (line: string) => process.stderr.write(`${line}\n`);
const percent = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? 'n/a' : `${(100 * x).toFixed(1)}%`);

/** Whether the checkpoint in `dir` is a run that reached its last step (read without loading its data). */
async function finished(dir: string): Promise<boolean> {
  if (!await hasCheckpoint(dir)) return false;
  const state = (await loadCheckpoint(dir)).trainer as { step?: number; totalSteps?: number } | undefined;
  return state?.step !== undefined && state.step >= (state.totalSteps ?? Infinity);
}

async function trainReference(store: Store, data: string, out: string, steps: number | undefined): Promise<void> {
  if (await finished(out)) return;
  const trainer = await hasCheckpoint(out)
    ? await SftTrainer.resume(out)
    : await SftTrainer.create({ ...DEFAULT_SFT_OPTIONS, data, out, steps }, await readSftData(data));
  const progress = new Progress({ label: 'reference (SFT)', total: trainer.totalSteps - trainer.step, unit: 'steps' });
  const result = await runSft(trainer, {
    metrics: new StoreMetrics(store),
    onStep: (stats) => progress.tick(1, `loss ${stats.loss.toFixed(3)}`),
  });
  trainer.dispose();
  progress.done(`${result.steps} steps, held-out sentence accuracy ${percent(result.eval?.sentenceAccuracy)} in ${result.seconds.toFixed(0)} s → ${out}`);
}

async function trainPolicy(store: Store, shards: string, reference: string, probes: string, out: string,
  steps: number | undefined): Promise<void> {
  if (await finished(out)) return;
  const trainer = await hasCheckpoint(out)
    ? await PreferenceTrainer.resume(out, openShardSet)
    : await PreferenceTrainer.create({
      ...DEFAULT_PREFERENCE_OPTIONS, objective: 'aspo', shards, ref: reference, out, probes, steps, loss: lossConfig({ lossType: 'aspo' }),
    }, await openShardSet(shards));
  log(`train: sentence-level ASPO (α ${trainer.options.loss.alpha}, β ${trainer.options.loss.beta}), reference log-probs from ${trainer.refSource}`);
  const progress = new Progress({ label: 'train (ASPO)', total: trainer.totalSteps - trainer.step, unit: 'steps' });
  const result = await runPreference(trainer, {
    metrics: new StoreMetrics(store),
    onStep: (stats) => progress.tick(1, `loss ${stats.metrics.loss.toFixed(3)} margin ${stats.metrics['rewards/margins'].toFixed(3)}`),
  });
  trainer.dispose();
  progress.done(`${result.steps} steps in ${result.seconds.toFixed(0)} s → ${out}`);
}

async function hallucination(checkpoint: string, data: string, limit: number): Promise<GenerationEval> {
  const { model, tokenizer } = await loadModel(checkpoint);
  try {
    return await evaluateGenerations(model, tokenizer, data, { limit });
  } finally {
    model.dispose();
  }
}

/** One metric of the final comparison: the reference's value (undefined: not meaningful), the policy's, and which
 *  direction is better. */
export interface Comparison {
  name: string;
  reference: number | undefined;
  policy: number | undefined;
  higherIsBetter: boolean;
}

/** The comparison table, then a plain sentence naming every metric on which the trained policy is worse. */
export function comparisonLines(rows: readonly Comparison[]): string[] {
  const width = Math.max(...rows.map((r) => r.name.length));
  const lines = [`  ${''.padEnd(width)}  reference   ASPO policy`,
    ...rows.map((r) => `  ${r.name.padEnd(width)}  ${percent(r.reference).padStart(9)}   ${percent(r.policy).padStart(11)}`)];
  const worse = rows.filter((r) => r.reference !== undefined && r.policy !== undefined && !Number.isNaN(r.reference) &&
    !Number.isNaN(r.policy) && (r.higherIsBetter ? r.policy < r.reference : r.policy > r.reference));
  lines.push('', worse.length
    ? `The trained policy is worse than its reference on ${worse.map((r) => `${r.name} (${percent(r.policy)} against ${percent(r.reference)})`).join(' and ')}.`
    : 'The trained policy is at least as good as its reference on every metric above.');
  return lines;
}

export const command: Command = {
  usage: `aspo run [--db PATH] [--data DIR] [--reference DIR] [--output DIR] [--eval-images N]
                [--images N] [--sft-steps N] [--train-steps N]

Runs the whole pipeline on the embedded default data, into the store:
  synthesise (${DEFAULT_DATASET}, seed 1, on the first run) → ingest → segment → SFT reference (${DEFAULT_REFERENCE},
  on the first run) → score (perplexity and grounding similarity under the reference) → shard → sentence-level ASPO
  training → sentence rewards; then compares the reference and the trained policy on held-out images.
Every stage is incremental: a second run reuses what the first one made and finishes quickly.

  --data DIR         synthetic dataset folder (default ${DEFAULT_DATASET}; generated when it has no manifest.json)
  --reference DIR    SFT reference checkpoint (default ${DEFAULT_REFERENCE}; trained when absent, resumed when unfinished)
  --output DIR       shards and the trained policy (default ${DEFAULT_OUTPUT})
  --eval-images N    held-out images described by each model for the hallucination rate (default 100)
  --images N         training images when the data is generated (default 1000; a smaller world for a quick look)
  --sft-steps N      SFT steps when the reference is trained (default: the SFT defaults' epochs)
  --train-steps N    ASPO steps (default: the preference defaults' epochs)

The default reference is bundled (trained on the default data with the SFT defaults, so the first run skips SFT).`,
  async run(argv) {
    const { values } = parse(argv, {
      ...DB_OPTION,
      data: { type: 'string', default: DEFAULT_DATASET },
      reference: { type: 'string', default: DEFAULT_REFERENCE },
      output: { type: 'string', default: DEFAULT_OUTPUT },
      'eval-images': { type: 'string', default: '100' },
      images: { type: 'string' },
      'sft-steps': { type: 'string' },
      'train-steps': { type: 'string' },
    });
    const count = (name: 'eval-images' | 'images' | 'sft-steps' | 'train-steps') => {
      const value = values[name];
      if (value === undefined) return undefined;
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${name} must be a positive integer, got "${value}"`);
      return n;
    };
    const started = performance.now();
    const data = path.resolve(values.data);
    const reference = path.resolve(values.reference);
    const shards = path.resolve(values.output, 'shards');
    const policy = path.resolve(values.output, 'policy');
    const evalImages = count('eval-images')!;
    if (!existsSync(path.join(data, 'manifest.json'))) {
      const synth = await synthesize({ out: data, force: true, seed: 1, ...(count('images') ? { images: count('images') } : {}) });
      log(`synth: ${synth.trainImages} training + ${synth.evalImages} evaluation images, ${synth.pairs} pairs → ${path.relative(process.cwd(), data)} (${synth.seconds.toFixed(1)} s)`);
    } else {
      log(`synth: using ${path.relative(process.cwd(), data)}`);
    }
    const backend = await initBackend('auto');
    log(`TensorFlow.js backend: ${backend}`);
    const db = values.db;
    await withStore(db, async (store) => {
      const ingested = await ingest(store, [path.join(data, 'pairs.jsonl')]);
      log(`ingest: ${formatSummary(ingested)}`);
      const segmented = await segmentStage(store);
      log(`segment: ${segmented.pairs} pairs → ${segmented.sentences} sentences (${segmented.alreadyDone} pairs done before)`);
      await trainReference(store, data, reference, count('sft-steps'));
      const ref = await loadModel(reference);
      for (const signal of ['perplexity', 'grounding'] as const) {
        const scored = await scoreReference(store, ref, signal);
        log(`score: ${signal}: ${scored.sentences} sentences of ${scored.responses} responses in ${scored.seconds.toFixed(1)} s`);
      }
      const sharded = await writeShards(store, { out: shards, ref: reference });
      log(`shard: ${sharded.unchanged ? 'unchanged' : 'written'}: ${sharded.counts.train} train + ${sharded.counts.eval} eval pairs → ${path.relative(process.cwd(), shards)}`);
      await trainPolicy(store, shards, reference, path.join(data, 'eval.jsonl'), policy, count('train-steps'));
      const trainedPolicy = await loadModel(policy);
      const rewards = await writeSentenceRewards(store, await openShardSet(shards), {
        policy: trainedPolicy, ref, config: await savedLossConfig(policy) ?? lossConfig({ lossType: 'aspo' }),
      });
      trainedPolicy.model.dispose();
      ref.model.dispose();
      log(`rewards: ${rewards.sentences} sentences of ${rewards.pairs} pairs → sentence_rewards`);

      const before = await hallucination(reference, data, evalImages);
      const after = await hallucination(policy, data, evalImages);
      const policyRun = await store.one<{ run_id: string }>(
        `SELECT run_id FROM runs WHERE checkpoint = ? ORDER BY started_at DESC LIMIT 1`, [policy]);
      const metric = async (name: string, which: 'first' | 'last') => (await store.one<{ value: number }>(
        `SELECT value FROM train_metrics WHERE run_id = ? AND split = 'eval' AND name = ? ORDER BY step ${which === 'first' ? 'ASC' : 'DESC'} LIMIT 1`,
        [policyRun?.run_id ?? '', name]))?.value;
      const counts = await store.one<Record<string, number>>(`SELECT
        (SELECT count(*) FROM pairs) AS pairs, (SELECT count(*) FROM images) AS images,
        (SELECT count(*) FROM sentences) AS sentences, (SELECT count(*) FROM labels) AS labels,
        (SELECT count(*) FROM sentence_scores) AS sentence_scores, (SELECT count(*) FROM sentence_rewards) AS sentence_rewards,
        (SELECT count(*) FROM rejects) AS rejects`);
      process.stdout.write([
        '',
        `Store ${path.resolve(db)}: ${Object.entries(counts ?? {}).map(([k, v]) => `${v} ${k}`).join(', ')}.`,
        `Shards ${shards}; reference ${reference}; trained policy ${policy} (run ${policyRun?.run_id ?? 'n/a'}).`,
        '',
        ...comparisonLines([
          // The reference scored against itself has zero margins: its reward accuracy is not a measurement.
          { name: 'reward accuracy (held-out pairs)', reference: undefined, policy: await metric('rewards/accuracies', 'last'), higherIsBetter: true },
          { name: 'sentence accuracy (probes)', reference: await metric('sentence_accuracy', 'first'), policy: await metric('sentence_accuracy', 'last'), higherIsBetter: true },
          { name: `hallucination rate (${before.images} images)`, reference: before.hallucinationRate, policy: after.hallucinationRate, higherIsBetter: false },
        ]),
        '',
        'Try:',
        `  npx aspo query "SELECT s.text, round(r.reward, 4) AS reward, l.label FROM sentence_rewards r JOIN sentences s USING (pair_id, side, idx) LEFT JOIN labels l ON l.pair_id = r.pair_id AND l.side = r.side AND l.char_start < s.char_end AND s.char_start < l.char_end WHERE r.side = 'chosen' ORDER BY r.reward LIMIT 5" --db ${db}`,
        `  npx aspo query "SELECT l.label, count(*) AS sentences, round(avg(w.weight), 3) AS mean_weight FROM sentence_weights w JOIN sentences s USING (pair_id, side, idx) JOIN labels l ON l.pair_id = s.pair_id AND l.side = s.side AND l.char_start < s.char_end AND s.char_start < l.char_end WHERE s.side = 'chosen' GROUP BY 1" --db ${db}`,
        `  npx aspo query "SELECT step, name, round(value, 3) AS value FROM train_metrics WHERE run_id = '${policyRun?.run_id ?? ''}' AND split = 'eval' ORDER BY step, name" --db ${db}`,
        '',
        `Done in ${((performance.now() - started) / 1000).toFixed(0)} s. Next: npx aspo report --db ${db} --out report.html`,
        '',
      ].join('\n'));
    });
    return 0;
  },
};
