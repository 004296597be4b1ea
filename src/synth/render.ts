import sharp from 'sharp';
import { BACKGROUND, COLOURS, type Scene, type SceneObject } from './world.js';

/** Object radius as a fraction of a grid cell; with the jitter, even a large triangle stays inside its cell. */
export const RADIUS = { small: 0.3, large: 0.42 } as const;

const rgb = ([r, g, b]: readonly number[]) => `rgb(${r},${g},${b})`;
const fixed = (v: number) => Number(v.toFixed(2));

function points(list: [number, number][]): string {
  return list.map(([x, y]) => `${fixed(x)},${fixed(y)}`).join(' ');
}

function shapeSvg(o: SceneObject, imageSize: number): string {
  const cx = o.x * imageSize;
  const cy = o.y * imageSize;
  const r = (RADIUS[o.size] * imageSize) / 3;
  const fill = `fill="${rgb(COLOURS[o.colour])}"`;
  switch (o.shape) {
    case 'circle':
      return `<circle cx="${fixed(cx)}" cy="${fixed(cy)}" r="${fixed(r)}" ${fill}/>`;
    case 'square': {
      const h = r * 0.85; // about the same area as the circle's look at this size
      return `<rect x="${fixed(cx - h)}" y="${fixed(cy - h)}" width="${fixed(2 * h)}" height="${fixed(2 * h)}" ${fill}/>`;
    }
    case 'triangle': {
      // Equilateral, centroid at the centre so the centre pixel is inside it.
      const R = r * 1.05;
      const vertex = (deg: number): [number, number] =>
        [cx + R * Math.cos((deg * Math.PI) / 180), cy + R * Math.sin((deg * Math.PI) / 180)];
      return `<polygon points="${points([vertex(-90), vertex(30), vertex(150)])}" ${fill}/>`;
    }
    case 'diamond':
      return `<polygon points="${points([[cx, cy - r], [cx + r * 0.75, cy], [cx, cy + r], [cx - r * 0.75, cy]])}" ${fill}/>`;
    case 'cross': {
      const w = r * 0.35;
      return `<polygon points="${points([
        [cx - w, cy - r], [cx + w, cy - r], [cx + w, cy - w], [cx + r, cy - w], [cx + r, cy + w], [cx + w, cy + w],
        [cx + w, cy + r], [cx - w, cy + r], [cx - w, cy + w], [cx - r, cy + w], [cx - r, cy - w], [cx - w, cy - w],
      ])}" ${fill}/>`;
    }
  }
}

/** The scene as an SVG document of `size`×`size` pixels. */
export function sceneToSvg(scene: Scene, size: number): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}" viewBox="0 0 ${size} ${size}">` +
    `<rect width="${size}" height="${size}" fill="${rgb(BACKGROUND)}"/>` +
    scene.objects.map((o) => shapeSvg(o, size)).join('') +
    '</svg>';
}

/** An RGB PNG of the scene (no metadata, so the bytes depend only on the scene and size). */
export async function renderScene(scene: Scene, size: number): Promise<Buffer> {
  return sharp(Buffer.from(sceneToSvg(scene, size)))
    .removeAlpha()
    .png({ compressionLevel: 9 })
    .toBuffer();
}
