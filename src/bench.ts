// `ncp-native bench ops`: the CPU kernels' throughput, as a table (or JSON). Figures are median GFLOP/s.
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from './native.js';
import { benchAttention, benchConv2d, benchGemm, benchLora, benchStep, benchUNet, info } from './index.js';
import type { AttentionBenchOptions, AttentionBenchResult, LoraBenchOptions, LoraBenchResult } from './native.js';

export interface BenchRow {
  name: string;
  gflops: number;
}

export interface BenchReport {
  machine: string;
  threads: number;
  gemm: string;
  rows: BenchRow[];
}

const conv320 = { n: 2, cin: 320, h: 32, w: 32, cout: 320, k: 3, stride: 1, pad: 1 };

export async function benchOps(reps = 5): Promise<BenchReport> {
  const i = info();
  const rows: BenchRow[] = [];
  rows.push({ name: 'sgemm 1024x1024x1024', gflops: await benchGemm(1024, 1024, 1024, reps) });
  rows.push({ name: 'sgemm 2048x2048x2048', gflops: await benchGemm(2048, 2048, 2048, reps) });
  rows.push({ name: 'conv2d 3x3 320->320 32x32 b2 forward', gflops: await benchConv2d(conv320, false, reps) });
  rows.push({ name: 'conv2d 3x3 320->320 32x32 b2 backward', gflops: await benchConv2d(conv320, true, reps) });
  return { machine: `${cpus()[0]?.model ?? 'unknown CPU'} (${cpus().length} cores)`, threads: i.threads, gemm: i.gemm, rows };
}

export function formatBench(r: BenchReport): string {
  const width = Math.max(...r.rows.map((x) => x.name.length)) + 2;
  const lines = [
    `machine: ${r.machine}, threads: ${r.threads}, gemm: ${r.gemm}`,
    `${'kernel'.padEnd(width)}GFLOP/s`,
    ...r.rows.map((x) => `${x.name.padEnd(width)}${x.gflops.toFixed(1).padStart(7)}`),
  ];
  return lines.join('\n');
}

export interface UNetBenchReport {
  machine: string;
  threads: number;
  preset: string;
  latent: number;
  batch: number;
  parameters: number;
  medianSeconds: number;
  bestSeconds: number;
  gflop: number;
  gflops: number;
  device: string;
  devicePeakBytes: number;
}

/** The machine a figure was measured on: the GPU's name on CUDA, else the CPU model and core count. */
function machineName(device: string): string {
  if (device !== 'cpu') return `${native().cudaStatus().device} (${device})`;
  return `${cpus()[0]?.model ?? 'unknown CPU'} (${cpus().length} cores)`;
}

export async function benchUNetReport(preset: 'sd15' | 'sdxl', latent: number, batch: number, reps: number, device = 'cpu'): Promise<UNetBenchReport> {
  const r = await benchUNet(preset, latent, batch, reps, device);
  return {
    machine: machineName(device),
    device,
    devicePeakBytes: r.devicePeakBytes,
    threads: info().threads,
    preset,
    latent,
    batch,
    parameters: r.parameters,
    medianSeconds: r.medianSeconds,
    bestSeconds: r.bestSeconds,
    gflop: r.gflop,
    gflops: r.gflops,
  };
}

export function formatUNetBench(r: UNetBenchReport): string {
  return [
    `machine: ${r.machine}, threads: ${r.threads}`,
    `unet ${r.preset} (${(r.parameters / 1e6).toFixed(0)} M parameters), latent ${r.latent}x${r.latent}, batch ${r.batch}, 77 tokens`,
    `forward: median ${r.medianSeconds.toFixed(3)} s (best ${r.bestSeconds.toFixed(3)} s), ${r.gflop.toFixed(1)} GFLOP, ${r.gflops.toFixed(1)} GFLOP/s` +
      (r.device === 'cpu' ? '' : `, peak device memory ${(r.devicePeakBytes / 2 ** 30).toFixed(2)} GiB`),
  ].join('\n');
}

export interface StepBenchReport {
  machine: string;
  threads: number;
  preset: 'sd15' | 'sdxl';
  latent: number;
  pairs: number;
  objective: 'sft' | 'dpo' | 'cpo';
  space: 'latent' | 'ncp';
  loraParameters: number;
  medianSeconds: number;
  bestSeconds: number;
  peakRssBytes: number;
  device: string;
  devicePeakBytes: number;
  /** Peak in use by activations, tapes, gradients and scratch during a step (weights excluded). */
  activationPeakBytes: number;
  /** Set: the weights were written as a safetensors file of this dtype and loaded as loadUNet does. */
  weightsFile?: 'F32' | 'F16' | 'BF16';
  gradientCheckpointing?: boolean;
  recompute?: Array<'feedforward' | 'qkv'>;
}

/** `bench step`: one optimiser step (policy fwd+bwd, reference fwd, NCP encoder passes, AdamW), LoRA r4. */
export async function benchStepReport(o: {
  preset: 'sd15' | 'sdxl';
  latent: number;
  pairs: number;
  objective: 'sft' | 'dpo' | 'cpo';
  space: 'latent' | 'ncp';
  reps: number;
  device?: string;
  weightsFile?: 'F32' | 'F16' | 'BF16';
  gradientCheckpointing?: boolean;
  recompute?: Array<'feedforward' | 'qkv'>;
}): Promise<StepBenchReport> {
  const device = o.device ?? 'cpu';
  const r = await benchStep({ ...o, device });
  return {
    machine: machineName(device),
    threads: info().threads,
    ...o,
    device,
    devicePeakBytes: r.devicePeakBytes,
    activationPeakBytes: r.activationPeakBytes,
    loraParameters: r.loraParameters,
    medianSeconds: r.medianSeconds,
    bestSeconds: r.bestSeconds,
    peakRssBytes: r.peakRssBytes,
  };
}

export function formatStepBench(r: StepBenchReport): string {
  return [
    `machine: ${r.machine}, threads: ${r.threads}`,
    `step ${r.preset}, latent ${r.latent}x${r.latent}, ${r.pairs} pair(s), ${r.objective} in ${r.space} space, LoRA r4 (${(r.loraParameters / 1e6).toFixed(2)} M parameters)` +
      (r.weightsFile ? `, weights from a ${r.weightsFile} file` : '') +
      (r.gradientCheckpointing ? ', gradient checkpointing' : r.recompute?.length ? `, ${r.recompute.join(' and ')} recomputed` : ''),
    `step: median ${r.medianSeconds.toFixed(3)} s (best ${r.bestSeconds.toFixed(3)} s), peak RSS ${(r.peakRssBytes / 2 ** 30).toFixed(2)} GiB` +
      (r.device === 'cpu' ? '' : `, peak device memory ${(r.devicePeakBytes / 2 ** 30).toFixed(2)} GiB`) +
      `, activations at most ${(r.activationPeakBytes / 2 ** 30).toFixed(2)} GiB`,
  ].join('\n');
}

/**
 * Writes random SD weights as one fp16 (or bf16/f32) safetensors file, then times loading it as loadUNet does
 * (the weight matrices stay in the mapped file) and, with reps > 0, forwards on the loaded weights.
 */
export async function benchLoad(
  preset: 'sd15' | 'sdxl',
  dtype: string,
  forward: { latent: number; batch: number; reps: number } = { latent: 32, batch: 2, reps: 0 },
  dir = tmpdir(),
): Promise<string> {
  const path = join(dir, `ncp-bench-${process.pid}-${preset}.${dtype.toLowerCase()}.safetensors`);
  const r = await native().benchUNetLoad(preset, dtype, path, forward.latent, forward.batch, forward.reps);
  const gb = (b: number) => (b / 1e9).toFixed(2);
  const lines = [
    `machine: ${cpus()[0]?.model ?? 'unknown CPU'} (${cpus().length} cores)`,
    `unet ${preset} ${dtype} file ${gb(r.fileBytes)} GB: load ${r.seconds.toFixed(2)} s, peak RSS ${gb(r.peakRssBytes)} GB` +
      (r.peakRssIsLoadOnly ? ` (${gb(r.rssBeforeBytes)} GB before the load)` : ' (includes writing the file)') +
      `; weights held ${gb(r.weightBytes)} GB, float32 copies ${gb(r.copiedBytes)} GB`,
  ];
  if (forward.reps > 0)
    lines.push(
      `forward latent ${forward.latent} batch ${forward.batch} on these weights: first ${r.firstForwardSeconds.toFixed(2)} s, ` +
        `median ${r.forwardMedianSeconds.toFixed(2)} s (${(r.forwardGflop / r.forwardMedianSeconds).toFixed(0)} GFLOP/s)`,
    );
  return lines.join('\n');
}

export interface AttentionBenchReport {
  machine: string;
  device: string;
  batch: number;
  tokens: number;
  keys: number;
  heads: number;
  headDim: number;
  modes: AttentionBenchResult[];
}

/** `bench attention`: the attention op alone under each CUDA attention mode (see `benchAttention`). */
export async function benchAttentionReport(o: Required<Omit<AttentionBenchOptions, 'modes'>> & Pick<AttentionBenchOptions, 'modes'>): Promise<AttentionBenchReport> {
  const modes = await benchAttention(o);
  return { machine: machineName(o.device), device: o.device, batch: o.batch, tokens: o.tokens, keys: o.keys, heads: o.heads, headDim: o.headDim, modes };
}

export function formatAttentionBench(r: AttentionBenchReport): string {
  const tflops = (gflop: number, s: number) => (gflop / 1e3 / s).toFixed(1);
  return [
    `machine: ${r.machine}`,
    `attention: batch ${r.batch}, ${r.tokens} queries x ${r.keys} keys, ${r.heads} heads of ${r.headDim}` +
      ' (TFLOP/s: 4 B H Lq Lk Dh per forward, 2.5x per backward; recomputation not counted)',
    ...r.modes.map(
      (m) =>
        `${m.mode.padEnd(12)} forward ${(m.forwardSeconds * 1e3).toFixed(3)} ms (${tflops(m.forwardGflop, m.forwardSeconds)} TFLOP/s), ` +
        `backward ${(m.backwardSeconds * 1e3).toFixed(3)} ms (${tflops(m.backwardGflop, m.backwardSeconds)} TFLOP/s)`,
    ),
  ].join('\n');
}

export interface LoraBenchReport {
  machine: string;
  device: string;
  rows: number;
  in: number;
  out: number;
  rank: number;
  paths: LoraBenchResult[];
}

/** `bench lora`: one LoRA adapter's forward and backward alone, on each path the device has (see `benchLora`). */
export async function benchLoraReport(o: Required<LoraBenchOptions>): Promise<LoraBenchReport> {
  const paths = await benchLora(o);
  return { machine: machineName(o.device), device: o.device, rows: o.rows, in: o.in, out: o.out, rank: o.rank, paths };
}

export function formatLoraBench(r: LoraBenchReport): string {
  const gbps = (bytes: number, s: number) => (bytes / 1e9 / s).toFixed(0);
  return [
    `machine: ${r.machine}`,
    `lora: ${r.rows} rows, ${r.in} -> ${r.out}, rank ${r.rank}, per call on operands cold in the GPU's L2 (GB/s of the` +
      ' least traffic: forward x + y read + y written, backward x + dy + dx read + dx written); the CUDA backend runs' +
      ' the GEMM chain unless NCP_CUDA_LORA=fused',
    ...r.paths.map(
      (p) =>
        `${p.path.padEnd(6)} forward ${(p.forwardSeconds * 1e3).toFixed(3)} ms (${gbps(p.forwardBytes, p.forwardSeconds)} GB/s), ` +
        `backward ${(p.backwardSeconds * 1e3).toFixed(3)} ms (${gbps(p.backwardBytes, p.backwardSeconds)} GB/s)`,
    ),
  ].join('\n');
}
