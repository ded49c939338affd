// A complete, tiny SD1.5-style diffusers folder for sampling tests (and a bundled default model): the golden
// tiny-sd15 unet, vae and text_encoder, plus a tokenizer whose vocabulary fits that text encoder (vocab_size 300,
// max_position_embeddings 16), a scheduler config and model_index.json.
//
// The vocabulary: every printable ASCII character alone and as a word end (`x</w>`), then the merges that spell a
// few common prompt words left to right, until the 298 ids below bos (298) and eos (299) are used. Anything else
// still tokenizes (into characters), and characters outside ASCII become the unknown token (eos), as CLIP does for
// ids it lacks.
import { cp, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const TINY_SD15 = fileURLToPath(new URL('fixtures/golden/tiny-sd15', import.meta.url));

export const BOS = '<|startoftext|>';
export const EOS = '<|endoftext|>';
export const BOS_ID = 298;
export const EOS_ID = 299;
export const MAX_LENGTH = 16;

const WORDS = [
  'a', 'the', 'of', 'in', 'on', 'and', 'with', 'photo', 'cat', 'dog', 'red', 'blue', 'green', 'car', 'tree',
  'house', 'man', 'woman', 'sky', 'sea', 'painting', 'portrait', 'city', 'night', 'sun', 'flower', 'mountain',
  'forest', 'river', 'bird', 'cute', 'old', 'big', 'small', 'white', 'black',
];

/** { vocab: token -> id, merges: ["a b", ...] } for the tiny text encoder. */
export function tinyVocabulary() {
  const vocab = new Map();
  const add = (tok) => {
    if (!vocab.has(tok) && vocab.size < BOS_ID) vocab.set(tok, vocab.size);
    return vocab.has(tok);
  };
  for (let c = 0x21; c <= 0x7e; c++) add(String.fromCharCode(c));
  for (let c = 0x21; c <= 0x7e; c++) add(String.fromCharCode(c) + '</w>');
  const merges = [];
  for (const word of WORDS) {
    if (word.length < 2) continue;
    // Left-to-right merges: w0 w1 -> w0w1, then w0w1 w2 -> w0w1w2, ...; the last symbol carries </w>.
    let left = word[0];
    for (let i = 1; i < word.length; i++) {
      const right = i === word.length - 1 ? `${word[i]}</w>` : word[i];
      const merged = left + right;
      if (!vocab.has(merged)) {
        if (!add(merged)) return { vocab, merges };
        merges.push(`${left} ${right}`);
      }
      left = merged;
    }
  }
  return { vocab, merges };
}

/** Writes tokenizer/{vocab.json, merges.txt, tokenizer_config.json} into `dir` (the model folder). */
export async function writeTinyTokenizer(dir, folder = 'tokenizer') {
  const { vocab, merges } = tinyVocabulary();
  const out = join(dir, folder);
  await mkdir(out, { recursive: true });
  const json = Object.fromEntries(vocab);
  json[BOS] = BOS_ID;
  json[EOS] = EOS_ID;
  await writeFile(join(out, 'vocab.json'), JSON.stringify(json));
  await writeFile(join(out, 'merges.txt'), ['#version: 0.2', ...merges].join('\n') + '\n');
  await writeFile(
    join(out, 'tokenizer_config.json'),
    JSON.stringify(
      {
        tokenizer_class: 'CLIPTokenizer',
        model_max_length: MAX_LENGTH,
        do_lower_case: true,
        bos_token: BOS,
        eos_token: EOS,
        pad_token: EOS,
        unk_token: EOS,
      },
      null,
      2,
    ),
  );
}

/** Stable Diffusion 1.x's scheduler settings (the DDIM class; `sample --scheduler euler` reads the same fields). */
export const TINY_SCHEDULER_CONFIG = {
  _class_name: 'DDIMScheduler',
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  prediction_type: 'epsilon',
  timestep_spacing: 'leading',
  steps_offset: 1,
  set_alpha_to_one: false,
  clip_sample: false,
};

/**
 * Writes the tiny model folder into `dir` (created if needed): unet/, vae/, text_encoder/ copied from the golden
 * tiny-sd15, tokenizer/, scheduler/scheduler_config.json (`scheduler` overrides fields; a field set to undefined
 * is left out) and model_index.json. Resolves to `dir`.
 */
export async function makeTinyModel(dir, { scheduler = {} } = {}) {
  await mkdir(dir, { recursive: true });
  for (const part of ['unet', 'vae', 'text_encoder']) await cp(join(TINY_SD15, part), join(dir, part), { recursive: true });
  await writeTinyTokenizer(dir);
  await mkdir(join(dir, 'scheduler'), { recursive: true });
  const sched = { ...TINY_SCHEDULER_CONFIG, ...scheduler };
  for (const [k, v] of Object.entries(sched)) if (v === undefined) delete sched[k];
  await writeFile(join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(sched, null, 2));
  await writeFile(
    join(dir, 'model_index.json'),
    JSON.stringify(
      {
        _class_name: 'StableDiffusionPipeline',
        scheduler: ['diffusers', 'DDIMScheduler'],
        text_encoder: ['transformers', 'CLIPTextModel'],
        tokenizer: ['transformers', 'CLIPTokenizer'],
        unet: ['diffusers', 'UNet2DConditionModel'],
        vae: ['diffusers', 'AutoencoderKL'],
      },
      null,
      2,
    ),
  );
  return dir;
}
