import { evaluateClaim, type Truth } from './claims.js';
import { parseSentence } from './templates.js';
import type { Scene } from './world.js';

/**
 * Whether a sentence is true of the scene: `true`, `false` (a hallucination: wrong attribute or count, or an
 * object that is not there), or `unknown` when it is not worded in the world's language or names an object
 * ambiguously ("the circle" when there are two). Used to label generated data and to measure how often a model's
 * own generations hallucinate.
 */
export function judgeSentence(sentence: string, scene: Scene): Truth {
  const parsed = parseSentence(sentence);
  return parsed ? evaluateClaim(parsed.claim, scene) : 'unknown';
}

export interface SentenceSpan {
  start: number;
  end: number;
}

/**
 * Sentence spans of a response in this world's style: one per line item or prose sentence, list markers
 * excluded. Abbreviations ("approx.", "e.g.", "i.e.") are never followed by a capital letter here, so a full stop
 * followed by a space and a capital ends a sentence.
 */
export function splitResponse(text: string): SentenceSpan[] {
  const spans: SentenceSpan[] = [];
  let lineStart = 0;
  for (const line of text.split('\n')) {
    const bodyStart = lineStart + /^\s*(?:\d+[.)]|[-*•])?\s*/.exec(line)![0].length;
    const body = text.slice(bodyStart, lineStart + line.length);
    let start = bodyStart;
    for (const m of body.matchAll(/[.!?](?=\s+[A-Z])/g)) {
      const end = bodyStart + m.index + 1;
      spans.push({ start, end });
      start = end + /^\s*/.exec(body.slice(end - bodyStart))![0].length;
    }
    const lineEnd = lineStart + line.trimEnd().length;
    if (lineEnd > start) spans.push({ start, end: lineEnd });
    lineStart += line.length + 1;
  }
  return spans;
}

export interface ResponseJudgement {
  sentences: { start: number; end: number; text: string; truth: Truth }[];
  /** Share of judged (true or false) sentences that are false; NaN when none could be judged. */
  hallucinationRate: number;
}

/** Judges every sentence of a response, e.g. a model's greedy generation for an evaluation image. */
export function judgeResponse(text: string, scene: Scene): ResponseJudgement {
  const sentences = splitResponse(text).map(({ start, end }) => {
    const sentence = text.slice(start, end);
    return { start, end, text: sentence, truth: judgeSentence(sentence, scene) };
  });
  const judged = sentences.filter((s) => s.truth !== 'unknown');
  return { sentences, hallucinationRate: judged.filter((s) => s.truth === 'false').length / judged.length };
}
