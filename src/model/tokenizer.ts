/**
 * A word-level tokenizer built from the training text, with a character fallback.
 *
 * Text is first cut into pieces: a word or a number with at most one leading space,
 * a single punctuation mark with at most one leading space, or a run of other
 * whitespace. Frequent pieces become single tokens; any other piece is split
 * greedily into the longest vocabulary entries it starts with, down to single
 * characters. Every printable ASCII character is always in the vocabulary, so all
 * ASCII text round-trips; a character never seen in training becomes `<unk>`
 * (its offsets still point at it, decoding gives U+FFFD).
 *
 * Offsets are UTF-16 code unit [start, end) positions into the encoded string, so
 * they index the same JavaScript string the segmenter works on.
 */

export const SPECIAL_TOKENS = ['<pad>', '<bos>', '<eos>', '<unk>'] as const;
export const PAD_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;
export const UNK_ID = 3;

export interface Encoding {
  ids: number[];
  /** [start, end) UTF-16 offsets of each token in the encoded text. */
  offsets: Array<[number, number]>;
}

/** The on-disk form (tokenizer.json in a checkpoint). */
export interface TokenizerJSON {
  type: 'aspo-word';
  version: 1;
  /** Token strings by id; the first entries are SPECIAL_TOKENS. */
  vocab: string[];
}

export interface BuildOptions {
  /** Upper bound on the vocabulary, special tokens and characters included (default 512). */
  vocabSize?: number;
}

const PIECE = / ?[\p{L}\p{M}]+| ?\p{N}+| ?[^\s\p{L}\p{M}\p{N}]|\s+/gu;

/** Cuts text into pieces; concatenating them gives the text back. */
export function pretokenize(text: string): Array<{ piece: string; start: number }> {
  const pieces: Array<{ piece: string; start: number }> = [];
  for (const match of text.matchAll(PIECE)) pieces.push({ piece: match[0], start: match.index });
  return pieces;
}

function asciiAlphabet(): string[] {
  const chars = ['\n', '\t'];
  for (let c = 0x20; c <= 0x7e; c++) chars.push(String.fromCharCode(c));
  return chars;
}

export class Tokenizer {
  private readonly index = new Map<string, number>();
  private readonly maxTokenLength: number;

  private constructor(readonly vocab: readonly string[]) {
    vocab.forEach((token, id) => {
      if (this.index.has(token)) throw new Error(`tokenizer vocabulary has a duplicate entry ${JSON.stringify(token)}`);
      this.index.set(token, id);
    });
    this.maxTokenLength = Math.max(...vocab.slice(SPECIAL_TOKENS.length).map((t) => t.length));
  }

  /** Builds a vocabulary from training text: specials, characters, then the most frequent pieces. */
  static build(texts: Iterable<string>, options: BuildOptions = {}): Tokenizer {
    const cap = options.vocabSize ?? 512;
    const pieceCounts = new Map<string, number>();
    const charCounts = new Map<string, number>();
    for (const text of texts) {
      for (const { piece } of pretokenize(text)) {
        pieceCounts.set(piece, (pieceCounts.get(piece) ?? 0) + 1);
        for (const ch of piece) charCounts.set(ch, (charCounts.get(ch) ?? 0) + 1);
      }
    }
    const byCount = (counts: Map<string, number>) => [...counts.entries()]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map(([s]) => s);
    const vocab: string[] = [...SPECIAL_TOKENS];
    const seen = new Set<string>(vocab);
    const add = (token: string) => {
      if (vocab.length < cap && !seen.has(token)) {
        seen.add(token);
        vocab.push(token);
      }
    };
    const base = asciiAlphabet();
    if (cap < SPECIAL_TOKENS.length + base.length) {
      throw new Error(`vocabSize must be at least ${SPECIAL_TOKENS.length + base.length} (specials and printable ASCII), got ${cap}`);
    }
    base.forEach(add);
    byCount(charCounts).forEach(add);
    byCount(pieceCounts).filter((piece) => piece.length > 1).forEach(add);
    return new Tokenizer(vocab);
  }

  static fromJSON(json: TokenizerJSON): Tokenizer {
    if (json?.type !== 'aspo-word' || json.version !== 1 || !Array.isArray(json.vocab)) {
      throw new Error('tokenizer.json: expected {"type": "aspo-word", "version": 1, "vocab": [...]}');
    }
    SPECIAL_TOKENS.forEach((token, id) => {
      if (json.vocab[id] !== token) throw new Error(`tokenizer.json: vocab[${id}] must be ${token}`);
    });
    return new Tokenizer(json.vocab);
  }

  toJSON(): TokenizerJSON {
    return { type: 'aspo-word', version: 1, vocab: [...this.vocab] };
  }

  get vocabSize(): number {
    return this.vocab.length;
  }

  /** Token ids and UTF-16 offsets of `text` (no BOS/EOS: the model adds those). */
  encode(text: string): Encoding {
    const ids: number[] = [];
    const offsets: Array<[number, number]> = [];
    for (const { piece, start } of pretokenize(text)) {
      const whole = this.index.get(piece);
      if (whole !== undefined) {
        ids.push(whole);
        offsets.push([start, start + piece.length]);
        continue;
      }
      let at = 0;
      while (at < piece.length) {
        let length = Math.min(this.maxTokenLength, piece.length - at);
        let id: number | undefined;
        for (; length > 0; length--) {
          id = this.index.get(piece.slice(at, at + length));
          if (id !== undefined) break;
        }
        if (id === undefined) {
          id = UNK_ID;
          length = piece.codePointAt(at)! > 0xffff ? 2 : 1;
        }
        ids.push(id);
        offsets.push([start + at, start + at + length]);
        at += length;
      }
    }
    return { ids, offsets };
  }

  /** Text of the ids; padding, BOS and EOS are skipped, `<unk>` becomes U+FFFD. */
  decode(ids: readonly number[]): string {
    let text = '';
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocab.length) throw new Error(`token id ${id} is outside the vocabulary (size ${this.vocab.length})`);
      if (id === UNK_ID) text += '\uFFFD';
      else if (id >= SPECIAL_TOKENS.length) text += this.vocab[id];
    }
    return text;
  }
}
