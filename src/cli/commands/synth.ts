import { resolveSynthOptions, synthesize, SYNTH_DEFAULTS, SynthOptionError, type SynthOptions } from '../../synth/synthesize.js';
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

export const command: Command = {
  usage: 'aspo synth --out DIR [--seed N] [--images N] [--eval-images N] [--noise P] [--size PX] [--force]\n\n' +
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
    '  images/ and eval/images/. See docs/synth.md.',
  async run(argv) {
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
