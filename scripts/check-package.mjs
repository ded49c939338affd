// `npm run test:package`: what a user gets from the registry. Packs the package (with the prebuilt addon from
// `npm run prebuild`), installs the tarball into an empty project with a PATH that holds node and npm only (no
// compiler, no cmake), and checks that the CLI loads the prebuild and computes the golden U-Net output.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const work = mkdtempSync(join(tmpdir(), 'ncp-package-'));
let failed = 0;
let passed = 0;

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts });
  if (r.status !== 0) {
    console.error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
    console.log('package: 0 passed, 1 failed');
    process.exit(1);
  }
  return r.stdout;
}

function check(name, ok, detail = '') {
  console.log(`${ok ? 'ok' : 'not ok'} ${name}${detail ? ` (${detail})` : ''}`);
  if (ok) passed++;
  else failed++;
}

// The tests' safetensors reader is the library's own (dist/): compile it first on a fresh clone.
if (spawnSync(join(root, 'node_modules', '.bin', 'tsc'), ['-p', '.'], { cwd: root, stdio: 'inherit' }).status !== 0) process.exit(1);
const { readSafetensors } = await import('../test/safetensors.js');

try {
  const prebuilds = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (!existsSync(prebuilds) || !readdirSync(prebuilds).some((f) => f.endsWith('.node')))
    sh('npm', ['run', 'prebuild'], { cwd: root, stdio: 'inherit' });
  const tgz = sh('npm', ['pack', '--silent', '--pack-destination', work], { cwd: root }).trim().split('\n').pop();

  // A PATH with node, npm and sh (npm runs lifecycle scripts with it) and nothing else: no cc, g++, make, cmake
  // or python.
  const bin = join(work, 'bin');
  mkdirSync(bin);
  const npmCli = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js');
  symlinkSync(process.execPath, join(bin, 'node'));
  symlinkSync('/bin/sh', join(bin, 'sh'));
  writeFileSync(join(bin, 'npm'), `#!${process.execPath}\nimport(${JSON.stringify(npmCli)});\n`, { mode: 0o755 });
  const env = { PATH: bin, HOME: process.env.HOME ?? work, npm_config_cache: process.env.npm_config_cache ?? join(process.env.HOME ?? work, '.npm') };
  for (const tool of ['g++', 'cc', 'cmake', 'make', 'python3'])
    check(`no ${tool} on the install PATH`, spawnSync(tool, ['--version'], { env }).error?.code === 'ENOENT');

  const app = join(work, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', type: 'module' }));
  sh(join(bin, 'npm'), ['install', '--no-audit', '--no-fund', join(work, tgz)], { cwd: app, env });

  const cli = join(app, 'node_modules', '.bin', 'ncp-native');
  const info = JSON.parse(sh(cli, ['info', '--json'], { cwd: app, env }));
  check('the installed CLI loads the prebuilt addon', info.addon.includes(`${join('prebuilds', `${process.platform}-${process.arch}`)}`), info.addon);
  check('the prebuild reports its GEMM provider', info.gemm.length > 0, info.gemm);

  const golden = join(root, 'test', 'fixtures', 'golden', 'tiny-sdxl');
  const out = join(work, 'out.safetensors');
  sh(cli, ['forward', '--model', golden, '--input', join(golden, 'forward.safetensors'), '--output', out], { cwd: app, env });
  const ref = readSafetensors(join(golden, 'forward.safetensors'))['out.sample'].data;
  const ours = readSafetensors(out)['out.sample'].data;
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) { num += (ours[i] - ref[i]) ** 2; den += ref[i] ** 2; }
  const err = Math.sqrt(num / den);
  check('the prebuild computes the golden SDXL U-Net output', err < 1e-4, `relative error ${err.toExponential(2)}`);

  // The main job on the embedded default (bundled tiny model and pairs; sharp's prebuilt binary decodes them).
  const run = join(work, 'run');
  sh(cli, ['train', '--max-steps', '2', '--checkpoint-every', '0', '--output', run], { cwd: app, env });
  check('train on the embedded default writes the LoRA, metrics and a checkpoint', ['lora.safetensors', 'metrics.jsonl', 'resolved-config.json', 'checkpoint-2'].every((f) => existsSync(join(run, f))));
} finally {
  rmSync(work, { recursive: true, force: true });
}
console.log(`package: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
