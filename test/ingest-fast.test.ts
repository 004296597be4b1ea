import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { ingest, pairId, type IngestOptions, type IngestSummary } from '../src/ingest/ingest.js';
import { stageLines } from '../src/ingest/fast.js';
import { Store, withStore } from '../src/store/store.js';
import { CLI, tempDir } from './support.js';

const TABLES = {
  pairs: 'SELECT pair_id, source, source_row, format, prompt, chosen, rejected, image_id, meta::VARCHAR AS meta FROM pairs',
  rejects: 'SELECT * FROM rejects',
  labels: 'SELECT * FROM labels',
  images: 'SELECT * FROM images',
};

/** Rows of each table in one store and not the other (EXCEPT ALL, both ways): all zero when they hold the same. */
async function differences(a: string, b: string): Promise<Record<string, number>> {
  return withStore(a, async (store) => {
    await store.run(`ATTACH '${b}' AS other (READ_ONLY)`);
    const out: Record<string, number> = {};
    for (const [table, select] of Object.entries(TABLES)) {
      const other = select.replace(/FROM (\w+)$/, 'FROM other.$1');
      out[`${table} only in fast`] = Number(await store.scalar(`SELECT count(*) FROM (${select} EXCEPT ALL ${other})`));
      out[`${table} only in js`] = Number(await store.scalar(`SELECT count(*) FROM (${other} EXCEPT ALL ${select})`));
    }
    await store.run('DETACH other');
    return out;
  });
}

const zeros = (d: Record<string, number>) => Object.fromEntries(Object.keys(d).map((k) => [k, 0]));
const counts = ({ read, ingested, duplicates, rejected, ties, imagesDropped, newImages, fastRows }: IngestSummary) =>
  ({ read, ingested, duplicates, rejected, ties, imagesDropped, newImages, fastRows });

/** Runs the same ingests (a list of file lists, in turn) into two stores, through the fast and the JavaScript path. */
async function bothPaths(dir: string, runs: string[][], options: IngestOptions = {}) {
  const result = { fast: path.join(dir, 'fast.duckdb'), js: path.join(dir, 'js.duckdb'), summaries: [] as { fast: object; js: object; fastRows: number }[] };
  for (const files of runs) {
    const one = async (db: string, fastPath: boolean) => {
      const store = await Store.open(db);
      try {
        return counts(await ingest(store, files, { ...options, fastPath }));
      } finally {
        store.close();
      }
    };
    const fast = await one(result.fast, true);
    const js = await one(result.js, false);
    assert.equal(js.fastRows, 0);
    result.summaries.push({ fast: { ...fast, fastRows: 0 }, js, fastRows: fast.fastRows });
  }
  return result;
}

const simple = (i: number) => ({ prompt: `Question ${i}?`, chosen: `Answer ${i}, right.`, rejected: `Answer ${i}, wrong.` });

/** Lines the fast path must take, and lines it must leave to JavaScript (valid or not), interleaved. */
function mixedLines(): { lines: string[]; fast: Set<number>; routed: Set<number> } {
  const lines: string[] = [];
  const fast = new Set<number>();
  const routed = new Set<number>();
  const add = (line: string, kind: 'fast' | 'routed' | 'blank') => {
    if (kind === 'fast') fast.add(lines.length);
    if (kind === 'routed') routed.add(lines.length);
    lines.push(line);
  };
  const j = JSON.stringify;
  add(j(simple(0)), 'fast');
  add(j({ question: 'Wie heißt das Tier?', chosen: 'Eine Katze — ganz sicher.', rejected: 'Ein Hund.' }), 'fast');
  // Non-ASCII: combining marks (two code points, one glyph), CJK, astral characters (two UTF-16 units each) raw
  // and escaped, BMP escapes, escaped slashes and control characters.
  add(j({ prompt: 'Cafe\u0301 or café? 猫', chosen: 'Both 😀 spell it 𝔠𝔞𝔣𝔢.', rejected: 'Neither 🐈‍⬛.' }), 'fast');
  add('{"prompt":"Escaped \\ud83d\\ude00 and \\u00e9 and \\/","chosen":"Tab\\there\\nnewline \\"quoted\\" \\\\ back","rejected":"\\u4e2d\\u6587"}', 'fast');
  add('  { "rejected" : "r1" ,"chosen":"c1",  "prompt" :"Key order and spaces"}  ', 'fast');
  add('', 'blank');
  add('   \t ', 'blank');
  add('\u00a0\u3000', 'blank'); // blank to String.prototype.trim
  // Duplicates: an exact repeat, the same pair written differently, and pairs shared between fast and routed lines
  // in both orders.
  add(j(simple(0)), 'fast');
  add(`{"chosen":"Answer 0, right.","prompt":"Question 0?","rejected":"Answer 0, wrong."}`, 'fast');
  add(j({ ...simple(1), note: 'meta makes this a JavaScript row' }), 'routed');
  add(j(simple(1)), 'fast');
  add(j(simple(2)), 'fast');
  add(j({ ...simple(2), note: 'later than its fast twin' }), 'routed');
  add(j({ ...simple(3), prompt: '<image>\nQuestion 3?' }), 'routed'); // stripped to simple(3)'s prompt
  add(j(simple(3)), 'fast');
  // Valid rows the fast path cannot judge exactly.
  add(j({ ...simple(4), prompt: ' Question 4? ' }), 'routed');
  add(j({ ...simple(5), prompt: 'Question 5?\u00a0' }), 'routed');
  add(j({ prompt: [{ role: 'user', content: [{ type: 'text', text: 'Conversational?' }] }], chosen: [{ role: 'assistant', content: 'Yes.' }], rejected: [{ role: 'assistant', content: 'No.' }] }), 'routed');
  add(j({ ...simple(6), image: 'img/red.png' }), 'routed');
  add(j({ ...simple(7), image: 'img/missing.png' }), 'routed');
  add(j({ ...simple(8), chosen_spans: [{ start: 0, end: 6, label: 'ok' }] }), 'routed');
  add('{"prompt":"Lone \\ud800 surrogate","chosen":"c","rejected":"r"}', 'routed');
  add('{"prompt":"NUL \\u0000 escape","chosen":"c","rejected":"r"}', 'routed');
  add('{"prompt":"dup key","prompt":"second wins","chosen":"c","rejected":"r"}', 'routed');
  add('{"prompt":"dup key, three members","chosen":"c","chosen":"d"}', 'routed');
  add('{"question":"q","prompt":"p","chosen":"c"}', 'routed');
  add('{"chosen":"c","rejected":"r","chosen":"d"}', 'routed');
  add(j({ prompt: 'Rated?', completions: [{ response: 'Good.', rating: 5 }, { response: 'Bad.', rating: 1 }] }), 'routed');
  add(j({ prompt: 'Both prompt and question', question: 'q', chosen: 'c', rejected: 'r' }), 'routed');
  // Bad rows in the middle of the file.
  add('{"prompt":"trailing comma","chosen":"c","rejected":"r",}', 'routed');
  add('{"prompt":"NaN","chosen":"c","rejected":NaN}', 'routed');
  add('{oops', 'routed');
  add('[1, 2]', 'routed');
  add(j({ prompt: 'Missing rejected', chosen: 'c' }), 'routed');
  add(j({ prompt: 'Wrong type', chosen: 1, rejected: 'r' }), 'routed');
  add(j({ prompt: 'Null', chosen: null, rejected: 'r' }), 'routed');
  add(j({ prompt: '', chosen: 'c', rejected: 'r' }), 'routed');
  add(j({ prompt: 'Blank chosen', chosen: ' \u2003 ', rejected: 'r' }), 'routed');
  add(j({ prompt: '<image>', chosen: 'c', rejected: 'r' }), 'routed');
  for (let i = 10; i < 40; i++) add(j(simple(i)), 'fast');
  add(j(simple(12)), 'fast');
  add(j({ ...simple(39), note: 'last' }), 'routed');
  return { lines, fast, routed };
}

async function withImages(dir: string): Promise<void> {
  mkdirSync(path.join(dir, 'img'), { recursive: true });
  writeFileSync(path.join(dir, 'img', 'red.png'), await sharp({ create: { width: 8, height: 8, channels: 3, background: { r: 255, g: 0, b: 0 } } }).png().toBuffer());
}

test('the fast path stages exactly the simple lines, and hashes them as pairId does', async () => {
  const dir = tempDir();
  const { lines, fast, routed } = mixedLines();
  const file = path.join(dir, 'mixed.jsonl');
  writeFileSync(file, lines.join('\n') + '\n');
  const store = await Store.open(path.join(dir, 'stage.duckdb'));
  try {
    await stageLines(store, file);
    const rows = await store.all<{ line: number; ok: boolean; routed: string | null; prompt: string | null; chosen: string | null; rejected: string | null; pair_id: string | null }>(
      'SELECT rowid AS line, * FROM ingest_fast ORDER BY rowid');
    assert.deepEqual(new Set(rows.filter((r) => r.ok).map((r) => r.line)), fast);
    assert.deepEqual(new Set(rows.filter((r) => r.routed !== null && r.routed.trim() !== '').map((r) => r.line)), routed);
    for (const r of rows.filter((row) => row.ok)) {
      const parsed = JSON.parse(lines[r.line]!) as Record<string, string>;
      assert.deepEqual([r.prompt, r.chosen, r.rejected], [parsed.prompt ?? parsed.question, parsed.chosen, parsed.rejected], `line ${r.line}`);
      assert.equal(r.pair_id, pairId(r.prompt!, r.chosen!, r.rejected!, null), `line ${r.line}`);
    }
  } finally {
    store.close();
  }
});

test('fast and JavaScript paths store identical pairs, rejects, labels and images, also on re-runs', async () => {
  const dir = tempDir();
  await withImages(dir);
  const { lines } = mixedLines();
  const mixed = path.join(dir, 'mixed.jsonl');
  writeFileSync(mixed, '\uFEFF' + lines.join('\n')); // a byte-order mark, and no newline at the end
  // Some of the pairs are stored before (from a JSON array, read by JavaScript either way), and a later file in the
  // same call repeats some pairs of the fast file.
  const before = path.join(dir, 'before.json');
  writeFileSync(before, JSON.stringify([simple(11), simple(13), { ...simple(2), note: 'stored before' }]));
  const after = path.join(dir, 'after.json');
  writeFileSync(after, JSON.stringify([simple(14), simple(99), simple(99), { ...simple(1), note: 'x' }]));
  const plainFast = path.join(dir, 'plain.jsonl');
  writeFileSync(plainFast, Array.from({ length: 50 }, (_, i) => JSON.stringify(simple(i % 45))).join('\n') + '\n');
  const { fast, js, summaries } = await bothPaths(dir, [[before], [mixed, after, plainFast], [mixed, plainFast]], { missingImages: 'drop' });
  for (const s of summaries) assert.deepEqual(s.fast, s.js);
  // The fast path did take the simple lines of both JSON Lines files (else this compares the JavaScript path with itself).
  const { fast: fastLines } = mixedLines();
  assert.deepEqual(summaries.map((s) => s.fastRows), [0, fastLines.size + 50, fastLines.size + 50]);
  assert.deepEqual(summaries[2]!.fast, { ...summaries[2]!.fast, ingested: 0 }, 're-running adds nothing');
  const diff = await differences(fast, js);
  assert.deepEqual(diff, zeros(diff));
  // The comparison means something only if the tables hold what the file implies.
  await withStore(fast, async (store) => {
    const n = (sql: string) => store.scalar<number>(sql).then(Number);
    assert.equal(await n('SELECT count(*) FROM rejects'), 13);
    assert.equal(await n('SELECT count(*) FROM labels'), 1);
    assert.equal(await n('SELECT count(*) FROM images'), 1);
    assert.equal(await n('SELECT count(*) FROM pairs') , await n('SELECT count(DISTINCT pair_id) FROM pairs'));
    // simple(2) was stored before; simple(1)'s first occurrence is the routed line (with its meta).
    assert.equal(await n(`SELECT count(*) FROM pairs WHERE meta->>'note' = 'meta makes this a JavaScript row'`), 1);
  });
});

test('a fast-path ingest killed midway and re-run ends with the rows of one clean run', async () => {
  const dir = tempDir();
  const n = 60_000;
  const lines: string[] = [];
  // Routed rows first (the JavaScript path commits them as it goes), then fast ones, sharing some pairs.
  for (let i = 0; i < n; i++) {
    const row = i < n / 2 ? { ...simple(i), n: i } : simple(i - n / 4);
    lines.push(i % 997 === 5 ? '{oops' : JSON.stringify(row));
  }
  lines[0] = JSON.stringify(simple(-1)); // so that the file is tried on the fast path
  const dataset = path.join(dir, 'big.jsonl');
  writeFileSync(dataset, lines.join('\n') + '\n');
  const killedDb = path.join(dir, 'killed.duckdb');
  const child = spawn(process.execPath, [CLI, 'ingest', dataset, '--db', killedDb, '--batch-size', '500', '--commit-rows', '2000'], { stdio: 'ignore' });
  const wal = `${killedDb}.wal`;
  for (let waited = 0; waited < 30_000 && (!existsSync(wal) || statSync(wal).size < 2_000_000); waited += 10) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  const partial = await withStore(killedDb, (s) => s.scalar<number>('SELECT count(*) FROM pairs').then(Number));
  assert.ok(partial > 0 && partial < n / 2, `killed run had committed ${partial} rows; adjust the timing`);
  const resumed = spawnSync(process.execPath, [CLI, 'ingest', dataset, '--db', killedDb], { encoding: 'utf8' });
  assert.equal(resumed.status, 0, resumed.stderr);
  const jsDb = path.join(dir, 'js.duckdb');
  await withStore(jsDb, (store) => ingest(store, [dataset], { fastPath: false }));
  const diff = await differences(killedDb, jsDb);
  assert.deepEqual(diff, zeros(diff));
});
