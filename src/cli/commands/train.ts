import { Progress } from '../progress.js';
import { DB_OPTION, JSON_OPTION, numberOption, parse, printJson, UsageError, type Command, type Options } from '../command.js';
import { withStore } from '../../store/store.js';
import { BACKENDS, initBackend } from '../../model/backend.js';
import { backendOption, lossFromFlags } from '../model-options.js';
import { hasCheckpoint } from '../../model/checkpoint.js';
import { StoreMetrics } from '../../train/metrics.js';
import { DEFAULT_SFT_OPTIONS, readSftData, runSft, SftTrainer, type SftOptions } from '../../train/sft.js';
import { autoWorkers } from '../../train/parallel.js';
import {
  DEFAULT_LOSS_CONFIG, NORMALIZE_MODES, PPL_SOURCES, REF_WEIGHT_MODES,
} from '../../train/loss.js';
import {
  DEFAULT_PREFERENCE_OPTIONS, PreferenceTrainer, runPreference, type PreferenceObjective, type PreferenceOptions,
} from '../../train/preference.js';
import { openShardSet } from '../../shard/read.js';

/** Options every objective takes. */
const COMMON_OPTIONS = {
  ...DB_OPTION,
  ...JSON_OPTION,  // the summary is always one JSON object on stdout; --json is accepted for symmetry
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
  workers: { type: 'string', default: 'auto' },
} as const satisfies Options;

type Values = Record<string, string | boolean | undefined>;

interface Objective {
  usage: string;
  options: Options;
  run(values: Values): Promise<number>;
}


/** One entry per training objective: its own options (beyond COMMON_OPTIONS) and how to run it. */
const OBJECTIVES: Record<string, Objective> = {
  sft: {
    usage: 'aspo train --objective sft --data DIR|sft.jsonl --out CHECKPOINT_DIR [--eval eval.jsonl] [--db PATH]\n' +
      '                  [--steps N | --epochs N] [--batch-size N] [--lr X] [--seed N] [--backend NAME] [--resume]\n' +
      '                  [--width N] [--layers N] [--heads N] [--context N] [--mlp-ratio N] [--vocab-size N] [--workers N|auto]',
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
      'image-heads': { type: 'string' },
    },
    run: runSftCommand,
  },
  dpo: preferenceObjective('dpo'),
  aspo: preferenceObjective('aspo'),
};

const USAGE = Object.values(OBJECTIVES).map((o) => o.usage).join('\n') + '\n\n' +
  '  Supervised fine-tuning (sft) trains the small vision-language model on (image, prompt, true response) rows;\n' +
  '  the checkpoint it writes is the reference model for sentence-level preference training.\n\n' +
  '  --data PATH        sft.jsonl, or a dataset folder holding sft.jsonl (and eval.jsonl, used unless --eval is given)\n' +
  '  --eval FILE        eval.jsonl with "probes" [{"true", "false"}]: held-out loss and sentence accuracy\n' +
  '  --out DIR          checkpoint folder, written atomically at the end and every --save-every steps\n' +
  '  --resume           continue the run saved in --out (weights, optimizer, step and options as saved)\n' +
  `  --steps N          optimizer steps (default: --epochs ${DEFAULT_SFT_OPTIONS.epochs} passes over the data)\n` +
  `  --batch-size N     rows per step (default ${DEFAULT_SFT_OPTIONS.batchSize})\n` +
  `  --lr X             peak learning rate of AdamW, after --warmup-steps ${DEFAULT_SFT_OPTIONS.warmupSteps}, cosine decay (default ${DEFAULT_SFT_OPTIONS.lr})\n` +
  `  --seed N           weights, data order and updates depend only on the seed (default ${DEFAULT_SFT_OPTIONS.seed})\n` +
  `  --backend NAME     auto (default) or one of ${BACKENDS.join(', ')}\n` +
  `  --width/--layers/--heads/--context/--mlp-ratio   model shape (default ${DEFAULT_SFT_OPTIONS.model.width}/${DEFAULT_SFT_OPTIONS.model.layers}/` +
  `${DEFAULT_SFT_OPTIONS.model.heads}/${DEFAULT_SFT_OPTIONS.model.context}/${DEFAULT_SFT_OPTIONS.model.mlpRatio}; context counts ${(DEFAULT_SFT_OPTIONS.model.imageSize / DEFAULT_SFT_OPTIONS.model.patchSize) ** 2} visual tokens)\n` +
  `  --stem-channels N  channels of the convolutional image stem; 0 projects raw patches (default ${DEFAULT_SFT_OPTIONS.model.stemChannels})\n` +
  `  --image-heads N    heads per layer that attend to the visual tokens only, at most --heads (default: half of --heads, ${Math.floor(DEFAULT_SFT_OPTIONS.model.heads / 2)})\n` +
  `  --vocab-size N     tokenizer vocabulary cap (default ${DEFAULT_SFT_OPTIONS.vocabSize})\n` +
  '  --workers N|auto   extra threads that compute gradients on shards of each batch (data parallelism; every\n' +
  '                     objective); auto (default): one per spare core on the wasm and cpu backends, none on native TensorFlow\n' +
  `  --eval-every/--save-every/--log-every N   steps (default ${DEFAULT_SFT_OPTIONS.evalEvery}/${DEFAULT_SFT_OPTIONS.saveEvery}/${DEFAULT_SFT_OPTIONS.logEvery})\n\n` +
  '  Preference training (dpo, aspo) starts the policy from the --ref checkpoint and trains on the pairs of a shard\n' +
  '  set (`aspo shard`); aspo weights each sentence of the chosen response (sentence-level preference optimization).\n\n' +
  '  --shards DIR       shard set folder; its tokenizer must be the --ref checkpoint\'s (checked)\n' +
  '  --ref DIR          reference checkpoint (e.g. the SFT one); its log-probs come from the shards when they hold\n' +
  '                     them for this model, otherwise from a forward pass of it every step\n' +
  `  --beta X           DPO temperature (default ${DEFAULT_LOSS_CONFIG.beta})\n` +
  `  --alpha X          aspo: similarity vs perplexity in the sentence weight, in [0, 1] (default ${DEFAULT_LOSS_CONFIG.alpha}; 0 needs no similarity)\n` +
  `  --scale X          aspo: λ in the sentence multiplier 1 + λ·w (default ${DEFAULT_LOSS_CONFIG.scale}; 0 gives DPO)\n` +
  `  --normalize MODE   aspo: ${NORMALIZE_MODES.join(' | ')} (default ${DEFAULT_LOSS_CONFIG.normalize})\n` +
  `  --detach-weights B aspo: true | false, stop the gradient through the sentence weights (default ${DEFAULT_LOSS_CONFIG.detachWeights})\n` +
  `  --ref-weights MODE aspo: ${REF_WEIGHT_MODES.join(' | ')} (default ${DEFAULT_LOSS_CONFIG.refWeights})\n` +
  `  --ppl-source SRC   aspo: ${PPL_SOURCES.join(' | ')} (default ${DEFAULT_LOSS_CONFIG.pplSource})\n` +
  '  --probes FILE      eval.jsonl with "probes": held-out sentence accuracy at each evaluation\n' +
  `  defaults for dpo/aspo: --lr ${DEFAULT_PREFERENCE_OPTIONS.lr}, --warmup-steps ${DEFAULT_PREFERENCE_OPTIONS.warmupSteps}, --epochs ${DEFAULT_PREFERENCE_OPTIONS.epochs}, --batch-size ${DEFAULT_PREFERENCE_OPTIONS.batchSize} pairs,\n` +
  `    --weight-decay ${DEFAULT_PREFERENCE_OPTIONS.weightDecay}, --clip-norm ${DEFAULT_PREFERENCE_OPTIONS.clipNorm}, --eval-every/--save-every/--log-every ${DEFAULT_PREFERENCE_OPTIONS.evalEvery}/${DEFAULT_PREFERENCE_OPTIONS.saveEvery}/${DEFAULT_PREFERENCE_OPTIONS.logEvery}\n\n` +
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
  const heads = integer(values, 'heads', DEFAULT_SFT_OPTIONS.model.heads);
  const model = {
    ...DEFAULT_SFT_OPTIONS.model,
    width: integer(values, 'width', DEFAULT_SFT_OPTIONS.model.width),
    layers: integer(values, 'layers', DEFAULT_SFT_OPTIONS.model.layers),
    heads,
    context: integer(values, 'context', DEFAULT_SFT_OPTIONS.model.context),
    mlpRatio: integer(values, 'mlp-ratio', DEFAULT_SFT_OPTIONS.model.mlpRatio),
    patchSize: integer(values, 'patch-size', DEFAULT_SFT_OPTIONS.model.patchSize),
    imageSize: integer(values, 'image-size', DEFAULT_SFT_OPTIONS.model.imageSize),
    stemChannels: integer(values, 'stem-channels', DEFAULT_SFT_OPTIONS.model.stemChannels, 0),
    // by default half the heads (2 of the default 4) read the image only; the rest keep the text
    imageHeads: integer(values, 'image-heads', Math.floor(heads / 2), 0),
  };
  return {
    data: values.data as string,
    eval: values.eval as string | undefined,
    out: values.out as string,
    steps: values.steps === undefined ? undefined : integer(values, 'steps', 0),
    epochs: integer(values, 'epochs', DEFAULT_SFT_OPTIONS.epochs),
    batchSize: integer(values, 'batch-size', DEFAULT_SFT_OPTIONS.batchSize),
    lr: positive(values, 'lr', DEFAULT_SFT_OPTIONS.lr),
    warmupSteps: integer(values, 'warmup-steps', DEFAULT_SFT_OPTIONS.warmupSteps, 0),
    minLrRatio: DEFAULT_SFT_OPTIONS.minLrRatio,
    weightDecay: positive(values, 'weight-decay', DEFAULT_SFT_OPTIONS.weightDecay, true),
    clipNorm: positive(values, 'clip-norm', DEFAULT_SFT_OPTIONS.clipNorm, true),
    seed: integer(values, 'seed', DEFAULT_SFT_OPTIONS.seed, 0),
    model,
    vocabSize: integer(values, 'vocab-size', DEFAULT_SFT_OPTIONS.vocabSize),
    evalEvery: integer(values, 'eval-every', DEFAULT_SFT_OPTIONS.evalEvery, 0),
    saveEvery: integer(values, 'save-every', DEFAULT_SFT_OPTIONS.saveEvery, 0),
    logEvery: integer(values, 'log-every', DEFAULT_SFT_OPTIONS.logEvery),
  };
}

async function runSftCommand(values: Values): Promise<number> {
  const resume = await checkOut(values);
  const options = resume ? undefined : sftOptions(values);
  const backend = await startBackend(values);
  const trainer = resume
    ? await SftTrainer.resume(values.out as string)
    : await SftTrainer.create(options!, await readSftData(options!.data, options!.eval));
  if (trainer.step >= trainer.totalSteps) {
    process.stderr.write(`train: run ${trainer.runId} in ${values.out} already finished (step ${trainer.step} of ${trainer.totalSteps})\n`);
    trainer.dispose();
    return 0;
  }
  const workers = workerCount(values, backend);
  await trainer.useWorkers(workers, backend);
  if (trainer.skipped.length) {
    process.stderr.write(`train: ${trainer.skipped.length} rows skipped: longer than the model's text context (raise --context)\n`);
  }
  process.stderr.write(`train: run ${trainer.runId}, ${trainer.model.parameterCount.toLocaleString('en-US')} parameters, ` +
    `${trainer.tokenizer.vocabSize} tokens, ${trainer.trainRows} rows, step ${trainer.step} of ${trainer.totalSteps}` +
    `, ${threadsNote(workers)}\n`);
  const progress = new Progress({ label: 'train', total: trainer.totalSteps - trainer.step, unit: 'steps' });
  let accuracy = '';
  let tokens = 0;
  // disposed on failure too: a live gradient worker would keep the process running
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
  })).finally(() => trainer.dispose());
  progress.done(`${result.steps} steps, loss ${result.finalLoss.toFixed(3)}` +
    (result.eval ? `, held-out sentence accuracy ${(100 * result.eval.sentenceAccuracy).toFixed(1)}% (${result.eval.probes} probes)` : '') +
    `, ${Math.round(result.tokensPerSecond).toLocaleString('en-US')} tok/s in ${result.seconds.toFixed(1)} s → ${values.out}`);
  printJson({ ...result, backend, checkpoint: values.out });
  return 0;
}

/** The dpo and aspo objectives: the same options; the objective fixes the loss type. */
function preferenceObjective(objective: PreferenceObjective): Objective {
  return {
    usage: `aspo train --objective ${objective} --shards DIR --ref CHECKPOINT_DIR --out CHECKPOINT_DIR [--db PATH] [--probes eval.jsonl]\n` +
      (objective === 'aspo' ? '                  [--beta X] [--alpha X] [--scale X] [--normalize none|mass] [--detach-weights true|false]\n' +
        '                  [--ref-weights shared|own] [--ppl-source policy|reference]\n' : '                  [--beta X]\n') +
      '                  [--steps N | --epochs N] [--batch-size N] [--lr X] [--warmup-steps N] [--clip-norm X] [--weight-decay X]\n' +
      '                  [--seed N] [--eval-every N] [--save-every N] [--log-every N] [--backend NAME] [--resume] [--workers N|auto]',
    options: {
      shards: { type: 'string' },
      ref: { type: 'string' },
      probes: { type: 'string' },
      beta: { type: 'string' },
      ...(objective === 'aspo' ? {
        alpha: { type: 'string' },
        scale: { type: 'string' },
        normalize: { type: 'string' },
        'detach-weights': { type: 'string' },
        'ref-weights': { type: 'string' },
        'ppl-source': { type: 'string' },
      } : {}),
    },
    run: (values) => runPreferenceCommand(objective, values),
  };
}

function preferenceOptions(objective: PreferenceObjective, values: Values): PreferenceOptions {
  if (!values.shards) throw new UsageError('give --shards DIR (a shard set written by `aspo shard`)');
  if (!values.ref) throw new UsageError('give --ref CHECKPOINT_DIR (the reference model, e.g. the SFT checkpoint)');
  return {
    objective,
    shards: values.shards as string,
    ref: values.ref as string,
    out: values.out as string,
    probes: values.probes as string | undefined,
    loss: lossFromFlags(values, { lossType: objective }),
    steps: values.steps === undefined ? undefined : integer(values, 'steps', 0),
    epochs: integer(values, 'epochs', DEFAULT_PREFERENCE_OPTIONS.epochs),
    batchSize: integer(values, 'batch-size', DEFAULT_PREFERENCE_OPTIONS.batchSize),
    lr: positive(values, 'lr', DEFAULT_PREFERENCE_OPTIONS.lr),
    warmupSteps: integer(values, 'warmup-steps', DEFAULT_PREFERENCE_OPTIONS.warmupSteps, 0),
    minLrRatio: DEFAULT_PREFERENCE_OPTIONS.minLrRatio,
    weightDecay: positive(values, 'weight-decay', DEFAULT_PREFERENCE_OPTIONS.weightDecay, true),
    clipNorm: positive(values, 'clip-norm', DEFAULT_PREFERENCE_OPTIONS.clipNorm, true),
    seed: integer(values, 'seed', DEFAULT_PREFERENCE_OPTIONS.seed, 0),
    evalEvery: integer(values, 'eval-every', DEFAULT_PREFERENCE_OPTIONS.evalEvery, 0),
    saveEvery: integer(values, 'save-every', DEFAULT_PREFERENCE_OPTIONS.saveEvery, 0),
    logEvery: integer(values, 'log-every', DEFAULT_PREFERENCE_OPTIONS.logEvery),
  };
}

async function runPreferenceCommand(objective: PreferenceObjective, values: Values): Promise<number> {
  const resume = await checkOut(values);
  const options = resume ? undefined : preferenceOptions(objective, values);
  const backend = await startBackend(values);
  const trainer = resume
    ? await PreferenceTrainer.resume(values.out as string, openShardSet)
    : await PreferenceTrainer.create(options!, await openShardSet(options!.shards));
  if (trainer.options.objective !== objective) {
    trainer.dispose();
    throw new UsageError(`${values.out} holds a ${trainer.options.objective} run; resume it with --objective ${trainer.options.objective}`);
  }
  if (trainer.step >= trainer.totalSteps) {
    process.stderr.write(`train: run ${trainer.runId} in ${values.out} already finished (step ${trainer.step} of ${trainer.totalSteps})\n`);
    trainer.dispose();
    return 0;
  }
  const workers = workerCount(values, backend);
  await trainer.useWorkers(workers, backend);
  const { loss } = trainer.options;
  process.stderr.write(`train: reference log-probs ${trainer.refSource === 'shards'
    ? `stored in the shards (for ${trainer.referenceModel})` : `from a forward pass of ${trainer.referenceModel} each step (the shards hold none for it)`}\n`);
  if (trainer.skipped) process.stderr.write(`train: ${trainer.skipped} pairs skipped: longer than the model's text context\n`);
  const lossSummary = objective === 'dpo' ? `beta ${loss.beta}`
    : Object.entries(loss).filter(([k]) => k !== 'lossType').map(([k, v]) => `${k} ${v}`).join(', ');
  process.stderr.write(`train: run ${trainer.runId}, ${objective} (${lossSummary}), ${trainer.trainPairs} training pairs, ` +
    `${trainer.evalPairCount} eval pairs, ` +
    `step ${trainer.step} of ${trainer.totalSteps}, ${threadsNote(workers)}\n`);
  const progress = new Progress({ label: 'train', total: trainer.totalSteps - trainer.step, unit: 'steps' });
  let evalNote = '';
  let pairs = 0;
  // disposed on failure too: a live gradient worker would keep the process running
  const result = await withStore(values.db as string, async (store) => runPreference(trainer, {
    metrics: new StoreMetrics(store),
    backend,
    onStep: (stats) => {
      pairs += stats.pairs;
      progress.tick(1, `loss ${stats.metrics.loss.toFixed(3)} acc ${(100 * stats.metrics['rewards/accuracies']).toFixed(0)}% ` +
        `${(pairs / progress.seconds).toFixed(1)} pairs/s${evalNote}`);
    },
    onEval: (stats, at) => {
      const parts = [];
      if (stats.pairs) {
        parts.push(`eval loss ${stats.metrics.loss!.toFixed(3)}, reward accuracy ${(100 * stats.metrics['rewards/accuracies']!).toFixed(1)}% ` +
          `(${stats.pairs} pairs)`);
      }
      if (stats.sentenceAccuracy !== undefined) parts.push(`sentence accuracy ${(100 * stats.sentenceAccuracy).toFixed(1)}% (${stats.probes} probes)`);
      evalNote = stats.pairs ? ` eval acc ${(100 * stats.metrics['rewards/accuracies']!).toFixed(0)}%` : '';
      process.stderr.write(`\rtrain: step ${at.step}: ${parts.join(', ')}\x1b[K\n`);
    },
  })).finally(() => trainer.dispose());
  progress.done(`${result.steps} steps, loss ${result.train.loss?.toFixed(3)}` +
    (result.eval?.pairs ? `, eval reward accuracy ${(100 * result.eval.metrics['rewards/accuracies']!).toFixed(1)}%` : '') +
    `, ${result.pairsPerSecond.toFixed(1)} pairs/s in ${result.seconds.toFixed(1)} s → ${values.out}`);
  printJson({ ...result, backend, checkpoint: values.out });
  return 0;
}

/** Extra gradient workers for --workers N|auto on `backend`. */
function workerCount(values: Values, backend: string): number {
  return values.workers === 'auto' ? autoWorkers(backend) : integer(values, 'workers', 0, 0);
}

function threadsNote(workers: number): string {
  return workers ? `${workers + 1} threads (${workers} gradient worker${workers > 1 ? 's' : ''})` : '1 thread';
}

/** Checks --out against --resume; returns whether the run resumes. */
async function checkOut(values: Values): Promise<boolean> {
  if (!values.out) throw new UsageError('give --out CHECKPOINT_DIR');
  const resume = Boolean(values.resume);
  if (!resume && await hasCheckpoint(values.out as string)) {
    throw new UsageError(`${values.out} already holds a checkpoint; pass --resume to continue it, or choose another --out`);
  }
  return resume;
}

/** Loads the TensorFlow.js backend --backend asks for and says which. */
async function startBackend(values: Values): Promise<string> {
  const backend = await initBackend(backendOption(values.backend as string | undefined));
  process.stderr.write(`train: TensorFlow.js backend ${backend}\n`);
  return backend;
}
