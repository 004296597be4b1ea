import { statSync } from 'node:fs';
import path from 'node:path';
import { withStore } from '../../store/store.js';
import { buildReport, checkReportOptions, REPORT_DEFAULTS, writeReport } from '../../report/report.js';
import { storeFiles } from '../../util/safe-output.js';
import { DB_OPTION, numberOption, parse, UsageError, type Command } from '../command.js';

export const command: Command = {
  usage: 'aspo report [--db PATH] --out report.html [--png DIR] [--alpha X] [--scale X] [--top N] [--thumbnail PX] [--force]\n\n' +
    '  Writes one self-contained HTML file (inline CSS and SVG charts, images as data: URIs; viewing it needs no\n' +
    '  network): dataset counts and rejects by reason, sentences per response, distributions of similarity,\n' +
    '  perplexity and weight, weight against labels (ROC curve and AUROC), training curves per run, and the\n' +
    '  lowest-weighted and most-penalised sentences with their images. Sections without data say what to run.\n' +
    '  --png DIR: also write each chart as DIR/<chart>.png. --alpha, --scale: the weight parameters\n' +
    `  (default ${REPORT_DEFAULTS.alpha} and ${REPORT_DEFAULTS.scale}). --top: rows in the sentence tables (default ${REPORT_DEFAULTS.top}).\n` +
    `  --thumbnail: thumbnail size in pixels (default ${REPORT_DEFAULTS.thumbnail}). The store is opened read-only.\n` +
    '  An existing --out file or --png folder is replaced only with --force (never the store).',
  async run(argv) {
    const { values } = parse(argv, {
      ...DB_OPTION,
      out: { type: 'string' },
      png: { type: 'string' },
      alpha: { type: 'string' },
      scale: { type: 'string' },
      top: { type: 'string' },
      thumbnail: { type: 'string' },
      force: { type: 'boolean', default: false },
    });
    if (!values.out) throw new UsageError('--out FILE is required (the HTML report to write)');
    let checked;
    try {
      checked = checkReportOptions({
        alpha: numberOption(values.alpha, 'alpha', REPORT_DEFAULTS.alpha),
        scale: numberOption(values.scale, 'scale', REPORT_DEFAULTS.scale),
        top: numberOption(values.top, 'top', REPORT_DEFAULTS.top),
        thumbnail: numberOption(values.thumbnail, 'thumbnail', REPORT_DEFAULTS.thumbnail),
      });
    } catch (error) {
      // checkReportOptions names the option; the flag is the same name.
      if (error instanceof RangeError) throw new UsageError(`--${error.message}`);
      throw error;
    }

    const started = performance.now();
    const report = await withStore(values.db, (store) =>
      buildReport(store, { ...checked, subtitle: path.resolve(values.db) }), { readOnly: true });
    const pngs = await writeReport(report, values.out, values.png, { force: values.force, inputs: storeFiles(values.db) });
    const kb = statSync(values.out).size / 1024;
    process.stderr.write(`report: ${report.sections.length} sections (${report.empty.length} without data` +
      `${report.empty.length ? `: ${report.empty.join(', ')}` : ''}), ${report.charts.length} charts → ` +
      `${path.resolve(values.out)} (${kb.toFixed(0)} KB)${pngs.length ? `, ${pngs.length} PNGs in ${path.resolve(values.png!)}` : ''} ` +
      `in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
    return 0;
  },
};
