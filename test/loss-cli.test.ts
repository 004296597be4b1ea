import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { CLI } from './support.js';
import { finiteDifferenceGradients, referencePair, type RefConfig } from './loss-reference.js';
import { parseLossCase } from '../src/train/loss-case.js';

function aspoLoss(args: string[], input: string) {
  return spawnSync(process.execPath, [CLI, 'loss', ...args], { input, encoding: 'utf8' });
}

const goodCase = {
  id: 'three-sentences',
  beta: 0.2,
  normalize: 'mass',
  chosen: {
    policyLogps: [-0.4, -1.2, -0.9, -2.0, -0.3, -1.6, -0.1],
    refLogps: [-0.6, -1.0, -1.3, -1.7, -0.2, -1.1, -0.2],
    sentenceIds: [0, 0, 1, 1, 1, 2, -1],
    similarity: [0.31, 0.18, 0.26],
    sentences: ['A red car is parked.', 'It has six wheels.', 'The street is wet.'],
  },
  rejected: { policyLogps: [-1.0, -2.5, -0.7], refLogps: [-0.9, -1.5, -0.8] },
};

test('aspo loss: one JSON line per case; a malformed case reports its field and the next case still runs', () => {
  const malformed = { ...goodCase, chosen: { ...goodCase.chosen, sentenceIds: [0, 0, 1] } };
  const noSimilarity = { ...goodCase, chosen: { ...goodCase.chosen, similarity: undefined } };
  const input = [goodCase, malformed, noSimilarity, { ...goodCase, scale: 'big' }].map((c) => JSON.stringify(c)).join('\n') +
    '\n{not json\n' + JSON.stringify({ ...goodCase, id: 7, lossType: 'dpo' }) + '\n';
  const result = aspoLoss([], input);
  assert.equal(result.status, 1, 'some cases failed');
  const lines = result.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(lines.length, 6);

  const [first, bad, missing, badScale, badJson, dpo] = lines;
  const config = { ...parseLossCase(goodCase).config } as RefConfig;
  const expected = referencePair(goodCase, config);
  assert.equal(first.id, 'three-sentences');
  assert.ok(Math.abs(first.margin - expected.margin) < 1e-5);
  assert.ok(Math.abs(first.loss - expected.loss) < 1e-5);
  expected.weights.forEach((w, k) => assert.ok(Math.abs(first.weights[k] - w!) < 1e-5, `weight ${k}`));
  expected.multipliers.forEach((m, k) => assert.ok(Math.abs(first.multipliers[k] - m!) < 1e-5, `multiplier ${k}`));
  const fd = finiteDifferenceGradients([goodCase], config);
  fd.chosen[0]!.forEach((g, t) => assert.ok(Math.abs(first.gradPolicyChosen[t] - g) < 1e-5, `grad chosen ${t}`));
  fd.rejected[0]!.forEach((g, t) => assert.ok(Math.abs(first.gradPolicyRejected[t] - g) < 1e-5, `grad rejected ${t}`));

  assert.match(bad.error, /chosen\.sentenceIds has 3 entries but chosen\.policyLogps has 7/);
  assert.match(missing.error, /chosen\.similarity is required when alpha > 0/);
  assert.match(badScale.error, /scale must be a number/);
  assert.match(badJson.error, /not valid JSON/);
  assert.equal(dpo.id, 7);
  assert.deepEqual(dpo.weights, []);
  assert.ok(dpo.loss > 0 && Number.isFinite(dpo.loss));
});

test('aspo loss reports null for a sentence slot without tokens, and 0 / 1 for a one-sentence response', () => {
  const gap = { ...goodCase, chosen: { ...goodCase.chosen, sentenceIds: [0, 0, 2, 2, 2, -1, -1] } };
  const single = { ...goodCase, chosen: { ...goodCase.chosen, sentenceIds: [0, 0, 0, 0, -1, -1, -1], similarity: [0.2] } };
  const result = aspoLoss([], [gap, single].map((c) => JSON.stringify(c)).join('\n'));
  assert.equal(result.status, 0, result.stderr);
  const [withGap, oneSentence] = result.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(withGap.weights[1], null);
  assert.equal(withGap.multipliers[1], null);
  assert.ok(withGap.weights[0] > 0 || withGap.weights[2] > 0);
  assert.deepEqual(oneSentence.weights, [0]);
  assert.deepEqual(oneSentence.multipliers, [1]);
});

test('aspo loss --explain prints the per-sentence table with each sentence\'s share of the margin', () => {
  const result = aspoLoss(['--explain'], JSON.stringify(goodCase) + '\n');
  assert.equal(result.status, 0, result.stderr);
  const out = result.stdout;
  assert.match(out, /PPL\s+S\s+S'\s+P'\s+w\s+m\s+margin share\s+text/);
  assert.match(out, /It has six wheels\./);
  // The margin share is the only column printed with six decimals.
  const shares = out.split('\n').filter((l) => /^\s*(\d+|—)\s/.test(l))
    .map((l) => Number(l.trim().split(/\s+/).find((cell) => /^-?\d+\.\d{6}$/.test(cell))));
  const margin = Number(/margin (-?\d+\.\d+)/.exec(out)![1]);
  const total = shares.reduce((a, b) => a + b, 0);
  assert.equal(shares.length, 5, 'three sentences, the outside tokens and the rejected response');
  assert.ok(Math.abs(total - margin) < 1e-5, `shares sum to ${total}, margin ${margin}`);
});
