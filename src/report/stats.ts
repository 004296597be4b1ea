/**
 * The numbers behind the report's charts: histograms, axis ticks, ROC curves and AUROC. Pure functions, no I/O.
 */

export interface Histogram {
  /** Bin edges, ascending; bin i is [edges[i], edges[i+1]), the last bin also holds its upper edge. */
  edges: number[];
  counts: number[];
  /** Finite values below edges[0] / above the last edge (only when the range was given), and non-finite values. */
  below: number;
  above: number;
  nonFinite: number;
}

export interface HistogramOptions {
  /** Number of bins; default: Sturges' rule, clamped to 5–30. Ignored with `integer`. */
  bins?: number;
  /** Range to bin; default: the values' min and max. */
  min?: number;
  max?: number;
  /** One bin per integer value (edges at k ± 0.5), for counts. */
  integer?: boolean;
}

export function histogram(values: readonly number[], options: HistogramOptions = {}): Histogram {
  const finite = values.filter((v) => Number.isFinite(v));
  const nonFinite = values.length - finite.length;
  let lo = options.min ?? Infinity;
  let hi = options.max ?? -Infinity;
  if (options.min === undefined || options.max === undefined) {
    for (const v of finite) {
      if (options.min === undefined && v < lo) lo = v;
      if (options.max === undefined && v > hi) hi = v;
    }
  }
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return { edges: [], counts: [], below: 0, above: 0, nonFinite };
  if (hi < lo) throw new RangeError(`histogram: max (${hi}) is below min (${lo})`);

  let edges: number[];
  if (options.integer) {
    const first = Math.round(lo);
    const last = Math.round(hi);
    edges = Array.from({ length: last - first + 2 }, (_, i) => first + i - 0.5);
  } else {
    if (hi === lo) {
      // All values equal: one bin centred on them, wide enough to draw.
      const half = Math.abs(lo) > 0 ? Math.abs(lo) * 0.05 : 0.5;
      lo -= half;
      hi += half;
    }
    const bins = options.bins ?? Math.min(30, Math.max(5, Math.ceil(Math.log2(Math.max(finite.length, 1))) + 1));
    if (!Number.isInteger(bins) || bins < 1) throw new RangeError(`histogram: bins must be a positive integer, got ${bins}`);
    edges = Array.from({ length: bins + 1 }, (_, i) => (i === bins ? hi : lo + ((hi - lo) * i) / bins));
  }

  const counts = new Array<number>(edges.length - 1).fill(0);
  const first = edges[0]!;
  const last = edges[edges.length - 1]!;
  let below = 0;
  let above = 0;
  for (const v of finite) {
    if (v < first) below++;
    else if (v > last) above++;
    else counts[binOf(edges, v)]!++;
  }
  return { edges, counts, below, above, nonFinite };
}

/** Index of the bin holding v (edges[0] <= v <= last edge): the last i with edges[i] <= v, capped at the last bin. */
function binOf(edges: readonly number[], v: number): number {
  let lo = 0;
  let hi = edges.length - 2;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (edges[mid]! <= v) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** The q-quantile (0..1) of finite values, by linear interpolation between order statistics. */
export function quantile(values: readonly number[], q: number): number {
  return quantiles(values, [q])[0]!;
}

/** Several quantiles with one sort. */
export function quantiles(values: readonly number[], qs: readonly number[]): number[] {
  const sorted = Float64Array.from(values.filter((v) => Number.isFinite(v))).sort();
  return qs.map((q) => {
    if (sorted.length === 0) return NaN;
    const pos = (sorted.length - 1) * q;
    const i = Math.floor(pos);
    const next = sorted[Math.min(i + 1, sorted.length - 1)]!;
    return sorted[i]! + (next - sorted[i]!) * (pos - i);
  });
}

/**
 * A curve with fewer points for drawing: keeps the first and last points and every point at least `step` away
 * (|dx| + |dy|) from the last one kept, so a monotone curve on the unit square keeps at most about 2/step points.
 */
export function thinCurve(points: ReadonlyArray<readonly [number, number]>, step: number): Array<[number, number]> {
  const kept: Array<[number, number]> = [];
  points.forEach(([x, y], i) => {
    const last = kept[kept.length - 1];
    if (!last || i === points.length - 1 || Math.abs(x - last[0]) + Math.abs(y - last[1]) >= step) kept.push([x, y]);
  });
  return kept;
}

/** About `count` round tick values (1, 2 or 5 × 10^k apart) covering [min, max]. */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!(Number.isFinite(min) && Number.isFinite(max))) return [];
  if (max === min) return [min];
  const step = niceStep((max - min) / Math.max(count, 1));
  const ticks: number[] = [];
  // Each tick is k·step (not a running sum, whose rounding put 2.78e-17 where 0 belongs); the small epsilon keeps a
  // max landing exactly on a tick.
  for (let k = Math.ceil(min / step - 1e-9); k * step <= max + step * 1e-9; k++) {
    ticks.push(Number((k * step).toPrecision(12)));
  }
  return ticks;
}

export function niceStep(rough: number): number {
  const power = 10 ** Math.floor(Math.log10(rough));
  const fraction = rough / power;
  return (fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10) * power;
}

/** Short label for a tick or figure: integers as such, others with up to 3 significant decimals. */
export function formatNumber(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  // Integers in groups of three digits, independent of the locale.
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v).replace(/\B(?=(\d{3})+(?!\d))/g, ' ');
  const abs = Math.abs(v);
  if (abs >= 1e5 || abs < 1e-3) return v.toExponential(2);
  return String(Number(v.toPrecision(abs >= 1 ? 4 : 3)));
}

/**
 * Area under the ROC curve: the probability that a random positive scores higher than a random negative,
 * ties counting one half (Mann–Whitney U with mid-ranks). NaN when either class is empty.
 */
export function auroc(scores: readonly number[], positive: readonly boolean[]): number {
  checkLengths(scores, positive);
  const order = scores.map((_, i) => i).sort((a, b) => scores[a]! - scores[b]!);
  let positives = 0;
  let rankSum = 0;
  for (let start = 0; start < order.length;) {
    let end = start;
    while (end + 1 < order.length && scores[order[end + 1]!] === scores[order[start]!]) end++;
    const midRank = (start + end) / 2 + 1;
    for (let k = start; k <= end; k++) {
      if (positive[order[k]!]) {
        positives++;
        rankSum += midRank;
      }
    }
    start = end + 1;
  }
  const negatives = scores.length - positives;
  if (positives === 0 || negatives === 0) return NaN;
  return (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}

/** ROC points [false-positive rate, true-positive rate] from (0,0) to (1,1), one per distinct score (tied scores move diagonally). */
export function rocCurve(scores: readonly number[], positive: readonly boolean[]): Array<[number, number]> {
  checkLengths(scores, positive);
  const positives = positive.filter(Boolean).length;
  const negatives = positive.length - positives;
  if (positives === 0 || negatives === 0) return [];
  const order = scores.map((_, i) => i).sort((a, b) => scores[b]! - scores[a]!);
  const points: Array<[number, number]> = [[0, 0]];
  let tp = 0;
  let fp = 0;
  for (let k = 0; k < order.length; k++) {
    if (positive[order[k]!]) tp++;
    else fp++;
    const next = order[k + 1];
    if (next === undefined || scores[next] !== scores[order[k]!]) points.push([fp / negatives, tp / positives]);
  }
  return points;
}

function checkLengths(scores: readonly number[], positive: readonly boolean[]): void {
  if (scores.length !== positive.length) {
    throw new RangeError(`scores (${scores.length}) and labels (${positive.length}) must have the same length`);
  }
  if (scores.some((s) => Number.isNaN(s))) throw new RangeError('scores must not be NaN');
}
