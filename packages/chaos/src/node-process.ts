/**
 * Starting kv-node processes (the built dist, exactly as a user runs them) on 127.0.0.1: the
 * one launcher behind the chaos suite's process backend, and (through the private test kit)
 * behind every process test and benchmark. Every node started here is killed with SIGKILL if
 * this process exits or is interrupted, so none outlives its runner.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createServer } from 'node:net'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

/** The kv-node command of the built cli package. */
export const kvNodeBin = fileURLToPath(new URL('../../cli/dist/kv-node.js', import.meta.url))

/** Throws a clear error when the cli package has not been built. */
export function assertBuilt(): void {
  if (!existsSync(kvNodeBin)) {
    throw new Error(`${kvNodeBin} is missing: run "pnpm build" first (pnpm test does it for you)`)
  }
}

/** Ports handed out by this process: the OS may offer a just-closed one again. */
const handedOut = new Set<number>()

/** A port that was free on 127.0.0.1 a moment ago, and not handed out before by this process. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer()
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        const address = server.address()
        const port = typeof address === 'object' && address !== null ? address.port : 0
        server.close(() => resolve(port))
      })
    })
    if (!handedOut.has(port)) {
      handedOut.add(port)
      return port
    }
  }
}

/**
 * The cleanups atExit runs, kept on globalThis: a test runner that evaluates this module once per
 * test file, in one process, then still adds only one listener per event (not one per file,
 * which piled up past Node's MaxListeners warning).
 */
interface ExitHooks {
  cleanups: Set<() => void>
}
const exitHooksKey = Symbol.for('kvstore.chaos.exit-hooks')

function exitHooks(): ExitHooks {
  const holder = globalThis as { [exitHooksKey]?: ExitHooks }
  let hooks = holder[exitHooksKey]
  if (hooks === undefined) {
    const created: ExitHooks = { cleanups: new Set() }
    hooks = created
    holder[exitHooksKey] = created
    process.once('exit', () => {
      for (const cleanup of created.cleanups) cleanup()
    })
    for (const signal of ['SIGINT', 'SIGTERM'] as const)
      process.once(signal, () => process.exit(130))
  }
  return hooks
}

/**
 * Runs `cleanup` when this process exits, also on Ctrl-C or SIGTERM (which then exit with 130),
 * so nothing a runner started outlives it.
 */
export function atExit(cleanup: () => void): void {
  exitHooks().cleanups.add(cleanup)
}

/** Every node started here and still running. */
const children = new Set<ChildProcess>()
let exitHooked = false

function killChildrenOnExit(): void {
  if (exitHooked) return
  exitHooked = true
  atExit(() => {
    for (const child of children) child.kill('SIGKILL')
  })
}

export interface KvNodeOptions {
  /** kv-node arguments (a later flag overrides an earlier one). */
  args: string[]
  /** Extra environment for the node. */
  env?: Record<string, string>
  /** Also copy the node's raw stdout and stderr here (a log file). */
  output?: NodeJS.WritableStream
  /** Keep every parsed log line in `logs` (default true). */
  keepLogs?: boolean
  /** Pass the node's stderr through to this process's stderr (default: collect it). */
  inheritStderr?: boolean
  /**
   * The node's client URL, when known up front: the start is done once GET <url>/ready answers
   * 200. Without it, once the node logs "node started" (which needs log level info or lower).
   */
  readyUrl?: string
  timeoutMs?: number
}

export interface KvNodeProcess {
  child: ChildProcess
  pid: number
  /** The client URL the node serves. */
  url: string
  /** The node's log lines, parsed (empty when `keepLogs` is false). */
  logs: Record<string, unknown>[]
  /** Resolves with the exit code (or signal) once the process is gone. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** Has the process not exited yet? */
  running(): boolean
}

/** Polls `url`/ready until it answers 200; fails at the deadline or when the process exits. */
async function waitReady(
  url: string,
  deadline: number,
  gone: () => string | null,
  describe: () => string,
): Promise<void> {
  for (;;) {
    try {
      const res = await fetch(`${url}/ready`, { signal: AbortSignal.timeout(500) })
      await res.arrayBuffer()
      if (res.ok) return
    } catch {
      // not listening yet
    }
    const why = gone()
    if (why !== null) throw new Error(`kv-node exited (${why}) before starting: ${describe()}`)
    if (Date.now() > deadline) throw new Error(`kv-node at ${url} was not ready: ${describe()}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/**
 * Spawns kv-node with `args` and resolves once it serves (see `readyUrl`); on failure the
 * process is killed and the error carries what the node wrote to stderr.
 */
export async function startKvNode(options: KvNodeOptions): Promise<KvNodeProcess> {
  assertBuilt()
  killChildrenOnExit()
  const timeoutMs = options.timeoutMs ?? 15_000
  const keepLogs = options.keepLogs ?? true
  const parse = keepLogs || options.readyUrl === undefined
  const pipeOut = parse || options.output !== undefined
  const child = spawn(process.execPath, [kvNodeBin, ...options.args], {
    stdio: ['ignore', pipeOut ? 'pipe' : 'ignore', options.inheritStderr ? 'inherit' : 'pipe'],
    env: options.env === undefined ? process.env : { ...process.env, ...options.env },
  })
  children.add(child)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      children.delete(child)
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
  const logs: Record<string, unknown>[] = []
  let announce: ((url: string) => void) | null = null
  if (parse && child.stdout) {
    const lines = createInterface({ input: child.stdout })
    lines.on('line', (line) => {
      if (!keepLogs && announce === null) return
      let parsed: Record<string, unknown>
      try {
        parsed = JSON.parse(line) as Record<string, unknown>
      } catch {
        return
      }
      if (keepLogs) logs.push(parsed)
      if (parsed.msg === 'node started' && typeof parsed.url === 'string') announce?.(parsed.url)
    })
  }
  const describe = () => stderr.join('')
  try {
    let url: string
    if (options.readyUrl !== undefined) {
      url = options.readyUrl
      await waitReady(url, Date.now() + timeoutMs, () => exitedAs, describe)
    } else {
      url = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`kv-node did not start within ${timeoutMs} ms: ${describe()}`)),
          timeoutMs,
        )
        announce = (started) => {
          announce = null
          clearTimeout(timer)
          resolve(started)
        }
        void exited.then(({ code, signal }) => {
          clearTimeout(timer)
          reject(new Error(`kv-node exited (${code ?? signal}) before starting: ${describe()}`))
        })
      })
    }
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
