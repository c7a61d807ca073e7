/** The project's one seeded PRNG (from the core), and the seed of a test run. */
export { Prng, prng } from '@kvstore/core'

/** Seed from KV_TEST_SEED, or a fresh one; always printed so a failure can be replayed. */
export function testSeed(name: string): number {
  const seed = process.env.KV_TEST_SEED
    ? Number(process.env.KV_TEST_SEED)
    : Math.floor(Math.random() * 2 ** 31)
  process.stdout.write(`${name}: seed ${seed} (replay with KV_TEST_SEED=${seed})\n`)
  return seed
}
