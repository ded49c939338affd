// The CUDA backend against the CPU reference, op by op. Runs where a GPU is usable; elsewhere it is skipped and
// the reason is printed.
import test from 'ava';
import { cudaParity, info } from '../dist/index.js';

const cuda = info().backends.cuda;

if (!cuda.usable) console.log(`skip: CUDA backend not usable: ${cuda.reason}`);

(cuda.usable ? test : test.skip)('every CUDA op matches the CPU reference within 1e-4', async (t) => {
  const errors = await cudaParity();
  t.true(Object.keys(errors).length >= 20, `only ${Object.keys(errors).length} ops were compared`);
  for (const [op, err] of Object.entries(errors)) t.true(err < 1e-4, `${op}: relative error ${err}`);
});

// The attention kernels info reports: float32/fp16 weights run what NCP_CUDA_ATTENTION chose (materialized when
// unset), bf16 weights fused-async8 unless NCP_CUDA_ATTENTION names a mode; empty without a usable backend.
test('info names the attention kernels of float32 and of bf16 weights', (t) => {
  if (!cuda.usable) {
    t.is(cuda.attentionBf16, '');
    return;
  }
  const forced = process.env.NCP_CUDA_ATTENTION;
  if (!forced) {
    t.regex(cuda.attention, /^materialized/);
    t.regex(cuda.attentionBf16, /^fused-async8 /);
  } else {
    t.is(cuda.attentionBf16, cuda.attention);
  }
});

test('cudaParity rejects with NCP_ENOCUDA and the reason when CUDA is not usable', async (t) => {
  if (cuda.usable) {
    t.pass('CUDA is usable here');
    return;
  }
  const err = await t.throwsAsync(() => cudaParity());
  t.is(err.code, 'NCP_ENOCUDA');
  t.true(err.message.includes(cuda.reason));
});

// Every entry point that takes a device checks it before any work: a bad name is NCP_EINVAL naming the value; a
// CUDA device without a usable backend is NCP_ENOCUDA with the reason; an index past the visible devices says how
// many there are. (On a GPU machine the last two are the same "visible" error, for an index of 99.)
test('loadUNet, createTrainer and benchStep name a device they cannot use', async (t) => {
  const { loadUNet, createTrainer, benchStep } = await import('../dist/index.js');
  const model = new URL('../assets/tiny-sd15', import.meta.url).pathname;
  const bad = await t.throwsAsync(() => loadUNet(model, { device: 'gpu' }));
  t.is(bad.code, 'NCP_EINVAL');
  t.regex(bad.message, /'gpu'.*cpu, cuda or cuda:N/);
  for (const call of [
    () => loadUNet(model, { device: 'cuda:99' }),
    () => createTrainer({ model, device: 'cuda:99' }),
    () => benchStep({ preset: 'sd15', latent: 8, device: 'cuda:99' }),
  ]) {
    const err = await t.throwsAsync(async () => call());
    t.true(['NCP_ENOCUDA', 'NCP_EINVAL'].includes(err.code), err.code);
    t.regex(err.message, cuda.usable ? /cuda:99 asked for, but \d+ CUDA device\(s\) are visible/ : /cuda:99 asked for, but the CUDA backend is not usable/);
  }
});

// The attention bench measures the CUDA attention modes: on the CPU it says so, and a mode it does not know is
// named before any device work (so this runs on any machine).
test('benchAttention refuses the CPU and unknown modes, naming them', async (t) => {
  const { benchAttention } = await import('../dist/index.js');
  const cpu = await t.throwsAsync(() => benchAttention({ device: 'cpu', tokens: 8, heads: 1, headDim: 8 }));
  t.is(cpu.code, 'NCP_EINVAL');
  t.regex(cpu.message, /runs on a CUDA device/);
  const mode = await t.throwsAsync(() => benchAttention({ modes: ['flash'], tokens: 8 }));
  t.is(mode.code, 'NCP_EINVAL');
  t.regex(mode.message, /unknown mode 'flash' \(materialized, fused, fused-async, fused-async8, fused-wmma\)/);
  const far = await t.throwsAsync(() => benchAttention({ device: 'cuda:99', tokens: 8, heads: 1, headDim: 8 }));
  t.regex(far.message, cuda.usable ? /cuda:99 asked for, but \d+ CUDA device\(s\) are visible/ : /cuda:99 asked for, but the CUDA backend is not usable/);
});

// The LoRA bench runs on either device: a size it cannot use and a device that cannot run are named.
test('benchLora names a bad size and a device that cannot run', async (t) => {
  const { benchLora } = await import('../dist/index.js');
  const size = await t.throwsAsync(() => benchLora({ device: 'cpu', rows: 0 }));
  t.is(size.code, 'NCP_EINVAL');
  t.regex(size.message, /lora bench: rows, in, out, rank and reps must be positive/);
  const far = await t.throwsAsync(() => benchLora({ device: 'cuda:99', rows: 8, in: 8, rank: 2, reps: 1 }));
  t.regex(far.message, cuda.usable ? /cuda:99 asked for, but \d+ CUDA device\(s\) are visible/ : /cuda:99 asked for, but the CUDA backend is not usable/);
});
