import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { initBackend } from '../src/model/backend.js';
import { synthesize } from '../src/synth/synthesize.js';
import { judgeSentence } from '../src/synth/judge.js';
import { loadScenes } from '../src/synth/synthesize.js';
import {
  choosePair, corruptLabels, formPairs, ON_POLICY_DEFAULTS, onPolicyPairs, type JudgedSample, type OnPolicyOptions,
  type OnPolicyPair, type Sample,
} from '../src/synth/on-policy.js';
import type { Truth } from '../src/synth/claims.js';
import { withStore } from '../src/store/store.js';
import { ingest } from '../src/ingest/ingest.js';
import { Rng } from '../src/util/random.js';
import { CLI, ROOT, tempDir } from './support.js';

let world: string;
let ref: string;

before(async () => {
  await initBackend('auto');
  world = path.join(tempDir(), 'world');
  await synthesize({ out: world, seed: 5, images: 10, evalImages: 2 });
  // The bundled reference: it writes the world's sentences, some of them false (about half, see docs/results.md).
  ref = path.join(ROOT, 'datasets', 'reference-default');
});

const sample = (id: string, labels: Truth[], truth?: Truth[]): JudgedSample => ({
  id, promptId: 'p', image: 'images/x.png', prompt: 'Describe the image.',
  response: labels.map((_, i) => `Sentence ${i}.`).join(' '),
  sentences: labels.map((_, i) => ({ start: 12 * i, end: 12 * i + 11, text: `Sentence ${i}.` })),
  labels, ...(truth ? { truth } : {}),
});

test('label noise flips judged labels at its rate, never an unreadable one, reproducibly', () => {
  const labels: Truth[] = Array.from({ length: 6000 }, (_, i) => (['true', 'false', 'unknown'] as const)[i % 3]!);
  assert.deepEqual(corruptLabels(labels, 0, new Rng(1)), labels);
  const noisy = corruptLabels(labels, 0.3, new Rng(1));
  assert.deepEqual(noisy, corruptLabels(labels, 0.3, new Rng(1)));
  const judged = labels.map((l, i) => [l, noisy[i]!] as const).filter(([l]) => l !== 'unknown');
  const flipped = judged.filter(([l, n]) => l !== n).length / judged.length;
  assert.ok(Math.abs(flipped - 0.3) < 0.03, `flip rate ${flipped}`);
  labels.forEach((l, i) => { if (l === 'unknown') assert.equal(noisy[i], 'unknown'); });
  assert.ok(judged.every(([, n]) => n !== 'unknown'));
});

test('the pair: fewest judged-bad sentences chosen, most rejected; ties broken by true sentences; no preference, no pair', () => {
  const a = sample('a', ['true', 'false', 'true']); // 1 bad
  const b = sample('b', ['false', 'unknown', 'true']); // 2 bad (unreadable counts)
  const c = sample('c', ['true', 'true']); // 0 bad
  const d = sample('d', ['false', 'false', 'true']); // 2 bad, same true count as b
  assert.deepEqual(Object.values(choosePair([a, b, c, d])!).map((s) => s.id), ['c', 'd']);
  // equal bad counts: more true sentences is better
  const e = sample('e', ['true', 'true', 'false']);
  const f = sample('f', ['true', 'false']);
  assert.deepEqual(Object.values(choosePair([f, e])!).map((s) => s.id), ['e', 'f']);
  assert.equal(choosePair([sample('g', ['true', 'false']), sample('h', ['false', 'true'])]), undefined);
  // a sample without sentences is no candidate
  assert.equal(choosePair([sample('i', []), sample('j', ['false'])]), undefined);
  assert.equal(choosePair([sample('k', ['unknown']), sample('l', ['false', 'unknown'])]), undefined, 'nothing judged true');
});

test('formed pairs carry the true labels in their spans and the judge\'s counts in meta', () => {
  // the judge (noisy) prefers x; the truth says x has one hallucinated sentence
  const x = sample('x', ['true', 'true'], ['true', 'false']);
  const y = sample('y', ['false', 'true'], ['false', 'true']);
  const [pair] = formPairs([y, x]) as [OnPolicyPair];
  assert.equal(pair.chosen, x.response);
  assert.equal(pair.rejected, y.response);
  assert.deepEqual(pair.chosen_spans.map((s) => s.label), ['true', 'hallucinated']);
  assert.deepEqual(pair.chosen_spans.map((s) => x.response.slice(s.start, s.end)), ['Sentence 0.', 'Sentence 1.']);
  assert.deepEqual(pair.meta.judged_bad, [0, 1]);
  assert.deepEqual(pair.meta.hallucinated, [1, 1]);
});

function options(out: string, overrides: Partial<OnPolicyOptions> = {}): OnPolicyOptions {
  return { ...ON_POLICY_DEFAULTS, ref, world, out, samples: 3, limit: 8, ...overrides };
}

const lines = <T>(file: string): T[] => readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as T);

test('on-policy pairs from a checkpoint: samples judged by the world, reproducible from the seed, ingestable', async () => {
  const out = path.join(tempDir(), 'op');
  const summary = await onPolicyPairs(options(out));
  const samples = lines<JudgedSample>(path.join(out, 'samples.jsonl'));
  assert.equal(samples.length, 24);
  assert.equal(summary.samples, 24);
  const scenes = await loadScenes(world);
  const prompts = lines<{ id: string; prompt: string; meta: { scene_id: string } }>(path.join(world, 'pairs.jsonl'));
  for (const s of samples) {
    const scene = scenes.get(prompts.find((p) => p.id === s.promptId)!.meta.scene_id)!;
    assert.deepEqual(s.truth, s.sentences.map((t) => judgeSentence(t.text, scene)), s.id);
    assert.deepEqual(s.labels, s.truth, 'no label noise: the judge is the truth');
    for (const t of s.sentences) assert.equal(s.response.slice(t.start, t.end), t.text);
  }
  // sampled, not greedy: an image's samples differ
  assert.ok(new Set(samples.filter((s) => s.promptId === samples[0]!.promptId).map((s) => s.response)).size > 1);
  const pairs = lines<OnPolicyPair>(path.join(out, 'pairs.jsonl'));
  assert.ok(pairs.length >= 4, `${pairs.length} pairs of 8 images`);
  assert.equal(summary.pairs + summary.ties, 8);
  for (const pair of pairs) {
    assert.ok(pair.meta.judged_bad[0] <= pair.meta.judged_bad[1]);
    assert.ok(pair.chosen_spans.some((s) => s.label === 'true'), 'the chosen sample has a sentence judged true');
    const chosen = samples.find((s) => s.id === pair.meta.chosen_sample)!;
    assert.equal(pair.chosen, chosen.response);
    assert.deepEqual(pair.chosen_spans.map((s) => s.label), chosen.truth!.filter((t) => t !== 'unknown').map((t) => (t === 'true' ? 'true' : 'hallucinated')));
    assert.ok(readFileSync(path.join(out, pair.image)).length > 0, 'the pair\'s image is in the output folder');
  }
  assert.ok(summary.chosenHallucinationRate < summary.rejectedHallucinationRate);
  // the same seed gives the same files; another seed other samples
  const again = path.join(tempDir(), 'op');
  await onPolicyPairs(options(again));
  for (const file of ['samples.jsonl', 'pairs.jsonl']) assert.equal(readFileSync(path.join(again, file), 'utf8'), readFileSync(path.join(out, file), 'utf8'));
  const other = path.join(tempDir(), 'op');
  await onPolicyPairs(options(other, { seed: 2 }));
  assert.notEqual(readFileSync(path.join(other, 'samples.jsonl'), 'utf8'), readFileSync(path.join(out, 'samples.jsonl'), 'utf8'));
  // aspo ingest reads the pairs, spans and images
  const db = path.join(tempDir(), 'store.duckdb');
  await withStore(db, async (store) => {
    const result = await ingest(store, [path.join(out, 'pairs.jsonl')]);
    assert.equal(result.ingested, pairs.length, JSON.stringify(result));
    assert.equal(result.rejected, 0);
    const [row] = await store.all<{ n: bigint }>('SELECT count(*) AS n FROM pairs WHERE image_id IS NOT NULL');
    assert.equal(Number(row!.n), pairs.length);
  });
});

test('label noise and a judgement file re-judge the same samples (--samples-from); errors name the file and sample', async () => {
  const first = path.join(tempDir(), 'op');
  await onPolicyPairs(options(first));
  const samplesFile = path.join(first, 'samples.jsonl');
  const samples = lines<Sample>(samplesFile);
  const noisy = path.join(tempDir(), 'op');
  const summary = await onPolicyPairs(options(noisy, { samplesFrom: samplesFile, labelNoise: 0.4 }));
  assert.ok(summary.flippedLabels > 0.25 && summary.flippedLabels < 0.55, `flipped ${summary.flippedLabels}`);
  const judged = lines<JudgedSample>(path.join(noisy, 'samples.jsonl'));
  assert.deepEqual(judged.map((s) => s.response), samples.map((s) => s.response), 'the same samples, judged again');
  // another judge: it calls every sentence of the last sample of each image true, and every other sentence false
  const judgements = path.join(tempDir(), 'judgements.jsonl');
  const lastOf = (s: Sample) => s.id.endsWith('-s2');
  writeFileSync(judgements, samples.map((s) => JSON.stringify({ id: s.id, labels: s.sentences.map(() => (lastOf(s) ? 'true' : 'false')) })).join('\n') + '\n');
  const judgedOut = path.join(tempDir(), 'op');
  await onPolicyPairs(options(judgedOut, { samplesFrom: samplesFile, judgements }));
  const pairs = lines<OnPolicyPair>(path.join(judgedOut, 'pairs.jsonl'));
  assert.ok(pairs.length > 0);
  for (const pair of pairs) assert.ok(pair.meta.chosen_sample.endsWith('-s2'), pair.meta.chosen_sample);
  // a missing line, a wrong label count
  writeFileSync(judgements, JSON.stringify({ id: samples[0]!.id, labels: samples[0]!.sentences.map(() => 'true') }) + '\n');
  await assert.rejects(onPolicyPairs(options(path.join(tempDir(), 'op'), { samplesFrom: samplesFile, judgements })),
    new RegExp(`judgements.jsonl: no line for sample ${samples[1]!.id}`));
  writeFileSync(judgements, samples.map((s) => JSON.stringify({ id: s.id, labels: [...s.sentences.map(() => 'true'), 'true'] })).join('\n') + '\n');
  await assert.rejects(onPolicyPairs(options(path.join(tempDir(), 'op'), { samplesFrom: samplesFile, judgements })), /sentences, the line gives/);
  writeFileSync(judgements, '{"id": "x", "labels": ["maybe"]}\n');
  await assert.rejects(onPolicyPairs(options(path.join(tempDir(), 'op'), { samplesFrom: samplesFile, judgements })), /judgements.jsonl:1: field "labels"/);
  // no command overwrites its own input, or a folder without --force
  await assert.rejects(onPolicyPairs(options(world)), /must not be the --world folder/);
  await assert.rejects(onPolicyPairs(options(first)), /not empty; pass force/);
});

test('aspo synth --on-policy explains wrong options', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, 'synth', '--on-policy', ref, ...args], { encoding: 'utf8' });
  assert.match(run('--out', tempDir()).stderr, /give --world DIR/);
  assert.match(run('--world', world, '--out', tempDir(), '--samples', '1').stderr, /--samples must be an integer ≥ 2/);
  assert.match(run('--world', world, '--out', tempDir(), '--label-noise', '0.7').stderr, /--label-noise must be in \[0, 0.5\]/);
  assert.match(run('--world', world, '--out', tempDir(), '--label-noise', '0.1', '--judgements', 'x').stderr, /with --judgements the labels are the file's/);
});
