// The simulator draws from the project's one seeded PRNG (packages/core/src/prng.ts).
export { Prng } from '@kvstore/core'
