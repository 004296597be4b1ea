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

/** Options every command that touches the store accepts. */
export const DB_OPTION = { db: { type: 'string', default: 'aspo.duckdb' } } as const satisfies Options;

/** `node:util` parseArgs with errors turned into UsageErrors. */
export function parse<T extends Options>(argv: string[], options: T, allowPositionals = false):
  ReturnType<typeof parseArgs<{ args: string[]; options: T; allowPositionals: true; strict: true }>> {
  try {
    return parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals, strict: true }) as never;
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

export function numberOption(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got "${value}"`);
  return n;
}

