import { RELATIONS, type Claim, type ClaimKind } from './claims.js';
import { COLOUR_NAMES, COLUMNS, ROWS, SHAPES, SIZES, type Column, type Row, type Shape } from './world.js';

/**
 * Sentence templates: one table serves both directions — rendering a claim as text, and parsing text (e.g. a
 * model's generation) back into a claim for the judge. Text is lower case without the final full stop;
 * `{slot}`s are filled from the claim's fields:
 *   colour shape colour2 shape2 size row column relation — the field itself
 *   n / d — the count as a word / in digits;  be, objects, shapes — agree with n ("is one object", "are 2 circles")
 *   cell — row and column as one phrase ("top left", "centre");  nsize — the other size
 *   a, a2 — "a" or "an", whichever the next word needs
 */
export interface Template {
  id: string;
  kind: ClaimKind;
  text: string;
}

const TEXTS: Record<ClaimKind, string[]> = {
  count: [
    'there {be} {n} {objects} in the image',
    'the image shows {n} {objects}',
    'in total, {d} {objects} {be} visible',
    'i can see {n} {objects} in total',
    'the picture contains exactly {n} {objects}',
  ],
  shape_count: [
    'there {be} {n} {shapes} in the image',
    'the image contains {n} {shapes}',
    'i count {d} {shapes}',
  ],
  colour_count: [
    'there {be} {n} {colour} {objects}',
    'exactly {n} of the objects {be} {colour}',
  ],
  exists: [
    'there is {a} {colour} {shape}',
    'the image contains {a} {colour} {shape}',
    '{a} {colour} {shape} is visible',
    'one of the objects is {a} {colour} {shape}',
    'i can see {a} {colour} {shape}',
  ],
  exists_sized: [
    'there is {a} {size} {colour} {shape}',
    'the image contains {a} {size} {colour} {shape}',
    'one of the shapes is {a} {size} {colour} {shape}',
  ],
  size: [
    'the {colour} {shape} is {size}',
    'the {colour} {shape} is quite {size}',
    'the {colour} {shape} is {size}, i.e. not {nsize}',
    'in size, the {colour} {shape} is {size}',
  ],
  cell: [
    'the {colour} {shape} is in the {cell} of the image',
    'the {colour} {shape} is located at the {cell}',
    'the {colour} {shape} sits approx. at the {cell}',
    'you can find the {colour} {shape} at the {cell}',
  ],
  row: [
    'the {colour} {shape} is in the {row} row',
    'the {colour} {shape} appears in the {row} row of the image',
  ],
  column: [
    'the {colour} {shape} is in the {column} column',
    'the {colour} {shape} is placed in the {column} column of the image',
  ],
  colour_of: [
    'the {shape} is {colour}',
    'the colour of the {shape} is {colour}',
    'the {shape} is coloured {colour}',
  ],
  shape_of: [
    'the {colour} object is {a} {shape}',
    'the {colour} shape is {a} {shape}',
  ],
  relation: [
    'the {colour} {shape} is {relation} the {colour2} {shape2}',
    'the {colour} {shape} lies {relation} the {colour2} {shape2}',
  ],
  examples: [
    'there are several shapes, e.g. {a} {colour} {shape} and {a2} {colour2} {shape2}',
    'the image contains various shapes, e.g. {a} {colour} {shape} and {a2} {colour2} {shape2}',
  ],
};

export const TEMPLATES: readonly Template[] = (Object.keys(TEXTS) as ClaimKind[])
  .flatMap((kind) => TEXTS[kind].map((text, i) => ({ id: `${kind}.${i + 1}`, kind, text })));

export function templatesFor(kind: ClaimKind): Template[] {
  return TEMPLATES.filter((t) => t.kind === kind);
}

const NUMBER_WORDS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'];

export function plural(shape: Shape): string {
  return shape === 'cross' ? 'crosses' : `${shape}s`;
}

export function cellPhrase(row: Row, column: Column): string {
  if (row === 'middle' && column === 'middle') return 'centre';
  return `${row} ${column}`;
}

const CELLS = ROWS.flatMap((row) => COLUMNS.map((column) => ({ row, column, phrase: cellPhrase(row, column) })));
const ARTICLE = '\u0001';

function slotValue(slot: string, claim: Claim): string {
  const c = claim as Partial<Record<string, string | number>>;
  const n = c.n as number;
  switch (slot) {
    case 'n': return NUMBER_WORDS[n]!;
    case 'd': return String(n);
    case 'be': return n === 1 ? 'is' : 'are';
    case 'objects': return n === 1 ? 'object' : 'objects';
    case 'shapes': return n === 1 ? String(c.shape) : plural(c.shape as Shape);
    case 'cell': return cellPhrase(c.row as Row, c.column as Column);
    case 'nsize': return c.size === 'small' ? 'large' : 'small';
    case 'a': case 'a2': return ARTICLE;
    default: {
      const value = c[slot];
      if (value === undefined) throw new Error(`template slot {${slot}} has no value in a ${claim.kind} claim`);
      return String(value);
    }
  }
}

/** The sentence for a claim in the given template's wording: capitalised, ending with a full stop. */
export function renderClaim(claim: Claim, template: Template): string {
  if (template.kind !== claim.kind) throw new Error(`template ${template.id} cannot render a ${claim.kind} claim`);
  const text = template.text
    .replace(/\{(\w+)\}/g, (_, slot: string) => slotValue(slot, claim))
    .replace(new RegExp(`${ARTICLE} (\\w)`, 'g'), (_, letter: string) => `${/[aeiou]/.test(letter) ? 'an' : 'a'} ${letter}`);
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;
}

/** Lower case, single spaces, without list markers or the final full stop: the form templates are matched in. */
export function normaliseSentence(sentence: string): string {
  return sentence
    .toLowerCase()
    .replace(/\s+/g, ' ')
    .trim()
    .replace(/^(?:\d+[.)]|[-*•])\s+/, '')
    .replace(/\s*[.!]+$/, '');
}

function alternatives(words: readonly string[]): string {
  const escaped = [...words].sort((a, b) => b.length - a.length).map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return `(${escaped.join('|')})`;
}

const SLOT_PATTERNS: Record<string, string> = {
  colour: alternatives(COLOUR_NAMES), colour2: alternatives(COLOUR_NAMES),
  shape: alternatives(SHAPES), shape2: alternatives(SHAPES),
  shapes: alternatives([...SHAPES, ...SHAPES.map(plural)]),
  size: alternatives(SIZES), nsize: alternatives(SIZES),
  row: alternatives(ROWS), column: alternatives(COLUMNS),
  relation: alternatives(RELATIONS),
  cell: alternatives(CELLS.map((c) => c.phrase)),
  n: alternatives(NUMBER_WORDS), d: '(\\d)',
  be: '(is|are)', objects: '(objects?)', a: '(an?)', a2: '(an?)',
};

interface CompiledTemplate {
  template: Template;
  pattern: RegExp;
  slots: string[];
}

const COMPILED: CompiledTemplate[] = TEMPLATES.map((template) => {
  const slots: string[] = [];
  const parts = template.text.split(/\{(\w+)\}/);
  const source = parts.map((part, i) => {
    if (i % 2 === 0) return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    slots.push(part);
    const pattern = SLOT_PATTERNS[part];
    if (!pattern) throw new Error(`template ${template.id} uses unknown slot {${part}}`);
    return pattern;
  }).join('');
  return { template, pattern: new RegExp(`^${source}$`), slots };
});

/** The claim's fields from a match; derived slots (be, objects, a, nsize) are checked by re-rendering instead. */
function fieldsFrom(slots: string[], values: string[]): Record<string, string | number> {
  const fields: Record<string, string | number> = {};
  slots.forEach((slot, i) => {
    const value = values[i]!;
    if (slot === 'n') fields.n = NUMBER_WORDS.indexOf(value);
    else if (slot === 'd') fields.n = Number(value);
    else if (slot === 'shapes') fields.shape = SHAPES.find((s) => s === value || plural(s) === value)!;
    else if (slot === 'cell') Object.assign(fields, CELLS.find((c) => c.phrase === value)!);
    else if (!['be', 'objects', 'a', 'a2', 'nsize'].includes(slot)) fields[slot] = value;
  });
  delete fields.phrase;
  return fields;
}

/**
 * The claim a sentence makes, if it is worded like one of the templates (case, list markers, spacing and the
 * final full stop aside) with correct agreement; undefined otherwise.
 */
export function parseSentence(sentence: string): { claim: Claim; template: Template } | undefined {
  const text = normaliseSentence(sentence);
  for (const { template, pattern, slots } of COMPILED) {
    const match = pattern.exec(text);
    if (!match) continue;
    const claim = { kind: template.kind, ...fieldsFrom(slots, match.slice(1)) } as Claim;
    if (normaliseSentence(renderClaim(claim, template)) === text) return { claim, template };
  }
  return undefined;
}
