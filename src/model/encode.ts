/** Prompt and response as the model sees them: the one encoding that training, scoring and sharding share. */
import type { Tokenizer } from './tokenizer.js';

/**
 * Token ids of `prompt + response` encoded as one string (the string the segmenter aligns sentences on), split where
 * the response starts. A token that spans the boundary (a prompt ending mid-word, run straight into the response)
 * cannot be split and is an error.
 */
export function encodePromptResponse(tokenizer: Tokenizer, prompt: string, response: string): { promptIds: number[]; responseIds: number[] } {
  const { ids, offsets } = tokenizer.encode(prompt + response);
  let split = 0;
  while (split < ids.length && offsets[split]![1] <= prompt.length) split++;
  if (split < ids.length && offsets[split]![0] < prompt.length) {
    throw new Error(`prompt ${JSON.stringify(prompt.slice(-20))} runs into the response ${JSON.stringify(response.slice(0, 20))} ` +
      'inside one token; end the prompt with punctuation or a newline');
  }
  return { promptIds: ids.slice(0, split), responseIds: ids.slice(split) };
}
