/**
 * The report checked in a real headless browser (Debian `chromium`, which .ci/run installs; where it is absent the
 * test is skipped with a message saying how to get it): the page loads without console errors, every chart has rendered
 * content, and a screenshot is saved as test-output/report.png.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { buildReport, writeReport } from '../src/report/report.js';
import { withStore } from '../src/store/store.js';
import { reportStore } from './report-fixture.js';
import { ROOT } from './support.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Chromium's path, or why the test cannot run here (CI installs Debian's chromium in .ci/run). */
function findChromium(): { path: string } | { skip: string } {
  if (existsSync(CHROMIUM)) return { path: CHROMIUM };
  return { skip: `${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium, as .ci/run does) or set CHROMIUM_PATH` };
}

test('the report in headless chromium: no console errors, every chart drawn, screenshot saved', async (t) => {
  const found = findChromium();
  if ('skip' in found) {
    t.skip(found.skip);
    return;
  }
  let chromium: typeof import('playwright-core').chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch {
    t.skip('playwright-core is not installed (npm install)');
    return;
  }
  const outDir = path.join(ROOT, 'test-output');
  mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, 'report.html');
  const db = await reportStore();
  const report = await withStore(db, (store) => buildReport(store), { readOnly: true });
  await writeReport(report, file, undefined, { force: true }); // the previous run's screenshot page is replaced

  const browser = await chromium.launch({ executablePath: found.path, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const errors: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error' || message.type() === 'warning') errors.push(`console ${message.type()}: ${message.text()}`);
    });
    page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
    page.on('requestfailed', (request) => errors.push(`request failed: ${request.url()}`));
    const requests: string[] = [];
    page.on('request', (request) => requests.push(request.url()));
    await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });

    // Every chart's SVG has a box on the page, and its plot contains drawn marks with a non-empty box.
    const charts = await page.$$eval('figure.chart', (figures) => figures.map((figure) => {
      const svg = figure.querySelector('svg')!;
      const box = svg.getBoundingClientRect();
      // Typed structurally: the project compiles without the DOM library.
      const plot = svg.querySelector('g.plot') as unknown as { querySelectorAll(selector: string): { length: number }; getBBox(): { width: number; height: number } } | null;
      const marks = plot ? plot.querySelectorAll('rect.bar, polyline, circle').length : 0;
      const plotBox = plot?.getBBox();
      return { id: figure.getAttribute('data-chart'), width: box.width, height: box.height, marks,
        plotWidth: plotBox?.width ?? 0, plotHeight: plotBox?.height ?? 0 };
    }));
    assert.equal(charts.length, report.charts.length);
    assert.ok(charts.length >= 10, `charts on the page: ${charts.length}`);
    for (const chart of charts) {
      assert.ok(chart.width > 100 && chart.height > 60, `${chart.id}: svg box ${chart.width}×${chart.height}`);
      assert.ok(chart.marks > 0 && chart.plotWidth > 0 && chart.plotHeight > 0,
        `${chart.id}: ${chart.marks} marks, plot box ${chart.plotWidth}×${chart.plotHeight}`);
    }
    const thumbnails = await page.$$eval('td img', (images) => images.map((img) => (img as unknown as { naturalWidth: number }).naturalWidth));
    assert.ok(thumbnails.length > 0 && thumbnails.every((w) => w > 0), `thumbnails decoded: ${thumbnails.join(', ')}`);

    await page.screenshot({ path: path.join(outDir, 'report.png'), fullPage: true });
    assert.deepEqual(errors, []);
    // Only the file itself and its inline data: images were requested.
    assert.deepEqual(requests.filter((url) => !url.startsWith('data:') && url !== pathToFileURL(file).href), []);
  } finally {
    await browser.close();
  }
  assert.ok(existsSync(path.join(outDir, 'report.png')));
});
