/**
 * Supervised fine-tuning of the vision-language model on (image, prompt, true response)
 * rows — the reference model for preference training. Deterministic: the weights,
 * the data order and every update are functions of the seed, so a run resumed from a
 * checkpoint ends with exactly the weights of an uninterrupted one.
 */
import { promises as fs, statSync } from 'node:fs';
import path from 'node:path';
import { tf } from '../model/backend.js';
import { Tokenizer } from '../model/tokenizer.js';
import { DEFAULT_MODEL_CONFIG, textContext, VisionLanguageModel, type ModelConfig } from '../model/model.js';
import { AdamW, DEFAULT_ADAMW } from './optimizer.js';
import { loadCheckpoint, saveCheckpoint } from '../model/checkpoint.js';
import { PixelCache, stackImages } from '../model/images.js';
import { encodePromptResponse } from '../model/encode.js';
import { deriveSeed, Rng } from '../util/random.js';
import { newRunId, type MetricsSink } from './metrics.js';
import { runLoop } from './loop.js';
import { combineShards, GradientWorkers, shardBatch, type ShardGradient } from './parallel.js';

/** One training row; `image` is an absolute path or null (text only). */
export interface SftExample {
  image: string | null;
  prompt: string;
  response: string;
}

export interface Probe {
  true: string;
  false: string;
  /** Kind of claim (e.g. "row", "shape_of"), when the file names it: accuracy is also reported per kind. */
  kind?: string;
}

export interface EvalExample extends SftExample {
  probes: Probe[];
}

export interface SftOptions {
  /** sft.jsonl, or a dataset folder holding sft.jsonl (and eval.jsonl, used when `eval` is not given). */
  data: string;
  eval?: string;
  /** Checkpoint folder written at the end and every `saveEvery` steps. */
  out: string;
  /** Optimizer steps; default: `epochs` passes over the data. */
  steps?: number;
  epochs: number;
  batchSize: number;
  lr: number;
  /** Linear warm-up steps, then cosine decay to minLrRatio · lr. */
  warmupSteps: number;
  minLrRatio: number;
  weightDecay: number;
  clipNorm: number;
  seed: number;
  /** Model shape (vocabSize comes from the tokenizer). */
  model: Omit<ModelConfig, 'vocabSize'>;
  /** Vocabulary cap for the tokenizer built from the training text. */
  vocabSize: number;
  evalEvery: number;
  saveEvery: number;
  logEvery: number;
}

export const DEFAULT_SFT_OPTIONS: Omit<SftOptions, 'data' | 'out'> = {
  epochs: 10,
  batchSize: 32,
  lr: 4e-3,
  warmupSteps: 50,
  minLrRatio: 0.1,
  weightDecay: DEFAULT_ADAMW.weightDecay,
  clipNorm: DEFAULT_ADAMW.clipNorm,
  seed: 0,
  // 48×48 in 16×16 patches: one visual token per cell of a 3×3 layout, so an object is never cut across tokens;
  // two of the four heads attend to the image only, which is what made the position facts learnable in 930 steps
  model: { ...DEFAULT_MODEL_CONFIG, width: 64, layers: 3, heads: 4, imageSize: 48, patchSize: 16, stemChannels: 32, imageHeads: 2 },
  vocabSize: 512,
  evalEvery: 200,
  saveEvery: 500,
  logEvery: 10,
};

// ---------------------------------------------------------------------------------------------------------------
// Data files

function fieldError(file: string, line: number, message: string): Error {
  return new Error(`${file}:${line}: ${message}`);
}

function readString(row: Record<string, unknown>, field: string, file: string, line: number, optional = false): string | null {
  const value = row[field];
  if (value === undefined || value === null) {
    if (optional) return null;
    throw fieldError(file, line, `field "${field}" is missing`);
  }
  if (typeof value !== 'string') throw fieldError(file, line, `field "${field}" must be a string`);
  return value;
}

async function readJsonLines(file: string): Promise<Array<{ line: number; row: Record<string, unknown> }>> {
  const text = await fs.readFile(file, 'utf8').catch((error: Error) => { throw new Error(`cannot read ${file}: ${error.message}`); });
  const rows: Array<{ line: number; row: Record<string, unknown> }> = [];
  text.split('\n').forEach((raw, i) => {
    if (!raw.trim()) return;
    let row: unknown;
    try {
      row = JSON.parse(raw);
    } catch (error) {
      throw fieldError(file, i + 1, `not JSON (${(error as Error).message})`);
    }
    if (!row || typeof row !== 'object' || Array.isArray(row)) throw fieldError(file, i + 1, 'expected a JSON object');
    rows.push({ line: i + 1, row: row as Record<string, unknown> });
  });
  if (rows.length === 0) throw new Error(`${file} has no rows`);
  return rows;
}

function exampleOf(row: Record<string, unknown>, file: string, line: number): SftExample {
  const image = readString(row, 'image', file, line, true);
  return {
    image: image === null ? null : path.resolve(path.dirname(file), image),
    prompt: readString(row, 'prompt', file, line)!,
    response: readString(row, 'response', file, line)!,
  };
}

/** Reads sft.jsonl lines {"image": "images/x.png" | null, "prompt", "response"}; image paths are relative to the file. */
export async function readSftFile(file: string): Promise<SftExample[]> {
  return (await readJsonLines(file)).map(({ row, line }) => exampleOf(row, file, line));
}

/** Reads eval.jsonl: sft fields plus "probes": [{"true": sentence, "false": its hallucinated variant}]. */
export async function readEvalFile(file: string): Promise<EvalExample[]> {
  return (await readJsonLines(file)).map(({ row, line }) => {
    const probes = row.probes;
    if (!Array.isArray(probes)) throw fieldError(file, line, 'field "probes" must be an array');
    return {
      ...exampleOf(row, file, line),
      probes: probes.map((probe, k) => {
        if (!probe || typeof probe !== 'object') throw fieldError(file, line, `probes[${k}] must be an object`);
        const p = probe as Record<string, unknown>;
        const kind = readString(p, 'kind', file, line, true);
        return { true: readString(p, 'true', file, line)!, false: readString(p, 'false', file, line)!, ...(kind === null ? {} : { kind }) };
      }),
    };
  });
}

/** Resolves --data (file or folder) and --eval to file paths. */
export function resolveDataPaths(data: string, evalPath?: string): { train: string; eval?: string } {
  const isDir = statSync(data, { throwIfNoEntry: false })?.isDirectory();
  if (isDir === undefined) throw new Error(`--data ${data} does not exist`);
  const train = isDir ? path.join(data, 'sft.jsonl') : data;
  if (evalPath) return { train, eval: evalPath };
  const sibling = isDir ? path.join(data, 'eval.jsonl') : undefined;
  return { train, eval: sibling && statSync(sibling, { throwIfNoEntry: false })?.isFile() ? sibling : undefined };
}

// ---------------------------------------------------------------------------------------------------------------
// Encoded rows and batches

export interface EncodedRow {
  image: string | null;
  promptIds: number[];
  responseIds: number[];
}

export interface Batch {
  images: Array<Float32Array | null>;
  promptIds: number[][];
  responseIds: number[][];
}

/** Mean negative log-likelihood per response token (EOS included) of a batch. */
export function sftLoss(model: VisionLanguageModel, batch: Batch): tf.Scalar {
  return tf.tidy(() => {
    const images = batch.images.some(Boolean) ? stackImages(batch.images, model.config.imageSize) : null;
    const { logps, mask } = model.responseLogProbs({
      images, hasImage: batch.images.map(Boolean), promptIds: batch.promptIds, responseIds: batch.responseIds,
    });
    return tf.div(tf.neg(tf.sum(tf.mul(logps, mask))), tf.sum(mask)) as tf.Scalar;
  });
}

/** Response tokens (with EOS) of a batch: what sftLoss averages over. */
export function lossTokens(batch: Batch): number {
  return batch.responseIds.reduce((n, r) => n + r.length + 1, 0);
}

/** sftLoss on `batch` and its gradient by weight name, as arrays (what a gradient worker sends back). */
export async function shardGradient(model: VisionLanguageModel, batch: Batch): Promise<ShardGradient> {
  const { value, grads } = model.gradients(() => sftLoss(model, batch));
  const out: Record<string, Float32Array> = {};
  for (const [name, g] of Object.entries(grads)) out[name] = (await g.data()) as Float32Array;
  const loss = (await value.data())[0]!;
  tf.dispose([value, ...Object.values(grads)]);
  return { grads: out, loss, count: lossTokens(batch) };
}

/**
 * sftLoss on `batch` and its gradient, computed on this thread alone or, with `workers`, on shards of the batch on
 * this thread and each worker at once.
 */
export async function batchGradient(model: VisionLanguageModel, batch: Batch, workers?: GradientWorkers):
  Promise<{ grads: Record<string, Float32Array>; loss: number }> {
  const [own, ...others] = shardBatch(batch, 1 + (workers?.size ?? 0));
  // The workers' shards are posted before this thread starts on its own, so all of them run at once.
  const fromWorkers = others.length ? workers!.gradients(await model.values(), others) : Promise.resolve([]);
  const ownGradient = await shardGradient(model, own!);
  return combineShards([ownGradient, ...await fromWorkers]);
}

/** Learning rate at `step` (0-based): linear warm-up, then cosine decay to minLrRatio · lr at `total`. */
export function learningRate(step: number, total: number, options: Pick<SftOptions, 'lr' | 'warmupSteps' | 'minLrRatio'>): number {
  const { lr, warmupSteps, minLrRatio } = options;
  if (step < warmupSteps) return (lr * (step + 1)) / warmupSteps;
  const progress = Math.min(1, (step - warmupSteps) / Math.max(1, total - warmupSteps));
  return lr * (minLrRatio + (1 - minLrRatio) * 0.5 * (1 + Math.cos(Math.PI * progress)));
}

/** Rows of optimizer step `step`: epoch e visits the rows in the permutation drawn from (seed, e). */
export function batchIndices(step: number, rowCount: number, batchSize: number, seed: number): number[] {
  const size = Math.min(batchSize, rowCount);
  const perEpoch = Math.floor(rowCount / size);
  const epoch = Math.floor(step / perEpoch);
  const k = step % perEpoch;
  return new Rng(deriveSeed(seed, 'epoch', epoch)).shuffle(Array.from({ length: rowCount }, (_, i) => i)).slice(k * size, (k + 1) * size);
}

/** An eval row with its probes encoded: the true sentence and its false variant, each as a response to the row's prompt. */
export interface ProbeRow extends EncodedRow {
  probes: Array<{ trueIds: number[]; falseIds: number[]; kind?: string }>;
}

/** Encodes eval examples and their probes; rows with anything longer than `limit` text positions are left out. */
export function encodeProbeRows(tokenizer: Tokenizer, examples: EvalExample[], limit: number): ProbeRow[] {
  return examples.map((e) => {
    const row = { image: e.image, ...encodePromptResponse(tokenizer, e.prompt, e.response) };
    const probes = e.probes.map((p) => ({
      trueIds: encodePromptResponse(tokenizer, e.prompt, p.true).responseIds,
      falseIds: encodePromptResponse(tokenizer, e.prompt, p.false).responseIds,
      kind: p.kind,
    }));
    return { ...row, probes };
  }).filter((row) => [row.responseIds, ...row.probes.flatMap((p) => [p.trueIds, p.falseIds])]
    .every((ids) => 1 + row.promptIds.length + ids.length <= limit));
}

/** A model batch of encoded rows; `images` maps each row's image key to its decoded pixels. */
export function batchOf(rows: EncodedRow[], images: Map<string, Float32Array>): Batch {
  return {
    images: rows.map((r) => (r.image ? images.get(r.image)! : null)),
    promptIds: rows.map((r) => r.promptIds),
    responseIds: rows.map((r) => r.responseIds),
  };
}

/** Summed log-prob of each response under `model` (EOS excluded when `withEos` is false), no gradient. */
export async function sequenceLogProbs(model: VisionLanguageModel, images: Map<string, Float32Array>, rows: EncodedRow[],
  withEos: boolean, batchSize = 64): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < rows.length; i += batchSize) {
    const batch = batchOf(rows.slice(i, i + batchSize), images);
    const sums = tf.tidy(() => {
      const pixels = batch.images.some(Boolean) ? stackImages(batch.images, model.config.imageSize) : null;
      const { logps, mask } = model.responseLogProbs({ images: pixels, hasImage: batch.images.map(Boolean), promptIds: batch.promptIds, responseIds: batch.responseIds });
      const keep = withEos ? mask : tf.mul(mask, tf.tensor2d(batch.responseIds.flatMap((r) =>
        Array.from({ length: mask.shape[1] }, (_, j) => (j < r.length ? 1 : 0))), mask.shape));
      return tf.sum(tf.mul(logps, keep), 1);
    });
    out.push(...((await sums.data()) as Float32Array));
    sums.dispose();
  }
  return out;
}

/** Fraction of probes whose true sentence is more likely than its false variant (same image and prompt, EOS excluded). */
export async function probeAccuracy(model: VisionLanguageModel, images: Map<string, Float32Array>, rows: ProbeRow[]):
  Promise<Pick<EvalStats, 'sentenceAccuracy' | 'probes' | 'byKind'>> {
  const probeRows = rows.flatMap((r) => r.probes.flatMap((p) => [
    { image: r.image, promptIds: r.promptIds, responseIds: p.trueIds },
    { image: r.image, promptIds: r.promptIds, responseIds: p.falseIds },
  ]));
  const scores = await sequenceLogProbs(model, images, probeRows, false);
  let correct = 0;
  const tally = new Map<string, { correct: number; probes: number }>();
  rows.flatMap((r) => r.probes).forEach((probe, k) => {
    const right = scores[2 * k]! > scores[2 * k + 1]!;
    if (right) correct++;
    if (probe.kind === undefined) return;
    const entry = tally.get(probe.kind) ?? { correct: 0, probes: 0 };
    entry.probes++;
    if (right) entry.correct++;
    tally.set(probe.kind, entry);
  });
  const probes = scores.length / 2;
  const byKind = Object.fromEntries([...tally].sort(([a], [b]) => a.localeCompare(b))
    .map(([kind, t]) => [kind, { accuracy: t.correct / t.probes, probes: t.probes }]));
  return { sentenceAccuracy: probes ? correct / probes : NaN, probes, byKind };
}

// ---------------------------------------------------------------------------------------------------------------
// Trainer

export interface StepStats {
  step: number;
  loss: number;
  gradNorm: number;
  lr: number;
  /** Non-padding text tokens processed (BOS + prompt + response). */
  tokens: number;
  responseTokens: number;
}

export interface EvalStats {
  loss: number;
  /** Fraction of probes whose true sentence is more likely than its false variant, same image and prompt. */
  sentenceAccuracy: number;
  probes: number;
  /** Sentence accuracy per probe kind (probes without a kind are left out). */
  byKind: Record<string, { accuracy: number; probes: number }>;
}

interface TrainerState {
  step: number;
  totalSteps: number;
  runId: string;
  options: SftOptions;
}

export interface SftData {
  train: SftExample[];
  eval?: EvalExample[];
}

export class SftTrainer {
  private readonly rows: EncodedRow[];
  private evalRows?: ProbeRow[];
  private workers?: GradientWorkers;

  private constructor(
    readonly options: SftOptions,
    readonly model: VisionLanguageModel,
    readonly tokenizer: Tokenizer,
    readonly optimizer: AdamW,
    private readonly images: Map<string, Float32Array>,
    data: SftData,
    public step: number,
    readonly totalSteps: number,
    readonly runId: string,
    /** Rows dropped because they do not fit the context. */
    readonly skipped: number[],
  ) {
    const limit = textContext(model.config);
    const encoded = data.train.map((e) => ({ image: e.image, ...encodePromptResponse(tokenizer, e.prompt, e.response) }));
    this.rows = encoded.filter((row, i) => {
      const fits = 1 + row.promptIds.length + row.responseIds.length <= limit;
      if (!fits) skipped.push(i);
      return fits;
    });
    if (this.rows.length === 0) throw new Error(`no training row fits the model's ${limit} text positions; raise the context`);
    if (data.eval) this.evalRows = encodeProbeRows(tokenizer, data.eval, limit);
  }

  /** A new run: tokenizer from the training text, model initialised from the seed. */
  static async create(options: SftOptions, data: SftData, runId = newRunId('sft')): Promise<SftTrainer> {
    const tokenizer = Tokenizer.build(data.train.flatMap((e) => [e.prompt, e.response]), { vocabSize: options.vocabSize });
    const config: ModelConfig = { ...options.model, vocabSize: tokenizer.vocabSize };
    const model = VisionLanguageModel.init(config, deriveSeed(options.seed, 'init'));
    const optimizer = new AdamW(model.weights, { ...DEFAULT_ADAMW, weightDecay: options.weightDecay, clipNorm: options.clipNorm });
    const images = await new PixelCache().all([...data.train, ...(data.eval ?? [])].map((e) => e.image), config.imageSize);
    const rowsPerStep = Math.min(options.batchSize, data.train.length);
    const totalSteps = options.steps ?? options.epochs * Math.floor(data.train.length / rowsPerStep);
    return new SftTrainer(options, model, tokenizer, optimizer, images, data, 0, totalSteps, runId, []);
  }

  /** Continues a run from its checkpoint: weights, optimizer moments, step and options as saved. */
  static async resume(dir: string, data?: SftData): Promise<SftTrainer> {
    const contents = await loadCheckpoint(dir);
    const state = contents.trainer as unknown as TrainerState | undefined;
    if (!contents.optimizer || !state?.options) throw new Error(`${dir} holds no trainer state to resume from (saved without an optimizer)`);
    const options = state.options;
    const loaded = data ?? await readSftData(options.data, options.eval);
    const model = VisionLanguageModel.fromValues(contents.config, contents.weights);
    const optimizer = new AdamW(model.weights, { ...DEFAULT_ADAMW, weightDecay: options.weightDecay, clipNorm: options.clipNorm });
    optimizer.restore(contents.optimizer);
    const images = await new PixelCache().all([...loaded.train, ...(loaded.eval ?? [])].map((e) => e.image), contents.config.imageSize);
    return new SftTrainer(options, model, contents.tokenizer, optimizer, images, loaded, state.step, state.totalSteps, state.runId, []);
  }

  get trainRows(): number {
    return this.rows.length;
  }

  get hasEval(): boolean {
    return Boolean(this.evalRows?.length);
  }

  /**
   * Computes this trainer's gradients on `count` extra worker threads as well as this one (data parallelism; see
   * parallel.ts), from the next step on. The workers load `backend`, which should be the one this thread uses.
   */
  async useWorkers(count: number, backend: string): Promise<void> {
    await this.workers?.close();
    this.workers = count > 0 ? await GradientWorkers.start(count, { config: this.model.config, backend }) : undefined;
  }

  /** One optimizer step on the batch the seed assigns to the current step. */
  async trainStep(): Promise<StepStats> {
    const indices = batchIndices(this.step, this.rows.length, this.options.batchSize, this.options.seed);
    const batch = batchOf(indices.map((i) => this.rows[i]!), this.images);
    const { grads, loss } = await batchGradient(this.model, batch, this.workers);
    const byName: Record<string, tf.Tensor> = {};
    for (const [name, g] of Object.entries(grads)) byName[name] = tf.tensor(g, this.model.weights[name]!.shape, 'float32');
    const lr = learningRate(this.step, this.totalSteps, this.options);
    const gradNorm = this.optimizer.apply(byName, lr);
    tf.dispose(Object.values(byName));
    this.step += 1;
    const responseTokens = lossTokens(batch);
    const tokens = batch.promptIds.reduce((n, p) => n + p.length + 1, 0) + responseTokens - batch.promptIds.length;
    return { step: this.step, loss, gradNorm, lr, tokens, responseTokens };
  }

  /** Held-out loss and sentence accuracy (true probe sentence more likely than its false variant). */
  async evaluate(): Promise<EvalStats | undefined> {
    if (!this.evalRows?.length) return undefined;
    const full = await sequenceLogProbs(this.model, this.images, this.evalRows, true);
    const tokens = this.evalRows.reduce((n, r) => n + r.responseIds.length + 1, 0);
    return { loss: -full.reduce((a, b) => a + b, 0) / tokens, ...await probeAccuracy(this.model, this.images, this.evalRows) };
  }

  async save(dir = this.options.out): Promise<void> {
    const state: TrainerState = { step: this.step, totalSteps: this.totalSteps, runId: this.runId, options: this.options };
    await saveCheckpoint(dir, {
      config: this.model.config, tokenizer: this.tokenizer, weights: await this.model.values(),
      optimizer: await this.optimizer.state(), trainer: state as unknown as Record<string, unknown>,
    });
  }

  dispose(): void {
    void this.workers?.close();
    this.workers = undefined;
    this.optimizer.dispose();
    this.model.dispose();
  }
}

export async function readSftData(data: string, evalPath?: string): Promise<SftData> {
  const paths = resolveDataPaths(data, evalPath);
  return { train: await readSftFile(paths.train), eval: paths.eval ? await readEvalFile(paths.eval) : undefined };
}

export interface SftHooks {
  metrics?: MetricsSink;
  backend?: string;
  /** Called after every step (progress bars). */
  onStep?: (stats: StepStats, trainer: SftTrainer) => void;
  onEval?: (stats: EvalStats, trainer: SftTrainer) => void;
}

export interface SftResult {
  runId: string;
  steps: number;
  finalLoss: number;
  eval?: EvalStats;
  tokensPerSecond: number;
  seconds: number;
  skippedRows: number;
}

/** Runs (or continues) training to `trainer.totalSteps`, logging, evaluating and checkpointing on the way. */
export async function runSft(trainer: SftTrainer, hooks: SftHooks = {}): Promise<SftResult> {
  const { options } = trainer;
  const started = performance.now();
  await hooks.metrics?.start({
    runId: trainer.runId, objective: 'sft', backend: hooks.backend ?? tf.getBackend(), checkpoint: path.resolve(options.out),
    config: { ...options, model: trainer.model.config, parameters: trainer.model.parameterCount } as Record<string, unknown>,
  });
  let window = { loss: 0, steps: 0, tokens: 0 };
  let totalTokens = 0;
  let lastLoss = NaN;
  const lastEval = await runLoop(trainer, options, {
    metrics: hooks.metrics,
    onStep: (stats) => {
      lastLoss = stats.loss;
      totalTokens += stats.tokens;
      window = { loss: window.loss + stats.loss, steps: window.steps + 1, tokens: window.tokens + stats.tokens };
      hooks.onStep?.(stats, trainer);
    },
    closeWindow: (seconds, last) => {
      const means = { loss: window.loss / window.steps, tokens_per_s: window.tokens / seconds, lr: last.lr, grad_norm: last.gradNorm };
      window = { loss: 0, steps: 0, tokens: 0 };
      return means;
    },
    evalMetrics: (stats) => ({
      loss: stats.loss, sentence_accuracy: stats.sentenceAccuracy,
      ...Object.fromEntries(Object.entries(stats.byKind).map(([kind, k]) => [`sentence_accuracy.${kind}`, k.accuracy])),
    }),
    onEval: (stats) => hooks.onEval?.(stats, trainer),
  });
  const seconds = (performance.now() - started) / 1000;
  const result: SftResult = {
    runId: trainer.runId, steps: trainer.step, finalLoss: lastLoss, eval: lastEval,
    tokensPerSecond: totalTokens / seconds, seconds, skippedRows: trainer.skipped.length,
  };
  await hooks.metrics?.finish('finished', { ...result });
  return result;
}
