// DDIM and Euler (discrete) with diffusers' semantics: timesteps per spacing, Stable Diffusion's sigmas, and
// exact recovery of a point-mass data distribution under its oracle denoiser (where both samplers are exact).
import test from 'ava';
import { alphasCumprod, createScheduler, inferenceTimesteps, parseSchedulerConfig } from '../dist/schedulers.js';

const SD = {
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  steps_offset: 1,
  set_alpha_to_one: false,
  clip_sample: false,
};
const cfg = (extra = {}) => parseSchedulerConfig({ ...SD, ...extra }, 'test');

test('timesteps follow diffusers for each spacing', (t) => {
  // DDIMScheduler.set_timesteps(50) with SD1.5's config (leading, steps_offset 1)
  const lead = inferenceTimesteps('ddim', cfg({ timestep_spacing: 'leading' }), 50);
  t.is(lead.length, 50);
  t.deepEqual(lead.slice(0, 3), [981, 961, 941]);
  t.is(lead.at(-1), 1);
  t.deepEqual(inferenceTimesteps('euler', cfg({ timestep_spacing: 'trailing' }), 10), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
  // Euler's default spacing is linspace, with fractional timesteps; DDIM's is leading.
  const lin = inferenceTimesteps('euler', cfg(), 4);
  t.deepEqual(lin, [999, 666, 333, 0]);
  t.deepEqual(inferenceTimesteps('euler', cfg(), 3), [999, 499.5, 0]);
  t.deepEqual(inferenceTimesteps('ddim', cfg(), 3), [667, 334, 1]);
  t.deepEqual(inferenceTimesteps('ddim', cfg({ timestep_spacing: 'linspace' }), 3), [999, 500, 0]); // 499.5 rounds to even
  t.deepEqual(inferenceTimesteps('euler', cfg({ timestep_spacing: 'trailing' }), 3), [999, 666, 332]);
  // numpy's own rounding decides these .5 cases (linspace: i * step; arange: n + i * ((n - r) - n)).
  t.deepEqual(inferenceTimesteps('ddim', cfg({ timestep_spacing: 'linspace' }), 27).slice(12, 15), [538, 499, 461]);
  const trail48 = inferenceTimesteps('ddim', cfg({ timestep_spacing: 'trailing' }), 48);
  t.is(trail48.length, 48);
  t.deepEqual(trail48.slice(-5), [103, 82, 61, 41, 20]);
  t.deepEqual(trail48.slice(3, 6), [936, 916, 895]);
});

test("Stable Diffusion's schedule: alphas_cumprod and Euler sigmas", (t) => {
  const ac = alphasCumprod(cfg());
  t.true(Math.abs(ac[0] - (1 - 0.00085)) < 1e-12);
  t.true(Math.abs(ac[999] - 0.0046) < 1e-4); // the well-known terminal alpha-bar of SD1.x
  const euler = createScheduler('euler', cfg({ timestep_spacing: 'leading' }), 30);
  const sigmaMax = Math.sqrt(1 / euler.alphaAt(0) - 1);
  t.is(euler.timesteps[0], 958); // 29 * (1000 // 30) + steps_offset
  t.true(Math.abs(sigmaMax - Math.sqrt((1 - ac[958]) / ac[958])) < 1e-9);
  t.true(Math.abs(euler.initNoiseSigma - Math.sqrt(sigmaMax ** 2 + 1)) < 1e-9); // leading: sqrt(sigma^2 + 1)
  const lin = createScheduler('euler', cfg(), 30);
  t.true(Math.abs(lin.initNoiseSigma - 14.6146) < 1e-3); // SD's sigma_max
  t.is(createScheduler('ddim', cfg(), 30).initNoiseSigma, 1);
});

/**
 * Runs a scheduler with the exact denoiser of data = the single point x0. Both samplers then follow the
 * probability-flow ODE exactly (its solution is linear in sigma) and land on x0. 8 steps divide 1000: diffusers'
 * DDIM steps back by N // steps whatever the spacing, so with 7 trailing steps its last step goes from 142 to
 * timestep 0 (alphas_cumprod[0], a little noise left) rather than to the clean sample.
 */
function runOracle(kind, config, steps, x0, noise) {
  const s = createScheduler(kind, config, steps);
  const x = Float32Array.from(noise, (v) => v * s.initNoiseSigma);
  const m = new Float32Array(x.length);
  for (let i = 0; i < s.timesteps.length; i++) {
    const xin = s.scaleModelInput(x, i);
    const a = s.alphaAt(i);
    for (let k = 0; k < x.length; k++) {
      const eps = (xin[k] - Math.sqrt(a) * x0[k]) / Math.sqrt(1 - a);
      m[k] = config.predictionType === 'v_prediction' ? Math.sqrt(a) * eps - Math.sqrt(1 - a) * x0[k] : config.predictionType === 'sample' ? x0[k] : eps;
    }
    s.step(m, i, x);
  }
  return x;
}

for (const kind of ['ddim', 'euler'])
  for (const prediction of ['epsilon', 'v_prediction', 'sample'])
    for (const spacing of ['leading', 'trailing', 'linspace'])
      test(`${kind} ${prediction} ${spacing}: the oracle denoiser lands on the data point`, (t) => {
        const x0 = Float32Array.from({ length: 16 }, (_, k) => Math.sin(k + 1));
        const noise = Float32Array.from({ length: 16 }, (_, k) => Math.cos(3 * k) * 1.3);
        const c = cfg({ prediction_type: prediction, timestep_spacing: spacing, set_alpha_to_one: true });
        const x = runOracle(kind, c, 8, x0, noise);
        let err = 0;
        for (let k = 0; k < 16; k++) err = Math.max(err, Math.abs(x[k] - x0[k]));
        t.true(err < 1e-4, `max error ${err}`);
      });

test('config errors name the field', (t) => {
  const missing = t.throws(() => parseSchedulerConfig({ ...SD, num_train_timesteps: undefined }, 'x.json'));
  t.is(missing.code, 'NCP_ESCHEDULER');
  t.regex(missing.message, /x\.json: field 'num_train_timesteps' is missing/);
  const bad = t.throws(() => parseSchedulerConfig({ ...SD, beta_schedule: 'cosine' }, 'x.json'));
  t.regex(bad.message, /'beta_schedule' is "cosine"; expected one of linear, scaled_linear/);
  t.is(t.throws(() => parseSchedulerConfig({ ...SD, prediction_type: 'noise' })).code, 'NCP_ESCHEDULER');
  t.is(t.throws(() => parseSchedulerConfig({ ...SD, timestep_spacing: 'even' })).code, 'NCP_ESCHEDULER');
  t.is(t.throws(() => parseSchedulerConfig({ ...SD, use_karras_sigmas: true })).code, 'NCP_EUNSUPPORTED');
  t.is(t.throws(() => inferenceTimesteps('ddim', cfg(), 0)).code, 'NCP_EINVAL');
  t.is(t.throws(() => inferenceTimesteps('ddim', cfg(), 1001)).code, 'NCP_EINVAL');
});
