/**
 * BLOB values arrive from DuckDB as buffers whose size V8's garbage collector does not seem to weigh, so a loop
 * over image bytes can grow far past what it holds before a collection runs. Loops that pass many bytes through
 * JavaScript call `collectAfter(bytes)` to force a collection every BUDGET bytes.
 */
import v8 from 'node:v8';
import vm from 'node:vm';

const BUDGET = 64 * 2 ** 20;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

let seen = 0;

export function collectAfter(bytes: number): void {
  seen += bytes;
  if (seen >= BUDGET) {
    seen = 0;
    gc();
  }
}
