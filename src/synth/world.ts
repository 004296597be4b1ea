import type { Rng } from '../util/random.js';

/** The world's vocabulary: every attribute a sentence can state, and so get wrong. */
export const SHAPES = ['circle', 'square', 'triangle', 'diamond', 'cross'] as const;
export type Shape = (typeof SHAPES)[number];

/** Named colours and the exact RGB they are painted with (distinct from the grey background and each other). */
export const COLOURS = {
  red: [220, 40, 40],
  green: [40, 170, 60],
  blue: [40, 80, 220],
  yellow: [240, 220, 40],
  purple: [140, 60, 180],
  orange: [245, 140, 30],
  white: [245, 245, 245],
  black: [20, 20, 20],
} as const satisfies Record<string, readonly [number, number, number]>;
export type Colour = keyof typeof COLOURS;
export const COLOUR_NAMES = Object.keys(COLOURS) as Colour[];
export const BACKGROUND: readonly [number, number, number] = [128, 128, 128];

export const SIZES = ['small', 'large'] as const;
export type Size = (typeof SIZES)[number];

/** The image is a 3×3 grid; each object occupies one cell. */
export const ROWS = ['top', 'middle', 'bottom'] as const;
export type Row = (typeof ROWS)[number];
export const COLUMNS = ['left', 'middle', 'right'] as const;
export type Column = (typeof COLUMNS)[number];

export const MIN_OBJECTS = 1;
export const MAX_OBJECTS = 4;

export interface SceneObject {
  shape: Shape;
  colour: Colour;
  size: Size;
  row: Row;
  column: Column;
  /** Centre as a fraction of the image width/height (the cell centre plus a small jitter). */
  x: number;
  y: number;
}

/** Ground truth for one image. Within a scene, no two objects share both colour and shape, nor a cell. */
export interface Scene {
  id: string;
  objects: SceneObject[];
}

/** Largest jitter of an object's centre from its cell centre, as a fraction of the cell. */
const JITTER = 0.05;

export function cellCentre(row: Row, column: Column): { x: number; y: number } {
  return { x: (COLUMNS.indexOf(column) + 0.5) / 3, y: (ROWS.indexOf(row) + 0.5) / 3 };
}

/** Rounded so that positions survive a JSON round trip unchanged. */
function jittered(centre: number, rng: Rng): number {
  return Math.round((centre + ((rng.next() * 2 - 1) * JITTER) / 3) * 1e4) / 1e4;
}

function placeObject(rng: Rng, shape: Shape, colour: Colour, size: Size, row: Row, column: Column): SceneObject {
  const centre = cellCentre(row, column);
  return { shape, colour, size, row, column, x: jittered(centre.x, rng), y: jittered(centre.y, rng) };
}

function freeCells(objects: readonly SceneObject[]): [Row, Column][] {
  const cells: [Row, Column][] = [];
  for (const row of ROWS) {
    for (const column of COLUMNS) {
      if (!objects.some((o) => o.row === row && o.column === column)) cells.push([row, column]);
    }
  }
  return cells;
}

function unusedKinds(objects: readonly SceneObject[]): [Colour, Shape][] {
  const kinds: [Colour, Shape][] = [];
  for (const colour of COLOUR_NAMES) {
    for (const shape of SHAPES) {
      if (!objects.some((o) => o.colour === colour && o.shape === shape)) kinds.push([colour, shape]);
    }
  }
  return kinds;
}

/** A new object of an unused colour+shape in a free cell. */
function newObject(rng: Rng, objects: readonly SceneObject[]): SceneObject {
  const [row, column] = rng.pick(freeCells(objects));
  const [colour, shape] = rng.pick(unusedKinds(objects));
  return placeObject(rng, shape, colour, rng.pick(SIZES), row, column);
}

export function sampleScene(rng: Rng, id: string): Scene {
  const count = rng.between(MIN_OBJECTS, MAX_OBJECTS);
  const objects: SceneObject[] = [];
  while (objects.length < count) objects.push(newObject(rng, objects));
  return { id, objects };
}

/** Identity of a scene up to jitter: two scenes with the same key say the same things. */
export function sceneKey(scene: Scene): string {
  return scene.objects
    .map((o) => `${o.colour} ${o.shape} ${o.size} ${o.row} ${o.column}`)
    .sort()
    .join('|');
}

export const CORRUPTIONS = ['swap_colours', 'recolour', 'reshape', 'resize', 'move', 'remove', 'add'] as const;
export type Corruption = (typeof CORRUPTIONS)[number];

/** Applies one corruption in place if it is possible for this scene; says whether it did. */
function applyCorruption(objects: SceneObject[], op: Corruption, rng: Rng): boolean {
  const index = rng.int(objects.length);
  const target = objects[index]!;
  const others = objects.filter((_, i) => i !== index);
  const kindTaken = (colour: Colour, shape: Shape) => others.some((o) => o.colour === colour && o.shape === shape);
  switch (op) {
    case 'swap_colours': {
      const partners = others.filter((o) => o.colour !== target.colour &&
        !objects.some((p) => p !== o && p !== target && p.shape === o.shape && p.colour === target.colour) &&
        !objects.some((p) => p !== o && p !== target && p.shape === target.shape && p.colour === o.colour));
      if (partners.length === 0) return false;
      const partner = rng.pick(partners);
      [target.colour, partner.colour] = [partner.colour, target.colour];
      return true;
    }
    case 'recolour': {
      const colours = COLOUR_NAMES.filter((c) => c !== target.colour && !kindTaken(c, target.shape));
      target.colour = rng.pick(colours);
      return true;
    }
    case 'reshape': {
      const shapes = SHAPES.filter((s) => s !== target.shape && !kindTaken(target.colour, s));
      if (shapes.length === 0) return false;
      target.shape = rng.pick(shapes);
      return true;
    }
    case 'resize':
      target.size = target.size === 'small' ? 'large' : 'small';
      return true;
    case 'move': {
      const [row, column] = rng.pick(freeCells(objects));
      Object.assign(target, placeObject(rng, target.shape, target.colour, target.size, row, column));
      return true;
    }
    case 'remove':
      if (objects.length < 2) return false;
      objects.splice(index, 1);
      return true;
    case 'add':
      objects.push(newObject(rng, objects));
      return true;
  }
}

/**
 * A corrupted copy of the scene, standing in for what a model "sees" in a noised image: one or two of swapped
 * colours, a recoloured/reshaped/resized/moved object, a removed object or an extra one.
 */
export function corruptScene(scene: Scene, rng: Rng): { scene: Scene; corruptions: Corruption[] } {
  const wanted = rng.chance(0.5) ? 2 : 1;
  for (;;) {
    const objects = scene.objects.map((o) => ({ ...o }));
    const corruptions: Corruption[] = [];
    while (corruptions.length < wanted) {
      const op = rng.pick(CORRUPTIONS);
      if (applyCorruption(objects, op, rng)) corruptions.push(op);
    }
    const corrupted = { id: scene.id, objects };
    // Two operations can cancel out (e.g. resizing the same object twice); such a copy is no corruption.
    if (sceneKey(corrupted) !== sceneKey(scene)) return { scene: corrupted, corruptions };
  }
}
