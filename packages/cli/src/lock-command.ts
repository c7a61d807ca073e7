/**
 * `kv lease …` and `kv lock NAME -- COMMAND` (single-leader mode; docs/leases.md): a thin shell
 * over the SDK's leases and its lock() recipe.
 */
import { spawn } from 'node:child_process'
import { KvError, keepLeaseAlive, lock, type KvClient } from '@kvstore/client'

export const leaseOptions = {
  lease: { type: 'string' },
  'ttl-ms': { type: 'string' },
  'wait-ms': { type: 'string' },
  keep: { type: 'boolean', default: false },
} as const

export interface LeaseArgs {
  json?: boolean | undefined
  lease?: string | undefined
  'ttl-ms'?: string | undefined
  'wait-ms'?: string | undefined
  keep?: boolean | undefined
}

export const leaseUsage = `Leases and locks (single-leader mode; see docs/leases.md):
  lease grant TTL_MS      grant a lease of TTL_MS ms; prints its id
  lease keepalive ID      renew it once; --keep renews it every third of its TTL until
        [--keep]          interrupted (keep-alives go to the leader and are not logged)
  lease revoke ID         delete the keys still attached to it, and it, in one entry
  lease info ID           its TTL, the time left as the leader sees it, and its keys
  put KEY VALUE --lease ID       attach the key to a lease (its end deletes the key)
  put KEY VALUE --ttl-ms N       the key gets a lease of its own of N ms
  lock NAME [--ttl-ms N] [--wait-ms N] -- COMMAND [ARGS...]
                          take lock NAME (a lease of --ttl-ms, default 10000, kept alive
                          meanwhile; waiting up to --wait-ms, default 30000, while another
                          holder has it), run COMMAND with KV_LOCK_NAME, KV_LOCK_TOKEN (the
                          fencing token: pass it as If-Fence with Fence-Lock: NAME),
                          KV_LOCK_KEY and KV_LOCK_LEASE in its environment, then release the
                          lock. Exits with COMMAND's status; if the lease is lost meanwhile,
                          COMMAND gets SIGTERM and kv exits 1. KV_ERR_LOCK_TIMEOUT when the
                          wait ran out.
`

export class LeaseUsageError extends Error {}

function write(stream: NodeJS.WritableStream, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()))
  })
}

/** A whole number of ms from an option, or `fallback`. */
export function msOption(text: string | undefined, name: string, fallback?: number): number {
  if (text === undefined) {
    if (fallback === undefined) throw new LeaseUsageError(`--${name} is required`)
    return fallback
  }
  if (!/^[0-9]{1,12}$/.test(text))
    throw new LeaseUsageError(`--${name} must be a whole number of ms`)
  return Number(text)
}

interface Io {
  env: NodeJS.ProcessEnv
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
}

export async function runLease(
  client: KvClient,
  args: string[],
  opts: LeaseArgs,
  io: Io,
): Promise<number> {
  const [sub, arg] = args
  const out = (value: unknown) => write(io.stdout, `${JSON.stringify(value, null, 2)}\n`)
  if (arg === undefined || args.length > 2)
    throw new LeaseUsageError('lease takes grant TTL_MS, keepalive ID, revoke ID or info ID')
  switch (sub) {
    case 'grant': {
      const lease = await client.grantLease(msOption(arg, 'TTL_MS'))
      if (opts.json) await out(lease)
      else await write(io.stdout, `${lease.id}\n`)
      return 0
    }
    case 'keepalive': {
      const renewed = await client.keepAliveLease(arg)
      if (!opts.keep) {
        if (opts.json) await out(renewed)
        else await write(io.stdout, `OK lease ${arg} renewed for ${renewed.ttlMs} ms\n`)
        return 0
      }
      const keeper = keepLeaseAlive(client, arg, { ttlMs: renewed.ttlMs })
      const stop = new Promise<number>((resolve) => {
        const done = () => resolve(0)
        process.once('SIGINT', done)
        process.once('SIGTERM', done)
      })
      const code = await Promise.race([
        stop,
        keeper.lost.then(async (err) => {
          await write(io.stderr, `kv: lease ${arg} lost: ${err.message}\n`)
          return 1
        }),
      ])
      keeper.stop()
      return code
    }
    case 'revoke': {
      const revoked = await client.revokeLease(arg)
      if (opts.json) await out(revoked)
      else
        await write(
          io.stdout,
          `OK revoked lease ${arg}: ${revoked.deletedKeys} keys deleted at LSN ${revoked.lsn}\n`,
        )
      return 0
    }
    case 'info': {
      await out(await client.leaseInfo(arg))
      return 0
    }
    default:
      throw new LeaseUsageError('lease takes grant TTL_MS, keepalive ID, revoke ID or info ID')
  }
}

/** `kv lock NAME -- COMMAND...`: the command's exit status (1 if the lease was lost). */
export async function runLock(
  client: KvClient,
  args: string[],
  opts: LeaseArgs,
  io: Io,
  hadSeparator: boolean,
): Promise<number> {
  const [name, ...command] = args
  if (name === undefined || command.length === 0 || !hadSeparator)
    throw new LeaseUsageError('lock takes NAME -- COMMAND [ARGS...]')
  const ttlMs = msOption(opts['ttl-ms'], 'ttl-ms', 10_000)
  const waitMs = msOption(opts['wait-ms'], 'wait-ms', 30_000)
  const held = await lock(client, name, { ttlMs, waitMs })
  const child = spawn(command[0] as string, command.slice(1), {
    stdio: 'inherit',
    env: {
      ...io.env,
      KV_LOCK_NAME: name,
      KV_LOCK_TOKEN: String(held.token),
      KV_LOCK_KEY: held.key,
      KV_LOCK_LEASE: held.lease,
    },
  })
  const forward = (signal: NodeJS.Signals) => () => child.kill(signal)
  const onInt = forward('SIGINT')
  const onTerm = forward('SIGTERM')
  process.on('SIGINT', onInt)
  process.on('SIGTERM', onTerm)
  let lost = false
  void held.keeper.lost.then(async (err) => {
    lost = true
    await write(
      io.stderr,
      `kv: lock ${name} lost (${err instanceof KvError ? err.code : err.message}); stopping the command\n`,
    )
    child.kill('SIGTERM')
  })
  try {
    const code = await new Promise<number>((resolve, reject) => {
      child.once('error', reject)
      child.once('exit', (status, signal) => resolve(status ?? (signal !== null ? 128 : 1)))
    })
    return lost ? 1 : code
  } finally {
    process.off('SIGINT', onInt)
    process.off('SIGTERM', onTerm)
    await held.release().catch(() => {})
  }
}
