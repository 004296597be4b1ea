/**
 * How often a model's own descriptions of held-out synthetic images hallucinate: greedy generation for each
 * evaluation image, every sentence judged against the image's true scene.
 */
import path from 'node:path';
import { PixelCache, stackImages } from '../model/images.js';
import type { VisionLanguageModel } from '../model/model.js';
import { encodePromptResponse } from '../model/encode.js';
import { readEvalFile } from '../train/sft.js';
import type { Tokenizer } from '../model/tokenizer.js';
import { judgeResponse } from './judge.js';
import { loadScenes } from './synthesize.js';
import type { Scene } from './world.js';

export interface GeneratedDescription {
  image: string;
  prompt: string;
  text: string;
  /** Sentences judged true, false (hallucinated) and unknown (not in the world's language). */
  true: number;
  false: number;
  unknown: number;
}

export interface GenerationEval {
  images: number;
  sentences: number;
  /** Share of judged sentences (true or false) that are false, over all descriptions. */
  hallucinationRate: number;
  /** Share of sentences the judge could not read (ill-formed or ambiguous). */
  unknownRate: number;
  /** Share of descriptions whose every sentence (at least one) is judged true. */
  cleanDescriptions: number;
  descriptions: GeneratedDescription[];
}

export interface GenerationEvalOptions {
  /** Evaluate the first `limit` images of eval.jsonl only. */
  limit?: number;
  maxTokens?: number;
  batchSize?: number;
}

/** Greedy descriptions of the evaluation images of a synthetic dataset folder, judged by the world's truth. */
export async function evaluateGenerations(model: VisionLanguageModel, tokenizer: Tokenizer, dataDir: string,
  options: GenerationEvalOptions = {}): Promise<GenerationEval> {
  const { maxTokens = 72, batchSize = 50 } = options;
  const records = (await readEvalFile(path.join(dataDir, 'eval.jsonl'))).slice(0, options.limit);
  const scenes = await loadScenes(dataDir);
  const sceneOf = (image: string) => {
    const scene = scenes.get(path.basename(image, path.extname(image)));
    if (!scene) throw new Error(`${path.join(dataDir, 'scenes.jsonl')} has no scene for ${image}`);
    return scene;
  };
  const pixels = await new PixelCache().all(records.map((r) => r.image), model.config.imageSize);
  const generated: { image: string; prompt: string; text: string }[] = [];
  for (let i = 0; i < records.length; i += batchSize) {
    const batch = records.slice(i, i + batchSize);
    const images = stackImages(batch.map((r) => pixels.get(r.image!)!), model.config.imageSize);
    const outputs = await model.generate({
      images, promptIds: batch.map((r) => encodePromptResponse(tokenizer, r.prompt, '').promptIds), maxTokens,
    });
    images.dispose();
    batch.forEach((record, k) => generated.push({ image: record.image!, prompt: record.prompt, text: tokenizer.decode(outputs[k]!) }));
  }
  return judgeDescriptions(generated, sceneOf);
}

/** Descriptions judged sentence by sentence against their image's scene, with the rates over all of them. Pure. */
export function judgeDescriptions(generated: readonly { image: string; prompt: string; text: string }[],
  sceneOf: (image: string) => Scene): GenerationEval {
  const descriptions = generated.map(({ image, prompt, text }): GeneratedDescription => {
    const judged = judgeResponse(text, sceneOf(image)).sentences;
    const count = (truth: string) => judged.filter((s) => s.truth === truth).length;
    return { image, prompt, text, true: count('true'), false: count('false'), unknown: count('unknown') };
  });
  const sum = (pick: (d: GeneratedDescription) => number) => descriptions.reduce((n, d) => n + pick(d), 0);
  const judged = sum((d) => d.true + d.false);
  const sentences = judged + sum((d) => d.unknown);
  return {
    images: descriptions.length,
    sentences,
    hallucinationRate: judged ? sum((d) => d.false) / judged : NaN,
    unknownRate: sentences ? sum((d) => d.unknown) / sentences : NaN,
    cleanDescriptions: descriptions.length ? descriptions.filter((d) => d.true > 0 && d.false === 0 && d.unknown === 0).length / descriptions.length : NaN,
    descriptions,
  };
}
