import { evaluateClaim, hallucinate, objectClaims, trueClaims, type Claim } from './claims.js';
import type { Rng } from '../util/random.js';
import { renderClaim, templatesFor } from './templates.js';
import type { Colour, Scene, SceneObject, Shape } from './world.js';

/** What a prompt asks: a description, a list of the objects, about one object, or how many there are. */
export type PromptKind = 'describe' | 'list' | 'object' | 'count';

export interface Prompt {
  kind: PromptKind;
  text: string;
  /** The object an `object` prompt asks about. */
  target?: { colour: Colour; shape: Shape };
}

const PROMPT_TEXTS: Record<PromptKind, string[]> = {
  describe: [
    'Describe the image.',
    'What do you see in this image?',
    'Describe the shapes in the picture.',
    'Give a short description of the image.',
    'What is shown in the picture?',
  ],
  list: ['List the objects in the image.', 'Make a list of the shapes you can see.'],
  object: ['Where is the {target}?', 'Tell me about the {target}.', 'What can you say about the {target}?'],
  count: ['How many objects are in the image?', 'How many shapes can you see?'],
};

export function samplePrompt(scene: Scene, rng: Rng, kind?: PromptKind): Prompt {
  const chosenKind = kind ?? rng.weighted<PromptKind>([['describe', 5], ['list', 2], ['object', 2], ['count', 1]]);
  const text = rng.pick(PROMPT_TEXTS[chosenKind]);
  if (chosenKind !== 'object') return { kind: chosenKind, text };
  const { colour, shape } = rng.pick(scene.objects);
  return { kind: chosenKind, text: text.replace('{target}', `${colour} ${shape}`), target: { colour, shape } };
}

const key = (claim: Claim) => JSON.stringify(claim);

/** Adds claims not yet present, up to the budget. */
function addUnique(claims: Claim[], budget: number, ...more: Claim[]): void {
  for (const claim of more) {
    if (claims.length < budget && !claims.some((c) => key(c) === key(claim))) claims.push(claim);
  }
}

/** An object's claims other than its existence, in random order. */
function attributeClaims(scene: Scene, o: SceneObject, rng: Rng): Claim[] {
  return rng.shuffle(objectClaims(scene, o).filter((c) => c.kind !== 'exists' && c.kind !== 'exists_sized'));
}

function introduction(scene: Scene, o: SceneObject, rng: Rng): Claim {
  return rng.pick(objectClaims(scene, o).filter((c) => c.kind === 'exists' || c.kind === 'exists_sized'));
}

/**
 * The true claims a response to this prompt makes about the scene, in order, at most `maxSentences`: a
 * description opens with the count more often than not, then introduces objects with one attribute each.
 */
export function planClaims(scene: Scene, prompt: Prompt, rng: Rng, maxSentences: number): Claim[] {
  const claims: Claim[] = [];
  const all = trueClaims(scene);
  const count: Claim = { kind: 'count', n: scene.objects.length };
  const objects = rng.shuffle(scene.objects);
  const target = prompt.target &&
    scene.objects.find((o) => o.colour === prompt.target!.colour && o.shape === prompt.target!.shape);
  // A question about an object this (corrupted) scene lacks is answered with a description.
  switch (prompt.kind === 'object' && !target ? 'describe' : prompt.kind) {
    case 'object': {
      const about = attributeClaims(scene, target!, rng);
      // "Where is ...?" is answered with a position first.
      const position = about.find((c) => c.kind === 'cell' || c.kind === 'row' || c.kind === 'column');
      if (prompt.text.startsWith('Where') && position) addUnique(claims, maxSentences, position);
      addUnique(claims, Math.min(maxSentences, rng.between(2, 3)), ...about);
      break;
    }
    case 'count':
      addUnique(claims, maxSentences, count);
      if (rng.chance(0.4)) addUnique(claims, maxSentences, rng.pick(all.filter((c) => c.kind === 'shape_count' || c.kind === 'colour_count')));
      addUnique(claims, maxSentences, ...objects.map((o) => introduction(scene, o, rng)));
      break;
    case 'list':
      if (rng.chance(0.3)) addUnique(claims, maxSentences, count);
      addUnique(claims, maxSentences, ...objects.map((o) =>
        rng.chance(0.7) ? introduction(scene, o, rng) : attributeClaims(scene, o, rng)[0]!));
      break;
    case 'describe': {
      if (rng.chance(0.7)) addUnique(claims, maxSentences, count);
      const summaries = all.filter((c) => c.kind === 'shape_count' || c.kind === 'colour_count' || c.kind === 'examples');
      if (rng.chance(0.3)) addUnique(claims, maxSentences, rng.pick(summaries));
      for (const o of objects) addUnique(claims, maxSentences, introduction(scene, o, rng), attributeClaims(scene, o, rng)[0]!);
      addUnique(claims, maxSentences, ...rng.shuffle(all));
      break;
    }
  }
  return claims;
}

export type ResponseFormat = 'prose' | 'numbered' | 'bulleted' | 'lead_list';

export function sampleFormat(prompt: Prompt, rng: Rng): ResponseFormat {
  switch (prompt.kind) {
    case 'describe': return rng.weighted<ResponseFormat>([['prose', 6], ['numbered', 1.5], ['bulleted', 1.5], ['lead_list', 1]]);
    case 'list': return rng.weighted<ResponseFormat>([['numbered', 4.5], ['bulleted', 4.5], ['lead_list', 1]]);
    default: return rng.weighted<ResponseFormat>([['prose', 8], ['bulleted', 2]]);
  }
}

export type SpanLabel = 'true' | 'hallucinated';

export interface LabelledSpan {
  start: number;
  end: number;
  label: SpanLabel;
}

export interface Response {
  text: string;
  spans: LabelledSpan[];
  claims: Claim[];
}

/**
 * Lays sentences out as prose, a numbered or bulleted list, or a lead sentence followed by a list; the spans
 * (UTF-16 offsets) cover each sentence's text, not its list marker.
 */
export function layOut(sentences: string[], format: ResponseFormat): { text: string; spans: { start: number; end: number }[] } {
  let text = '';
  const spans: { start: number; end: number }[] = [];
  sentences.forEach((sentence, i) => {
    if (i > 0) text += format === 'prose' ? ' ' : '\n';
    if (format === 'numbered') text += `${i + 1}. `;
    else if (format === 'bulleted' || (format === 'lead_list' && i > 0)) text += '- ';
    spans.push({ start: text.length, end: text.length + sentence.length });
    text += sentence;
  });
  return { text, spans };
}

/** Renders claims in random wordings and labels each sentence by its truth in `truth`. */
export function realise(claims: Claim[], truth: Scene, format: ResponseFormat, rng: Rng): Response {
  const sentences = claims.map((claim) => renderClaim(claim, rng.pick(templatesFor(claim.kind))));
  const { text, spans } = layOut(sentences, format);
  return {
    text,
    claims,
    spans: spans.map((span, i) => {
      const verdict = evaluateClaim(claims[i]!, truth);
      if (verdict === 'unknown') throw new Error(`internal: sentence "${sentences[i]}" cannot be judged`);
      return { ...span, label: verdict === 'true' ? 'true' : 'hallucinated' };
    }),
  };
}

/** Replaces each claim, with probability `noise`, by a hallucinated (false in `seen`) version of it. */
export function addHallucinations(claims: Claim[], seen: Scene, noise: number, rng: Rng): Claim[] {
  return claims.map((claim) => (rng.chance(noise) ? hallucinate(claim, seen, rng) ?? claim : claim));
}

/** Drops claims that name an object ambiguously in the real scene, so every sentence gets a definite label. */
export function judgeable(claims: Claim[], truth: Scene): Claim[] {
  return claims.filter((claim) => evaluateClaim(claim, truth) !== 'unknown');
}
