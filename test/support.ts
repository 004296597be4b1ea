import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import '../src/schema.js'; // every stage's tables, for the stores the tests open

/** The repository root (tests run from dist/test/). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** `../shared` beside the checkout: third-party data used by tests when present (CI has it). */
export const SHARED = path.resolve(ROOT, '..', 'shared');

/** Path into ../shared, or undefined when it is absent; use with `{ skip: ... }`. */
export function sharedPath(...parts: string[]): string | undefined {
  const p = path.join(SHARED, ...parts);
  return existsSync(p) ? p : undefined;
}

const tempDirs: string[] = [];
process.on('exit', () => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/** A fresh temporary folder, removed when the process exits. */
export function tempDir(prefix = 'aspo-test-'): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

/** The built CLI entry point, for tests that run `aspo` as a user would. */
export const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
