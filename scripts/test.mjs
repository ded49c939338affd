// `npm test`: compiles the TypeScript, makes sure the addon is built, builds and runs the native tests under
// AddressSanitizer + UndefinedBehaviorSanitizer (gradient checks, reference values, file-format cases), the CUDA
// backend's cases on the CPU emulator, then the ava suite. Ends with one line "total: N passed, N failed, N skipped".
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => join(root, 'node_modules', '.bin', name);

function step(title, cmd, args, opts = {}) {
  console.log(`\n== ${title}`);
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', stdio: opts.capture ? ['ignore', 'pipe', 'inherit'] : 'inherit', env: { ...process.env, ...opts.env } });
  if (opts.capture) process.stdout.write(r.stdout ?? '');
  if (r.status !== 0 && !opts.allowFail) {
    console.error(`ncp test: '${title}' failed (exit ${r.status})`);
    console.log('total: 0 passed, 1 failed');
    process.exit(1);
  }
  return r;
}

step('typescript', bin('tsc'), ['-p', '.']);
// Always the source build (incremental): the tests must exercise this tree's code, never a stale prebuild.
step('build addon (cmake-js)', bin('cmake-js'), ['build']);

const sanitize = process.env.NCP_TEST_SANITIZE ?? 'address,undefined';
step('configure native tests', 'cmake', ['-S', '.', '-B', 'build-test', '-DNCP_ADDON=OFF', '-DNCP_CUDA=off', `-DNCP_SANITIZE=${sanitize}`, '-DCMAKE_BUILD_TYPE=RelWithDebInfo'], { capture: true });
step('build native tests', 'cmake', ['--build', 'build-test', '-j', '2']);
const nativeRun = step('native tests (sanitizers: ' + (sanitize || 'none') + ')', join(root, 'build-test', 'ncp_tests'), [], {
  capture: true,
  allowFail: true,
  env: { ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' },
});
let passed = 0;
let failed = 0;
const countNative = (run) => {
  const nm = /native: (\d+) passed, (\d+) failed/.exec(run.stdout ?? '');
  passed += nm ? Number(nm[1]) : 0;
  failed += nm ? Number(nm[2]) : 1;
  if (run.status !== 0 && nm && Number(nm[2]) === 0) failed += 1; // a sanitizer report or a crash
};
countNative(nativeRun);

// The CUDA backend's own sources, compiled as C++ into libncp_cuda_emu.so (native/cuda_emu), on the CPU: every op
// against the CPU reference (GEMMs through the emulator's cuBLAS, as on a GPU, and through the backend's own
// kernels) and the golden U-Net forward (fp32, bf16 and fp16 weights) through the device dispatch, under the same
// sanitizers (an out-of-bounds kernel access is a heap overflow here); then the fp32 forward again on the backend's
// own GEMM kernels (NCP_CUDA_EMU_CUBLAS=0, a GPU without cuBLAS). The slower cases (training steps, the twelve
// golden objectives, fp16 with loss scaling) run in `npm run test:emulated`. A library that fails to load would
// make the cases skip, so each run must name the emulator, and the first its cuBLAS.
const emulatorEnv = {
  ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0',
  UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
  NCP_CUDA_LIB: join(root, 'build-test', 'libncp_cuda_emu.so'),
};
const emulatorRuns = [
  ['CUDA backend on the CPU emulator (libncp_cuda_emu, emulated cuBLAS)', ['cuda status', 'cuda parity', 'cuda errors', 'cuda: U-Net forward', 'cuda: mixed precision turns', 'cuda: the gpu profile', 'cuda: the double-buffered attention'], {}, /gemm: cublas emulated on the CPU/],
  ['the same, fp32 forward on the backend\'s own GEMM kernels', ['cuda status', 'cuda: U-Net forward on the GPU'], { NCP_CUDA_EMU_CUBLAS: '0' }, /gemm: ncp-tiled/],
];
for (const [title, cases, env, provider] of emulatorRuns) {
  const run = step(title, join(root, 'build-test', 'ncp_tests'), cases, { capture: true, allowFail: true, env: { ...emulatorEnv, ...env } });
  countNative(run);
  const out = run.stdout ?? '';
  if (!/ncp CUDA emulator on the CPU/.test(out) || !provider.test(out) || /skip: CUDA backend not usable/.test(out)) {
    console.error(`ncp test: '${title}' did not run on the emulator with the GEMM provider it names (${provider})`);
    failed += 1;
  }
}

// The GPU benchmark tool's attention bench runs its three attention modes on the emulator and prints a line each
// (on a GPU these lines are the figures; here they only show that the bench runs and names what it measured).
{
  const run = step('ncp_bench attention on the emulator', join(root, 'build-test', 'ncp_bench'),
    ['attention', '--batch', '1', '--tokens', '130', '--heads', '2', '--head-dim', '40', '--reps', '1'],
    { capture: true, allowFail: true, env: emulatorEnv });
  const parse = (l) => { try { return JSON.parse(l); } catch { return {}; } };
  const lines = (run.stdout ?? '').split('\n').filter((l) => l.startsWith('{')).map(parse);
  const modes = lines.map((l) => l.mode).join(',');
  const timed = lines.every((l) => l.forward_ms > 0 && l.backward_ms > 0 && /emulator/.test(l.device));
  if (run.status === 0 && modes === 'materialized,fused,fused-async,fused-async8,fused-wmma' && timed) passed += 1;
  else {
    console.error(`ncp test: ncp_bench attention printed modes '${modes}' (status ${run.status})`);
    failed += 1;
  }
}

const ava = step('ava', bin('ava'), ['--tap'], { capture: true, allowFail: true });
const count = (label) => Number((new RegExp(`^# ${label} (\\d+)$`, 'm').exec(ava.stdout ?? '') ?? [])[1] ?? 0);
passed += count('pass');
const avaFailed = count('fail');
failed += avaFailed || (ava.status !== 0 ? 1 : 0);
const skipped = count('skip') + count('todo');

console.log(`\ntotal: ${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed ? 1 : 0);
