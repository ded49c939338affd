// npm's install step for this package: use a prebuilt or already-built addon when one loads; otherwise build from
// source with cmake-js (CPU, and CUDA when nvcc is found), falling back to node-gyp (CPU only). When both are
// impossible, say exactly what is missing.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

function loads() {
  try {
    require('node-gyp-build')(root);
    return true;
  } catch {
    return false;
  }
}

function has(cmd) {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
}

function run(cmd, args) {
  console.log(`ncp-native: ${cmd} ${args.join(' ')}`);
  return spawnSync(cmd, args, { cwd: root, stdio: 'inherit', shell: false }).status === 0;
}

if (process.env.NCP_FORCE_BUILD !== '1' && loads()) {
  console.log('ncp-native: using the prebuilt/already-built addon');
  process.exit(0);
}

const cmakeJs = join(root, 'node_modules', '.bin', 'cmake-js');
if (has('cmake') && existsSync(cmakeJs) && run(cmakeJs, ['build'])) process.exit(0);

// npm sets npm_config_node_gyp to its bundled node-gyp for lifecycle scripts (and npm_config_nodedir, when
// configured, to local Node headers); otherwise try a node-gyp on PATH.
const gyp = process.env.npm_config_node_gyp;
if (has('g++') && (gyp ? run(process.execPath, [gyp, 'rebuild']) : run('node-gyp', ['rebuild']))) process.exit(0);

console.error(
  'ncp-native: no prebuilt addon matches this platform and building from source failed.\n' +
    `  platform: ${process.platform}-${process.arch}, node ${process.version}\n` +
    `  cmake: ${has('cmake') ? 'found' : 'missing (apt-get install cmake)'}; ` +
    `C++ compiler: ${has('g++') ? 'found' : 'missing (apt-get install g++)'}\n` +
    '  Optional: libopenblas-dev for a faster CPU GEMM; nvcc for the CUDA backend.',
);
process.exit(1);
