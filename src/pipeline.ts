// The conditioning encoder: turns preference pairs (prompts + prepared images) into what the native trainer takes,
// the PairBatch of native.ts. `train` calls it on the fly; `encode` runs it once and stores the result in an encode
// cache, which training then reads with no VAE or text encoder loaded.
//
//   prompts -> CLIP tokenizer(s) -> text encoder(s):
//     SD1.x: encoder_hidden_states = last_hidden_state of text_encoder (after its final LayerNorm)
//     SDXL:  encoder_hidden_states = concat(penultimate of text_encoder, penultimate of text_encoder_2) on the
//            feature dim; text_embeds = text_embeds (pooled @ text_projection) of text_encoder_2
//   images [N, 3, H, W] in [-1, 1] -> VAE encoder -> mean, logvar -> z = mean + exp(logvar / 2) * eps (seeded)
//     -> x0 = scaling_factor * (z - shift_factor)        (shift_factor is 0 for SD1.x and SDXL)
//   SDXL time_ids: from the data layer (ImageBatch.timeIds: the chosen image's), passed through.
//
// The latent is a sample, not the mean, as the Diffusion-DPO reference does (latent_dist.sample()); with a fixed
// seed it is reproducible here (the noise is not PyTorch's).
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError, describeFsError } from './errors.js';
import { loadTextEncoder, loadVae, type TextEncoder, type Vae } from './index.js';
import type { Tensor } from './native.js';
import { ClipTokenizer } from './tokenizer.js';
import type { CacheManifest } from './data/cache.js';
import type { EncodedBatch, ImageBatch } from './data/loader.js';

/** P encoded pairs as the native trainer takes them (the PairBatch of native.ts). */
export interface EncodedPairs {
  x0_w: Tensor;
  x0_l: Tensor;
  encoder_hidden_states: Tensor;
  text_embeds?: Tensor;
  time_ids?: Tensor;
}

export interface PairEncoderOptions {
  /** weights variant, e.g. 'fp16' (default: plain weights, else fp16) */
  variant?: string;
  /** VAE encoder: images per pass (default 1, 0 = the whole batch), to bound memory at 1024 px */
  vaeSlice?: number;
}

function modelError(code: string, message: string, cause?: unknown): CodedError {
  return new CodedError(code, message, cause === undefined ? undefined : { cause });
}

async function readJson(path: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw modelError('NCP_EIO', `${what}: cannot read ${path} (${describeFsError(err)})`, err);
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SyntaxError('not a JSON object');
    return v as Record<string, unknown>;
  } catch (err) {
    throw modelError('NCP_ECONFIG', `${path} is not a valid JSON object: ${(err as Error).message}`, err);
  }
}

async function isDir(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isDirectory() ?? false;
}

/** Checks that `<model>/<sub>` is a folder before a loader reports something less direct. */
async function requireFolder(modelDir: string, sub: string, why: string): Promise<void> {
  const path = join(modelDir, sub);
  const s = await stat(path).catch((err: unknown) => err as NodeJS.ErrnoException);
  if (s instanceof Error) throw modelError('NCP_EIO', `model folder ${modelDir}: ${sub}/ ${describeFsError(s)} (${path}); ${why}`, s);
  if (!s.isDirectory()) throw modelError('NCP_EIO', `model folder ${modelDir}: ${path} is not a folder; ${why}`);
}

/** vae/config.json's sample_size (a number or [h, w]), the image side the VAE was trained at. */
function sampleSizeOf(cfg: Record<string, unknown>): number | undefined {
  const s = cfg['sample_size'];
  if (typeof s === 'number' && Number.isInteger(s) && s > 0) return s;
  if (Array.isArray(s) && s.length === 2 && s[0] === s[1] && Number.isInteger(s[0]) && (s[0] as number) > 0) return s[0] as number;
  return undefined;
}

function rows(t: Tensor, begin: number, end: number): Tensor {
  const per = t.shape.slice(1).reduce((a, b) => a * b, 1);
  return { data: t.data.slice(begin * per, end * per), shape: [end - begin, ...t.shape.slice(1)] };
}

/** Concatenates [B, L, D1] and [B, L, D2] to [B, L, D1 + D2]. */
function concatLastDim(a: Tensor, b: Tensor): Tensor {
  const [B, L, D1] = a.shape as [number, number, number];
  const D2 = b.shape[2]!;
  const out = new Float32Array(B * L * (D1 + D2));
  for (let r = 0; r < B * L; r++) {
    out.set(a.data.subarray(r * D1, (r + 1) * D1), r * (D1 + D2));
    out.set(b.data.subarray(r * D2, (r + 1) * D2), r * (D1 + D2) + D1);
  }
  return { data: out, shape: [B, L, D1 + D2] };
}

interface TextTower {
  tokenizer: ClipTokenizer;
  encoder: TextEncoder;
}

export class PairEncoder {
  /** VAE latent channels (4 for SD1.x and SDXL) */
  readonly latentChannels: number;
  /** [tokens, dim] of encoder_hidden_states for one prompt */
  readonly textShape: [number, number];
  /** SDXL pooled text_embeds width; null for SD1.x */
  readonly pooledDim: number | null;
  /** VAE scaling_factor */
  readonly latentScale: number;
  /** VAE shift_factor (0 unless the config sets it) */
  readonly latentShift: number;
  /** image side / latent side: 2^(VAE levels - 1) */
  readonly downscale: number;

  private constructor(
    readonly modelDir: string,
    readonly sdxl: boolean,
    /** the default training side: the VAE's sample_size (512 for SD1.5, 1024 for SDXL) */
    readonly resolution: number,
    private readonly vae: Vae,
    private readonly towers: TextTower[],
    private readonly vaeSlice: number | undefined,
  ) {
    const vc = vae.config();
    this.latentChannels = vc.latentChannels;
    this.latentScale = vc.scalingFactor;
    this.latentShift = vc.shiftFactor;
    this.downscale = vc.downscale;
    const widths = towers.map((t) => t.encoder.config().hiddenSize);
    this.textShape = [towers[0]!.tokenizer.maxLength, widths.reduce((a, b) => a + b, 0)];
    this.pooledDim = sdxl ? towers[1]!.encoder.config().projectionDim : null;
  }

  /**
   * Loads the VAE, the text encoder(s) and tokenizer(s) of a diffusers folder. SD1.x or SDXL comes from
   * unet/config.json (SDXL: addition_embed_type "text_time"), or without a unet/ from whether text_encoder_2/ exists.
   */
  static async load(modelDir: string, options: PairEncoderOptions = {}): Promise<PairEncoder> {
    if (!(await isDir(modelDir))) throw modelError('NCP_EIO', `model folder ${modelDir}: ${(await stat(modelDir).catch(() => undefined)) ? 'not a folder' : 'does not exist'}`);
    const slice = options.vaeSlice;
    if (slice !== undefined && (!Number.isInteger(slice) || slice < 0)) throw modelError('NCP_EINVAL', `vaeSlice ${slice} must be a whole number >= 0`);
    const unetCfgPath = join(modelDir, 'unet', 'config.json');
    const unetCfg = (await stat(unetCfgPath).catch(() => undefined)) ? await readJson(unetCfgPath, `model folder ${modelDir}`) : undefined;
    const sdxl = unetCfg ? unetCfg['addition_embed_type'] === 'text_time' : await isDir(join(modelDir, 'text_encoder_2'));
    const need = sdxl ? 'an SDXL folder needs vae/, text_encoder/, text_encoder_2/, tokenizer/ and tokenizer_2/' : 'the encoder needs vae/, text_encoder/ and tokenizer/';
    const subs = sdxl ? ['vae', 'text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2'] : ['vae', 'text_encoder', 'tokenizer'];
    for (const sub of subs) await requireFolder(modelDir, sub, need);

    const vaeCfg = await readJson(join(modelDir, 'vae', 'config.json'), `model folder ${modelDir}`);
    const resolution = sampleSizeOf(vaeCfg) ?? (sdxl ? 1024 : 512);
    const variant = options.variant ?? '';
    const vae = await loadVae(modelDir, { variant });
    const towers: TextTower[] = [];
    for (const [enc, tok] of sdxl ? ([['text_encoder', 'tokenizer'], ['text_encoder_2', 'tokenizer_2']] as const) : ([['text_encoder', 'tokenizer']] as const)) {
      const tokenizer = await ClipTokenizer.fromFolder(join(modelDir, tok));
      const encoder = await loadTextEncoder(modelDir, { component: enc, variant });
      const c = encoder.config();
      // The tokenizer pads to model_max_length; the encoder has one position embedding per token.
      if (tokenizer.maxLength > c.maxPositionEmbeddings)
        throw modelError('NCP_ESHAPE', `model folder ${modelDir}: ${tok}/ pads prompts to ${tokenizer.maxLength} tokens (model_max_length) but ${enc}/ has ${c.maxPositionEmbeddings} positions (max_position_embeddings)`);
      for (const [role, id] of [['bos', tokenizer.bosId], ['eos', tokenizer.eosId], ['pad', tokenizer.padId]] as const)
        if (id >= c.vocabSize) throw modelError('NCP_ESHAPE', `model folder ${modelDir}: ${tok}/ ${role} id ${id} is outside ${enc}/'s vocabulary (vocab_size ${c.vocabSize})`);
      towers.push({ tokenizer, encoder });
    }
    if (sdxl) {
      if (towers[0]!.tokenizer.maxLength !== towers[1]!.tokenizer.maxLength)
        throw modelError('NCP_ESHAPE', `model folder ${modelDir}: tokenizer/ and tokenizer_2/ pad to different lengths (${towers[0]!.tokenizer.maxLength} and ${towers[1]!.tokenizer.maxLength}); SDXL concatenates their hidden states token by token`);
      if (!towers[1]!.encoder.config().hasProjection)
        throw modelError('NCP_ESHAPE', `model folder ${modelDir}: text_encoder_2/ has no text_projection (CLIPTextModelWithProjection); SDXL's pooled text_embeds come from it`);
    }
    const pe = new PairEncoder(modelDir, sdxl, resolution, vae, towers, slice);
    // Catch a mismatched folder here, not in the middle of training.
    const cross = unetCfg?.['cross_attention_dim'];
    if (typeof cross === 'number' && cross !== pe.textShape[1])
      throw modelError('NCP_ESHAPE', `model folder ${modelDir}: the text encoder${sdxl ? 's give' : ' gives'} ${pe.textShape[1]} features per token but unet/config.json has cross_attention_dim ${cross}`);
    const inCh = unetCfg?.['in_channels'];
    if (typeof inCh === 'number' && inCh !== pe.latentChannels)
      throw modelError('NCP_ESHAPE', `model folder ${modelDir}: vae/ has ${pe.latentChannels} latent channels but unet/config.json has in_channels ${inCh}`);
    return pe;
  }

  /** [C, H, W] of one latent of a side x side image. */
  latentShape(side: number): [number, number, number] {
    return [this.latentChannels, side / this.downscale, side / this.downscale];
  }

  /** Text conditioning of each prompt: encoder_hidden_states [B, tokens, dim] and, for SDXL, text_embeds [B, pooled]. */
  async encodePrompts(prompts: string[]): Promise<{ encoder_hidden_states: Tensor; text_embeds?: Tensor }> {
    if (prompts.length === 0) throw modelError('NCP_EINVAL', 'encodePrompts: no prompts');
    const outs = [];
    // One tower after the other: both run on the core's one thread pool.
    for (const t of this.towers) outs.push(await t.encoder.encode(prompts.map((p) => t.tokenizer.encode(p))));
    if (!this.sdxl) return { encoder_hidden_states: outs[0]!.last_hidden_state };
    return {
      encoder_hidden_states: concatLastDim(outs[0]!.penultimate_hidden_state, outs[1]!.penultimate_hidden_state),
      text_embeds: outs[1]!.text_embeds!,
    };
  }

  /** Latents of images [N, 3, H, W] in [-1, 1]: a seeded sample of the VAE posterior, times scaling_factor. */
  async encodeImages(images: Tensor, seed: number): Promise<Tensor> {
    const s = images.shape;
    if (s.length !== 4 || s[1] !== 3 || s.some((d) => !Number.isInteger(d) || d < 1) || images.data.length !== s.reduce((a, b) => a * b, 1))
      throw modelError('NCP_ESHAPE', `encodeImages: images must be [N, 3, H, W] with ${s.reduce((a, b) => a * b, 1)} = data length; got shape [${s.join(', ')}] and ${images.data.length} values`);
    if (s[2]! % this.downscale !== 0 || s[3]! % this.downscale !== 0)
      throw modelError('NCP_ESHAPE', `encodeImages: image side ${s[2]}x${s[3]} is not a multiple of the VAE's downscale ${this.downscale}`);
    if (!Number.isSafeInteger(seed) || seed < 0) throw modelError('NCP_EINVAL', `encodeImages: seed ${seed} must be a whole number >= 0`);
    const dist = await this.vae.encode(images, this.vaeSlice === undefined ? {} : { slice: this.vaeSlice });
    const z = await this.vae.sample(dist, seed);
    const out = z.data;
    const scale = this.latentScale;
    const shift = this.latentShift;
    for (let i = 0; i < out.length; i++) out[i] = Math.fround(scale * (out[i]! - shift));
    return z;
  }

  /**
   * A batch of prepared pairs (stackImageBatch: rows [w_0..w_{P-1}, l_0..l_{P-1}]) -> the trainer's PairBatch. All
   * 2P images go through the VAE as one batch with `seed`.
   */
  async encodeBatch(batch: ImageBatch, seed: number): Promise<EncodedPairs> {
    const P = batch.prompts.length;
    const side = Math.round(Math.sqrt(batch.images.length / (2 * P * 3)));
    if (P === 0 || side * side * 3 * 2 * P !== batch.images.length)
      throw modelError('NCP_ESHAPE', `encodeBatch: ${batch.images.length} pixel values are not 2 x ${P} square RGB images`);
    const x0 = await this.encodeImages({ data: batch.images, shape: [2 * P, 3, side, side] }, seed);
    const text = await this.encodePrompts(batch.prompts);
    const out: EncodedPairs = { x0_w: rows(x0, 0, P), x0_l: rows(x0, P, 2 * P), encoder_hidden_states: text.encoder_hidden_states };
    if (this.sdxl) {
      out.text_embeds = text.text_embeds!;
      out.time_ids = { data: batch.timeIds.slice(0, P * 6), shape: [P, 6] };
    }
    return out;
  }
}

/** A batch read from an encode cache (stackEncodedBatch) as the trainer's PairBatch; shapes from its manifest. */
export function pairBatchFromCache(batch: EncodedBatch, manifest: Pick<CacheManifest, 'latent_shape' | 'text_shape' | 'pooled_dim'>): EncodedPairs {
  const P = batch.prompts.length;
  const out: EncodedPairs = {
    x0_w: { data: batch.x0w, shape: [P, ...manifest.latent_shape] },
    x0_l: { data: batch.x0l, shape: [P, ...manifest.latent_shape] },
    encoder_hidden_states: { data: batch.encoderHiddenStates, shape: [P, ...manifest.text_shape] },
  };
  if (manifest.pooled_dim !== null) {
    if (!batch.textEmbeds || !batch.timeIds) throw modelError('NCP_EDATA', 'encode cache batch: an SDXL cache batch lacks text_embeds or time_ids');
    out.text_embeds = { data: batch.textEmbeds, shape: [P, manifest.pooled_dim] };
    out.time_ids = { data: batch.timeIds, shape: [P, 6] };
  }
  return out;
}
