/**
 * Rule-based English sentence segmentation with UTF-16 offsets.
 *
 * The text is cut into blocks at line breaks (Markdown headings, list items and paragraphs live on their own lines in
 * model responses), and each block is scanned once for terminal punctuation; every candidate is accepted or rejected
 * by looking at the word before it and the word after it. List markers and inline bullets add cuts of their own.
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
]);

/**
 * Abbreviations that can end a sentence as well as sit inside one ("Pitt, Briggs & Co. at noon" / "... & Co. It
 * closed"): cut only when the next word is one that typically opens a sentence.
 */
const AMBIGUOUS = new Set([
  'co', 'corp', 'inc', 'ltd', 'llc', 'plc', 'bros', 'jr', 'st', 'ave', 'blvd', 'rd', 'mt', 'ft', 'dept', 'univ',
  'assn', 'est', 'a.m', 'p.m', 'am', 'pm', 'min', 'max', 'hr', 'hrs',
  'mins', 'sec', 'secs', 'oz', 'lb', 'lbs', 'sq', 'yr', 'yrs', 'mo', 'mos', 'wk', 'wks', 'gov', 'govt',
  'misc', 'dist', 'div', 'al', 'cu', 'deg', 'avg', 'ph.d', 'm.d', 'b.a', 'm.a', 'b.s', 'm.s', 'd.c',
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

/** Opening punctuation skipped when reading the next word. */
const OPENERS = new Set(['"', "'", '“', '‘', '(', '[', '{', '«', '‹', '¿', '¡', '*', '_', '`', '「', '『', '（']);

/** Bullets that start a list item wherever they appear after whitespace. */
const INLINE_BULLETS = new Set(['•', '⁃', '◦', '▪', '‣', '●', '○', '■', '□', '➢', '➤', '►', '▸', '✓', '✔']);

/** Numbered or lettered list markers: "1.", "1)", "1.)", "a.", "b)", optionally glued to a bullet ("⁃9."). */
const LIST_MARKER = new RegExp(`(?<![^\\s${[...INLINE_BULLETS].join('')}])(\\d{1,3}|[a-z])(\\.\\)|\\.|\\))(?=\\s)`, 'g');
/** The same, anchored: does a marker start exactly at lastIndex? */
const LIST_MARKER_AT = new RegExp(LIST_MARKER.source, 'y');

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
 * Line-based blocks. A line break ends a sentence, except when it only wraps a running sentence: the next line starts
 * with a lower-case letter and the line before ends in a word or a comma.
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
    if (!continuesOnNextLine(text, blockStart, lineEnd, nextStart)) {
      out.push([blockStart, lineEnd]);
      blockStart = nextStart;
    }
    lineStart = nextStart;
  }
  return out;
}

function continuesOnNextLine(text: string, blockStart: number, lineEnd: number, nextStart: number): boolean {
  let last = lineEnd - 1;
  while (last >= blockStart && isSpace(text.charCodeAt(last))) last--;
  if (last < blockStart) return false;
  const before = text[last]!;
  if (!(isLetterOrDigit(before) || before === ',')) return false;
  if (lineStartsMarkup(text, blockStart)) return false;
  let first = nextStart;
  while (first < text.length && (text.charCodeAt(first) === SPACE || text.charCodeAt(first) === 0x09)) first++;
  const c = text[first];
  if (c === undefined || !isLower(c)) return false;
  LIST_MARKER_AT.lastIndex = first;
  return !LIST_MARKER_AT.test(text);
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
  /** Offset of the marker ("1" in "1.)"). */
  start: number;
  /** Offset just past it. */
  end: number;
  /** Ordinal: the number, or 1 for "a", 2 for "b", ... */
  value: number;
  lettered: boolean;
  /** Where a cut before it goes: the bullet glued to it, or the marker itself. */
  cutAt: number;
}

function findListMarkers(text: string): ListMarker[] {
  const out: ListMarker[] = [];
  LIST_MARKER.lastIndex = 0;
  for (let m = LIST_MARKER.exec(text); m; m = LIST_MARKER.exec(text)) {
    const label = m[1]!;
    const lettered = label.charCodeAt(0) >= 0x61;
    const value = lettered ? label.charCodeAt(0) - 0x60 : Number(label);
    // A bullet before the marker ("• 9.", "⁃9.") belongs to the item.
    let k = m.index - 1;
    while (k >= 0 && text.charCodeAt(k) === SPACE) k--;
    const cutAt = k >= 0 && INLINE_BULLETS.has(text[k]!) ? k : m.index;
    out.push({ start: m.index, end: m.index + m[0].length, value, lettered, cutAt });
  }
  return out;
}

/**
 * The markers of one block that are real list markers: the one opening the block (after an optional bullet), and
 * inline ones that run in sequence with a neighbour ("1. ... 2. ...", "a. ... b. ..."), so that "in 2. Then" or
 * "plan b. The" alone stay ordinary text.
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
    const opensBlock = m.start === first && !(m.lettered && next === undefined && !textAfterMarkerLooksLikeItem(text, m));
    const inSequence = (prev !== undefined && prev.lettered === m.lettered && prev.value + 1 === m.value) ||
      (next !== undefined && next.lettered === m.lettered && m.value + 1 === next.value);
    if (opensBlock || inSequence) accepted.push(m);
  }
  return accepted;
}

/** "a. The first item": a lone lettered marker opening a block must be followed by a capitalised word. */
function textAfterMarkerLooksLikeItem(text: string, m: ListMarker): boolean {
  let i = m.end;
  while (i < text.length && isSpace(text.charCodeAt(i))) i++;
  return isUpper(text[i] ?? '');
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
  let sentenceStart = blockStart;
  let i = blockStart;
  while (i < blockEnd) {
    const c = text.charCodeAt(i);
    if (c === DOT || c === QUESTION || c === BANG || c === ELLIPSIS) {
      if (markerDots.has(i)) {
        i++;
        continue;
      }
      const decision = decideTerminal(text, i, blockEnd, sentenceStart);
      if (decision.cut !== undefined) {
        cuts.push(decision.cut);
        sentenceStart = decision.cut;
      }
      i = decision.next;
      continue;
    }
    if (c === CJK_STOP || c === CJK_BANG || c === CJK_QUESTION) {
      const after = skipClosers(text, i + 1, blockEnd);
      if (after < blockEnd) {
        cuts.push(after);
        sentenceStart = after;
      }
      i = after;
      continue;
    }
    if (c > 0x7f && INLINE_BULLETS.has(text[i]!) && i > blockStart && isSpace(text.charCodeAt(i - 1))) {
      cuts.push(i);
      sentenceStart = i;
    }
    i++;
  }
  if (markers.length === 0) return cuts;
  cuts.sort((a, b) => a - b);
  return cuts.filter((cut, k) => cut !== cuts[k - 1]);
}

interface Decision {
  /** Where the sentence ends, if the candidate is a boundary. */
  cut?: number;
  /** Where scanning resumes. */
  next: number;
}

/** Decides whether the terminal punctuation starting at `i` ends a sentence. */
function decideTerminal(text: string, i: number, blockEnd: number, sentenceStart: number): Decision {
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
  const after = skipClosers(text, j, blockEnd);
  // Glued to the next character: "3.14", "example.com", "Jr.'s", "mean...see".
  if (after < blockEnd && !isSpace(text.charCodeAt(after))) return { next: after };
  if (after >= blockEnd) return { next: blockEnd };
  const next = nextWord(text, after, blockEnd);

  if (questionOrBang && dots <= 1 && !ellipsisChar) {
    return isLower(next.first) ? { next: after } : { cut: after, next: after };
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
  const word = wordBefore(text, i, sentenceStart);
  const key = word.toLowerCase();
  if (TITLES.has(key) && word.length <= 6 && isUpper(word[0] ?? '')) return { next: after };
  if (LEADING.has(key)) return { next: after };
  if (BEFORE_NUMBER.has(key) && isDigit(next.first)) return { next: after };
  if (CLOSING.has(key)) return isUpper(next.first) ? { cut: after, next: after } : { next: after };
  if (AMBIGUOUS.has(key) || CALENDAR.has(word) || isInitial(word) || isDottedAbbreviation(word)) {
    const cut = SENTENCE_STARTERS.has(next.word.toLowerCase()) && !isPrepositionalFragment(text, sentenceStart, i);
    return cut ? { cut: after, next: after } : { next: after };
  }
  return { cut: after, next: after };
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
}

function nextWord(text: string, i: number, blockEnd: number): NextWord {
  while (i < blockEnd && isSpace(text.charCodeAt(i))) i++;
  while (i < blockEnd && OPENERS.has(text[i]!)) i++;
  let j = i;
  while (j < blockEnd && isLetter(text[j]!)) j++;
  return { first: text[i] ?? '', word: text.slice(i, j) };
}

/** The token ending at the period at `i`, without opening punctuation: "U.S", "Mr", "N°", "e.g". */
function wordBefore(text: string, i: number, sentenceStart: number): string {
  let j = i;
  while (j > sentenceStart && !isSpace(text.charCodeAt(j - 1))) j--;
  while (j < i && OPENERS.has(text[j]!)) j++;
  return text.slice(j, i);
}

/** A single capital letter: "E" in "Jonas E. Smith", "I" in "you and I." */
function isInitial(word: string): boolean {
  return word.length === 1 && isUpper(word);
}

/** Letters separated by periods: "U.S", "U.S.A", "a.m", "Ph.D". */
function isDottedAbbreviation(word: string): boolean {
  return /^(?:\p{L}{1,2}\.)+\p{L}{1,2}$/u.test(word);
}

/** The sentence so far is a short phrase opened by a preposition, like "At 5 a.m.". */
function isPrepositionalFragment(text: string, sentenceStart: number, i: number): boolean {
  const words = text.slice(sentenceStart, i).trim().split(/\s+/);
  return words.length <= 3 && FRAGMENT_PREPOSITIONS.has(words[0]!.toLowerCase());
}

function isWordAt(text: string, i: number): boolean {
  const c = text[i];
  return c !== undefined && isLetterOrDigit(c);
}

function isSpace(c: number): boolean {
  return c === SPACE || (c >= 0x09 && c <= CR) || c === 0xa0 || c === 0x3000 || (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x1680 || c === 0xfeff || c === NEWLINE;
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
