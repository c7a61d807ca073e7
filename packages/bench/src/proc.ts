/** Process facts from /proc, for CPU accounting in benchmarks; and the processes a suite starts itself. */
import type { ChildProcess } from 'node:child_process'
import { rmSync } from 'node:fs'
import { readFile } from 'node:fs/promises'

const ticksPerSecond = 100

/** CPU seconds (user + system) a process has used so far; 0 once it has exited. */
export async function cpuSeconds(pid: number): Promise<number> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const utime = Number(fields[11])
    const stime = Number(fields[12])
    return (utime + stime) / ticksPerSecond
  } catch {
    return 0
  }
}

/** The 1-minute load average, for a report to show how busy the machine was. */
export async function loadAverage(): Promise<number> {
  const os = await import('node:os')
  return os.loadavg()[0] ?? 0
}

/** A short description of the machine for the report. */
export async function machine(): Promise<{ cpus: string; cores: number; memoryGiB: number }> {
  const os = await import('node:os')
  const cpus = os.cpus()
  return {
    cpus: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  }
}

/** Processes this run started itself (etcd, the bare fastify server) and has not yet seen exit. */
const started = new Set<ChildProcess>()
/** Work directories to delete should this process exit before the suite's own cleanup. */
const directories = new Set<string>()
let exitHooked = false

function hookExit(): void {
  if (exitHooked) return
  exitHooked = true
  process.once('exit', () => {
    for (const c of started) c.kill('SIGKILL')
    for (const dir of directories) rmSync(dir, { recursive: true, force: true, maxRetries: 3 })
  })
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => process.exit(130))
  }
}

/** Deletes `dir` when this process exits, Ctrl-C included, unless `forget` is called first. */
export function removeOnExit(dir: string): { forget(): void } {
  directories.add(dir)
  hookExit()
  return { forget: () => void directories.delete(dir) }
}

/**
 * Remembers `child` so that it is killed (SIGKILL, by its PID) should this process exit before
 * stopping it, on Ctrl-C or SIGTERM too; forgets it once it exits.
 */
export function track<T extends ChildProcess>(child: T): T {
  started.add(child)
  child.once('exit', () => started.delete(child))
  hookExit()
  return child
}

/** Whether `child` has exited. */
export const hasExited = (child: ChildProcess): boolean =>
  child.exitCode !== null || child.signalCode !== null

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone (bounded). */
export async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (hasExited(child)) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const killer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  const giveUp = new Promise<void>((resolve) => setTimeout(resolve, graceMs + 5000).unref())
  await Promise.race([exited, giveUp])
  clearTimeout(killer)
}

/** CPU time of the whole machine so far, in seconds summed over every core: busy and idle. */
export async function machineCpuSeconds(): Promise<{ busy: number; idle: number }> {
  const stat = await readFile('/proc/stat', 'utf8')
  // cpu  user nice system idle iowait irq softirq steal guest guest_nice (ticks)
  const fields = (stat.split('\n')[0] ?? '').trim().split(/\s+/).slice(1, 9).map(Number)
  const [user, nice, system, idle, iowait, irq, softirq, steal] = fields as number[]
  return {
    busy:
      ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) /
      ticksPerSecond,
    idle: ((idle ?? 0) + (iowait ?? 0)) / ticksPerSecond,
  }
}

/** Measures the machine's idle and busy cores over a stretch of wall time. */
export async function machineMeter(): Promise<{
  stop(): Promise<{ busyCores: number; idleCores: number }>
}> {
  const before = await machineCpuSeconds()
  const started = performance.now()
  return {
    async stop() {
      const after = await machineCpuSeconds()
      const wallS = (performance.now() - started) / 1000
      return {
        busyCores: (after.busy - before.busy) / wallS,
        idleCores: (after.idle - before.idle) / wallS,
      }
    },
  }
}
