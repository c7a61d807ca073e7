/** Starts kv-node processes for benchmarks (the built dist, as a user runs it). */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

export const kvNodeBin = fileURLToPath(new URL('../../cli/dist/kv-node.js', import.meta.url))

export interface BenchNode {
  child: ChildProcess
  pid: number
  url: string
  stop(): Promise<void>
}

export async function startBenchNode(args: string[]): Promise<BenchNode> {
  const child = spawn(
    process.execPath,
    [kvNodeBin, '--port', '0', '--log-level', 'info', ...args],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  )
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('kv-node did not start in 20 s')), 20_000)
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      try {
        const parsed = JSON.parse(line) as { msg?: string; url?: string; level?: string }
        if (parsed.msg === 'node started' && parsed.url) {
          clearTimeout(timer)
          resolve(parsed.url)
        } else if (parsed.level === 'error' || parsed.level === 'fatal') {
          process.stderr.write(`${line}\n`)
        }
      } catch {
        // not a log line
      }
    })
    void exited.then(() => reject(new Error('kv-node exited during start')))
  })
  return {
    child,
    pid: child.pid as number,
    url,
    async stop() {
      child.kill('SIGTERM')
      await exited
    },
  }
}
