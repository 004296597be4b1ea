import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tokenizer, SPECIAL_TOKENS, UNK_ID, EOS_ID, BOS_ID } from '../src/model/tokenizer.js';
import { encodePromptResponse } from '../src/model/encode.js';
import { encodeWithSentences, type OffsetTokenizer } from '../src/segment/align.js';

const TRAINING = [
  'Describe the image.',
  'The image contains a large red circle. The red circle is in the top row.',
  'There are two shapes: a small blue square, and a green triangle.',
  'The café has 3 tables.',
];

/** Offsets must tile the text: contiguous, in order, from 0 to its length. */
function assertTiles(text: string, offsets: Array<[number, number]>): void {
  let at = 0;
  for (const [start, end] of offsets) {
    assert.equal(start, at, `token starts at ${start}, expected ${at}`);
    assert.ok(end > start);
    at = end;
  }
  assert.equal(at, text.length);
}

test('encode → decode gives the text back, and offsets tile it exactly', () => {
  const tokenizer = Tokenizer.build(TRAINING);
  const texts = [...TRAINING, 'A purple hexagon?!  Twice\tand\nagain: zebra-crossing #42.', ' leading and trailing spaces ', ''];
  for (const text of texts) {
    const { ids, offsets } = tokenizer.encode(text);
    assert.equal(ids.length, offsets.length);
    assert.equal(tokenizer.decode(ids), text);
    assertTiles(text, offsets);
    ids.forEach((id, i) => assert.equal(text.slice(...offsets[i]!), tokenizer.vocab[id], `token ${i} of ${JSON.stringify(text)}`));
  }
});

test('frequent training words are single tokens with their leading space', () => {
  const tokenizer = Tokenizer.build(TRAINING);
  const { ids, offsets } = tokenizer.encode('The red circle');
  assert.deepEqual(ids.map((id) => tokenizer.vocab[id]), ['The', ' red', ' circle']);
  assert.deepEqual(offsets, [[0, 3], [3, 7], [7, 14]]);
});

test('unseen characters become <unk> with UTF-16 offsets; seen non-ASCII characters round-trip', () => {
  const tokenizer = Tokenizer.build(TRAINING);
  const text = 'café 😀 red';
  const { ids, offsets } = tokenizer.encode(text);
  assertTiles(text, offsets);
  const unk = ids.indexOf(UNK_ID);
  assert.ok(unk >= 0);
  assert.equal(text.slice(...offsets[unk]!), '😀'); // two UTF-16 code units, one token
  assert.equal(offsets[unk]![1] - offsets[unk]![0], 2);
  assert.equal(tokenizer.decode(ids), 'café \uFFFD red');
});

test('the vocabulary respects its cap and keeps specials and printable ASCII', () => {
  const words = Array.from({ length: 400 }, (_, i) => `word${String.fromCharCode(97 + (i % 26))}${String.fromCharCode(97 + Math.floor(i / 26))}`);
  const tokenizer = Tokenizer.build([words.join(' ')], { vocabSize: 150 });
  assert.equal(tokenizer.vocabSize, 150);
  assert.deepEqual(tokenizer.vocab.slice(0, SPECIAL_TOKENS.length), [...SPECIAL_TOKENS]);
  for (let c = 0x20; c <= 0x7e; c++) assert.ok(tokenizer.vocab.includes(String.fromCharCode(c)));
  const text = words.slice(100, 140).join(' ');
  assert.equal(tokenizer.decode(tokenizer.encode(text).ids), text);
  assert.throws(() => Tokenizer.build(TRAINING, { vocabSize: 50 }), /vocabSize must be at least/);
});

test('toJSON/fromJSON preserves every encoding; malformed JSON is refused', () => {
  const tokenizer = Tokenizer.build(TRAINING);
  const copy = Tokenizer.fromJSON(JSON.parse(JSON.stringify(tokenizer.toJSON())));
  for (const text of TRAINING) assert.deepEqual(copy.encode(text), tokenizer.encode(text));
  assert.throws(() => Tokenizer.fromJSON({ type: 'other' } as never), /aspo-word/);
  assert.throws(() => Tokenizer.fromJSON({ type: 'aspo-word', version: 1, vocab: ['a', 'b'] }), /vocab\[0\] must be <pad>/);
});

test('decode skips BOS/EOS and rejects ids outside the vocabulary', () => {
  const tokenizer = Tokenizer.build(TRAINING);
  const ids = tokenizer.encode('red').ids;
  assert.equal(tokenizer.decode([BOS_ID, ...ids, EOS_ID]), 'red');
  assert.throws(() => tokenizer.decode([tokenizer.vocabSize]), /outside the vocabulary/);
});

test('works as the segmenter\'s OffsetTokenizer: prompt + response split where the response starts', () => {
  const tokenizer = Tokenizer.build(TRAINING);
  const offsetTokenizer: OffsetTokenizer = tokenizer;
  const prompt = 'Describe the image.';
  const response = 'The image contains a large red circle. The red circle is in the top row.';
  const aligned = encodeWithSentences(offsetTokenizer, prompt, response);
  const { promptIds, responseIds } = encodePromptResponse(tokenizer, prompt, response);
  assert.deepEqual([...promptIds, ...responseIds], aligned.ids);
  assert.equal(tokenizer.decode(promptIds), prompt);
  assert.equal(tokenizer.decode(responseIds), response);
  // every response token is labelled with a sentence; no prompt token is
  const responseLabels = aligned.sentenceIds.slice(promptIds.length);
  assert.ok(aligned.sentenceIds.slice(0, promptIds.length).every((k) => k === -1));
  assert.equal(responseLabels.filter((k) => k === 0).length + responseLabels.filter((k) => k === 1).length, responseLabels.length);
  assert.throws(() => encodePromptResponse(tokenizer, 'Describe the im', 'age.'), /inside one token/);
});
