/**
 * One kv-router process for a test or benchmark (the built dist, as a user runs it). It is
 * killed with SIGKILL if this process exits first, like the nodes the kit starts.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { atExit } from '@kvstore/chaos/node-process'

/** The kv-router command of the built router package. */
export const kvRouterBin = fileURLToPath(new URL('../../router/dist/main.js', import.meta.url))

export interface RouterProcess {
  child: ChildProcess
  pid: number
  /** The client URL the router serves. */
  url: string
  /** Its log lines, parsed. */
  logs: Record<string, unknown>[]
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  running(): boolean
}

const routers = new Set<ChildProcess>()
let hooked = false

/**
 * Spawns kv-router with `args` (on a free port unless they name one) and resolves once it
 * logs "router started"; on failure the process is killed and the error has its stderr.
 */
export async function startRouterProcess(
  args: string[],
  options: { timeoutMs?: number; logLevel?: string } = {},
): Promise<RouterProcess> {
  if (!existsSync(kvRouterBin))
    throw new Error(`${kvRouterBin} is missing: run "pnpm build" first (pnpm test does it for you)`)
  if (!hooked) {
    hooked = true
    atExit(() => {
      for (const child of routers) child.kill('SIGKILL')
    })
  }
  const timeoutMs = options.timeoutMs ?? 15_000
  const child = spawn(
    process.execPath,
    [
      kvRouterBin,
      '--port',
      '0',
      '--log-level',
      options.logLevel ?? process.env.KV_TEST_LOG_LEVEL ?? 'info',
      ...args,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  routers.add(child)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      routers.delete(child)
      resolve({ code, signal })
    })
  })
  const stderr: string[] = []
  child.stderr?.on('data', (chunk: Buffer) => {
    if (stderr.length < 256) stderr.push(chunk.toString())
  })
  const logs: Record<string, unknown>[] = []
  let announce: ((url: string) => void) | null = null
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
    let parsed: Record<string, unknown>
    try {
      parsed = JSON.parse(line) as Record<string, unknown>
    } catch {
      return
    }
    logs.push(parsed)
    if (parsed.msg === 'router started' && typeof parsed.url === 'string') announce?.(parsed.url)
  })
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(new Error(`kv-router did not start within ${timeoutMs} ms: ${stderr.join('')}`)),
        timeoutMs,
      )
      announce = (started) => {
        announce = null
        clearTimeout(timer)
        resolve(started)
      }
      void exited.then(({ code, signal }) => {
        clearTimeout(timer)
        reject(
          new Error(`kv-router exited (${code ?? signal}) before starting: ${stderr.join('')}`),
        )
      })
    })
    return {
      child,
      pid: child.pid as number,
      url,
      logs,
      exited,
      running: () => child.exitCode === null && child.signalCode === null,
    }
  } catch (err) {
    child.kill('SIGKILL')
    throw err
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code. */
export async function stopRouterProcess(
  router: RouterProcess,
  graceMs = 15_000,
): Promise<number | null> {
  if (router.running()) router.child.kill('SIGTERM')
  const timer = setTimeout(() => router.child.kill('SIGKILL'), graceMs)
  const { code } = await router.exited
  clearTimeout(timer)
  return code
}
