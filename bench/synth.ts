/**
 * Benchmark of `aspo synth` on the default set (1000 training + 200 evaluation images, 64×64).
 * Baseline measured in the same run: the same work rendered one image at a time (concurrency 1).
 * Run: npx tsc -p . && node dist/bench/synth.js
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { planDataset } from '../src/synth/dataset.js';
import { resolveSynthOptions, synthesize, SYNTH_DEFAULTS } from '../src/synth/synthesize.js';

async function timed(concurrency: number, size = 64): Promise<number> {
  const out = mkdtempSync(path.join(os.tmpdir(), 'aspo-bench-synth-'));
  try {
    return (await synthesize({ out, concurrency, size, force: true })).seconds;
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

const started = performance.now();
planDataset(resolveSynthOptions());
const planSeconds = (performance.now() - started) / 1000;
const baseline = await timed(1);
const tuned = await timed(SYNTH_DEFAULTS.concurrency);
const large = await timed(SYNTH_DEFAULTS.concurrency, 96);
const images = SYNTH_DEFAULTS.images + SYNTH_DEFAULTS.evalImages;
const line = (label: string, seconds: number) =>
  `${label.padEnd(34)} ${seconds.toFixed(2).padStart(6)} s  ${(images / seconds).toFixed(0).padStart(5)} images/s  ` +
  `${(baseline / seconds).toFixed(2)}× baseline  ${(seconds / 60).toFixed(3)} of the 60 s budget`;
console.log(`aspo synth, ${SYNTH_DEFAULTS.images} + ${SYNTH_DEFAULTS.evalImages} images, ${os.cpus().length} cores, Node ${process.version}`);
console.log(`text and labels only (planDataset)  ${planSeconds.toFixed(2)} s`);
console.log(line('baseline: concurrency 1, 64×64', baseline));
console.log(line(`concurrency ${SYNTH_DEFAULTS.concurrency}, 64×64`, tuned));
console.log(line(`concurrency ${SYNTH_DEFAULTS.concurrency}, 96×96`, large));
