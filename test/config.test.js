// Training configuration: the paper's defaults, file < flags precedence, JSON and YAML files, validation messages
// that name the flag or field, the value and what is allowed, the resolved config written beside the outputs.
import test from 'ava';
import { mkdtemp, rm, writeFile, readFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  resolveConfig,
  loadConfig,
  readConfigFile,
  writeResolvedConfig,
  detectModelKind,
  learningRate,
  CONFIG_FIELDS,
  configFlagOptions,
} from '../dist/config.js';

const GOLDEN = fileURLToPath(new URL('./fixtures/golden/', import.meta.url));
const tmpDirs = [];
async function tempDir() {
  const d = await mkdtemp(join(tmpdir(), 'ncp-config-'));
  tmpDirs.push(d);
  return d;
}
test.after.always(async () => {
  await Promise.all(tmpDirs.map((d) => rm(d, { recursive: true, force: true })));
});

test("defaults are the paper's recipe (METHOD.md section 6)", (t) => {
  const c = resolveConfig({ cwd: '/work/x', now: new Date(2025, 0, 2, 3, 4, 5) });
  t.like(c, {
    objective: 'dpo',
    space: 'ncp',
    ncpLayer: 'mid',
    ncpTimestep: 'prev',
    beta: 2500,
    lr: 5e-4,
    adamBeta1: 0.9,
    adamBeta2: 0.999,
    adamEps: 1e-8,
    weightDecay: 1e-2,
    warmupSteps: 500,
    lrSchedule: 'constant',
    maxGradNorm: 1,
    rank: 4,
    alpha: 4,
    loraInit: 'gaussian',
    loraFormat: 'kohya',
    resolution: 512,
    centerCrop: true,
    randomFlip: true,
    absoluteWinners: false,
    seed: 0,
    epochs: 1,
    maxSteps: null,
    model: null,
    data: null,
  });
  t.deepEqual(c.targets, ['to_q', 'to_k', 'to_v', 'to_out.0']);
  t.is(c.output, '/work/x/ncp-runs/20250102-030405-dpo-ncp');
  t.is(resolveConfig({ modelKind: 'sdxl' }).resolution, 1024);
  t.is(resolveConfig({ flags: { rank: 16 } }).alpha, 16); // alpha follows rank unless set
  t.is(resolveConfig({ flags: { maxSteps: 10 } }).epochs, null);
  // Every field has a description for --help, and flag options carry no defaults (they would override the file).
  for (const f of CONFIG_FIELDS) t.true(f.describe.length > 5, f.name);
  const flags = configFlagOptions();
  t.deepEqual(Object.keys(flags), CONFIG_FIELDS.map((f) => f.name));
  t.deepEqual(flags['lora-format'].choices, ['kohya', 'diffusers', 'peft']);
  t.regex(flags.lr.describe, /\(default: 0\.0005\)/);
  t.false(Object.values(flags).some((o) => 'default' in o));
});

test('a YAML file overrides defaults and flags override the file; paths resolve against their origin', async (t) => {
  const dir = await tempDir();
  const path = join(dir, 'run.yaml');
  await writeFile(path, ['objective: cpo', 'ncp_layer: down', 'lr: 1e-4', 'rank: 8', 'targets: [to_q, to_v]', 'data: data/pairs.jsonl', 'random-flip: false', 'output: out'].join('\n'));
  const file = { path, values: await readConfigFile(path) };
  const c = resolveConfig({ file, flags: { lr: 2e-4, 'lora-format': 'peft', model: 'models/sd', _: ['train'], $0: 'ncp-native' }, cwd: '/cwd' });
  t.like(c, { objective: 'cpo', ncpLayer: 'down', lr: 2e-4, rank: 8, alpha: 8, randomFlip: false, loraFormat: 'peft' });
  t.deepEqual(c.targets, ['to_q', 'to_v']);
  t.is(c.data, join(dir, 'data/pairs.jsonl'));
  t.is(c.output, join(dir, 'out'));
  t.is(c.model, '/cwd/models/sd');
  // camelCase flag keys (as yargs also provides) and comma lists work too
  t.deepEqual(resolveConfig({ flags: { targets: 'to_q,proj_in', ncpTimestep: 'uniform' } }).targets, ['to_q', 'proj_in']);
  t.is(resolveConfig({ flags: { resume: 'latest' } }).resume, 'latest');
});

test('a JSON file works the same; loadConfig reads --config and picks the resolution from the model', async (t) => {
  const dir = await tempDir();
  const path = join(dir, 'run.json');
  await writeFile(path, JSON.stringify({ model: join(GOLDEN, 'tiny-sdxl'), 'batch-pairs': 4, seed: 9 }));
  const c = await loadConfig({ config: path, seed: 10 });
  t.like(c, { batchPairs: 4, seed: 10, resolution: 1024 });
  t.is(await detectModelKind(join(GOLDEN, 'tiny-sd15')), 'sd15');
  t.is(await detectModelKind(join(GOLDEN, 'tiny-sdxl')), 'sdxl');
  t.is((await loadConfig({ model: join(GOLDEN, 'tiny-sd15') })).resolution, 512);
  const e = await t.throwsAsync(loadConfig({ model: join(dir, 'no-model') }), { code: 'NCP_ECONFIG' });
  t.regex(e.message, /model folder .*no-model: cannot read unet\/config\.json \(does not exist\)/);
});

test('bad values name the flag or field, the value and what is allowed', async (t) => {
  const msg = (opts) => t.throws(() => resolveConfig(opts), { code: 'NCP_ECONFIG' }).message;
  t.is(msg({ flags: { lr: -1 } }), 'flag --lr: got -1; allowed: a number, > 0');
  t.is(msg({ flags: { objective: 'ppo' } }), 'flag --objective: got "ppo"; allowed: one of sft, dpo, cpo');
  t.is(msg({ flags: { rank: 2.5 } }), 'flag --rank: got 2.5; allowed: an integer, >= 1, <= 1024');
  t.regex(msg({ flags: { resolution: 500 } }), /flag --resolution: got 500; allowed: an integer, >= 8, <= 8192, a multiple of 8/);
  t.regex(msg({ flags: { targets: 'to_q,to_x' } }), /flag --targets: got "to_q,to_x" \("to_x" not known\); allowed: a list .* of to_q, to_k/);
  t.regex(msg({ flags: { 'adam-beta2': 1 } }), /flag --adam-beta2: got 1; allowed: a number, >= 0, < 1/);
  t.regex(msg({ flags: { 'random-flip': 'maybe' } }), /flag --random-flip: got "maybe"; allowed: true or false/);
  t.regex(msg({ flags: { 'validate-every': 10 } }), /--validate-every 10 needs at least one --validation-prompts/);
  t.regex(msg({ flags: { 'lr-schedule': 'cosine', 'max-steps': 100 } }), /--warmup-steps 500 must be below --max-steps 100/);

  const dir = await tempDir();
  const yaml = join(dir, 'bad.yaml');
  await writeFile(yaml, 'rank: 0\n');
  t.is(msg({ file: { path: yaml, values: await readConfigFile(yaml) } }), `field 'rank' in ${yaml}: got 0; allowed: an integer, >= 1, <= 1024`);
  await writeFile(yaml, 'learning_rate: 0.1\n');
  t.regex(msg({ file: { path: yaml, values: await readConfigFile(yaml) } }), /field 'learning_rate' in .*bad\.yaml is not an option; options: model, /);
  await writeFile(yaml, 'bta: 10\n');
  t.regex(msg({ file: { path: yaml, values: await readConfigFile(yaml) } }), /is not an option \(did you mean 'beta'\?\)/);
  await writeFile(yaml, 'rank: [4\n');
  t.regex((await t.throwsAsync(readConfigFile(yaml), { code: 'NCP_ECONFIG' })).message, /bad\.yaml is not valid YAML/);
  await writeFile(yaml, '- 1\n- 2\n');
  t.regex((await t.throwsAsync(readConfigFile(yaml))).message, /top level must be a mapping/);
  const json = join(dir, 'bad.json');
  await writeFile(json, '{"rank": 4,}');
  t.regex((await t.throwsAsync(readConfigFile(json))).message, /bad\.json is not valid JSON/);
  const toml = join(dir, 'c.toml');
  await writeFile(toml, 'rank = 4');
  t.regex((await t.throwsAsync(readConfigFile(toml))).message, /unknown extension; use \.json, \.yaml or \.yml/);
  t.regex((await t.throwsAsync(readConfigFile(join(dir, 'missing.yaml')))).message, /missing\.yaml: does not exist/);
});

test('resolved-config.json is written atomically and is itself a valid config file', async (t) => {
  const dir = await tempDir();
  const c = resolveConfig({ flags: { objective: 'sft', rank: 8, alpha: 3, seed: 5, data: '/d/x.parquet', output: join(dir, 'run') } });
  const path = await writeResolvedConfig(join(dir, 'run'), c);
  t.is(path, join(dir, 'run', 'resolved-config.json'));
  const values = JSON.parse(await readFile(path, 'utf8'));
  t.is(values.objective, 'sft');
  t.is(values['lora-format'], 'kohya');
  const again = resolveConfig({ file: { path, values: await readConfigFile(path) } });
  t.deepEqual(again, c);
  // An output folder under a file cannot be created: a clear error.
  await writeFile(join(dir, 'plainfile'), 'x');
  await mkdir(join(dir, 'ok'));
  await t.throwsAsync(writeResolvedConfig(join(dir, 'plainfile', 'run'), c), { code: 'NCP_EWRITE', message: /cannot create the output folder .*plainfile\/run/ });
});

test('learning rate: linear warm-up, then constant, linear or cosine decay', (t) => {
  const base = { lr: 1e-3, warmupSteps: 10, maxSteps: 110 };
  t.is(learningRate({ ...base, lrSchedule: 'constant' }, 1), 1e-4);
  t.is(learningRate({ ...base, lrSchedule: 'constant' }, 10), 1e-3);
  t.is(learningRate({ ...base, lrSchedule: 'constant' }, 100), 1e-3);
  t.is(learningRate({ ...base, lrSchedule: 'linear' }, 60), 5e-4);
  t.is(learningRate({ ...base, lrSchedule: 'linear' }, 110), 0);
  t.true(Math.abs(learningRate({ ...base, lrSchedule: 'cosine' }, 60) - 5e-4) < 1e-12);
  t.is(learningRate({ ...base, warmupSteps: 0, lrSchedule: 'constant' }, 1), 1e-3);
});
