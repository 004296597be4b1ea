import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { judgeSentence } from '../src/synth/judge.js';
import { deriveSeed, Rng } from '../src/util/random.js';
import { renderScene } from '../src/synth/render.js';
import { loadScenes, synthesize } from '../src/synth/synthesize.js';
import { BACKGROUND, COLOURS, COLUMNS, ROWS, sampleScene, type Scene } from '../src/synth/world.js';
import { CLI, tempDir } from './support.js';

async function pixels(png: Buffer): Promise<{ width: number; height: number; at: (x: number, y: number) => number[] }> {
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  const at = (x: number, y: number) => {
    const i = (Math.floor(y) * info.width + Math.floor(x)) * info.channels;
    return [data[i]!, data[i + 1]!, data[i + 2]!];
  };
  return { width: info.width, height: info.height, at };
}

function assertColour(actual: number[], expected: readonly number[], what: string): void {
  assert.ok(actual.every((v, i) => Math.abs(v - expected[i]!) <= 2), `${what}: ${actual} instead of ${expected}`);
}

test('rendered images decode at the requested size, with each object\'s colour at its position', async () => {
  for (const size of [64, 96]) {
    for (let i = 0; i < 40; i++) {
      const scene = sampleScene(new Rng(deriveSeed(5, 'render', i)), `r${i}`);
      const image = await pixels(await renderScene(scene, size));
      assert.equal(image.width, size);
      assert.equal(image.height, size);
      for (const o of scene.objects) {
        assertColour(image.at(o.x * size, o.y * size), COLOURS[o.colour], `${o.colour} ${o.shape} in ${scene.id}`);
      }
      for (const [r, row] of ROWS.entries()) {
        for (const [c, column] of COLUMNS.entries()) {
          if (scene.objects.some((o) => o.row === row && o.column === column)) continue;
          assertColour(image.at(((c + 0.5) * size) / 3, ((r + 0.5) * size) / 3), BACKGROUND, `empty ${row} ${column}`);
        }
      }
    }
  }
});

test('a large object covers more pixels than a small one of the same shape', async () => {
  const count = async (scene: Scene) => {
    const { data } = await sharp(await renderScene(scene, 64)).raw().toBuffer({ resolveWithObject: true });
    let n = 0;
    for (let i = 0; i < data.length; i += 3) if (data[i] === COLOURS.red[0] && data[i + 1] === COLOURS.red[1]) n++;
    return n;
  };
  for (const shape of ['circle', 'square', 'triangle', 'diamond', 'cross'] as const) {
    const object = { shape, colour: 'red' as const, row: 'middle' as const, column: 'middle' as const, x: 0.5, y: 0.5 };
    const small = await count({ id: 's', objects: [{ ...object, size: 'small' }] });
    const large = await count({ id: 'l', objects: [{ ...object, size: 'large' }] });
    assert.ok(large > 1.5 * small && small > 10, `${shape}: small ${small} px, large ${large} px`);
  }
});

function files(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (sub: string) => {
    for (const name of readdirSync(path.join(dir, sub))) {
      const rel = path.join(sub, name);
      if (statSync(path.join(dir, rel)).isDirectory()) walk(rel);
      else out.set(rel, readFileSync(path.join(dir, rel)));
    }
  };
  walk('');
  return out;
}

const SMALL = { images: 24, evalImages: 8, sftPerImage: 2 };

test('synthesize: same seed gives byte-identical folders, another seed different ones', async () => {
  const [a, b, c] = [tempDir(), tempDir(), tempDir()];
  const summary = await synthesize({ ...SMALL, seed: 3, out: a });
  await synthesize({ ...SMALL, seed: 3, out: b, concurrency: 1 });
  await synthesize({ ...SMALL, seed: 4, out: c });
  const [fa, fb, fc] = [files(a), files(b), files(c)];
  assert.equal(fa.size, SMALL.images + SMALL.evalImages + 5);
  assert.deepEqual([...fa.keys()].sort(), [...fb.keys()].sort());
  for (const [name, bytes] of fa) assert.ok(bytes.equals(fb.get(name)!), `${name} differs between runs`);
  assert.ok(!fa.get('pairs.jsonl')!.equals(fc.get('pairs.jsonl')!));
  assert.ok(!fa.get('images/train-000000.png')!.equals(fc.get('images/train-000000.png')!));

  assert.equal(summary.pairs, SMALL.images);
  assert.equal(summary.sft, SMALL.images * SMALL.sftPerImage);
  const manifest = JSON.parse(fa.get('manifest.json')!.toString());
  assert.equal(manifest.options.seed, 3);
  assert.equal(manifest.pairs, SMALL.images);
  assert.equal(manifest.evalImages, SMALL.evalImages);
});

test('synthesize: the folder is self-consistent — paths resolve, scenes judge the pairs, eval is held out', async () => {
  const out = tempDir();
  await synthesize({ ...SMALL, seed: 9, out, size: 96 });
  const scenes = await loadScenes(out);
  assert.equal(scenes.size, SMALL.images + SMALL.evalImages);
  const read = (name: string) => readFileSync(path.join(out, name), 'utf8').trim().split('\n').map((line) => JSON.parse(line));
  const trainImages = new Set<string>();
  for (const pair of read('pairs.jsonl')) {
    trainImages.add(pair.image);
    const scene = scenes.get(pair.meta.scene_id)!;
    assert.equal(scene.split, 'train');
    assert.equal(scene.image, pair.image);
    for (const span of pair.chosen_spans) {
      assert.equal(judgeSentence(pair.chosen.slice(span.start, span.end), scene), span.label === 'true' ? 'true' : 'false');
    }
  }
  for (const record of read('sft.jsonl')) assert.ok(trainImages.has(record.image));
  const evalRecords = read('eval.jsonl');
  assert.equal(evalRecords.length, SMALL.evalImages);
  for (const record of evalRecords) {
    assert.match(record.image, /^eval\/images\//);
    assert.ok(!trainImages.has(record.image));
  }
  const hashes = (sub: string) => new Set(readdirSync(path.join(out, sub)).map((name) => readFileSync(path.join(out, sub, name)).toString('base64')));
  const trainBytes = hashes('images');
  assert.equal(trainBytes.size, SMALL.images);
  for (const bytes of hashes('eval/images')) assert.ok(!trainBytes.has(bytes));
  const first = await sharp(path.join(out, 'images', 'train-000000.png')).metadata();
  assert.equal(first.width, 96);
});

test('synthesize refuses a non-empty folder unless forced, and force replaces only its own files', async () => {
  const out = tempDir();
  writeFileSync(path.join(out, 'notes.txt'), 'keep me');
  await assert.rejects(synthesize({ ...SMALL, out }), /not empty/);
  await synthesize({ ...SMALL, out, force: true });
  await synthesize({ ...SMALL, images: 5, evalImages: 2, out, force: true });
  assert.equal(readdirSync(path.join(out, 'images')).length, 5);
  assert.equal(readFileSync(path.join(out, 'notes.txt'), 'utf8'), 'keep me');
});

test('loadScenes names the line and field of a malformed record', async () => {
  const out = tempDir();
  writeFileSync(path.join(out, 'scenes.jsonl'),
    '{"id":"a","split":"train","image":"images/a.png","objects":[]}\n' +
    '{"id":"b","split":"train","image":"images/b.png","objects":[{"shape":"blob","colour":"red","size":"small","row":"top","column":"left","x":0.1,"y":0.1}]}\n');
  await assert.rejects(loadScenes(out), /scenes\.jsonl:2 objects\[0\]: field "shape"/);
});

test('aspo synth writes the folder, keeps stdout clean and prints a summary line', () => {
  const out = path.join(tempDir(), 'world');
  const result = spawnSync(process.execPath, [CLI, 'synth', '--out', out, '--images', '6', '--eval-images', '2', '--seed', '5'], { encoding: 'utf8' });
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout, '');
  assert.match(result.stderr, /synth: 6 training \+ 2 evaluation images \(64×64\), 6 pairs/);
  assert.equal(readdirSync(path.join(out, 'images')).length, 6);

  const bad = spawnSync(process.execPath, [CLI, 'synth', '--out', out, '--noise', '1.5', '--force'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--noise must be a number from 0 to 1/);
  const missing = spawnSync(process.execPath, [CLI, 'synth'], { encoding: 'utf8' });
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /--out/);
  const again = spawnSync(process.execPath, [CLI, 'synth', '--out', out, '--images', '2', '--eval-images', '0'], { encoding: 'utf8' });
  assert.equal(again.status, 1);
  assert.match(again.stderr, /not empty/);
});
