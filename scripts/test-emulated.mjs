// `npm run test:emulated`: every native "cuda" case (op parity, the golden U-Net forward in fp32/bf16/fp16, the
// twelve golden objective gradients of both tiny models in fp32 and bf16, training steps against the CPU's, fp16
// with loss scaling, device errors) on the CUDA emulator: the backend's own sources compiled as C++ into
// libncp_cuda_emu.so (native/cuda_emu), run on the CPU. Needs no GPU and no CUDA toolkit. It checks the backend's
// logic, not the hardware: timing, tensor-core fragments and races outside the emulator's schedule need a GPU
// (`npm run test:gpu`). Release build in build-emu, no sanitizers (`npm test` runs the quicker cases under them);
// an hour or more on 2 cores (the training-step case alone about 4 minutes), so extra arguments replace the "cuda"
// filter: `npm run test:emulated -- "cuda: training steps" "cuda: fp16"`. GEMMs go through the emulator's cuBLAS, as on a
// GPU; NCP_CUDA_EMU_CUBLAS=0 runs the backend's own GEMM kernels instead. NCP_TEST_OBJECTIVES="tiny-sdxl dpo." runs
// only the golden objective cases whose "<model> <objective>.<space>" contains one of its words.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const build = join(root, 'build-emu');
const run = (cmd, args, env = {}) => spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } }).status;

if (run('cmake', ['-S', '.', '-B', build, '-DNCP_ADDON=OFF', '-DNCP_CUDA=off', '-DCMAKE_BUILD_TYPE=Release']) !== 0) process.exit(1);
if (run('cmake', ['--build', build, '-j', '2', '--target', 'ncp_tests', 'ncp_cuda_emu']) !== 0) process.exit(1);
const filters = process.argv.slice(2);
const r = spawnSync(join(build, 'ncp_tests'), filters.length ? filters : ['cuda'], {
  cwd: root,
  encoding: 'utf8',
  stdio: ['ignore', 'pipe', 'inherit'],
  env: { ...process.env, NCP_CUDA_LIB: join(build, 'libncp_cuda_emu.so') },
});
process.stdout.write(r.stdout ?? '');
if (/skip: CUDA backend not usable/.test(r.stdout ?? '')) {
  console.error('test:emulated: the emulator did not load');
  process.exit(1);
}
process.exit(r.status ?? 1);
