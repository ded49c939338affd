// The training core from JavaScript: `ncp-native grad` against the golden objectives (diffusers + PyTorch in
// float64) for all 12 objective/space combinations of both tiny models, the trainer API (steps, state, exact
// resume), and bad input.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createTrainer } from '../dist/index.js';
import { randomTensor, relError } from './helpers.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';

const golden = fileURLToPath(new URL('./fixtures/golden/', import.meta.url));
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const tmp = mkdtempSync(join(tmpdir(), 'ncp-train-'));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

const spaces = [
  ['latent', ['--space', 'latent'], 1e-4],
  ['ncp-mid-prev', ['--space', 'ncp', '--ncp-layer', 'mid', '--ncp-timestep', 'prev'], 2e-3],
  ['ncp-down-prev', ['--space', 'ncp', '--ncp-layer', 'down', '--ncp-timestep', 'prev'], 2e-3],
  ['ncp-mid-uniform', ['--space', 'ncp', '--ncp-layer', 'mid', '--ncp-timestep', 'uniform'], 1e-4],
];

for (const model of ['tiny-sd15', 'tiny-sdxl']) {
  test(`${model}: grad matches the golden loss, errors and every LoRA gradient for 3 objectives x 4 spaces`, (t) => {
    const dir = join(golden, model);
    const meta = JSON.parse(readFileSync(join(dir, 'objectives.json'), 'utf8'));
    const ref = readSafetensors(join(dir, 'objectives.safetensors'));
    for (const objective of ['sft', 'dpo', 'cpo']) {
      for (const [space, flags, tol] of spaces) {
        const out = join(tmp, `${model}-${objective}-${space}.safetensors`);
        const beta = String(meta.betas[space]);
        const r = run('grad', '--model', dir, '--input', join(dir, 'objectives.safetensors'), '--output', out, '--objective', objective, ...flags, '--beta', beta, '--lora-alpha', String(meta.lora.alpha));
        t.is(r.status, 0, r.stderr);
        const ours = readSafetensors(out);
        const key = `${objective}.${space}`;
        let compared = 0;
        for (const what of ['loss', 'policy_losses', 'ref_losses']) {
          const err = relError(ours[`out.${what}`].data, ref[`out.${key}.${what}`].data);
          t.true(err <= tol, `${model} ${key} out.${what}: relative error ${err}`);
          compared++;
        }
        t.is(Math.abs(ours['out.loss'].data[0] - meta.results[key].loss) < tol * Math.abs(meta.results[key].loss) + 1e-7, true, key);
        // METHOD.md's accuracy, mean(logits > 0) + 0.5 mean(logits == 0), from the golden per-row errors. (The
        // golden JSON's implicit_acc counts a tie as 0: under ncp-prev the t = 0 pair has logits exactly 0.)
        const pol = ref[`out.${key}.policy_losses`].data, rl = ref[`out.${key}.ref_losses`].data, P = pol.length / 2;
        let acc = 0;
        for (let i = 0; i < P; i++) {
          const logits = rl[i] - rl[P + i] - (pol[i] - pol[P + i]);
          acc += logits > 0 ? 1 : logits === 0 ? 0.5 : 0;
        }
        t.true(Math.abs(ours['out.implicit_acc'].data[0] - acc / P) < 1e-6, `${key} implicit accuracy`);
        for (const module of meta.lora.modules) {
          for (const ab of ['lora_A', 'lora_B']) {
            const g = ours[`grad.${module}.${ab}.weight`];
            t.truthy(g, `grad.${module}.${ab}.weight missing`);
            const err = relError(g.data, ref[`grad.${key}.${module}.${ab}.weight`].data);
            t.true(err <= tol, `${model} ${key} ${module} ${ab}: relative error ${err}`);
            compared++;
          }
        }
        t.is(compared, 3 + 2 * meta.lora.modules.length);
      }
    }
  });
}

// Tensors as readSafetensors returns them, written back as float32.
const asF32 = (entries) => Object.fromEntries(entries.map(([n, t]) => [n, { dtype: 'F32', shape: t.shape, bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength) }]));

test('grad: a case without LoRA tensors, a missing input and a bad objective are clear errors', (t) => {
  const dir = join(golden, 'tiny-sd15');
  const ref = readSafetensors(join(dir, 'objectives.safetensors'));
  const noLora = join(tmp, 'no-lora.safetensors');
  writeSafetensors(noLora, asF32(Object.entries(ref).filter(([n]) => n.startsWith('in.'))));
  let r = run('grad', '--model', dir, '--input', noLora, '--output', join(tmp, 'x.safetensors'), '--objective', 'dpo', '--space', 'latent', '--beta', '20');
  t.is(r.status, 1);
  t.regex(r.stderr, /no lora\.<module>\.lora_A\.weight tensors/);
  const noNoise = join(tmp, 'no-noise.safetensors');
  writeSafetensors(noNoise, asF32(Object.entries(ref).filter(([n]) => n !== 'in.noise' && !n.startsWith('out.') && !n.startsWith('grad.'))));
  r = run('grad', '--model', dir, '--input', noNoise, '--output', join(tmp, 'x.safetensors'), '--objective', 'dpo', '--space', 'latent', '--beta', '20');
  t.is(r.status, 1);
  t.regex(r.stderr, /no-noise\.safetensors: tensor 'in\.noise' is missing/);
  r = run('grad', '--model', dir, '--input', noNoise, '--output', join(tmp, 'x.safetensors'), '--objective', 'ipo', '--space', 'latent', '--beta', '20');
  t.is(r.status, 2);
  t.regex(r.stderr, /objective/);
});

function pairs(seed, P = 2, side = 8) {
  return {
    x0_w: randomTensor([P, 4, side, side], seed),
    x0_l: randomTensor([P, 4, side, side], seed + 1),
    encoder_hidden_states: randomTensor([P, 5, 48], seed + 2),
  };
}

test('trainer: steps are deterministic under a seed, and state + LoRA restore resumes exactly', async (t) => {
  const options = { model: join(golden, 'tiny-sd15'), seed: 3, lora: { rank: 2 }, objective: { objective: 'dpo', space: 'ncp', beta: 5000 }, optimizer: { lr: 1e-3, warmupSteps: 2 } };
  const a = await createTrainer(options);
  t.like(a.info(), { sdxl: false, latentChannels: 4, crossAttentionDim: 48, downscale: 4 });
  const batch = pairs(10);
  const first = await a.step([batch]);
  t.is(first.step, 1);
  t.is(first.lr, 0, 'diffusers warm-up: the first step has lr 0');
  await a.step([batch, pairs(20)]);  // gradient accumulation over two micro-batches
  const saved = { state: a.state(), lora: a.loraTensors() };
  t.is(saved.state.step, 2);
  t.is(saved.state.moments.length, 4 * saved.lora.length);
  const next = await a.step([batch]);

  const b = await createTrainer({ ...options, seed: 99 });
  b.setLoraTensors(saved.lora);
  b.setState(saved.state);
  const resumed = await b.step([batch]);
  t.is(resumed.step, 3);
  t.is(resumed.loss, next.loss);
  t.is(resumed.gradNorm, next.gradNorm);
  const la = a.loraTensors(), lb = b.loraTensors();
  for (let i = 0; i < la.length; i++) t.deepEqual(lb[i].B.data, la[i].B.data, la[i].module);
  t.true(la.some((m) => m.B.data.some((v) => v !== 0)), 'B moved away from zero');
});

// The memory options change what the tape keeps, not the arithmetic: on the CPU's float32 tape, three steps with
// the feed-forward recomputed (adapters on every Linear kind) or with gradient checkpointing give the plain run's
// losses, gradient norms and LoRA exactly.
test('trainer: selective recompute and gradientCheckpointing train exactly as the plain tape does', async (t) => {
  const targets = ['to_q', 'to_k', 'to_v', 'to_out.0', 'proj_in', 'proj_out', 'ff.net.0.proj', 'ff.net.2'];
  const options = { model: join(golden, 'tiny-sd15'), seed: 5, lora: { rank: 2, targets }, objective: { objective: 'dpo', space: 'ncp', beta: 5000 }, optimizer: { lr: 1e-3, warmupSteps: 0 } };
  const steps = async (extra) => {
    const tr = await createTrainer({ ...options, ...extra });
    const metrics = [];
    for (let i = 0; i < 3; i++) metrics.push(await tr.step([pairs(30 + i)]));
    return { metrics: metrics.map((m) => [m.loss, m.gradNorm]), lora: tr.loraTensors() };
  };
  const plain = await steps({});
  for (const extra of [{ recompute: ['feedforward'] }, { recompute: ['feedforward', 'qkv'] }, { gradientCheckpointing: true }]) {
    const other = await steps(extra);
    t.deepEqual(other.metrics, plain.metrics, JSON.stringify(extra));
    for (let i = 0; i < plain.lora.length; i++) t.deepEqual(other.lora[i].B.data, plain.lora[i].B.data, `${JSON.stringify(extra)} ${plain.lora[i].module}`);
  }
  t.true(plain.lora.some((m) => m.module.endsWith('ff.net.0.proj')), 'an adapter on ff.net.0.proj');
  await t.throwsAsync(async () => createTrainer({ ...options, recompute: ['attention'] }), { code: 'NCP_EINVAL', message: /createTrainer: recompute: 'attention' is not one of feedforward, qkv/ });
});

// Dynamic loss scaling (what fp16 mixed precision turns on) on the CPU's float32 backward: a power-of-two scale is
// exact, so the scaled run's metrics and LoRA are the plain run's; state() carries the scale and setState restores
// it; a scale that is not a power of two is refused naming the field.
test('trainer: loss scaling trains exactly as without it, and its scale is part of the state', async (t) => {
  const options = { model: join(golden, 'tiny-sd15'), seed: 4, lora: { rank: 2 }, objective: { objective: 'dpo', space: 'ncp', beta: 5000 }, optimizer: { lr: 1e-3, warmupSteps: 0 } };
  const plain = await createTrainer(options);
  const scaled = await createTrainer({ ...options, lossScaling: { initScale: 1024, growthInterval: 2 } });
  t.is(plain.state().lossScale, undefined);
  for (let i = 0; i < 3; i++) {
    const a = await plain.step([pairs(40 + i)]), b = await scaled.step([pairs(40 + i)]);
    t.is(a.lossScale, 1);
    t.is(b.lossScale, i < 2 ? 1024 : 2048, `step ${i + 1}: the scale doubles after two finite steps`);
    t.false(b.skipped);
    t.is(b.loss, a.loss);
    t.is(b.gradNorm, a.gradNorm);
  }
  const la = plain.loraTensors(), lb = scaled.loraTensors();
  for (let i = 0; i < la.length; i++) t.deepEqual(lb[i].B.data, la[i].B.data, la[i].module);
  const state = scaled.state();
  t.is(state.lossScale, 2048);
  t.is(state.lossScaleGoodSteps, 1);
  const resumed = await createTrainer({ ...options, lossScaling: { initScale: 1024, growthInterval: 2 } });
  resumed.setLoraTensors(lb);
  resumed.setState(state);
  t.is(resumed.state().lossScale, 2048);
  t.is((await resumed.step([pairs(50)])).lossScale, 2048);
  t.is(resumed.state().lossScale, 4096, 'the restored count of finite steps carried on');
  await t.throwsAsync(() => createTrainer({ ...options, lossScaling: { initScale: 1000 } }), { code: 'NCP_EINVAL', message: /initial scale must be a power of two/ });
});

test('trainer: concurrent calls and malformed batches are refused with clear errors', async (t) => {
  const tr = await createTrainer({ model: join(golden, 'tiny-sd15'), objective: { space: 'latent', beta: 100 } });
  const running = tr.step([pairs(1)]);
  t.throws(() => tr.step([pairs(2)]), { code: 'NCP_EBUSY' });
  t.throws(() => tr.state(), { code: 'NCP_EBUSY' });
  await running;
  const bad = pairs(3);
  bad.x0_l = randomTensor([2, 4, 8, 4], 5);
  t.throws(() => tr.step([bad]), { code: 'NCP_ESHAPE', message: /x0_l/ });
  await t.throwsAsync(tr.step([{ ...pairs(4), encoder_hidden_states: randomTensor([2, 5, 32], 1) }]), { code: 'NCP_ESHAPE', message: /encoder_hidden_states/ });
  t.throws(() => createTrainer({ model: join(golden, 'tiny-sd15'), objective: { objective: 'ipo' } }), { code: 'NCP_EINVAL', message: /ipo/ });
});
