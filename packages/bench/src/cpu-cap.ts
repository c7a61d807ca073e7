/**
 * CPU caps for benchmark processes through Linux cgroups: the equivalent of running each node in
 * a container limited to a fraction of a CPU (docker run --cpus 0.5). The cap covers every thread
 * of the process: the event loop, libuv's pool, LevelDB's compaction and V8's GC.
 *
 * Works with cgroup v1 (cpu controller: cpu.cfs_quota_us) and cgroup v2 (cpu.max). Needs write
 * access to the cgroup file system, normally root.
 */
import { access, mkdir, readFile, rmdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

export interface CpuCapper {
  /** How the cap is applied, for the report. */
  readonly description: string
  /** Limits `pid` (all its threads) to `cores` CPUs. */
  cap(pid: number, cores: number): Promise<void>
  /** Moves every capped process back and removes the groups. */
  release(): Promise<void>
}

const periodUs = 100_000

async function exists(path: string): Promise<boolean> {
  try {
    await access(path)
    return true
  } catch {
    return false
  }
}

async function writable(path: string): Promise<boolean> {
  const probe = join(path, `kv-bench-probe-${process.pid}`)
  try {
    await mkdir(probe)
    await rmdir(probe)
    return true
  } catch {
    return false
  }
}

/** A capper for this machine, or the reason there is none. */
export async function cpuCapper(): Promise<CpuCapper | { unavailable: string }> {
  const v2Root = '/sys/fs/cgroup'
  const v1Root = (await exists('/sys/fs/cgroup/cpu/cpu.cfs_quota_us'))
    ? '/sys/fs/cgroup/cpu'
    : (await exists('/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us'))
      ? '/sys/fs/cgroup/cpu,cpuacct'
      : null
  const groups: { dir: string; pid: number }[] = []
  let sequence = 0
  const release = async (parentProcs: string) => {
    for (const group of groups.splice(0)) {
      try {
        await writeFile(parentProcs, `${group.pid}\n`)
      } catch {
        // the process has exited; the group is empty
      }
      await rmdir(group.dir).catch(() => undefined)
    }
  }

  if (v1Root !== null) {
    if (!(await writable(v1Root))) return { unavailable: `${v1Root} is not writable (run as root)` }
    return {
      description: `cgroup v1 cpu.cfs_quota_us in ${v1Root}`,
      async cap(pid, cores) {
        const dir = join(v1Root, `kv-bench-${process.pid}-${++sequence}`)
        await mkdir(dir)
        groups.push({ dir, pid })
        await writeFile(join(dir, 'cpu.cfs_period_us'), `${periodUs}\n`)
        await writeFile(join(dir, 'cpu.cfs_quota_us'), `${Math.round(cores * periodUs)}\n`)
        await writeFile(join(dir, 'cgroup.procs'), `${pid}\n`)
      },
      release: () => release(join(v1Root, 'cgroup.procs')),
    }
  }

  const controllers = await readFile(join(v2Root, 'cgroup.controllers'), 'utf8').catch(() => '')
  if (controllers.split(/\s+/).includes('cpu')) {
    if (!(await writable(v2Root))) return { unavailable: `${v2Root} is not writable (run as root)` }
    try {
      await writeFile(join(v2Root, 'cgroup.subtree_control'), '+cpu\n')
    } catch (err) {
      return { unavailable: `cannot enable the cpu controller: ${(err as Error).message}` }
    }
    return {
      description: `cgroup v2 cpu.max in ${v2Root}`,
      async cap(pid, cores) {
        const dir = join(v2Root, `kv-bench-${process.pid}-${++sequence}`)
        await mkdir(dir)
        groups.push({ dir, pid })
        await writeFile(join(dir, 'cpu.max'), `${Math.round(cores * periodUs)} ${periodUs}\n`)
        await writeFile(join(dir, 'cgroup.procs'), `${pid}\n`)
      },
      release: () => release(join(v2Root, 'cgroup.procs')),
    }
  }
  return { unavailable: 'no cgroup cpu controller found under /sys/fs/cgroup' }
}
