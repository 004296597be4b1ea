/**
 * Distributed-scoring benchmark: sentences/s of the score stage with the model in process against the same stage
 * through a BullMQ queue with 1 and 2 `aspo worker` processes (real processes, one model thread each, so two
 * workers can use the machine's two cores), on `clip-b32-compute` (the model dominates, as a real CLIP does);
 * then the coordinator's own cost per 1,000 sentences, and Redis's commands and bytes per job, on the tiny model
 * (the model costs nothing, so the queue and the coordinator are all there is). Runs its own redis-server on a free
 * loopback port (so the counts are this benchmark's alone), or uses --redis URL.
 *
 *   npx tsc -p . && nice -n 5 node dist/bench/distributed.js [--images 64] [--sentences 4] [--layers 6] [--batch-size 8] [--rounds 3]
 *     [--cost-images 256]
 *
 * Rounds interleave the configurations (in process, 1 worker, 2 workers), each on a fresh copy of the same store;
 * medians over the rounds, ratios within a round.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import sharp from 'sharp';
import { Rng } from '../src/util/random.js';
import { sha256Hex } from '../src/util/hash.js';
import { withStore, type Store } from '../src/store/store.js';
import { segmentStage } from '../src/segment/stage.js';
import { ClipEncoder, clipIdentity } from '../src/score/clip.js';
import { scoreSimilarity } from '../src/score/stage.js';
import { scoreThroughQueue } from '../src/distributed/coordinator.js';
import { queueLocation, type QueueLocation } from '../src/distributed/connection.js';
import { writeTinyClip } from '../test/clip-fixture.js';
import { writeComputeClip } from '../test/clip-compute-fixture.js';
import { CLI } from '../test/support.js';

const COLORS = ['red', 'green', 'blue', 'yellow', 'dark'];

/** `images` noise JPEGs (512×384) with one pair each, `sentences` sentences a side, all distinct; segmented. */
async function buildStore(store: Store, images: number, sentences: number): Promise<void> {
  const rng = new Rng(7);
  const pick = () => COLORS[Math.floor(rng.next() * COLORS.length)]!;
  for (let i = 0; i < images; i++) {
    const bytes = await sharp({ create: { width: 512, height: 384, channels: 3, background: { r: 0, g: 0, b: 0 }, noise: { type: 'gaussian', mean: 128, sigma: 40 } } })
      .jpeg({ quality: 85 }).toBuffer();
    const id = sha256Hex(bytes);
    await store.append('images', ['varchar', 'varchar', 'integer', 'integer', 'integer', 'integer', 'varchar', 'bigint', 'blob', 'varchar'],
      [[id, id, 512, 384, 512, 384, 'jpeg', bytes.length, bytes, '<bench>']]);
    const side = (offset: number) => Array.from({ length: sentences }, (_, s) => `A photo of a ${pick()} square number ${i * 100 + offset + s}.`).join(' ');
    await store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected, image_id)
      VALUES (?, 'bench', ?, 'jsonl', 'Describe the image.', ?, ?, ?)`, [`pair-${i}`, i, side(0), side(50), id]);
  }
  await segmentStage(store);
}

class Worker {
  readonly child: ChildProcess;
  readonly ready: Promise<void>;
  constructor(model: string, location: QueueLocation) {
    this.child = spawn(process.execPath, [CLI, 'worker', '--queue', location.url, '--queue-name', location.name,
      '--queue-prefix', location.prefix, '--clip', model, '--device', 'cpu', '--threads', '1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let output = '';
    this.ready = new Promise((resolve, reject) => {
      this.child.stderr!.on('data', (data: Buffer) => {
        output += data.toString();
        if (output.includes('worker: serving')) resolve();
      });
      this.child.on('exit', (code) => reject(new Error(`worker exited with ${code}:\n${output}`)));
    });
  }
  async stop(): Promise<void> {
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGTERM');
    await exited;
  }
}

interface Run { sentences: number; seconds: number; cpuSeconds: number; jobs: number }

async function inProcess(encoder: ClipEncoder, db: string, batchSize: number): Promise<Run> {
  return withStore(db, async (store) => {
    const cpu = process.cpuUsage();
    const s = await scoreSimilarity(store, encoder, { batchSize });
    const used = process.cpuUsage(cpu);
    return { sentences: s.sentences, seconds: s.seconds, cpuSeconds: (used.user + used.system) / 1e6, jobs: 0 };
  });
}

async function throughQueue(location: QueueLocation, model: string, db: string, batchSize: number): Promise<Run> {
  const identity = await clipIdentity(model);
  return withStore(db, async (store) => {
    const cpu = process.cpuUsage();
    const s = await scoreThroughQueue(store, location, identity, { batchSize });
    const used = process.cpuUsage(cpu);
    return { sentences: s.sentences, seconds: s.seconds, cpuSeconds: (used.user + used.system) / 1e6, jobs: s.jobs };
  });
}

async function freePort(): Promise<number> {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

async function redisStats(url: string): Promise<{ commands: number; bytesIn: number; bytesOut: number }> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  redis.on('error', () => undefined); // not up yet: the caller retries
  try {
    await redis.connect();
    const info = await redis.info('stats');
    const field = (name: string) => Number(new RegExp(`${name}:(\\d+)`).exec(info)![1]);
    return { commands: field('total_commands_processed'), bytesIn: field('total_net_input_bytes'), bytesOut: field('total_net_output_bytes') };
  } finally {
    redis.disconnect();
  }
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    images: { type: 'string', default: '64' }, sentences: { type: 'string', default: '4' }, layers: { type: 'string', default: '6' },
    'batch-size': { type: 'string', default: '8' }, rounds: { type: 'string', default: '3' }, redis: { type: 'string' },
    'cost-images': { type: 'string', default: '256' },
  } });
  const images = Number(values.images);
  const batchSize = Number(values['batch-size']);
  const rounds = Number(values.rounds);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'aspo-bench-distributed-'));
  let server: ChildProcess | undefined;
  const workers: Worker[] = [];
  try {
    let url = values.redis;
    if (!url) {
      const port = await freePort();
      server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
      url = `redis://127.0.0.1:${port}`;
      for (let i = 0; i < 50 && !(await redisStats(url).then(() => true, () => false)); i++) await new Promise((r) => setTimeout(r, 100));
    }
    const location = queueLocation(url, { name: `bench-${process.pid}`, prefix: 'aspo-bench' });
    const compute = writeComputeClip(path.join(dir, 'clip-b32-compute'), Number(values.layers));
    const tiny = writeTinyClip(path.join(dir, 'tiny'));
    const base = path.join(dir, 'base.duckdb');
    await withStore(base, (store) => buildStore(store, images, Number(values.sentences)));
    const costBase = path.join(dir, 'cost.duckdb');
    await withStore(costBase, (store) => buildStore(store, Number(values['cost-images']), Number(values.sentences)));
    const warm = path.join(dir, 'warm.duckdb');
    await withStore(warm, (store) => buildStore(store, batchSize, 1));
    let copies = 0;
    const fresh = (from = base) => {
      const file = path.join(dir, `copy-${copies++}.duckdb`);
      copyFileSync(from, file);
      return file;
    };
    console.log(`${images} images (512×384 JPEG), ${values.sentences} sentences a side, batch ${batchSize}, clip-b32-compute with ` +
      `${values.layers} layers, one model thread per process; Node ${process.version}, ${os.availableParallelism()} cores, ` +
      `load ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);

    // Throughput: in process, 1 worker, 2 workers, interleaved by round.
    const encoder = await ClipEncoder.load(compute, { device: 'cpu', threads: 1 });
    await inProcess(encoder, fresh(warm), batchSize);
    const rates: Record<string, number[]> = { 'in process': [], 'queue, 1 worker': [], 'queue, 2 workers': [] };
    const overhead: number[] = [];
    const scaling: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const local = await inProcess(encoder, fresh(), batchSize);
      workers.push(new Worker(compute, location));
      await workers[0]!.ready;
      await throughQueue(location, compute, fresh(warm), batchSize); // the worker's first calls allocate
      const one = await throughQueue(location, compute, fresh(), batchSize);
      workers.push(new Worker(compute, location));
      await workers[1]!.ready;
      await throughQueue(location, compute, fresh(warm), batchSize);
      const two = await throughQueue(location, compute, fresh(), batchSize);
      for (const w of workers.splice(0)) await w.stop();
      const rate = (run: Run) => run.sentences / run.seconds;
      rates['in process']!.push(rate(local));
      rates['queue, 1 worker']!.push(rate(one));
      rates['queue, 2 workers']!.push(rate(two));
      overhead.push(rate(local) / rate(one) - 1);
      scaling.push(rate(two) / rate(one));
      console.error(`round ${r + 1}: in process ${rate(local).toFixed(1)}, 1 worker ${rate(one).toFixed(1)}, 2 workers ${rate(two).toFixed(1)} sentences/s; load ${os.loadavg()[0]!.toFixed(1)}`);
    }
    await encoder.dispose();
    console.log('\n| configuration | sentences/s per round | median |');
    console.log('| --- | --- | ---: |');
    for (const [label, list] of Object.entries(rates)) console.log(`| ${label} | ${list.map((x) => x.toFixed(1)).join(', ')} | ${median(list).toFixed(1)} |`);
    console.log(`\nqueue overhead with one worker (in process / 1 worker − 1): ${overhead.map((x) => `${(100 * x).toFixed(1)}%`).join(', ')}; median ${(100 * median(overhead)).toFixed(1)}%`);
    console.log(`two workers / one: ${scaling.map((x) => x.toFixed(2)).join(', ')}; median ${median(scaling).toFixed(2)}`);

    // The coordinator's own cost and Redis's traffic, with a model that costs nothing.
    workers.push(new Worker(tiny, location));
    await workers[0]!.ready;
    await throughQueue(location, tiny, fresh(warm), batchSize);
    const costs: Array<Run & { commands: number; bytesIn: number; bytesOut: number }> = [];
    for (let r = 0; r < rounds; r++) {
      const before = await redisStats(url);
      const run = await throughQueue(location, tiny, fresh(costBase), 32);
      const after = await redisStats(url);
      costs.push({ ...run, commands: after.commands - before.commands, bytesIn: after.bytesIn - before.bytesIn, bytesOut: after.bytesOut - before.bytesOut });
    }
    for (const w of workers.splice(0)) await w.stop();
    const c = costs[Math.floor(costs.length / 2)]!;
    const per1000 = (x: number) => (1000 * x) / c.sentences;
    console.log(`\ntiny model through the queue, batch 32, 1 worker: ${c.sentences} sentences, ${c.jobs} jobs, ${(c.sentences / c.seconds).toFixed(0)} sentences/s ` +
      `(rounds: ${costs.map((x) => (x.sentences / x.seconds).toFixed(0)).join(', ')})`);
    console.log(`coordinator CPU per 1,000 sentences: ${per1000(c.cpuSeconds).toFixed(3)} s (rounds: ${costs.map((x) => ((1000 * x.cpuSeconds) / x.sentences).toFixed(3)).join(', ')})`);
    console.log(`Redis per job (coordinator + worker): ${(c.commands / c.jobs).toFixed(1)} commands, ${(c.bytesIn / c.jobs / 1024).toFixed(1)} KB in, ` +
      `${(c.bytesOut / c.jobs / 1024).toFixed(1)} KB out; per 1,000 sentences ${per1000(c.commands).toFixed(0)} commands, ` +
      `${(per1000(c.bytesIn) / 2 ** 20).toFixed(2)} MB in, ${(per1000(c.bytesOut) / 2 ** 20).toFixed(2)} MB out`);
  } finally {
    for (const w of workers) await w.stop().catch(() => undefined);
    server?.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
