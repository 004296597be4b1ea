import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { evaluateGenerations, judgeDescriptions } from '../src/synth/evaluate.js';
import { synthesize } from '../src/synth/synthesize.js';
import type { Scene } from '../src/synth/world.js';
import { initBackend } from '../src/model/backend.js';
import { saveCheckpoint } from '../src/model/checkpoint.js';
import { stackImages } from '../src/model/images.js';
import { VisionLanguageModel, type ModelConfig } from '../src/model/model.js';
import { readEvalFile, readSftFile } from '../src/train/sft.js';
import { encodePromptResponse } from '../src/model/encode.js';
import { PixelCache } from '../src/model/images.js';
import { Tokenizer } from '../src/model/tokenizer.js';
import { CLI, tempDir } from './support.js';

test('evaluateGenerations: greedy descriptions judged against the true scenes; aspo evaluate prints the same summary', async () => {
  await initBackend('auto');
  const dir = tempDir();
  const data = path.join(dir, 'world');
  await synthesize({ out: data, seed: 3, images: 4, evalImages: 5 });
  const tokenizer = Tokenizer.build((await readSftFile(path.join(data, 'sft.jsonl'))).flatMap((e) => [e.prompt, e.response]), { vocabSize: 200 });
  const config: ModelConfig = {
    vocabSize: tokenizer.vocabSize, width: 16, layers: 1, heads: 2, mlpRatio: 2, context: 40, imageSize: 16, patchSize: 8, channels: 3, stemChannels: 0,
  };
  const model = VisionLanguageModel.init(config, 5);
  const checkpoint = path.join(dir, 'model');
  await saveCheckpoint(checkpoint, { config, tokenizer, weights: await model.values() });

  const result = await evaluateGenerations(model, tokenizer, data, { limit: 4, maxTokens: 20 });
  assert.equal(result.images, 4);
  assert.equal(result.descriptions.length, 4);

  // Independently: the first description is the greedy continuation of its prompt, decoded.
  const records = await readEvalFile(path.join(data, 'eval.jsonl'));
  const pixels = await new PixelCache().all([records[0]!.image], config.imageSize);
  const images = stackImages([pixels.get(records[0]!.image!)!], config.imageSize);
  const [ids] = await model.generate({ images, promptIds: [encodePromptResponse(tokenizer, records[0]!.prompt, '').promptIds], maxTokens: 20 });
  images.dispose();
  assert.equal(result.descriptions[0]!.text, tokenizer.decode(ids!));

  // The counts add up; how each sentence is judged and the rates are checked by hand below.
  for (const d of result.descriptions) assert.ok(d.true + d.false + d.unknown >= 0);
  assert.equal(result.sentences, result.descriptions.reduce((n, d) => n + d.true + d.false + d.unknown, 0));
  model.dispose();

  const cli = spawnSync(process.execPath, [CLI, 'evaluate', '--checkpoint', checkpoint, '--data', data, '--limit', '4'], { encoding: 'utf8' });
  assert.equal(cli.status, 0, cli.stderr);
  const summary = JSON.parse(cli.stdout.trim()) as Record<string, unknown>;
  assert.equal(summary.images, 4);
  assert.match(cli.stderr, /evaluate: 4 images/);

  const missing = spawnSync(process.execPath, [CLI, 'evaluate', '--data', data], { encoding: 'utf8' });
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /--checkpoint/);
});

test('judgeDescriptions: counts and rates worked out by hand on one scene', () => {
  const scene: Scene = {
    id: 'hand',
    objects: [
      { shape: 'circle', colour: 'red', size: 'large', row: 'top', column: 'left', x: 1 / 6, y: 1 / 6 },
      { shape: 'square', colour: 'blue', size: 'small', row: 'middle', column: 'middle', x: 0.5, y: 0.5 },
    ],
  };
  const result = judgeDescriptions([
    { image: 'a.png', prompt: 'p', text: 'The circle is red. The square is green.' }, // true, false
    { image: 'b.png', prompt: 'p', text: 'The circle is red.' }, // true: a clean description
    { image: 'c.png', prompt: 'p', text: 'The square is blue. Blorp wibble.' }, // true, unknown
  ], () => scene);
  assert.deepEqual(result.descriptions.map((d) => [d.true, d.false, d.unknown]), [[1, 1, 0], [1, 0, 0], [1, 0, 1]]);
  assert.equal(result.images, 3);
  assert.equal(result.sentences, 5);
  assert.equal(result.hallucinationRate, 1 / 4); // 1 false of 4 judged
  assert.equal(result.unknownRate, 1 / 5);
  assert.equal(result.cleanDescriptions, 1 / 3);
  assert.ok(Number.isNaN(judgeDescriptions([], () => scene).hallucinationRate));
});
