/**
 * The one progress report every stage gives: `done` of `total` units in its current phase. A stage reports once when a
 * phase starts (done 0) and after each unit of committed work, so a caller can draw a bar or log a line per stage.
 */
export interface StageProgress {
  /** The stage, or its current phase where it has several (shard: encode, reference, write). */
  phase: string;
  /** Units done so far in this phase, and their total (known before the phase starts). */
  done: number;
  total: number;
  /** What is counted: pairs, sentences, responses, rows, steps. */
  unit: string;
}

export type OnProgress = (progress: StageProgress) => void;
