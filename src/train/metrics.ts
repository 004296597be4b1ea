/**
 * Where training runs report: the `runs` and `train_metrics` tables (see schema.ts), in long
 * format so every objective can log whatever it measures.
 */
import { randomBytes } from 'node:crypto';
import type { Store } from '../store/store.js';

export interface MetricsSink {
  /** Called once before the first step (also on resume, with the same run id). */
  start(run: RunInfo): Promise<void>;
  log(step: number, split: 'train' | 'eval', metrics: Record<string, number>): Promise<void>;
  finish(status: 'finished' | 'failed', summary: Record<string, unknown>): Promise<void>;
}

export interface RunInfo {
  runId: string;
  objective: string;
  config: Record<string, unknown>;
  backend: string;
  checkpoint: string;
}

export function newRunId(objective: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${objective}-${stamp}-${randomBytes(3).toString('hex')}`;
}

/** Writes to the store; a resumed run updates its row and adds metrics for the new steps. */
export class StoreMetrics implements MetricsSink {
  private runId = '';

  constructor(private readonly store: Store) {}

  async start(run: RunInfo): Promise<void> {
    this.runId = run.runId;
    await this.store.run(`
      INSERT INTO runs (run_id, objective, config, backend, checkpoint, status, started_at)
      VALUES (?, ?, ?, ?, ?, 'running', current_timestamp)
      ON CONFLICT (run_id) DO UPDATE SET backend = excluded.backend, status = 'running', finished_at = NULL`,
    [run.runId, run.objective, JSON.stringify(run.config), run.backend, run.checkpoint]);
  }

  async log(step: number, split: 'train' | 'eval', metrics: Record<string, number>): Promise<void> {
    const rows = Object.entries(metrics).filter(([, value]) => Number.isFinite(value));
    if (rows.length === 0) return;
    const placeholders = rows.map(() => '(?, ?, ?, ?, ?)').join(', ');
    await this.store.run(`INSERT OR REPLACE INTO train_metrics (run_id, step, split, name, value) VALUES ${placeholders}`,
      rows.flatMap(([name, value]) => [this.runId, step, split, name, value]));
  }

  async finish(status: 'finished' | 'failed', summary: Record<string, unknown>): Promise<void> {
    await this.store.run('UPDATE runs SET status = ?, finished_at = current_timestamp, summary = ? WHERE run_id = ?',
      [status, JSON.stringify(summary), this.runId]);
  }
}

/** Keeps metrics in memory (tests, library callers without a store). */
export class MemoryMetrics implements MetricsSink {
  run?: RunInfo;
  readonly rows: Array<{ step: number; split: string; name: string; value: number }> = [];
  status?: string;

  async start(run: RunInfo): Promise<void> {
    this.run = run;
  }

  async log(step: number, split: 'train' | 'eval', metrics: Record<string, number>): Promise<void> {
    for (const [name, value] of Object.entries(metrics)) this.rows.push({ step, split, name, value });
  }

  async finish(status: 'finished' | 'failed'): Promise<void> {
    this.status = status;
  }

  series(split: string, name: string): number[] {
    return this.rows.filter((r) => r.split === split && r.name === name).map((r) => r.value);
  }
}
