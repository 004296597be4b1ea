import { withStore } from '../../store/store.js';
import { openShardSet } from '../../shard/read.js';
import { loadModel, type LoadedModel } from '../../model/checkpoint.js';
import {
  DEFAULT_REWARDS_BATCH_SIZE, REWARD_SPLITS, savedLossConfig, writeSentenceRewards, type RewardSplit,
} from '../../rewards/rewards.js';
import { DEFAULT_LOSS_CONFIG, LOSS_TYPES, type AspoLossConfig } from '../../train/loss.js';
import { BACKENDS, initBackend } from '../../model/backend.js';
import { backendOption, LOSS_FLAGS, lossFromFlags } from '../model-options.js';
import { Progress } from '../progress.js';
import { DB_OPTION, numberOption, parse, UsageError, type Command } from '../command.js';

export const command: Command = {
  usage: 'aspo rewards --policy CHECKPOINT --ref CHECKPOINT --shards DIR [--db PATH] [--split train|eval|all]\n' +
    '             [--objective aspo|dpo] [--beta X] [--alpha X] [--scale X] [--normalize none|mass]\n' +
    '             [--ref-weights shared|own] [--ppl-source policy|reference] [--batch-size N] [--backend NAME]\n\n' +
    '  Writes the implicit reward of every sentence of both responses of each pair under a trained policy to the\n' +
    '  sentence_rewards table (view sentence_rewards_text adds the sentence text): multiplier · β · Σ (log π_θ − log π_ref)\n' +
    '  over the sentence\'s tokens, with the sentence-level (ASPO) multipliers of the trainer on chosen sentences and\n' +
    '  multiplier 1 on rejected ones. Reference log-probs come from the shards when they were written with this very\n' +
    '  reference model, else from running it. A re-run for the same policy replaces its rows.\n' +
    '  --split        pairs of the train split, the eval split, or both (default all)\n' +
    '  --objective, --beta, --alpha, --scale, --normalize, --ref-weights, --ppl-source: the loss options (default:\n' +
    '                 those the policy was trained with, from its checkpoint, else the spec defaults)\n' +
    `  --batch-size   pairs per model call and per transaction (default ${DEFAULT_REWARDS_BATCH_SIZE})\n` +
    `  --backend      the TensorFlow.js backend: auto (default) or one of ${BACKENDS.join(', ')}\n` +
    '  Progress goes to stderr; a JSON summary (pairs, sentences, mean rewards, the most penalised sentence) to stdout.',
  async run(argv) {
    const { values } = parse(argv, {
      ...DB_OPTION,
      policy: { type: 'string' },
      ref: { type: 'string' },
      shards: { type: 'string' },
      split: { type: 'string', default: 'all' },
      objective: { type: 'string' },
      beta: { type: 'string' },
      alpha: { type: 'string' },
      scale: { type: 'string' },
      normalize: { type: 'string' },
      'ref-weights': { type: 'string' },
      'ppl-source': { type: 'string' },
      'batch-size': { type: 'string' },
      backend: { type: 'string', default: 'auto' },
    });
    for (const name of ['policy', 'ref', 'shards'] as const) {
      if (!values[name]) throw new UsageError(`--${name} is required`);
    }
    const split = values.split as RewardSplit;
    if (!REWARD_SPLITS.includes(split)) throw new UsageError(`--split must be one of ${REWARD_SPLITS.join(', ')}, got "${values.split}"`);
    const backend = backendOption(values.backend);
    const batchSize = numberOption(values['batch-size'], 'batch-size', DEFAULT_REWARDS_BATCH_SIZE);
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError('--batch-size must be a positive integer');
    if (values.objective !== undefined && !(LOSS_TYPES as readonly string[]).includes(values.objective)) {
      throw new UsageError(`--objective must be one of ${LOSS_TYPES.join(', ')}, got "${values.objective}"`);
    }
    let saved: AspoLossConfig | undefined;
    try {
      saved = await savedLossConfig(values.policy!);
    } catch (error) {
      throw new UsageError(`--policy: ${(error as Error).message}`);
    }
    const config = lossFromFlags(values, {
      ...(saved ?? DEFAULT_LOSS_CONFIG), ...(values.objective === undefined ? {} : { lossType: values.objective as AspoLossConfig['lossType'] }),
    });

    await initBackend(backend);
    const load = async (flag: string, dir: string): Promise<LoadedModel> => {
      try {
        return await loadModel(dir);
      } catch (error) {
        throw new UsageError(`--${flag}: ${(error as Error).message}`);
      }
    };
    const shards = await openShardSet(values.shards!).catch((error: Error) => {
      throw new UsageError(`--shards: ${error.message}`);
    });
    await shards.verify().catch((error: Error) => {
      throw new UsageError(`--shards: ${error.message}`);
    });
    const policy = await load('policy', values.policy!);
    let ref: LoadedModel | undefined;
    try {
      ref = await load('ref', values.ref!);
      process.stderr.write(`rewards: policy ${policy.modelId}, reference ${ref.modelId}; loss options ` +
        `${saved ? 'from the policy checkpoint' : 'defaults'}${Object.values(LOSS_FLAGS).some((flag) => (values as Record<string, unknown>)[flag] !== undefined) ? ' with command-line overrides' : ''}: ` +
        `${JSON.stringify(config)}; reference log-probs ` +
        `${shards.manifest.referenceModel === ref.modelId ? 'from the shards' : 'from running the reference model'}\n`);
      const progress = new Progress({ label: 'rewards', unit: 'pairs' });
      const reference = ref;
      const summary = await withStore(values.db, (store) => writeSentenceRewards(store, shards, {
        policy, ref: reference, config, split, batchSize,
        onStart: ({ pairs }) => progress.setTotal(pairs),
        onBatch: ({ pairs }) => progress.at(pairs),
      }));
      progress.done(`${summary.sentences} sentences of ${summary.pairs} pairs in ${summary.seconds.toFixed(1)} s; ` +
        `reference log-probs of ${summary.refLogps.fromShards} pairs from the shards, ${summary.refLogps.fromModel} from the model; ` +
        `${summary.tooLong} pairs longer than the model's context skipped`);
      process.stdout.write(JSON.stringify(summary) + '\n');
    } finally {
      policy.model.dispose();
      ref?.model.dispose();
    }
    return 0;
  },
};
