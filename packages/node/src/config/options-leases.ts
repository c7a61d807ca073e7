/**
 * The option table's rows for leases (issue 19, slice L: node/src/leases): how many leases the
 * cluster holds and how many keys one lease may carry.
 */
import type { OptionSpec } from './types.js'

export const leaseOptions: readonly OptionSpec[] = [
  {
    key: 'leasesMax',
    flag: '--leases-max',
    env: 'KV_LEASES_MAX',
    kind: 'integer',
    default: 10_000,
    min: 1,
    max: 1_000_000,
    group: 'limits',
    description:
      'Most leases the cluster holds at once (grants and ?ttlMs= writes); past it new ones are refused with KV_ERR_TOO_MANY_LEASES. Set it alike on every member.',
  },
  {
    key: 'leaseKeysMax',
    flag: '--lease-keys-max',
    env: 'KV_LEASE_KEYS_MAX',
    kind: 'integer',
    default: 256,
    min: 1,
    max: 1000,
    group: 'limits',
    description:
      'Most keys attached to one lease (its record lists them all, and its end deletes them in one entry, which may hold more ops than --batch-ops-max); past it an attach is refused with KV_ERR_LEASE_TOO_MANY_KEYS.',
  },
]
