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
export const VOCAB_SIZE = 300;

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

export const TINY_SDXL = fileURLToPath(new URL('fixtures/golden/tiny-sdxl', import.meta.url));

/**
 * Writes `<dir>/<component>/{config.json, model.safetensors}`: a CLIP text transformer with seeded random weights
 * under transformers' names (vocab 300, 16 positions), `hidden` wide, with a text_projection to `projection`
 * features when given (CLIPTextModelWithProjection, as SDXL's text_encoder_2).
 */
export async function writeRandomClipText(dir, component, { hidden, layers = 2, heads = 2, projection, seed = 1 }) {
  const { writeSafetensors } = await import('../dist/safetensors.js');
  const { Rng } = await import('../dist/rng.js');
  const rng = new Rng(seed);
  const inter = 4 * hidden;
  const tensors = new Map();
  const rand = (name, shape, scale, offset = 0) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = offset + scale * (2 * rng.uniform() - 1);
    tensors.set(name, { data, shape });
  };
  const linear = (name, out, inp) => {
    rand(`${name}.weight`, [out, inp], 1 / Math.sqrt(inp));
    rand(`${name}.bias`, [out], 0.02);
  };
  const norm = (name) => {
    rand(`${name}.weight`, [hidden], 0.1, 1);
    rand(`${name}.bias`, [hidden], 0.05);
  };
  rand('text_model.embeddings.token_embedding.weight', [VOCAB_SIZE, hidden], 0.5);
  rand('text_model.embeddings.position_embedding.weight', [MAX_LENGTH, hidden], 0.2);
  for (let l = 0; l < layers; l++) {
    const p = `text_model.encoder.layers.${l}`;
    norm(`${p}.layer_norm1`);
    norm(`${p}.layer_norm2`);
    for (const q of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) linear(`${p}.self_attn.${q}`, hidden, hidden);
    linear(`${p}.mlp.fc1`, inter, hidden);
    linear(`${p}.mlp.fc2`, hidden, inter);
  }
  norm('text_model.final_layer_norm');
  if (projection) rand('text_projection.weight', [projection, hidden], 1 / Math.sqrt(hidden));
  const out = join(dir, component);
  await mkdir(out, { recursive: true });
  await writeSafetensors(join(out, 'model.safetensors'), new Map([...tensors].sort(([a], [b]) => (a < b ? -1 : 1))));
  const config = {
    architectures: [projection ? 'CLIPTextModelWithProjection' : 'CLIPTextModel'],
    hidden_size: hidden,
    intermediate_size: inter,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    max_position_embeddings: MAX_LENGTH,
    vocab_size: VOCAB_SIZE,
    hidden_act: 'gelu',
    layer_norm_eps: 1e-5,
    bos_token_id: BOS_ID,
    eos_token_id: EOS_ID,
  };
  if (projection) config.projection_dim = projection;
  await writeFile(join(out, 'config.json'), JSON.stringify(config, null, 2));
}

/**
 * A tiny SDXL-style folder: the golden tiny-sdxl U-Net (cross_attention_dim 40, pooled 40), the tiny-sd15 VAE, two
 * random text encoders whose penultimate states concatenate to 16 + 24 = 40 features (the second projecting its
 * pooled output to 40), both tokenizers, an EulerDiscreteScheduler config as SDXL ships, and model_index.json.
 */
export async function makeTinySdxlModel(dir, { forceZeros } = {}) {
  await mkdir(dir, { recursive: true });
  await cp(join(TINY_SDXL, 'unet'), join(dir, 'unet'), { recursive: true });
  await cp(join(TINY_SD15, 'vae'), join(dir, 'vae'), { recursive: true });
  await writeRandomClipText(dir, 'text_encoder', { hidden: 16, seed: 11 });
  await writeRandomClipText(dir, 'text_encoder_2', { hidden: 24, heads: 3, projection: 40, seed: 12 });
  await writeTinyTokenizer(dir, 'tokenizer');
  await writeTinyTokenizer(dir, 'tokenizer_2');
  await mkdir(join(dir, 'scheduler'), { recursive: true });
  await writeFile(
    join(dir, 'scheduler', 'scheduler_config.json'),
    JSON.stringify({ ...TINY_SCHEDULER_CONFIG, _class_name: 'EulerDiscreteScheduler', interpolation_type: 'linear', use_karras_sigmas: false }, null, 2),
  );
  const index = { _class_name: 'StableDiffusionXLPipeline' };
  if (forceZeros !== undefined) index.force_zeros_for_empty_prompt = forceZeros;
  await writeFile(join(dir, 'model_index.json'), JSON.stringify(index, null, 2));
  return dir;
}
