/**
 * Small hand-made SVG charts (histogram, line chart with several series, ROC curve): standalone SVG documents with
 * a title, axes, ticks and labels, readable in a browser inline and renderable to PNG by sharp (librsvg).
 * Pure functions: data in, SVG text out.
 */
import { formatNumber, niceTicks, type Histogram } from './stats.js';

export const CHART_WIDTH = 480;
export const CHART_HEIGHT = 300;
const MARGIN = { top: 34, right: 16, bottom: 46, left: 58 };
const PLOT_W = CHART_WIDTH - MARGIN.left - MARGIN.right;
const PLOT_H = CHART_HEIGHT - MARGIN.top - MARGIN.bottom;
/** Colour-blind-safe series colours (Okabe–Ito). */
export const SERIES_COLOURS = ['#0072b2', '#d55e00', '#009e73', '#cc79a7', '#e69f00', '#56b4e9', '#000000'];

export interface AxisLabels {
  title: string;
  xLabel: string;
  yLabel: string;
}

export interface Series {
  name: string;
  points: ReadonlyArray<readonly [number, number]>;
}

export interface LineChartOptions extends AxisLabels {
  series: readonly Series[];
  /** Fixed axis ranges; default: the data's, widened to round ticks. */
  xDomain?: readonly [number, number];
  yDomain?: readonly [number, number];
  /** A dashed y = x line (chance level of a ROC curve). */
  diagonal?: boolean;
  /** Where the legend goes; default: the right-hand corner it hides fewer points in. */
  legend?: 'top-right' | 'bottom-right';
  /** Dots on the points; default: when a series has at most 60 points. */
  markers?: boolean;
}

/** Escapes text for XML/HTML element content and attribute values. */
export function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const r2 = (v: number) => String(Math.round(v * 100) / 100);

interface Scale {
  (v: number): number;
  ticks: number[];
}

function linearScale(domain: readonly [number, number], range: readonly [number, number], round: boolean): Scale {
  let [d0, d1] = domain;
  if (d0 === d1) {
    d0 -= 1;
    d1 += 1;
  }
  let ticks = niceTicks(d0, d1, 5);
  if (round && ticks.length > 1) {
    // Widen the domain to the surrounding round ticks so the data never touches the frame oddly.
    const step = ticks[1]! - ticks[0]!;
    if (ticks[0]! > d0) d0 = ticks[0]! - step;
    if (ticks[ticks.length - 1]! < d1) d1 = ticks[ticks.length - 1]! + step;
    d0 = Math.min(d0, ticks[0]!);
    d1 = Math.max(d1, ticks[ticks.length - 1]!);
    ticks = niceTicks(d0, d1, 5);
  }
  const [r0, r1] = range;
  const scale = ((v: number) => r0 + ((v - d0) / (d1 - d0)) * (r1 - r0)) as Scale;
  scale.ticks = ticks;
  return scale;
}

function frame(labels: AxisLabels, x: Scale, y: Scale, body: string, extra = ''): string {
  const bottom = MARGIN.top + PLOT_H;
  const xs = x.ticks.map((t) => ({ t, px: r2(x(t)) }));
  const ys = y.ticks.map((t) => ({ t, py: r2(y(t)) }));
  const grid = ys.map(({ py }) => `<line x1="${MARGIN.left}" y1="${py}" x2="${MARGIN.left + PLOT_W}" y2="${py}"/>`).join('');
  const tickMarks = xs.map(({ px }) => `<line x1="${px}" y1="${bottom}" x2="${px}" y2="${bottom + 5}"/>`).join('') +
    ys.map(({ py }) => `<line x1="${MARGIN.left - 5}" y1="${py}" x2="${MARGIN.left}" y2="${py}"/>`).join('');
  const tickLabels = xs.map(({ t, px }) => `<text x="${px}" y="${bottom + 17}" text-anchor="middle">${escapeXml(formatNumber(t))}</text>`).join('') +
    ys.map(({ t, py }) => `<text x="${MARGIN.left - 8}" y="${py}" dy="0.32em" text-anchor="end">${escapeXml(formatNumber(t))}</text>`).join('');
  // Lines and text in separate groups: a stroke inherited by text would render it bold in librsvg.
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${CHART_WIDTH}" height="${CHART_HEIGHT}" ` +
    `viewBox="0 0 ${CHART_WIDTH} ${CHART_HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11" role="img">` +
    `<title>${escapeXml(labels.title)}</title>` +
    `<rect width="${CHART_WIDTH}" height="${CHART_HEIGHT}" fill="#ffffff"/>` +
    `<text class="chart-title" x="${CHART_WIDTH / 2}" y="20" text-anchor="middle" font-size="13" font-weight="bold" fill="#222222">${escapeXml(labels.title)}</text>` +
    `<g class="grid" stroke="#e4e4e4" stroke-width="1">${grid}</g>` +
    `<g class="axes" stroke="#333333" stroke-width="1">${tickMarks}` +
    `<line x1="${MARGIN.left}" y1="${bottom}" x2="${MARGIN.left + PLOT_W}" y2="${bottom}"/>` +
    `<line x1="${MARGIN.left}" y1="${MARGIN.top}" x2="${MARGIN.left}" y2="${bottom}"/></g>` +
    `<g class="ticks" fill="#333333">${tickLabels}</g>` +
    `<g class="axes-labels" fill="#333333">` +
    `<text x="${MARGIN.left + PLOT_W / 2}" y="${CHART_HEIGHT - 8}" text-anchor="middle">${escapeXml(labels.xLabel)}</text>` +
    `<text transform="translate(14 ${MARGIN.top + PLOT_H / 2}) rotate(-90)" text-anchor="middle">${escapeXml(labels.yLabel)}</text>` +
    `</g>` +
    `<g class="plot">${body}</g>${extra}</svg>`;
}

/** A histogram: one `<rect class="bar">` per bin (zero-height for empty bins), each with a tooltip. */
export function histogramSvg(h: Histogram, labels: AxisLabels): string {
  if (h.counts.length === 0) throw new RangeError(`histogramSvg (${labels.title}): the histogram has no bins`);
  const x = linearScale([h.edges[0]!, h.edges[h.edges.length - 1]!], [MARGIN.left, MARGIN.left + PLOT_W], false);
  x.ticks = x.ticks.filter((t) => t >= h.edges[0]! && t <= h.edges[h.edges.length - 1]!);
  const y = linearScale([0, h.counts.reduce((m, c) => Math.max(m, c), 1)], [MARGIN.top + PLOT_H, MARGIN.top], true);
  const bars = h.counts.map((count, i) => {
    const x0 = x(h.edges[i]!);
    const x1 = x(h.edges[i + 1]!);
    const top = y(count);
    const tip = `[${formatNumber(h.edges[i]!)}, ${formatNumber(h.edges[i + 1]!)}${i === h.counts.length - 1 ? ']' : ')'}: ${count}`;
    return `<rect class="bar" x="${r2(x0 + 0.5)}" y="${r2(top)}" width="${r2(Math.max(x1 - x0 - 1, 0.5))}" ` +
      `height="${r2(MARGIN.top + PLOT_H - top)}" fill="${SERIES_COLOURS[0]}"><title>${escapeXml(tip)}</title></rect>`;
  }).join('');
  return frame(labels, x, y, bars);
}

/** Lines (with markers when there are few points) for several series, and a legend when there is more than one. */
export function lineChartSvg(options: LineChartOptions): string {
  const all = options.series.flatMap((s) => s.points);
  if (all.length === 0) throw new RangeError(`lineChartSvg (${options.title}): no points to draw`);
  const extent = (i: 0 | 1): [number, number] =>
    all.reduce<[number, number]>(([lo, hi], p) => [Math.min(lo, p[i]), Math.max(hi, p[i])], [Infinity, -Infinity]);
  const x = linearScale(options.xDomain ?? extent(0), [MARGIN.left, MARGIN.left + PLOT_W], !options.xDomain);
  const y = linearScale(options.yDomain ?? extent(1), [MARGIN.top + PLOT_H, MARGIN.top], !options.yDomain);
  let body = '';
  if (options.diagonal) {
    const [d0, d1] = options.xDomain ?? extent(0);
    body += `<line class="diagonal" x1="${r2(x(d0))}" y1="${r2(y(d0))}" x2="${r2(x(d1))}" y2="${r2(y(d1))}" ` +
      `stroke="#999999" stroke-dasharray="4 3"/>`;
  }
  options.series.forEach((s, i) => {
    const colour = SERIES_COLOURS[i % SERIES_COLOURS.length]!;
    const coords = s.points.map(([px, py]) => `${r2(x(px))},${r2(y(py))}`);
    body += `<g class="series" data-series="${escapeXml(s.name)}"><title>${escapeXml(s.name)}</title>`;
    if (coords.length > 1) body += `<polyline fill="none" stroke="${colour}" stroke-width="1.8" points="${coords.join(' ')}"/>`;
    if (options.markers ?? coords.length <= 60) {
      body += s.points.map(([px, py]) => `<circle cx="${r2(x(px))}" cy="${r2(y(py))}" r="2.5" fill="${colour}"/>`).join('');
    }
    body += '</g>';
  });
  let legend = '';
  if (options.series.length > 1) {
    // Width from the longest name at about 6.2 px per character of the 11 px font.
    const width = 34 + 6.2 * Math.max(...options.series.map((s) => s.name.length));
    const height = options.series.length * 15 + 6;
    const left = MARGIN.left + PLOT_W - width - 4;
    const tops = { 'top-right': MARGIN.top + 2, 'bottom-right': MARGIN.top + PLOT_H - height - 4 };
    const hidden = (t: number) => all.filter(([px, py]) => x(px) >= left && y(py) >= t && y(py) <= t + height).length;
    const top = tops[options.legend ?? (hidden(tops['bottom-right']) < hidden(tops['top-right']) ? 'bottom-right' : 'top-right')];
    const rows = options.series.map((s, i) => {
      const colour = SERIES_COLOURS[i % SERIES_COLOURS.length]!;
      const y = top + 10 + i * 15;
      return `<line x1="${r2(left + 6)}" y1="${y}" x2="${r2(left + 22)}" y2="${y}" stroke="${colour}" stroke-width="2.5"/>` +
        `<text x="${r2(left + 27)}" y="${y}" dy="0.32em">${escapeXml(s.name)}</text>`;
    }).join('');
    legend = `<g class="legend" fill="#333333">` +
      `<rect x="${r2(left)}" y="${top}" width="${r2(width)}" height="${height}" fill="#ffffff" fill-opacity="0.9" stroke="#cccccc"/>` +
      `${rows}</g>`;
  }
  return frame(options, x, y, body, legend);
}

export interface RocSeries {
  name: string;
  points: ReadonlyArray<readonly [number, number]>;
  auroc: number;
}

/** ROC curves on the unit square with the chance diagonal; the legend gives each curve's AUROC. */
export function rocSvg(curves: readonly RocSeries[], labels: AxisLabels): string {
  return lineChartSvg({
    ...labels,
    series: curves.map((c) => ({ name: `${c.name} (AUROC ${c.auroc.toFixed(3)})`, points: c.points })),
    xDomain: [0, 1],
    yDomain: [0, 1],
    diagonal: true,
    legend: 'bottom-right',
    markers: false,
  });
}
