/** Process facts from /proc, for CPU accounting in benchmarks. */
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
