import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { diceSimilarity, diffSentences, sentenceKey, type Similarity } from '../src/segment/diff.js';
import { ROOT, tempDir } from './support.js';

test('the Dice coefficient, checked by hand on character bigrams', () => {
  const dice = diceSimilarity;
  // night: ni ig gh ht; nacht: na ac ch ht -> 2 * 1 / (4 + 4)
  assert.equal(dice('night', 'nacht'), 0.25);
  // "the cat." has th he e_ _c ca at t. (7), "the cat" the first 6 of them -> 2 * 6 / 13; case and spacing ignored
  assert.equal(dice('The  cat.', 'the cat'), 12 / 13);
  assert.equal(dice('A dog', 'a dog'), 1);
  // Distinct bigrams: "aaaa" and "aa" both have the one bigram aa.
  assert.equal(dice('aaaa', 'aa'), 1);
  // One character counts as itself and a space: "a" is {a_}, "ab a" is {ab, b_, _a} -> 0; "a " vs "a" -> 1.
  assert.equal(dice('a', 'ab a'), 0);
  assert.equal(dice('a', ' A '), 1);
  // abc: ab bc; abd: ab bd -> 2 * 1 / 4
  assert.equal(dice('abc', 'abd'), 0.5);
  assert.equal(dice('', ''), 0);
  assert.equal(dice('', 'ab'), 0);
});

test('importing the library and segmenting leave process.env alone, even beside a .env file', () => {
  const dir = tempDir();
  writeFileSync(path.join(dir, '.env'), 'ASPO_ENV_PROBE=leaked\nDOTENV_PROBE=leaked\n');
  const library = path.join(ROOT, 'dist', 'src', 'index.js');
  const script = `const lib = await import(${JSON.stringify(library)});
    lib.pairSentenceRows('A red cup. A dog.', 'A blue cup. A dog.', lib.diceSimilarity);
    console.log(JSON.stringify([process.env.ASPO_ENV_PROBE ?? null, process.env.DOTENV_PROBE ?? null]));`;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: dir, encoding: 'utf8', env: { PATH: process.env.PATH } });
  assert.equal(run.status, 0, run.stderr);
  assert.deepEqual(JSON.parse(run.stdout), [null, null]);
  assert.equal(run.stderr, '');
});

test('sentence keys ignore case, punctuation and spacing but not words', () => {
  assert.equal(sentenceKey('The  sky is blue!'), sentenceKey('the sky is blue'));
  assert.equal(sentenceKey('**Note:** it is 3.5 m tall.'), 'note it is 3 5 m tall');
  assert.notEqual(sentenceKey('A red car.'), sentenceKey('A blue car.'));
});

test('one-to-one alignment by descending score, ties broken by position, weak pairs left unmatched', () => {
  // A similarity table keyed by sentence text, so the expected alignment can be worked out by hand.
  const table: Record<string, number> = { 'a|x': 0.9, 'a|y': 0.8, 'b|x': 0.95, 'b|y': 0.6, 'c|x': 0.3, 'c|y': 0.4, 'c|z': 0.2 };
  const similarity: Similarity = (p, q) => table[`${p}|${q}`] ?? 0;
  const diff = diffSentences(['a', 'b', 'c'], ['x', 'y', 'z'], similarity);
  // b-x (0.95) first, then a-y (0.8, a-x is taken); c's best free partner y is taken and c-z is below 0.5.
  assert.deepEqual(diff.chosen.map((m) => [m.matchIdx, m.matchScore]), [[1, 0.8], [0, 0.95], [null, null]]);
  assert.deepEqual(diff.rejected.map((m) => [m.matchIdx, m.matchScore]), [[1, 0.95], [0, 0.8], [null, null]]);
  assert.ok([...diff.chosen, ...diff.rejected].every((m) => !m.shared));

  const loose = diffSentences(['c'], ['z'], similarity, { minMatch: 0.1 });
  assert.deepEqual(loose.chosen[0], { matchIdx: 0, matchScore: 0.2, shared: false });

  // Equal scores: the sentence at the same relative position wins.
  const flat = diffSentences(['p', 'q'], ['r', 's'], () => 0.7);
  assert.deepEqual(flat.chosen.map((m) => m.matchIdx), [0, 1]);
});

test('a hallucinated detail is matched but not shared; a repeated sentence is shared', () => {
  const dice = diceSimilarity;
  const chosen = ['The image shows a dog on a bench.', 'It is sunny.', 'A red car is parked nearby.'];
  const rejected = ['the image shows a dog on a bench', 'A blue car is parked nearby.', 'Two birds fly overhead.'];
  const diff = diffSentences(chosen, rejected, dice);
  assert.deepEqual(diff.chosen.map((m) => m.shared), [true, false, false]);
  assert.deepEqual(diff.rejected.map((m) => m.shared), [true, false, false]);
  assert.deepEqual(diff.chosen.map((m) => m.matchIdx), [0, null, 1]);
  assert.equal(diff.chosen[0]!.matchScore, 1);
  assert.equal(diff.chosen[2]!.matchScore, dice(chosen[2]!, rejected[1]!));
  assert.ok(diff.chosen[2]!.matchScore! > 0.8 && diff.chosen[2]!.matchScore! < 1);
  assert.equal(diff.rejected[2]!.matchIdx, null);
});

test('empty sides', () => {
  const diff = diffSentences([], ['x'], () => 1);
  assert.deepEqual(diff, { chosen: [], rejected: [{ matchIdx: null, matchScore: null, shared: false }] });
});
