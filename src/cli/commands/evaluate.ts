import { initBackend } from '../../model/backend.js';
import { loadModel } from '../../model/checkpoint.js';
import { evaluateGenerations } from '../../synth/evaluate.js';
import { numberOption, parse, UsageError, type Command } from '../command.js';
import { backendOption } from '../model-options.js';

export const command: Command = {
  usage: `aspo evaluate --checkpoint DIR --data DIR [--limit N] [--show N] [--backend NAME]

Generates a greedy description of every evaluation image of a synthetic dataset folder (aspo synth) with the
model in --checkpoint and judges each sentence against the image's true scene. Prints one JSON line to stdout:
images, sentences, hallucinationRate (false / judged sentences), unknownRate (sentences the judge cannot read),
cleanDescriptions (share whose every sentence is true).

  --limit N    only the first N evaluation images
  --show N     also print N descriptions with their judgements to stderr`,
  async run(argv) {
    const { values } = parse(argv, {
      checkpoint: { type: 'string' }, data: { type: 'string' }, limit: { type: 'string' }, show: { type: 'string' },
      backend: { type: 'string', default: 'auto' },
    });
    if (!values.checkpoint) throw new UsageError('give --checkpoint DIR (a model checkpoint folder)');
    if (!values.data) throw new UsageError('give --data DIR (a folder written by aspo synth)');
    const backend = backendOption(values.backend);
    const limit = values.limit === undefined ? undefined : numberOption(values.limit, 'limit', 0);
    await initBackend(backend);
    const { model, tokenizer } = await loadModel(values.checkpoint);
    const result = await evaluateGenerations(model, tokenizer, values.data, { limit });
    model.dispose();
    for (const d of result.descriptions.slice(0, numberOption(values.show, 'show', 0))) {
      process.stderr.write(`${d.image}: ${d.prompt}${d.text}\n  → ${d.true} true, ${d.false} false, ${d.unknown} unknown\n`);
    }
    const { descriptions, ...summary } = result;
    process.stderr.write(`evaluate: ${summary.images} images, ${summary.sentences} sentences, hallucination rate ` +
      `${(100 * summary.hallucinationRate).toFixed(1)}%, unreadable ${(100 * summary.unknownRate).toFixed(1)}%\n`);
    process.stdout.write(JSON.stringify({ ...summary, checkpoint: values.checkpoint, data: values.data }) + '\n');
    return 0;
  },
};
