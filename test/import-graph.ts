/**
 * The import graph of a TypeScript source tree, read from the files' text: which module imports which at run
 * time (`import type` and `export type` are erased by tsc and do not count), and the cycles in it.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

/** Module path (relative to the root, '/'-separated, with .ts) → the modules it imports at run time. */
export type ImportGraph = Map<string, Set<string>>;

const IMPORT = /^\s*(?:import|export)\s+(type\s+)?(?:[^'";]*?\s+from\s+)?['"](\.{1,2}\/[^'"]+)['"]/gm;

const DYNAMIC_IMPORT = /\bimport\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g;

/** The relative specifiers a file's text imports at run time (type-only imports left out). */
export function runtimeImports(source: string): string[] {
  const found: string[] = [];
  for (const m of source.matchAll(IMPORT)) {
    if (m[1] !== undefined) continue;
    // `import { type A, type B } from` is erased too when every name in the braces is a type.
    const clause = /^\s*(?:import|export)\s+([^'"]*?)\s*(?:from\s*)?['"]/.exec(m[0])?.[1] ?? '';
    const braces = /^\{([^}]*)\}$/.exec(clause.trim())?.[1];
    if (braces !== undefined && braces.split(',').map((n) => n.trim()).filter(Boolean).every((n) => n.startsWith('type '))) continue;
    found.push(m[2]!);
  }
  for (const m of source.matchAll(DYNAMIC_IMPORT)) found.push(m[1]!);
  return found;
}

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return tsFiles(full);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [full] : [];
  });
}

/** The run-time import graph of every .ts file under `root`, keyed by path relative to `root`. */
export function importGraph(root: string): ImportGraph {
  const graph: ImportGraph = new Map();
  for (const file of tsFiles(root)) {
    const from = path.relative(root, file).split(path.sep).join('/');
    const targets = new Set<string>();
    for (const spec of runtimeImports(readFileSync(file, 'utf8'))) {
      const target = path.relative(root, path.resolve(path.dirname(file), spec)).split(path.sep).join('/');
      targets.add(target.replace(/\.js$/, '.ts'));
    }
    graph.set(from, targets);
  }
  return graph;
}

/** The graph's cycles: each strongly connected component of two or more modules (or one importing itself), sorted. */
export function importCycles(graph: ImportGraph): string[][] {
  // Tarjan's algorithm, iterative so a deep tree cannot overflow the stack.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const cycles: string[][] = [];
  let next = 0;
  for (const start of graph.keys()) {
    if (index.has(start)) continue;
    const work: { node: string; edges: string[]; i: number }[] = [];
    const enter = (node: string): void => {
      index.set(node, next); low.set(node, next); next += 1;
      stack.push(node); onStack.add(node);
      work.push({ node, edges: [...(graph.get(node) ?? [])].filter((t) => graph.has(t)), i: 0 });
    };
    enter(start);
    while (work.length > 0) {
      const top = work[work.length - 1]!;
      if (top.i < top.edges.length) {
        const to = top.edges[top.i++]!;
        if (!index.has(to)) enter(to);
        else if (onStack.has(to)) low.set(top.node, Math.min(low.get(top.node)!, index.get(to)!));
        continue;
      }
      work.pop();
      if (work.length > 0) {
        const parent = work[work.length - 1]!.node;
        low.set(parent, Math.min(low.get(parent)!, low.get(top.node)!));
      }
      if (low.get(top.node) === index.get(top.node)) {
        const component: string[] = [];
        let member: string;
        do { member = stack.pop()!; onStack.delete(member); component.push(member); } while (member !== top.node);
        if (component.length > 1 || graph.get(top.node)?.has(top.node)) cycles.push(component.sort());
      }
    }
  }
  return cycles.sort((a, b) => a[0]!.localeCompare(b[0]!));
}

/** The folder a module belongs to (`train/loss.ts` → `train`; a top-level file → itself). */
export function folderOf(module: string): string {
  const slash = module.indexOf('/');
  return slash < 0 ? module : module.slice(0, slash);
}

/** Folder → the other folders it imports at run time. */
export function folderGraph(graph: ImportGraph): ImportGraph {
  const folders: ImportGraph = new Map();
  for (const [from, targets] of graph) {
    const own = folderOf(from);
    const set = folders.get(own) ?? new Set<string>();
    for (const to of targets) if (folderOf(to) !== own) set.add(folderOf(to));
    folders.set(own, set);
  }
  return folders;
}
