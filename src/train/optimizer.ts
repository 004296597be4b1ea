/**
 * AdamW written out with tf ops, so that its whole state (step and both moments per
 * weight) can be saved and restored exactly — tf.train.adam keeps part of its state
 * in places a checkpoint cannot reach bit-for-bit.
 */
import { tf } from '../model/backend.js';
import type { OptimizerState } from '../model/checkpoint.js';

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  epsilon: number;
  /** Decoupled weight decay, applied to matrices only (not biases, LayerNorm or vectors). */
  weightDecay: number;
  /** Clip the global gradient norm to this value; 0 turns clipping off. */
  clipNorm: number;
}

export const DEFAULT_ADAMW: AdamWOptions = { beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.01, clipNorm: 1 };

export class AdamW {
  step = 0;
  private readonly m: Record<string, tf.Variable> = {};
  private readonly v: Record<string, tf.Variable> = {};

  constructor(private readonly weights: Record<string, tf.Variable>, readonly options: AdamWOptions = DEFAULT_ADAMW) {
    for (const [name, w] of Object.entries(weights)) {
      this.m[name] = tf.variable(tf.zerosLike(w), false);
      this.v[name] = tf.variable(tf.zerosLike(w), false);
    }
  }

  /**
   * Applies one update with learning rate `lr`; returns the global gradient norm before clipping.
   * A weight without a gradient (e.g. the image projection in a text-only batch) counts as gradient zero.
   */
  apply(grads: Record<string, tf.Tensor>, lr: number): number {
    const { beta1, beta2, epsilon, weightDecay, clipNorm } = this.options;
    this.step += 1;
    const names = Object.keys(this.weights);
    const norm = tf.tidy(() => tf.sqrt(tf.addN(Object.values(grads).map((g) => tf.sum(tf.square(g))))).dataSync()[0]!);
    const scale = clipNorm > 0 && norm > clipNorm ? clipNorm / norm : 1;
    const correction1 = 1 - beta1 ** this.step;
    const correction2 = 1 - beta2 ** this.step;
    tf.tidy(() => {
      for (const name of names) {
        const w = this.weights[name]!;
        const raw = grads[name] ?? tf.zerosLike(w);
        const g = scale === 1 ? raw : tf.mul(raw, scale);
        const m = tf.add(tf.mul(this.m[name]!, beta1), tf.mul(g, 1 - beta1));
        const v = tf.add(tf.mul(this.v[name]!, beta2), tf.mul(tf.square(g), 1 - beta2));
        this.m[name]!.assign(m);
        this.v[name]!.assign(v);
        const update = tf.div(tf.div(m, correction1), tf.add(tf.sqrt(tf.div(v, correction2)), epsilon));
        const decayed = w.rank > 1 && weightDecay > 0 ? tf.mul(w, 1 - lr * weightDecay) : w;
        w.assign(tf.sub(decayed, tf.mul(update, lr)));
      }
    });
    return norm;
  }

  async state(): Promise<OptimizerState> {
    const m: Record<string, Float32Array> = {};
    const v: Record<string, Float32Array> = {};
    for (const name of Object.keys(this.weights)) {
      m[name] = (await this.m[name]!.data()) as Float32Array;
      v[name] = (await this.v[name]!.data()) as Float32Array;
    }
    return { step: this.step, m, v };
  }

  restore(state: OptimizerState): void {
    for (const [name, w] of Object.entries(this.weights)) {
      for (const [kind, moments, target] of [['m', state.m, this.m], ['v', state.v, this.v]] as const) {
        const data = moments[name];
        if (!data || data.length !== w.size) throw new Error(`optimizer state: ${kind} of ${name} is missing or has the wrong size`);
        target[name]!.assign(tf.tensor(data, w.shape, 'float32'));
      }
    }
    this.step = state.step;
  }

  dispose(): void {
    for (const t of [...Object.values(this.m), ...Object.values(this.v)]) t.dispose();
  }
}
