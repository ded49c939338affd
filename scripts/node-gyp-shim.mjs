#!/usr/bin/env node
// prebuildify drives node-gyp; this stands in for it so the prebuild is made by the same cmake-js build as
// `npm run build` (OpenBLAS linked statically, the CUDA backend beside the addon when nvcc is found).
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
if (args[0] !== 'rebuild') {
  console.error(`node-gyp-shim: only 'rebuild' is supported, got: ${args.join(' ')}`);
  process.exit(2);
}
const debug = args.includes('--debug');
const r = spawnSync(join(root, 'node_modules', '.bin', 'cmake-js'), ['rebuild', ...(debug ? ['--debug'] : [])], {
  cwd: root,
  stdio: 'inherit',
});
process.exit(r.status ?? 1);
