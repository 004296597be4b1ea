/**
 * Chosen/rejected sentence diff: aligns the sentences of the two responses of a pair and marks the ones that appear on
 * both sides. It is the sentence-level version of RLAIF-V's "only the differing tokens count" signal.
 */

/** Similarity of two sentences in [0, 1], 1 for identical. */
export type Similarity = (a: string, b: string) => number;

export interface SentenceMatch {
  /** Index of the aligned sentence on the other side, or null when none scores at least `minMatch`. */
  matchIdx: number | null;
  /** Similarity to that sentence, null with `matchIdx`. */
  matchScore: number | null;
  /** Some sentence on the other side says the same words in the same order (case, punctuation, spacing aside). */
  shared: boolean;
}

export interface SentenceDiff {
  chosen: SentenceMatch[];
  rejected: SentenceMatch[];
}

export interface DiffOptions {
  /** Pairs scoring below this are not aligned (default 0.5). */
  minMatch?: number;
}

/**
 * The comparison form of a sentence: lower case, letters and digits only, single spaces. Two sentences with equal
 * keys are "shared". A character-similarity threshold cannot stand in for this: swapping one object word ("dog" for
 * "cat") in a long sentence still scores above 0.95, and that swap is exactly what preference pairs differ by.
 */
export function sentenceKey(text: string): string {
  return text.normalize('NFKC').toLowerCase().replace(/[^\p{L}\p{N}]+/gu, ' ').trim();
}

/**
 * Aligns chosen and rejected sentences one-to-one: first the pairs with the same words (score 1), then the remaining
 * sentences greedily by descending `similarity`; ties go to the closer relative position, then to the earlier sentence.
 */
export function diffSentences(chosen: readonly string[], rejected: readonly string[], similarity: Similarity,
  options: DiffOptions = {}): SentenceDiff {
  const minMatch = options.minMatch ?? 0.5;
  const chosenKeys = chosen.map(sentenceKey);
  const rejectedKeys = rejected.map(sentenceKey);
  const rejectedKeySet = new Set(rejectedKeys);
  const chosenKeySet = new Set(chosenKeys);
  const result: SentenceDiff = {
    chosen: chosenKeys.map((key) => ({ matchIdx: null, matchScore: null, shared: rejectedKeySet.has(key) })),
    rejected: rejectedKeys.map((key) => ({ matchIdx: null, matchScore: null, shared: chosenKeySet.has(key) })),
  };
  const distance = (i: number, j: number) => Math.abs((i + 0.5) / chosen.length - (j + 0.5) / rejected.length);
  const assign = (candidates: Candidate[]) => {
    candidates.sort((a, b) => b.score - a.score || a.distance - b.distance || a.i - b.i || a.j - b.j);
    for (const { i, j, score } of candidates) {
      const c = result.chosen[i]!;
      const r = result.rejected[j]!;
      if (c.matchIdx !== null || r.matchIdx !== null) continue;
      c.matchIdx = j;
      c.matchScore = score;
      r.matchIdx = i;
      r.matchScore = score;
    }
  };

  // Identical sentences first: they need no similarity computed, and most pairs share most of their sentences.
  const exact: Candidate[] = [];
  for (let i = 0; i < chosen.length; i++) {
    if (!result.chosen[i]!.shared) continue;
    for (let j = 0; j < rejected.length; j++) {
      if (chosenKeys[i] === rejectedKeys[j]) exact.push({ i, j, score: 1, distance: distance(i, j) });
    }
  }
  assign(exact);

  const similar: Candidate[] = [];
  for (let i = 0; i < chosen.length; i++) {
    if (result.chosen[i]!.matchIdx !== null) continue;
    for (let j = 0; j < rejected.length; j++) {
      if (result.rejected[j]!.matchIdx !== null) continue;
      const score = similarity(chosen[i]!, rejected[j]!);
      if (score >= minMatch) similar.push({ i, j, score, distance: distance(i, j) });
    }
  }
  assign(similar);
  return result;
}

interface Candidate {
  i: number;
  j: number;
  score: number;
  distance: number;
}

/**
 * The Dice coefficient of two sentences' character bigrams, 2·|A∩B| / (|A| + |B|) over the sets of distinct bigrams,
 * after lower-casing, trimming and folding runs of white space to one space; a one-character string counts as that
 * character and a space. 0 when neither has a bigram. (The same measure as `natural`'s DiceCoefficient, written here
 * so that the toolkit does not load `natural`, whose import injects a `.env` file into `process.env`.)
 */
export function diceSimilarity(a: string, b: string): number {
  const x = bigrams(a);
  const y = bigrams(b);
  if (x.size + y.size === 0) return 0;
  let shared = 0;
  for (const bigram of x) if (y.has(bigram)) shared++;
  return (2 * shared) / (x.size + y.size);
}

function bigrams(text: string): Set<string> {
  let clean = text.toLowerCase().replace(/\s+/g, ' ').trim();
  if (clean.length === 1) clean += ' ';
  const out = new Set<string>();
  for (let i = 0; i + 1 < clean.length; i++) out.add(clean.slice(i, i + 2));
  return out;
}
