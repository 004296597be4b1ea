import { ClipEncoder, ClipModelError, type ClipDevice } from '../../score/clip.js';
import { startWorker } from '../../distributed/worker.js';
import { parse, UsageError, type Command } from '../command.js';
import { maxJobBytes, positiveInteger, QUEUE_OPTIONS, QUEUE_USAGE, queueFromFlags } from '../queue-options.js';

const DEVICES: readonly ClipDevice[] = ['auto', 'cpu', 'cuda'];

export const command: Command = {
  usage: 'aspo worker --queue URL --clip MODEL [--queue-name NAME] [--concurrency N] [--threads N] [--device auto|cpu|cuda]\n' +
    '           [--lock-seconds S] [--max-job-mb MB] [--images-dir DIR]\n\n' +
    '  Serves the jobs of a coordinator (`aspo score --clip MODEL --queue URL`) on this machine: loads MODEL (the\n' +
    '  coordinator\'s, the same files: a job for another model is handed back and this worker stops with exit code 3),\n' +
    '  checks every job, scores it, and returns the results. Never opens a store. Runs until SIGINT or SIGTERM, which\n' +
    '  finish the jobs in hand first.\n' +
    '  --concurrency: jobs at once (default 1); --threads: CPU threads per model call (default: all cores; with several\n' +
    '  workers on one machine, give each cores/workers). --lock-seconds: a killed worker\'s job goes to another worker\n' +
    '  after about this long (default 30).\n' + QUEUE_USAGE,
  async run(argv) {
    const { values } = parse(argv, {
      ...QUEUE_OPTIONS,
      clip: { type: 'string' },
      device: { type: 'string', default: 'auto' },
      concurrency: { type: 'string' },
      threads: { type: 'string' },
      'lock-seconds': { type: 'string' },
    });
    const location = queueFromFlags(values);
    if (!values.clip) throw new UsageError('--clip MODEL is required: the coordinator\'s CLIP model (a local folder or a Hub id)');
    const device = values.device as ClipDevice;
    if (!DEVICES.includes(device)) throw new UsageError(`--device must be one of ${DEVICES.join(', ')}, got "${values.device}"`);
    const concurrency = positiveInteger(values.concurrency, 'concurrency', 1);
    const threads = values.threads === undefined ? undefined : positiveInteger(values.threads, 'threads', 1);
    const lockSeconds = Number(values['lock-seconds'] ?? 30);
    if (!(lockSeconds >= 1)) throw new UsageError(`--lock-seconds must be at least 1, got "${values['lock-seconds']}"`);
    let clip: ClipEncoder;
    try {
      clip = await ClipEncoder.load(values.clip, { device, threads });
    } catch (error) {
      if (error instanceof ClipModelError) throw new UsageError(error.message);
      throw error;
    }
    const log = (line: string) => process.stderr.write(`${line}\n`);
    try {
      const worker = await startWorker(location, {
        clip, concurrency, lockMs: lockSeconds * 1000, maxJobBytes: maxJobBytes(values['max-job-mb']), imagesDir: values['images-dir'], log,
      });
      const stop = () => {
        log('worker: stopping after the jobs in hand');
        void worker.close();
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      const code = await worker.stopped;
      log(`worker: stopped after ${worker.completed()} jobs`);
      return code;
    } finally {
      await clip.dispose();
    }
  },
};
