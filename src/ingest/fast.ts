/**
 * The DuckDB-native fast path for JSON Lines: DuckDB reads, checks and hashes the simple rows (plain-string
 * prompt/question, chosen, rejected and nothing else) on its own threads; every other line goes back to the
 * JavaScript path, which decides about it exactly as it would have without this module.
 *
 * A line is taken here only when the result is certain to be what the JavaScript path would give:
 * - the line is a flat JSON object of string members, matched by a strict grammar (so JSON.parse accepts it too:
 *   no trailing commas, NaN, raw control characters or lone surrogate escapes), without \u0000 escapes;
 * - it has three members, named prompt, chosen, rejected or question, chosen, rejected (no duplicates, no meta);
 * - the prompt has no <image> placeholder and no leading or trailing whitespace (as String.prototype.trim sees it),
 *   and chosen and rejected are not blank, so no field is changed or refused.
 * pair_id is computed in SQL by the definition in ingest.ts, with lengths counted in UTF-16 code units.
 */
import { open } from 'node:fs/promises';
import type { Store } from '../store/store.js';

/** Characters String.prototype.trim removes (ECMAScript WhiteSpace and LineTerminator), as an RE2 class. */
const JS_SPACE = String.raw`[\t\n\x0b\x0c\r \x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}]`;
const JSON_SPACE = String.raw`[ \t\r]*`;
/** A JSON string whose surrogate escapes come in pairs (JSON.parse keeps a lone one; DuckDB's parser refuses it). */
const JSON_STRING = String.raw`"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2})|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})*"`;
const MEMBER = `${JSON_SPACE}${JSON_STRING}${JSON_SPACE}:${JSON_SPACE}${JSON_STRING}${JSON_SPACE}`;
/** Exactly three members: with chosen, rejected and one of prompt/question all found, there is no other key and no
 *  key twice. */
const FLAT_OBJECT = `${JSON_SPACE}\\{${MEMBER},${MEMBER},${MEMBER}\\}${JSON_SPACE}`;

/** A string's length as JavaScript counts it: code points, plus one more for each astral one (a surrogate pair). */
const utf16Length = (x: string) =>
  `CASE WHEN strlen(${x}) = length(${x}) THEN strlen(${x}) ELSE length(${x}) + length(regexp_replace(${x}, '[^\\x{10000}-\\x{10FFFF}]+', '', 'g')) END`;

const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;

/**
 * Reads the file into the temp table ingest_fast, one row per line in file order (rowid = line index):
 * ok (taken by the fast path) with prompt, chosen, rejected and pair_id, or routed (the line, for the JavaScript
 * path). Blank lines of the CSV reader are NULL in both. Throws when DuckDB cannot read the file this way
 * (invalid UTF-8, a bare carriage return, a line over 2 MB, ...).
 */
export async function stageLines(store: Store, file: string): Promise<void> {
  const csv = `read_csv(${literal(file)}, columns = {'j': 'VARCHAR'}, delim = chr(1), quote = '', escape = '', ` +
    `header = false, auto_detect = false, new_line = '\\n')`;
  await store.run(`CREATE OR REPLACE TEMP TABLE ingest_fast AS
    WITH shaped AS (
      SELECT j, coalesce(regexp_full_match(j, ${literal(FLAT_OBJECT)}) AND NOT contains(j, '\\u0000'), false) AS shaped FROM ${csv}
    ), parsed AS (
      SELECT j, CASE WHEN shaped THEN json_extract_string(j, ['$.prompt', '$.question', '$.chosen', '$.rejected']) END AS v
      FROM shaped
    ), fields AS (
      SELECT j, coalesce((v[1] IS NULL) <> (v[2] IS NULL) AND v[3] IS NOT NULL AND v[4] IS NOT NULL, false) AS keyed,
        coalesce(v[1], v[2]) AS p, v[3] AS c, v[4] AS r
      FROM parsed
    ), judged AS (
      SELECT j, p, c, r, coalesce(keyed AND p <> '' AND NOT contains(p, '<image>')
        AND NOT regexp_matches(p, ${literal(`^${JS_SPACE}|${JS_SPACE}$`)})
        AND NOT regexp_full_match(c, ${literal(`${JS_SPACE}*`)}) AND NOT regexp_full_match(r, ${literal(`${JS_SPACE}*`)}), false) AS ok
      FROM fields
    )
    SELECT ok, CASE WHEN NOT ok THEN j END AS routed,
      CASE WHEN ok THEN p END AS prompt, CASE WHEN ok THEN c END AS chosen, CASE WHEN ok THEN r END AS rejected,
      CASE WHEN ok THEN substr(sha256(concat(${utf16Length('p')}, ':', p, ${utf16Length('c')}, ':', c, ${utf16Length('r')}, ':', r, '0:')), 1, 32) END AS pair_id
    FROM judged`);
}

/** Lines the fast path left to JavaScript, in order, `limit` at a time after line `after`. */
export async function routedLines(store: Store, after: number, limit: number): Promise<{ line: number; text: string }[]> {
  const rows = await store.all<{ line: number; text: string }>(
    `SELECT rowid AS line, routed AS text FROM ingest_fast WHERE routed IS NOT NULL AND rowid > ${after} ORDER BY rowid LIMIT ${limit}`);
  return rows;
}

/** For each given pair id that the fast path holds, the first line holding it. */
export async function firstFastLines(store: Store, ids: readonly string[]): Promise<Map<string, number>> {
  const safe = ids.filter((id) => /^[0-9a-f]{32}$/.test(id));
  if (!safe.length) return new Map();
  const rows = await store.all<{ pair_id: string; line: number }>(
    `SELECT pair_id, min(rowid) AS line FROM ingest_fast WHERE ok AND pair_id IN (${safe.map((id) => `'${id}'`).join(', ')}) GROUP BY pair_id`);
  return new Map(rows.map((r) => [r.pair_id, Number(r.line)]));
}

/**
 * Inserts the first line of each pair id that is not stored yet (the JavaScript path's decisions for routed lines
 * are in the store by now). Returns the lines taken and the pairs inserted.
 */
export async function insertFastPairs(store: Store, source: string): Promise<{ taken: number; inserted: number }> {
  const taken = Number(await store.scalar('SELECT count(*) FROM ingest_fast WHERE ok'));
  const result = await store.connection.runAndReadAll(`INSERT INTO pairs
    SELECT pair_id, ${literal(source)}, rowid, 'jsonl', prompt, chosen, rejected, NULL, NULL FROM ingest_fast
    WHERE ok AND rowid IN (SELECT min(rowid) FROM ingest_fast WHERE ok GROUP BY pair_id)
      AND pair_id NOT IN (SELECT pair_id FROM pairs)`);
  const inserted = Number(result.getRowsJS()[0]?.[0] ?? 0);
  return { taken, inserted };
}

export async function dropStage(store: Store): Promise<void> {
  await store.run('DROP TABLE IF EXISTS ingest_fast');
}

/** Glob characters make DuckDB's readers read other files than the one named. */
export function readableByDuckDb(file: string): boolean {
  return !/[*?[\]{}]/.test(file);
}

/**
 * Whether the fast path is worth trying: one of the first lines is a simple row. (Only a guess at speed; what is
 * taken is decided line by line in SQL.)
 */
export async function looksSimple(file: string): Promise<boolean> {
  const handle = await open(file, 'r');
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(1 << 16), 0, 1 << 16, 0);
    const lines = buffer.toString('utf8', 0, bytesRead).split('\n').slice(0, -1).slice(0, 20);
    return lines.some((line) => {
      try {
        const row = JSON.parse(line) as unknown;
        if (typeof row !== 'object' || row === null || Array.isArray(row)) return false;
        const keys = Object.keys(row).sort().join(',');
        return (keys === 'chosen,prompt,rejected' || keys === 'chosen,question,rejected') && Object.values(row).every((v) => typeof v === 'string');
      } catch {
        return false;
      }
    });
  } finally {
    await handle.close();
  }
}
