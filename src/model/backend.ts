import { createRequire } from 'node:module';
import path from 'node:path';
// The core (ops, autodiff, optimizers) and the backends the toolkit runs on, not the @tensorflow/tfjs umbrella, whose
// WebGL backend, converter and data packages nothing here uses. tfjs-core's Node build registers no gradient
// functions; tfjs-layers' build registers TensorFlow.js's gradient of every op when it loads (the umbrella gets them
// the same way), so it is imported for that alone.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-backend-cpu';

export const BACKENDS = ['tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKENDS)[number] | 'auto';

const require = createRequire(import.meta.url);

/**
 * Native bindings register the backend named "tensorflow" when their package loads. They are optional peer
 * dependencies, installed by the user who wants them (README, "GPU"); they register on the same tfjs-core engine.
 */
const NATIVE_PACKAGES: Record<string, string> = {
  'tensorflow-gpu': '@tensorflow/tfjs-node-gpu',
  tensorflow: '@tensorflow/tfjs-node',
};

async function tryBackend(name: (typeof BACKENDS)[number]): Promise<boolean> {
  try {
    if (name in NATIVE_PACKAGES) {
      await import(NATIVE_PACKAGES[name]!);
      return await tf.setBackend('tensorflow');
    }
    if (name === 'wasm') {
      const wasm = await import('@tensorflow/tfjs-backend-wasm');
      const dist = path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep;
      wasm.setWasmPaths(dist);
      return await tf.setBackend('wasm');
    }
    return await tf.setBackend('cpu');  // registered by the import of tfjs-backend-cpu above
  } catch {
    return false;
  }
}

let chosen: string | undefined;

/**
 * Selects the fastest TensorFlow.js backend that loads here — native GPU, native CPU,
 * WebAssembly (SIMD), then pure JavaScript — or exactly the one asked for.
 * Returns the name actually in use. Later calls return the first choice.
 */
export async function initBackend(requested: BackendName = 'auto'): Promise<string> {
  if (requested !== 'auto' && !BACKENDS.includes(requested)) {
    throw new Error(`unknown TensorFlow.js backend "${requested}"; use auto or one of ${BACKENDS.join(', ')}`);
  }
  if (chosen && (requested === 'auto' || requested === chosen)) return chosen;
  const order = requested === 'auto' ? BACKENDS : [requested];
  for (const name of order) {
    if (await tryBackend(name)) {
      await tf.ready();
      chosen = name;
      return name;
    }
  }
  throw new Error(`TensorFlow.js backend "${requested}" could not be loaded` +
    (requested in NATIVE_PACKAGES ? ` (install ${NATIVE_PACKAGES[requested]} with npm, or use --backend wasm)` : ''));
}

export { tf };
