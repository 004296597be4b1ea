import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { withStore } from '../src/store/store.js';
import { CLI, tempDir } from './support.js';

test('aspo run (npm start) builds the default data and the store, and a second run adds nothing', async () => {
  const dir = tempDir();
  const args = [CLI, 'run', '--db', path.join(dir, 'aspo.duckdb'), '--data', path.join(dir, 'data')];
  const first = spawnSync(process.execPath, args, { encoding: 'utf8', cwd: dir });
  assert.equal(first.status, 0, first.stderr);
  assert.match(first.stderr, /synth: 1000 training \+ 200 evaluation images/);
  assert.match(first.stderr, /ingest: read 1000, ingested 1000, duplicates 0, rejected 0/);
  assert.match(first.stdout, /aspo query/);
  const counts = await withStore(path.join(dir, 'aspo.duckdb'), (store) => store.one<Record<string, number>>(`SELECT
    (SELECT count(*) FROM pairs) AS pairs, (SELECT count(*) FROM images) AS images,
    (SELECT count(DISTINCT pair_id) FROM sentences) AS segmented,
    (SELECT count(*) FROM labels l WHERE NOT EXISTS (SELECT 1 FROM sentences s WHERE s.pair_id = l.pair_id AND s.side = l.side
       AND s.start <= l.start AND l."end" <= s."end")) AS labels_outside_sentences`));
  assert.deepEqual(counts, { pairs: 1000, images: 1000, segmented: 1000, labels_outside_sentences: 0 });
  const second = spawnSync(process.execPath, args, { encoding: 'utf8', cwd: dir });
  assert.equal(second.status, 0, second.stderr);
  assert.match(second.stderr, /synth: using/);
  assert.match(second.stderr, /ingested 0, duplicates 1000/);
  assert.match(second.stderr, /segment: 0 pairs/);
});
