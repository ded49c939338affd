// Module names of a diffusers UNet2DConditionModel, as LoRA files spell them:
//  - diffusers / PEFT: the dotted module path, e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`;
//  - kohya: `lora_unet_` + that path with every '.' turned into '_' (ambiguous: `to_out_0`, `down_blocks_1`), so we
//    resolve a kohya name against the U-Net's list of module names rather than guess where the dots were;
//  - kohya for SDXL (sd-scripts, SGM/ldm layout): `input_blocks.K.J`, `middle_block.J`, `output_blocks.K.J` instead
//    of `down_blocks.I.{resnets,attentions}.L`, `mid_block...`, `up_blocks...`, with ldm names inside resnets
//    (`in_layers.2` = conv1, `out_layers.3` = conv2, `emb_layers.1` = time_emb_proj, `skip_connection` =
//    conv_shortcut) and for the samplers (`op`, `conv`).
//
// The SGM numbering follows the ldm U-Net that diffusers converts from (its `_maybe_map_sgm_blocks_to_diffusers`):
// input_blocks[0] is conv_in; then each down block contributes one entry per layer (J = 0 resnet, 1 attention)
// and, except the last, one for its downsampler (`.0.op`); the middle block is [resnet, attention, resnet]; each up
// block contributes layers_per_block + 1 entries (J = 0 resnet, 1 attention, and the upsampler at J = 2 after an
// attention or J = 1 without one). We derive the table from the U-Net config, so layers_per_block and the block
// types of the actual model decide it.

/** The part of a diffusers `unet/config.json` that fixes the module names. */
export interface UNetArchConfig {
  block_out_channels: number[];
  down_block_types: string[];
  up_block_types: string[];
  layers_per_block: number | number[];
  transformer_layers_per_block?: number | number[] | number[][];
  reverse_transformer_layers_per_block?: number[][] | null;
  mid_block_type?: string | null;
  addition_embed_type?: string | null;
  time_embedding_type?: string;
  class_embed_type?: string | null;
}

export type ModuleKind = 'linear' | 'conv';

export interface UNetModule {
  /** diffusers module path */
  name: string;
  kind: ModuleKind;
  /** the SGM (ldm) path of the same module, e.g. `input_blocks.4.1.transformer_blocks.0.attn1.to_q` */
  sgm: string;
}

const ATTN_PROJ = ['to_q', 'to_k', 'to_v', 'to_out.0'];

function perBlock(v: number | number[] | undefined, n: number, what: string): number[] {
  if (v === undefined) return new Array<number>(n).fill(1);
  if (typeof v === 'number') return new Array<number>(n).fill(v);
  if (v.length !== n) throw new Error(`unet config: ${what} has ${v.length} entries for ${n} blocks`);
  return v;
}

function transformerDepths(v: UNetArchConfig['transformer_layers_per_block'], n: number): number[][] | number[] {
  if (v === undefined || typeof v === 'number') return perBlock(v, n, 'transformer_layers_per_block');
  if (v.length !== n) throw new Error(`unet config: transformer_layers_per_block has ${v.length} entries for ${n} blocks`);
  return v as number[] | number[][];
}

function hasAttention(blockType: string): boolean {
  return blockType.includes('CrossAttn') || blockType.includes('AttnDown') || blockType.includes('AttnUp');
}

const RESNET_SGM: Record<string, string> = { conv1: 'in_layers.2', conv2: 'out_layers.3', time_emb_proj: 'emb_layers.1', conv_shortcut: 'skip_connection' };

function transformerModules(prefix: string, sgmPrefix: string, depth: number, out: UNetModule[]): void {
  for (const p of ['proj_in', 'proj_out']) out.push({ name: `${prefix}.${p}`, kind: 'linear', sgm: `${sgmPrefix}.${p}` });
  for (let k = 0; k < depth; k++) {
    const tb = `transformer_blocks.${k}`;
    for (const attn of ['attn1', 'attn2'])
      for (const p of ATTN_PROJ) out.push({ name: `${prefix}.${tb}.${attn}.${p}`, kind: 'linear', sgm: `${sgmPrefix}.${tb}.${attn}.${p}` });
    for (const p of ['ff.net.0.proj', 'ff.net.2']) out.push({ name: `${prefix}.${tb}.${p}`, kind: 'linear', sgm: `${sgmPrefix}.${tb}.${p}` });
  }
}

function resnetModules(prefix: string, sgmPrefix: string, out: UNetModule[]): void {
  for (const [d, s] of Object.entries(RESNET_SGM))
    out.push({ name: `${prefix}.${d}`, kind: d === 'time_emb_proj' ? 'linear' : 'conv', sgm: `${sgmPrefix}.${s}` });
}

/**
 * Every LoRA-able module (Linear and Conv2d) of a U-Net with this config, with its SGM name. conv_shortcut is listed
 * for every resnet (a superset: it exists only where the channel count changes), which is harmless for resolving
 * names and checked against the weights' shapes elsewhere.
 */
export function unetModules(config: UNetArchConfig): UNetModule[] {
  const n = config.block_out_channels.length;
  if (config.down_block_types.length !== n || config.up_block_types.length !== n)
    throw new Error(`unet config: ${config.down_block_types.length} down and ${config.up_block_types.length} up block types for ${n} block_out_channels`);
  const lpb = perBlock(config.layers_per_block, n, 'layers_per_block');
  const depths = transformerDepths(config.transformer_layers_per_block, n);
  const depthOf = (d: number[] | number, layer: number): number => (Array.isArray(d) ? d[layer] ?? 1 : d);
  const out: UNetModule[] = [];
  out.push({ name: 'conv_in', kind: 'conv', sgm: 'input_blocks.0.0' });
  out.push({ name: 'time_embedding.linear_1', kind: 'linear', sgm: 'time_embed.0' });
  out.push({ name: 'time_embedding.linear_2', kind: 'linear', sgm: 'time_embed.2' });
  if (config.addition_embed_type === 'text_time') {
    out.push({ name: 'add_embedding.linear_1', kind: 'linear', sgm: 'label_emb.0.0' });
    out.push({ name: 'add_embedding.linear_2', kind: 'linear', sgm: 'label_emb.0.2' });
  }
  let k = 1;
  for (let i = 0; i < n; i++) {
    const attn = hasAttention(config.down_block_types[i]!);
    for (let l = 0; l < lpb[i]!; l++, k++) {
      resnetModules(`down_blocks.${i}.resnets.${l}`, `input_blocks.${k}.0`, out);
      if (attn) transformerModules(`down_blocks.${i}.attentions.${l}`, `input_blocks.${k}.1`, depthOf(depths[i]!, l), out);
    }
    if (i < n - 1) {
      out.push({ name: `down_blocks.${i}.downsamplers.0.conv`, kind: 'conv', sgm: `input_blocks.${k}.0.op` });
      k++;
    }
  }
  if (config.mid_block_type !== null) {
    const midDepth = depthOf(depths[n - 1]!, 0);
    resnetModules('mid_block.resnets.0', 'middle_block.0', out);
    if (config.mid_block_type !== 'UNetMidBlock2D') transformerModules('mid_block.attentions.0', 'middle_block.1', midDepth, out);
    resnetModules('mid_block.resnets.1', 'middle_block.2', out);
  }
  const rlpb = [...lpb].reverse();
  const rdepths: Array<number[] | number> = config.reverse_transformer_layers_per_block ?? [...depths].reverse();
  k = 0;
  for (let i = 0; i < n; i++) {
    const attn = hasAttention(config.up_block_types[i]!);
    const layers = rlpb[i]! + 1;
    for (let l = 0; l < layers; l++, k++) {
      resnetModules(`up_blocks.${i}.resnets.${l}`, `output_blocks.${k}.0`, out);
      if (attn) transformerModules(`up_blocks.${i}.attentions.${l}`, `output_blocks.${k}.1`, depthOf(rdepths[i]!, l), out);
      if (l === layers - 1 && i < n - 1)
        out.push({ name: `up_blocks.${i}.upsamplers.0.conv`, kind: 'conv', sgm: `output_blocks.${k}.${attn ? 2 : 1}.conv` });
    }
  }
  out.push({ name: 'conv_out', kind: 'conv', sgm: 'out.2' });
  return out;
}

/** The default LoRA targets of METHOD.md section 5. */
export const DEFAULT_LORA_TARGETS: readonly string[] = ATTN_PROJ;

/** All targets the trainer accepts (suffixes of module names). */
export const KNOWN_LORA_TARGETS: readonly string[] = [
  ...ATTN_PROJ,
  'proj_in',
  'proj_out',
  'ff.net.0.proj',
  'ff.net.2',
  'conv1',
  'conv2',
  'time_emb_proj',
  'conv_shortcut',
];

/** The modules whose name ends with one of `targets` (as a whole dotted component sequence). */
export function targetModules(config: UNetArchConfig, targets: readonly string[] = DEFAULT_LORA_TARGETS): UNetModule[] {
  return unetModules(config).filter((m) => targets.some((t) => m.name === t || m.name.endsWith(`.${t}`)));
}

/** `a.b.c` -> `a_b_c` (the kohya spelling, without the `lora_unet_` prefix). */
export function underscored(name: string): string {
  return name.replace(/\./g, '_');
}

/**
 * Turns an underscored kohya module name back into a diffusers path without a module list, by re-joining the
 * compound words of diffusers' (and ldm's) naming. Exact for every module unetModules() lists; a fallback for
 * reading a file without the model at hand.
 */
export function guessDottedName(u: string): string {
  const compounds = [
    'down_blocks', 'up_blocks', 'mid_block', 'transformer_blocks', 'to_q', 'to_k', 'to_v', 'to_out', 'proj_in', 'proj_out',
    'time_emb_proj', 'conv_shortcut', 'linear_1', 'linear_2', 'time_embedding', 'add_embedding', 'conv_in', 'conv_out',
    'input_blocks', 'middle_block', 'output_blocks', 'in_layers', 'out_layers', 'emb_layers', 'skip_connection',
    'time_embed', 'label_emb',
  ].map((c) => c.split('_'));
  const parts = u.split('_');
  const out: string[] = [];
  for (let i = 0; i < parts.length; ) {
    const c = compounds.find((words) => words.every((w, j) => parts[i + j] === w));
    if (c) {
      out.push(c.join('_'));
      i += c.length;
    } else {
      out.push(parts[i]!);
      i++;
    }
  }
  return out.join('.');
}

/** Maps an SGM path (dotted) to the diffusers path, given the config's module table. */
export function sgmToDiffusers(sgm: string, config: UNetArchConfig): string | undefined {
  return unetModules(config).find((m) => m.sgm === sgm)?.name;
}

/**
 * A resolver from kohya names (without `lora_unet_`) to diffusers paths: exact against the module list when a
 * config or list is given (both the diffusers and the SGM spellings), else by guessDottedName (SGM names then
 * need the config and are refused).
 */
export class KohyaNameResolver {
  private readonly table = new Map<string, string>();
  readonly exact: boolean;

  constructor(source?: { config?: UNetArchConfig; modules?: readonly string[] }) {
    if (source?.config) {
      for (const m of unetModules(source.config)) {
        this.table.set(underscored(m.name), m.name);
        this.table.set(underscored(m.sgm), m.name);
      }
    }
    for (const name of source?.modules ?? []) this.table.set(underscored(name), name);
    this.exact = this.table.size > 0;
  }

  /** The diffusers path for an underscored name, or an Error message (string) saying why not. */
  resolve(u: string): { name: string; sgm: boolean } | { error: string } {
    const sgm = /^(input_blocks|middle_block|output_blocks|time_embed|label_emb|out)_/.test(u);
    if (this.exact) {
      const name = this.table.get(u);
      return name ? { name, sgm } : { error: 'no module of this U-Net has that name' };
    }
    if (sgm) return { error: 'SGM (ldm) block names need the U-Net config to map them (give the model folder)' };
    return { name: guessDottedName(u), sgm: false };
  }
}
