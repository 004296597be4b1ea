import type { Command } from '../command.js';
export const command: Command = { usage: 'aspo run', async run() { return 0; } };
