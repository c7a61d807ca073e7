/**
 * Starts real kv-node processes (the built dist, exactly as a user runs them) for tests.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { securityArgs } from './certs.js'

export const kvNodeBin = fileURLToPath(
  new URL('../../packages/cli/dist/kv-node.js', import.meta.url),
)
export const kvBin = fileURLToPath(new URL('../../packages/cli/dist/kv.js', import.meta.url))

export function assertBuilt(): void {
  if (!existsSync(kvNodeBin)) {
    throw new Error(`${kvNodeBin} is missing: run "pnpm build" first (pnpm test does it for you)`)
  }
}

export interface NodeProcess {
  child: ChildProcess
  pid: number
  url: string
  /** Every log line the node printed, parsed. */
  logs: Record<string, unknown>[]
  /** Resolves with the exit code (or signal) once the process is gone. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/**
 * Spawns kv-node and resolves once it logs "node started". Nodes run as shipped: with their
 * certificate from the test run's certs (TLS on the client port, mutual TLS between members)
 * and auth on, unless `args` give other certificate flags.
 */
export async function startNodeProcess(
  args: string[],
  timeoutMs = 15_000,
  options: { tls?: boolean } = {},
): Promise<NodeProcess> {
  assertBuilt()
  const ownCerts =
    options.tls === false || args.some((a) => ['--certs-dir', '--cert-file'].includes(a))
  const child = spawn(
    process.execPath,
    [
      kvNodeBin,
      '--port',
      '0',
      '--log-level',
      process.env.KV_TEST_LOG_LEVEL ?? 'info',
      ...(ownCerts ? [] : securityArgs()),
      ...args,
    ],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  const logs: Record<string, unknown>[] = []
  const stderr: string[] = []
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }))
  })
  child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk.toString()))
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`kv-node did not start within ${timeoutMs} ms: ${stderr.join('')}`))
    }, timeoutMs)
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
    lines.on('line', (line) => {
      let parsed: Record<string, unknown>
      try {
        parsed = JSON.parse(line) as Record<string, unknown>
      } catch {
        return
      }
      logs.push(parsed)
      if (parsed.msg === 'node started' && typeof parsed.url === 'string') {
        clearTimeout(timer)
        resolve(parsed.url)
      }
    })
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new Error(`kv-node exited (${code ?? signal}) before starting: ${stderr.join('')}`))
    })
  })
  return { child, pid: child.pid as number, url, logs, exited }
}

/** The project's seeded PRNG, so a failing run can be replayed from its seed. */
export { prng } from '@kvstore/core'

/** Seed from KV_TEST_SEED, or a fresh one; always printed so a failure can be replayed. */
export function testSeed(name: string): number {
  const seed = process.env.KV_TEST_SEED
    ? Number(process.env.KV_TEST_SEED)
    : Math.floor(Math.random() * 2 ** 31)
  process.stdout.write(`${name}: seed ${seed} (replay with KV_TEST_SEED=${seed})\n`)
  return seed
}
