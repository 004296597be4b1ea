import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { folderGraph, importCycles, importGraph, runtimeImports } from './import-graph.js';
import { ROOT, tempDir } from './support.js';

test('runtimeImports keeps value imports, re-exports and dynamic imports, and drops type-only ones', () => {
  const source = [
    "import { a } from './a.js';",
    "import type { B } from './b.js';",
    "import { type C, type D } from './c.js';",
    "import { type E, f } from './e.js';",
    "import def, { type G } from './g.js';",
    "export { h } from './h.js';",
    "export type { I } from './i.js';",
    "import './side-effect.js';",
    "import {\n  j,\n  k,\n} from '../j.js';",
    "import { readFileSync } from 'node:fs';",
    "const lazy = async () => (await import('./lazy.js')).x;",
  ].join('\n');
  assert.deepEqual(runtimeImports(source), ['./a.js', './e.js', './g.js', './h.js', './side-effect.js', '../j.js', './lazy.js']);
});

test('importCycles finds a cycle across folders and leaves an acyclic chain alone', () => {
  const dir = tempDir();
  const write = (file: string, text: string): void => {
    mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
    writeFileSync(path.join(dir, file), text);
  };
  write('a/one.ts', "import { two } from '../b/two.js';\nexport const one = two;\n");
  write('b/two.ts', "import { three } from './three.js';\nexport const two = three;\n");
  write('b/three.ts', "import type { One } from '../a/one.js';\nexport const three = 3;\n");
  write('c/four.ts', "import { five } from './five.js';\nexport const four = five;\n");
  write('c/five.ts', "import { four } from './four.js';\nexport const five = () => four;\n");
  assert.deepEqual(importCycles(importGraph(dir)), [['c/five.ts', 'c/four.ts']]);
  write('b/three.ts', "import { one } from '../a/one.js';\nexport const three = () => one;\n");
  assert.deepEqual(importCycles(importGraph(dir)), [['a/one.ts', 'b/three.ts', 'b/two.ts'], ['c/five.ts', 'c/four.ts']]);
});

const SRC = importGraph(path.join(ROOT, 'src'));

test('src/ has no import cycles, between modules or between folders', () => {
  assert.deepEqual(importCycles(SRC), []);
  assert.deepEqual(importCycles(folderGraph(SRC)), []);
});

/**
 * What each folder may import at run time (docs/architecture.md): shared packages at the bottom, stages on them, the
 * pipeline on the stages, the CLI on everything. The few stage-to-stage imports are file formats and shared maths,
 * named here one by one.
 */
const SHARED = ['util', 'store', 'model'];
const ALLOWED: Record<string, string[]> = {
  util: [],
  store: [],
  model: ['util'],
  ingest: SHARED,
  segment: SHARED,
  score: [...SHARED, 'segment'], // segment/align.ts: tokens to sentences
  shard: [...SHARED, 'segment', 'score'], // segment/align.ts; score/vlm.ts: model shards encode as the VLM scorer does
  train: [...SHARED, 'shard'], // the shard set format (shard/read.ts, shard/types.ts)
  rewards: [...SHARED, 'shard', 'train'], // the shard set format; the loss maths, so rewards are the trainer's own
  synth: [...SHARED, 'train'], // readEvalFile: the eval.jsonl format the trainer's probes share
  export: SHARED,
  report: SHARED,
  distributed: [...SHARED, 'score'], // runs the CLIP scorer in workers
};

test('each folder imports only what docs/architecture.md allows it; the shared packages import no stage', () => {
  const folders = folderGraph(SRC);
  for (const [folder, targets] of folders) {
    if (folder === 'cli' || folder === 'pipeline' || folder.endsWith('.ts')) continue;
    const allowed = ALLOWED[folder];
    assert.ok(allowed, `src/${folder}/ is not in docs/architecture.md's table (add it there and here)`);
    assert.deepEqual([...targets].filter((t) => !allowed.includes(t)).sort(), [], `src/${folder}/ imports beyond its layer`);
  }
  assert.deepEqual([...folders.get('pipeline')!].filter((t) => t === 'cli'), [], 'the pipeline never imports the CLI');
});
