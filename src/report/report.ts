/**
 * `aspo report`: reads a store (read-only queries), turns its tables into charts and tables, and writes one
 * self-contained HTML file (and, optionally, each chart as a PNG). The SQL and I/O live here; the maths is in
 * stats.ts, the SVG in charts.ts and the page in html.ts.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import type { Store } from '../store/store.js';
import { StagedOutput, type OutputOptions } from '../util/safe-output.js';
import { histogramSvg, lineChartSvg, rocSvg } from './charts.js';
import { renderPage, type Block, type Cell, type Chart, type Page, type Section } from './html.js';
import { auroc, histogram, quantiles, rocCurve, thinCurve, type Histogram } from './stats.js';

/** Label values (lower-cased) that mark a span as wrong; a sentence overlapping one of them is "hallucinated". */
export const NEGATIVE_LABELS = ['hallucinated', 'hallucination', 'inaccurate', 'incorrect', 'false', 'wrong'] as const;

/** Training metrics drawn per run, one chart each (series: metric × split), when the run logged them. */
export const CURVES: ReadonlyArray<{ id: string; title: string; names: readonly string[] }> = [
  { id: 'loss', title: 'loss', names: ['loss'] },
  { id: 'margins', title: 'reward margin', names: ['rewards/margins'] },
  { id: 'accuracies', title: 'reward accuracy', names: ['rewards/accuracies'] },
  { id: 'rewards', title: 'rewards', names: ['rewards/chosen', 'rewards/rejected'] },
  { id: 'sentence-accuracy', title: 'held-out sentence accuracy', names: ['sentence_accuracy'] },
];

export interface ReportOptions {
  /** Weight parameters passed to `sentence_weights` (see docs/schema.md). */
  alpha?: number;
  scale?: number;
  /** Rows in the lowest-weighted and most-penalised tables. */
  top?: number;
  /** Thumbnail size in pixels (longest side). */
  thumbnail?: number;
  /** Shown under the title (e.g. the store's path). */
  subtitle?: string;
}

export interface Report {
  html: string;
  charts: Chart[];
  /** Section ids, in page order, and which of them had no data. */
  sections: string[];
  empty: string[];
}

export const REPORT_DEFAULTS = { alpha: 0.5, scale: 1, top: 20, thumbnail: 96 } as const;

export function checkReportOptions(options: ReportOptions): Required<Omit<ReportOptions, 'subtitle'>> {
  const alpha = options.alpha ?? REPORT_DEFAULTS.alpha;
  const scale = options.scale ?? REPORT_DEFAULTS.scale;
  const top = options.top ?? REPORT_DEFAULTS.top;
  const thumbnail = options.thumbnail ?? REPORT_DEFAULTS.thumbnail;
  if (!(alpha >= 0 && alpha <= 1)) throw new RangeError(`alpha must be a number from 0 to 1, got ${alpha}`);
  if (!(scale >= 0 && Number.isFinite(scale))) throw new RangeError(`scale must be a number >= 0, got ${scale}`);
  if (!Number.isInteger(top) || top < 1) throw new RangeError(`top must be a positive integer, got ${top}`);
  if (!Number.isInteger(thumbnail) || thumbnail < 8 || thumbnail > 512) throw new RangeError(`thumbnail must be an integer from 8 to 512, got ${thumbnail}`);
  return { alpha, scale, top, thumbnail };
}

/** Builds the report of a store. Queries only read, so a read-only store is enough. */
export async function buildReport(store: Store, options: ReportOptions = {}): Promise<Report> {
  const o = checkReportOptions(options);
  const tables = new Set((await store.all<{ table_name: string }>(
    'SELECT table_name FROM information_schema.tables')).map((r) => r.table_name));
  const has = (...names: string[]) => names.every((n) => tables.has(n));
  const count = async (sql: string) => Number(await store.scalar(sql));
  // Weights are a table macro: its parameters are checked numbers, written into the SQL as literals.
  const weights = `sentence_weights(alpha := ${o.alpha}, scale := ${o.scale})`;
  const ctx: Context = { store, has, count, o, weights, thumbnails: new Map() };

  const sections: Section[] = [
    await datasetSection(ctx),
    await sentencesSection(ctx),
    await distributionsSection(ctx),
    await labelsSection(ctx),
    await trainingSection(ctx),
    await lowestSection(ctx),
    await penalisedSection(ctx),
  ];
  const page: Page = {
    title: 'ASPO store report',
    subtitle: `${options.subtitle ? `${options.subtitle} · ` : ''}weights with alpha ${o.alpha}, scale ${o.scale}`,
    sections,
  };
  const charts = sections.flatMap((s) => s.blocks.flatMap((b) => (b.kind === 'chart' ? [b.chart] : [])));
  const empty = sections.filter((s) => s.blocks.every((b) => b.kind === 'no-data')).map((s) => s.id);
  return { html: renderPage(page), charts, sections: sections.map((s) => s.id), empty };
}

/**
 * Writes the HTML file, and each chart as `<dir>/<chart id>.png` when `pngDir` is given; returns the PNG paths. Each
 * output appears only complete, replaces an existing one only with `force`, and never replaces an input (the store).
 */
export async function writeReport(report: Report, out: string, pngDir?: string,
  safety: Pick<OutputOptions, 'force' | 'inputs'> = {}): Promise<string[]> {
  const page = await StagedOutput.create(out, 'file', safety);
  const charts = pngDir ? await StagedOutput.create(pngDir, 'folder', { ...safety, flag: '--png', ours: (f) => /^[\w-]+\.png$/.test(f) }) : undefined;
  try {
    await writeFile(page.path, report.html);
    const files: string[] = [];
    for (const chart of charts ? report.charts : []) {
      // density 144: twice the SVG's nominal 72 dpi, for crisp text.
      await sharp(Buffer.from(chart.svg), { density: 144 }).png().toFile(path.join(charts!.path, `${chart.id}.png`));
      files.push(path.resolve(pngDir!, `${chart.id}.png`));
    }
    await charts?.commit();
    await page.commit();
    return files;
  } catch (error) {
    await page.discard();
    await charts?.discard();
    throw error;
  }
}

interface Context {
  store: Store;
  has: (...tables: string[]) => boolean;
  count: (sql: string) => Promise<number>;
  o: Required<Omit<ReportOptions, 'subtitle'>>;
  /** The `sentence_weights(...)` call with the report's parameters. */
  weights: string;
  thumbnails: Map<string, Cell>;
}

const noData = (text: string): Block => ({ kind: 'no-data', text: `no data: ${text}` });

/** A file-name-safe chart id. */
export function chartId(...parts: string[]): string {
  return parts.join('-').replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '');
}

async function datasetSection(ctx: Context): Promise<Section> {
  const section: Section = { id: 'dataset', title: 'Dataset', blocks: [] };
  if (!ctx.has('pairs')) {
    section.blocks.push(noData('run aspo ingest'));
    return section;
  }
  const rows: Array<[string, number | null]> = [
    ['pairs', await ctx.count('SELECT count(*) FROM pairs')],
    ['pairs with an image', await ctx.count('SELECT count(image_id) FROM pairs')],
    ['images', ctx.has('images') ? await ctx.count('SELECT count(*) FROM images') : null],
    ['source files', await ctx.count('SELECT count(DISTINCT source) FROM pairs')],
    ['label spans', ctx.has('labels') ? await ctx.count('SELECT count(*) FROM labels') : null],
    ['segmented pairs', ctx.has('segmented_pairs') ? await ctx.count('SELECT count(*) FROM segmented_pairs') : null],
    ['sentences', ctx.has('sentences') ? await ctx.count('SELECT count(*) FROM sentences') : null],
    ['sentences with a similarity', ctx.has('sentence_scores') ? await ctx.count('SELECT count(similarity) FROM sentence_scores') : null],
    ['sentences with a perplexity', ctx.has('sentence_scores') ? await ctx.count('SELECT count(ppl) FROM sentence_scores') : null],
    ['training runs', ctx.has('runs') ? await ctx.count('SELECT count(*) FROM runs') : null],
    ['sentence rewards', ctx.has('sentence_rewards') ? await ctx.count('SELECT count(*) FROM sentence_rewards') : null],
  ];
  section.blocks.push({ kind: 'table', columns: ['what', 'count'], rows });
  section.blocks.push({ kind: 'heading', text: 'Rejected rows by reason' });
  const rejects = ctx.has('rejects')
    ? await ctx.store.all<{ stage: string; field: string | null; reason: string; n: number }>(
      `SELECT stage, field, regexp_replace(reason, '\\d+', 'N', 'g') AS reason, count(*) AS n
       FROM rejects GROUP BY ALL ORDER BY n DESC, stage, reason LIMIT 50`)
    : [];
  if (rejects.length === 0) section.blocks.push({ kind: 'text', text: 'No rejected rows.' });
  else {
    section.blocks.push({
      kind: 'table', columns: ['stage', 'field', 'reason (numbers as N)', 'rows'],
      rows: rejects.map((r) => [r.stage, r.field ?? '(whole row)', r.reason, r.n]),
    });
  }
  return section;
}

async function sentencesSection(ctx: Context): Promise<Section> {
  const section: Section = { id: 'sentences', title: 'Sentences per response', blocks: [] };
  if (!ctx.has('segmented_pairs') || await ctx.count('SELECT count(*) FROM segmented_pairs') === 0) {
    section.blocks.push(noData('run aspo segment --db'));
    return section;
  }
  for (const side of ['chosen', 'rejected'] as const) {
    const values = (await ctx.store.all<{ n: number }>(`SELECT ${side}_sentences AS n FROM segmented_pairs`)).map((r) => r.n);
    const h = histogram(values, { integer: true });
    section.blocks.push({
      kind: 'chart',
      chart: { id: chartId('sentences', side), title: `Sentences per ${side} response`,
        svg: histogramSvg(h, { title: `Sentences per ${side} response`, xLabel: 'sentences', yLabel: 'responses' }) },
      caption: `${values.length} responses, mean ${mean(values).toFixed(2)} sentences.`,
    });
  }
  return section;
}

async function distributionsSection(ctx: Context): Promise<Section> {
  const section: Section = { id: 'distributions', title: 'Similarity, perplexity and weight', blocks: [] };
  if (!ctx.has('sentence_scores') || await ctx.count('SELECT count(*) FROM sentence_scores') === 0) {
    section.blocks.push(noData('run aspo score'));
    return section;
  }
  const similarity = await column(ctx.store, 'SELECT similarity AS v FROM sentence_scores WHERE similarity IS NOT NULL');
  if (similarity.length) {
    // S is a CLIP cosine, or, when the reference model scored it (`grounding:` models), a log-prob gain: say which.
    const models = await ctx.store.all<{ grounding: boolean }>(
      "SELECT DISTINCT starts_with(similarity_model, 'grounding:') AS grounding FROM sentence_scores WHERE similarity IS NOT NULL");
    const title = models.every((m) => m.grounding) ? 'Similarity (S): grounding log-prob gain (no CLIP model ran)'
      : models.some((m) => m.grounding) ? 'Similarity (S): CLIP cosine and grounding log-prob gain' : 'Similarity (S): CLIP cosine';
    section.blocks.push(chartBlock('similarity', title, 'similarity', similarity, histogram(similarity), ''));
  } else section.blocks.push(noData('no similarities yet; run aspo score --clip MODEL'));

  const ppl = await column(ctx.store, 'SELECT ppl AS v FROM sentence_scores WHERE ppl IS NOT NULL');
  if (ppl.length) {
    // Perplexities have a long right tail: bin up to the 99th percentile and say how many lie above.
    const [lowest, p99] = quantiles(ppl, [0, 0.99]) as [number, number];
    const h = histogram(ppl, { min: lowest, max: p99 });
    section.blocks.push(chartBlock('perplexity', 'Perplexity (PPL)', 'perplexity', ppl, h,
      h.above ? ` ${h.above} above the 99th percentile (${p99.toPrecision(4)}) not drawn.` : ''));
  } else section.blocks.push(noData('no perplexities yet; run aspo score --ref CHECKPOINT or --lm MODEL'));

  const weight = await column(ctx.store, `SELECT weight AS v FROM ${ctx.weights}
    WHERE n_sentences > 1 AND (similarity IS NOT NULL OR ppl IS NOT NULL)`);
  if (weight.length) {
    section.blocks.push(chartBlock('weight', `Weight (alpha ${ctx.o.alpha})`, 'weight w', weight, histogram(weight, { min: 0, max: 1 }),
      ' Sentences of responses with more than one sentence and at least one signal.'));
  } else section.blocks.push(noData('no weights: no response with more than one scored sentence'));
  return section;
}

function chartBlock(id: string, title: string, xLabel: string, values: number[], h: Histogram, note: string): Block {
  const [median, p10, p90] = quantiles(values, [0.5, 0.1, 0.9]);
  return {
    kind: 'chart',
    chart: { id, title, svg: histogramSvg(h, { title, xLabel, yLabel: 'sentences' }) },
    caption: `${values.length} sentences; median ${median!.toPrecision(4)}, ` +
      `10th–90th percentile ${p10!.toPrecision(4)} – ${p90!.toPrecision(4)}.${note}`,
  };
}

async function labelsSection(ctx: Context): Promise<Section> {
  const section: Section = { id: 'labels', title: 'Weight against labels', blocks: [] };
  if (!ctx.has('labels', 'sentences', 'sentence_scores') || await ctx.count('SELECT count(*) FROM labels') === 0) {
    section.blocks.push(noData('the store has no label spans (labels come with the dataset, e.g. aspo synth data)'));
    return section;
  }
  const negative = NEGATIVE_LABELS.map((l) => `'${l}'`).join(', ');
  // Only responses that carry labels are judged: a sentence there is hallucinated when it overlaps a negative span.
  const rows = await ctx.store.all<{ side: string; weight: number; hallucinated: boolean }>(`
    SELECT w.side, w.weight, EXISTS (
        SELECT 1 FROM labels l WHERE l.pair_id = w.pair_id AND l.side = w.side
          AND l.char_start < s.char_end AND l.char_end > s.char_start AND lower(l.label) IN (${negative})) AS hallucinated
    FROM ${ctx.weights} w JOIN sentences s USING (pair_id, side, idx)
    WHERE w.n_sentences > 1 AND (w.similarity IS NOT NULL OR w.ppl IS NOT NULL)
      AND (w.pair_id, w.side) IN (SELECT DISTINCT pair_id, side FROM labels)`);
  if (rows.length === 0) {
    section.blocks.push(noData('no labelled response has weights yet; run aspo score'));
    return section;
  }
  const groups: Array<[string, typeof rows]> = [
    ['all', rows], ['chosen', rows.filter((r) => r.side === 'chosen')], ['rejected', rows.filter((r) => r.side === 'rejected')],
  ];
  const table: Cell[][] = [];
  const curves = [];
  for (const [name, group] of groups) {
    // Hallucinated is the positive class and a low weight the alarm: score = −weight.
    const scores = group.map((r) => -r.weight);
    const positive = group.map((r) => r.hallucinated);
    const area = auroc(scores, positive);
    const positives = positive.filter(Boolean).length;
    table.push([name, group.length, positives, Number.isNaN(area) ? null : area]);
    // Thinned to steps of 0.002: the drawing stays exact to a pixel with at most ~1000 points per curve.
    if (!Number.isNaN(area)) curves.push({ name, points: thinCurve(rocCurve(scores, positive), 0.002), auroc: area });
  }
  if (curves.length) {
    const title = 'ROC: low weight flags hallucinated sentences';
    section.blocks.push({
      kind: 'chart',
      chart: { id: 'roc', title, svg: rocSvg(curves, { title, xLabel: 'false-positive rate (true sentences flagged)', yLabel: 'true-positive rate' }) },
      caption: 'Each point: the share of hallucinated and of true sentences whose weight is at or below a threshold. ' +
        'AUROC 0.5 is chance; above it, lower weights go to hallucinated sentences.',
    });
  } else section.blocks.push(noData('the labelled sentences are all of one class; no ROC curve'));
  section.blocks.push({
    kind: 'table', columns: ['side', 'labelled sentences', 'hallucinated', 'AUROC'], rows: table,
    caption: `A sentence is hallucinated when it overlaps a span labelled ${NEGATIVE_LABELS.join(', ')} (any case); ` +
      'only responses with at least one label span count.',
  });
  return section;
}

async function trainingSection(ctx: Context): Promise<Section> {
  const section: Section = { id: 'training', title: 'Training runs', blocks: [] };
  if (!ctx.has('runs', 'train_metrics') || await ctx.count('SELECT count(*) FROM train_metrics') === 0) {
    section.blocks.push(noData('no training metrics; run aspo train'));
    return section;
  }
  const runs = await ctx.store.all<{ run_id: string; objective: string; status: string; started: string | null }>(`
    SELECT run_id, objective, status, strftime(started_at, '%Y-%m-%d %H:%M UTC') AS started FROM runs
    WHERE run_id IN (SELECT run_id FROM train_metrics) ORDER BY started_at, run_id`);
  section.blocks.push({
    kind: 'table', columns: ['run', 'objective', 'status', 'started'],
    rows: runs.map((r) => [r.run_id, r.objective, r.status, r.started]),
  });
  const metrics = await ctx.store.all<{ run_id: string; step: number; split: string; name: string; value: number }>(
    'SELECT run_id, step, split, name, value FROM train_metrics ORDER BY run_id, name, split, step');
  for (const run of runs) {
    section.blocks.push({ kind: 'heading', text: `${run.run_id} (${run.objective}, ${run.status})` });
    const own = metrics.filter((m) => m.run_id === run.run_id);
    let drawn = 0;
    for (const curve of CURVES) {
      const series = curve.names.flatMap((name) => ['train', 'eval'].map((split) => ({
        name: curve.names.length > 1 ? `${name} (${split})` : split,
        points: own.filter((m) => m.name === name && m.split === split).map((m) => [m.step, m.value] as [number, number]),
      }))).filter((s) => s.points.length > 0);
      if (series.length === 0) continue;
      const title = `${curve.title} — ${run.objective}`;
      section.blocks.push({
        kind: 'chart',
        chart: { id: chartId('run', run.run_id, curve.id), title, svg: lineChartSvg({ title, xLabel: 'step', yLabel: curve.title, series }) },
      });
      drawn++;
    }
    const others = [...new Set(own.map((m) => m.name))].filter((n) => !CURVES.some((c) => c.names.includes(n)));
    if (others.length) section.blocks.push({ kind: 'text', text: `Also logged (not drawn): ${others.sort().join(', ')}.` });
    if (!drawn) section.blocks.push(noData('this run logged none of the drawn metrics'));
  }
  return section;
}

interface SentenceRow {
  pair_id: string;
  side: string;
  idx: number;
  text: string;
  image_id: string | null;
  value: number;
  similarity?: number | null;
  ppl?: number | null;
  policy_model?: string;
  hallucinated?: boolean | null;
}

async function thumbnail(ctx: Context, imageId: string | null): Promise<Cell> {
  if (imageId === null) return { missing: 'text only' };
  const cached = ctx.thumbnails.get(imageId);
  if (cached) return cached;
  let result: Cell;
  const row = ctx.has('images') ? await ctx.store.one<{ bytes: Uint8Array }>('SELECT bytes FROM images WHERE image_id = ?', [imageId]) : undefined;
  if (!row) result = { missing: 'image not in store' };
  else {
    try {
      const png = await sharp(Buffer.from(row.bytes)).resize(ctx.o.thumbnail, ctx.o.thumbnail, { fit: 'inside' }).png().toBuffer();
      result = { image: `data:image/png;base64,${png.toString('base64')}`, alt: `image ${imageId.slice(0, 12)}` };
    } catch {
      result = { missing: 'undecodable image' };
    }
  }
  ctx.thumbnails.set(imageId, result);
  return result;
}

/** SQL for "does this sentence overlap a negative label" (NULL when its response has no labels). */
function labelExpression(ctx: Context): string {
  if (!ctx.has('labels')) return 'NULL';
  const negative = NEGATIVE_LABELS.map((l) => `'${l}'`).join(', ');
  return `CASE WHEN EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = s.pair_id AND l.side = s.side) THEN EXISTS (
      SELECT 1 FROM labels l WHERE l.pair_id = s.pair_id AND l.side = s.side
        AND l.char_start < s.char_end AND l.char_end > s.char_start AND lower(l.label) IN (${negative})) END`;
}

async function sentenceTable(ctx: Context, rows: SentenceRow[], valueName: string, withPolicy: boolean): Promise<Block> {
  const columns = ['image', 'pair', 'side', '#', 'sentence', valueName, ...(withPolicy ? ['policy'] : ['similarity', 'perplexity']), 'label'];
  const cells: Cell[][] = [];
  for (const r of rows) {
    const label = r.hallucinated === null || r.hallucinated === undefined ? null : r.hallucinated ? 'hallucinated' : 'true';
    cells.push([await thumbnail(ctx, r.image_id), r.pair_id.slice(0, 12), r.side, r.idx, r.text, r.value,
      ...(withPolicy ? [r.policy_model ?? null] : [r.similarity ?? null, r.ppl ?? null]), label]);
  }
  return { kind: 'table', columns, rows: cells };
}

async function lowestSection(ctx: Context): Promise<Section> {
  const section: Section = { id: 'lowest', title: 'Lowest-weighted sentences', blocks: [] };
  if (!ctx.has('sentence_scores', 'pairs') || await ctx.count('SELECT count(*) FROM sentence_scores') === 0) {
    section.blocks.push(noData('run aspo score'));
    return section;
  }
  const rows = await ctx.store.all<SentenceRow>(`
    SELECT s.pair_id, s.side, s.idx, s.text, p.image_id, w.weight AS value, w.similarity, w.ppl, ${labelExpression(ctx)} AS hallucinated
    FROM ${ctx.weights} w JOIN sentences s USING (pair_id, side, idx) JOIN pairs p USING (pair_id)
    WHERE w.side = 'chosen' AND w.n_sentences > 1 AND (w.similarity IS NOT NULL OR w.ppl IS NOT NULL)
    ORDER BY w.weight, w.similarity NULLS LAST, s.pair_id, s.idx LIMIT ${ctx.o.top}`);
  if (rows.length === 0) {
    section.blocks.push(noData('no chosen response has more than one scored sentence'));
    return section;
  }
  section.blocks.push({ kind: 'text', text: `The ${rows.length} chosen sentences with the lowest weight (responses with more than one scored sentence).` });
  section.blocks.push(await sentenceTable(ctx, rows, 'weight', false));
  return section;
}

async function penalisedSection(ctx: Context): Promise<Section> {
  const section: Section = { id: 'penalised', title: 'Most-penalised sentences', blocks: [] };
  if (!ctx.has('sentence_rewards', 'sentences', 'pairs') || await ctx.count('SELECT count(*) FROM sentence_rewards') === 0) {
    section.blocks.push(noData('no sentence rewards; run aspo rewards with a trained policy'));
    return section;
  }
  const rows = await ctx.store.all<SentenceRow>(`
    SELECT s.pair_id, s.side, s.idx, s.text, p.image_id, r.reward AS value, r.policy_model, ${labelExpression(ctx)} AS hallucinated
    FROM sentence_rewards r JOIN sentences s USING (pair_id, side, idx) JOIN pairs p USING (pair_id)
    WHERE r.reward IS NOT NULL
    ORDER BY r.reward, s.pair_id, s.side, s.idx LIMIT ${ctx.o.top}`);
  section.blocks.push({ kind: 'text', text: `The ${rows.length} sentences with the lowest reward under a trained policy.` });
  section.blocks.push(await sentenceTable(ctx, rows, 'reward', true));
  return section;
}

async function column(store: Store, sql: string): Promise<number[]> {
  return (await store.all<{ v: number }>(sql)).map((r) => r.v);
}

function mean(values: readonly number[]): number {
  return values.reduce((s, v) => s + v, 0) / Math.max(values.length, 1);
}
