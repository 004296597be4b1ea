/**
 * Sentence segmentation benchmark: speed on >= 10 MB of generated model-response-like text, accuracy on the 48
 * English Golden Rules, and exact-match accuracy per kind of boundary on the project's own corpus
 * (test/segment-corpus.ts: the development set and the check set), for our segmenter, Intl.Segmenter and natural's
 * SentenceTokenizer, in the same run.
 *
 * Then times the `aspo segment --db` stage (segmentation, diff and DuckDB writes) on --pairs pairs built from the corpus.
 *
 *   npx tsc -p . && node dist/bench/segment.js [--mb 10] [--rounds 3] [--pairs 20000]
 */
import { Rng } from '../src/util/random.js';
import '../src/schema.js'; // every stage's tables, for the store
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { segment } from '../src/segment/segment.js';
import { segmentStage } from '../src/segment/stage.js';
import { withStore } from '../src/store/store.js';
import { CHECK, DEVELOPMENT, type SegmentCase } from '../test/segment-corpus.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const GOLDEN = path.resolve(ROOT, '..', 'shared', 'data', 'golden-rules', 'golden_en_48.json');


const OBJECTS = ['dog', 'cat', 'red car', 'wooden bench', 'traffic light', 'bicycle', 'laptop', 'coffee mug', 'street sign',
  'umbrella', 'vase of flowers', 'double-decker bus', 'kite', 'sandwich', 'clock tower', 'fire hydrant'];
const PLACES = ['in the foreground', 'on the left side', 'near the window', 'in the background', 'on the table',
  'next to the door', 'at the center of the image', 'under a tree'];
const COLORS = ['red', 'blue', 'green', 'white', 'black', 'yellow', 'grey', 'brown'];

/** One response: paragraphs with abbreviations, numbers, quotes and ellipses, sometimes a list or a heading. */
function response(next: () => number): string {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
  const n = () => (1 + next() * 20).toFixed(next() < 0.5 ? 0 : 1);
  const sentences = [
    () => `The image shows a ${pick(COLORS)} ${pick(OBJECTS)} ${pick(PLACES)}.`,
    () => `There is also a ${pick(OBJECTS)}, approx. ${n()} m away, e.g. close to the ${pick(OBJECTS)}.`,
    () => `A sign reads "Open 9 a.m. to 5 p.m." and a man (possibly Dr. Lee) stands ${pick(PLACES)}.`,
    () => `The price tag says $${n()}, i.e. about ${n()}% off!`,
    () => `Is this in the U.S. or the U.K.? It is hard to tell...`,
    () => `The ${pick(OBJECTS)} is about ${n()} cm tall and ${n()} kg in weight, etc.`,
    () => `A poster lists the website www.example.com/page.html and the address info@example.org.`,
    () => `Mr. Smith and Mrs. Jones appear to be talking ${pick(PLACES)}.`,
    () => `Overall, the scene looks calm; the lighting is ${pick(COLORS)}-tinted and soft`,
  ];
  const parts: string[] = [];
  if (next() < 0.3) parts.push(`## ${pick(OBJECTS)} scene\n`);
  const paragraphs = 1 + Math.floor(next() * 3);
  for (let p = 0; p < paragraphs; p++) {
    const count = 2 + Math.floor(next() * 5);
    parts.push(Array.from({ length: count }, () => pick(sentences)()).join(' '));
    if (next() < 0.35) {
      const items = 2 + Math.floor(next() * 4);
      const numbered = next() < 0.5;
      parts.push(Array.from({ length: items }, (_, k) =>
        `${numbered ? `${k + 1}.` : '-'} A ${pick(COLORS)} ${pick(OBJECTS)} ${pick(PLACES)}.`).join('\n'));
    }
  }
  return parts.join('\n\n');
}

function corpus(megabytes: number): string[] {
  const rng = new Rng(20250519);
  const next = () => rng.next();
  const docs: string[] = [];
  let size = 0;
  while (size < megabytes * 1e6) {
    const doc = response(next);
    docs.push(doc);
    size += Buffer.byteLength(doc);
  }
  return docs;
}

type Segmenter = (text: string) => string[];

function ownSegmenters(): Record<string, Segmenter> {
  const intl = new Intl.Segmenter('en', { granularity: 'sentence' });
  return {
    'aspo segment': (text) => segment(text).map((s) => s.text),
    'Intl.Segmenter': (text) => {
      const out: string[] = [];
      for (const { segment: s } of intl.segment(text)) {
        const trimmed = s.trim();
        if (trimmed) out.push(trimmed);
      }
      return out;
    },
  };
}

/**
 * natural is loaded only after the other two are timed: importing it makes the JavaScript code that runs after it in
 * the same process about twice as slow (measured on this corpus; Intl.Segmenter, native code, is not affected).
 */
async function naturalSegmenter(): Promise<Record<string, Segmenter>> {
  process.env.DOTENV_CONFIG_QUIET ??= 'true';
  const natural = (await import('natural')).default;
  const tokenizer = new natural.SentenceTokenizer([]);
  return { 'natural SentenceTokenizer': (text) => tokenizer.tokenize(text).map((s) => s.trim()).filter(Boolean) };
}

v8.setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

/**
 * One pass over the corpus: wall-clock milliseconds, CPU milliseconds of this process (user + system), and the
 * sentences found. On a shared machine CPU time leaves out the time other processes held the core.
 */
function pass(run: Segmenter, docs: readonly string[]): { ms: number; cpuMs: number; sentences: number } {
  // Collect the garbage of whatever ran before, so that each segmenter pays for its own garbage only (natural leaves
  // a lot, and without this the next segmenter in the round is charged for collecting it).
  collectGarbage();
  let sentences = 0;
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  for (const doc of docs) sentences += run(doc).length;
  const cpu = process.cpuUsage(cpu0);
  return { ms: performance.now() - t0, cpuMs: (cpu.user + cpu.system) / 1000, sentences };
}

function accuracy(run: Segmenter): number | undefined {
  if (!existsSync(GOLDEN)) return undefined;
  const cases = JSON.parse(readFileSync(GOLDEN, 'utf8')) as Array<{ text: string; expected: string[] }>;
  return cases.filter((c) => JSON.stringify(run(c.text)) === JSON.stringify(c.expected)).length;
}

/** Exact matches (sentence lists equal after trimming). */
function exact(run: Segmenter, cases: readonly SegmentCase[]): number {
  return cases.filter(([text, expected]) => JSON.stringify(run(text)) === JSON.stringify(expected)).length;
}

/** A table of exact matches per kind of boundary: development set and check set, for each segmenter. */
function printKinds(runs: ReadonlyArray<[string, Segmenter]>): void {
  console.log(`| kind | cases (dev + check) | ${runs.map(([name]) => `${name} dev | ${name} check`).join(' | ')} |`);
  console.log(`| --- | ---: | ${runs.map(() => '---: | ---:').join(' | ')} |`);
  const kinds = Object.keys(DEVELOPMENT) as Array<keyof typeof DEVELOPMENT>;
  const rows: Array<[string, SegmentCase[], SegmentCase[]]> = kinds.map((k) => [k, DEVELOPMENT[k], CHECK[k]]);
  rows.push(['all', kinds.flatMap((k) => DEVELOPMENT[k]), kinds.flatMap((k) => CHECK[k])]);
  for (const [kind, dev, check] of rows) {
    const cells = runs.map(([, run]) => `${exact(run, dev)}/${dev.length} | ${exact(run, check)}/${check.length}`);
    console.log(`| ${kind} | ${dev.length} + ${check.length} | ${cells.join(' | ')} |`);
  }
}

/** The stage end to end (segmentation, diff, DuckDB writes) on pairs built from the corpus, in a fresh store. */
async function stage(docs: readonly string[], pairs: number): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'aspo-bench-'));
  try {
    await withStore(path.join(dir, 'bench.duckdb'), async (store) => {
      await store.run('CREATE TEMP TABLE responses (k INTEGER, chosen VARCHAR, rejected VARCHAR)');
      const appender = await store.connection.createAppender('responses', 'main', 'temp');
      for (let k = 0; k < pairs; k++) {
        const chosen = docs[k % docs.length]!;
        appender.appendInteger(k);
        appender.appendVarchar(chosen);
        // Half the pairs share most sentences (one word changed, one sentence added), half share none.
        appender.appendVarchar(k % 2 === 0 ? chosen.replace(/ red /, ' blue ') + ' An extra sentence appears here.'
          : docs[(k + 1) % docs.length]!);
        appender.endRow();
      }
      appender.closeSync();
      await store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected)
        SELECT printf('pair%08d', k), 'bench', k, 'bench', 'Describe the image.', chosen, rejected FROM responses`);
      const t0 = performance.now();
      const result = await segmentStage(store);
      const seconds = (performance.now() - t0) / 1000;
      console.log(`stage: ${result.pairs} pairs, ${result.sentences} sentences (${result.shared} shared) in ` +
        `${seconds.toFixed(1)} s: ${Math.round(result.pairs / seconds)} pairs/s, ${Math.round(result.sentences / seconds)} sentences/s`);
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { mb: { type: 'string', default: '10' }, rounds: { type: 'string', default: '3' },
    pairs: { type: 'string', default: '20000' } } });
  const docs = corpus(Number(values.mb));
  const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d), 0);
  console.log(`corpus: ${docs.length} responses, ${(bytes / 1e6).toFixed(1)} MB; Node ${process.version}`);
  const timed = (name: string, run: Segmenter) => {
    pass(run, docs.slice(0, 1000)); // warm-up
    return { name, run, best: Infinity, bestCpu: Infinity, sentences: 0, golden: accuracy(run) };
  };
  // Rounds interleave the segmenters and keep each one's best pass: the machine is shared, and load that comes and
  // goes then hits them alike instead of whichever happened to run at the time.
  const rounds = (results: Array<ReturnType<typeof timed>>) => {
    for (let round = 0; round < Number(values.rounds); round++) {
      for (const r of results) {
        const { ms, cpuMs, sentences } = pass(r.run, docs);
        r.best = Math.min(r.best, ms);
        r.bestCpu = Math.min(r.bestCpu, cpuMs);
        r.sentences = sentences;
      }
    }
  };
  const results = Object.entries(ownSegmenters()).map(([name, run]) => timed(name, run));
  rounds(results);
  const late = Object.entries(await naturalSegmenter()).map(([name, run]) => timed(name, run));
  rounds(late);
  const aspoAfterNatural = pass(results[0]!.run, docs).cpuMs;
  results.push(...late);
  printKinds(results.map((r) => [r.name, r.run]));
  const mbps = (ms: number) => bytes / 1e6 / (ms / 1000);
  const intl = results.find((r) => r.name === 'Intl.Segmenter')!;
  console.log('| segmenter | MB/s (wall) | × Intl.Segmenter (wall) | MB/s (CPU) | × Intl.Segmenter (CPU) | sentences | golden rules |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of results) {
    console.log(`| ${r.name} | ${mbps(r.best).toFixed(1)} | ${(intl.best / r.best).toFixed(2)} | ` +
      `${mbps(r.bestCpu).toFixed(1)} | ${(intl.bestCpu / r.bestCpu).toFixed(2)} | ${r.sentences} | ` +
      `${r.golden === undefined ? 'n/a (golden file absent)' : `${r.golden}/48`} |`);
  }
  console.log(`aspo segment with natural loaded in the process: ${mbps(aspoAfterNatural).toFixed(1)} MB/s (CPU)`);
  await stage(docs, Number(values.pairs));
}

await main();
