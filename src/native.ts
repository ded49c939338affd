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

export interface NativeUNet {
  forward(inputs: UNetInputs, options?: { trace?: boolean }): Promise<{ sample: Tensor; trace?: Record<string, Tensor> }>;
  encode(inputs: UNetInputs, layer?: 'mid' | 'down'): Promise<Tensor>;
  config(): UNetConfigSummary;
}

export interface UNetBenchResult {
  medianSeconds: number;
  bestSeconds: number;
  gflop: number;
  gflops: number;
  parameters: number;
  weightsSeconds: number;
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
  benchUNet(preset: string, latent: number, batch: number, reps: number): Promise<UNetBenchResult>;
  benchUNetLoad(preset: string, dtype: string, path: string): Promise<{ fileBytes: number; seconds: number; peakRssBytes: number; float32Bytes: number }>;
  toFloat32(bytes: Uint8Array, dtype: string): Float32Array;
  fromFloat32(values: Float32Array, dtype: string): Uint8Array;
  cudaStatus(): CudaStatus;
  cudaParity(): Promise<Record<string, number>>;
  loadUNet(modelDir: string, variant?: string): Promise<NativeUNet>;
  unetForwardFile(options: { model: string; input: string; output: string; trace?: boolean; variant?: string }): Promise<string[]>;
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
