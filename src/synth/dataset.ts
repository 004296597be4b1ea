import { hallucinate, trueClaims, type Claim, type ClaimKind } from './claims.js';
import {
  addHallucinations, judgeable, planClaims, realise, sampleFormat, samplePrompt, type LabelledSpan, type Prompt,
} from './describe.js';
import { deriveSeed, Rng } from '../util/random.js';
import { renderClaim, templatesFor } from './templates.js';
import { corruptScene, sampleScene, sceneKey, type Corruption, type Scene } from './world.js';

/** One line of pairs.jsonl — the shape `aspo ingest` reads; `Meta` says how the pair was made. */
export interface PairRecord<Meta = TemplatePairMeta> {
  id: string;
  image: string;
  prompt: string;
  chosen: string;
  rejected: string;
  chosen_spans: LabelledSpan[];
  rejected_spans: LabelledSpan[];
  meta: Meta;
}

/** How `aspo synth` made a template pair. */
export interface TemplatePairMeta {
  scene_id: string;
  noise: number;
  prompt_kind: Prompt['kind'];
  format: string;
  corruptions: Corruption[];
  chosen_hallucinated: number;
  rejected_hallucinated: number;
}

/** One line of sft.jsonl: a prompt and the true description, for supervised training of the reference model. */
export interface SftRecord {
  image: string;
  prompt: string;
  response: string;
}

/** A minimal pair: a true sentence about the image and the same sentence made false. */
export interface Probe {
  true: string;
  false: string;
  kind: ClaimKind;
}

/** One line of eval.jsonl. */
export interface EvalRecord {
  image: string;
  prompt: string;
  response: string;
  probes: Probe[];
}

export interface GenerationOptions {
  /** Probability that a sentence of a response is replaced by a hallucinated one. */
  noise: number;
  maxSentences: number;
}

const countHallucinated = (spans: LabelledSpan[]) => spans.filter((s) => s.label === 'hallucinated').length;

/**
 * A preference pair built the way machine-generated data is (SeVa-style): chosen = a description of the real
 * scene with a fraction `noise` of its sentences hallucinated; rejected = a description, equally noisy, of a
 * corrupted copy of the scene, so it carries more hallucinations. Both are labelled against the real scene.
 */
export function makePair(scene: Scene, image: string, id: string, options: GenerationOptions, rng: Rng): PairRecord {
  const prompt = samplePrompt(scene, rng);
  const format = sampleFormat(prompt, rng);
  const chosen = realise(
    addHallucinations(planClaims(scene, prompt, rng, options.maxSentences), scene, options.noise, rng), scene, format, rng);
  // Identical answers carry no preference (SeVa drops them); draw again.
  for (let attempt = 0; ; attempt++) {
    const { scene: seen, corruptions } = corruptScene(scene, rng);
    const claims = judgeable(
      addHallucinations(planClaims(seen, prompt, rng, options.maxSentences), seen, options.noise, rng), scene);
    if (claims.length === 0) continue;
    const rejected = realise(claims, scene, format, rng);
    if (rejected.text === chosen.text && attempt < 20) continue;
    return {
      id,
      image,
      prompt: prompt.text,
      chosen: chosen.text,
      rejected: rejected.text,
      chosen_spans: chosen.spans,
      rejected_spans: rejected.spans,
      meta: {
        scene_id: scene.id,
        noise: options.noise,
        prompt_kind: prompt.kind,
        format,
        corruptions,
        chosen_hallucinated: countHallucinated(chosen.spans),
        rejected_hallucinated: countHallucinated(rejected.spans),
      },
    };
  }
}

/** A true response (no hallucinations) to a freshly sampled prompt. */
export function makeSft(scene: Scene, image: string, maxSentences: number, rng: Rng): SftRecord {
  const prompt = samplePrompt(scene, rng);
  const response = realise(planClaims(scene, prompt, rng, maxSentences), scene, sampleFormat(prompt, rng), rng);
  return { image, prompt: prompt.text, response: response.text };
}

/**
 * Up to `count` probes over as many kinds of claim as possible: each a true sentence and, in the same wording,
 * the claim with its attribute changed (or, for existence, a non-existent object).
 */
export function makeProbes(scene: Scene, count: number, rng: Rng): Probe[] {
  const byKind = new Map<ClaimKind, Claim[]>();
  for (const claim of rng.shuffle(trueClaims(scene))) byKind.set(claim.kind, [...(byKind.get(claim.kind) ?? []), claim]);
  const kinds = rng.shuffle([...byKind.keys()]);
  const probes: Probe[] = [];
  for (let round = 0; probes.length < count && kinds.some((k) => byKind.get(k)!.length > round); round++) {
    for (const kind of kinds) {
      const claim = byKind.get(kind)![round];
      if (!claim || probes.length >= count) continue;
      const wrong = hallucinate(claim, scene, rng, true);
      if (!wrong) continue;
      const template = rng.pick(templatesFor(kind));
      probes.push({ true: renderClaim(claim, template), false: renderClaim(wrong, template), kind });
    }
  }
  return probes;
}

export function makeEvalRecord(scene: Scene, image: string, options: { maxSentences: number; probes: number }, rng: Rng): EvalRecord {
  const prompt = samplePrompt(scene, rng, 'describe');
  const response = realise(planClaims(scene, prompt, rng, options.maxSentences), scene, sampleFormat(prompt, rng), rng);
  return { image, prompt: prompt.text, response: response.text, probes: makeProbes(scene, options.probes, rng) };
}

export interface DatasetOptions extends GenerationOptions {
  seed: number;
  images: number;
  evalImages: number;
  pairsPerImage: number;
  sftPerImage: number;
  probes: number;
}

export interface SceneEntry {
  scene: Scene;
  split: 'train' | 'eval';
  /** Path of the image inside the output folder. */
  image: string;
}

export interface Dataset {
  scenes: SceneEntry[];
  pairs: PairRecord[];
  sft: SftRecord[];
  eval: EvalRecord[];
}

const padded = (i: number) => String(i).padStart(6, '0');

/**
 * Everything but the pixels, deterministically from the seed: each scene and each record draws from its own
 * random stream, so changing one count does not reshuffle the rest. Evaluation scenes never repeat a training
 * scene (same objects, attributes and cells).
 */
export function planDataset(options: DatasetOptions): Dataset {
  const scenes: SceneEntry[] = [];
  const pairs: PairRecord[] = [];
  const sft: SftRecord[] = [];
  const evalRecords: EvalRecord[] = [];
  const trainKeys = new Set<string>();
  for (let i = 0; i < options.images; i++) {
    const id = `train-${padded(i)}`;
    const image = `images/${id}.png`;
    const scene = sampleScene(new Rng(deriveSeed(options.seed, 'scene', id)), id);
    trainKeys.add(sceneKey(scene));
    scenes.push({ scene, split: 'train', image });
    for (let p = 0; p < options.pairsPerImage; p++) {
      pairs.push(makePair(scene, image, `${id}-${p}`, options, new Rng(deriveSeed(options.seed, 'pair', id, p))));
    }
    for (let s = 0; s < options.sftPerImage; s++) {
      sft.push(makeSft(scene, image, options.maxSentences, new Rng(deriveSeed(options.seed, 'sft', id, s))));
    }
  }
  for (let i = 0; i < options.evalImages; i++) {
    const id = `eval-${padded(i)}`;
    const image = `eval/images/${id}.png`;
    let scene: Scene;
    for (let attempt = 0; ; attempt++) {
      scene = sampleScene(new Rng(deriveSeed(options.seed, 'scene', id, attempt)), id);
      if (!trainKeys.has(sceneKey(scene))) break;
    }
    scenes.push({ scene, split: 'eval', image });
    evalRecords.push(makeEvalRecord(scene, image, options, new Rng(deriveSeed(options.seed, 'eval', id))));
  }
  return { scenes, pairs, sft, eval: evalRecords };
}
