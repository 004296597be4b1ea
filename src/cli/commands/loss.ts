import { createInterface } from 'node:readline';
import { evaluateLossCase, parseLossCase, type LossCaseEvaluation } from '../../train/loss-case.js';
import { DEFAULT_LOSS_CONFIG } from '../../train/loss.js';
import { parse, type Command } from '../command.js';

const defaults = Object.entries(DEFAULT_LOSS_CONFIG).map(([k, v]) => `${k} ${v}`).join(', ');

export const command: Command = {
  usage: 'aspo loss [--explain] < cases.jsonl\n\n' +
    '  Evaluates the sentence-level (ASPO) or DPO loss on hand-made cases, with the trainer\'s own code.\n' +
    '  Reads one JSON case per line on stdin:\n' +
    '    {"alpha":0.5, "chosen":{"policyLogps":[...],"refLogps":[...],"sentenceIds":[0,0,1,-1],"similarity":[0.3,0.2]},\n' +
    '     "rejected":{"policyLogps":[...],"refLogps":[...]}}\n' +
    '  Options in a case (all optional; the defaults are the method\'s):\n' +
    `    ${defaults}\n` +
    '  also "id" (echoed back) and chosen.sentences (the sentence texts, for --explain).\n' +
    '  Writes one JSON line per case: loss, margin, weights, multipliers, gradPolicyChosen, gradPolicyRejected;\n' +
    '  a malformed case gives {"error": ...} naming the field and the next case is still read (exit code 1).\n' +
    '  --explain prints a per-sentence table instead: PPL, S\', P\', w, m and each sentence\'s share of the margin.',
  async run(argv) {
    const { values } = parse(argv, { explain: { type: 'boolean', default: false } });
    if (process.stdin.isTTY) process.stderr.write('aspo loss: reading cases from stdin (one JSON object per line; Ctrl-D to end)\n');

    let failures = 0;
    let lineNumber = 0;
    for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
      lineNumber++;
      if (!line.trim()) continue;
      let evaluation: LossCaseEvaluation;
      try {
        let json: unknown;
        try {
          json = JSON.parse(line);
        } catch (error) {
          throw new Error(`line ${lineNumber} is not valid JSON: ${(error as Error).message}`);
        }
        evaluation = evaluateLossCase(parseLossCase(json));
      } catch (error) {
        failures++;
        const message = (error as Error).message;
        if (values.explain) process.stderr.write(`aspo loss: line ${lineNumber}: ${message}\n`);
        else process.stdout.write(JSON.stringify({ line: lineNumber, error: message }) + '\n');
        continue;
      }
      process.stdout.write(values.explain ? formatExplanation(evaluation) + '\n' : JSON.stringify(evaluation.result) + '\n');
    }
    return failures > 0 ? 1 : 0;
  },
};

/** A fixed-width table of one case's sentences and how each moves the margin. */
export function formatExplanation(e: LossCaseEvaluation): string {
  const num = (v: number | undefined, digits = 4) => (v === undefined ? '—' : v.toFixed(digits));
  const clip = (text: string | undefined) => {
    if (text === undefined) return '';
    const flat = text.replace(/\s+/g, ' ').trim();
    return flat.length > 48 ? flat.slice(0, 47) + '…' : flat;
  };
  const header = ['#', 'tokens', 'PPL', 'S', "S'", "P'", 'w', 'm', 'margin share', 'text'];
  const rows = e.sentences.map((s) => [String(s.index), String(s.tokens), num(s.perplexity, 3), num(s.similarity), num(s.similarityNorm),
    num(s.perplexityNorm), num(s.weight), num(s.multiplier), num(s.contribution, 6), clip(s.text)]);
  rows.push(['—', '', '', '', '', '', '', '1.0000', num(e.outsideContribution, 6), '(chosen tokens outside sentences)']);
  rows.push(['—', '', '', '', '', '', '', '', num(e.rejectedContribution, 6), '(rejected response: −β·logr)']);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padStart(widths[i]!))).join('  ').trimEnd();
  const { result } = e;
  return [
    line(header),
    ...rows.map(line),
    `margin ${result.margin.toFixed(6)}   loss ${result.loss.toFixed(6)}` + (result.id !== undefined ? `   id ${result.id}` : ''),
  ].join('\n') + '\n';
}
