// The typed public API of ncp-native. Numerics run in the native core; every long call returns a Promise and
// runs off the event loop.
import { addonPath, native, type CudaStatus, type NativeInfo, type NativeUNet, type Tensor, type Conv2dBenchShape } from './native.js';
import type { AttentionBenchOptions, AttentionBenchResult, LoraBenchOptions, LoraBenchResult } from './native.js';
import { unetLoraForwardFile } from './unet-lora.js';
import type { NativeTextEncoder, NativeVae, TextEncoderOutputs, TextEncoderConfigSummary, VaeConfigSummary } from './native.js';

export type { UNetBenchResult, AttentionBenchOptions, AttentionBenchResult, AttentionMode, LoraBenchOptions, LoraBenchResult } from './native.js';
export type { Tensor, CudaStatus, NativeInfo, Conv2dBenchShape, UNetInputs, UNetConfigSummary } from './native.js';
export type UNet = NativeUNet;
export type { TextEncoderOutputs, TextEncoderConfigSummary, VaeConfigSummary } from './native.js';

/** Errors from the native core carry a stable `code` (NCP_EINVAL, NCP_ESHAPE, NCP_EDTYPE, NCP_EUNSUPPORTED, ...). */
export interface NcpError extends Error {
  code: string;
}

export interface Info extends NativeInfo {
  addon: string;
  backends: { cpu: { compiled: true; usable: true }; cuda: CudaStatus };
}

/** Version, threads, GEMM provider, CPU features and the state of each backend. */
export function info(): Info {
  const n = native();
  return { ...n.info(), addon: addonPath(), backends: { cpu: { compiled: true, usable: true }, cuda: n.cudaStatus() } };
}

/** Sets the number of CPU threads the core uses (defaults to the core count, or NCP_NUM_THREADS). */
export function setThreads(n: number): number {
  return native().setThreads(n);
}

export type OpName = 'linear' | 'conv2d' | 'group_norm' | 'layer_norm' | 'activation' | 'attention' | 'timestep_embedding';

/**
 * Runs one CPU op forward. Inputs by name (`x`, `weight`, `bias`, `q`, `k`, `v`, `t`), attributes such as
 * `{ groups, eps }`, `{ stride, padding }`, `{ heads, causal }`, `{ kind: 'gelu' }`. Resolves to `{ y }`.
 */
export async function runOp(
  name: OpName,
  inputs: Record<string, Tensor>,
  attrs: Record<string, number | boolean | string> = {},
): Promise<Record<string, Tensor>> {
  // async: argument errors found before the work starts reject the promise like any other failure.
  return native().runOp(name, inputs, attrs);
}

export type StorageDType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32';

/** Decodes little-endian storage values (as found in safetensors files) to float32. */
export function toFloat32(bytes: Uint8Array, dtype: StorageDType): Float32Array {
  return native().toFloat32(bytes, dtype);
}

/** Encodes float32 values to a storage dtype with round-to-nearest-even. */
export function fromFloat32(values: Float32Array, dtype: StorageDType): Uint8Array {
  return native().fromFloat32(values, dtype);
}

/** Median GFLOP/s of an M×K by K×N float32 GEMM on the CPU. */
export function benchGemm(m: number, n: number, k: number, reps = 5): Promise<number> {
  return native().benchGemm(m, n, k, reps);
}

/** Median GFLOP/s of a float32 conv2d on the CPU, forward or backward (data + weights). */
export function benchConv2d(shape: Conv2dBenchShape, backward = false, reps = 5): Promise<number> {
  return native().benchConv2d(shape, backward, reps);
}

/**
 * Median seconds and GFLOP/s of a U-Net forward pass with random weights of a real architecture ('sd15' or
 * 'sdxl'), square latent of side `latent`, 77 text tokens.
 */
export async function benchUNet(preset: 'sd15' | 'sdxl', latent = 32, batch = 2, reps = 3, device = 'cpu') {
  return native().benchUNet(preset, latent, batch, reps, device);
}

/**
 * Median seconds of the attention op alone (forward, and the recomputing backward) under each CUDA attention mode
 * (materialized, fused, fused-async, fused-async8, fused-wmma) on one shape. Rejects with NCP_EINVAL on a device other than CUDA, NCP_ENOCUDA
 * when the backend is not usable.
 */
export async function benchAttention(options: AttentionBenchOptions = {}): Promise<AttentionBenchResult[]> {
  return native().benchAttention(options);
}

/**
 * Median seconds of one LoRA adapter's forward and backward alone: on a CUDA device its fused kernels and its GEMM
 * chain, on the CPU the CPU's GEMMs. Rejects with NCP_EINVAL for a bad size, NCP_ENOCUDA when CUDA is asked for and
 * not usable.
 */
export async function benchLora(options: LoraBenchOptions = {}): Promise<LoraBenchResult[]> {
  return native().benchLora(options);
}

/**
 * Runs every op forward and backward on the GPU and on the CPU reference and resolves to the relative error
 * per op. Rejects with code NCP_ENOCUDA (and the reason) when the CUDA backend is not usable.
 */
export function cudaParity(): Promise<Record<string, number>> {
  return native().cudaParity();
}

/**
 * Loads the U-Net of a diffusers model folder (`<dir>/unet`: config.json and one safetensors file, an fp16/bf16
 * variant such as `variant: 'fp16'`, or shards with an index). The weight matrices are used in place from the
 * mapped file in their stored dtype (half values are widened to float32 inside the matrix products, with results
 * identical to a float32 copy); biases and norms are converted to float32. The file must stay in place while the
 * U-Net is in use (writers that replace files by renaming, as ours do, are safe).
 */
export async function loadUNet(modelDir: string, options: { variant?: string; device?: string } = {}): Promise<UNet> {
  return native().loadUNet(modelDir, options.variant ?? '', options.device ?? 'cpu');
}

/**
 * `ncp-native forward`: reads `in.*` tensors from a safetensors file, runs the model's U-Net and writes `out.sample`
 * (and with `trace`, every `trace.*` intermediate) atomically to `output`. Resolves to the names written.
 */
export async function forwardFile(options: {
  model: string;
  input: string;
  output: string;
  trace?: boolean;
  variant?: string;
  /** Which network (default 'unet'); the others read and write the names listed at ForwardComponent. */
  component?: ForwardComponent;
  /** VAE only: batch rows per pass (default 1, 0 = the whole batch at once), to bound memory on big images. */
  slice?: number;
  /** U-Net only: a LoRA file (kohya, diffusers or PEFT layout) applied at `loraScale` (default 1). */
  lora?: string;
  loraScale?: number;
}): Promise<string[]> {
  const { component = 'unet' } = options;
  if (options.lora !== undefined && component !== 'unet') throw invalid(`a LoRA applies to the U-Net only, not to component '${component}'`);
  if (component !== 'unet') return native().componentForwardFile({ ...options, component });
  if (options.lora !== undefined) return unetLoraForwardFile({ ...options, lora: options.lora });
  return native().unetForwardFile(options);
}

/**
 * Components `forward` runs, with their tensors: unet (see forwardFile); vae-encoder `in.image` [N,3,H,W] in [-1,1]
 * -> `out.mean`, `out.logvar` (before scaling_factor); vae-decoder `in.latent` -> `out.decoded`; text-encoder
 * (`<model>/text_encoder`) and text-encoder-2 (`<model>/text_encoder_2`) `in.input_ids` [B,L] -> `out.last_hidden_state`,
 * `out.penultimate_hidden_state`, `out.pooled` and, with a projection, `out.text_embeds`.
 */
export const forwardComponents = ['unet', 'vae-encoder', 'vae-decoder', 'text-encoder', 'text-encoder-2'] as const;
export type ForwardComponent = (typeof forwardComponents)[number];

function invalid(message: string): NcpError {
  return Object.assign(new Error(message), { code: 'NCP_EINVAL' });
}

/** Token ids: rows of ids (as ClipTokenizer.encode returns them), or a [batch, tokens] tensor of whole numbers. */
export type TokenIds = number[][] | { data: Int32Array | BigInt64Array | Float32Array | Float64Array | number[]; shape: number[] };

function toInt32Ids(ids: TokenIds): { data: Int32Array; shape: number[] } {
  if (Array.isArray(ids)) {
    const len = ids[0]?.length ?? 0;
    if (ids.some((row) => !Array.isArray(row) || row.length !== len))
      throw invalid('input_ids: rows of token ids must all have the same length');
    return toInt32Ids({ data: ids.flat(), shape: [ids.length, len] });
  }
  const data = new Int32Array(ids.data.length);
  for (let i = 0; i < ids.data.length; i++) {
    const v = Number(ids.data[i]);
    if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) throw invalid(`input_ids: element ${i} = ${String(ids.data[i])} is not a token id`);
    data[i] = v;
  }
  return { data, shape: [...ids.shape] };
}

/** The CLIP text encoder of a diffusers folder (transformers' CLIPTextModel or CLIPTextModelWithProjection). */
export interface TextEncoder {
  /**
   * Encodes [batch, tokens] ids (at most max_position_embeddings tokens, e.g. the tokenizer's 77). Resolves to
   * last_hidden_state (after the final LayerNorm: SD1.x conditioning), penultimate_hidden_state (SDXL conditioning,
   * concatenated over both encoders), pooled (row of each sequence's largest id, the eos) and text_embeds
   * (pooled @ text_projection, with a projection only: SDXL's pooled condition from text_encoder_2).
   */
  encode(ids: TokenIds): Promise<TextEncoderOutputs>;
  config(): TextEncoderConfigSummary;
}

class TextEncoderImpl implements TextEncoder {
  constructor(private readonly handle: NativeTextEncoder) {}
  async encode(ids: TokenIds): Promise<TextEncoderOutputs> {
    return this.handle.encode({ input_ids: toInt32Ids(ids) });
  }
  config(): TextEncoderConfigSummary {
    return this.handle.config();
  }
}

/**
 * Loads `<dir>/text_encoder` (or `text_encoder_2` for SDXL's second encoder): config.json and model.safetensors,
 * an fp16 variant or shards (matrices stay in the mapped file, as for loadUNet). hidden_act, widths, layers and heads
 * come from the config.
 */
export async function loadTextEncoder(
  modelDir: string,
  options: { component?: 'text_encoder' | 'text_encoder_2'; variant?: string } = {},
): Promise<TextEncoder> {
  return new TextEncoderImpl(await native().loadTextEncoder(modelDir, options.component ?? 'text_encoder', options.variant ?? ''));
}

/** The VAE (diffusers AutoencoderKL) of a diffusers folder. Latents are NOT scaled: multiply by config().scalingFactor. */
export interface Vae {
  /** image [N, 3, H, W] in [-1, 1] -> the latent Gaussian, mean and logvar [N, 4, H/8, W/8] (logvar clamped to [-30, 20]). */
  encode(image: Tensor, options?: { slice?: number }): Promise<{ mean: Tensor; logvar: Tensor }>;
  /** mean + exp(logvar / 2) * eps, eps ~ N(0, 1) from `seed` (reproducible here; not PyTorch's generator). */
  sample(dist: { mean: Tensor; logvar: Tensor }, seed: number | bigint): Promise<Tensor>;
  /** latent [N, 4, h, w] -> image [N, 3, 8h, 8w]; `slice` rows at a time (default 1; 0 = all) to bound memory. */
  decode(latent: Tensor, options?: { slice?: number }): Promise<Tensor>;
  config(): VaeConfigSummary;
}

class VaeImpl implements Vae {
  constructor(private readonly handle: NativeVae) {}
  async encode(image: Tensor, options: { slice?: number } = {}) {
    return this.handle.encode({ image }, options);
  }
  async sample(dist: { mean: Tensor; logvar: Tensor }, seed: number | bigint) {
    return this.handle.sample({ mean: dist.mean, logvar: dist.logvar }, seed);
  }
  async decode(latent: Tensor, options: { slice?: number } = {}) {
    return this.handle.decode({ latent }, options);
  }
  config() {
    return this.handle.config();
  }
}

/** Loads `<dir>/vae` (config.json and diffusion_pytorch_model.safetensors, a variant or shards; matrices stay in the mapped file as for loadUNet). */
export async function loadVae(modelDir: string, options: { variant?: string } = {}): Promise<Vae> {
  return new VaeImpl(await native().loadVae(modelDir, options.variant ?? ''));
}

export { ClipTokenizer } from './tokenizer.js';
export { applyLoraFile, unetLoraModules, readUNetLora } from './unet-lora.js';
export type { UNetLoraModule } from './native.js';
export { sample, sampleToFile, encodePng, sizeRules } from './sampler.js';
export type { SampleOptions, SampledImage, SizeRules } from './sampler.js';
export { createScheduler, readSchedulerConfig, parseSchedulerConfig, SCHEDULER_KINDS } from './schedulers.js';
export type { Scheduler, SchedulerConfig, SchedulerKind } from './schedulers.js';
export * from './training.js';
export { train } from './train-api.js';
export type { TrainOptions, TrainConfig, TrainHooks, TrainSummary } from './train-api.js';
