import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { judgeResponse } from '../src/synth/judge.js';
import { evaluateGenerations } from '../src/synth/evaluate.js';
import { loadScenes, synthesize } from '../src/synth/synthesize.js';
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

  // Every count re-judged from the text and the scene, and the rates recomputed from them.
  const scenes = await loadScenes(data);
  let trueCount = 0;
  let falseCount = 0;
  let unknown = 0;
  for (const d of result.descriptions) {
    const judged = judgeResponse(d.text, scenes.get(path.basename(d.image, '.png'))!).sentences;
    assert.deepEqual([d.true, d.false, d.unknown], ['true', 'false', 'unknown'].map((t) => judged.filter((s) => s.truth === t).length));
    trueCount += d.true;
    falseCount += d.false;
    unknown += d.unknown;
  }
  assert.equal(result.sentences, trueCount + falseCount + unknown);
  if (trueCount + falseCount > 0) assert.equal(result.hallucinationRate, falseCount / (trueCount + falseCount));
  else assert.ok(Number.isNaN(result.hallucinationRate));
  if (result.sentences > 0) assert.equal(result.unknownRate, unknown / result.sentences);
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
