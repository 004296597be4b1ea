import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { segment, type Sentence } from '../src/segment/segment.js';
import { sharedPath } from './support.js';
import { CHECK, DEVELOPMENT, type SegmentCase } from './segment-corpus.js';

/** The span contract: text is the slice, trimmed, non-empty, in order, non-overlapping. */
function assertSpans(input: string, sentences: Sentence[]): void {
  let previousEnd = 0;
  for (const s of sentences) {
    assert.equal(s.text, input.slice(s.start, s.end));
    assert.ok(s.text.length > 0);
    assert.equal(s.text, s.text.trim(), `untrimmed span ${JSON.stringify(s.text)}`);
    assert.ok(s.start >= previousEnd, 'spans overlap or go backwards');
    previousEnd = s.end;
  }
  // Nothing but whitespace is left out.
  let covered = '';
  let at = 0;
  for (const s of sentences) {
    covered += input.slice(at, s.start).trim();
    at = s.end;
  }
  covered += input.slice(at).trim();
  assert.equal(covered, '', 'non-whitespace text fell outside every sentence');
}

function texts(input: string): string[] {
  const sentences = segment(input);
  assertSpans(input, sentences);
  return sentences.map((s) => s.text);
}

const golden = sharedPath('data', 'golden-rules', 'golden_en_48.json');

test('English Golden Rules: 48 of 48', { skip: golden ? false : 'shared golden_en_48.json absent' }, () => {
  const cases = JSON.parse(readFileSync(golden!, 'utf8')) as Array<{ text: string; expected: string[] }>;
  assert.equal(cases.length, 48);
  const failures: string[] = [];
  cases.forEach((c, k) => {
    const got = texts(c.text);
    if (JSON.stringify(got) !== JSON.stringify(c.expected)) {
      failures.push(`#${k + 1}: ${JSON.stringify(c.text)}\n    got      ${JSON.stringify(got)}\n    expected ${JSON.stringify(c.expected)}`);
    }
  });
  if (failures.length > 0) console.log(`golden rules failed (${failures.length}):\n${failures.join('\n')}`);
  assert.equal(failures.length, 0, `passed ${cases.length - failures.length}/48`);
});

/** Model-response-like descriptions with the expected splits, written for this project. */
const DESCRIPTIONS: Array<[string, string[]]> = [
  [
    'The image shows a red double-decker bus on a busy street in London, U.K. It is approx. 4.4 m tall. ' +
      'Several people, e.g. tourists and commuters, wait at the stop.',
    ['The image shows a red double-decker bus on a busy street in London, U.K.', 'It is approx. 4.4 m tall.',
      'Several people, e.g. tourists and commuters, wait at the stop.'],
  ],
  [
    'In the foreground there are three objects:\n1. A wooden table (about 1.2 m wide).\n2. Two chairs, i.e. one on each side.\n3. A vase with flowers',
    ['In the foreground there are three objects:', '1. A wooden table (about 1.2 m wide).',
      '2. Two chairs, i.e. one on each side.', '3. A vase with flowers'],
  ],
  [
    '## Description\n\n- **Sky:** clear and blue\n- **Ground:** covered in snow, roughly 30 cm deep\n* A dog runs on the left.',
    ['## Description', '- **Sky:** clear and blue', '- **Ground:** covered in snow, roughly 30 cm deep',
      '* A dog runs on the left.'],
  ],
  [
    'A sign reads "Open 9 a.m. to 5 p.m." The clock on the wall shows 3:45 p.m. Dr. Lee stands next to it.',
    ['A sign reads "Open 9 a.m. to 5 p.m."', 'The clock on the wall shows 3:45 p.m.', 'Dr. Lee stands next to it.'],
  ],
  [
    'The price tag says $12.99, which is 15% off. Is this a grocery store? It looks like one... The shelves hold fruit, vegetables, bread, etc. The lighting is bright!',
    ['The price tag says $12.99, which is 15% off.', 'Is this a grocery store?', 'It looks like one...',
      'The shelves hold fruit, vegetables, bread, etc.', 'The lighting is bright!'],
  ],
  [
    'The screenshot shows a file named report_v2.pdf and the URL https://example.org/docs/index.html. ' +
      'There is no visible e-mail address such as info@example.org. The window title is "Untitled"',
    ['The screenshot shows a file named report_v2.pdf and the URL https://example.org/docs/index.html.',
      'There is no visible e-mail address such as info@example.org.', 'The window title is "Untitled"'],
  ],
  [
    'A man (possibly a chef) is cutting vegetables. (He wears a white hat.) Behind him is a stove',
    ['A man (possibly a chef) is cutting vegetables.', '(He wears a white hat.)', 'Behind him is a stove'],
  ],
  [
    'Key objects: a) a cat on the sofa b) a lamp c) a bookshelf with approx. 40 books',
    ['Key objects:', 'a) a cat on the sofa', 'b) a lamp', 'c) a bookshelf with approx. 40 books'],
  ],
  [
    'The street sign says "Main St." and the building is the U.S. Post Office. The flag is at half-mast.',
    ['The street sign says "Main St." and the building is the U.S. Post Office.', 'The flag is at half-mast.'],
  ],
  [
    'The photo was taken in Washington, D.C. on Jan. 5. The Washington Monument (169 m) dominates the skyline',
    ['The photo was taken in Washington, D.C. on Jan. 5.', 'The Washington Monument (169 m) dominates the skyline'],
  ],
  [
    'The text on the board is partially visible and it\nwraps onto a second line. The board hangs on a wall.',
    ['The text on the board is partially visible and it\nwraps onto a second line.', 'The board hangs on a wall.'],
  ],
  [
    '**Color.** The cat is grey. **Pose:** it sat. Then it slept on Sat. Jan. 5 in the sun. The sun was warm.',
    ['**Color.**', 'The cat is grey.', '**Pose:** it sat.', 'Then it slept on Sat. Jan. 5 in the sun.', 'The sun was warm.'],
  ],
  [
    'The answer is B. The label says "vitamin C." Why? Because the U.S. Food and Drug Administration requires it.',
    ['The answer is B.', 'The label says "vitamin C."', 'Why?', 'Because the U.S. Food and Drug Administration requires it.'],
  ],
  [
    'The bottle holds 0.5 l. It costs 2.50 €. See Fig. 2 for details.',
    ['The bottle holds 0.5 l.', 'It costs 2.50 €.', 'See Fig. 2 for details.'],
  ],
];

test('MLLM-style descriptions split as expected', () => {
  for (const [input, expected] of DESCRIPTIONS) assert.deepEqual(texts(input), expected, input);
});

/** Cases whose sentences differ from the expected ones, as readable lines. */
function misses(cases: readonly SegmentCase[]): string[] {
  const out: string[] = [];
  for (const [input, expected] of cases) {
    const got = texts(input);
    if (JSON.stringify(got) !== JSON.stringify(expected)) out.push(`${JSON.stringify(input)}\n    got ${JSON.stringify(got)}`);
  }
  return out;
}

for (const [kind, cases] of Object.entries(DEVELOPMENT)) {
  test(`boundary kind "${kind}": all ${cases.length} development cases split as expected`, () => {
    assert.deepEqual(misses(cases), []);
  });
}

test('boundary kinds: at least 95% exact on the check set the rules were not written against', () => {
  const all = Object.values(CHECK).flat();
  const missed = misses(all);
  if (missed.length > 0) console.log(`check-set misses (${missed.length}/${all.length}):\n${missed.join('\n')}`);
  assert.ok(all.length >= 60, 'the check set is large enough to measure 95%');
  assert.ok((all.length - missed.length) / all.length >= 0.95, `${all.length - missed.length}/${all.length} exact`);
});

test('offsets are UTF-16 string indices, also after emoji, CJK and combining marks', () => {
  const input = '  🐱 The cat sits. 猫が座っている。Café\u0301 au lait is served! 👍🏽 Done  ';
  const sentences = segment(input);
  assertSpans(input, sentences);
  assert.deepEqual(sentences.map((s) => s.text),
    ['🐱 The cat sits.', '猫が座っている。', 'Café\u0301 au lait is served!', '👍🏽 Done']);
  assert.equal(sentences[0]!.start, 2);
  assert.equal(sentences[0]!.end, 2 + 2 + ' The cat sits.'.length);
  assert.equal(sentences[3]!.end, input.length - 2);
});

test('text without terminal punctuation is one sentence; blank input gives none', () => {
  assert.deepEqual(texts('a photo of a cat sitting on a mat'), ['a photo of a cat sitting on a mat']);
  assert.deepEqual(texts(''), []);
  assert.deepEqual(texts(' \n\t\n '), []);
});

test('line breaks end sentences; blank lines and CRLF too', () => {
  assert.deepEqual(texts('Title\r\n\r\nFirst line.\r\nSecond line'), ['Title', 'First line.', 'Second line']);
  assert.deepEqual(texts('# Heading\nbody text continues here.'), ['# Heading', 'body text continues here.']);
});

test('mid-sentence numbers, decimals and versions do not split', () => {
  assert.deepEqual(texts('Version 2.0.1 was released in 2021. It added 3.5x speed.'),
    ['Version 2.0.1 was released in 2021.', 'It added 3.5x speed.']);
  assert.deepEqual(texts('The scores were 1. 2 was not reached.'), ['The scores were 1.', '2 was not reached.']);
});

test('span contract holds on random punctuation-heavy text', () => {
  const alphabet = ['a', 'B', 'I', ' ', ' ', '.', '.', '?', '!', '…', '"', "'", '(', ')', '[', ']', '\n', '\r\n', '1', '2',
    '•', '-', '*', '#', 'Mr', 'U.S.', 'e.g.', ' . . . ', '😀', '猫', '。', 'é', '\u0301', '\t', 'a)', 'b.',
    '[4]', '．', '(ii)', ' -- ', '¹', 'Rs.', '"', "'", '23 ', 'p.m.', 'Q.', '１'];
  let seed = 12345;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let n = 0; n < 3000; n++) {
    const length = Math.floor(next() * 40);
    const input = Array.from({ length }, () => alphabet[Math.floor(next() * alphabet.length)]).join('');
    assertSpans(input, segment(input));
  }
});
