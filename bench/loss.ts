/**
 * Benchmark: one ASPO loss + gradient (w.r.t. the policy's per-token log-probs) on a batch of
 * 32 pairs × 256 tokens, against DPO through the same code, interleaved in the same run: through
 * `aspoLoss` in a gradient tape (the trainer's path, tensors in and out) and through the pure
 * `lossForward` + `lossGradients` on arrays. Target (the paper's "no extra cost"): ASPO ≤ 1.1 × DPO.
 * Also prints each variant's kernel count, and the ratio inside a step that computes the log-probs
 * from logits.
 *
 *   npx tsc -p . && node dist/bench/loss.js [--backend wasm|cpu|auto] [--iterations 300] [--vocabulary 1024]
 */
import { parseArgs } from 'node:util';
import os from 'node:os';
import { initBackend, tf, type BackendName } from '../src/model/backend.js';
import {
  aspoLoss, lossConfig, lossForward, lossGradients, packPairs, withPolicyTensors,
  type AspoLossConfig, type LossArrays, type PairArrays, type PreferenceBatch,
} from '../src/train/loss.js';

const BATCH = 32;
const TOKENS = 256;

/** Deterministic synthetic pairs: ~12 sentences of ~20 tokens, a few tokens outside sentences. */
function syntheticPairs(): PairArrays[] {
  let state = 12345;
  const next = () => (state = (state * 1103515245 + 12345) % 2147483648) / 2147483648;
  const logps = () => Array.from({ length: TOKENS }, () => -0.05 - 3 * next());
  return Array.from({ length: BATCH }, () => {
    const sentenceIds: number[] = [];
    let sentence = 0;
    while (sentenceIds.length < TOKENS) {
      const length = 12 + Math.floor(16 * next());
      for (let i = 0; i < length && sentenceIds.length < TOKENS; i++) sentenceIds.push(sentence);
      if (sentenceIds.length < TOKENS) sentenceIds.push(-1);
      sentence++;
    }
    return {
      chosen: { policyLogps: logps(), refLogps: logps(), sentenceIds, similarity: Array.from({ length: sentence }, () => 0.1 + 0.25 * next()) },
      rejected: { policyLogps: logps(), refLogps: logps() },
    };
  });
}

/** The trainer's path: aspoLoss inside a gradient tape, the policy's log-probs as tensors, gradients read back. */
function timeInTape(batch: PreferenceBatch, config: AspoLossConfig): number {
  const start = performance.now();
  const { value, grads } = tf.valueAndGrads((policyChosen: tf.Tensor, policyRejected: tf.Tensor) => aspoLoss({
    ...batch,
    chosen: { ...batch.chosen, policyLogps: policyChosen as tf.Tensor2D },
    rejected: { ...batch.rejected, policyLogps: policyRejected as tf.Tensor2D },
  }, config).loss)([batch.chosen.policyLogps, batch.rejected.policyLogps]);
  // Reading the results forces the work to finish on asynchronous backends.
  grads.forEach((g) => g.dataSync());
  value.dataSync();
  const elapsed = performance.now() - start;
  tf.dispose([value, ...grads]);
  return elapsed;
}

/** The pure functions on arrays (what `aspo loss` and the rewards stage call). */
function timeArrays(arrays: LossArrays, config: AspoLossConfig): number {
  const start = performance.now();
  lossGradients(arrays, config, lossForward(arrays, config));
  return performance.now() - start;
}

const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.floor(q * (xs.length - 1))]!;

/** Interleaves the variants (so load changes hit all alike) and returns each one's times. */
function compare(variants: [string, () => number][], iterations: number, warmup: number): Map<string, number[]> {
  const times = new Map<string, number[]>(variants.map(([name]) => [name, []]));
  for (let i = 0; i < warmup; i++) for (const [, run] of variants) run();
  for (let i = 0; i < iterations; i++) for (const [name, run] of variants) times.get(name)!.push(run());
  return times;
}

/** Median, quartiles and the ratio of medians to the baseline's, plus the kernel count when given. */
function report(times: Map<string, number[]>, baseline: string, kernels?: Map<string, number>): void {
  const base = quantile(times.get(baseline)!, 0.5);
  for (const [name, t] of times) {
    const [q1, med, q3] = [0.25, 0.5, 0.75].map((q) => quantile(t, q));
    const count = kernels?.has(name) ? `${String(kernels.get(name)).padStart(4)} kernels` : '';
    console.log(`  ${name.padEnd(44)} ${med!.toFixed(3).padStart(9)} ms [${q1!.toFixed(3)}–${q3!.toFixed(3)}]  ${(med! / base).toFixed(2)}× ${baseline}  ${count}`);
  }
}

/** Kernels one call runs (forward and backward), from tf.profile. */
async function kernelCount(run: () => number): Promise<number> {
  return (await tf.profile(() => { run(); })).kernels.length;
}

/**
 * The same losses with the policy's log-probs produced inside the tape from logits over a vocabulary
 * (log-softmax + pick the target token) — the least work any training step adds before the loss.
 */
function stepTimer(batch: PreferenceBatch, config: AspoLossConfig, vocabulary: number): () => number {
  const logits = [tf.randomNormal([BATCH, TOKENS, vocabulary]), tf.randomNormal([BATCH, TOKENS, vocabulary])];
  const targets = [0, 1].map(() => tf.oneHot(tf.randomUniform([BATCH, TOKENS], 0, vocabulary, 'int32') as tf.Tensor2D, vocabulary));
  return () => {
    const start = performance.now();
    const { value, grads } = tf.valueAndGrads((chosenLogits: tf.Tensor, rejectedLogits: tf.Tensor) => {
      const logps = (l: tf.Tensor, target: tf.Tensor) => tf.sum(tf.mul(tf.logSoftmax(l), target), -1) as tf.Tensor2D;
      return aspoLoss({
        ...batch,
        chosen: { ...batch.chosen, policyLogps: logps(chosenLogits, targets[0]!) },
        rejected: { ...batch.rejected, policyLogps: logps(rejectedLogits, targets[1]!) },
      }, config).loss;
    })(logits);
    grads.forEach((g) => g.dataSync());
    const elapsed = performance.now() - start;
    tf.dispose([value, ...grads]);
    return elapsed;
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    backend: { type: 'string', default: 'auto' },
    iterations: { type: 'string', default: '300' },
    vocabulary: { type: 'string', default: '1024' },
  } });
  const backend = await initBackend(values.backend as BackendName);
  const iterations = Number(values.iterations);
  const arrays = packPairs(syntheticPairs());
  const batch = withPolicyTensors(arrays);
  const configs: [string, AspoLossConfig][] = [
    ['dpo', lossConfig({ lossType: 'dpo' })],
    ['aspo (defaults)', lossConfig()],
    ['aspo alpha=0 (perplexity only)', lossConfig({ alpha: 0 })],
    ['aspo alpha=1 (similarity only)', lossConfig({ alpha: 1 })],
    ['aspo normalize=mass', lossConfig({ normalize: 'mass' })],
    ['aspo refWeights=own', lossConfig({ refWeights: 'own' })],
    ['aspo pplSource=reference', lossConfig({ pplSource: 'reference' })],
    ['aspo refWeights=own normalize=mass', lossConfig({ refWeights: 'own', normalize: 'mass' })],
    ['aspo detachWeights=false', lossConfig({ detachWeights: false })],
  ];
  console.log(`backend ${backend} · ${os.cpus().length} cores · load ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} · Node ${process.version} · ` +
    `batch ${BATCH} pairs × ${TOKENS} tokens · medians [quartiles] of interleaved runs`);
  console.log(`loss + gradient w.r.t. the per-token log-probs (${iterations} iterations):`);
  const variants: [string, () => number][] = [
    ...configs.map(([name, config]): [string, () => number] => [name, () => timeInTape(batch, config)]),
    ...configs.slice(0, 2).map(([name, config]): [string, () => number] => [`${name}, arrays only`, () => timeArrays(arrays, config)]),
  ];
  const kernels = new Map<string, number>();
  for (const [name, run] of variants) kernels.set(name, await kernelCount(run));
  const loss = compare(variants, iterations, 20);
  report(loss, 'dpo', kernels);
  const dpo = quantile(loss.get('dpo')!, 0.5);
  const aspo = quantile(loss.get('aspo (defaults)')!, 0.5);
  console.log(`  target aspo ≤ 1.1× dpo: ${aspo / dpo <= 1.1 ? 'met' : 'NOT met'} (${(aspo / dpo).toFixed(2)}×; extra ${(aspo - dpo).toFixed(3)} ms per call)`);

  const vocabulary = Number(values.vocabulary);
  const stepIterations = Math.max(5, Math.round(iterations / 20));
  console.log(`same, with the log-probs computed in the tape from logits over a ${vocabulary}-token vocabulary (${stepIterations} iterations):`);
  const step = compare(configs.slice(0, 2).map(([name, config]) => [name, stepTimer(batch, config, vocabulary)]), stepIterations, 2);
  report(step, 'dpo');
  const stepDpo = quantile(step.get('dpo')!, 0.5);
  console.log(`  the loss-only extra above is ${(100 * (aspo - dpo) / stepDpo).toFixed(3)}% of this step: aspo/dpo = ${((stepDpo + aspo - dpo) / stepDpo).toFixed(4)} ` +
    '(the step medians differ by more than that from noise alone)');
  tf.dispose([batch.chosen.policyLogps, batch.rejected.policyLogps]);
}

await main();
