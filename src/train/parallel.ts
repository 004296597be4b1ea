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
import type { ModelConfig } from './model.js';
import type { Batch } from './sft.js';

/** What a worker is asked to do: the gradient of the mean token loss of `batch` at `weights`. */
export interface GradientRequest {
  weights: Record<string, Float32Array>;
  batch: Batch;
}

export interface ShardGradient {
  /** Gradient of the shard's mean loss per weight name (weights without one are absent). */
  grads: Record<string, Float32Array>;
  /** The shard's mean loss. */
  loss: number;
  /** Tokens the mean is over (response tokens with EOS). */
  tokens: number;
}

export interface WorkerSetup {
  config: ModelConfig;
  backend: string;
}

/**
 * Splits a batch into `count` contiguous shards of near-equal rows (fewer when the batch has fewer rows). Rows are
 * kept whole: every shard's loss is a mean over its own tokens, and `combineShards` weighs it by them.
 */
export function shardBatch(batch: Batch, count: number): Batch[] {
  const rows = batch.promptIds.length;
  const shards = Math.max(1, Math.min(count, rows));
  const out: Batch[] = [];
  for (let k = 0; k < shards; k++) {
    const from = Math.floor((k * rows) / shards);
    const to = Math.floor(((k + 1) * rows) / shards);
    out.push({ images: batch.images.slice(from, to), promptIds: batch.promptIds.slice(from, to), responseIds: batch.responseIds.slice(from, to) });
  }
  return out;
}

/**
 * The whole batch's mean loss and its gradient from its shards': each shard's share is its token count over the
 * total, so the result is what one pass over the whole batch gives.
 */
export function combineShards(shards: readonly ShardGradient[]): { grads: Record<string, Float32Array>; loss: number; tokens: number } {
  const tokens = shards.reduce((n, s) => n + s.tokens, 0);
  const grads: Record<string, Float32Array> = {};
  let loss = 0;
  for (const shard of shards) {
    const share = shard.tokens / tokens;
    loss += share * shard.loss;
    for (const [name, g] of Object.entries(shard.grads)) {
      const sum = (grads[name] ??= new Float32Array(g.length));
      for (let i = 0; i < g.length; i++) sum[i]! += share * g[i]!;
    }
  }
  return { grads, loss, tokens };
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

  /** Gradients of `batches[i]` on worker i, all at `weights`. */
  gradients(weights: Record<string, Float32Array>, batches: readonly Batch[]): Promise<ShardGradient[]> {
    if (batches.length > this.workers.length) throw new Error(`${batches.length} shards for ${this.workers.length} workers`);
    return Promise.all(batches.map((batch, i) => new Promise<ShardGradient>((resolve, reject) => {
      const worker = this.workers[i]!;
      this.pending.set(worker, { resolve, reject });
      worker.postMessage({ weights, batch } satisfies GradientRequest);
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
