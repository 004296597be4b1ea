/**
 * Preference training (DPO, and sentence-level ASPO) of the vision-language model from prepared shards.
 * The policy starts from the reference checkpoint; each step runs the policy over the chosen and
 * rejected responses of a batch (one forward pass over both), takes the reference log-probs from the
 * shards or from a forward pass of the frozen reference model, and optimises `aspoLoss`.
 * Deterministic like SFT: data order and updates are functions of the seed, so a resumed run ends
 * with exactly the weights of an uninterrupted one.
 */
import path from 'node:path';
import { tf } from '../model/backend.js';
import type { Tokenizer } from '../model/tokenizer.js';
import { textContext, VisionLanguageModel } from '../model/model.js';
import { AdamW, DEFAULT_ADAMW } from './optimizer.js';
import { loadCheckpoint, loadModel, saveCheckpoint, type OptimizerState } from '../model/checkpoint.js';
import { PixelCache, stackImages } from '../model/images.js';
import {
  addMetricSums, aspoLoss, buildLayout, lossForward, lossMetrics, lossMetricSums, metricsOfSums,
  type AspoLossConfig, type BatchLayout, type LossInputs, type LossMetrics, type LossValues,
} from './loss.js';
import { combineShards, evenSlices, GradientWorkers, type ShardGradient } from './parallel.js';
import { runLoop } from './loop.js';
import { newRunId, type MetricsSink } from './metrics.js';
import {
  batchIndices, encodeProbeRows, learningRate, probeAccuracy, readEvalFile, type ProbeRow,
} from './sft.js';
import { shardPixelCache } from '../shard/read.js';
import type { ShardPair, ShardSet, ShardSplit } from '../shard/types.js';

export const PREFERENCE_OBJECTIVES = ['dpo', 'aspo'] as const;
export type PreferenceObjective = (typeof PREFERENCE_OBJECTIVES)[number];

/** Where the reference log-probs of a run come from. */
export type RefSource = 'shards' | 'model';

export interface PreferenceOptions {
  objective: PreferenceObjective;
  /** Shard set folder (`aspo shard --out`). */
  shards: string;
  /** Reference checkpoint folder: the policy starts from its weights. */
  ref: string;
  /** Checkpoint folder written at the end and every `saveEvery` steps. */
  out: string;
  /** eval.jsonl with probes: held-out sentence accuracy, as SFT measures it. */
  probes?: string;
  /** The loss; `lossType` equals `objective`. */
  loss: AspoLossConfig;
  /** Optimizer steps; default: `epochs` passes over the training pairs. */
  steps?: number;
  epochs: number;
  /** Pairs per step. */
  batchSize: number;
  lr: number;
  warmupSteps: number;
  minLrRatio: number;
  weightDecay: number;
  clipNorm: number;
  seed: number;
  evalEvery: number;
  saveEvery: number;
  logEvery: number;
}

export const DEFAULT_PREFERENCE_OPTIONS: Omit<PreferenceOptions, 'objective' | 'shards' | 'ref' | 'out' | 'loss' | 'probes'> = {
  epochs: 2,
  batchSize: 32,
  // On the synthetic world (400 pairs, SFT reference of DEFAULT_SFT_OPTIONS): 3e-4 gave the best held-out loss and
  // reward accuracy of 1e-4, 3e-4 and 1e-3 (1e-3 over-fits within 3 epochs; see docs/train.md).
  lr: 3e-4,
  warmupSteps: 10,
  minLrRatio: 0.1,
  weightDecay: 0,
  clipNorm: DEFAULT_ADAMW.clipNorm,
  seed: 0,
  evalEvery: 50,
  saveEvery: 200,
  logEvery: 5,
};

/** Everything a preference step logs: the loss metrics, plus optimisation figures. */
export interface PreferenceStepStats {
  step: number;
  metrics: LossMetrics;
  lr: number;
  gradNorm: number;
  pairs: number;
}

export interface PreferenceEvalStats {
  /** Pair-weighted means of the loss metrics over the eval split. */
  metrics: Record<string, number>;
  pairs: number;
  /** With --probes: held-out sentence accuracy of the policy. */
  sentenceAccuracy?: number;
  probes?: number;
  /** With --probes whose entries name their kind: sentence accuracy per kind. */
  byKind?: Record<string, { accuracy: number; probes: number }>;
}

interface PreferenceState {
  step: number;
  totalSteps: number;
  runId: string;
  referenceModel: string;
  refSource: RefSource;
  options: PreferenceOptions;
}

// ---------------------------------------------------------------------------------------------------------------
// Pairs

/** Reads every pair of a split into memory (the trainer samples batches from anywhere in the split). */
export async function readSplit(set: ShardSet, split: ShardSplit): Promise<ShardPair[]> {
  const pairs: ShardPair[] = [];
  for await (const pair of set.pairs(split)) pairs.push(pair);
  return pairs;
}

/** Checks one pair's arrays agree with each other; errors name the pair and the field. */
export function checkShardPair(pair: ShardPair): void {
  const fail = (message: string): never => { throw new Error(`pair ${pair.pairId}: ${message}`); };
  for (const side of ['chosen', 'rejected'] as const) {
    const ids = side === 'chosen' ? pair.chosenIds : pair.rejectedIds;
    const sentenceIds = side === 'chosen' ? pair.chosenSentenceIds : pair.rejectedSentenceIds;
    const refLogps = side === 'chosen' ? pair.chosenRefLogps : pair.rejectedRefLogps;
    if (sentenceIds.length !== ids.length) fail(`${side}SentenceIds has ${sentenceIds.length} entries for ${ids.length} ${side}Ids`);
    if (refLogps && refLogps.length !== ids.length + 1) {
      fail(`${side}RefLogps has ${refLogps.length} entries, expected ${ids.length + 1} (one per token and EOS)`);
    }
  }
  pair.chosenSentenceIds.forEach((id, t) => {
    if (!Number.isInteger(id) || id < -1) fail(`chosenSentenceIds[${t}] must be an integer ≥ −1, got ${id}`);
  });
}

/**
 * With alpha > 0 ASPO fuses the similarity S_i of every chosen sentence that has tokens: a pair
 * without one cannot be trained on. Returns nothing; throws naming the first such pair.
 */
export function checkSimilarity(pairs: ShardPair[], config: AspoLossConfig): void {
  if (config.lossType !== 'aspo' || config.alpha === 0) return;
  for (const pair of pairs) {
    for (const id of new Set(pair.chosenSentenceIds)) {
      if (id < 0) continue;
      const s = pair.chosenSimilarity[id];
      if (s === null || s === undefined || !Number.isFinite(s)) {
        throw new Error(`pair ${pair.pairId} has no similarity for chosen sentence ${id}, but --alpha ${config.alpha} uses it: ` +
          'run `aspo score` (e.g. --similarity grounding or --clip) before `aspo shard`, or pass --alpha 0 (perplexity only)');
      }
    }
  }
}

/** A batch on the host: everything but the model outputs, as flat arrays (pure; no tensors). */
export interface HostBatch {
  pairs: number;
  /** R: response width of both sides (longest response of the batch + EOS). */
  width: number;
  imageIds: Array<string | null>;
  promptIds: number[][];
  chosenIds: number[][];
  rejectedIds: number[][];
  /** [pairs·R] sentence id per chosen column, −1 at EOS and padding. */
  chosenSentenceIds: Int32Array;
  chosenKeep: Uint8Array;
  rejectedKeep: Uint8Array;
  /** K sentence slots; similarity [pairs·K] (0 where absent), or undefined when the loss does not use it. */
  numSentences: number;
  similarity?: Float32Array;
  /** [pairs·R] stored reference log-probs per side (0 on padding), when the shards hold them. */
  chosenRefLogps?: Float32Array;
  rejectedRefLogps?: Float32Array;
}

/** Pads a list of pairs into one batch; both sides share the width R so one forward pass runs them together. */
export function collatePairs(pairs: ShardPair[], options: { similarity: boolean; storedRefs: boolean }): HostBatch {
  if (pairs.length === 0) throw new Error('collatePairs needs at least one pair');
  const width = 1 + Math.max(...pairs.map((p) => Math.max(p.chosenIds.length, p.rejectedIds.length)));
  const numSentences = Math.max(1, ...pairs.map((p) => Math.max(0, ...p.chosenSentenceIds) + 1));
  const n = pairs.length * width;
  const chosenSentenceIds = new Int32Array(n).fill(-1);
  const chosenKeep = new Uint8Array(n);
  const rejectedKeep = new Uint8Array(n);
  const chosenRef = options.storedRefs ? new Float32Array(n) : undefined;
  const rejectedRef = options.storedRefs ? new Float32Array(n) : undefined;
  const similarity = options.similarity ? new Float32Array(pairs.length * numSentences) : undefined;
  pairs.forEach((p, b) => {
    const row = b * width;
    chosenSentenceIds.set(p.chosenSentenceIds, row);
    chosenKeep.fill(1, row, row + p.chosenIds.length + 1);
    rejectedKeep.fill(1, row, row + p.rejectedIds.length + 1);
    if (chosenRef && rejectedRef) {
      if (!p.chosenRefLogps || !p.rejectedRefLogps) throw new Error(`pair ${p.pairId} has no stored reference log-probs`);
      chosenRef.set(p.chosenRefLogps, row);
      rejectedRef.set(p.rejectedRefLogps, row);
    }
    if (similarity) p.chosenSimilarity.forEach((s, k) => { if (k < numSentences) similarity[b * numSentences + k] = s ?? 0; });
  });
  return {
    pairs: pairs.length, width,
    imageIds: pairs.map((p) => p.imageId),
    promptIds: pairs.map((p) => p.promptIds),
    chosenIds: pairs.map((p) => p.chosenIds),
    rejectedIds: pairs.map((p) => p.rejectedIds),
    chosenSentenceIds, chosenKeep, rejectedKeep, numSentences, similarity,
    chosenRefLogps: chosenRef, rejectedRefLogps: rejectedRef,
  };
}

/** What a host batch needs besides the log-probs: its images as one tensor, and the loss's layout. */
interface BatchInputs {
  images: tf.Tensor4D | null;
  hasImage: boolean[];
  layout: BatchLayout;
}

/** A batch's pairs together with their images' pixels: what a gradient worker needs to compute their gradient. */
export interface PreferenceShard {
  host: HostBatch;
  /** Per pair, the decoded image (model size) or null for a text-only pair. */
  pixels: Array<Float32Array | null>;
}

function batchInputs({ host, pixels }: PreferenceShard, imageSize: number): BatchInputs {
  return {
    images: pixels.some(Boolean) ? stackImages(pixels, imageSize) : null,
    hasImage: pixels.map(Boolean),
    layout: buildLayout({
      batch: host.pairs, numSentences: host.numSentences,
      chosenLength: host.width, chosenIds: host.chosenSentenceIds, chosenKeep: host.chosenKeep,
      rejectedLength: host.width, rejectedKeep: host.rejectedKeep,
    }),
  };
}

/** Per-token log-probs of chosen and rejected under `model`, [pairs, R] each, from one forward pass over both. */
function sideLogProbs(model: VisionLanguageModel, host: HostBatch, t: BatchInputs): [tf.Tensor2D, tf.Tensor2D] {
  const images = t.images && tf.concat([t.images, t.images]) as tf.Tensor4D;
  const { logps, mask } = model.responseLogProbs({
    images, hasImage: [...t.hasImage, ...t.hasImage],
    promptIds: [...host.promptIds, ...host.promptIds], responseIds: [...host.chosenIds, ...host.rejectedIds],
  });
  mask.dispose();
  const { pairs, width } = host;
  return [tf.slice(logps, [0, 0], [pairs, width]), tf.slice(logps, [pairs, 0], [pairs, width])];
}

/** Reference log-probs of both sides: the batch's stored ones, or a forward pass of `reference` (no gradient). */
function referenceLogProbs(reference: VisionLanguageModel | undefined, host: HostBatch, t: BatchInputs): [Float32Array, Float32Array] {
  if (host.chosenRefLogps && host.rejectedRefLogps) return [host.chosenRefLogps, host.rejectedRefLogps];
  if (!reference) throw new Error('the batch holds no reference log-probs and no reference model was given');
  const logps = tf.tidy(() => sideLogProbs(reference, host, t));
  const arrays = logps.map((side) => side.dataSync() as Float32Array);
  tf.dispose(logps);
  return [arrays[0]!, arrays[1]!];
}

function lossInputs<P>(t: BatchInputs, host: HostBatch, policy: [P, P], ref: [Float32Array, Float32Array]): LossInputs<P> {
  return {
    layout: t.layout,
    chosen: { policyLogps: policy[0], refLogps: ref[0] },
    rejected: { policyLogps: policy[1], refLogps: ref[1] },
    similarity: host.similarity,
  };
}

/**
 * The preference loss of a shard's pairs under `policy` and its gradient by weight name, as arrays, with the
 * shard's metric sums: what a gradient worker sends back, and what the trainer computes for its own shard. The
 * loss is a mean over the shard's pairs, so `combineShards` weighs the shards by their pair counts.
 */
export async function preferenceShardGradient(policy: VisionLanguageModel, reference: VisionLanguageModel | undefined,
  shard: PreferenceShard, config: AspoLossConfig): Promise<ShardGradient> {
  const t = batchInputs(shard, policy.config.imageSize);
  try {
    const ref = referenceLogProbs(reference, shard.host, t);
    let values: LossValues | undefined;
    const { value, grads } = policy.gradients(() => {
      const output = aspoLoss(lossInputs(t, shard.host, sideLogProbs(policy, shard.host, t), ref), config);
      values = output.values;
      return output.loss;
    });
    const out: Record<string, Float32Array> = {};
    for (const [name, g] of Object.entries(grads)) out[name] = (await g.data()) as Float32Array;
    tf.dispose([value, ...Object.values(grads)]);
    return { grads: out, loss: values!.loss, count: t.layout.pairs, metrics: lossMetricSums(values!) };
  } finally {
    t.images?.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Trainer

/** What a PreferenceTrainer is made of (see its fields). */
interface TrainerParts {
  options: PreferenceOptions;
  policy: VisionLanguageModel;
  reference: VisionLanguageModel;
  referenceModel: string;
  tokenizer: Tokenizer;
  optimizer: AdamW;
  refSource: RefSource;
  train: ShardPair[];
  evalPairs: ShardPair[];
  images: Map<string, Float32Array>;
  probeRows: ProbeRow[] | undefined;
  probeImages: Map<string, Float32Array>;
  step: number;
  totalSteps: number;
  runId: string;
  skipped: number;
}

export class PreferenceTrainer {
  private workers?: GradientWorkers;

  readonly options!: PreferenceOptions;
  readonly policy!: VisionLanguageModel;
  /** The frozen reference; only run when the shards hold no reference log-probs for it. */
  readonly reference!: VisionLanguageModel;
  readonly referenceModel!: string;
  readonly tokenizer!: Tokenizer;
  readonly optimizer!: AdamW;
  readonly refSource!: RefSource;
  private readonly train!: ShardPair[];
  private readonly evalPairs!: ShardPair[];
  private readonly images!: Map<string, Float32Array>;
  private readonly probeRows!: ProbeRow[] | undefined;
  private readonly probeImages!: Map<string, Float32Array>;
  step!: number;
  readonly totalSteps!: number;
  readonly runId!: string;
  /** Pairs left out because they do not fit the model's text context. */
  readonly skipped!: number;

  /** Built by create and resume, which load and check every part. */
  private constructor(parts: TrainerParts) {
    Object.assign(this, parts);
  }

  /** A new run: the policy is a copy of the reference checkpoint's weights. */
  static async create(options: PreferenceOptions, set: ShardSet, runId = newRunId(options.objective)): Promise<PreferenceTrainer> {
    return PreferenceTrainer.open(options, set, { step: 0, runId });
  }

  /** Continues a run from its checkpoint (policy weights, optimizer moments, step and options as saved). */
  static async resume(dir: string, openSet: (dir: string) => Promise<ShardSet>): Promise<PreferenceTrainer> {
    const contents = await loadCheckpoint(dir);
    const state = contents.trainer as unknown as PreferenceState | undefined;
    if (!contents.optimizer || !state?.options?.loss) throw new Error(`${dir} holds no preference-training state to resume from`);
    const set = await openSet(state.options.shards);
    return PreferenceTrainer.open(state.options, set, { ...state, weights: contents.weights, optimizer: contents.optimizer });
  }

  private static async open(options: PreferenceOptions, set: ShardSet, resume: {
    step: number; runId: string; totalSteps?: number; referenceModel?: string;
    weights?: Record<string, Float32Array>; optimizer?: OptimizerState;
  }): Promise<PreferenceTrainer> {
    if (options.loss.lossType !== options.objective) {
      throw new Error(`loss.lossType (${options.loss.lossType}) must equal the objective (${options.objective})`);
    }
    await set.verify();
    const ref = await loadModel(options.ref);
    try {
      const { manifest } = set;
      if (manifest.tokenizer !== ref.modelId) {
        throw new Error(`the shards in ${set.dir} were tokenized for ${manifest.tokenizer}, but --ref ${options.ref} is ${ref.modelId}; ` +
          're-run `aspo shard` with this reference, or pass the reference the shards were written for');
      }
      if (resume.referenceModel && resume.referenceModel !== ref.modelId) {
        throw new Error(`the run was started with reference ${resume.referenceModel}, but ${options.ref} is now ${ref.modelId}`);
      }
      const limit = textContext(ref.model.config);
      const fits = (p: ShardPair) => 1 + p.promptIds.length + Math.max(p.chosenIds.length, p.rejectedIds.length) <= limit;
      const all = { train: await readSplit(set, 'train'), eval: await readSplit(set, 'eval') };
      for (const pair of [...all.train, ...all.eval]) checkShardPair(pair);
      const train = all.train.filter(fits);
      const evalPairs = all.eval.filter(fits);
      const skipped = all.train.length + all.eval.length - train.length - evalPairs.length;
      if (train.length === 0) throw new Error(`no training pair in ${set.dir} fits the reference model's ${limit} text positions`);
      checkSimilarity([...train, ...evalPairs], options.loss);
      const stored = manifest.referenceModel === ref.modelId &&
        [...train, ...evalPairs].every((p) => p.chosenRefLogps && p.rejectedRefLogps);
      const images = await shardPixelCache(set).all([...train, ...evalPairs].map((p) => p.imageId), ref.model.config.imageSize);
      let probeRows: ProbeRow[] | undefined;
      let probeImages = new Map<string, Float32Array>();
      if (options.probes) {
        const examples = await readEvalFile(options.probes);
        probeRows = encodeProbeRows(ref.tokenizer, examples, limit);
        probeImages = await new PixelCache().all(examples.map((e) => e.image), ref.model.config.imageSize);
      }
      const policy = VisionLanguageModel.fromValues(ref.model.config, resume.weights ?? await ref.model.values());
      const optimizer = new AdamW(policy.weights, { ...DEFAULT_ADAMW, weightDecay: options.weightDecay, clipNorm: options.clipNorm });
      if (resume.optimizer) optimizer.restore(resume.optimizer);
      const perStep = Math.min(options.batchSize, train.length);
      const totalSteps = resume.totalSteps ?? options.steps ?? options.epochs * Math.floor(train.length / perStep);
      return new PreferenceTrainer({
        options, policy, reference: ref.model, referenceModel: ref.modelId, tokenizer: ref.tokenizer, optimizer,
        refSource: stored ? 'shards' : 'model', train, evalPairs, images, probeRows, probeImages, step: resume.step, totalSteps,
        runId: resume.runId, skipped,
      });
    } catch (error) {
      ref.model.dispose();
      throw error;
    }
  }

  get trainPairs(): number {
    return this.train.length;
  }

  get evalPairCount(): number {
    return this.evalPairs.length;
  }

  /** The training pairs of optimizer step `step` (0-based), as the seed orders them. */
  pairsOfStep(step: number): ShardPair[] {
    return batchIndices(step, this.train.length, this.options.batchSize, this.options.seed).map((i) => this.train[i]!);
  }

  collate(pairs: ShardPair[]): HostBatch {
    return collatePairs(pairs, { similarity: this.usesSimilarity, storedRefs: this.refSource === 'shards' });
  }

  private get usesSimilarity(): boolean {
    return this.options.loss.lossType === 'aspo' && this.options.loss.alpha > 0;
  }

  /** The collated pairs with their images' pixels. */
  private shardOf(pairs: ShardPair[]): PreferenceShard {
    return { host: this.collate(pairs), pixels: pairs.map((p) => (p.imageId === null ? null : this.images.get(p.imageId)!)) };
  }

  /** The loss metrics of `pairs` under the current policy, without a gradient or an update. */
  async lossOf(pairs: ShardPair[]): Promise<LossMetrics> {
    const shard = this.shardOf(pairs);
    const t = batchInputs(shard, this.policy.config.imageSize);
    const ref = referenceLogProbs(this.reference, shard.host, t);
    const logps = tf.tidy(() => sideLogProbs(this.policy, shard.host, t));
    const policy = logps.map((side) => side.dataSync()) as [Float32Array, Float32Array];
    tf.dispose([...logps, t.images ?? []]);
    return lossMetrics(lossForward(lossInputs(t, shard.host, policy, ref), this.options.loss));
  }

  /**
   * Computes the gradients on `count` extra worker threads as well as this one from the next step on (data
   * parallelism, see parallel.ts): each takes a contiguous share of the batch's pairs, with their reference
   * log-probs when the shards hold them (otherwise each worker runs its own copy of the reference). The workers
   * load `backend`, which should be the one this thread uses.
   */
  async useWorkers(count: number, backend: string): Promise<void> {
    await this.workers?.close();
    this.workers = count > 0 ? await GradientWorkers.start(count, {
      config: this.policy.config, backend, loss: this.options.loss,
      reference: this.refSource === 'model' ? await this.reference.values() : undefined,
    }) : undefined;
  }

  /** Threads computing each step's gradient (1 + gradient workers). */
  get threads(): number {
    return 1 + (this.workers?.size ?? 0);
  }

  /**
   * The loss of `pairs` and its gradient, on this thread alone or in shards on this thread and each worker at
   * once, with the batch's metrics. A function of the pairs and the thread count (through float rounding only).
   */
  async batchGradient(pairs: ShardPair[]): Promise<{ grads: Record<string, Float32Array>; metrics: LossMetrics }> {
    const [own, ...others] = evenSlices(pairs, this.threads).map((part) => this.shardOf(part));
    // The workers' shards are posted before this thread starts on its own, so all of them run at once.
    const fromWorkers = others.length ? this.workers!.preferenceGradients(await this.policy.values(), others) : Promise.resolve([]);
    const reference = this.refSource === 'model' ? this.reference : undefined;
    const parts = [await preferenceShardGradient(this.policy, reference, own!, this.options.loss), ...await fromWorkers];
    return { grads: combineShards(parts).grads, metrics: metricsOfSums(addMetricSums(parts.map((p) => p.metrics!))) };
  }

  /** One optimizer step on the batch the seed assigns to the current step. */
  async trainStep(): Promise<PreferenceStepStats> {
    const pairs = this.pairsOfStep(this.step);
    const { grads, metrics } = await this.batchGradient(pairs);
    const byName: Record<string, tf.Tensor> = {};
    for (const [name, g] of Object.entries(grads)) byName[name] = tf.tensor(g, this.policy.weights[name]!.shape, 'float32');
    const lr = learningRate(this.step, this.totalSteps, this.options);
    const gradNorm = this.optimizer.apply(byName, lr);
    tf.dispose(Object.values(byName));
    this.step += 1;
    return { step: this.step, metrics, lr, gradNorm, pairs: pairs.length };
  }

  /** Loss metrics over the eval split (pair-weighted means of batch means), and probe sentence accuracy with --probes. */
  async evaluate(): Promise<PreferenceEvalStats | undefined> {
    if (!this.evalPairs.length && !this.probeRows?.length) return undefined;
    const sums: Record<string, number> = {};
    for (let i = 0; i < this.evalPairs.length; i += this.options.batchSize) {
      const pairs = this.evalPairs.slice(i, i + this.options.batchSize);
      const metrics = await this.lossOf(pairs);
      for (const [name, value] of Object.entries(metrics)) sums[name] = (sums[name] ?? 0) + value * pairs.length;
    }
    const n = this.evalPairs.length;
    const stats: PreferenceEvalStats = { metrics: Object.fromEntries(Object.entries(sums).map(([k, v]) => [k, v / n])), pairs: n };
    if (this.probeRows?.length) Object.assign(stats, await probeAccuracy(this.policy, this.probeImages, this.probeRows));
    return stats;
  }

  async save(dir = this.options.out): Promise<void> {
    const state: PreferenceState = {
      step: this.step, totalSteps: this.totalSteps, runId: this.runId,
      referenceModel: this.referenceModel, refSource: this.refSource, options: this.options,
    };
    await saveCheckpoint(dir, {
      config: this.policy.config, tokenizer: this.tokenizer, weights: await this.policy.values(),
      optimizer: await this.optimizer.state(), trainer: state as unknown as Record<string, unknown>,
    });
  }

  dispose(): void {
    void this.workers?.close();
    this.workers = undefined;
    this.optimizer.dispose();
    this.policy.dispose();
    this.reference.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Run loop

export interface PreferenceHooks {
  metrics?: MetricsSink;
  backend?: string;
  onStep?: (stats: PreferenceStepStats, trainer: PreferenceTrainer) => void;
  onEval?: (stats: PreferenceEvalStats, trainer: PreferenceTrainer) => void;
}

export interface PreferenceResult {
  runId: string;
  objective: PreferenceObjective;
  steps: number;
  refSource: RefSource;
  /** Window means of the last logged training window. */
  train: Record<string, number>;
  eval?: PreferenceEvalStats;
  pairsPerSecond: number;
  seconds: number;
  skippedPairs: number;
}

/** The run's config as the runs table records it: every option, the loss under `loss`, and what was resolved at start. */
export function runConfig(trainer: PreferenceTrainer): Record<string, unknown> {
  return {
    ...trainer.options, totalSteps: trainer.totalSteps, referenceModel: trainer.referenceModel, refSource: trainer.refSource,
    trainPairs: trainer.trainPairs, evalPairs: trainer.evalPairCount, model: trainer.policy.config, parameters: trainer.policy.parameterCount,
  };
}

/** Runs (or continues) training to `trainer.totalSteps`, logging, evaluating and checkpointing on the way. */
export async function runPreference(trainer: PreferenceTrainer, hooks: PreferenceHooks = {}): Promise<PreferenceResult> {
  const { options } = trainer;
  const started = performance.now();
  await hooks.metrics?.start({
    runId: trainer.runId, objective: options.objective, backend: hooks.backend ?? tf.getBackend(),
    checkpoint: path.resolve(options.out), config: runConfig(trainer),
  });
  let window = { sums: {} as Record<string, number>, steps: 0, pairs: 0 };
  let lastWindow: Record<string, number> = {};
  let totalPairs = 0;
  const lastEval = await runLoop(trainer, options, {
    metrics: hooks.metrics,
    onStep: (stats) => {
      totalPairs += stats.pairs;
      for (const [name, value] of Object.entries(stats.metrics)) window.sums[name] = (window.sums[name] ?? 0) + value;
      window.steps += 1;
      window.pairs += stats.pairs;
      hooks.onStep?.(stats, trainer);
    },
    closeWindow: (seconds, last) => {
      const means = Object.fromEntries(Object.entries(window.sums).map(([name, sum]) => [name, sum / window.steps]));
      lastWindow = { ...means, lr: last.lr, grad_norm: last.gradNorm, pairs_per_s: window.pairs / seconds };
      window = { sums: {}, steps: 0, pairs: 0 };
      return lastWindow;
    },
    evalMetrics: (stats) => ({
      ...stats.metrics,
      ...(stats.sentenceAccuracy === undefined ? {} : { sentence_accuracy: stats.sentenceAccuracy }),
      ...Object.fromEntries(Object.entries(stats.byKind ?? {}).map(([kind, k]) => [`sentence_accuracy.${kind}`, k.accuracy])),
    }),
    onEval: (stats) => hooks.onEval?.(stats, trainer),
  });
  const seconds = (performance.now() - started) / 1000;
  const result: PreferenceResult = {
    runId: trainer.runId, objective: options.objective, steps: trainer.step, refSource: trainer.refSource,
    train: lastWindow, eval: lastEval, pairsPerSecond: totalPairs / seconds, seconds, skippedPairs: trainer.skipped,
  };
  await hooks.metrics?.finish('finished', { ...result });
  return result;
}
