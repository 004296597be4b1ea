import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import pLimit from 'p-limit';
import { planDataset, type DatasetOptions, type SceneEntry } from './dataset.js';
import { renderScene } from './render.js';
import { COLOUR_NAMES, COLUMNS, ROWS, SHAPES, SIZES, type Scene, type SceneObject } from './world.js';

/** Bumped whenever the same seed would produce different files. */
export const SYNTH_VERSION = 1;

export interface SynthOptions extends DatasetOptions {
  /** Image width and height in pixels. */
  size: number;
  /** Images rendered at once. */
  concurrency: number;
}

export const SYNTH_DEFAULTS: SynthOptions = {
  seed: 1,
  images: 1000,
  evalImages: 200,
  noise: 0.2,
  size: 64,
  pairsPerImage: 1,
  sftPerImage: 3,
  maxSentences: 4,
  probes: 6,
  concurrency: 4,
};

/** An option out of range; `option` names it, so the CLI can name the matching flag. */
export class SynthOptionError extends RangeError {
  constructor(readonly option: keyof SynthOptions, message: string) {
    super(`${option} ${message}`);
  }
}

function integer(options: Partial<SynthOptions>, name: keyof SynthOptions, min: number, max: number): number {
  const value = options[name] ?? SYNTH_DEFAULTS[name];
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new SynthOptionError(name, `must be an integer from ${min} to ${max}, got ${value}`);
  }
  return value;
}

/** Defaults filled in and every option checked; errors name the option. */
export function resolveSynthOptions(options: Partial<SynthOptions> = {}): SynthOptions {
  const noise = options.noise ?? SYNTH_DEFAULTS.noise;
  if (!(noise >= 0 && noise <= 1)) throw new SynthOptionError('noise', `must be a number from 0 to 1, got ${noise}`);
  return {
    seed: integer(options, 'seed', 0, 2 ** 32 - 1),
    images: integer(options, 'images', 1, 1_000_000),
    evalImages: integer(options, 'evalImages', 0, 1_000_000),
    noise,
    size: integer(options, 'size', 32, 512),
    pairsPerImage: integer(options, 'pairsPerImage', 0, 100),
    sftPerImage: integer(options, 'sftPerImage', 0, 100),
    maxSentences: integer(options, 'maxSentences', 1, 20),
    probes: integer(options, 'probes', 1, 50),
    concurrency: integer(options, 'concurrency', 1, 64),
  };
}

export interface SynthSummary {
  out: string;
  options: SynthOptions;
  trainImages: number;
  evalImages: number;
  pairs: number;
  sft: number;
  eval: number;
  probes: number;
  /** Share of chosen / rejected sentences labelled hallucinated. */
  chosenHallucinationRate: number;
  rejectedHallucinationRate: number;
  seconds: number;
}

/** Files and folders a synthetic dataset consists of; `force` removes exactly these. */
const OUTPUTS = ['images', 'eval', 'pairs.jsonl', 'sft.jsonl', 'eval.jsonl', 'scenes.jsonl', 'manifest.json'];

const jsonLines = (rows: readonly unknown[]) => rows.map((row) => JSON.stringify(row) + '\n').join('');

/** One line of scenes.jsonl. */
export interface SceneRecord {
  id: string;
  split: SceneEntry['split'];
  image: string;
  objects: SceneObject[];
}

/**
 * Writes a synthetic dataset folder: images/, eval/images/, pairs.jsonl, sft.jsonl, eval.jsonl, scenes.jsonl
 * and, last, manifest.json (so a folder without it is an interrupted run). Refuses a non-empty folder unless
 * `force`, which replaces only the files a previous run wrote.
 */
export async function synthesize(
  options: Partial<SynthOptions> & { out: string; force?: boolean; onImage?: () => void },
): Promise<SynthSummary> {
  const started = performance.now();
  const resolved = resolveSynthOptions(options);
  const out = path.resolve(options.out);
  if (existsSync(out) && (await readdir(out)).length > 0) {
    if (!options.force) throw new Error(`${out} is not empty; pass force (--force) to replace a previous synthetic dataset there`);
    await Promise.all(OUTPUTS.map((name) => rm(path.join(out, name), { recursive: true, force: true })));
  }
  await mkdir(path.join(out, 'images'), { recursive: true });
  await mkdir(path.join(out, 'eval', 'images'), { recursive: true });

  const dataset = planDataset(resolved);
  const limit = pLimit(resolved.concurrency);
  await Promise.all(dataset.scenes.map(({ scene, image }) => limit(async () => {
    await writeFile(path.join(out, image), await renderScene(scene, resolved.size));
    options.onImage?.();
  })));

  const scenes: SceneRecord[] = dataset.scenes.map(({ scene, split, image }) => ({ id: scene.id, split, image, objects: scene.objects }));
  await writeFile(path.join(out, 'pairs.jsonl'), jsonLines(dataset.pairs));
  await writeFile(path.join(out, 'sft.jsonl'), jsonLines(dataset.sft));
  await writeFile(path.join(out, 'eval.jsonl'), jsonLines(dataset.eval));
  await writeFile(path.join(out, 'scenes.jsonl'), jsonLines(scenes));

  const rate = (side: 'chosen_spans' | 'rejected_spans') => {
    const spans = dataset.pairs.flatMap((pair) => pair[side]);
    return spans.filter((s) => s.label === 'hallucinated').length / Math.max(spans.length, 1);
  };
  const summary: SynthSummary = {
    out,
    options: resolved,
    trainImages: scenes.filter((s) => s.split === 'train').length,
    evalImages: scenes.filter((s) => s.split === 'eval').length,
    pairs: dataset.pairs.length,
    sft: dataset.sft.length,
    eval: dataset.eval.length,
    probes: dataset.eval.reduce((n, record) => n + record.probes.length, 0),
    chosenHallucinationRate: rate('chosen_spans'),
    rejectedHallucinationRate: rate('rejected_spans'),
    seconds: 0,
  };
  // Only what determines the content: the folder's bytes must not depend on where or how fast it was made.
  const { out: _out, seconds: _seconds, options: { concurrency: _concurrency, ...contentOptions }, ...counts } = summary;
  await writeFile(path.join(out, 'manifest.json'), JSON.stringify({
    generator: 'aspo synth',
    version: SYNTH_VERSION,
    options: contentOptions,
    ...counts,
    files: { pairs: 'pairs.jsonl', sft: 'sft.jsonl', eval: 'eval.jsonl', scenes: 'scenes.jsonl', images: 'images/', evalImages: 'eval/images/' },
  }, null, 2) + '\n');
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}

function checkObject(value: unknown, where: string): SceneObject {
  const o = value as Record<string, unknown>;
  const oneOf = (field: string, allowed: readonly string[]) => {
    if (!allowed.includes(o?.[field] as string)) {
      throw new Error(`${where}: field "${field}" must be one of ${allowed.join(', ')}, got ${JSON.stringify(o?.[field])}`);
    }
  };
  oneOf('shape', SHAPES);
  oneOf('colour', COLOUR_NAMES);
  oneOf('size', SIZES);
  oneOf('row', ROWS);
  oneOf('column', COLUMNS);
  for (const field of ['x', 'y']) {
    if (typeof o[field] !== 'number') throw new Error(`${where}: field "${field}" must be a number`);
  }
  return o as unknown as SceneObject;
}

/** The ground truth of a synthetic dataset folder (training and evaluation scenes), by scene id. */
export async function loadScenes(dir: string): Promise<Map<string, Scene & { split: SceneEntry['split']; image: string }>> {
  const file = path.join(dir, 'scenes.jsonl');
  const scenes = new Map<string, Scene & { split: SceneEntry['split']; image: string }>();
  const lines = (await readFile(file, 'utf8')).split('\n');
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    const where = `${file}:${i + 1}`;
    let record: SceneRecord;
    try {
      record = JSON.parse(line) as SceneRecord;
    } catch (error) {
      throw new Error(`${where}: not valid JSON (${(error as Error).message})`);
    }
    if (typeof record.id !== 'string') throw new Error(`${where}: field "id" must be a string`);
    if (record.split !== 'train' && record.split !== 'eval') throw new Error(`${where}: field "split" must be train or eval`);
    if (typeof record.image !== 'string') throw new Error(`${where}: field "image" must be a string`);
    if (!Array.isArray(record.objects)) throw new Error(`${where}: field "objects" must be an array`);
    const objects = record.objects.map((o, j) => checkObject(o, `${where} objects[${j}]`));
    scenes.set(record.id, { id: record.id, split: record.split, image: record.image, objects });
  });
  return scenes;
}
