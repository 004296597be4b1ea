import type { Rng } from '../util/random.js';
import {
  COLOUR_NAMES, COLUMNS, ROWS, SHAPES, SIZES,
  type Colour, type Column, type Row, type Scene, type SceneObject, type Shape, type Size,
} from './world.js';

export const RELATIONS = ['to the left of', 'to the right of', 'above', 'below'] as const;
export type Relation = (typeof RELATIONS)[number];

/** Largest count a sentence states (a corrupted scene can hold one object more than a real one). */
export const MAX_COUNT = 6;

/**
 * What one sentence asserts. Objects are named by colour and shape (unique within a scene), except in
 * `colour_of` ("the circle is red") and `shape_of` ("the red object is a circle"), which name them by one attribute.
 */
export type Claim =
  | { kind: 'count'; n: number }
  | { kind: 'shape_count'; shape: Shape; n: number }
  | { kind: 'colour_count'; colour: Colour; n: number }
  | { kind: 'exists'; colour: Colour; shape: Shape }
  | { kind: 'exists_sized'; colour: Colour; shape: Shape; size: Size }
  | { kind: 'size'; colour: Colour; shape: Shape; size: Size }
  | { kind: 'cell'; colour: Colour; shape: Shape; row: Row; column: Column }
  | { kind: 'row'; colour: Colour; shape: Shape; row: Row }
  | { kind: 'column'; colour: Colour; shape: Shape; column: Column }
  | { kind: 'colour_of'; shape: Shape; colour: Colour }
  | { kind: 'shape_of'; colour: Colour; shape: Shape }
  | { kind: 'relation'; colour: Colour; shape: Shape; relation: Relation; colour2: Colour; shape2: Shape }
  | { kind: 'examples'; colour: Colour; shape: Shape; colour2: Colour; shape2: Shape };
export type ClaimKind = Claim['kind'];
export const CLAIM_KINDS: readonly ClaimKind[] = [
  'count', 'shape_count', 'colour_count', 'exists', 'exists_sized', 'size', 'cell', 'row', 'column',
  'colour_of', 'shape_of', 'relation', 'examples',
];

/** A judgement against ground truth; `unknown` when the sentence names an object ambiguously or is not understood. */
export type Truth = 'true' | 'false' | 'unknown';

const truth = (holds: boolean): Truth => (holds ? 'true' : 'false');

function find(scene: Scene, colour: Colour, shape: Shape): SceneObject | undefined {
  return scene.objects.find((o) => o.colour === colour && o.shape === shape);
}

/** "The circle is red": false if no circle is red; unknown if several circles exist and one of them is red. */
function singleAttribute(candidates: SceneObject[], holds: (o: SceneObject) => boolean): Truth {
  if (!candidates.some(holds)) return 'false';
  return candidates.length === 1 ? 'true' : 'unknown';
}

function relationHolds(a: SceneObject, relation: Relation, b: SceneObject): boolean {
  const dx = COLUMNS.indexOf(a.column) - COLUMNS.indexOf(b.column);
  const dy = ROWS.indexOf(a.row) - ROWS.indexOf(b.row);
  switch (relation) {
    case 'to the left of': return dx < 0;
    case 'to the right of': return dx > 0;
    case 'above': return dy < 0;
    case 'below': return dy > 0;
  }
}

/** Whether the claim holds in the scene. A claim about an object the scene does not contain is false. */
export function evaluateClaim(claim: Claim, scene: Scene): Truth {
  const objects = scene.objects;
  switch (claim.kind) {
    case 'count': return truth(objects.length === claim.n);
    case 'shape_count': return truth(objects.filter((o) => o.shape === claim.shape).length === claim.n);
    case 'colour_count': return truth(objects.filter((o) => o.colour === claim.colour).length === claim.n);
    case 'exists': return truth(find(scene, claim.colour, claim.shape) !== undefined);
    case 'exists_sized': return truth(find(scene, claim.colour, claim.shape)?.size === claim.size);
    case 'size': return truth(find(scene, claim.colour, claim.shape)?.size === claim.size);
    case 'cell': {
      const o = find(scene, claim.colour, claim.shape);
      return truth(o?.row === claim.row && o.column === claim.column);
    }
    case 'row': return truth(find(scene, claim.colour, claim.shape)?.row === claim.row);
    case 'column': return truth(find(scene, claim.colour, claim.shape)?.column === claim.column);
    case 'colour_of':
      return singleAttribute(objects.filter((o) => o.shape === claim.shape), (o) => o.colour === claim.colour);
    case 'shape_of':
      return singleAttribute(objects.filter((o) => o.colour === claim.colour), (o) => o.shape === claim.shape);
    case 'relation': {
      const a = find(scene, claim.colour, claim.shape);
      const b = find(scene, claim.colour2, claim.shape2);
      return truth(a !== undefined && b !== undefined && relationHolds(a, claim.relation, b));
    }
    case 'examples':
      return truth(find(scene, claim.colour, claim.shape) !== undefined &&
        find(scene, claim.colour2, claim.shape2) !== undefined);
  }
}

/** Every true claim the scene supports, the pool descriptions and probes are drawn from. */
export function trueClaims(scene: Scene): Claim[] {
  const objects = scene.objects;
  const claims: Claim[] = [{ kind: 'count', n: objects.length }];
  for (const shape of new Set(objects.map((o) => o.shape))) {
    claims.push({ kind: 'shape_count', shape, n: objects.filter((o) => o.shape === shape).length });
  }
  for (const colour of new Set(objects.map((o) => o.colour))) {
    claims.push({ kind: 'colour_count', colour, n: objects.filter((o) => o.colour === colour).length });
  }
  for (const o of objects) claims.push(...objectClaims(scene, o));
  if (objects.length >= 3) {
    for (const a of objects) {
      for (const b of objects) {
        if (a !== b) claims.push({ kind: 'examples', colour: a.colour, shape: a.shape, colour2: b.colour, shape2: b.shape });
      }
    }
  }
  return claims;
}

/** The true claims about one object (its existence, attributes and relations to the others). */
export function objectClaims(scene: Scene, o: SceneObject): Claim[] {
  const { colour, shape } = o;
  const claims: Claim[] = [
    { kind: 'exists', colour, shape },
    { kind: 'exists_sized', colour, shape, size: o.size },
    { kind: 'size', colour, shape, size: o.size },
    { kind: 'cell', colour, shape, row: o.row, column: o.column },
    { kind: 'row', colour, shape, row: o.row },
    { kind: 'column', colour, shape, column: o.column },
  ];
  if (scene.objects.filter((p) => p.shape === shape).length === 1) claims.push({ kind: 'colour_of', shape, colour });
  if (scene.objects.filter((p) => p.colour === colour).length === 1) claims.push({ kind: 'shape_of', colour, shape });
  for (const other of scene.objects) {
    if (other === o) continue;
    for (const relation of RELATIONS) {
      if (relationHolds(o, relation, other)) {
        claims.push({ kind: 'relation', colour, shape, relation, colour2: other.colour, shape2: other.shape });
      }
    }
  }
  return claims;
}

type Field = 'n' | 'colour' | 'shape' | 'size' | 'row' | 'column' | 'relation' | 'colour2' | 'shape2';

const DOMAINS: Record<Field, readonly (string | number)[]> = {
  n: Array.from({ length: MAX_COUNT }, (_, i) => i + 1),
  colour: COLOUR_NAMES, colour2: COLOUR_NAMES,
  shape: SHAPES, shape2: SHAPES,
  size: SIZES, row: ROWS, column: COLUMNS, relation: RELATIONS,
};

/**
 * Per kind: the fields stating the attribute (changing one gives a wrong attribute) and the fields naming the
 * object (changing one usually names an object that does not exist).
 */
const FIELDS: Record<ClaimKind, { predicate: Field[]; referent: Field[] }> = {
  count: { predicate: ['n'], referent: [] },
  shape_count: { predicate: ['n'], referent: ['shape'] },
  colour_count: { predicate: ['n'], referent: ['colour'] },
  exists: { predicate: [], referent: ['colour', 'shape'] },
  exists_sized: { predicate: ['size'], referent: ['colour', 'shape'] },
  size: { predicate: ['size'], referent: ['colour', 'shape'] },
  cell: { predicate: ['row', 'column'], referent: ['colour', 'shape'] },
  row: { predicate: ['row'], referent: ['colour', 'shape'] },
  column: { predicate: ['column'], referent: ['colour', 'shape'] },
  colour_of: { predicate: ['colour'], referent: ['shape'] },
  shape_of: { predicate: ['shape'], referent: ['colour'] },
  relation: { predicate: ['relation'], referent: ['colour', 'shape', 'colour2', 'shape2'] },
  examples: { predicate: [], referent: ['colour', 'shape', 'colour2', 'shape2'] },
};

function falseVariants(claim: Claim, scene: Scene, fields: Field[]): Claim[] {
  const variants: Claim[] = [];
  const record = claim as unknown as Record<Field, string | number>;
  for (const field of fields) {
    for (const value of DOMAINS[field]) {
      if (value === record[field]) continue;
      const variant = { ...claim, [field]: value } as Claim;
      if (evaluateClaim(variant, scene) === 'false') variants.push(variant);
    }
  }
  return variants;
}

/**
 * A hallucinated version of a claim: the same kind of sentence with one field changed so that it is false in
 * the scene — a wrong attribute (preferred, 2 in 3) or a non-existent object. `predicateOnly` restricts it to a
 * wrong attribute where the kind has one (for minimal-pair probes). Undefined if no single change makes it false.
 */
export function hallucinate(claim: Claim, scene: Scene, rng: Rng, predicateOnly = false): Claim | undefined {
  const { predicate, referent } = FIELDS[claim.kind];
  const wrongAttribute = falseVariants(claim, scene, predicate);
  const wrongObject = falseVariants(claim, scene, referent);
  if (wrongAttribute.length > 0 && (predicateOnly || wrongObject.length === 0 || rng.chance(2 / 3))) {
    return rng.pick(wrongAttribute);
  }
  return wrongObject.length > 0 ? rng.pick(wrongObject) : undefined;
}
