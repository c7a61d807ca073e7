/**
 * Leases in the SDK (single-leader mode; docs/leases.md): the options a write takes to attach
 * its keys to a lease, give them a TTL, or carry a fencing token, and a keep-alive loop.
 *
 *   const lease = await client.grantLease(10_000)
 *   await client.put('service/a', 'up', { lease: lease.id })
 *   const keeper = keepLeaseAlive(client, lease.id, { ttlMs: lease.ttlMs })
 *   ...
 *   keeper.stop(); await client.revokeLease(lease.id)
 */
import { KvError } from '@kvstore/protocol/errors'
import type { KvClient } from './client.js'

/** What POST /v1/leases answers. */
export interface Lease {
  id: string
  ttlMs: number
  lsn: number
}

/** What GET /v1/leases/<id> answers. */
export interface LeaseInfo {
  id: string
  ttlMs: number
  grantedLsn: number
  /** As the leader sees it; null when a follower answered. */
  remainingMs: number | null
  keys: string[]
}

/** A write's lease and fence. */
export interface LeaseWriteOptions {
  /** Attach the write's keys to this lease (`?lease=`). */
  lease?: string
  /** A lease of the write's own with this TTL, granted with it (`?ttlMs=`). */
  ttlMs?: number
  /**
   * Refuse the write (`KV_ERR_FENCED`) if a write fenced by `lock` already carried a higher
   * token (`If-Fence` and `Fence-Lock`). The token is the one `lock()` returned.
   */
  fence?: { lock: string; token: number }
}

/** The query string of a write's lease options ('' when none). */
export function leaseQuery(options: LeaseWriteOptions): string {
  const query = new URLSearchParams()
  if (options.lease !== undefined) query.set('lease', options.lease)
  if (options.ttlMs !== undefined) query.set('ttlMs', String(options.ttlMs))
  const text = query.toString()
  return text === '' ? '' : `?${text}`
}

/** The fence headers of a write. */
export function leaseHeaders(options: LeaseWriteOptions): Record<string, string> {
  if (options.fence === undefined) return {}
  return { 'if-fence': String(options.fence.token), 'fence-lock': options.fence.lock }
}

export interface KeepAliveOptions {
  /** The lease's TTL: renewals go every third of it. */
  ttlMs: number
  /** Called once when the lease is known to be gone (expired or revoked). */
  onLost?: (err: Error) => void
}

export interface LeaseKeeper {
  /** Stops renewing (the lease then expires unless revoked). */
  stop(): void
  /** Settles when the lease is known to be gone (expired or revoked), with why. */
  readonly lost: Promise<Error>
  /** False once the lease is known to be gone. */
  readonly alive: boolean
  /**
   * When the leader last confirmed a renewal (Date.now() ms). More than a TTL ago, the lease
   * may have expired without this holder knowing yet (no leader could be reached meanwhile).
   */
  readonly confirmedAt: number
}

/**
 * Renews a lease every third of its TTL until stopped. A renewal that fails for any reason but
 * the lease being gone is tried again at the next interval, however long it takes: after a
 * failover the new leader extends every lease by its TTL plus the election timeout, so a holder
 * that keeps trying keeps its lease. Only `KV_ERR_LEASE_NOT_FOUND` ends the loop (the lease is
 * lost). Whether a holder may still act on its lease in between is what `confirmedAt` tells; a
 * lock's fencing token is what makes acting on a lost one harmless.
 */
export function keepLeaseAlive(
  client: KvClient,
  id: string,
  options: KeepAliveOptions,
): LeaseKeeper {
  let stopped = false
  let alive = true
  let resolveLost: (err: Error) => void = () => {}
  const lost = new Promise<Error>((resolve) => {
    resolveLost = resolve
  })
  let timer: NodeJS.Timeout | null = null
  const intervalMs = Math.max(10, Math.floor(options.ttlMs / 3))
  let confirmedAt = Date.now()
  const fail = (err: Error) => {
    if (!alive) return
    alive = false
    options.onLost?.(err)
    resolveLost(err)
  }
  const renew = async () => {
    if (stopped) return
    try {
      // One attempt's retries stay within an interval; the next interval tries again.
      await client.keepAliveLease(id, {
        timeoutMs: intervalMs,
        deadline: Date.now() + intervalMs,
      })
      confirmedAt = Date.now()
    } catch (err) {
      if (err instanceof KvError && err.code === 'KV_ERR_LEASE_NOT_FOUND') {
        fail(err)
        return
      }
    }
    if (!stopped && alive) timer = setTimeout(() => void renew(), intervalMs)
  }
  timer = setTimeout(() => void renew(), intervalMs)
  return {
    stop() {
      stopped = true
      if (timer !== null) clearTimeout(timer)
    },
    lost,
    get alive() {
      return alive
    },
    get confirmedAt() {
      return confirmedAt
    },
  }
}
