import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { initBackend, tf } from '../src/model/backend.js';
import {
  addMetricSums, aspoLoss, buildLayout, lossConfig, lossForward, lossGradients, lossMetrics, lossMetricSums, metricsOfSums, packPairs, withPolicyTensors,
  type AspoLossConfig, type LossArrays, type PairArrays,
} from '../src/train/loss.js';
import { finiteDifferenceGradients, referenceLoss, referencePair } from './loss-reference.js';

before(async () => {
  await initBackend();
});

interface Evaluated {
  loss: number;
  margins: number[];
  multipliers: number[][] | undefined;
  /** Per pair, trimmed to the pair's own length (padding gradients are checked separately). */
  gradChosen: number[][];
  gradRejected: number[][];
  rawGradChosen: number[][];
}

/** Splits a row-major array into `rows` rows of `length`. */
function rowsOf(flat: ArrayLike<number>, rows: number, length: number): number[][] {
  return Array.from({ length: rows }, (_, b) => Array.from({ length }, (_, t) => flat[b * length + t]!));
}

function evaluateBatch(pairs: PairArrays[], batch: LossArrays, options: Partial<AspoLossConfig>): Evaluated {
  const config = lossConfig(options);
  const values = lossForward(batch, config);
  const grads = lossGradients(batch, config, values);
  const { chosenLength, rejectedLength, sentences } = batch.layout;
  const rawGradChosen = rowsOf(grads.chosen, pairs.length, chosenLength);
  const rawGradRejected = rowsOf(grads.rejected, pairs.length, rejectedLength);
  return {
    loss: values.loss,
    margins: Array.from(values.margins),
    multipliers: values.weighting && rowsOf(values.weighting.sentences.multipliers, pairs.length, sentences.slots),
    gradChosen: pairs.map((p, i) => rawGradChosen[i]!.slice(0, p.chosen.policyLogps.length)),
    gradRejected: pairs.map((p, i) => rawGradRejected[i]!.slice(0, p.rejected.policyLogps.length)),
    rawGradChosen,
  };
}

function evaluate(pairs: PairArrays[], options: Partial<AspoLossConfig>): Evaluated {
  return evaluateBatch(pairs, packPairs(pairs), options);
}

/** Largest |a − b| over all entries, relative to the largest |b| (gradients have near-zero entries). */
function relativeError(actual: number[][], expected: number[][]): number {
  const flatA = actual.flat();
  const flatE = expected.flat();
  assert.equal(flatA.length, flatE.length);
  const scale = Math.max(1e-12, ...flatE.map(Math.abs));
  return Math.max(0, ...flatA.map((a, i) => Math.abs(a - flatE[i]!))) / scale;
}

function maxAbsDiff(a: number[][], b: number[][]): number {
  return Math.max(0, ...a.flat().map((x, i) => Math.abs(x - b.flat()[i]!)));
}

/** Deterministic pseudo-random numbers (no flaky tests). */
function sequence(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return state / 2147483648;
  };
}

/** A batch exercising every path: several sentences, tokens outside sentences, a sentence slot with no
 * tokens, a one-sentence response, a padding row, and responses of different lengths. */
function mixedPairs(): PairArrays[] {
  const next = sequence(7);
  const logps = (n: number) => Array.from({ length: n }, () => -0.05 - 2.5 * next());
  const similarity = (n: number) => Array.from({ length: n }, () => 0.15 + 0.2 * next());
  return [
    { chosen: { policyLogps: logps(8), refLogps: logps(8), sentenceIds: [0, 0, 0, 1, 1, 2, 2, -1], similarity: similarity(3) },
      rejected: { policyLogps: logps(5), refLogps: logps(5) } },
    { chosen: { policyLogps: logps(10), refLogps: logps(10), sentenceIds: [-1, 0, 0, -1, 1, 1, 1, 2, 4, 4], similarity: similarity(5) },
      rejected: { policyLogps: logps(9), refLogps: logps(9) } },
    { chosen: { policyLogps: logps(4), refLogps: logps(4), sentenceIds: [0, 0, 0, -1], similarity: similarity(1) },
      rejected: { policyLogps: logps(3), refLogps: logps(3) } },
    { chosen: { policyLogps: [], refLogps: [], sentenceIds: [], similarity: [] },
      rejected: { policyLogps: [], refLogps: [] } },
  ];
}

const ASPO_COMBINATIONS: Partial<AspoLossConfig>[] = [];
for (const alpha of [0, 0.5, 1]) {
  for (const normalize of ['none', 'mass'] as const) {
    for (const detachWeights of [true, false]) {
      for (const refWeights of ['shared', 'own'] as const) {
        for (const pplSource of ['policy', 'reference'] as const) {
          ASPO_COMBINATIONS.push({ lossType: 'aspo', beta: 0.3, alpha, scale: 1.5, normalize, detachWeights, refWeights, pplSource });
        }
      }
    }
  }
}

describe('hand-worked three-sentence example', () => {
  // Chosen: 7 tokens, sentences [0 0 | 1 1 1 | 2 | outside].
  //   Policy log-probs per sentence sum to −2 ln 2, −3 ln 4, −ln 3 → PPL = 2, 4, 3 (mean NLL ln 2, ln 4, ln 3).
  //   Reference sums: −1.5, −4.0, −1.2; the outside token has π = π_ref.
  //   Log-ratios D = (−2 ln 2 + 1.5, −3 ln 4 + 4, −ln 3 + 1.2) = (0.1137056389, −0.1588830834, 0.1013877113).
  // Similarity S = (0.30, 0.20, 0.25): S' = (0.1/0.100001, 0, 0.05/0.100001) = (0.9999900001, 0, 0.4999950000).
  // −PPL = (−2, −4, −3): P' = (2/2.000001, 0, 1/2.000001) = (0.9999995000, 0, 0.4999997500).
  // α = 0.5: w = (0.9999947501, 0, 0.4999973750); λ = 1: m = (1.9999947501, 1, 1.4999973750).
  // Chosen term Σ m_k·D_k = 0.2274105 − 0.1588831 + 0.1520813 = 0.2206089.
  // Rejected: π = (−1, −2), π_ref = (−0.8, −1.5) → log-ratio −0.7.
  // M = 0.1·(0.2206089 + 0.7) = 0.0920609;  L = log(1 + e^−M) = 0.6481758.
  // dL/dπ_c,t = −σ(−M)·β·m_t with σ(−M) = 0.4770010: −0.0953999 (s0), −0.0477001 (s1, outside), −0.0715500 (s2);
  // dL/dπ_r,t = +0.0477001.   Plain DPO on the same pair: M = 0.1·(ΣD + 0.7) = 0.0756210, L = 0.6560513.
  const pair: PairArrays = {
    chosen: {
      policyLogps: [-0.2, -2 * Math.log(2) + 0.2, -1.0, -1.5, -3 * Math.log(4) + 2.5, -Math.log(3), -0.05],
      refLogps: [-0.7, -0.8, -1.1, -1.4, -1.5, -1.2, -0.05],
      sentenceIds: [0, 0, 1, 1, 1, 2, -1],
      similarity: [0.30, 0.20, 0.25],
    },
    rejected: { policyLogps: [-1, -2], refLogps: [-0.8, -1.5] },
  };

  test('loss, margin, multipliers and gradients match the numbers worked out by hand', () => {
    const r = evaluate([pair], {});
    assert.ok(Math.abs(r.margins[0]! - 0.0920609) < 1e-6, `margin ${r.margins[0]}`);
    assert.ok(Math.abs(r.loss - 0.6481758) < 1e-6, `loss ${r.loss}`);
    const m = r.multipliers![0]!;
    [1.9999947501, 1, 1.4999973750].forEach((expected, k) => assert.ok(Math.abs(m[k]! - expected) < 1e-6, `m${k} ${m[k]}`));
    const g = [-0.0953999, -0.0953999, -0.0477001, -0.0477001, -0.0477001, -0.0715500, -0.0477001];
    g.forEach((expected, t) => assert.ok(Math.abs(r.gradChosen[0]![t]! - expected) < 1e-6, `grad chosen ${t}`));
    r.gradRejected[0]!.forEach((v) => assert.ok(Math.abs(v - 0.0477001) < 1e-6));
  });

  test('the same pair through lossType "dpo" gives the hand-worked DPO numbers', () => {
    const r = evaluate([pair], { lossType: 'dpo' });
    assert.ok(Math.abs(r.margins[0]! - 0.0756210) < 1e-6);
    assert.ok(Math.abs(r.loss - 0.6560513) < 1e-6);
    assert.equal(r.multipliers, undefined);
  });
});

describe('agreement with the independent float64 implementation', () => {
  const pairs = mixedPairs();
  for (const options of [...ASPO_COMBINATIONS, { lossType: 'dpo' as const, beta: 0.3 }]) {
    const name = options.lossType === 'dpo' ? 'dpo' :
      `alpha ${options.alpha} ${options.normalize} detach=${options.detachWeights} ${options.refWeights} ${options.pplSource}`;
    test(`loss and gradients: ${name}`, () => {
      const config = lossConfig(options);
      const r = evaluate(pairs, config);
      const expectedLoss = referenceLoss(pairs, config);
      assert.ok(Math.abs(r.loss - expectedLoss) <= 1e-5 * Math.abs(expectedLoss), `loss ${r.loss} vs ${expectedLoss}`);
      pairs.forEach((pair, i) => {
        if (pair.chosen.policyLogps.length > 0) {
          const m = referencePair(pair, config).margin;
          assert.ok(Math.abs(r.margins[i]! - m) <= 1e-5 * Math.max(1, Math.abs(m)), `margin ${i}`);
        }
      });
      const fd = finiteDifferenceGradients(pairs, config);
      const errChosen = relativeError(r.gradChosen, fd.chosen);
      const errRejected = relativeError(r.gradRejected, fd.rejected);
      assert.ok(errChosen < 1e-4, `chosen gradient relative error ${errChosen}`);
      assert.ok(errRejected < 1e-4, `rejected gradient relative error ${errRejected}`);
      // Padding positions get no gradient.
      assert.ok(r.rawGradChosen[2]!.slice(4).every((v) => v === 0));
      assert.ok(r.rawGradChosen[3]!.every((v) => v === 0));
    });
  }
});

describe('reduction to DPO (loss and gradients to 1e-6)', () => {
  const dpo = (pairs: PairArrays[]) => evaluate(pairs, { lossType: 'dpo', beta: 0.2 });
  const assertSame = (a: Evaluated, b: Evaluated) => {
    assert.ok(Math.abs(a.loss - b.loss) < 1e-6, `loss ${a.loss} vs ${b.loss}`);
    assert.ok(maxAbsDiff(a.gradChosen, b.gradChosen) < 1e-6, 'chosen gradients differ');
    assert.ok(maxAbsDiff(a.gradRejected, b.gradRejected) < 1e-6, 'rejected gradients differ');
  };

  test('scale 0, whatever the other options', () => {
    const pairs = mixedPairs();
    const expected = dpo(pairs);
    for (const options of ASPO_COMBINATIONS) assertSame(evaluate(pairs, { ...options, beta: 0.2, scale: 0 }), expected);
  });

  test('one sentence in every response (K = 1), scale 1', () => {
    const pairs = mixedPairs().map((p) => ({
      ...p,
      chosen: { ...p.chosen, sentenceIds: p.chosen.sentenceIds.map((id) => (id >= 0 ? 0 : -1)), similarity: [0.3] },
    }));
    const expected = dpo(pairs);
    for (const options of ASPO_COMBINATIONS) assertSame(evaluate(pairs, { ...options, beta: 0.2 }), expected);
  });

  test('all-equal similarity scores with alpha 1 (similarity only)', () => {
    const pairs = mixedPairs().map((p) => ({ ...p, chosen: { ...p.chosen, similarity: p.chosen.similarity!.map(() => 0.27) } }));
    assertSame(evaluate(pairs, { beta: 0.2, alpha: 1, scale: 2 }), dpo(pairs));
  });

  test('all-equal perplexities and scores with the full model', () => {
    const pairs: PairArrays[] = [{
      chosen: { policyLogps: [-1, -1, -1, -1, -1], refLogps: [-0.9, -1.3, -0.5, -0.9, -2], sentenceIds: [0, 1, 1, 2, -1], similarity: [0.2, 0.2, 0.2] },
      rejected: { policyLogps: [-2, -1], refLogps: [-1, -1.2] },
    }];
    // Detached weights: at all-equal perplexities min and max tie, a kink where the gradient through
    // the weights is not defined, so only the stopped-gradient reading has a DPO gradient to compare.
    for (const refWeights of ['shared', 'own'] as const) {
      assertSame(evaluate(pairs, { beta: 0.2, normalize: 'mass', refWeights }), dpo(pairs));
    }
  });
});

describe('detachWeights', () => {
  const pairs = mixedPairs();
  const base = { alpha: 0.5, pplSource: 'policy' as const };

  test('true: the gradient treats the multipliers as constants, −σ(−M)·β·m_t / pairs', () => {
    const r = evaluate(pairs, { ...base, detachWeights: true, beta: 0.3 });
    const realPairs = 3;
    pairs.slice(0, realPairs).forEach((pair, i) => {
      const sigma = 1 / (1 + Math.exp(r.margins[i]!));
      pair.chosen.sentenceIds.forEach((id, t) => {
        const m = id >= 0 ? r.multipliers![i]![id]! : 1;
        const expected = -sigma * 0.3 * m / realPairs;
        assert.ok(Math.abs(r.gradChosen[i]![t]! - expected) < 1e-7, `pair ${i} token ${t}`);
      });
    });
  });

  test('false: the gradient also flows through the perplexity weights, and changes', () => {
    const detached = evaluate(pairs, { ...base, detachWeights: true });
    const attached = evaluate(pairs, { ...base, detachWeights: false });
    assert.ok(Math.abs(detached.loss - attached.loss) < 1e-7, 'the forward value does not depend on detaching');
    assert.ok(maxAbsDiff(detached.gradChosen, attached.gradChosen) > 1e-3, 'chosen gradients should differ');
    assert.ok(maxAbsDiff(detached.gradRejected, attached.gradRejected) < 1e-7, 'rejected gradients do not involve the weights');
    // The one-sentence pair has w = 0 whatever its perplexity, so nothing flows through its weight.
    assert.ok(maxAbsDiff([detached.gradChosen[2]!], [attached.gradChosen[2]!]) < 1e-7);
  });

  test('weights that do not depend on the policy (pplSource reference, or alpha 1) make it irrelevant', () => {
    for (const options of [{ pplSource: 'reference' as const }, { alpha: 1 }]) {
      const a = evaluate(pairs, { ...options, detachWeights: true });
      const b = evaluate(pairs, { ...options, detachWeights: false });
      assert.ok(maxAbsDiff(a.gradChosen, b.gradChosen) < 1e-7);
    }
  });

  test('the closed-form gradient equals TensorFlow autodiff of the same objective with the multipliers held constant', () => {
    const batch = packPairs(pairs);
    const { chosenLength, rejectedLength, sentences } = batch.layout;
    const matrix = (values: ArrayLike<number>, length: number) => tf.tensor2d(rowsOf(values, pairs.length, length));
    const rejectedKeep = matrix(batch.layout.rejectedKeep, rejectedLength);
    const policy = [matrix(batch.chosen.policyLogps, chosenLength), matrix(batch.rejected.policyLogps, rejectedLength)];
    const [chosenRef, rejectedRef] = [matrix(batch.chosen.refLogps, chosenLength), matrix(batch.rejected.refLogps, rejectedLength)];
    for (const options of ASPO_COMBINATIONS.filter((o) => o.detachWeights)) {
      const config = lossConfig(options);
      const values = lossForward(batch, config);
      const grads = lossGradients(batch, config, values);
      // Each token's factor, read from the per-slot multipliers (slot K: tokens outside every sentence; padding 0).
      const perToken = (slotFactors: Float64Array) => tf.tensor2d(pairs.map((p, b) => Array.from({ length: chosenLength }, (_, t) => {
        const id = p.chosen.sentenceIds[t];
        return id === undefined ? 0 : slotFactors[b * sentences.slots + (id >= 0 ? id : sentences.numSentences)]!;
      })));
      const policyFactor = perToken(values.weighting!.slotMultipliers);
      const refFactor = perToken(values.weighting!.refSlotMultipliers);
      // Padding holds 0 in packPairs' arrays and factor 0, so plain sums are the masked sums here.
      const objective = (policyChosen: tf.Tensor, policyRejected: tf.Tensor) => tf.tidy(() => {
        const chosen = tf.sum(tf.sub(tf.mul(policyFactor, policyChosen), tf.mul(refFactor, chosenRef)), 1);
        const rejected = tf.sum(tf.mul(tf.sub(policyRejected, rejectedRef), rejectedKeep), 1);
        const margins = tf.mul(tf.sub(chosen, rejected), config.beta);
        return tf.div(tf.sum(tf.mul(tf.softplus(tf.neg(margins)), tf.tensor1d([1, 1, 1, 0]))), 3) as tf.Scalar;
      });
      const [autoChosen, autoRejected] = tf.grads(objective)(policy);
      const chosenDiff = maxAbsDiff(rowsOf(grads.chosen, pairs.length, chosenLength), autoChosen!.arraySync() as number[][]);
      const rejectedDiff = maxAbsDiff(rowsOf(grads.rejected, pairs.length, rejectedLength), autoRejected!.arraySync() as number[][]);
      assert.ok(chosenDiff < 1e-7 && rejectedDiff < 1e-7, `${JSON.stringify(options)}: ${chosenDiff}, ${rejectedDiff}`);
      const autoLoss = objective(policy[0]!, policy[1]!);
      assert.ok(Math.abs(values.loss - (autoLoss.arraySync() as number)) < 1e-6);
      tf.dispose([policyFactor, refFactor, autoChosen!, autoRejected!, autoLoss]);
    }
    tf.dispose([rejectedKeep, ...policy, chosenRef, rejectedRef]);
  });
});

describe('aspoLoss: the loss as one op in the caller\'s gradient tape (the trainer\'s path)', () => {
  const pairs = mixedPairs();
  const arrays = packPairs(pairs);

  test('its value and tape gradients are lossForward\'s and lossGradients\', for every option, scaled by the upstream gradient', () => {
    const batch = withPolicyTensors(arrays);
    const { chosenLength, rejectedLength } = arrays.layout;
    for (const options of [...ASPO_COMBINATIONS, { lossType: 'dpo' as const, beta: 0.3 }]) {
      const config = lossConfig(options);
      const expected = lossGradients(arrays, config, lossForward(arrays, config));
      // 2.5·L through the tape: the op's gradient is scaled by its upstream gradient.
      const { value, grads } = tf.valueAndGrads((chosen: tf.Tensor, rejected: tf.Tensor) => tf.mul(aspoLoss({
        ...batch,
        chosen: { ...batch.chosen, policyLogps: chosen as tf.Tensor2D },
        rejected: { ...batch.rejected, policyLogps: rejected as tf.Tensor2D },
      }, config).loss, 2.5) as tf.Scalar)([batch.chosen.policyLogps, batch.rejected.policyLogps]);
      const forward = lossForward(arrays, config).loss;
      assert.ok(Math.abs((value.arraySync() as number) - 2.5 * forward) < 1e-5, JSON.stringify(options));
      const scaled = (g: Float32Array) => Array.from(g, (v) => 2.5 * v);
      assert.ok(maxAbsDiff(grads[0]!.arraySync() as number[][], rowsOf(scaled(expected.chosen), pairs.length, chosenLength)) < 1e-7, JSON.stringify(options));
      assert.ok(maxAbsDiff(grads[1]!.arraySync() as number[][], rowsOf(scaled(expected.rejected), pairs.length, rejectedLength)) < 1e-7, JSON.stringify(options));
      tf.dispose([value, ...grads]);
    }
    tf.dispose([batch.chosen.policyLogps, batch.rejected.policyLogps]);
  });

  test('reference log-probs and similarity may be tensors too (read back once), with the same loss and gradients', () => {
    const config = lossConfig({ detachWeights: false, refWeights: 'own' });
    const { layout } = arrays;
    const asTensor = (values: ArrayLike<number>, length: number) => tf.tensor2d(Float32Array.from(values), [layout.batch, length]);
    const batch = withPolicyTensors(arrays);
    const tensors = {
      ...batch,
      chosen: { ...batch.chosen, refLogps: asTensor(arrays.chosen.refLogps, layout.chosenLength) },
      rejected: { ...batch.rejected, refLogps: asTensor(arrays.rejected.refLogps, layout.rejectedLength) },
      similarity: asTensor(arrays.similarity!, layout.sentences.numSentences),
    };
    const gradsOf = (b: typeof batch) => tf.grads((chosen: tf.Tensor, rejected: tf.Tensor) => aspoLoss({
      ...b, chosen: { ...b.chosen, policyLogps: chosen as tf.Tensor2D }, rejected: { ...b.rejected, policyLogps: rejected as tf.Tensor2D },
    }, config).loss)([b.chosen.policyLogps, b.rejected.policyLogps]);
    const [fromArrays, fromTensors] = [gradsOf(batch), gradsOf(tensors)];
    // The arrays are float64 and the tensors float32: the same up to float32 rounding of the inputs.
    for (const i of [0, 1]) assert.ok(maxAbsDiff(fromArrays[i]!.arraySync() as number[][], fromTensors[i]!.arraySync() as number[][]) < 1e-6);
    const lossOf = (b: typeof batch) => tf.tidy(() => aspoLoss(b, config).values.loss);
    assert.ok(Math.abs(lossOf(batch) - lossOf(tensors)) < 1e-6);
    tf.dispose([...fromArrays, ...fromTensors, tensors.chosen.refLogps, tensors.rejected.refLogps, tensors.similarity, batch.chosen.policyLogps, batch.rejected.policyLogps]);
  });

  test('the gradient reaches variables upstream of the log-probs (here: a per-token offset), and no tensor is left behind', () => {
    const config = lossConfig({ detachWeights: false, normalize: 'mass' });
    const batch = withPolicyTensors(arrays);
    const offset = tf.variable(tf.zerosLike(batch.chosen.policyLogps));
    const before = tf.memory().numTensors;
    const { value, grads } = tf.variableGrads(() => aspoLoss({
      ...batch, chosen: { ...batch.chosen, policyLogps: tf.add(batch.chosen.policyLogps, offset) as tf.Tensor2D },
    }, config).loss, [offset]);
    const expected = lossGradients(arrays, config, lossForward(arrays, config)).chosen;
    assert.ok(maxAbsDiff(grads[offset.name]!.arraySync() as number[][], rowsOf(expected, pairs.length, arrays.layout.chosenLength)) < 1e-7);
    tf.dispose([value, grads[offset.name]!]);
    assert.equal(tf.memory().numTensors, before, 'the op frees everything it made but its result');
    tf.dispose([offset, batch.chosen.policyLogps, batch.rejected.policyLogps]);
  });
});

describe('layout', () => {
  test('a sentence id beyond numSentences is rejected, naming the field', () => {
    assert.throws(() => buildLayout({
      batch: 1, numSentences: 2, chosenLength: 3, chosenIds: [0, 1, 2], chosenKeep: [1, 1, 1], rejectedLength: 1, rejectedKeep: [1],
    }), /chosen\.sentenceIds holds sentence 2 but numSentences is 2/);
  });

  test('padding rows, padding positions and responses without sentences are laid out as such', () => {
    const layout = buildLayout({
      batch: 3, numSentences: 2, chosenLength: 3,
      chosenIds: [0, -1, 1, -1, -1, 0, 5, 5, 5], chosenKeep: [1, 1, 1, 1, 1, 0, 0, 0, 0],
      rejectedLength: 2, rejectedKeep: [1, 0, 1, 1, 0, 0],
    });
    assert.deepEqual(Array.from(layout.sentences.tokenSlot), [0, 2, 1, 2, 2, -1, -1, -1, -1]);
    assert.deepEqual(Array.from(layout.sentences.counts), [1, 1, 1, 0, 0, 2, 0, 0, 0]);
    assert.deepEqual(Array.from(layout.sentences.present), [1, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual(Array.from(layout.pairMask), [1, 1, 0]);
    assert.equal(layout.pairs, 2);
  });
});

describe('numerical stability', () => {
  const allFinite = (r: Evaluated) => [r.loss, ...r.margins, ...r.rawGradChosen.flat(), ...r.gradRejected.flat()].every(Number.isFinite);

  test('padding holding −Infinity or NaN changes nothing', () => {
    const pairs = mixedPairs();
    const clean = evaluate(pairs, { detachWeights: false, refWeights: 'own', normalize: 'mass' });
    const batch = packPairs(pairs);
    const { tokenSlot } = batch.layout.sentences;
    const poison = (x: ArrayLike<number>, value: number) => Float64Array.from(x, (v, p) => (tokenSlot[p]! >= 0 ? v : value));
    const poisoned = { ...batch, chosen: { policyLogps: poison(batch.chosen.policyLogps, -Infinity), refLogps: poison(batch.chosen.refLogps, NaN) } };
    assert.ok(poisoned.chosen.policyLogps.includes(-Infinity), 'the batch has padding to poison');
    const r = evaluateBatch(pairs, poisoned, { detachWeights: false, refWeights: 'own', normalize: 'mass' });
    assert.ok(Math.abs(r.loss - clean.loss) < 1e-12);
    assert.ok(r.rawGradChosen.flat().every(Number.isFinite));
    assert.ok(maxAbsDiff(r.rawGradChosen, clean.rawGradChosen) < 1e-12);
  });

  test('one-sentence responses, responses without sentences and empty similarity give DPO without NaN', () => {
    const pairs: PairArrays[] = [
      { chosen: { policyLogps: [-1, -2], refLogps: [-1.5, -1], sentenceIds: [0, 0], similarity: [0.4] }, rejected: { policyLogps: [-3], refLogps: [-2] } },
      { chosen: { policyLogps: [-1, -2], refLogps: [-1.5, -1], sentenceIds: [-1, -1], similarity: [] }, rejected: { policyLogps: [-3], refLogps: [-2] } },
    ];
    for (const options of ASPO_COMBINATIONS) {
      const r = evaluate(pairs, options);
      assert.ok(allFinite(r));
      assert.ok(Math.abs(r.loss - evaluate(pairs, { ...options, lossType: 'dpo' }).loss) < 1e-6);
    }
  });

  test('a batch of nothing but padding rows has loss 0 and zero gradients', () => {
    const empty: PairArrays = { chosen: { policyLogps: [], refLogps: [], sentenceIds: [], similarity: [] }, rejected: { policyLogps: [], refLogps: [] } };
    const r = evaluate([empty, empty], { detachWeights: false });
    assert.equal(r.loss, 0);
    assert.ok(r.rawGradChosen.flat().every((v) => v === 0));
  });

  test('huge margins and absurd perplexities stay finite', () => {
    const pairs: PairArrays[] = [1, -1].map((sign) => ({
      chosen: { policyLogps: [-1, -2000, -3, -90], refLogps: [-1000 * sign, -1, -2, -1], sentenceIds: [0, 1, 2, 2], similarity: [0.1, 0.5, 0.3] },
      rejected: { policyLogps: [-1, -5], refLogps: [-2, -1] },
    }));
    for (const options of ASPO_COMBINATIONS) {
      const r = evaluate(pairs, options);
      assert.ok(allFinite(r), JSON.stringify(options));
      assert.ok(r.loss > 10, 'both pairs have hugely negative margins');
    }
  });
});

describe('metrics', () => {
  test('DPO-named metrics and the weight statistics agree with the float64 reference', () => {
    const pairs = mixedPairs();
    const config = lossConfig({ beta: 0.3 });
    const metrics = lossMetrics(lossForward(packPairs(pairs), config));
    const real = pairs.slice(0, 3);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    const ref = real.map((p) => referencePair(p, config));
    const rejected = real.map((p) => 0.3 * sum(p.rejected.policyLogps.map((x, t) => x - p.rejected.refLogps[t]!)));
    const weights = ref.flatMap((r) => r.weights.filter((w): w is number => w !== null));
    const expected: Record<string, number> = {
      loss: referenceLoss(pairs, config),
      'rewards/chosen': mean(ref.map((r, i) => r.margin + rejected[i]!)),
      'rewards/rejected': mean(rejected),
      'rewards/margins': mean(ref.map((r) => r.margin)),
      'rewards/accuracies': mean(ref.map((r) => (r.margin > 0 ? 1 : 0))),
      'logps/chosen': mean(real.map((p) => sum(p.chosen.policyLogps))),
      'logps/rejected': mean(real.map((p) => sum(p.rejected.policyLogps))),
      'aspo/weights_mean': mean(weights),
      'aspo/weights_std': Math.sqrt(mean(weights.map((w) => (w - mean(weights)) ** 2))),
      'aspo/one_sentence_fraction': 1 / 3,
    };
    // a batch computed in shards (as gradient workers do) sums to the same metrics
    const sharded = metricsOfSums(addMetricSums([pairs.slice(0, 1), pairs.slice(1)].map((part) => lossMetricSums(lossForward(packPairs(part), config)))));
    for (const [how, got] of [['whole', metrics], ['shards', sharded]] as const) {
      assert.deepEqual(Object.keys(got).sort(), Object.keys(expected).sort());
      for (const [name, value] of Object.entries(expected)) {
        assert.ok(Math.abs(got[name as keyof typeof got]! - value) < 1e-9 * Math.max(1, Math.abs(value)), `${how}: ${name}: ${got[name as keyof typeof got]} vs ${value}`);
      }
    }
  });

  test('DPO reports the DPO metrics only', () => {
    const metrics = lossMetrics(lossForward(packPairs(mixedPairs()), lossConfig({ lossType: 'dpo' })));
    assert.deepEqual(Object.keys(metrics), ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/margins', 'rewards/accuracies', 'logps/chosen', 'logps/rejected']);
  });
});

describe('configuration', () => {
  test('defaults are the spec\'s', () => {
    assert.deepEqual(lossConfig(), {
      lossType: 'aspo', beta: 0.1, alpha: 0.5, scale: 1, normalize: 'none', detachWeights: true, refWeights: 'shared', pplSource: 'policy',
    });
  });

  test('bad values are rejected with the field named', () => {
    assert.throws(() => lossConfig({ beta: 0 }), /beta must be a number > 0/);
    assert.throws(() => lossConfig({ alpha: 1.5 }), /alpha must be a number in \[0, 1\]/);
    assert.throws(() => lossConfig({ scale: -1 }), /scale/);
    assert.throws(() => lossConfig({ normalize: 'sum' }), /normalize must be one of none, mass/);
    assert.throws(() => lossConfig({ detachWeights: 'yes' }), /detachWeights/);
    assert.throws(() => lossConfig({ refWeights: 'mine' }), /refWeights/);
    assert.throws(() => lossConfig({ pplSource: 'oracle' }), /pplSource/);
    assert.throws(() => lossConfig({ lossType: 'ipo' }), /lossType/);
  });

  test('packPairs rejects inconsistent arrays, naming the pair and the field', () => {
    const [good, other] = mixedPairs();
    const shortIds = { ...other!, chosen: { ...other!.chosen, sentenceIds: [0, 1, 2] } };
    assert.throws(() => packPairs([good!, shortIds]), /pairs\[1\]\.chosen\.sentenceIds has 3 entries but pairs\[1\]\.chosen\.policyLogps has 10/);
    const badId = { ...good!, chosen: { ...good!.chosen, sentenceIds: [0, 0, 0, 1, 1, 2, 2, -2] } };
    assert.throws(() => packPairs([badId]), /pairs\[0\]\.chosen\.sentenceIds\[7\] must be an integer ≥ −1/);
    const fewScores = { ...good!, chosen: { ...good!.chosen, similarity: [0.1, 0.2] } };
    assert.throws(() => packPairs([fewScores]), /pairs\[0\]\.chosen\.similarity has 2 entries but pairs\[0\]\.chosen\.sentenceIds\[5\] is sentence 2/);
    const shortRef = { ...good!, rejected: { ...good!.rejected, refLogps: [-1] } };
    assert.throws(() => packPairs([shortRef]), /pairs\[0\]\.rejected\.refLogps has 1 entries/);
  });

  test('similarity is required unless alpha is 0', () => {
    const pair = mixedPairs()[0]!;
    const withoutSimilarity = { ...pair, chosen: { ...pair.chosen, similarity: undefined } };
    const batch = packPairs([withoutSimilarity]);
    assert.throws(() => lossForward(batch, lossConfig({ alpha: 0.5 })), /similarity is required when alpha > 0/);
    assert.ok(Number.isFinite(lossForward(batch, lossConfig({ alpha: 0 })).loss));
  });
});
