/**
 * Data parallelism over worker threads. The WebAssembly backend runs on one thread (TensorFlow.js keeps its threaded
 * build off on Node), so the way to use more cores is more backends: each worker holds its own copy of the model,
 * gets the current weights and a shard of the batch every step, and returns the gradient of its shard's loss. The
 * trainer computes one shard itself, combines the gradients and takes the optimizer step, so the optimizer state
 * stays in one place and checkpoints are unchanged.
 *
 * A step's result depends on how the batch is sharded only through float rounding (the combination is exact in
 * real arithmetic), and the sharding depends only on the batch and the worker count, so runs stay deterministic.
 */
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { AspoLossConfig, LossMetricSums } from './loss.js';
import type { ModelConfig } from '../model/model.js';
import type { PreferenceShard } from './preference.js';
import type { Batch } from './sft.js';

/**
 * What a worker is asked to do at `weights`: the gradient of the mean token loss of an SFT `batch`, or of the
 * preference loss (the setup's `loss`) over the pairs of a preference `shard`.
 */
export type GradientRequest = { weights: Record<string, Float32Array> } & ({ batch: Batch } | { shard: PreferenceShard });

export interface ShardGradient {
  /** Gradient of the shard's mean loss per weight name (weights without one are absent). */
  grads: Record<string, Float32Array>;
  /** The shard's mean loss. */
  loss: number;
  /** How many terms the mean is over: response tokens with EOS for SFT, pairs for preference training. */
  count: number;
  /** Preference training: the shard's sums of the logged loss metrics. */
  metrics?: LossMetricSums;
}

export interface WorkerSetup {
  config: ModelConfig;
  backend: string;
  /** Preference training: the loss, and the frozen reference's weights when no reference log-probs are stored. */
  loss?: AspoLossConfig;
  reference?: Record<string, Float32Array>;
}

/** Splits `items` into `count` contiguous runs of near-equal length, in order (fewer when there are fewer items). */
export function evenSlices<T>(items: readonly T[], count: number): T[][] {
  const shards = Math.max(1, Math.min(count, items.length));
  return Array.from({ length: shards }, (_, k) =>
    items.slice(Math.floor((k * items.length) / shards), Math.floor(((k + 1) * items.length) / shards)));
}

/**
 * Splits a batch into `count` contiguous shards of near-equal rows (fewer when the batch has fewer rows). Rows are
 * kept whole: every shard's loss is a mean over its own tokens, and `combineShards` weighs it by them.
 */
export function shardBatch(batch: Batch, count: number): Batch[] {
  // the three lists have one entry per row, so they are cut at the same places
  const images = evenSlices(batch.images, count);
  const responses = evenSlices(batch.responseIds, count);
  return evenSlices(batch.promptIds, count).map((promptIds, k) => ({ images: images[k]!, promptIds, responseIds: responses[k]! }));
}

/**
 * The whole batch's mean loss and its gradient from its shards': each shard's share is its count (tokens or
 * pairs) over the total, so the result is what one pass over the whole batch gives.
 */
export function combineShards(shards: readonly ShardGradient[]): { grads: Record<string, Float32Array>; loss: number; count: number } {
  const count = shards.reduce((n, s) => n + s.count, 0);
  const grads: Record<string, Float32Array> = {};
  let loss = 0;
  for (const shard of shards) {
    const share = shard.count / count;
    loss += share * shard.loss;
    for (const [name, g] of Object.entries(shard.grads)) {
      const sum = (grads[name] ??= new Float32Array(g.length));
      for (let i = 0; i < g.length; i++) sum[i]! += share * g[i]!;
    }
  }
  return { grads, loss, count };
}

/** Extra gradient workers for `--workers auto`: one per spare core on the single-threaded backends, none otherwise. */
export function autoWorkers(backend: string): number {
  return backend === 'wasm' || backend === 'cpu' ? Math.max(0, os.availableParallelism() - 1) : 0;
}

interface Pending {
  resolve: (value: ShardGradient) => void;
  reject: (error: Error) => void;
}

/** A pool of gradient workers, each with its own backend and model copy. */
export class GradientWorkers {
  private readonly pending = new Map<Worker, Pending>();

  private constructor(private readonly workers: Worker[]) {
    for (const worker of workers) {
      worker.on('message', (message: { result?: ShardGradient; error?: string }) => {
        const waiting = this.pending.get(worker);
        this.pending.delete(worker);
        if (message.error !== undefined) waiting?.reject(new Error(`gradient worker: ${message.error}`));
        else waiting?.resolve(message.result!);
      });
      worker.on('error', (error) => this.failAll(error));
      worker.on('exit', (code) => {
        if (code !== 0) this.failAll(new Error(`gradient worker exited with code ${code}`));
      });
    }
  }

  /** Starts `count` workers on `setup.backend`; resolves when each has loaded it. */
  static async start(count: number, setup: WorkerSetup): Promise<GradientWorkers> {
    const url = new URL('./gradient-worker.js', import.meta.url);
    const started = Array.from({ length: count }, () => new Worker(url, { workerData: setup }));
    const ready = await Promise.allSettled(started.map((worker) => new Promise<void>((resolve, reject) => {
      worker.once('message', (message: { ready?: boolean; error?: string }) => {
        if (message.ready) resolve();
        else reject(new Error(`gradient worker could not start: ${message.error}`));
      });
      worker.once('error', reject);
    })));
    const failed = ready.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await Promise.all(started.map((w) => w.terminate()));
      throw failed.reason;
    }
    return new GradientWorkers(started);
  }

  get size(): number {
    return this.workers.length;
  }

  /** Gradients of SFT `batches[i]` on worker i, all at `weights`. */
  gradients(weights: Record<string, Float32Array>, batches: readonly Batch[]): Promise<ShardGradient[]> {
    return this.post(batches.map((batch) => ({ weights, batch })));
  }

  /** Gradients of the preference loss over `shards[i]` on worker i, all at `weights` (the pool needs `setup.loss`). */
  preferenceGradients(weights: Record<string, Float32Array>, shards: readonly PreferenceShard[]): Promise<ShardGradient[]> {
    return this.post(shards.map((shard) => ({ weights, shard })));
  }

  private post(requests: GradientRequest[]): Promise<ShardGradient[]> {
    if (requests.length > this.workers.length) throw new Error(`${requests.length} shards for ${this.workers.length} workers`);
    return Promise.all(requests.map((request, i) => new Promise<ShardGradient>((resolve, reject) => {
      const worker = this.workers[i]!;
      this.pending.set(worker, { resolve, reject });
      worker.postMessage(request);
    })));
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private failAll(error: Error): void {
    for (const waiting of this.pending.values()) waiting.reject(error);
    this.pending.clear();
  }
}
