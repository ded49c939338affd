// The CUDA backend against the CPU reference, op by op. Runs where a GPU is usable; elsewhere it is skipped and
// the reason is printed.
import test from 'ava';
import { cudaParity, info } from '../dist/index.js';

const cuda = info().backends.cuda;

if (!cuda.usable) console.log(`skip: CUDA backend not usable: ${cuda.reason}`);

(cuda.usable ? test : test.skip)('every CUDA op matches the CPU reference within 1e-4', async (t) => {
  const errors = await cudaParity();
  t.true(Object.keys(errors).length >= 20, `only ${Object.keys(errors).length} ops were compared`);
  for (const [op, err] of Object.entries(errors)) t.true(err < 1e-4, `${op}: relative error ${err}`);
});

test('cudaParity rejects with NCP_ENOCUDA and the reason when CUDA is not usable', async (t) => {
  if (cuda.usable) {
    t.pass('CUDA is usable here');
    return;
  }
  const err = await t.throwsAsync(() => cudaParity());
  t.is(err.code, 'NCP_ENOCUDA');
  t.true(err.message.includes(cuda.reason));
});
