/**
 * What the ASPO authors' LLaVA-1.5 trainer (seva/train_dpo_ours.py in Gavin001201/ASPO-LLaVA-1.5) does with the JSON
 * it is given, step by step, with Python's failures where Python would fail: `data_preprocess` (dict lookups that
 * raise KeyError, `"<image>\n" + question`, `os.path.join(our_data_path, image_id)`), then the parts of `__getitem__`,
 * `preprocess_v1` and the DPO trainer that touch the data (the image is opened, each split sentence is tokenised in
 * order to number the response's tokens 1, 2, …, and sentence k's score is used for the tokens numbered k).
 * Written from the trainer's behaviour for this test suite; no Python needed.
 */
import path from 'node:path';
import sharp from 'sharp';

/** `d[key]` on a Python dict: KeyError when absent. */
function item(element: unknown, key: string): unknown {
  if (typeof element !== 'object' || element === null || Array.isArray(element)) throw new TypeError(`list indices must be integers or slices, not str (element is ${JSON.stringify(element)})`);
  if (!(key in element)) throw new Error(`KeyError: '${key}'`);
  return (element as Record<string, unknown>)[key];
}

/** Python's `str + str`: a TypeError unless both are strings. */
function concat(a: string, b: unknown): string {
  if (typeof b !== 'string') throw new TypeError(`can only concatenate str (not "${b === null ? 'NoneType' : typeof b}") to str`);
  return a + b;
}

/** `os.path.join` with a str argument check. */
function join(folder: string, name: unknown): string {
  if (typeof name !== 'string') throw new TypeError(`join() argument must be str, not ${name === null ? 'NoneType' : typeof name}`);
  return path.join(folder, name);
}

export interface Sample {
  id: string;
  image: string;
  question: string;
  chosen_conversations: { from: string; value: unknown }[];
  reject_conversations: { from: string; value: unknown }[];
  chosen_split: unknown;
  reject_split: unknown;
  chosen_clip_score: unknown;
  reject_clip_score: unknown;
}

/** `LazySupervisedDataset.data_preprocess(our_data, our_data_path)`, in the same order of lookups. */
export function dataPreprocess(ourData: unknown[], ourDataPath: string): Sample[] {
  const ourDataDict: Sample[] = [];
  for (let idx = 0; idx < ourData.length; idx++) {
    const imageId = item(ourData[idx], 'image_id');
    const chosen = item(ourData[idx], 'chosen');
    const reject = item(ourData[idx], 'reject');
    const chosenSplit = item(ourData[idx], 'chosen_split');
    const rejectSplit = item(ourData[idx], 'reject_split');
    const chosenClipScore = item(ourData[idx], 'chosen_clip_score');
    const rejectClipScore = item(ourData[idx], 'reject_clip_score');
    let question = item(ourData[idx], 'question');
    question = concat('<image>\n', question);
    ourDataDict.push({
      id: imageId as string,
      image: join(ourDataPath, imageId),
      question: question as string,
      chosen_conversations: [{ from: 'human', value: question }, { from: 'gpt', value: chosen }],
      reject_conversations: [{ from: 'human', value: question }, { from: 'gpt', value: reject }],
      chosen_split: chosenSplit,
      reject_split: rejectSplit,
      chosen_clip_score: chosenClipScore,
      reject_clip_score: rejectClipScore,
    });
  }
  return ourDataDict;
}

/** One side as the trainer uses it: its split sentences numbered in order, each with the score of the same number. */
function side(response: unknown, split: unknown, scores: unknown, name: string): { sentences: string[]; scores: number[] } {
  if (typeof response !== 'string') throw new TypeError(`${name}: the conversation value must be a str`);
  // `for sent in source_split: tokenizer(sent, ...)`: every element must be a str.
  if (!Array.isArray(split)) throw new TypeError(`${name}_split: 'for sent in source_split' needs a list`);
  for (const sentence of split) if (typeof sentence !== 'string') throw new TypeError(`${name}_split: the tokenizer needs str, got ${JSON.stringify(sentence)}`);
  // The scores become a float tensor indexed by sentence number: numbers, one per sentence.
  if (!Array.isArray(scores)) throw new TypeError(`${name}_clip_score: expected a list of numbers`);
  for (const score of scores) {
    if (typeof score !== 'number' || !Number.isFinite(score)) throw new TypeError(`${name}_clip_score: unsupported operand type for arithmetic: ${JSON.stringify(score)}`);
  }
  if (scores.length !== split.length) throw new Error(`${name}: ${split.length} sentences numbered but ${scores.length} scores`);
  if (split.length === 0) throw new Error(`${name}: no sentence to number`);
  // Sentence k's tokens follow sentence k-1's: the sentences are the response's, in order.
  let at = 0;
  for (const sentence of split as string[]) {
    const found = response.indexOf(sentence, at);
    if (found < 0) throw new Error(`${name}: sentence ${JSON.stringify(sentence)} does not follow the previous one in the response`);
    at = found + sentence.length;
  }
  return { sentences: split as string[], scores: scores as number[] };
}

/**
 * `__getitem__(i)` up to the loss: opens the image (`Image.open(os.path.join(image_folder, image_file)).convert('RGB')`)
 * and builds both sides. Returns the decoded image size and the per-sentence scores the loss would weight with.
 */
export async function getItem(sample: Sample, imageFolder = ''): Promise<{
  width: number; height: number; chosen: { sentences: string[]; scores: number[] }; reject: { sentences: string[]; scores: number[] };
}> {
  const { info } = await sharp(path.join(imageFolder, sample.image)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  if (!sample.question.startsWith('<image>\n')) throw new Error('the human turn must start with the image token');
  return {
    width: info.width,
    height: info.height,
    chosen: side(sample.chosen_conversations[1]!.value, sample.chosen_split, sample.chosen_clip_score, 'chosen'),
    reject: side(sample.reject_conversations[1]!.value, sample.reject_split, sample.reject_clip_score, 'reject'),
  };
}
