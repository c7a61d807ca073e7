/**
 * Starting kv-router processes (the built dist of packages/router, as a user runs it) for the
 * chaos suite's sharded backend. Like the nodes, every router started here is killed with
 * SIGKILL if this process exits or is interrupted.
 *
 * `KV_ROUTER_BIN` names another kv-router main.js (as for kv-cluster); by default it is the
 * one of this workspace.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { atExit } from './node-process.js'

/** The kv-router command of the built router package. */
export const kvRouterBin =
  process.env.KV_ROUTER_BIN ?? fileURLToPath(new URL('../../router/dist/main.js', import.meta.url))

export interface KvRouterProcess {
  child: ChildProcess
  pid: number
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  running(): boolean
}

const routers = new Set<ChildProcess>()
let hooked = false

export interface KvRouterOptions {
  args: string[]
  /** The router's client URL: the start is done once GET <url>/ready answers 200. */
  readyUrl: string
  /** Also copy its stdout and stderr here (a log file). */
  output?: NodeJS.WritableStream
  timeoutMs?: number
}

/** Spawns kv-router with `args` and resolves once it is ready; on failure it is killed. */
export async function startKvRouter(options: KvRouterOptions): Promise<KvRouterProcess> {
  if (!existsSync(kvRouterBin)) {
    throw new Error(
      `${kvRouterBin} is missing: the --router mode needs the kv-router package built (pnpm build)`,
    )
  }
  if (!hooked) {
    hooked = true
    atExit(() => {
      for (const child of routers) child.kill('SIGKILL')
    })
  }
  const child = spawn(process.execPath, [kvRouterBin, ...options.args], {
    stdio: ['ignore', options.output ? 'pipe' : 'ignore', 'pipe'],
  })
  routers.add(child)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      routers.delete(child)
      resolve({ code, signal })
    })
  })
  let exitedAs: string | null = null
  void exited.then(({ code, signal }) => {
    exitedAs = String(code ?? signal)
  })
  const stderr: string[] = []
  child.stderr?.on('data', (chunk: Buffer) => {
    if (stderr.length < 256) stderr.push(chunk.toString())
  })
  if (options.output !== undefined) {
    child.stdout?.pipe(options.output, { end: false })
    child.stderr?.pipe(options.output, { end: false })
  }
  const deadline = Date.now() + (options.timeoutMs ?? 20_000)
  try {
    for (;;) {
      try {
        const res = await fetch(`${options.readyUrl}/ready`, { signal: AbortSignal.timeout(500) })
        await res.arrayBuffer()
        if (res.ok) break
      } catch {
        // not listening yet
      }
      if (exitedAs !== null)
        throw new Error(`kv-router exited (${exitedAs}) before starting: ${stderr.join('')}`)
      if (Date.now() > deadline)
        throw new Error(`kv-router at ${options.readyUrl} was not ready: ${stderr.join('')}`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  } catch (err) {
    child.kill('SIGKILL')
    throw err
  }
  return {
    child,
    pid: child.pid as number,
    exited,
    running: () => child.exitCode === null && child.signalCode === null,
  }
}
