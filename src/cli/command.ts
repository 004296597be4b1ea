import { parseArgs, type ParseArgsConfig } from 'node:util';

/** One `aspo` subcommand: a thin layer that parses options and calls the library API. */
export interface Command {
  /** Shown by `--help` and after a usage error. */
  usage: string;
  /** Returns the process exit code. */
  run(argv: string[]): Promise<number>;
}

/** An error the user can fix; printed without a stack trace. */
export class UsageError extends Error {}

export type Options = NonNullable<ParseArgsConfig['options']>;

/** `--json`: the command's summary as one JSON object on stdout (the human lines stay on stderr). */
export const JSON_OPTION = { json: { type: 'boolean', default: false } } as const satisfies Options;

/** Writes a summary object as one line of JSON on stdout. */
export function printJson(summary: object): void {
  process.stdout.write(`${JSON.stringify(summary)}\n`);
}

/** Options every command that touches the store accepts. */
export const DB_OPTION = { db: { type: 'string', default: 'aspo.duckdb' } } as const satisfies Options;

/** Edit distance with adjacent transpositions counted as one edit ("ingset" → "ingest" is 1). */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

/** The candidate closest to a mistyped word, when it is close enough to be what was meant. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = editDistance(word, candidate);
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return bestDistance <= Math.max(1, Math.min(2, Math.floor(word.length / 3))) ? best : undefined;
}

/** `node:util` parseArgs with errors turned into UsageErrors; an unknown option gets a "did you mean". */
export function parse<T extends Options>(argv: string[], options: T, allowPositionals = false):
  ReturnType<typeof parseArgs<{ args: string[]; options: T; allowPositionals: true; strict: true }>> {
  try {
    return parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals, strict: true }) as never;
  } catch (error) {
    const unknown = (error as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION'
      ? /'(--?[^'=]+)/.exec((error as Error).message)?.[1] : undefined;
    const meant = unknown?.startsWith('--') ? closest(unknown.slice(2), Object.keys(options)) : undefined;
    throw new UsageError(meant ? `unknown option ${unknown}; did you mean --${meant}?` : (error as Error).message);
  }
}

export function numberOption(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got "${value}"`);
  return n;
}

