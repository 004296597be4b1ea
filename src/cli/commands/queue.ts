import { clearQueue, queueStatus } from '../../distributed/queue.js';
import { parse, UsageError, type Command } from '../command.js';
import { QUEUE_OPTIONS, queueFromFlags } from '../queue-options.js';

export const command: Command = {
  usage: 'aspo queue status|clear --queue URL [--queue-name NAME] [--queue-prefix PREFIX] [--json]\n\n' +
    '  status: the queue\'s jobs by state (waiting, active, delayed, completed but not yet stored, failed), the\n' +
    '  connected workers, and the latest failures. clear: deletes the queue and every job in it (for a run given up for\n' +
    '  good; a coordinator restarted later enqueues what is still pending again).',
  async run(argv) {
    const { values, positionals } = parse(argv, { ...QUEUE_OPTIONS, json: { type: 'boolean' } }, true);
    const action = positionals[0];
    if (positionals.length !== 1 || (action !== 'status' && action !== 'clear')) throw new UsageError('give one action: status or clear');
    const location = queueFromFlags(values);
    if (action === 'clear') {
      await clearQueue(location);
      process.stderr.write(`queue: ${location.name} on ${location.redacted} deleted\n`);
      return 0;
    }
    const status = await queueStatus(location);
    if (values.json) {
      process.stdout.write(`${JSON.stringify({ queue: location.name, url: location.redacted, ...status })}\n`);
      return 0;
    }
    const lines = [
      `queue ${location.name} on ${location.redacted}`,
      `jobs: ${Object.entries(status.counts).map(([state, n]) => `${n} ${state}`).join(', ')}`,
      `workers: ${status.workers.length}${status.workers.map((w) => `\n  ${w.name || '(unnamed)'} ${w.addr} connected ${w.age} s`).join('')}`,
      ...(status.failures.length ? ['latest failures:', ...status.failures.map((f) => `  ${f.id}: ${f.reason}`)] : []),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  },
};
