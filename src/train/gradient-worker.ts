/**
 * A gradient worker (see parallel.ts): loads the trainer's backend in this thread, then answers each request with
 * the gradient of its batch shard (SFT) or preference shard at the weights it was sent.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { initBackend, tf, type BackendName } from '../model/backend.js';
import { VisionLanguageModel } from '../model/model.js';
import { preferenceShardGradient } from './preference.js';
import { shardGradient } from './sft.js';
import type { GradientRequest, ShardGradient, WorkerSetup } from './parallel.js';

const port = parentPort!;
const setup = workerData as WorkerSetup;
let model: VisionLanguageModel | undefined;
/** The frozen reference of a preference run whose shards hold no reference log-probs. */
let reference: VisionLanguageModel | undefined;

function setWeights(weights: Record<string, Float32Array>): VisionLanguageModel {
  if (!model) return (model = VisionLanguageModel.fromValues(setup.config, weights));
  for (const [name, w] of Object.entries(model.weights)) {
    const values = weights[name];
    if (!values || values.length !== w.size) throw new Error(`weights for ${name} are missing or have the wrong size`);
    tf.tidy(() => w.assign(tf.tensor(values, w.shape, 'float32')));
  }
  return model;
}

function gradientOf(request: GradientRequest): Promise<ShardGradient> {
  const policy = setWeights(request.weights);
  if ('batch' in request) return shardGradient(policy, request.batch);
  if (!setup.loss) throw new Error('a preference shard was sent to a worker started without a loss');
  return preferenceShardGradient(policy, reference, request.shard, setup.loss);
}

try {
  await initBackend(setup.backend as BackendName);
  if (setup.reference) reference = VisionLanguageModel.fromValues(setup.config, setup.reference);
  port.postMessage({ ready: true });
} catch (error) {
  port.postMessage({ error: (error as Error).message });
}

port.on('message', async (request: GradientRequest) => {
  try {
    const result = await gradientOf(request);
    // Each gradient gets a buffer of its own, so that all of them can be moved to the trainer without a copy.
    for (const [name, g] of Object.entries(result.grads)) {
      if (g.byteOffset !== 0 || g.byteLength !== g.buffer.byteLength) result.grads[name] = g.slice();
    }
    port.postMessage({ result }, Object.values(result.grads).map((g) => g.buffer as ArrayBuffer));
  } catch (error) {
    port.postMessage({ error: (error as Error).message });
  }
});
