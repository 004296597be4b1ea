import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import sharp from 'sharp';
import { auroc, formatNumber, histogram, niceTicks, quantiles, rocCurve, thinCurve } from '../src/report/stats.js';
import { escapeXml, histogramSvg, lineChartSvg, rocSvg } from '../src/report/charts.js';
import { renderPage } from '../src/report/html.js';
import { buildReport, NEGATIVE_LABELS, writeReport } from '../src/report/report.js';
import { Store, withStore } from '../src/store/store.js';
import { DPO_RUN, reportStore, SFT_RUN } from './report-fixture.js';
import { CLI, tempDir } from './support.js';

/** Deterministic pseudo-random numbers in [0, 1). */
function lcg(seed: number): () => number {
  let s = seed;
  return () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
}

/** AUROC by definition: over every (positive, negative) pair, 1 when the positive scores higher, 1/2 for a tie. */
function pairwiseAuroc(scores: number[], positive: boolean[]): number {
  let sum = 0;
  let pairs = 0;
  scores.forEach((p, i) => {
    if (!positive[i]) return;
    scores.forEach((n, j) => {
      if (positive[j]) return;
      pairs++;
      sum += p > n ? 1 : p === n ? 0.5 : 0;
    });
  });
  return sum / pairs;
}

/** A minimal XML well-formedness check: tags balance and nest, attributes are quoted, no stray `<` or `&`. */
function assertWellFormed(xml: string): void {
  const stack: string[] = [];
  const tag = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/y;
  let i = 0;
  while (i < xml.length) {
    const lt = xml.indexOf('<', i);
    const text = xml.slice(i, lt < 0 ? xml.length : lt);
    assert.doesNotMatch(text, /&(?!(amp|lt|gt|quot|#39);)/, `unescaped & in text near ${JSON.stringify(text.slice(0, 40))}`);
    if (lt < 0) break;
    tag.lastIndex = lt;
    const m = tag.exec(xml);
    assert.ok(m, `malformed tag at ${lt}: ${JSON.stringify(xml.slice(lt, lt + 60))}`);
    const [, closing, name, , selfClosing] = m;
    if (closing) assert.equal(stack.pop(), name, `</${name}> closes the wrong element`);
    else if (!selfClosing) stack.push(name!);
    i = lt + m[0].length;
  }
  assert.deepEqual(stack, [], 'unclosed elements');
}

test('auroc: a hand-worked example, ties counted as one half', () => {
  // Positives score 0.35 and 0.8, negatives 0.1 and 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4; lost 0.35<0.4 → 3/4.
  assert.equal(auroc([0.1, 0.4, 0.35, 0.8], [false, false, true, true]), 0.75);
  // Positives {1, 2}, negatives {1, 0}: 1 vs 1 ties (1/2), the other three pairs are won → 3.5/4.
  assert.equal(auroc([1, 1, 2, 0], [true, false, true, false]), 0.875);
  assert.equal(auroc([5, 5, 5], [true, false, false]), 0.5);
  assert.ok(Number.isNaN(auroc([1, 2], [true, true])));
  assert.throws(() => auroc([1, 2], [true]), /same length/);
});

test('auroc equals the brute-force pairwise count on random scores with many ties', () => {
  const random = lcg(11);
  for (let trial = 0; trial < 20; trial++) {
    const n = 5 + Math.floor(random() * 60);
    const scores = Array.from({ length: n }, () => Math.round(random() * 8) / 8);
    const positive = scores.map(() => random() < 0.4);
    if (!positive.some(Boolean) || positive.every(Boolean)) continue;
    const area = auroc(scores, positive);
    assert.ok(Math.abs(area - pairwiseAuroc(scores, positive)) < 1e-12, `trial ${trial}`);
    // The ROC curve's trapezoid area is the same number (tied scores move diagonally).
    const points = rocCurve(scores, positive);
    let trapezoids = 0;
    for (let k = 1; k < points.length; k++) {
      trapezoids += (points[k]![0] - points[k - 1]![0]) * (points[k]![1] + points[k - 1]![1]) / 2;
    }
    assert.ok(Math.abs(trapezoids - area) < 1e-12, `trial ${trial}: trapezoids ${trapezoids} vs ${area}`);
  }
});

test('rocCurve: the hand-worked points', () => {
  // By score, descending: 0.8 (+), 0.4 (−), 0.35 (+), 0.1 (−); two positives, two negatives.
  assert.deepEqual(rocCurve([0.1, 0.4, 0.35, 0.8], [false, false, true, true]), [[0, 0], [0, 0.5], [0.5, 0.5], [0.5, 1], [1, 1]]);
  assert.deepEqual(rocCurve([1, 2], [false, false]), []);
});

test('thinCurve keeps the ends and a subset of points at least a step apart; quantiles interpolate', () => {
  const random = lcg(9);
  const n = 20000;
  const scores = Array.from({ length: n }, () => random());
  const curve = rocCurve(scores, scores.map((s) => random() < s));
  const thin = thinCurve(curve, 0.01);
  assert.deepEqual(thin[0], curve[0]);
  assert.deepEqual(thin[thin.length - 1], curve[curve.length - 1]);
  assert.ok(thin.length <= 2 / 0.01 + 2, `${thin.length} points`);
  const all = new Set(curve.map((p) => p.join()));
  assert.ok(thin.every((p) => all.has(p.join())));
  for (let k = 1; k < thin.length - 1; k++) {
    assert.ok(Math.abs(thin[k]![0] - thin[k - 1]![0]) + Math.abs(thin[k]![1] - thin[k - 1]![1]) >= 0.01);
  }
  // Median of 1..4 is 2.5; the 0.9 quantile is at position 2.7 of the sorted values: 3 + 0.7.
  assert.deepEqual(quantiles([4, NaN, 1, 3, 2], [0, 0.5, 0.9, 1]).map((q) => +q.toFixed(12)), [1, 2.5, 3.7, 4]);
});

test('histogram bin counts match an independent count; integer bins; explicit range counts outliers', () => {
  const random = lcg(5);
  const values = Array.from({ length: 500 }, () => random() * 3 - 1);
  const h = histogram(values, { bins: 7 });
  assert.equal(h.counts.length, 7);
  assert.equal(h.edges.length, 8);
  h.counts.forEach((count, i) => {
    const lo = h.edges[i]!;
    const hi = h.edges[i + 1]!;
    const last = i === h.counts.length - 1;
    assert.equal(count, values.filter((v) => v >= lo && (v < hi || (last && v <= hi))).length, `bin ${i}`);
  });
  assert.equal(h.counts.reduce((a, b) => a + b, 0), values.length);

  const ints = [1, 2, 2, 3, 3, 3, 6];
  const hi = histogram(ints, { integer: true });
  assert.deepEqual(hi.edges, [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5]);
  assert.deepEqual(hi.counts, [1, 2, 3, 0, 0, 1]);

  const clipped = histogram([-1, 0, 0.2, 0.5, 1, 2, NaN, Infinity], { min: 0, max: 1, bins: 2 });
  assert.deepEqual(clipped.counts, [2, 2]);
  assert.deepEqual([clipped.below, clipped.above, clipped.nonFinite], [1, 1, 2]); // Infinity is non-finite, not above
  assert.deepEqual(histogram([4, 4, 4]).counts.reduce((a, b) => a + b, 0), 3);
  assert.deepEqual(histogram([]).counts, []);
});

test('niceTicks are round and cover the range', () => {
  assert.deepEqual(niceTicks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0, 37), [0, 10, 20, 30]);
  assert.deepEqual(niceTicks(-0.23, 0.41), [-0.2, 0, 0.2, 0.4]); // range 0.64 / 5 = 0.128 → step 0.2
  // A running sum from -0.3 in steps of 0.1 reaches 2.78e-17, not 0; every tick here is exact.
  assert.deepEqual(niceTicks(-0.3, 0.25, 6), [-0.3, -0.2, -0.1, 0, 0.1, 0.2]);
  assert.equal(formatNumber(0.30000000000000004), '0.3');
  assert.equal(formatNumber(1234567), '1 234 567');
  assert.equal(formatNumber(-1000), '-1 000');
});

test('charts are well-formed SVG: one bar per bin, one line per series, text escaped, and sharp renders them', async () => {
  const h = histogram([0.1, 0.2, 0.2, 0.5, 0.9, 0.95], { bins: 9, min: 0, max: 1 });
  const hostile = 'sim <script>alert("x")</script> & more';
  const hist = histogramSvg(h, { title: hostile, xLabel: 'x', yLabel: 'count' });
  assertWellFormed(hist);
  assert.equal(hist.match(/<rect class="bar"/g)?.length, 9);
  assert.ok(!hist.includes('<script>'));
  assert.ok(hist.includes(escapeXml(hostile)));

  const line = lineChartSvg({ title: 'loss', xLabel: 'step', yLabel: 'loss',
    series: [{ name: 'train', points: [[0, 2], [10, 1], [20, 0.5]] }, { name: 'eval', points: [[0, 2.1], [20, 0.7]] }, { name: 'one', points: [[5, 1]] }] });
  assertWellFormed(line);
  assert.equal(line.match(/<g class="series"/g)?.length, 3);
  assert.equal(line.match(/<polyline/g)?.length, 2); // a one-point series is a marker only
  assert.match(line, /class="legend"/);

  const roc = rocSvg([{ name: 'all', points: rocCurve([0.1, 0.4, 0.35, 0.8], [false, false, true, true]), auroc: 0.75 }],
    { title: 'ROC', xLabel: 'fpr', yLabel: 'tpr' });
  assertWellFormed(roc);
  assert.match(roc, /AUROC 0\.750/);
  assert.match(roc, /class="diagonal"/);

  for (const svg of [hist, line, roc]) {
    const meta = await sharp(Buffer.from(svg)).png().toBuffer().then((png) => sharp(png).metadata());
    assert.equal(meta.format, 'png');
    assert.equal(meta.width, 480);
  }
});

test('the page escapes every text it is given and refuses non-data: images', () => {
  const evil = '"><script>alert(1)</script><img src=x onerror=alert(2)>';
  const html = renderPage({ title: evil, subtitle: evil, sections: [{ id: 'a"b', title: evil, blocks: [
    { kind: 'text', text: evil },
    { kind: 'table', columns: [evil], rows: [[evil, 1.5, null, { missing: evil }]] },
    { kind: 'no-data', text: evil },
  ] }] });
  assert.ok(!html.includes('<script'));
  assert.ok(!html.includes('<img src=x'));
  assert.match(html, /<section id="a&quot;b">/);
  assertWellFormed(html.slice(html.indexOf('<body>'), html.indexOf('</html>')));
  assert.throws(() => renderPage({ title: 't', subtitle: '', sections: [{ id: 's', title: 's', blocks: [
    { kind: 'table', columns: ['i'], rows: [[{ image: 'https://example.com/x.png', alt: 'x' }]] }] }] }), /data: URIs/);
});

/** AUROC of −weight for "hallucinated", computed from the raw tables in JavaScript (overlap test and pairwise count). */
async function expectedAuroc(store: Store, side?: string): Promise<number> {
  const sentences = await store.all<{ pair_id: string; side: string; start: number; end: number; weight: number }>(`
    SELECT s.pair_id, s.side, s.char_start AS start, s.char_end AS end, w.weight FROM sentences s JOIN sentence_weights w USING (pair_id, side, idx)
    WHERE w.n_sentences > 1 AND (w.similarity IS NOT NULL OR w.ppl IS NOT NULL)`);
  const labels = await store.all<{ pair_id: string; side: string; start: number; end: number; label: string }>(
    'SELECT pair_id, side, char_start AS start, char_end AS end, label FROM labels');
  const scores: number[] = [];
  const positive: boolean[] = [];
  for (const s of sentences) {
    if (side && s.side !== side) continue;
    const own = labels.filter((l) => l.pair_id === s.pair_id && l.side === s.side);
    if (own.length === 0) continue;
    scores.push(-s.weight);
    positive.push(own.some((l) => l.start < s.end && l.end > s.start && (NEGATIVE_LABELS as readonly string[]).includes(l.label.toLowerCase())));
  }
  return pairwiseAuroc(scores, positive);
}

test('a full report on a real store: every section, charts, thumbnails, AUROC, no external URLs, PNGs decode', async () => {
  const db = await reportStore();
  const out = tempDir();
  const { report, expected } = await withStore(db, async (store) => ({
    report: await buildReport(store, { top: 5 }),
    expected: await Promise.all([expectedAuroc(store), expectedAuroc(store, 'chosen'), expectedAuroc(store, 'rejected')]),
  }), { readOnly: true });
  const { html } = report;

  assert.deepEqual(report.sections, ['dataset', 'sentences', 'distributions', 'labels', 'training', 'lowest', 'penalised']);
  assert.deepEqual(report.empty, []);
  for (const id of report.sections) assert.match(html, new RegExp(`<section id="${id}">`));
  const ids = report.charts.map((c) => c.id);
  for (const id of ['sentences-chosen', 'sentences-rejected', 'similarity', 'weight', 'roc']) assert.ok(ids.includes(id), id);
  for (const curve of ['loss', 'margins', 'accuracies', 'rewards']) assert.ok(ids.includes(`run-${DPO_RUN}-${curve}`), curve);
  for (const curve of ['loss', 'sentence-accuracy']) assert.ok(ids.includes(`run-${SFT_RUN}-${curve}`), curve);
  // No perplexity was scored: its histogram says so instead of drawing.
  assert.match(html, /no data: no perplexities yet/);
  assert.equal(html.match(/<figure class="chart"/g)?.length, report.charts.length);
  for (const chart of report.charts) assertWellFormed(chart.svg);

  // The AUROCs shown are the ones computed independently from the raw tables.
  for (const value of expected) {
    assert.ok(Number.isFinite(value));
    assert.ok(html.includes(`<td class="num">${formatNumber(value)}</td>`), `AUROC ${value} shown`);
  }

  // Self-contained: no script, no external reference, every image inline.
  assert.ok(!/<script/i.test(html));
  assert.ok(!/(src|href)\s*=\s*["']?\s*(https?:)?\/\//i.test(html), 'no http(s) or protocol-relative src/href');
  assert.ok(!/url\(/i.test(html));
  const images = [...html.matchAll(/<img src="([^"]*)"/g)].map((m) => m[1]!);
  assert.ok(images.length >= 5, `thumbnails in the sentence tables (${images.length})`);
  for (const src of images) assert.match(src, /^data:image\/png;base64,/);
  const thumb = await sharp(Buffer.from(images[0]!.split(',')[1]!, 'base64')).metadata();
  assert.equal(Math.max(thumb.width!, thumb.height!), 96);

  // The most-penalised table lists the lowest rewards first: the fixture's rewards decrease by 0.01 per row.
  const penalised = html.slice(html.indexOf('<section id="penalised">'));
  assert.ok(penalised.indexOf('<td class="num">-0.29</td>') < penalised.indexOf('<td class="num">-0.28</td>'));
  assert.ok(penalised.indexOf('<td class="num">-0.28</td>') > 0);

  const pngDir = path.join(out, 'png');
  const files = await writeReport(report, path.join(out, 'report.html'), pngDir);
  assert.equal(files.length, report.charts.length);
  assert.deepEqual(readdirSync(pngDir).sort(), report.charts.map((c) => `${c.id}.png`).sort());
  for (const file of files) {
    const meta = await sharp(file).metadata();
    assert.equal(meta.format, 'png');
    assert.equal(meta.width, 960);
    const stats = await sharp(file).stats();
    assert.ok(stats.channels.some((c) => c.min < 128), `${path.basename(file)} has dark pixels (axes, text)`);
  }
});

test('every section degrades to a "no data" notice on an empty store and on a database without the tables', async () => {
  const dir = tempDir();
  const migrated = path.join(dir, 'empty.duckdb');
  await withStore(migrated, async () => {});
  const bare = path.join(dir, 'bare.duckdb');
  const instance = await DuckDBInstance.create(bare);
  const connection = await instance.connect();
  await connection.run('CREATE TABLE unrelated (x INTEGER)');
  connection.closeSync();
  instance.closeSync();
  for (const db of [migrated, bare]) {
    const report = await withStore(db, (store) => buildReport(store), { readOnly: true });
    const expectedEmpty = db === bare ? report.sections : report.sections.filter((s) => s !== 'dataset');
    assert.deepEqual(report.empty, expectedEmpty, db);
    assert.equal(report.charts.length, 0);
    assert.match(report.html, /no data: run aspo (ingest|segment --db|score)/);
  }
});

test('aspo report: writes the file and PNGs, keeps stdout clean, names bad options', async () => {
  const db = await reportStore();
  const dir = tempDir();
  const out = path.join(dir, 'sub', 'report.html');
  const ok = spawnSync(process.execPath, [CLI, 'report', '--db', db, '--out', out, '--png', path.join(dir, 'png'), '--alpha', '1', '--top', '3'], { encoding: 'utf8' });
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(ok.stdout, '');
  assert.match(ok.stderr, /report: 7 sections \(0 without data\), \d+ charts → .*report\.html/);
  const html = readFileSync(out, 'utf8');
  assert.match(html, /weights with alpha 1, scale 1/);
  assert.ok(readdirSync(path.join(dir, 'png')).includes('roc.png'));

  // Option checks, in-process (the CLI's main turns UsageError into exit code 2 with the usage).
  const { command } = await import('../src/cli/commands/report.js');
  const { UsageError } = await import('../src/cli/command.js');
  for (const [args, pattern] of [
    [['--db', db], /--out FILE is required/],
    [['--db', db, '--out', out, '--alpha', '1.5'], /--alpha must be a number from 0 to 1, got 1.5/],
    [['--db', db, '--out', out, '--top', '0'], /--top must be a positive integer, got 0/],
    [['--db', db, '--out', out, '--scale', 'x'], /--scale must be a number/],
  ] as const) {
    await assert.rejects(command.run([...args]), (error: Error) => error instanceof UsageError && pattern.test(error.message));
  }
  await assert.rejects(command.run(['--db', path.join(dir, 'none.duckdb'), '--out', out]), /cannot open store/);
});

test('with perplexities: the histogram is binned up to the 99th percentile and says how many lie above', async () => {
  const copy = path.join(tempDir(), 'ppl.duckdb');
  copyFileSync(await reportStore(), copy);
  const report = await withStore(copy, async (store) => {
    // 1–50 (from a hash of the key), and one far outlier: the 99th percentile is below the outlier, so it is left out.
    await store.run(`UPDATE sentence_scores SET ppl = 1 + (hash(pair_id, side, idx) % 50)`);
    await store.run(`UPDATE sentence_scores SET ppl = 1e6 WHERE (pair_id, side, idx) = (SELECT (pair_id, side, idx) FROM sentence_scores LIMIT 1)`);
    return buildReport(store);
  });
  const chart = report.charts.find((c) => c.id === 'perplexity');
  assert.ok(chart, 'perplexity chart');
  assert.match(report.html, /1 above the 99th percentile \([^)]+\) not drawn/);
  assert.ok(!report.html.includes('no data: no perplexities yet'));
});
