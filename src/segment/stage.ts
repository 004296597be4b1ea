import type { Store } from '../store/store.js';
import { diceSimilarity, diffSentences, type DiffOptions, type Similarity } from './diff.js';
import { segment } from './segment.js';

export type Side = 'chosen' | 'rejected';

/** One row of the `sentences` table. */
export interface SentenceRow {
  side: Side;
  idx: number;
  start: number;
  end: number;
  text: string;
  matchIdx: number | null;
  matchScore: number | null;
  shared: boolean;
}

/** Segments both responses of a pair and aligns their sentences. Pure apart from `similarity`. */
export function pairSentenceRows(chosen: string, rejected: string, similarity: Similarity,
  options: DiffOptions = {}): SentenceRow[] {
  const chosenSentences = segment(chosen);
  const rejectedSentences = segment(rejected);
  const diff = diffSentences(chosenSentences.map((s) => s.text), rejectedSentences.map((s) => s.text), similarity, options);
  const rows: SentenceRow[] = [];
  for (const [side, sentences, matches] of [
    ['chosen', chosenSentences, diff.chosen], ['rejected', rejectedSentences, diff.rejected],
  ] as const) {
    sentences.forEach((s, idx) => rows.push({ side, idx, start: s.start, end: s.end, text: s.text, ...matches[idx]! }));
  }
  return rows;
}

export interface SegmentStageOptions extends DiffOptions {
  /** Pairs per transaction (default 500). */
  batchSize?: number;
  /** Called once before the first batch with the number of pairs to segment. */
  onStart?: (pending: number) => void;
  /** Called after each committed batch with the totals so far. */
  onBatch?: (progress: { pairs: number; sentences: number; total: number }) => void;
}

export interface SegmentStageResult {
  /** Pairs segmented by this run. */
  pairs: number;
  sentences: number;
  /** Sentences (both sides) with a shared counterpart. */
  shared: number;
  /** Pairs skipped because an earlier run had done them. */
  alreadyDone: number;
}

const PENDING = `FROM pairs p WHERE NOT EXISTS (SELECT 1 FROM segmented_pairs s WHERE s.pair_id = p.pair_id)`;

/**
 * Segments every pair not yet in `segmented_pairs`. Each batch of pairs lands in one transaction (its sentences and its
 * `segmented_pairs` rows together), so a run killed midway resumes where it stopped without duplicates.
 */
export async function segmentStage(store: Store, options: SegmentStageOptions = {}): Promise<SegmentStageResult> {
  const batchSize = options.batchSize ?? 500;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
  const total = Number(await store.scalar(`SELECT count(*) ${PENDING}`));
  const alreadyDone = Number(await store.scalar(
    'SELECT count(*) FROM pairs p WHERE EXISTS (SELECT 1 FROM segmented_pairs s WHERE s.pair_id = p.pair_id)'));
  options.onStart?.(total);
  const result: SegmentStageResult = { pairs: 0, sentences: 0, shared: 0, alreadyDone };
  let after = '';
  for (;;) {
    const batch = await store.all<{ pair_id: string; chosen: string; rejected: string }>(
      `SELECT p.pair_id, p.chosen, p.rejected ${PENDING} AND p.pair_id > ? ORDER BY p.pair_id LIMIT ?`, [after, batchSize]);
    if (batch.length === 0) break;
    const perPair = batch.map((pair) => ({ pairId: pair.pair_id, rows: pairSentenceRows(pair.chosen, pair.rejected, diceSimilarity, options) }));
    await store.transaction(async () => {
      await store.append('sentences', ['varchar', 'varchar', 'integer', 'integer', 'integer', 'varchar', 'integer', 'double', 'boolean'],
        perPair.flatMap(({ pairId, rows }) => rows.map((r) => [pairId, r.side, r.idx, r.start, r.end, r.text, r.matchIdx, r.matchScore, r.shared])));
      await store.append('segmented_pairs', ['varchar', 'integer', 'integer', 'integer'], perPair.map(({ pairId, rows }) => [pairId,
        rows.filter((r) => r.side === 'chosen').length,
        rows.filter((r) => r.side === 'rejected').length,
        rows.filter((r) => r.side === 'chosen' && r.shared).length]));
    });
    for (const { rows } of perPair) {
      result.sentences += rows.length;
      result.shared += rows.filter((r) => r.shared).length;
    }
    result.pairs += batch.length;
    after = batch[batch.length - 1]!.pair_id;
    options.onBatch?.({ pairs: result.pairs, sentences: result.sentences, total });
  }
  return result;
}
