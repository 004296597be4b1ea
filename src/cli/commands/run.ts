import { DEFAULT_DATASET, DEFAULT_OUTPUT, DEFAULT_REFERENCE, PIPELINE_DEFAULTS, runPipeline } from '../../pipeline/pipeline.js';
import { DB_OPTION, parse, UsageError, type Command } from '../command.js';
import { Progress } from '../progress.js';

const percent = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? 'n/a' : `${(100 * x).toFixed(1)}%`);

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
The same job is the library function runPipeline (src/pipeline/pipeline.ts).

  --data DIR         synthetic dataset folder (default ${DEFAULT_DATASET}; generated when it has no manifest.json)
  --reference DIR    SFT reference checkpoint (default ${DEFAULT_REFERENCE}; trained when absent, resumed when unfinished)
  --output DIR       shards and the trained policy (default ${DEFAULT_OUTPUT})
  --eval-images N    held-out images described by each model for the hallucination rate (default ${PIPELINE_DEFAULTS.evalImages})
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
      'eval-images': { type: 'string', default: String(PIPELINE_DEFAULTS.evalImages) },
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
    const bars = new Map<string, Progress>();
    const r = await runPipeline({
      db: values.db, data: values.data, reference: values.reference, output: values.output,
      evalImages: count('eval-images'), images: count('images'), sftSteps: count('sft-steps'), trainSteps: count('train-steps'),
      log: (line) => {
        for (const bar of bars.values()) bar.clear();
        bars.clear();
        process.stderr.write(`${line}\n`);
      },
      onProgress: (progress) => {
        let bar = bars.get(progress.phase);
        if (!bar) bars.set(progress.phase, bar = new Progress({ label: progress.phase, unit: progress.unit }));
        bar.report(progress);
      },
    });
    const db = values.db;
    process.stdout.write([
      '',
      `Store ${r.db}: ${Object.entries(r.counts).map(([k, v]) => `${v} ${k}`).join(', ')}.`,
      `Shards ${r.shards}; reference ${r.reference}; trained policy ${r.policy} (run ${r.policyRunId ?? 'n/a'}).`,
      '',
      ...comparisonLines([
        // The reference scored against itself has zero margins: its reward accuracy is not a measurement.
        { name: 'reward accuracy (held-out pairs)', reference: undefined, policy: r.rewardAccuracy.after, higherIsBetter: true },
        { name: 'sentence accuracy (probes)', reference: r.sentenceAccuracy.before, policy: r.sentenceAccuracy.after, higherIsBetter: true },
        { name: `hallucination rate (${r.hallucination.before.images} images)`, reference: r.hallucination.before.hallucinationRate,
          policy: r.hallucination.after.hallucinationRate, higherIsBetter: false },
      ]),
      '',
      'Try:',
      `  npx aspo query "SELECT s.text, round(r.reward, 4) AS reward, l.label FROM sentence_rewards r JOIN sentences s USING (pair_id, side, idx) LEFT JOIN labels l ON l.pair_id = r.pair_id AND l.side = r.side AND l.char_start < s.char_end AND s.char_start < l.char_end WHERE r.side = 'chosen' ORDER BY r.reward LIMIT 5" --db ${db}`,
      `  npx aspo query "SELECT l.label, count(*) AS sentences, round(avg(w.weight), 3) AS mean_weight FROM sentence_weights w JOIN sentences s USING (pair_id, side, idx) JOIN labels l ON l.pair_id = s.pair_id AND l.side = s.side AND l.char_start < s.char_end AND s.char_start < l.char_end WHERE s.side = 'chosen' GROUP BY 1" --db ${db}`,
      `  npx aspo query "SELECT step, name, round(value, 3) AS value FROM train_metrics WHERE run_id = '${r.policyRunId ?? ''}' AND split = 'eval' ORDER BY step, name" --db ${db}`,
      '',
      `Done in ${r.seconds.toFixed(0)} s. Next: npx aspo report --db ${db} --out report.html`,
      '',
    ].join('\n'));
    return 0;
  },
};

