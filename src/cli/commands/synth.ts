import { resolveSynthOptions, synthesize, SYNTH_DEFAULTS, SynthOptionError, type SynthOptions } from '../../synth/synthesize.js';
import { ON_POLICY_DEFAULTS, onPolicyPairs } from '../../synth/on-policy.js';
import { initBackend } from '../../model/backend.js';
import { backendOption } from '../model-options.js';
import { numberOption, parse, UsageError, type Command } from '../command.js';
import { Progress } from '../progress.js';

const d = SYNTH_DEFAULTS;

/** Each numeric flag and the library option it sets. */
const FLAGS: Record<keyof SynthOptions, string> = {
  seed: 'seed',
  images: 'images',
  evalImages: 'eval-images',
  noise: 'noise',
  size: 'size',
  pairsPerImage: 'pairs-per-image',
  sftPerImage: 'sft-per-image',
  maxSentences: 'max-sentences',
  probes: 'probes',
  concurrency: 'concurrency',
};

const o = ON_POLICY_DEFAULTS;

export const command: Command = {
  usage: 'aspo synth --out DIR [--seed N] [--images N] [--eval-images N] [--noise P] [--size PX] [--force]\n' +
    'aspo synth --on-policy CHECKPOINT --world DIR --out DIR [--samples K] [--temperature T] [--top-p P] [--seed N]\n' +
    '           [--label-noise P | --judgements FILE] [--samples-from FILE] [--images N] [--max-tokens N] [--backend NAME] [--force]\n\n' +
    '  Generates a synthetic world with sentence-level ground truth: images of 1–4 shapes, true descriptions,\n' +
    '  preference pairs whose every sentence is labelled true or hallucinated, and held-out evaluation images.\n\n' +
    `  --seed N             random seed; the same seed gives byte-identical files (default ${d.seed})\n` +
    `  --images N           training images (default ${d.images})\n` +
    `  --eval-images N      held-out evaluation images, never repeating a training scene (default ${d.evalImages})\n` +
    `  --noise P            share of sentences hallucinated in each response, 0..1 (default ${d.noise})\n` +
    `  --size PX            image width and height, e.g. 64 or 96 (default ${d.size})\n` +
    `  --pairs-per-image N  preference pairs per training image (default ${d.pairsPerImage})\n` +
    `  --sft-per-image N    true prompt/response records per training image (default ${d.sftPerImage})\n` +
    `  --max-sentences N    longest response in sentences (default ${d.maxSentences})\n` +
    `  --probes N           true/false sentence probes per evaluation image (default ${d.probes})\n` +
    `  --concurrency N      images rendered at once; does not change the output (default ${d.concurrency})\n` +
    '  --force              replace a previous synthetic dataset in DIR\n\n' +
    '  Writes DIR/pairs.jsonl (read it with aspo ingest), sft.jsonl, eval.jsonl, scenes.jsonl, manifest.json,\n' +
    '  images/ and eval/images/. See docs/synth.md.\n\n' +
    '  On-policy pairs (--on-policy): the checkpoint describes each training image of --world K times, every sentence\n' +
    '  is judged against the world\'s truth, and the sample with the fewest hallucinated (or unreadable) sentences is\n' +
    '  preferred to the one with the most; images whose samples all look alike give no pair.\n\n' +
    '  --on-policy DIR     checkpoint to sample from (normally the reference the pairs will train)\n' +
    '  --world DIR         a synthetic world (aspo synth): its pairs.jsonl gives images and prompts, scenes.jsonl the truth\n' +
    `  --samples K         responses per image (default ${o.samples})\n` +
    `  --temperature T     sampling temperature, > 0 (default ${o.temperature})\n` +
    `  --top-p P           nucleus sampling mass, in (0, 1] (default ${o.topP})\n` +
    `  --max-tokens N      longest response in tokens (default ${o.maxTokens})\n` +
    `  --seed N            the samples and the label noise depend only on it (default ${o.seed})\n` +
    `  --label-noise P     the judge flips each sentence's label with probability P, like an imperfect annotator (default ${o.labelNoise})\n` +
    '  --judgements FILE   labels from another judge instead: JSON Lines {"id": sample id, "labels": ["true"|"false"|"unknown", ...]}\n' +
    '                      one per sentence of each sample of samples.jsonl (written by a first run)\n' +
    '  --samples-from FILE judge the samples of an earlier run\'s samples.jsonl again instead of sampling\n' +
    '  --images N          use the first N prompts of the world only\n\n' +
    '  Writes DIR/samples.jsonl (every sample, its sentences, labels and truth), pairs.jsonl (read it with aspo ingest),\n' +
    '  the images the pairs use and manifest.json. See docs/synth.md.',
  async run(argv) {
    if (argv.some((arg) => arg === '--on-policy' || arg.startsWith('--on-policy='))) return runOnPolicy(argv);
    const flagOptions = Object.fromEntries(Object.values(FLAGS).map((flag) => [flag, { type: 'string' as const }]));
    const { values } = parse(argv, { ...flagOptions, out: { type: 'string' }, force: { type: 'boolean', default: false } });
    if (!values.out) throw new UsageError('give the output folder with --out DIR');
    const given = values as unknown as Record<string, string | undefined>;
    const requested = Object.fromEntries((Object.keys(FLAGS) as (keyof SynthOptions)[])
      .map((option) => [option, numberOption(given[FLAGS[option]], FLAGS[option], d[option])]));
    let options: SynthOptions;
    try {
      options = resolveSynthOptions(requested);
    } catch (error) {
      if (error instanceof SynthOptionError) {
        throw new UsageError(`--${FLAGS[error.option]}${error.message.slice(error.option.length)}`);
      }
      throw error;
    }
    const progress = new Progress({ label: 'synth', total: options.images + options.evalImages, unit: 'images' });
    const summary = await synthesize({ ...options, out: values.out, force: values.force, onImage: () => progress.tick() });
    const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
    progress.done(`${summary.trainImages} training + ${summary.evalImages} evaluation images ` +
      `(${options.size}×${options.size}), ${summary.pairs} pairs (hallucinated sentences: ` +
      `chosen ${pct(summary.chosenHallucinationRate)}, rejected ${pct(summary.rejectedHallucinationRate)}), ` +
      `${summary.sft} SFT records, ${summary.eval} evaluation records with ${summary.probes} probes → ` +
      `${summary.out} in ${summary.seconds.toFixed(1)} s`);
    return 0;
  },
};

async function runOnPolicy(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    'on-policy': { type: 'string' }, world: { type: 'string' }, out: { type: 'string' }, samples: { type: 'string' },
    temperature: { type: 'string' }, 'top-p': { type: 'string' }, 'max-tokens': { type: 'string' }, seed: { type: 'string' },
    'label-noise': { type: 'string' }, judgements: { type: 'string' }, 'samples-from': { type: 'string' }, images: { type: 'string' },
    backend: { type: 'string', default: 'auto' }, force: { type: 'boolean', default: false },
  });
  if (!values.out) throw new UsageError('give the output folder with --out DIR');
  if (!values.world) throw new UsageError('give --world DIR: a synthetic world whose training images the checkpoint describes');
  if (values.judgements && values['label-noise'] !== undefined) {
    throw new UsageError('--label-noise corrupts the world\'s judgement; with --judgements the labels are the file\'s');
  }
  const integer = (name: string, fallback: number, min: number) => {
    const n = numberOption(values[name as keyof typeof values] as string | undefined, name, fallback);
    if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer ≥ ${min}, got ${n}`);
    return n;
  };
  const inRange = (name: string, fallback: number, ok: (n: number) => boolean, range: string) => {
    const n = numberOption(values[name as keyof typeof values] as string | undefined, name, fallback);
    if (!ok(n)) throw new UsageError(`--${name} must be ${range}, got ${n}`);
    return n;
  };
  const options = {
    ref: values['on-policy']!, world: values.world, out: values.out, force: values.force,
    samples: integer('samples', o.samples, 2),
    temperature: inRange('temperature', o.temperature, (n) => n > 0, '> 0'),
    topP: inRange('top-p', o.topP, (n) => n > 0 && n <= 1, 'in (0, 1]'),
    maxTokens: integer('max-tokens', o.maxTokens, 1),
    seed: integer('seed', o.seed, 0),
    labelNoise: inRange('label-noise', o.labelNoise, (n) => n >= 0 && n <= 0.5, 'in [0, 0.5]'),
    judgements: values.judgements,
    samplesFrom: values['samples-from'],
    limit: values.images === undefined ? undefined : integer('images', 0, 1),
  };
  const backend = await initBackend(backendOption(values.backend));
  process.stderr.write(`synth: TensorFlow.js backend ${backend}; sampling ${options.samples} responses per image from ${options.ref}\n`);
  let progress: Progress | undefined;
  let last = 0;
  const summary = await onPolicyPairs(options, {
    onImages: (done, total) => {
      progress ??= new Progress({ label: 'synth (on-policy)', total, unit: 'images' });
      progress.tick(done - last);
      last = done;
    },
  });
  const pct = (x: number) => (Number.isNaN(x) ? 'n/a' : `${(100 * x).toFixed(1)}%`);
  const line = `${summary.samples} samples of ${summary.prompts} images → ${summary.pairs} pairs (${summary.ties} images without a preference); ` +
    `hallucinated sentences: samples ${pct(summary.sampleHallucinationRate)}, chosen ${pct(summary.chosenHallucinationRate)}, ` +
    `rejected ${pct(summary.rejectedHallucinationRate)}; labels flipped by noise ${pct(summary.flippedLabels)} → ${summary.out} in ${summary.seconds.toFixed(1)} s`;
  if (progress) progress.done(line);
  else process.stderr.write(`synth: ${line}\n`);
  return 0;
}
