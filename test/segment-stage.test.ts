import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { Store, withStore } from '../src/store/store.js';
import { segment } from '../src/segment/segment.js';
import { segmentStage } from '../src/segment/stage.js';
import { CLI, tempDir } from './support.js';

async function addPair(store: Store, pairId: string, chosen: string, rejected: string): Promise<void> {
  await store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected)
    VALUES (?, 'test.jsonl', 0, 'jsonl', 'Describe the image.', ?, ?)`, [pairId, chosen, rejected]);
}

const PAIRS: Array<[string, string, string]> = [
  ['p1', 'A dog sits on a bench. The sky is clear.', 'A dog sits on a bench. The sky is cloudy. Two birds fly.'],
  ['p2', 'There is a red car.\n\n- It has four doors.', 'There is a blue car.'],
  ['p3', '', '   '],
  ['p4', 'Mr. Smith waves at 5 p.m. He smiles.', 'Mr. Smith waves at 5 p.m. He smiles.'],
  ['p5', 'One sentence only', 'Another one only'],
];

interface Row { pair_id: string; side: string; idx: number; char_start: number; char_end: number; text: string; match_idx: number | null; match_score: number | null; shared: boolean }

async function sentenceRows(store: Store): Promise<Row[]> {
  return store.all<Row>('SELECT * FROM sentences ORDER BY pair_id, side, idx');
}

test('segments every pair into rows whose offsets slice the response, with the diff columns', async () => {
  const db = path.join(tempDir(), 'stage.duckdb');
  await withStore(db, async (store) => {
    for (const pair of PAIRS) await addPair(store, ...pair);
    const batches: number[] = [];
    const result = await segmentStage(store, { batchSize: 2, onBatch: ({ pairs, total }) => { batches.push(pairs); assert.equal(total, 5); } });
    assert.deepEqual(batches, [2, 4, 5]);
    const rows = await sentenceRows(store);
    const expectedCount = PAIRS.reduce((n, [, c, r]) => n + segment(c).length + segment(r).length, 0);
    assert.equal(rows.length, expectedCount);
    assert.deepEqual(result, { pairs: 5, sentences: expectedCount, shared: rows.filter((r) => r.shared).length, alreadyDone: 0 });
    for (const row of rows) {
      const [, chosen, rejected] = PAIRS.find(([id]) => id === row.pair_id)!;
      assert.equal((row.side === 'chosen' ? chosen : rejected).slice(row.char_start, row.char_end), row.text);
    }
    const p1 = rows.filter((r) => r.pair_id === 'p1');
    assert.deepEqual(p1.map((r) => [r.side, r.idx, r.text, r.shared, r.match_idx]), [
      ['chosen', 0, 'A dog sits on a bench.', true, 0],
      ['chosen', 1, 'The sky is clear.', false, 1],
      ['rejected', 0, 'A dog sits on a bench.', true, 0],
      ['rejected', 1, 'The sky is cloudy.', false, 1],
      ['rejected', 2, 'Two birds fly.', false, null],
    ]);
    assert.ok(p1[1]!.match_score! > 0.5 && p1[1]!.match_score! < 1);
    assert.equal(p1[4]!.match_score, null);
    assert.ok(rows.filter((r) => r.pair_id === 'p4').every((r) => r.shared && r.match_score === 1));
    const done = await store.all('SELECT * FROM segmented_pairs ORDER BY pair_id');
    assert.deepEqual(done.find((d) => d.pair_id === 'p3'), { pair_id: 'p3', chosen_sentences: 0, rejected_sentences: 0, shared_sentences: 0 });
    assert.deepEqual(done.find((d) => d.pair_id === 'p4'), { pair_id: 'p4', chosen_sentences: 2, rejected_sentences: 2, shared_sentences: 2 });
  });
});

test('incremental: a rerun does nothing, new pairs alone are segmented, an interrupted run resumes without duplicates', async () => {
  const db = path.join(tempDir(), 'resume.duckdb');
  await withStore(db, async (store) => {
    for (const pair of PAIRS.slice(0, 4)) await addPair(store, ...pair);
    // Interrupt after the first committed batch.
    await assert.rejects(segmentStage(store, { batchSize: 2, onBatch: () => { throw new Error('killed'); } }), /killed/);
    assert.equal(await store.scalar('SELECT count(*) FROM segmented_pairs'), 2);
    const resumed = await segmentStage(store, { batchSize: 2 });
    assert.equal(resumed.pairs, 2);
    assert.equal(resumed.alreadyDone, 2);
    const again = await segmentStage(store);
    assert.deepEqual(again, { pairs: 0, sentences: 0, shared: 0, alreadyDone: 4 });
    await addPair(store, ...PAIRS[4]!);
    const added = await segmentStage(store);
    assert.deepEqual([added.pairs, added.sentences, added.alreadyDone], [1, 2, 4]);
    const rows = await sentenceRows(store);
    const expectedCount = PAIRS.reduce((n, [, c, r]) => n + segment(c).length + segment(r).length, 0);
    assert.equal(rows.length, expectedCount);
  });
});

test('a batch that fails while writing leaves nothing behind', async () => {
  const db = path.join(tempDir(), 'atomic.duckdb');
  await withStore(db, async (store) => {
    for (const pair of PAIRS.slice(0, 2)) await addPair(store, ...pair);
    // A stray row makes the second pair's first sentence collide with the primary key.
    await store.run(`INSERT INTO sentences VALUES ('p2', 'chosen', 0, 0, 1, 'x', NULL, NULL, false)`);
    await assert.rejects(segmentStage(store, { batchSize: 10 }));
    assert.equal(await store.scalar('SELECT count(*) FROM segmented_pairs'), 0);
    assert.equal(await store.scalar('SELECT count(*) FROM sentences'), 1);
  });
});

test('aspo segment: JSON Lines in, one line out per line, errors inline', () => {
  const input = [
    JSON.stringify({ id: 'a', text: 'Hello World. My name is Jonas.' }),
    '{not json',
    JSON.stringify({ id: 7, text: 'x' }),
    JSON.stringify({ id: 'b' }),
    JSON.stringify({ id: 'c', text: '' }),
    JSON.stringify({ id: 'd', text: '🐱 Cat. Dog' }),
  ].join('\n') + '\n';
  const result = spawnSync(process.execPath, [CLI, 'segment'], { input, encoding: 'utf8' });
  assert.equal(result.status, 0, result.stderr);
  const lines = result.stdout.trimEnd().split('\n').map((line) => JSON.parse(line));
  assert.equal(lines.length, 6);
  assert.deepEqual(lines[0], { id: 'a', sentences: [{ start: 0, end: 12, text: 'Hello World.' }, { start: 13, end: 30, text: 'My name is Jonas.' }] });
  assert.equal(lines[1].id, null);
  assert.match(lines[1].error, /invalid JSON/);
  assert.equal(lines[2].id, 7);
  assert.match(lines[2].error, /"id" must be a string/);
  assert.equal(lines[3].id, 'b');
  assert.match(lines[3].error, /"text" must be a string/);
  assert.deepEqual(lines[4], { id: 'c', sentences: [] });
  assert.deepEqual(lines[5], { id: 'd', sentences: [{ start: 0, end: 7, text: '🐱 Cat.' }, { start: 8, end: 11, text: 'Dog' }] });
});

test('aspo segment --db: summary on stderr, stdout clean, second run finds nothing to do', async () => {
  const db = path.join(tempDir(), 'cli.duckdb');
  await withStore(db, async (store) => { for (const pair of PAIRS) await addPair(store, ...pair); });
  const first = spawnSync(process.execPath, [CLI, 'segment', '--db', db, '--batch', '2'], { encoding: 'utf8' });
  assert.equal(first.status, 0, first.stderr);
  assert.equal(first.stdout, '');
  assert.match(first.stderr, /segment: 5 pairs segmented into \d+ sentences \(\d+ shared by both sides\), 0 pairs already done/);
  const second = spawnSync(process.execPath, [CLI, 'segment', '--db', db], { encoding: 'utf8' });
  assert.match(second.stderr, /segment: 0 pairs segmented into 0 sentences .*5 pairs already done/);
  const bad = spawnSync(process.execPath, [CLI, 'segment', '--db', db, '--batch', '0'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--batch must be a positive integer/);
});
