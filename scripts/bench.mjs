// `npm run bench [-- --device cuda[:N]]`: the benchmark set of the README's Performance section.
//   cpu (default): GEMM/conv ops, SD1.5 forward at 32x32 latents batch 2, latent- and NCP-DPO steps.
//   cuda: SD1.5 at 64x64 and SDXL at 128x128 latents: U-Net forward (batch 2) and NCP-DPO step (one pair),
//         seconds, TFLOP/s and peak device memory; then the attention op alone at their largest self-attention
//         (SD1.5 4096 tokens x 8 heads of 40, SDXL 4096 x 10 of 64) under each attention mode, and one LoRA adapter
//         alone at SDXL's first transformer level (fused kernels and GEMM chain). NCP_CUDA_TF32=1 lets cuBLAS use
//         TF32 tensor cores.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const at = process.argv.indexOf('--device');
const device = at > 0 ? process.argv[at + 1] : 'cpu';
const cli = (...args) => {
  const r = spawnSync(process.execPath, [join(root, 'dist', 'cli.js'), 'bench', ...args], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
if (spawnSync(join(root, 'node_modules', '.bin', 'tsc'), ['-p', '.'], { cwd: root, stdio: 'inherit' }).status !== 0) process.exit(1);
if (device === 'cpu') {
  cli('ops');
  cli('unet', '--config', 'sd15', '--latent', '32', '--batch', '2');
  cli('step', '--config', 'sd15', '--latent', '32', '--pairs', '1', '--objective', 'dpo', '--space', 'latent');
  cli('step', '--config', 'sd15', '--latent', '32', '--pairs', '1', '--objective', 'dpo', '--space', 'ncp');
} else {
  for (const [config, latent] of [['sd15', '64'], ['sdxl', '128']]) {
    cli('unet', '--config', config, '--latent', latent, '--batch', '2', '--device', device);
    cli('step', '--config', config, '--latent', latent, '--pairs', '1', '--objective', 'dpo', '--space', 'ncp', '--device', device);
  }
  for (const [heads, dim] of [['8', '40'], ['10', '64']])
    cli('attention', '--batch', '2', '--tokens', '4096', '--heads', heads, '--head-dim', dim, '--device', device);
  cli('lora', '--rows', '8192', '--in', '640', '--rank', '4', '--device', device);
}
