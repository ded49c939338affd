// Run folder files: metrics JSONL, atomic writes, checkpoints (write, keep last K, latest, --resume, read back
// bit-exact) and what a SIGKILL in the middle of a checkpoint leaves behind.
import test from 'ava';
import { mkdtemp, rm, readFile, writeFile, readdir } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  MetricsWriter,
  readMetrics,
  writeCheckpoint,
  readCheckpoint,
  listCheckpoints,
  findLatestCheckpoint,
  resolveResume,
  ensureWritableDir,
  writeFileAtomic,
  momentsToTensors,
  tensorsToMoments,
} from '../dist/run-files.js';
import { loraWeightsFromModules, loraModulesFromWeights } from '../dist/lora-file.js';
import { Rng } from '../dist/rng.js';

const DIST = fileURLToPath(new URL('../dist/', import.meta.url));
const tmpDirs = [];
async function tempDir() {
  const d = await mkdtemp(join(tmpdir(), 'ncp-run-'));
  tmpDirs.push(d);
  return d;
}
test.after.always(async () => {
  await Promise.all(tmpDirs.map((d) => rm(d, { recursive: true, force: true })));
});

function metrics(step, extra = {}) {
  return { step, loss: 0.69 - step / 100, accuracy: 0.5, reward_w: 0.1, reward_l: -0.1, model_w: 0.2, model_l: 0.3, ref_w: 0.25, ref_l: 0.25, lr: 1e-4 * step, grad_norm: 0.9, step_time: 1.5, ...extra };
}

test('metrics: one JSON object per step; non-finite numbers become null; resume drops later steps and torn lines', async (t) => {
  const dir = await tempDir();
  const path = join(dir, 'metrics.jsonl');
  const w = await MetricsWriter.open(path);
  for (let s = 1; s <= 5; s++) await w.write(metrics(s, s === 5 ? { loss: NaN, epoch: 0 } : {}));
  await t.throwsAsync(w.write({ step: 6, loss: 1 }), { code: 'NCP_ERUN', message: /step 6: field 'accuracy' is missing/ });
  await w.close();
  const lines = (await readFile(path, 'utf8')).trim().split('\n');
  t.is(lines.length, 5);
  const last = JSON.parse(lines[4]);
  t.is(last.loss, null);
  t.is(last.epoch, 0);
  t.deepEqual(Object.keys(JSON.parse(lines[0])), ['step', 'loss', 'accuracy', 'reward_w', 'reward_l', 'model_w', 'model_l', 'ref_w', 'ref_l', 'lr', 'grad_norm', 'step_time']);
  // A killed run may leave a torn last line; resuming from step 3 keeps steps 1..3 only.
  await writeFile(path, (await readFile(path, 'utf8')) + '{"step": 6, "lo');
  const w2 = await MetricsWriter.open(path, { resumeStep: 3 });
  await w2.write(metrics(4));
  await w2.close();
  t.deepEqual((await readMetrics(path)).map((m) => m.step), [1, 2, 3, 4]);
});

function loraWeights(seed, alpha = 3) {
  const r = new Rng(seed);
  const mod = (rank, inF, outF) => ({
    A: Float32Array.from({ length: rank * inF }, () => r.normal()),
    B: Float32Array.from({ length: outF * rank }, () => r.normal()),
    rank,
    alpha,
    inFeatures: inF,
    outFeatures: outF,
  });
  return new Map([
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0', mod(4, 8, 8)],
    ['mid_block.attentions.0.transformer_blocks.0.attn2.to_k', mod(4, 12, 8)],
    ['up_blocks.1.attentions.2.proj_in', { ...mod(2, 8, 8), kernel: [1, 1] }],
  ]);
}

function optimizerState(seed) {
  const r = new Rng(seed + 1000);
  return { 'mid.exp_avg': { shape: [3, 5], data: Float32Array.from({ length: 15 }, () => r.normal()) }, 'mid.exp_avg_sq': { shape: [15], data: Float32Array.from({ length: 15 }, () => r.uniform()) } };
}

function stateAt(step) {
  const rng = new Rng(42);
  for (let i = 0; i < step; i++) rng.normal();
  return { step, data: { epoch: 1, index: step * 3 }, rng: { train: rng.getState() }, extra: { optimizerStep: step, corrupt: 2 } };
}

test('checkpoints: written atomically, read back bit-exact, last K kept, latest found', async (t) => {
  const run = await tempDir();
  for (const step of [10, 20, 30, 40]) {
    const dir = await writeCheckpoint(run, { state: stateAt(step), lora: loraWeights(step), optimizer: optimizerState(step) }, 2);
    t.is(dir, join(run, `checkpoint-${step}`));
  }
  t.deepEqual((await listCheckpoints(run)).map((c) => c.step), [30, 40]);
  t.deepEqual((await readdir(run)).sort(), ['checkpoint-30', 'checkpoint-40']);
  t.deepEqual(await findLatestCheckpoint(run), { dir: join(run, 'checkpoint-40'), step: 40 });
  const c = await readCheckpoint(join(run, 'checkpoint-40'));
  t.deepEqual(c.state, stateAt(40));
  const ref = loraWeights(40);
  t.deepEqual([...c.lora.keys()].sort(), [...ref.keys()].sort());
  for (const [name, m] of ref) {
    const got = c.lora.get(name);
    t.deepEqual(got.A, m.A, name);
    t.deepEqual(got.B, m.B, name); // alpha 3, rank 4: kohya keeps B unscaled, so no rounding
    t.is(got.alpha, 3);
    t.deepEqual(got.kernel, m.kernel);
  }
  t.deepEqual(c.optimizer.get('mid.exp_avg'), optimizerState(40)['mid.exp_avg']);
  // The RNG continues exactly where it was.
  const resumed = Rng.fromState(c.state.rng.train);
  const straight = new Rng(42);
  for (let i = 0; i < 40; i++) straight.normal();
  t.is(resumed.normal(), straight.normal());
  // Rewriting the same step replaces it.
  await writeCheckpoint(run, { state: stateAt(40), lora: loraWeights(41), optimizer: optimizerState(41) }, 2);
  t.deepEqual((await readCheckpoint(join(run, 'checkpoint-40'))).lora.get('mid_block.attentions.0.transformer_blocks.0.attn2.to_k').A, loraWeights(41).get('mid_block.attentions.0.transformer_blocks.0.attn2.to_k').A);
  await t.throwsAsync(writeCheckpoint(run, { state: { ...stateAt(1), data: { epoch: 0 } }, lora: loraWeights(1), optimizer: {} }, 2), { code: 'NCP_ERUN', message: /data position/ });
});

test('--resume: latest, a checkpoint folder or a run folder; clear errors otherwise', async (t) => {
  const run = await tempDir();
  await t.throwsAsync(resolveResume('latest', run), { code: 'NCP_ERUN', message: /--resume latest: no complete checkpoint-<step> folder in / });
  await writeCheckpoint(run, { state: stateAt(5), lora: loraWeights(5), optimizer: optimizerState(5) }, 3);
  await writeCheckpoint(run, { state: stateAt(7), lora: loraWeights(7), optimizer: optimizerState(7) }, 3);
  t.is((await resolveResume('latest', run)).step, 7);
  t.is((await resolveResume(run, '/elsewhere')).step, 7);
  t.deepEqual(await resolveResume(join(run, 'checkpoint-5'), '/elsewhere'), { dir: join(run, 'checkpoint-5'), step: 5 });
  await writeFile(join(run, 'checkpoint-5', 'state.json'), '{ torn');
  await t.throwsAsync(resolveResume(join(run, 'checkpoint-5'), '/x'), { code: 'NCP_ERUN', message: /checkpoint-5\/state\.json is unreadable/ });
  await t.throwsAsync(readCheckpoint(join(run, 'checkpoint-5')), { code: 'NCP_ERUN', message: /cannot read state\.json/ });
  t.deepEqual((await listCheckpoints(run)).map((c) => c.step), [7]); // the damaged one is no candidate
});

// A child process publishes checkpoint-1, then starts checkpoint-2 and is SIGKILLed while the folder is half written.
const CHILD = `
import { writeCheckpoint } from ${JSON.stringify(join(DIST, 'run-files.js'))};
import { writeDirAtomic, writeFileDurable } from ${JSON.stringify(join(DIST, 'atomic-fs.js'))};
import { join } from 'node:path';
const run = process.argv[1];
const lora = new Map([['mid_block.attentions.0.transformer_blocks.0.attn1.to_q', { A: new Float32Array(8).fill(1), B: new Float32Array(8).fill(2), rank: 2, alpha: 2, inFeatures: 4, outFeatures: 4 }]]);
await writeCheckpoint(run, { state: { step: 1, data: { epoch: 0, index: 2 }, rng: {} }, lora, optimizer: {} }, 3);
await writeDirAtomic(join(run, 'checkpoint-2'), async (tmp) => {
  await writeFileDurable(join(tmp, 'lora.safetensors'), 'partial');
  process.stdout.write('half\\n');
  await new Promise(() => {}); // hang here until killed
});
`;

test('a run killed with SIGKILL mid-checkpoint leaves the previous checkpoint usable', async (t) => {
  const run = await tempDir();
  const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD, run], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => d.toString().includes('half') && resolve());
    child.on('exit', (code) => reject(new Error(`child exited early with ${code}`)));
  });
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  const names = await readdir(run);
  t.true(names.some((n) => n.startsWith('.checkpoint-2.tmp-')), names.join(', '));
  t.false(names.includes('checkpoint-2'));
  const latest = await findLatestCheckpoint(run);
  t.is(latest.step, 1);
  const c = await readCheckpoint(latest.dir);
  t.deepEqual(c.state.data, { epoch: 0, index: 2 });
  t.deepEqual(Array.from(c.lora.get('mid_block.attentions.0.transformer_blocks.0.attn1.to_q').B), new Array(8).fill(2));
  // The next checkpoint removes the leftovers.
  await writeCheckpoint(run, { state: stateAt(2), lora: loraWeights(2), optimizer: {} }, 3);
  t.deepEqual((await readdir(run)).sort(), ['checkpoint-1', 'checkpoint-2']);
});

test('atomic file writes and writable-folder checks', async (t) => {
  const dir = await tempDir();
  const path = join(dir, 'a.json');
  await writeFileAtomic(path, '{"v": 1}');
  await writeFileAtomic(path, ['{"v": ', '2}']);
  t.is(await readFile(path, 'utf8'), '{"v": 2}');
  t.deepEqual(await readdir(dir), ['a.json']);
  await t.throwsAsync(writeFileAtomic(join(dir, 'no', 'such', 'folder.json'), 'x'), { code: 'NCP_EWRITE', message: /cannot write .*folder\.json: does not exist/ });
  await ensureWritableDir(join(dir, 'new', 'run'));
  await writeFile(join(dir, 'file'), 'x');
  await t.throwsAsync(ensureWritableDir(join(dir, 'file', 'run')), { code: 'NCP_EWRITE', message: /output folder .*file\/run is not writable/ });
});

test('bridges to the native trainer: adapters <-> LoraWeights, optimiser moments <-> checkpoint tensors', async (t) => {
  const weights = loraWeights(3);
  const modules = loraModulesFromWeights(weights);
  t.deepEqual(modules.find((m) => m.module.endsWith('proj_in')).A.shape, [2, 8, 1, 1]);
  t.deepEqual(modules.find((m) => m.module.endsWith('to_k')).B.shape, [8, 4]);
  const back = loraWeightsFromModules(modules.map((m) => ({ ...m, ...weights.get(m.module), A: m.A, B: m.B })));
  t.deepEqual([...back.keys()], [...weights.keys()]);
  t.deepEqual(back.get('up_blocks.1.attentions.2.proj_in').kernel, [1, 1]);
  t.throws(() => loraWeightsFromModules([{ module: 'x', rank: 2, alpha: 2, inFeatures: 3, outFeatures: 3, A: { data: new Float32Array(5), shape: [2, 3] }, B: { data: new Float32Array(6), shape: [3, 2] } }]), { message: /module x: A has 5 values/ });

  const moments = Array.from({ length: 12 }, (_, i) => Float32Array.from({ length: 3 + i }, (_, j) => i + j / 8));
  const run = await tempDir();
  await writeCheckpoint(run, { state: stateAt(9), lora: weights, optimizer: momentsToTensors(moments) }, 1);
  const c = await readCheckpoint(join(run, 'checkpoint-9'));
  t.deepEqual(tensorsToMoments(c.optimizer), moments);
});
