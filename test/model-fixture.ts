/**
 * A tiny synthetic world for the model tests: one coloured shape per 64×64 PNG, drawn
 * with sharp from SVG, captioned truthfully; eval probes swap the colour or the shape.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';

export const COLOURS: Record<string, string> = { red: '#e02020', green: '#20b020', blue: '#2040e0', yellow: '#e0c000' };
export const SHAPES = ['circle', 'square', 'triangle'] as const;

function shapeSvg(shape: string, fill: string, size: number): string {
  const body = shape === 'circle' ? `<circle cx="32" cy="32" r="20" fill="${fill}"/>`
    : shape === 'square' ? `<rect x="14" y="14" width="36" height="36" fill="${fill}"/>`
      : `<polygon points="32,10 54,52 10,52" fill="${fill}"/>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}" viewBox="0 0 64 64">` +
    `<rect width="64" height="64" fill="white"/>${body}</svg>`;
}

export async function renderShape(shape: string, colour: string, size = 64): Promise<Buffer> {
  return sharp(Buffer.from(shapeSvg(shape, COLOURS[colour]!, size))).png().toBuffer();
}

function other<T>(list: readonly T[], not: T, k: number): T {
  const rest = list.filter((x) => x !== not);
  return rest[k % rest.length]!;
}

/**
 * Writes dir/sft.jsonl, dir/eval.jsonl, dir/images/, dir/eval/images/ in the synthetic world's layout.
 * Every (colour, shape) combination appears in both splits.
 */
export async function writeShapesDataset(dir: string, copies = 2): Promise<{ train: number; eval: number }> {
  mkdirSync(path.join(dir, 'images'), { recursive: true });
  mkdirSync(path.join(dir, 'eval', 'images'), { recursive: true });
  const colours = Object.keys(COLOURS);
  const train: string[] = [];
  const evalRows: string[] = [];
  let n = 0;
  for (const colour of colours) {
    for (const shape of SHAPES) {
      const png = await renderShape(shape, colour);
      const caption = `A ${colour} ${shape}.`;
      for (let c = 0; c < copies; c++) {
        const name = `${colour}-${shape}-${c}.png`;
        writeFileSync(path.join(dir, 'images', name), png);
        train.push(JSON.stringify({ image: `images/${name}`, prompt: 'Describe the image.', response: caption }));
      }
      writeFileSync(path.join(dir, 'eval', 'images', `${colour}-${shape}.png`), png);
      evalRows.push(JSON.stringify({
        image: `eval/images/${colour}-${shape}.png`, prompt: 'Describe the image.', response: caption,
        probes: [
          { true: caption, false: `A ${other(colours, colour, n)} ${shape}.` },
          { true: caption, false: `A ${colour} ${other(SHAPES, shape, n)}.` },
        ],
      }));
      n++;
    }
  }
  writeFileSync(path.join(dir, 'sft.jsonl'), train.join('\n') + '\n');
  writeFileSync(path.join(dir, 'eval.jsonl'), evalRows.join('\n') + '\n');
  return { train: train.length, eval: evalRows.length };
}
