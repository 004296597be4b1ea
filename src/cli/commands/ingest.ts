import type { Command } from '../command.js';
export const command: Command = { usage: 'aspo ingest', async run() { return 0; } };
