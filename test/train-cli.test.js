// `ncp-native train` end to end on the embedded default (the bundled tiny model and pairs): the outputs other tools
// read, exact resume from a checkpoint, a clean stop on SIGINT, config validation, the other LoRA layouts, and
// training from an encode cache.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readLoraFile } from '../dist/lora-file.js';
import { readMetrics } from '../dist/run-files.js';
import { readSafetensorsSync } from '../dist/safetensors.js';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const assets = fileURLToPath(new URL('../assets/', import.meta.url));
const run = (...args) => spawnSync(process.execPath, [cli, 'train', ...args], { encoding: 'utf8' });
const tmp = mkdtempSync(join(tmpdir(), 'ncp-train-cli-'));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

const unetConfig = JSON.parse(readFileSync(join(assets, 'tiny-sd15', 'unet', 'config.json'), 'utf8'));
const sameBytes = (a, b) => Buffer.compare(readFileSync(a), readFileSync(b)) === 0;

// One uninterrupted 4-step run, shared by the tests that compare against it.
const full = join(tmp, 'full');
const fullRun = run('--max-steps', '4', '--checkpoint-every', '2', '--keep-checkpoints', '5', '--output', full);

test('embedded default: LoRA (kohya), metrics, resolved config and checkpoints', async (t) => {
  t.is(fullRun.status, 0, fullRun.stderr);
  t.regex(fullRun.stderr, /bundled tiny model/);
  t.regex(fullRun.stdout, /trained 4 steps/);
  for (const f of ['lora.safetensors', 'metrics.jsonl', 'resolved-config.json', 'checkpoint-2', 'checkpoint-4']) t.true(existsSync(join(full, f)), f);

  const lora = await readLoraFile(join(full, 'lora.safetensors'), { unet: unetConfig });
  t.is(lora.layout, 'kohya');
  t.is(lora.weights.size, 88, 'every attention to_q/to_k/to_v/to_out.0 of the tiny U-Net');
  const m = lora.weights.get('down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q');
  t.like(m, { rank: 4, alpha: 4, inFeatures: 32, outFeatures: 32 });
  t.true(m.B.some((v) => v !== 0), 'B was trained away from zero');
  const header = readSafetensorsSync(join(full, 'lora.safetensors'));
  t.true(header.tensors.has('lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha'));

  const metrics = await readMetrics(join(full, 'metrics.jsonl'));
  t.deepEqual(metrics.map((x) => x.step), [1, 2, 3, 4]);
  for (const x of metrics) {
    for (const k of ['loss', 'accuracy', 'reward_w', 'reward_l', 'model_w', 'model_l', 'ref_w', 'ref_l', 'lr', 'grad_norm', 'step_time']) t.is(typeof x[k], 'number', k);
    t.true(x.loss > 0 && x.step_time > 0);
  }
  const cfg = JSON.parse(readFileSync(join(full, 'resolved-config.json'), 'utf8'));
  t.like(cfg, { objective: 'dpo', space: 'ncp', 'max-steps': 4, resolution: 32, rank: 4 });
});

test('resume: 2 steps, then --resume latest to 4, gives the uninterrupted run bit for bit', async (t) => {
  t.is(fullRun.status, 0, fullRun.stderr);
  const out = join(tmp, 'resumed');
  let r = run('--max-steps', '2', '--checkpoint-every', '2', '--output', out);
  t.is(r.status, 0, r.stderr);
  r = run('--max-steps', '4', '--checkpoint-every', '2', '--output', out, '--resume', 'latest');
  t.is(r.status, 0, r.stderr);
  t.regex(r.stderr, /resumed from .*checkpoint-2/);
  t.regex(r.stdout, /resumed at 2/);
  t.true(sameBytes(join(out, 'lora.safetensors'), join(full, 'lora.safetensors')), 'same LoRA file');
  const a = await readMetrics(join(full, 'metrics.jsonl'));
  const b = await readMetrics(join(out, 'metrics.jsonl'));
  t.deepEqual(b.map((x) => [x.step, x.loss, x.grad_norm]), a.map((x) => [x.step, x.loss, x.grad_norm]));
});

test('SIGINT: the running step finishes, a checkpoint and the LoRA are written, exit 130', async (t) => {
  const out = join(tmp, 'interrupted');
  const child = spawn(process.execPath, [cli, 'train', '--max-steps', '100000', '--checkpoint-every', '0', '--output', out], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  const code = await new Promise((resolve) => {
    child.stderr.on('data', (d) => {
      stderr += d;
      if (/step 1\//.test(stderr) && !child.killed) child.kill('SIGINT');
    });
    child.on('exit', (c) => resolve(c));
  });
  t.is(code, 130, stderr);
  t.regex(stderr, /SIGINT: stopping after this step/);
  const ckpts = readdirSync(out).filter((f) => f.startsWith('checkpoint-'));
  t.is(ckpts.length, 1);
  t.true(existsSync(join(out, 'lora.safetensors')));
  const r = run('--max-steps', String(Number(ckpts[0].split('-')[1]) + 1), '--checkpoint-every', '0', '--output', out, '--resume', 'latest');
  t.is(r.status, 0, r.stderr);
});

test('config: bad values, unknown fields and missing data are clear errors naming the flag, field or path', (t) => {
  let r = run('--lr', '-1', '--output', join(tmp, 'x'));
  t.not(r.status, 0);
  t.regex(r.stderr, /--lr.*-1.*> 0/);
  const file = join(tmp, 'bad.yaml');
  writeFileSync(file, 'objective: dpo\nbetta: 3\n');
  r = run('--config', file, '--output', join(tmp, 'y'));
  t.not(r.status, 0);
  t.regex(r.stderr, /betta.*bad\.yaml.*did you mean 'beta'/);
  r = run('--model', join(assets, 'tiny-sd15'), '--data', join(tmp, 'missing.jsonl'), '--output', join(tmp, 'z'));
  t.is(r.status, 1);
  t.regex(r.stderr, /missing\.jsonl/);
});

test('--device: a malformed value names the flag; cuda without a usable backend, or bf16 or fp16 on the CPU, says why before any work', (t) => {
  let r = run('--device', 'gpu0', '--max-steps', '1', '--output', join(tmp, 'dev1'));
  t.not(r.status, 0);
  t.regex(r.stderr, /--device.*gpu0.*cuda:N/);
  r = run('--device', 'cuda:7', '--max-steps', '1', '--output', join(tmp, 'dev2'));
  t.not(r.status, 0);
  // Without a GPU: the backend's reason (no driver, not built); with one GPU: no device 7.
  t.regex(r.stderr, /cuda:7 asked for, but (the CUDA backend is not usable: .+|\d+ CUDA device\(s\) are visible)/);
  t.false(existsSync(join(tmp, 'dev2')), 'a run that could not start leaves no output folder it created');
  r = run('--device', 'cpu', '--mixed-precision', 'bf16', '--max-steps', '1', '--output', join(tmp, 'dev3'));
  t.not(r.status, 0);
  t.regex(r.stderr, /mixed precision bf16 needs a CUDA device/);
  // A folder that was there before is the user's: the failed start leaves it and what it held.
  mkdirSync(join(tmp, 'dev5'));
  writeFileSync(join(tmp, 'dev5', 'notes.txt'), 'mine');
  r = run('--device', 'cuda:7', '--max-steps', '1', '--output', join(tmp, 'dev5'));
  t.not(r.status, 0);
  t.is(readFileSync(join(tmp, 'dev5', 'notes.txt'), 'utf8'), 'mine');
  r = run('--device', 'cpu', '--mixed-precision', 'fp16', '--max-steps', '1', '--output', join(tmp, 'dev4'));
  t.not(r.status, 0);
  t.regex(r.stderr, /mixed precision fp16 needs a CUDA device/);
});

test('--lora-format diffusers and peft: B pre-scaled by alpha / rank, read back to the same adapters', async (t) => {
  for (const layout of ['diffusers', 'peft']) {
    const out = join(tmp, `fmt-${layout}`);
    const r = run('--max-steps', '1', '--checkpoint-every', '0', '--alpha', '8', '--lora-format', layout, '--output', out);
    t.is(r.status, 0, r.stderr);
    const lora = await readLoraFile(join(out, 'lora.safetensors'), { unet: unetConfig });
    t.is(lora.layout, layout);
    const kohya = await readLoraFile(join(out, 'checkpoint-1', 'lora.safetensors'), { unet: unetConfig });
    const name = 'mid_block.attentions.0.transformer_blocks.0.attn2.to_v';
    const a = lora.weights.get(name), k = kohya.weights.get(name);
    // Read back with alpha = rank, the scale folded into B: the product (alpha / r) B A is what must agree.
    for (let i = 0; i < k.B.length; i++) t.true(Math.abs(a.B[i] * (a.alpha / a.rank) - k.B[i] * (k.alpha / k.rank)) <= 1e-6 * (1 + Math.abs(k.B[i])));
  }
});

test('training from an encode cache', (t) => {
  const cache = join(tmp, 'cache');
  let r = spawnSync(process.execPath, [cli, 'encode', '--model', join(assets, 'tiny-sd15'), '--data', join(assets, 'tiny-pairs', 'pairs.jsonl'), '--out', cache, '--resolution', '32', '--dtype', 'F32'], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const out = join(tmp, 'from-cache');
  r = run('--model', join(assets, 'tiny-sd15'), '--data', cache, '--max-steps', '3', '--batch-pairs', '4', '--warmup-steps', '0', '--checkpoint-every', '0', '--output', out);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stderr, /\(cache, 16 rows per epoch\)/);
  t.true(existsSync(join(out, 'lora.safetensors')));
});

test('--validate-every: samples with the current LoRA at fixed prompts and seed', (t) => {
  const out = join(tmp, 'validate');
  const r = run('--max-steps', '2', '--checkpoint-every', '0', '--validate-every', '2', '--validation-prompts', 'a red cat,a blue house', '--output', out);
  t.is(r.status, 0, r.stderr);
  const png = readdirSync(join(out, 'samples')).sort();
  t.deepEqual(png, ['step-000002-0.png', 'step-000002-1.png']);
  const bytes = readFileSync(join(out, 'samples', png[0]));
  t.is(bytes.subarray(1, 4).toString('latin1'), 'PNG');
});

test('library: train() with camelCase options, progress callbacks and an AbortSignal', async (t) => {
  const { train } = await import('../dist/index.js');
  const output = join(tmp, 'library');
  const seen = [];
  const stop = new AbortController();
  const summary = await train(
    { model: join(assets, 'tiny-sd15'), data: join(assets, 'tiny-pairs', 'pairs.jsonl'), resolution: 32, maxSteps: 50, warmupSteps: 0, checkpointEvery: 0, batchPairs: 2, output },
    {
      signal: stop.signal,
      onStep: (m, total) => {
        seen.push([m.step, total]);
        if (m.step === 2) stop.abort();
      },
    },
  );
  t.deepEqual(seen, [[1, 50], [2, 50]]);
  t.like(summary, { steps: 2, stoppedBy: 'signal', resumedFrom: null });
  t.true(existsSync(summary.loraFile));
  t.true(summary.lastCheckpoint.endsWith('checkpoint-2'));
});

test('a non-finite loss stops the run naming the step and the last good checkpoint', (t) => {
  const out = join(tmp, 'nan');
  const r = run('--lr', '1e30', '--max-steps', '20', '--checkpoint-every', '1', '--output', out);
  t.is(r.status, 1, r.stdout);
  t.regex(r.stderr, /step (\d+): .*not finite.*the last good checkpoint is .*checkpoint-\d+ \[NCP_ENONFINITE\]/);
  t.false(/\n\s+at /.test(r.stderr), 'no stack trace');
});
