/**
 * The run loop every objective shares: evaluate before the first step, then step, log a window of steps every
 * `logEvery`, evaluate every `evalEvery`, checkpoint every `saveEvery` (and all three after the last step), and
 * mark the run failed in the metrics when a step throws.
 */
import type { MetricsSink } from './metrics.js';

export interface LoopTrainer<Step, Eval> {
  step: number;
  readonly totalSteps: number;
  trainStep(): Promise<Step>;
  evaluate(): Promise<Eval | undefined>;
  save(): Promise<void>;
}

export interface LoopSchedule {
  logEvery: number;
  evalEvery: number;
  saveEvery: number;
}

export interface LoopHandlers<Step, Eval> {
  metrics?: MetricsSink;
  /** Called after every step: the objective adds the step to its window. */
  onStep(stats: Step): void;
  /** The window's metrics (then the objective starts a new window), given the seconds it took. */
  closeWindow(seconds: number, last: Step): Record<string, number>;
  /** The `eval` metrics of an evaluation. */
  evalMetrics(stats: Eval): Record<string, number>;
  onEval?(stats: Eval): void;
}

/** Runs `trainer` to its last step; returns the last evaluation. */
export async function runLoop<Step, Eval>(trainer: LoopTrainer<Step, Eval>, schedule: LoopSchedule,
  handlers: LoopHandlers<Step, Eval>): Promise<Eval | undefined> {
  const { metrics } = handlers;
  let lastEval: Eval | undefined;
  const evaluate = async () => {
    const stats = await trainer.evaluate();
    if (!stats) return;
    lastEval = stats;
    handlers.onEval?.(stats);
    await metrics?.log(trainer.step, 'eval', handlers.evalMetrics(stats));
  };
  let since = performance.now();
  try {
    if (trainer.step === 0) await evaluate();
    while (trainer.step < trainer.totalSteps) {
      const stats = await trainer.trainStep();
      handlers.onStep(stats);
      const last = trainer.step === trainer.totalSteps;
      if (trainer.step % schedule.logEvery === 0 || last) {
        // Closed even without a metrics sink: the objective keeps the last window for its result.
        const window = handlers.closeWindow((performance.now() - since) / 1000, stats);
        since = performance.now();
        await metrics?.log(trainer.step, 'train', window);
      }
      if ((schedule.evalEvery > 0 && trainer.step % schedule.evalEvery === 0) || last) await evaluate();
      if ((schedule.saveEvery > 0 && trainer.step % schedule.saveEvery === 0) || last) await trainer.save();
    }
  } catch (error) {
    await metrics?.finish('failed', { step: trainer.step, error: (error as Error).message });
    throw error;
  }
  return lastEval;
}
