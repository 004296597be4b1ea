import { Progress } from '../progress.js';
import { DB_OPTION, numberOption, parse, UsageError, type Command, type Options } from '../command.js';
import { withStore } from '../../store/store.js';
import { BACKENDS, initBackend, type BackendName } from '../../train/backend.js';
import { hasCheckpoint } from '../../train/checkpoint.js';
import { StoreMetrics } from '../../train/metrics.js';
import { DEFAULT_SFT_OPTIONS, readSftData, runSft, SftTrainer, type SftOptions } from '../../train/sft.js';

/** Options every objective takes. */
const COMMON_OPTIONS = {
  ...DB_OPTION,
  objective: { type: 'string' },
  out: { type: 'string' },
  steps: { type: 'string' },
  epochs: { type: 'string' },
  'batch-size': { type: 'string' },
  lr: { type: 'string' },
  'warmup-steps': { type: 'string' },
  'weight-decay': { type: 'string' },
  'clip-norm': { type: 'string' },
  seed: { type: 'string' },
  backend: { type: 'string', default: 'auto' },
  'eval-every': { type: 'string' },
  'save-every': { type: 'string' },
  'log-every': { type: 'string' },
  resume: { type: 'boolean', default: false },
} as const satisfies Options;

type Values = Record<string, string | boolean | undefined>;

interface Objective {
  usage: string;
  options: Options;
  run(values: Values): Promise<number>;
}

const d = DEFAULT_SFT_OPTIONS;

/** One entry per training objective: its own options (beyond COMMON_OPTIONS) and how to run it. */
const OBJECTIVES: Record<string, Objective> = {
  sft: {
    usage: 'aspo train --objective sft --data DIR|sft.jsonl --out CHECKPOINT_DIR [--eval eval.jsonl] [--db PATH]\n' +
      '                  [--steps N | --epochs N] [--batch-size N] [--lr X] [--seed N] [--backend NAME] [--resume]\n' +
      '                  [--width N] [--layers N] [--heads N] [--context N] [--mlp-ratio N] [--vocab-size N]',
    options: {
      data: { type: 'string' },
      eval: { type: 'string' },
      width: { type: 'string' },
      layers: { type: 'string' },
      heads: { type: 'string' },
      context: { type: 'string' },
      'mlp-ratio': { type: 'string' },
      'patch-size': { type: 'string' },
      'image-size': { type: 'string' },
      'vocab-size': { type: 'string' },
      'stem-channels': { type: 'string' },
    },
    run: runSftCommand,
  },
};

const USAGE = Object.values(OBJECTIVES).map((o) => o.usage).join('\n') + '\n\n' +
  '  Supervised fine-tuning (sft) trains the small vision-language model on (image, prompt, true response) rows;\n' +
  '  the checkpoint it writes is the reference model for sentence-level preference training.\n\n' +
  '  --data PATH        sft.jsonl, or a dataset folder holding sft.jsonl (and eval.jsonl, used unless --eval is given)\n' +
  '  --eval FILE        eval.jsonl with "probes" [{"true", "false"}]: held-out loss and sentence accuracy\n' +
  '  --out DIR          checkpoint folder, written atomically at the end and every --save-every steps\n' +
  '  --resume           continue the run saved in --out (weights, optimizer, step and options as saved)\n' +
  `  --steps N          optimizer steps (default: --epochs ${d.epochs} passes over the data)\n` +
  `  --batch-size N     rows per step (default ${d.batchSize})\n` +
  `  --lr X             peak learning rate of AdamW, after --warmup-steps ${d.warmupSteps}, cosine decay (default ${d.lr})\n` +
  `  --seed N           weights, data order and updates depend only on the seed (default ${d.seed})\n` +
  `  --backend NAME     auto (default) or one of ${BACKENDS.join(', ')}\n` +
  `  --width/--layers/--heads/--context/--mlp-ratio   model shape (default ${d.model.width}/${d.model.layers}/` +
  `${d.model.heads}/${d.model.context}/${d.model.mlpRatio}; context counts ${(d.model.imageSize / d.model.patchSize) ** 2} visual tokens)\n` +
  `  --stem-channels N  channels of the convolutional image stem; 0 projects raw patches (default ${d.model.stemChannels})\n` +
  `  --vocab-size N     tokenizer vocabulary cap (default ${d.vocabSize})\n` +
  `  --eval-every/--save-every/--log-every N   steps (default ${d.evalEvery}/${d.saveEvery}/${d.logEvery})\n\n` +
  '  Metrics go to the runs and train_metrics tables of --db and to a progress bar on stderr; the summary is\n' +
  '  printed to stdout as one JSON line.';

/** Finds --objective before the objective-specific options are known. */
function objectiveOf(argv: string[]): string {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--objective') return argv[i + 1] ?? '';
    if (arg.startsWith('--objective=')) return arg.slice('--objective='.length);
  }
  throw new UsageError(`give --objective (${Object.keys(OBJECTIVES).join(', ')})`);
}

export const command: Command = {
  usage: USAGE,
  async run(argv) {
    const name = objectiveOf(argv);
    const objective = OBJECTIVES[name];
    if (!objective) throw new UsageError(`--objective must be one of ${Object.keys(OBJECTIVES).join(', ')}, got "${name}"`);
    const { values } = parse(argv, { ...COMMON_OPTIONS, ...objective.options });
    return objective.run(values as Values);
  },
};

function integer(values: Values, name: string, fallback: number, min = 1): number {
  const n = numberOption(values[name] as string | undefined, name, fallback);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer ≥ ${min}, got ${values[name]}`);
  return n;
}

function positive(values: Values, name: string, fallback: number, allowZero = false): number {
  const n = numberOption(values[name] as string | undefined, name, fallback);
  if (n < 0 || (!allowZero && n === 0)) throw new UsageError(`--${name} must be ${allowZero ? '≥ 0' : '> 0'}, got ${values[name]}`);
  return n;
}

function sftOptions(values: Values): SftOptions {
  if (!values.data) throw new UsageError('give --data (a dataset folder or an sft.jsonl file)');
  const model = {
    ...d.model,
    width: integer(values, 'width', d.model.width),
    layers: integer(values, 'layers', d.model.layers),
    heads: integer(values, 'heads', d.model.heads),
    context: integer(values, 'context', d.model.context),
    mlpRatio: integer(values, 'mlp-ratio', d.model.mlpRatio),
    patchSize: integer(values, 'patch-size', d.model.patchSize),
    imageSize: integer(values, 'image-size', d.model.imageSize),
    stemChannels: integer(values, 'stem-channels', d.model.stemChannels, 0),
  };
  return {
    data: values.data as string,
    eval: values.eval as string | undefined,
    out: values.out as string,
    steps: values.steps === undefined ? undefined : integer(values, 'steps', 0),
    epochs: integer(values, 'epochs', d.epochs),
    batchSize: integer(values, 'batch-size', d.batchSize),
    lr: positive(values, 'lr', d.lr),
    warmupSteps: integer(values, 'warmup-steps', d.warmupSteps, 0),
    minLrRatio: d.minLrRatio,
    weightDecay: positive(values, 'weight-decay', d.weightDecay, true),
    clipNorm: positive(values, 'clip-norm', d.clipNorm, true),
    seed: integer(values, 'seed', d.seed, 0),
    model,
    vocabSize: integer(values, 'vocab-size', d.vocabSize),
    evalEvery: integer(values, 'eval-every', d.evalEvery, 0),
    saveEvery: integer(values, 'save-every', d.saveEvery, 0),
    logEvery: integer(values, 'log-every', d.logEvery),
  };
}

async function runSftCommand(values: Values): Promise<number> {
  if (!values.out) throw new UsageError('give --out CHECKPOINT_DIR');
  const requested = values.backend as BackendName;
  if (requested !== 'auto' && !BACKENDS.includes(requested as never)) {
    throw new UsageError(`--backend must be auto or one of ${BACKENDS.join(', ')}, got "${requested}"`);
  }
  const resume = Boolean(values.resume);
  if (!resume && await hasCheckpoint(values.out as string)) {
    throw new UsageError(`${values.out} already holds a checkpoint; pass --resume to continue it, or choose another --out`);
  }
  const options = resume ? undefined : sftOptions(values);
  const backend = await initBackend(requested);
  process.stderr.write(`train: TensorFlow.js backend ${backend}\n`);
  const trainer = resume
    ? await SftTrainer.resume(values.out as string)
    : await SftTrainer.create(options!, await readSftData(options!.data, options!.eval));
  if (trainer.step >= trainer.totalSteps) {
    process.stderr.write(`train: run ${trainer.runId} in ${values.out} already finished (step ${trainer.step} of ${trainer.totalSteps})\n`);
    trainer.dispose();
    return 0;
  }
  if (trainer.skipped.length) {
    process.stderr.write(`train: ${trainer.skipped.length} rows skipped: longer than the model's text context (raise --context)\n`);
  }
  process.stderr.write(`train: run ${trainer.runId}, ${trainer.model.parameterCount.toLocaleString('en-US')} parameters, ` +
    `${trainer.tokenizer.vocabSize} tokens, ${trainer.trainRows} rows, step ${trainer.step} of ${trainer.totalSteps}\n`);
  const progress = new Progress({ label: 'train', total: trainer.totalSteps - trainer.step, unit: 'steps' });
  let accuracy = '';
  let tokens = 0;
  const result = await withStore(values.db as string, async (store) => runSft(trainer, {
    metrics: new StoreMetrics(store),
    backend,
    onStep: (stats) => {
      tokens += stats.tokens;
      progress.tick(1, `loss ${stats.loss.toFixed(3)} ${Math.round(tokens / progress.seconds).toLocaleString('en-US')} tok/s${accuracy}`);
    },
    onEval: (stats, at) => {
      accuracy = ` eval acc ${(100 * stats.sentenceAccuracy).toFixed(1)}%`;
      process.stderr.write(`\rtrain: step ${at.step}: eval loss ${stats.loss.toFixed(3)}, sentence accuracy ` +
        `${(100 * stats.sentenceAccuracy).toFixed(1)}% (${stats.probes} probes), ${Math.round(tokens / progress.seconds)} tok/s\x1b[K\n`);
    },
  }));
  trainer.dispose();
  progress.done(`${result.steps} steps, loss ${result.finalLoss.toFixed(3)}` +
    (result.eval ? `, held-out sentence accuracy ${(100 * result.eval.sentenceAccuracy).toFixed(1)}% (${result.eval.probes} probes)` : '') +
    `, ${Math.round(result.tokensPerSecond).toLocaleString('en-US')} tok/s in ${result.seconds.toFixed(1)} s → ${values.out}`);
  process.stdout.write(JSON.stringify({ ...result, backend, checkpoint: values.out }) + '\n');
  return 0;
}
