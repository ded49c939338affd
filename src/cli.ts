#!/usr/bin/env node
// The ncp-native command line. Each command is a thin shell over the typed API in index.ts.
import yargs from 'yargs';
import { trainCommand } from './cli-train.js';
import { hideBin } from 'yargs/helpers';
import { join } from 'node:path';
import { ClipTokenizer, forwardComponents, forwardFile, gradFile, info, setThreads } from './index.js';
import { benchAttentionReport, benchLoad, benchLoraReport, benchOps, benchStepReport, benchUNetReport, formatAttentionBench, formatBench, formatLoraBench, formatStepBench, formatUNetBench } from './bench.js';
import { encodeDataset, formatEncodeProgress, formatEncodeReport } from './encode.js';
import { CodedError } from './errors.js';
import { ProgressBar } from './progress.js';
import { sampleToFile } from './sampler.js';
import { SCHEDULER_KINDS } from './schedulers.js';

/** Exit codes: 0 ok, 1 the job failed, 2 the command line was wrong. */
const EXIT_USAGE = 2;

class UsageError extends Error {
  readonly exitCode = EXIT_USAGE;
}

// Commands whose implementation lands with later issues; listed so `--help` shows the whole tool.
const planned: Array<[string, string]> = [];

/** `bench step --recompute a,b`: the parts of selective recompute, each named once. */
function parseRecompute(value: string | undefined): Array<'feedforward' | 'qkv'> {
  const parts = (value ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  for (const p of parts) if (p !== 'feedforward' && p !== 'qkv') throw new UsageError(`--recompute: '${p}' is not one of feedforward, qkv`);
  return [...new Set(parts)] as Array<'feedforward' | 'qkv'>;
}

function formatInfo(i: ReturnType<typeof info>): string {
  const c = i.backends.cuda;
  const cuda = c.usable
    ? `usable: ${c.device} (sm ${c.computeCapability}), gemm: ${c.gemm}, attention: ${c.attention}; with bf16 weights ${c.attentionBf16}`
    : `${c.compiled ? 'compiled' : 'not compiled'}, not usable: ${c.reason}`;
  return [
    `ncp-native ${i.version} (${i.addon})`,
    `cpu:     usable, ${i.threads} threads, avx2 ${i.cpu.avx2 ? 'yes' : 'no'}, avx512f ${i.cpu.avx512f ? 'yes' : 'no'}`,
    `gemm:    ${i.gemm}`,
    `cuda:    ${cuda}`,
  ].join('\n');
}

export async function main(argv: string[]): Promise<void> {
  let parser = yargs(argv)
    .scriptName('ncp-native')
    .usage('$0 <command> [options]')
    .option('threads', { type: 'number', describe: 'CPU threads (default: all cores, or NCP_NUM_THREADS)' })
    .middleware((args) => {
      if (args.threads !== undefined) {
        if (!Number.isInteger(args.threads) || args.threads < 1) throw new UsageError('--threads must be a positive integer');
        setThreads(args.threads);
      }
    })
    .command(
      'info',
      'print version, backends (compiled, usable, why not), GEMM provider and threads',
      (y) => y.option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
      (args) => {
        const i = info();
        process.stdout.write((args.json ? JSON.stringify(i, null, 2) : formatInfo(i)) + '\n');
      },
    )
    .command(
      'forward',
      'run a component of a diffusers folder on in.* tensors from a safetensors file, writing out.* (and trace.*)',
      (y) =>
        y
          .option('model', { type: 'string', demandOption: true, describe: 'diffusers model folder' })
          .option('component', {
            choices: forwardComponents,
            default: 'unet' as const,
            describe: 'which network: unet, vae-encoder (in.image -> out.mean, out.logvar), vae-decoder (in.latent -> out.decoded), text-encoder / text-encoder-2 (in.input_ids -> out.last_hidden_state, out.penultimate_hidden_state, out.pooled, out.text_embeds)',
          })
          .option('slice', { type: 'number', describe: 'vae-*: batch rows per pass (default 1; 0 = all at once)' })
          .option('input', { type: 'string', demandOption: true, describe: 'safetensors file with in.* tensors' })
          .option('output', { type: 'string', demandOption: true, describe: 'safetensors file to write' })
          .option('variant', { type: 'string', describe: 'weights variant, e.g. fp16 (default: plain, else fp16)' })
          .option('trace', { type: 'boolean', default: false, describe: 'also write trace.* intermediates' })
          .option('lora', { type: 'string', describe: 'unet: a LoRA file (kohya, diffusers or PEFT layout) to apply' })
          .option('lora-scale', { type: 'number', default: 1, describe: 'unet: scale of the --lora update (0 = the plain network)' }),
      async (args) => {
        const start = performance.now();
        if (args.slice !== undefined && (!Number.isInteger(args.slice) || args.slice < 0)) throw new UsageError('--slice must be a whole number >= 0');
        if (args.lora !== undefined && args.component !== 'unet') throw new UsageError('--lora applies to --component unet only');
        if (!Number.isFinite(args['lora-scale'])) throw new UsageError('--lora-scale must be a number');
        const names = await forwardFile({
          model: args.model,
          component: args.component,
          input: args.input,
          output: args.output,
          trace: args.trace,
          variant: args.variant ?? '',
          slice: args.slice,
          ...(args.lora !== undefined ? { lora: args.lora, loraScale: args['lora-scale'] } : {}),
        });
        const seconds = ((performance.now() - start) / 1000).toFixed(2);
        process.stdout.write(`wrote ${names.length} tensors to ${args.output} in ${seconds} s: ${names.join(', ')}\n`);
      },
    )
    .command(
      'sample',
      'generate an image from a prompt with a diffusers folder (SD1.5 or SDXL), optionally with a LoRA: DDIM or Euler steps, classifier-free guidance, seeded; writes a PNG',
      (y) =>
        y
          .option('model', { type: 'string', demandOption: true, describe: 'diffusers folder: unet, vae, text_encoder[_2], tokenizer[_2], scheduler' })
          .option('prompt', { type: 'string', demandOption: true })
          .option('negative', { type: 'string', describe: 'unconditional prompt for guidance (default: empty; SDXL: zero embeddings, as diffusers)' })
          .option('lora', { type: 'string', describe: 'LoRA file (kohya, diffusers or PEFT layout)' })
          .option('lora-scale', { type: 'number', default: 1, describe: 'scale of the LoRA update' })
          .option('scheduler', { choices: SCHEDULER_KINDS, describe: 'default: the folder\'s scheduler class (EulerDiscreteScheduler -> euler, else ddim)' })
          .option('steps', { type: 'number', default: 30, describe: 'denoising steps' })
          .option('cfg', { type: 'number', default: 7.5, describe: 'classifier-free guidance scale (<= 1: no guidance)' })
          .option('seed', { type: 'number', default: 0, describe: 'seeds the initial latents' })
          .option('width', { type: 'number', describe: 'pixels (default: unet sample_size x the VAE downscale)' })
          .option('height', { type: 'number', describe: 'pixels (default: unet sample_size x the VAE downscale)' })
          .option('variant', { type: 'string', describe: 'weights variant, e.g. fp16' })
          .option('device', { type: 'string', default: 'cpu', describe: 'where the U-Net runs: cpu, cuda or cuda:N (text encoders and VAE: CPU)' })
          .option('out', { type: 'string', demandOption: true, describe: 'PNG file to write' }),
      async (args) => {
        if (!Number.isInteger(args.steps) || args.steps < 1) throw new UsageError('--steps must be a positive integer');
        if (!Number.isSafeInteger(args.seed) || args.seed < 0) throw new UsageError('--seed must be a whole number >= 0');
        for (const [name, v] of [['cfg', args.cfg], ['lora-scale', args['lora-scale']]] as const)
          if (!Number.isFinite(v)) throw new UsageError(`--${name} must be a number`);
        for (const [name, v] of [['width', args.width], ['height', args.height]] as const)
          if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new UsageError(`--${name} must be a positive integer`);
        const start = performance.now();
        let bar: ProgressBar | undefined;
        const image = await sampleToFile({
          model: args.model,
          device: args.device,
          prompt: args.prompt,
          ...(args.negative !== undefined ? { negative: args.negative } : {}),
          ...(args.lora !== undefined ? { lora: args.lora, loraScale: args['lora-scale'] } : {}),
          ...(args.scheduler !== undefined ? { scheduler: args.scheduler } : {}),
          steps: args.steps,
          cfg: args.cfg,
          seed: args.seed,
          ...(args.width !== undefined ? { width: args.width } : {}),
          ...(args.height !== undefined ? { height: args.height } : {}),
          variant: args.variant ?? '',
          out: args.out,
          onStep: (done, total) => (bar ??= new ProgressBar('sample', total)).update(done),
        });
        const seconds = ((performance.now() - start) / 1000).toFixed(2);
        process.stdout.write(`wrote ${args.out} (${image.width}x${image.height}, ${image.scheduler}, ${image.timesteps.length} steps) in ${seconds} s\n`);
      },
    )
    .command(
      'tokenize <text..>',
      'CLIP-tokenize prompts with a model folder\'s tokenizer: one JSON array of 77 ids per text',
      (y) =>
        y
          .positional('text', { type: 'string', array: true, demandOption: true })
          .option('model', { type: 'string', demandOption: true, describe: 'diffusers model folder' })
          .option('tokenizer', { choices: ['tokenizer', 'tokenizer_2'] as const, default: 'tokenizer' as const }),
      async (args) => {
        const tok = await ClipTokenizer.fromFolder(join(args.model, args.tokenizer));
        for (const text of args.text) process.stdout.write(JSON.stringify(tok.encode(String(text))) + '\n');
      },
    )
    .command(
      'grad',
      'loss and LoRA gradients of one objective on a case file (in.* inputs, lora.* weights), for checks against a reference',
      (y) =>
        y
          .option('model', { type: 'string', demandOption: true, describe: 'diffusers model folder (its unet/ is used)' })
          .option('input', { type: 'string', demandOption: true, describe: 'case safetensors: in.x0_w, in.x0_l, in.noise, ..., lora.<module>.lora_A/B.weight' })
          .option('output', { type: 'string', demandOption: true, describe: 'safetensors to write: out.loss, out.policy_losses, out.ref_losses, grad.*' })
          .option('objective', { choices: ['sft', 'dpo', 'cpo'] as const, demandOption: true })
          .option('space', { choices: ['latent', 'ncp'] as const, demandOption: true })
          .option('ncp-layer', { choices: ['mid', 'down'] as const, default: 'mid' as const })
          .option('ncp-timestep', { choices: ['prev', 'uniform'] as const, default: 'prev' as const })
          .option('beta', { type: 'number', demandOption: true, describe: 'METHOD.md convention: DPO loss = -log sigmoid(beta * logits) (Diffusion-DPO beta_dpo = 2 beta)' })
          .option('cpo-lambda', { type: 'number', default: 0, describe: 'CPO behaviour-cloning weight' })
          .option('lora-alpha', { type: 'number', describe: 'LoRA alpha (default: the rank)' })
          .option('variant', { type: 'string', describe: 'weights variant, e.g. fp16' }),
      async (args) => {
        if (!Number.isFinite(args.beta)) throw new UsageError('--beta must be a number');
        const start = performance.now();
        const names = await gradFile({
          model: args.model,
          input: args.input,
          output: args.output,
          variant: args.variant,
          objective: args.objective,
          space: args.space,
          ncpLayer: args['ncp-layer'],
          ncpTimestep: args['ncp-timestep'],
          beta: args.beta,
          cpoLambda: args['cpo-lambda'],
          loraAlpha: args['lora-alpha'],
        });
        const seconds = ((performance.now() - start) / 1000).toFixed(2);
        const grads = names.filter((n) => n.startsWith('grad.')).length;
        process.stdout.write(`wrote ${names.length} tensors (${grads} gradients) to ${args.output} in ${seconds} s\n`);
      },
    )
    .command(
      'encode',
      'encode a dataset once (prompts through the text encoders, images through the VAE) into an encode cache that `--data` reads; the cache fixes the augmentation: centre crop, no flip, one VAE sample per image',
      (y) =>
        y
          .option('model', { type: 'string', demandOption: true, describe: 'diffusers model folder (vae, text_encoder[_2], tokenizer[_2]; unet/config.json says SD1.5 or SDXL)' })
          .option('data', { type: 'string', demandOption: true, describe: 'Pick-a-Pic .parquet file or folder of shards, or a .jsonl of {prompt, chosen, rejected}' })
          .option('out', { type: 'string', demandOption: true, describe: 'cache folder to create (written to a temporary sibling, renamed when complete)' })
          .option('resolution', { type: 'number', describe: 'image side (default: the VAE config sample_size, 512 for SD1.5, 1024 for SDXL)' })
          .option('batch', { type: 'number', default: 4, describe: 'pairs per encoder pass' })
          .option('variant', { type: 'string', describe: 'weights variant, e.g. fp16' })
          .option('max-pairs', { type: 'number', describe: 'stop after this many pairs' })
          .option('seed', { type: 'number', default: 0, describe: 'seeds the VAE posterior samples' })
          .option('dtype', { choices: ['F16', 'F32'] as const, default: 'F16' as const, describe: 'storage dtype of latents and text conditioning' })
          .option('shard-pairs', { type: 'number', default: 256, describe: 'pairs per shard file' })
          .option('vae-slice', { type: 'number', describe: 'images per VAE pass (default 1; 0 = the whole batch)' })
          .option('max-corrupt-fraction', { type: 'number', default: 0.05, describe: 'fail when more than this fraction of pairs has an unusable image' })
          .option('absolute-winners', { type: 'boolean', default: false, describe: 'parquet: keep only pairs whose preferred image won every comparison it took part in' })
          .option('overwrite', { type: 'boolean', default: false, describe: 'replace a non-empty --out (only once the new cache is complete)' }),
      async (args) => {
        for (const [name, v] of [['batch', args.batch], ['max-pairs', args['max-pairs']], ['resolution', args.resolution], ['shard-pairs', args['shard-pairs']]] as const)
          if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new UsageError(`--${name} must be a positive integer`);
        if (!Number.isSafeInteger(args.seed) || args.seed < 0) throw new UsageError('--seed must be a whole number >= 0');
        if (args['vae-slice'] !== undefined && (!Number.isInteger(args['vae-slice']) || args['vae-slice'] < 0)) throw new UsageError('--vae-slice must be a whole number >= 0');
        const mcf = args['max-corrupt-fraction'];
        if (!(mcf >= 0 && mcf <= 1)) throw new UsageError('--max-corrupt-fraction must be between 0 and 1');
        // Ctrl-C: stop after the batch in flight; the temporary folder is removed, --out is untouched.
        const abort = new AbortController();
        const onSigint = (): void => abort.abort(Object.assign(new CodedError('NCP_EINTERRUPTED', `encode interrupted; nothing was written to ${args.out}`), { exitCode: 130 }));
        process.once('SIGINT', onSigint);
        const tty = process.stderr.isTTY === true;
        try {
          const report = await encodeDataset({
            model: args.model,
            data: args.data,
            out: args.out,
            resolution: args.resolution,
            batch: args.batch,
            variant: args.variant,
            maxPairs: args['max-pairs'],
            seed: args.seed,
            dtype: args.dtype,
            shardPairs: args['shard-pairs'],
            vaeSlice: args['vae-slice'],
            maxCorruptFraction: mcf,
            absoluteWinners: args['absolute-winners'],
            overwrite: args.overwrite,
            signal: abort.signal,
            onProgress: tty ? (p) => process.stderr.write(`\r\x1b[K${formatEncodeProgress(p)}`) : undefined,
          });
          if (tty) process.stderr.write('\r\x1b[K');
          process.stdout.write(formatEncodeReport(report) + '\n');
        } catch (err) {
          if (tty) process.stderr.write('\n');
          throw err;
        } finally {
          process.removeListener('SIGINT', onSigint);
        }
      },
    )
    .command(
      'bench <what>',
      'benchmarks: `ops` (GEMM and conv2d GFLOP/s), `unet` (a forward pass of the real SD1.5/SDXL architecture, random weights), `step` (one optimiser step: LoRA r4, the objective below), `load` (reading such weights from a safetensors file), `attention` (the attention op alone on a CUDA device, under each attention mode), `lora` (one LoRA adapter alone: on a CUDA device its fused kernels and its GEMM chain)',
      (y) =>
        y
          .positional('what', { choices: ['ops', 'unet', 'step', 'load', 'attention', 'lora'] as const, describe: 'what to measure' })
          .option('rows', { type: 'number', default: 8192, describe: 'lora: rows (tokens x batch)' })
          .option('in', { type: 'number', default: 640, describe: 'lora: input features' })
          .option('out', { type: 'number', describe: 'lora: output features (default: --in)' })
          .option('rank', { type: 'number', default: 4, describe: 'lora: rank' })
          .option('tokens', { type: 'number', default: 4096, describe: 'attention: query tokens (and keys)' })
          .option('heads', { type: 'number', default: 10, describe: 'attention: heads' })
          .option('head-dim', { type: 'number', default: 64, describe: 'attention: head dimension' })
          .option('pairs', { type: 'number', default: 1, describe: 'step: preference pairs per step' })
          .option('objective', { choices: ['sft', 'dpo', 'cpo'] as const, default: 'dpo' as const, describe: 'step: objective' })
          .option('space', { choices: ['latent', 'ncp'] as const, default: 'ncp' as const, describe: 'step: error space' })
          .option('dtype', { choices: ['F16', 'BF16', 'F32'] as const, default: 'F16' as const, describe: 'load: file dtype' })
          .option('gradient-checkpointing', { type: 'boolean', default: false, describe: 'step: as train --gradient-checkpointing' })
          .option('recompute', { type: 'string', describe: 'step: as train --recompute (feedforward, qkv or feedforward,qkv)' })
          .option('weights-file', { choices: ['F32', 'F16', 'BF16'] as const, describe: 'step: write the random weights as a safetensors file of this dtype and load it as loadUNet does (matrices stay in the file), instead of float32 in memory' })
          .option('forward', { type: 'boolean', default: false, describe: 'load: then time forwards (--latent, --batch, --reps) on the loaded weights' })
          .option('json', { type: 'boolean', default: false })
          .option('reps', { type: 'number', describe: 'timed repetitions, median reported (default: ops 5, unet 3)' })
          .option('config', { choices: ['sd15', 'sdxl'] as const, default: 'sd15' as const, describe: 'unet: architecture' })
          .option('latent', { type: 'number', default: 32, describe: 'unet: latent side (image side / 8)' })
          .option('batch', { type: 'number', default: 2, describe: 'unet: batch size' })
          .option('device', { type: 'string', describe: 'unet, step: cpu (default), cuda or cuda:N; attention: cuda (default) or cuda:N; lora: cuda (default), cuda:N or cpu' }),
      async (args) => {
        for (const [name, v] of [['reps', args.reps], ['latent', args.latent], ['batch', args.batch], ['pairs', args.pairs], ['tokens', args.tokens], ['heads', args.heads], ['head-dim', args['head-dim']], ['rows', args.rows], ['in', args.in], ['out', args.out], ['rank', args.rank]] as const)
          if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new UsageError(`--${name} must be a positive integer`);
        if (args.what === 'attention') {
          const report = await benchAttentionReport({ batch: args.batch, tokens: args.tokens, keys: args.tokens, heads: args.heads, headDim: args['head-dim'], reps: args.reps ?? 10, device: args.device ?? 'cuda' });
          process.stdout.write((args.json ? JSON.stringify(report, null, 2) : formatAttentionBench(report)) + '\n');
          return;
        }
        if (args.what === 'lora') {
          const report = await benchLoraReport({ rows: args.rows, in: args.in, out: args.out ?? args.in, rank: args.rank, reps: args.reps ?? 20, device: args.device ?? 'cuda' });
          process.stdout.write((args.json ? JSON.stringify(report, null, 2) : formatLoraBench(report)) + '\n');
          return;
        }
        const device = args.device ?? 'cpu';
        if (args.what === 'step') {
          const report = await benchStepReport({ preset: args.config, latent: args.latent, pairs: args.pairs, objective: args.objective, space: args.space, reps: args.reps ?? 3, device, weightsFile: args['weights-file'], gradientCheckpointing: args['gradient-checkpointing'], recompute: parseRecompute(args.recompute) });
          process.stdout.write((args.json ? JSON.stringify(report, null, 2) : formatStepBench(report)) + '\n');
          return;
        }
        if (args.what === 'load') {
          const forward = { latent: args.latent, batch: args.batch, reps: args.forward ? args.reps ?? 3 : 0 };
          process.stdout.write((await benchLoad(args.config, args.dtype, forward)) + '\n');
          return;
        }
        if (args.what === 'unet') {
          const report = await benchUNetReport(args.config, args.latent, args.batch, args.reps ?? 3, device);
          process.stdout.write((args.json ? JSON.stringify(report, null, 2) : formatUNetBench(report)) + '\n');
          return;
        }
        const report = await benchOps(args.reps ?? 5);
        process.stdout.write((args.json ? JSON.stringify(report, null, 2) : formatBench(report)) + '\n');
      },
    );
  parser = trainCommand(parser);
  for (const [name, describe] of planned) {
    parser = parser.command(name, `${describe} (not in this build yet)`, {}, () => {
      throw new UsageError(`'${name}' is not available in this build of ncp-native yet`);
    });
  }
  await parser
    .demandCommand(1, 'Name a command (see --help).')
    .strict()
    .fail((msg, err, y) => {
      if (err) throw err;
      process.stderr.write(`ncp-native: ${msg}\nRun 'ncp-native --help' for the commands and options.\n`);
      process.exit(EXIT_USAGE);
    })
    .help()
    .version(false)
    .wrap(Math.min(110, process.stdout.columns || 110))
    .parseAsync();
}

main(hideBin(process.argv)).catch((err: Error & { code?: string; exitCode?: number }) => {
  process.stderr.write(`ncp-native: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`);
  process.exit(err.exitCode ?? 1);
});
