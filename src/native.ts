// Loads the compiled addon: a source build in build/Release (made by `npm run build`) when present, otherwise the
// prebuilt binary for this platform from prebuilds/ (node-gyp-build's order; PREBUILDS_ONLY=1 forces prebuilds).
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** A dense float32 tensor as it crosses the boundary: row-major data and its shape. */
export interface Tensor {
  data: Float32Array;
  shape: number[];
}

export interface CudaStatus {
  compiled: boolean;
  loadable: boolean;
  usable: boolean;
  library: string;
  device: string;
  deviceCount: number;
  computeCapability: string;
  memoryBytes: number;
  driverVersion: number;
  runtimeVersion: number;
  gemm: string;
  /**
   * CUDA attention kernels of float32 and fp16 weights: "materialized (float)", or "fused ..." / "fused-async ..." /
   * "fused-wmma ..." as NCP_CUDA_ATTENTION chose.
   */
  attention: string;
  /** The same for bf16 weights (`--mixed-precision bf16`): "fused-async8 ..." unless NCP_CUDA_ATTENTION names a mode. */
  attentionBf16: string;
  reason: string;
}

export interface NativeInfo {
  version: string;
  threads: number;
  gemm: string;
  cpu: { avx2: boolean; fma: boolean; avx512f: boolean };
}

export interface Conv2dBenchShape {
  n: number;
  cin: number;
  h: number;
  w: number;
  cout: number;
  k: number;
  stride: number;
  pad: number;
}

/** Inputs of a U-Net forward pass: diffusers' argument names. SDXL also needs text_embeds and time_ids. */
export interface UNetInputs {
  sample: Tensor;
  timestep: Tensor;
  encoder_hidden_states: Tensor;
  text_embeds?: Tensor;
  time_ids?: Tensor;
}

export interface UNetConfigSummary {
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  numAttentionHeads: number[];
  transformerLayersPerBlock: number[];
  crossAttentionDim: number;
  sdxl: boolean;
  pooledDim: number;
  parameters: number;
}

/** One LoRA adapter for UNet.setLora: A [r, in] and B [out, r] unscaled (1x1-conv [r, in, 1, 1] / [out, r, 1, 1] too). */
export interface UNetLoraModule {
  module: string;
  A: Tensor;
  B: Tensor;
  /** The update is (alpha * scale / r) B A; default alpha = r. */
  alpha?: number;
}

export interface NativeUNet {
  forward(inputs: UNetInputs, options?: { trace?: boolean }): Promise<{ sample: Tensor; trace?: Record<string, Tensor> }>;
  encode(inputs: UNetInputs, layer?: 'mid' | 'down'): Promise<Tensor>;
  config(): UNetConfigSummary;
  /**
   * Attaches LoRA adapters (replacing earlier ones) at `scale` (default 1): forward() and encode() then run with
   * them. `setLora([], 0)` or scale 0 detaches. Throws NCP_EBUSY while a forward/encode call is running, NCP_ELORA
   * for a module that is not a Linear of this U-Net or has other features.
   */
  setLora(modules: UNetLoraModule[], scale?: number): void;
  /** Detaches the adapters: the plain network. Throws NCP_EBUSY while a call is running. */
  clearLora(): void;
  /** What forward() runs with now: attached modules (0 = none) and their scale. */
  loraInfo(): { modules: number; scale: number };
}

/** Outputs of the CLIP text encoder (transformers' names); text_embeds only with a text_projection. */
export interface TextEncoderOutputs {
  last_hidden_state: Tensor;
  penultimate_hidden_state: Tensor;
  pooled: Tensor;
  text_embeds?: Tensor;
}

export interface TextEncoderConfigSummary {
  component: 'text_encoder' | 'text_encoder_2';
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  maxPositionEmbeddings: number;
  hiddenAct: string;
  hasProjection: boolean;
  projectionDim: number;
  eosTokenId: number;
  parameters: number;
}

export interface NativeTextEncoder {
  encode(inputs: { input_ids: { data: Int32Array; shape: number[] } }): Promise<TextEncoderOutputs>;
  config(): TextEncoderConfigSummary;
}

export interface VaeConfigSummary {
  inChannels: number;
  outChannels: number;
  latentChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  normNumGroups: number;
  scalingFactor: number;
  shiftFactor: number;
  /** Image side / latent side: 2^(levels - 1). */
  downscale: number;
  parameters: number;
}

export interface NativeVae {
  encode(inputs: { image: Tensor }, options?: { slice?: number }): Promise<{ mean: Tensor; logvar: Tensor }>;
  decode(inputs: { latent: Tensor }, options?: { slice?: number }): Promise<Tensor>;
  sample(inputs: { mean: Tensor; logvar: Tensor }, seed: number | bigint): Promise<Tensor>;
  config(): VaeConfigSummary;
}

/**
 * CUDA attention kernels (NCP_CUDA_ATTENTION): materialized (float), fused (register-level mma.sync flash
 * kernels), fused-async / fused-async8 (the same, double-buffered by cp.async; 4 or 8 warps a forward block),
 * fused-wmma (the WMMA flash kernels).
 */
export type AttentionMode = 'materialized' | 'fused' | 'fused-async' | 'fused-async8' | 'fused-wmma';

/** One attention mode's times in `benchAttention` (forward without saved probabilities; recomputing backward). */
export interface AttentionBenchResult {
  mode: AttentionMode;
  forwardSeconds: number;
  backwardSeconds: number;
  /** 4 B H Lq Lk Dh; the backward's is 2.5 times that (FlashAttention's convention, recomputation not counted). */
  forwardGflop: number;
  backwardGflop: number;
}

/** The shape and settings of `benchAttention`; every field has a default (SDXL's 4096-token level at 1024²). */
export interface AttentionBenchOptions {
  batch?: number;
  tokens?: number;
  keys?: number;
  heads?: number;
  headDim?: number;
  reps?: number;
  device?: string;
  modes?: Array<AttentionBenchResult['mode']>;
}

/**
 * One path's times in `benchLora`, per call on operands cold in the GPU's L2: `fused` (the CUDA backend's LoRA
 * kernels, opt-in with NCP_CUDA_LORA=fused), `gemm` (its GEMM chain, the default) or `cpu`.
 */
export interface LoraBenchResult {
  path: 'fused' | 'gemm' | 'cpu';
  forwardSeconds: number;
  backwardSeconds: number;
  /** The least traffic each pass needs: forward reads x and y and writes y; backward reads x and dy, reads and writes dx. */
  forwardBytes: number;
  backwardBytes: number;
}

/** The shape and settings of `benchLora`; every field has a default (SDXL 1024²'s first transformer level, rank 4). */
export interface LoraBenchOptions {
  rows?: number;
  in?: number;
  out?: number;
  rank?: number;
  reps?: number;
  device?: string;
}

export interface UNetBenchResult {
  medianSeconds: number;
  bestSeconds: number;
  gflop: number;
  gflops: number;
  parameters: number;
  weightsSeconds: number;
  /** CUDA memory held at most (weights and cached activations); 0 on the CPU. */
  devicePeakBytes: number;
}

/** The objective of METHOD.md sections 3-4 (beta in its convention: DPO loss = -log sigmoid(beta * logits)). */
export interface ObjectiveOptions {
  objective?: 'sft' | 'dpo' | 'cpo';
  space?: 'latent' | 'ncp';
  ncpLayer?: 'mid' | 'down';
  ncpTimestep?: 'prev' | 'uniform';
  beta?: number;
  cpoLambda?: number;
  ncpCoeff?: number;
  ncpPool?: boolean;
  /** Run the reference U-Net for SFT/CPO too, for the logged reference errors and implicit accuracy (default true). */
  logReference?: boolean;
}

export interface TrainerOptions {
  model: string;
  variant?: string;
  seed?: number;
  /** Recompute each block's activations during backward instead of keeping them: less memory, ~1/3 more time. */
  gradientCheckpointing?: boolean;
  /** Selective recompute: 'feedforward' (the transformer blocks' ff.net.0.proj output, 8 of the 14 block-sized
   * tensors a block keeps) and/or 'qkv' (the attentions' q, k, v) are recomputed in backward instead of kept, for
   * one more projection GEMM each; the same gradients. */
  recompute?: Array<'feedforward' | 'qkv'>;
  /** 'cpu' (default), 'cuda' or 'cuda:N': where the U-Net's weights and activations live. LoRA, optimiser and
   * checkpoints stay on the host either way, so a run resumes on either device. */
  device?: string;
  /** 'bf16' or 'fp16': the frozen weight matrices in that type on the GPU (mixed precision; CUDA only). 'bf16' also
   * keeps the activations for backward in bf16; 'fp16' turns on dynamic loss scaling. Default 'no'. */
  mixedPrecision?: 'no' | 'bf16' | 'fp16';
  /** Dynamic loss scaling (as PyTorch's GradScaler): present turns it on, 'fp16' does too. initScale: a power of
   * two (default 65536); growthInterval: finite steps before the scale doubles (default 2000). */
  lossScaling?: { initScale?: number; growthInterval?: number };
  lora?: { rank?: number; alpha?: number; targets?: string[]; init?: 'gaussian' | 'kaiming' };
  objective?: ObjectiveOptions;
  optimizer?: {
    lr?: number;
    beta1?: number;
    beta2?: number;
    eps?: number;
    weightDecay?: number;
    maxGradNorm?: number;
    schedule?: 'constant' | 'constant_with_warmup' | 'linear' | 'cosine';
    warmupSteps?: number;
    totalSteps?: number;
  };
}

/** P encoded pairs: VAE latents times scaling_factor [P, C, H, W], text conditioning [P, tokens, D], SDXL extras. */
export interface PairBatch {
  x0_w: Tensor;
  x0_l: Tensor;
  encoder_hidden_states: Tensor;
  text_embeds?: Tensor;
  time_ids?: Tensor;
}

export interface ObjectiveMetrics {
  loss: number;
  implicitAcc: number;
  rewardW: number;
  rewardL: number;
  policyW: number;
  policyL: number;
  refW: number;
  refL: number;
}

export interface StepMetrics extends ObjectiveMetrics {
  step: number;
  gradNorm: number;
  lr: number;
  seconds: number;
  /** The loss scale this step's backward ran with (1 without loss scaling). */
  lossScale: number;
  /** Loss scaling found non-finite gradients: no update (the step still counts), the scale halved. */
  skipped: boolean;
}

export interface LoraModuleTensors {
  module: string;
  rank: number;
  alpha: number;
  inFeatures: number;
  outFeatures: number;
  A: Tensor;
  B: Tensor;
}

export interface TrainerState {
  step: number;
  rng: string[];
  moments: Float32Array[];
  /** With loss scaling: the current scale and the finite steps since it last changed. */
  lossScale?: number;
  lossScaleGoodSteps?: number;
}

export interface NativeTrainer {
  step(microBatches: PairBatch[]): Promise<StepMetrics>;
  evaluate(batch: PairBatch, seed?: number): Promise<ObjectiveMetrics>;
  loraTensors(): LoraModuleTensors[];
  setLoraTensors(list: Array<{ module: string; A: Tensor; B: Tensor }>): void;
  state(): TrainerState;
  setState(state: TrainerState): void;
  info(): { loraParameters: number; loraModules: number; sdxl: boolean; latentChannels: number; crossAttentionDim: number; pooledDim: number; downscale: number };
}

export interface StepBenchResult {
  medianSeconds: number;
  bestSeconds: number;
  peakRssBytes: number;
  loraParameters: number;
  devicePeakBytes: number;
  /** The most the step's activations, tapes, gradients and scratch had in use at once (weights excluded). */
  activationPeakBytes: number;
  /** What the activation cache held after the steps (what it took from the system or the driver): in use, cached
   *  free blocks and the free parts of its segments. */
  activationHeldBytes: number;
  /** One U-Net forward over the step's 2P rows. */
  forwardGflop: number;
}

export interface UNetLoadBenchResult {
  fileBytes: number;
  /** Loading as loadUNet does: weight matrices used in place from the mapped file, the rest converted. */
  seconds: number;
  /** Peak resident set during the load, mapped file pages included. */
  peakRssBytes: number;
  /** False when the kernel could not reset the peak after writing the file: the figure then includes the writer. */
  peakRssIsLoadOnly: boolean;
  /** Resident set just before the load: the peak minus this is what loading added. */
  rssBeforeBytes: number;
  weightBytes: number;
  /** float32 copies the load made (biases and norms). */
  copiedBytes: number;
  /** reps > 0: the first forward on the loaded weights, then the median of `reps` more. */
  firstForwardSeconds: number;
  forwardMedianSeconds: number;
  forwardGflop: number;
}

/** The raw binding. Prefer the typed wrappers in index.ts. */
export interface NativeBinding {
  info(): NativeInfo;
  setThreads(n: number): number;
  runOp(name: string, inputs: Record<string, Tensor>, attrs?: Record<string, number | boolean | string>): Promise<
    Record<string, Tensor>
  >;
  benchGemm(m: number, n: number, k: number, reps: number): Promise<number>;
  benchConv2d(shape: Conv2dBenchShape, backward: boolean, reps: number): Promise<number>;
  benchUNet(preset: string, latent: number, batch: number, reps: number, device?: string): Promise<UNetBenchResult>;
  benchUNetLoad(preset: string, dtype: string, path: string, latent: number, batch: number, reps: number): Promise<UNetLoadBenchResult>;
  benchAttention(options: AttentionBenchOptions): Promise<AttentionBenchResult[]>;
  benchLora(options: LoraBenchOptions): Promise<LoraBenchResult[]>;
  toFloat32(bytes: Uint8Array, dtype: string): Float32Array;
  fromFloat32(values: Float32Array, dtype: string): Uint8Array;
  cudaStatus(): CudaStatus;
  cudaParity(): Promise<Record<string, number>>;
  loadUNet(modelDir: string, variant?: string, device?: string): Promise<NativeUNet>;
  createTrainer(options: TrainerOptions): Promise<NativeTrainer>;
  gradFile(options: ObjectiveOptions & { model: string; input: string; output: string; variant?: string; loraAlpha?: number }): Promise<string[]>;
  benchStep(options: { preset: string; latent: number; pairs: number; objective: string; space: string; reps: number; device?: string; weightsFile?: string; gradientCheckpointing?: boolean; recompute?: string[] }): Promise<StepBenchResult>;
  unetForwardFile(options: { model: string; input: string; output: string; trace?: boolean; variant?: string }): Promise<string[]>;
  loadTextEncoder(modelDir: string, component: string, variant: string): Promise<NativeTextEncoder>;
  loadVae(modelDir: string, variant: string): Promise<NativeVae>;
  componentForwardFile(options: {
    model: string;
    component: string;
    input: string;
    output: string;
    trace?: boolean;
    variant?: string;
    slice?: number;
  }): Promise<string[]>;
}

export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

let cached: NativeBinding | undefined;
let cachedPath = '';

/** The file the addon was loaded from (a source build in build/Release, or a prebuild). */
export function addonPath(): string {
  native();
  return cachedPath;
}

export function native(): NativeBinding {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const load = require('node-gyp-build') as { resolve(dir: string): string };
  try {
    cachedPath = load.resolve(packageRoot);
    cached = require(cachedPath) as NativeBinding;
  } catch (err) {
    const e = new Error(
      `ncp-native: no usable native addon in ${packageRoot} (looked in build/Release and prebuilds/${process.platform}-${process.arch}). ` +
        `Build it from source with \`npm run build\` (needs cmake and a C++17 compiler). Cause: ${(err as Error).message}`,
    ) as Error & { code: string };
    e.code = 'NCP_ENOADDON';
    throw e;
  }
  return cached;
}
