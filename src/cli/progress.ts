import type { StageProgress } from '../util/progress.js';

/**
 * Progress for long work: a redrawn bar on a TTY (stderr), nothing on a pipe;
 * `done()` always prints one summary line to stderr, so logs keep a record.
 */
export interface ProgressOptions {
  label: string;
  total?: number;
  unit?: string;
  stream?: NodeJS.WriteStream;
}

export class Progress {
  private count = 0;
  private extra = '';
  private lastDraw = 0;
  private total: number | undefined;
  private readonly started = performance.now();
  private readonly stream: NodeJS.WriteStream;
  private readonly interactive: boolean;

  constructor(private readonly options: ProgressOptions) {
    this.stream = options.stream ?? process.stderr;
    this.interactive = Boolean(this.stream.isTTY) && !process.env.CI;
    this.total = options.total;
  }

  /** Sets the total once the work has been counted (stages count their pending work after they start). */
  setTotal(total: number): void {
    this.total = total;
  }

  /** Takes a stage's report (see StageProgress): its total, and how far it is. */
  readonly report = (progress: StageProgress): void => {
    this.total = progress.total;
    this.at(progress.done);
  };

  /** Moves to an absolute count, for callers that report totals so far rather than increments. */
  at(count: number, extra?: string): void {
    this.tick(count - this.count, extra);
  }

  /** Advances by `n` units; `extra` is shown after the rate (e.g. "12.3 MB read"). */
  tick(n = 1, extra?: string): void {
    this.count += n;
    if (extra !== undefined) this.extra = extra;
    if (!this.interactive) return;
    const now = performance.now();
    if (now - this.lastDraw < 100) return;
    this.lastDraw = now;
    this.draw();
  }

  get seconds(): number {
    return (performance.now() - this.started) / 1000;
  }

  private draw(): void {
    const { label, unit = 'rows' } = this.options;
    const total = this.total;
    const rate = this.count / Math.max(this.seconds, 1e-9);
    let bar = '';
    if (total && total > 0) {
      const width = 24;
      const filled = Math.min(width, Math.round((this.count / total) * width));
      bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${((100 * this.count) / total).toFixed(0)}% `;
    }
    const line = `${label} ${bar}${this.count.toLocaleString('en-US')} ${unit} ${formatRate(rate)} ${unit}/s ${this.extra}`;
    this.stream.write(`\r${line.slice(0, (this.stream.columns || 100) - 1)}\x1b[K`);
  }

  /** Clears the bar (on a TTY), so that a log line can follow. */
  clear(): void {
    if (this.interactive) this.stream.write('\r\x1b[K');
  }

  /** Clears the bar and prints the summary line. */
  done(summary: string): void {
    if (this.interactive) this.stream.write('\r\x1b[K');
    this.stream.write(`${this.options.label}: ${summary}\n`);
  }
}

function formatRate(rate: number): string {
  return rate >= 100 ? Math.round(rate).toLocaleString('en-US') : rate.toFixed(1);
}
