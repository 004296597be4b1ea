/**
 * Rule-based English sentence segmentation with UTF-16 offsets.
 *
 * The text is cut into blocks at line breaks (Markdown headings, list items and paragraphs live on their own lines in
 * model responses), and each block is scanned once for terminal punctuation; every candidate is accepted or rejected
 * by looking at the word before it and the word after it. List markers and inline bullets add cuts of their own.
 * Quoted and bracketed passages are read as one unit: a stop inside them never ends the sentence around them.
 */

export interface Sentence {
  /** UTF-16 offset of the first character (the string index, as `String.prototype.slice` takes it). */
  start: number;
  /** UTF-16 offset just past the last character. */
  end: number;
  /** `input.slice(start, end)`: never empty, never starts or ends with whitespace. */
  text: string;
}

// Character codes used by the scanner.
const NEWLINE = 0x0a;
const CR = 0x0d;
const SPACE = 0x20;
const DOT = 0x2e;
const QUESTION = 0x3f;
const BANG = 0x21;
const ELLIPSIS = 0x2026;
const CJK_STOP = 0x3002;
const CJK_BANG = 0xff01;
const CJK_QUESTION = 0xff1f;
const FULLWIDTH_STOP = 0xff0e;
const HALFWIDTH_STOP = 0xff61;
const SMALL_STOP = 0xfe52;
const LEFT_BRACKET = 0x5b;
const RIGHT_BRACKET = 0x5d;

/** Titles that always introduce a name: a period after them never ends a sentence. */
const TITLES = new Set([
  'mr', 'mrs', 'ms', 'messrs', 'mmes', 'mme', 'mlle', 'dr', 'drs', 'prof', 'profs', 'rev', 'hon', 'gen', 'col', 'capt',
  'cmdr', 'lt', 'sgt', 'cpl', 'pvt', 'gov', 'sen', 'rep', 'pres', 'supt', 'insp', 'fr', 'sr', 'sra', 'srta',
]);

/** Abbreviations that always lead into what follows (never sentence-final in practice). */
const LEADING = new Set(['e.g', 'i.e', 'cf', 'viz', 'vs', 'v', 'approx', 'ca', 'esp', 'incl', 'resp', 'w.r.t', 'a.k.a']);

/** Abbreviations that precede a number ("p. 55", "No. 5", "Fig. 3"): no cut when a digit follows. */
const BEFORE_NUMBER = new Set([
  'p', 'pp', 'no', 'nos', 'nr', 'vol', 'vols', 'fig', 'figs', 'art', 'ch', 'chap', 'sec', 'sect', 'eq', 'eqs', 'tab',
  'para', 'pt', 'pts', 'op', 'ed', 'n°', 'nº', 'no°', 'ex', 'ref', 'refs', 'step', 'item', 'line', 'col', 'row',
  // Currencies written before the amount ("Rs. 450", "Re. 1", "Kshs. 15,000").
  'rs', 're', 'ksh', 'kshs', 'tk',
]);

/**
 * Abbreviations that can end a sentence as well as sit inside one ("Pitt, Briggs & Co. at noon" / "... & Co. It
 * closed", "5 lb. of flour" / "... 5 lb. Shipping is extra"): before a capitalised word they end the sentence unless
 * something shows the phrase goes on (see `endsSentenceAfterAbbreviation`).
 */
const AMBIGUOUS = new Set([
  'co', 'corp', 'inc', 'ltd', 'llc', 'plc', 'bros', 'jr', 'ave', 'blvd', 'rd', 'ft',
  'min', 'max', 'hr', 'hrs', 'mins', 'sec', 'secs', 'oz', 'lb', 'lbs', 'sq', 'yr', 'yrs', 'mo', 'mos', 'wk', 'wks',
  'gov', 'govt', 'misc', 'dist', 'div', 'al', 'cu', 'deg', 'avg', 'ph.d', 'm.d', 'b.a', 'm.a', 'b.s', 'm.s', 'd.c',
]);

/** Times of day: after them a capital opens a new sentence unless it is a time zone or a day ("5 p.m. EST"). */
const TIME_OF_DAY = new Set(['a.m', 'p.m', 'am', 'pm']);

/**
 * Abbreviations that mostly stand before a name ("St. Louis", "Mt. Fuji", "Univ. Press"): they end a sentence only
 * before a typical sentence opener. "St." after a capitalised word is a street ("Main St.") and acts like `AMBIGUOUS`.
 */
const BEFORE_NAME = new Set(['st', 'mt', 'univ', 'dept', 'assn', 'est']);

/**
 * Nouns that an initialism modifies as part of one name ("the U.S. Army", "the U.K. Parliament"): no cut between them.
 */
const INSTITUTIONS = new Set([
  'Government', 'Army', 'Navy', 'Air', 'Marine', 'Marines', 'Senate', 'Congress', 'Court', 'Department', 'Embassy',
  'Consulate', 'Constitution', 'Census', 'President', 'Secretary', 'Treasury', 'Bureau', 'Agency', 'Parliament',
  'Ministry', 'Police', 'Forces', 'Federal', 'National', 'State', 'States', 'Open', 'Dollar', 'Dollars', 'Attorney',
  'Ambassador', 'Military', 'Coast', 'Postal', 'Office', 'Mission', 'Council', 'Cabinet', 'Patent', 'Route',
  'Highway', 'Citizen', 'Citizens', 'Citizenship', 'Championship', 'Championships', 'Team', 'Squad', 'Representative',
]);

/** Day and month names: "at 5 p.m. Monday", "on Sat. Jan. 5" keep the date together. */
const DATE_WORDS = new Set([
  'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday', 'January', 'February', 'March',
  'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December',
]);

/** Month and weekday abbreviations, ambiguous like the above but only when capitalised ("Sat." vs "the cat sat."). */
const CALENDAR = new Set([
  'Jan', 'Feb', 'Mar', 'Apr', 'Jun', 'Jul', 'Aug', 'Sep', 'Sept', 'Oct', 'Nov', 'Dec',
  'Mon', 'Tue', 'Tues', 'Wed', 'Thu', 'Thur', 'Thurs', 'Fri', 'Sat', 'Sun',
]);

/** Abbreviations that usually close a list and so end a sentence when a capital follows ("... pears, etc. The"). */
const CLOSING = new Set(['etc']);

/**
 * Words that typically open an English sentence. After an ambiguous abbreviation or an initial, a cut is made only
 * when one of these follows ("I live in the U.S. How about you?" vs "the U.S. Government").
 */
const SENTENCE_STARTERS = new Set([
  'a', 'an', 'the', 'this', 'that', 'these', 'those', 'there', 'here', 'it', 'its', 'i', 'he', 'she', 'we', 'you', 'they',
  'his', 'her', 'our', 'your', 'their', 'my', 'one', 'some', 'many', 'most', 'all', 'each', 'every', 'both', 'several',
  'other', 'another', 'such', 'no', 'not', 'none', 'nothing', 'yes', 'if', 'but', 'and', 'or', 'so', 'yet', 'as', 'because',
  'although', 'though', 'while', 'when', 'whenever', 'where', 'what', 'which', 'who', 'whom', 'whose', 'why', 'how',
  'then', 'thus', 'therefore', 'however', 'also', 'moreover', 'furthermore', 'additionally', 'finally', 'overall',
  'meanwhile', 'instead', 'otherwise', 'still', 'even', 'only', 'just', 'perhaps', 'maybe', 'please', 'let', 'note',
  'in', 'on', 'at', 'for', 'from', 'with', 'without', 'by', 'after', 'before', 'during', 'since', 'until', 'to', 'of',
  'is', 'are', 'was', 'were', 'be', 'been', 'do', 'does', 'did', 'can', 'could', 'will', 'would', 'shall', 'should',
  'may', 'might', 'must', 'has', 'have', 'had', 'mr', 'mrs', 'ms', 'dr', 'prof', 'today', 'yesterday', 'tomorrow',
]);

/** Prepositions that open a time or place phrase: "At 5 a.m." on its own is not a sentence. */
const FRAGMENT_PREPOSITIONS = new Set(['at', 'by', 'around', 'about', 'before', 'after', 'until', 'till', 'since', 'from', 'on', 'in']);

/** Closing quotes, brackets and Markdown emphasis that belong to the sentence they follow. */
const CLOSERS = new Set(['"', "'", '”', '’', ')', ']', '}', '»', '›', '」', '』', '）', '*', '_', '`']);

/** Superscript digits, used as footnote markers ("fell sharply.¹ Vaccination ..."). */
const SUPERSCRIPT_DIGITS = new Set(['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹']);

/**
 * Words that leave a line unfinished ("... partially visible and it\nwraps ..."): a line ending in one continues
 * on the next line when that starts in lower case.
 */
const UNFINISHED_LINE_ENDINGS = new Set([
  'a', 'an', 'the', 'and', 'or', 'but', 'nor', 'of', 'to', 'in', 'on', 'at', 'for', 'with', 'by', 'from', 'as', 'into',
  'onto', 'than', 'that', 'which', 'who', 'whose', 'if', 'it', 'its', 'is', 'are', 'was', 'were', 'be', 'been', 'has',
  'have', 'had', 'will', 'would', 'can', 'could', 'should', 'may', 'might', 'must', 'this', 'these', 'those', 'their',
  'his', 'her', 'our', 'your', 'my', 'very', 'not', 'so', 'about', 'over', 'under', 'between', 'through', 'while',
]);

/** A line at least this long that runs on into a lower-case line is wrapped prose, not a list item. */
const WRAPPED_LINE_MIN = 40;

/** Opening punctuation skipped when reading the next word. */
const OPENERS = new Set(['"', "'", '“', '‘', '(', '[', '{', '«', '‹', '¿', '¡', '*', '_', '`', '「', '『', '（']);

/** Bullets that start a list item wherever they appear after whitespace. */
const INLINE_BULLETS = new Set(['•', '⁃', '◦', '▪', '‣', '●', '○', '■', '□', '➢', '➤', '►', '▸', '✓', '✔']);

/** Where a list marker may start: the text's start, whitespace, or a bullet ("⁃9."). */
const MARKER_START = `(?<![^\\s${[...INLINE_BULLETS].join('')}])`;
/** Numbered, lettered or roman list markers: "1.", "1)", "1.)", "a.", "b)", "ii.". */
const PLAIN_MARKER = new RegExp(`${MARKER_START}(\\d{1,3}|[a-z]|[ivx]{2,5})(?:\\.\\)|\\.|\\))(?=\\s)`, 'g');
/** The same in parentheses: "(2)", "(b)", "(B)", "(iii)". */
const PARENTHESISED_MARKER = new RegExp(`${MARKER_START}\\((\\d{1,3}|[a-zA-Z]|[ivx]{2,5})\\)(?=\\s)`, 'g');
/** Either, matched where it starts ("sticky"): does a list item start at lastIndex? */
const LIST_MARKER_AT = new RegExp(`${PLAIN_MARKER.source}|${PARENTHESISED_MARKER.source}`, 'y');

/** Splits `text` into sentences with UTF-16 offsets. Pure: same text, same spans. */
export function segment(text: string): Sentence[] {
  const sentences: Sentence[] = [];
  const markers = findListMarkers(text);
  let markerIndex = 0;
  for (const [blockStart, blockEnd] of blocks(text)) {
    while (markerIndex < markers.length && markers[markerIndex]!.start < blockStart) markerIndex++;
    const blockMarkers: ListMarker[] = [];
    for (let k = markerIndex; k < markers.length && markers[k]!.start < blockEnd; k++) blockMarkers.push(markers[k]!);
    const cuts = blockCuts(text, blockStart, blockEnd, acceptedMarkers(text, blockStart, blockMarkers));
    let from = blockStart;
    for (const cut of cuts) {
      pushSpan(text, from, cut, sentences);
      from = cut;
    }
    pushSpan(text, from, blockEnd, sentences);
  }
  return sentences;
}

/** Adds `text[from, to)` without surrounding whitespace, if anything is left. */
function pushSpan(text: string, from: number, to: number, out: Sentence[]): void {
  while (from < to && isSpace(text.charCodeAt(from))) from++;
  while (to > from && isSpace(text.charCodeAt(to - 1))) to--;
  if (to > from) out.push({ start: from, end: to, text: text.slice(from, to) });
}

/**
 * Line-based blocks. A line break ends a sentence (list lines without punctuation are items of their own), except when
 * it only wraps a running sentence: see `continuesOnNextLine`.
 */
function blocks(text: string): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let blockStart = 0;
  let lineStart = 0;
  const n = text.length;
  while (lineStart <= n) {
    let lineEnd = text.indexOf('\n', lineStart);
    if (lineEnd < 0) lineEnd = n;
    const nextStart = lineEnd + 1;
    if (lineEnd >= n) {
      out.push([blockStart, n]);
      break;
    }
    if (!continuesOnNextLine(text, blockStart, lineStart, lineEnd, nextStart)) {
      out.push([blockStart, lineEnd]);
      blockStart = nextStart;
    }
    lineStart = nextStart;
  }
  return out;
}

/**
 * A line runs on into the next when the next starts in lower case (and is no list item), the line ends in a word or a
 * comma, and the break looks like wrapping rather than a list: the line is long, ends in a word that leaves it
 * unfinished ("and", "the", "it"), or has stray spaces before the break (text copied from a PDF or a form).
 */
function continuesOnNextLine(text: string, blockStart: number, lineStart: number, lineEnd: number, nextStart: number): boolean {
  let last = lineEnd - 1;
  if (last >= lineStart && text.charCodeAt(last) === CR) last--;
  const strayBreak = last >= lineStart && isSpace(text.charCodeAt(last));
  while (last >= lineStart && isSpace(text.charCodeAt(last))) last--;
  if (last < lineStart) return false;
  const before = text[last]!;
  if (!(isLetterOrDigit(before) || before === ',')) return false;
  if (lineStartsMarkup(text, blockStart)) return false;
  let first = nextStart;
  while (first < text.length && (text.charCodeAt(first) === SPACE || text.charCodeAt(first) === 0x09)) first++;
  const c = text[first];
  if (c === undefined || !isLower(c)) return false;
  LIST_MARKER_AT.lastIndex = first;
  if (LIST_MARKER_AT.test(text)) return false;
  if (strayBreak || last - lineStart + 1 >= WRAPPED_LINE_MIN) return true;
  let wordStart = last;
  while (wordStart > lineStart && isLetter(text[wordStart - 1]!)) wordStart--;
  return UNFINISHED_LINE_ENDINGS.has(text.slice(wordStart, last + 1).toLowerCase());
}

/** Headings, bullets and table rows end at their line break whatever follows. */
function lineStartsMarkup(text: string, lineStart: number): boolean {
  let i = lineStart;
  while (i < text.length && (text.charCodeAt(i) === SPACE || text.charCodeAt(i) === 0x09)) i++;
  const c = text[i];
  if (c === '#' || c === '|' || c === '>' || (c !== undefined && INLINE_BULLETS.has(c))) return true;
  return (c === '-' || c === '*' || c === '+') && text.charCodeAt(i + 1) === SPACE;
}

interface ListMarker {
  /** Offset of the marker ("1" in "1.)", "(" in "(ii)"). */
  start: number;
  /** Offset just past it. */
  end: number;
  /** The ordinals the label can stand for: "3" is number 3, "c" letter 3, "ii" roman 2, "i" letter 9 or roman 1. */
  number?: number;
  letter?: number;
  roman?: number;
  /** "(2)" or "2." (not "2)"): forms that also occur in running text ("conditions (1) and (2)", "methods 2. and 3."). */
  proseLike: boolean;
  /** "(2)", "(ii)". */
  parenthesised: boolean;
  /** Where a cut before it goes: the bullet glued to it, or the marker itself. */
  cutAt: number;
}

const ROMAN_DIGITS: Record<string, number> = { i: 1, v: 5, x: 10 };

/** The value of a lower-case roman numeral up to "xxxix", or undefined when the letters do not form one. */
function romanValue(label: string): number | undefined {
  if (!/^x{0,3}(?:ix|iv|v?i{0,3})$/.test(label)) return undefined;
  let value = 0;
  for (let k = 0; k < label.length; k++) {
    const digit = ROMAN_DIGITS[label[k]!]!;
    const following = ROMAN_DIGITS[label[k + 1] ?? ''] ?? 0;
    value += digit < following ? -digit : digit;
  }
  return value;
}

function findListMarkers(text: string): ListMarker[] {
  // Two patterns, each with a cheap first character, are much faster than one that alternates between them.
  const plain = matchAll(PLAIN_MARKER, text);
  const parenthesised = matchAll(PARENTHESISED_MARKER, text);
  const out: ListMarker[] = [];
  let p = 0;
  let q = 0;
  while (p < plain.length || q < parenthesised.length) {
    const takePlain = q >= parenthesised.length || (p < plain.length && plain[p]!.index < parenthesised[q]!.index);
    const m = takePlain ? plain[p++]! : parenthesised[q++]!;
    const label = m[1]!.toLowerCase();
    const numeric = isDigit(label[0]!);
    const marker: ListMarker = {
      start: m.index, end: m.index + m[0].length, cutAt: m.index, parenthesised: !takePlain,
      proseLike: !takePlain || (numeric && text.charCodeAt(m.index + m[0].length - 1) === DOT),
    };
    if (numeric) marker.number = Number(label);
    else {
      if (label.length === 1) marker.letter = label.charCodeAt(0) - 0x60;
      marker.roman = romanValue(label);
    }
    // A bullet before the marker ("• 9.", "⁃9.") belongs to the item.
    let k = m.index - 1;
    while (k >= 0 && text.charCodeAt(k) === SPACE) k--;
    if (k >= 0 && INLINE_BULLETS.has(text[k]!)) marker.cutAt = k;
    out.push(marker);
  }
  return out;
}

function matchAll(pattern: RegExp, text: string): RegExpExecArray[] {
  const out: RegExpExecArray[] = [];
  pattern.lastIndex = 0;
  for (let m = pattern.exec(text); m; m = pattern.exec(text)) out.push(m);
  return out;
}

/** Do two markers count up by one, read the same way (numbers, letters or roman numerals)? */
function consecutive(a: ListMarker, b: ListMarker): boolean {
  return (a.number !== undefined && a.number + 1 === b.number) || (a.letter !== undefined && a.letter + 1 === b.letter) ||
    (a.roman !== undefined && a.roman + 1 === b.roman);
}

/**
 * The markers of one block that are real list markers: the one opening the block (after an optional bullet), and
 * inline ones that run in sequence with a neighbour ("1. ... 2. ...", "a. ... b. ...", "(i) ... (ii) ..."), so that
 * "in 2. Then" or "plan b. The" alone stay ordinary text. Forms that running text uses too ("(1) and (2)", "methods 2.
 * and 3.") count inline only where an item can start: after a stop or a colon, or before a capital or a digit.
 */
function acceptedMarkers(text: string, blockStart: number, markers: ListMarker[]): ListMarker[] {
  if (markers.length === 0) return markers;
  let first = blockStart;
  while (first < text.length && isSpace(text.charCodeAt(first))) first++;
  if (INLINE_BULLETS.has(text[first] ?? '')) {
    first++;
    while (first < text.length && text.charCodeAt(first) === SPACE) first++;
  }
  const accepted: ListMarker[] = [];
  for (let k = 0; k < markers.length; k++) {
    const m = markers[k]!;
    const prev = markers[k - 1];
    const next = markers[k + 1];
    const lettered = m.number === undefined;
    const opensBlock = m.start === first && !(lettered && next === undefined && !textAfterMarkerLooksLikeItem(text, m));
    const inSequence = (prev !== undefined && consecutive(prev, m)) || (next !== undefined && consecutive(m, next));
    if (opensBlock || (inSequence && (!m.proseLike || itemCanStartAt(text, m, m.parenthesised)))) accepted.push(m);
  }
  return accepted;
}

/** "a. The first item": a lone lettered marker opening a block must be followed by a capitalised word. */
function textAfterMarkerLooksLikeItem(text: string, m: ListMarker): boolean {
  let i = m.end;
  while (i < text.length && isSpace(text.charCodeAt(i))) i++;
  return isUpper(text[i] ?? '');
}

/**
 * After a stop or colon a marker can open an item; "2." also before a capital or digit ("1. A table 2. Two chairs"),
 * but not "(B)", which running text puts before names ("between (A) Paris and (B) Rome").
 */
function itemCanStartAt(text: string, m: ListMarker, afterStopOnly: boolean): boolean {
  let i = m.end;
  while (i < text.length && isSpace(text.charCodeAt(i))) i++;
  const after = text[i] ?? '';
  if (!afterStopOnly && (isUpper(after) || isDigit(after))) return true;
  let k = m.start - 1;
  while (k >= 0 && isSpace(text.charCodeAt(k))) k--;
  const before = text[k] ?? '';
  return before === '.' || before === '?' || before === '!' || before === ':' || before === ';';
}

const NO_MARKER_DOTS: ReadonlySet<number> = new Set();

/** Offsets of the periods inside list markers ("1." or "1.)"): they never end a sentence. */
function periodsIn(text: string, markers: readonly ListMarker[]): Set<number> {
  const dots = new Set<number>();
  for (const m of markers) for (let i = m.start; i < m.end; i++) if (text.charCodeAt(i) === DOT) dots.add(i);
  return dots;
}

/** Cut offsets inside one block, in increasing order, none at the block's edges. */
function blockCuts(text: string, blockStart: number, blockEnd: number, markers: ListMarker[]): number[] {
  const cuts: number[] = [];
  const markerDots = markers.length > 0 ? periodsIn(text, markers) : NO_MARKER_DOTS;
  for (const m of markers) if (m.cutAt > blockStart) cuts.push(m.cutAt);
  let markerIndex = 0;
  let sentenceStart = blockStart;
  // The closing mark of the quoted or bracketed passage being read (-1 outside one): stops inside it do not count.
  let passageEnd = -1;
  let lastCloses: Map<string, number> | undefined;
  let i = blockStart;
  for (;;) {
    // Most characters are plain text: skip to the next one the scanner has a rule for.
    while (i < blockEnd && MARKS[text.charCodeAt(i)] === 0) i++;
    if (i >= blockEnd) break;
    while (markerIndex < markers.length && markers[markerIndex]!.cutAt <= i) {
      sentenceStart = Math.max(sentenceStart, markers[markerIndex]!.cutAt);
      markerIndex++;
    }
    const mark = MARKS[text.charCodeAt(i)];
    if (mark === TERMINAL) {
      if (markerDots.has(i)) {
        i++;
        continue;
      }
      const decision = decideTerminal(text, i, blockEnd, sentenceStart, passageEnd);
      if (decision.cut !== undefined) {
        cuts.push(decision.cut);
        sentenceStart = decision.cut;
      }
      i = decision.next;
      continue;
    }
    if (mark === WIDE_TERMINAL) {
      // "３．５": a full-width point between digits is a decimal point.
      const c = text.charCodeAt(i);
      if (c !== CJK_STOP && c !== CJK_BANG && c !== CJK_QUESTION && isAnyDigit(text.charCodeAt(i - 1)) &&
        isAnyDigit(text.charCodeAt(i + 1))) {
        i++;
        continue;
      }
      const after = skipClosers(text, i + 1, blockEnd);
      if (after < blockEnd && after > passageEnd) {
        cuts.push(after);
        sentenceStart = after;
      }
      i = after;
      continue;
    }
    if (mark === BULLET) {
      if (i > blockStart && isSpace(text.charCodeAt(i - 1))) {
        cuts.push(i);
        sentenceStart = i;
      }
    } else if (i > passageEnd && opensPassage(text, i, blockStart)) {
      const close = closeOfPassage(text, i, blockEnd, lastCloses ??= new Map());
      if (close > 0) passageEnd = close;
    }
    i++;
  }
  if (markers.length === 0) return cuts;
  cuts.sort((a, b) => a - b);
  return cuts.filter((cut, k) => cut !== cuts[k - 1]);
}

const TERMINAL = 1;
const WIDE_TERMINAL = 2;
const BULLET = 3;
const OPENING = 4;

/** What the block scanner does at each UTF-16 code unit: 0 for plain text. */
const MARKS = new Uint8Array(0x10000);
for (const c of [DOT, QUESTION, BANG, ELLIPSIS]) MARKS[c] = TERMINAL;
for (const c of [CJK_STOP, CJK_BANG, CJK_QUESTION, FULLWIDTH_STOP, HALFWIDTH_STOP, SMALL_STOP]) MARKS[c] = WIDE_TERMINAL;
for (const c of INLINE_BULLETS) MARKS[c.charCodeAt(0)] = BULLET;
for (const c of '([“‘«「『（"\'') MARKS[c.charCodeAt(0)] = OPENING;

/** Does a quoted or bracketed passage open at `i`? Straight quotes open one only after a space or an opening mark. */
function opensPassage(text: string, i: number, blockStart: number): boolean {
  const c = text[i]!;
  if (c === '(' || c === '[' || c === '“' || c === '‘' || c === '«' || c === '「' || c === '『' || c === '（') return true;
  if (c !== '"' && c !== "'") return false;
  const before = i > blockStart ? text[i - 1]! : ' ';
  const after = text[i + 1] ?? ' ';
  return (isSpace(before.charCodeAt(0)) || OPENERS.has(before)) && !isSpace(after.charCodeAt(0));
}

const PASSAGE_CLOSE: Record<string, string> = {
  '(': ')', '[': ']', '“': '”', '‘': '’', '«': '»', '「': '」', '『': '』', '（': '）', '"': '"', "'": "'",
};

/** How far a closing mark is looked for: a bound on the work per opening mark, far beyond any real quotation. */
const PASSAGE_MAX = 1000;

/**
 * The offset of the mark closing the passage opened at `i`, or -1 if it does not close within the block (and
 * `PASSAGE_MAX` characters). Brackets nest;
 * a single quote or ’ between two letters is an apostrophe ("it's"), not a closing quote.
 */
function closeOfPassage(text: string, i: number, blockEnd: number, lastCloses: Map<string, number>): number {
  const open = text[i]!;
  const close = PASSAGE_CLOSE[open]!;
  // The block's last closing mark of this kind, looked up once per block: no search when there is none ahead.
  let lastClose = lastCloses.get(close);
  if (lastClose === undefined) lastCloses.set(close, lastClose = text.lastIndexOf(close, blockEnd - 1));
  if (lastClose <= i) return -1;
  const nests = open !== close;
  let depth = 0;
  const end = Math.min(lastClose + 1, i + 1 + PASSAGE_MAX);
  for (let k = i + 1; k < end; k++) {
    const c = text[k]!;
    if (c === close) {
      if (depth > 0) {
        depth--;
        continue;
      }
      if ((c === "'" || c === '’') && (isSpace(text.charCodeAt(k - 1)) || isLetter(text[k + 1] ?? ' '))) continue;
      return k;
    }
    if (nests && c === open) depth++;
  }
  return -1;
}

interface Decision {
  /** Where the sentence ends, if the candidate is a boundary. */
  cut?: number;
  /** Where scanning resumes. */
  next: number;
}

/** Decides whether the terminal punctuation starting at `i` ends a sentence. */
function decideTerminal(text: string, i: number, blockEnd: number, sentenceStart: number, passageEnd: number): Decision {
  // The whole run of terminal marks: "?!", "....", "...", ". . . ." (spaced ellipsis).
  let dots = 0;
  let questionOrBang = false;
  let ellipsisChar = false;
  let spaced = false;
  let j = i;
  while (j < blockEnd) {
    const c = text.charCodeAt(j);
    if (c === DOT) dots++;
    else if (c === QUESTION || c === BANG) questionOrBang = true;
    else if (c === ELLIPSIS) ellipsisChar = true;
    else if (c === SPACE && dots > 0 && text.charCodeAt(j + 1) === DOT && !isWordAt(text, j + 2)) {
      spaced = true;
    } else break;
    j++;
  }
  const attached = i > 0 && !isSpace(text.charCodeAt(i - 1));
  // "[...]" marks an omission inside a quotation.
  if (text.charCodeAt(i - 1) === LEFT_BRACKET && text.charCodeAt(j) === RIGHT_BRACKET) return { next: j + 1 };
  const single = j === i + 1 || (questionOrBang && dots === 0 && !ellipsisChar);
  let after = skipClosers(text, j, blockEnd);
  // Inside a quoted or bracketed passage that goes on after this mark: "'it is too late! We missed it!'".
  if (after <= passageEnd) return { next: after };
  if (single) after = skipCitation(text, i, after, blockEnd, sentenceStart);
  if (after >= blockEnd) return { next: blockEnd };
  if (!isSpace(text.charCodeAt(after))) {
    // Glued to the next character: "3.14", "example.com", "Jr.'s", "mean...see" hold together; "late.We left" does not.
    return single && startsGluedSentence(text, i, after, sentenceStart) ? { cut: after, next: after } : { next: after };
  }
  const next = nextWord(text, after, blockEnd);

  if (questionOrBang && dots <= 1 && !ellipsisChar) {
    // "-- careful! -- stir": an aside between dashes goes on after its own "!" or "?".
    return isLower(next.first) || dashFollows(text, after, blockEnd) ? { next: after } : { cut: after, next: after };
  }
  if (dots >= 2 || ellipsisChar) {
    if (spaced && attached && dots >= 4) {
      // "compounds. . . . The": the first period ends the sentence; the ellipsis opens the next one.
      return isUpper(next.first) ? { cut: i + 1, next: after } : { next: after };
    }
    const detachedThree = !attached && (dots === 3 || (ellipsisChar && dots === 0));
    // A free-standing "..." or ". . ." marks an omission mid-sentence; four dots end one.
    if (detachedThree || isLower(next.first)) return { next: after };
    return { cut: after, next: after };
  }

  // A single period.
  if (isLower(next.first)) return { next: after };
  return periodEndsSentence(text, i, next, sentenceStart) ? { cut: after, next: after } : { next: after };
}

/** Whether a period followed by a space and a word that is not lower case ends the sentence. */
function periodEndsSentence(text: string, i: number, next: NextWord, sentenceStart: number): boolean {
  const wordStart = wordStartBefore(text, i, sentenceStart);
  const word = text.slice(wordStart, i);
  const key = word.toLowerCase();
  // "Q. Where is it? A. Under the mat.", "B. None of the above": a letter or roman numeral opening a sentence labels it.
  if (isLabel(word) && wordStart === firstNonSpace(text, sentenceStart)) return false;
  if (TITLES.has(key) && word.length <= 6 && isUpper(word[0] ?? '')) return false;
  if (LEADING.has(key)) return false;
  if (BEFORE_NUMBER.has(key) && isDigit(next.first)) return false;
  if (CLOSING.has(key)) return isUpper(next.first);
  if (isInitial(word)) {
    // "Jonas E. Smith": an initial is followed by a name far more often than it ends a sentence.
    return SENTENCE_STARTERS.has(next.word.toLowerCase()) && !isPrepositionalFragment(text, sentenceStart, i);
  }
  if (AMBIGUOUS.has(key) || TIME_OF_DAY.has(key) || BEFORE_NAME.has(key) || CALENDAR.has(word) ||
    isDottedAbbreviation(word)) {
    return endsSentenceAfterAbbreviation(text, i, wordStart, key, next, sentenceStart);
  }
  return true;
}

/**
 * An abbreviation that can end a sentence, before a word that is not lower case. A typical sentence opener ("It",
 * "The", "How") ends it; otherwise a capital ends it unless the phrase visibly goes on: a digit ("Jan. 5"), a name
 * after "St."/"Mt.", a time zone or day after "p.m.", a date after a month, the initialism opening its sentence ("The
 * U.K. Parliament voted"), an institution it names ("the U.S. Army"), or a multi-word name ("the U.S. Supreme Court").
 * A short prepositional phrase ("At 5 a.m. Mr. Smith ...") is never a sentence.
 */
function endsSentenceAfterAbbreviation(text: string, i: number, wordStart: number, key: string, next: NextWord,
  sentenceStart: number): boolean {
  if (isPrepositionalFragment(text, sentenceStart, i)) return false;
  if (SENTENCE_STARTERS.has(next.word.toLowerCase())) return true;
  if (!isUpper(next.first)) return false;
  if (BEFORE_NAME.has(key) && !(key === 'st' && capitalisedWordBefore(text, wordStart, sentenceStart))) return false;
  if (TIME_OF_DAY.has(key)) return !(isTimeZone(next.word) || DATE_WORDS.has(next.word));
  if (CALENDAR.has(text.slice(wordStart, i))) return !(CALENDAR.has(next.word) || DATE_WORDS.has(next.word));
  if (wordsBetween(text, sentenceStart, wordStart, 2) <= 1) return false;
  if (INSTITUTIONS.has(next.word)) return false;
  return !capitalisedWordFollows(text, next);
}

/** "EST", "GMT", "UTC", "ET". */
function isTimeZone(word: string): boolean {
  return word.length >= 2 && word.length <= 4 && word === word.toUpperCase();
}

/** Is the word before the one starting at `wordStart` capitalised ("Main St.")? */
function capitalisedWordBefore(text: string, wordStart: number, sentenceStart: number): boolean {
  let k = wordStart - 1;
  while (k > sentenceStart && isSpace(text.charCodeAt(k))) k--;
  while (k > sentenceStart && isLetter(text[k - 1]!)) k--;
  return k < wordStart - 1 && isUpper(text[k]!);
}

/** Does another capitalised word follow the next word, maybe after "of", "and", "&" ("Supreme Court", "Food and Drug")? */
function capitalisedWordFollows(text: string, next: NextWord): boolean {
  let k = next.end;
  if (text[k] !== ' ') return false;
  k++;
  const connector = /^(?:of|and|for|&) /.exec(text.slice(k, k + 4));
  if (connector) k += connector[0].length;
  return isUpper(text[k] ?? '') && isLower(text[k + 1] ?? '');
}

/** The number of whitespace-separated words in `text[from, to)`, counted up to `atMost` (the cost stays bounded). */
function wordsBetween(text: string, from: number, to: number, atMost: number): number {
  let words = 0;
  let inWord = false;
  for (let k = from; k < to && words < atMost; k++) {
    const space = isSpace(text.charCodeAt(k));
    if (!space && !inWord) words++;
    inWord = !space;
  }
  return words;
}

/**
 * Footnote and citation markers glued to the stop belong to the sentence they close: "in 1932.[4]", "[2][3]",
 * "[note 1]", "[2]:14", "sharply.¹", and bare reference numbers before a capital, "earlier.23 24 The next", "(Table 2).7 These"
 * (but not after a number, where the digits are decimals: "in 2019.3 Reasons"). Returns where the sentence ends.
 */
function skipCitation(text: string, i: number, after: number, blockEnd: number, sentenceStart: number): number {
  let end = after;
  while (text[end] === '[') {
    const close = text.slice(end, Math.min(blockEnd, end + 41)).indexOf(']') + end;
    if (close < end || /[[.?!\n]/.test(text.slice(end + 1, close))) break;
    end = close + 1;
    // A page after the reference: "[2]:14", "[2]:14–16".
    const page = /^:\d+(?:[-–]\d+)?/.exec(text.slice(end, end + 12));
    if (page) end += page[0].length;
  }
  while (end < blockEnd && SUPERSCRIPT_DIGITS.has(text[end]!)) end++;
  if (end > after || !isDigit(text[after] ?? '') || after !== i + 1) return end;
  // Bare numbers: "23", "23 24", "3,4", "7-9" after a word or a closing bracket, then a space and a capital.
  const before = text[i - 1] ?? '';
  if (isLetter(before)) {
    const wordStart = wordStartBefore(text, i, sentenceStart);
    const word = text.slice(wordStart, i);
    if (word.length < 2 || !/^\p{L}+$/u.test(word) || isKnownAbbreviation(word)) return end;
  } else if (before !== ')' && before !== ']') return end;
  let k = after;
  for (;;) {
    let digits = 0;
    while (k < blockEnd && isDigit(text[k]!) && digits < 4) {
      k++;
      digits++;
    }
    if (digits === 0 || digits > 3) return after;
    const c = text[k];
    const separator = c === ',' || c === '-' || c === '–' ? (text[k + 1] === ' ' ? 2 : 1) : c === ' ' ? 1 : 0;
    if (separator > 0 && isDigit(text[k + separator] ?? '')) {
      k += separator;
      continue;
    }
    break;
  }
  if (k >= blockEnd || !isSpace(text.charCodeAt(k))) return after;
  const next = nextWord(text, k, blockEnd);
  return isUpper(next.first) ? k : after;
}

/** Is this word (without its period) in any abbreviation list? */
function isKnownAbbreviation(word: string): boolean {
  const key = word.toLowerCase();
  return TITLES.has(key) || LEADING.has(key) || BEFORE_NUMBER.has(key) || AMBIGUOUS.has(key) || TIME_OF_DAY.has(key) ||
    BEFORE_NAME.has(key) || CLOSING.has(key) || CALENDAR.has(word);
}

/**
 * A stop glued to the next word still ends the sentence when a capitalised word follows ("late.We left", "2,000.That
 * seemed"), unless the token is an address, a file or a name with dots ("example.com", "Jane.Doe@example.com",
 * "Report.Final.pdf", "ASP.NET", "Mr.Smith", "U.S.Army").
 */
function startsGluedSentence(text: string, i: number, after: number, sentenceStart: number): boolean {
  const first = text[after]!;
  const second = text[after + 1] ?? '';
  if (!isUpper(first) || !(isLower(second) || (first === 'I' && (isSpace(second.charCodeAt(0)) || second === "'")))) {
    return false;
  }
  const wordStart = wordStartBefore(text, i, sentenceStart);
  const word = text.slice(wordStart, i);
  if (text.charCodeAt(i) === DOT) {
    if (word.length < 2 || isKnownAbbreviation(word) || isDottedAbbreviation(word)) return false;
  }
  let tokenEnd = after;
  while (tokenEnd < text.length && !isSpace(text.charCodeAt(tokenEnd))) tokenEnd++;
  const token = text.slice(wordStart, tokenEnd);
  if (/@|:\/\/|^www\./i.test(token) || /\//.test(token)) return false;
  // Another dot inside the following word ("Report.Final.pdf", "www.Example.com"): a name with dots.
  return !/\.[\p{L}\p{N}]/u.test(text.slice(after, tokenEnd));
}

/** Does a dash follow (after spaces): "--", "—", "–", or "-" standing alone? */
function dashFollows(text: string, i: number, blockEnd: number): boolean {
  while (i < blockEnd && isSpace(text.charCodeAt(i))) i++;
  const c = text[i];
  if (c === '—' || c === '–') return true;
  return c === '-' && (text[i + 1] === '-' || isSpace(text.charCodeAt(i + 1)));
}

/** Skips closing quotes and brackets after a terminal mark. */
function skipClosers(text: string, i: number, blockEnd: number): number {
  while (i < blockEnd && CLOSERS.has(text[i]!)) i++;
  return i;
}

interface NextWord {
  /** First character of the next word (after whitespace and opening punctuation), '' at the end. */
  first: string;
  /** The next word's letters, e.g. "How" or "Mr". */
  word: string;
  /** Offset just past those letters. */
  end: number;
}

function nextWord(text: string, i: number, blockEnd: number): NextWord {
  while (i < blockEnd && isSpace(text.charCodeAt(i))) i++;
  while (i < blockEnd && OPENERS.has(text[i]!)) i++;
  let j = i;
  while (j < blockEnd && isLetter(text[j]!)) j++;
  return { first: text[i] ?? '', word: text.slice(i, j), end: j };
}

/** Where the token ending at the period at `i` starts, after opening punctuation: the "U" of "U.S", "M" of "Mr". */
function wordStartBefore(text: string, i: number, sentenceStart: number): number {
  let j = i;
  while (j > sentenceStart && !isSpace(text.charCodeAt(j - 1))) j--;
  while (j < i && OPENERS.has(text[j]!)) j++;
  return j;
}

function firstNonSpace(text: string, i: number): number {
  while (i < text.length && isSpace(text.charCodeAt(i))) i++;
  return i;
}

/** A single capital letter: "E" in "Jonas E. Smith", "I" in "you and I." */
function isInitial(word: string): boolean {
  return word.length === 1 && isUpper(word);
}

/** A letter or an upper-case roman numeral that can label a question, an answer or an option: "Q", "A", "IV". */
function isLabel(word: string): boolean {
  return isInitial(word) || (word.length <= 5 && /^[IVX]+$/.test(word) && romanValue(word.toLowerCase()) !== undefined);
}

/** Letters separated by periods: "U.S", "U.S.A", "a.m", "Ph.D". */
function isDottedAbbreviation(word: string): boolean {
  return /^(?:\p{L}{1,2}\.)+\p{L}{1,2}$/u.test(word);
}

/** The sentence so far is a short phrase opened by a preposition, like "At 5 a.m.". */
function isPrepositionalFragment(text: string, sentenceStart: number, i: number): boolean {
  const start = firstNonSpace(text, sentenceStart);
  if (wordsBetween(text, start, i, 4) > 3) return false;
  let end = start;
  while (end < i && isLetter(text[end]!)) end++;
  return FRAGMENT_PREPOSITIONS.has(text.slice(start, end).toLowerCase());
}

function isWordAt(text: string, i: number): boolean {
  const c = text[i];
  return c !== undefined && isLetterOrDigit(c);
}

/** 1 for the UTF-16 code units that count as whitespace. */
const SPACES = new Uint8Array(0x10000);
for (const c of [SPACE, 0x09, NEWLINE, 0x0b, 0x0c, CR, 0xa0, 0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000, 0xfeff]) SPACES[c] = 1;
for (let c = 0x2000; c <= 0x200a; c++) SPACES[c] = 1;

/** NaN (past either end of the text) is no space. */
function isSpace(c: number): boolean {
  return SPACES[c] === 1;
}

/** An ASCII or full-width digit. */
function isAnyDigit(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0xff10 && c <= 0xff19);
}

function isDigit(c: string): boolean {
  return c >= '0' && c <= '9';
}

function isLower(c: string): boolean {
  if (c >= 'a' && c <= 'z') return true;
  if (c < '\u00c0') return false;
  return /\p{Ll}/u.test(c);
}

function isUpper(c: string): boolean {
  if (c >= 'A' && c <= 'Z') return true;
  if (c < '\u00c0') return false;
  return /\p{Lu}/u.test(c);
}

function isLetter(c: string): boolean {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  if (c < '\u00c0') return false;
  return /\p{L}/u.test(c);
}

function isLetterOrDigit(c: string): boolean {
  return isDigit(c) || isLetter(c);
}
