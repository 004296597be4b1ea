import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CLAIM_KINDS, evaluateClaim, hallucinate, trueClaims } from '../src/synth/claims.js';
import { planDataset, type DatasetOptions, type PairRecord } from '../src/synth/dataset.js';
import { layOut, type ResponseFormat } from '../src/synth/describe.js';
import { judgeResponse, judgeSentence, splitResponse } from '../src/synth/judge.js';
import { deriveSeed, Rng } from '../src/util/random.js';
import { resolveSynthOptions } from '../src/synth/synthesize.js';
import { parseSentence, renderClaim, TEMPLATES, templatesFor } from '../src/synth/templates.js';
import { cellCentre, corruptScene, sampleScene, sceneKey, type Scene } from '../src/synth/world.js';

const OPTIONS: DatasetOptions = { seed: 7, images: 300, evalImages: 60, noise: 0.2, maxSentences: 4, pairsPerImage: 1, sftPerImage: 2, probes: 6 };

function scenes(count: number, seed = 3): Scene[] {
  return Array.from({ length: count }, (_, i) => sampleScene(new Rng(deriveSeed(seed, 'test', i)), `s${i}`));
}

test('Rng: a seed fixes the sequence, other seeds give other sequences, draws look uniform', () => {
  const draw = (seed: number) => { const rng = new Rng(seed); return Array.from({ length: 5 }, () => rng.next()); };
  assert.deepEqual(draw(42), draw(42));
  assert.notDeepEqual(draw(42), draw(43));
  const rng = new Rng(1);
  const counts = new Array(10).fill(0);
  let sum = 0;
  for (let i = 0; i < 20000; i++) {
    const x = rng.next();
    assert.ok(x >= 0 && x < 1);
    sum += x;
    counts[rng.int(10)]++;
  }
  assert.ok(Math.abs(sum / 20000 - 0.5) < 0.01, `mean ${sum / 20000}`);
  // Chi-square with 9 degrees of freedom: 27.9 is the 0.1% critical value.
  const chi2 = counts.reduce((s, c) => s + (c - 2000) ** 2 / 2000, 0);
  assert.ok(chi2 < 27.9, `chi2 ${chi2}`);
  assert.notEqual(deriveSeed(1, 'train', 1), deriveSeed(1, 'train', 2));
  assert.notEqual(deriveSeed(1, 'train', 1), deriveSeed(2, 'train', 1));
});

test('scenes hold 1–4 objects, each in its own cell near the cell centre, no colour+shape twice', () => {
  const sizes = new Set<number>();
  for (const scene of scenes(300)) {
    sizes.add(scene.objects.length);
    assert.equal(new Set(scene.objects.map((o) => `${o.row} ${o.column}`)).size, scene.objects.length);
    assert.equal(new Set(scene.objects.map((o) => `${o.colour} ${o.shape}`)).size, scene.objects.length);
    for (const o of scene.objects) {
      const centre = cellCentre(o.row, o.column);
      assert.ok(Math.abs(o.x - centre.x) <= 0.05 / 3 + 1e-4 && Math.abs(o.y - centre.y) <= 0.05 / 3 + 1e-4);
    }
  }
  assert.deepEqual([...sizes].sort(), [1, 2, 3, 4]);
});

test('a corrupted scene differs from the original and keeps the scene invariants', () => {
  const rng = new Rng(9);
  for (const scene of scenes(300)) {
    const before = sceneKey(scene);
    const { scene: corrupted, corruptions } = corruptScene(scene, rng);
    assert.equal(sceneKey(scene), before, 'the original is not modified');
    assert.notEqual(sceneKey(corrupted), before);
    assert.ok(corruptions.length >= 1 && corruptions.length <= 2);
    assert.ok(corrupted.objects.length >= 1);
    assert.equal(new Set(corrupted.objects.map((o) => `${o.row} ${o.column}`)).size, corrupted.objects.length);
    assert.equal(new Set(corrupted.objects.map((o) => `${o.colour} ${o.shape}`)).size, corrupted.objects.length);
  }
});

// A hand-built scene; the expected verdicts below are worked out by hand from the picture, not by the code.
//   top row:    red circle (large, left) · · orange cross (large, right)
//   middle row: · blue square (small, centre) ·
//   bottom row: · · green triangle (small, right)
const HAND: Scene = {
  id: 'hand',
  objects: [
    { shape: 'circle', colour: 'red', size: 'large', row: 'top', column: 'left', x: 1 / 6, y: 1 / 6 },
    { shape: 'square', colour: 'blue', size: 'small', row: 'middle', column: 'middle', x: 0.5, y: 0.5 },
    { shape: 'triangle', colour: 'green', size: 'small', row: 'bottom', column: 'right', x: 5 / 6, y: 5 / 6 },
    { shape: 'cross', colour: 'orange', size: 'large', row: 'top', column: 'right', x: 5 / 6, y: 1 / 6 },
  ],
};

test('the judge decides hand-written sentences about a hand-built scene', () => {
  const cases: [string, string][] = [
    ['There are four objects in the image.', 'true'],
    ['There are three objects in the image.', 'false'],
    ['In total, 4 objects are visible.', 'true'],
    ['There is a red circle.', 'true'],
    ['There is a red square.', 'false'],
    ['There is an orange cross.', 'true'],
    ['There is a orange cross.', 'unknown'],
    ['There is a small green triangle.', 'true'],
    ['There is a large green triangle.', 'false'],
    ['The red circle is large.', 'true'],
    ['The red circle is small.', 'false'],
    ['The blue square is small, i.e. not large.', 'true'],
    ['The blue square is small, i.e. not small.', 'unknown'],
    ['The purple diamond is small.', 'false'],
    ['The red circle is in the top left of the image.', 'true'],
    ['The blue square is located at the centre.', 'true'],
    ['The green triangle sits approx. at the bottom right.', 'true'],
    ['The green triangle sits approx. at the top right.', 'false'],
    ['The orange cross is in the top row.', 'true'],
    ['The orange cross is in the middle column.', 'false'],
    ['The circle is red.', 'true'],
    ['The circle is blue.', 'false'],
    ['The red object is a circle.', 'true'],
    ['The red object is a square.', 'false'],
    ['The red circle is to the left of the blue square.', 'true'],
    ['The red circle is below the blue square.', 'false'],
    ['The orange cross lies to the right of the red circle.', 'true'],
    ['The orange cross is above the red circle.', 'false'],
    ['There are several shapes, e.g. a red circle and an orange cross.', 'true'],
    ['There are several shapes, e.g. a red circle and a purple cross.', 'false'],
    ['There is one circle in the image.', 'true'],
    ['There are two circles in the image.', 'false'],
    ['There are two circle in the image.', 'unknown'],
    ['Exactly one of the objects is red.', 'true'],
    ['Exactly two of the objects are red.', 'false'],
    ['2. The blue square is in the middle row.', 'true'],
    ['- the blue square is in the middle column', 'true'],
    ['The sky is blue.', 'unknown'],
  ];
  for (const [sentence, expected] of cases) assert.equal(judgeSentence(sentence, HAND), expected, sentence);

  const twoCircles: Scene = { id: 'two', objects: [HAND.objects[0]!, { ...HAND.objects[1]!, shape: 'circle' }] };
  assert.equal(judgeSentence('The circle is red.', twoCircles), 'unknown', 'two circles: "the circle" is ambiguous');
  assert.equal(judgeSentence('The circle is green.', twoCircles), 'false', 'no circle is green');
});

test('judge: every template renders true claims as true and hallucinated ones as false, and parses back', () => {
  const rng = new Rng(11);
  const usedTemplates = new Set<string>();
  const usedKinds = new Set<string>();
  for (const scene of scenes(150, 5)) {
    for (const claim of trueClaims(scene)) {
      assert.equal(evaluateClaim(claim, scene), 'true');
      for (const template of templatesFor(claim.kind)) {
        const sentence = renderClaim(claim, template);
        assert.equal(judgeSentence(sentence, scene), 'true', sentence);
        assert.deepEqual(parseSentence(sentence)?.claim, claim, sentence);
        usedTemplates.add(template.id);
        usedKinds.add(claim.kind);
        for (const predicateOnly of [false, true]) {
          const wrong = hallucinate(claim, scene, rng, predicateOnly);
          assert.ok(wrong, `no hallucination for ${JSON.stringify(claim)}`);
          assert.equal(wrong.kind, claim.kind);
          const false_ = renderClaim(wrong, template);
          assert.equal(judgeSentence(false_, scene), 'false', `${false_} (from ${sentence})`);
        }
      }
    }
  }
  assert.deepEqual([...usedKinds].sort(), [...CLAIM_KINDS].sort());
  assert.deepEqual([...usedTemplates].sort(), TEMPLATES.map((t) => t.id).sort());
});

test('layout: spans slice exactly the sentences, and splitResponse finds the same spans', () => {
  const sentences = [
    'There are two objects in the image.',
    'The red circle sits approx. at the top left.',
    'There are several shapes, e.g. a red circle and an orange cross.',
    'The blue square is small, i.e. not large.',
  ];
  for (const format of ['prose', 'numbered', 'bulleted', 'lead_list'] as ResponseFormat[]) {
    const { text, spans } = layOut(sentences, format);
    assert.deepEqual(spans.map((s) => text.slice(s.start, s.end)), sentences, format);
    assert.deepEqual(splitResponse(text), spans, format);
  }
  assert.equal(layOut(sentences, 'numbered').text.split('\n')[1], '2. The red circle sits approx. at the top left.');
  assert.equal(layOut(sentences, 'lead_list').text.split('\n')[1], '- The red circle sits approx. at the top left.');
});

test('judgeResponse gives the hallucination rate of a generated response', () => {
  const result = judgeResponse('There is a red circle. The red circle is small. The sky is blue.\n- The circle is red.', HAND);
  assert.deepEqual(result.sentences.map((s) => s.truth), ['true', 'false', 'unknown', 'true']);
  assert.equal(result.hallucinationRate, 1 / 3);
});

const dataset = planDataset(OPTIONS);
const sceneById = new Map(dataset.scenes.map((entry) => [entry.scene.id, entry.scene]));

function labelShare(pairs: PairRecord[], side: 'chosen_spans' | 'rejected_spans'): number {
  const spans = pairs.flatMap((p) => p[side]);
  return spans.filter((s) => s.label === 'hallucinated').length / spans.length;
}

test('pairs have exactly the shape ingest reads, and every span is a sentence whose label the judge confirms', () => {
  assert.equal(dataset.pairs.length, OPTIONS.images);
  for (const pair of dataset.pairs) {
    assert.deepEqual(Object.keys(pair), ['id', 'image', 'prompt', 'chosen', 'rejected', 'chosen_spans', 'rejected_spans', 'meta']);
    assert.equal(pair.image, `images/${pair.meta.scene_id}.png`);
    assert.notEqual(pair.chosen, pair.rejected);
    const scene = sceneById.get(pair.meta.scene_id)!;
    for (const [text, spans] of [[pair.chosen, pair.chosen_spans], [pair.rejected, pair.rejected_spans]] as const) {
      assert.ok(spans.length >= 1);
      assert.deepEqual(splitResponse(text), spans.map(({ start, end }) => ({ start, end })), text);
      for (const span of spans) {
        const sentence = text.slice(span.start, span.end);
        assert.match(sentence, /^[A-Z].*\.$/);
        assert.equal(judgeSentence(sentence, scene), span.label === 'true' ? 'true' : 'false', sentence);
      }
    }
    assert.equal(pair.meta.chosen_hallucinated, pair.chosen_spans.filter((s) => s.label === 'hallucinated').length);
  }
});

test('the chosen side is hallucinated at about --noise; the rejected side more often', () => {
  const chosen = labelShare(dataset.pairs, 'chosen_spans');
  const sentences = dataset.pairs.reduce((n, p) => n + p.chosen_spans.length, 0);
  const sd = Math.sqrt((0.2 * 0.8) / sentences);
  assert.ok(Math.abs(chosen - 0.2) < 4 * sd, `chosen ${chosen} over ${sentences} sentences`);
  const rejected = labelShare(dataset.pairs, 'rejected_spans');
  assert.ok(rejected > chosen + 0.1, `rejected ${rejected} vs chosen ${chosen}`);
  const perPair = (side: 'chosen_hallucinated' | 'rejected_hallucinated') =>
    dataset.pairs.reduce((n, p) => n + p.meta[side], 0) / dataset.pairs.length;
  assert.ok(perPair('rejected_hallucinated') > perPair('chosen_hallucinated'));

  for (const noise of [0, 0.5]) {
    const pairs = planDataset({ ...OPTIONS, images: 150, evalImages: 0, sftPerImage: 0, noise }).pairs;
    const share = labelShare(pairs, 'chosen_spans');
    const n = pairs.reduce((k, p) => k + p.chosen_spans.length, 0);
    assert.ok(Math.abs(share - noise) <= 4 * Math.sqrt((noise * (1 - noise)) / n), `noise ${noise}: ${share}`);
  }
});

test('SFT and evaluation responses are entirely true; probes are a true and a false sentence in one wording', () => {
  assert.equal(dataset.sft.length, OPTIONS.images * OPTIONS.sftPerImage);
  const scene = (image: string) => sceneById.get(image.replace(/^.*\/|\.png$/g, ''))!;
  for (const record of [...dataset.sft, ...dataset.eval]) {
    const judged = judgeResponse(record.response, scene(record.image));
    assert.ok(judged.sentences.every((s) => s.truth === 'true'), record.response);
  }
  const kinds = new Set<string>();
  for (const record of dataset.eval) {
    assert.match(record.image, /^eval\/images\/eval-\d+\.png$/);
    assert.equal(record.probes.length, OPTIONS.probes);
    for (const probe of record.probes) {
      kinds.add(probe.kind);
      assert.equal(judgeSentence(probe.true, scene(record.image)), 'true', probe.true);
      assert.equal(judgeSentence(probe.false, scene(record.image)), 'false', probe.false);
      assert.equal(parseSentence(probe.true)!.template.id, parseSentence(probe.false)!.template.id);
    }
  }
  assert.ok(kinds.size >= 10, `probe kinds ${[...kinds]}`);
});

test('evaluation scenes never repeat a training scene', () => {
  const train = new Set(dataset.scenes.filter((s) => s.split === 'train').map((s) => sceneKey(s.scene)));
  const evalScenes = dataset.scenes.filter((s) => s.split === 'eval');
  assert.equal(evalScenes.length, OPTIONS.evalImages);
  for (const entry of evalScenes) assert.ok(!train.has(sceneKey(entry.scene)), entry.scene.id);
  // 1-object scenes are few (9 cells × 40 kinds × 2 sizes), so collisions do happen and must have been avoided.
  const big = planDataset({ ...OPTIONS, images: 2000, evalImages: 400, pairsPerImage: 0, sftPerImage: 0 });
  const bigTrain = new Set(big.scenes.filter((s) => s.split === 'train').map((s) => sceneKey(s.scene)));
  assert.ok(big.scenes.filter((s) => s.split === 'eval').every((s) => !bigTrain.has(sceneKey(s.scene))));
  const naive = Array.from({ length: 400 }, (_, i) => sampleScene(new Rng(deriveSeed(OPTIONS.seed, 'scene', `eval-${i}`)), 'x'));
  assert.ok(naive.some((scene) => bigTrain.has(sceneKey(scene))), 'sampling alone would have repeated a training scene');
});

test('the plan is a function of the seed', () => {
  const small = { ...OPTIONS, images: 40, evalImages: 10 };
  assert.deepEqual(planDataset(small), planDataset(small));
  const other = planDataset({ ...small, seed: 8 });
  assert.notDeepEqual(other.pairs, planDataset(small).pairs);
  assert.notDeepEqual(other.scenes, planDataset(small).scenes);
});

test('options are checked and errors name the option', () => {
  assert.equal(resolveSynthOptions().images, 1000);
  assert.throws(() => resolveSynthOptions({ noise: 1.5 }), /noise/);
  assert.throws(() => resolveSynthOptions({ images: 0 }), /images/);
  assert.throws(() => resolveSynthOptions({ size: 10.5 }), /size/);
  assert.throws(() => resolveSynthOptions({ evalImages: -1 }), /evalImages/);
});
