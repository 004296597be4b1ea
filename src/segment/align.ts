/**
 * Token alignment: which sentence of the response each token of `prompt + response` belongs to.
 */
import path from 'node:path';
import type { PreTrainedTokenizer } from '@huggingface/transformers';
import { segment } from './segment.js';

/** A tokenizer that reports, per token, the UTF-16 span [start, end) it covers in the string it encoded. */
export interface OffsetTokenizer {
  encode(text: string): { ids: number[]; offsets: Array<[number, number]> };
}

export interface Span {
  start: number;
  end: number;
}

/**
 * Sentence index per token: the sentence holding the token's first non-whitespace character, or -1 (prompt tokens,
 * whitespace between sentences, special tokens with empty spans). `sentences` are offsets into the response, which
 * starts at `responseStart` in `text`; they must be in order and non-overlapping, as `segment` returns them.
 */
export function alignTokens(text: string, offsets: ReadonlyArray<readonly [number, number]>, sentences: readonly Span[],
  responseStart = 0): number[] {
  return offsets.map(([start, end]) => {
    let p = start;
    while (p < end && isWhitespace(text.charCodeAt(p))) p++;
    if (p >= end) return -1;
    return sentenceAt(sentences, p - responseStart);
  });
}

/** Binary search for the sentence with start <= at < end. */
function sentenceAt(sentences: readonly Span[], at: number): number {
  let lo = 0;
  let hi = sentences.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const s = sentences[mid]!;
    if (at < s.start) hi = mid - 1;
    else if (at >= s.end) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/** Per sentence, the tokens [first, end) assigned to it, or null when no token starts inside it. */
export function sentenceTokenSpans(sentenceIds: readonly number[], sentenceCount: number): Array<[number, number] | null> {
  const spans: Array<[number, number] | null> = new Array(sentenceCount).fill(null);
  sentenceIds.forEach((k, t) => {
    if (k < 0) return;
    const span = spans[k];
    if (span) span[1] = t + 1;
    else spans[k] = [t, t + 1];
  });
  return spans;
}

export interface SentenceEncoding {
  ids: number[];
  offsets: Array<[number, number]>;
  /** Per token, the response sentence it belongs to, or -1. */
  sentenceIds: number[];
  /** The sentences of the response (offsets into `response`). */
  sentences: Span[];
  /** Where the response starts in `prompt + response`. */
  responseStart: number;
}

/** Tokenizes `prompt + response` as one string, as trainers do, and labels each token with its response sentence. */
export function encodeWithSentences(tokenizer: OffsetTokenizer, prompt: string, response: string,
  sentences: readonly Span[] = segment(response)): SentenceEncoding {
  const text = prompt + response;
  const { ids, offsets } = tokenizer.encode(text);
  if (ids.length !== offsets.length) throw new Error(`tokenizer returned ${ids.length} ids but ${offsets.length} offsets`);
  return { ids, offsets, sentenceIds: alignTokens(text, offsets, sentences, prompt.length), sentences: [...sentences], responseStart: prompt.length };
}

function isWhitespace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d) || c === 0xa0 || c === 0x3000 || c === 0x2028 || c === 0x2029 ||
    (c >= 0x2000 && c <= 0x200a) || c === 0x202f || c === 0x205f || c === 0x1680 || c === 0xfeff;
}

// ---------------------------------------------------------------------------------------------------------------
// Hugging Face tokenizers (@huggingface/transformers). Its encode() gives ids and token strings but no offsets, so
// the offsets are recovered by decoding each token string to the characters it stands for and matching those
// characters against the input, tolerating what tokenizers change on the way: inserted prefix spaces (Metaspace,
// add_prefix_space), lower-casing and accent stripping (BERT), dropped whitespace (WordPiece), byte-level BPE and
// byte-fallback tokens that split one character across several tokens.

/** What a token stands for, in input order. */
type Piece =
  | { kind: 'char'; char: string; first: number; last: number } // tokens first..last together make this character
  // An added token (e.g. "<image>"): its literal text if the input has it here; else the unknown token, or nothing.
  | { kind: 'literal'; text: string; token: number; unknown: boolean }
  | { kind: 'unknown'; token: number }; // the unknown token: covers a word (WordPiece) or one character

interface TokenizerTraits {
  byteLevel: boolean;
  wordPiece: boolean;
  continuingPrefix: string;
  endOfWordSuffix: string;
  byteFallback: boolean;
}

/**
 * Wraps a tokenizer from `@huggingface/transformers` as an OffsetTokenizer. `addSpecialTokens` (default true) is
 * passed to encode: BOS/CLS/SEP tokens get empty spans and so sentence id -1.
 */
export function hfOffsetTokenizer(tokenizer: PreTrainedTokenizer, options: { addSpecialTokens?: boolean } = {}): OffsetTokenizer {
  const json = tokenizer._tokenizerJSON as { model?: Record<string, unknown>; pre_tokenizer?: unknown; decoder?: unknown };
  const model = json.model ?? {};
  const traits: TokenizerTraits = {
    byteLevel: /"type":"ByteLevel"/.test(JSON.stringify([json.pre_tokenizer ?? null, json.decoder ?? null])),
    wordPiece: model.type === 'WordPiece',
    continuingPrefix: typeof model.continuing_subword_prefix === 'string' ? model.continuing_subword_prefix
      : model.type === 'WordPiece' ? '##' : '',
    endOfWordSuffix: typeof model.end_of_word_suffix === 'string' ? model.end_of_word_suffix : '',
    byteFallback: model.byte_fallback === true,
  };
  const added = new Set<string>([...tokenizer._tokenizer.get_added_tokens_decoder().values()].map((t) => t.content));
  const unknownId = tokenizer.unk_token_id;
  const addSpecialTokens = options.addSpecialTokens ?? true;
  return {
    encode(text) {
      const { ids, tokens } = tokenizer._tokenizer.encode(text, { add_special_tokens: addSpecialTokens });
      const pieces = tokenPieces(tokens, ids, traits, added, unknownId);
      return { ids, offsets: matchPieces(text, pieces, tokens.length, traits.wordPiece) };
    },
  };
}

/** Loads a tokenizer folder (tokenizer.json + tokenizer_config.json) offline and wraps it as an OffsetTokenizer. */
export async function loadHfOffsetTokenizer(folder: string, options: { addSpecialTokens?: boolean } = {}): Promise<OffsetTokenizer> {
  const { AutoTokenizer, env } = await import('@huggingface/transformers');
  const saved = { allowRemoteModels: env.allowRemoteModels, allowLocalModels: env.allowLocalModels, localModelPath: env.localModelPath };
  const absolute = path.resolve(folder);
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = path.dirname(absolute) + path.sep;
  try {
    const tokenizer = await AutoTokenizer.from_pretrained(path.basename(absolute), { local_files_only: true });
    return hfOffsetTokenizer(tokenizer, options);
  } catch (error) {
    throw new Error(`cannot load tokenizer from ${absolute} (needs tokenizer.json and tokenizer_config.json): ${(error as Error).message}`);
  } finally {
    Object.assign(env, saved);
  }
}

/** GPT-2's byte-level alphabet, reversed: the printable character standing for each byte. */
const BYTE_OF_CHAR: ReadonlyMap<string, number> = (() => {
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    map.set(String.fromCodePoint(printable ? b : 256 + extra++), b);
  }
  return map;
})();

const BYTE_FALLBACK = /^<0x([0-9A-Fa-f]{2})>$/;
const WORD_CHAR = /^[\p{L}\p{N}\p{M}]+$/u;

/** Turns token strings into the characters they stand for, remembering which tokens make each character. */
function tokenPieces(tokens: readonly string[], ids: readonly number[], traits: TokenizerTraits,
  added: ReadonlySet<string>, unknownId: number | undefined): Piece[] {
  const pieces: Piece[] = [];
  const utf8 = new Utf8Assembler();
  const pushChars = (chars: string, token: number) => {
    for (const char of chars) pieces.push({ kind: 'char', char, first: token, last: token });
  };
  tokens.forEach((token, t) => {
    const unknown = unknownId !== undefined && ids[t] === unknownId;
    if (added.has(token)) {
      pieces.push({ kind: 'literal', text: token, token: t, unknown });
      return;
    }
    if (unknown) {
      pieces.push({ kind: 'unknown', token: t });
      return;
    }
    if (traits.byteLevel) {
      for (const ch of token) {
        const byte = BYTE_OF_CHAR.get(ch);
        if (byte === undefined) pushChars(ch, t);
        else utf8.push(byte, t, pieces);
      }
      return;
    }
    const fallback = traits.byteFallback ? BYTE_FALLBACK.exec(token) : null;
    if (fallback) {
      utf8.push(parseInt(fallback[1]!, 16), t, pieces);
      return;
    }
    let surface = token;
    if (traits.continuingPrefix && surface.startsWith(traits.continuingPrefix) && surface.length > traits.continuingPrefix.length) {
      surface = surface.slice(traits.continuingPrefix.length);
    }
    if (traits.endOfWordSuffix && surface.endsWith(traits.endOfWordSuffix)) surface = surface.slice(0, -traits.endOfWordSuffix.length);
    pushChars(surface.replaceAll('▁', ' '), t);
  });
  return pieces;
}

/** Collects UTF-8 bytes spread over tokens into characters. */
class Utf8Assembler {
  private bytes: number[] = [];
  private firstToken = 0;
  private needed = 0;

  push(byte: number, token: number, out: Piece[]): void {
    if (this.bytes.length === 0) {
      this.firstToken = token;
      this.needed = byte < 0x80 ? 1 : byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    }
    this.bytes.push(byte);
    if (this.bytes.length < this.needed) return;
    const char = Buffer.from(this.bytes).toString('utf8');
    for (const c of char) out.push({ kind: 'char', char: c, first: this.firstToken, last: token });
    this.bytes = [];
  }
}

/** Matches pieces against `text` in order and returns each token's [start, end) (empty at the cursor if unmatched). */
function matchPieces(text: string, pieces: readonly Piece[], tokenCount: number, wordPiece: boolean): Array<[number, number]> {
  const starts = new Array<number>(tokenCount).fill(-1);
  const ends = new Array<number>(tokenCount).fill(-1);
  let pos = 0;
  const cover = (first: number, last: number, from: number, to: number) => {
    for (let t = first; t <= last; t++) {
      if (starts[t] === -1) {
        starts[t] = from;
        ends[t] = to;
      } else {
        starts[t] = Math.min(starts[t]!, from);
        ends[t] = Math.max(ends[t]!, to);
      }
    }
  };
  for (let k = 0; k < pieces.length; k++) {
    const piece = pieces[k]!;
    if (piece.kind === 'literal') {
      const at = skipWhitespace(text, pos);
      if (text.startsWith(piece.text, at)) {
        cover(piece.token, piece.token, at, at + piece.text.length);
        pos = at + piece.text.length;
        continue;
      }
      if (!piece.unknown) {
        cover(piece.token, piece.token, pos, pos);
        continue;
      }
    }
    if (piece.kind !== 'char') {
      const at = skipWhitespace(text, pos);
      let to = at;
      // WordPiece replaces a whole word (pre-tokenizers split at spaces and punctuation); BPE one character.
      if (to < text.length) to += codePointLength(text, to);
      if (wordPiece && WORD_CHAR.test(text.slice(at, to))) while (to < text.length && WORD_CHAR.test(text[to]!)) to++;
      cover(piece.token, piece.token, at, to);
      pos = to;
      continue;
    }
    const { char, first, last } = piece;
    if (isWhitespace(char.charCodeAt(0))) {
      // A space the tokenizer added (Metaspace prefix, add_prefix_space) matches nothing.
      if (pos < text.length && isWhitespace(text.charCodeAt(pos))) {
        cover(first, last, pos, pos + 1);
        pos++;
      } else cover(first, last, pos, pos);
      continue;
    }
    const at = findChar(text, skipWhitespace(text, pos), char);
    if (at < 0) {
      cover(first, last, pos, pos);
      continue;
    }
    let to = at + codePointLength(text, at);
    // Combining marks the tokenizer stripped (BERT's accent stripping) stay with their base character.
    const next = pieces[k + 1];
    while (to < text.length && /\p{M}/u.test(text[to]!) && !(next?.kind === 'char' && next.char === text[to])) to++;
    cover(first, last, at, to);
    pos = to;
  }
  // A token that stands for no character at all sits where the previous token ended.
  let previousEnd = 0;
  return starts.map((s, t) => {
    const span: [number, number] = s === -1 ? [previousEnd, previousEnd] : [s, ends[t]!];
    previousEnd = span[1];
    return span;
  });
}

/** Where `char` matches at or shortly after `from` (case and accents aside), or -1. */
function findChar(text: string, from: number, char: string): number {
  const target = fold(char);
  const limit = Math.min(text.length, from + 32);
  for (let at = from; at < limit; at += codePointLength(text, at)) {
    if (fold(String.fromCodePoint(text.codePointAt(at)!)) === target) return at;
  }
  return -1;
}

function fold(char: string): string {
  if (char.length === 1 && char.charCodeAt(0) < 0x80) return char.toLowerCase();
  return char.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase();
}

function skipWhitespace(text: string, pos: number): number {
  while (pos < text.length && isWhitespace(text.charCodeAt(pos))) pos++;
  return pos;
}

function codePointLength(text: string, at: number): number {
  const c = text.charCodeAt(at);
  return c >= 0xd800 && c <= 0xdbff && at + 1 < text.length ? 2 : 1;
}
