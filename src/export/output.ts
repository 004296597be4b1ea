/**
 * Where an export writes, and when it may replace what is there. SQL text helpers for the COPY statements.
 */
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';

/** A user mistake in an export request (bad option value, output in the way, unknown table). */
export class ExportError extends Error {}

export const quoteIdent = (name: string): string => `"${name.replaceAll('"', '""')}"`;
export const quoteString = (text: string): string => `'${text.replaceAll("'", "''")}'`;

/** Relative paths (with `/`) of every file under `dir`. */
export function filesUnder(dir: string, prefix = ''): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const relative = prefix ? `${prefix}/${entry.name}` : entry.name;
    return entry.isDirectory() ? filesUnder(path.join(dir, entry.name), relative) : [relative];
  });
}

/**
 * Makes `out` ready for a single output file: refuses an existing file unless `force`, and never replaces a folder.
 */
export function prepareFile(out: string, force: boolean): void {
  if (existsSync(out)) {
    if (statSync(out).isDirectory()) throw new ExportError(`--out ${out} is a folder; this format writes one file`);
    if (!force) throw new ExportError(`--out ${out} exists; pass --force to overwrite it`);
    rmSync(out);
  }
  mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
}

/**
 * Makes `out` an empty folder. An existing non-empty folder is replaced only with `force`, and only when every file
 * in it is one an export writes (`ours`), so a mistyped --out never deletes unrelated files.
 */
export function prepareFolder(out: string, force: boolean, ours: (relativePath: string) => boolean): void {
  if (existsSync(out)) {
    if (!statSync(out).isDirectory()) throw new ExportError(`--out ${out} is a file; this format writes a folder`);
    const files = filesUnder(out);
    if (files.length) {
      if (!force) throw new ExportError(`--out ${out} is not empty; pass --force to replace the export in it`);
      const foreign = files.find((f) => !ours(f));
      if (foreign) throw new ExportError(`refusing to replace ${out}: it holds ${foreign}, which no export writes; choose another --out`);
      rmSync(out, { recursive: true });
    }
  }
  mkdirSync(out, { recursive: true });
}
