/**
 * Benchmark: one ASPO loss + gradient (w.r.t. the policy's per-token log-probs) on a batch of
 * 32 pairs × 256 tokens, against DPO through the same code, interleaved in the same run.
 * Target (the paper's "no extra cost"): ASPO ≤ 1.1 × DPO.
 *
 *   npx tsc -p . && node dist/bench/loss.js [--backend wasm|cpu|auto] [--iterations 200] [--vocabulary 1024]
 */
import { parseArgs } from 'node:util';
import os from 'node:os';
import { initBackend, tf, type BackendName } from '../src/train/backend.js';
import {
  aspoLoss, aspoLossAndGradients, disposeBatch, lossConfig, outputTensors, packPairs,
  type AspoLossConfig, type PairArrays, type PreferenceBatch,
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

function timeOnce(batch: ReturnType<typeof packPairs>, config: AspoLossConfig): number {
  const start = performance.now();
  const { output, gradPolicyChosen, gradPolicyRejected } = aspoLossAndGradients(batch, config);
  // Reading the results forces the work to finish on asynchronous backends.
  gradPolicyChosen.dataSync();
  gradPolicyRejected.dataSync();
  output.loss.dataSync();
  const elapsed = performance.now() - start;
  tf.dispose([...outputTensors(output), gradPolicyChosen, gradPolicyRejected]);
  return elapsed;
}

/** The trainer's path: the weights computed inside the gradient tape, cut off by a stop-gradient. */
function timeInTape(batch: PreferenceBatch, config: AspoLossConfig): number {
  const start = performance.now();
  const { value, grads } = tf.valueAndGrads((policyChosen: tf.Tensor, policyRejected: tf.Tensor) => aspoLoss({
    ...batch,
    chosen: { ...batch.chosen, policyLogps: policyChosen as tf.Tensor2D },
    rejected: { ...batch.rejected, policyLogps: policyRejected as tf.Tensor2D },
  }, config).loss)([batch.chosen.policyLogps, batch.rejected.policyLogps]);
  grads.forEach((g) => g.dataSync());
  const elapsed = performance.now() - start;
  tf.dispose([value, ...grads]);
  return elapsed;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Interleaves the variants (so load changes hit all alike) and returns each one's median time. */
function compare(variants: [string, () => number][], iterations: number, warmup: number): Map<string, number> {
  const times = new Map<string, number[]>(variants.map(([name]) => [name, []]));
  for (let i = 0; i < warmup; i++) for (const [, run] of variants) run();
  for (let i = 0; i < iterations; i++) for (const [name, run] of variants) times.get(name)!.push(run());
  return new Map([...times].map(([name, t]) => [name, median(t)]));
}

function report(medians: Map<string, number>, baseline: string): void {
  const base = medians.get(baseline)!;
  for (const [name, t] of medians) console.log(`  ${name.padEnd(42)} ${t.toFixed(3).padStart(9)} ms   ${(t / base).toFixed(2)}× ${baseline}`);
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
    iterations: { type: 'string', default: '200' },
    vocabulary: { type: 'string', default: '1024' },
  } });
  const backend = await initBackend(values.backend as BackendName);
  const iterations = Number(values.iterations);
  const batch = packPairs(syntheticPairs());
  const configs: [string, AspoLossConfig][] = [
    ['dpo', lossConfig({ lossType: 'dpo' })],
    ['aspo (defaults)', lossConfig()],
    ['aspo detachWeights=false', lossConfig({ detachWeights: false })],
    ['aspo refWeights=own normalize=mass', lossConfig({ refWeights: 'own', normalize: 'mass' })],
  ];
  console.log(`backend ${backend} · ${os.cpus().length} cores · Node ${process.version} · batch ${BATCH} pairs × ${TOKENS} tokens · medians of interleaved runs`);
  console.log(`loss + gradient w.r.t. the per-token log-probs (${iterations} iterations):`);
  const loss = compare([
    ...configs.map(([name, config]): [string, () => number] => [name, () => timeOnce(batch, config)]),
    ['aspo (defaults), weights inside the tape', () => timeInTape(batch, configs[1]![1])],
  ], iterations, 20);
  report(loss, 'dpo');
  const ratio = loss.get('aspo (defaults)')! / loss.get('dpo')!;
  console.log(`  target aspo ≤ 1.1× dpo: ${ratio <= 1.1 ? 'met' : 'NOT met'} (${ratio.toFixed(2)}×; extra ${(loss.get('aspo (defaults)')! - loss.get('dpo')!).toFixed(3)} ms per call)`);

  const vocabulary = Number(values.vocabulary);
  const stepIterations = Math.max(5, Math.round(iterations / 20));
  console.log(`same, with the log-probs computed in the tape from logits over a ${vocabulary}-token vocabulary (${stepIterations} iterations):`);
  const step = compare(configs.slice(0, 2).map(([name, config]) => [name, stepTimer(batch, config, vocabulary)]), stepIterations, 2);
  report(step, 'dpo');
  disposeBatch(batch);
}

await main();
