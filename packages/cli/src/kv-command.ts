/**
 * The `kv` command: a thin shell over the SDK.
 *
 * Exit status: 0 success, 1 error, 2 bad usage, 3 key not found, 4 condition failed.
 */
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { KvClient, KvError, type BatchOp } from '@kvstore/client'
import { ImportError, runImport } from './import.js'

export interface Io {
  env: NodeJS.ProcessEnv
  stdin: NodeJS.ReadableStream & { isTTY?: boolean }
  stdout: NodeJS.WritableStream & { isTTY?: boolean }
  stderr: NodeJS.WritableStream
}

export const usage = `kv: client for the key-value store.

Usage: kv [--url URL] [--json] <command> [arguments]

Commands:
  get KEY                 print the value's bytes (--output FILE writes them to a file;
        [--linearizable]  --linearizable reads from the leader, confirmed with a majority)
  put KEY [VALUE]         write a value from VALUE, --file FILE, or standard input
        [--if-version N]  only if the key has version N (compare-and-set)
        [--if-absent]     only if the key does not exist (create)
        [--if-exists]     only if the key exists
  del KEY [--if-version N]
  ls [PREFIX]             list keys (--limit N per page, --start KEY, --all for every page)
  batch FILE              apply {"ops": [...]} from FILE (- for standard input) atomically
  import FILE             bulk-load NDJSON ({"key","value"} per line) or CSV (key,value columns),
        [--format ndjson|csv] [--chunk N] [--concurrency N] [--max-lag-ms MS]
                          in batches, slowing down whenever followers lag more than --max-lag-ms
  cluster                 the members, their roles, acknowledged LSNs and lag
  transfer [MEMBER]       hand leadership to MEMBER, or to the most up-to-date follower
  rollbacks               writes the node at --url dropped as unconfirmed (async writes of a
                          deposed leader), as JSON
  status                  the node's status as JSON
  digest                  hash of the node's state

Options:
  --url URL               node to talk to (env KV_URL, default http://127.0.0.1:7001)
  --ack async|quorum|all  durability a write waits for (default: the cluster's)
  --json                  machine-readable output
  --http1                 use HTTP/1.1 instead of HTTP/2 (h2c)
  -h, --help              show this help

Exit status: 0 success, 1 error, 2 bad usage, 3 key not found, 4 condition failed.
`

class UsageError extends Error {}

async function readStream(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream)
    chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string))
  return Buffer.concat(chunks)
}

function parseVersion(text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  if (!/^[1-9][0-9]*$/.test(text))
    throw new UsageError(`--if-version must be a positive whole number, got ${text}`)
  return Number(text)
}

function write(stream: NodeJS.WritableStream, text: string | Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()))
  })
}

export async function runKv(argv: string[], io: Io): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        url: { type: 'string' },
        json: { type: 'boolean', default: false },
        http1: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
        file: { type: 'string', short: 'f' },
        output: { type: 'string', short: 'o' },
        'if-version': { type: 'string' },
        'if-absent': { type: 'boolean', default: false },
        'if-exists': { type: 'boolean', default: false },
        limit: { type: 'string' },
        start: { type: 'string' },
        all: { type: 'boolean', default: false },
        ack: { type: 'string' },
        format: { type: 'string' },
        chunk: { type: 'string' },
        concurrency: { type: 'string' },
        'max-lag-ms': { type: 'string' },
        linearizable: { type: 'boolean', default: false },
      },
    })
  } catch (err) {
    await write(io.stderr, `kv: ${(err as Error).message}\n\n${usage}`)
    return 2
  }
  const { values: opts, positionals } = parsed
  const [command, ...args] = positionals
  if (opts.help || command === undefined || command === 'help') {
    await write(command === undefined && !opts.help ? io.stderr : io.stdout, usage)
    return command === undefined && !opts.help ? 2 : 0
  }
  const url = opts.url ?? io.env.KV_URL ?? 'http://127.0.0.1:7001'
  const ack = opts.ack
  if (ack !== undefined && ack !== 'async' && ack !== 'quorum' && ack !== 'all') {
    await write(io.stderr, `kv: --ack must be async, quorum or all\n`)
    return 2
  }
  let client: KvClient
  try {
    client = new KvClient({ url, protocol: opts.http1 ? 'http1' : 'h2c', ...(ack ? { ack } : {}) })
  } catch (err) {
    await write(io.stderr, `kv: ${(err as Error).message}\n`)
    return 2
  }
  const out = (value: unknown) => write(io.stdout, `${JSON.stringify(value, null, 2)}\n`)
  const needKey = (): string => {
    const key = args[0]
    if (key === undefined) throw new UsageError(`${command} needs a KEY`)
    return key
  }
  try {
    switch (command) {
      case 'get': {
        const key = needKey()
        const result = await client.get(
          key,
          opts.linearizable ? { consistency: 'linearizable' } : {},
        )
        if (result === null)
          throw new KvError('KV_ERR_KEY_NOT_FOUND', `key ${JSON.stringify(key)} does not exist`)
        if (opts.json) {
          await out({ key, version: result.version, valueBase64: result.value.toString('base64') })
        } else if (opts.output !== undefined) {
          const { writeFile } = await import('node:fs/promises')
          await writeFile(opts.output, result.value)
        } else {
          await write(io.stdout, result.value)
          if (io.stdout.isTTY && !result.value.toString('latin1').endsWith('\n'))
            await write(io.stdout, '\n')
        }
        return 0
      }
      case 'put': {
        const key = needKey()
        let value: Buffer
        if (args[1] !== undefined && opts.file !== undefined)
          throw new UsageError('give VALUE or --file, not both')
        if (args[1] !== undefined) value = Buffer.from(args[1], 'utf8')
        else if (opts.file !== undefined)
          value = await readFile(opts.file === '-' ? '/dev/stdin' : opts.file)
        else if (!io.stdin.isTTY) value = await readStream(io.stdin)
        else throw new UsageError('put needs a VALUE, --file FILE, or data on standard input')
        const ifVersion = parseVersion(opts['if-version'])
        const result = await client.put(key, value, {
          ...(ifVersion !== undefined ? { ifVersion } : {}),
          ...(opts['if-absent'] ? { ifAbsent: true } : {}),
          ...(opts['if-exists'] ? { ifExists: true } : {}),
        })
        if (opts.json) await out(result)
        else await write(io.stdout, `OK wrote ${key} version ${result.version}\n`)
        return 0
      }
      case 'del':
      case 'delete': {
        const key = needKey()
        const ifVersion = parseVersion(opts['if-version'])
        const result = await client.delete(key, {
          ...(ifVersion !== undefined ? { ifVersion } : {}),
          ...(opts['if-exists'] ? { ifExists: true } : {}),
        })
        if (opts.json) await out(result)
        else await write(io.stdout, `OK deleted ${key} at lsn ${result.lsn}\n`)
        return 0
      }
      case 'ls':
      case 'list': {
        const limit = opts.limit === undefined ? undefined : Number(opts.limit)
        if (limit !== undefined && (!Number.isSafeInteger(limit) || limit < 1)) {
          throw new UsageError(`--limit must be a positive whole number, got ${opts.limit}`)
        }
        const options = {
          ...(args[0] !== undefined ? { prefix: args[0] } : {}),
          ...(opts.start !== undefined ? { start: opts.start } : {}),
          ...(limit !== undefined ? { limit } : {}),
        }
        if (opts.all) {
          for await (const item of client.listAll(options)) {
            await write(io.stdout, opts.json ? `${JSON.stringify(item)}\n` : `${item.key}\n`)
          }
        } else {
          const page = await client.list(options)
          if (opts.json) await out(page)
          else {
            for (const item of page.items) await write(io.stdout, `${item.key}\n`)
            if (page.nextCursor !== null) {
              await write(
                io.stderr,
                `(more keys: use --all, or --start after ${page.items.at(-1)?.key ?? ''})\n`,
              )
            }
          }
        }
        return 0
      }
      case 'batch': {
        const file = args[0]
        if (file === undefined) throw new UsageError('batch needs a FILE (or - for standard input)')
        const text = file === '-' ? await readStream(io.stdin) : await readFile(file)
        let body: { ops?: BatchOp[] }
        try {
          body = JSON.parse(text.toString('utf8')) as { ops?: BatchOp[] }
        } catch (err) {
          throw new UsageError(`${file} is not valid JSON: ${(err as Error).message}`)
        }
        if (!Array.isArray(body.ops)) throw new UsageError(`${file} must hold {"ops": [...]}`)
        await out(await client.batch(body.ops))
        return 0
      }
      case 'import': {
        const file = args[0]
        if (file === undefined) throw new UsageError('import needs a FILE')
        const format = opts.format ?? (file.toLowerCase().endsWith('.csv') ? 'csv' : 'ndjson')
        if (format !== 'csv' && format !== 'ndjson')
          throw new UsageError('--format must be ndjson or csv')
        const number = (text: string | undefined, name: string, fallback: number) => {
          if (text === undefined) return fallback
          if (!/^[1-9][0-9]*$/.test(text))
            throw new UsageError(`--${name} must be a positive whole number`)
          return Number(text)
        }
        try {
          const summary = await runImport(client, {
            file,
            format,
            chunk: number(opts.chunk, 'chunk', 500),
            concurrency: number(opts.concurrency, 'concurrency', 4),
            maxLagMs: number(opts['max-lag-ms'], 'max-lag-ms', 1000),
            ack,
            progress: io.stderr,
          })
          if (opts.json) await out(summary)
          return 0
        } catch (err) {
          if (err instanceof ImportError) {
            await write(io.stderr, `\nkv: ${file}: ${err.message}\n`)
            return 1
          }
          throw err
        }
      }
      case 'cluster': {
        const view = await client.cluster()
        if (opts.json) {
          await out(view)
          return 0
        }
        await write(
          io.stdout,
          `cluster ${view.clusterId} (${view.mode}), epoch ${view.epoch}, commit LSN ${view.commitLsn}\n`,
        )
        for (const m of view.members) {
          await write(
            io.stdout,
            `  ${m.id.padEnd(8)} ${m.role.padEnd(9)} ${m.clientUrl.padEnd(26)} epoch ${String(m.epoch ?? '?').padStart(3)}  acked ${String(m.ackedLsn).padStart(10)}  applied ${String(m.appliedLsn ?? '?').padStart(10)}  lag ${m.lagEntries} entries, ${m.lagMs} ms${m.connected ? '' : '  (not connected)'}\n`,
          )
        }
        return 0
      }
      case 'transfer': {
        const to = args[0]
        const result = await client.transferLeadership(to)
        if (opts.json) await out(result)
        else
          await write(
            io.stdout,
            `${result.leaderId} leads epoch ${result.epoch} (was ${result.from}) at ${result.leaderUrl ?? '?'}\n`,
          )
        return 0
      }
      case 'rollbacks': {
        const records = []
        let after = 0
        for (;;) {
          const page = await client.rollbacks({ after, limit: 1000 })
          records.push(...page.rollbacks)
          if (page.next === null) break
          after = page.next
        }
        await out({ count: records.length, rollbacks: records })
        return 0
      }
      case 'status':
        await out(await client.status())
        return 0
      case 'digest':
        await out(await client.digest())
        return 0
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command)}`)
    }
  } catch (err) {
    if (err instanceof UsageError) {
      await write(io.stderr, `kv: ${err.message}\n\n${usage}`)
      return 2
    }
    if (err instanceof KvError) {
      const details = Object.entries(err.details)
        .filter(([name]) => name !== 'url')
        .map(([name, value]) => `${name}=${String(value)}`)
        .join(' ')
      await write(io.stderr, `kv: ${err.code}: ${err.message}${details ? ` (${details})` : ''}\n`)
      if (err.code === 'KV_ERR_KEY_NOT_FOUND') return 3
      if (err.code === 'KV_ERR_PRECONDITION_FAILED') return 4
      return 1
    }
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      await write(io.stderr, `kv: ${(err as Error).message}\n`)
      return 1
    }
    throw err
  } finally {
    await client.close()
  }
}
