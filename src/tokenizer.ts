// The CLIP BPE tokenizer that Stable Diffusion model folders carry under `tokenizer/` (and SDXL's `tokenizer_2/`),
// exact to openai/CLIP's SimpleTokenizer and transformers' CLIPTokenizer:
//
//   text -> cleanup (NFC, HTML-unescape twice, whitespace collapsed and trimmed) -> lower-case (do_lower_case)
//        -> pre-tokens (CLIP's regex) -> UTF-8 bytes of each pre-token mapped through GPT-2's bytes_to_unicode
//        -> BPE over merges.txt (the last symbol of a word carries "</w>") -> ids from vocab.json
//        -> [bos, body..., eos] padded to model_max_length (77) with the pad token.
//
// Truncation: a prompt whose body is longer than model_max_length - 2 (= 75) tokens is cut to its first 75 body
// tokens; the eos token is always kept, at position 76 (as transformers does with truncation=True, and as
// Stable Diffusion pipelines feed the text encoder). Tokens past the 75th are silently dropped.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Errors from the tokenizer loader carry code 'NCP_ETOKENIZER' and name the file at fault. */
export interface TokenizerError extends Error {
  code: 'NCP_ETOKENIZER';
}

function tokError(message: string): TokenizerError {
  const e = new Error(message) as TokenizerError;
  e.code = 'NCP_ETOKENIZER';
  return e;
}

const START = '<|startoftext|>';
const END = '<|endoftext|>';
const DEFAULT_MAX_LENGTH = 77;

// CLIP's pre-tokenisation pattern (openai/CLIP simple_tokenizer.py), case-insensitive and unicode-aware.
const PAT =
  /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu;

/** GPT-2's bytes_to_unicode: every byte maps to a printable unicode character (all in the BMP). */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const table: string[] = new Array<string>(256);
  for (const b of bs) table[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (table[b] === undefined) {
      table[b] = String.fromCharCode(256 + n);
      n++;
    }
  }
  return table;
}

const BYTE_ENCODER = bytesToUnicode();

const NAMED_ENTITIES: Record<string, string> = {
  amp: '&',
  lt: '<',
  gt: '>',
  quot: '"',
  apos: "'",
  nbsp: '\u00a0',
};

/** A subset of Python's html.unescape: numeric references and the common named entities (with ';'). */
function htmlUnescape(s: string): string {
  if (!s.includes('&')) return s;
  return s.replace(/&(#[0-9]+|#[xX][0-9a-fA-F]+|[a-zA-Z]+);/g, (m, body: string) => {
    if (body[0] === '#') {
      const cp = body[1] === 'x' || body[1] === 'X' ? parseInt(body.slice(2), 16) : parseInt(body.slice(1), 10);
      if (!Number.isFinite(cp) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return '\ufffd';
      if (cp === 0) return '\ufffd';
      return String.fromCodePoint(cp);
    }
    return NAMED_ENTITIES[body] ?? m;
  });
}

function cleanText(text: string): string {
  let t = text.normalize('NFC');
  t = htmlUnescape(htmlUnescape(t)).trim();
  return t.replace(/\s+/gu, ' ').trim();
}

function tokenContent(v: unknown, file: string, key: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v;
  // Older configs store special tokens as {"__type": "AddedToken", "content": "...", ...}.
  if (typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') {
    return (v as { content: string }).content;
  }
  throw tokError(`${file}: ${key} must be a string or an AddedToken object`);
}

export interface ClipTokenizerOptions {
  /** model_max_length: total ids per prompt including bos and eos (77 for CLIP). */
  maxLength?: number;
  bosToken?: string;
  eosToken?: string;
  padToken?: string;
  unkToken?: string;
  doLowerCase?: boolean;
}

export class ClipTokenizer {
  readonly maxLength: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly unkId: number;
  readonly doLowerCase: boolean;
  private readonly vocab: Map<string, number>;
  private readonly ranks: Map<string, number>;
  private readonly cache = new Map<string, string[]>();

  /**
   * Builds a tokenizer from a parsed vocabulary (token -> id) and the merges in rank order ([first, second]).
   * `source` names the folder or files in error messages.
   */
  constructor(
    vocab: Map<string, number>,
    merges: ReadonlyArray<readonly [string, string]>,
    options: ClipTokenizerOptions = {},
    source = 'tokenizer',
  ) {
    this.vocab = vocab;
    this.ranks = new Map();
    merges.forEach(([a, b], i) => {
      const key = `${a} ${b}`;
      if (!this.ranks.has(key)) this.ranks.set(key, i);
    });
    const maxLength = options.maxLength ?? DEFAULT_MAX_LENGTH;
    if (!Number.isInteger(maxLength) || maxLength < 2) {
      throw tokError(`${source}: model_max_length must be an integer >= 2, got ${maxLength}`);
    }
    this.maxLength = maxLength;
    this.doLowerCase = options.doLowerCase ?? true;
    const idOf = (role: string, token: string): number => {
      const id = vocab.get(token);
      if (id === undefined) throw tokError(`${source}: ${role} ${JSON.stringify(token)} is not in the vocabulary`);
      return id;
    };
    this.bosId = idOf('bos_token', options.bosToken ?? START);
    this.eosId = idOf('eos_token', options.eosToken ?? END);
    this.padId = idOf('pad_token', options.padToken ?? END);
    this.unkId = idOf('unk_token', options.unkToken ?? END);
    // Special tokens written in the prompt come out whole (SimpleTokenizer pre-seeds its cache with them).
    this.cache.set(START, [START]);
    this.cache.set(END, [END]);
  }

  /**
   * Reads dir/vocab.json, dir/merges.txt and (optionally) dir/tokenizer_config.json, as a Stable Diffusion
   * folder's `tokenizer/` or `tokenizer_2/` holds them.
   */
  static async fromFolder(dir: string): Promise<ClipTokenizer> {
    const vocabPath = join(dir, 'vocab.json');
    const mergesPath = join(dir, 'merges.txt');
    const configPath = join(dir, 'tokenizer_config.json');

    const readText = async (path: string, optional: boolean): Promise<string | undefined> => {
      try {
        return await readFile(path, 'utf8');
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (optional && code === 'ENOENT') return undefined;
        throw tokError(`${path}: cannot read tokenizer file (${code ?? (err as Error).message})`);
      }
    };
    const [vocabText, mergesText, configText] = await Promise.all([
      readText(vocabPath, false),
      readText(mergesPath, false),
      readText(configPath, true),
    ]);

    // vocab.json: a JSON object of token -> non-negative integer id.
    let parsed: unknown;
    try {
      parsed = JSON.parse(vocabText as string);
    } catch (err) {
      throw tokError(`${vocabPath}: not valid JSON (${(err as Error).message})`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw tokError(`${vocabPath}: must be a JSON object mapping tokens to integer ids`);
    }
    const vocab = new Map<string, number>();
    for (const [token, id] of Object.entries(parsed as Record<string, unknown>)) {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
        throw tokError(`${vocabPath}: the id of token ${JSON.stringify(token)} is ${JSON.stringify(id)}, not a non-negative integer`);
      }
      vocab.set(token, id);
    }
    if (vocab.size === 0) throw tokError(`${vocabPath}: the vocabulary is empty`);

    // merges.txt: an optional "#version: ..." first line, then "first second" per line, in rank order.
    const lines = (mergesText as string).split(/\r?\n/);
    const merges: Array<[string, string]> = [];
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i] as string;
      if (i === 0 && line.startsWith('#version')) continue;
      if (line.trim() === '') continue;
      const parts = line.split(' ');
      if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
        throw tokError(`${mergesPath}: line ${i + 1} is not two space-separated tokens: ${JSON.stringify(line)}`);
      }
      merges.push([parts[0] as string, parts[1] as string]);
    }

    const options: ClipTokenizerOptions = {};
    if (configText !== undefined) {
      let cfg: unknown;
      try {
        cfg = JSON.parse(configText);
      } catch (err) {
        throw tokError(`${configPath}: not valid JSON (${(err as Error).message})`);
      }
      if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) {
        throw tokError(`${configPath}: must be a JSON object`);
      }
      const c = cfg as Record<string, unknown>;
      const cls = c['tokenizer_class'];
      if (cls !== undefined && cls !== null && cls !== 'CLIPTokenizer' && cls !== 'CLIPTokenizerFast') {
        throw tokError(`${configPath}: tokenizer_class ${JSON.stringify(cls)} is not supported (expected CLIPTokenizer or CLIPTokenizerFast)`);
      }
      const mml = c['model_max_length'];
      if (mml !== undefined && mml !== null) {
        // transformers writes a huge sentinel (int(1e30)) for "no limit": CLIP's text encoder still takes 77.
        if (typeof mml === 'number' && mml > 1e18) options.maxLength = DEFAULT_MAX_LENGTH;
        else if (typeof mml === 'number' && Number.isInteger(mml) && mml >= 2) options.maxLength = mml;
        else throw tokError(`${configPath}: model_max_length must be an integer >= 2, got ${JSON.stringify(mml)}`);
      }
      const lower = c['do_lower_case'];
      if (typeof lower === 'boolean') options.doLowerCase = lower;
      const bos = tokenContent(c['bos_token'], configPath, 'bos_token');
      const eos = tokenContent(c['eos_token'], configPath, 'eos_token');
      const pad = tokenContent(c['pad_token'], configPath, 'pad_token');
      const unk = tokenContent(c['unk_token'], configPath, 'unk_token');
      if (bos !== undefined) options.bosToken = bos;
      if (eos !== undefined) options.eosToken = eos;
      if (pad !== undefined) options.padToken = pad;
      if (unk !== undefined) options.unkToken = unk;
    }
    return new ClipTokenizer(vocab, merges, options, configText !== undefined ? configPath : dir);
  }

  /** BPE of one pre-token, already mapped to byte-unicode characters (cached per word). */
  private bpe(token: string): string[] {
    const hit = this.cache.get(token);
    if (hit !== undefined) return hit;
    let word: string[] = Array.from(token);
    if (word.length === 0) return [];
    word[word.length - 1] += '</w>';
    const ranks = this.ranks;
    while (word.length > 1) {
      // The adjacent pair with the lowest merge rank.
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const first = word[best] as string;
      const second = word[best + 1] as string;
      // Merge every occurrence of (first, second), left to right, as SimpleTokenizer does.
      const merged: string[] = [];
      let i = 0;
      while (i < word.length) {
        if (i < word.length - 1 && word[i] === first && word[i + 1] === second) {
          merged.push(first + second);
          i += 2;
        } else {
          merged.push(word[i] as string);
          i += 1;
        }
      }
      word = merged;
    }
    if (this.cache.size < 100_000) this.cache.set(token, word);
    return word;
  }

  /** The BPE tokens of a prompt (no bos/eos, no truncation), e.g. ["a</w>", "photo</w>"]. */
  tokenize(text: string): string[] {
    let t = cleanText(text);
    if (this.doLowerCase) t = t.toLowerCase();
    const out: string[] = [];
    const enc = new TextEncoder();
    for (const m of t.matchAll(PAT)) {
      const piece = m[0];
      let mapped = '';
      if (piece === START || piece === END) {
        mapped = piece;
      } else {
        for (const b of enc.encode(piece)) mapped += BYTE_ENCODER[b] as string;
      }
      for (const tok of this.bpe(mapped)) out.push(tok);
    }
    return out;
  }

  /**
   * The maxLength (77) ids of a prompt: bos, at most maxLength - 2 (75) body tokens, eos, then the pad id.
   * Longer prompts are truncated to their first 75 body tokens; eos stays last before the padding (position 76
   * when the body is full).
   */
  encode(text: string): number[] {
    const body = this.tokenize(text)
      .slice(0, this.maxLength - 2)
      .map((tok) => this.vocab.get(tok) ?? this.unkId);
    const ids = [this.bosId, ...body, this.eosId];
    while (ids.length < this.maxLength) ids.push(this.padId);
    return ids;
  }
}
