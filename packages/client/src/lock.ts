/**
 * A lock with a fencing token, as a recipe on leases and conditional writes (docs/leases.md):
 *
 *   const held = await lock(client, 'jobs/reindex', { ttlMs: 5000 })
 *   try {
 *     await client.put('reindex/state', 'running', { fence: held.fence })
 *   } finally {
 *     await held.release()
 *   }
 *
 * Taking the lock creates its key (`<keyPrefix><name>`) if it is absent, attached to a lease
 * of the holder's own; while another holder has it, `lock()` polls until the key is gone
 * (released, or its lease expired) or `waitMs` has passed (`KV_ERR_LOCK_TIMEOUT`). The key's
 * version, the LSN at which the lock was taken, is the fencing token: later holders get higher
 * ones. A write that carries it (`fence`) is refused with `KV_ERR_FENCED` once a later holder
 * has written with its own, so a holder that was paused past its TTL cannot corrupt data.
 */
import { KvError } from '@kvstore/protocol/errors'
import type { KvClient } from './client.js'
import { keepLeaseAlive, type LeaseKeeper } from './leases.js'

export interface LockOptions {
  /** The holder's lease TTL. Default 10 s. */
  ttlMs?: number
  /** How long to wait for a held lock; default 30 s. */
  waitMs?: number
  /** Between attempts while the lock is held; default 50 ms (with jitter). */
  pollMs?: number
  /** Where lock keys live; default `locks/`. */
  keyPrefix?: string
  /** Stored as the lock key's value (who holds it); default a random id. */
  owner?: string
  /** Called when the lease is lost while the lock is believed held. */
  onLost?: (err: Error) => void
}

export interface HeldLock {
  name: string
  key: string
  /** The fencing token: the LSN at which the lock was taken. */
  token: number
  lease: string
  /** What writes fenced by this lock pass as `fence`. */
  fence: { lock: string; token: number }
  /** The keep-alive loop: `alive` turns false (and `lost` settles) if the lease is lost. */
  keeper: LeaseKeeper
  /** Stops the keep-alive and revokes the lease, which deletes the lock key. */
  release(): Promise<void>
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

export async function lock(
  client: KvClient,
  name: string,
  options: LockOptions = {},
): Promise<HeldLock> {
  const ttlMs = options.ttlMs ?? 10_000
  const waitMs = options.waitMs ?? 30_000
  const pollMs = options.pollMs ?? 50
  const key = `${options.keyPrefix ?? 'locks/'}${name}`
  const owner = options.owner ?? `${process.pid}-${Math.random().toString(36).slice(2)}`
  const started = Date.now()
  const lease = await client.grantLease(ttlMs)
  const keeper = keepLeaseAlive(client, lease.id, {
    ttlMs,
    ...(options.onLost ? { onLost: options.onLost } : {}),
  })
  const giveUp = async () => {
    keeper.stop()
    await client.revokeLease(lease.id).catch(() => {})
  }
  for (;;) {
    try {
      const put = await client.put(key, owner, { lease: lease.id, ifAbsent: true })
      const token = put.version
      return {
        name,
        key,
        token,
        lease: lease.id,
        fence: { lock: name, token },
        keeper,
        release: async () => {
          keeper.stop()
          await client.revokeLease(lease.id).catch((err: unknown) => {
            if (!(err instanceof KvError && err.code === 'KV_ERR_LEASE_NOT_FOUND')) throw err
          })
        },
      }
    } catch (err) {
      if (!(err instanceof KvError) || err.code !== 'KV_ERR_PRECONDITION_FAILED') {
        await giveUp()
        throw err
      }
    }
    if (!keeper.alive || Date.now() - started >= waitMs) {
      await giveUp()
      throw new KvError(
        'KV_ERR_LOCK_TIMEOUT',
        `lock ${JSON.stringify(name)} was held by another holder for all of ${waitMs} ms`,
        { lock: name, waitMs },
      )
    }
    await sleep(pollMs * (0.5 + Math.random()))
  }
}
