// The command line: info, help, and exit code 2 with a clear message for anything it does not understand.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

test('info --json reports version, threads, gemm and both backends', (t) => {
  const r = run('info', '--json');
  t.is(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  t.regex(info.version, /^\d+\.\d+\.\d+/);
  t.true(info.threads >= 1);
  t.true(info.gemm.length > 0);
  t.true(info.backends.cpu.usable);
  t.is(typeof info.backends.cuda.usable, 'boolean');
  if (!info.backends.cuda.usable) t.true(info.backends.cuda.reason.length > 0);
});

test('info prints a readable summary', (t) => {
  const r = run('info', '--threads', '1');
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /^ncp-native \d+\.\d+\.\d+/);
  t.regex(r.stdout, /cpu: +usable, 1 threads/);
  t.regex(r.stdout, /cuda: /);
});

test('--help lists every command', (t) => {
  const r = run('--help');
  t.is(r.status, 0);
  for (const c of ['info', 'bench', 'forward', 'grad', 'tokenize', 'encode', 'train', 'sample']) t.regex(r.stdout, new RegExp(`ncp-native ${c}`));
});

test('unknown commands and flags exit 2 with a message', (t) => {
  const cmd = run('frobnicate');
  t.is(cmd.status, 2);
  t.regex(cmd.stderr, /Unknown argument: frobnicate/);
  const flag = run('info', '--jsn');
  t.is(flag.status, 2);
  t.regex(flag.stderr, /Unknown argument: jsn/);
  const none = run();
  t.is(none.status, 2);
  t.regex(none.stderr, /Name a command/);
  const threads = run('info', '--threads', '0');
  t.is(threads.status, 2);
  t.regex(threads.stderr, /--threads must be a positive integer/);
});

test('bench attention on the CPU exits with the reason; its shape flags are checked', (t) => {
  const cpu = run('bench', 'attention', '--device', 'cpu', '--tokens', '8', '--heads', '1', '--head-dim', '8');
  t.not(cpu.status, 0);
  t.regex(cpu.stderr, /runs on a CUDA device/);
  const bad = run('bench', 'attention', '--head-dim', '0');
  t.is(bad.status, 2);
  t.regex(bad.stderr, /--head-dim must be a positive integer/);
});

test('bench lora runs on the CPU with its shape flags, and refuses bad ones', (t) => {
  const r = run('bench', 'lora', '--device', 'cpu', '--rows', '37', '--in', '24', '--out', '16', '--rank', '3', '--reps', '1', '--json');
  t.is(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  t.deepEqual([report.rows, report.in, report.out, report.rank], [37, 24, 16, 3]);
  t.deepEqual(report.paths.map((p) => p.path), ['cpu']);
  const p = report.paths[0];
  t.true(p.forwardSeconds > 0 && p.backwardSeconds > 0);
  t.is(p.forwardBytes, 4 * 37 * (24 + 2 * 16));
  t.is(p.backwardBytes, 4 * 37 * (3 * 24 + 16));
  const text = run('bench', 'lora', '--device', 'cpu', '--rows', '8', '--in', '8', '--reps', '1');
  t.is(text.status, 0, text.stderr);
  t.regex(text.stdout, /lora: 8 rows, 8 -> 8, rank 4/);
  t.regex(text.stdout, /cpu +forward [\d.]+ ms \(\d+ GB\/s\), backward/);
  const bad = run('bench', 'lora', '--rank', '0');
  t.is(bad.status, 2);
  t.regex(bad.stderr, /--rank must be a positive integer/);
});
