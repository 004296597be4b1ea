/**
 * The report page: one self-contained HTML document (inline CSS and SVG, images as data: URIs, no script) built
 * from the figures gathered by report.ts. Pure: data in, HTML text out; every piece of text is escaped.
 */
import { escapeXml } from './charts.js';
import { formatNumber } from './stats.js';

/** A chart: its id (also the PNG file name) and its SVG document. */
export interface Chart {
  id: string;
  title: string;
  svg: string;
}

/** One block of a section: a chart, a table, a paragraph, or a "no data" notice. */
export type Block =
  | { kind: 'chart'; chart: Chart; caption?: string }
  | { kind: 'table'; columns: readonly string[]; rows: ReadonlyArray<readonly Cell[]>; caption?: string }
  | { kind: 'text'; text: string }
  | { kind: 'no-data'; text: string }
  | { kind: 'heading'; text: string };

/** A table cell: text (escaped), a number (formatted), or an image given as a data: URI with its alternative text. */
export type Cell = string | number | null | { image: string; alt: string } | { missing: string };

export interface Section {
  id: string;
  title: string;
  blocks: Block[];
}

export interface Page {
  title: string;
  subtitle: string;
  sections: Section[];
}

const CSS = `
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1040px; padding: 1rem 1.5rem 3rem; color: #222; background: #fafafa; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2.2rem; }
h3 { font-size: 1.02rem; margin: 1.4rem 0 0.4rem; }
.subtitle { color: #666; margin-top: 0; }
nav a { margin-right: 0.9rem; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure.chart { margin: 0; background: #fff; border: 1px solid #ddd; padding: 4px; }
figure.chart svg { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 0.82rem; color: #555; max-width: 480px; padding: 2px 4px; }
table { border-collapse: collapse; background: #fff; margin: 0.4rem 0 0.8rem; font-size: 0.88rem; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 520px; }
td img { display: block; }
.no-data { color: #8a5a00; background: #fff6e0; border: 1px solid #f0d9a0; padding: 0.4rem 0.7rem; display: inline-block; }
.missing { color: #999; font-style: italic; }
.table-caption { font-size: 0.82rem; color: #555; margin: 0.2rem 0; }
`;

function cell(value: Cell): string {
  if (value === null) return '<td class="missing">—</td>';
  if (typeof value === 'number') return `<td class="num">${escapeXml(formatNumber(value))}</td>`;
  if (typeof value === 'string') return `<td class="text">${escapeXml(value)}</td>`;
  if ('image' in value) {
    if (!value.image.startsWith('data:image/')) throw new Error('report images must be data: URIs (the page is self-contained)');
    return `<td><img src="${escapeXml(value.image)}" alt="${escapeXml(value.alt)}"></td>`;
  }
  return `<td class="missing">${escapeXml(value.missing)}</td>`;
}

function renderBlocks(blocks: readonly Block[]): string {
  let html = '';
  let charts: string[] = [];
  const flushCharts = () => {
    if (charts.length) html += `<div class="charts">${charts.join('')}</div>`;
    charts = [];
  };
  for (const block of blocks) {
    if (block.kind === 'chart') {
      // The SVG comes from charts.ts, which escapes all text it contains.
      charts.push(`<figure class="chart" id="chart-${escapeXml(block.chart.id)}" data-chart="${escapeXml(block.chart.id)}">` +
        `${block.chart.svg}${block.caption ? `<figcaption>${escapeXml(block.caption)}</figcaption>` : ''}</figure>`);
      continue;
    }
    flushCharts();
    if (block.kind === 'table') {
      if (block.caption) html += `<p class="table-caption">${escapeXml(block.caption)}</p>`;
      html += `<table><thead><tr>${block.columns.map((c) => `<th>${escapeXml(c)}</th>`).join('')}</tr></thead><tbody>` +
        block.rows.map((row) => `<tr>${row.map(cell).join('')}</tr>`).join('') + '</tbody></table>';
    } else if (block.kind === 'text') {
      html += `<p>${escapeXml(block.text)}</p>`;
    } else if (block.kind === 'heading') {
      html += `<h3>${escapeXml(block.text)}</h3>`;
    } else {
      html += `<p class="no-data">${escapeXml(block.text)}</p>`;
    }
  }
  flushCharts();
  return html;
}

/**
 * The whole page. A Content-Security-Policy forbids every fetch except data: images and inline styles, so a browser
 * showing it never goes to the network (and would report any external reference as an error).
 */
export function renderPage(page: Page): string {
  const nav = page.sections.map((s) => `<a href="#${escapeXml(s.id)}">${escapeXml(s.title)}</a>`).join('');
  const sections = page.sections.map((s) =>
    `<section id="${escapeXml(s.id)}"><h2>${escapeXml(s.title)}</h2>${renderBlocks(s.blocks)}</section>`).join('\n');
  return '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">' +
    `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">` +
    '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">' +
    `<title>${escapeXml(page.title)}</title><style>${CSS}</style></head>\n<body>` +
    `<h1>${escapeXml(page.title)}</h1><p class="subtitle">${escapeXml(page.subtitle)}</p><nav>${nav}</nav>\n` +
    `${sections}\n</body></html>\n`;
}
