import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { withStore } from '../src/store/store.js';
import { comparisonLines } from '../src/cli/commands/run.js';
import { CLI, tempDir } from './support.js';

// The main job on a small world with short training (the default world and the bundled reference are what
// `npm start` uses; the same code runs here, only the sizes differ).
test('aspo run (npm start) runs every stage into the store, and a second run redoes nothing', async () => {
  const dir = tempDir();
  const db = path.join(dir, 'aspo.duckdb');
  const args = [CLI, 'run', '--db', db, '--data', path.join(dir, 'data'), '--reference', path.join(dir, 'reference'),
    '--output', path.join(dir, 'out'), '--images', '60', '--sft-steps', '12', '--train-steps', '3', '--eval-images', '8'];
  const first = spawnSync(process.execPath, args, { encoding: 'utf8', cwd: dir });
  assert.equal(first.status, 0, first.stderr);
  assert.match(first.stderr, /synth: 60 training \+ 200 evaluation images/);
  assert.match(first.stderr, /ingest: read 60, ingested 60, duplicates 0, rejected 0/);
  assert.match(first.stderr, /reference \(SFT\).*12 steps/);
  assert.match(first.stderr, /train \(ASPO\).*3 steps/);
  assert.match(first.stdout, /hallucination rate \(8 images\)/);
  assert.match(first.stdout, /reward accuracy \(held-out pairs\) +n\/a +\d/, 'the reference has no reward accuracy of its own');
  assert.match(first.stdout, /\d+ sentence_scores,/, 'the counts name real tables');
  assert.match(first.stdout, /The trained policy is (worse than its reference on|at least as good as its reference)/);
  assert.match(first.stdout, /aspo query/);
  const counts = await withStore(db, (store) => store.one<Record<string, number>>(`SELECT
    (SELECT count(*) FROM pairs) AS pairs,
    (SELECT count(DISTINCT pair_id) FROM sentences) AS segmented,
    (SELECT count(*) FROM sentences) = (SELECT count(*) FROM sentence_scores WHERE ppl_model IS NOT NULL) AS all_perplexity,
    (SELECT count(*) FROM sentences) = (SELECT count(*) FROM sentence_scores WHERE similarity IS NOT NULL) AS all_similarity,
    (SELECT count(*) FROM sentences) = (SELECT count(*) FROM sentence_rewards) AS all_rewards,
    (SELECT string_agg(objective || ':' || status, ',' ORDER BY objective) FROM runs) AS runs`));
  assert.deepEqual(counts, { pairs: 60, segmented: 60, all_perplexity: true, all_similarity: true, all_rewards: true, runs: 'aspo:finished,sft:finished' });

  const second = spawnSync(process.execPath, args, { encoding: 'utf8', cwd: dir });
  assert.equal(second.status, 0, second.stderr);
  assert.match(second.stderr, /synth: using/);
  assert.match(second.stderr, /ingested 0, duplicates 60/);
  assert.match(second.stderr, /segment: 0 pairs/);
  assert.match(second.stderr, /shard: unchanged/);
  assert.doesNotMatch(second.stderr, /reference \(SFT\)|train \(ASPO\)/);
  const runs = await withStore(db, (store) => store.one<{ n: number }>('SELECT count(*)::INT AS n FROM runs'));
  assert.equal(runs?.n, 2);
});

test('the summary says plainly on which metrics the trained policy is worse than its reference', () => {
  const rows = [
    { name: 'reward accuracy', reference: undefined, policy: 0.66, higherIsBetter: true },
    { name: 'sentence accuracy', reference: 0.763, policy: 0.752, higherIsBetter: true },
    { name: 'hallucination rate', reference: 0.538, policy: 0.547, higherIsBetter: false },
  ];
  const lines = comparisonLines(rows);
  assert.match(lines[1]!, /reward accuracy +n\/a +66\.0%/);
  assert.equal(lines.at(-1), 'The trained policy is worse than its reference on sentence accuracy (75.2% against 76.3%) ' +
    'and hallucination rate (54.7% against 53.8%).');
  const better = comparisonLines([{ ...rows[1]!, policy: 0.8 }, { ...rows[2]!, policy: 0.5 }]);
  assert.equal(better.at(-1), 'The trained policy is at least as good as its reference on every metric above.');
});
