/**
 * Peak memory of `aspo export` against the size of what it exports: a generated table (and a generated pair set for
 * --format trl) larger than the memory the export may use. Each export runs the real CLI in its own process under
 * /usr/bin/time, so its peak RSS is its own; the baseline is `aspo query "SELECT 1"` on the same store.
 *
 *   npx tsc -p . && node dist/bench/export.js [--rows 150000] [--pairs 20000] [--image-bytes 32768] [--memory 256MB] [--reuse]
 *
 * --reuse keeps the generated store of the previous run (under bench-output/export/) when there is one.
 */
import { spawnSync } from 'node:child_process';
import '../src/schema.js'; // every stage's tables, for the store
import { existsSync, mkdirSync, rmSync, statSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { withStore } from '../src/store/store.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const OUT = path.join(ROOT, 'bench-output', 'export');

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '150000' },
    pairs: { type: 'string', default: '20000' },
    'image-bytes': { type: 'string', default: '32768' },
    memory: { type: 'string', default: '256MB' },
    reuse: { type: 'boolean', default: false },
  },
});
const rows = Number(values.rows);
const pairs = Number(values.pairs);
const imageBytes = Number(values['image-bytes']);

/** Bytes of a file or of every file under a folder. */
function sizeOf(target: string): number {
  const info = statSync(target);
  if (!info.isDirectory()) return info.size;
  return readdirSync(target).reduce((n, name) => n + sizeOf(path.join(target, name)), 0);
}

/** Runs the CLI under /usr/bin/time; returns seconds and peak RSS in bytes. */
function measure(args: string[]): { seconds: number; peak: number } {
  const started = performance.now();
  const result = spawnSync('/usr/bin/time', ['-f', 'PEAK_KB %M', process.execPath, CLI, ...args], { encoding: 'utf8' });
  const seconds = (performance.now() - started) / 1000;
  if (result.status !== 0) throw new Error(`aspo ${args.join(' ')} failed: ${result.stderr}`);
  const kb = Number(/PEAK_KB (\d+)/.exec(result.stderr)?.[1]);
  return { seconds, peak: kb * 1024 };
}

const db = path.join(OUT, 'store.duckdb');
const reuse = values.reuse && existsSync(db);
if (!reuse) {
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  console.error(`generating ${rows} rows and ${pairs} pairs with ${imageBytes}-byte images…`);
  await withStore(db, async (store) => {
    // Text and bytes from hashes, so that neither DuckDB nor Parquet can compress them away.
    await store.run(`CREATE TABLE big AS
      SELECT i AS id, i % 97 AS bucket, (SELECT string_agg(md5(i::VARCHAR || '-' || j::VARCHAR), ' ') FROM range(48) t(j)) AS text,
             unhex((SELECT string_agg(sha256(i::VARCHAR || ':' || j::VARCHAR), '') FROM range(64) t(j))) AS bytes, random() AS score
      FROM range(${rows}) r(i)`);
    await store.run(`INSERT INTO images
      SELECT sha256('img' || i::VARCHAR), sha256('img' || i::VARCHAR), 64, 64, 64, 64, 'png', ${imageBytes},
             unhex((SELECT string_agg(sha256(i::VARCHAR || '/' || j::VARCHAR), '') FROM range(${Math.ceil(imageBytes / 32)}) t(j))), '<bytes>'
      FROM range(${pairs}) r(i)`);
    await store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected, image_id)
      SELECT md5(i::VARCHAR), 'bench', i, 'jsonl', 'Describe the image.', 'A red square. It is small. It sits left.',
             'A blue square. It is big. It sits right.', sha256('img' || i::VARCHAR)
      FROM range(${pairs}) r(i)`);
    await store.run(`INSERT INTO sentences (pair_id, side, idx, char_start, char_end, text, shared)
      SELECT md5(i::VARCHAR), side, idx, [0, 14, 27][idx + 1], [13, 26, 40][idx + 1], 'sentence', false
      FROM range(${pairs}) r(i), (VALUES ('chosen'), ('rejected')) s(side), range(3) k(idx)`);
    await store.run(`INSERT INTO sentence_scores (pair_id, side, idx, similarity)
      SELECT pair_id, side, idx, hash(pair_id || idx) % 1000 / 1000.0 FROM sentences`);
  });
}
const sizes = await withStore(db, async (store) => {
  const table = Number(await store.scalar('SELECT sum(strlen(text) + octet_length(bytes) + 24) FROM big'));
  const pairBytes = Number(await store.scalar('SELECT sum(octet_length(bytes)) FROM images'));
  return { table, pairBytes, count: Number(await store.scalar('SELECT count(*) FROM big')), pairs: Number(await store.scalar('SELECT count(*) FROM pairs')) };
});

const MB = (n: number) => (n / 2 ** 20).toFixed(0);
const baseline = measure(['query', '--db', db, 'SELECT 1']);
console.log(`Baseline (aspo query "SELECT 1"): peak RSS ${MB(baseline.peak)} MB`);
console.log(`Table \`big\`: ${sizes.count} rows, ${MB(sizes.table)} MB of values; pairs: ${sizes.pairs}, ${MB(sizes.pairBytes)} MB of images. DuckDB --memory ${values.memory}.`);
console.log('');
console.log('| export | data MB | output MB | seconds | peak RSS MB | peak RSS / data |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
const cases: { name: string; args: string[]; out: string; data: number }[] = [
  ...(['parquet', 'arrow', 'csv', 'jsonl'] as const).map((format) => ({
    name: `--table big --format ${format}`, args: ['--table', 'big', '--format', format], out: path.join(OUT, `big.${format}`), data: sizes.table,
  })),
  // A quarter of the table through the same paths: if peak RSS followed the data, these would be far lower.
  ...(['parquet', 'arrow'] as const).map((format) => ({
    name: `--sql "… WHERE id % 4 = 0" --format ${format}`, args: ['--sql', 'SELECT * FROM big WHERE id % 4 = 0', '--format', format],
    out: path.join(OUT, `quarter.${format}`), data: sizes.table / 4,
  })),
  { name: '--table big --partition-by bucket', args: ['--table', 'big', '--format', 'parquet', '--partition-by', 'bucket'], out: path.join(OUT, 'big-by-bucket'), data: sizes.table },
  { name: '--format trl', args: ['--format', 'trl'], out: path.join(OUT, 'trl'), data: sizes.pairBytes },
  { name: '--format aspo-reference', args: ['--format', 'aspo-reference'], out: path.join(OUT, 'reference'), data: sizes.pairBytes },
];
for (const c of cases) {
  rmSync(c.out, { recursive: true, force: true });
  const { seconds, peak } = measure(['export', '--db', db, ...c.args, '--out', c.out, '--memory', values.memory]);
  console.log(`| ${c.name} | ${MB(c.data)} | ${MB(sizeOf(c.out))} | ${seconds.toFixed(1)} | ${MB(peak)} | ${(peak / c.data).toFixed(2)} |`);
  rmSync(c.out, { recursive: true, force: true });
}
