// CLIP BPE tokenizer: exact ids against openai/CLIP's tokenizer on the real 49408-token vocabulary, truncation,
// pad tokens other than eos, and clear errors for malformed tokenizer folders.
import test from 'ava';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClipTokenizer } from '../dist/tokenizer.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));
const CLIP_DIR = join(FIXTURES, 'clip-tokenizer');
const CASES = JSON.parse(await readFile(join(FIXTURES, 'tokenizer-cases.json'), 'utf8')).cases;

const tokPromise = ClipTokenizer.fromFolder(CLIP_DIR);
const tmpDirs = [];

async function tempFolder(files) {
  const dir = await mkdtemp(join(tmpdir(), 'ncp-tok-'));
  tmpDirs.push(dir);
  for (const [name, content] of Object.entries(files)) {
    if (content === COPY) await copyFile(join(CLIP_DIR, name), join(dir, name));
    else await writeFile(join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  }
  return dir;
}
const COPY = Symbol('copy');

test.after.always(async () => {
  await Promise.all(tmpDirs.map((d) => rm(d, { recursive: true, force: true })));
});

test('loads the real vocabulary with SD1.5 special ids', async (t) => {
  const tok = await ClipTokenizer.fromFolder(CLIP_DIR);
  t.is(tok.maxLength, 77);
  t.is(tok.bosId, 49406);
  t.is(tok.eosId, 49407);
  t.is(tok.padId, 49407);
});

for (const c of CASES) {
  test(`golden ids: ${JSON.stringify(c.text).slice(0, 60)}`, async (t) => {
    const tok = await tokPromise;
    const ids = tok.encode(c.text);
    t.is(ids.length, 77);
    t.deepEqual(ids, c.ids);
  });
}

test('tokenize gives the BPE tokens', async (t) => {
  const tok = await tokPromise;
  t.deepEqual(tok.tokenize('A photo of a cat'), ['a</w>', 'photo</w>', 'of</w>', 'a</w>', 'cat</w>']);
  t.deepEqual(tok.tokenize('  hello\n\tworld  '), ['hello</w>', 'world</w>']);
  t.deepEqual(tok.tokenize(''), []);
  // The same word twice (second time from the cache) gives the same tokens.
  t.deepEqual(tok.tokenize('artstation artstation'), [...tok.tokenize('artstation'), ...tok.tokenize('artstation')]);
});

test('prompts longer than 75 tokens are truncated, eos last at position 76', async (t) => {
  const tok = await tokPromise;
  const words = [];
  for (let i = 0; i < 100; i++) words.push(i % 2 ? 'cat' : 'dog');
  const ids = tok.encode(words.join(' '));
  t.is(ids.length, 77);
  t.is(ids[0], 49406);
  t.is(ids[76], 49407);
  const body = ids.slice(1, 76);
  t.is(body.length, 75);
  t.false(body.includes(49407));
  const [dog, cat] = tok.encode('dog cat').slice(1, 3);
  t.deepEqual(body, words.slice(0, 75).map((w) => (w === 'dog' ? dog : cat)));
  // Exactly 75 body tokens fit without loss.
  t.deepEqual(tok.encode(words.slice(0, 75).join(' ')), ids);
});

test('a pad token of "!" (SDXL tokenizer_2) pads with id 0', async (t) => {
  const dir = await tempFolder({
    'vocab.json': COPY,
    'merges.txt': COPY,
    'tokenizer_config.json': {
      model_max_length: 77,
      bos_token: { __type: 'AddedToken', content: '<|startoftext|>', lstrip: false, rstrip: false },
      eos_token: '<|endoftext|>',
      pad_token: '!',
      unk_token: '<|endoftext|>',
      do_lower_case: true,
      tokenizer_class: 'CLIPTokenizerFast',
    },
  });
  const tok = await ClipTokenizer.fromFolder(dir);
  t.is(tok.padId, 0);
  const ids = tok.encode('a photo of a cat');
  t.deepEqual(ids.slice(0, 7), [49406, 320, 1125, 539, 320, 2368, 49407]);
  t.deepEqual(ids.slice(7), new Array(70).fill(0));
});

test('tokenizer_config.json is optional (CLIP defaults)', async (t) => {
  const dir = await tempFolder({ 'vocab.json': COPY, 'merges.txt': COPY });
  const tok = await ClipTokenizer.fromFolder(dir);
  t.is(tok.maxLength, 77);
  t.is(tok.padId, 49407);
  t.deepEqual(tok.encode(CASES[1].text), CASES[1].ids);
});

const SMALL_VOCAB = { '<|startoftext|>': 0, '<|endoftext|>': 1, 'a</w>': 2, a: 3 };

async function expectError(t, files, pattern, file) {
  const dir = await tempFolder(files);
  const err = await t.throwsAsync(ClipTokenizer.fromFolder(dir));
  t.is(err.code, 'NCP_ETOKENIZER');
  t.regex(err.message, pattern);
  if (file) t.true(err.message.includes(file), err.message);
}

test('error: missing vocab.json', async (t) => {
  await expectError(t, { 'merges.txt': '#version: 0.2\n' }, /vocab\.json/, 'vocab.json');
});

test('error: missing merges.txt', async (t) => {
  await expectError(t, { 'vocab.json': SMALL_VOCAB }, /merges\.txt/, 'merges.txt');
});

test('error: vocab.json is not an object of string -> int', async (t) => {
  await expectError(t, { 'vocab.json': ['a', 'b'], 'merges.txt': '' }, /JSON object/, 'vocab.json');
  await expectError(t, { 'vocab.json': { ...SMALL_VOCAB, b: 'x' }, 'merges.txt': '' }, /"b"/, 'vocab.json');
  await expectError(t, { 'vocab.json': { ...SMALL_VOCAB, b: 1.5 }, 'merges.txt': '' }, /not a non-negative integer/, 'vocab.json');
  await expectError(t, { 'vocab.json': '{not json', 'merges.txt': '' }, /not valid JSON/, 'vocab.json');
});

test('error: merges.txt lines that are not two tokens', async (t) => {
  await expectError(t, { 'vocab.json': SMALL_VOCAB, 'merges.txt': '#version: 0.2\na </w>\na b c\n' }, /line 3/, 'merges.txt');
  await expectError(t, { 'vocab.json': SMALL_VOCAB, 'merges.txt': '#version: 0.2\nab\n' }, /line 2/, 'merges.txt');
});

test('error: unsupported tokenizer_class', async (t) => {
  await expectError(
    t,
    { 'vocab.json': SMALL_VOCAB, 'merges.txt': '#version: 0.2\n', 'tokenizer_config.json': { tokenizer_class: 'T5Tokenizer' } },
    /T5Tokenizer/,
    'tokenizer_config.json',
  );
});

test('error: bos/eos/pad token not in the vocabulary', async (t) => {
  const base = { 'vocab.json': SMALL_VOCAB, 'merges.txt': '#version: 0.2\n' };
  await expectError(t, { ...base, 'tokenizer_config.json': { bos_token: '<s>' } }, /bos_token "<s>"/, 'tokenizer_config.json');
  await expectError(t, { ...base, 'tokenizer_config.json': { eos_token: '</s>' } }, /eos_token "<\/s>"/, 'tokenizer_config.json');
  await expectError(t, { ...base, 'tokenizer_config.json': { pad_token: '!' } }, /pad_token "!"/, 'tokenizer_config.json');
  // Defaults missing from the vocabulary (no config) are reported too.
  await expectError(t, { 'vocab.json': { 'a</w>': 0 }, 'merges.txt': '' }, /bos_token/);
});

test('a small vocabulary works end to end', async (t) => {
  const dir = await tempFolder({
    'vocab.json': SMALL_VOCAB,
    'merges.txt': '#version: 0.2\na </w>\n',
    'tokenizer_config.json': { model_max_length: 5, pad_token: '<|endoftext|>' },
  });
  const tok = await ClipTokenizer.fromFolder(dir);
  t.deepEqual(tok.encode('A'), [0, 2, 1, 1, 1]);
  t.deepEqual(tok.encode('a a a a a'), [0, 2, 2, 2, 1]);
});

test('CLI: tokenize prints one JSON array of 77 ids per text, from the model folder', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const { mkdtempSync, mkdirSync, cpSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { fileURLToPath } = await import('node:url');
  const model = mkdtempSync(join(tmpdir(), 'ncp-tok-model-'));
  mkdirSync(join(model, 'tokenizer'));
  cpSync(fileURLToPath(new URL('./fixtures/clip-tokenizer/', import.meta.url)), join(model, 'tokenizer'), { recursive: true });
  const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
  const r = spawnSync(process.execPath, [cli, 'tokenize', '--model', model, 'a photo of a cat', 'a dog'], { encoding: 'utf8' });
  rmSync(model, { recursive: true, force: true });
  t.is(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.is(lines.length, 2);
  t.deepEqual(lines[0].slice(0, 7), [49406, 320, 1125, 539, 320, 2368, 49407]);
  t.is(lines[1].length, 77);
});
