import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { AutoTokenizer, env } from '@huggingface/transformers';
import { alignTokens, encodeWithSentences, hfOffsetTokenizer, loadHfOffsetTokenizer, sentenceTokenSpans, type OffsetTokenizer } from '../src/segment/align.js';
import { segment } from '../src/segment/segment.js';
import { Tokenizer } from '../src/model/tokenizer.js';
import { tempDir } from './support.js';

test('tokens map to the sentence of their first non-space character (hand-worked example)', () => {
  const prompt = 'Q: hi?\n';
  const response = ' A cat. 🐱 Sits.  ';
  const text = prompt + response;
  const sentences = segment(response);
  assert.deepEqual(sentences.map((s) => [s.start, s.end]), [[1, 7], [8, 16]]);
  // "Q:", " hi?\n", " A", " cat", ". " (straddles the gap), "🐱", " Si", "ts.", "  ", an empty special token.
  const offsets: Array<[number, number]> = [[0, 2], [2, 7], [7, 9], [9, 13], [13, 15], [15, 17], [17, 20], [20, 23], [23, 25], [25, 25]];
  const ids = alignTokens(text, offsets, sentences, prompt.length);
  assert.deepEqual(ids, [-1, -1, 0, 0, 0, 1, 1, 1, -1, -1]);
  assert.deepEqual(sentenceTokenSpans(ids, 2), [[2, 5], [5, 8]]);
  assert.deepEqual(sentenceTokenSpans([-1, 0, 0], 2), [[1, 3], null]);
});

/** Fixed-width chunks of `width` UTF-16 units (never splitting a surrogate pair): tokens straddle every boundary. */
const chunkTokenizer = (width: number): OffsetTokenizer => ({
  encode(text) {
    const offsets: Array<[number, number]> = [];
    for (let s = 0; s < text.length;) {
      let e = Math.min(text.length, s + width);
      if (e < text.length && /[\ud800-\udbff]/.test(text[e - 1]!)) e++;
      offsets.push([s, e]);
      s = e;
    }
    return { ids: offsets.map((_, k) => k), offsets };
  },
});

test('straddling tokens over emoji, CJK and combining marks agree with a character-by-character reference', () => {
  const prompt = 'USER: <image>\nDescribe it.\nASSISTANT:';
  const response = '  Une cafe\u0301 👍🏽 on the table. 猫が座っている。 It is 3.5 cm tall!  A flag of the U.S. is visible\n\n- item one  ';
  const text = prompt + response;
  const sentences = segment(response);
  // Reference: the sentence containing each character of the full string.
  const owner = new Array<number>(text.length).fill(-1);
  sentences.forEach((s, k) => { for (let i = s.start; i < s.end; i++) owner[prompt.length + i] = k; });
  for (const width of [1, 2, 3, 5, 8]) {
    const encoding = encodeWithSentences(chunkTokenizer(width), prompt, response, sentences);
    assert.equal(encoding.responseStart, prompt.length);
    encoding.offsets.forEach(([s, e], t) => {
      const first = [...Array(e - s).keys()].map((k) => s + k).find((i) => text[i]!.trim() !== '');
      assert.equal(encoding.sentenceIds[t], first === undefined ? -1 : owner[first], `width ${width}, token ${t}`);
    });
    const spans = sentenceTokenSpans(encoding.sentenceIds, sentences.length);
    assert.ok(spans.every((span) => span !== null), 'every sentence gets tokens');
  }
});

test("the training stage's tokenizer is an OffsetTokenizer: tokens land in the sentence of their first character", () => {
  const prompt = 'Describe the image.\n';
  const response = 'A red circle is at the top. The blue square, approx. 3 cm wide, is below it. 😀 Done';
  const tokenizer: OffsetTokenizer = Tokenizer.build([prompt + response], { vocabSize: 160 });
  const encoding = encodeWithSentences(tokenizer, prompt, response);
  assert.equal(encoding.sentences.length, 3);
  const text = prompt + response;
  encoding.offsets.forEach(([s, e], t) => {
    const slice = text.slice(s, e);
    const first = s + slice.length - slice.trimStart().length;
    const expected = slice.trim() === '' ? -1
      : encoding.sentences.findIndex((sentence) => first - prompt.length >= sentence.start && first - prompt.length < sentence.end);
    assert.equal(encoding.sentenceIds[t], expected, `token ${t} ${JSON.stringify(slice)}`);
  });
  assert.ok(encoding.sentenceIds.slice(0, 4).every((k) => k === -1), 'prompt tokens are -1');
  assert.deepEqual(new Set(encoding.sentenceIds), new Set([-1, 0, 1, 2]));
});

// ---------------------------------------------------------------------------------------------------------------
// Hugging Face tokenizers, written as tiny tokenizer.json files and loaded through AutoTokenizer.from_pretrained.

function writeTokenizer(name: string, tokenizerJson: object, config: object): string {
  const dir = path.join(tempDir('aspo-tok-'), name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
  writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return dir;
}

const special = (content: string, id: number) =>
  ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });

function slices(text: string, offsets: Array<[number, number]>): string[] {
  return offsets.map(([s, e]) => text.slice(s, e));
}

test('WordPiece (BERT, lower-cased, accents stripped): offsets recovered through AutoTokenizer', async () => {
  const vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'the', 'cat', 'sat', 'on', 'mat', '.', 'a', 'dog', '##s', 'cafe', '!', '猫'];
  const dir = writeTokenizer('wordpiece', {
    version: '1.0', truncation: null, padding: null,
    added_tokens: vocab.slice(0, 4).map(special),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '[SEP]', type_id: 0 } }],
      pair: [],
      special_tokens: { '[CLS]': { id: '[CLS]', ids: [2], tokens: ['[CLS]'] }, '[SEP]': { id: '[SEP]', ids: [3], tokens: ['[SEP]'] } },
    },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100,
      vocab: Object.fromEntries(vocab.map((t, i) => [t, i])) },
  }, { tokenizer_class: 'BertTokenizer', do_lower_case: true, unk_token: '[UNK]', cls_token: '[CLS]', sep_token: '[SEP]', pad_token: '[PAD]' });
  const tokenizer = await loadHfOffsetTokenizer(dir);

  const text = '  The cats sat. Cafe\u0301 猫 xyzzy dog!';
  const { ids, offsets } = tokenizer.encode(text);
  assert.deepEqual(ids, [2, 4, 5, 12, 6, 9, 13, 15, 1, 11, 14, 3]);
  assert.deepEqual(slices(text, offsets), ['', 'The', 'cat', 's', 'sat', '.', 'Cafe\u0301', '猫', 'xyzzy', 'dog', '!', '']);
  assert.deepEqual(offsets[0], [0, 0]);
  assert.deepEqual(offsets[11], [text.length, text.length]);

  const prompt = 'the mat. ';
  const encoding = encodeWithSentences(tokenizer, prompt, 'The cats sat. A dog!');
  assert.deepEqual(encoding.sentenceIds, [-1, -1, -1, -1, 0, 0, 0, 0, 0, 1, 1, 1, -1]);
});

/** GPT-2's byte-to-character table, as published with GPT-2: printable bytes stand for themselves. */
function byteAlphabet(): string[] {
  const chars: string[] = [];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    chars.push(String.fromCodePoint(printable ? b : 256 + n++));
  }
  return chars;
}

test('byte-level BPE (GPT-2 style): a character split over byte tokens spans all of them', async () => {
  const alphabet = byteAlphabet();
  const merges = ['Ġ c', 'a t', 'Ġc at', 'T h', 'Th e', 'Ġ s', 'Ġs at', 'Ã ©', 'Ġ H', 'ĠH i'];
  const vocab = [...alphabet, ...merges.map((m) => m.replace(' ', '')), '<|endoftext|>'];
  const dir = writeTokenizer('bytelevel', {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [special('<|endoftext|>', vocab.length - 1)],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, vocab: Object.fromEntries(vocab.map((t, i) => [t, i])), merges },
  }, { tokenizer_class: 'GPT2Tokenizer', bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', unk_token: '<|endoftext|>' });
  const tokenizer = await loadHfOffsetTokenizer(dir);

  const text = 'The cat sat. Café 😀 Hi<|endoftext|>';
  const { offsets } = tokenizer.encode(text);
  assert.deepEqual(slices(text, offsets),
    ['The', ' cat', ' sat', '.', ' ', 'C', 'a', 'f', 'é', ' ', '😀', '😀', '😀', '😀', ' Hi', '<|endoftext|>']);
  const emoji = text.indexOf('😀');
  for (const k of [10, 11, 12, 13]) assert.deepEqual(offsets[k], [emoji, emoji + 2]);

  const encoding = encodeWithSentences(tokenizer, 'The cat', ' sat. Café 😀 Hi');
  assert.deepEqual(encoding.sentenceIds, [-1, -1, 0, 0, -1, 1, 1, 1, 1, -1, 1, 1, 1, 1, 1]);

  // Property check against the tokenizer's own decoder on random text: every token that decodes to whole characters
  // covers exactly those characters, spans never go backwards, and together they cover the whole input.
  env.allowRemoteModels = false;
  env.localModelPath = path.dirname(dir) + path.sep;
  const raw = await AutoTokenizer.from_pretrained(path.basename(dir));
  const wrapped = hfOffsetTokenizer(raw, { addSpecialTokens: false });
  const pieces = ['T', 'h', 'e', ' cat', ' sat', '.', ' ', '  ', '\n', 'é', 'e\u0301', '😀', '猫', '👍🏽', 'Hi', '!', '\t'];
  let seed = 7;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let n = 0; n < 200; n++) {
    const sample = Array.from({ length: 1 + Math.floor(next() * 12) }, () => pieces[Math.floor(next() * pieces.length)]).join('');
    const { ids, offsets: spans } = wrapped.encode(sample);
    const covered = new Array<boolean>(sample.length).fill(false);
    let previousStart = 0;
    ids.forEach((id, t) => {
      const [s, e] = spans[t]!;
      assert.ok(s >= previousStart && e >= s, `span ${t} of ${JSON.stringify(sample)}`);
      previousStart = s;
      for (let i = s; i < e; i++) covered[i] = true;
      const decoded = raw.decode([id]);
      if (!decoded.includes('\ufffd')) assert.equal(sample.slice(s, e), decoded, `token ${t} of ${JSON.stringify(sample)}`);
    });
    assert.ok(covered.every(Boolean), `all of ${JSON.stringify(sample)} covered`);
  }
});

test('SentencePiece-style BPE (Metaspace, byte fallback): prefix space and byte tokens', async () => {
  const bytes = [...Array(256).keys()].map((b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const merges = ['▁ T', 'h e', '▁T he', 'a t', '▁ c', '▁c at', '▁ s', '▁s at', '▁ H', '▁H i'];
  const vocab = ['<unk>', '<s>', '</s>', ...bytes, '▁', 'T', 'h', 'e', 'c', 'a', 't', 's', '.', 'H', 'i',
    ...merges.map((m) => m.replace(' ', ''))];
  const dir = writeTokenizer('metaspace', {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [special('<unk>', 0), special('<s>', 1), special('</s>', 2)],
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: true },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: true, vocab: Object.fromEntries(vocab.map((t, i) => [t, i])), merges },
  }, { tokenizer_class: 'LlamaTokenizer', bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', add_bos_token: true, legacy: false });
  const tokenizer = await loadHfOffsetTokenizer(dir);

  const text = 'The cat sat. 猫 Hi';
  const { offsets } = tokenizer.encode(text);
  assert.deepEqual(slices(text, offsets), ['', 'The', ' cat', ' sat', '.', ' ', '猫', '猫', '猫', ' Hi']);
  assert.deepEqual(offsets[6], [13, 14]);

  const encoding = encodeWithSentences(tokenizer, '', text);
  assert.deepEqual(encoding.sentenceIds, [-1, 0, 0, 0, 0, -1, 1, 1, 1, 1]);
});

test('loading a folder without tokenizer files fails with a clear error', async () => {
  await assert.rejects(loadHfOffsetTokenizer(tempDir('aspo-empty-')), /cannot load tokenizer from/);
});
