import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { Store, withStore } from '../src/store/store.js';
import { scoreVlm, VisionLanguageScorer, type VisionInputs } from '../src/score/vlm.js';
import { noisePng, referenceCropFeatures, referenceLogProbs, writeTinyLlava, writeTinySmolVlm, writeVlmStore, type TinyVlm } from './vlm-fixture.js';
import { CLI, ROOT, tempDir } from './support.js';

const PROMPT = 'What is in this image?';
/** [pair id, image, chosen, rejected]; image null: a text-only pair. */
const PAIRS: Array<[string, 'a' | 'b' | null, string, string]> = [
  ['p1', 'a', 'The cat sat on the mat. A dog ran.', 'A red square is there. The dog sat.'],
  ['p2', 'b', 'It is a blue square. There is a cat é.', 'The cat ran.'],
  ['p3', 'a', 'A dog sat on a red mat.', 'What is this? A cat.'],
  ['t1', null, 'A dog sat.', 'The cat sat on a mat. It ran.'],
  ['long', 'b', 'The cat sat on the mat. '.repeat(12).trim(), 'A cat.'],
];

interface Family {
  name: string;
  write: (dir: string) => TinyVlm;
  /** Image sizes [width, height] for images a and b. */
  sizes: { a: [number, number]; b: [number, number] };
  /** The whole conversation as the model's template and processor write it (answer in place), for the id check. */
  fullIds: (vlm: VisionLanguageScorer, prompt: string, answer: string, image: Uint8Array | null) => Promise<number[]>;
}

type Loaded = { tiny: TinyVlm; vlm: VisionLanguageScorer; images: Record<'a' | 'b', Buffer>; family: Family };
const loaded = new Map<string, Loaded>();

const FAMILIES: Family[] = [
  { name: 'llava', write: (dir) => writeTinyLlava(dir), sizes: { a: [8, 8], b: [8, 8] }, fullIds: fullConversationIds },
  { name: 'smolvlm', write: (dir) => writeTinySmolVlm(dir), sizes: { a: [16, 8], b: [8, 8] }, fullIds: fullConversationIds },
];

/** The library alone: template with the answer in place, processor over the whole string. */
async function fullConversationIds(vlm: VisionLanguageScorer, prompt: string, answer: string, image: Uint8Array | null): Promise<number[]> {
  const internals = vlm as unknown as { processor: (...args: unknown[]) => Promise<Record<string, { tolist(): unknown }>>; hf: typeof import('@huggingface/transformers'); family: string };
  const processor = internals.processor as unknown as { apply_chat_template(m: unknown, o: unknown): string } & ((...a: unknown[]) => Promise<Record<string, { tolist(): unknown }>>);
  const text = processor.apply_chat_template([
    { role: 'user', content: [...(image ? [{ type: 'image' }] : []), { type: 'text', text: prompt }] },
    { role: 'assistant', content: [{ type: 'text', text: answer }] },
  ], {});
  const { data, info } = await sharp(image!).raw().toBuffer({ resolveWithObject: true });
  const raw = new internals.hf.RawImage(new Uint8ClampedArray(data), info.width, info.height, 3);
  const out = vlm.family === 'llava' ? await processor(raw, text) : await processor(text, raw);
  return (out.input_ids!.tolist() as bigint[][])[0]!.map(Number);
}

async function makeDb(l: Loaded): Promise<string> {
  const db = await writeVlmStore(path.join(tempDir(), `${l.family.name}.duckdb`), { 'img-a': l.images.a, 'img-b': l.images.b },
    PAIRS.map(([pairId, image, chosen, rejected]) => [pairId, image && `img-${image}`, PROMPT, chosen, rejected]));
  await withStore(db, (store) => store.run(
    `INSERT INTO sentence_scores (pair_id, side, idx, similarity, similarity_model) VALUES ('p1', 'chosen', 0, 0.42, 'clip-x')`));
  return db;
}

interface ScoreRow { pair_id: string; side: string; idx: number; ppl: number | null; ref_logp_sum: number | null; n_tokens: number | null; ppl_model: string | null }

async function scores(store: Store): Promise<ScoreRow[]> {
  return store.all<ScoreRow>(`SELECT pair_id, side, idx, ppl, ref_logp_sum, n_tokens, ppl_model FROM sentence_scores ORDER BY pair_id, side, idx`);
}

/** Counts real runs of one ONNX session of the loaded model. */
function countRuns(vlm: VisionLanguageScorer, session: string): { count: number } {
  const sessions = (vlm as unknown as { model: { sessions: Record<string, { run: (...a: unknown[]) => unknown }> } }).model.sessions;
  const counter = { count: 0 };
  const target = sessions[session]!;
  const run = target.run.bind(target);
  target.run = (...args: unknown[]) => {
    counter.count++;
    return run(...args);
  };
  return counter;
}

before(async () => {
  for (const family of FAMILIES) {
    const tiny = family.write(path.join(tempDir(), `tiny-${family.name}`));
    const vlm = await VisionLanguageScorer.load(tiny.dir, { device: 'cpu' });
    const images = { a: await noisePng(...family.sizes.a, 1), b: await noisePng(...family.sizes.b, 2) };
    loaded.set(family.name, { tiny, vlm, images, family });
  }
});

after(async () => {
  for (const l of loaded.values()) await l.vlm.dispose();
});

for (const family of FAMILIES) {
  test(`${family.name}: loads through transformers.js as a user's folder does`, () => {
    const { vlm } = loaded.get(family.name)!;
    assert.equal(vlm.family, family.name);
    assert.equal(vlm.device, 'cpu');
    assert.equal(vlm.maxLength, 96);
    assert.match(vlm.modelId, new RegExp(`^tiny-${family.name}@[0-9a-f]{12}$`));
  });

  test(`${family.name}: prompt + response + end are the ids of the whole conversation, and every sentence gets its own tokens`, async () => {
    const { vlm, images } = loaded.get(family.name)!;
    const tokenizer = (vlm as unknown as { tokenizer: { decode(ids: number[], o?: object): string } }).tokenizer;
    for (const [, image, chosen, rejected] of PAIRS.slice(0, 3)) {
      const bytes = images[image!];
      const prompt = await vlm.encodePrompt(PROMPT, bytes);
      for (const response of [chosen, rejected]) {
        const { segment } = await import('../src/segment/segment.js');
        const sentences = segment(response);
        const encoded = vlm.encodeResponse(prompt, response, sentences);
        const ours = [...prompt.ids, ...encoded.ids, ...prompt.endIds];
        const theirs = await family.fullIds(vlm, PROMPT, response, bytes);
        // LLaVA's template ends the turn with a space, where training appends EOS: compare up to the end.
        if (family.name === 'llava') assert.deepEqual(ours.slice(0, -1), theirs.slice(0, -1));
        else assert.deepEqual(ours, theirs);
        sentences.forEach((s, k) => {
          const tokens = encoded.ids.filter((_, t) => encoded.sentenceIds[t] === k);
          // Whitespace-only tokens (a space before a byte-fallback character) belong to no sentence.
          assert.equal(tokenizer.decode(tokens, { skip_special_tokens: true }).replace(/\s+/g, ''),
            response.slice(s.start, s.end).replace(/\s+/g, ''), `sentence ${k} of "${response}"`);
        });
        // Tokens outside every sentence are whitespace only.
        const rest = encoded.ids.filter((_, t) => encoded.sentenceIds[t]! < 0);
        if (rest.length) assert.equal(tokenizer.decode(rest, { skip_special_tokens: true }).trim(), '');
      }
    }
  });

  test(`${family.name}: per-sentence log-probs match a float64 forward of the same graphs; each image is encoded once`, async () => {
    const l = loaded.get(family.name)!;
    const { vlm, tiny, images } = l;
    const db = await makeDb(l);
    const visionRuns = countRuns(vlm, 'vision_encoder');
    await withStore(db, async (store) => {
      const summary = await scoreVlm(store, vlm, { batchSize: 3 });
      assert.equal(summary.images, 2, 'two distinct images');
      assert.equal(visionRuns.count, summary.visionCalls);
      assert.equal(summary.visionCalls, family.name === 'llava' ? 1 : 2); // SmolVLM: images of different crop counts
      assert.equal(summary.tooLong, 1);
      assert.equal(summary.textOnlyResponses, 2);
      assert.equal(summary.responses, 9);
      const rows = await scores(store);
      const { segment } = await import('../src/segment/segment.js');
      let checked = 0;
      for (const [pairId, image, chosen, rejected] of PAIRS) {
        const bytes = image ? images[image] : null;
        const prompt = await vlm.encodePrompt(PROMPT, bytes);
        let features: number[][] = [];
        if (bytes) features = await referenceFeatures(tiny, family.name, bytes, prompt.vision!);
        for (const [side, response] of [['chosen', chosen], ['rejected', rejected]] as const) {
          const got = rows.filter((r) => r.pair_id === pairId && r.side === side);
          if (pairId === 'long' && side === 'chosen') {
            assert.ok(got.every((r) => r.ppl_model === null), 'the over-long response is not scored');
            continue;
          }
          const sentences = segment(response);
          const encoded = vlm.encodeResponse(prompt, response, sentences);
          const ids = [...prompt.ids, ...encoded.ids, ...prompt.endIds];
          const logps = referenceLogProbs(tiny.weights, ids, tiny.imageTokenId, features).slice(prompt.ids.length - 1);
          assert.equal(got.length, sentences.length);
          sentences.forEach((_, k) => {
            let sum = 0;
            let n = 0;
            encoded.sentenceIds.forEach((s, t) => {
              if (s === k) {
                sum += logps[t]!;
                n++;
              }
            });
            assert.equal(got[k]!.n_tokens, n);
            assert.ok(Math.abs(got[k]!.ref_logp_sum! - sum) < 5e-5, `${pairId}/${side}/${k}: ${got[k]!.ref_logp_sum} vs ${sum}`);
            assert.ok(Math.abs(got[k]!.ppl! / Math.exp(-sum / n) - 1) < 1e-3);
            assert.equal(got[k]!.ppl_model, vlm.modelId);
            checked++;
          });
        }
      }
      const expected = PAIRS.flatMap(([pairId, , chosen, rejected]) => (pairId === 'long' ? [rejected] : [chosen, rejected]))
        .reduce((n, response) => n + segment(response).length, 0);
      assert.equal(checked, expected, 'every scored sentence checked');
      // The similarity another scorer wrote stays.
      assert.equal(await store.scalar(`SELECT similarity FROM sentence_scores WHERE pair_id = 'p1' AND side = 'chosen' AND idx = 0`), 0.42);
      const again = await scoreVlm(store, vlm, { batchSize: 3 });
      assert.equal(again.responses, 0);
      assert.equal(again.images, 0);
      assert.deepEqual(await scores(store), rows);
    });

    // One response per pass and one pair per transaction give the same scores as padded batches.
    const single = await makeDb(l);
    await withStore(single, async (store) => {
      await scoreVlm(store, vlm, { batchSize: 1, commitResponses: 1 });
      const one = await scores(store);
      const batched = await withStore(db, scores);
      assert.equal(one.length, batched.length);
      one.forEach((r, i) => {
        assert.equal(r.n_tokens, batched[i]!.n_tokens);
        if (r.ref_logp_sum === null) assert.equal(batched[i]!.ref_logp_sum, null);
        else assert.ok(Math.abs(r.ref_logp_sum - batched[i]!.ref_logp_sum!) < 1e-4);
      });
    });
  });
}

/**
 * Image features in float64. LLaVA: from the PNG's pixels, normalised by hand with the preprocessor's mean and std
 * (8×8 images need no resize). SmolVLM: from the crops its processor made (split and resized by the library).
 */
async function referenceFeatures(tiny: TinyVlm, family: string, bytes: Uint8Array, vision: VisionInputs): Promise<number[][]> {
  const S = tiny.weights.dims.imageSize;
  if (family === 'llava') {
    const { data } = await sharp(bytes).raw().toBuffer({ resolveWithObject: true });
    const mean = [0.48145466, 0.4578275, 0.40821073];
    const std = [0.26862954, 0.26130258, 0.27577711];
    const crop = new Float64Array(3 * S * S);
    for (let c = 0; c < 3; c++) for (let i = 0; i < S * S; i++) crop[c * S * S + i] = (data[i * 3 + c]! / 255 - mean[c]!) / std[c]!;
    const processed = vision.pixel_values!.data as Float32Array;
    crop.forEach((v, i) => assert.ok(Math.abs(v - processed[i]!) < 1e-5, 'the processor normalises as the preprocessor config says'));
    return referenceCropFeatures(tiny.weights, crop);
  }
  const pixels = vision.pixel_values!;
  const crops = pixels.dims[1]!;
  const per = 3 * S * S;
  const out: number[][] = [];
  for (let c = 0; c < crops; c++) out.push(...referenceCropFeatures(tiny.weights, (pixels.data as Float32Array).subarray(c * per, (c + 1) * per)));
  return out;
}

test('text-only pairs are scored without an image, or skipped with requireImage', async () => {
  const l = loaded.get('smolvlm')!;
  const db = await makeDb(l);
  await withStore(db, async (store) => {
    const s = await scoreVlm(store, l.vlm, { requireImage: true });
    assert.equal(s.textOnlySkipped, 2);
    assert.equal(Number(await store.scalar(`SELECT count(*) FROM sentence_scores WHERE pair_id = 't1' AND ppl_model IS NOT NULL`)), 0);
    const rest = await scoreVlm(store, l.vlm);
    assert.equal(rest.responses, 2);
    assert.equal(rest.images, 0, 'no image to encode for text-only pairs');
    assert.equal(Number(await store.scalar(`SELECT count(*) FROM sentence_scores WHERE pair_id = 't1' AND ppl IS NOT NULL`)), 3);
  });
});

test('aspo score --vlm: a run killed after a transaction resumes without redoing it; the CLI names a bad folder', async () => {
  const l = loaded.get('llava')!;
  const db = await makeDb(l);
  const script = path.join(tempDir(), 'killed.mjs');
  const dist = path.join(ROOT, 'dist', 'src');
  writeFileSync(script, `
    import ${JSON.stringify(path.join(dist, 'schema.js'))}; // every stage's tables
    import { withStore } from ${JSON.stringify(path.join(dist, 'store', 'store.js'))};
    import { VisionLanguageScorer, scoreVlm } from ${JSON.stringify(path.join(dist, 'score', 'vlm.js'))};
    const vlm = await VisionLanguageScorer.load(${JSON.stringify(l.tiny.dir)}, { device: 'cpu' });
    await withStore(${JSON.stringify(db)}, (store) => scoreVlm(store, vlm, { batchSize: 2, commitResponses: 4, onBatch: ({ responses }) => {
      process.stdout.write(responses + '\\n');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000); // hold here until killed
    } }));
  `);
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const committed = await new Promise<number>((resolve) => child.stdout.once('data', (d: Buffer) => resolve(Number(String(d).trim()))));
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  assert.equal(committed, 4);
  const after = await withStore(db, async (store) => Number(await store.scalar('SELECT count(DISTINCT (pair_id, side)) FROM sentence_scores WHERE ppl_model IS NOT NULL')));
  // Pairs go in id order: the first transaction held long (its over-long chosen side skipped) and p1.
  assert.equal(after, 3, 'the first transaction is on disk');

  const run = spawnSync(process.execPath, [CLI, 'score', '--db', db, '--vlm', l.tiny.dir, '--device', 'cpu'], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  // 9 responses to score in all, 3 committed before the kill: the re-run scores the other 6 and redoes none.
  assert.match(run.stderr, /sentences of 6 responses scored with tiny-llava@[0-9a-f]{12} \(llava\) on cpu/);
  assert.match(run.stderr, /2 text-only responses scored without an image/);
  assert.match(run.stderr, /1 longer than the model's context \(96 tokens\)/);
  const fresh = await makeDb(l);
  await withStore(fresh, (store) => scoreVlm(store, l.vlm));
  const resumed = await withStore(db, scores);
  const clean = (await withStore(fresh, scores));
  assert.equal(resumed.length, clean.length);
  resumed.forEach((r, i) => {
    assert.equal(r.n_tokens, clean[i]!.n_tokens);
    if (r.ref_logp_sum !== null) assert.ok(Math.abs(r.ref_logp_sum - clean[i]!.ref_logp_sum!) < 1e-4);
  });

  const missing = spawnSync(process.execPath, [CLI, 'score', '--db', db, '--vlm', path.join(tempDir(), 'nope')], { encoding: 'utf8' });
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /--vlm: vision-language model folder .* does not exist/);
  const both = spawnSync(process.execPath, [CLI, 'score', '--db', db, '--vlm', l.tiny.dir, '--lm', l.tiny.dir], { encoding: 'utf8' });
  assert.equal(both.status, 2);
  assert.match(both.stderr, /pick one/);
});
