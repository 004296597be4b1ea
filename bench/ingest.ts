/**
 * Ingest throughput, against baselines measured in the same run.
 *
 *   node dist/bench/ingest.js [--pairs 1000000] [--images 2000] [--out bench-output/ingest] [--js]
 *
 * Text: N generated pairs in JSON Lines → store, vs DuckDB's own read_json loading the same file into a table
 * (the practical ceiling). Each side runs in its own child process so peak RSS is its own.
 * Images: M generated JPEG/PNG files (up to 1024 px) → store, vs a bare loop in this process that only reads,
 * decodes with sharp and hashes them, at the same concurrency.
 */
import { spawnSync } from 'node:child_process';
import '../src/schema.js'; // every stage's tables, for the store
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pLimit from 'p-limit';
import sharp from 'sharp';
import { DuckDBInstance } from '@duckdb/node-api';
import { ingest } from '../src/ingest/ingest.js';
import { Rng } from '../src/util/random.js';
import { Store } from '../src/store/store.js';

const WORDS = ('the a an image shows there is are two three four small large red blue green yellow square circle triangle ' +
  'left right top bottom centre near far next to above below object objects background white black approx. e.g. ' +
  'it looks like bright dark shape with and of in on').split(' ');

/** Deterministic text from a seeded generator. */
function generator(seed: number) {
  const rng = new Rng(seed);
  const next = () => rng.next();
  const sentence = () => {
    const n = 6 + Math.floor(next() * 10);
    const words = Array.from({ length: n }, () => WORDS[Math.floor(next() * WORDS.length)]!);
    const text = words.join(' ');
    return text[0]!.toUpperCase() + text.slice(1) + '.';
  };
  const paragraph = () => Array.from({ length: 2 + Math.floor(next() * 4) }, sentence).join(' ');
  return { next, paragraph };
}

async function writeTextDataset(file: string, pairs: number): Promise<void> {
  if (existsSync(file) && existsSync(`${file}.done-${pairs}`)) return;
  const g = generator(1);
  const out = createWriteStream(file);
  for (let i = 0; i < pairs; i++) {
    const line = JSON.stringify({ prompt: `Describe image ${i} in detail.`, chosen: g.paragraph(), rejected: g.paragraph() }) + '\n';
    if (!out.write(line)) await new Promise<void>((resolve) => out.once('drain', () => resolve()));
  }
  await new Promise<void>((resolve) => out.end(() => resolve()));
  createWriteStream(`${file}.done-${pairs}`).end();
}

async function writeImageDataset(dir: string, count: number): Promise<string> {
  const file = path.join(dir, `images-${count}.jsonl`);
  if (existsSync(`${file}.done-${count}`)) return file;
  mkdirSync(path.join(dir, 'img'), { recursive: true });
  const g = generator(2);
  const limit = pLimit(os.availableParallelism());
  const names = await Promise.all(Array.from({ length: count }, (_, i) => limit(async () => {
    const width = 64 + Math.floor(g.next() * 960);
    const height = 64 + Math.floor(g.next() * 960);
    const format = i % 2 ? 'png' : 'jpeg';
    const name = `img/${i}.${format === 'png' ? 'png' : 'jpg'}`;
    // Noise-free but varied content: a gradient background with a shape, so images differ and compress realistically.
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">
      <defs><linearGradient id="g"><stop offset="0" stop-color="hsl(${i % 360},70%,50%)"/><stop offset="1" stop-color="hsl(${(i * 7) % 360},60%,30%)"/></linearGradient></defs>
      <rect width="100%" height="100%" fill="url(#g)"/><circle cx="${width / 2}" cy="${height / 2}" r="${Math.min(width, height) / 3}" fill="white"/></svg>`;
    await sharp(Buffer.from(svg)).toFormat(format).toFile(path.join(dir, name));
    return name;
  })));
  const out = createWriteStream(file);
  names.forEach((image, i) => out.write(JSON.stringify({ prompt: `What is in image ${i}?`, chosen: 'A white circle.', rejected: 'A red square.', image }) + '\n'));
  await new Promise<void>((resolve) => out.end(() => resolve()));
  createWriteStream(`${file}.done-${count}`).end();
  return file;
}

/** Runs this script in a child process for one measured task; returns its JSON result. */
function child(task: string, args: string[]): { seconds: number; rows: number; maxRssMb: number; fastRows?: number } {
  const result = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--task', task, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (result.status !== 0) throw new Error(`${task} failed`);
  return JSON.parse(result.stdout.trim().split('\n').at(-1)!);
}

async function task(name: string, file: string, db: string): Promise<void> {
  rmSync(db, { force: true });
  rmSync(`${db}.wal`, { force: true });
  const started = performance.now();
  let rows: number;
  let fastRows: number | undefined;
  if (name === 'duckdb') {
    const instance = await DuckDBInstance.create(db);
    const connection = await instance.connect();
    await connection.run(`CREATE TABLE t AS SELECT * FROM read_json(?, format = 'newline_delimited')`, [file]);
    rows = Number((await connection.runAndReadAll('SELECT count(*) FROM t')).getRowsJS()[0]![0]);
    connection.closeSync();
    instance.closeSync();
  } else {
    const store = await Store.open(db);
    const summary = await ingest(store, [file], { fastPath: name !== 'ingest-js' });
    rows = summary.ingested;
    fastRows = summary.fastRows;
    store.close();
  }
  const seconds = (performance.now() - started) / 1000;
  process.stdout.write(JSON.stringify({ seconds, rows, fastRows, maxRssMb: process.resourceUsage().maxRSS / 1024 }) + '\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      pairs: { type: 'string', default: '1000000' },
      images: { type: 'string', default: '2000' },
      out: { type: 'string', default: 'bench-output/ingest' },
      task: { type: 'string' },
      file: { type: 'string' },
      db: { type: 'string' },
      // Also time the JavaScript path alone (the fast path switched off), for comparison.
      js: { type: 'boolean', default: false },
    },
  });
  if (values.task) return task(values.task, values.file!, values.db!);
  const out = path.resolve(values.out);
  mkdirSync(out, { recursive: true });
  const pairs = Number(values.pairs);
  const textFile = path.join(out, `pairs-${pairs}.jsonl`);
  console.error(`generating ${pairs} pairs…`);
  await writeTextDataset(textFile, pairs);
  const mb = statSync(textFile).size / 1e6;
  console.log(`## Ingest benchmark (${os.cpus().length} cores, ${os.cpus()[0]?.model}, Node ${process.version})\n`);
  console.log(`Text: ${pairs.toLocaleString('en-US')} pairs, ${mb.toFixed(0)} MB of JSON Lines`);
  const duck = child('duckdb', ['--file', textFile, '--db', path.join(out, 'duckdb.duckdb')]);
  const ours = child('ingest', ['--file', textFile, '--db', path.join(out, 'ours.duckdb')]);
  const rate = (r: { seconds: number; rows: number }) => r.rows / r.seconds;
  console.log(`| path | seconds | pairs/s | peak RSS |`);
  console.log(`|---|---|---|---|`);
  console.log(`| DuckDB read_json → table (ceiling) | ${duck.seconds.toFixed(2)} | ${Math.round(rate(duck)).toLocaleString('en-US')} | ${duck.maxRssMb.toFixed(0)} MB |`);
  console.log(`| aspo ingest (${ours.fastRows?.toLocaleString('en-US')} rows on the fast path) | ${ours.seconds.toFixed(2)} | ${Math.round(rate(ours)).toLocaleString('en-US')} | ${ours.maxRssMb.toFixed(0)} MB |`);
  if (values.js) {
    const js = child('ingest-js', ['--file', textFile, '--db', path.join(out, 'ours-js.duckdb')]);
    console.log(`| aspo ingest, JavaScript path only | ${js.seconds.toFixed(2)} | ${Math.round(rate(js)).toLocaleString('en-US')} | ${js.maxRssMb.toFixed(0)} MB |`);
  }
  console.log(`\nratio ours/DuckDB = ${(rate(ours) / rate(duck)).toFixed(2)} (target ≥ 0.5), peak RSS ${ours.maxRssMb.toFixed(0)} MB (target < 1024)\n`);

  const imageCount = Number(values.images);
  console.error(`generating ${imageCount} images…`);
  const imageFile = await writeImageDataset(path.join(out, 'images'), imageCount);
  const imagePaths = (await readFile(imageFile, 'utf8')).trim().split('\n').map((l) => path.join(out, 'images', JSON.parse(l).image as string));
  const limit = pLimit(Math.max(2, os.availableParallelism() * 2));
  // `oneBand`: the decode call the stage itself makes (every pixel decoded, one band copied out).
  const bareLoop = (oneBand: boolean) => async () => {
    const started = performance.now();
    await Promise.all(imagePaths.map((p) => limit(async () => {
      const bytes = await readFile(p);
      createHash('sha256').update(bytes).digest('hex');
      await (oneBand ? sharp(bytes).extractChannel(0) : sharp(bytes)).raw().toBuffer();
    })));
    return (performance.now() - started) / 1000;
  };
  const oursInProcess = async () => {
    const db = path.join(out, 'images.duckdb');
    rmSync(db, { force: true });
    rmSync(`${db}.wal`, { force: true });
    const started = performance.now();
    const store = await Store.open(db);
    await ingest(store, [imageFile]);
    store.close();
    return (performance.now() - started) / 1000;
  };
  // Interleaved rounds in this one process (so both sides share its libraries and heap); best of three each.
  const paths = { bare: bareLoop(false), bareOneBand: bareLoop(true), ours: oursInProcess };
  const best = { bare: Infinity, bareOneBand: Infinity, ours: Infinity };
  for (let round = 0; round < 3; round++) {
    for (const name of Object.keys(paths) as (keyof typeof paths)[]) best[name] = Math.min(best[name], await paths[name]());
  }
  const imageRate = (seconds: number) => (imageCount / seconds).toFixed(0);
  console.log(`Images: ${imageCount} JPEG/PNG files, 64–1024 px`);
  console.log(`| path | seconds | images/s |`);
  console.log(`|---|---|---|`);
  console.log(`| bare loop: read + sha256 + sharp decode to raw pixels (ceiling) | ${best.bare.toFixed(2)} | ${imageRate(best.bare)} |`);
  console.log(`| bare loop, decoding as the stage does (one band copied out) | ${best.bareOneBand.toFixed(2)} | ${imageRate(best.bareOneBand)} |`);
  console.log(`| aspo ingest | ${best.ours.toFixed(2)} | ${imageRate(best.ours)} |`);
  console.log(`\nratio ours/bare = ${(best.bare / best.ours).toFixed(2)} (target ≥ 0.8); against the one-band loop ${(best.bareOneBand / best.ours).toFixed(2)}`);
}

await main();
