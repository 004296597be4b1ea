/**
 * Turning one dataset row, in any of the supported layouts, into preference pairs.
 * Pure functions: no file, image or store access here.
 */

/** Where a pair's image comes from, before it is read and validated. */
export type ImageRef =
  | { kind: 'path'; path: string }
  | { kind: 'bytes'; bytes: Uint8Array; path?: string }
  | { kind: 'url'; url: string };

export type Side = 'chosen' | 'rejected';

/** A labelled character span of a response (UTF-16 offsets, end exclusive). */
export interface SpanLabel {
  side: Side;
  start: number;
  end: number;
  label: string;
}

/** One preference pair as read from a row, before its image is resolved. */
export interface RawPair {
  prompt: string;
  chosen: string;
  rejected: string;
  image?: ImageRef;
  labels: SpanLabel[];
  meta: Record<string, unknown>;
}

/** What a row turned into: its pairs, and anything worth counting that is not an error. */
export interface RowResult {
  pairs: RawPair[];
  /** VLFeedback-style rows whose best and worst ratings tie produce no pair. */
  tie?: boolean;
}

/** A row that cannot be ingested, with the field to blame. */
export class RowError extends Error {
  constructor(readonly field: string | null, reason: string) {
    super(reason);
  }
}

export const ROW_LAYOUTS = ['trl', 'rlaif-v', 'llava', 'ha-dpo', 'rated', 'labelled-response'] as const;
export type RowLayout = (typeof ROW_LAYOUTS)[number];

export interface RowOptions {
  /** Read the image from this field instead of the usual ones (image, images, image_path). */
  imageField?: string;
}

type Obj = Record<string, unknown>;

const isObject = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);

const PROMPT_FIELDS = ['prompt', 'question', 'instruction', 'query'] as const;
const IMAGE_FIELDS = ['images', 'image', 'image_path'] as const;
const SPAN_FIELDS = ['inaccurate_spans', 'hallucination_spans', 'spans'] as const;

/** Which layout a row is in, judged by its fields. */
export function detectLayout(row: unknown): RowLayout {
  if (!isObject(row)) throw new RowError(null, `row is ${describe(row)}, expected a JSON object`);
  if ('conversations' in row && 'rejected_conversations' in row) return 'llava';
  if ('completions' in row) return 'rated';
  if (typeof row.text === 'string' && !('chosen' in row)) return 'rlaif-v';
  if ('response' in row && SPAN_FIELDS.some((f) => f in row)) return 'labelled-response';
  if (Array.isArray(row.chosen) && Array.isArray(row.rejected) &&
      (row.chosen as unknown[]).every((c) => typeof c === 'string') && (row.rejected as unknown[]).every((c) => typeof c === 'string')) {
    return 'ha-dpo';
  }
  if ('question' in row && !('prompt' in row)) return 'rlaif-v';
  if ('chosen' in row || 'rejected' in row || 'prompt' in row) return 'trl';
  throw new RowError(null, `unrecognised row layout (fields: ${Object.keys(row).slice(0, 12).join(', ')}); ` +
    `expected prompt/chosen/rejected, question/chosen/rejected, conversations/rejected_conversations, completions, or response with spans`);
}

/** Reads one row in the given layout (or the detected one) into pairs. Throws RowError. */
export function readRow(row: unknown, layout: RowLayout | 'auto' = 'auto', options: RowOptions = {}): RowResult {
  const kind = layout === 'auto' ? detectLayout(row) : layout;
  if (!isObject(row)) throw new RowError(null, `row is ${describe(row)}, expected a JSON object`);
  switch (kind) {
    case 'trl': return { pairs: [readTrl(row, options)] };
    case 'rlaif-v': return { pairs: [readRlaifV(row, options)] };
    case 'llava': return { pairs: [readLlava(row, options)] };
    case 'ha-dpo': return { pairs: readHaDpo(row, options) };
    case 'rated': return readRated(row, options);
    case 'labelled-response': return { pairs: [readLabelledResponse(row, options)] };
  }
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Uint8Array) return 'binary data';
  return `a ${typeof value}`;
}

/** A required non-empty string field. */
function text(row: Obj, field: string): string {
  const value = row[field];
  if (value === undefined || value === null) throw new RowError(field, `field "${field}" is missing`);
  if (typeof value !== 'string') throw new RowError(field, `field "${field}" is ${describe(value)}, expected a string`);
  if (value.trim() === '') throw new RowError(field, `field "${field}" is empty`);
  return value;
}

function firstPresent(row: Obj, fields: readonly string[]): string | undefined {
  return fields.find((f) => row[f] !== undefined && row[f] !== null);
}

/** Image placeholders are model-specific: the image is stored separately, so the prompt keeps only the words. */
export function stripImageTokens(prompt: string): string {
  return prompt.replace(/<image>\s*/g, '').trim();
}

function promptOf(row: Obj): string {
  const field = firstPresent(row, PROMPT_FIELDS);
  if (!field) throw new RowError('prompt', `field "prompt" is missing (also looked for ${PROMPT_FIELDS.slice(1).join(', ')})`);
  const value = row[field];
  const prompt = Array.isArray(value) ? messagesText(value, field, 'user') : text(row, field);
  const stripped = stripImageTokens(prompt);
  if (!stripped) throw new RowError(field, `field "${field}" is empty`);
  return stripped;
}

/** The text of a conversational message list (TRL): the messages of `role`, their text parts joined. */
function messagesText(messages: unknown[], field: string, role: string): string {
  const parts: string[] = [];
  for (const [i, message] of messages.entries()) {
    if (!isObject(message)) throw new RowError(field, `field "${field}"[${i}] is ${describe(message)}, expected a message object`);
    if (message.role !== undefined && message.role !== role) continue;
    const content = message.content;
    if (typeof content === 'string') parts.push(content);
    else if (Array.isArray(content)) {
      for (const part of content) {
        if (isObject(part) && part.type === 'text' && typeof part.text === 'string') parts.push(part.text);
      }
    } else throw new RowError(field, `field "${field}"[${i}].content is ${describe(content)}, expected a string or a list of parts`);
  }
  const joined = parts.join('\n');
  if (!joined.trim()) throw new RowError(field, `field "${field}" has no ${role} text`);
  return joined;
}

function response(row: Obj, field: string): string {
  const value = row[field];
  return Array.isArray(value) ? messagesText(value, field, 'assistant') : text(row, field);
}

/** An image reference from a field value: a path, a data: URI, a URL, bytes, or a {bytes, path} struct. */
export function imageRef(value: unknown, field: string): ImageRef | undefined {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) {
    const present = value.filter((v) => v !== null && v !== undefined);
    if (present.length > 1) throw new RowError(field, `field "${field}" holds ${present.length} images; one image per pair is supported`);
    return imageRef(present[0], field);
  }
  if (value instanceof Uint8Array) return value.length ? { kind: 'bytes', bytes: value } : undefined;
  if (typeof value === 'string') {
    if (value === '') return undefined;
    if (value.startsWith('data:')) return { kind: 'bytes', bytes: dataUriBytes(value, field) };
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return { kind: 'url', url: value };
    return { kind: 'path', path: value };
  }
  if (isObject(value)) {
    const bytes = value.bytes;
    const path = typeof value.path === 'string' && value.path !== '' ? value.path : undefined;
    if (bytes instanceof Uint8Array && bytes.length) return { kind: 'bytes', bytes, path };
    if (typeof bytes === 'string' && bytes !== '') return { kind: 'bytes', bytes: Buffer.from(bytes, 'base64'), path };
    if (path) return imageRef(path, field);
    throw new RowError(field, `field "${field}" is an object without "bytes" or "path"`);
  }
  throw new RowError(field, `field "${field}" is ${describe(value)}, expected a path, data: URI, bytes or {bytes, path}`);
}

function dataUriBytes(uri: string, field: string): Uint8Array {
  const match = /^data:([^;,]*)(;base64)?,(.*)$/s.exec(uri);
  if (!match) throw new RowError(field, `field "${field}" is a malformed data: URI`);
  return match[2] ? Buffer.from(match[3]!, 'base64') : Buffer.from(decodeURIComponent(match[3]!), 'latin1');
}

function imageOf(row: Obj, options: RowOptions): ImageRef | undefined {
  if (options.imageField) return imageRef(row[options.imageField], options.imageField);
  const field = firstPresent(row, IMAGE_FIELDS);
  return field ? imageRef(row[field], field) : undefined;
}

/** Optional `chosen_spans` / `rejected_spans`: [{start, end, label, text?}] into the response. */
function spansOf(row: Obj, field: string, side: Side, responseText: string, defaultLabel?: string): SpanLabel[] {
  const value = row[field];
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new RowError(field, `field "${field}" is ${describe(value)}, expected a list of spans`);
  return value.map((span, i) => {
    const where = `${field}[${i}]`;
    if (!isObject(span)) throw new RowError(field, `${where} is ${describe(span)}, expected {start, end, label}`);
    const { start, end } = span;
    if (!Number.isInteger(start) || !Number.isInteger(end)) throw new RowError(field, `${where}: start and end must be integers`);
    const s = start as number;
    const e = end as number;
    if (s < 0 || e < s || e > responseText.length) {
      throw new RowError(field, `${where}: span [${s}, ${e}) is outside the ${side} response (length ${responseText.length})`);
    }
    if (typeof span.text === 'string' && responseText.slice(s, e) !== span.text) {
      throw new RowError(field, `${where}: text ${JSON.stringify(span.text.slice(0, 40))} does not match the response at [${s}, ${e})`);
    }
    const label = typeof span.label === 'string' && span.label !== '' ? span.label : defaultLabel;
    if (label === undefined) throw new RowError(field, `${where}: "label" is missing`);
    return { side, start: s, end: e, label };
  });
}

/** Fields of the row that are not consumed as content travel along as metadata. */
function metaOf(row: Obj, consumed: readonly string[]): Obj {
  const meta: Obj = {};
  for (const [key, value] of Object.entries(row)) {
    if (consumed.includes(key) || value instanceof Uint8Array) continue;
    if (key === 'meta' && isObject(value)) Object.assign(meta, value);
    else if (typeof value !== 'object' || value === null) meta[key] = value;
  }
  return meta;
}

const CONSUMED = [...PROMPT_FIELDS, ...IMAGE_FIELDS, 'chosen', 'rejected', 'chosen_spans', 'rejected_spans'];

function readTrl(row: Obj, options: RowOptions): RawPair {
  const prompt = promptOf(row);
  const chosen = response(row, 'chosen');
  const rejected = response(row, 'rejected');
  return {
    prompt, chosen, rejected, image: imageOf(row, options),
    labels: [...spansOf(row, 'chosen_spans', 'chosen', chosen), ...spansOf(row, 'rejected_spans', 'rejected', rejected)],
    meta: metaOf(row, [...CONSUMED, options.imageField ?? '']),
  };
}

/** RLAIF-V (`question`, `chosen`, `rejected`, `image`) and RLHF-V (the three texts as JSON inside `text`). */
function readRlaifV(row: Obj, options: RowOptions): RawPair {
  if (typeof row.text === 'string' && !('chosen' in row)) {
    let inner: unknown;
    try {
      inner = JSON.parse(row.text);
    } catch (error) {
      throw new RowError('text', `field "text" is not valid JSON: ${(error as Error).message}`);
    }
    if (!isObject(inner)) throw new RowError('text', `field "text" holds ${describe(inner)}, expected an object with question, chosen, rejected`);
    const merged = { ...row, ...inner };
    delete merged.text;
    return readTrl(merged, options);
  }
  return readTrl(row, options);
}

/** LLaVA conversations (POVID): the last human turn is the prompt; the last gpt turns are chosen and rejected. */
function readLlava(row: Obj, options: RowOptions): RawPair {
  const turn = (field: string, from: string): string => {
    const list = row[field];
    if (!Array.isArray(list)) throw new RowError(field, `field "${field}" is ${describe(list)}, expected a list of turns`);
    const turns = list.filter((t): t is Obj => isObject(t) && t.from === from);
    const last = turns.at(-1);
    if (!last) throw new RowError(field, `field "${field}" has no "${from}" turn`);
    if (typeof last.value !== 'string' || !last.value.trim()) throw new RowError(field, `field "${field}": the last "${from}" turn has no text`);
    return last.value;
  };
  const prompt = stripImageTokens(turn('conversations', 'human'));
  if (!prompt) throw new RowError('conversations', 'field "conversations": the prompt is empty');
  return {
    prompt,
    chosen: turn('conversations', 'gpt'),
    rejected: turn('rejected_conversations', 'gpt'),
    image: imageOf(row, options),
    labels: [],
    meta: metaOf(row, ['conversations', 'rejected_conversations', ...IMAGE_FIELDS]),
  };
}

/**
 * HA-DPO: `chosen` and `rejected` are lists of answers to one prompt. Pairing rule: the i-th chosen answer goes with
 * the i-th rejected one; when one list is longer, its extra answers are paired with the other list's answers in turn
 * (i modulo its length), so every answer is used and max(n, m) pairs result.
 */
function readHaDpo(row: Obj, options: RowOptions): RawPair[] {
  const prompt = promptOf(row);
  const chosen = (row.chosen as string[]);
  const rejected = (row.rejected as string[]);
  if (!chosen.length) throw new RowError('chosen', 'field "chosen" is an empty list');
  if (!rejected.length) throw new RowError('rejected', 'field "rejected" is an empty list');
  const image = imageOf(row, options);
  const meta = metaOf(row, CONSUMED);
  const n = Math.max(chosen.length, rejected.length);
  return Array.from({ length: n }, (_, i) => {
    const c = chosen[i % chosen.length]!;
    const r = rejected[i % rejected.length]!;
    if (!c.trim()) throw new RowError('chosen', `field "chosen"[${i % chosen.length}] is empty`);
    if (!r.trim()) throw new RowError('rejected', `field "rejected"[${i % rejected.length}] is empty`);
    return { prompt, chosen: c, rejected: r, image, labels: [], meta: { ...meta, pair_index: i } };
  });
}

/** A completion's rating: a number field, or the mean of the `annotations.*.Rating` values (VLFeedback). */
function ratingOf(completion: Obj, i: number): number {
  for (const key of ['rating', 'score', 'overall_score', 'fine_grained_score']) {
    const v = completion[key];
    if (typeof v === 'number' && Number.isFinite(v)) return v;
  }
  if (isObject(completion.annotations)) {
    const ratings = Object.values(completion.annotations)
      .map((a) => (isObject(a) ? Number(a.Rating ?? a.rating) : NaN))
      .filter((v) => Number.isFinite(v));
    if (ratings.length) return ratings.reduce((a, b) => a + b, 0) / ratings.length;
  }
  throw new RowError('completions', `completions[${i}] has no numeric rating (rating, score, or annotations.*.Rating)`);
}

/** Rated completions (VLFeedback): best-rated is chosen, worst-rated is rejected; a tie yields no pair. */
function readRated(row: Obj, options: RowOptions): RowResult {
  const prompt = promptOf(row);
  const list = row.completions;
  if (!Array.isArray(list)) throw new RowError('completions', `field "completions" is ${describe(list)}, expected a list`);
  if (list.length < 2) throw new RowError('completions', `field "completions" has ${list.length} completion(s); at least 2 are needed`);
  const rated = list.map((c, i) => {
    if (!isObject(c)) throw new RowError('completions', `completions[${i}] is ${describe(c)}, expected an object`);
    const textValue = c.response ?? c.text ?? c.completion;
    if (typeof textValue !== 'string' || !textValue.trim()) throw new RowError('completions', `completions[${i}] has no response text`);
    return { text: textValue, rating: ratingOf(c, i), model: typeof c.model === 'string' ? c.model : undefined };
  });
  const best = rated.reduce((a, b) => (b.rating > a.rating ? b : a));
  const worst = rated.reduce((a, b) => (b.rating < a.rating ? b : a));
  if (best.rating === worst.rating) return { pairs: [], tie: true };
  return {
    pairs: [{
      prompt, chosen: best.text, rejected: worst.text, image: imageOf(row, options), labels: [],
      meta: { ...metaOf(row, [...CONSUMED, 'completions', 'models']), chosen_rating: best.rating, rejected_rating: worst.rating,
        chosen_model: best.model, rejected_model: worst.model },
    }],
  };
}

/**
 * A single response with labelled inaccurate spans (M-HalDetect). Pairing rule: rejected = the response as written
 * (its spans become labels), chosen = the response with the labelled spans removed. A response without spans has
 * nothing to prefer and is refused.
 */
function readLabelledResponse(row: Obj, options: RowOptions): RawPair {
  const prompt = promptOf(row);
  const rejected = text(row, 'response');
  const field = SPAN_FIELDS.find((f) => f in row)!;
  const labels = spansOf(row, field, 'rejected', rejected, 'INACCURATE');
  if (!labels.length) throw new RowError(field, `field "${field}" is empty: a response without labelled spans makes no preference pair`);
  const chosen = removeSpans(rejected, labels);
  if (!chosen.trim()) throw new RowError(field, `the labelled spans cover the whole response; nothing is left to prefer`);
  return { prompt, chosen, rejected, image: imageOf(row, options), labels, meta: { ...metaOf(row, [...CONSUMED, 'response', field]), derived: 'span-removal' } };
}

/** The text without the given spans, with the whitespace left around each cut folded to one space. */
export function removeSpans(textValue: string, spans: readonly { start: number; end: number }[]): string {
  const sorted = [...spans].sort((a, b) => a.start - b.start);
  let out = '';
  let at = 0;
  for (const { start, end } of sorted) {
    if (start > at) out += textValue.slice(at, start);
    at = Math.max(at, end);
  }
  out += textValue.slice(at);
  return out.replace(/[ \t]{2,}/g, ' ').replace(/ +([.,;:!?])/g, '$1').trim();
}
