/**
 * On-policy preference pairs (the setting of the ASPO paper, RLAIF-V and SeVa): the model being aligned describes
 * each training image K times, a judge labels every sentence of every sample, and the sample with the fewest
 * hallucinated sentences is preferred to the one with the most. The judge is the synthetic world's truth
 * (`scenes.jsonl`), optionally corrupted like an imperfect annotator (`labelNoise`), or a file of labels from any
 * other judge (a person, a stronger model). The pairs are written as `pairs.jsonl` in the form `aspo ingest` reads,
 * with every sentence's true label where the world knows it.
 */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { loadModel } from '../model/checkpoint.js';
import { PixelCache, stackImages } from '../model/images.js';
import type { VisionLanguageModel } from '../model/model.js';
import { encodePromptResponse } from '../model/encode.js';
import type { Tokenizer } from '../model/tokenizer.js';
import { deriveSeed, Rng } from '../util/random.js';
import type { Truth } from './claims.js';
import type { PairRecord } from './dataset.js';
import type { LabelledSpan } from './describe.js';
import { judgeSentence, splitResponse } from './judge.js';
import { loadScenes } from './synthesize.js';

export interface OnPolicyOptions {
  /** Checkpoint the responses are sampled from (normally the reference the pairs will train). */
  ref: string;
  /** Synthetic world folder: its `pairs.jsonl` gives the training images and prompts, `scenes.jsonl` the truth. */
  world: string;
  /** Output folder: samples.jsonl, pairs.jsonl, images/, manifest.json. */
  out: string;
  /** Responses sampled per image (K ≥ 2). */
  samples: number;
  temperature: number;
  /** Nucleus sampling mass (1: no cut). */
  topP: number;
  /** Longest response, in tokens. */
  maxTokens: number;
  seed: number;
  /** Probability that the judge flips a sentence's label (true ↔ hallucinated), independently per sentence. */
  labelNoise: number;
  /** JSON Lines of labels from another judge, one line per sample: {"id", "labels": ["true"|"false"|"unknown", ...]}. */
  judgements?: string;
  /** samples.jsonl of an earlier run to judge again (e.g. with --judgements, or another label noise) instead of sampling. */
  samplesFrom?: string;
  /** Use only the first N prompts of the world (default: all). */
  limit?: number;
  /** Replace a previous output in `out`. */
  force?: boolean;
}

export const ON_POLICY_DEFAULTS = {
  samples: 4,
  temperature: 1,
  topP: 0.95,
  maxTokens: 72,
  seed: 1,
  labelNoise: 0,
} as const satisfies Partial<OnPolicyOptions>;

/** One sampled response and its sentences, as samples.jsonl stores it. */
export interface Sample {
  /** `<prompt id>-s<k>`. */
  id: string;
  promptId: string;
  image: string;
  prompt: string;
  response: string;
  sentences: { start: number; end: number; text: string }[];
}

/** A sample with the judge's label per sentence, and the true labels where the world knows them. */
export interface JudgedSample extends Sample {
  labels: Truth[];
  truth?: Truth[];
}

/** The annotator's corruption: each judged label flipped with probability `noise` (unknown stays unknown). */
export function corruptLabels(labels: readonly Truth[], noise: number, rng: Rng): Truth[] {
  return labels.map((label) => (label === 'unknown' || !rng.chance(noise) ? label : label === 'true' ? 'false' : 'true'));
}

/** How bad a sample looks to the judge: sentences judged false or unreadable; ties go to more true sentences. */
function badness(labels: readonly Truth[]): [number, number] {
  const bad = labels.filter((l) => l !== 'true').length;
  return [bad, -(labels.length - bad)];
}

/**
 * The preference among one image's samples: chosen = the fewest sentences judged hallucinated or unreadable
 * (then the most judged true; then the first), rejected = the most (then the fewest true; then the last).
 * Samples without a sentence take no part. None when every sample looks equally good, or when the best one has
 * no sentence judged true (a preference between two unreadable answers teaches nothing about grounding).
 */
export function choosePair<T extends { labels: Truth[] }>(samples: readonly T[]): { chosen: T; rejected: T } | undefined {
  const scored = samples.filter((s) => s.labels.length > 0).map((s, order) => ({ s, key: badness(s.labels), order }));
  if (scored.length < 2) return undefined;
  const compare = (a: (typeof scored)[number], b: (typeof scored)[number]) => a.key[0] - b.key[0] || a.key[1] - b.key[1] || a.order - b.order;
  const sorted = [...scored].sort(compare);
  const best = sorted[0]!;
  const worst = sorted[sorted.length - 1]!;
  if (best.key[0] === worst.key[0] && best.key[1] === worst.key[1]) return undefined;
  if (!best.s.labels.includes('true')) return undefined;
  return { chosen: best.s, rejected: worst.s };
}

interface PromptRecord { id: string; image: string; prompt: string; sceneId?: string }

/** The world's training prompts: one per line of its pairs.jsonl (id, image, prompt, meta.scene_id). */
/** Each non-blank line of a JSON Lines file parsed, with its `file:line` for the caller's field errors. */
function eachJsonLine(file: string, text: string, each: (row: Record<string, unknown>, where: string) => void): void {
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    const where = `${file}:${i + 1}`;
    let row: Record<string, unknown>;
    try {
      row = JSON.parse(line) as Record<string, unknown>;
    } catch (error) {
      throw new Error(`${where}: not valid JSON (${(error as Error).message})`);
    }
    each(row, where);
  });
}

async function readPrompts(world: string): Promise<PromptRecord[]> {
  const file = path.join(world, 'pairs.jsonl');
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new Error(`${file}: ${error.code === 'ENOENT' ? 'not found; --world must be a folder written by `aspo synth`' : error.message}`);
  });
  const records: PromptRecord[] = [];
  eachJsonLine(file, text, (row, where) => {
    for (const field of ['id', 'image', 'prompt']) {
      if (typeof row[field] !== 'string' || !(row[field] as string)) throw new Error(`${where}: field "${field}" must be a non-empty string`);
    }
    const sceneId = (row.meta as { scene_id?: unknown } | undefined)?.scene_id;
    records.push({ id: row.id as string, image: row.image as string, prompt: row.prompt as string, ...(typeof sceneId === 'string' ? { sceneId } : {}) });
  });
  return records;
}

/** Labels from another judge, by sample id; every line names the file, line and field when wrong. */
export async function readJudgements(file: string): Promise<Map<string, Truth[]>> {
  const labels = new Map<string, Truth[]>();
  eachJsonLine(file, await readFile(file, 'utf8'), (row, where) => {
    if (typeof row.id !== 'string') throw new Error(`${where}: field "id" must be a sample id of samples.jsonl`);
    if (!Array.isArray(row.labels) || !row.labels.every((l: unknown) => l === 'true' || l === 'false' || l === 'unknown')) {
      throw new Error(`${where}: field "labels" must be an array of "true", "false" or "unknown", one per sentence`);
    }
    if (labels.has(row.id)) throw new Error(`${where}: sample ${row.id} is judged twice`);
    labels.set(row.id, row.labels as Truth[]);
  });
  return labels;
}

/** The samples of an earlier run's samples.jsonl (their labels are judged again). */
export async function readSamples(file: string): Promise<Sample[]> {
  const samples: Sample[] = [];
  eachJsonLine(file, await readFile(file, 'utf8'), (row, where) => {
    for (const field of ['id', 'promptId', 'image', 'prompt', 'response']) {
      if (typeof row[field] !== 'string') throw new Error(`${where}: field "${field}" must be a string`);
    }
    if (!Array.isArray(row.sentences)) throw new Error(`${where}: field "sentences" must be an array`);
    const { id, promptId, image, prompt, response, sentences } = row as unknown as Sample;
    samples.push({ id, promptId, image, prompt, response, sentences });
  });
  return samples;
}

/** Images described at once: K samples of each, one generate call (the draw depends on it, so it is fixed). */
const IMAGES_PER_BATCH = 16;

/**
 * K sampled responses per prompt, split into sentences. Deterministic: every batch of IMAGES_PER_BATCH prompts
 * draws from its own seeded stream, so the samples depend only on the model, the prompts, the options and the seed.
 */
export async function sampleResponses(model: VisionLanguageModel, tokenizer: Tokenizer, prompts: readonly PromptRecord[],
  images: Map<string, Float32Array>, options: Pick<OnPolicyOptions, 'samples' | 'temperature' | 'topP' | 'maxTokens' | 'seed'>,
  onBatch?: (done: number) => void): Promise<Sample[]> {
  const samples: Sample[] = [];
  for (let i = 0; i < prompts.length; i += IMAGES_PER_BATCH) {
    const batch = prompts.slice(i, i + IMAGES_PER_BATCH).flatMap((p) => Array.from({ length: options.samples }, (_, k) => ({ p, k })));
    const pixels = stackImages(batch.map(({ p }) => images.get(p.image)!), model.config.imageSize);
    const outputs = await model.generate({
      images: pixels, promptIds: batch.map(({ p }) => encodePromptResponse(tokenizer, p.prompt, '').promptIds),
      maxTokens: options.maxTokens, temperature: options.temperature, topP: options.topP, seed: deriveSeed(options.seed, 'on-policy', i),
    });
    pixels.dispose();
    batch.forEach(({ p, k }, row) => {
      const response = tokenizer.decode(outputs[row]!).trim();
      samples.push({
        id: `${p.id}-s${k}`, promptId: p.id, image: p.image, prompt: p.prompt, response,
        sentences: splitResponse(response).map(({ start, end }) => ({ start, end, text: response.slice(start, end) })),
      });
    });
    onBatch?.(Math.min(i + IMAGES_PER_BATCH, prompts.length));
  }
  return samples;
}

/** One line of the on-policy pairs.jsonl: what `aspo ingest` reads, as `aspo synth` writes it. Its spans hold every
 * sentence with a known label: the world's truth when it judged, otherwise the judge's. */
export type OnPolicyPair = PairRecord<OnPolicyPairMeta>;

/** How `aspo synth --on-policy` made a pair. */
export interface OnPolicyPairMeta {
  source: 'on-policy';
  chosen_sample: string;
  rejected_sample: string;
  /** Sentences the judge (after label noise) called hallucinated or unreadable. */
  judged_bad: [number, number];
  /** Sentences truly hallucinated (null when only a judgement file labelled them). */
  hallucinated: [number | null, number | null];
}

const spansOf = (s: JudgedSample): LabelledSpan[] => s.sentences.flatMap(({ start, end }, i) => {
  const label = (s.truth ?? s.labels)[i];
  return label === 'unknown' ? [] : [{ start, end, label: label === 'true' ? 'true' as const : 'hallucinated' as const }];
});

/** The pairs of judged samples, one per prompt that has a preference. */
export function formPairs(samples: readonly JudgedSample[]): OnPolicyPair[] {
  const byPrompt = new Map<string, JudgedSample[]>();
  for (const s of samples) byPrompt.set(s.promptId, [...(byPrompt.get(s.promptId) ?? []), s]);
  const pairs: OnPolicyPair[] = [];
  for (const [promptId, group] of byPrompt) {
    const pick = choosePair(group);
    if (!pick) continue;
    const { chosen, rejected } = pick;
    const hallucinated = (s: JudgedSample) => (s.truth ? s.truth.filter((t) => t === 'false').length : null);
    pairs.push({
      id: `${promptId}-on-policy`, image: chosen.image, prompt: chosen.prompt, chosen: chosen.response, rejected: rejected.response,
      chosen_spans: spansOf(chosen), rejected_spans: spansOf(rejected),
      meta: {
        source: 'on-policy', chosen_sample: chosen.id, rejected_sample: rejected.id,
        judged_bad: [badness(chosen.labels)[0], badness(rejected.labels)[0]],
        hallucinated: [hallucinated(chosen), hallucinated(rejected)],
      },
    });
  }
  return pairs;
}

export interface OnPolicySummary {
  out: string;
  prompts: number;
  samples: number;
  pairs: number;
  /** Prompts whose samples all looked equally good (no preference). */
  ties: number;
  /** Share of true-labelled sentences the world calls hallucinated, over all samples / chosen / rejected (NaN without the truth). */
  sampleHallucinationRate: number;
  chosenHallucinationRate: number;
  rejectedHallucinationRate: number;
  /** Share of judged sentences whose label the noise flipped. */
  flippedLabels: number;
  seconds: number;
}

const OUTPUTS = ['images', 'samples.jsonl', 'pairs.jsonl', 'manifest.json'];
const jsonLines = (rows: readonly unknown[]) => rows.map((row) => JSON.stringify(row) + '\n').join('');

function hallucinationRate(labels: Truth[][]): number {
  const judged = labels.flat().filter((l) => l !== 'unknown');
  return judged.length ? judged.filter((l) => l === 'false').length / judged.length : NaN;
}

/**
 * Samples, judges and pairs; writes `out`/samples.jsonl (every sample with its sentences, judge labels and truth),
 * pairs.jsonl, the images the pairs use and, last, manifest.json. Refuses a non-empty `out` unless `force`.
 */
export async function onPolicyPairs(options: OnPolicyOptions, hooks: { onImages?: (done: number, total: number) => void } = {}): Promise<OnPolicySummary> {
  const started = performance.now();
  if (!Number.isInteger(options.samples) || options.samples < 2) throw new RangeError(`samples must be an integer ≥ 2, got ${options.samples}`);
  if (!(options.temperature > 0)) throw new RangeError(`temperature must be > 0 (samples must differ), got ${options.temperature}`);
  if (!(options.topP > 0 && options.topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${options.topP}`);
  if (!(options.labelNoise >= 0 && options.labelNoise <= 0.5)) throw new RangeError(`labelNoise must be in [0, 0.5], got ${options.labelNoise}`);
  const world = path.resolve(options.world);
  const out = path.resolve(options.out);
  if (out === world) throw new Error('--out must not be the --world folder (no command overwrites its own input)');
  if (existsSync(out) && (await readdir(out)).length > 0) {
    if (!options.force) throw new Error(`${out} is not empty; pass force (--force) to replace a previous on-policy output there`);
    await Promise.all(OUTPUTS.map((name) => rm(path.join(out, name), { recursive: true, force: true })));
  }
  const prompts = (await readPrompts(world)).slice(0, options.limit);
  const judgements = options.judgements ? await readJudgements(options.judgements) : undefined;
  const scenes = existsSync(path.join(world, 'scenes.jsonl')) ? await loadScenes(world) : undefined;
  if (!judgements && !scenes) throw new Error(`${world} has no scenes.jsonl to judge by; give the labels of another judge with --judgements FILE`);

  let samples: Sample[];
  if (options.samplesFrom) {
    const known = new Set(prompts.map((p) => p.id));
    samples = (await readSamples(options.samplesFrom)).filter((s) => known.has(s.promptId));
  } else {
    const { model, tokenizer } = await loadModel(options.ref);
    try {
      const images = await new PixelCache().all(prompts.map((p) => path.join(world, p.image)), model.config.imageSize);
      const keyed = new Map(prompts.map((p) => [p.image, images.get(path.join(world, p.image))!]));
      samples = await sampleResponses(model, tokenizer, prompts, keyed, options, (done) => hooks.onImages?.(done, prompts.length));
    } finally {
      model.dispose();
    }
  }

  const sceneOf = new Map(prompts.map((p) => [p.id, p.sceneId ?? path.basename(p.image, path.extname(p.image))]));
  let flipped = 0;
  let judgedCount = 0;
  const judged: JudgedSample[] = samples.map((s) => {
    const scene = scenes?.get(sceneOf.get(s.promptId)!);
    if (scenes && !scene) throw new Error(`${path.join(world, 'scenes.jsonl')} has no scene for ${s.image}`);
    const truth = scene ? s.sentences.map((sentence) => judgeSentence(sentence.text, scene)) : undefined;
    let labels: Truth[];
    if (judgements) {
      const given = judgements.get(s.id);
      if (!given) throw new Error(`${options.judgements}: no line for sample ${s.id} (see samples.jsonl)`);
      if (given.length !== s.sentences.length) {
        throw new Error(`${options.judgements}: sample ${s.id} has ${s.sentences.length} sentences, the line gives ${given.length} labels`);
      }
      labels = given;
    } else {
      labels = corruptLabels(truth!, options.labelNoise, new Rng(deriveSeed(options.seed, 'label-noise', s.id)));
      labels.forEach((l, i) => { if (l !== 'unknown') { judgedCount++; if (l !== truth![i]) flipped++; } });
    }
    return { ...s, labels, ...(truth ? { truth } : {}) };
  });
  const pairs = formPairs(judged);

  // Written into a hidden sibling and renamed into place, so `out` appears only when complete.
  const staging = path.join(path.dirname(out), `.${path.basename(out)}.partial-${process.pid}`);
  await rm(staging, { recursive: true, force: true });
  await mkdir(path.join(staging, 'images'), { recursive: true });
  for (const image of new Set(pairs.map((p) => p.image))) {
    await mkdir(path.dirname(path.join(staging, image)), { recursive: true });
    await copyFile(path.join(world, image), path.join(staging, image));
  }
  await writeFile(path.join(staging, 'samples.jsonl'), jsonLines(judged));
  await writeFile(path.join(staging, 'pairs.jsonl'), jsonLines(pairs));
  const withTruth = scenes !== undefined;
  const bySample = new Map(judged.map((s) => [s.id, s]));
  const summary: OnPolicySummary = {
    out,
    prompts: prompts.length,
    samples: judged.length,
    pairs: pairs.length,
    ties: prompts.length - pairs.length,
    sampleHallucinationRate: withTruth ? hallucinationRate(judged.map((s) => s.truth!)) : NaN,
    chosenHallucinationRate: withTruth ? hallucinationRate(pairs.map((p) => bySample.get(p.meta.chosen_sample)!.truth!)) : NaN,
    rejectedHallucinationRate: withTruth ? hallucinationRate(pairs.map((p) => bySample.get(p.meta.rejected_sample)!.truth!)) : NaN,
    flippedLabels: judgedCount ? flipped / judgedCount : 0,
    seconds: 0,
  };
  const { out: _out, seconds: _seconds, ...counts } = summary;
  await writeFile(path.join(staging, 'manifest.json'), JSON.stringify({
    generator: 'aspo synth --on-policy',
    options: { ...options, out: undefined, force: undefined, ref: path.resolve(options.ref), world,
      samplesFrom: options.samplesFrom && path.resolve(options.samplesFrom) },
    judge: judgements ? { file: path.resolve(options.judgements!) } : { truth: 'scenes.jsonl', labelNoise: options.labelNoise },
    ...counts,
  }, (_key, value: unknown) => (typeof value === 'number' && Number.isNaN(value) ? null : value), 2) + '\n');
  if (existsSync(out)) {
    // an empty folder, or one whose previous outputs were removed above: move ours in, the manifest last
    for (const name of OUTPUTS.filter((n) => n !== 'manifest.json')) await rename(path.join(staging, name), path.join(out, name));
    await rename(path.join(staging, 'manifest.json'), path.join(out, 'manifest.json'));
    await rm(staging, { recursive: true });
  } else {
    await mkdir(path.dirname(out), { recursive: true });
    await rename(staging, out);
  }
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}
