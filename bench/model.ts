/**
 * Benchmark: SFT training steps of the small vision-language model on the model issue's
 * configuration — 64×64 image → 16 patch tokens, vocabulary 512, width 128, 4 layers, 4 heads,
 * MLP 4×, context 96 (16 visual + 80 text), batch 32 (≈0.97 M parameters) — per backend that
 * loads here. One step = forward, backward, AdamW update. Reference: a PyTorch CPU
 * implementation reaches ≈13,000 text tokens/s on this 2-core machine; target ≥ 0.5× of it.
 *
 * Also measured in the same run, to say what limits the step: the forward pass alone, a profile
 * of one step by kernel group, and the rate of the dense products (the step's ceiling if every
 * other kernel were free); and, on the single-threaded backends, the same step with the batch
 * sharded over one gradient worker per spare core (`aspo train --workers auto`).
 *
 *   npx tsc -p . && node dist/bench/model.js [--backends wasm,cpu] [--steps 5] [--cpu-steps 1]
 */
import { parseArgs } from 'node:util';
import os from 'node:os';
import { initBackend, tf, type BackendName } from '../src/model/backend.js';
import { DEFAULT_MODEL_CONFIG, VisionLanguageModel } from '../src/model/model.js';
import { AdamW } from '../src/train/optimizer.js';
import { batchGradient, sftLoss, type Batch } from '../src/train/sft.js';
import { autoWorkers, GradientWorkers } from '../src/train/parallel.js';
import { Rng } from '../src/util/random.js';

const REFERENCE_TOKENS_PER_S = 13_000;
const BATCH = 32;
const PROMPT = 10;
const RESPONSE = 69; // BOS + 10 + 69 = 80 text positions
const TEXT_TOKENS = BATCH * (1 + PROMPT + RESPONSE);

function syntheticBatch(): Batch {
  const rng = new Rng(1);
  const token = () => 4 + Math.floor(rng.next() * 508);
  return {
    images: Array.from({ length: BATCH }, () => Float32Array.from({ length: 64 * 64 * 3 }, () => rng.next() * 2 - 1)),
    promptIds: Array.from({ length: BATCH }, () => Array.from({ length: PROMPT }, token)),
    responseIds: Array.from({ length: BATCH }, () => Array.from({ length: RESPONSE }, token)),
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** One step as the SFT trainer takes it (with `workers`: the batch sharded over this thread and the workers). */
async function trainStep(model: VisionLanguageModel, optimizer: AdamW, batch: Batch, workers?: GradientWorkers): Promise<number> {
  const start = performance.now();
  const { grads } = await batchGradient(model, batch, workers);
  const byName: Record<string, tf.Tensor> = {};
  for (const [name, g] of Object.entries(grads)) byName[name] = tf.tensor(g, model.weights[name]!.shape, 'float32');
  optimizer.apply(byName, 1e-4);
  tf.dispose(Object.values(byName));
  return performance.now() - start;
}

/**
 * Multiply-adds ×2 of the step's 2-D products (forward; backward is twice that): q, k, v, o and the MLP on
 * every position, the one-hot embedding and the tied output projection on the text positions, the patch
 * projection on the visual ones.
 */
function denseForwardFlops(config: typeof DEFAULT_MODEL_CONFIG & { vocabSize: number }): number {
  const positions = BATCH * config.context;
  const text = BATCH * (config.context - 16);
  const d = config.width;
  const perLayer = 4 * d * d + 2 * d * config.mlpRatio * d;
  return 2 * (positions * perLayer * config.layers + 2 * text * config.vocabSize * d + BATCH * 16 * 16 * 16 * 3 * d);
}

async function profileStep(model: VisionLanguageModel, batch: Batch): Promise<{ groups: Record<string, number>; kernels: number }> {
  const profile = await tf.profile(() => tf.tidy(() => tf.variableGrads(() => sftLoss(model, batch), Object.values(model.weights)).value));
  const groups: Record<string, number> = { 'dense matmul (2-D)': 0, 'attention matmul (batched)': 0, 'transpose': 0, 'element-wise and reductions': 0 };
  for (const kernel of profile.kernels) {
    const ms = typeof kernel.kernelTimeMs === 'number' ? kernel.kernelTimeMs : 0;
    if (kernel.name === 'BatchMatMul' || kernel.name === '_FusedMatMul') {
      groups[kernel.inputShapes[0]!.length > 2 ? 'attention matmul (batched)' : 'dense matmul (2-D)']! += ms;
    } else if (kernel.name === 'Transpose') groups['transpose']! += ms;
    else groups['element-wise and reductions']! += ms;
  }
  return { groups, kernels: profile.kernels.length };
}

async function benchBackend(name: BackendName, steps: number): Promise<void> {
  let backend: string;
  try {
    backend = await initBackend(name);
  } catch (error) {
    console.log(`\n${name}: not available (${(error as Error).message})`);
    return;
  }
  const model = VisionLanguageModel.init({ ...DEFAULT_MODEL_CONFIG, vocabSize: 512 }, 1);
  const optimizer = new AdamW(model.weights);
  const batch = syntheticBatch();
  const warm = await trainStep(model, optimizer, batch);
  const times: number[] = [];
  for (let i = 0; i < steps; i++) times.push(await trainStep(model, optimizer, batch));
  const step = median(times);
  const forwardStart = performance.now();
  tf.tidy(() => void sftLoss(model, batch).dataSync());
  const forward = performance.now() - forwardStart;
  const tokensPerSecond = TEXT_TOKENS / (step / 1000);
  console.log(`\n${backend}: ${model.parameterCount.toLocaleString('en-US')} parameters, batch ${BATCH} × ${TEXT_TOKENS / BATCH} text tokens`);
  console.log(`  first step (warm-up)      ${warm.toFixed(0)} ms`);
  console.log(`  step (median of ${steps})      ${step.toFixed(0)} ms   [${times.map((t) => t.toFixed(0)).join(', ')}]`);
  console.log(`  forward only              ${forward.toFixed(0)} ms`);
  console.log(`  text tokens/s             ${tokensPerSecond.toFixed(0)}`);
  console.log(`  vs PyTorch CPU reference  ${(tokensPerSecond / REFERENCE_TOKENS_PER_S).toFixed(3)}× (target ≥ 0.5×)`);
  const { groups, kernels } = await profileStep(model, batch);
  const total = Object.values(groups).reduce((a, b) => a + b, 0);
  const dense = groups['dense matmul (2-D)']!;
  const flops = 3 * denseForwardFlops(model.config as typeof DEFAULT_MODEL_CONFIG & { vocabSize: number });
  console.log(`  dense products            ${(flops / 1e9).toFixed(1)} GFLOP per step at ${(flops / (dense * 1e6)).toFixed(1)} GFLOP/s; ` +
    `with everything else free: ${(TEXT_TOKENS / (dense / 1000)).toFixed(0)} tokens/s`);
  console.log(`  forward+backward kernels  ${total.toFixed(0)} ms in ${kernels} kernel calls:`);
  for (const [group, ms] of Object.entries(groups)) console.log(`    ${group.padEnd(30)} ${ms.toFixed(0).padStart(6)} ms  ${(100 * ms / total).toFixed(0)}%`);
  const extra = autoWorkers(backend);
  if (extra > 0) {
    // Data parallelism, as `aspo train --workers auto` runs it: the same steps with the batch sharded over threads.
    const workers = await GradientWorkers.start(extra, { config: model.config, backend });
    const parallelWarm = await trainStep(model, optimizer, batch, workers);
    const parallel: number[] = [];
    for (let i = 0; i < steps; i++) parallel.push(await trainStep(model, optimizer, batch, workers));
    await workers.close();
    const parallelStep = median(parallel);
    const parallelRate = TEXT_TOKENS / (parallelStep / 1000);
    console.log(`  with ${extra} gradient worker${extra > 1 ? 's' : ''} (${extra + 1} threads; first step ${parallelWarm.toFixed(0)} ms):`);
    console.log(`    step (median of ${steps})    ${parallelStep.toFixed(0)} ms   [${parallel.map((t) => t.toFixed(0)).join(', ')}]`);
    console.log(`    text tokens/s           ${parallelRate.toFixed(0)}  (${(step / parallelStep).toFixed(2)}× one thread; ` +
      `${(parallelRate / REFERENCE_TOKENS_PER_S).toFixed(3)}× the PyTorch reference)`);
  }
  optimizer.dispose();
  model.dispose();
}

const { values } = parseArgs({
  options: { backends: { type: 'string', default: 'wasm,cpu' }, steps: { type: 'string', default: '5' }, 'cpu-steps': { type: 'string', default: '1' } },
});
console.log(`Model SFT step benchmark — Node ${process.version}, ${os.cpus().length} cores (${os.cpus()[0]?.model}), ` +
  `load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
for (const name of values.backends!.split(',')) {
  await benchBackend(name as BackendName, Number(name === 'cpu' ? values['cpu-steps'] : values.steps));
}
console.log(`\nload average at the end ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
