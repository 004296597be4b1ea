/** Options of the commands that run a model (kept apart from command.ts so `aspo query` never loads TensorFlow.js). */
import { BACKENDS, type BackendName } from '../model/backend.js';
import { lossConfig, type AspoLossConfig } from '../train/loss.js';
import { numberOption, UsageError } from './command.js';

/** `--backend`: `auto` or a backend name; a usage error otherwise. */
export function backendOption(value: string | undefined): BackendName {
  const backend = (value ?? 'auto') as BackendName;
  if (backend !== 'auto' && !BACKENDS.includes(backend as never)) {
    throw new UsageError(`--backend must be auto or one of ${BACKENDS.join(', ')}, got "${value}"`);
  }
  return backend;
}

/** The loss options every command that computes the loss takes (each flag names an AspoLossConfig field). */
export const LOSS_FLAGS = {
  beta: 'beta', alpha: 'alpha', scale: 'scale', normalize: 'normalize',
  detachWeights: 'detach-weights', refWeights: 'ref-weights', pplSource: 'ppl-source',
} as const satisfies Partial<Record<keyof AspoLossConfig, string>>;

/**
 * The loss configuration from `base` and the loss flags given on the command line, checked by lossConfig; its
 * errors name the field, rewritten here to name the flag.
 */
export function lossFromFlags(values: Record<string, unknown>, base: Partial<AspoLossConfig>): AspoLossConfig {
  const given: Partial<Record<keyof AspoLossConfig, unknown>> = {};
  for (const [field, flag] of Object.entries(LOSS_FLAGS) as Array<[keyof typeof LOSS_FLAGS, string]>) {
    const value = values[flag];
    if (value === undefined) continue;
    if (field === 'detachWeights') {
      if (value !== 'true' && value !== 'false') throw new UsageError(`--${flag} must be true or false, got "${value}"`);
      given[field] = value === 'true';
    } else {
      given[field] = ['beta', 'alpha', 'scale'].includes(field) ? numberOption(value as string, flag, NaN) : value;
    }
  }
  try {
    return lossConfig({ ...base, ...given });
  } catch (error) {
    const message = (error as Error).message;
    const field = message.split(' ')[0] as keyof typeof LOSS_FLAGS;
    throw new UsageError(LOSS_FLAGS[field] ? `--${LOSS_FLAGS[field]}${message.slice(field.length)}` : message);
  }
}
