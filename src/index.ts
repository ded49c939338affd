// The typed public API of ncp-native. Numerics run in the native core; every long call returns a Promise and
// runs off the event loop.
import { addonPath, native, type CudaStatus, type NativeInfo, type NativeUNet, type Tensor, type Conv2dBenchShape } from './native.js';

export type { UNetBenchResult } from './native.js';
export type { Tensor, CudaStatus, NativeInfo, Conv2dBenchShape, UNetInputs, UNetConfigSummary } from './native.js';
export type UNet = NativeUNet;

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
export async function benchUNet(preset: 'sd15' | 'sdxl', latent = 32, batch = 2, reps = 3) {
  return native().benchUNet(preset, latent, batch, reps);
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
 * variant such as `variant: 'fp16'`, or shards with an index) into float32.
 */
export async function loadUNet(modelDir: string, options: { variant?: string } = {}): Promise<UNet> {
  return native().loadUNet(modelDir, options.variant ?? '');
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
}): Promise<string[]> {
  return native().unetForwardFile(options);
}

export { ClipTokenizer } from './tokenizer.js';
